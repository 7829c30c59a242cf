//! Agent state: a plain serialisable value per agent, and the snapshot codec.
//!
//! Layer: uses `detect` (the detectors' states), `response`, `blueprint`, `event`, `prefetch`.

mod agent;
mod arrivals;
mod cohort;
mod fleet;
mod identity;
mod profile;
mod seen;
mod snapshot;

pub use agent::{AgentFacts, AgentRecord, AgentState, AgentSummary, Facts};
pub use arrivals::{Arrivals, NEW_AGENTS_PER_HOUR};
pub use cohort::{CohortMarks, CohortState, HeldFinding, OpenShift, MAX_LISTED};
pub use fleet::{suppression_index, EngineStats, FleetState};
pub use identity::{
    Conflict, Flood, Identities, Resolution, SessionAgent, BURST_PER_SOURCE, BURST_TOTAL,
    MAX_SESSIONS, MAX_SESSIONS_PER_SOURCE, SESSION_TTL_MS,
};
pub use profile::{
    outcome_index, IncidentMark, KillEvent, KillEventKind, Profile, ToolSeen, MAX_TOOLS, OUTCOMES,
};
pub use seen::{
    Identity, Received, Seen, SeenChanges, SeenEntry, SeenFigures, SeenSettings, SeenSnapshot,
    DEFAULT_HORIZON_MS as DUPLICATE_HORIZON_MS, DEFAULT_MAX_ENTRIES as DUPLICATE_MAX_ENTRIES,
};
pub use snapshot::{Snapshot, SnapshotError, SNAPSHOT_VERSION};
