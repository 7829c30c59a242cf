//! OCSF records (schema [`OCSF_VERSION`]), for security data lakes and SIEMs that map OCSF
//! (AWS Security Lake, Splunk, Datadog):
//!
//! | record | OCSF class |
//! |---|---|
//! | incident (also a rejected command) | Detection Finding (2004), activity Create |
//! | kill / revive command | Remediation Activity (7001), activity Isolate / Restore |
//! | dead letter | Application Error (6008), activity Translation Error |
//! | posture summary | Base Event (0) |
//!
//! The record itself is kept whole under `unmapped.agent_guardian`.

use serde_json::{json, Map, Value};

use super::cef::{VENDOR, VERSION};
use super::Record;
use crate::blueprint::Severity;
use crate::control::Verb;
use crate::response::{Basis, Incident, IncidentType, Status};

/// The OCSF schema version the records follow.
pub const OCSF_VERSION: &str = "1.5.0";

/// Formats records as one-line OCSF JSON objects.
#[derive(Debug, Clone)]
pub struct OcsfFormatter {
    host: String,
}

/// OCSF `severity_id` and its caption of an incident severity.
fn severity(s: Severity) -> (u8, &'static str) {
    match s {
        Severity::Low => (2, "Low"),
        Severity::Medium => (3, "Medium"),
        Severity::High => (4, "High"),
        Severity::Critical => (5, "Critical"),
    }
}

/// OCSF `severity_id` of a record's CEF severity (0–10), for records without an incident's.
fn severity_of_cef(cef: u8) -> (u8, &'static str) {
    match cef {
        0..=2 => (1, "Informational"),
        3..=4 => (2, "Low"),
        5..=6 => (3, "Medium"),
        7..=8 => (4, "High"),
        _ => (5, "Critical"),
    }
}

/// The analytic type of an incident: decisions of the kill policy and refused commands are
/// rules; blueprint thresholds and sequences describe behaviour; the agent's learned baseline
/// is statistics.
fn analytic_type(i: &Incident) -> (u8, &'static str) {
    match (i.kind, i.basis) {
        (
            IncidentType::AutoKill
            | IncidentType::KillBudget
            | IncidentType::RejectedCommand
            | IncidentType::BindingConflict
            | IncidentType::IdentityFlood,
            _,
        ) => (1, "Rule"),
        (_, Basis::Static) => (2, "Behavioral"),
        (_, Basis::Learned) => (3, "Statistical"),
    }
}

/// The anomaly analysis method and the pattern observed, by incident type.
fn observation(t: IncidentType) -> Option<(&'static str, &'static str)> {
    Some(match t {
        IncidentType::FrequencySpike => ("Frequency Analysis", "FREQUENT"),
        IncidentType::VolumeSpike => ("Volume Analysis", "HIGH_VOLUME"),
        IncidentType::SuspiciousSequence => ("Sequence Analysis", "UNUSUAL_SEQUENCE"),
        IncidentType::OffHours => ("Time Pattern Analysis", "OFF_HOURS"),
        IncidentType::ActivityAfterKill => ("Frequency Analysis", "UNEXPECTED"),
        IncidentType::Baseline => ("Frequency Analysis", "ROUTINE"),
        IncidentType::FleetShift => ("Population Analysis", "COHORT_SHIFT"),
        IncidentType::AutoKill
        | IncidentType::KillBudget
        | IncidentType::RejectedCommand
        | IncidentType::BindingConflict
        | IncidentType::IdentityFlood => return None,
    })
}

impl OcsfFormatter {
    /// A formatter that names `host` as the logging instance.
    pub fn new(host: &str) -> OcsfFormatter {
        OcsfFormatter { host: host.into() }
    }

    fn metadata(&self, uid: &str, log_name: &str) -> Value {
        let mut m = json!({
            "version": OCSF_VERSION,
            "product": {"name": VENDOR, "vendor_name": VENDOR, "version": VERSION},
            "log_name": log_name,
            "log_provider": self.host,
        });
        if !uid.is_empty() {
            m["uid"] = uid.into();
        }
        m
    }

    /// The OCSF event of `r`; an error only if the record cannot be encoded.
    pub fn value(&self, r: &Record<'_>) -> Result<Value, serde_json::Error> {
        let class = r.class();
        let detail = r.detail()?;
        let unmapped = json!({ "agent_guardian": { detail.0: detail.1 } });
        let mut doc = match r {
            Record::Incident(i) => self.finding(i),
            Record::Command(c) => {
                let (activity, name) = match c.command {
                    Verb::Kill => (1, "Isolate"),
                    Verb::Revive => (3, "Restore"),
                };
                let (sev, sev_name) = severity_of_cef(r.severity());
                json!({
                    "class_uid": 7001, "class_name": "Remediation Activity",
                    "category_uid": 7, "category_name": "Remediation",
                    "activity_id": activity, "activity_name": name,
                    "type_uid": 700100 + activity, "type_name": format!("Remediation Activity: {name}"),
                    "time": c.issued_at,
                    "severity_id": sev, "severity": sev_name,
                    "status_id": 1, "status": "Success",
                    "message": c.reason,
                    "command_uid": c.command_id,
                    "remediation": {"desc": format!("{} agent {:?} ({:?} command by {})",
                        class.name, c.agent_id, c.origin, c.guardian_id)},
                    "actor": {"app_name": c.guardian_id},
                    "metadata": self.metadata(&c.command_id, "control"),
                })
            }
            Record::DeadLetter(d) => {
                let (sev, sev_name) = severity_of_cef(r.severity());
                json!({
                    "class_uid": 6008, "class_name": "Application Error",
                    "category_uid": 6, "category_name": "Application Activity",
                    "activity_id": 2, "activity_name": "Translation Error",
                    "type_uid": 600802, "type_name": "Application Error: Translation Error",
                    "time": d.at,
                    "severity_id": sev, "severity": sev_name,
                    "status_id": 2, "status": "Failure",
                    "status_code": d.kind,
                    "status_detail": d.error,
                    "message": format!("Malformed audit event at {}: {}", d.source, d.error),
                    "metadata": self.metadata("", "dead_letters"),
                })
            }
            Record::Posture(p) => {
                let (sev, sev_name) = severity_of_cef(r.severity());
                json!({
                    "class_uid": 0, "class_name": "Base Event",
                    "category_uid": 0, "category_name": "Uncategorized",
                    "activity_id": 99, "activity_name": "Posture summary",
                    "type_uid": 99, "type_name": "Base Event: Other",
                    "time": p.at,
                    "severity_id": sev, "severity": sev_name,
                    "message": format!("Fleet posture: risk {} ({}), {} agents, {} killed, {} at high risk",
                        p.score, p.level, p.agents, p.killed, p.high_risk),
                    "metadata": self.metadata(&p.summary_id, "posture"),
                })
            }
        };
        if let Value::Object(m) = &mut doc {
            m.insert("unmapped".into(), unmapped);
        }
        Ok(doc)
    }

    /// A Detection Finding for an incident.
    fn finding(&self, i: &Incident) -> Value {
        let (sev, sev_name) = severity(i.severity);
        let (status, status_name) = match i.status {
            Status::Open => (1, "New"),
            Status::Closed => (4, "Resolved"),
        };
        let (analytic, analytic_name) = analytic_type(i);
        let class = Record::Incident(i).class();
        let mut data = Map::new();
        data.insert("agent_id".into(), i.agent_id.clone().into());
        if !i.tool_name.is_empty() {
            data.insert("tool_name".into(), i.tool_name.clone().into());
        }
        if !i.event_id.is_empty() {
            data.insert("event_id".into(), i.event_id.clone().into());
        }
        if !i.blueprint.is_empty() {
            data.insert("blueprint".into(), i.blueprint.to_string().into());
        }
        if let Some(p) = &i.pattern {
            data.insert("pattern".into(), json!(p));
        }
        let mut doc = json!({
            "class_uid": 2004, "class_name": "Detection Finding",
            "category_uid": 2, "category_name": "Findings",
            "activity_id": 1, "activity_name": "Create",
            "type_uid": 200401, "type_name": "Detection Finding: Create",
            "time": i.at,
            "start_time": i.window_start,
            "end_time": i.window_end,
            "count": i.count,
            "severity_id": sev, "severity": sev_name,
            "status_id": status, "status": status_name,
            "is_alert": i.kind != IncidentType::Baseline,
            "message": i.description,
            "finding_info": {
                "uid": i.incident_id,
                "title": class.name,
                "desc": i.description,
                "types": [i.kind.as_str()],
                "created_time": i.at,
                "first_seen_time": i.window_start,
                "last_seen_time": i.window_end,
                "analytic": {"uid": i.kind.as_str(), "name": class.name,
                             "type_id": analytic, "type": analytic_name},
            },
            "evidences": [{
                "actor": {"app_name": i.agent_id, "app_uid": i.agent_id},
                "data": Value::Object(data),
            }],
            "metadata": self.metadata(&i.incident_id, "incidents"),
        });
        if let Some((method, pattern)) = observation(i.kind) {
            let observed = |v: f64| json!([{"value": trim(v)}]);
            doc["anomaly_analyses"] = json!([{
                "analysis_targets": [{"name": i.agent_id, "type": "AI agent"}],
                "anomalies": [{"observation_parameter": i.unit, "observation_type": method,
                               "observed_pattern": pattern, "observations": observed(i.observed)}],
                "baselines": [{"observation_parameter": i.unit, "observation_type": method,
                               "observations": observed(i.expected)}],
            }]);
        }
        doc
    }

    /// The one-line JSON text of `r`.
    pub fn line(&self, r: &Record<'_>) -> Result<String, serde_json::Error> {
        crate::text::json_line(&self.value(r)?)
    }
}

/// A figure as text without a needless fraction (`46`, `2.5`).
fn trim(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::Command;
    use crate::sink::DeadLetter;

    fn incident(kind: IncidentType, basis: Basis) -> Incident {
        let mut i = crate::sink::record::cef::tests::incident(kind, "fin-7", "query_customer_db");
        i.basis = basis;
        i
    }

    #[test]
    fn incidents_are_detection_findings_with_their_analysis() {
        let f = OcsfFormatter::new("g-1");
        let i = incident(IncidentType::FrequencySpike, Basis::Learned);
        let v = f.value(&Record::Incident(&i)).unwrap();
        assert_eq!(v["class_uid"], 2004);
        assert_eq!(v["type_uid"], 200401);
        assert_eq!(v["finding_info"]["uid"], i.incident_id.as_str());
        assert_eq!(v["finding_info"]["analytic"]["type"], "Statistical");
        assert_eq!(v["metadata"]["version"], OCSF_VERSION);
        let a = &v["anomaly_analyses"][0];
        assert_eq!(
            a["anomalies"][0]["observations"][0]["value"],
            trim(i.observed)
        );
        assert_eq!(
            a["baselines"][0]["observations"][0]["value"],
            trim(i.expected)
        );
        assert_eq!(v["evidences"][0]["data"]["agent_id"], i.agent_id.as_str());
        assert_eq!(
            v["unmapped"]["agent_guardian"]["incident"]["incident_id"],
            i.incident_id.as_str()
        );
        let s = f
            .value(&Record::Incident(&incident(
                IncidentType::SuspiciousSequence,
                Basis::Static,
            )))
            .unwrap();
        assert_eq!(s["finding_info"]["analytic"]["type_id"], 2);
        let k = f
            .value(&Record::Incident(&incident(
                IncidentType::AutoKill,
                Basis::Static,
            )))
            .unwrap();
        assert_eq!(k["finding_info"]["analytic"]["type"], "Rule");
        assert!(k.get("anomaly_analyses").is_none());
    }

    #[test]
    fn commands_are_remediation_activities_and_dead_letters_application_errors() {
        let f = OcsfFormatter::new("g-1");
        let kill = Command::manual(Verb::Kill, "a", "stop it", 1_000, "ops");
        let v = f.value(&Record::Command(&kill)).unwrap();
        assert_eq!(
            (v["class_uid"].clone(), v["activity_id"].clone()),
            (json!(7001), json!(1))
        );
        assert_eq!(v["type_uid"], 700101);
        assert_eq!(v["command_uid"], kill.command_id.as_str());
        let revive = Command::manual(Verb::Revive, "a", "ok", 2_000, "ops");
        assert_eq!(
            f.value(&Record::Command(&revive)).unwrap()["type_uid"],
            700103
        );
        let d = DeadLetter {
            source: "audit/0@7".into(),
            at: 5,
            kind: "not_json".into(),
            error: "not JSON".into(),
            key: None,
            bytes: 3,
        };
        let v = f.value(&Record::DeadLetter(&d)).unwrap();
        assert_eq!(
            (v["class_uid"].clone(), v["type_uid"].clone()),
            (json!(6008), json!(600802))
        );
        assert_eq!(v["status_code"], "not_json");
    }
}
