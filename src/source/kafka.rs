//! Kafka sources: the audit consumer group and the control-topic reader, each on its own thread,
//! feeding one bounded queue to the engine.
//!
//! Rebalances are handled inside `poll`, on the consumer's thread, so assignment notices reach the
//! queue in order with the messages. On assignment each partition starts at the offset its stored
//! state reflects (sled is the truth), or at the earliest retained offset when there is no local
//! state (rebuild). On revocation the engine checkpoints the partitions before they are released.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;

use crate::config::{Backfill, KafkaConfig};
use crate::source::changelog::ChangelogSource;
use crate::source::queue::{Message, Notice, PartitionAssignment, Queue};
use crate::stop::Stop;
use crate::store::{Restored, Store};

/// Why a source stopped.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The consumer could not be set up or assigned.
    #[error("{0}")]
    Kafka(#[from] KafkaError),
    /// Its stored position could not be read.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Consumer context of the audit group.
pub struct AuditContext {
    queue: Queue,
    /// Messages polled but not yet sent; flushed before any rebalance notice so that notices and
    /// messages reach the engine in poll order.
    batch: std::sync::Mutex<Vec<Message>>,
    lag: Arc<AtomicU64>,
    store: Store,
    topics: Vec<String>,
    backfill: Backfill,
    /// Where a partition without local state is restored from, if anywhere.
    changelog: Option<ChangelogSource>,
}

impl ClientContext for AuditContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        crate::kafka::quiet_log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        crate::kafka::quiet_error(&error, reason);
    }

    /// librdkafka's periodic statistics: the consumer lag summed over assigned partitions.
    fn stats(&self, s: rdkafka::Statistics) {
        let lag: i64 = s
            .topics
            .values()
            .flat_map(|t| t.partitions.values())
            .filter(|p| p.partition >= 0)
            .map(|p| p.consumer_lag.max(0))
            .sum();
        self.lag.store(lag as u64, Ordering::Relaxed);
    }
}

/// Most messages sent to the engine at once.
const BATCH: usize = 1024;

impl AuditContext {
    /// Sends the polled messages; `false` when the engine is gone.
    fn flush(&self) -> bool {
        let batch = match self.batch.lock() {
            Ok(mut b) if !b.is_empty() => std::mem::take(&mut *b),
            _ => return true,
        };
        self.queue
            .send(Notice::Audit(batch, std::time::Instant::now()))
    }

    /// Adds a polled message; sends the batch when full.
    fn push(&self, r: Message) -> bool {
        let full = match self.batch.lock() {
            Ok(mut b) => {
                b.push(r);
                b.len() >= BATCH
            }
            Err(_) => true,
        };
        !full || self.flush()
    }

    fn topic_index(&self, name: &str) -> Option<u16> {
        self.topics.iter().position(|t| t == name).map(|i| i as u16)
    }

    fn assign(&self, c: &BaseConsumer<Self>, tpl: &TopicPartitionList) -> KafkaResult<()> {
        let committed = c
            .committed_offsets(tpl.clone(), Duration::from_secs(10))
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot read committed offsets; outputs of replayed history are not suppressed");
                TopicPartitionList::new()
            });
        let mut start_list = TopicPartitionList::new();
        let mut out = Vec::new();
        let ours: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .filter(|e| self.topic_index(e.topic()).is_some())
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        let mut restored = self.restore_missing(&ours);
        for e in tpl.elements() {
            let Some(topic) = self.topic_index(e.topic()) else {
                continue;
            };
            let restored = restored.remove(&(e.topic().to_string(), e.partition()));
            let (stored, skips) = self.local_state(e.topic(), e.partition());
            let (low, high) = c
                .fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(10))
                .unwrap_or((0, 0));
            let committed_at = committed
                .find_partition(e.topic(), e.partition())
                .and_then(|p| match p.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                });
            let start = match &stored {
                Some((next, _)) => *next,
                None => low,
            };
            let gap = match &stored {
                Some((next, _)) if *next < low => {
                    tracing::warn!(
                        topic = e.topic(),
                        partition = e.partition(),
                        from = *next,
                        to = low,
                        "events left the topic's retention before they were read: gap in the audit record"
                    );
                    Some((*next, low))
                }
                _ => None,
            };
            self.seed_unmarked(e.topic(), e.partition(), start);
            let quiet_below = match (committed_at, &stored, self.backfill) {
                (Some(c), _, _) => c,
                (None, None, Backfill::Silent) => high,
                _ => 0,
            };
            tracing::info!(
                topic = e.topic(),
                partition = e.partition(),
                start,
                quiet_below,
                high,
                rebuild = stored.is_none(),
                restored = restored.is_some(),
                "partition assigned"
            );
            start_list.add_partition_offset(e.topic(), e.partition(), Offset::Offset(start))?;
            out.push(PartitionAssignment {
                topic,
                partition: e.partition(),
                start,
                quiet_below,
                state: stored.map(|(_, s)| s),
                gap,
                skips,
                restored,
            });
        }
        self.flush();
        self.queue.send(Notice::Assigned(out));
        c.assign(&start_list)
    }
}

impl AuditContext {
    /// Publishes a partition's state whole to the changelog when it never was (see
    /// [`ChangelogSource::seed`]; `start`: where a partition with nothing stored starts); a
    /// failure is logged, and the partition goes on unmarked (a restore elsewhere would refuse
    /// its changelog and replay its history).
    fn seed_unmarked(&self, topic: &str, partition: i32, start: i64) {
        let Some(source) = &self.changelog else {
            return;
        };
        match self.store.changelog_mark(topic, partition) {
            Ok(Some(t)) if t == source.topic => return,
            Ok(_) => {}
            Err(err) => {
                tracing::error!(error = %err, topic, partition, "changelog mark unreadable; publishing the partition whole again");
            }
        }
        let started = std::time::Instant::now();
        match source.seed(&self.store, topic, partition, start) {
            Ok(records) => tracing::info!(
                topic,
                partition,
                records,
                ms = started.elapsed().as_millis() as u64,
                "partition published whole to the changelog"
            ),
            Err(err) => {
                tracing::error!(error = %err, topic, partition, "publishing the partition whole to the changelog failed; a restore elsewhere will replay its history")
            }
        }
    }

    /// Restores from the changelog the partitions of `list` that have no local state,
    /// [`RESTORES_AT_ONCE`] at a time; what each restore brought back.
    fn restore_missing(&self, list: &[(String, i32)]) -> HashMap<(String, i32), Restored> {
        let mut out = HashMap::new();
        let Some(source) = &self.changelog else {
            return out;
        };
        let missing: Vec<&(String, i32)> = list
            .iter()
            .filter(|(t, p)| !self.store.has_partition(t, *p).unwrap_or(false))
            .collect();
        let store = &self.store;
        for chunk in missing.chunks(RESTORES_AT_ONCE) {
            let done: Vec<_> = std::thread::scope(|s| {
                let running: Vec<_> = chunk
                    .iter()
                    .map(|&(t, p)| {
                        s.spawn(move || ((t.clone(), *p), restore(store, source, t, *p)))
                    })
                    .collect();
                running.into_iter().filter_map(|h| h.join().ok()).collect()
            });
            for (key, r) in done {
                if let Some(r) = r {
                    out.insert(key, r);
                }
            }
        }
        out
    }

    /// A partition's state on this instance (restored from the changelog already, where it
    /// was), with the marks of agents restored ahead of it; none when there is none (or what is
    /// stored cannot be read: logged, and the partition is rebuilt from the log).
    fn local_state(&self, topic: &str, partition: i32) -> LocalState {
        let stored = self
            .store
            .load_partition(topic, partition)
            .unwrap_or_else(|err| {
                tracing::error!(error = %err, topic, partition, "stored state unreadable; rebuilding the partition from the log");
                None
            });
        let skips = match &stored {
            Some(_) => self.store.skips(topic, partition).unwrap_or_else(|err| {
                tracing::error!(error = %err, topic, partition, "restore marks unreadable; agents restored ahead may count events twice");
                Default::default()
            }),
            None => Default::default(),
        };
        (stored, skips)
    }
}

/// Partitions restored from the changelog at once at most (each with a reader of its own).
const RESTORES_AT_ONCE: usize = 8;

/// Restores a partition from the changelog into the store; `None` (with the reason logged) when
/// it cannot be, so the partition is replayed from its history.
fn restore(
    store: &Store,
    source: &ChangelogSource,
    topic: &str,
    partition: i32,
) -> Option<Restored> {
    let started = std::time::Instant::now();
    match source.restore(store, topic, partition) {
        Ok(Some(r)) => {
            tracing::info!(
                topic,
                partition,
                next_offset = r.next_offset,
                records = r.records,
                ahead = r.ahead,
                ms = started.elapsed().as_millis() as u64,
                "partition restored from the changelog"
            );
            Some(r)
        }
        Ok(None) => {
            tracing::info!(
                topic,
                partition,
                "no finished checkpoint of the partition in the changelog, or not its whole state (no mark); replaying its history"
            );
            None
        }
        Err(e) => {
            tracing::error!(error = %e, topic, partition, "restore from the changelog failed; replaying the partition's history");
            None
        }
    }
}

type KafkaResult<T> = Result<T, KafkaError>;

/// A partition's state on this instance: (the next offset and the stored state, the marks of
/// agents restored ahead of it).
type LocalState = (Option<(i64, crate::state::Snapshot)>, HashMap<String, i64>);

impl ConsumerContext for AuditContext {
    fn rebalance(&self, c: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                if let Err(e) = self.assign(c, tpl) {
                    tracing::error!(error = %e, "assigning partitions");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let parts: Vec<(u16, i32)> = tpl
                    .elements()
                    .iter()
                    .filter_map(|e| Some((self.topic_index(e.topic())?, e.partition())))
                    .collect();
                tracing::info!(partitions = parts.len(), "partitions revoked");
                let (ack, done) = mpsc::channel();
                self.flush();
                if self.queue.send(Notice::Revoked(parts, ack))
                    && done.recv_timeout(Duration::from_secs(60)).is_err()
                {
                    tracing::warn!("engine did not checkpoint revoked partitions in time");
                }
                let _ = c.unassign();
            }
            other => {
                tracing::error!(error = ?other, "rebalance error");
                let _ = c.unassign();
            }
        }
    }
}

/// Whether the user's options set `key` for consumers (bare or with the `consumer.` prefix).
fn consumer_sets(options: &BTreeMap<String, String>, key: &str) -> bool {
    crate::kafka::option_for(options, crate::kafka::ClientRole::Consumer, key).is_some()
}

/// The consumer config shared by both sources.
fn consumer_config(brokers: &str, group: &str, options: &BTreeMap<String, String>) -> ClientConfig {
    crate::kafka::client_config(
        brokers,
        crate::kafka::ClientRole::Consumer,
        &[
            ("group.id", group),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("enable.partition.eof", "false"),
            // A guard's latency matters more than a few extra fetch requests (librdkafka's
            // default is 500 ms, which some brokers use in full even when data is waiting): an
            // idle consumer asks each broker 200 times a second.
            ("fetch.wait.max.ms", "5"),
            // When the local queue is over its threshold librdkafka postpones the partition's
            // next fetch by this much (default 1 s): with a fast engine that idles the consumer.
            ("fetch.queue.backoff.ms", "10"),
        ],
        options,
    )
}

/// The audit consumer group.
pub type AuditConsumer = BaseConsumer<AuditContext>;

/// The longest a partition's restore from the changelog may read.
const RESTORE_DEADLINE: Duration = Duration::from_secs(600);

/// Creates the audit consumer (subscribed) for [`run_audit`]; `keys` verify the changelog's
/// records.
pub fn audit_consumer(
    k: &KafkaConfig,
    options: &BTreeMap<String, String>,
    keys: &[Vec<u8>],
    queue: Queue,
    store: Store,
    backfill: Backfill,
    lag: Arc<AtomicU64>,
) -> Result<Arc<AuditConsumer>, KafkaError> {
    let ctx = AuditContext {
        queue,
        lag,
        batch: std::sync::Mutex::new(Vec::with_capacity(BATCH)),
        store,
        topics: k.audit_topics.clone(),
        backfill,
        changelog: k.changelog_topic.as_ref().map(|topic| ChangelogSource {
            brokers: k.brokers.clone(),
            options: options.clone(),
            topic: topic.clone(),
            keys: keys.to_vec(),
            deadline: RESTORE_DEADLINE,
        }),
    };
    let mut cfg = consumer_config(&k.brokers, &k.group_id, options);
    if !consumer_sets(options, "statistics.interval.ms") {
        cfg.set("statistics.interval.ms", "5000");
    }
    let c: AuditConsumer = cfg.create_with_context(ctx)?;
    let names: Vec<&str> = k.audit_topics.iter().map(String::as_str).collect();
    c.subscribe(&names)?;
    Ok(Arc::new(c))
}

/// Polls the audit group until `stop`; messages (in batches) and rebalances go to the queue.
pub fn run_audit(c: Arc<AuditConsumer>, queue: Queue, stop: Stop) {
    let ctx = c.context();
    let mut last_warn = std::time::Instant::now() - Duration::from_secs(60);
    let mut pending = false;
    while !stop.is_set() {
        // Wait for data only when nothing is waiting to be sent: a batch never waits for more.
        let timeout = if pending {
            Duration::ZERO
        } else {
            Duration::from_millis(100)
        };
        match c.poll(timeout) {
            None => {
                if pending && !ctx.flush() {
                    return;
                }
                pending = false;
            }
            Some(Ok(m)) => {
                let Some(topic) = ctx.topic_index(m.topic()) else {
                    continue;
                };
                let rec = Message {
                    topic,
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().map(<[u8]>::to_vec),
                    timestamp: m.timestamp().to_millis(),
                };
                if !ctx.push(rec) {
                    return;
                }
                pending = true;
            }
            // Broker outages surface here; librdkafka reconnects by itself.
            Some(Err(e)) if last_warn.elapsed() > Duration::from_secs(5) => {
                tracing::warn!(error = %e, "audit consumer");
                last_warn = std::time::Instant::now();
            }
            Some(Err(_)) => {}
        }
    }
    ctx.flush();
    queue.send(Notice::Stopped);
}

/// Reads every partition of the control topic from the stored position (or the beginning)
/// until `stop`. Not part of the group: every instance sees every command.
pub fn run_control(
    brokers: &str,
    group: &str,
    options: &BTreeMap<String, String>,
    topic: &str,
    store: &Store,
    queue: Queue,
    stop: Stop,
) -> Result<(), SourceError> {
    let result = (|| -> Result<(), SourceError> {
        let mut cfg = consumer_config(brokers, &format!("{group}-control"), options);
        if !consumer_sets(options, "fetch.wait.max.ms") {
            // Operator commands tolerate 100 ms; fewer fetches spare the broker.
            cfg.set("fetch.wait.max.ms", "100");
        }
        let c: BaseConsumer<crate::kafka::Quiet> = cfg.create_with_context(crate::kafka::Quiet)?;
        let Some(parts) = control_partitions(&c, topic, &stop) else {
            return Ok(());
        };
        let mut tpl = TopicPartitionList::new();
        for p in 0..parts {
            let off = match store.control_offset(p)? {
                Some(o) => Offset::Offset(o),
                None => Offset::Beginning,
            };
            tpl.add_partition_offset(topic, p, off)?;
        }
        c.assign(&tpl)?;
        warn_short_retention(brokers, options, topic);
        while !stop.is_set() {
            match c.poll(Duration::from_millis(100)) {
                None => {}
                Some(Ok(m)) => {
                    let rec = Message {
                        topic: 0,
                        partition: m.partition(),
                        offset: m.offset(),
                        key: m.key().map(<[u8]>::to_vec),
                        payload: m.payload().map(<[u8]>::to_vec),
                        timestamp: m.timestamp().to_millis(),
                    };
                    if !queue.send(Notice::Control(rec)) {
                        return Ok(());
                    }
                }
                Some(Err(e)) => tracing::debug!(error = %e, "control consumer"),
            }
        }
        Ok(())
    })();
    // The engine counts its sources out; the error is this thread's to report.
    queue.send(Notice::Stopped);
    result
}

/// The control topic's partition count, once its metadata shows it (the topic may not exist
/// yet on a fresh cluster); `None` when the daemon stops first.
fn control_partitions(
    c: &BaseConsumer<crate::kafka::Quiet>,
    topic: &str,
    stop: &Stop,
) -> Option<i32> {
    loop {
        if stop.is_set() {
            return None;
        }
        match c.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            Ok(md) => {
                let n = md
                    .topics()
                    .first()
                    .map_or(0, |t| t.partitions().len() as i32);
                if n > 0 {
                    return Some(n);
                }
            }
            Err(e) => tracing::warn!(error = %e, topic, "control topic metadata"),
        }
        stop.wait(Duration::from_millis(500));
    }
}

/// The control topic is the durable record of operator decisions (a rebuild or a lost disk
/// reads it again from its start): says so when the broker keeps it for less.
fn warn_short_retention(brokers: &str, options: &BTreeMap<String, String>, topic: &str) {
    match crate::kafka::topic_retention(brokers, options, topic, Duration::from_secs(5)) {
        Ok(r) => {
            for w in r.warnings() {
                tracing::warn!(topic, "control topic: {w}");
            }
        }
        Err(e) => {
            tracing::info!(topic, error = %e, "control topic: cannot read its retention from the broker; it must keep operator commands for as long as their kills stand (retention.ms=-1)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_consumer_option_counts_bare_or_with_its_prefix_but_not_for_the_producer() {
        let opts = |k: &str| BTreeMap::from([(k.to_string(), "0".to_string())]);
        let key = "statistics.interval.ms";
        assert!(consumer_sets(&opts(key), key));
        assert!(consumer_sets(&opts("consumer.statistics.interval.ms"), key));
        assert!(!consumer_sets(
            &opts("producer.statistics.interval.ms"),
            key
        ));
        assert!(!consumer_sets(&opts("fetch.wait.max.ms"), key));
    }
}
