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

    /// Calls in the last `MINUTES[i]` minutes of event time before `ts` (in the latest bucket):
    /// window `i`'s calls plus the share of the bucket before it that the window's partial
    /// latest bucket leaves out, assuming its calls were spread evenly.
    pub fn trailing(&self, i: usize, ts: i64) -> f64 {
        let i = i.min(SCALES - 1);
        if self.latest == i64::MIN {
            return 0.0;
        }
        let elapsed = (ts - self.latest * BUCKET_MS).clamp(0, BUCKET_MS) as f64 / BUCKET_MS as f64;
        let before = self.latest - SPANS[i];
        let spill = if before > self.latest - KEEP as i64 {
            let k = before.rem_euclid(KEEP as i64) as usize;
            f64::from(self.counts[k / 16][k % 16])
        } else {
            0.0
        };
        f64::from(self.sums[i]) + spill * (1.0 - elapsed)
    }

    /// Calls in each window of whole buckets ending with the last bucket complete at `ts` (the
    /// one before `ts`'s own): what the windows held at that bucket's end.
    pub fn complete_at(&self, ts: i64) -> [u32; SCALES] {
        let mut out = [0; SCALES];
        if self.latest == i64::MIN {
            return out;
        }
        let b = ts.div_euclid(BUCKET_MS) - 1;
        for (o, span) in out.iter_mut().zip(SPANS) {
            let from = (b - span + 1).max(self.latest - KEEP as i64 + 1);
            for k in from..=b.min(self.latest) {
                let i = k.rem_euclid(KEEP as i64) as usize;
                *o += u32::from(self.counts[i / 16][i % 16]);
            }
        }
        out
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
    fn trailing_counts_fill_the_partial_bucket_from_the_one_before() {
        let mut s = Scales::default();
        let t0 = 100 * BUCKET_MS;
        for k in 0..10 {
            s.add(t0 + k * 1000);
        }
        // A fifth into the next bucket, two calls so far: 2 + 10 × 4/5.
        let now = t0 + BUCKET_MS + BUCKET_MS / 5;
        s.add(now - 2000);
        s.add(now - 1000);
        assert!(
            (s.trailing(0, now) - 10.0).abs() < 1e-9,
            "{}",
            s.trailing(0, now)
        );
        // The 15-minute window holds both buckets; nothing before them.
        assert!((s.trailing(1, now) - 12.0).abs() < 1e-9);
    }

    #[test]
    fn complete_windows_leave_out_the_bucket_under_way() {
        let mut s = Scales::default();
        let t0 = 100 * BUCKET_MS;
        // Ten calls in each of 20 buckets, then 3 in the bucket under way.
        for b in 0..20 {
            for k in 0..10 {
                s.add(t0 + b * BUCKET_MS + k * 1000);
            }
        }
        let now = t0 + 20 * BUCKET_MS + 60_000;
        for k in 0..3 {
            s.add(now - 50_000 + k * 1000);
        }
        assert_eq!(s.complete_at(now), [10, 30, 120, 200]);
        // Later, the windows empty out; far later, nothing is left.
        assert_eq!(s.complete_at(now + 12 * BUCKET_MS), [0, 0, 3, 203]);
        assert_eq!(s.complete_at(now + 100 * BUCKET_MS), [0; SCALES]);
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
