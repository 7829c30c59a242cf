//! The running SIEM sinks: each formats records into its own spool, and a delivery thread per
//! sink sends them with retry and exponential backoff. The engine only ever writes to the spool
//! (a local sled tree), so a slow or dead receiver never stalls detection or the kill path
//! (unless the sink is configured with `when_full = "block"`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::lines::Formatter;
use super::record::Record;
use super::settings::{SinkConfig, SinkType};
use super::spool::{Spool, SpoolError};
use super::syslog::SyslogHeader;
use super::transport::{
    FileTransport, KafkaTransport, Protocol, StreamTransport, Transport, TransportError,
    UdpTransport,
};

/// Messages sent per batch.
const BATCH: usize = 256;

/// Errors starting the sinks.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The spool could not be opened.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// The email sink could not start.
    #[error(transparent)]
    Email(#[from] super::email::EmailError),
    /// A delivery thread could not be started.
    #[error("sink {name}: cannot start its delivery thread: {source}")]
    Thread {
        /// Sink name.
        name: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A delivery thread stopped on its own: its spool failed, or it panicked.
    #[error("sink {name}: delivery stopped: {why}")]
    Failed {
        /// Sink name.
        name: String,
        /// Why.
        why: String,
    },
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

/// The engine's shutdown of the delivery threads: requested, and until when they may still
/// drain their spools (not a second stop signal: the engine thread alone sets it, when it ends).
struct Drain {
    requested: AtomicBool,
    deadline: Mutex<Option<Instant>>,
}

struct Active {
    name: String,
    formatter: Formatter,
    header: Option<SyslogHeader>,
    min_severity: u8,
    spool: Arc<Spool>,
    stats: Arc<SinkStats>,
    worker: Option<JoinHandle<Result<(), SpoolError>>>,
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
    stop: Arc<Drain>,
    buf: Vec<u8>,
}

impl SiemSinks {
    /// Opens each sink's spool in `db` and starts its delivery thread. `host` is the default
    /// syslog HOSTNAME and the records' `dvchost`; Kafka sinks use `brokers` and `options`.
    pub fn start(
        configs: &[SinkConfig],
        email: Option<&super::email::EmailConfig>,
        db: &sled::Db,
        host: &str,
        brokers: &str,
        options: &BTreeMap<String, String>,
    ) -> Result<SiemSinks, SinkError> {
        let stop = Arc::new(Drain {
            requested: AtomicBool::new(false),
            deadline: Mutex::new(None),
        });
        let mut sinks = Vec::new();
        for c in configs {
            let terr = |source| SinkError::Transport {
                name: c.name.clone(),
                source,
            };
            let transport = match c.kind {
                SinkType::Syslog => {
                    let addr = c.address.clone().unwrap_or_default();
                    match c.protocol {
                        Protocol::Udp => Transport::Udp(UdpTransport::new(&addr)),
                        Protocol::Tcp => Transport::Stream(
                            StreamTransport::new(&addr, c.framing, None).map_err(terr)?,
                        ),
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
            };
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
            let worker = {
                let (spool, stats, stop, name) =
                    (spool.clone(), stats.clone(), stop.clone(), c.name.clone());
                std::thread::Builder::new()
                    .name(format!("sink-{}", c.name))
                    .spawn(move || deliver(&name, &spool, transport, &stats, &stop))
                    .map_err(|source| SinkError::Thread {
                        name: c.name.clone(),
                        source,
                    })?
            };
            if !spool.is_empty() {
                tracing::info!(sink = %c.name, spooled = spool.len(), "delivering messages spooled before the restart");
            }
            sinks.push(Active {
                name: c.name.clone(),
                formatter: Formatter::new(c.format, host),
                header,
                min_severity: c.min_severity,
                spool,
                stats,
                worker: Some(worker),
            });
        }
        let email = match email {
            Some(e) => Some(super::email::EmailSink::start(e, db)?),
            None => None,
        };
        Ok(SiemSinks {
            sinks,
            email,
            stop,
            buf: Vec::with_capacity(4096),
        })
    }

    /// No sinks.
    pub fn none() -> SiemSinks {
        SiemSinks {
            sinks: Vec::new(),
            email: None,
            stop: Arc::new(Drain {
                requested: AtomicBool::new(false),
                deadline: Mutex::new(None),
            }),
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
            let line = s.formatter.line(r);
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

    /// Fails if a delivery thread has stopped before the shutdown (its spool failed, or it
    /// panicked): its messages would otherwise pile up unseen.
    pub fn check(&mut self) -> Result<(), SinkError> {
        for s in &mut self.sinks {
            if let Some(why) = super::spool::ended(&mut s.worker) {
                return Err(SinkError::Failed {
                    name: s.name.clone(),
                    why,
                });
            }
        }
        match self.email.as_mut().and_then(super::email::EmailSink::ended) {
            Some(why) => Err(SinkError::Failed {
                name: "email".into(),
                why,
            }),
            None => Ok(()),
        }
    }

    /// Stops the delivery threads: they keep delivering until their spool is empty or `drain`
    /// has passed; what is left stays spooled for the next start.
    pub fn shutdown(&mut self, drain: Duration) {
        if let Ok(mut d) = self.stop.deadline.lock() {
            *d = Some(Instant::now() + drain);
        }
        self.stop.requested.store(true, Ordering::Release);
        for s in &self.sinks {
            s.spool.close();
        }
        if let Some(e) = self.email.as_mut() {
            e.shutdown(drain);
        }
        for s in &mut self.sinks {
            match s.worker.take().map(JoinHandle::join) {
                Some(Ok(Err(e))) => {
                    tracing::error!(sink = %s.name, error = %e, "sink delivery failed")
                }
                Some(Err(_)) => tracing::error!(sink = %s.name, "sink delivery thread panicked"),
                _ => {}
            }
            if !s.spool.is_empty() {
                tracing::warn!(sink = %s.name, spooled = s.spool.len(), "undelivered messages stay spooled for the next start");
            }
        }
    }
}

impl Drop for SiemSinks {
    fn drop(&mut self) {
        if self.sinks.iter().any(|s| s.worker.is_some()) {
            self.shutdown(Duration::ZERO);
        }
    }
}

fn past_deadline(stop: &Drain) -> bool {
    stop.requested.load(Ordering::Acquire)
        && stop
            .deadline
            .lock()
            .ok()
            .and_then(|d| *d)
            .is_none_or(|d| Instant::now() >= d)
}

/// How long a message written to a TCP or TLS syslog connection must stay behind a healthy
/// connection before it counts as delivered and leaves the spool. Messages not yet confirmed are
/// sent again after a reconnect (at least once: the receiver may see them twice, with the same
/// ids).
pub const CONFIRM_AFTER: Duration = Duration::from_secs(2);

/// The delivery loop of one sink, until the stop (and its drain deadline); fails if its spool
/// cannot be read or updated.
fn deliver(
    name: &str,
    spool: &Spool,
    mut t: Transport,
    stats: &SinkStats,
    stop: &Drain,
) -> Result<(), SpoolError> {
    let late = t.confirms_late();
    let mut backoff = super::backoff::Backoff::default();
    let mut failing_since: Option<Instant> = None;
    let mut last_warn: Option<Instant> = None;
    // Written on the current connection, not yet confirmed (late-confirming transports only).
    let mut written: std::collections::VecDeque<(u64, Instant)> = Default::default();
    loop {
        if late && !written.is_empty() && !t.healthy() {
            tracing::warn!(sink = %name, resend = written.len(), "receiver closed the connection; resending unconfirmed messages");
            stats.failures.fetch_add(1, Ordering::Relaxed);
            t.reset();
            written.clear();
        }
        let mut confirmed = Vec::new();
        while written
            .front()
            .is_some_and(|w| w.1.elapsed() >= CONFIRM_AFTER)
        {
            if let Some((k, _)) = written.pop_front() {
                confirmed.push(k);
            }
        }
        if !confirmed.is_empty() {
            stats
                .sent
                .fetch_add(confirmed.len() as u64, Ordering::Relaxed);
            spool.remove(confirmed)?;
        }
        let after = written.back().map(|w| w.0);
        let batch = spool.peek_after(after, BATCH)?;
        if batch.is_empty() {
            if stop.requested.load(Ordering::Acquire) && (written.is_empty() || past_deadline(stop))
            {
                return Ok(());
            }
            if written.is_empty() {
                spool.wait(Duration::from_millis(100));
            } else {
                std::thread::sleep(Duration::from_millis(20));
            }
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
            None => {
                if let Some(since) = failing_since.take() {
                    tracing::info!(sink = %name, after_s = since.elapsed().as_secs(), "sink delivering again");
                }
                backoff.succeeded();
            }
            Some(e) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                failing_since.get_or_insert_with(Instant::now);
                if last_warn.is_none_or(|w| w.elapsed() >= Duration::from_secs(30)) {
                    tracing::warn!(sink = %name, error = %e, spooled = spool.len(), retry_in_ms = backoff.delay().as_millis() as u64, "sink delivery failed; messages stay spooled");
                    last_warn = Some(Instant::now());
                }
                t.reset();
                if backoff.wait(|| past_deadline(stop)) {
                    return Ok(());
                }
            }
        }
        if past_deadline(stop) && !spool.is_empty() && written.is_empty() {
            return Ok(());
        }
    }
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
            let mut s = SiemSinks::start(&cfg, None, &db, "h", "", &BTreeMap::new()).unwrap();
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
            s.shutdown(Duration::ZERO);
            db.flush().unwrap();
        }
        // The receiver is back; a restarted daemon delivers the spool.
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        let db = crate::siem::spool::open_db(dir.path()).unwrap();
        let mut s = SiemSinks::start(&cfg, None, &db, "h", "", &BTreeMap::new()).unwrap();
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
        s.shutdown(Duration::from_secs(1));
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
        let mut s = SiemSinks::start(&[cfg], None, &db, "h", &brokers, &BTreeMap::new()).unwrap();
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
        s.shutdown(Duration::from_secs(1));
        let got = crate::kafka::read_all(&brokers, "siem-json");
        assert_eq!(got.len(), 3);
        for ((_, payload), c) in got.iter().zip(&cmds) {
            let v: serde_json::Value = serde_json::from_slice(payload).unwrap();
            assert_eq!(v["event"]["id"], c.command_id.as_str());
            assert_eq!(v["event"]["action"], "revive");
        }
    }
}
