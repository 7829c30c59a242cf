//! ArcSight Common Event Format (CEF:0) lines, following "Implementing ArcSight CEF" rev. 25.
//!
//! `CEF:0|agent-guardian|agent-guardian|VERSION|CLASS|NAME|SEVERITY|EXTENSION`
//!
//! - The header holds only fixed strings: the Device Event Class ID and Name come from the
//!   record's [`Class`](super::Class); agent ids and tool names go in the extension, because some
//!   consumers split the header on every pipe.
//! - Header fields escape `\` and `|`; extension values escape `\`, `=`, and line breaks as `\n`
//!   and `\r`. Other control characters (C0, DEL, C1) and the invisible characters that reorder
//!   or disguise text (bidirectional controls, zero-width characters; [`crate::text::hidden`])
//!   are replaced with U+FFFD.
//! - Values are truncated (by characters, before escaping) to the spec's lengths.
//! - Times (`rt`, `start`, `end`) are milliseconds since the epoch: the one CEF time format that
//!   ArcSight, Splunk, QRadar, Sentinel and Elastic all read without a time-zone guess.

use std::fmt::Write as _;

use super::{DeadLetter, PostureSummary, Record};
use crate::control::{Command, Origin};
use crate::response::{Basis, Incident};

/// Device Vendor and Device Product.
pub const VENDOR: &str = "agent-guardian";
/// Device Version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Spec lengths (characters) of the fields we use.
mod max {
    pub const VENDOR: usize = 63;
    pub const VERSION: usize = 31;
    pub const CLASS_ID: usize = 1023;
    pub const NAME: usize = 512;
    pub const ACT: usize = 63;
    pub const CAT: usize = 1023;
    pub const MSG: usize = 1023;
    pub const SUSER: usize = 1023;
    pub const EXTERNAL_ID: usize = 40;
    pub const DEVICE_EXTERNAL_ID: usize = 255;
    pub const DVCHOST: usize = 100;
    pub const OUTCOME: usize = 63;
    pub const REASON: usize = 1023;
    pub const CS: usize = 4000;
    pub const LABEL: usize = 1023;
}

/// Formats records as CEF lines (without syslog header or line terminator).
#[derive(Debug, Clone)]
pub struct CefFormatter {
    host: String,
}

impl CefFormatter {
    /// A formatter that reports `host` as `dvchost`.
    pub fn new(host: &str) -> CefFormatter {
        CefFormatter { host: host.into() }
    }

    /// Appends the CEF line of `r` to `out`.
    pub fn format(&self, r: &Record<'_>, out: &mut String) {
        let class = r.class();
        out.push_str("CEF:0|");
        header(VENDOR, max::VENDOR, out);
        out.push('|');
        header(VENDOR, max::VENDOR, out);
        out.push('|');
        header(VERSION, max::VERSION, out);
        out.push('|');
        header(&class.id.to_string(), max::CLASS_ID, out);
        out.push('|');
        header(class.name, max::NAME, out);
        let _ = write!(out, "|{}|", r.severity());
        let mut e = Ext { out, first: true };
        e.num("rt", r.at());
        match r {
            Record::Incident(i) => incident(&mut e, i),
            Record::Command(c) => command(&mut e, c),
            Record::DeadLetter(d) => dead_letter(&mut e, d),
            Record::Posture(p) => posture(&mut e, p),
        }
        e.str("cat", class.key, max::CAT);
        e.str("dvchost", &self.host, max::DVCHOST);
    }

    /// The CEF line of `r` as a new string.
    pub fn line(&self, r: &Record<'_>) -> String {
        let mut s = String::with_capacity(512);
        self.format(r, &mut s);
        s
    }
}

fn incident(e: &mut Ext<'_>, i: &Incident) {
    e.num("start", i.window_start);
    e.num("end", i.window_end);
    e.str("externalId", &i.incident_id, max::EXTERNAL_ID);
    e.str("act", action(i), max::ACT);
    e.str("suser", &i.agent_id, max::SUSER);
    e.str("msg", &i.description, max::MSG);
    e.custom("cs", 1, "blueprint", &i.blueprint);
    e.custom("cs", 2, "tool", &i.tool_name);
    e.custom(
        "cs",
        3,
        "basis",
        match i.basis {
            Basis::Static => "static",
            Basis::Learned => "learned",
        },
    );
    if let Some(p) = &i.pattern {
        e.custom("cs", 4, "pattern", &p.join(" > "));
    }
    e.custom("cs", 5, "eventId", &i.event_id);
    e.custom("cs", 6, "unit", &i.unit);
    e.float(1, "observed", i.observed);
    e.float(2, "expected", i.expected);
}

fn action(i: &Incident) -> &'static str {
    match i.action_taken {
        crate::response::Action::Logged => "logged",
        crate::response::Action::Killed => "killed",
        crate::response::Action::WouldKill => "would_kill",
        crate::response::Action::KillSuppressedAllowlist => "kill_suppressed_allowlist",
    }
}

fn command(e: &mut Ext<'_>, c: &Command) {
    let verb = match c.command {
        crate::control::Verb::Kill => "kill",
        crate::control::Verb::Revive => "revive",
    };
    e.str("externalId", &c.command_id, max::EXTERNAL_ID);
    e.str("act", verb, max::ACT);
    e.str("outcome", "issued", max::OUTCOME);
    e.str("suser", &c.agent_id, max::SUSER);
    e.str("msg", &c.reason, max::MSG);
    e.str("deviceExternalId", &c.guardian_id, max::DEVICE_EXTERNAL_ID);
    if let Some(b) = &c.blueprint {
        e.custom("cs", 1, "blueprint", b);
    }
    e.custom(
        "cs",
        3,
        "origin",
        match c.origin {
            Origin::Auto => "auto",
            Origin::Manual => "manual",
        },
    );
    if !c.incident_ids.is_empty() {
        e.custom("cs", 4, "incidentIds", &c.incident_ids.join(","));
    }
}

fn dead_letter(e: &mut Ext<'_>, d: &DeadLetter) {
    e.str("act", "dead_lettered", max::ACT);
    if let Some(k) = &d.key {
        e.str("suser", k, max::SUSER);
    }
    e.str("msg", &d.error, max::MSG);
    e.str("reason", &d.kind, max::REASON);
    e.custom("cs", 2, "source", &d.source);
    e.num("cn1", d.bytes as i64);
    e.str("cn1Label", "bytes", max::LABEL);
}

fn posture(e: &mut Ext<'_>, p: &PostureSummary) {
    e.str("externalId", &p.summary_id, max::EXTERNAL_ID);
    e.str("act", "posture", max::ACT);
    e.str("deviceExternalId", &p.guardian_id, max::DEVICE_EXTERNAL_ID);
    let top = p.top_agent.as_ref().map_or(String::new(), |(a, s)| {
        format!("; riskiest agent {a:?} at {s}")
    });
    let msg = format!(
        "Fleet risk {}/100 ({}), {:+} in a day; {} agents, {} killed, {} at high or critical risk{top}",
        p.score, p.level, p.trend_delta, p.agents, p.killed, p.high_risk
    );
    e.str("msg", &msg, max::MSG);
    if let Some((a, _)) = &p.top_agent {
        e.str("suser", a, max::SUSER);
    }
    e.num("cnt", p.agents as i64);
    e.num("cn1", i64::from(p.score));
    e.str("cn1Label", "fleetRisk", max::LABEL);
    e.num("cn2", p.killed as i64);
    e.str("cn2Label", "killedAgents", max::LABEL);
    e.num("cn3", p.high_risk as i64);
    e.str("cn3Label", "highRiskAgents", max::LABEL);
}

/// The extension writer: `key=value` pairs separated by single spaces.
struct Ext<'a> {
    out: &'a mut String,
    first: bool,
}

impl Ext<'_> {
    fn key(&mut self, k: &str) {
        self.key_n(k, "", "");
    }

    /// Writes the separator and `{k}{n}{suffix}=`.
    fn key_n(&mut self, k: &str, n: impl std::fmt::Display, suffix: &str) {
        if !self.first {
            self.out.push(' ');
        }
        self.first = false;
        let _ = write!(self.out, "{k}{n}{suffix}=");
    }

    fn str(&mut self, k: &str, v: &str, max: usize) {
        self.key(k);
        extension_value(v, max, self.out);
    }

    fn num(&mut self, k: &str, v: i64) {
        self.key(k);
        let _ = write!(self.out, "{v}");
    }

    /// `csN=value csNLabel=label` (the label follows its field, as in the spec's examples).
    fn custom(&mut self, prefix: &str, n: u8, label: &str, v: &str) {
        self.key_n(prefix, n, "");
        extension_value(v, max::CS, self.out);
        self.key_n(prefix, n, "Label");
        extension_value(label, max::LABEL, self.out);
    }

    /// `cfpN=value cfpNLabel=label`, omitted when not finite.
    fn float(&mut self, n: u8, label: &str, v: f64) {
        if v.is_finite() {
            self.key_n("cfp", n, "");
            let _ = write!(self.out, "{v}");
            self.key_n("cfp", n, "Label");
            extension_value(label, max::LABEL, self.out);
        }
    }
}

/// Appends a header field: `\` → `\\`, `|` → `\|`, control and invisible characters
/// ([`crate::text::hidden`]) → U+FFFD.
pub fn header(v: &str, max: usize, out: &mut String) {
    for c in v.chars().take(max) {
        match c {
            '\\' => out.push_str("\\\\"),
            '|' => out.push_str("\\|"),
            c if crate::text::hidden(c) => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
}

/// Appends an extension value: `\` → `\\`, `=` → `\=`, LF → `\n`, CR → `\r`, other control
/// and invisible characters ([`crate::text::hidden`]) → U+FFFD. Pipes need no escape in the
/// extension.
pub fn extension_value(v: &str, max: usize, out: &mut String) {
    for c in v.chars().take(max) {
        match c {
            '\\' => out.push_str("\\\\"),
            '=' => out.push_str("\\="),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if crate::text::hidden(c) => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::blueprint::Severity;
    use crate::control::Verb;
    use crate::response::{Action, IncidentType};
    use crate::sink::record::CLASSES;

    fn ext(v: &str) -> String {
        let mut s = String::new();
        extension_value(v, 10_000, &mut s);
        s
    }

    fn hdr(v: &str) -> String {
        let mut s = String::new();
        header(v, 10_000, &mut s);
        s
    }

    #[test]
    fn header_escapes_pipe_and_backslash_only() {
        assert_eq!(hdr(r"a|b\c=d"), r"a\|b\\c=d");
        assert_eq!(hdr("x\ny\u{7}"), "x\u{FFFD}y\u{FFFD}");
        assert_eq!(hdr("日本|"), "日本\\|");
    }

    #[test]
    fn extension_escapes_equals_backslash_and_line_breaks() {
        assert_eq!(ext(r"a=b\c|d"), r"a\=b\\c|d");
        assert_eq!(ext("l1\nl2\r\n"), r"l1\nl2\r\n");
        assert_eq!(
            ext("tab\there\u{0}\u{7f}"),
            "tab\u{FFFD}here\u{FFFD}\u{FFFD}"
        );
        assert_eq!(ext("Ünïcødé 代理"), "Ünïcødé 代理");
        // What reorders or disguises the text a SIEM shows: C1 controls, bidi overrides,
        // zero-width characters.
        assert_eq!(
            ext("a\u{85}b\u{202E}c\u{200B}d\u{2066}e\u{FEFF}"),
            "a\u{FFFD}b\u{FFFD}c\u{FFFD}d\u{FFFD}e\u{FFFD}"
        );
        assert_eq!(hdr("x\u{202E}y"), "x\u{FFFD}y");
        assert_eq!(ext(r"\="), r"\\\=");
    }

    #[test]
    fn values_are_truncated_by_characters_before_escaping() {
        let mut s = String::new();
        extension_value(&"é=".repeat(50), 5, &mut s);
        assert_eq!(s, r"é\=é\=é");
        let mut h = String::new();
        header(&"|".repeat(600), max::NAME, &mut h);
        assert_eq!(h.len(), 2 * max::NAME);
    }

    pub(crate) fn incident(kind: IncidentType, agent: &str, tool: &str) -> Incident {
        Incident {
            incident_id: "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0".into(),
            agent_id: agent.into(),
            kind,
            severity: Severity::High,
            at: 1_772_460_000_250,
            window_start: 1_772_460_000_000 - 60_000,
            window_end: 1_772_460_000_250,
            blueprint: "finance".into(),
            basis: Basis::Static,
            observed: 42.0,
            expected: 30.5,
            unit: "calls".into(),
            description: format!("{agent} made 42 calls"),
            action_taken: Action::Logged,
            event_id: "ev-1".into(),
            tool_name: tool.into(),
            pattern: (kind == IncidentType::SuspiciousSequence)
                .then(|| vec!["db.query".into(), "email.send".into()]),
            status: Default::default(),
            count: 1,
            about: None,
            verdict: None,
            baseline: None,
            suppressed_by: None,
            agents: Vec::new(),
        }
    }

    /// Golden lines: one per incident type, plus commands and a dead letter.
    #[test]
    fn golden_lines_for_every_class() {
        let f = CefFormatter::new("guard-1");
        let v = VERSION;
        let common = "suser=fin-7 msg=fin-7 made 42 calls cs1=finance cs1Label=blueprint cs2=db.query cs2Label=tool cs3=static cs3Label=basis";
        let tail = "cs5=ev-1 cs5Label=eventId cs6=calls cs6Label=unit cfp1=42 cfp1Label=observed cfp2=30.5 cfp2Label=expected";
        for (t, c) in IncidentType::ALL.iter().zip(CLASSES) {
            let i = incident(*t, "fin-7", "db.query");
            let pattern = if *t == IncidentType::SuspiciousSequence {
                " cs4=db.query > email.send cs4Label=pattern"
            } else {
                ""
            };
            let want = format!(
                "CEF:0|agent-guardian|agent-guardian|{v}|{}|{}|8|rt=1772460000250 start=1772459940000 end=1772460000250 externalId=0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0 act=logged {common}{pattern} {tail} cat={} dvchost=guard-1",
                c.id, c.name, c.key
            );
            assert_eq!(f.line(&Record::Incident(&i)), want);
        }
        let mut k = incident(IncidentType::AutoKill, "fin-7", "db.query");
        k.action_taken = Action::Killed;
        let cmd = Command::for_kill(&k, "guard-1");
        assert_eq!(
            f.line(&Record::Command(&cmd)),
            format!("CEF:0|agent-guardian|agent-guardian|{v}|200|Kill command|9|rt=1772460000250 externalId={} act=kill outcome=issued suser=fin-7 msg=fin-7 made 42 calls deviceExternalId=guard-1 cs1=finance cs1Label=blueprint cs3=auto cs3Label=origin cs4=0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0 cs4Label=incidentIds cat=kill dvchost=guard-1", cmd.command_id)
        );
        let rev = Command::manual(
            Verb::Revive,
            "fin-7",
            "false positive",
            1_772_460_000_000,
            "ops",
        );
        assert_eq!(
            f.line(&Record::Command(&rev)),
            format!("CEF:0|agent-guardian|agent-guardian|{v}|201|Revive command|3|rt=1772460000000 externalId={} act=revive outcome=issued suser=fin-7 msg=false positive deviceExternalId=ops cs3=manual cs3Label=origin cat=revive dvchost=guard-1", rev.command_id)
        );
        let d = DeadLetter {
            source: "audit/3@17".into(),
            at: 1_772_460_000_000,
            kind: "missing_field".into(),
            error: "missing field `agent_id`".into(),
            key: None,
            bytes: 12,
        };
        assert_eq!(
            f.line(&Record::DeadLetter(&d)),
            format!("CEF:0|agent-guardian|agent-guardian|{v}|300|Malformed audit event|2|rt=1772460000000 act=dead_lettered msg=missing field `agent_id` reason=missing_field cs2=audit/3@17 cs2Label=source cn1=12 cn1Label=bytes cat=dead_letter dvchost=guard-1")
        );
    }

    #[test]
    fn hostile_agent_and_tool_stay_out_of_the_header() {
        let i = incident(IncidentType::FrequencySpike, "a|b=c\\d\ne", "t|=\r");
        let line = CefFormatter::new("h").line(&Record::Incident(&i));
        let head: Vec<&str> = line.splitn(8, '|').collect();
        assert_eq!(head.len(), 8);
        assert_eq!(head[4], "100");
        assert_eq!(head[6], "8");
        assert!(!line.contains('\n') && !line.contains('\r'));
        assert!(line.contains(r"suser=a|b\=c\\d\ne "), "{line}");
        assert!(line.contains(r"cs2=t|\=\r "), "{line}");
    }
}
