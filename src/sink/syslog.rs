//! Syslog headers (RFC 5424, RFC 3164) and stream framing (RFC 6587) around CEF or JSON lines.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::record::Record;

/// Syslog header format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SyslogFormat {
    /// `<PRI>1 TIMESTAMP HOST APP - MSGID - MSG` (RFC 5424), the default.
    #[default]
    Rfc5424,
    /// `<PRI>Mmm dd hh:mm:ss HOST APP: MSG` (RFC 3164, BSD syslog), time in UTC.
    Rfc3164,
}

/// How messages are delimited on a stream (TCP, TLS). UDP sends one message per datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Framing {
    /// `LEN SP MSG` (RFC 6587 §3.4.1), the default: safe for any content.
    #[default]
    OctetCounting,
    /// `MSG LF` (RFC 6587 §3.4.2): CEF and JSON never contain a raw line feed.
    Newline,
}

/// Builds syslog messages.
#[derive(Debug, Clone)]
pub struct SyslogHeader {
    format: SyslogFormat,
    facility: u8,
    hostname: String,
    app_name: String,
}

/// Syslog facility numbers by name (RFC 5424 §6.2.1).
pub const FACILITIES: [(&str, u8); 14] = [
    ("user", 1),
    ("daemon", 3),
    ("auth", 4),
    ("syslog", 5),
    ("authpriv", 10),
    ("security", 13),
    ("local0", 16),
    ("local1", 17),
    ("local2", 18),
    ("local3", 19),
    ("local4", 20),
    ("local5", 21),
    ("local6", 22),
    ("local7", 23),
];

/// The facility number of a name, if known.
pub fn facility(name: &str) -> Option<u8> {
    FACILITIES.iter().find(|f| f.0 == name).map(|f| f.1)
}

/// Syslog severity of a CEF severity: 9–10 critical (2), 7–8 error (3), 5–6 warning (4),
/// 3–4 notice (5), 0–2 informational (6).
pub fn syslog_severity(cef: u8) -> u8 {
    match cef {
        9.. => 2,
        7..=8 => 3,
        5..=6 => 4,
        3..=4 => 5,
        _ => 6,
    }
}

/// Keeps ASCII letters, digits, `.`, `-` and `_` (what every receiver reads as a host name or
/// tag in both formats), `-` when empty, cut to `max`.
fn header_token(s: &str, max: usize) -> String {
    let t: String = s
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .take(max)
        .collect();
    if t.is_empty() {
        "-".into()
    } else {
        t
    }
}

impl SyslogHeader {
    /// A header builder; `facility` is a number 0–23, `hostname` and `app_name` are sanitised.
    pub fn new(format: SyslogFormat, facility: u8, hostname: &str, app_name: &str) -> SyslogHeader {
        SyslogHeader {
            format,
            facility: facility.min(23),
            hostname: header_token(hostname, 255),
            app_name: header_token(
                app_name,
                if format == SyslogFormat::Rfc3164 {
                    32
                } else {
                    48
                },
            ),
        }
    }

    /// Appends the syslog message (header and `msg`) for record `r` to `out`.
    pub fn message(&self, r: &Record<'_>, msg: &str, out: &mut Vec<u8>) {
        use std::io::Write as _;
        let pri = self.facility as u32 * 8 + syslog_severity(r.severity()) as u32;
        let t = DateTime::<Utc>::from_timestamp_millis(r.at()).unwrap_or_default();
        let _ = match self.format {
            SyslogFormat::Rfc5424 => write!(
                out,
                "<{pri}>1 {} {} {} - {} - ",
                t.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                self.hostname,
                self.app_name,
                r.class().key
            ),
            SyslogFormat::Rfc3164 => write!(
                out,
                "<{pri}>{} {} {}: ",
                t.format("%b %e %H:%M:%S"),
                self.hostname,
                self.app_name
            ),
        };
        out.extend_from_slice(msg.as_bytes());
    }
}

/// Appends `msg` to `out` with the stream framing.
pub fn frame(framing: Framing, msg: &[u8], out: &mut Vec<u8>) {
    match framing {
        Framing::OctetCounting => {
            out.extend_from_slice(msg.len().to_string().as_bytes());
            out.push(b' ');
            out.extend_from_slice(msg);
        }
        Framing::Newline => {
            out.extend_from_slice(msg);
            out.push(b'\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::response::IncidentType;
    use crate::sink::record::cef::tests::incident;

    #[test]
    fn rfc5424_header_has_pri_version_time_host_app_and_msgid() {
        let i = incident(IncidentType::OffHours, "a", "t");
        let h = SyslogHeader::new(SyslogFormat::Rfc5424, 20, "guard 1", "agent-guardian");
        let mut out = Vec::new();
        h.message(&Record::Incident(&i), "CEF:0|x", &mut out);
        // local4 (20) * 8 + error (3) = 163
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "<163>1 2026-03-02T14:00:00.250Z guard1 agent-guardian - off_hours - CEF:0|x"
        );
    }

    #[test]
    fn rfc3164_header_pads_the_day() {
        let i = incident(IncidentType::OffHours, "a", "t");
        let h = SyslogHeader::new(SyslogFormat::Rfc3164, 16, "g", "agent-guardian");
        let mut out = Vec::new();
        h.message(&Record::Incident(&i), "m", &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "<131>Mar  2 14:00:00 g agent-guardian: m"
        );
    }

    #[test]
    fn framing_counts_octets_not_characters() {
        let mut out = Vec::new();
        frame(Framing::OctetCounting, "é|".as_bytes(), &mut out);
        assert_eq!(out, b"3 \xc3\xa9|");
        out.clear();
        frame(Framing::Newline, b"m", &mut out);
        assert_eq!(out, b"m\n");
    }

    #[test]
    fn severity_mapping_covers_the_cef_range() {
        let s: Vec<u8> = (0..=10).map(syslog_severity).collect();
        assert_eq!(s, vec![6, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2]);
        assert_eq!(facility("local4"), Some(20));
        assert_eq!(facility("nope"), None);
    }
}
