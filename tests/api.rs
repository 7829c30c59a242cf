//! The admin API in process (no Kafka, no socket): a replayed fleet's state served through the
//! router. Authentication, JSON shapes, filters, errors, and `/metrics` parsed by an independent
//! parser (Python prometheus_client).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use agent_guardian::api::{router, AppState, Commands};
use agent_guardian::engine::Engine;
use agent_guardian::event::Decoder;
use agent_guardian::posture::PostureSettings;
use agent_guardian::replay::{self, StateRecorder};
use agent_guardian::response::Incident;
use agent_guardian::simulate::{SimConfig, Simulation};
use agent_guardian::store::Store;
use agent_guardian::telemetry::{Live, Metrics};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;

mod support;

const TOKEN: &str = "test-token-0123456789";

struct Fixture {
    _dir: tempfile::TempDir,
    state: Arc<AppState>,
}

fn fixture() -> Fixture {
    fixture_with(None)
}

fn fixture_with(commander: Option<Box<dyn Commands>>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let set = agent_guardian::demo::demo_blueprints().unwrap();
    let sim = Simulation::new(SimConfig {
        agents: 40,
        days: 16,
        seed: 3,
        ..SimConfig::default()
    });
    let decoder = Decoder::new(&set.decoder_options()).unwrap();
    let mut engine = Engine::new(set.clone());
    let mut rec = StateRecorder::new(Vec::<Incident>::new(), PostureSettings::default());
    let events = sim.to_jsonl();
    let s = replay::run(
        &mut engine,
        &decoder,
        &events[..],
        &mut rec,
        |l, e| panic!("{l}: {e}"),
        None,
    )
    .unwrap();
    replay::write_state(dir.path(), engine, &rec, "fleet", s.lines).unwrap();
    let store = Store::open(dir.path()).unwrap();
    let metrics = Arc::new(Metrics::default());
    metrics.events.store(s.events, Ordering::Relaxed);
    let live = Arc::new(Live {
        store,
        metrics,
        owned: std::sync::RwLock::new(vec![("replay:fleet".to_string(), 0)]),
        view: Default::default(),
        peers: Default::default(),
        guardian_id: "guardian-1".into(),
    });
    let state = Arc::new(AppState::new(
        live,
        set,
        PostureSettings::default(),
        TOKEN,
        commander,
    ));
    Fixture { _dir: dir, state }
}

async fn call(
    f: &Fixture,
    method: Method,
    uri: &str,
    token: Option<&str>,
) -> (StatusCode, String, Vec<u8>) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = router(f.state.clone())
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 26)
        .await
        .unwrap();
    (status, ctype, body.to_vec())
}

async fn json(f: &Fixture, uri: &str) -> Value {
    let (status, ctype, body) = call(f, Method::GET, uri, Some(TOKEN)).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{uri}: {}",
        String::from_utf8_lossy(&body)
    );
    assert!(ctype.starts_with("application/json"), "{uri}: {ctype}");
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test]
async fn everything_but_health_and_readiness_needs_the_token() {
    let f = fixture();
    let (s, _, b) = call(&f, Method::GET, "/healthz", None).await;
    assert_eq!((s, b.as_slice()), (StatusCode::OK, b"ok\n".as_slice()));
    let (s, _, b) = call(&f, Method::GET, "/readyz", None).await;
    assert_eq!(
        s,
        StatusCode::SERVICE_UNAVAILABLE,
        "not ready before partitions are assigned"
    );
    assert_eq!(serde_json::from_slice::<Value>(&b).unwrap()["ready"], false);
    f.state.live.metrics.ready.store(true, Ordering::Relaxed);
    assert_eq!(
        call(&f, Method::GET, "/readyz", None).await.0,
        StatusCode::OK
    );
    let (s, ctype, _) = call(&f, Method::GET, "/", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(ctype.starts_with("text/html"));
    for uri in [
        "/metrics",
        "/agents",
        "/agents/fin-00001",
        "/incidents",
        "/posture",
        "/compliance",
        "/compliance/eu-ai-act",
    ] {
        for token in [None, Some("wrong-token-0123456789"), Some("")] {
            let (s, _, _) = call(&f, Method::GET, uri, token).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{uri} with {token:?}");
        }
    }
    for uri in ["/agents/x/kill", "/agents/x/revive"] {
        assert_eq!(
            call(&f, Method::POST, uri, None).await.0,
            StatusCode::UNAUTHORIZED
        );
    }
}

/// The scheme of `Authorization` is case-insensitive; another scheme is refused. Every response
/// says `nosniff`; the page may not be framed.
#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive_and_responses_are_not_sniffed_or_framed() {
    let f = fixture();
    let send = |auth: String, uri: &'static str| {
        let req = Request::builder()
            .uri(uri)
            .header("authorization", auth)
            .body(Body::empty())
            .unwrap();
        router(f.state.clone()).oneshot(req)
    };
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let r = send(format!("{scheme} {TOKEN}"), "/agents").await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{scheme}");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    }
    let r = send(format!("Basic {TOKEN}"), "/agents").await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    let r = send(String::new(), "/").await.unwrap();
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
}

#[tokio::test]
async fn agents_and_posture_have_their_shapes_and_filters() {
    let f = fixture();
    let all = json(&f, "/agents").await;
    let agents = all["agents"].as_array().unwrap();
    assert_eq!(all["count"].as_u64().unwrap() as usize, agents.len());
    assert_eq!(agents.len(), 40);
    let risks: Vec<u64> = agents.iter().map(|a| a["risk"].as_u64().unwrap()).collect();
    assert!(risks.windows(2).all(|w| w[0] >= w[1]), "riskiest first");
    for k in [
        "agent_id",
        "blueprint",
        "status",
        "risk",
        "level",
        "events",
        "incidents",
        "last_seen",
        "reasons",
    ] {
        assert!(agents[0].get(k).is_some(), "{k} missing: {}", agents[0]);
    }
    let min = risks[risks.len() / 2];
    let filtered = json(&f, &format!("/agents?min_risk={min}")).await;
    assert!(filtered["agents"]
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a["risk"].as_u64().unwrap() >= min));
    let fin = json(&f, "/agents?blueprint=finance&limit=3").await;
    let fin = fin["agents"].as_array().unwrap();
    assert!(!fin.is_empty() && fin.len() <= 3);
    assert!(fin.iter().all(|a| a["blueprint"] == "finance"));
    let killed = json(&f, "/agents?status=killed").await;
    let killed = killed["agents"].as_array().unwrap();
    assert!(killed.iter().all(|a| a["status"] == "killed"));
    assert_eq!(
        killed.len(),
        agents.iter().filter(|a| a["status"] == "killed").count()
    );
    assert_eq!(
        call(&f, Method::GET, "/agents?status=zombie", Some(TOKEN))
            .await
            .0,
        StatusCode::BAD_REQUEST
    );

    let id = agents[0]["agent_id"].as_str().unwrap();
    let one = json(&f, &format!("/agents/{id}")).await;
    let a = &one["agent"];
    assert_eq!(a["agent_id"], id);
    for k in [
        "status",
        "tools",
        "environments",
        "outcomes",
        "baseline",
        "risk",
        "kill_history",
        "incidents",
    ] {
        assert!(a.get(k).is_some(), "{k} missing: {a}");
    }
    assert!(a["baseline"]["history_hours"].as_i64().unwrap() > 24);
    assert!(!a["risk"]["factors"].as_array().unwrap().is_empty());
    let recent = one["recent_incidents"].as_array().unwrap();
    assert!(recent.iter().all(|i| i["agent_id"] == id));
    assert_eq!(
        call(&f, Method::GET, "/agents/no-such-agent", Some(TOKEN))
            .await
            .0,
        StatusCode::NOT_FOUND
    );

    let p = json(&f, "/posture").await;
    assert!(p["fleet"]["score"].as_u64().unwrap() <= 100);
    assert_eq!(p["fleet"]["agents"], 40);
    assert!(p.get("agents").is_none(), "the agent list only on request");
    assert!(p["top_risks"].as_array().unwrap().len() <= 10);
    // The tool inventory accounts for every call, sensitive tools first.
    let tools = p["tools"].as_array().unwrap();
    let calls: u64 = tools.iter().map(|t| t["calls"].as_u64().unwrap()).sum();
    assert_eq!(calls, p["fleet"]["events"].as_u64().unwrap());
    assert_eq!(tools.len() as u64, p["fleet"]["tools"].as_u64().unwrap());
    let flags: Vec<bool> = tools
        .iter()
        .map(|t| t["sensitive"].as_bool().unwrap())
        .collect();
    assert!(flags.windows(2).all(|w| w[0] >= w[1]), "{flags:?}");
    assert!(flags[0], "the simulated fleet moves money");
    assert_eq!(
        json(&f, "/posture?agents=true").await["agents"]
            .as_array()
            .unwrap()
            .len(),
        40
    );
}

#[tokio::test]
async fn incidents_filter_by_agent_type_severity_and_time() {
    let f = fixture();
    let all = json(&f, "/incidents?limit=10000").await;
    let all = all["incidents"].as_array().unwrap().clone();
    assert!(all.len() > 10, "{}", all.len());
    let at =
        |i: &Value| agent_guardian::event::parse_rfc3339_ms(i["at"].as_str().unwrap()).unwrap();
    assert!(
        all.windows(2).all(|w| at(&w[0]) >= at(&w[1])),
        "newest first"
    );
    let agent = all[0]["agent_id"].as_str().unwrap();
    let mine = json(&f, &format!("/incidents?agent={agent}&limit=10000")).await;
    let mine = mine["incidents"].as_array().unwrap();
    assert_eq!(
        mine.len(),
        all.iter().filter(|i| i["agent_id"] == agent).count()
    );
    let kind = all[0]["type"].as_str().unwrap();
    let typed = json(&f, &format!("/incidents?type={kind}&limit=10000")).await;
    assert_eq!(
        typed["count"].as_u64().unwrap() as usize,
        all.iter().filter(|i| i["type"] == kind).count()
    );
    let high = json(&f, "/incidents?severity=high&limit=10000").await;
    assert!(high["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["severity"] == "high" || i["severity"] == "critical"));
    // A time window, given in epoch ms and in RFC 3339.
    let (lo, hi) = (at(&all[all.len() - 1]), at(&all[0]));
    let mid = lo + (hi - lo) / 2;
    let want = all.iter().filter(|i| at(i) >= mid).count();
    assert_eq!(
        json(&f, &format!("/incidents?since={mid}&limit=10000")).await["count"]
            .as_u64()
            .unwrap() as usize,
        want
    );
    let rfc = agent_guardian::event::format_rfc3339_ms(mid);
    let until = json(&f, &format!("/incidents?until={rfc}&limit=10000")).await;
    assert!(until["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| at(i) <= mid));
    assert_eq!(json(&f, "/incidents?limit=5").await["count"], 5);
    for bad in [
        "/incidents?type=nope",
        "/incidents?severity=urgent",
        "/incidents?since=yesterday",
    ] {
        let (s, _, b) = call(&f, Method::GET, bad, Some(TOKEN)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}");
        assert!(serde_json::from_slice::<Value>(&b).unwrap()["error"].is_string());
    }
}

#[tokio::test]
async fn compliance_reports_list_controls_with_evidence() {
    let f = fixture();
    let list = json(&f, "/compliance").await;
    assert_eq!(list["frameworks"].as_array().unwrap().len(), 3);
    for fw in ["eu-ai-act", "uk-ai-principles", "nist-ai-rmf"] {
        let r = json(&f, &format!("/compliance/{fw}")).await;
        assert_eq!(r["framework"], fw);
        for c in r["controls"].as_array().unwrap() {
            assert!(c["id"].is_string() && c["status"].is_string(), "{c}");
            if c["status"] != "not_assessed" {
                assert!(!c["evidence"].as_array().unwrap().is_empty(), "{c}");
            }
        }
    }
    let eu = json(&f, "/compliance/eu-ai-act").await;
    let ids: Vec<_> = eu["controls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["art-9", "art-12", "art-19", "art-14", "art-15"]);
    assert_eq!(
        call(&f, Method::GET, "/compliance/sox", Some(TOKEN))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    // This API was built without a producer: commands are refused, not lost silently.
    assert_eq!(
        call(&f, Method::POST, "/agents/fin-00001/kill", Some(TOKEN))
            .await
            .0,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn metrics_parse_with_prometheus_client_and_carry_no_agent_ids() {
    let f = fixture();
    let m = &f.state.live.metrics;
    m.bad_by_kind[1].store(3, Ordering::Relaxed);
    m.latency.observe(0.002);
    *m.sinks.lock().unwrap() = vec![agent_guardian::sink::SinkStatus {
        name: "siem-tls".into(),
        spooled: 4,
        sent: 10,
        failures: 2,
        dropped: 1,
    }];
    let (s, ctype, body) = call(&f, Method::GET, "/metrics", Some(TOKEN)).await;
    assert_eq!(s, StatusCode::OK);
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    let text = String::from_utf8(body).unwrap();
    let Some(parsed) = support::parse_metrics(&text) else {
        return;
    };
    let fams = &parsed["openmetrics"];
    for (name, typ) in [
        ("guardian_events_consumed", "counter"),
        ("guardian_bad_events", "counter"),
        ("guardian_incidents", "counter"),
        ("guardian_commands_sent", "counter"),
        ("guardian_consumer_lag_messages", "gauge"),
        ("guardian_sink_queue_depth", "gauge"),
        ("guardian_sink_failures", "counter"),
        ("guardian_state_size_bytes", "gauge"),
        ("guardian_duplicate_events", "counter"),
        ("guardian_binding_conflicts", "counter"),
        ("guardian_duplicate_identities", "gauge"),
        ("guardian_findings_explained", "counter"),
        ("guardian_fleet_shifts", "gauge"),
        ("guardian_processing_latency_seconds", "histogram"),
        ("guardian_event_age_seconds", "histogram"),
    ] {
        assert_eq!(fams[name]["type"], typ, "{name} in {text}");
        assert_eq!(parsed["classic"][name], typ, "{name} (classic parser)");
    }
    let value = |fam: &str, sample: &str, label: (&str, &str)| -> f64 {
        fams[fam]["samples"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s[0] == sample && (label.0.is_empty() || s[1][label.0] == label.1))
            .unwrap_or_else(|| panic!("{sample} {label:?}"))[2]
            .as_f64()
            .unwrap()
    };
    assert_eq!(
        value(
            "guardian_bad_events",
            "guardian_bad_events_total",
            ("kind", "not_json")
        ),
        3.0
    );
    assert_eq!(
        value(
            "guardian_sink_queue_depth",
            "guardian_sink_queue_depth",
            ("sink", "siem-tls")
        ),
        4.0
    );
    assert_eq!(
        value(
            "guardian_sink_failures",
            "guardian_sink_failures_total",
            ("sink", "siem-tls")
        ),
        2.0
    );
    assert_eq!(
        value(
            "guardian_processing_latency_seconds",
            "guardian_processing_latency_seconds_count",
            ("", "")
        ),
        1.0
    );
    assert!(
        value(
            "guardian_state_size_bytes",
            "guardian_state_size_bytes",
            ("", "")
        ) > 0.0
    );
    for (name, fam) in fams.as_object().unwrap() {
        for s in fam["samples"].as_array().unwrap() {
            let labels = s[1].as_object().unwrap();
            assert!(
                labels.keys().all(|k| [
                    "kind", "type", "severity", "command", "origin", "sink", "version", "le",
                    "reason", "result"
                ]
                .contains(&k.as_str())),
                "{name}: unexpected label in {s}"
            );
        }
    }
}

#[tokio::test]
async fn a_kill_while_the_broker_is_down_answers_503_with_the_reason_within_the_deadline() {
    use agent_guardian::app::commander::Commander;
    use agent_guardian::config::KafkaConfig;
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    // A port nobody listens on: the broker is down.
    let kafka = KafkaConfig {
        brokers: format!("127.0.0.1:{}", support::free_tcp()),
        ..KafkaConfig::default()
    };
    let cfg = agent_guardian::demo::local_config(
        kafka,
        dir.path(),
        agent_guardian::demo::demo_blueprints().unwrap(),
    );
    let deadline = Duration::from_secs(2);
    let commander = Commander::new(&cfg, "api").unwrap().with_deadline(deadline);
    let f = fixture_with(Some(Box::new(commander)));
    let t = Instant::now();
    let (s, _, body) = call(&f, Method::POST, "/agents/fin-00001/kill", Some(TOKEN)).await;
    let waited = t.elapsed();
    let body = String::from_utf8_lossy(&body);
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("did not acknowledge"), "{body}");
    assert!(
        waited >= deadline && waited < deadline * 4,
        "answered after {waited:?}"
    );
}

/// What an operator asks for is checked before anything is signed or sent: an agent id of an
/// event's size (400) and a reason of at most 4 KiB (413, not a broker error).
#[tokio::test]
async fn a_command_for_an_impossible_agent_id_is_400_and_an_over_long_reason_is_413() {
    let f = fixture_with(None);
    let post = |uri: String, body: String| {
        let state = f.state.clone();
        async move {
            let req = Request::builder()
                .method(Method::POST)
                .uri(uri)
                .header("authorization", format!("Bearer {TOKEN}"))
                .body(Body::from(body))
                .unwrap();
            let resp = router(state).oneshot(req).await.unwrap();
            let status = resp.status();
            let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .unwrap();
            (status, String::from_utf8_lossy(&body).to_string())
        }
    };
    let long_id = "a".repeat(600);
    let (s, body) = post(format!("/agents/{long_id}/kill"), String::new()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("1 to 512 bytes"), "{body}");
    let reason = "r".repeat(1 << 20);
    let (s, body) = post(
        "/agents/fin-00001/kill".into(),
        serde_json::json!({ "reason": reason }).to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(body.contains("more than 4096"), "{body}");
    // A reason of a sentence goes on (here to "this API cannot publish commands").
    let (s, body) = post(
        "/agents/fin-00001/kill".into(),
        r#"{"reason": "ticket SEC-1"}"#.into(),
    )
    .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
}
