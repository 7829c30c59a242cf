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
    /// Other instances' posture snapshots taken into the fleet view.
    pub peer_snapshots: AtomicU64,
    /// Records of the posture topic refused (unsigned, malformed, or not a snapshot).
    pub peer_snapshots_rejected: AtomicU64,
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
    /// Of the agents, those whose state is in memory (as of the latest checkpoint).
    pub agents_in_memory: AtomicU64,
    /// Times an agent's state left memory (`max_agents_in_memory`).
    pub agents_unloaded: AtomicU64,
    /// Times an agent's state was read back from the store.
    pub agents_loaded: AtomicU64,
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
            peer_snapshots: AtomicU64::new(0),
            peer_snapshots_rejected: AtomicU64::new(0),
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
            agents_in_memory: AtomicU64::new(0),
            agents_unloaded: AtomicU64::new(0),
            agents_loaded: AtomicU64::new(0),
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
    /// The fleet view the admin API serves, as last computed (see [`CachedView`]).
    pub view: std::sync::RwLock<Option<Arc<CachedView>>>,
    /// This instance's id.
    pub guardian_id: String,
    /// The other instances' latest posture snapshots, by instance id.
    pub peers:
        std::sync::RwLock<std::collections::BTreeMap<String, Arc<crate::posture::instances::Peer>>>,
}

/// A fleet view with when and at what cost it was computed.
#[derive(Debug)]
pub struct CachedView {
    /// Posture and compliance of the owned partitions.
    pub view: crate::posture::FleetView,
    /// Checkpoints written when it was read from the store ([`Metrics::checkpoints`]).
    pub checkpoints: u64,
    /// Wall time it was computed (ms).
    pub computed_at: i64,
    /// How long reading and computing it took.
    pub took: std::time::Duration,
}

/// A view that took less than this to compute is computed again for a request when a
/// checkpoint was written since (small fleets always read fresh); a larger fleet's requests are
/// served the posture thread's latest.
pub const RECOMPUTE_BELOW: std::time::Duration = std::time::Duration::from_millis(50);

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("owned", &self.owned())
            .finish()
    }
}

impl Live {
    /// The other instances' latest posture snapshots.
    pub fn peers(&self) -> Vec<Arc<crate::posture::instances::Peer>> {
        self.peers
            .read()
            .map(|p| p.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The owned partitions.
    pub fn owned(&self) -> Vec<(String, i32)> {
        self.owned.read().map(|o| o.clone()).unwrap_or_default()
    }

    /// The latest fleet view, if any.
    pub fn view(&self) -> Option<Arc<CachedView>> {
        self.view.read().ok().and_then(|v| v.clone())
    }

    /// The latest view if it is current enough (see [`RECOMPUTE_BELOW`]), else `None`.
    pub fn current_view(&self) -> Option<Arc<CachedView>> {
        let v = self.view()?;
        let now = self.metrics.checkpoints.load(Ordering::Relaxed);
        (v.checkpoints == now || v.took >= RECOMPUTE_BELOW).then_some(v)
    }

    /// Reads the owned partitions from the store, computes their fleet view and keeps it.
    pub fn refresh_view(
        &self,
        set: &crate::blueprint::BlueprintSet,
        settings: &crate::posture::PostureSettings,
    ) -> Result<Arc<CachedView>, crate::store::StoreError> {
        let started = std::time::Instant::now();
        let checkpoints = self.metrics.checkpoints.load(Ordering::Relaxed);
        let owned = self.owned();
        let state = self.store.state_view(Some(&owned))?;
        let view = Arc::new(CachedView {
            view: state.fleet_view(set, settings),
            checkpoints,
            computed_at: chrono::Utc::now().timestamp_millis(),
            took: started.elapsed(),
        });
        if let Ok(mut v) = self.view.write() {
            *v = Some(view.clone());
        }
        Ok(view)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::posture::{FleetView, StateView};

    /// A live view over an empty store with a fleet view that took `took` to compute when
    /// `then` checkpoints were written.
    fn live_with(dir: &std::path::Path, took: std::time::Duration, then: u64) -> Live {
        let set = crate::blueprint::BlueprintSet::builtin();
        let view: FleetView =
            StateView::default().fleet_view(&set, &crate::posture::PostureSettings::default());
        Live {
            store: Store::open(dir).expect("store"),
            metrics: Arc::default(),
            owned: Default::default(),
            peers: Default::default(),
            guardian_id: "guardian-1".into(),
            view: std::sync::RwLock::new(Some(Arc::new(CachedView {
                view,
                checkpoints: then,
                computed_at: 0,
                took,
            }))),
        }
    }

    #[test]
    fn a_cheap_view_is_current_until_a_checkpoint_and_a_costly_one_is_served_until_refreshed() {
        let d = tempfile::tempdir().expect("dir");
        let cheap = live_with(d.path(), std::time::Duration::from_millis(1), 3);
        cheap.metrics.checkpoints.store(3, Ordering::Relaxed);
        assert!(cheap.current_view().is_some());
        cheap.metrics.checkpoints.store(4, Ordering::Relaxed);
        assert!(
            cheap.current_view().is_none(),
            "computed again for the request"
        );
        drop(cheap);
        let d = tempfile::tempdir().expect("dir");
        let costly = live_with(d.path(), RECOMPUTE_BELOW * 10, 3);
        costly.metrics.checkpoints.store(9, Ordering::Relaxed);
        assert!(
            costly.current_view().is_some(),
            "the posture thread refreshes it"
        );
    }
}
