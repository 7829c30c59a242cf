//! Posture snapshots and the admin API's fleet view, off the engine thread: the owned
//! partitions' posture and compliance are computed from the store (the last checkpoint) every
//! [`VIEW_EVERY`] when checkpoints were written since, and kept for the API
//! ([`crate::telemetry::Live::view`]); every `posture.interval` the latest is added to the score
//! history and handed to the engine thread through its queue to publish; incidents past their
//! retention are pruned.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::blueprint::BlueprintSet;
use crate::posture::instances::{Snapshot, MAX_SNAPSHOT_BYTES};
use crate::posture::{FleetView, Posture, PostureSettings};
use crate::sink::record::{PostureRecord, PostureSummary};
use crate::store::{Store, StoreError};
use crate::telemetry::Live;

use crate::stop::Stop;

use crate::source::queue::{Notice, Queue};

/// What the posture thread needs.
pub struct Snapshots {
    /// The state store.
    pub store: Store,
    /// The owned partitions and the counters.
    pub live: Arc<Live>,
    /// The blueprints in force.
    pub blueprints: Arc<BlueprintSet>,
    /// Posture settings (interval, retention).
    pub settings: PostureSettings,
    /// This instance's id.
    pub guardian_id: String,
}

/// How often incidents past their retention are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// How often the admin API's fleet view is computed again when checkpoints were written since
/// (at most: a snapshot interval shorter than this sets the pace).
pub const VIEW_EVERY: Duration = Duration::from_secs(15);

impl Snapshots {
    /// Until `stop`: every [`VIEW_EVERY`] (when checkpoints were written since) computes the
    /// admin API's fleet view again; every interval hands a snapshot of it to the engine's
    /// `queue` to publish.
    pub fn run(self, queue: &Queue, stop: Stop) -> Result<(), StoreError> {
        let mut last_prune: Option<Instant> = None;
        let mut last_publish = Instant::now();
        let mut seen = None;
        let tick = self.settings.interval.min(VIEW_EVERY);
        while !stop.wait(tick) {
            let publish = last_publish.elapsed() >= self.settings.interval;
            let checkpoints = self.live.metrics.checkpoints.load(Ordering::Relaxed);
            if !publish && seen == Some(checkpoints) {
                continue;
            }
            seen = Some(checkpoints);
            if self.live.owned().is_empty() {
                continue;
            }
            let view = self.live.refresh_view(&self.blueprints, &self.settings)?;
            if !publish || view.view.posture.agents.is_empty() {
                continue;
            }
            last_publish = Instant::now();
            let posture = &view.view.posture;
            let snap = self.snapshot(&view.view)?;
            if !queue.send(Notice::Posture(snap)) {
                break; // the engine has stopped
            }
            if last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
                last_prune = Some(Instant::now());
                let pruned = self
                    .store
                    .prune_incidents(posture.as_of_ms - self.settings.incident_retention_ms)?;
                if pruned > 0 {
                    tracing::info!(
                        pruned,
                        "incidents past their retention removed from the state"
                    );
                }
            }
        }
        Ok(())
    }

    /// The snapshot of the owned partitions' fleet view (its posture recorded in the score
    /// history): the instance's summary and each partition's share, within a Kafka message.
    fn snapshot(&self, view: &FleetView) -> Result<PostureRecord, StoreError> {
        let posture = &view.posture;
        let owned = self.live.owned();
        let encode = |what: &'static str, e: serde_json::Error| StoreError::Encode {
            what,
            reason: e.to_string(),
        };
        let mut snap = Snapshot {
            guardian_id: self.guardian_id.clone(),
            partitions: owned.iter().map(|(t, p)| format!("{t}/{p}")).collect(),
            fleet: serde_json::to_value(&posture.fleet)
                .map_err(|e| encode("a fleet summary", e))?,
            top_risks: posture.top_risks.clone(),
            as_of: posture.as_of.clone(),
            published_at: chrono::Utc::now().timestamp_millis(),
            interval_ms: i64::try_from(self.settings.interval.as_millis()).unwrap_or(i64::MAX),
            parts: view.parts.clone(),
        };
        let (json, trimmed) = snap
            .encode_within(MAX_SNAPSHOT_BYTES)
            .map_err(|e| encode("a posture snapshot", e))?;
        if trimmed > 0 {
            tracing::warn!(
                parts = trimmed,
                bytes = json.len(),
                "posture snapshot trimmed to fit a Kafka message: the other instances cannot say which instance owns these partitions' agents"
            );
        }
        self.store.push_history(&posture.point())?;
        let m = &self.live.metrics;
        m.fleet_risk
            .store(u64::from(posture.fleet.score), Ordering::Relaxed);
        m.posture_snapshots.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            fleet_risk = posture.fleet.score,
            agents = posture.fleet.agents,
            "posture snapshot computed"
        );
        let summary = posture_summary(posture, &self.guardian_id);
        Ok(PostureRecord { json, summary })
    }
}

/// The SIEM summary of a posture.
pub fn posture_summary(p: &Posture, guardian_id: &str) -> PostureSummary {
    let f = &p.fleet;
    PostureSummary {
        summary_id: format!("posture:{guardian_id}:{}", p.as_of_ms),
        at: p.as_of_ms,
        guardian_id: guardian_id.to_string(),
        score: f.score,
        level: f.level.as_str().to_string(),
        trend_delta: f.trend.delta,
        agents: f.agents,
        killed: f.by_status.get("killed").copied().unwrap_or(0),
        high_risk: f.by_risk_level.get("high").copied().unwrap_or(0)
            + f.by_risk_level.get("critical").copied().unwrap_or(0),
        top_agent: p.top_risks.first().map(|a| (a.agent_id.clone(), a.risk)),
    }
}
