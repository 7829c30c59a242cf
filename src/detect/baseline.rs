//! Learned, seasonal baselines: per agent, the distribution of calls per hour for each of the
//! 168 hours of the week in the blueprint's time zone, kept as exponentially weighted mean and
//! variance (fixed size, no stored samples). statrs turns a summary into a tail probability.

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use statrs::distribution::{DiscreteCDF, NegativeBinomial, Poisson};

use super::clock::hour_of_week;
use crate::blueprint::Blueprint;

/// One hour in ms.
pub const HOUR_MS: i64 = 3_600_000;
/// Observations after which a slot's statistics become exponentially weighted (about two months of weeks).
const SLOT_HORIZON: f32 = 8.0;
/// Longest idle gap filled with zero-count hours (two weeks).
const MAX_GAP_HOURS: i64 = 336;

/// Statistics of one hour of week.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SlotStats {
    /// Hours observed.
    pub n: u16,
    /// Hours observed with at least one call.
    pub active: u16,
    /// Mean calls per hour.
    pub mean: f32,
    /// Variance of calls per hour.
    pub var: f32,
}

impl SlotStats {
    fn update(&mut self, count: u32) {
        self.n = self.n.saturating_add(1);
        if count > 0 {
            self.active = self.active.saturating_add(1);
        }
        let alpha = 1.0 / (self.n as f32).min(SLOT_HORIZON);
        let x = count as f32;
        let diff = x - self.mean;
        let incr = alpha * diff;
        self.mean += incr;
        self.var = (1.0 - alpha) * (self.var + diff * incr);
    }
}

/// An hour still receiving events.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct OpenHour {
    hour: i64,
    count: u32,
    slot: u8,
    /// Whether learned checks apply in this hour (history and slot warm).
    warm: bool,
    /// Count from which the hour is anomalous; a cheap lower bound until `exact`.
    bound: u32,
    exact: bool,
    /// Statistics of the slot when the hour opened (kept here so an event reads no other slot memory).
    stats: SlotStats,
}

/// What the baseline says about the current event's hour.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HourView {
    /// Calls so far in this hour (this event included).
    pub count: u32,
    /// Hour of week.
    pub slot: u8,
    /// Whether learned checks apply.
    pub warm: bool,
    /// The count is improbable under the slot's baseline.
    pub over: bool,
    /// The learned threshold (calls), when `over`.
    pub threshold: u32,
    /// Slot statistics at the start of the hour.
    pub stats: SlotStats,
    /// The agent (almost) never uses this hour of week.
    pub rare: bool,
}

/// Hour-of-week baseline of one agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Seasonal {
    slots: Vec<SlotStats>,
    /// Hours still receiving events, oldest first (rarely more than two, kept inline).
    open: SmallVec<[OpenHour; 2]>,
    finalized_through: i64,
    first_hour: Option<i64>,
}

impl Default for Seasonal {
    fn default() -> Self {
        Seasonal {
            slots: vec![SlotStats::default(); 168],
            open: SmallVec::new(),
            finalized_through: 0,
            first_hour: None,
        }
    }
}

impl Seasonal {
    /// Statistics of one hour of week.
    pub fn slot(&self, how: u8) -> SlotStats {
        self.slots.get(how as usize).copied().unwrap_or_default()
    }

    /// Hours of history (from the first event to the last finalized hour).
    pub fn history_hours(&self) -> i64 {
        self.first_hour
            .map_or(0, |f| (self.finalized_through - f + 1).max(0))
    }

    fn finalize(&mut self, bp: &Blueprint, hour: i64, count: u32) {
        let gap_from = (self.finalized_through + 1).max(hour - MAX_GAP_HOURS);
        for h in gap_from..hour {
            let s = hour_of_week(bp.timezone, h * HOUR_MS) as usize;
            self.slots[s].update(0);
        }
        let s = hour_of_week(bp.timezone, hour * HOUR_MS) as usize;
        self.slots[s].update(count);
        self.finalized_through = hour;
    }

    /// Closes every hour that ends at or before `through_end` (exclusive hour index bound).
    fn finalize_through(&mut self, bp: &Blueprint, last: i64) {
        while let Some(first) = self.open.first().copied() {
            if first.hour > last {
                break;
            }
            self.open.remove(0);
            self.finalize(bp, first.hour, first.count);
        }
        if last > self.finalized_through {
            let from = (self.finalized_through + 1).max(last - MAX_GAP_HOURS);
            for h in from..=last {
                let s = hour_of_week(bp.timezone, h * HOUR_MS) as usize;
                self.slots[s].update(0);
            }
            self.finalized_through = last;
        }
    }

    /// Counts an in-order event and returns the view of its hour.
    pub fn observe(&mut self, bp: &Blueprint, ts: i64, watermark: i64) -> HourView {
        let hour = ts.div_euclid(HOUR_MS);
        let first = *self.first_hour.get_or_insert_with(|| {
            self.finalized_through = hour - 1;
            hour
        });
        let closed = (watermark - bp.allowed_lateness_ms).div_euclid(HOUR_MS) - 1;
        self.finalize_through(bp, closed);
        if hour <= self.finalized_through {
            return HourView::default();
        }
        let pos = match self.open.iter().position(|o| o.hour >= hour) {
            Some(p) if self.open[p].hour == hour => p,
            found => {
                let p = found.unwrap_or(self.open.len());
                let slot = hour_of_week(bp.timezone, hour * HOUR_MS);
                let stats = self.slots[slot as usize];
                let l = &bp.learned;
                let warm = l.enabled
                    && (hour - first) * HOUR_MS >= l.warmup_ms
                    && u32::from(stats.n) >= l.min_slot_observations;
                let spread = (stats.var.max(stats.mean).max(1.0) as f64).sqrt();
                let bound = if warm {
                    ((stats.mean as f64 + 3.0 * spread).ceil() as u32).max(l.min_hourly_count)
                } else {
                    u32::MAX
                };
                self.open.insert(
                    p,
                    OpenHour {
                        hour,
                        count: 0,
                        slot,
                        warm,
                        bound,
                        exact: false,
                        stats,
                    },
                );
                p
            }
        };
        let l = &bp.learned;
        let o = &mut self.open[pos];
        o.count = o.count.saturating_add(1);
        let stats = o.stats;
        if o.warm && !o.exact && o.count >= o.bound {
            let (mean, var) = predictive(stats);
            let t = count_threshold(mean, var, l.sensitivity);
            o.bound = u32::try_from(t).unwrap_or(u32::MAX).max(l.min_hourly_count);
            o.exact = true;
        }
        let rare =
            o.warm && (f64::from(stats.active) / f64::from(stats.n.max(1))) <= l.rare_hour_share;
        HourView {
            count: o.count,
            slot: o.slot,
            warm: o.warm,
            over: o.warm && o.exact && o.count >= o.bound,
            threshold: o.bound,
            stats,
            rare,
        }
    }
}

/// Assumed least day-to-day variation of an hourly rate (coefficient of variation).
const MIN_RATE_CV: f64 = 0.35;

/// Mean and variance of the next hour's count: the slot's estimate widened for the uncertainty of
/// a mean learned from few weeks, and for day-to-day variation no short history shows.
fn predictive(s: SlotStats) -> (f64, f64) {
    let mean = f64::from(s.mean);
    let n = f64::from(s.n.max(1));
    let var = f64::from(s.var).max(mean) * (1.0 + 1.0 / n) + (MIN_RATE_CV * mean).powi(2);
    (mean, var)
}

/// Smallest count `c` with P(X ≥ c) < `alpha` for hourly counts of this mean and variance:
/// negative binomial when over-dispersed, Poisson otherwise.
pub fn count_threshold(mean: f64, var: f64, alpha: f64) -> u64 {
    let mean = if mean.is_finite() {
        mean.max(0.05)
    } else {
        0.05
    };
    let var = if var.is_finite() { var } else { mean };
    enum Dist {
        NegBin(NegativeBinomial),
        Poisson(Poisson),
    }
    let dist = if var > mean * 1.05 {
        let r = mean * mean / (var - mean);
        match NegativeBinomial::new(r, r / (r + mean)) {
            Ok(d) => Dist::NegBin(d),
            Err(_) => return u64::MAX,
        }
    } else {
        match Poisson::new(mean) {
            Ok(d) => Dist::Poisson(d),
            Err(_) => return u64::MAX,
        }
    };
    let sf = |x: u64| match &dist {
        Dist::NegBin(d) => d.sf(x),
        Dist::Poisson(d) => d.sf(x),
    };
    // Exponential then binary search for the smallest x with P(X > x) < alpha.
    let mut hi = (mean.ceil() as u64).max(1);
    while sf(hi) >= alpha {
        if hi > (1 << 40) {
            return u64::MAX;
        }
        hi *= 2;
    }
    let mut lo = 0;
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if sf(mid) < alpha {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_threshold_is_far_in_the_tail() {
        let t = count_threshold(10.0, 10.0, 1e-6);
        // P(Poisson(10) >= 28) ~ 2.3e-6, P(>= 29) ~ 7.6e-7
        assert_eq!(t, 29);
        assert!(count_threshold(10.0, 10.0, 1e-3) < t);
    }

    #[test]
    fn overdispersed_counts_raise_the_threshold() {
        assert!(count_threshold(10.0, 100.0, 1e-6) > count_threshold(10.0, 10.0, 1e-6));
    }

    #[test]
    fn degenerate_inputs_do_not_panic() {
        for (m, v) in [
            (0.0, 0.0),
            (f64::NAN, 1.0),
            (1.0, f64::INFINITY),
            (1e9, 1e18),
            (-1.0, -1.0),
        ] {
            let _ = count_threshold(m, v, 1e-6);
        }
    }
}
