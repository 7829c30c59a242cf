//! Calls in windows of several lengths at once (5 min, 15 min, 1 h, 4 h), for catching short
//! bursts and slow burns: five-minute buckets, only those that hold calls stored, and one running
//! sum per window so an event costs a few additions.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Bucket width (ms).
pub const BUCKET_MS: i64 = 300_000;
/// Window lengths in minutes.
pub const MINUTES: [i64; SCALES] = [5, 15, 60, 240];
/// Number of windows.
pub const SCALES: usize = 4;
const SPANS: [i64; SCALES] = [1, 3, 12, 48];
const KEEP: i64 = 48;

/// Calls in the latest 5-minute bucket and in the windows of 15 min, 1 h and 4 h ending with it
/// (each window is whole buckets, so "15 min" covers 10 to 15 minutes of event time).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scales {
    latest: i64,
    buckets: VecDeque<(i64, u32)>,
    sums: [u32; SCALES],
}

impl Default for Scales {
    fn default() -> Self {
        Scales {
            latest: i64::MIN,
            buckets: VecDeque::new(),
            sums: [0; SCALES],
        }
    }
}

impl Scales {
    /// Counts a call at `ts`; a call older than the kept buckets is ignored.
    pub fn add(&mut self, ts: i64) {
        let b = ts.div_euclid(BUCKET_MS);
        if b > self.latest {
            self.latest = b;
            while self.buckets.front().is_some_and(|f| f.0 <= b - KEEP) {
                self.buckets.pop_front();
            }
            if self.buckets.capacity() == 0 {
                self.buckets.reserve_exact(KEEP as usize + 1);
            }
            self.buckets.push_back((b, 0));
            for (s, span) in self.sums.iter_mut().zip(SPANS) {
                *s = self
                    .buckets
                    .iter()
                    .rev()
                    .take_while(|x| b - x.0 < span)
                    .map(|x| x.1)
                    .sum();
            }
        }
        if b <= self.latest - KEEP {
            return;
        }
        let pos = match self.buckets.iter().rposition(|x| x.0 <= b) {
            Some(p) if self.buckets[p].0 == b => p,
            Some(p) => {
                self.buckets.insert(p + 1, (b, 0));
                p + 1
            }
            None => {
                self.buckets.push_front((b, 0));
                0
            }
        };
        self.buckets[pos].1 = self.buckets[pos].1.saturating_add(1);
        for (s, span) in self.sums.iter_mut().zip(SPANS) {
            if self.latest - b < span {
                *s = s.saturating_add(1);
            }
        }
    }

    /// Calls in each window ending with the latest bucket.
    pub fn sums(&self) -> [u32; SCALES] {
        self.sums
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn sums_agree_with_counting_every_call(steps in proptest::collection::vec(-400_000i64..900_000, 1..300)) {
            let mut s = Scales::default();
            let mut t = 1_000_000_000i64;
            let mut all = Vec::new();
            for d in steps {
                t += d.max(-200_000);
                s.add(t);
                all.push(t);
                let latest = all.iter().map(|x| x.div_euclid(BUCKET_MS)).max().unwrap();
                for (i, span) in SPANS.iter().enumerate() {
                    // Calls in kept buckets, counted when they were added (a call older than the
                    // kept span when it came is dropped).
                    let want = all.iter().enumerate().filter(|(k, x)| {
                        let b = x.div_euclid(BUCKET_MS);
                        let latest_then = all[..=*k].iter().map(|y| y.div_euclid(BUCKET_MS)).max().unwrap();
                        latest - b < *span && b > latest_then - KEEP
                    }).count() as u32;
                    prop_assert_eq!(s.sums()[i], want);
                }
            }
        }
    }

    #[test]
    fn a_burst_shows_in_every_window_and_leaves_the_short_ones_first() {
        let mut s = Scales::default();
        let t0 = 10 * BUCKET_MS;
        for i in 0..30 {
            s.add(t0 + i * 1000);
        }
        assert_eq!(s.sums(), [30, 30, 30, 30]);
        s.add(t0 + 20 * 60_000);
        assert_eq!(s.sums(), [1, 1, 31, 31]);
        s.add(t0 + 5 * 3_600_000);
        assert_eq!(s.sums(), [1, 1, 1, 1]);
    }
}
