//! The publisher: sends what the fold decided to the output topics and the SIEM sinks, and counts
//! it.
//!
//! Kafka outputs go through one idempotent producer; a checkpoint waits for them with
//! [`Publisher::settle`], so nothing is persisted past an output the broker has not acknowledged.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::config::KafkaConfig;
use crate::sink::{DeadLetter, Record as SiemRecord, SiemSinks};
use crate::telemetry::Metrics;
use crate::text::Shown;

use super::fold::Output;
use super::DaemonError;
use crate::sink::kafka::OutputTopics;
use crate::sink::record::PostureRecord;
use crate::store::{snapshot_signature, ChangelogRecord, CHECKPOINT_HEADER, SIGNATURE_HEADER};
use rdkafka::message::{Header, OwnedHeaders};

/// The output topics, the producer and the SIEM sinks.
pub struct Publisher {
    sink: Box<dyn OutputTopics>,
    siem: SiemSinks,
    metrics: Arc<Metrics>,
    incidents_topic: String,
    control_topic: String,
    dead_letter_topic: String,
    /// The changelog topic, when checkpoints publish one.
    changelog_topic: Option<String>,
    /// How long a checkpoint waits for acknowledgements before the daemon stops with an error.
    settle_deadline: Duration,
}

impl Publisher {
    /// A publisher onto the configured topics; a checkpoint waits at most `settle_deadline` for
    /// the broker.
    pub fn new(
        sink: Box<dyn OutputTopics>,
        siem: SiemSinks,
        metrics: Arc<Metrics>,
        k: &KafkaConfig,
        settle_deadline: Duration,
    ) -> Publisher {
        Publisher {
            sink,
            siem,
            metrics,
            incidents_topic: k.incidents_topic.clone(),
            control_topic: k.control_topic.clone(),
            dead_letter_topic: k.dead_letter_topic.clone(),
            changelog_topic: k.changelog_topic.clone(),
            settle_deadline,
        }
    }

    /// Sends and drains `outputs`, in order.
    pub fn publish(&mut self, outputs: &mut Vec<Output>) -> Result<(), DaemonError> {
        for o in outputs.drain(..) {
            match o {
                Output::Incident(inc) => {
                    self.sink.send(
                        &self.incidents_topic,
                        Some(inc.agent_id.as_bytes()),
                        &serde_json::to_vec(&inc)?,
                        None,
                    )?;
                    self.metrics.count_incident(&inc);
                    self.siem.emit(&SiemRecord::Incident(&inc))?;
                }
                Output::Kill(cmd) => {
                    self.sink.send(
                        &self.control_topic,
                        Some(cmd.agent_id.as_bytes()),
                        &cmd.to_json()?,
                        None,
                    )?;
                    self.metrics.kill_commands.fetch_add(1, Ordering::Relaxed);
                    self.siem.emit(&SiemRecord::Command(&cmd))?;
                    tracing::warn!(agent = %Shown(&cmd.agent_id), command_id = %cmd.command_id, "kill command issued");
                }
                Output::Applied(cmd) => self.siem.emit(&SiemRecord::Command(&cmd))?,
                Output::DeadLetter(b) => {
                    let mut h =
                        dead_letter_headers(b.kind, &b.error, &b.topic, b.partition, b.offset);
                    if b.original_size > b.payload.len() {
                        // Cut to a prefix: the original size says so.
                        let size = b.original_size.to_string();
                        h = h.insert(rdkafka::message::Header {
                            key: "guardian.original.size",
                            value: Some(&size),
                        });
                    }
                    // A broker whose size limit is below even the bounded copy refuses it:
                    // recorded in the ledger and skipped (see `take_lost`), never retried.
                    let source = format!("{}/{}@{}", b.topic, b.partition, b.offset);
                    self.sink.send_lossy(
                        &self.dead_letter_topic,
                        b.key.as_deref(),
                        &b.payload,
                        Some(h),
                        &source,
                    )?;
                    let d = DeadLetter {
                        source,
                        at: b.at,
                        kind: b.kind.into(),
                        error: b.error,
                        key: b
                            .key
                            .as_deref()
                            .and_then(|k| std::str::from_utf8(k).ok())
                            .map(str::to_string),
                        bytes: b.original_size,
                    };
                    self.siem.emit(&SiemRecord::DeadLetter(&d))?;
                }
            }
        }
        Ok(())
    }

    /// The dead letters the broker refused since the previous call, for the ledger; counted in
    /// the metrics and logged.
    pub fn take_lost(&self) -> Vec<crate::posture::LostOutput> {
        let now = chrono::Utc::now().timestamp_millis();
        let lost = self.sink.take_lost();
        self.metrics
            .dead_letters_lost
            .fetch_add(lost.len() as u64, Ordering::Relaxed);
        lost.into_iter()
            .map(|l| {
                tracing::error!(source = ?l.source, topic = %l.topic, bytes = l.bytes, reason = %Shown(&l.reason),
                    "dead letter refused by the broker; recorded in the ledger and skipped");
                crate::posture::LostOutput {
                    source: l.source,
                    topic: l.topic,
                    bytes: l.bytes,
                    reason: l.reason,
                    at: now,
                }
            })
            .collect()
    }

    /// Publishes a posture snapshot onto `topic` and its summary to the SIEM sinks.
    pub fn posture(
        &mut self,
        topic: &str,
        s: &PostureRecord,
        key: &[u8],
    ) -> Result<(), DaemonError> {
        let id = s.summary.guardian_id.as_bytes();
        let sig = snapshot_signature(key, id, &s.json);
        let headers = OwnedHeaders::new().insert(Header {
            key: SIGNATURE_HEADER,
            value: Some(sig.as_bytes()),
        });
        self.sink.send(topic, Some(id), &s.json, Some(headers))?;
        self.siem.emit(&SiemRecord::Posture(&s.summary))?;
        Ok(())
    }

    /// Sends a checkpoint's changelog records (each to its audit partition's partition of the
    /// changelog topic, with its checkpoint and its signature with `key` in headers); `settle`
    /// then waits for them.
    pub fn changelog(
        &mut self,
        records: &[ChangelogRecord],
        key: &[u8],
    ) -> Result<(), DaemonError> {
        let Some(topic) = &self.changelog_topic else {
            return Ok(());
        };
        for r in records {
            let at = r.checkpoint.to_string();
            let sig = r.signature(key);
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: CHECKPOINT_HEADER,
                    value: Some(at.as_bytes()),
                })
                .insert(Header {
                    key: SIGNATURE_HEADER,
                    value: Some(sig.as_bytes()),
                });
            self.sink
                .send_to((topic, r.partition), &r.key, r.value.as_deref(), headers)?;
        }
        self.metrics
            .changelog_records
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Waits until every output so far is acknowledged; fails after the deadline (the broker
    /// is unreachable for longer than the user allows) or when a delivery failed for good.
    pub fn settle(&mut self) -> Result<(), DaemonError> {
        self.sink
            .settle_until(Duration::from_secs(10), Some(self.settle_deadline))?;
        Ok(())
    }

    /// Figures of the SIEM and email sinks for `/metrics`.
    pub fn publish_sink_figures(&self) {
        let mut sinks = self.siem.status();
        if let Some(depth) = self.siem.email_spooled() {
            sinks.push(crate::sink::SinkStatus {
                name: "email".into(),
                spooled: depth,
                sent: 0,
                failures: 0,
                dropped: 0,
            });
        }
        if let Ok(mut s) = self.metrics.sinks.lock() {
            *s = sinks;
        }
        if let Ok(mut e) = self.metrics.email.lock() {
            *e = self.siem.email_stats();
        }
    }

    /// Outputs waiting for acknowledgement, and records waiting in the SIEM spools.
    pub fn backlog(&self) -> (i32, u64) {
        (self.sink.in_flight(), self.siem.spooled())
    }

    /// Outputs acknowledged so far.
    pub fn delivered(&self) -> u64 {
        self.sink.delivered()
    }

    /// Closes the SIEM spools: their deliveries drain them for at most `drain`, then end.
    pub fn shutdown(&mut self, drain: Duration) {
        self.siem.shutdown(drain);
    }
}

/// Headers of a dead-lettered event: the reason and where it came from.
pub fn dead_letter_headers(
    kind: &str,
    reason: &str,
    topic: &str,
    partition: i32,
    offset: i64,
) -> OwnedHeaders {
    let p = partition.to_string();
    let o = offset.to_string();
    OwnedHeaders::new()
        .insert(Header {
            key: "guardian.error",
            value: Some(reason),
        })
        .insert(Header {
            key: "guardian.error.kind",
            value: Some(kind),
        })
        .insert(Header {
            key: "guardian.source.topic",
            value: Some(topic),
        })
        .insert(Header {
            key: "guardian.source.partition",
            value: Some(&p),
        })
        .insert(Header {
            key: "guardian.source.offset",
            value: Some(&o),
        })
}
