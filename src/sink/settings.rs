//! Configuration of the SIEM sinks (`[[sinks]]` in the daemon's configuration file).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::record::lines::RecordFormat;
use super::spool::WhenFull;
use super::syslog::{Framing, SyslogFormat};
use super::transport::{Protocol, TlsSettings};

/// Kind of sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkType {
    /// Syslog over TCP, UDP or TLS (`address`, `protocol`, `framing`, `syslog_format`,
    /// `facility`, `app_name`, `hostname`, `tls`).
    Syslog,
    /// A file rotated by size (`path`, `max_bytes`, `keep`).
    File,
    /// Standard output.
    Stdout,
    /// A topic on the daemon's Kafka brokers (`topic`).
    Kafka,
}

/// One sink: where records go, in which format, through a spool of what size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Unique name (logs, metrics, the spool's tree).
    pub name: String,
    /// `syslog`, `file`, `stdout` or `kafka`.
    #[serde(rename = "type")]
    pub kind: SinkType,
    /// `cef` (default), `json` (ECS) or `ocsf`.
    #[serde(default)]
    pub format: RecordFormat,
    /// Records below this CEF severity (0–10) are not sent; default 0 (everything).
    #[serde(default)]
    pub min_severity: u8,
    /// Most messages held on disk while the receiver is slow or down; default 100000.
    #[serde(default = "default_spool")]
    pub spool_max_records: u64,
    /// `drop_oldest` (default) or `block` when the spool is full.
    #[serde(default)]
    pub when_full: WhenFull,
    /// Syslog: receiver, `host:port`.
    #[serde(default)]
    pub address: Option<String>,
    /// Syslog: `tcp` (default), `udp` or `tls`.
    #[serde(default)]
    pub protocol: Protocol,
    /// Syslog over TCP or TLS: `octet_counting` (default) or `newline`.
    #[serde(default)]
    pub framing: Framing,
    /// Syslog: `rfc5424` (default) or `rfc3164`.
    #[serde(default)]
    pub syslog_format: SyslogFormat,
    /// Syslog: facility name; default `local4`.
    #[serde(default = "default_facility")]
    pub facility: String,
    /// Syslog: APP-NAME; default `agent-guardian`.
    #[serde(default = "default_app")]
    pub app_name: String,
    /// Syslog: HOSTNAME; default the guardian id.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Syslog over TLS: CA, client certificate, server name.
    #[serde(default)]
    pub tls: Option<TlsSettings>,
    /// File: the file to append to.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// File: size at which it is rotated, bytes; default 104857600 (100 MiB).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// File: rotated files kept (`path.1` … `path.N`); default 5.
    #[serde(default = "default_keep")]
    pub keep: u32,
    /// Kafka: the topic.
    #[serde(default)]
    pub topic: Option<String>,
}

fn default_spool() -> u64 {
    100_000
}

fn default_facility() -> String {
    "local4".into()
}

fn default_app() -> String {
    "agent-guardian".into()
}

fn default_max_bytes() -> u64 {
    100 << 20
}

fn default_keep() -> u32 {
    5
}

impl SinkConfig {
    /// Every problem of this sink's settings, as `sinks[i] (name).field: message` lines.
    pub fn validate(&self, i: usize, errors: &mut Vec<String>) {
        let at = format!("sinks[{i}] ({})", self.name);
        if self.name.trim().is_empty() {
            errors.push(format!("sinks[{i}].name: empty"));
        }
        if self.min_severity > 10 {
            errors.push(format!(
                "{at}.min_severity: {} is above 10",
                self.min_severity
            ));
        }
        if self.spool_max_records == 0 {
            errors.push(format!("{at}.spool_max_records: must be at least 1"));
        }
        let syslog = self.kind == SinkType::Syslog;
        let misplaced = [
            ("address", self.address.is_some() && !syslog),
            ("tls", self.tls.is_some() && !syslog),
            ("hostname", self.hostname.is_some() && !syslog),
            ("path", self.path.is_some() && self.kind != SinkType::File),
            (
                "topic",
                self.topic.is_some() && self.kind != SinkType::Kafka,
            ),
        ];
        for (field, wrong) in misplaced {
            if wrong {
                errors.push(format!(
                    "{at}.{field}: not a setting of a {:?} sink",
                    self.kind
                ));
            }
        }
        match self.kind {
            SinkType::Syslog => {
                match &self.address {
                    Some(a)
                        if a.rsplit_once(':')
                            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()) => {}
                    Some(a) => errors.push(format!("{at}.address: {a:?} is not host:port")),
                    None => errors.push(format!("{at}.address: missing")),
                }
                if super::syslog::facility(&self.facility).is_none() {
                    let names: Vec<&str> = super::syslog::FACILITIES.iter().map(|f| f.0).collect();
                    errors.push(format!(
                        "{at}.facility: unknown {:?} (one of {})",
                        self.facility,
                        names.join(", ")
                    ));
                }
                if self.protocol == Protocol::Tls {
                    if let Err(e) = self.tls.clone().unwrap_or_default().client_config() {
                        errors.push(format!("{at}.tls: {e}"));
                    }
                } else if self.tls.is_some() {
                    errors.push(format!("{at}.tls: set, but protocol is not tls"));
                }
            }
            SinkType::File => {
                if self.path.as_ref().is_none_or(|p| p.as_os_str().is_empty()) {
                    errors.push(format!("{at}.path: missing"));
                }
            }
            SinkType::Kafka => {
                if self.topic.as_ref().is_none_or(|t| t.trim().is_empty()) {
                    errors.push(format!("{at}.topic: missing"));
                }
            }
            SinkType::Stdout => {}
        }
    }
}
