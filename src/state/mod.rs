//! Agent state: a plain serialisable value per agent, and the snapshot codec.

mod agent;
mod snapshot;

pub use agent::AgentState;
pub use snapshot::{Snapshot, SnapshotError, SNAPSHOT_VERSION};
