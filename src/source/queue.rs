//! The engine's one input: a bounded queue of [`Notice`]s (audit records, partition assignments
//! and revocations, control messages, posture snapshots), sent by every source thread and the
//! posture thread, received by the engine thread. Its depth is a gauge.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::Arc;

use crate::sink::record::PostureRecord;
use crate::state::Snapshot;

/// One Kafka message, owned.
#[derive(Debug, Clone)]
pub struct Message {
    /// Index of the topic in the configured audit topics (or 0 for the control topic).
    pub topic: u16,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Payload.
    pub payload: Option<Vec<u8>>,
    /// Broker timestamp (ms), if any.
    pub timestamp: Option<i64>,
}

/// A partition handed to this instance.
#[derive(Debug)]
pub struct PartitionAssignment {
    /// Topic index.
    pub topic: u16,
    /// Partition.
    pub partition: i32,
    /// The first offset the engine will receive.
    pub start: i64,
    /// Outputs for offsets below this were already emitted (by this or another instance).
    pub quiet_below: i64,
    /// The stored state, if any.
    pub state: Option<Snapshot>,
    /// Offsets `[from, to)` that left the broker's retention before this state read them.
    pub gap: Option<(i64, i64)>,
    /// Agents whose state is ahead of `start`, with the offset below which their events are in
    /// it already (after a restore from the changelog, see [`crate::store::Restore`]).
    pub skips: std::collections::HashMap<String, i64>,
    /// What a restore from the changelog brought back, when the state came from there.
    pub restored: Option<crate::store::Restored>,
}

/// What the sources tell the engine.
#[derive(Debug)]
pub enum Notice {
    /// Partitions assigned.
    Assigned(Vec<PartitionAssignment>),
    /// Partitions revoked: checkpoint them, then acknowledge.
    Revoked(Vec<(u16, i32)>, mpsc::Sender<()>),
    /// Audit events, in offset order per partition (polled together, sent as one message to
    /// spare a thread wake-up per event), and when they were handed to the engine.
    Audit(Vec<Message>, std::time::Instant),
    /// A control-topic message.
    Control(Message),
    /// A posture snapshot the posture thread computed, to publish.
    Posture(PostureRecord),
    /// A source stopped (its thread reports why, if it failed).
    Stopped,
}

/// Queue to the engine with a depth gauge.
#[derive(Clone)]
pub struct Queue {
    tx: SyncSender<Notice>,
    depth: Arc<AtomicUsize>,
}

impl Queue {
    /// A bounded queue; returns the sending side, the receiver and the depth gauge.
    pub fn bounded(capacity: usize) -> (Queue, mpsc::Receiver<Notice>, Arc<AtomicUsize>) {
        let (tx, rx) = mpsc::sync_channel(capacity);
        let depth = Arc::new(AtomicUsize::new(0));
        (
            Queue {
                tx,
                depth: depth.clone(),
            },
            rx,
            depth,
        )
    }

    /// Sends, blocking while the queue is full; `false` when the engine is gone.
    pub fn send(&self, n: Notice) -> bool {
        self.depth.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(n).is_err() {
            self.depth.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }
}
