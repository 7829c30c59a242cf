//! What the SIEM and email sinks send: incidents, control commands, and dead-lettered input, and
//! its encodings: CEF ([`cef`]), ECS JSON ([`ecs`]), OCSF ([`ocsf`]), chosen per sink ([`lines`]).

pub mod cef;
pub mod ecs;
pub mod lines;
pub mod ocsf;

use serde::{Deserialize, Serialize};

use crate::blueprint::Severity;
use crate::control::{Command, Origin, Verb};
use crate::response::{Incident, IncidentType};

/// An audit message that could not be decoded and went to the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Where it came from: `topic/partition@offset`, or `file:line`.
    pub source: String,
    /// When it was seen (the Kafka message timestamp, else the time it was read), epoch ms.
    pub at: i64,
    /// The decoder's error kind, e.g. `not_json`, `missing_field`.
    pub kind: String,
    /// The decoder's message, naming the field.
    pub error: String,
    /// The message key (usually the agent id), if any and valid UTF-8.
    pub key: Option<String>,
    /// Size of the message in bytes.
    pub bytes: usize,
}

/// A periodic fleet posture summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PostureSummary {
    /// Id of this summary: guardian id and event time.
    pub summary_id: String,
    /// Event time it is computed as of, epoch ms.
    pub at: i64,
    /// The guardian instance (each reports the partitions it owns).
    pub guardian_id: String,
    /// Fleet risk 0–100.
    pub score: u8,
    /// Level of the score.
    pub level: String,
    /// Change since about a day earlier.
    pub trend_delta: i16,
    /// Agents.
    pub agents: usize,
    /// Killed agents.
    pub killed: usize,
    /// Agents at high or critical risk.
    pub high_risk: usize,
    /// The riskiest agent and its score, if any agent is at risk.
    pub top_agent: Option<(String, u8)>,
}

/// One record for the SIEM and email sinks.
#[derive(Debug, Clone, Copy)]
pub enum Record<'a> {
    /// A detector or kill-policy incident, or a rejected control command.
    Incident(&'a Incident),
    /// A kill or revive command that was issued (automatic) or applied (manual).
    Command(&'a Command),
    /// Malformed input.
    DeadLetter(&'a DeadLetter),
    /// A fleet posture summary.
    Posture(&'a PostureSummary),
}

/// The fixed classes of records: CEF Device Event Class ID, name and severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Class {
    /// CEF Device Event Class ID (also the syslog MSGID's number).
    pub id: u16,
    /// Short machine name (CEF `cat`, syslog MSGID, ECS `event.action`).
    pub key: &'static str,
    /// CEF Name: fixed per class, never user-controlled.
    pub name: &'static str,
}

/// Every class, for the documentation table and tests.
pub const CLASSES: [Class; 16] = [
    class(100, "frequency_spike", "Frequency spike"),
    class(101, "volume_spike", "Volume spike"),
    class(102, "suspicious_sequence", "Suspicious tool sequence"),
    class(103, "off_hours", "Off-hours activity"),
    class(110, "auto_kill", "Kill decided by policy"),
    class(111, "activity_after_kill", "Activity after kill"),
    class(112, "baseline", "Baseline finding"),
    class(113, "kill_budget", "Kill budget spent"),
    class(114, "fleet_shift", "Fleet shift of a cohort"),
    class(120, "rejected_command", "Control command rejected"),
    class(121, "binding_conflict", "Session re-binding refused"),
    class(122, "identity_flood", "Flood of new identities"),
    class(200, "kill", "Kill command"),
    class(201, "revive", "Revive command"),
    class(300, "dead_letter", "Malformed audit event"),
    class(400, "posture", "Fleet posture summary"),
];

const fn class(id: u16, key: &'static str, name: &'static str) -> Class {
    Class { id, key, name }
}

fn incident_class(t: IncidentType) -> Class {
    CLASSES[match t {
        IncidentType::FrequencySpike => 0,
        IncidentType::VolumeSpike => 1,
        IncidentType::SuspiciousSequence => 2,
        IncidentType::OffHours => 3,
        IncidentType::AutoKill => 4,
        IncidentType::ActivityAfterKill => 5,
        IncidentType::Baseline => 6,
        IncidentType::KillBudget => 7,
        IncidentType::FleetShift => 8,
        IncidentType::RejectedCommand => 9,
        IncidentType::BindingConflict => 10,
        IncidentType::IdentityFlood => 11,
    }]
}

/// CEF severity (0–10) of an incident severity: low 3, medium 5, high 8, critical 10.
pub fn cef_severity(s: Severity) -> u8 {
    match s {
        Severity::Low => 3,
        Severity::Medium => 5,
        Severity::High => 8,
        Severity::Critical => 10,
    }
}

impl Record<'_> {
    /// The record whole, as JSON under its kind (`incident`, `command`, `dead_letter`,
    /// `posture`): what the JSON formats keep beside their mapped fields.
    pub fn detail(&self) -> Result<(&'static str, serde_json::Value), serde_json::Error> {
        Ok(match self {
            Record::Incident(i) => ("incident", serde_json::to_value(i)?),
            Record::Command(c) => ("command", serde_json::to_value(c)?),
            Record::DeadLetter(d) => ("dead_letter", serde_json::to_value(d)?),
            Record::Posture(p) => ("posture", serde_json::to_value(p)?),
        })
    }

    /// The record's class.
    pub fn class(&self) -> Class {
        match self {
            Record::Incident(i) => incident_class(i.kind),
            Record::Command(c) => match c.command {
                Verb::Kill => CLASSES[12],
                Verb::Revive => CLASSES[13],
            },
            Record::DeadLetter(_) => CLASSES[14],
            Record::Posture(_) => CLASSES[15],
        }
    }

    /// CEF severity 0–10: incidents by their severity; automatic kill commands 9, manual kill
    /// commands 7, revive commands 3, dead letters 2, posture summaries by fleet risk level
    /// (low 1, medium 3, high 6, critical 8).
    pub fn severity(&self) -> u8 {
        match self {
            Record::Incident(i) => cef_severity(i.severity),
            Record::Command(c) => match (c.command, c.origin) {
                (Verb::Kill, Origin::Auto) => 9,
                (Verb::Kill, Origin::Manual) => 7,
                (Verb::Revive, _) => 3,
            },
            Record::DeadLetter(_) => 2,
            Record::Posture(p) => match p.level.as_str() {
                "critical" => 8,
                "high" => 6,
                "medium" => 3,
                _ => 1,
            },
        }
    }

    /// The record's time (event time for incidents and automatic commands), epoch ms.
    pub fn at(&self) -> i64 {
        match self {
            Record::Incident(i) => i.at,
            Record::Command(c) => c.issued_at,
            Record::DeadLetter(d) => d.at,
            Record::Posture(p) => p.at,
        }
    }

    /// The agent concerned, if known.
    pub fn agent(&self) -> Option<&str> {
        match self {
            Record::Incident(i) => Some(&i.agent_id),
            Record::Command(c) => Some(&c.agent_id),
            Record::DeadLetter(d) => d.key.as_deref(),
            Record::Posture(p) => p.top_agent.as_ref().map(|(a, _)| a.as_str()),
        }
    }

    /// The blueprint in force, if known.
    pub fn blueprint(&self) -> Option<&str> {
        match self {
            Record::Incident(i) => Some(&i.blueprint).filter(|b| !b.is_empty()).map(|b| &**b),
            Record::Command(c) => c.blueprint.as_deref(),
            Record::DeadLetter(_) | Record::Posture(_) => None,
        }
    }
}

/// A computed posture, ready to publish on the posture topic.
#[derive(Debug)]
pub struct PostureRecord {
    /// The JSON record for the posture topic.
    pub json: Vec<u8>,
    /// Its summary for the SIEM sinks.
    pub summary: PostureSummary,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_incident_type_has_its_own_class_and_ids_are_unique() {
        let mut ids: Vec<u16> = CLASSES.iter().map(|c| c.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), CLASSES.len());
        for t in IncidentType::ALL {
            assert_eq!(incident_class(t).key, t.as_str());
        }
    }

    #[test]
    fn severity_mapping_is_monotonic_and_in_range() {
        let s: Vec<u8> = [
            Severity::Low,
            Severity::Medium,
            Severity::High,
            Severity::Critical,
        ]
        .map(cef_severity)
        .to_vec();
        assert_eq!(s, vec![3, 5, 8, 10]);
    }
}
