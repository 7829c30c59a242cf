//! Agent state: a plain serialisable value per agent, and the snapshot codec.

mod agent;
pub mod prefetch;
mod profile;
mod snapshot;

pub use agent::AgentState;
pub use profile::{
    outcome_index, IncidentMark, KillEvent, KillEventKind, Profile, ToolSeen, MAX_TOOLS, OUTCOMES,
};
pub use snapshot::{Snapshot, SnapshotError, SNAPSHOT_VERSION};
