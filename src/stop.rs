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

#[derive(Default)]
struct Inner {
    set: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
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
    fn dropping_the_guard_sets_the_signal() {
        let stop = Stop::new();
        let guard = stop.on_drop();
        assert!(!stop.is_set());
        drop(guard);
        assert!(stop.is_set());
    }
}
