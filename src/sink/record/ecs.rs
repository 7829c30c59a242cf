//! JSON records with Elastic Common Schema (ECS 8.11) field names, for SIEMs that prefer JSON.
//!
//! The ECS fields every SIEM maps (`@timestamp`, `event.*`, `rule.*`, `user.*`, `observer.*`,
//! `message`) are filled from the record; the record itself is kept whole under
//! `agent_guardian.incident`, `agent_guardian.command` or `agent_guardian.dead_letter`.

use serde_json::{json, Map, Value};

use super::cef::{VENDOR, VERSION};
use super::Record;
use crate::event::format_rfc3339_ms;

/// ECS version the field names follow.
pub const ECS_VERSION: &str = "8.11.0";

/// Formats records as one-line ECS JSON objects.
#[derive(Debug, Clone)]
pub struct EcsFormatter {
    host: String,
}

impl EcsFormatter {
    /// A formatter that reports `host` as `observer.hostname`.
    pub fn new(host: &str) -> EcsFormatter {
        EcsFormatter { host: host.into() }
    }

    /// The ECS document of `r`; an error only if the record cannot be encoded.
    pub fn value(&self, r: &Record<'_>) -> Result<Value, serde_json::Error> {
        let class = r.class();
        let detail = r.detail()?;
        let (kind, category, typ, id, message) = match r {
            Record::Incident(i) => (
                "alert",
                "intrusion_detection",
                "info",
                i.incident_id.as_str(),
                i.description.as_str(),
            ),
            Record::Command(c) => (
                "event",
                "process",
                match c.command {
                    crate::control::Verb::Kill => "end",
                    crate::control::Verb::Revive => "start",
                },
                c.command_id.as_str(),
                c.reason.as_str(),
            ),
            Record::DeadLetter(d) => ("pipeline_error", "process", "info", "", d.error.as_str()),
            Record::Posture(p) => (
                "metric",
                "configuration",
                "info",
                p.summary_id.as_str(),
                "Fleet posture summary",
            ),
        };
        let mut event = Map::new();
        event.insert("kind".into(), kind.into());
        event.insert("category".into(), json!([category]));
        event.insert("type".into(), json!([typ]));
        event.insert("action".into(), class.key.into());
        event.insert("code".into(), class.id.to_string().into());
        event.insert("severity".into(), r.severity().into());
        event.insert("module".into(), "agent_guardian".into());
        event.insert("dataset".into(), "agent_guardian.alerts".into());
        if !id.is_empty() {
            event.insert("id".into(), id.into());
        }
        if let Record::Incident(i) = r {
            event.insert("start".into(), format_rfc3339_ms(i.window_start).into());
            event.insert("end".into(), format_rfc3339_ms(i.window_end).into());
        }
        event.insert("reason".into(), message.into());
        let mut doc = Map::new();
        doc.insert("@timestamp".into(), format_rfc3339_ms(r.at()).into());
        doc.insert("ecs".into(), json!({ "version": ECS_VERSION }));
        doc.insert("message".into(), message.into());
        doc.insert("event".into(), Value::Object(event));
        let mut rule = Map::new();
        rule.insert("name".into(), class.name.into());
        if let Some(b) = r.blueprint() {
            rule.insert("ruleset".into(), b.into());
        }
        doc.insert("rule".into(), Value::Object(rule));
        if let Some(a) = r.agent() {
            doc.insert("user".into(), json!({ "id": a, "name": a }));
        }
        doc.insert(
            "observer".into(),
            json!({ "vendor": VENDOR, "product": VENDOR, "version": VERSION, "hostname": self.host, "type": "guardian" }),
        );
        doc.insert("agent_guardian".into(), json!({ detail.0: detail.1 }));
        Ok(Value::Object(doc))
    }

    /// The one-line JSON text of `r`.
    pub fn line(&self, r: &Record<'_>) -> Result<String, serde_json::Error> {
        crate::text::json_line(&self.value(r)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::Command;
    use crate::response::{Action, IncidentType};
    use crate::sink::record::cef::tests::incident;

    #[test]
    fn incident_maps_to_ecs_alert_and_keeps_the_record() {
        let i = incident(IncidentType::VolumeSpike, "fin\"7\n", "db|query");
        let v: Value =
            serde_json::from_str(&EcsFormatter::new("h").line(&Record::Incident(&i)).unwrap())
                .unwrap();
        assert_eq!(v["@timestamp"], "2026-03-02T14:00:00.250Z");
        assert_eq!(v["event"]["kind"], "alert");
        assert_eq!(v["event"]["action"], "volume_spike");
        assert_eq!(v["event"]["code"], "101");
        assert_eq!(v["event"]["severity"], 8);
        assert_eq!(v["user"]["id"], "fin\"7\n");
        assert_eq!(v["rule"]["ruleset"], "finance");
        assert_eq!(v["observer"]["hostname"], "h");
        let back: crate::response::Incident =
            serde_json::from_value(v["agent_guardian"]["incident"].clone()).unwrap();
        assert_eq!(back, i);
    }

    #[test]
    fn kill_command_is_a_process_end_event() {
        let mut i = incident(IncidentType::AutoKill, "a", "t");
        i.action_taken = Action::Killed;
        let c = Command::for_kill(&i, "g");
        let v = EcsFormatter::new("h").value(&Record::Command(&c)).unwrap();
        assert_eq!(v["event"]["category"][0], "process");
        assert_eq!(v["event"]["type"][0], "end");
        assert_eq!(v["event"]["id"], c.command_id.as_str());
        assert_eq!(v["event"]["severity"], 9);
    }
}
