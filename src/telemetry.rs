//! What a running daemon tells about itself: its counters and histograms, and the live view the
//! admin API reads (the state store, the counters, the partitions owned). Written by the daemon,
//! read by the API; it knows neither.
//!
//! Layer: uses `store`, `sink` (sink figures), `engine`, `response`, `control` (rejection kinds).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::response::{Incident, IncidentType};
use crate::store::Store;

/// Counters of a running daemon (read by logs, the demo, tests and `/metrics`).
#[derive(Debug)]
pub struct Metrics {
    /// Audit events processed.
    pub events: AtomicU64,
    /// Malformed events dead-lettered.
    pub bad_events: AtomicU64,
    /// Audit events delivered again (the same identity and content within the horizon): dropped.
    pub duplicates: AtomicU64,
    /// Audit events whose identity was seen before with other content: processed, and counted.
    pub id_conflicts: AtomicU64,
    /// Findings explained by a fleet shift of their agent's cohort (no incident, no kill weight).
    pub findings_explained: AtomicU64,
    /// Fleet shifts going on in the owned partitions (as of the latest checkpoint).
    pub fleet_shifts: AtomicU64,
    /// Event identities remembered for dropping re-deliveries (as of the latest checkpoint).
    pub duplicate_identities: AtomicU64,
    /// Incidents emitted.
    pub incidents: AtomicU64,
    /// Kill commands emitted.
    pub kill_commands: AtomicU64,
    /// Control commands applied (manual kill / revive).
    pub commands_applied: AtomicU64,
    /// Control commands rejected (unsigned, bad signature, malformed).
    pub commands_rejected: AtomicU64,
    /// Control commands rejected, by [`crate::control::REJECTION_KINDS`].
    pub commands_rejected_by: [AtomicU64; crate::control::REJECTION_KINDS.len()],
    /// Dead letters the broker refused even cut to their bounded size (recorded in the state's
    /// ledger and skipped).
    pub dead_letters_lost: AtomicU64,
    /// Audit entries by how their agent was found, in [`crate::state::Resolution::ALL`] order.
    pub identity: [AtomicU64; crate::state::Resolution::ALL.len()],
    /// Operator commands waiting for an agent this instance has not seen yet.
    pub commands_pending: AtomicU64,
    /// Outputs not sent because another run already emitted them (rebuild).
    pub suppressed: AtomicU64,
    /// Checkpoints written.
    pub checkpoints: AtomicU64,
    /// Changelog records published (with the checkpoints).
    pub changelog_records: AtomicU64,
    /// Partitions restored from the changelog topic (instead of a replay of their history).
    pub changelog_restores: AtomicU64,
    /// Changelog records read by those restores.
    pub changelog_records_restored: AtomicU64,
    /// Audit events left out after a restore because their agent's state had them already.
    pub restore_skipped: AtomicU64,
    /// Depth of the source → engine queue (notices; audit messages travel in batches of up to 1,024).
    pub queue_depth: Arc<AtomicUsize>,
    /// Partitions owned.
    pub partitions: AtomicUsize,
    /// Messages behind the high watermark, summed over owned partitions (librdkafka statistics).
    pub lag: Arc<AtomicU64>,
    /// Malformed events by [`crate::event::DecodeError::kind`], in [`BAD_EVENT_KINDS`] order.
    pub bad_by_kind: [AtomicU64; BAD_EVENT_KINDS.len()],
    /// Incidents by type ([`IncidentType::ALL`] order) and severity (low to critical).
    pub incidents_by: [[AtomicU64; 4]; IncidentType::ALL.len()],
    /// Kill commands published through the admin API.
    pub api_kills: AtomicU64,
    /// Admin API connections closed at once because the most were open.
    pub api_connections_refused: AtomicU64,
    /// Revive commands published through the admin API.
    pub api_revives: AtomicU64,
    /// Posture snapshots published.
    pub posture_snapshots: AtomicU64,
    /// Agents in the owned partitions (as of the latest checkpoint).
    pub agents: AtomicU64,
    /// Killed agents in the owned partitions (as of the latest checkpoint).
    pub agents_killed: AtomicU64,
    /// Kill decisions not carried out, by reason: monitor, learning, budget, allowlist, cohort.
    pub kills_suppressed: [AtomicU64; 5],
    /// Owned partitions still in their first-deployment learning period (latest checkpoint).
    pub learning_partitions: AtomicU64,
    /// Fleet risk score of the latest posture snapshot.
    pub fleet_risk: AtomicU64,
    /// Ready: state restored and at least one partition assigned.
    pub ready: AtomicBool,
    /// Time from poll to processed, per batch.
    pub latency: prometheus_client::metrics::histogram::Histogram,
    /// Age of each audit event when the engine takes it (wall clock minus its Kafka timestamp).
    pub event_age: prometheus_client::metrics::histogram::Histogram,
    /// SIEM and email sink figures as of the latest checkpoint.
    pub sinks: std::sync::Mutex<Vec<crate::sink::SinkStatus>>,
    /// Email figures as of the latest checkpoint: sent, transient failures, permanent failures.
    pub email: std::sync::Mutex<Option<[u64; 3]>>,
}

/// The kinds of malformed events, as labels.
pub const BAD_EVENT_KINDS: [&str; 9] = [
    "oversized",
    "not_json",
    "missing_field",
    "wrong_type",
    "invalid_value",
    "duplicate_key",
    "future_timestamp",
    "not_protobuf",
    "agent_cap",
];

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            events: AtomicU64::new(0),
            bad_events: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            id_conflicts: AtomicU64::new(0),
            findings_explained: AtomicU64::new(0),
            fleet_shifts: AtomicU64::new(0),
            duplicate_identities: AtomicU64::new(0),
            incidents: AtomicU64::new(0),
            kill_commands: AtomicU64::new(0),
            commands_applied: AtomicU64::new(0),
            commands_rejected: AtomicU64::new(0),
            commands_rejected_by: Default::default(),
            dead_letters_lost: AtomicU64::new(0),
            identity: Default::default(),
            commands_pending: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            checkpoints: AtomicU64::new(0),
            changelog_records: AtomicU64::new(0),
            changelog_restores: AtomicU64::new(0),
            changelog_records_restored: AtomicU64::new(0),
            restore_skipped: AtomicU64::new(0),
            queue_depth: Arc::default(),
            partitions: AtomicUsize::new(0),
            lag: Arc::default(),
            bad_by_kind: Default::default(),
            incidents_by: Default::default(),
            api_kills: AtomicU64::new(0),
            api_connections_refused: AtomicU64::new(0),
            api_revives: AtomicU64::new(0),
            posture_snapshots: AtomicU64::new(0),
            agents: AtomicU64::new(0),
            agents_killed: AtomicU64::new(0),
            kills_suppressed: Default::default(),
            learning_partitions: AtomicU64::new(0),
            fleet_risk: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            latency: prometheus_client::metrics::histogram::Histogram::new([
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0,
            ]),
            event_age: prometheus_client::metrics::histogram::Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0, 300.0, 3600.0,
            ]),
            sinks: std::sync::Mutex::new(Vec::new()),
            email: std::sync::Mutex::new(None),
        }
    }
}

impl Metrics {
    /// Counts an emitted incident.
    pub fn count_incident(&self, i: &Incident) {
        self.incidents.fetch_add(1, Ordering::Relaxed);
        let t = IncidentType::ALL
            .iter()
            .position(|x| *x == i.kind)
            .unwrap_or(0);
        self.incidents_by[t][i.severity.index()].fetch_add(1, Ordering::Relaxed);
        if let (IncidentType::AutoKill, Some(s)) = (i.kind, i.suppressed_by) {
            self.kills_suppressed[crate::state::suppression_index(s)]
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What the admin API reads of a running daemon: the live sled state, the counters and the
/// partitions this instance owns.
pub struct Live {
    /// The state store (the API reads what the latest checkpoint wrote).
    pub store: Store,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Audit partitions owned now: (topic, partition).
    pub owned: std::sync::RwLock<Vec<(String, i32)>>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("owned", &self.owned())
            .finish()
    }
}

impl Live {
    /// The owned partitions.
    pub fn owned(&self) -> Vec<(String, i32)> {
        self.owned.read().map(|o| o.clone()).unwrap_or_default()
    }
}
