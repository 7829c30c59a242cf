//! Sliding windows on event time: fixed-width buckets that tolerate late events.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::prefetch;

/// Buckets per window: the window slides in steps of `window / BUCKETS`.
pub const BUCKETS: i64 = 60;

/// Buckets a ring makes room for at once: the whole span of the usual windows (91 for a window
/// of a minute and a lateness of 30 s), without reserving megabytes for a short window with a
/// long lateness (a span of up to 37,561 buckets), which grows as it fills instead.
const RESERVED: usize = 256;

/// A sliding-window sum with bucket resolution `window / 60`, keeping enough buckets for late
/// events within the allowed lateness.
///
/// Only the buckets that hold something are stored, oldest first, so an agent that calls a few
/// times a minute touches one or two cache lines per event instead of the whole span (most agents'
/// calls are further apart than a window, which empties it).
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Ring<T> {
    width: i64,
    /// Bucket indices kept: the window's and enough before it for the allowed lateness.
    span: i64,
    head: i64,
    /// Sum of the window ending at `head` (kept incrementally, so an in-order event costs O(1)).
    sum: T,
    /// `(bucket index, sum)` of the buckets that were added to, by index, all within
    /// `(head - span, head]`.
    buckets: VecDeque<(i64, T)>,
}

/// A copy keeps the room reserved for the whole span, so the copy does not grow on its next
/// events (an engine restored from a copy runs as the original would).
impl<T: Copy> Clone for Ring<T> {
    fn clone(&self) -> Self {
        let mut buckets = VecDeque::with_capacity(self.buckets.capacity());
        buckets.extend(self.buckets.iter().copied());
        Ring {
            width: self.width,
            span: self.span,
            head: self.head,
            sum: self.sum,
            buckets,
        }
    }
}

impl<T: Copy + Default + std::ops::AddAssign + std::ops::SubAssign + PartialOrd> Ring<T> {
    /// An empty ring of the same shape, holding no memory.
    pub fn emptied(&self) -> Ring<T> {
        Ring {
            width: self.width,
            span: self.span,
            head: i64::MIN,
            sum: T::default(),
            buckets: VecDeque::new(),
        }
    }

    /// A ring for a window and lateness (both ms).
    pub fn new(window_ms: i64, lateness_ms: i64) -> Ring<T> {
        let (width, span) = Self::shape(window_ms, lateness_ms);
        Ring {
            width,
            span,
            head: i64::MIN,
            sum: T::default(),
            buckets: VecDeque::new(),
        }
    }

    /// Bucket width and span for a window and lateness.
    fn shape(window_ms: i64, lateness_ms: i64) -> (i64, i64) {
        let width = (window_ms / BUCKETS).max(1);
        (width, BUCKETS + (lateness_ms + width - 1) / width + 1)
    }

    /// Whether the ring was built for these parameters.
    pub fn fits(&self, window_ms: i64, lateness_ms: i64) -> bool {
        if self.width != (window_ms / BUCKETS).max(1) {
            return false;
        }
        // Checked on every event: the span's lateness part, ceil(lateness / width), is compared
        // by multiplying back instead of dividing.
        let extra = self.span - BUCKETS - 1;
        match (
            lateness_ms >= 0,
            (extra - 1).checked_mul(self.width),
            extra.checked_mul(self.width),
        ) {
            (true, Some(lo), Some(hi)) => lo < lateness_ms && lateness_ms <= hi,
            _ => (self.width, self.span) == Self::shape(window_ms, lateness_ms),
        }
    }

    /// Announces an add (see [`crate::prefetch`]): the ends of the stored buckets, where
    /// an in-order add lands and expired buckets leave.
    pub fn prefetch(&self) {
        let (a, b) = self.buckets.as_slices();
        // Even when empty, `a` starts where the next bucket goes (a prefetch never faults).
        prefetch::line(a.as_ptr());
        if let Some(newest) = b.last().or(a.last()) {
            prefetch::line(newest);
        }
    }

    /// Adds a value at an event time; returns `false` (and adds nothing) if it is older than the ring holds.
    pub fn add(&mut self, ts: i64, v: T) -> bool {
        let idx = ts.div_euclid(self.width);
        if self.head == i64::MIN || idx - self.head >= BUCKETS {
            // Nothing of the old window survives.
            self.buckets.clear();
            self.sum = T::default();
            self.head = idx;
        } else if idx > self.head {
            // Buckets head+1-BUCKETS ..= idx-BUCKETS leave the window; those at or before
            // idx-span leave the ring.
            let first = self
                .buckets
                .partition_point(|&(i, _)| i <= self.head - BUCKETS);
            let mut leaving = T::default();
            for &(_, x) in self
                .buckets
                .range(first..)
                .take_while(|&&(i, _)| i <= idx - BUCKETS)
            {
                leaving += x;
            }
            self.sum -= leaving;
            while self
                .buckets
                .front()
                .is_some_and(|&(i, _)| i <= idx - self.span)
            {
                self.buckets.pop_front();
            }
            self.head = idx;
        } else if self.head - idx >= self.span {
            return false;
        }
        match self.buckets.back_mut() {
            Some((i, x)) if *i == idx => *x += v,
            Some((i, _)) if *i > idx => {
                // A late event: its bucket is found from the oldest end.
                let at = self.buckets.partition_point(|&(i, _)| i < idx);
                match self.buckets.get_mut(at) {
                    Some((i, x)) if *i == idx => *x += v,
                    _ => self.buckets.insert(at, (idx, v)),
                }
            }
            _ => {
                // Room for the whole span at once (up to RESERVED), so the ring allocates once,
                // not on later events when an agent calls faster than before.
                if self.buckets.len() == self.buckets.capacity() {
                    let room = usize::try_from(self.span).unwrap_or(0).min(RESERVED);
                    match room.checked_sub(self.buckets.len()) {
                        Some(more) if more > 0 => self.buckets.reserve_exact(more),
                        _ => self.buckets.reserve(1),
                    }
                }
                self.buckets.push_back((idx, v));
            }
        }
        if idx > self.head - BUCKETS {
            self.sum += v;
        }
        true
    }

    /// Sum of the window ending at bucket `end`.
    fn sum_ending(&self, end: i64) -> T {
        let mut sum = T::default();
        for &(_, x) in self
            .buckets
            .iter()
            .skip_while(|&&(i, _)| i <= end - BUCKETS)
            .take_while(|&&(i, _)| i <= end)
        {
            sum += x;
        }
        sum
    }

    /// The largest window sum over the windows that contain `ts` and end no later than the newest bucket.
    pub fn max_window_containing(&self, ts: i64) -> T {
        if self.head == i64::MIN {
            return T::default();
        }
        let idx = ts.div_euclid(self.width);
        if idx >= self.head {
            return self.sum;
        }
        // Values are never negative, so moving a window's end past an empty bucket never raises
        // its sum: the largest is at `idx` or at a stored bucket after it.
        let last = (idx + BUCKETS - 1).min(self.head);
        let mut best = self.sum_ending(idx);
        for &(end, _) in self.buckets.iter().filter(|&&(i, _)| i > idx && i <= last) {
            let s = self.sum_ending(end);
            if s > best {
                best = s;
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// The ring's contract, kept naively: every accepted value by bucket index; an event a whole
    /// window after the newest forgets everything; one older than the ring's span is refused.
    #[derive(Default)]
    struct Model {
        values: BTreeMap<i64, u64>,
        head: Option<i64>,
    }

    impl Model {
        fn add(&mut self, idx: i64, v: u64, len: i64) -> bool {
            match self.head {
                Some(h) if idx - h >= BUCKETS => self.values.clear(),
                Some(h) if h - idx >= len => return false,
                _ => {}
            }
            self.head = Some(self.head.map_or(idx, |h| h.max(idx)));
            *self.values.entry(idx).or_default() += v;
            true
        }

        fn sum(&self, lo: i64, hi: i64) -> u64 {
            if lo > hi {
                return 0;
            }
            self.values.range(lo..=hi).map(|(_, v)| v).sum()
        }

        fn max_window_containing(&self, idx: i64, len: i64) -> u64 {
            let Some(h) = self.head else { return 0 };
            if idx >= h {
                return self.sum(h - BUCKETS + 1, h);
            }
            (idx..=(idx + BUCKETS - 1).min(h))
                .map(|end| self.sum((end - BUCKETS + 1).max(h - len + 1), end))
                .max()
                .unwrap_or(0)
        }
    }

    proptest! {
        /// `fits` (which avoids dividing) says exactly whether the shapes are equal.
        #[test]
        fn fits_exactly_the_rings_of_the_same_shape(
            w0 in 0i64..200_000, l0 in 0i64..100_000, w in 0i64..200_000, l in -1000i64..100_000,
            same_width in any::<bool>(), near in any::<bool>(), k in -1i64..=1, d in -1i64..=1,
        ) {
            let w = if same_width { w0 } else { w };
            // A lateness next to a multiple of the bucket width near the ring's own, where the
            // rounding up decides.
            let width = (w0 / BUCKETS).max(1);
            let l = if near { ((l0 + width - 1) / width + k) * width + d } else { l };
            let r: Ring<u32> = Ring::new(w0, l0);
            prop_assert_eq!(r.fits(w, l), Ring::<u32>::shape(w0, l0) == Ring::<u32>::shape(w, l));
            prop_assert!(r.fits(w0, l0));
        }

        #[test]
        fn agrees_with_a_model_that_keeps_every_value(
            steps in proptest::collection::vec((0u8..4, 0i64..100_000, 0i64..45_000, 1u64..1000), 1..300)
        ) {
            let mut r: Ring<u64> = Ring::new(60_000, 30_000);
            let len = r.span;
            let mut m = Model::default();
            let mut t = 0i64;
            for (kind, gap, late, v) in steps {
                // Gaps of nothing, seconds, about a window, or minutes; some events late, a few
                // later than the lateness.
                t += match kind {
                    0 => 0,
                    1 => gap % 3000,
                    2 => 40_000 + gap % 40_000,
                    _ => gap * 10,
                };
                let ts = t - if late > 30_000 { late * 3 } else { late };
                prop_assert_eq!(r.add(ts, v), m.add(ts.div_euclid(r.width), v, len));
                prop_assert_eq!(r.sum, r.sum_ending(r.head));
                for probe in [ts, t, t - 20_000, t - 59_000, t - 95_000] {
                    prop_assert_eq!(
                        r.max_window_containing(probe),
                        m.max_window_containing(probe.div_euclid(r.width), len),
                        "probe {}", probe
                    );
                }
            }
        }
    }

    #[test]
    fn a_ring_makes_room_once_for_its_span_or_grows_by_doubling_past_the_reserve() {
        let mut r: Ring<u32> = Ring::new(60_000, 30_000);
        r.add(0, 1);
        assert_eq!(r.buckets.capacity(), r.span as usize);
        // A one-second window with ten minutes of lateness: 37,561 buckets of span.
        let mut r: Ring<u32> = Ring::new(1000, 600_000);
        let mut grew = 0;
        let mut cap = 0;
        for t in 0..5000 {
            // Each event fills the next bucket (16 ms wide); none leaves the span.
            r.add(t * 16, 1);
            if r.buckets.capacity() != cap {
                cap = r.buckets.capacity();
                grew += 1;
            }
        }
        assert_eq!(r.buckets.len(), 5000);
        assert!(r.buckets.capacity() < 2 * 5000 && grew <= 6, "{grew} {cap}");
    }

    #[test]
    fn counts_within_the_window_only() {
        let mut r: Ring<u32> = Ring::new(60_000, 30_000);
        for s in 0..120 {
            r.add(s * 1000, 1);
        }
        assert_eq!(r.max_window_containing(119_000), 60);
        r.add(300_000, 1);
        assert_eq!(r.max_window_containing(300_000), 1);
    }

    #[test]
    fn late_events_within_lateness_land_in_their_window() {
        let mut r: Ring<u32> = Ring::new(60_000, 30_000);
        r.add(100_000, 1);
        assert!(r.add(75_000, 1));
        assert_eq!(r.max_window_containing(75_000), 2);
        assert!(!r.add(100_000 - 200_000, 1), "far too late");
    }

    #[test]
    fn running_sum_equals_recomputed_sum() {
        let mut r: Ring<u64> = Ring::new(60_000, 30_000);
        let mut t = 0;
        for i in 0..5000u64 {
            t += [0, 300, 1000, 2500, 61_000, 200_000][(i * 7 % 6) as usize];
            let late = if i % 5 == 0 {
                (i % 25) as i64 * 1000
            } else {
                0
            };
            r.add(t - late, i % 13);
            assert_eq!(r.sum, r.sum_ending(r.head), "step {i}");
        }
    }

    #[test]
    fn a_late_event_counts_in_later_windows_that_contain_it() {
        let mut r: Ring<u32> = Ring::new(60_000, 30_000);
        for s in 0..40 {
            r.add(60_000 + s * 1000, 1);
        }
        // A late event at 50 s shares the window (50 s, 110 s] with the 40 later events.
        r.add(50_000, 1);
        assert_eq!(r.max_window_containing(50_000), 41);
    }
}
