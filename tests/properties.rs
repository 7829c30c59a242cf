//! Property tests: replay determinism across snapshot/restore, and totality (no panic, no NaN)
//! of the engine, the event decoder, the control-command decoder and verifier, and the
//! blueprint loader on arbitrary input.

use std::sync::Arc;

use agent_guardian::blueprint::{load_blueprint, Assignment, BlueprintSet};
use agent_guardian::control::{Command, Verb};
use agent_guardian::engine::Engine;
use agent_guardian::event::{AuditEvent, Decoder, Format};
use agent_guardian::response::Incident;
use agent_guardian::state::Snapshot;
use proptest::prelude::*;
use serde_json::{json, Value};

/// A blueprint with small thresholds and a one-hour warm-up, so every path (static, learned,
/// sequences, kills, activity after kill) is reached by short random streams.
fn touchy() -> Arc<BlueprintSet> {
    let bp = load_blueprint(
        "touchy",
        &json!({
            "name": "Touchy", "mode": "block",
            "anomaly": {"frequency_threshold": 5, "volume_window_ms": 10000,
                        "suspicious_sequences": [["a", "b"], {"pattern": ["b", "*", "c"], "within": "30s"}],
                        "allowed_hours": {"start": 8, "end": 18}},
            "auto_kill_threshold": 3,
            "timezone": "Europe/London", "working_days": ["mon", "tue", "wed", "thu", "fri"],
            "data_volume": {"max_bytes": 5000, "window": "10s"},
            "learned": {"warmup": "1h", "min_slot_observations": 1, "min_hourly_count": 3, "volume_warmup_calls": 3, "volume_min_bytes": 10},
            "kill": {"half_life": "10m", "cooldown": "1m"},
            "dedup": {"cooldown": "20s", "episode_gap": "1m"}
        }),
    )
    .expect("valid");
    Arc::new(
        BlueprintSet::from_blueprints(
            vec![bp],
            Assignment {
                default: "touchy".into(),
                ..Assignment::default()
            },
        )
        .expect("valid"),
    )
}

#[derive(Debug, Clone)]
struct Ev {
    agent: u8,
    dt: i64,
    tool: u8,
    bytes: Option<u32>,
}

fn events() -> impl Strategy<Value = Vec<Ev>> {
    let ev = (
        0u8..3,
        prop_oneof![
            6 => 0i64..3_000,
            2 => -40_000i64..0,
            1 => 0i64..7_200_000,
            1 => -200_000i64..-40_000,
            1 => Just(604_800_000i64 - 3_600_000),
        ],
        0u8..5,
        proptest::option::of(prop_oneof![8 => 100u32..200, 1 => 0u32..2_000_000]),
    )
        .prop_map(|(agent, dt, tool, bytes)| Ev {
            agent,
            dt,
            tool,
            bytes,
        });
    proptest::collection::vec(ev, 1..400)
}

const TOOLS: [&str; 5] = ["a", "b", "c", "d", ""];
const AGENTS: [&str; 3] = ["x", "y", "z"];

fn materialise(evs: &[Ev]) -> Vec<(String, i64, &'static str, Option<f64>)> {
    let mut t = 1_772_442_000_000i64; // Monday 2026-03-02 09:00 UTC
    evs.iter()
        .enumerate()
        .map(|(i, e)| {
            t = (t + e.dt).max(0);
            (
                format!("e{i}"),
                t,
                TOOLS[e.tool as usize],
                e.bytes.map(f64::from),
            )
        })
        .collect()
}

fn decoded<'a>(
    evs: &[Ev],
    items: &'a [(String, i64, &'static str, Option<f64>)],
) -> Vec<AuditEvent<'a>> {
    evs.iter()
        .zip(items)
        .map(|(e, (id, ts, tool, bytes))| AuditEvent {
            format: Format::AgentSpm,
            event_id: id.as_str().into(),
            ts_ms: *ts,
            agent_id: AGENTS[e.agent as usize].into(),
            tool_name: (*tool).into(),
            outcome: None,
            environment: None,
            group: None,
            bytes: *bytes,
            kind: agent_guardian::event::EntryKind::ToolCall,
            agent_source: agent_guardian::event::AgentSource::Named,
            user: None,
            session: None,
            parent_session: None,
        })
        .collect()
}

fn feed(
    engine: &mut Engine,
    evs: &[Ev],
    items: &[(String, i64, &'static str, Option<f64>)],
    out: &mut Vec<Incident>,
) {
    for ev in decoded(evs, items) {
        engine.process(&ev, out);
    }
}

/// A protobuf OTLP request with an agent span, two tool spans and a chat span.
fn otlp_request() -> Vec<u8> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message;
    let kv = |k: &str, v: &str| KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    };
    let span = |id: u8, attrs: Vec<KeyValue>| Span {
        trace_id: vec![9; 16],
        span_id: vec![id; 8],
        name: "s".into(),
        start_time_unix_nano: 1_772_550_000_000_000_000 + u64::from(id) * 1_000_000,
        attributes: attrs,
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "svc")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![
                    span(
                        1,
                        vec![
                            kv("gen_ai.operation.name", "execute_tool"),
                            kv("gen_ai.tool.name", "a"),
                        ],
                    ),
                    span(2, vec![kv("mcp.method.name", "tools/call")]),
                    span(3, vec![kv("gen_ai.operation.name", "chat")]),
                    span(
                        4,
                        vec![
                            kv("gen_ai.operation.name", "invoke_agent"),
                            kv("gen_ai.agent.id", "x"),
                        ],
                    ),
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

proptest! {
    // PROPTEST_CASES=N runs longer (a fuzzing session); the default keeps CI short.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(256),
        ..ProptestConfig::default()
    })]

    #[test]
    fn snapshot_restore_in_arbitrary_chunks_equals_one_pass(evs in events(), cuts in proptest::collection::vec(0usize..400, 0..6)) {
        let set = touchy();
        let items = materialise(&evs);
        let mut one = Engine::new(set.clone());
        let mut want = Vec::new();
        feed(&mut one, &evs, &items, &mut want);

        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (evs.len() + 1)).collect();
        cuts.push(evs.len());
        cuts.sort_unstable();
        let mut got = Vec::new();
        let mut engine = Engine::new(set.clone());
        let mut from = 0;
        for c in cuts {
            feed(&mut engine, &evs[from..c], &items[from..c], &mut got);
            from = c;
            let bytes = engine.snapshot().to_bytes().expect("encodes");
            engine = Engine::restore(set.clone(), Snapshot::from_bytes(&bytes).expect("decodes"));
        }
        prop_assert_eq!(&got, &want);
        prop_assert_eq!(engine.snapshot(), one.snapshot());
        for i in &want {
            prop_assert!(i.observed.is_finite() && i.expected.is_finite(), "NaN in {:?}", i);
        }
    }

    #[test]
    fn batches_of_any_size_equal_one_event_at_a_time(evs in events(), sizes in proptest::collection::vec(prop_oneof![1usize..40, 60usize..300], 1..8)) {
        let set = touchy();
        let items = materialise(&evs);
        let all = decoded(&evs, &items);
        let mut one = Engine::new(set.clone());
        let mut want = Vec::new();
        for ev in &all {
            one.process(ev, &mut want);
        }
        let mut engine = Engine::new(set);
        let mut got = Vec::new();
        let mut rest = all.as_slice();
        for n in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (batch, tail) = rest.split_at((*n).min(rest.len()));
            engine.process_batch(batch, &mut got);
            rest = tail;
        }
        prop_assert_eq!(&got, &want);
        prop_assert_eq!(engine.snapshot(), one.snapshot());
    }

    #[test]
    fn decoder_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = Decoder::default().decode(&bytes);
    }

    #[test]
    fn decoder_never_panics_on_json_like_input(v in json_value(), agent in json_value(), ts in json_value(), bytes in json_value()) {
        let doc = json!({"agent_id": agent, "timestamp": ts, "tool_name": v, "safe_payload": {"bytes": bytes}, "extra": v});
        let text = serde_json::to_vec(&doc).expect("serialises");
        if let Ok(e) = Decoder::default().decode(&text) {
            prop_assert!(!e.agent_id.is_empty());
            prop_assert!(e.bytes.is_none_or(|b| b.is_finite() && b >= 0.0));
        }
        let doc = json!({"eventId": agent, "timestamp": ts, "agentId": v, "sessionId": bytes});
        let _ = Decoder::default().decode(&serde_json::to_vec(&doc).expect("serialises"));
    }

    #[test]
    fn otlp_decoder_never_panics_and_adds_nothing_on_error(bytes in proptest::collection::vec(any::<u8>(), 0..600), v in json_value()) {
        let d = Decoder::default();
        let mut out = Vec::new();
        // Arbitrary bytes, also as a protobuf request would start.
        let mut proto = vec![0x0a];
        proto.extend(&bytes);
        for payload in [&bytes, &proto] {
            if d.decode_into(payload, &mut out).is_err() {
                prop_assert!(out.is_empty());
            }
            out.clear();
        }
        for doc in [
            json!({"resourceSpans": v.clone()}),
            json!({"resourceSpans": [{"resource": v.clone(), "scopeSpans": [{"spans": [v.clone()]}]}]}),
            json!({"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "t", "spanId": "s", "startTimeUnixNano": v.clone(),
                "attributes": [{"key": "gen_ai.operation.name", "value": {"stringValue": "execute_tool"}}, {"key": "gen_ai.tool.name", "value": v.clone()}]}]}]}]}),
        ] {
            let payload = serde_json::to_vec(&doc).expect("json");
            let mut out = Vec::new();
            if d.decode_into(&payload, &mut out).is_err() {
                prop_assert!(out.is_empty());
            }
        }
    }

    #[test]
    fn a_protobuf_request_changed_anywhere_decodes_or_is_refused_never_panics(at in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>()) {
        let good = otlp_request();
        let mut bad = good.clone();
        let i = at.index(bad.len());
        bad[i] = byte;
        let d = Decoder::default();
        let mut out = Vec::new();
        for payload in [&bad[..], &good[..cut.index(good.len())]] {
            if d.decode_into(payload, &mut out).is_err() {
                prop_assert!(out.is_empty());
            }
            out.clear();
        }
    }

    #[test]
    fn command_decoder_never_panics_and_accepts_no_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        prop_assert!(Command::parse_verified(&bytes, &[CMD_KEY]).is_err());
    }

    /// A signed command with arbitrary text in its fields (any Unicode, controls, quotes) reads
    /// back equal; changing any one byte of its JSON is refused, unless the change still
    /// spells the same command (such as the case of a hex digit in a `\u` escape).
    #[test]
    fn signed_commands_round_trip_and_any_byte_change_is_refused(
        agent in "\\PC{1,24}", reason in ".{0,40}", at in 0i64..4_102_444_800_000,
        kill in any::<bool>(), pos in any::<prop::sample::Index>(), bit in 0u8..8,
    ) {
        let verb = if kill { Verb::Kill } else { Verb::Revive };
        let c = Command::manual(verb, &agent, &reason, at, "ops").sign(CMD_KEY).expect("sign");
        let json = c.to_json().expect("json");
        prop_assert_eq!(Command::parse_verified(&json, &[CMD_KEY]).expect("verifies"), c.clone());
        let mut changed = json.clone();
        changed[pos.index(json.len())] ^= 1 << bit;
        if let Ok(back) = Command::parse_verified(&changed, &[CMD_KEY]) {
            prop_assert_eq!(back, c);
        }
    }

    /// Any field of a signed command replaced by an arbitrary JSON value: never a panic, and
    /// accepted only if the value is the one signed.
    #[test]
    fn commands_with_a_field_replaced_by_arbitrary_json_are_refused(field in 0usize..14, v in json_value()) {
        let c = Command::manual(Verb::Kill, "fin-1", "r", 1_772_000_000_000, "ops").sign(CMD_KEY).expect("sign");
        let mut doc = serde_json::to_value(&c).expect("value");
        let keys: Vec<String> = doc.as_object().expect("object").keys().cloned().collect();
        let key = keys.get(field % keys.len()).cloned().unwrap_or_default();
        let same = doc[&key] == v;
        doc[&key] = v;
        let r = Command::parse_verified(&serde_json::to_vec(&doc).expect("json"), &[CMD_KEY]);
        prop_assert_eq!(r.is_ok(), same, "{}: {:?}", key, r);
    }

    /// A command verifies with the key that signed it among any others, and with no other set.
    #[test]
    fn a_command_verifies_only_with_its_key(a in proptest::collection::vec(any::<u8>(), 16..40), others in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 16..40), 0..4)) {
        let c = Command::manual(Verb::Kill, "x", "r", 1, "ops").sign(&a).expect("sign");
        let mut keys = others.clone();
        prop_assert_eq!(c.verify(&keys).is_ok(), others.contains(&a));
        keys.push(a);
        prop_assert!(c.verify(&keys).is_ok());
    }

    #[test]
    fn blueprint_loader_never_panics_on_arbitrary_json(v in json_value()) {
        let _ = load_blueprint("x", &v);
        let _ = Assignment::from_json(&v);
    }

    #[test]
    fn blueprint_loader_reports_paths_for_mutated_shipped_blueprints(which in 0usize..3, path_pick in any::<prop::sample::Index>(), v in json_value()) {
        let text = agent_guardian::blueprint::BUILTIN[which].1;
        let mut doc: Value = serde_json::from_str(text).expect("json");
        let paths = leaf_paths(&doc, String::new());
        let target = path_pick.get(&paths).clone();
        if let Some(slot) = doc.pointer_mut(&target) {
            *slot = v;
        }
        match load_blueprint("x", &doc) {
            Ok(bp) => prop_assert_eq!(load_blueprint("x", &bp.to_json()).expect("show output reloads"), bp),
            Err(errs) => {
                prop_assert!(!errs.is_empty());
                for e in errs {
                    prop_assert!(e.path.is_empty() || e.path.starts_with('/'));
                }
            }
        }
    }
}

/// The key of the command properties.
const CMD_KEY: &[u8] = b"property-test-key-0123456789";

fn leaf_paths(v: &Value, at: String) -> Vec<String> {
    let mut out = vec![at.clone()];
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                out.extend(leaf_paths(x, format!("{at}/{k}")));
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                out.extend(leaf_paths(x, format!("{at}/{i}")));
            }
        }
        _ => {}
    }
    out
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "[a-z*]{0,6}".prop_map(Value::String),
        Just(json!("2026-03-02T09:00:00Z")),
        Just(json!("30s")),
        Just(json!("Europe/London")),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z_]{1,12}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// The random streams above reach every incident type, so their determinism check is not vacuous.
#[test]
fn random_streams_reach_every_incident_type() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let evs = events().new_tree(&mut runner).expect("strategy").current();
        let items = materialise(&evs);
        let mut e = Engine::new(touchy());
        let mut out = Vec::new();
        feed(&mut e, &evs, &items, &mut out);
        seen.extend(out.iter().map(|i| (i.kind, i.basis)));
    }
    for t in agent_guardian::response::IncidentType::DETECTED
        .iter()
        .copied()
    {
        assert!(
            seen.iter().any(|(k, _)| *k == t),
            "{t:?} never raised; seen {seen:?}"
        );
    }
    assert!(
        seen.iter()
            .any(|(_, b)| *b == agent_guardian::response::Basis::Learned),
        "no learned incident; seen {seen:?}"
    );
}
