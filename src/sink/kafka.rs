//! The one Kafka producer of the guardian's outputs: incidents, control commands, dead letters,
//! posture snapshots, and the SIEM sinks' Kafka transport. Idempotent, with one policy for a
//! full local queue.
//!
//! Sends never drop: a full local queue blocks the caller (consumer lag grows instead). A
//! checkpoint first calls [`KafkaSink::settle`], which waits until every message sent so far is
//! acknowledged and fails if any delivery failed, so no offset is persisted past an output that
//! was not written. A message that a broker answers with a passing error (a broker shutting down
//! answers "unknown broker error"; leaders move; replicas are short) is sent again by the settle,
//! up to five times, before it counts as failed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, PurgeConfig, ThreadedProducer};
use rdkafka::ClientContext;

/// Delivery outcomes, shared with the producer's callback thread.
#[derive(Default)]
pub struct Deliveries {
    /// Messages acknowledged.
    pub delivered: AtomicU64,
    /// Messages that failed for good.
    pub failed: AtomicU64,
    last_error: std::sync::Mutex<Option<String>>,
    /// Messages sent with [`KafkaSink::send_lossy`] that the broker refused as invalid or too
    /// large, with why.
    lost: std::sync::Mutex<Vec<Lost>>,
    /// Messages a broker answered with a passing error (a broker shutting down answers
    /// "unknown broker error"): sent again by the next settle.
    again: std::sync::Mutex<Vec<Resend>>,
}

/// A message to send again, with the attempts made.
struct Resend {
    topic: String,
    /// The partition it was for, when known.
    partition: Option<i32>,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Option<OwnedHeaders>,
    tag: usize,
    /// Not sent again before this: a broker that answers at once (one shutting down) would
    /// use up every attempt within milliseconds.
    due: std::time::Instant,
}

/// Attempts a message answered with a passing error gets before it fails for good: with
/// [`resend_after`], about five minutes, as long as librdkafka's own `message.timeout.ms`
/// gives a message that finds no broker (a broker shutting down answers at once, for seconds).
const ATTEMPTS: usize = 64;

/// The wait before sending a message again after `attempts` attempts: 0.1 s doubled for each
/// attempt, at most 5 s.
fn resend_after(attempts: usize) -> std::time::Duration {
    let first = std::time::Duration::from_millis(100);
    let doubled = u32::try_from(attempts)
        .ok()
        .and_then(|n| 1u32.checked_shl(n))
        .unwrap_or(u32::MAX);
    first
        .saturating_mul(doubled)
        .min(std::time::Duration::from_secs(5))
}

/// Whether a broker's answer says nothing about the message, only about the broker at that
/// moment (shutting down, moving leaders, short of replicas): sending it again may succeed.
fn passing(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Unknown
            | RDKafkaErrorCode::RequestTimedOut
            | RDKafkaErrorCode::NotEnoughReplicas
            | RDKafkaErrorCode::NotEnoughReplicasAfterAppend
            | RDKafkaErrorCode::NotLeaderForPartition
            | RDKafkaErrorCode::LeaderNotAvailable
            | RDKafkaErrorCode::NetworkException
            | RDKafkaErrorCode::BrokerNotAvailable
            | RDKafkaErrorCode::KafkaStorageError
    )
}

/// The delivery tag of a lossy message: one (a dead letter, already cut to a bounded size)
/// that may be refused for its size or form without stopping the daemon. (A tag's bit 0 is
/// this kind; the bits above count the times the message was sent again.)
const LOSSY: usize = 1;

/// The delivery tag of a message that must be delivered.
const MUST: usize = 0;

/// One more attempt, in a delivery tag.
const ATTEMPT: usize = 2;

/// A lossy message the broker refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Lost {
    /// Topic it was for.
    pub topic: String,
    /// Where its input came from (`topic/partition@offset`, from its headers), if it says.
    pub source: Option<String>,
    /// The payload size sent.
    pub bytes: usize,
    /// Why the broker (or the client) refused it.
    pub reason: String,
}

/// Whether a refusal is about the message itself (sending it again cannot succeed), as opposed
/// to the broker being unreachable or the client failing.
fn refused_for_its_content(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::MessageBatchTooLarge
            | RDKafkaErrorCode::InvalidTimestamp
    )
}

/// `topic/partition@offset` from a dead letter's source headers.
fn source_of(m: &rdkafka::message::BorrowedMessage<'_>) -> Option<String> {
    use rdkafka::message::{Headers, Message};
    let h = m.headers()?;
    let get = |name: &str| {
        h.iter()
            .find(|x| x.key == name)
            .and_then(|x| x.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    Some(format!(
        "{}/{}@{}",
        get("guardian.source.topic")?,
        get("guardian.source.partition")?,
        get("guardian.source.offset")?
    ))
}

/// The producer context that records delivery outcomes.
pub struct SinkContext(Arc<Deliveries>);

impl ClientContext for SinkContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        crate::kafka::quiet_log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        crate::kafka::quiet_error(&error, reason);
    }
}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = usize;
    fn delivery(&self, result: &DeliveryResult<'_>, tag: usize) {
        match result {
            Ok(_) => {
                self.0.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, m))
                if tag & LOSSY == LOSSY
                    && e.rdkafka_error_code().is_some_and(refused_for_its_content) =>
            {
                use rdkafka::message::Message;
                if let Ok(mut l) = self.0.lost.lock() {
                    l.push(Lost {
                        topic: m.topic().to_string(),
                        source: source_of(m),
                        bytes: m.payload_len(),
                        reason: e.to_string(),
                    });
                }
            }
            Err((e, m))
                if tag / ATTEMPT < ATTEMPTS && e.rdkafka_error_code().is_some_and(passing) =>
            {
                use rdkafka::message::Message;
                tracing::warn!(error = %e, topic = m.topic(), "output answered with a passing error; sending it again");
                if let Ok(mut again) = self.0.again.lock() {
                    again.push(Resend {
                        topic: m.topic().to_string(),
                        partition: Some(m.partition()).filter(|p| *p >= 0),
                        key: m.key().map(<[u8]>::to_vec),
                        payload: m.payload().map(<[u8]>::to_vec),
                        headers: m.headers().map(|h| h.detach()),
                        tag: tag + ATTEMPT,
                        due: std::time::Instant::now() + resend_after(tag / ATTEMPT),
                    });
                }
            }
            Err((e, _)) => {
                self.0.failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut l) = self.0.last_error.lock() {
                    *l = Some(e.to_string());
                }
            }
        }
    }
}

/// Errors of the producer.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// The producer could not be created.
    #[error("kafka producer: {0}")]
    Create(KafkaError),
    /// A message could not be written.
    #[error("kafka delivery failed: {0}")]
    Delivery(String),
    /// The client refused a message when it was sent.
    #[error("kafka refused the message: {1}")]
    Refused(RDKafkaErrorCode, String),
    /// The broker did not acknowledge in time; what was waiting was withdrawn, not sent later.
    #[error(
        "the broker did not acknowledge within {0:?} (is it reachable?); nothing was published"
    )]
    Unacknowledged(Duration),
}

/// The idempotent producer shared by every output topic.
pub struct KafkaSink {
    producer: ThreadedProducer<SinkContext>,
    deliveries: Arc<Deliveries>,
    failed_seen: u64,
}

/// What the publisher needs of the producer of the output topics: [`KafkaSink`] in the daemon and its commands; a
/// stand-in that records in the engine's unit tests (no broker).
pub trait OutputTopics: Send {
    /// Queues a message that must be delivered (a failure stops the daemon).
    fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: Option<OwnedHeaders>,
    ) -> Result<(), ProduceError>;
    /// Queues a record that must be delivered to partition `.1` of topic `.0`; without
    /// `payload` it is a tombstone (the key is removed from a compacted topic).
    fn send_to(
        &self,
        to: (&str, i32),
        key: &[u8],
        payload: Option<&[u8]>,
        headers: OwnedHeaders,
    ) -> Result<(), ProduceError>;
    /// Queues a message the broker may refuse for good (recorded as lost, see `take_lost`).
    fn send_lossy(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: Option<OwnedHeaders>,
        source: &str,
    ) -> Result<(), ProduceError>;
    /// The lossy messages refused since the previous call.
    fn take_lost(&self) -> Vec<Lost>;
    /// Waits until everything queued is acknowledged, warning every `warn_every`, giving up
    /// after `deadline`.
    fn settle_until(
        &mut self,
        warn_every: Duration,
        deadline: Option<Duration>,
    ) -> Result<(), ProduceError>;
    /// Messages acknowledged so far.
    fn delivered(&self) -> u64;
    /// Messages waiting for acknowledgement.
    fn in_flight(&self) -> i32;
}

impl KafkaSink {
    /// An idempotent producer (`acks=all`) with the user's pass-through options.
    pub fn new(
        brokers: &str,
        options: &BTreeMap<String, String>,
    ) -> Result<KafkaSink, ProduceError> {
        let deliveries = Arc::new(Deliveries::default());
        let producer = crate::kafka::producer_config(brokers, options)
            .create_with_context(SinkContext(deliveries.clone()))
            .map_err(ProduceError::Create)?;
        Ok(KafkaSink {
            producer,
            deliveries,
            failed_seen: 0,
        })
    }

    fn send_tagged(
        &self,
        tag: usize,
        (topic, partition): (&str, Option<i32>),
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
    ) -> Result<(), ProduceError> {
        let mut rec: BaseRecord<'_, [u8], [u8], usize> = BaseRecord::with_opaque_to(topic, tag);
        if let Some(p) = payload {
            rec = rec.payload(p);
        }
        if let Some(p) = partition {
            rec = rec.partition(p);
        }
        if let Some(k) = key {
            rec = rec.key(k);
        }
        if let Some(h) = headers {
            rec = rec.headers(h);
        }
        loop {
            match self.producer.send(rec) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    rec = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e @ KafkaError::MessageProduction(code), _)) => {
                    return Err(ProduceError::Refused(code, e.to_string()))
                }
                Err((e, _)) => return Err(ProduceError::Delivery(e.to_string())),
            }
        }
    }

    /// Sends again the messages a broker answered with a passing error whose wait is over.
    fn send_again(&self) -> Result<(), ProduceError> {
        let now = std::time::Instant::now();
        let due: Vec<Resend> = match self.deliveries.again.lock() {
            Ok(mut a) if a.iter().any(|r| r.due <= now) => {
                let (due, later) = std::mem::take(&mut *a)
                    .into_iter()
                    .partition(|r| r.due <= now);
                *a = later;
                due
            }
            _ => return Ok(()),
        };
        for r in due {
            self.send_tagged(
                r.tag,
                (&r.topic, r.partition),
                r.key.as_deref(),
                r.payload.as_deref(),
                r.headers,
            )?;
        }
        Ok(())
    }

    /// Waits until everything sent is acknowledged; fails if any delivery failed for good
    /// (after librdkafka's own retries, `message.timeout.ms`). While the broker is unreachable it
    /// keeps waiting, with a warning every `warn_every`: nothing is persisted past an unsent output.
    pub fn settle(&mut self, warn_every: Duration) -> Result<(), ProduceError> {
        self.settle_until(warn_every, None)
    }

    /// Like [`KafkaSink::settle`], but gives up after `deadline`: what is still waiting is
    /// withdrawn from the producer (so it is not published later, unknown to the caller) and the
    /// error says so. For operator commands, whose caller is waiting for an answer.
    pub fn settle_within(&mut self, deadline: Duration) -> Result<(), ProduceError> {
        self.settle_until(deadline, Some(deadline))
    }
}

impl OutputTopics for KafkaSink {
    /// Sends one message that must be delivered; blocks while the producer's queue is full.
    fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: Option<OwnedHeaders>,
    ) -> Result<(), ProduceError> {
        self.send_tagged(MUST, (topic, None), key, Some(payload), headers)
    }
    /// Sends one record that must be delivered to `partition` (a tombstone without `payload`).
    fn send_to(
        &self,
        (topic, partition): (&str, i32),
        key: &[u8],
        payload: Option<&[u8]>,
        headers: OwnedHeaders,
    ) -> Result<(), ProduceError> {
        self.send_tagged(
            MUST,
            (topic, Some(partition)),
            Some(key),
            payload,
            Some(headers),
        )
    }
    /// Sends one message that the broker may refuse for its size or form: such a refusal, now
    /// or at delivery, is kept for [`KafkaSink::take_lost`] instead of failing the next settle.
    /// `source` names the input it stands for (`topic/partition@offset`).
    fn send_lossy(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: Option<OwnedHeaders>,
        source: &str,
    ) -> Result<(), ProduceError> {
        match self.send_tagged(LOSSY, (topic, None), key, Some(payload), headers) {
            Err(ProduceError::Refused(code, reason)) if refused_for_its_content(code) => {
                if let Ok(mut l) = self.deliveries.lost.lock() {
                    l.push(Lost {
                        topic: topic.to_string(),
                        source: Some(source.to_string()),
                        bytes: payload.len(),
                        reason,
                    });
                }
                Ok(())
            }
            other => other,
        }
    }
    /// The lossy messages refused since the previous call.
    fn take_lost(&self) -> Vec<Lost> {
        self.deliveries
            .lost
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default()
    }
    /// Waits until everything sent is acknowledged, warning every `warn_every`; with a
    /// `deadline`, gives up after it, withdrawing what is still waiting.
    fn settle_until(
        &mut self,
        warn_every: Duration,
        deadline: Option<Duration>,
    ) -> Result<(), ProduceError> {
        let started = std::time::Instant::now();
        let mut warned = started;
        loop {
            // Sends what the producer holds without waiting here: rdkafka's `flush` with a
            // timeout polls a queue that the ThreadedProducer's own thread drains, so it sleeps
            // its full 100 ms step whenever a message is in flight, and the engine with it.
            let _ = self.producer.flush(Duration::ZERO);
            self.send_again()?;
            let failed = self.deliveries.failed.load(Ordering::Relaxed);
            if failed > self.failed_seen {
                self.failed_seen = failed;
                let last = self
                    .deliveries
                    .last_error
                    .lock()
                    .ok()
                    .and_then(|l| l.clone())
                    .unwrap_or_default();
                return Err(ProduceError::Delivery(last));
            }
            let inflight = self.producer.in_flight_count();
            // A message answered while this looked is in `again` before it leaves the count.
            let waiting = self.deliveries.again.lock().map_or(0, |a| a.len());
            if inflight == 0 && waiting == 0 {
                return Ok(());
            }
            if let Some(d) = deadline.filter(|d| started.elapsed() >= *d) {
                self.producer
                    .purge(PurgeConfig::default().queue().inflight());
                // Nor sent again later.
                if let Ok(mut a) = self.deliveries.again.lock() {
                    a.clear();
                }
                return Err(ProduceError::Unacknowledged(d));
            }
            std::thread::sleep(Duration::from_millis(1));
            if warned.elapsed() >= warn_every {
                tracing::warn!(
                    in_flight = inflight,
                    waited = ?started.elapsed(),
                    "waiting for the broker to acknowledge outputs"
                );
                warned = std::time::Instant::now();
            }
        }
    }
    /// Messages acknowledged so far.
    fn delivered(&self) -> u64 {
        self.deliveries.delivered.load(Ordering::Relaxed)
    }
    /// Messages waiting for acknowledgement.
    fn in_flight(&self) -> i32 {
        self.producer.in_flight_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_passing_error_is_sent_again_for_minutes_not_milliseconds() {
        let waits: Vec<Duration> = (0..ATTEMPTS).map(resend_after).collect();
        assert_eq!(waits[0], Duration::from_millis(100));
        assert_eq!(waits[1], Duration::from_millis(200));
        assert!(waits.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(waits[ATTEMPTS - 1], Duration::from_secs(5));
        let total: Duration = waits.iter().sum();
        assert!(
            total >= Duration::from_secs(240) && total <= Duration::from_secs(360),
            "{total:?}"
        );
    }

    #[test]
    fn tls_and_sasl_options_are_accepted_by_the_kafka_client() {
        // librdkafka is built with OpenSSL (rdkafka's `ssl-vendored`): SSL, SASL_SSL and SCRAM
        // are available, as users configure them through `kafka.options`.
        let opts: BTreeMap<String, String> = [
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanisms", "SCRAM-SHA-512"),
            ("sasl.username", "guardian"),
            ("sasl.password", "secret"),
            ("ssl.endpoint.identification.algorithm", "https"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        if let Err(e) = KafkaSink::new("127.0.0.1:9", &opts) {
            panic!("{e}");
        }
    }
}
