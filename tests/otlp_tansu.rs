//! OpenTelemetry spans from an independent peer, end to end: a simulated fleet's calls are
//! traced with the OpenTelemetry Python SDK, encoded by its OTLP exporter's encoder as
//! `otlp_proto` (produced onto a Tansu broker with confluent-kafka) and as `otlp_json` (written to
//! a file of requests and produced by `guardian produce`), see `tests/support/otel_peer.py`, and
//! consumed by the real daemon; the same fleet as Agent-SPM events (`guardian produce`) gives the
//! same incidents.
//!
//! Run by `scripts/test.sh` (which starts Tansu and installs the Python packages with
//! `scripts/python-peers.sh`); skipped without the broker unless `GUARDIAN_REQUIRE_E2E` is set.

use std::path::Path;
use std::process::Command as Proc;

use agent_guardian::response::Incident;
use agent_guardian::simulate::{SimConfig, Simulation};

#[path = "support/tansu.rs"]
mod tansu;
use tansu::*;

/// An incident as (agent, kind, time, tool): what two forms of the same calls must agree on.
type IncidentKey = (String, String, i64, String);

/// Feeds one form of the fleet to a new daemon on its own topics and returns its incidents
/// once it has consumed `calls` tool calls and stopped.
fn incidents_of(b: &Broker, form: &str, events: &Path, calls: usize) -> Vec<IncidentKey> {
    let prefix = format!("otlp{form}{}", std::process::id());
    // One partition: a message of spans carries several agents (as the Collector sends them).
    b.topics(&prefix, 1);
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let extra = format!(
        "{}[otlp]\nvolume_attribute = \"app.tool.bytes\"\n",
        api_section(port)
    );
    let cfg = write_config_with(dir.path(), b, &prefix, &extra);
    let audit = format!("{prefix}-audit");
    let out = match form {
        "spm" => guardian()
            .args(["produce", "--config"])
            .arg(&cfg)
            .arg(events)
            .env("E2E_GUARDIAN_KEY", KEY)
            .env("E2E_API_TOKEN", TOKEN)
            .output(),
        encoding => Proc::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/support/otel_peer.py"
            ))
            .arg(events)
            .args([&b.addr, &audit, encoding])
            .output(),
    }
    .expect("producer");
    assert!(
        out.status.success(),
        "{form}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut d = Daemon::start(&cfg, port, &dir.path().join("run.log"));
    d.until(&format!("{calls} calls ({form})"), |d| {
        d.metric("guardian_events_consumed_total") >= calls as f64
    });
    assert_eq!(d.metric("guardian_events_consumed_total"), calls as f64);
    assert_eq!(
        d.metric("guardian_audit_entries_total{result=\"unresolved\"}"),
        0.0,
        "{form}: every span attributed to its agent"
    );
    d.stop();
    let dead = read_topic(&b.addr, &format!("{prefix}-dlq"), 1);
    assert!(dead.is_empty(), "{form}: {} dead letters", dead.len());
    let mut got: Vec<IncidentKey> = read_topic(&b.addr, &format!("{prefix}-incidents"), 1)
        .iter()
        .map(|p| serde_json::from_slice::<Incident>(p).expect("incident"))
        .map(|i| (i.agent_id, i.kind.as_str().to_string(), i.at, i.tool_name))
        .collect();
    got.sort();
    got
}

#[test]
fn otlp_from_the_opentelemetry_python_sdk_gives_the_incidents_of_the_same_calls_as_agent_spm() {
    let Some(b) = broker() else { return };
    // Ten days: anomalies on the last two, after the blueprints' seven-day learning period.
    let sim = Simulation::new(SimConfig {
        agents: 20,
        days: 10,
        seed: 23,
        ..SimConfig::default()
    });
    let lines = sim.to_jsonl();
    let calls = lines
        .split(|c| *c == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    let dir = tempfile::tempdir().expect("dir");
    let events = dir.path().join("events.jsonl");
    std::fs::write(&events, &lines).expect("write");

    let want = incidents_of(&b, "spm", &events, calls);
    assert!(want.len() >= 3, "the fleet must raise incidents: {want:?}");
    let kinds: std::collections::BTreeSet<&str> = want.iter().map(|i| i.1.as_str()).collect();
    assert!(
        kinds.contains("volume_spike"),
        "volumes carried by a span attribute: {kinds:?}"
    );
    for encoding in ["proto", "json"] {
        let got = incidents_of(&b, encoding, &events, calls);
        assert_eq!(got, want, "otlp_{encoding} against Agent-SPM");
    }
}
