//! What the guardian does with findings: incidents with deterministic ids, and the kill policy.

mod incident;
mod kill;

pub use incident::{incident_id, uuid_string, Action, Basis, Incident, IncidentType, Severity};
pub use kill::{KillDecision, KillState};
