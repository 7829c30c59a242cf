//! Restoring a partition's state from the changelog topic: read its changelog partition from the
//! start to its end, applying the records to the store in bounded batches
//! ([`crate::store::Restore`]), so the partition resumes from the changelog's position instead of
//! replaying its whole retained history.
//!
//! A partition whose state was never published whole to the changelog (the changelog was
//! turned on for an existing state, or the partition starts from nothing) is first **seeded**
//! ([`ChangelogSource::seed`]): its mark ([`crate::store::mark_key`]), then its stored keys and
//! its meta. A restore requires a mark and voids what came before the last one: a changelog
//! without one would restore only the agents that changed since it was turned on.
//!
//! The end is the one the broker's fetch responses report (`enable.partition.eof`), not a
//! watermark asked for before reading (some Kafka-compatible brokers answer that with the start
//! of the newest batch).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message as _};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use std::sync::atomic::{AtomicU64, Ordering};

use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

use crate::store::{
    mark_key, signature, signed_by, Restored, Store, StoreError, CHECKPOINT_HEADER,
    SIGNATURE_HEADER,
};

/// Why a restore from the changelog did not complete (the partition is then replayed from its
/// history, with the reason logged).
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The reader could not be set up, or the broker failed it.
    #[error("changelog {topic}: {source}")]
    Kafka {
        /// The changelog topic.
        topic: String,
        /// The client's error.
        source: KafkaError,
    },
    /// The changelog topic has no such partition (it needs as many as the audit topic).
    #[error("changelog {topic} has no partition {partition} (it needs as many partitions as the audit topic)")]
    NoPartition {
        /// The changelog topic.
        topic: String,
        /// The partition looked for.
        partition: i32,
    },
    /// A seed's records were not all acknowledged.
    #[error("changelog {topic} partition {partition}: {failed} seed record(s) not acknowledged")]
    Unacknowledged {
        /// The changelog topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// Records the broker refused or that timed out.
        failed: u64,
    },
    /// Its end was not reached in time.
    #[error("changelog {topic} partition {partition}: not read to its end within {after:?}")]
    Timeout {
        /// The changelog topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// How long it was read.
        after: Duration,
    },
    /// A record has no valid checkpoint header or signature (not written by a guardian that
    /// holds the signing key): nothing of the changelog is trusted.
    #[error("changelog {topic} partition {partition} offset {offset}: no valid {CHECKPOINT_HEADER} and {SIGNATURE_HEADER} headers (not written by a guardian with the signing key)")]
    Forged {
        /// The changelog topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The record's offset.
        offset: i64,
    },
    /// The store refused the restored records.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where the changelog is read from.
#[derive(Debug, Clone)]
pub struct ChangelogSource {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// The user's librdkafka options.
    pub options: BTreeMap<String, String>,
    /// The changelog topic.
    pub topic: String,
    /// Keys whose signatures are accepted (the signing key and those of a rotation).
    pub keys: Vec<Vec<u8>>,
    /// The longest a restore may read before it gives up.
    pub deadline: Duration,
}

/// Counts the seed records the broker did not acknowledge.
#[derive(Default)]
struct Acks {
    failed: AtomicU64,
}

impl rdkafka::ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = ();

    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        if r.is_err() {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl ChangelogSource {
    /// Publishes partition `partition` of audit topic `audit` whole to its changelog partition
    /// (the mark, which voids what the changelog held before it, then every stored key and the
    /// meta, signed with the signing key, at the stored state's next offset or `from` when
    /// nothing is stored), waits for the broker, then records the mark in the store; the records
    /// published.
    pub fn seed(
        &self,
        store: &Store,
        audit: &str,
        partition: i32,
        from: i64,
    ) -> Result<u64, RestoreError> {
        let kafka = |source| RestoreError::Kafka {
            topic: self.topic.clone(),
            source,
        };
        let key = self.keys.first().map_or(&[][..], Vec::as_slice);
        let p: ThreadedProducer<Acks> = crate::kafka::client_config(
            &self.brokers,
            crate::kafka::ClientRole::Producer,
            &[("enable.idempotence", "true")],
            &self.options,
        )
        .create_with_context(Acks::default())
        .map_err(kafka)?;
        let mut sent = 0u64;
        let mut send = |k: &[u8], v: &[u8], at: i64| -> Result<(), RestoreError> {
            let at_text = at.to_string();
            let sig = signature(key, partition, at, k, Some(v));
            let headers = rdkafka::message::OwnedHeaders::new()
                .insert(rdkafka::message::Header {
                    key: CHECKPOINT_HEADER,
                    value: Some(at_text.as_bytes()),
                })
                .insert(rdkafka::message::Header {
                    key: SIGNATURE_HEADER,
                    value: Some(sig.as_bytes()),
                });
            let mut rec = BaseRecord::<[u8], [u8]>::to(&self.topic)
                .partition(partition)
                .key(k)
                .payload(v)
                .headers(headers);
            // A full queue drains as the broker acknowledges.
            loop {
                match p.send(rec) {
                    Ok(()) => break,
                    Err((
                        KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                        r,
                    )) => {
                        rec = r;
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err((e, _)) => return Err(kafka(e)),
                }
            }
            sent += 1;
            Ok(())
        };
        let at = store.stored_next(audit, partition)?.unwrap_or(from);
        send(
            mark_key(audit, partition).as_bytes(),
            self.topic.as_bytes(),
            at,
        )?;
        store.each_stored_record(audit, partition, |next, k, v| send(k, v, next))?;
        p.flush(self.deadline).map_err(kafka)?;
        let failed = p.context().failed.load(Ordering::Relaxed);
        if failed > 0 {
            return Err(RestoreError::Unacknowledged {
                topic: self.topic.clone(),
                partition,
                failed,
            });
        }
        store.set_changelog_mark(audit, partition, &self.topic)?;
        Ok(sent)
    }

    /// Restores partition `partition` of audit topic `audit` into `store` from the changelog;
    /// `None` when the changelog holds no finished checkpoint of it.
    pub fn restore(
        &self,
        store: &Store,
        audit: &str,
        partition: i32,
    ) -> Result<Option<Restored>, RestoreError> {
        let kafka = |source| RestoreError::Kafka {
            topic: self.topic.clone(),
            source,
        };
        let c: BaseConsumer<crate::kafka::Quiet> = crate::kafka::client_config(
            &self.brokers,
            crate::kafka::ClientRole::Consumer,
            &[
                ("group.id", "guardian-changelog-restore"),
                ("enable.auto.commit", "false"),
                ("enable.partition.eof", "true"),
                ("auto.offset.reset", "earliest"),
            ],
            &self.options,
        )
        .create_with_context(crate::kafka::Quiet)
        .map_err(kafka)?;
        let md = c
            .fetch_metadata(Some(&self.topic), Duration::from_secs(10))
            .map_err(kafka)?;
        let exists = md
            .topics()
            .iter()
            .any(|t| t.name() == self.topic && t.partitions().iter().any(|p| p.id() == partition));
        if !exists {
            return Err(RestoreError::NoPartition {
                topic: self.topic.clone(),
                partition,
            });
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, partition, Offset::Beginning)
            .map_err(kafka)?;
        c.assign(&tpl).map_err(kafka)?;
        let mut restore = store.begin_restore(audit, partition)?;
        match self.read(&c, &mut restore, partition) {
            Ok(()) => Ok(restore.finish()?),
            Err(e) => {
                // What was applied is not a state: the partition is replayed from scratch.
                if let Err(drop) = restore.abandon() {
                    tracing::error!(error = %drop, "dropping a partial restore");
                }
                Err(e)
            }
        }
    }

    /// Reads the changelog partition to its end into `restore`.
    fn read(
        &self,
        c: &BaseConsumer<crate::kafka::Quiet>,
        restore: &mut crate::store::Restore<'_>,
        partition: i32,
    ) -> Result<(), RestoreError> {
        let started = Instant::now();
        loop {
            if started.elapsed() > self.deadline {
                return Err(RestoreError::Timeout {
                    topic: self.topic.clone(),
                    partition,
                    after: self.deadline,
                });
            }
            match c.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    let key = m.key().unwrap_or_default();
                    let at = self
                        .verified(&m, partition, key)
                        .ok_or(RestoreError::Forged {
                            topic: self.topic.clone(),
                            partition,
                            offset: m.offset(),
                        })?;
                    restore.apply(key, m.payload(), at)?;
                }
                Some(Err(KafkaError::PartitionEOF(_))) => return Ok(()),
                Some(Err(e)) => crate::kafka::quiet_error(&e, "reading the changelog"),
                None => {}
            }
        }
    }

    /// The checkpoint of a record whose signature one of the keys verifies.
    fn verified(
        &self,
        m: &rdkafka::message::BorrowedMessage<'_>,
        partition: i32,
        key: &[u8],
    ) -> Option<i64> {
        let h = m.headers()?;
        let header = |name: &str| h.iter().find(|x| x.key == name).and_then(|x| x.value);
        let at = std::str::from_utf8(header(CHECKPOINT_HEADER)?)
            .ok()?
            .parse::<i64>()
            .ok()?;
        let sig = header(SIGNATURE_HEADER)?;
        self.keys
            .iter()
            .any(|k| signed_by(k, (partition, at), key, m.payload(), sig))
            .then_some(at)
    }
}
