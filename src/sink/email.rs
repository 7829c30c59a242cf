//! Email alerts through SMTP (lettre): recipients routed by severity and blueprint, a plain-text
//! and HTML body with the essentials and the action taken, a rate limit per recipient list with
//! the excess batched into one digest, retries on transient SMTP errors, and permanent failures
//! counted and logged. Messages wait in an on-disk spool like every other sink.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{Message, SmtpTransport, Transport as _};
use serde::{Deserialize, Serialize};

use super::backoff::Backoff;
use super::record::Record;
use super::spool::{earliest, Spool, SpoolError, WhenFull};
use crate::event::format_rfc3339_ms;
use crate::secret::Secret;

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Security {
    /// STARTTLS, required (default port 587), the default.
    #[default]
    Starttls,
    /// Implicit TLS (default port 465).
    Tls,
    /// No encryption (default port 25): only for a relay on the same host or network.
    None,
}

/// Who gets which records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Recipients (`name <addr>` or `addr`).
    pub to: Vec<String>,
    /// Lowest CEF severity (0–10) routed here; default 8 (high incidents, kill commands).
    #[serde(default = "default_min_severity")]
    pub min_severity: u8,
    /// Blueprints routed here; empty (the default) means all, including records without one.
    #[serde(default)]
    pub blueprints: Vec<String>,
}

fn default_min_severity() -> u8 {
    8
}

/// The `[email]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// SMTP server host name.
    pub server: String,
    /// Port; default 587 (starttls), 465 (tls) or 25 (none).
    #[serde(default)]
    pub port: Option<u16>,
    /// `starttls` (default), `tls` or `none`.
    #[serde(default)]
    pub security: Security,
    /// PEM file of CA certificates for the server (default: the system trust store).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// User name for SMTP authentication (none when absent).
    #[serde(default)]
    pub username: Option<String>,
    /// Password: `{ env = … }` or `{ file = … }`; never logged.
    #[serde(default)]
    pub password: Option<Secret>,
    /// Sender (`agent-guardian <guardian@example.com>`).
    pub from: String,
    /// Routes of records to recipients.
    pub routes: Vec<Route>,
    /// Emails per recipient list per `rate_window`; the excess goes out as one digest. Default 20.
    #[serde(default = "default_rate_limit")]
    pub rate_limit: u32,
    /// Window of the rate limit; default `1h`.
    #[serde(default = "default_rate_window")]
    pub rate_window: String,
    /// SMTP timeout; default `30s`.
    #[serde(default = "default_timeout")]
    pub timeout: String,
    /// Most emails held on disk while the server is unreachable; default 10000.
    #[serde(default = "default_spool")]
    pub spool_max_records: u64,
    /// `drop_oldest` (default) or `block` when the spool is full.
    #[serde(default)]
    pub when_full: WhenFull,
}

fn default_rate_limit() -> u32 {
    20
}
fn default_rate_window() -> String {
    "1h".into()
}
fn default_timeout() -> String {
    "30s".into()
}
fn default_spool() -> u64 {
    10_000
}

impl EmailConfig {
    /// Every problem of the section, as `email.field: message` lines.
    pub fn validate(&self, errors: &mut Vec<String>) {
        if self.server.trim().is_empty() {
            errors.push("email.server: empty".into());
        }
        if let Err(e) = self.from.parse::<Mailbox>() {
            errors.push(format!("email.from: {:?}: {e}", self.from));
        }
        if self.routes.is_empty() {
            errors.push("email.routes: needs at least one route".into());
        }
        for (i, r) in self.routes.iter().enumerate() {
            if r.to.is_empty() {
                errors.push(format!("email.routes[{i}].to: no recipient"));
            }
            for t in &r.to {
                if let Err(e) = t.parse::<Mailbox>() {
                    errors.push(format!("email.routes[{i}].to: {t:?}: {e}"));
                }
            }
            if r.min_severity > 10 {
                errors.push(format!("email.routes[{i}].min_severity: above 10"));
            }
        }
        if self.rate_limit == 0 {
            errors.push("email.rate_limit: must be at least 1".into());
        }
        for (name, v) in [
            ("rate_window", &self.rate_window),
            ("timeout", &self.timeout),
        ] {
            if humantime::parse_duration(v).map_or(true, |d| d.is_zero()) {
                errors.push(format!("email.{name}: {v:?} is not a positive duration"));
            }
        }
        match (&self.username, &self.password) {
            (Some(_), None) => errors.push("email.password: required with username".into()),
            (None, Some(_)) => errors.push("email.username: required with password".into()),
            (_, Some(p)) => {
                if let Err(e) = p.resolve() {
                    errors.push(format!("email.password: {e}"));
                }
            }
            _ => {}
        }
        if let Some(p) = &self.ca_file {
            if let Err(e) = crate::files::read_bounded(p, crate::files::MAX_FILE_BYTES) {
                errors.push(format!("email.ca_file: {}: {e}", p.display()));
            }
        }
        if self.spool_max_records == 0 {
            errors.push("email.spool_max_records: must be at least 1".into());
        }
    }

    fn transport(&self) -> Result<SmtpTransport, EmailError> {
        let tls = || -> Result<TlsParameters, EmailError> {
            let mut b = TlsParameters::builder(self.server.clone());
            if let Some(p) = &self.ca_file {
                let pem = crate::files::read_bounded(p, crate::files::MAX_FILE_BYTES).map_err(
                    |source| EmailError::CaFile {
                        path: p.clone(),
                        source,
                    },
                )?;
                b = b.add_root_certificate(Certificate::from_pem(&pem).map_err(EmailError::Tls)?);
            }
            b.build_rustls().map_err(EmailError::Tls)
        };
        let (tls, port) = match self.security {
            Security::Starttls => (Tls::Required(tls()?), 587),
            Security::Tls => (Tls::Wrapper(tls()?), 465),
            Security::None => (Tls::None, 25),
        };
        let timeout =
            humantime::parse_duration(&self.timeout).map_err(|_| EmailError::Duration {
                name: "timeout",
                value: self.timeout.clone(),
            })?;
        let mut b = SmtpTransport::builder_dangerous(&self.server)
            .port(self.port.unwrap_or(port))
            .tls(tls)
            .timeout(Some(timeout));
        if let (Some(u), Some(p)) = (&self.username, &self.password) {
            b = b.credentials(Credentials::new(u.clone(), p.resolve()?));
        }
        Ok(b.build())
    }
}

/// One email waiting in the spool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// Recipients.
    pub to: Vec<String>,
    /// Subject.
    pub subject: String,
    /// Plain-text body.
    pub text: String,
    /// HTML body.
    pub html: String,
}

/// Counters of the email sink.
#[derive(Debug, Default)]
pub struct EmailStats {
    /// Emails sent (a digest counts once).
    pub sent: AtomicU64,
    /// Records sent inside digests.
    pub digested: AtomicU64,
    /// Transient failures (retried).
    pub transient_failures: AtomicU64,
    /// Emails dropped after a permanent SMTP failure.
    pub permanent_failures: AtomicU64,
}

/// The running email sink.
pub struct EmailSink {
    routes: Vec<Route>,
    spool: Arc<Spool>,
    /// Counters.
    pub stats: Arc<EmailStats>,
}

/// The email delivery loop, to run on a thread of its own (see [`EmailSink::open`]).
pub type EmailDelivery = Box<dyn FnOnce() -> Result<(), SpoolError> + Send>;

/// Replaces control and invisible characters (header injection, reordered text, look-alike ids;
/// see [`crate::text::hidden`]) with spaces and cuts to `max` characters.
fn clean(s: &str, max: usize) -> String {
    s.chars()
        .map(|c| if crate::text::hidden(c) { ' ' } else { c })
        .take(max)
        .collect()
}

fn html_escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

/// The rows of a record's email: (label, value).
fn rows(r: &Record<'_>) -> Vec<(&'static str, String)> {
    let mut v = vec![
        ("What", r.class().name.to_string()),
        ("Severity", format!("{} / 10", r.severity())),
        ("Time", format_rfc3339_ms(r.at())),
    ];
    if let Some(a) = r.agent() {
        v.push(("Agent", a.to_string()));
    }
    if let Some(b) = r.blueprint() {
        v.push(("Blueprint", b.to_string()));
    }
    match r {
        Record::Incident(i) => {
            v.push((
                "Action taken",
                format!("{:?}", i.action_taken).to_lowercase(),
            ));
            v.push(("Details", i.description.clone()));
            v.push(("Tool", i.tool_name.clone()));
            v.push((
                "Observed / expected",
                format!("{} / {} {}", i.observed, i.expected, i.unit),
            ));
            v.push(("Incident id", i.incident_id.clone()));
        }
        Record::Command(c) => {
            v.push((
                "Action taken",
                format!("{:?} command issued", c.command).to_lowercase(),
            ));
            v.push(("Reason", c.reason.clone()));
            v.push(("Issued by", c.guardian_id.clone()));
            v.push(("Command id", c.command_id.clone()));
            if !c.incident_ids.is_empty() {
                v.push(("Incidents", c.incident_ids.join(", ")));
            }
        }
        Record::DeadLetter(d) => {
            v.push(("Action taken", "sent to the dead-letter topic".into()));
            v.push(("Error", d.error.clone()));
            v.push(("Source", d.source.clone()));
        }
        Record::Posture(p) => {
            v.push(("Fleet risk", format!("{}/100 ({})", p.score, p.level)));
            v.push((
                "Agents",
                format!(
                    "{} ({} killed, {} at high risk)",
                    p.agents, p.killed, p.high_risk
                ),
            ));
        }
    }
    v
}

fn text_of(rows: &[(&str, String)], out: &mut String) {
    for (k, v) in rows {
        let _ = writeln!(out, "{k}: {v}");
    }
}

fn html_of(rows: &[(&str, String)], out: &mut String) {
    out.push_str("<table>");
    for (k, v) in rows {
        out.push_str("<tr><th align=\"left\">");
        html_escape(k, out);
        out.push_str("</th><td>");
        html_escape(v, out);
        out.push_str("</td></tr>");
    }
    out.push_str("</table>");
}

/// Renders the email of a record (without recipients).
pub fn render(r: &Record<'_>) -> Item {
    let rows = rows(r);
    let agent = r.agent().unwrap_or("-");
    let subject = clean(
        &format!(
            "[agent-guardian] {} (severity {}): {agent}",
            r.class().name,
            r.severity()
        ),
        200,
    );
    let mut text = String::new();
    text_of(&rows, &mut text);
    let mut html = String::from("<html><body>");
    html_of(&rows, &mut html);
    html.push_str("</body></html>");
    Item {
        to: Vec::new(),
        subject,
        text,
        html,
    }
}

/// One digest email for several waiting items.
pub fn digest(items: &[Item]) -> Item {
    let mut text = format!(
        "{} alerts held back by the email rate limit:\n\n",
        items.len()
    );
    let mut html = format!(
        "<html><body><p>{} alerts held back by the email rate limit:</p>",
        items.len()
    );
    for i in items {
        let _ = writeln!(text, "== {}\n{}", i.subject, i.text);
        html.push_str("<h3>");
        html_escape(&i.subject, &mut html);
        html.push_str("</h3>");
        let body = i
            .html
            .trim_start_matches("<html><body>")
            .trim_end_matches("</body></html>");
        html.push_str(body);
    }
    html.push_str("</body></html>");
    Item {
        to: items.first().map(|i| i.to.clone()).unwrap_or_default(),
        subject: format!("[agent-guardian] digest: {} alerts", items.len()),
        text,
        html,
    }
}

/// Why the email sink could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmailError {
    /// The spool could not be opened.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// The CA file could not be read.
    #[error("email: ca_file {}: {source}", path.display())]
    CaFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: crate::files::FileError,
    },
    /// The TLS settings could not be built (the CA certificate, the server name).
    #[error("email: cannot build the SMTP transport's TLS: {0}")]
    Tls(#[source] lettre::transport::smtp::Error),
    /// The SMTP password could not be read.
    #[error("email: password: {0}")]
    Password(#[from] crate::secret::SecretError),
    /// `from` is not a mailbox.
    #[error("email: from {0:?} is not a mailbox")]
    From(String),
    /// A duration setting is not one (the configuration check refuses it first).
    #[error("email: {name} {value:?} is not a duration")]
    Duration {
        /// The setting.
        name: &'static str,
        /// Its value.
        value: String,
    },
}

impl EmailSink {
    /// Opens the email spool in `db` and builds the transport; returns the sink the engine writes
    /// to and its delivery loop. A transport that cannot be built fails here: it does not leave
    /// mail spooled for ever.
    pub fn open(
        cfg: &EmailConfig,
        db: &sled::Db,
    ) -> Result<(EmailSink, EmailDelivery), EmailError> {
        let transport = cfg.transport()?;
        let from = cfg
            .from
            .parse::<Mailbox>()
            .map_err(|_| EmailError::From(cfg.from.clone()))?;
        let window =
            humantime::parse_duration(&cfg.rate_window).map_err(|_| EmailError::Duration {
                name: "rate_window",
                value: cfg.rate_window.clone(),
            })?;
        let spool = Arc::new(Spool::open(
            db,
            "email",
            cfg.spool_max_records,
            cfg.when_full,
        )?);
        let stats = Arc::new(EmailStats::default());
        let delivery: EmailDelivery = {
            let (spool, stats) = (spool.clone(), stats.clone());
            let limits = Limits {
                window,
                per_window: cfg.rate_limit.max(1) as usize,
            };
            Box::new(move || deliver(limits, transport, from, &spool, &stats))
        };
        let sink = EmailSink {
            routes: cfg.routes.clone(),
            spool,
            stats,
        };
        Ok((sink, delivery))
    }

    /// Spools one email per distinct recipient list whose routes take `r`.
    pub fn emit(&self, r: &Record<'_>) -> Result<(), SpoolError> {
        let sev = r.severity();
        let bp = r.blueprint();
        let mut to: Vec<String> = Vec::new();
        for route in &self.routes {
            let bp_ok = route.blueprints.is_empty()
                || bp.is_some_and(|b| route.blueprints.iter().any(|x| x == b));
            if sev >= route.min_severity && bp_ok {
                for t in &route.to {
                    if !to.contains(t) {
                        to.push(t.clone());
                    }
                }
            }
        }
        if to.is_empty() {
            return Ok(());
        }
        to.sort();
        let mut item = render(r);
        item.to = to;
        let bytes = serde_json::to_vec(&item).map_err(|e| SpoolError::Encode {
            name: "email".into(),
            reason: e.to_string(),
        })?;
        self.spool.push(&bytes)
    }

    /// Emails waiting.
    pub fn spooled(&self) -> u64 {
        self.spool.len()
    }

    /// Closes the spool: the delivery sends what is left until it is empty or `drain_until`
    /// has passed, then ends; what is left stays spooled.
    pub fn close(&self, drain_until: Instant) {
        self.spool.close(drain_until);
    }
}

impl Drop for EmailSink {
    /// Closes the spool at once if [`EmailSink::close`] did not: the delivery ends.
    fn drop(&mut self) {
        self.spool.close(Instant::now());
    }
}

/// The rate limit per recipient list.
#[derive(Debug, Clone, Copy)]
struct Limits {
    window: Duration,
    per_window: usize,
}

/// Outcome of one SMTP send.
enum Sent {
    Ok,
    Transient(String),
    Permanent(String),
}

fn send(t: &SmtpTransport, from: &Mailbox, item: &Item) -> Sent {
    let mut b = Message::builder().from(from.clone()).subject(&item.subject);
    for to in &item.to {
        match to.parse::<Mailbox>() {
            Ok(m) => b = b.to(m),
            Err(e) => return Sent::Permanent(format!("recipient {to:?}: {e}")),
        }
    }
    let msg = match b.multipart(MultiPart::alternative_plain_html(
        item.text.clone(),
        item.html.clone(),
    )) {
        Ok(m) => m,
        Err(e) => return Sent::Permanent(e.to_string()),
    };
    match t.send(&msg) {
        Ok(_) => Sent::Ok,
        Err(e) if e.is_permanent() => Sent::Permanent(e.to_string()),
        Err(e) => Sent::Transient(e.to_string()),
    }
}

/// The delivery loop: rate limit per recipient list, digest of the excess, retries; fails if
/// the spool cannot be read or updated.
fn deliver(
    limits: Limits,
    transport: SmtpTransport,
    from: Mailbox,
    spool: &Spool,
    stats: &EmailStats,
) -> Result<(), SpoolError> {
    let mut outbox = Outbox {
        transport,
        from,
        spool,
        stats,
        limits,
        recent: BTreeMap::new(),
        backoff: Backoff::default(),
    };
    loop {
        let seen = spool.version();
        if spool.drain_over() || (spool.drain_until().is_some() && spool.is_empty()) {
            if !spool.is_empty() {
                tracing::warn!(
                    spooled = spool.len(),
                    "undelivered emails stay spooled for the next start"
                );
            }
            return Ok(());
        }
        let batch = spool.peek(1000)?;
        if batch.is_empty() {
            spool.wait_change(seen, spool.drain_until());
            continue;
        }
        let pass = outbox.pass(outbox.group(batch)?)?;
        if pass.failed {
            spool.wait_closed(outbox.backoff.failed());
        } else if !pass.progressed {
            // Everything waiting is rate limited: wait for room, a new email or the close.
            spool.wait_change(seen, earliest(pass.room_at, spool.drain_until()));
        }
    }
}

/// Spooled emails by recipient list, oldest first, with their spool keys.
type Groups = BTreeMap<Vec<String>, Vec<(u64, Item)>>;

/// The delivery loop's state: where it sends, when each recipient list was sent to, the backoff.
struct Outbox<'s> {
    /// The SMTP connection settings.
    transport: SmtpTransport,
    /// The sender.
    from: Mailbox,
    /// The spool emails wait in.
    spool: &'s Spool,
    /// The counters for `/metrics`.
    stats: &'s EmailStats,
    /// Emails per recipient list per window.
    limits: Limits,
    /// When each recipient list was sent to, within the window.
    recent: BTreeMap<Vec<String>, VecDeque<Instant>>,
    /// The wait after a transient failure.
    backoff: Backoff,
}

/// What one pass over the spooled emails did.
#[derive(Default)]
struct Pass {
    /// An email left the spool (sent or dropped for good).
    progressed: bool,
    /// A send failed for now: wait out the backoff.
    failed: bool,
    /// When a rate-limited recipient list next has room.
    room_at: Option<Instant>,
}

impl Outbox<'_> {
    /// The batch by recipient list; an email that does not decode is removed (and logged).
    fn group(&self, batch: Vec<(u64, Vec<u8>)>) -> Result<Groups, SpoolError> {
        let mut groups = Groups::new();
        for (k, v) in batch {
            match serde_json::from_slice::<Item>(&v) {
                Ok(item) => groups.entry(item.to.clone()).or_default().push((k, item)),
                Err(e) => {
                    tracing::error!(error = %e, "an email in the spool does not decode; removed");
                    self.spool.remove([k])?;
                }
            }
        }
        Ok(groups)
    }

    /// Sends each recipient list's emails within its rate (the excess as one digest), until a
    /// send fails for now.
    fn pass(&mut self, groups: Groups) -> Result<Pass, SpoolError> {
        let mut pass = Pass::default();
        let window = self.limits.window;
        for (to, items) in groups {
            let sent_at = self.recent.entry(to.clone()).or_default();
            while sent_at.front().is_some_and(|t| t.elapsed() >= window) {
                sent_at.pop_front();
            }
            let room = self.limits.per_window.saturating_sub(sent_at.len());
            if room == 0 {
                pass.room_at = earliest(pass.room_at, sent_at.front().map(|t| *t + window));
                continue;
            }
            for (keys, item) in plan(&items, room) {
                if self.send_one(&to, keys, &item)? {
                    pass.progressed = true;
                } else {
                    pass.failed = true;
                    return Ok(pass);
                }
            }
        }
        Ok(pass)
    }

    /// Sends one email (or digest) standing for the spooled `keys`; `false` when it failed for
    /// now (it stays spooled). Sent or refused for good, it leaves the spool.
    fn send_one(&mut self, to: &[String], keys: Vec<u64>, item: &Item) -> Result<bool, SpoolError> {
        let stats = self.stats;
        match send(&self.transport, &self.from, item) {
            Sent::Ok => {
                stats.sent.fetch_add(1, Ordering::Relaxed);
                if keys.len() > 1 {
                    stats
                        .digested
                        .fetch_add(keys.len() as u64, Ordering::Relaxed);
                }
                if let Some(sent_at) = self.recent.get_mut(to) {
                    sent_at.push_back(Instant::now());
                }
                self.spool.remove(keys)?;
                self.backoff.succeeded();
                Ok(true)
            }
            Sent::Permanent(e) => {
                stats.permanent_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, recipients = to.len(), subject = %item.subject, "email rejected for good; dropped");
                self.spool.remove(keys)?;
                Ok(true)
            }
            Sent::Transient(e) => {
                stats.transient_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, retry_in_ms = self.backoff.delay().as_millis() as u64, "email not sent; will retry");
                Ok(false)
            }
        }
    }
}

/// What to send of one recipient list's `items` with `room` sends left in its window: each
/// singly while there is room for every one; otherwise the last slot carries a digest of the rest.
fn plan(items: &[(u64, Item)], room: usize) -> Vec<(Vec<u64>, Item)> {
    let singles = if items.len() <= room {
        items.len()
    } else {
        room - 1
    };
    let mut plan: Vec<(Vec<u64>, Item)> = items[..singles]
        .iter()
        .map(|(k, i)| (vec![*k], i.clone()))
        .collect();
    if singles < items.len() {
        let rest: Vec<Item> = items[singles..].iter().map(|(_, i)| i.clone()).collect();
        let keys = items[singles..].iter().map(|(k, _)| *k).collect();
        plan.push((keys, digest(&rest)));
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::response::{Action, IncidentType};
    use crate::sink::record::cef::tests::incident;

    #[test]
    fn email_carries_the_essentials_and_escapes_html() {
        let mut i = incident(IncidentType::AutoKill, "<b>fin\r\nBcc: x@evil</b>", "t");
        i.action_taken = Action::Killed;
        let e = render(&Record::Incident(&i));
        assert!(!e.subject.contains('\n') && !e.subject.contains('\r'));
        assert!(e.subject.contains("Kill decided by policy"));
        assert!(e.text.contains("Action taken: killed"));
        assert!(e.text.contains("Blueprint: finance"));
        assert!(e.html.contains("&lt;b&gt;fin"));
        assert!(!e.html.contains("<b>fin"));
    }

    #[test]
    fn digest_lists_every_item() {
        let i = incident(IncidentType::OffHours, "a", "t");
        let mut one = render(&Record::Incident(&i));
        one.to = vec!["x@example.com".into()];
        let d = digest(&[one.clone(), one.clone(), one]);
        assert_eq!(d.subject, "[agent-guardian] digest: 3 alerts");
        assert_eq!(d.text.matches("== ").count(), 3);
        assert_eq!(d.to, vec!["x@example.com".to_string()]);
    }

    #[test]
    fn a_transport_that_cannot_be_built_fails_the_start_instead_of_spooling_for_ever() {
        let dir = tempfile::tempdir().unwrap();
        // The password's variable is gone by the time the sink starts.
        let mut cfg: EmailConfig = serde_json::from_value(serde_json::json!({
            "server": "localhost",
            "security": "starttls",
            "username": "guardian",
            "password": {"env": "AG_TEST_EMAIL_PASSWORD_NEVER_SET"},
            "from": "guardian@example.com",
            "routes": [{"to": ["secops@example.com"]}]
        }))
        .unwrap();
        let db = sled::open(dir.path().join("db")).unwrap();
        match EmailSink::open(&cfg, &db) {
            Err(EmailError::Password(e)) => assert!(e.to_string().contains("AG_TEST_EMAIL")),
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("started with a transport that cannot be built"),
        }
        cfg.username = None;
        cfg.password = None;
        cfg.from = "not a mailbox".into();
        assert!(matches!(
            EmailSink::open(&cfg, &db),
            Err(EmailError::From(_))
        ));
        cfg.from = "guardian@example.com".into();
        let (sink, delivery) = EmailSink::open(&cfg, &db).unwrap();
        sink.close(Instant::now());
        delivery().unwrap();
    }
}
