//! Reading a Kafka topic back to its end: for the demo, the tests and operators' checks. Imports
//! nothing of the crate.

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;

/// A topic reader's client context: the end of a partition is what the reader waits for, so it
/// is logged at debug level, not as librdkafka's error.
struct Reader;

impl ClientContext for Reader {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) {
            tracing::debug!(reason, "end of partition");
        } else {
            tracing::error!(%error, reason, "librdkafka error");
        }
    }
}

impl ConsumerContext for Reader {}

/// Every message of partition 0 of a topic: (the `guardian.error` header, payload).
pub fn read_all(brokers: &str, topic: &str) -> Vec<(Option<String>, Vec<u8>)> {
    read_to_end(brokers, topic, 1, Duration::from_secs(10))
        .into_iter()
        .map(|m| {
            let reason = m.headers().and_then(|h| {
                h.iter()
                    .find(|x| x.key == "guardian.error")
                    .and_then(|x| x.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            });
            (reason, m.payload().unwrap_or_default().to_vec())
        })
        .collect()
}

/// Every message of partitions `0..partitions` of a topic, read from the beginning until each
/// partition reports its end (or `deadline` passes: then what was read so far).
///
/// The end is the one the broker's fetch responses report, not a watermark query before
/// reading: some Kafka-compatible brokers answer `ListOffsets` (latest) with the start of the
/// newest batch rather than the end of the log, which would cut the reading short.
pub fn read_to_end(
    brokers: &str,
    topic: &str,
    partitions: i32,
    deadline: Duration,
) -> Vec<rdkafka::message::OwnedMessage> {
    let mut out = Vec::new();
    let Ok(c) = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "guardian-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create_with_context::<_, BaseConsumer<Reader>>(Reader)
    else {
        return out;
    };
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        if tpl
            .add_partition_offset(topic, p, Offset::Beginning)
            .is_err()
        {
            return out;
        }
    }
    if c.assign(&tpl).is_err() {
        return out;
    }
    let mut at_end = std::collections::BTreeSet::new();
    let until = Instant::now() + deadline;
    while (at_end.len() as i32) < partitions && Instant::now() < until {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => out.push(m.detach()),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            _ => {}
        }
    }
    out
}
