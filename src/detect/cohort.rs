//! Cohorts: agents that move together are one fleet event.
//!
//! A cohort is, by default, the agents of one blueprint (a blueprint may group them by their
//! `group` field instead). Each agent is judged against its own history; when a large part of
//! its cohort deviates the same way at the same time — a month-end close that triples every
//! finance agent's calls, a release, a new tool rolled out, a Saturday of work — that is one
//! fleet shift, reported once for the cohort. The members' findings it explains are not
//! incidents and add no kill weight; a member far beyond the shift is still judged on its own,
//! against the shifted expectation.
//!
//! This module holds the pure parts: what a finding needs to be re-judged under a shift
//! ([`ShiftTest`]), the rate factors the detectors apply ([`CohortShift`]), and the evaluations
//! of a cohort from what its members show ([`RateEvaluation`], [`Presence`]). The engine holds
//! the findings back while their cohort may still show a shift, runs the evaluations over the
//! members of its partition, and reports the shifts.

use serde::{Deserialize, Serialize};

use super::scales::SCALES;
use super::stats::improbable_sessions;
use crate::blueprint::CohortRules;

/// Expected calls in a window from which a member's rate tells anything about a shift.
pub const MIN_EXPECTED: f64 = 3.0;
/// A member whose calls in a window are at least this many times its expected is "up".
pub const UP_RATIO: f64 = 1.5;

/// What a cohort shift is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShiftKind {
    /// Calls (or turns) per window: frequency findings.
    Rate,
    /// Data volume per call: learned volume findings.
    Volume,
    /// Activity at hours or on days the members do not work.
    OffHours,
    /// Matches of one sequence rule in forms the members never made.
    Sequence,
}

/// Number of [`ShiftKind`]s.
pub const SHIFT_KINDS: usize = 4;

impl ShiftKind {
    /// Every kind, in index order.
    pub const ALL: [ShiftKind; SHIFT_KINDS] = [
        ShiftKind::Rate,
        ShiftKind::Volume,
        ShiftKind::OffHours,
        ShiftKind::Sequence,
    ];

    /// Its position in [`ShiftKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            ShiftKind::Rate => "calls",
            ShiftKind::Volume => "data volume",
            ShiftKind::OffHours => "working hours",
            ShiftKind::Sequence => "tool sequences",
        }
    }
}

/// How a finding may be explained by a shift of its agent's cohort, with the figures needed to
/// judge it again against the shifted expectation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ShiftTest {
    /// A count of calls (or turns) in a window against the agent's expected count: explained
    /// while the count is not improbable at the cohort's factor for that window.
    Rate {
        /// The window (index into the frequency windows; the static window is judged with the
        /// shortest one's factor).
        scale: u8,
        /// Calls (or turns) counted.
        observed: u32,
        /// The agent's own expected count, before any shift.
        expected: f32,
        /// How clustered the counted units are (1 for turns).
        dispersion: f32,
        /// Day-to-day spread of the agent's rate.
        cv: f32,
        /// Least ratio to the expected count that alerts in this window.
        ratio: f32,
        /// Least count that alerts in any window.
        min_count: u32,
    },
    /// A run of calls at `ratio` times their tools' usual sizes: explained within
    /// [`CohortRules::beyond`] times the ratio typical of the shift.
    Volume {
        /// Bytes moved over the bytes typical of as many calls.
        ratio: f32,
    },
    /// Activity at an hour or on a day the agent does not work: explained by the shift.
    OffHours,
    /// A match of sequence rule `rule` in a form the agent never made: explained by a shift
    /// of the same rule.
    Sequence {
        /// The rule's index in its blueprint.
        rule: u32,
    },
}

impl ShiftTest {
    /// What the shift that could explain it is about.
    pub fn kind(&self) -> ShiftKind {
        match self {
            ShiftTest::Rate { .. } => ShiftKind::Rate,
            ShiftTest::Volume { .. } => ShiftKind::Volume,
            ShiftTest::OffHours => ShiftKind::OffHours,
            ShiftTest::Sequence { .. } => ShiftKind::Sequence,
        }
    }

    /// The sequence rule it is about (0 for other kinds).
    pub fn rule(&self) -> u32 {
        match self {
            ShiftTest::Sequence { rule } => *rule,
            _ => 0,
        }
    }

    /// Whether a rate count is explained by `factors`: the count is below what alerts at the
    /// expected count times the window's factor. `sensitivity`: the blueprint's tail probability.
    pub fn explained_by_rate(&self, factors: &[f32; SCALES], sensitivity: f64) -> bool {
        let ShiftTest::Rate {
            scale,
            observed,
            expected,
            dispersion,
            cv,
            ratio,
            min_count,
        } = *self
        else {
            return false;
        };
        let f = f64::from(factors[usize::from(scale).min(SCALES - 1)]).max(1.0);
        if f <= 1.0 {
            return false;
        }
        // A burst for the agent (its ratio to its own usual count) that its cohort's shift makes
        // probable.
        let e = f64::from(expected) * f;
        let d = f64::from(dispersion).max(1.0);
        let improbable = f64::from(improbable_sessions(e / d, f64::from(cv), sensitivity)) * d;
        let bound = (f64::from(ratio) * f64::from(expected))
            .ceil()
            .max(improbable)
            .max(f64::from(min_count));
        f64::from(observed) < bound
    }
}

/// The shift of call rates the detectors apply to an agent's expected counts: one factor per
/// window (1 when the cohort runs at its members' usual rates).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CohortShift {
    /// Changes whenever the factors do, so detectors recompute their limits.
    pub epoch: u32,
    /// Factor per window (5 min, 15 min, 1 h, 4 h).
    pub factors: [f32; SCALES],
}

impl CohortShift {
    /// No shift.
    pub const NONE: CohortShift = CohortShift {
        epoch: 0,
        factors: [1.0; SCALES],
    };

    /// The factor of window `scale`.
    pub fn factor(&self, scale: usize) -> f64 {
        f64::from(self.factors[scale.min(SCALES - 1)]).max(1.0)
    }
}

impl Default for CohortShift {
    fn default() -> Self {
        CohortShift::NONE
    }
}

/// How late the stream delivers calls, so that a cohort is judged once its members' calls up to
/// a time have arrived: seconds for a live stream, an hour for a source that sends whole
/// hour-long traces one agent after another. Per ten minutes of the newest event time, over the
/// last two hours, the in-order calls of known agents are counted by how far behind the newest
/// event time they arrived (in powers of two of milliseconds); the lag is the delay 99 % of them
/// came within, rounded up to a power of two. Old-dated calls raise it for two hours at most.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "LagRecord", into = "LagRecord")]
pub struct DeliveryLag {
    /// Ten-minute bucket of the newest event time counted.
    bucket: i64,
    /// Per bucket (modulo [`LAG_BUCKETS`]): calls by the power of two of the milliseconds they
    /// were behind.
    counts: [[u32; LAG_BINS]; LAG_BUCKETS],
    /// The same summed over the buckets (not stored: summed again when read).
    bins: [u64; LAG_BINS],
}

/// What a [`DeliveryLag`] stores: its bucket and counts.
#[derive(Serialize, Deserialize)]
struct LagRecord {
    /// Ten-minute bucket of the newest event time counted.
    bucket: i64,
    /// Per bucket: calls by the power of two of the milliseconds they were behind.
    counts: [[u32; LAG_BINS]; LAG_BUCKETS],
}

impl From<LagRecord> for DeliveryLag {
    fn from(record: LagRecord) -> Self {
        let mut bins = [0u64; LAG_BINS];
        for row in &record.counts {
            for (total, c) in bins.iter_mut().zip(row) {
                *total += u64::from(*c);
            }
        }
        DeliveryLag {
            bucket: record.bucket,
            counts: record.counts,
            bins,
        }
    }
}

impl From<DeliveryLag> for LagRecord {
    fn from(lag: DeliveryLag) -> Self {
        LagRecord {
            bucket: lag.bucket,
            counts: lag.counts,
        }
    }
}

/// Ten-minute buckets of event time a [`DeliveryLag`] looks back over (two hours).
const LAG_BUCKETS: usize = 12;
/// Powers of two of milliseconds a delay is counted in (up to about 24 days).
const LAG_BINS: usize = 32;
/// Width of a lag bucket (ms).
const LAG_BUCKET_MS: i64 = 600_000;

impl Default for DeliveryLag {
    fn default() -> Self {
        DeliveryLag {
            bucket: i64::MIN,
            counts: [[0; LAG_BINS]; LAG_BUCKETS],
            bins: [0; LAG_BINS],
        }
    }
}

impl DeliveryLag {
    /// Counts one call delivered `behind` ms after the newest event time, `newest`.
    pub fn observe(&mut self, newest: i64, behind: i64) {
        // The common case: the newest event time is still in the current bucket.
        if newest.div_euclid(LAG_BUCKET_MS) != self.bucket {
            self.advance(newest.div_euclid(LAG_BUCKET_MS));
        }
        let bin = ((64 - (behind.max(0) as u64).leading_zeros()) as usize).min(LAG_BINS - 1);
        // A call of an earlier bucket than the newest counts in the newest.
        let slot = &mut self.counts[self.bucket.rem_euclid(LAG_BUCKETS as i64) as usize][bin];
        if *slot < u32::MAX {
            *slot += 1;
            self.bins[bin] += 1;
        }
    }

    /// Moves on to bucket `b` (a later one; an earlier one is ignored), forgetting the buckets
    /// that leave the last two hours.
    fn advance(&mut self, b: i64) {
        if b <= self.bucket {
            return;
        }
        if self.bucket == i64::MIN || b - self.bucket >= LAG_BUCKETS as i64 {
            self.counts = [[0; LAG_BINS]; LAG_BUCKETS];
            self.bins = [0; LAG_BINS];
        } else {
            for k in (self.bucket + 1)..=b {
                let row = &mut self.counts[k.rem_euclid(LAG_BUCKETS as i64) as usize];
                for (total, c) in self.bins.iter_mut().zip(row.iter()) {
                    *total -= u64::from(*c);
                }
                *row = [0; LAG_BINS];
            }
        }
        self.bucket = b;
    }

    /// The delay 99 % of the last two hours' calls came within (ms, rounded up to a power of
    /// two), at most `cap`.
    pub fn value(&self, cap: i64) -> i64 {
        let allowed = self.bins.iter().sum::<u64>() / 100;
        let mut tail = 0u64;
        for k in (0..LAG_BINS).rev() {
            tail += self.bins[k];
            if tail > allowed {
                return if k == 0 {
                    0
                } else {
                    (1i64 << k).min(cap.max(0))
                };
            }
        }
        0
    }
}

/// What an evaluation reads of one member: per window, its calls and its own expected calls
/// at the time of the evaluation (members with no baseline of their own are left out).
pub type Member = [(u32, f64); SCALES];

/// A cohort's call rates against its members' own expectations, per window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateEvaluation {
    /// Members expected to make at least `MIN_EXPECTED` calls in the window.
    pub eligible: [u32; SCALES],
    /// Of them, members at `UP_RATIO` times their expected or more.
    pub up: [u32; SCALES],
    /// Median ratio of calls to expected over the eligible members (1 when none).
    pub median: [f32; SCALES],
}

impl RateEvaluation {
    /// Evaluates the members' windows. A silent member counts with no calls: a cohort where
    /// half the agents are quiet is not shifted however busy the other half is.
    pub fn of(members: &[Member]) -> RateEvaluation {
        let mut ev = RateEvaluation {
            eligible: [0; SCALES],
            up: [0; SCALES],
            median: [1.0; SCALES],
        };
        let mut ratios = Vec::with_capacity(members.len());
        for i in 0..SCALES {
            ratios.clear();
            for m in members {
                let (c, e) = m[i];
                if e >= MIN_EXPECTED {
                    let r = f64::from(c) / e;
                    ev.up[i] += u32::from(r >= UP_RATIO);
                    ratios.push(r);
                }
            }
            ev.eligible[i] = ratios.len() as u32;
            if !ratios.is_empty() {
                ratios.sort_by(f64::total_cmp);
                let n = ratios.len();
                let m = if n % 2 == 1 {
                    ratios[n / 2]
                } else {
                    (ratios[n / 2 - 1] + ratios[n / 2]) / 2.0
                };
                ev.median[i] = m as f32;
            }
        }
        ev
    }

    /// Whether window `i` shows a shift: enough eligible members, a large enough share of them
    /// up, and their median at least the least factor.
    pub fn shows(&self, i: usize, rules: &CohortRules) -> bool {
        let n = self.eligible[i];
        n >= rules.min_agents
            && f64::from(self.up[i]) >= rules.share * f64::from(n)
            && f64::from(self.median[i]) >= rules.min_factor
    }

    /// The window that shows a shift most clearly (the highest median), if any.
    pub fn shifted(&self, rules: &CohortRules) -> Option<usize> {
        (0..SCALES)
            .filter(|&i| self.shows(i, rules))
            .max_by(|&a, &b| self.median[a].total_cmp(&self.median[b]))
    }

    /// The factor for each window: its members' median ratio (at least 1), or, where too few
    /// members are eligible in it, that of the nearest window with enough of them.
    pub fn factors(&self, rules: &CohortRules) -> [f32; SCALES] {
        let mut f = [1.0f32; SCALES];
        for (i, out) in f.iter_mut().enumerate() {
            let nearest = (0..SCALES)
                .filter(|&j| self.eligible[j] >= rules.min_agents)
                .min_by_key(|&j| (j.abs_diff(i), usize::from(j < i)));
            if let Some(j) = nearest {
                *out = self.median[j].max(1.0);
            }
        }
        f
    }
}

/// A cohort's members showing one kind of finding (volume, off-hours, a sequence rule) within
/// the evaluation window, against those active in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Presence {
    /// Members with a finding of the kind in the window (explained, held or raised).
    pub found: u32,
    /// Members with any call in the window.
    pub active: u32,
}

impl Presence {
    /// Whether it is a shift: enough members, and a large enough share of the active ones.
    pub fn shifted(&self, rules: &CohortRules) -> bool {
        self.found >= rules.min_agents
            && f64::from(self.found) >= rules.share * f64::from(self.active)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> CohortRules {
        CohortRules::default()
    }

    /// `n` members expecting `e` calls in every window, making `ratio` times that.
    fn members(n: usize, e: f64, ratio: f64) -> Vec<Member> {
        (0..n)
            .map(|_| [((e * ratio).round() as u32, e); SCALES])
            .collect()
    }

    #[test]
    fn a_cohort_at_three_times_its_rate_shows_a_shift_of_three() {
        let ev = RateEvaluation::of(&members(10, 10.0, 3.0));
        assert!(ev.shifted(&rules()).is_some());
        assert_eq!(ev.factors(&rules()), [3.0; SCALES]);
    }

    #[test]
    fn one_busy_member_does_not_shift_its_cohort() {
        let mut m = members(9, 10.0, 1.0);
        m.extend(members(1, 10.0, 30.0));
        let ev = RateEvaluation::of(&m);
        assert_eq!(ev.shifted(&rules()), None);
        assert_eq!(ev.median, [1.0; SCALES]);
    }

    #[test]
    fn silent_members_count_against_a_shift() {
        // Four busy members and six quiet ones that usually work at this hour.
        let mut m = members(4, 10.0, 3.0);
        m.extend(members(6, 10.0, 0.0));
        assert_eq!(RateEvaluation::of(&m).shifted(&rules()), None);
    }

    #[test]
    fn a_cohort_too_small_shows_no_shift() {
        let ev = RateEvaluation::of(&members(rules().min_agents as usize - 1, 10.0, 3.0));
        assert_eq!(ev.shifted(&rules()), None);
    }

    #[test]
    fn members_expecting_almost_nothing_are_not_eligible() {
        let ev = RateEvaluation::of(&members(20, 1.0, 3.0));
        assert_eq!(ev.eligible, [0; SCALES]);
        assert_eq!(ev.factors(&rules()), [1.0; SCALES]);
    }

    #[test]
    fn a_window_with_too_few_eligible_members_takes_the_nearest_factor() {
        // Short windows expect too little to judge; the hour shows 3×.
        let m: Vec<Member> = (0..10)
            .map(|_| [(1, 0.5), (2, 1.5), (30, 10.0), (60, 40.0)])
            .collect();
        let ev = RateEvaluation::of(&m);
        let f = ev.factors(&rules());
        assert_eq!((f[0], f[1], f[2], f[3]), (3.0, 3.0, 3.0, 1.5));
    }

    fn test(observed: u32, expected: f32) -> ShiftTest {
        ShiftTest::Rate {
            scale: 2,
            observed,
            expected,
            dispersion: 1.0,
            cv: 0.3,
            ratio: 4.0,
            min_count: 5,
        }
    }

    #[test]
    fn a_count_at_the_cohort_s_factor_is_explained_and_one_far_beyond_is_not() {
        let f = [3.0; SCALES];
        assert!(
            test(31, 10.0).explained_by_rate(&f, 1e-6),
            "3× in a 3× cohort"
        );
        assert!(
            test(60, 10.0).explained_by_rate(&f, 1e-6),
            "6× is within a 3× cohort's spread"
        );
        assert!(
            !test(300, 10.0).explained_by_rate(&f, 1e-6),
            "30× is beyond it"
        );
        assert!(
            !test(31, 10.0).explained_by_rate(&[1.0; SCALES], 1e-6),
            "no shift explains nothing"
        );
    }

    #[test]
    fn the_delivery_lag_follows_how_late_calls_arrive_and_forgets_after_two_hours() {
        let t0 = 1_772_409_600_000i64;
        let mut live = DeliveryLag::default();
        let mut batched = DeliveryLag::default();
        for i in 0..100_000i64 {
            let now = t0 + i * 30;
            live.observe(now, (i * 7919) % 5_000);
            batched.observe(now, (i * 7919) % 3_600_000);
        }
        let l = live.value(i64::MAX);
        assert!((4_096..=8_192).contains(&l), "{l}");
        let b = batched.value(i64::MAX);
        assert!((2_097_152..=4_194_304).contains(&b), "{b}");
        assert_eq!(batched.value(900_000), 900_000, "capped");
        // Stored and read back, it holds the same figures (the sums are derived again).
        let stored = serde_json::to_string(&batched).expect("serialise");
        assert!(!stored.contains("bins"), "the sums are not stored");
        let read: DeliveryLag = serde_json::from_str(&stored).expect("deserialise");
        assert_eq!(read, batched);
        // Two hours of calls on time: the old delays are forgotten.
        let later = t0 + 100_000 * 30;
        for i in 0..25 * 60 {
            batched.observe(later + i * 5_000, 10);
        }
        assert!(batched.value(i64::MAX) <= 16, "{}", batched.value(i64::MAX));
    }

    #[test]
    fn presence_needs_enough_members_and_a_share_of_the_active_ones() {
        let r = rules();
        assert!(Presence {
            found: 8,
            active: 10
        }
        .shifted(&r));
        assert!(!Presence {
            found: 8,
            active: 40
        }
        .shifted(&r));
        assert!(!Presence {
            found: 2,
            active: 2
        }
        .shifted(&r));
    }
}
