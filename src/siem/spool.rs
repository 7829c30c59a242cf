//! A bounded on-disk queue (a sled tree) between the engine and a slow or unreachable receiver.
//!
//! The engine pushes formatted messages; the sink's delivery thread peeks the oldest, sends them
//! and removes them once sent. The tree lives in the daemon's state database, so the messages
//! pushed before a checkpoint are made durable by that checkpoint's flush, and a restart delivers
//! whatever is still spooled.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

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
    lock: Mutex<()>,
    changed: Condvar,
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
            lock: Mutex::new(()),
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
                    if self.closed.load(Ordering::Acquire) {
                        break;
                    }
                    if !waited {
                        waited = true;
                        self.blocked.fetch_add(1, Ordering::Relaxed);
                    }
                    let g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
                    let _ = self.changed.wait_timeout(g, Duration::from_millis(100));
                }
            }
        }
        let k = self.next.fetch_add(1, Ordering::AcqRel);
        self.tree
            .insert(k.to_be_bytes(), msg)
            .map_err(|e| self.err(e))?;
        self.len.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_all();
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
        self.changed.notify_all();
        Ok(())
    }

    /// Waits until a message may be available or `timeout` passes.
    pub fn wait(&self, timeout: Duration) {
        if !self.is_empty() {
            return;
        }
        let g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self.changed.wait_timeout(g, timeout);
    }

    /// Stops blocking pushes (shutdown).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.changed.notify_all();
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

/// Opens (or creates) the sled database in `dir`. sled releases a directory's lock a moment
/// after its last handle goes (its flusher thread holds one until it next wakes), so a reopen in
/// the same process retries for up to 2 s before reporting the lock error.
pub fn open_db(dir: &std::path::Path) -> Result<sled::Db, sled::Error> {
    let mut tries = 0;
    loop {
        match sled::Config::new().path(dir).open() {
            Err(sled::Error::Io(e))
                if tries < 100 && e.to_string().contains("could not acquire lock") =>
            {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

/// Why a spool's delivery thread has ended, if it has (it is then joined and taken).
pub(super) fn ended(
    worker: &mut Option<std::thread::JoinHandle<Result<(), SpoolError>>>,
) -> Option<String> {
    if !worker
        .as_ref()
        .is_some_and(std::thread::JoinHandle::is_finished)
    {
        return None;
    }
    Some(match worker.take().map(std::thread::JoinHandle::join) {
        Some(Ok(Err(e))) => e.to_string(),
        Some(Err(_)) => "panicked".to_string(),
        _ => "ended before the shutdown".to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let db = open_db(dir.path()).unwrap();
        let s = Spool::open(&db, "x", 10, WhenFull::DropOldest).unwrap();
        assert_eq!(s.len(), 1);
        s.push(b"d").unwrap();
        let rest: Vec<Vec<u8>> = s.peek(10).unwrap().into_iter().map(|m| m.1).collect();
        assert_eq!(rest, vec![b"c".to_vec(), b"d".to_vec()]);
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
