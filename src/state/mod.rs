//! Agent state: a plain serialisable value per agent, and the snapshot codec.
//!
//! Layer: uses `detect` (the detectors' states), `response`, `blueprint`, `event`, `prefetch`.

mod agent;
mod fleet;
mod profile;
mod snapshot;

pub use agent::AgentState;
pub use fleet::{suppression_index, EngineStats, FleetState};
pub use profile::{
    outcome_index, IncidentMark, KillEvent, KillEventKind, Profile, ToolSeen, MAX_TOOLS, OUTCOMES,
};
pub use snapshot::{Snapshot, SnapshotError, SNAPSHOT_VERSION};
