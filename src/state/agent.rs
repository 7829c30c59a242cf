//! Everything the guardian knows about one agent, as one serialisable value.

use serde::{Deserialize, Serialize};

use super::{CohortMarks, Profile};
use crate::blueprint::Blueprint;
use crate::detect::{DetectorState, Episode};
use crate::response::KillState;

/// The state of one agent: inventory facts, detector state and kill-policy state.
///
/// Stored with postcard, in field order: the fields up to `profile` are what the posture reads,
/// decoded alone as an [`AgentSummary`] (a sixth of the bytes); the detector state and the
/// cohort marks come last. Reordering the fields is a state format change.
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
    /// Kill policy state.
    pub kill: KillState,
    /// Episode of activity after a kill.
    pub after_kill: Episode,
    /// Inventory and risk facts.
    pub profile: Profile,
    /// Detector state.
    pub detectors: DetectorState,
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

/// The leading fields of a stored [`AgentState`], everything but its detector state and cohort
/// marks: what the fleet posture and compliance read, decoded from a stored state without the
/// rest (postcard reads fields in order and stops where this struct ends).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AgentSummary {
    /// The agent's id.
    pub agent_id: String,
    /// Key of the blueprint assigned at first sight.
    pub blueprint: String,
    /// Event time of the first event.
    pub first_seen: i64,
    /// Latest event time.
    pub last_seen: i64,
    /// Events processed.
    pub events: u64,
    /// Events later than the allowed lateness.
    pub late_events: u64,
    /// Environment of the first event that had one.
    pub environment: Option<String>,
    /// Kill policy state.
    pub kill: KillState,
    /// Episode of activity after a kill.
    pub after_kill: Episode,
    /// Inventory and risk facts.
    pub profile: Profile,
}

impl From<&AgentState> for AgentSummary {
    fn from(st: &AgentState) -> Self {
        AgentSummary {
            agent_id: st.agent_id.clone(),
            blueprint: st.blueprint.clone(),
            first_seen: st.first_seen,
            last_seen: st.last_seen,
            events: st.events,
            late_events: st.late_events,
            environment: st.environment.clone(),
            kill: st.kill.clone(),
            after_kill: st.after_kill.clone(),
            profile: st.profile.clone(),
        }
    }
}

/// What the posture reads of an agent, borrowed from a whole state or from a summary.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The agent's id.
    pub agent_id: &'a str,
    /// Key of its blueprint.
    pub blueprint: &'a str,
    /// Event time of its first event.
    pub first_seen: i64,
    /// Its latest event time.
    pub last_seen: i64,
    /// Events processed.
    pub events: u64,
    /// Kill policy state.
    pub kill: &'a KillState,
    /// Inventory and risk facts.
    pub profile: &'a Profile,
}

/// An agent the posture can read: a whole state, a summary, or a reference to either.
pub trait AgentFacts {
    /// Its facts.
    fn facts(&self) -> Facts<'_>;
}

impl<T: AgentFacts> AgentFacts for &T {
    fn facts(&self) -> Facts<'_> {
        (**self).facts()
    }
}

/// A record of one agent that the same agent's record from another partition folds into.
pub trait AgentRecord: AgentFacts {
    /// Folds in `other`: counts summed, the earliest first sight, the latest record's kill state
    /// (and detector state), the profiles merged.
    fn absorb(&mut self, other: Self);
}

/// [`AgentFacts`] and [`AgentRecord`] for a struct with an agent's facts under their names
/// (`$more`: further fields its latest record brings when merged).
macro_rules! agent_record {
    ($t:ty $(, $more:ident)*) => {
        impl AgentFacts for $t {
            fn facts(&self) -> Facts<'_> {
                Facts {
                    agent_id: &self.agent_id,
                    blueprint: &self.blueprint,
                    first_seen: self.first_seen,
                    last_seen: self.last_seen,
                    events: self.events,
                    kill: &self.kill,
                    profile: &self.profile,
                }
            }
        }

        impl AgentRecord for $t {
            fn absorb(&mut self, other: Self) {
                self.events += other.events;
                self.late_events += other.late_events;
                self.first_seen = self.first_seen.min(other.first_seen);
                self.profile.merge(&other.profile);
                if other.last_seen > self.last_seen {
                    self.last_seen = other.last_seen;
                    self.kill = other.kill;
                    $(self.$more = other.$more;)*
                }
            }
        }
    };
}

agent_record!(AgentState, detectors);
agent_record!(AgentSummary);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blueprint::BlueprintSet;

    #[test]
    fn a_summary_decodes_the_leading_fields_of_a_stored_state() {
        let set = BlueprintSet::builtin();
        let bp = set.blueprints().first().expect("a built-in blueprint");
        let mut st = AgentState::new("a-1", bp, 1_000, Some("prod"));
        st.events = 42;
        st.late_events = 3;
        st.last_seen = 9_000;
        st.kill.killed = true;
        st.profile.revives = 2;
        st.profile.environments.push("prod".into());
        st.detectors.watermark = 9_000;
        let bytes = postcard::to_stdvec(&st).expect("encode");
        let summary: AgentSummary = postcard::from_bytes(&bytes).expect("decode");
        // Everything but the detector state and the cohort marks, as stored.
        assert_eq!(summary, AgentSummary::from(&st));
        // Merged with the same agent's later record from another partition, a summary is the
        // summary of the merged states.
        let mut later = st.clone();
        later.last_seen = 20_000;
        later.events = 5;
        later.kill.killed = false;
        let mut merged = st.clone();
        merged.absorb(later.clone());
        let mut s = summary;
        s.absorb(AgentSummary::from(&later));
        assert_eq!(s, AgentSummary::from(&merged));
        assert_eq!((s.events, s.last_seen, s.kill.killed), (47, 20_000, false));
    }
}
