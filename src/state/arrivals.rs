//! New agents per hour of a partition's event time: a burst far above the fleet's usual is an
//! agent-id flood (reported as a [`Flood`] of `"agents"`).

use super::identity::{Flood, HOUR_MS};

/// New agents of a partition within an hour of event time beyond which the burst is reported,
/// unless ten times the busiest hour seen so far is more. The partition's first day of event
/// time is its fleet arriving: not judged.
pub const NEW_AGENTS_PER_HOUR: u32 = 1_000;

/// New agents per hour of a partition's event time.
#[derive(Debug, Default, Clone)]
pub struct Arrivals {
    hour: i64,
    count: u32,
    /// The threshold of the hour being counted (0 while the fleet arrives).
    limit: u32,
    busiest: u32,
}

impl Arrivals {
    /// Counts a new agent at the partition's event time `latest` (its first event at
    /// `origin`): a burst when the hour's count crosses its threshold.
    pub fn arrive(&mut self, latest: i64, origin: Option<i64>) -> Option<Flood> {
        const DAY_MS: i64 = 24 * HOUR_MS;
        let settled = origin.is_some_and(|o| latest >= o.saturating_add(DAY_MS));
        let hour = latest.div_euclid(HOUR_MS).saturating_mul(HOUR_MS);
        if hour > self.hour {
            // The usual: the busiest settled hour, a flood counting only up to its threshold.
            if self.limit > 0 {
                self.busiest = self.busiest.max(self.count.min(self.limit));
            }
            self.hour = hour;
            self.count = 0;
            self.limit = 0;
        }
        self.count += 1;
        if !settled {
            return None;
        }
        if self.limit == 0 {
            self.limit = NEW_AGENTS_PER_HOUR.max(self.busiest.saturating_mul(10));
        }
        let limit = self.limit;
        (self.count == limit + 1).then_some(Flood {
            of: "agents",
            source: None,
            count: self.count,
            limit,
            hour,
            at: latest,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// New agents are judged after the partition's first day of event time (its fleet
    /// arriving): the usual trickle is not a flood, a thousand and one in an hour is, once.
    #[test]
    fn a_burst_of_new_agents_after_the_first_day_is_a_flood() {
        let origin = 1_772_550_000_000;
        let mut a = Arrivals::default();
        for i in 0..5_000 {
            assert_eq!(
                a.arrive(origin + i, Some(origin)),
                None,
                "the fleet arriving"
            );
        }
        let day = origin + 24 * HOUR_MS;
        for h in 0..48 {
            for i in 0..20 {
                assert_eq!(a.arrive(day + h * HOUR_MS + i, Some(origin)), None);
            }
        }
        let t = day + 48 * HOUR_MS;
        let floods: Vec<Flood> = (0..3_000)
            .filter_map(|i| a.arrive(t + i, Some(origin)))
            .collect();
        assert_eq!(floods.len(), 1);
        assert_eq!(
            (floods[0].of, floods[0].count),
            ("agents", NEW_AGENTS_PER_HOUR + 1)
        );
    }
}
