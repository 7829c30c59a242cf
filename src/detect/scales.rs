//! Calls in windows of several lengths at once (5 min, 15 min, 1 h, 4 h), for catching short
//! bursts and slow burns: a ring of 48 five-minute buckets held in the agent's state itself (no
//! pointer to chase), and one running sum per window, so an event costs a few additions.

use serde::{Deserialize, Serialize};

/// Bucket width (ms).
pub const BUCKET_MS: i64 = 300_000;
/// Window lengths in minutes.
pub const MINUTES: [i64; SCALES] = [5, 15, 60, 240];
/// Number of windows.
pub const SCALES: usize = 4;
const SPANS: [i64; SCALES] = [1, 3, 12, 48];
const KEEP: usize = 48;

/// Calls in the latest 5-minute bucket and in the windows of 15 min, 1 h and 4 h ending with it
/// (each window is whole buckets, so "15 min" covers 10 to 15 minutes of event time).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scales {
    latest: i64,
    /// Calls per bucket, by bucket index modulo 48 (nested so serde can derive it).
    counts: [[u16; 16]; 3],
    sums: [u32; SCALES],
}

impl Default for Scales {
    fn default() -> Self {
        Scales {
            latest: i64::MIN,
            counts: [[0; 16]; 3],
            sums: [0; SCALES],
        }
    }
}

impl Scales {
    fn slot(&mut self, b: i64) -> &mut u16 {
        let i = b.rem_euclid(KEEP as i64) as usize;
        &mut self.counts[i / 16][i % 16]
    }

    /// Counts a call at `ts`; a call older than the kept buckets is ignored.
    pub fn add(&mut self, ts: i64) {
        let b = ts.div_euclid(BUCKET_MS);
        if b > self.latest {
            let step = b.saturating_sub(self.latest);
            if step >= KEEP as i64 || self.latest == i64::MIN {
                self.counts = [[0; 16]; 3];
                self.sums = [0; SCALES];
            } else {
                // Buckets leaving each window, then the new buckets start empty.
                for (i, span) in SPANS.iter().enumerate() {
                    for k in (self.latest - span + 1)..=(b - span).min(self.latest) {
                        let leaving = u32::from(*self.slot(k));
                        self.sums[i] = self.sums[i].saturating_sub(leaving);
                    }
                }
                for k in (self.latest + 1)..=b {
                    *self.slot(k) = 0;
                }
            }
            self.latest = b;
        }
        if b <= self.latest - KEEP as i64 {
            return;
        }
        let c = self.slot(b);
        if *c == u16::MAX {
            return; // saturated: the sums stay what they are
        }
        *c += 1;
        for (s, span) in self.sums.iter_mut().zip(SPANS) {
            if self.latest - b < span {
                *s += 1;
            }
        }
    }

    /// The latest bucket's index and calls, if any call was counted.
    pub fn latest(&self) -> Option<(i64, u32)> {
        (self.latest != i64::MIN).then_some((self.latest, self.sums[0]))
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
                        latest - b < *span && b > latest_then - KEEP as i64
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
