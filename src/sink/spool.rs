//! A bounded on-disk queue (a sled tree) between the engine and a slow or unreachable receiver.
//!
//! The engine pushes formatted messages; the sink's delivery thread peeks the oldest, sends them
//! and removes them once sent. The tree lives in the daemon's state database, so the messages
//! pushed before a checkpoint are made durable by that checkpoint's flush, and a restart delivers
//! whatever is still spooled.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// What to do when a spool is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Drop the oldest spooled message, count it, and warn (the default): detection and the kill
    /// path never wait for a receiver.
    #[default]
    DropOldest,
    /// Wait for room: nothing is dropped, but a receiver that stays down eventually stalls the
    /// engine (consumer lag grows). For SIEMs that are the system of record.
    Block,
}

/// Errors of the spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// sled failed.
    #[error("spool {name}: {source}")]
    Store {
        /// Spool name.
        name: String,
        /// The sled error.
        #[source]
        source: sled::Error,
    },
    /// A message could not be encoded for the spool (nothing empty is spooled in its place).
    #[error("spool {name}: cannot encode a message: {reason}")]
    Encode {
        /// Spool name.
        name: String,
        /// Why.
        reason: String,
    },
}

/// A bounded, persistent FIFO of messages.
pub struct Spool {
    name: String,
    tree: sled::Tree,
    next: AtomicU64,
    len: AtomicU64,
    cap: u64,
    when_full: WhenFull,
    dropped: AtomicU64,
    /// Writes that had to wait for room (`when_full = "block"`).
    blocked: AtomicU64,
    closed: AtomicBool,
    gate: Mutex<Gate>,
    changed: Condvar,
}

/// What waiters on a spool look at, under its lock: changes, and the drain deadline once closed.
#[derive(Debug, Default)]
struct Gate {
    /// Counts pushes, removals and the close.
    version: u64,
    /// Set by [`Spool::close`]: until when delivery may still drain.
    drain_until: Option<Instant>,
}

impl Spool {
    /// Opens (or creates) the spool `name` in `db`, holding at most `cap` messages.
    pub fn open(
        db: &sled::Db,
        name: &str,
        cap: u64,
        when_full: WhenFull,
    ) -> Result<Spool, SpoolError> {
        let err = |source| SpoolError::Store {
            name: name.into(),
            source,
        };
        let tree = db.open_tree(format!("spool/{name}")).map_err(err)?;
        let next = match tree.last().map_err(err)? {
            Some((k, _)) => key_of(&k) + 1,
            None => 0,
        };
        let len = tree.len() as u64;
        Ok(Spool {
            name: name.into(),
            tree,
            next: AtomicU64::new(next),
            len: AtomicU64::new(len),
            cap: cap.max(1),
            when_full,
            dropped: AtomicU64::new(0),
            blocked: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            gate: Mutex::new(Gate::default()),
            changed: Condvar::new(),
        })
    }

    /// Appends a message. When full, drops the oldest or waits (see [`WhenFull`]); waiting ends
    /// when the spool is [closed](Spool::close), and the message is then kept beyond the cap.
    pub fn push(&self, msg: &[u8]) -> Result<(), SpoolError> {
        let mut waited = false;
        while self.len.load(Ordering::Acquire) >= self.cap {
            match self.when_full {
                WhenFull::DropOldest => {
                    if self.tree.pop_min().map_err(|e| self.err(e))?.is_some() {
                        self.len.fetch_sub(1, Ordering::AcqRel);
                        let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                        if n.is_power_of_two() {
                            tracing::warn!(sink = %self.name, dropped = n, cap = self.cap, "spool full: dropped the oldest message");
                        }
                    }
                }
                WhenFull::Block => {
                    let seen = self.version();
                    if self.closed.load(Ordering::Acquire) {
                        break;
                    }
                    if self.len.load(Ordering::Acquire) < self.cap {
                        continue;
                    }
                    if !waited {
                        waited = true;
                        self.blocked.fetch_add(1, Ordering::Relaxed);
                    }
                    self.wait_change(seen, None);
                }
            }
        }
        let k = self.next.fetch_add(1, Ordering::AcqRel);
        self.tree
            .insert(k.to_be_bytes(), msg)
            .map_err(|e| self.err(e))?;
        self.len.fetch_add(1, Ordering::AcqRel);
        self.bump();
        Ok(())
    }

    /// Up to `max` of the oldest messages with their keys, oldest first.
    pub fn peek(&self, max: usize) -> Result<Vec<(u64, Vec<u8>)>, SpoolError> {
        self.peek_after(None, max)
    }

    /// Like [`Spool::peek`], but only messages with keys above `after`.
    pub fn peek_after(
        &self,
        after: Option<u64>,
        max: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, SpoolError> {
        let from = after.map_or(0, |a| a.saturating_add(1));
        let mut v = Vec::new();
        for kv in self.tree.range(from.to_be_bytes()..).take(max) {
            let (k, m) = kv.map_err(|e| self.err(e))?;
            v.push((key_of(&k), m.to_vec()));
        }
        Ok(v)
    }

    /// Removes delivered messages.
    pub fn remove(&self, keys: impl IntoIterator<Item = u64>) -> Result<(), SpoolError> {
        for k in keys {
            if self
                .tree
                .remove(k.to_be_bytes())
                .map_err(|e| self.err(e))?
                .is_some()
            {
                self.len.fetch_sub(1, Ordering::AcqRel);
            }
        }
        self.bump();
        Ok(())
    }

    fn gate(&self) -> MutexGuard<'_, Gate> {
        self.gate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts a change and wakes the waiters (under the lock, so no waiter misses it).
    fn bump(&self) {
        self.gate().version += 1;
        self.changed.notify_all();
    }

    /// A mark of the spool's state: [`Spool::wait_change`] waits for a change after it.
    pub fn version(&self) -> u64 {
        self.gate().version
    }

    /// Blocks until the spool has changed since `seen` (a push, a removal, the close), or
    /// `until` has passed (`None`: no deadline).
    pub fn wait_change(&self, seen: u64, until: Option<Instant>) {
        let mut g = self.gate();
        while g.version == seen {
            g = match until {
                None => self
                    .changed
                    .wait(g)
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
                Some(t) => {
                    let left = t.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return;
                    }
                    self.changed
                        .wait_timeout(g, left)
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .0
                }
            };
        }
    }

    /// Closes the spool (the engine has written its last message): blocked pushes stop
    /// waiting, and the delivery thread drains it until `drain_until`, then ends. The first
    /// close decides.
    pub fn close(&self, drain_until: Instant) {
        self.closed.store(true, Ordering::Release);
        {
            let mut g = self.gate();
            g.drain_until.get_or_insert(drain_until);
            g.version += 1;
        }
        self.changed.notify_all();
    }

    /// Until when delivery may still drain, once the spool is closed (`None`: open).
    pub fn drain_until(&self) -> Option<Instant> {
        self.gate().drain_until
    }

    /// Blocks until `until`, or less if the spool is closed and its drain deadline passes first
    /// (a delivery thread's retry delay); returns whether the drain is over.
    pub fn wait_closed(&self, until: Instant) -> bool {
        let mut g = self.gate();
        loop {
            let end = g.drain_until.map_or(until, |d| d.min(until));
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return g.drain_until.is_some_and(|d| Instant::now() >= d);
            }
            g = self
                .changed
                .wait_timeout(g, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// Whether the spool is closed and its drain deadline has passed.
    pub fn drain_over(&self) -> bool {
        self.drain_until().is_some_and(|t| Instant::now() >= t)
    }

    /// Messages spooled.
    pub fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    /// True when nothing is spooled.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Messages dropped because the spool was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Writes that had to wait for room since the spool was opened.
    pub fn blocked(&self) -> u64 {
        self.blocked.load(Ordering::Relaxed)
    }

    /// The spool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn err(&self, source: sled::Error) -> SpoolError {
        SpoolError::Store {
            name: self.name.clone(),
            source,
        }
    }
}

fn key_of(k: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = k.len().min(8);
    b[8 - n..].copy_from_slice(&k[k.len() - n..]);
    u64::from_be_bytes(b)
}

/// The earlier of two optional deadlines (`None`: none).
pub(super) fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Opens the sled database in `dir` again in a test, once the previous handle's lock is gone
/// (sled releases it a moment after its last handle: its flusher thread holds one until it
/// next wakes).
#[cfg(test)]
pub(crate) fn reopen(dir: &std::path::Path) -> sled::Db {
    for _ in 0..100 {
        if let Ok(db) = sled::open(dir) {
            return db;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("{} stays locked", dir.display());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn db() -> (tempfile::TempDir, sled::Db) {
        let d = tempfile::tempdir().unwrap();
        let db = sled::open(d.path()).unwrap();
        (d, db)
    }

    #[test]
    fn messages_come_out_in_order_and_survive_a_reopen() {
        let (dir, db) = db();
        let s = Spool::open(&db, "x", 10, WhenFull::DropOldest).unwrap();
        for m in [b"a", b"b", b"c"] {
            s.push(m).unwrap();
        }
        let got = s.peek(2).unwrap();
        assert_eq!(
            got.iter().map(|m| m.1.clone()).collect::<Vec<_>>(),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        s.remove(got.iter().map(|m| m.0)).unwrap();
        db.flush().unwrap();
        drop(s);
        drop(db);
        let db = reopen(dir.path());
        let s = Spool::open(&db, "x", 10, WhenFull::DropOldest).unwrap();
        assert_eq!(s.len(), 1);
        s.push(b"d").unwrap();
        let rest: Vec<Vec<u8>> = s.peek(10).unwrap().into_iter().map(|m| m.1).collect();
        assert_eq!(rest, vec![b"c".to_vec(), b"d".to_vec()]);
    }

    #[test]
    fn a_waiter_wakes_at_a_push_and_at_the_close_and_not_before() {
        let (_d, db) = db();
        let s = std::sync::Arc::new(Spool::open(&db, "x", 10, WhenFull::DropOldest).unwrap());
        let seen = s.version();
        let t = Instant::now();
        s.wait_change(seen, Some(t + Duration::from_millis(30)));
        assert!(
            t.elapsed() >= Duration::from_millis(30),
            "woke with no change"
        );
        let s2 = s.clone();
        let pusher = std::thread::spawn(move || s2.push(b"m").unwrap());
        s.wait_change(seen, None);
        pusher.join().unwrap();
        assert_eq!(s.len(), 1);
        // The close ends a retry delay once its drain deadline has passed.
        let seen = s.version();
        let s2 = s.clone();
        let closer = std::thread::spawn(move || s2.close(Instant::now()));
        s.wait_change(seen, None);
        closer.join().unwrap();
        let t = Instant::now();
        assert!(s.wait_closed(t + Duration::from_secs(600)));
        assert!(t.elapsed() < Duration::from_secs(60));
        assert!(s.drain_over());
        // The first close decides the deadline.
        s.close(Instant::now() + Duration::from_secs(600));
        assert!(s.drain_over());
    }

    #[test]
    fn a_full_spool_drops_the_oldest_and_counts() {
        let (_d, db) = db();
        let s = Spool::open(&db, "x", 2, WhenFull::DropOldest).unwrap();
        for m in [b"1", b"2", b"3", b"4"] {
            s.push(m).unwrap();
        }
        assert_eq!(s.len(), 2);
        assert_eq!(s.dropped(), 2);
        let rest: Vec<Vec<u8>> = s.peek(10).unwrap().into_iter().map(|m| m.1).collect();
        assert_eq!(rest, vec![b"3".to_vec(), b"4".to_vec()]);
    }

    #[test]
    fn a_blocking_spool_waits_for_room() {
        let (_d, db) = db();
        let s = std::sync::Arc::new(Spool::open(&db, "x", 1, WhenFull::Block).unwrap());
        s.push(b"1").unwrap();
        let s2 = s.clone();
        let t = std::thread::spawn(move || s2.push(b"2").unwrap());
        let since = std::time::Instant::now();
        while s.blocked() == 0 {
            assert!(
                since.elapsed() < Duration::from_secs(30),
                "the write never waited"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(!t.is_finished(), "push must wait while the spool is full");
        assert_eq!(s.len(), 1);
        let k: Vec<u64> = s.peek(1).unwrap().into_iter().map(|m| m.0).collect();
        s.remove(k).unwrap();
        t.join().unwrap();
        assert_eq!(s.dropped(), 0);
        assert_eq!(s.peek(5).unwrap()[0].1, b"2".to_vec());
    }
}
