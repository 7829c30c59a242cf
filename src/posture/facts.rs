//! Facts the compliance controls are evaluated on: the ledger the daemon (or `guardian replay
//! --state`) keeps beside the state, and what the stored agent states and partitions add.

use serde::{Deserialize, Serialize};

/// A stretch of the audit log that was never read (it left the broker's retention before the
/// guardian got to it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// First offset missed.
    pub from_offset: i64,
    /// First offset read again.
    pub to_offset: i64,
    /// Wall time it was found (epoch ms).
    pub found_at: i64,
}

/// A blueprint in force.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlueprintFact {
    /// Key (file name).
    pub key: String,
    /// Display name.
    pub name: String,
    /// monitor, block or correct.
    pub mode: String,
    /// Kill threshold (0: kills off).
    pub kill_threshold: f64,
    /// Whether kills are only simulated.
    pub dry_run: bool,
    /// Suspicious sequences configured.
    pub sequences: usize,
    /// Time zone of its hours.
    pub timezone: String,
}

/// What the guardian writing this state knows about its own setup and history (kept in the
/// state, updated at every checkpoint).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Ledger {
    /// Guardian ids that wrote this state.
    pub guardian_ids: Vec<String>,
    /// `kafka` for the daemon, `replay` for `guardian replay --state`.
    pub source: String,
    /// Audit topics read (or the replayed file).
    pub audit_topics: Vec<String>,
    /// Control topic of kill and revive commands.
    pub control_topic: String,
    /// Incidents topic.
    pub incidents_topic: String,
    /// Dead-letter topic for malformed events.
    pub dead_letter_topic: String,
    /// Whether commands are signed with an HMAC key from the configuration.
    pub commands_signed: bool,
    /// SIEM sinks configured, as `name (type, format)`.
    pub sinks: Vec<String>,
    /// Email alert recipients lists configured.
    pub email_routes: usize,
    /// Whether the admin API (with its kill and revive endpoints) is on.
    pub api: bool,
    /// Whether the admin API uses TLS.
    pub api_tls: bool,
    /// Incident retention in the state, days.
    pub incident_retention_days: f64,
    /// Blueprints in force.
    pub blueprints: Vec<BlueprintFact>,
    /// Wall time this state was first written (epoch ms).
    pub first_written: i64,
    /// Wall time of the latest checkpoint (epoch ms).
    pub last_written: i64,
    /// Stretches of the log that were never read.
    pub gaps: Vec<Gap>,
    /// Partitions rebuilt from the log (no local state when assigned).
    pub rebuilds: u64,
    /// Control commands rejected (unsigned, forged, malformed).
    pub commands_rejected: u64,
    /// Operator commands applied.
    pub commands_applied: u64,
    /// Kill commands the guardian published.
    pub kill_commands_sent: u64,
    /// Kill and revive commands published through the admin API.
    pub api_commands: u64,
    /// Posture snapshots published.
    pub posture_snapshots: u64,
    /// Dead letters the broker refused even cut to their bounded size, skipped.
    pub dead_letters_lost: u64,
    /// The latest of them (at most [`MAX_LOST_KEPT`]), so the input can still be found.
    pub lost: Vec<LostOutput>,
}

/// How many refused dead letters the ledger describes one by one.
pub const MAX_LOST_KEPT: usize = 100;

/// A dead letter the broker refused: where its input is, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LostOutput {
    /// The input's place (`topic/partition@offset`), when known.
    pub source: Option<String>,
    /// The topic it was for.
    pub topic: String,
    /// Its size as sent.
    pub bytes: usize,
    /// The broker's or client's reason.
    pub reason: String,
    /// Wall time it was recorded (epoch ms).
    pub at: i64,
}

impl Ledger {
    /// Folds this run's setup into the ledger (keeps history: ids, gaps, counters).
    pub fn record_setup(&mut self, setup: Ledger, now: i64) {
        let mut ids = std::mem::take(&mut self.guardian_ids);
        for id in &setup.guardian_ids {
            if !ids.contains(id) {
                ids.push(id.clone());
            }
        }
        let keep = std::mem::take(self);
        *self = Ledger {
            guardian_ids: ids,
            first_written: if keep.first_written == 0 {
                now
            } else {
                keep.first_written
            },
            last_written: now,
            gaps: keep.gaps,
            rebuilds: keep.rebuilds,
            commands_rejected: keep.commands_rejected,
            commands_applied: keep.commands_applied,
            kill_commands_sent: keep.kill_commands_sent,
            api_commands: keep.api_commands,
            posture_snapshots: keep.posture_snapshots,
            ..setup
        };
    }
}

/// Facts of one stored partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionFact {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Next offset to read: everything before it is folded into the state.
    pub next_offset: i64,
    /// Events folded.
    pub events: u64,
    /// Malformed events (dead-lettered).
    pub bad_events: u64,
    /// Events later than the allowed lateness.
    pub late_events: u64,
    /// Event time of its first event: the first-deployment learning period starts here.
    pub learning_origin: Option<i64>,
    /// Kill decisions not carried out, by reason (monitor, learning, budget, allowlist).
    pub kills_suppressed: [u64; 5],
    /// Baseline findings reported (routine, or seen during learning).
    pub baseline_findings: u64,
}
