//! AgentShield's real shape: the runtime names an agent once per session, in `session_created
//! {sessionId, userId, agentId}`; its tool entries carry only `sessionId` and `userId`, and one
//! person runs several agents. A fleet written that way must give the same agents and the same
//! incidents as the same fleet written as Agent-SPM events, also when the state is saved and
//! restored between a session's creation and its tool calls (what a daemon restart does).

use std::collections::{BTreeMap, BTreeSet};

use agent_guardian::engine::Engine;
use agent_guardian::event::{Decoder, EntryKind};
use agent_guardian::response::Incident;
use agent_guardian::simulate::{SimConfig, Simulation};
use agent_guardian::state::{Resolution, Snapshot};
use serde_json::{json, Value};

#[path = "support/fleet.rs"]
mod fleets;

/// Agents per person.
const AGENTS_PER_USER: usize = 5;

/// The simulated fleet, as Agent-SPM lines (outcomes reduced to allowed or denied, which is
/// what AgentShield's entry types say) and as AgentShield entries: a `session_created` at the
/// start of each agent's session (one per agent and UTC day), then its tool entries without an
/// agent id.
fn fleet() -> (Vec<String>, Vec<String>) {
    let sim = Simulation::new(SimConfig {
        agents: 40,
        days: 10,
        seed: 7,
        ..SimConfig::default()
    });
    let text = String::from_utf8(sim.to_jsonl()).expect("utf8");
    let mut users: BTreeMap<String, String> = BTreeMap::new();
    let mut sessions: BTreeSet<String> = BTreeSet::new();
    let (mut spm, mut shield) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let mut ev: Value = serde_json::from_str(line).expect("json");
        let allowed = ev["outcome"] == "ALLOW";
        ev["outcome"] = json!(if allowed { "ALLOW" } else { "DENY" });
        spm.push(ev.to_string());
        let agent = ev["agent_id"].as_str().expect("agent").to_string();
        let n = users.len();
        let user = users
            .entry(agent.clone())
            .or_insert_with(|| format!("user-{:02}", n / AGENTS_PER_USER))
            .clone();
        let ts = chrono::DateTime::parse_from_rfc3339(ev["timestamp"].as_str().expect("ts"))
            .expect("rfc3339")
            .timestamp_millis();
        let session = format!("sess-{agent}-{}", ts.div_euclid(86_400_000));
        if sessions.insert(session.clone()) {
            shield.push(
                json!({"type": "session_created", "timestamp": ts, "eventId": format!("sc-{session}"),
                       "sessionId": session, "userId": user, "agentId": agent})
                .to_string(),
            );
        }
        shield.push(
            json!({"type": if allowed { "tool_allowed" } else { "policy_denied" },
                   "timestamp": ts, "eventId": ev["event_id"], "sessionId": session,
                   "userId": user, "toolName": ev["tool_name"], "safe_payload": ev["safe_payload"]})
            .to_string(),
        );
    }
    assert!(users.len() > 2 * AGENTS_PER_USER, "several people");
    (spm, shield)
}

/// What a run found: its incidents (sorted), its agents, and the entries by resolution.
struct Run {
    incidents: Vec<Incident>,
    agents: BTreeSet<String>,
    by: BTreeMap<&'static str, u64>,
}

/// Folds `lines` in order; after line `cut` (if any) the engine is saved as a snapshot, encoded,
/// decoded and restored, as a restart does.
fn fold(lines: &[String], cut: Option<usize>) -> Run {
    let set = fleets::shipped_blueprints();
    let decoder = Decoder::new(&set.decoder_options()).expect("decoder");
    let mut engine = Engine::new(set.clone());
    let mut out = Vec::new();
    let mut by = BTreeMap::new();
    for (i, line) in lines.iter().enumerate() {
        let mut ev = decoder.decode(line.as_bytes()).expect("decodes");
        let how = engine.resolve(&mut ev);
        *by.entry(how.label()).or_insert(0) += 1;
        if how.is_tool_call() {
            engine.process(&ev, &mut out);
        }
        if cut == Some(i) {
            let bytes = engine.snapshot().to_bytes().expect("encode");
            engine = Engine::restore(set.clone(), Snapshot::from_bytes(&bytes).expect("decode"));
        }
    }
    engine.finish(&mut out);
    out.sort_by(|a, b| (a.at, &a.incident_id).cmp(&(b.at, &b.incident_id)));
    Run {
        incidents: out,
        agents: engine.agents().map(|a| a.agent_id.clone()).collect(),
        by,
    }
}

/// The parts of an incident both formats carry.
fn key(i: &Incident) -> (String, String, String, i64, String, String) {
    (
        i.incident_id.clone(),
        i.agent_id.clone(),
        i.kind.as_str().to_string(),
        i.at,
        i.event_id.clone(),
        i.tool_name.clone(),
    )
}

#[test]
fn an_agentshield_fleet_gives_the_agents_and_incidents_of_the_same_fleet_in_agent_spm_form() {
    let (spm, shield) = fleet();
    let want = fold(&spm, None);
    let got = fold(&shield, None);
    assert!(!want.incidents.is_empty());
    assert_eq!(got.agents, want.agents, "the same agents, not the users");
    let (w, g): (Vec<_>, Vec<_>) = (
        want.incidents.iter().map(key).collect(),
        got.incidents.iter().map(key).collect(),
    );
    assert_eq!(g.len(), w.len());
    assert_eq!(g, w);
    assert_eq!(got.by.get("resolved"), Some(&(spm.len() as u64)));
    assert_eq!(got.by.get("unresolved"), None);
    assert_eq!(
        got.by.get("bound"),
        Some(&((shield.len() - spm.len()) as u64))
    );
}

#[test]
fn a_restart_between_a_sessions_creation_and_its_tool_calls_keeps_the_attribution() {
    let (spm, shield) = fleet();
    // Cut right after a session_created in the middle of the stream, so every tool entry of
    // that session is read by the restored engine.
    let middle = shield.len() / 2;
    let cut = (middle..shield.len())
        .find(|&i| {
            Decoder::default()
                .decode(shield[i].as_bytes())
                .is_ok_and(|e| e.kind == EntryKind::SessionBinding)
        })
        .expect("a session in the second half");
    let want = fold(&spm, None);
    let got = fold(&shield, Some(cut));
    assert_eq!(got.agents, want.agents);
    let (w, g): (Vec<_>, Vec<_>) = (
        want.incidents.iter().map(key).collect(),
        got.incidents.iter().map(key).collect(),
    );
    assert_eq!(g, w);
    assert_eq!(got.by.get("unresolved"), None);
    // Without the sessions in the snapshot the restored engine would not know the session.
    let mut restored = Engine::restore(fleets::shipped_blueprints(), {
        let mut e = Engine::new(fleets::shipped_blueprints());
        for line in &shield[..=cut] {
            let mut ev = Decoder::default().decode(line.as_bytes()).expect("decodes");
            e.resolve(&mut ev);
        }
        let mut s = e.snapshot();
        s.sessions.clear();
        s
    });
    let mut first_call = Decoder::default()
        .decode(shield[cut + 1].as_bytes())
        .expect("decodes");
    assert_eq!(restored.resolve(&mut first_call), Resolution::Unresolved);
}
