//! Posture settings (`[posture]` in the daemon's configuration file).

use std::time::Duration;

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

/// `[posture]` as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostureConfig {
    /// Time between posture snapshots onto `topic` and as a CEF summary to the sinks; default "5m".
    pub interval: String,
    /// Topic of posture snapshots (JSON, keyed by guardian id); default "guardian-posture".
    pub topic: String,
    /// Event time incidents are kept in the state for the API and `guardian posture`; default "90d".
    pub incident_retention: String,
    /// Half-life of an incident's weight in the risk score, in event time; default "30d" (a
    /// month of memory, as entity risk scores of SIEMs keep: an agent attacked three weeks ago
    /// still ranks above one that never was).
    pub incident_half_life: String,
    /// Tool-name globs that count as sensitive (payments, shell, deletion, mail…).
    pub sensitive_tools: Vec<String>,
    /// Days of gap-free audit coverage a record-keeping control asks for; default 30.
    pub coverage_days: u32,
    /// Days logs must be kept (EU AI Act Art. 19: at least six months); default 183.
    pub log_retention_days: u32,
}

/// The sensitive tools assumed when none are configured.
pub const DEFAULT_SENSITIVE_TOOLS: &[&str] = &[
    "*payment*",
    "*transfer*",
    "*wire*",
    "*refund*",
    "shell*",
    "*exec*",
    "*delete*",
    "*drop*",
    "*secret*",
    "*credential*",
    "send_email*",
    "*export*",
];

impl Default for PostureConfig {
    fn default() -> Self {
        PostureConfig {
            interval: "5m".into(),
            topic: "guardian-posture".into(),
            incident_retention: "90d".into(),
            incident_half_life: "30d".into(),
            sensitive_tools: DEFAULT_SENSITIVE_TOOLS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            coverage_days: 30,
            log_retention_days: 183,
        }
    }
}

/// `[posture]` validated.
#[derive(Debug, Clone)]
pub struct PostureSettings {
    /// Snapshot interval.
    pub interval: Duration,
    /// Snapshot topic.
    pub topic: String,
    /// Incident retention, ms of event time.
    pub incident_retention_ms: i64,
    /// Incident half-life, ms of event time.
    pub incident_half_life_ms: i64,
    /// Sensitive tool globs, as written.
    pub sensitive_tools: Vec<String>,
    /// Sensitive tool matcher.
    pub sensitive: GlobSet,
    /// Required coverage, days.
    pub coverage_days: u32,
    /// Required log retention, days.
    pub log_retention_days: u32,
}

impl Default for PostureSettings {
    fn default() -> Self {
        PostureConfig::default()
            .validate()
            .expect("the default posture settings are valid")
    }
}

fn duration(field: &str, v: &str, errors: &mut Vec<String>) -> Duration {
    match humantime::parse_duration(v) {
        Ok(d) if !d.is_zero() => d,
        Ok(_) => {
            errors.push(format!("posture.{field}: must be more than zero"));
            Duration::from_secs(1)
        }
        Err(e) => {
            errors.push(format!("posture.{field}: {v:?} is not a duration ({e})"));
            Duration::from_secs(1)
        }
    }
}

impl PostureConfig {
    /// Checks every field, reporting each problem with its path.
    pub fn validate(&self) -> Result<PostureSettings, Vec<String>> {
        let mut errors = Vec::new();
        let interval = duration("interval", &self.interval, &mut errors);
        let retention = duration("incident_retention", &self.incident_retention, &mut errors);
        let half_life = duration("incident_half_life", &self.incident_half_life, &mut errors);
        if self.topic.trim().is_empty() {
            errors.push("posture.topic: must not be empty".into());
        }
        let mut b = GlobSetBuilder::new();
        for (i, g) in self.sensitive_tools.iter().enumerate() {
            match Glob::new(g) {
                Ok(g) => {
                    b.add(g);
                }
                Err(e) => errors.push(format!("posture.sensitive_tools[{i}]: {e}")),
            }
        }
        let sensitive = b.build().unwrap_or_else(|_| GlobSet::empty());
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(PostureSettings {
            interval,
            topic: self.topic.clone(),
            incident_retention_ms: retention.as_millis() as i64,
            incident_half_life_ms: half_life.as_millis() as i64,
            sensitive_tools: self.sensitive_tools.clone(),
            sensitive,
            coverage_days: self.coverage_days,
            log_retention_days: self.log_retention_days,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bad_field_is_reported_with_its_path() {
        let c = PostureConfig {
            interval: "soon".into(),
            incident_retention: "0s".into(),
            topic: " ".into(),
            sensitive_tools: vec!["[".into()],
            ..PostureConfig::default()
        };
        let e = c.validate().unwrap_err();
        assert_eq!(e.len(), 4, "{e:?}");
        assert!(e[0].starts_with("posture.interval"));
        assert!(e
            .iter()
            .any(|x| x.starts_with("posture.sensitive_tools[0]")));
    }

    #[test]
    fn defaults_match_payment_tools() {
        let s = PostureSettings::default();
        assert!(s.sensitive.is_match("stripe_payment_create"));
        assert!(!s.sensitive.is_match("search_docs"));
        assert_eq!(s.interval, Duration::from_secs(300));
    }
}
