//! Helpers for detector tests: blueprints, times and a one-agent harness.

use serde_json::Value;

use super::{DetectorState, Finding, Input, Judgement, Peers};
use crate::blueprint::{load_blueprint, Blueprint, BlueprintSet};
use crate::response::IncidentType;

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

/// The shipped finance blueprint in another time zone.
pub fn finance_in(tz: &str) -> Blueprint {
    let mut bp = finance();
    bp.timezone = tz.parse().expect("a time zone");
    bp
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

/// One agent's detectors under one blueprint, with its peers and the fleet's learning period
/// starting at the first event fed (as a fresh engine has it).
pub struct Kit {
    pub bp: Blueprint,
    pub st: DetectorState,
    pub peers: Peers,
    /// Start of the learning period (the first event fed, unless set).
    pub origin: Option<i64>,
    pub late: u32,
    seq: u64,
}

impl Kit {
    /// A fresh agent in a fresh fleet: the learning period starts with its first event.
    pub fn new(bp: Blueprint) -> Kit {
        let st = DetectorState::new(&bp);
        let peers = Peers::new(&bp);
        Kit {
            bp,
            st,
            peers,
            origin: None,
            late: 0,
            seq: 0,
        }
    }

    /// A fresh agent in a fleet whose learning period is over.
    pub fn after_learning(bp: Blueprint) -> Kit {
        let mut k = Kit::new(bp);
        k.origin = Some(i64::MIN / 2);
        k
    }

    /// Feeds events in the given (delivery) order; returns all findings.
    pub fn feed(&mut self, evs: impl IntoIterator<Item = Ev>) -> Vec<Finding> {
        let mut out = Vec::new();
        for e in evs {
            self.seq += 1;
            let id = format!("e{}", self.seq);
            let input = Input {
                agent_id: "agent-1",
                event_id: &id,
                seq: self.seq,
                tool_name: &e.tool,
                ts: e.ts,
                bytes: e.bytes,
            };
            let origin = *self.origin.get_or_insert(e.ts);
            let learning_until = origin.saturating_add(self.bp.learned.learning_period_ms);
            if !self
                .st
                .observe(
                    &self.bp,
                    &mut self.peers,
                    &crate::detect::CohortShift::NONE,
                    learning_until,
                    &input,
                    &mut out,
                )
                .in_order
            {
                self.late += 1;
            }
        }
        // The end of the input: sequences waiting for late calls are final (as at the end of a
        // replay).
        let until = self
            .origin
            .unwrap_or(0)
            .saturating_add(self.bp.learned.learning_period_ms);
        let mut settled = Vec::new();
        self.st.settle(
            &self.bp,
            &mut self.peers,
            until,
            "agent-1",
            i64::MAX,
            &mut settled,
        );
        out.extend(settled);
        out
    }
}

/// Findings of one kind (incidents, baseline findings and closing records).
pub fn of_kind(found: &[Finding], kind: IncidentType) -> Vec<&Finding> {
    found.iter().filter(|f| f.kind == kind).collect()
}

/// The incidents of one kind: new findings that open an incident.
pub fn incidents(found: &[Finding], kind: IncidentType) -> Vec<&Finding> {
    found
        .iter()
        .filter(|f| f.kind == kind && f.judgement == Judgement::New && f.closing.is_none())
        .collect()
}

/// The baseline findings (routine, or seen while learning) about one kind.
pub fn baselines(found: &[Finding], kind: IncidentType) -> Vec<&Finding> {
    found
        .iter()
        .filter(|f| f.kind == kind && f.judgement != Judgement::New)
        .collect()
}

/// The weekdays among the first `days` days from a Monday.
pub fn weekdays(days: i64) -> impl Iterator<Item = i64> + Clone {
    (0..days).filter(|d| d % 7 < 5)
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
