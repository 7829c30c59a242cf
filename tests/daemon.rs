//! The daemon on librdkafka's in-process mock cluster: consume → incident → kill command, dead
//! letters, manual kill / revive, forged commands, restart without reprocessing, and rebuild of a
//! lost state disk without repeated kill commands.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use agent_guardian::app::Daemon;
use agent_guardian::config::KafkaConfig;
use agent_guardian::control::{Command, Verb, DEFAULT_TTL_MS};
use agent_guardian::demo::{self, DEMO_KEY};
use agent_guardian::event::format_rfc3339_ms;
use agent_guardian::response::{Incident, IncidentType};
use agent_guardian::sink::kafka::{KafkaSink, OutputTopics as _};
use agent_guardian::store::Store;
use agent_guardian::telemetry::Metrics;

/// The wall clock (ms): commands of the tests are valid from now on, whatever their event time.
fn now() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A whole minute three hours ago: a time for calls around an operator's command.
fn recent() -> i64 {
    (now() - 3 * 3_600_000) / 60_000 * 60_000
}
use rdkafka::mocking::MockCluster;

fn kafka(brokers: &str) -> KafkaConfig {
    KafkaConfig {
        brokers: brokers.into(),
        group_id: "it".into(),
        audit_topics: vec!["audit".into()],
        ..KafkaConfig::default()
    }
}

fn cluster() -> (
    MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    KafkaConfig,
) {
    let c = MockCluster::new(1).unwrap();
    let k = kafka(&c.bootstrap_servers());
    c.create_topic("audit", 2, 1).unwrap();
    for t in [&k.control_topic, &k.incidents_topic, &k.dead_letter_topic] {
        c.create_topic(t, 1, 1).unwrap();
    }
    (c, k)
}

fn start(k: &KafkaConfig, dir: &std::path::Path) -> Daemon {
    // A guard past its learning period: these tests feed short streams with no history.
    let cfg = demo::local_config(k.clone(), dir, demo::demo_blueprints_learned().unwrap());
    Daemon::start(cfg).unwrap()
}

fn wait(m: &Metrics, what: &str, f: impl Fn(&Metrics) -> bool) {
    let t = Instant::now();
    while !f(m) {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stop(d: Daemon) {
    d.shutdown();
    d.join(Duration::from_secs(30)).unwrap();
}

/// One Agent-SPM event line.
fn line(agent: &str, n: u64, ts: i64, tool: &str) -> String {
    serde_json::json!({
        "event_id": format!("{agent}-{n}"), "timestamp": format_rfc3339_ms(ts),
        "request_id": "r", "agent_id": agent, "tool_name": tool, "outcome": "ALLOW",
        "reasons": [], "safe_payload": {"environment": "prod", "team": "finance"}
    })
    .to_string()
}

fn produce(k: &KafkaConfig, topic: &str, msgs: &[(Option<String>, Vec<u8>)]) {
    let mut s = KafkaSink::new(&k.brokers, &Default::default()).unwrap();
    for (key, p) in msgs {
        s.send(topic, key.as_deref().map(str::as_bytes), p, None)
            .unwrap();
    }
    s.settle(Duration::from_secs(10)).unwrap();
}

fn incidents(k: &KafkaConfig) -> Vec<Incident> {
    agent_guardian::kafka::read_all(&k.brokers, &k.incidents_topic)
        .into_iter()
        .map(|(_, p)| serde_json::from_slice(&p).unwrap())
        .collect()
}

fn commands(k: &KafkaConfig) -> Vec<Command> {
    agent_guardian::kafka::read_all(&k.brokers, &k.control_topic)
        .into_iter()
        .filter_map(|(_, p)| serde_json::from_slice(&p).ok())
        .collect()
}

/// Tuesday 2026-03-03 10:00 in New York.
const T0: i64 = 1_772_550_000_000;

#[test]
fn demo_pipeline_kills_the_rogue_agent_only_with_signed_commands() {
    let dir = tempfile::tempdir().unwrap();
    let r = demo::run(dir.path()).unwrap();
    assert_eq!(
        r.events as usize,
        r.produced - 2,
        "every good event processed"
    );
    assert_eq!(r.kills.len(), 1, "{:?}", r.kills);
    let kill = &r.kills[0];
    assert_eq!(kill.agent_id, "fin-agent-rogue");
    assert!(kill.verify(&[DEMO_KEY]).is_ok());
    // The command names the auto_kill incident that was published.
    let auto: Vec<_> = r
        .incidents
        .iter()
        .filter(|i| i.kind == IncidentType::AutoKill)
        .collect();
    assert_eq!(auto.len(), 1);
    assert_eq!(kill.incident_ids, vec![auto[0].incident_id.clone()]);
    // Every detector incident is about the rogue agent; the forged command is reported.
    for i in &r.incidents {
        match i.kind {
            IncidentType::RejectedCommand => assert_eq!(i.agent_id, "fin-agent-07"),
            _ => assert_eq!(i.agent_id, "fin-agent-rogue", "{i:?}"),
        }
    }
    assert!(r
        .incidents
        .iter()
        .any(|i| i.kind == IncidentType::RejectedCommand));
    // Both malformed lines are dead-lettered with their reason.
    assert_eq!(r.dead_letters.len(), 2);
    assert!(r
        .dead_letters
        .iter()
        .any(|(why, _)| why.contains("/timestamp")));
    assert!(r
        .dead_letters
        .iter()
        .any(|(why, _)| why.contains("not a JSON")));
}

#[test]
fn manual_kill_and_revive_update_state_and_forgeries_are_rejected() {
    // Operator commands are issued at the wall clock's time (a command issued long ago is
    // refused as expired), so the agent's calls are dated around it.
    let t0 = recent();
    let (_c, k) = cluster();
    let dir = tempfile::tempdir().unwrap();
    let d = start(&k, dir.path());
    let a = "fin-manual";
    let mut n = 0;
    let mut batch = |from: i64, count: u64| -> Vec<(Option<String>, Vec<u8>)> {
        (0..count)
            .map(|i| {
                n += 1;
                (
                    Some(a.to_string()),
                    line(a, n, from + i as i64 * 60_000, "read_ledger").into_bytes(),
                )
            })
            .collect()
    };
    produce(&k, "audit", &batch(t0, 3));
    wait(&d.metrics, "3 events", |m| {
        m.events.load(Ordering::Relaxed) == 3
    });

    let kill = Command::manual(Verb::Kill, a, "test", t0 + 200_000, "ops")
        .valid_for(now(), DEFAULT_TTL_MS)
        .sign(DEMO_KEY)
        .unwrap();
    let forged = Command::manual(Verb::Revive, a, "forged", t0 + 250_000, "mallory")
        .valid_for(now(), DEFAULT_TTL_MS)
        .sign(b"wrong-key-wrong-key")
        .unwrap();
    let mut unsigned = Command::manual(Verb::Revive, a, "unsigned", t0 + 260_000, "x");
    unsigned.signature.clear();
    produce(
        &k,
        &k.control_topic,
        &[
            (Some(a.to_string()), kill.to_json().unwrap()),
            (Some(a.to_string()), forged.to_json().unwrap()),
            (Some(a.to_string()), unsigned.to_json().unwrap()),
        ],
    );
    wait(&d.metrics, "kill applied", |m| {
        m.commands_applied.load(Ordering::Relaxed) == 1
            && m.commands_rejected.load(Ordering::Relaxed) == 2
    });
    produce(&k, "audit", &batch(t0 + 300_000, 1));
    wait(&d.metrics, "4 events", |m| {
        m.events.load(Ordering::Relaxed) == 4
    });
    let revive = Command::manual(Verb::Revive, a, "fixed", t0 + 400_000, "ops")
        .valid_for(now(), DEFAULT_TTL_MS)
        .sign(DEMO_KEY)
        .unwrap();
    produce(
        &k,
        &k.control_topic,
        &[(Some(a.to_string()), revive.to_json().unwrap())],
    );
    wait(&d.metrics, "revive applied", |m| {
        m.commands_applied.load(Ordering::Relaxed) == 2
    });
    produce(&k, "audit", &batch(t0 + 10_000_000, 1));
    wait(&d.metrics, "5 events", |m| {
        m.events.load(Ordering::Relaxed) == 5
    });
    stop(d);

    let inc = incidents(&k);
    let after_kill: Vec<_> = inc
        .iter()
        .filter(|i| i.kind == IncidentType::ActivityAfterKill)
        .collect();
    assert_eq!(
        after_kill.len(),
        1,
        "only the event between kill and revive: {inc:?}"
    );
    assert_eq!(
        inc.iter()
            .filter(|i| i.kind == IncidentType::RejectedCommand)
            .count(),
        2
    );
    let st = Store::open(dir.path()).unwrap().find_agent(a).unwrap();
    assert_eq!(st.len(), 1);
    assert!(!st[0].1.kill.killed, "revived");
    assert_eq!(st[0].1.kill.kills, 1);
    assert_eq!(st[0].1.events, 5);
}

#[test]
fn restart_resumes_without_reprocessing_and_rebuild_sends_no_duplicate_kills() {
    let (_c, k) = cluster();
    let dir = tempfile::tempdir().unwrap();
    // A rogue agent: 40 calls in 20 s (frequency spike) and two contiguous payments twice.
    let rogue = "fin-rogue";
    let mut msgs: Vec<(Option<String>, Vec<u8>)> = Vec::new();
    for i in 0..40u64 {
        let tool = if i % 10 < 2 {
            "trigger_payment"
        } else {
            "read_ledger"
        };
        msgs.push((
            Some(rogue.to_string()),
            line(rogue, i, T0 + i as i64 * 500, tool).into_bytes(),
        ));
    }
    for a in 0..5u64 {
        let agent = format!("fin-calm-{a}");
        for i in 0..20u64 {
            msgs.push((
                Some(agent.clone()),
                line(&agent, i, T0 + i as i64 * 300_000, "read_ledger").into_bytes(),
            ));
        }
    }
    let first = msgs.len() as u64;
    produce(&k, "audit", &msgs);
    let d = start(&k, dir.path());
    wait(&d.metrics, "first batch", |m| {
        m.events.load(Ordering::Relaxed) == first
    });
    stop(d);
    let kills_before = commands(&k).len();
    assert_eq!(kills_before, 1, "one kill command for the rogue agent");
    let incidents_before = incidents(&k).len();

    // Restart on the same state: only new events are processed.
    let more: Vec<(Option<String>, Vec<u8>)> = (0..10u64)
        .map(|i| {
            (
                Some("fin-calm-0".to_string()),
                line(
                    "fin-calm-0",
                    100 + i,
                    T0 + 7_200_000 + i as i64 * 300_000,
                    "read_ledger",
                )
                .into_bytes(),
            )
        })
        .collect();
    produce(&k, "audit", &more);
    let d = start(&k, dir.path());
    wait(&d.metrics, "second batch", |m| {
        m.events.load(Ordering::Relaxed) == 10
    });
    let metrics = d.metrics.clone();
    stop(d);
    // Stopped after a final checkpoint: everything it was going to read, it has read.
    assert_eq!(
        metrics.events.load(Ordering::Relaxed),
        10,
        "nothing reprocessed"
    );
    let store = Store::open(dir.path()).unwrap();
    let total: u64 = store
        .partitions()
        .unwrap()
        .iter()
        .map(|p| p.2.stats.events)
        .sum();
    assert_eq!(total, first + 10);
    let calm0 = store.find_agent("fin-calm-0").unwrap();
    assert_eq!(calm0[0].1.events, 30);
    let rogue_state = store.find_agent(rogue).unwrap()[0].1.clone();
    drop(store);

    // The state disk is lost: the partitions are rebuilt from the log, silently up to the
    // offsets the group committed, so the kill is not sent again.
    let fresh = tempfile::tempdir().unwrap();
    let d = start(&k, fresh.path());
    wait(&d.metrics, "rebuild", |m| {
        m.events.load(Ordering::Relaxed) == first + 10
    });
    assert!(d.metrics.suppressed.load(Ordering::Relaxed) > 0);
    stop(d);
    assert_eq!(
        commands(&k).len(),
        kills_before,
        "no duplicate kill command"
    );
    assert_eq!(
        incidents(&k).len(),
        incidents_before,
        "no duplicate incident"
    );
    let rebuilt = Store::open(fresh.path())
        .unwrap()
        .find_agent(rogue)
        .unwrap()[0]
        .1
        .clone();
    assert_eq!(rebuilt, rogue_state, "rebuilt state equals the original");
}

#[test]
fn a_command_for_an_unseen_agent_applies_at_its_first_event() {
    // Operator commands are issued at the wall clock's time (a command issued long ago is
    // refused as expired), so the agent's calls are dated around it.
    let t0 = recent();
    let (_c, k) = cluster();
    let dir = tempfile::tempdir().unwrap();
    let d = start(&k, dir.path());
    let a = "fin-later";
    // The kill is read before any event of the agent (as in a rebuild from the log).
    let kill = Command::manual(Verb::Kill, a, "test", t0 + 250_000, "ops")
        .valid_for(now(), DEFAULT_TTL_MS)
        .sign(DEMO_KEY)
        .unwrap();
    produce(
        &k,
        &k.control_topic,
        &[(Some(a.to_string()), kill.to_json().unwrap())],
    );
    wait(&d.metrics, "the kill read and waiting for its agent", |m| {
        m.commands_pending.load(Ordering::Relaxed) == 1
    });
    let msgs: Vec<(Option<String>, Vec<u8>)> = (0..6u64)
        .map(|i| {
            let ts = t0 + i as i64 * 100_000; // 0, 100, …, 500 s
            (
                Some(a.to_string()),
                line(a, i, ts, "read_ledger").into_bytes(),
            )
        })
        .collect();
    produce(&k, "audit", &msgs);
    wait(&d.metrics, "6 events", |m| {
        m.events.load(Ordering::Relaxed) == 6
    });
    wait(&d.metrics, "kill applied", |m| {
        m.commands_applied.load(Ordering::Relaxed) == 1
    });
    stop(d);
    let after: Vec<i64> = incidents(&k)
        .iter()
        .filter(|i| i.kind == IncidentType::ActivityAfterKill)
        .map(|i| i.at)
        .collect();
    // Applied at the agent's first event, with its own time (250 s): the calls made before it
    // are not activity after it, the first one after it (300 s) is (one incident per episode).
    assert_eq!(after, vec![t0 + 300_000], "{after:?}");
}

/// AgentShield entries: sessions created before a restart still attribute the tool entries read
/// after it to their agents (the session map is part of the checkpointed state), and no incident
/// goes to the user who runs both agents.
#[test]
fn agentshield_sessions_survive_a_restart_and_attribute_tool_entries_to_their_agents() {
    let (_c, k) = cluster();
    let dir = tempfile::tempdir().unwrap();
    let user = "user-7";
    let key = Some(user.to_string());
    let created = |session: &str, agent: &str, ts: i64| {
        serde_json::json!({"type": "session_created", "timestamp": ts, "eventId": format!("sc-{session}"),
                           "sessionId": session, "userId": user, "agentId": agent})
        .to_string()
        .into_bytes()
    };
    let d = start(&k, dir.path());
    produce(
        &k,
        "audit",
        &[
            (key.clone(), created("s-a", "fin-shield-a", T0)),
            (key.clone(), created("s-b", "fin-shield-b", T0 + 1)),
        ],
    );
    wait(&d.metrics, "2 session bindings", |m| {
        m.identity[3].load(Ordering::Relaxed) == 2
    });
    stop(d);

    let d = start(&k, dir.path());
    let call = |session: &str, n: u64, ts: i64| {
        serde_json::json!({"type": "tool_allowed", "timestamp": ts, "eventId": format!("{session}-{n}"),
                           "sessionId": session, "userId": user, "toolName": "read_ledger",
                           "safe_payload": {"environment": "prod", "team": "finance"}})
        .to_string()
        .into_bytes()
    };
    let mut msgs: Vec<(Option<String>, Vec<u8>)> = (0..40)
        .map(|i| (key.clone(), call("s-a", i, T0 + 60_000 + i as i64 * 500)))
        .collect();
    msgs.extend((0..3).map(|i| (key.clone(), call("s-b", i, T0 + 60_000 + i as i64 * 10_000))));
    produce(&k, "audit", &msgs);
    wait(&d.metrics, "43 calls resolved", |m| {
        m.identity[1].load(Ordering::Relaxed) == 43
    });
    assert_eq!(
        d.metrics.identity[2].load(Ordering::Relaxed),
        0,
        "none unresolved"
    );
    stop(d);

    let inc = incidents(&k);
    assert!(
        inc.iter()
            .any(|i| i.agent_id == "fin-shield-a" && i.kind == IncidentType::FrequencySpike),
        "{inc:?}"
    );
    assert!(inc.iter().all(|i| i.agent_id != user), "{inc:?}");
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.find_agent("fin-shield-a").unwrap()[0].1.events, 40);
    assert_eq!(store.find_agent("fin-shield-b").unwrap()[0].1.events, 3);
    assert!(store.find_agent(user).unwrap().is_empty());
}

/// The calls of two agents: a burst of `fin-otlp-a`, a few calls of `fin-otlp-b`.
fn otlp_calls() -> Vec<(&'static str, u64, i64)> {
    let mut calls: Vec<(&str, u64, i64)> = (0..40)
        .map(|i| ("fin-otlp-a", i, T0 + 60_000 + i as i64 * 500))
        .collect();
    calls.extend((0..3).map(|i| ("fin-otlp-b", i, T0 + 60_000 + i as i64 * 10_000)));
    calls.sort_by_key(|c| c.2);
    calls
}

/// A trace id per agent (16 bytes).
fn trace_of(agent: &str) -> Vec<u8> {
    let mut t = [0u8; 16];
    for (i, b) in agent.bytes().enumerate() {
        t[i % 16] ^= b;
    }
    t[15] ^= 0x5a;
    t.to_vec()
}

/// An OTLP span as (trace, span id, start ms, attributes).
type OtlpSpan = (Vec<u8>, Vec<u8>, i64, Vec<(&'static str, String)>);

fn tool_span(agent: &str, n: u64, ts: i64) -> OtlpSpan {
    let mut id = trace_of(agent)[..6].to_vec();
    id.extend((n as u16).to_be_bytes());
    (
        trace_of(agent),
        id,
        ts,
        vec![
            ("gen_ai.operation.name", "execute_tool".into()),
            ("gen_ai.tool.name", "read_ledger".into()),
        ],
    )
}

fn agent_span(agent: &str, ts: i64) -> OtlpSpan {
    (
        trace_of(agent),
        trace_of(agent)[8..].to_vec(),
        ts,
        vec![
            ("gen_ai.operation.name", "invoke_agent".into()),
            ("gen_ai.agent.id", agent.into()),
        ],
    )
}

fn chat_span(agent: &str, ts: i64) -> OtlpSpan {
    (
        trace_of(agent),
        vec![7; 8],
        ts,
        vec![("gen_ai.operation.name", "chat".into())],
    )
}

fn otlp_proto(spans: &[OtlpSpan]) -> Vec<u8> {
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
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", "agents-platform"),
                    kv("deployment.environment.name", "prod"),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: spans
                    .iter()
                    .map(|(trace, id, ts, attrs)| Span {
                        trace_id: trace.clone(),
                        span_id: id.clone(),
                        name: "span".into(),
                        start_time_unix_nano: *ts as u64 * 1_000_000,
                        end_time_unix_nano: (*ts as u64 + 1) * 1_000_000,
                        attributes: attrs.iter().map(|(k, v)| kv(k, v)).collect(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

fn otlp_json(spans: &[OtlpSpan]) -> Vec<u8> {
    let kv = |k: &str, v: &str| serde_json::json!({"key": k, "value": {"stringValue": v}});
    let spans: Vec<_> = spans
        .iter()
        .map(|(trace, id, ts, attrs)| {
            serde_json::json!({"traceId": hex::encode(trace), "spanId": hex::encode(id), "name": "span",
                "kind": 1, "startTimeUnixNano": (*ts as u64 * 1_000_000).to_string(),
                "endTimeUnixNano": ((*ts as u64 + 1) * 1_000_000).to_string(),
                "attributes": attrs.iter().map(|(k, v)| kv(k, v)).collect::<Vec<_>>()})
        })
        .collect();
    serde_json::json!({"resourceSpans": [{"resource": {"attributes": [kv("service.name", "agents-platform"),
        kv("deployment.environment.name", "prod")]}, "scopeSpans": [{"scope": {"name": "agent-sdk"}, "spans": spans}]}]})
    .to_string()
    .into_bytes()
}

/// An incident as (agent, kind, time, tool): what two forms of the same calls must agree on.
type IncidentKey = (String, String, i64, String);

/// The daemon's incidents (agent, kind, time, tool) after each phase of messages was consumed,
/// with a restart between phases; `records[i]` is the number of events and skipped spans of
/// phase `i`.
fn incidents_of_phases(
    phases: &[Vec<(Option<String>, Vec<u8>)>],
    records: &[u64],
) -> (Vec<IncidentKey>, [u64; 5]) {
    let (_c, k) = cluster();
    let dir = tempfile::tempdir().unwrap();
    let mut seen = [0u64; 5];
    for (msgs, n) in phases.iter().zip(records) {
        let d = start(&k, dir.path());
        produce(&k, "audit", msgs);
        let total = |m: &Metrics| {
            m.identity
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .sum::<u64>()
        };
        wait(&d.metrics, "every record", |m| total(m) == *n);
        for (s, c) in seen.iter_mut().zip(&d.metrics.identity) {
            *s += c.load(Ordering::Relaxed);
        }
        assert_eq!(d.metrics.bad_events.load(Ordering::Relaxed), 0);
        stop(d);
    }
    let mut got: Vec<_> = incidents(&k)
        .into_iter()
        .map(|i| (i.agent_id, i.kind.as_str().to_string(), i.at, i.tool_name))
        .collect();
    got.sort();
    (got, seen)
}

#[test]
fn otlp_spans_in_protobuf_and_json_give_the_incidents_of_the_same_calls_as_agent_spm() {
    let calls = otlp_calls();
    let spm: Vec<_> = calls
        .iter()
        .map(|(a, n, ts)| {
            let l = line(a, *n, *ts, "read_ledger");
            (Some(a.to_string()), l.into_bytes())
        })
        .collect();
    let (want, _) = incidents_of_phases(&[spm], &[calls.len() as u64]);
    assert!(
        want.iter()
            .any(|i| i.0 == "fin-otlp-a" && i.1 == IncidentType::FrequencySpike.as_str()),
        "{want:?}"
    );

    // Protobuf: the agent spans in one request, then a restart, then the tool spans (and a
    // chat span, skipped) in requests of 8: the checkpointed traces name their agents.
    let agents = ["fin-otlp-a", "fin-otlp-b"];
    let bind: Vec<_> = agents.iter().map(|a| agent_span(a, T0)).collect();
    let mut spans: Vec<_> = calls
        .iter()
        .map(|(a, n, ts)| tool_span(a, *n, *ts))
        .collect();
    spans.push(chat_span("fin-otlp-b", T0 + 61_000));
    let requests = |encode: fn(&[OtlpSpan]) -> Vec<u8>,
                    spans: &[OtlpSpan],
                    size: usize|
     -> Vec<(Option<String>, Vec<u8>)> {
        spans
            .chunks(size)
            .map(|c| (Some("traces".to_string()), encode(c)))
            .collect()
    };
    let (got, seen) = incidents_of_phases(
        &[
            requests(otlp_proto, &bind, 8),
            requests(otlp_proto, &spans, 8),
        ],
        &[2, spans.len() as u64],
    );
    assert_eq!(got, want, "protobuf");
    assert_eq!(
        seen,
        [0, calls.len() as u64, 0, 2, 1],
        "resolved through the stored traces"
    );

    // JSON: each agent span after its trace's calls in one request (it ends last).
    let mut one = spans.clone();
    one.extend(bind);
    let (got, seen) =
        incidents_of_phases(&[requests(otlp_json, &one, one.len())], &[one.len() as u64]);
    assert_eq!(got, want, "JSON");
    assert_eq!(
        seen,
        [0, calls.len() as u64, 0, 2, 1],
        "resolved in the request"
    );
}

/// Calls of a cohort of `n` agents (`ops-0`, …) at 20 to 50 calls an hour from 08:00 to 18:00
/// UTC on `days` days from Monday 2026-03-02, each agent's rate multiplied by `factor(ts)`:
/// arrivals at random, a fixed seed per agent, in time order.
fn cohort_calls(n: usize, days: i64, factor: impl Fn(i64) -> f64) -> Vec<(String, u64, i64)> {
    const HOUR: i64 = 3_600_000;
    const MONDAY: i64 = 1_772_409_600_000;
    let mut out = Vec::new();
    for i in 0..n {
        let agent = format!("ops-{i}");
        let rate = 20.0 + 10.0 * (i % 4) as f64;
        let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ (i as u64 + 1).wrapping_mul(0x2545_f491);
        let mut uniform = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            ((seed >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        let mut k = 0u64;
        for d in 0..days {
            let (start, end) = (
                MONDAY + d * 86_400_000 + 8 * HOUR,
                MONDAY + d * 86_400_000 + 18 * HOUR,
            );
            let mut t = start as f64;
            loop {
                t += -uniform().ln() / (rate * factor(t as i64)) * HOUR as f64;
                if t as i64 >= end {
                    break;
                }
                k += 1;
                out.push((agent.clone(), k, t as i64));
            }
        }
    }
    out.sort_by_key(|c| c.2);
    out
}

#[test]
fn a_cohort_shift_spread_over_four_partitions_raises_no_agent_incident_and_no_kill() {
    use agent_guardian::blueprint::{load_blueprint, Assignment, BlueprintSet};
    // 60 agents of one blueprint keyed by agent over four partitions; four days of history,
    // then every one of them at three times its rate from 10:00 to 14:00 on the fifth day, and
    // a morning after.
    let c = MockCluster::new(1).unwrap();
    let k = kafka(&c.bootstrap_servers());
    c.create_topic("audit", 4, 1).unwrap();
    for t in [&k.control_topic, &k.incidents_topic, &k.dead_letter_topic] {
        c.create_topic(t, 1, 1).unwrap();
    }
    let surge = 1_772_409_600_000 + 4 * 86_400_000 + 10 * 3_600_000;
    let calls = cohort_calls(60, 6, |t| {
        if (surge..surge + 4 * 3_600_000).contains(&t) {
            3.0
        } else {
            1.0
        }
    });
    let msgs: Vec<(Option<String>, Vec<u8>)> = calls
        .iter()
        .map(|(a, n, ts)| (Some(a.clone()), line(a, *n, *ts, "query").into_bytes()))
        .collect();
    produce(&k, "audit", &msgs);
    let bp = load_blueprint(
        "ops",
        &serde_json::json!({"name": "Ops", "mode": "block", "timezone": "UTC",
            "auto_kill_threshold": 3, "anomaly": {},
            "learned": {"learning_period": "1d", "warmup": "1d", "slow_burn_ratio": 2.5}}),
    )
    .unwrap();
    let set = BlueprintSet::from_blueprints(
        vec![bp],
        Assignment {
            default: "ops".into(),
            ..Assignment::default()
        },
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(demo::local_config(k.clone(), dir.path(), set.into())).unwrap();
    let m = d.metrics.clone();
    wait(&m, "every call", |m| {
        m.events.load(Ordering::Relaxed) >= calls.len() as u64
    });
    wait(&m, "a checkpoint", |m| {
        m.checkpoints.load(Ordering::Relaxed) > 1
    });
    stop(d);

    let store = Store::open_existing(dir.path()).unwrap();
    let parts = store.partitions().unwrap();
    assert_eq!(parts.len(), 4, "the cohort is spread over four partitions");
    assert!(
        parts.iter().all(|p| p.3 >= 8),
        "agents per partition: {:?}",
        parts.iter().map(|p| p.3).collect::<Vec<_>>()
    );
    let found = incidents(&k);
    let shifts: Vec<_> = found
        .iter()
        .filter(|i| {
            i.kind == IncidentType::FleetShift && i.status == agent_guardian::response::Status::Open
        })
        .collect();
    assert!(
        (1..=4).contains(&shifts.len()),
        "one fleet shift per partition at most: {shifts:#?}"
    );
    for kind in IncidentType::DETECTED {
        let of: Vec<_> = found.iter().filter(|i| i.kind == *kind).collect();
        assert!(of.is_empty(), "{kind:?}: {of:#?}");
    }
    assert!(commands(&k).is_empty(), "no kill command");
    assert!(m.findings_explained.load(Ordering::Relaxed) >= 1);
}

/// Six calm finance agents.
fn calm_agents() -> Vec<String> {
    (0..6).map(|a| format!("fin-calm-{a}")).collect()
}

/// Thirty reads of each agent, five minutes apart, onto the audit topic; how many.
fn produce_calm_history(k: &KafkaConfig, agents: &[String]) -> u64 {
    let mut msgs: Vec<(Option<String>, Vec<u8>)> = Vec::new();
    for (a, agent) in agents.iter().enumerate() {
        for i in 0..30u64 {
            let ts = T0 + i as i64 * 300_000 + a as i64 * 1_000;
            msgs.push((
                Some(agent.clone()),
                line(agent, i, ts, "read_ledger").into_bytes(),
            ));
        }
    }
    produce(k, "audit", &msgs);
    msgs.len() as u64
}

/// The calm history of `agents`, folded by a daemon on `dir` that then stops.
fn fold_calm_history(k: &KafkaConfig, agents: &[String], dir: &std::path::Path) {
    let history = produce_calm_history(k, agents);
    let d = start(k, dir);
    wait(&d.metrics, "history", |m| {
        m.events.load(Ordering::Relaxed) == history
    });
    stop(d);
}

/// Ten more reads of `agent`, after the calm history.
fn produce_ten_more(k: &KafkaConfig, agent: &str) {
    let more: Vec<(Option<String>, Vec<u8>)> = (0..10u64)
        .map(|i| {
            let ts = T0 + 30 * 300_000 + i as i64 * 300_000;
            (
                Some(agent.to_string()),
                line(agent, 100 + i, ts, "read_ledger").into_bytes(),
            )
        })
        .collect();
    produce(k, "audit", &more);
}

/// The changelog turned on for a deployment that already has its state: each partition is first
/// published whole (its stored agents, idle ones included, then its mark), so an instance that
/// takes it over without its state restores every agent, not only those that changed since.
#[test]
fn a_changelog_turned_on_for_an_existing_state_publishes_it_whole_first() {
    let (c, mut k) = cluster();
    let agents = calm_agents();
    let dir = tempfile::tempdir().unwrap();
    fold_calm_history(&k, &agents, dir.path());

    // Turned on: only the first agent acts again.
    c.create_topic("changelog", 2, 1).unwrap();
    k.changelog_topic = Some("changelog".into());
    let d = start(&k, dir.path());
    produce_ten_more(&k, &agents[0]);
    wait(&d.metrics, "the new events", |m| {
        m.events.load(Ordering::Relaxed) == 10
    });
    stop(d);
    let owner = Store::open(dir.path()).unwrap();
    let states: Vec<_> = agents
        .iter()
        .map(|a| owner.find_agent(a).unwrap()[0].1.clone())
        .collect();
    drop(owner);

    let elsewhere = tempfile::tempdir().unwrap();
    let d = start(&k, elsewhere.path());
    wait(&d.metrics, "two restores", |m| {
        m.changelog_restores.load(Ordering::Relaxed) == 2
    });
    let metrics = d.metrics.clone();
    stop(d);
    assert_eq!(
        metrics.events.load(Ordering::Relaxed),
        0,
        "nothing replayed"
    );
    let restored = Store::open(elsewhere.path()).unwrap();
    for (a, want) in agents.iter().zip(&states) {
        let found = restored.find_agent(a).unwrap();
        assert_eq!(found.len(), 1, "{a} restored");
        assert_eq!(&found[0].1, want, "state of {a}");
    }
}

/// A partition moves to an instance without its state: restored from the changelog topic
/// (nothing of the audit history is folded again, the agents' states equal their owner's), and
/// the next events count once. A record planted in the changelog without the signing key makes
/// its partition's restore fail: that partition is replayed from its history instead.
#[test]
fn a_partition_without_local_state_is_restored_from_the_changelog_not_replayed() {
    let (c, mut k) = cluster();
    c.create_topic("changelog", 2, 1).unwrap();
    k.changelog_topic = Some("changelog".into());
    let agents = calm_agents();
    let first = tempfile::tempdir().unwrap();
    fold_calm_history(&k, &agents, first.path());
    let owner = Store::open(first.path()).unwrap();
    let states: Vec<_> = agents
        .iter()
        .map(|a| owner.find_agent(a).unwrap()[0].1.clone())
        .collect();
    drop(owner);
    let incidents_before = incidents(&k).len();

    let second = tempfile::tempdir().unwrap();
    let d = start(&k, second.path());
    wait(&d.metrics, "two restores", |m| {
        m.changelog_restores.load(Ordering::Relaxed) == 2
    });
    produce_ten_more(&k, &agents[0]);
    wait(&d.metrics, "the new events", |m| {
        m.events.load(Ordering::Relaxed) == 10
    });
    let metrics = d.metrics.clone();
    stop(d);
    assert_eq!(
        metrics.events.load(Ordering::Relaxed),
        10,
        "no history replayed"
    );
    assert_eq!(metrics.suppressed.load(Ordering::Relaxed), 0);
    assert!(metrics.changelog_records_restored.load(Ordering::Relaxed) >= 8);
    assert_eq!(incidents(&k).len(), incidents_before, "no incident again");
    let restored = Store::open(second.path()).unwrap();
    for (a, want) in agents.iter().zip(&states).skip(1) {
        assert_eq!(&restored.find_agent(a).unwrap()[0].1, want, "state of {a}");
    }
    assert_eq!(restored.find_agent(&agents[0]).unwrap()[0].1.events, 40);
    let ends: std::collections::HashMap<i32, i64> = restored
        .partition_metas()
        .unwrap()
        .into_iter()
        .map(|(_, p, m)| (p, m.next_offset))
        .collect();
    let states: Vec<_> = agents
        .iter()
        .map(|a| restored.find_agent(a).unwrap()[0].1.clone())
        .collect();
    drop(restored);

    // A meta planted in partition 0 of the changelog by whoever can write to it.
    let mut s = KafkaSink::new(&k.brokers, &Default::default()).unwrap();
    let planted = rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
        key: agent_guardian::store::CHECKPOINT_HEADER,
        value: Some(b"999999".as_slice()),
    });
    s.send_to(("changelog", 0), b"m/audit/0000000000", Some(b"x"), planted)
        .unwrap();
    s.settle(Duration::from_secs(10)).unwrap();
    let third = tempfile::tempdir().unwrap();
    let d = start(&k, third.path());
    wait(
        &d.metrics,
        "partition 0 replayed, partition 1 restored",
        |m| {
            m.changelog_restores.load(Ordering::Relaxed) == 1
                && m.events.load(Ordering::Relaxed) as i64 == ends[&0]
        },
    );
    stop(d);
    let rebuilt = Store::open(third.path()).unwrap();
    for (a, want) in agents.iter().zip(&states) {
        assert_eq!(&rebuilt.find_agent(a).unwrap()[0].1, want, "state of {a}");
    }
}

/// What a daemon decided over one run: its incidents (agent and kind, sorted), the stored state
/// of each agent, its counters.
type Run = (Vec<(String, String)>, Vec<String>, std::sync::Arc<Metrics>);

/// Twelve calm agents' history, then a burst of 60 calls in a minute by one and an operator's
/// kill of another issued at `issued`, through a daemon keeping at most `bound` agents in memory
/// (0: no bound).
fn run_with_bound(bound: usize, issued: i64) -> Run {
    let agents: Vec<String> = (0..12).map(|a| format!("fin-calm-{a}")).collect();
    let (_c, k) = cluster();
    let history = produce_calm_history(&k, &agents);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = demo::local_config(
        k.clone(),
        dir.path(),
        demo::demo_blueprints_learned().unwrap(),
    );
    cfg.config.max_agents_in_memory = bound;
    let d = Daemon::start(cfg).unwrap();
    wait(&d.metrics, "history", |m| {
        m.events.load(Ordering::Relaxed) == history
    });
    if bound > 0 {
        // Once the history is checkpointed, the agents beyond the bound leave memory.
        wait(&d.metrics, "agents out of memory", |m| {
            m.agents_unloaded.load(Ordering::Relaxed) > 0
                && m.agents_in_memory.load(Ordering::Relaxed) <= bound as u64
        });
    }
    let burst: Vec<(Option<String>, Vec<u8>)> = (0..60u64)
        .map(|i| {
            let ts = T0 + 31 * 300_000 + i as i64 * 1_000;
            let a = &agents[1];
            (
                Some(a.clone()),
                line(a, 200 + i, ts, "read_ledger").into_bytes(),
            )
        })
        .collect();
    produce(&k, "audit", &burst);
    let kill = Command::manual(Verb::Kill, &agents[2], "test", issued, "ops")
        .valid_for(issued, DEFAULT_TTL_MS)
        .sign(DEMO_KEY)
        .unwrap();
    produce(
        &k,
        &k.control_topic,
        &[(Some(agents[2].clone()), kill.to_json().unwrap())],
    );
    wait(&d.metrics, "the burst and the kill", |m| {
        m.events.load(Ordering::Relaxed) == history + 60
            && m.commands_applied.load(Ordering::Relaxed) == 1
    });
    let metrics = d.metrics.clone();
    stop(d);
    let mut found: Vec<(String, String)> = incidents(&k)
        .into_iter()
        .map(|i| (i.agent_id, i.kind.as_str().to_string()))
        .collect();
    found.sort();
    let store = Store::open(dir.path()).unwrap();
    let states = agents
        .iter()
        .map(|a| {
            let mut s = store.find_agent(a).unwrap();
            assert_eq!(s.len(), 1, "{a} stored once");
            serde_json::to_string(&s.remove(0).1).unwrap()
        })
        .collect();
    (found, states, metrics)
}

/// `max_agents_in_memory`: with 3 of 12 agents in memory, the others are read back from the
/// state for their next event or command; the incidents and what is stored are those of an
/// instance that keeps every agent.
#[test]
fn an_instance_with_few_agents_in_memory_judges_and_stores_the_same() {
    let issued = now();
    let (incidents, states, _) = run_with_bound(0, issued);
    assert!(
        incidents
            .iter()
            .any(|(a, k)| a == "fin-calm-1" && k == "frequency_spike"),
        "{incidents:?}"
    );
    let (bounded, bounded_states, m) = run_with_bound(3, issued);
    assert!(
        m.agents_loaded.load(Ordering::Relaxed) >= 2,
        "the burst's agent and the killed one"
    );
    assert_eq!(bounded, incidents);
    assert!(bounded_states == states, "the stored states differ");
    assert!(states[2].contains("\"killed\":true"), "{}", states[2]);
}
