//! Incident records: the guardian's output for every anomaly and every kill decision.

use crate::blueprint::Severity;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Kind of incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentType {
    /// Too many calls.
    FrequencySpike,
    /// Too much data (or, for imported peer configs, too many actions).
    VolumeSpike,
    /// A blueprint tool sequence.
    SuspiciousSequence,
    /// Activity outside allowed or usual hours.
    OffHours,
    /// The kill policy decided to kill the agent.
    AutoKill,
    /// A killed agent is still acting.
    ActivityAfterKill,
    /// A fact about an agent's baseline: a rule it matches routinely, or a match seen while the
    /// baseline was still being learned. Low severity, never adds kill weight.
    Baseline,
    /// The fleet-wide budget of automatic kills is spent: further kills wait for an operator.
    KillBudget,
    /// A large part of a cohort of agents deviates the same way at the same time: one fleet
    /// event (a month-end close, a release, a rollout) rather than one incident per agent.
    FleetShift,
    /// A control command with a missing or wrong signature was rejected.
    RejectedCommand,
    /// A record named another agent for a session or trace already bound to an agent: refused
    /// for attribution (the session's calls stay its agent's).
    BindingConflict,
    /// A burst of new identities (sessions, traces) far above the usual: a flood that would
    /// push real bindings out of the map.
    IdentityFlood,
}

impl IncidentType {
    /// All types, in a fixed order (the engine's types first, see [`IncidentType::DETECTED`]).
    pub const ALL: [IncidentType; 12] = [
        IncidentType::FrequencySpike,
        IncidentType::VolumeSpike,
        IncidentType::SuspiciousSequence,
        IncidentType::OffHours,
        IncidentType::AutoKill,
        IncidentType::ActivityAfterKill,
        IncidentType::Baseline,
        IncidentType::KillBudget,
        IncidentType::FleetShift,
        IncidentType::RejectedCommand,
        IncidentType::BindingConflict,
        IncidentType::IdentityFlood,
    ];

    /// The types the engine's detectors and kill policy raise (not the daemon's
    /// `rejected_command`, nor the identity map's `binding_conflict` and `identity_flood`).
    pub const ENGINE: &'static [IncidentType] = IncidentType::ALL.split_at(9).0;

    /// The anomaly types the detectors and the kill policy raise (not the baseline findings, the
    /// kill-budget alert or the daemon's `rejected_command`).
    pub const DETECTED: &'static [IncidentType] = IncidentType::ALL.split_at(6).0;

    /// Parses a snake_case name.
    pub fn parse(s: &str) -> Option<IncidentType> {
        IncidentType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentType::FrequencySpike => "frequency_spike",
            IncidentType::VolumeSpike => "volume_spike",
            IncidentType::SuspiciousSequence => "suspicious_sequence",
            IncidentType::OffHours => "off_hours",
            IncidentType::AutoKill => "auto_kill",
            IncidentType::ActivityAfterKill => "activity_after_kill",
            IncidentType::Baseline => "baseline",
            IncidentType::KillBudget => "kill_budget",
            IncidentType::FleetShift => "fleet_shift",
            IncidentType::RejectedCommand => "rejected_command",
            IncidentType::BindingConflict => "binding_conflict",
            IncidentType::IdentityFlood => "identity_flood",
        }
    }
}

/// What the figure was compared against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Basis {
    /// A fixed blueprint threshold.
    Static,
    /// The agent's own learned baseline.
    Learned,
}

/// What the guardian did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Recorded and forwarded to the sinks.
    Logged,
    /// A kill command is issued.
    Killed,
    /// Monitor mode or dry run: the agent would have been killed.
    WouldKill,
    /// Over the threshold but on the kill allowlist.
    KillSuppressedAllowlist,
}

/// Whether an incident is still going on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Raised; for an episode, the first violating event.
    #[default]
    Open,
    /// The episode ended: the record repeats the incident id with its count and span.
    Closed,
}

/// How a finding was judged against the agent's baseline (on `baseline` records).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// What the agent does regularly: reported once, again when it changes.
    Routine,
    /// Seen during the first-deployment learning period, before any baseline could judge it.
    Learning,
}

/// Why a kill the policy decided was not carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Suppression {
    /// Monitor mode or `kill.dry_run`.
    Monitor,
    /// The first-deployment learning period is not over.
    Learning,
    /// The fleet-wide kill budget is spent.
    Budget,
    /// Several agents of the same cohort were killed within the hour: a fleet event is more
    /// likely than that many rogue agents.
    Cohort,
    /// The agent is on the kill allowlist.
    Allowlist,
}

impl Suppression {
    /// Labels of the reasons, in the order of [`crate::state::suppression_index`] (metrics and
    /// the posture's kill safety).
    pub const LABELS: [&'static str; 5] = ["monitor", "learning", "budget", "allowlist", "cohort"];
}

/// Whose history an expected figure comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The agent's own history.
    Agent,
    /// The agents of the same blueprint (the agent's own history is too short).
    Peers,
    /// A fixed blueprint threshold, nothing learned.
    Blueprint,
}

/// The baseline behind a judgement: whose history, how much of it, how often the agent did this before.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BaselineFacts {
    /// Whose history.
    pub source: Source,
    /// Days of the agent's history (event time from its first event).
    pub history_days: f64,
    /// Observations behind the expected figure: active days for rates (or the peers'
    /// agent-days), calls of the tool for bytes, earlier matches of the rule for sequences.
    pub samples: u64,
    /// How often the agent did this before: matches of the sequence in this form, days it ran
    /// over the static rate, days it was active at this hour or day.
    pub seen_before: u64,
}

/// One incident. Times are RFC 3339 UTC strings in JSON and epoch milliseconds in memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// Deterministic id derived from the input (see [`incident_id`]).
    pub incident_id: String,
    /// The agent.
    pub agent_id: String,
    /// Kind of incident.
    #[serde(rename = "type")]
    pub kind: IncidentType,
    /// Severity.
    pub severity: Severity,
    /// Event time of the triggering event.
    #[serde(with = "crate::event::rfc3339_serde")]
    pub at: i64,
    /// Start of the span of event time the figure covers.
    #[serde(with = "crate::event::rfc3339_serde")]
    pub window_start: i64,
    /// End of that span.
    #[serde(with = "crate::event::rfc3339_serde")]
    pub window_end: i64,
    /// Blueprint key in force for the agent.
    pub blueprint: String,
    /// Static threshold or learned baseline.
    pub basis: Basis,
    /// The observed figure.
    pub observed: f64,
    /// The threshold or baseline figure it was compared with.
    pub expected: f64,
    /// Unit of `observed` and `expected`: calls, bytes, seconds, score, events.
    pub unit: String,
    /// One sentence for people.
    pub description: String,
    /// What the guardian did.
    pub action_taken: Action,
    /// Id of the triggering event.
    pub event_id: String,
    /// Tool of the triggering event.
    pub tool_name: String,
    /// The matched pattern, for suspicious sequences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<Vec<String>>,
    /// Open, or closed at the end of its episode.
    #[serde(default)]
    pub status: Status,
    /// Violating events in the episode so far (1 for a single event or match).
    #[serde(default = "one")]
    pub count: u64,
    /// On `baseline` records: the type of the rule judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub about: Option<IncidentType>,
    /// On `baseline` records: routine for the agent, or seen during learning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// The baseline behind the judgement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<BaselineFacts>,
    /// On `auto_kill` and `kill_budget` records: why the kill was not carried out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppressed_by: Option<Suppression>,
    /// On `fleet_shift` records: the agents whose findings the shift explained (sorted; the
    /// first hundred, `count` says how many findings in all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<String>,
}

fn one() -> u64 {
    1
}

impl Incident {
    /// A high-severity incident of a rule the daemon enforces (a refused command, a refused
    /// binding, a flood), logged at `at`: the fields a detector fills are left empty.
    pub fn rule(
        kind: IncidentType,
        incident_id: String,
        agent_id: String,
        at: i64,
        unit: &str,
        description: String,
    ) -> Incident {
        Incident {
            incident_id,
            agent_id,
            kind,
            severity: Severity::High,
            at,
            window_start: at,
            window_end: at,
            blueprint: String::new(),
            basis: Basis::Static,
            observed: 1.0,
            expected: 0.0,
            unit: unit.into(),
            description,
            action_taken: Action::Logged,
            event_id: String::new(),
            tool_name: String::new(),
            pattern: None,
            status: Status::Open,
            count: 1,
            about: None,
            verdict: None,
            baseline: None,
            suppressed_by: None,
            agents: Vec::new(),
        }
    }
}

/// Derives an incident id from what identifies it in the input: the agent, the kind, the agent's
/// event sequence number, the triggering event's id and time, and a discriminator (e.g. the
/// pattern index). Replaying the same input gives the same id.
pub fn incident_id(
    agent_id: &str,
    kind: IncidentType,
    basis: Basis,
    seq: u64,
    event_id: &str,
    ts: i64,
    disc: u32,
) -> String {
    let mut h = Sha256::new();
    for part in [
        agent_id.as_bytes(),
        kind.as_str().as_bytes(),
        event_id.as_bytes(),
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.update([basis as u8]);
    h.update(seq.to_le_bytes());
    h.update(ts.to_le_bytes());
    h.update(disc.to_le_bytes());
    uuid_string(&h.finalize())
}

/// Formats the first 16 bytes of a digest as a UUID-shaped string (8-4-4-4-12 hex).
pub fn uuid_string(d: &[u8]) -> String {
    let mut s = String::with_capacity(36);
    for (i, b) in d.iter().take(16).enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push_str(&format!("{b:02x}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_and_distinct() {
        let a = incident_id("a", IncidentType::OffHours, Basis::Static, 1, "e", 5, 0);
        assert_eq!(
            a,
            incident_id("a", IncidentType::OffHours, Basis::Static, 1, "e", 5, 0)
        );
        assert_eq!(a.len(), 36);
        assert_ne!(
            a,
            incident_id("a", IncidentType::OffHours, Basis::Learned, 1, "e", 5, 0)
        );
        assert_ne!(
            a,
            incident_id("a", IncidentType::OffHours, Basis::Static, 2, "e", 5, 0)
        );
        assert_ne!(
            incident_id("ab", IncidentType::OffHours, Basis::Static, 1, "", 5, 0),
            incident_id("a", IncidentType::OffHours, Basis::Static, 1, "b", 5, 0)
        );
    }

    #[test]
    fn incident_json_round_trips_with_rfc3339_times() {
        let i = Incident {
            incident_id: "x".into(),
            agent_id: "a".into(),
            kind: IncidentType::AutoKill,
            severity: Severity::Critical,
            at: 1_772_460_000_250,
            window_start: 1_772_460_000_000,
            window_end: 1_772_460_000_250,
            blueprint: "finance".into(),
            basis: Basis::Static,
            observed: 3.0,
            expected: 3.0,
            unit: "score".into(),
            description: "d".into(),
            action_taken: Action::Killed,
            event_id: "e".into(),
            tool_name: "t".into(),
            pattern: None,
            status: Status::Open,
            count: 1,
            about: None,
            verdict: None,
            baseline: None,
            suppressed_by: None,
            agents: Vec::new(),
        };
        let s = serde_json::to_string(&i).unwrap();
        assert!(s.contains(r#""at":"2026-03-02T14:00:00.250Z""#), "{s}");
        assert!(s.contains(r#""type":"auto_kill""#));
        assert_eq!(serde_json::from_str::<Incident>(&s).unwrap(), i);
    }
}
