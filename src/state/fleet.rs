//! What is kept per partition besides its agents: the fleet's state (learning start, peers, kill
//! budget) and the engine's counters.

use serde::{Deserialize, Serialize};

use crate::detect::Peers;
use crate::response::{IncidentType, KillBudget, Suppression};

/// Counters kept by the engine.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineStats {
    /// Events processed.
    pub events: u64,
    /// Events later than the allowed lateness (fed to stateless checks only).
    pub late_events: u64,
    /// Events delivered again (an identity and content seen within the horizon): dropped.
    pub duplicates: u64,
    /// Events whose identity was seen with other content: folded, and counted here.
    pub id_conflicts: u64,
    /// Incidents by type, in [`IncidentType::ALL`] order, up to the types of state format 6
    /// (the engine raises none of the later ones).
    pub incidents: [u64; STORED_INCIDENT_TYPES],
    /// Malformed events of the stream (counted by the source; they never reach the engine).
    pub bad_events: u64,
    /// Kill decisions not carried out, by reason: monitor or dry run, learning period, kill
    /// budget, allowlist, kills in one cohort.
    pub kills_suppressed: [u64; 5],
    /// Findings explained by a shift of their agent's cohort (no incident, no kill weight).
    pub explained: u64,
}

/// Incident types counted in [`EngineStats::incidents`]: the first of [`IncidentType::ALL`],
/// as many as state format 6 stores.
pub const STORED_INCIDENT_TYPES: usize = 10;

const _: () = assert!(IncidentType::ENGINE.len() <= STORED_INCIDENT_TYPES);

/// Index of a suppression reason in [`EngineStats::kills_suppressed`].
pub fn suppression_index(s: Suppression) -> usize {
    match s {
        Suppression::Monitor => 0,
        Suppression::Learning => 1,
        Suppression::Budget => 2,
        Suppression::Allowlist => 3,
        Suppression::Cohort => 4,
    }
}

/// What the engine knows about the fleet as a whole: where learning started, the peers of each
/// blueprint, and the kill budget.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetState {
    /// Event time of the first event folded: the first-deployment learning period starts here.
    pub origin: Option<i64>,
    /// Peers by blueprint key.
    pub peers: Vec<(String, Peers)>,
    /// Automatic kills counted against the budget.
    pub budget: KillBudget,
    /// The cohorts of agents judged together, by key.
    pub cohorts: Vec<super::CohortState>,
    /// How late the partition's stream delivers calls (cohorts are judged once it has).
    pub lag: crate::detect::DeliveryLag,
}
