//! The running SIEM sinks: each formats records into its own spool, and a [`Delivery`] per sink
//! sends them with retry and exponential backoff, on a thread the daemon's supervisor starts.
//! The engine only ever writes to the spool (a local sled tree), so a slow or dead receiver
//! never stalls detection or the kill path (unless the sink is configured with
//! `when_full = "block"`). A delivery waits on its spool (a message, a confirmation due, the end
//! of a retry delay), never on a timer tick; it ends when the engine has closed the spool and it
//! is drained, or its drain deadline has passed.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::record::lines::Formatter;
use super::record::Record;
use super::settings::{SinkConfig, SinkType};
use super::spool::{earliest, Spool, SpoolError};
use super::syslog::SyslogHeader;
use super::transport::{
    FileTransport, KafkaTransport, Protocol, StreamTransport, Transport, TransportError,
    UdpTransport,
};

/// Messages sent per batch.
const BATCH: usize = 256;

/// Errors of the SIEM sinks: starting them, or delivering.
#[derive(Debug, thiserror::Error)]
pub enum SiemError {
    /// The spool could not be opened.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// The email sink could not start.
    #[error(transparent)]
    Email(#[from] super::email::EmailError),
    /// The transport could not be set up.
    #[error("sink {name}: {source}")]
    Transport {
        /// Sink name.
        name: String,
        /// Why.
        #[source]
        source: TransportError,
    },
}

/// Delivery counters of one sink.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Messages delivered.
    pub sent: AtomicU64,
    /// Failed delivery attempts.
    pub failures: AtomicU64,
}

struct Active {
    name: String,
    formatter: Formatter,
    header: Option<SyslogHeader>,
    min_severity: u8,
    spool: Arc<Spool>,
    stats: Arc<SinkStats>,
}

/// One sink's delivery loop, to run on a thread of its own (named after [`Delivery::name`]):
/// it sends what the engine spools and ends once the engine has closed the spool and it is
/// drained (or the drain deadline has passed); it fails if the spool cannot be read or updated.
pub struct Delivery {
    name: String,
    job: Box<dyn FnOnce() -> Result<(), SiemError> + Send>,
}

impl Delivery {
    /// The sink it delivers for.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs the loop until the spool is closed and drained.
    pub fn run(self) -> Result<(), SiemError> {
        (self.job)()
    }
}

/// A sink's figures, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkStatus {
    /// Sink name.
    pub name: String,
    /// Messages waiting in the spool.
    pub spooled: u64,
    /// Messages delivered since start.
    pub sent: u64,
    /// Failed delivery attempts since start.
    pub failures: u64,
    /// Messages dropped because the spool was full.
    pub dropped: u64,
}

/// Every configured sink.
pub struct SiemSinks {
    sinks: Vec<Active>,
    email: Option<super::email::EmailSink>,
    buf: Vec<u8>,
}

impl SiemSinks {
    /// Opens each sink's spool in `db` and builds its transport; returns the sinks the engine
    /// writes to and the deliveries to run (one per sink, and one for email). `host` is the
    /// default syslog HOSTNAME and the records' `dvchost`; Kafka sinks use `brokers` and
    /// `options`.
    pub fn open(
        configs: &[SinkConfig],
        email: Option<&super::email::EmailConfig>,
        db: &sled::Db,
        host: &str,
        brokers: &str,
        options: &BTreeMap<String, String>,
    ) -> Result<(SiemSinks, Vec<Delivery>), SiemError> {
        let mut sinks = Vec::new();
        let mut deliveries = Vec::new();
        for c in configs {
            let (sink, delivery) = open_sink(c, db, host, brokers, options)?;
            sinks.push(sink);
            deliveries.push(delivery);
        }
        let email = match email {
            Some(e) => {
                let (sink, job) = super::email::EmailSink::open(e, db)?;
                deliveries.push(Delivery {
                    name: "email".into(),
                    job: Box::new(move || Ok(job()?)),
                });
                Some(sink)
            }
            None => None,
        };
        let sinks = SiemSinks {
            sinks,
            email,
            buf: Vec::with_capacity(4096),
        };
        Ok((sinks, deliveries))
    }

    /// No sinks.
    pub fn none() -> SiemSinks {
        SiemSinks {
            sinks: Vec::new(),
            email: None,
            buf: Vec::new(),
        }
    }

    /// Formats `r` for every sink that takes its severity and spools it.
    pub fn emit(&mut self, r: &Record<'_>) -> Result<(), SpoolError> {
        let sev = r.severity();
        for s in &self.sinks {
            if sev < s.min_severity {
                continue;
            }
            let line = s.formatter.line(r).map_err(|e| SpoolError::Encode {
                name: s.name.clone(),
                reason: e.to_string(),
            })?;
            self.buf.clear();
            match &s.header {
                Some(h) => h.message(r, &line, &mut self.buf),
                None => self.buf.extend_from_slice(line.as_bytes()),
            }
            s.spool.push(&self.buf)?;
        }
        if let Some(e) = &self.email {
            e.emit(r)?;
        }
        Ok(())
    }

    /// Each sink's figures.
    pub fn status(&self) -> Vec<SinkStatus> {
        self.sinks
            .iter()
            .map(|s| SinkStatus {
                name: s.name.clone(),
                spooled: s.spool.len(),
                sent: s.stats.sent.load(Ordering::Relaxed),
                failures: s.stats.failures.load(Ordering::Relaxed),
                dropped: s.spool.dropped(),
            })
            .collect()
    }

    /// Email figures: sent, transient failures, permanent failures (`None` without `[email]`).
    pub fn email_stats(&self) -> Option<[u64; 3]> {
        self.email.as_ref().map(|e| {
            [
                e.stats.sent.load(Ordering::Relaxed),
                e.stats.transient_failures.load(Ordering::Relaxed),
                e.stats.permanent_failures.load(Ordering::Relaxed),
            ]
        })
    }

    /// The email sink's spool depth, if email is configured.
    pub fn email_spooled(&self) -> Option<u64> {
        self.email.as_ref().map(|e| e.spooled())
    }

    /// Messages spooled over all sinks.
    pub fn spooled(&self) -> u64 {
        self.sinks.iter().map(|s| s.spool.len()).sum::<u64>()
            + self.email.as_ref().map_or(0, |e| e.spooled())
    }

    /// Closes the spools: the engine has written its last record. Each delivery goes on until
    /// its spool is empty or `drain` has passed, then ends; what is left stays spooled for the
    /// next start.
    pub fn shutdown(&mut self, drain: Duration) {
        let until = Instant::now() + drain;
        for s in &self.sinks {
            s.spool.close(until);
        }
        if let Some(e) = &self.email {
            e.close(until);
        }
    }
}

impl Drop for SiemSinks {
    /// Closes the spools at once if [`SiemSinks::shutdown`] did not (the engine failed): the
    /// deliveries end.
    fn drop(&mut self) {
        self.shutdown(Duration::ZERO);
    }
}

/// How long a message written to a TCP or TLS syslog connection must stay behind a healthy
/// connection before it counts as delivered and leaves the spool. Messages not yet confirmed are
/// sent again after a reconnect (at least once: the receiver may see them twice, with the same
/// ids).
pub const CONFIRM_AFTER: Duration = Duration::from_secs(2);

/// One sink: its transport, spool and figures, and the delivery that empties the spool.
fn open_sink(
    c: &SinkConfig,
    db: &sled::Db,
    host: &str,
    brokers: &str,
    options: &BTreeMap<String, String>,
) -> Result<(Active, Delivery), SiemError> {
    let transport = transport(c, brokers, options)?;
    let header = (c.kind == SinkType::Syslog).then(|| {
        SyslogHeader::new(
            c.syslog_format,
            super::syslog::facility(&c.facility).unwrap_or(20),
            c.hostname.as_deref().unwrap_or(host),
            &c.app_name,
        )
    });
    let spool = Arc::new(Spool::open(db, &c.name, c.spool_max_records, c.when_full)?);
    let stats = Arc::new(SinkStats::default());
    let delivery = {
        let (spool, stats, name) = (spool.clone(), stats.clone(), c.name.clone());
        Delivery {
            name: c.name.clone(),
            job: Box::new(move || deliver(&name, &spool, transport, &stats)),
        }
    };
    if !spool.is_empty() {
        tracing::info!(sink = %c.name, spooled = spool.len(), "delivering messages spooled before the restart");
    }
    let sink = Active {
        name: c.name.clone(),
        formatter: Formatter::new(c.format, host),
        header,
        min_severity: c.min_severity,
        spool,
        stats,
    };
    Ok((sink, delivery))
}

/// A sink's transport, as configured (Kafka sinks on `brokers` with `options`).
fn transport(
    c: &SinkConfig,
    brokers: &str,
    options: &BTreeMap<String, String>,
) -> Result<Transport, SiemError> {
    let terr = |source| SiemError::Transport {
        name: c.name.clone(),
        source,
    };
    Ok(match c.kind {
        SinkType::Syslog => {
            let addr = c.address.clone().unwrap_or_default();
            match c.protocol {
                Protocol::Udp => Transport::Udp(UdpTransport::new(&addr)),
                Protocol::Tcp => {
                    Transport::Stream(StreamTransport::new(&addr, c.framing, None).map_err(terr)?)
                }
                Protocol::Tls => Transport::Stream(
                    StreamTransport::new(
                        &addr,
                        c.framing,
                        Some(&c.tls.clone().unwrap_or_default()),
                    )
                    .map_err(terr)?,
                ),
            }
        }
        SinkType::File => Transport::File(FileTransport::new(
            c.path
                .as_deref()
                .unwrap_or(std::path::Path::new("guardian-cef.log")),
            c.max_bytes,
            c.keep,
        )),
        SinkType::Stdout => Transport::Stdout,
        SinkType::Kafka => Transport::Kafka(
            KafkaTransport::new(brokers, options, c.topic.as_deref().unwrap_or_default())
                .map_err(terr)?,
        ),
    })
}

/// The delivery loop of one sink, until its spool is closed and drained (or the drain deadline
/// passes); fails if its spool cannot be read or updated.
fn deliver(
    name: &str,
    spool: &Spool,
    mut t: Transport,
    stats: &SinkStats,
) -> Result<(), SiemError> {
    let late = t.confirms_late();
    let mut health = Health::default();
    // Written on the current connection, not yet confirmed (late-confirming transports only).
    let mut written: VecDeque<(u64, Instant)> = VecDeque::new();
    loop {
        let seen = spool.version();
        if late && !written.is_empty() && !t.healthy() {
            tracing::warn!(sink = %name, resend = written.len(), "receiver closed the connection; resending unconfirmed messages");
            stats.failures.fetch_add(1, Ordering::Relaxed);
            t.reset();
            written.clear();
        }
        let confirmed = take_confirmed(&mut written);
        if !confirmed.is_empty() {
            stats
                .sent
                .fetch_add(confirmed.len() as u64, Ordering::Relaxed);
            spool.remove(confirmed)?;
        }
        let after = written.back().map(|w| w.0);
        let batch = spool.peek_after(after, BATCH)?;
        if batch.is_empty() {
            if let Some(until) = spool.drain_until() {
                if written.is_empty() || Instant::now() >= until {
                    return left_spooled(name, spool);
                }
            }
            // A new message, the close, or the next confirmation, whichever comes first.
            let next = written.front().map(|w| w.1 + CONFIRM_AFTER);
            spool.wait_change(seen, earliest(next, spool.drain_until()));
            continue;
        }
        let msgs: Vec<&[u8]> = batch.iter().map(|m| m.1.as_slice()).collect();
        let (sent, err) = match t.send(&msgs) {
            Ok(()) => (msgs.len(), None),
            Err((n, e)) => (n, Some(e)),
        };
        if late {
            if err.is_none() {
                let now = Instant::now();
                written.extend(batch.iter().map(|m| (m.0, now)));
            } else {
                written.clear(); // the connection is gone: resend from the oldest unconfirmed
            }
        } else if sent > 0 {
            spool.remove(batch.iter().take(sent).map(|m| m.0))?;
            stats.sent.fetch_add(sent as u64, Ordering::Relaxed);
        }
        match err {
            None => health.delivered(name),
            Some(e) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                let retry_at = health.failed(name, &e, spool);
                t.reset();
                if spool.wait_closed(retry_at) {
                    return left_spooled(name, spool);
                }
            }
        }
        // Past the drain deadline: what is not confirmed yet stays spooled (sent again at the
        // next start, with the same ids).
        if spool.drain_over() {
            return left_spooled(name, spool);
        }
    }
}

/// The messages written at least [`CONFIRM_AFTER`] ago behind a healthy connection, taken from
/// `written`: delivered.
fn take_confirmed(written: &mut VecDeque<(u64, Instant)>) -> Vec<u64> {
    let mut confirmed = Vec::new();
    while written
        .front()
        .is_some_and(|w| w.1.elapsed() >= CONFIRM_AFTER)
    {
        if let Some((k, _)) = written.pop_front() {
            confirmed.push(k);
        }
    }
    confirmed
}

/// A delivery's health: the backoff, since when it fails, when that was last logged.
#[derive(Default)]
struct Health {
    /// The wait before the next try.
    backoff: super::backoff::Backoff,
    /// Since when sends fail.
    failing_since: Option<Instant>,
    /// When the failure was last logged.
    last_warn: Option<Instant>,
}

impl Health {
    /// A send went through: logs the recovery, if it was failing.
    fn delivered(&mut self, name: &str) {
        if let Some(since) = self.failing_since.take() {
            tracing::info!(sink = %name, after_s = since.elapsed().as_secs(), "sink delivering again");
        }
        self.backoff.succeeded();
    }

    /// A send failed: logs it (at most every 30 s) and returns when to try again.
    fn failed(&mut self, name: &str, e: &dyn std::fmt::Display, spool: &Spool) -> Instant {
        self.failing_since.get_or_insert_with(Instant::now);
        if self
            .last_warn
            .is_none_or(|w| w.elapsed() >= Duration::from_secs(30))
        {
            tracing::warn!(sink = %name, error = %e, spooled = spool.len(), retry_in_ms = self.backoff.delay().as_millis() as u64, "sink delivery failed; messages stay spooled");
            self.last_warn = Some(Instant::now());
        }
        self.backoff.failed()
    }
}

/// The end of a delivery: logs what it leaves in its spool for the next start.
fn left_spooled(name: &str, spool: &Spool) -> Result<(), SiemError> {
    if !spool.is_empty() {
        tracing::warn!(sink = %name, spooled = spool.len(), "undelivered messages stay spooled for the next start");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{Command, Verb};
    use std::io::{BufRead, BufReader};

    fn tcp_sink(port: u16) -> SinkConfig {
        serde_json::from_value(serde_json::json!({
            "name": "siem", "type": "syslog", "address": format!("127.0.0.1:{port}"),
            "framing": "newline", "spool_max_records": 1000
        }))
        .unwrap()
    }

    type Threads = Vec<std::thread::JoinHandle<Result<(), SiemError>>>;

    /// Opens the sinks and runs each delivery on a thread of its own.
    fn start(cfg: &[SinkConfig], db: &sled::Db, brokers: &str) -> (SiemSinks, Threads) {
        let (s, deliveries) =
            SiemSinks::open(cfg, None, db, "h", brokers, &BTreeMap::new()).unwrap();
        let threads = deliveries
            .into_iter()
            .map(|d| std::thread::spawn(move || d.run()))
            .collect();
        (s, threads)
    }

    /// Closes the spools and waits for every delivery to end without an error.
    fn stop(mut s: SiemSinks, threads: Threads, drain: Duration) {
        s.shutdown(drain);
        for t in threads {
            t.join().unwrap().unwrap();
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn records_for_a_dead_receiver_stay_spooled_across_a_restart_and_arrive_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let cfg = [tcp_sink(port)];
        let cmds: Vec<Command> = (0..50)
            .map(|i| Command::manual(Verb::Kill, &format!("agent-{i}"), "r", i, "ops"))
            .collect();
        {
            let db = sled::open(dir.path()).unwrap();
            let (mut s, threads) = start(&cfg, &db, "");
            for c in &cmds {
                s.emit(&Record::Command(c)).unwrap();
            }
            // Nobody listens: nothing can be delivered, nothing is dropped.
            let t = std::time::Instant::now();
            while s.status()[0].failures == 0 {
                assert!(t.elapsed() < Duration::from_secs(30), "no delivery attempt");
                std::thread::sleep(Duration::from_millis(10));
            }
            let st = &s.status()[0];
            assert_eq!((st.spooled, st.sent, st.dropped), (50, 0, 0), "{st:?}");
            assert!(st.failures >= 1);
            let t = Instant::now();
            stop(s, threads, Duration::ZERO);
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "a delivery in its retry delay must end at the close"
            );
            db.flush().unwrap();
        }
        // The receiver is back; a restarted daemon delivers the spool.
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        let db = crate::sink::spool::reopen(dir.path());
        let (s, threads) = start(&cfg, &db, "");
        let (conn, _) = listener.accept().unwrap();
        let lines: Vec<String> = BufReader::new(conn)
            .lines()
            .take(50)
            .map(|l| l.unwrap())
            .collect();
        for (l, c) in lines.iter().zip(&cmds) {
            assert!(l.contains(&format!("suser={} ", c.agent_id)), "{l}");
        }
        let t = Instant::now();
        while s.status()[0].spooled > 0 {
            assert!(t.elapsed() < Duration::from_secs(10));
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(s.status()[0].sent, 50);
        stop(s, threads, Duration::from_secs(1));
    }

    #[test]
    fn the_kafka_sink_writes_json_records_to_its_topic() {
        let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
        cluster.create_topic("siem-json", 1, 1).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let cfg: SinkConfig = serde_json::from_value(serde_json::json!({
            "name": "k", "type": "kafka", "topic": "siem-json", "format": "json"
        }))
        .unwrap();
        let brokers = cluster.bootstrap_servers();
        let (mut s, threads) = start(&[cfg], &db, &brokers);
        let cmds: Vec<Command> = (0..3)
            .map(|i| Command::manual(Verb::Revive, &format!("a{i}"), "ok", i, "ops"))
            .collect();
        for c in &cmds {
            s.emit(&Record::Command(c)).unwrap();
        }
        let t = Instant::now();
        while s.status()[0].sent < 3 {
            assert!(t.elapsed() < Duration::from_secs(20), "{:?}", s.status());
            std::thread::sleep(Duration::from_millis(20));
        }
        stop(s, threads, Duration::from_secs(1));
        let got = crate::kafka::read_all(&brokers, "siem-json");
        assert_eq!(got.len(), 3);
        for ((_, payload), c) in got.iter().zip(&cmds) {
            let v: serde_json::Value = serde_json::from_slice(payload).unwrap();
            assert_eq!(v["event"]["id"], c.command_id.as_str());
            assert_eq!(v["event"]["action"], "revive");
        }
    }
}
