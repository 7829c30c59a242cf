//! OpenTelemetry traces as input: a fleet written as OTLP/JSON requests (the Collector's
//! `otlp_json`), with an `invoke_agent` span naming the agent of each trace and `execute_tool`
//! spans that do not, replayed by `guardian replay`'s engine, gives the agents and incidents of
//! the same fleet written as Agent-SPM events (ids aside: a span's id is not the event's).

use agent_guardian::engine::Engine;
use agent_guardian::event::Decoder;
use agent_guardian::replay;
use agent_guardian::response::Incident;
use agent_guardian::simulate::{SimConfig, Simulation};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

#[path = "support/fleet.rs"]
mod fleets;

fn hex(s: &str, bytes: usize) -> String {
    hex::encode(&Sha256::digest(s.as_bytes())[..bytes])
}

fn kv(k: &str, v: &str) -> Value {
    json!({"key": k, "value": {"stringValue": v}})
}

/// The simulated fleet as Agent-SPM lines (without data volumes, which spans do not carry by
/// default) and as OTLP/JSON requests of up to 16 spans: one trace per agent and day, its
/// `invoke_agent` span after its first call (spans are exported as they end).
fn fleet() -> (String, String) {
    let sim = Simulation::new(SimConfig {
        agents: 40,
        days: 10,
        seed: 5,
        ..SimConfig::default()
    });
    let text = String::from_utf8(sim.to_jsonl()).expect("utf8");
    let (mut spm, mut otlp) = (String::new(), String::new());
    let mut traces = std::collections::BTreeSet::new();
    let mut request: Vec<Value> = Vec::new();
    let flush = |request: &mut Vec<Value>, otlp: &mut String| {
        if !request.is_empty() {
            otlp.push_str(&json!({"resourceSpans": std::mem::take(request)}).to_string());
            otlp.push('\n');
        }
    };
    for line in text.lines() {
        let mut ev: Value = serde_json::from_str(line).expect("json");
        if let Some(p) = ev["safe_payload"].as_object_mut() {
            p.remove("bytes");
        }
        spm.push_str(&ev.to_string());
        spm.push('\n');
        let agent = ev["agent_id"].as_str().expect("agent").to_string();
        let ts = chrono::DateTime::parse_from_rfc3339(ev["timestamp"].as_str().expect("ts"))
            .expect("rfc3339")
            .timestamp_millis();
        let trace = hex(&format!("{agent}/{}", ts.div_euclid(86_400_000)), 16);
        let env = ev["safe_payload"]["environment"]
            .as_str()
            .unwrap_or("prod")
            .to_string();
        let resource = json!({"attributes": [kv("service.name", "agents-platform"),
                                             kv("deployment.environment.name", &env)]});
        let nanos = (ts as u64 * 1_000_000).to_string();
        let tool = ev["tool_name"].as_str().expect("tool");
        let mut spans = vec![
            json!({"traceId": trace, "spanId": hex(ev["event_id"].as_str().expect("id"), 8),
            "name": format!("execute_tool {tool}"), "startTimeUnixNano": nanos,
            "attributes": [kv("gen_ai.operation.name", "execute_tool"), kv("gen_ai.tool.name", tool)]}),
        ];
        // The agent span ends, and so is exported, after its first call: later in the request.
        if traces.insert(trace.clone()) {
            spans.push(json!({"traceId": trace, "spanId": hex(&format!("a/{trace}"), 8),
                "name": format!("invoke_agent {agent}"), "startTimeUnixNano": nanos,
                "attributes": [kv("gen_ai.operation.name", "invoke_agent"), kv("gen_ai.agent.id", &agent)]}));
        }
        request.push(json!({"resource": resource, "scopeSpans": [{"scope": {"name": "agent-sdk"}, "spans": spans}]}));
        if request.len() == 16 {
            flush(&mut request, &mut otlp);
        }
    }
    flush(&mut request, &mut otlp);
    (spm, otlp)
}

/// An incident as (agent, kind, time, tool): what two forms of the same fleet must agree on.
type IncidentKey = (String, String, i64, String);

/// The incidents of a replay of `lines`, its summary and its number of agents.
fn run(lines: &str) -> (Vec<IncidentKey>, replay::ReplaySummary, usize) {
    let set = fleets::shipped_blueprints();
    let decoder = Decoder::new(&set.decoder_options()).expect("decoder");
    let mut engine = Engine::new(set);
    let mut incidents: Vec<Incident> = Vec::new();
    let summary = replay::run(
        &mut engine,
        &decoder,
        lines.as_bytes(),
        &mut incidents,
        |l, e| panic!("line {l}: {e}"),
        None,
    )
    .expect("replay");
    let mut keys: Vec<_> = incidents
        .iter()
        .map(|i| {
            (
                i.agent_id.clone(),
                i.kind.as_str().to_string(),
                i.at,
                i.tool_name.clone(),
            )
        })
        .collect();
    keys.sort();
    (keys, summary, engine.agent_count())
}

#[test]
fn an_otlp_fleet_gives_the_agents_and_incidents_of_the_same_fleet_as_agent_spm_events() {
    let (spm, otlp) = fleet();
    let (want, want_sum, want_agents) = run(&spm);
    let (got, got_sum, got_agents) = run(&otlp);
    assert!(!want.is_empty());
    assert_eq!(got_agents, want_agents, "the agents, not the service");
    assert_eq!(got.len(), want.len());
    assert_eq!(got, want);
    assert_eq!(got_sum.events, want_sum.events);
    // Every tool span was attributed through its trace's agent span: in its request, or
    // earlier.
    assert_eq!(got_sum.entries[1], want_sum.events, "{}", got_sum.render());
    assert_eq!(got_sum.entries[2], 0, "{}", got_sum.render());
}
