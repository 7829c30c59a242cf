//! Posture snapshots, off the engine thread: every `posture.interval` the owned partitions'
//! posture is computed from the store (the last checkpoint, as the admin API reads it), added
//! to the score history, and handed to the engine thread through its queue to publish;
//! incidents past their retention are pruned.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::blueprint::BlueprintSet;
use crate::posture::{Posture, PostureSettings};
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

impl Snapshots {
    /// Computes a snapshot every interval until `stop`, handing each to the engine's `queue`.
    pub fn run(self, queue: &Queue, stop: Stop) -> Result<(), StoreError> {
        let mut last_prune: Option<Instant> = None;
        while !stop.wait(self.settings.interval) {
            let Some((snap, posture)) = self.once()? else {
                continue;
            };
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

    /// The posture of the owned partitions as stored now, recorded in the score history; `None`
    /// while nothing is owned or stored.
    pub fn once(&self) -> Result<Option<(PostureRecord, Posture)>, StoreError> {
        let owned = self.live.owned();
        if owned.is_empty() {
            return Ok(None);
        }
        let view = self.store.state_view(Some(&owned))?;
        if view.states.is_empty() {
            return Ok(None);
        }
        let posture = view.posture(&self.blueprints, &self.settings);
        let json = serde_json::json!({
            "guardian_id": self.guardian_id,
            "partitions": owned.iter().map(|(t, p)| format!("{t}/{p}")).collect::<Vec<_>>(),
            "fleet": posture.fleet,
            "top_risks": posture.top_risks,
            "as_of": posture.as_of,
        });
        let json = serde_json::to_vec(&json).map_err(|e| StoreError::Encode {
            what: "a posture snapshot",
            reason: e.to_string(),
        })?;
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
        let summary = posture_summary(&posture, &self.guardian_id);
        Ok(Some((PostureRecord { json, summary }, posture)))
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
