//! The checkpoint writer: applies checkpoint batches to sled, flushes, then commits the offsets
//! to Kafka, on its own thread so the engine never waits for the disk.
//!
//! The engine settles its outputs and encodes the batch (a consistent cut of its state), then
//! hands it over and goes on with the next events. At most one batch is in flight: handing over
//! the next one, or any step that needs the stored state to be current (a revocation, a posture
//! snapshot, shutdown), first waits for the previous one.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::topic_partition_list::TopicPartitionList;

use crate::source::kafka::AuditConsumer;
use crate::store::{Store, StoreError};

/// Where the writer commits the offsets of a checkpoint once it is on disk: the audit consumer
/// group in the daemon (for lag monitoring; the stored offsets are the truth); a stand-in in the
/// engine's unit tests.
pub trait OffsetCommit: Send + Sync {
    /// Commits `offsets` without waiting; a failure is only logged.
    fn commit_offsets(&self, offsets: &TopicPartitionList);
}

impl OffsetCommit for AuditConsumer {
    fn commit_offsets(&self, offsets: &TopicPartitionList) {
        if let Err(e) = self.commit(offsets, CommitMode::Async) {
            tracing::debug!(error = %e, "offset commit (lag monitoring only)");
        }
    }
}

/// One checkpoint: the batch and the offsets it reflects.
pub struct Job {
    /// Agents, offsets, incidents and ledger, in one atomic batch.
    pub batch: sled::Batch,
    /// The audit offsets to commit to Kafka once the batch is on disk (lag monitoring only).
    pub commit: TopicPartitionList,
}

/// The engine's side of the writer thread, and the one batch it may be writing.
pub struct CheckpointWriter {
    tx: Option<SyncSender<Job>>,
    done: Receiver<Result<(), StoreError>>,
    in_flight: bool,
}

/// The writer thread's loop: writes each job handed over, until the engine's side is dropped.
pub struct WriterLoop {
    jobs: Receiver<Job>,
    done: SyncSender<Result<(), StoreError>>,
    store: Store,
    consumer: Arc<dyn OffsetCommit>,
}

impl WriterLoop {
    /// Writes jobs until the engine drops its [`CheckpointWriter`]; a failed write is the
    /// engine's to report (it gets the error back), so the loop itself only ends.
    pub fn run(self) {
        for job in self.jobs {
            let r = self.store.write(job.batch);
            if r.is_ok() && job.commit.count() > 0 {
                self.consumer.commit_offsets(&job.commit);
            }
            if self.done.send(r).is_err() {
                break;
            }
        }
    }
}

impl CheckpointWriter {
    /// The engine's side and the loop to run on the writer thread.
    pub fn new(store: Store, consumer: Arc<dyn OffsetCommit>) -> (CheckpointWriter, WriterLoop) {
        let (tx, jobs) = sync_channel::<Job>(1);
        let (done_tx, done) = sync_channel(1);
        let writer = CheckpointWriter {
            tx: Some(tx),
            done,
            in_flight: false,
        };
        let run = WriterLoop {
            jobs,
            done: done_tx,
            store,
            consumer,
        };
        (writer, run)
    }

    /// Hands a checkpoint over, after the previous one is written.
    pub fn submit(&mut self, job: Job) -> Result<(), StoreError> {
        self.wait()?;
        let tx = self.tx.as_ref().ok_or(StoreError::WriterGone)?;
        tx.send(job).map_err(|_| StoreError::WriterGone)?;
        self.in_flight = true;
        Ok(())
    }

    /// Waits until the checkpoint in flight, if any, is on disk; returns its outcome.
    pub fn wait(&mut self) -> Result<(), StoreError> {
        if !self.in_flight {
            return Ok(());
        }
        self.in_flight = false;
        self.done.recv().map_err(|_| StoreError::WriterGone)?
    }
}

impl Drop for CheckpointWriter {
    /// Waits for the batch in flight; the writer thread then ends.
    fn drop(&mut self) {
        let _ = self.wait();
        self.tx = None;
    }
}
