//! Deduplication: one burst of one anomaly gives one incident.

use serde::{Deserialize, Serialize};

use crate::blueprint::DedupRules;

/// Tracks an ongoing episode of one anomaly for one agent.
///
/// An episode lasts while violating events follow each other with gaps no longer than the
/// blueprint's `episode_gap`, and ends at the first event that does not violate. An incident
/// fires when a new episode starts and at least `cooldown` of event time has passed since the
/// last incident of the same kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Episode {
    active: bool,
    last_ts: i64,
    last_fire: Option<i64>,
    /// Violating events suppressed since the last incident.
    pub suppressed: u32,
}

impl Episode {
    /// Records a violating event; returns whether it opens an incident.
    pub fn violate(&mut self, ts: i64, rules: &DedupRules) -> bool {
        let continuing = self.active && ts.saturating_sub(self.last_ts) <= rules.episode_gap_ms;
        let cooled = self
            .last_fire
            .is_none_or(|f| ts.saturating_sub(f) >= rules.cooldown_ms);
        self.active = true;
        self.last_ts = self.last_ts.max(ts);
        if !continuing && cooled {
            self.last_fire = Some(ts);
            self.suppressed = 0;
            true
        } else {
            self.suppressed = self.suppressed.saturating_add(1);
            false
        }
    }

    /// Records a non-violating event: the episode ends.
    pub fn calm(&mut self) {
        self.active = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: DedupRules = DedupRules {
        cooldown_ms: 300_000,
        episode_gap_ms: 3_600_000,
    };

    #[test]
    fn a_burst_fires_once() {
        let mut e = Episode::default();
        let fired: Vec<bool> = (0..100).map(|i| e.violate(i * 100, &R)).collect();
        assert_eq!(fired.iter().filter(|f| **f).count(), 1);
        assert!(fired[0]);
        assert_eq!(e.suppressed, 99);
    }

    #[test]
    fn a_new_burst_after_calm_fires_only_after_cooldown() {
        let mut e = Episode::default();
        assert!(e.violate(0, &R));
        e.calm();
        assert!(!e.violate(60_000, &R), "within cooldown");
        e.calm();
        assert!(e.violate(400_000, &R), "after cooldown");
    }

    #[test]
    fn a_long_pause_ends_the_episode() {
        let mut e = Episode::default();
        assert!(e.violate(0, &R));
        assert!(!e.violate(3_000_000, &R));
        assert!(e.violate(3_000_000 + 3_600_001, &R));
    }
}
