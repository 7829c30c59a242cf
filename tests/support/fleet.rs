//! Fleets of the tests: the shipped blueprints with the example assignment, and the generated
//! fleet the output-format tests replay: 400 agents over 4 weeks (seed 11, about 2 million
//! events, with kills under `deploy/assignment.json`), plus two events with hostile agent and tool
//! names and two malformed lines.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use agent_guardian::blueprint::BlueprintSet;

/// The shipped blueprints under `deploy/assignment.json`.
pub fn shipped_blueprints() -> Arc<BlueprintSet> {
    let assignment = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/assignment.json");
    Arc::new(BlueprintSet::load(None, Some(&assignment)).expect("blueprints"))
}

/// Writes the fleet into `dir` and returns the file.
pub fn hostile_fleet(dir: &Path) -> PathBuf {
    let events = dir.join("events.jsonl");
    let st = Command::new(env!("CARGO_BIN_EXE_guardian"))
        .args([
            "simulate", "--agents", "400", "--days", "28", "--seed", "11", "-o",
        ])
        .arg(&events)
        .status()
        .expect("guardian simulate");
    assert!(st.success());
    let mut all = std::fs::read(&events).expect("read");
    for (agent, tool) in [("a|b=c\\d", "t\nx"), ("代理 =", "=|\\")] {
        all.extend_from_slice(
            serde_json::json!({"event_id": "x", "timestamp": "2026-03-03T02:00:00Z",
                "request_id": "r", "agent_id": agent, "tool_name": tool, "outcome": "ALLOW",
                "reasons": [], "safe_payload": {}})
            .to_string()
            .as_bytes(),
        );
        all.push(b'\n');
    }
    all.extend_from_slice(b"{\"not\": \"an event\"}\nnot json at all\n");
    std::fs::write(&events, all).expect("write");
    events
}

/// The assignment file of the shipped deployment.
pub const ASSIGNMENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/assignment.json");
