//! What the guardian does with findings: incidents with deterministic ids, and the kill policy.
//!
//! Layer: uses `blueprint`, `event`.

mod budget;
mod incident;
mod kill;

pub use budget::{CohortKills, KillBudget, Spent};
pub use incident::{
    incident_id, uuid_string, Action, BaselineFacts, Basis, Incident, IncidentType, Source, Status,
    Suppression, Verdict,
};
pub use kill::{KillDecision, KillState};
