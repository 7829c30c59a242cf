//! Fleet posture from the event-sourced state: inventory, risk per agent with its reasons, the
//! fleet score and its trend, and compliance controls with their evidence.
//!
//! Layer: uses `state`, `detect`, `response`, `blueprint`, `event`.
//!
//! Everything here is computed from a [`StateView`] (agent states, partition offsets, the
//! ledger, past fleet scores): the daemon's admin API reads it from the live sled state, and
//! `guardian posture --state DIR` from a stopped daemon's or a replay's state.

pub mod compliance;
pub mod facts;
pub mod instances;
pub mod inventory;
pub mod report;
pub mod risk;
pub mod settings;

pub use compliance::{evaluate, ComplianceReport, ControlStatus, Framework};
pub use facts::{BlueprintFact, Gap, Ledger, LostOutput, PartitionFact, MAX_LOST_KEPT};
pub use inventory::{merge_by_agent, AgentStatus, AgentView};
pub use report::{posture, HistoryPoint, KillSafety, Posture};
pub use risk::{Risk, RiskLevel};
pub use settings::{PostureConfig, PostureSettings};

use crate::blueprint::BlueprintSet;
use crate::state::AgentSummary;

/// What posture is computed from.
#[derive(Debug, Clone, Default)]
pub struct StateView {
    /// Agents (what the posture reads of their states), merged by id, sorted by id.
    pub states: Vec<AgentSummary>,
    /// Stored partitions.
    pub partitions: Vec<PartitionFact>,
    /// The guardian's ledger.
    pub ledger: Ledger,
    /// Past fleet scores, oldest first.
    pub history: Vec<HistoryPoint>,
    /// Each agent's home partition (the first it was stored in): an index into `partitions`.
    pub homes: std::collections::HashMap<String, usize>,
}

impl StateView {
    /// The fleet posture.
    pub fn posture(&self, set: &BlueprintSet, s: &PostureSettings) -> Posture {
        self.posture_with(set, s, 1)
    }

    /// [`StateView::posture`], the agents' rows computed on `threads` threads.
    pub fn posture_with(&self, set: &BlueprintSet, s: &PostureSettings, threads: usize) -> Posture {
        let mut p = report::posture_with(&self.states, s, &self.history, threads);
        if !self.partitions.is_empty() {
            p.fleet.safety = Some(safety(&self.partitions, set, p.as_of_ms));
        }
        p
    }

    /// A framework's compliance report, given the posture.
    pub fn compliance(
        &self,
        f: Framework,
        posture: &Posture,
        s: &PostureSettings,
    ) -> ComplianceReport {
        evaluate(
            f,
            &compliance::Inputs {
                posture,
                states: &self.states,
                partitions: &self.partitions,
                ledger: &self.ledger,
                settings: s,
            },
        )
    }

    /// The posture with every framework's compliance report, as the admin API serves them.
    pub fn fleet_view(&self, set: &BlueprintSet, s: &PostureSettings) -> FleetView {
        let posture = self.posture(set, s);
        let compliance = Framework::ALL
            .iter()
            .map(|f| self.compliance(*f, &posture, s))
            .collect();
        let parts = instances::parts_of(&self.partitions, &self.states, &self.homes, &posture);
        FleetView {
            posture,
            compliance,
            parts,
        }
    }
}

/// The posture and every framework's compliance report ([`Framework::ALL`] order), computed
/// together from one [`StateView`].
#[derive(Debug, Clone)]
pub struct FleetView {
    /// The fleet posture, every agent's row included.
    pub posture: Posture,
    /// Each framework's report.
    pub compliance: Vec<ComplianceReport>,
    /// Each stored partition's share of the posture (what the posture snapshot publishes for
    /// the other instances).
    pub parts: Vec<instances::Part>,
}

impl FleetView {
    /// The report of framework `f`.
    pub fn compliance(&self, f: Framework) -> Option<&ComplianceReport> {
        Framework::ALL
            .iter()
            .position(|x| *x == f)
            .and_then(|i| self.compliance.get(i))
    }
}

/// What keeps the guard from killing a healthy fleet, from the stored partitions' facts, as of
/// event time `as_of_ms`.
pub fn safety(partitions: &[PartitionFact], set: &BlueprintSet, as_of_ms: i64) -> KillSafety {
    let longest = set
        .blueprints()
        .iter()
        .map(|b| b.learned.learning_period_ms)
        .max()
        .unwrap_or(0);
    let until = partitions
        .iter()
        .filter_map(|f| f.learning_origin)
        .min()
        .map(|o| o.saturating_add(longest));
    let mut held = std::collections::BTreeMap::new();
    for (i, r) in crate::response::Suppression::LABELS.iter().enumerate() {
        held.insert(*r, partitions.iter().map(|f| f.kills_suppressed[i]).sum());
    }
    KillSafety {
        learning: until.is_none_or(|u| as_of_ms < u),
        learning_until: until.map(crate::event::format_rfc3339_ms),
        kills_held: held,
        baseline_findings: partitions.iter().map(|f| f.baseline_findings).sum(),
    }
}

/// The facts of a blueprint set, for the ledger.
pub fn blueprint_facts(set: &BlueprintSet) -> Vec<BlueprintFact> {
    set.blueprints()
        .iter()
        .map(|b| BlueprintFact {
            key: b.key.clone(),
            name: b.name.clone(),
            mode: b.mode.as_str().to_string(),
            kill_threshold: b.kill.threshold,
            dry_run: b.kill.dry_run,
            sequences: b.sequences.len(),
            timezone: b.timezone.name().to_string(),
        })
        .collect()
}
