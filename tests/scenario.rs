//! Scenario suite: a realistic generated fleet with injected anomalies and negative controls,
//! replayed through the whole decode → detect path. Every injected anomaly must be found and no
//! negative control may fire.

use std::sync::Arc;

use agent_guardian::blueprint::BlueprintSet;
use agent_guardian::engine::Engine;
use agent_guardian::event::Decoder;
use agent_guardian::replay;
use agent_guardian::response::{Incident, IncidentType};
use agent_guardian::simulate::{evaluate, SimConfig, Simulation};

fn rules() -> Arc<BlueprintSet> {
    agent_guardian::demo::demo_blueprints().unwrap()
}

fn run(sim: &Simulation) -> Vec<Incident> {
    let set = rules();
    let decoder = Decoder::new(&set.decoder_options()).unwrap();
    let mut engine = Engine::new(set);
    let mut incidents = Vec::new();
    let events = sim.to_jsonl();
    let summary = replay::run(
        &mut engine,
        &decoder,
        &events[..],
        &mut incidents,
        |l, e| panic!("line {l}: {e}"),
        None,
    )
    .unwrap();
    eprintln!("{}", summary.render());
    incidents
}

#[test]
fn generated_fleet_every_injected_anomaly_found_and_no_negative_control_fires() {
    let seed = std::env::var("SCENARIO_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261124);
    let agents = std::env::var("SCENARIO_AGENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let sim = Simulation::new(SimConfig {
        agents,
        days: 28,
        seed,
        ..SimConfig::default()
    });
    let incidents = run(&sim);
    let ev = evaluate(&sim.labels, &incidents);
    eprintln!(
        "precision {:.3} ({}/{}), recall {:.3} ({}/{})",
        ev.precision(),
        ev.true_incidents,
        ev.incidents,
        ev.recall(),
        ev.found,
        ev.positives
    );
    for l in &ev.missed {
        eprintln!("MISSED {l:?}");
    }
    for i in &ev.false_incidents {
        eprintln!(
            "FALSE {} {:?} {:?} {} {}",
            agent_guardian::event::format_rfc3339_ms(i.at),
            i.kind,
            i.basis,
            i.agent_id,
            i.description
        );
    }
    for (l, i) in &ev.negatives_fired {
        eprintln!("NEGATIVE CONTROL FIRED {:?}: {}", l.note, i.description);
    }
    // Every kind of anomaly is represented in the labels.
    for t in IncidentType::DETECTED.iter().copied() {
        assert!(
            sim.labels.iter().any(|l| l.expect == Some(t)),
            "no label of type {t:?}"
        );
    }
    assert!(
        sim.labels.iter().filter(|l| l.expect.is_none()).count() >= 5,
        "negative controls present"
    );
    assert!(
        ev.missed.is_empty(),
        "missed {} injected anomalies",
        ev.missed.len()
    );
    assert!(
        ev.negatives_fired.is_empty(),
        "{} negative controls fired",
        ev.negatives_fired.len()
    );
    assert!(
        ev.false_incidents.is_empty(),
        "{} incidents explained by no injection",
        ev.false_incidents.len()
    );
}
