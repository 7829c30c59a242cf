//! Everything the guardian knows about one agent, as one serialisable value.

use serde::{Deserialize, Serialize};

use super::{CohortMarks, Profile};
use crate::blueprint::Blueprint;
use crate::detect::{DetectorState, Episode};
use crate::response::KillState;

/// The state of one agent: inventory facts, detector state and kill-policy state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentState {
    /// The agent's id.
    pub agent_id: String,
    /// Key of the blueprint assigned at first sight.
    pub blueprint: String,
    /// Event time of the first event.
    pub first_seen: i64,
    /// Latest event time.
    pub last_seen: i64,
    /// Events processed (also the sequence number of the latest one).
    pub events: u64,
    /// Events later than the allowed lateness.
    pub late_events: u64,
    /// Environment of the first event that had one.
    pub environment: Option<String>,
    /// Detector state.
    pub detectors: DetectorState,
    /// Kill policy state.
    pub kill: KillState,
    /// Episode of activity after a kill.
    pub after_kill: Episode,
    /// Inventory and risk facts.
    pub profile: Profile,
    /// Findings waiting for the agent's cohort, and what its cohort judgement reads (boxed:
    /// not on an ordinary event's path).
    pub cohort: Box<CohortMarks>,
}

impl AgentState {
    /// A stand-in kept in memory while the agent's state lives only in the store: what its
    /// cohort and the identity checks read of it (ids, times, kill state, rhythm, the counts of
    /// its frequency windows, cohort marks), the rest empty. Never folded into nor stored.
    pub fn husk(&self) -> AgentState {
        AgentState {
            agent_id: self.agent_id.clone(),
            blueprint: self.blueprint.clone(),
            first_seen: self.first_seen,
            last_seen: self.last_seen,
            events: self.events,
            late_events: self.late_events,
            environment: self.environment.clone(),
            detectors: self.detectors.husk(),
            kill: self.kill.clone(),
            after_kill: Episode::default(),
            profile: Profile::default(),
            cohort: self.cohort.clone(),
        }
    }

    /// Announces the memory an event reads beyond the state itself (its buffers).
    pub fn prefetch_buffers(&self) {
        self.detectors.prefetch();
        self.profile.prefetch();
    }

    /// A new agent first seen at `ts` under blueprint `bp`.
    pub fn new(agent_id: &str, bp: &Blueprint, ts: i64, environment: Option<&str>) -> AgentState {
        AgentState {
            agent_id: agent_id.to_string(),
            blueprint: bp.key.clone(),
            first_seen: ts,
            last_seen: ts,
            events: 0,
            late_events: 0,
            environment: environment.map(str::to_string),
            detectors: DetectorState::new(bp),
            kill: KillState::default(),
            after_kill: Episode::default(),
            profile: Profile::default(),
            cohort: Box::new(CohortMarks {
                found: [i64::MIN; crate::detect::SHIFT_KINDS],
                ..CohortMarks::default()
            }),
        }
    }
}
