//! The retry delay of a delivery thread: exponential, from [`INITIAL`] up to [`MAX`], back to the
//! start after a success. The thread waits it on its spool ([`super::spool::Spool::wait_closed`]),
//! so a shutdown ends the wait at once.

use std::time::{Duration, Instant};

/// First retry delay after a failed delivery.
pub const INITIAL: Duration = Duration::from_millis(200);
/// Longest retry delay.
pub const MAX: Duration = Duration::from_secs(30);

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

    /// A delivery failed: until when to wait before the next attempt; the delay after it
    /// doubles, up to [`MAX`].
    pub fn failed(&mut self) -> Instant {
        let until = Instant::now() + self.next;
        self.next = (self.next * 2).min(MAX);
        until
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_maximum_and_resets_after_a_success() {
        let mut b = Backoff::default();
        assert_eq!(b.delay(), INITIAL);
        let until = b.failed();
        assert!(until > Instant::now() + INITIAL / 2 && until <= Instant::now() + INITIAL);
        assert_eq!(b.delay(), INITIAL * 2);
        for _ in 0..20 {
            b.failed();
        }
        assert_eq!(b.delay(), MAX);
        b.succeeded();
        assert_eq!(b.delay(), INITIAL);
    }
}
