//! The engine thread: one loop over the queue's notices and the engine's own duties (a
//! checkpoint by interval or count, quiet partitions' event time, the progress line), driving the
//! fold, the publisher and the checkpoint writer. Its Kafka parts sit behind two small
//! interfaces ([`OutputTopics`], [`OffsetCommit`]), so it is unit-tested without a broker.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::fold::{Fold, Output};
use super::publish::Publisher;
use super::writer::{CheckpointWriter, Job};
use super::DaemonError;
use crate::config::Resolved;
use crate::sink::record::PostureRecord;
use crate::source::queue::Notice;
use crate::stop::Stop;
use crate::store::{Store, StoreError};
use crate::telemetry::{Live, Metrics};

#[cfg(doc)]
use super::writer::OffsetCommit;
#[cfg(doc)]
use crate::sink::kafka::OutputTopics;

/// What the engine loop reads of the configuration.
pub(super) struct CoreSettings {
    /// A checkpoint at most this long after the previous one, when events came.
    checkpoint_interval: Duration,
    /// A checkpoint after this many events.
    checkpoint_events: u64,
    /// Where posture snapshots are published.
    posture_topic: String,
    /// The whole shutdown's bound (the SIEM spools drain for a third of it).
    shutdown_timeout: Duration,
    /// Test failpoint: abort the process once a checkpoint's changelog records are
    /// acknowledged, before its state is written (`GUARDIAN_FAILPOINT=after-changelog`).
    crash_after_changelog: bool,
    /// Signs the changelog records (the command signing key).
    signing_key: Vec<u8>,
}

/// The environment variable of the crash failpoints the end-to-end tests use.
pub const FAILPOINT_ENV: &str = "GUARDIAN_FAILPOINT";

impl CoreSettings {
    pub(super) fn from_resolved(cfg: &Resolved) -> CoreSettings {
        CoreSettings {
            checkpoint_interval: cfg.checkpoint_interval,
            checkpoint_events: cfg.config.checkpoint_events,
            posture_topic: cfg.posture.topic.clone(),
            shutdown_timeout: cfg.shutdown_timeout,
            crash_after_changelog: std::env::var(FAILPOINT_ENV).as_deref() == Ok("after-changelog"),
            signing_key: cfg.signing_key.clone(),
        }
    }
}

/// The engine thread: the fold, the publisher and the checkpoint writer.
pub(super) struct Core {
    settings: CoreSettings,
    fold: Fold,
    publisher: Publisher,
    /// Writes checkpoints to sled and commits offsets, off the engine thread.
    writer: CheckpointWriter,
    store: Store,
    metrics: Arc<Metrics>,
    live: Arc<Live>,
    /// Reused: what the fold decided, until published.
    outputs: Vec<Output>,
    last_checkpoint: Instant,
    /// When the progress line was last logged.
    last_log: Instant,
}

/// How often the engine logs its progress.
const LOG_EVERY: Duration = Duration::from_secs(10);

impl Core {
    /// The engine thread's state, before its first notice.
    pub(super) fn new(
        settings: CoreSettings,
        fold: Fold,
        publisher: Publisher,
        writer: CheckpointWriter,
        store: Store,
        metrics: Arc<Metrics>,
        live: Arc<Live>,
    ) -> Core {
        Core {
            settings,
            fold,
            publisher,
            writer,
            store,
            metrics,
            live,
            outputs: Vec::new(),
            last_checkpoint: Instant::now(),
            last_log: Instant::now(),
        }
    }

    fn handle(&mut self, n: Notice) -> Result<bool, DaemonError> {
        match n {
            Notice::Assigned(list) => {
                self.fold.assign(
                    list,
                    chrono::Utc::now().timestamp_millis(),
                    &mut self.outputs,
                );
                self.owned_changed();
                self.publisher.publish(&mut self.outputs)?;
            }
            Notice::Revoked(list, ack) => {
                self.checkpoint_now()?;
                self.fold.revoke(&list);
                self.owned_changed();
                let _ = ack.send(());
            }
            Notice::Audit(batch, handed) => {
                let now = chrono::Utc::now().timestamp_millis();
                self.fold.audit(&batch, now, &mut self.outputs)?;
                self.publisher.publish(&mut self.outputs)?;
                self.metrics.latency.observe(handed.elapsed().as_secs_f64());
            }
            Notice::Control(r) => {
                let now = chrono::Utc::now().timestamp_millis();
                self.fold.control(&r, now, &mut self.outputs)?;
                self.publisher.publish(&mut self.outputs)?;
            }
            Notice::Posture(s) => self.publish_posture(&s)?,
            Notice::Stopped => return Ok(false),
        }
        Ok(true)
    }

    /// Lets event time pass for quiet partitions (see [`Fold::pass_quiet_time`]) and publishes
    /// what that decided.
    fn pass_quiet_time(&mut self) -> Result<(), DaemonError> {
        let now = chrono::Utc::now().timestamp_millis();
        self.fold.pass_quiet_time(now, &mut self.outputs)?;
        if !self.outputs.is_empty() {
            self.publisher.publish(&mut self.outputs)?;
        }
        Ok(())
    }

    /// Publishes the owned partitions and readiness after an assignment change.
    fn owned_changed(&self) {
        let owned = self.fold.owned();
        self.metrics
            .partitions
            .store(owned.len(), Ordering::Relaxed);
        self.metrics
            .ready
            .store(!owned.is_empty(), Ordering::Relaxed);
        if let Ok(mut o) = self.live.owned.write() {
            *o = owned;
        }
    }

    /// Settles outputs and encodes the changed state with its offsets; the writer thread then
    /// persists it and commits the offsets to Kafka.
    fn checkpoint(&mut self) -> Result<(), DaemonError> {
        self.publisher.settle()?;
        self.fold.record_lost(self.publisher.take_lost());
        let cp = self
            .fold
            .checkpoint(chrono::Utc::now().timestamp_millis())?;
        if !cp.changelog.is_empty() {
            // The changelog is written before the state and the offsets: a restore from it never
            // reflects an output the broker has not acknowledged, and a crash before the store
            // write only makes the changelog ahead of the local state (the same changes are
            // written again from the local state on restart).
            self.publisher
                .changelog(&cp.changelog, &self.settings.signing_key)?;
            self.publisher.settle()?;
            if self.settings.crash_after_changelog {
                tracing::error!("failpoint {FAILPOINT_ENV}=after-changelog: aborting");
                std::process::abort();
            }
        }
        let mut commit = TopicPartitionList::new();
        for (topic, p, next) in &cp.offsets {
            let _ = commit.add_partition_offset(topic, *p, Offset::Offset(*next));
        }
        self.writer.submit(Job {
            batch: cp.batch,
            commit,
        })?;
        if self.fold.over_memory_bound() {
            // Agents leave memory once their state is on disk: wait for this checkpoint's.
            self.writer.wait()?;
            self.fold.evict();
        }
        self.last_checkpoint = Instant::now();
        self.metrics.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.publish_figures();
        Ok(())
    }

    /// A checkpoint that is on disk when this returns.
    fn checkpoint_now(&mut self) -> Result<(), DaemonError> {
        self.checkpoint()?;
        self.writer.wait()?;
        Ok(())
    }

    /// Agent counts and sink figures for `/metrics` (after each checkpoint).
    fn publish_figures(&self) {
        let (agents, killed, learning) = self.fold.figures();
        self.metrics.agents.store(agents, Ordering::Relaxed);
        self.metrics.agents_killed.store(killed, Ordering::Relaxed);
        self.metrics
            .agents_in_memory
            .store(self.fold.agents_in_memory() as u64, Ordering::Relaxed);
        self.metrics
            .learning_partitions
            .store(learning, Ordering::Relaxed);
        let (shifts, identities) = self.fold.cohort_figures();
        self.metrics.fleet_shifts.store(shifts, Ordering::Relaxed);
        self.metrics
            .duplicate_identities
            .store(identities, Ordering::Relaxed);
        self.publisher.publish_sink_figures();
    }

    /// Publishes a posture snapshot the posture thread has computed.
    fn publish_posture(&mut self, s: &PostureRecord) -> Result<(), DaemonError> {
        self.publisher
            .posture(&self.settings.posture_topic, s, &self.settings.signing_key)?;
        tracing::info!(
            fleet_risk = s.summary.score,
            agents = s.summary.agents,
            "posture snapshot published"
        );
        Ok(())
    }

    /// How long the engine may wait for its next notice before a duty of its own is due: a
    /// checkpoint by interval, a quiet partition's pass of event time, the progress line.
    fn until_next_duty(&self) -> Duration {
        let now = Instant::now();
        let mut due = self.last_log + LOG_EVERY;
        if self.fold.since_checkpoint() > 0 {
            due = due.min(self.last_checkpoint + self.settings.checkpoint_interval);
        }
        if let Some(ms) = self
            .fold
            .next_quiet_pass(chrono::Utc::now().timestamp_millis())
        {
            due = due.min(now + Duration::from_millis(ms.max(0) as u64));
        }
        due.saturating_duration_since(now)
    }

    /// The duties due now: quiet partitions' time, a checkpoint, the progress line.
    fn duties(&mut self) -> Result<(), DaemonError> {
        self.pass_quiet_time()?;
        if self.checkpoint_due() {
            self.checkpoint()?;
        }
        if self.last_log.elapsed() >= LOG_EVERY {
            self.log_progress();
            self.last_log = Instant::now();
        }
        Ok(())
    }

    fn checkpoint_due(&self) -> bool {
        let n = self.fold.since_checkpoint();
        n >= self.settings.checkpoint_events
            || (n > 0 && self.last_checkpoint.elapsed() >= self.settings.checkpoint_interval)
    }

    fn log_progress(&self) {
        let m = &self.metrics;
        let lag = m.lag.load(Ordering::Relaxed);
        let (in_flight, spooled) = self.publisher.backlog();
        tracing::info!(
            events = m.events.load(Ordering::Relaxed),
            bad_events = m.bad_events.load(Ordering::Relaxed),
            incidents = m.incidents.load(Ordering::Relaxed),
            kill_commands = m.kill_commands.load(Ordering::Relaxed),
            queue_depth = m.queue_depth.load(Ordering::Relaxed),
            outputs_in_flight = in_flight,
            siem_spooled = spooled,
            partitions = self.fold.partitions(),
            lag,
            "progress"
        );
    }
}

/// Runs the engine loop until every one of its `sources` has stopped (or the queue is gone),
/// then checkpoints a last time and closes the SIEM spools; on any failure, or at the end, sets
/// `stop` so that the sources end too.
pub(super) fn run_engine(
    mut core: Core,
    rx: Receiver<Notice>,
    mut sources: usize,
    stop: Stop,
) -> Result<(), DaemonError> {
    let result = (|| {
        loop {
            // Blocks on the queue until a notice comes or a duty of the engine's own is due.
            match rx.recv_timeout(core.until_next_duty()) {
                Ok(n) => {
                    core.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
                    if !core.handle(n)? {
                        sources -= 1;
                        if sources == 0 {
                            break;
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            core.duties()?;
        }
        core.checkpoint_now()?;
        core.publisher.shutdown(core.settings.shutdown_timeout / 3);
        core.store.db().flush().map_err(StoreError::from)?;
        let m = &core.metrics;
        tracing::info!(
            events = m.events.load(Ordering::Relaxed),
            incidents = m.incidents.load(Ordering::Relaxed),
            kill_commands = m.kill_commands.load(Ordering::Relaxed),
            suppressed = m.suppressed.load(Ordering::Relaxed),
            outputs_acknowledged = core.publisher.delivered(),
            "engine stopped after a final checkpoint"
        );
        Ok(())
    })();
    // Whatever happened, make the sources stop too, and drain so that sources blocked on a full
    // queue can see the signal.
    stop.set();
    while rx.try_recv().is_ok() {}
    result
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::{mpsc, Mutex, RwLock};

    use rdkafka::message::OwnedHeaders;

    use super::super::fold::tests::{calls, settings};
    use super::super::writer::OffsetCommit;
    use super::*;
    use crate::config::KafkaConfig;
    use crate::posture::Ledger;
    use crate::sink::kafka::OutputTopics;
    use crate::sink::kafka::{Lost, ProduceError};
    use crate::sink::SiemSinks;
    use crate::source::queue::{PartitionAssignment, Queue};

    /// A broker that records what reaches it, in order: `send TOPIC KEY`, `settle`,
    /// `commit TOPIC/PARTITION@OFFSET`; with `refuse`, every send fails.
    #[derive(Clone, Default)]
    struct Broker {
        log: Arc<Mutex<Vec<String>>>,
        refuse: bool,
    }

    impl Broker {
        fn push(&self, line: String) {
            self.log.lock().expect("log").push(line);
        }

        fn log(&self) -> Vec<String> {
            self.log.lock().expect("log").clone()
        }
    }

    impl OutputTopics for Broker {
        fn send(
            &self,
            topic: &str,
            key: Option<&[u8]>,
            _: &[u8],
            _: Option<OwnedHeaders>,
        ) -> Result<(), ProduceError> {
            if self.refuse {
                return Err(ProduceError::Delivery("refused".into()));
            }
            let key = String::from_utf8_lossy(key.unwrap_or_default()).into_owned();
            self.push(format!("send {topic} {key}"));
            Ok(())
        }
        fn send_lossy(
            &self,
            topic: &str,
            key: Option<&[u8]>,
            payload: &[u8],
            headers: Option<OwnedHeaders>,
            _: &str,
        ) -> Result<(), ProduceError> {
            self.send(topic, key, payload, headers)
        }
        fn send_to(
            &self,
            (topic, partition): (&str, i32),
            key: &[u8],
            payload: Option<&[u8]>,
            _: OwnedHeaders,
        ) -> Result<(), ProduceError> {
            if self.refuse {
                return Err(ProduceError::Delivery("refused".into()));
            }
            let key = String::from_utf8_lossy(key);
            let what = if payload.is_some() { "put" } else { "remove" };
            self.push(format!("changelog {topic}/{partition} {what} {key}"));
            Ok(())
        }
        fn take_lost(&self) -> Vec<Lost> {
            Vec::new()
        }
        fn settle_until(&mut self, _: Duration, _: Option<Duration>) -> Result<(), ProduceError> {
            self.push("settle".into());
            Ok(())
        }
        fn delivered(&self) -> u64 {
            0
        }
        fn in_flight(&self) -> i32 {
            0
        }
    }

    impl OffsetCommit for Broker {
        fn commit_offsets(&self, offsets: &TopicPartitionList) {
            for e in offsets.elements() {
                let at = match e.offset() {
                    Offset::Offset(o) => o,
                    _ => -1,
                };
                self.push(format!("commit {}/{}@{at}", e.topic(), e.partition()));
            }
        }
    }

    /// An engine thread's state on `broker` and a store in `dir` (no SIEM sink), checkpointing
    /// every `checkpoint_events` events; its writer runs on its own thread as in the daemon.
    fn core(
        broker: &Broker,
        dir: &std::path::Path,
        checkpoint_events: u64,
        depth: Arc<std::sync::atomic::AtomicUsize>,
    ) -> Core {
        let store = Store::open(dir).expect("store");
        let metrics = Arc::new(Metrics {
            queue_depth: depth,
            ..Metrics::default()
        });
        let live = Arc::new(Live {
            store: store.clone(),
            metrics: metrics.clone(),
            owned: RwLock::new(Vec::new()),
            view: Default::default(),
            peers: Default::default(),
            guardian_id: "guardian-1".into(),
        });
        let fold =
            Fold::new(settings(), metrics.clone(), Vec::new(), Ledger::default()).expect("fold");
        let (siem, deliveries) =
            SiemSinks::open(&[], None, store.db(), "g1", "", &BTreeMap::new()).expect("sinks");
        assert!(deliveries.is_empty());
        let publisher = Publisher::new(
            Box::new(broker.clone()),
            siem,
            metrics.clone(),
            &KafkaConfig::default(),
            Duration::from_secs(5),
        );
        let (writer, writer_loop) = CheckpointWriter::new(store.clone(), Arc::new(broker.clone()));
        std::thread::spawn(move || writer_loop.run());
        let settings = CoreSettings {
            checkpoint_interval: Duration::from_secs(3600),
            checkpoint_events,
            posture_topic: "posture".into(),
            shutdown_timeout: Duration::from_secs(3),
            crash_after_changelog: false,
            signing_key: b"k".to_vec(),
        };
        Core::new(settings, fold, publisher, writer, store, metrics, live)
    }

    fn assigned(partition: i32) -> Notice {
        Notice::Assigned(vec![PartitionAssignment {
            topic: 0,
            partition,
            start: 0,
            quiet_below: 0,
            state: None,
            gap: None,
            skips: Default::default(),
            restored: None,
        }])
    }

    fn position(log: &[String], line: &str) -> usize {
        log.iter()
            .position(|l| l == line)
            .unwrap_or_else(|| panic!("{line} not in {log:?}"))
    }

    /// What a run of the engine loop left: its outcome, the store (in its directory) and the
    /// stop signal.
    struct Ran {
        result: Result<(), DaemonError>,
        store: Store,
        stop: Stop,
        _dir: tempfile::TempDir,
    }

    /// Runs the engine loop on `broker` over `notices` (the queue closes after them),
    /// checkpointing every `checkpoint_events` events.
    fn run(broker: &Broker, checkpoint_events: u64, notices: Vec<Notice>) -> Ran {
        let dir = tempfile::tempdir().expect("dir");
        let (q, rx, depth) = Queue::bounded(16);
        let c = core(broker, dir.path(), checkpoint_events, depth);
        let store = c.store.clone();
        for n in notices {
            assert!(q.send(n));
        }
        drop(q);
        let stop = Stop::new();
        let result = run_engine(c, rx, 1, stop.clone());
        Ran {
            result,
            store,
            stop,
            _dir: dir,
        }
    }

    #[test]
    fn the_engine_loop_publishes_then_settles_then_stores_then_commits() {
        let broker = Broker::default();
        let notices = vec![
            assigned(0),
            Notice::Audit(calls(0), Instant::now()),
            Notice::Stopped,
        ];
        let ran = run(&broker, 1_000_000, notices);
        ran.result.expect("engine");
        let k = KafkaConfig::default();
        let log = broker.log();
        let incident = position(&log, &format!("send {} a", k.incidents_topic));
        let kill = position(&log, &format!("send {} a", k.control_topic));
        let settle = log.iter().rposition(|l| l == "settle").expect("settled");
        let commit = position(&log, "commit audit/0@7");
        assert!(
            incident < kill && kill < settle && settle < commit,
            "{log:?}"
        );
        let (next, _) = ran
            .store
            .load_partition("audit", 0)
            .expect("load")
            .expect("stored");
        assert_eq!(next, 7, "the stored state reflects every event folded");
        assert!(ran.stop.is_set(), "the end of the engine stops the sources");
    }

    #[test]
    fn a_revoked_partition_is_on_disk_before_its_revocation_is_acknowledged() {
        let broker = Broker::default();
        let (ack, acked) = mpsc::channel();
        let notices = vec![
            assigned(0),
            Notice::Audit(calls(0), Instant::now()),
            Notice::Revoked(vec![(0, 0)], ack),
            Notice::Stopped,
        ];
        let ran = run(&broker, 1_000_000, notices);
        ran.result.expect("engine");
        assert!(acked.try_recv().is_ok(), "the revocation is acknowledged");
        // The final checkpoint no longer holds the revoked partition: only the revocation's own
        // checkpoint can have stored it.
        let stored = ran.store.load_partition("audit", 0).expect("load");
        assert_eq!(stored.map(|(next, _)| next), Some(7));
    }

    #[test]
    fn a_checkpoint_comes_by_count_between_notices() {
        let broker = Broker::default();
        let all = calls(0);
        // The queue closes without a `Stopped`: the engine ends all the same.
        let notices = vec![
            assigned(0),
            Notice::Audit(all[..3].to_vec(), Instant::now()),
            Notice::Audit(all[3..].to_vec(), Instant::now()),
        ];
        run(&broker, 3, notices).result.expect("engine");
        let log = broker.log();
        assert!(
            position(&log, "commit audit/0@3") < position(&log, "commit audit/0@7"),
            "{log:?}"
        );
    }

    #[test]
    fn an_output_that_fails_stops_the_engine_and_nothing_past_it_is_stored() {
        let broker = Broker {
            refuse: true,
            ..Broker::default()
        };
        let notices = vec![
            assigned(0),
            Notice::Audit(calls(0), Instant::now()),
            Notice::Stopped,
        ];
        let ran = run(&broker, 1, notices);
        assert!(
            matches!(ran.result, Err(DaemonError::Produce(_))),
            "{:?}",
            ran.result
        );
        assert!(ran.stop.is_set(), "the failure stops the sources");
        assert!(ran
            .store
            .load_partition("audit", 0)
            .expect("load")
            .is_none());
        assert!(!broker.log().iter().any(|l| l.starts_with("commit")));
    }
}
