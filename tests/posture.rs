//! Posture on scenario data: risk ranks agents with injected anomalies above clean ones, a
//! killed agent tops the fleet with its reasons, and compliance controls follow the facts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use agent_guardian::blueprint::{load_blueprint, Assignment, BlueprintSet};
use agent_guardian::engine::Engine;
use agent_guardian::event::{AuditEvent, Decoder, Format, Outcome};
use agent_guardian::posture::{
    inventory, AgentStatus, ControlStatus, Framework, Gap, PostureSettings, RiskLevel, StateView,
};
use agent_guardian::replay::{self, StateRecorder};
use agent_guardian::response::Incident;
use agent_guardian::simulate::{SimConfig, Simulation};
use agent_guardian::state::AgentSummary;
use agent_guardian::store::Store;

/// Replays a simulated fleet into a state directory and reads it back as the CLI and API do.
fn replayed(dir: &std::path::Path, sim: &Simulation, set: Arc<BlueprintSet>) -> StateView {
    let decoder = Decoder::new(&set.decoder_options()).unwrap();
    let mut engine = Engine::new(set);
    let events = sim.to_jsonl();
    let mut rec = StateRecorder::new(Vec::<Incident>::new(), PostureSettings::default());
    let s = replay::run(
        &mut engine,
        &decoder,
        &events[..],
        &mut rec,
        |l, e| panic!("line {l}: {e}"),
        None,
    )
    .unwrap();
    replay::write_state(dir, engine, &rec, "fleet.jsonl", s.lines).unwrap();
    Store::open(dir).unwrap().state_view(None).unwrap()
}

fn fleet(days: u32) -> Simulation {
    Simulation::new(SimConfig {
        agents: 80,
        days,
        seed: 7,
        ..SimConfig::default()
    })
}

#[test]
fn agents_with_injected_anomalies_rank_above_clean_agents() {
    let dir = tempfile::tempdir().unwrap();
    let sim = fleet(21);
    let set = agent_guardian::demo::demo_blueprints().unwrap();
    let view = replayed(dir.path(), &sim, set.clone());
    let p = view.posture(&set, &PostureSettings::default());
    assert_eq!(p.fleet.agents, sim.fleet.len());
    let injected: BTreeSet<&str> = sim
        .labels
        .iter()
        .filter(|l| l.expect.is_some())
        .map(|l| l.agent_id.as_str())
        .collect();
    let risk: BTreeMap<&str, u8> = p
        .agents
        .iter()
        .map(|a| (a.agent_id.as_str(), a.risk))
        .collect();
    let mean = |f: &dyn Fn(&&str) -> bool| {
        let v: Vec<f64> = risk
            .iter()
            .filter(|(a, _)| f(a))
            .map(|(_, r)| f64::from(*r))
            .collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    let (bad, good) = (
        mean(&|a| injected.contains(a)),
        mean(&|a| !injected.contains(a)),
    );
    eprintln!(
        "mean risk: injected {bad:.1}, clean {good:.1}; fleet {}",
        p.fleet.score
    );
    assert!(bad > good + 5.0, "injected {bad:.1} vs clean {good:.1}");
    // The riskiest agents are mostly the injected ones, and each has its reasons.
    let top: Vec<_> = p.agents.iter().take(injected.len()).collect();
    let hits = top
        .iter()
        .filter(|a| injected.contains(a.agent_id.as_str()))
        .count();
    eprintln!("top {}: {hits} injected", top.len());
    assert!(
        hits * 2 >= top.len(),
        "{hits} of the top {} are injected",
        top.len()
    );
    for a in &p.top_risks {
        assert!(!a.reasons.is_empty(), "{a:?}");
    }
    // Daily scores were recorded by the replay: the trend compares with a day earlier.
    assert!(view.history.len() >= 20, "{}", view.history.len());
    assert_ne!(p.fleet.trend.direction, "new");
}

fn sequence_set() -> Arc<BlueprintSet> {
    let bp = load_blueprint(
        "t",
        &serde_json::json!({"name": "T", "mode": "block", "auto_kill_threshold": 2,
            "anomaly": {"suspicious_sequences": [["read_secret", "wire_transfer"]]},
            "learned": {"learning_period": 0}}),
    )
    .unwrap();
    Arc::new(
        BlueprintSet::from_blueprints(
            vec![bp],
            Assignment {
                default: "t".into(),
                ..Assignment::default()
            },
        )
        .unwrap(),
    )
}

fn ev<'a>(agent: &'a str, ts: i64, tool: &'a str, outcome: Outcome) -> AuditEvent<'a> {
    AuditEvent {
        format: Format::AgentSpm,
        event_id: "".into(),
        ts_ms: ts,
        agent_id: agent.into(),
        tool_name: tool.into(),
        outcome: Some(outcome),
        environment: Some("production".into()),
        group: None,
        bytes: None,
        kind: agent_guardian::event::EntryKind::ToolCall,
        agent_source: agent_guardian::event::AgentSource::Named,
        user: None,
        session: None,
        parent_session: None,
    }
}

#[test]
fn killed_agent_tops_the_fleet_with_its_reasons_and_revive_lowers_it() {
    let set = sequence_set();
    let mut e = Engine::new(set.clone());
    let mut out = Vec::new();
    for i in 0..40 {
        e.process(&ev("quiet", i * 60_000, "search", Outcome::Allow), &mut out);
    }
    for i in 0..30 {
        let o = if i % 3 == 0 {
            Outcome::Deny
        } else {
            Outcome::Allow
        };
        e.process(&ev("rogue", 60_000 + i * 60_000, "search", o), &mut out);
    }
    for i in 0..4 {
        let t = 3_000_000 + i * 10_000;
        e.process(&ev("rogue", t, "read_secret", Outcome::Allow), &mut out);
        e.process(
            &ev("rogue", t + 1000, "wire_transfer", Outcome::Deny),
            &mut out,
        );
    }
    // The end of the stream: the last sequences are final.
    e.finish(&mut out);
    let s = PostureSettings::default();
    let view = |e: &Engine| StateView {
        states: e.agents().map(AgentSummary::from).collect(),
        ..StateView::default()
    };
    // One agent's inventory view, from its whole state (its baseline is in its detectors).
    let agent = |e: &Engine, id: &str| {
        let now = e.agents().map(|a| a.last_seen).max().unwrap_or(0);
        e.agent(id).map(|a| inventory::view(a, &set, &s, now))
    };
    let p = view(&e).posture(&set, &s);
    let top = &p.top_risks[0];
    assert_eq!(top.agent_id, "rogue");
    assert_eq!(top.status, AgentStatus::Killed);
    assert!(top.level >= RiskLevel::High, "{top:?}");
    let rogue = agent(&e, "rogue").unwrap();
    let factors: Vec<_> = rogue.risk.factors.iter().map(|f| f.factor).collect();
    for f in [
        "kill_history",
        "incidents",
        "deny_ratio",
        "sensitive_tools",
        "environment",
    ] {
        assert!(factors.contains(&f), "{f} missing from {factors:?}");
    }
    assert!(rogue
        .tools
        .iter()
        .any(|t| t.name == "wire_transfer" && t.sensitive));
    assert_eq!(rogue.auto_kills, 1);
    let quiet = agent(&e, "quiet").unwrap();
    assert!(quiet.risk.score < top.risk, "{quiet:?}");

    assert!(e.revive("rogue", 4_000_000));
    let after = agent(&e, "rogue").unwrap();
    assert_eq!(after.status, AgentStatus::Revived);
    assert!(after.risk.score < rogue.risk.score);
    let k = after
        .risk
        .factors
        .iter()
        .find(|f| f.factor == "kill_history")
        .unwrap();
    assert!(k.reason.contains("revived 1"), "{k:?}");
}

fn status(view: &StateView, f: Framework, id: &str, s: &PostureSettings) -> ControlStatus {
    let set = agent_guardian::demo::demo_blueprints().unwrap();
    let p = view.posture(&set, s);
    let r = view.compliance(f, &p, s);
    let c = r.controls.iter().find(|c| c.id == id).unwrap();
    assert!(
        !c.evidence.is_empty() || c.status == ControlStatus::NotAssessed,
        "{c:?}"
    );
    assert_eq!(c.gaps.is_empty(), c.status == ControlStatus::Met, "{c:?}");
    c.status
}

#[test]
fn compliance_controls_follow_the_facts() {
    let dir = tempfile::tempdir().unwrap();
    let sim = fleet(14);
    let mut view = replayed(
        dir.path(),
        &sim,
        agent_guardian::demo::demo_blueprints().unwrap(),
    );
    let s = PostureSettings::default();
    // A replay: no signing key, no sinks, 14 days of coverage.
    assert_eq!(
        status(&view, Framework::EuAiAct, "art-14", &s),
        ControlStatus::NotMet
    );
    assert_eq!(
        status(&view, Framework::EuAiAct, "art-12", &s),
        ControlStatus::Partial
    );
    assert_eq!(
        status(&view, Framework::EuAiAct, "art-19", &s),
        ControlStatus::NotMet
    );
    assert_eq!(
        status(&view, Framework::EuAiAct, "art-9", &s),
        ControlStatus::Met
    );
    assert_eq!(
        status(&view, Framework::UkAiPrinciples, "fairness", &s),
        ControlStatus::NotAssessed
    );
    let week = PostureSettings {
        coverage_days: 7,
        ..PostureSettings::default()
    };
    assert_eq!(
        status(&view, Framework::EuAiAct, "art-12", &week),
        ControlStatus::Met
    );

    // A daemon's ledger: signed commands, a SIEM sink, a long retention.
    view.ledger.commands_signed = true;
    view.ledger.control_topic = "guardian-control".into();
    view.ledger.sinks = vec!["siem (syslog, cef)".into()];
    view.ledger.incident_retention_days = 400.0;
    assert_eq!(
        status(&view, Framework::EuAiAct, "art-19", &s),
        ControlStatus::Met
    );
    assert_eq!(
        status(&view, Framework::EuAiAct, "art-14", &s),
        ControlStatus::Partial,
        "signed, but the stop procedure was never exercised"
    );
    // An operator kill and revive of one agent: the drill is on record.
    let a = view.states.iter_mut().next().unwrap();
    a.profile.kill_event(
        a.last_seen,
        agent_guardian::state::KillEventKind::ManualKill,
    );
    a.profile
        .kill_event(a.last_seen, agent_guardian::state::KillEventKind::Revive);
    assert_eq!(
        status(&view, Framework::EuAiAct, "art-14", &s),
        ControlStatus::Met
    );
    assert_eq!(
        status(
            &view,
            Framework::UkAiPrinciples,
            "contestability-redress",
            &s
        ),
        ControlStatus::Met
    );
    // A stretch of the log never read breaks record-keeping.
    view.ledger.gaps.push(Gap {
        topic: "agent-audit".into(),
        partition: 3,
        from_offset: 100,
        to_offset: 250,
        found_at: 0,
    });
    assert_eq!(
        status(&view, Framework::EuAiAct, "art-12", &week),
        ControlStatus::NotMet
    );
    let set = agent_guardian::demo::demo_blueprints().unwrap();
    let p = view.posture(&set, &s);
    let r = view.compliance(Framework::EuAiAct, &p, &s);
    let art12 = r.controls.iter().find(|c| c.id == "art-12").unwrap();
    assert!(
        art12
            .gaps
            .iter()
            .any(|g| g.contains("agent-audit/3 offsets 100..250")),
        "{art12:?}"
    );
    for f in Framework::ALL {
        let r = view.compliance(f, &p, &s);
        assert!(r.controls.len() >= 4, "{}", r.framework);
    }
}
