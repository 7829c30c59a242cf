//! Agent state: a plain serialisable value per agent, and the snapshot codec.
//!
//! Layer: uses `detect` (the detectors' states), `response`, `blueprint`, `event`, `prefetch`.

mod agent;
mod fleet;
mod identity;
mod profile;
mod snapshot;

pub use agent::AgentState;
pub use fleet::{suppression_index, EngineStats, FleetState};
pub use identity::{Identities, Resolution, SessionAgent, MAX_SESSIONS, SESSION_TTL_MS};
pub use profile::{
    outcome_index, IncidentMark, KillEvent, KillEventKind, Profile, ToolSeen, MAX_TOOLS, OUTCOMES,
};
pub use snapshot::{Snapshot, SnapshotError, SNAPSHOT_VERSION};
