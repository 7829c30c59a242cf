//! What the engine keeps per cohort (its open fleet shifts, the rate factors in force, its
//! recent kills) and per agent (findings waiting for their cohort), as serialisable values.

use serde::{Deserialize, Serialize};

use crate::detect::{CohortShift, Finding, ShiftKind};
use crate::response::CohortKills;

/// Agents a fleet shift names at most (its count says how many findings it explained).
pub const MAX_LISTED: usize = 100;

/// A fleet shift going on in a cohort.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenShift {
    /// What deviates.
    pub kind: ShiftKind,
    /// The sequence rule, for [`ShiftKind::Sequence`] (0 otherwise).
    pub rule: u32,
    /// Event time it was found (the time of its opening record).
    pub opened: i64,
    /// Start of its span: the earliest finding it explained.
    pub start: i64,
    /// Latest event time it was confirmed: an evaluation that showed it, or a finding it
    /// explained.
    pub confirmed: i64,
    /// Agents whose findings it explained, sorted (the first [`MAX_LISTED`]).
    pub agents: Vec<String>,
    /// How many agents it explained findings of.
    pub members: u32,
    /// Findings it explained.
    pub explained: u64,
    /// The factor of the members' rates (rates), or the typical ratio of the findings it
    /// explained (volume); 1 otherwise.
    pub factor: f32,
    /// The largest factor seen.
    pub peak: f32,
    /// Members showing it when it was found, and members it was judged among.
    pub shown: (u32, u32),
    /// Id of its opening record, repeated by its closing one.
    pub incident_id: String,
}

impl OpenShift {
    /// Counts a finding of `agent` at `ts` it explained (only an evaluation confirms it).
    pub fn explain(&mut self, agent: &str, ts: i64) {
        self.explained += 1;
        self.start = self.start.min(ts);
        if let Err(at) = self.agents.binary_search_by(|a| a.as_str().cmp(agent)) {
            self.members += 1;
            if self.agents.len() < MAX_LISTED {
                self.agents.insert(at, agent.to_string());
            }
        }
    }
}

/// One cohort's state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CohortState {
    /// The cohort: its blueprint's key, and `/group` when grouped by the `group` field.
    pub key: String,
    /// Its blueprint's key.
    pub blueprint: String,
    /// The rate factors the members' detectors apply (1 without a rate shift).
    pub rate: CohortShift,
    /// The fleet shifts going on.
    pub shifts: Vec<OpenShift>,
    /// Event time of the next evaluation of an open rate shift.
    pub next_evaluation: i64,
    /// Automatic kills in the cohort.
    pub kills: CohortKills,
}

impl CohortState {
    /// The open shift of `kind` (and sequence `rule`), if any.
    pub fn shift(&self, kind: ShiftKind, rule: u32) -> Option<usize> {
        self.shifts
            .iter()
            .position(|s| s.kind == kind && s.rule == rule)
    }
}

/// A finding waiting for its agent's cohort to show whether a fleet shift explains it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldFinding {
    /// The finding.
    pub finding: Finding,
    /// Event time from which it is judged (the engine's latest event time).
    pub until: i64,
    /// Event time, id and tool of the event that raised it.
    pub at: i64,
    /// Id of that event.
    pub event_id: String,
    /// Tool of that event.
    pub tool_name: String,
}

/// What the cohort judgement keeps per agent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CohortMarks {
    /// Findings waiting for the cohort, in the order they were raised.
    pub held: Vec<HeldFinding>,
    /// Event time of the agent's latest finding of each [`ShiftKind`] (explained, held or raised).
    pub found: [i64; crate::detect::SHIFT_KINDS],
    /// The sequence rule of its latest sequence finding.
    pub found_rule: u32,
    /// The ratio of its latest volume run to its tools' usual sizes.
    pub volume_ratio: f32,
    /// The agent's `group` field as first seen (cohorts by group).
    pub group: Option<String>,
}

impl CohortMarks {
    /// Marks a finding of `kind` (sequence `rule`) at `ts`.
    pub fn found(&mut self, kind: ShiftKind, rule: u32, ts: i64) {
        let f = &mut self.found[kind.index()];
        if ts >= *f {
            *f = ts;
            if kind == ShiftKind::Sequence {
                self.found_rule = rule;
            }
        }
    }

    /// Whether it found `kind` (sequence `rule`) at or after `since`.
    pub fn found_since(&self, kind: ShiftKind, rule: u32, since: i64) -> bool {
        self.found[kind.index()] >= since
            && (kind != ShiftKind::Sequence || self.found_rule == rule)
    }
}
