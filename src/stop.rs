//! One stop signal for every thread of a daemon: set once, seen by all, and set when its owner's
//! [`StopOnDrop`] guard is dropped (so a supervisor that returns or panics stops its threads).
//!
//! Layer: uses nothing of the crate.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A shared stop signal; clones see the same signal.
#[derive(Clone, Default)]
pub struct Stop(Arc<Inner>);

struct Inner {
    set: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
    /// The same signal for async waiters.
    watch: tokio::sync::watch::Sender<bool>,
}

impl Default for Inner {
    fn default() -> Self {
        Inner {
            set: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            watch: tokio::sync::watch::Sender::new(false),
        }
    }
}

impl std::fmt::Debug for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Stop").field(&self.is_set()).finish()
    }
}

impl Stop {
    /// A signal not set yet.
    pub fn new() -> Stop {
        Stop::default()
    }

    /// Sets the signal and wakes every waiter.
    pub fn set(&self) {
        self.0.set.store(true, Ordering::Release);
        let _guard = self.0.lock.lock();
        self.0.wake.notify_all();
        self.0.watch.send_replace(true);
    }

    /// Resolves when the signal is set (for async tasks: no timer, no thread).
    pub async fn stopped(&self) {
        let mut rx = self.0.watch.subscribe();
        // `wait_for` fails only when the sender is gone, and this signal holds it.
        let _ = rx.wait_for(|set| *set).await;
    }

    /// Whether the signal is set (cheap: for loops that poll something else anyway).
    pub fn is_set(&self) -> bool {
        self.0.set.load(Ordering::Acquire)
    }

    /// Waits up to `timeout` for the signal; returns whether it is set.
    pub fn wait(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        let Ok(mut guard) = self.0.lock.lock() else {
            return self.is_set();
        };
        while !self.is_set() {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            guard = match self.0.wake.wait_timeout(guard, left) {
                Ok((g, _)) => g,
                Err(_) => return self.is_set(),
            };
        }
        self.is_set()
    }

    /// A guard that sets the signal when dropped.
    pub fn on_drop(&self) -> StopOnDrop {
        StopOnDrop(self.clone())
    }
}

/// Sets its [`Stop`] when dropped.
#[derive(Debug)]
pub struct StopOnDrop(Stop);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.set();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waiter_wakes_when_the_signal_is_set_and_not_before() {
        let stop = Stop::new();
        assert!(!stop.wait(Duration::from_millis(10)));
        let s = stop.clone();
        let waiter = std::thread::spawn(move || s.wait(Duration::from_secs(600)));
        stop.set();
        assert!(waiter.join().unwrap_or(false));
        assert!(stop.is_set());
    }

    #[test]
    fn an_async_waiter_wakes_when_the_signal_is_set() {
        let stop = Stop::new();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let early = tokio::time::timeout(Duration::from_millis(20), stop.stopped()).await;
            assert!(early.is_err(), "resolved before the signal");
            let s = stop.clone();
            let setter = std::thread::spawn(move || s.set());
            tokio::time::timeout(Duration::from_secs(60), stop.stopped())
                .await
                .unwrap();
            setter.join().unwrap();
            // Set before the wait begins: resolves at once.
            stop.stopped().await;
        });
    }

    #[test]
    fn dropping_the_guard_sets_the_signal() {
        let stop = Stop::new();
        let guard = stop.on_drop();
        assert!(!stop.is_set());
        drop(guard);
        assert!(stop.is_set());
    }
}
