//! Snapshot of the whole engine state: postcard-encoded, versioned.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::AgentState;
use super::{EngineStats, FleetState};

/// Format version written into every snapshot.
pub const SNAPSHOT_VERSION: u32 = 7;

/// Why a snapshot could not be read or written.
#[derive(Debug, Error)]
pub enum SnapshotError {
    /// The bytes are not a snapshot.
    #[error("snapshot is corrupt: {0}")]
    Corrupt(#[source] postcard::Error),
    /// The snapshot was written by an incompatible version.
    #[error("snapshot version {found} is not supported (expected {SNAPSHOT_VERSION})")]
    Version {
        /// Version found.
        found: u32,
    },
}

/// All agent states (sorted by agent id) and the engine counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// [`SNAPSHOT_VERSION`].
    pub version: u32,
    /// Engine counters.
    pub stats: EngineStats,
    /// Agent states, sorted by id.
    pub agents: Vec<AgentState>,
    /// The fleet: learning period start, peers, kill budget.
    pub fleet: FleetState,
    /// Sessions and their agents (see [`super::Identities`]), sorted by session.
    pub sessions: Vec<super::SessionAgent>,
    /// Identities of recent events, for dropping re-deliveries (see [`super::Seen`]).
    pub duplicates: super::SeenSnapshot,
}

impl Snapshot {
    /// Encodes the snapshot.
    pub fn to_bytes(&self) -> Result<Vec<u8>, SnapshotError> {
        postcard::to_allocvec(self).map_err(SnapshotError::Corrupt)
    }

    /// Decodes a snapshot, checking its version.
    pub fn from_bytes(bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
        let s: Snapshot = postcard::from_bytes(bytes).map_err(SnapshotError::Corrupt)?;
        if s.version != SNAPSHOT_VERSION {
            return Err(SnapshotError::Version { found: s.version });
        }
        Ok(s)
    }
}
