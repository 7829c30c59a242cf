//! Helpers for detector tests: blueprints, times and a one-agent harness.

use serde_json::Value;

use super::{DetectorState, Finding, Input};
use crate::blueprint::{load_blueprint, Blueprint, BlueprintSet};

/// A shipped blueprint by key.
fn shipped(key: &str) -> Blueprint {
    let set = BlueprintSet::builtin();
    set.get(set.index_of(key).expect("shipped")).clone()
}

/// The shipped finance blueprint.
pub fn finance() -> Blueprint {
    shipped("finance")
}

/// The shipped SOC blueprint.
pub fn soc() -> Blueprint {
    shipped("soc")
}

/// The shipped engineering blueprint.
pub fn engineering() -> Blueprint {
    shipped("engineering")
}

fn peer(text: &str) -> Blueprint {
    let v: Value = serde_json::from_str(text).expect("fixture is JSON");
    load_blueprint("peer", &v).expect("peer fixture loads")
}

/// The peer's BLUEPRINT_FINANCE as saved JSON.
pub fn peer_finance() -> Blueprint {
    peer(include_str!(
        "../../tests/fixtures/peer/BLUEPRINT_FINANCE.json"
    ))
}

/// The peer's BLUEPRINT_SOC as saved JSON.
pub fn peer_soc() -> Blueprint {
    peer(include_str!("../../tests/fixtures/peer/BLUEPRINT_SOC.json"))
}

/// Epoch ms of an RFC 3339 time.
pub fn at(s: &str) -> i64 {
    crate::event::parse_rfc3339_ms(s).expect("test time")
}

/// A test event.
#[derive(Debug, Clone)]
pub struct Ev {
    pub ts: i64,
    pub tool: String,
    pub bytes: Option<f64>,
}

/// A test event at `ts` calling `tool`.
pub fn ev(ts: i64, tool: &str, bytes: Option<f64>) -> Ev {
    Ev {
        ts,
        tool: tool.to_string(),
        bytes,
    }
}

/// One agent's detectors under one blueprint.
pub struct Kit {
    pub bp: Blueprint,
    pub st: DetectorState,
    pub late: u32,
}

impl Kit {
    pub fn new(bp: Blueprint) -> Kit {
        let st = DetectorState::new(&bp);
        Kit { bp, st, late: 0 }
    }

    /// Feeds events in the given (delivery) order; returns all findings.
    pub fn feed(&mut self, evs: impl IntoIterator<Item = Ev>) -> Vec<Finding> {
        let mut out = Vec::new();
        for (i, e) in evs.into_iter().enumerate() {
            let id = format!("e{i}");
            let input = Input {
                agent_id: "agent-1",
                event_id: &id,
                tool_name: &e.tool,
                ts: e.ts,
                bytes: e.bytes,
            };
            if !self.st.observe(&self.bp, &input, &mut out).in_order {
                self.late += 1;
            }
        }
        out
    }
}

/// Findings of one kind.
pub fn of_kind(found: &[Finding], kind: crate::response::IncidentType) -> Vec<&Finding> {
    found.iter().filter(|f| f.kind == kind).collect()
}

/// `per_hour` calls of `tool`, evenly spaced, in `hours` consecutive hours from `start` on each of `days` (offsets in days).
pub fn routine(
    start: i64,
    days: impl IntoIterator<Item = i64>,
    hours: i64,
    per_hour: i64,
    tool: &str,
) -> Vec<Ev> {
    let mut out = Vec::new();
    for day in days {
        for h in 0..hours {
            for c in 0..per_hour {
                out.push(ev(
                    start + day * 86_400_000 + h * 3_600_000 + c * (3_600_000 / per_hour),
                    tool,
                    None,
                ));
            }
        }
    }
    out
}
