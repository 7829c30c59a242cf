//! The retry delay of a delivery thread: exponential, from [`INITIAL`] up to [`MAX`], back to the
//! start after a success, waited in short steps so a stop is seen promptly.

use std::time::{Duration, Instant};

/// First retry delay after a failed delivery.
pub const INITIAL: Duration = Duration::from_millis(200);
/// Longest retry delay.
pub const MAX: Duration = Duration::from_secs(30);
/// Step of a wait, between two looks at the stop condition.
const STEP: Duration = Duration::from_millis(20);

/// An exponential retry delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: INITIAL }
    }
}

impl Backoff {
    /// The delay the next failure waits.
    pub fn delay(&self) -> Duration {
        self.next
    }

    /// A delivery succeeded: the next failure waits the initial delay again.
    pub fn succeeded(&mut self) {
        self.next = INITIAL;
    }

    /// A delivery failed: waits the delay (unless `stopped` says to stop first), then doubles it
    /// up to [`MAX`]. Returns whether the wait ended because of `stopped`.
    pub fn wait(&mut self, stopped: impl Fn() -> bool) -> bool {
        let until = Instant::now() + self.next;
        self.next = (self.next * 2).min(MAX);
        while Instant::now() < until {
            if stopped() {
                return true;
            }
            std::thread::sleep(STEP.min(until.saturating_duration_since(Instant::now())));
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_maximum_and_resets_after_a_success() {
        let mut b = Backoff::default();
        assert_eq!(b.delay(), INITIAL);
        assert!(b.wait(|| true), "a stop ends the wait at once");
        assert_eq!(b.delay(), INITIAL * 2);
        for _ in 0..20 {
            b.wait(|| true);
        }
        assert_eq!(b.delay(), MAX);
        b.succeeded();
        assert_eq!(b.delay(), INITIAL);
    }
}
