//! One episode, one incident: a run of violations of one anomaly opens one incident, which
//! carries its count and span and is closed when the run ends.

use serde::{Deserialize, Serialize};

use crate::blueprint::DedupRules;
use crate::response::Basis;

/// What identifies the incident an episode opened, so its closing record repeats the same id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Opening {
    /// The agent's event number of the opening event.
    pub seq: u64,
    /// Id of the opening event.
    pub event_id: String,
    /// Event time of the opening event.
    pub ts: i64,
    /// Basis of the opening finding.
    pub basis: Basis,
}

/// An episode that has ended: what its closing record reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Closed {
    /// The opening incident.
    pub opening: Opening,
    /// Event time of the first violation.
    pub start: i64,
    /// Event time of the last violation.
    pub end: i64,
    /// Violating events in the episode.
    pub count: u64,
    /// Largest figure observed during the episode.
    pub peak: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Open {
    opening: Opening,
    start: i64,
    last: i64,
    count: u64,
    peak: f64,
}

/// Tracks the episode of one anomaly of one agent.
///
/// An episode lasts while violations follow each other with gaps of at most the blueprint's
/// `episode_gap` of event time, however many ordinary events come between. It opens one incident
/// (if `cooldown` has passed since the previous one) and is closed by the first event, violating
/// or not, that comes more than `episode_gap` after its last violation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Episode {
    /// The open episode (boxed: most agents have none open, and the state stays small).
    open: Option<Box<Open>>,
    last_fire: Option<i64>,
    /// Violating events since the last incident that opened no incident of their own.
    pub suppressed: u32,
}

/// What a violation did to the episode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A new episode: raise an incident.
    Opened,
    /// Part of the open episode.
    Continued,
    /// A new run within the cooldown of the previous incident: counted, not raised.
    Cooling,
}

impl Episode {
    /// Forgets the open episode if it is the one opened at event time `ts`, without a closing
    /// record (its opening was explained by the agent's cohort and raised no incident); the
    /// cooldown is kept.
    pub fn forget_opened_at(&mut self, ts: i64) {
        if self.open.as_ref().is_some_and(|o| o.opening.ts == ts) {
            self.open = None;
        }
    }

    /// Whether an episode is open.
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Violations in the open episode (0 when none is open).
    pub fn count(&self) -> u64 {
        self.open.as_ref().map_or(0, |o| o.count)
    }

    /// Ends the open episode if `ts` is more than the episode gap after its last violation.
    pub fn expire(&mut self, ts: i64, rules: &DedupRules) -> Option<Closed> {
        let o = self.open.as_ref()?;
        if ts.saturating_sub(o.last) <= rules.episode_gap_ms {
            return None;
        }
        let o = *self.open.take()?;
        Some(Closed {
            opening: o.opening,
            start: o.start,
            end: o.last,
            count: o.count,
            peak: o.peak,
        })
    }

    /// Records a violation at `ts` with figure `observed`; `opening` names the incident it would
    /// open. Call [`Episode::expire`] first so a stale episode is closed.
    pub fn violate(
        &mut self,
        ts: i64,
        observed: f64,
        rules: &DedupRules,
        opening: impl FnOnce() -> Opening,
    ) -> Step {
        if let Some(o) = &mut self.open {
            o.count += 1;
            o.last = o.last.max(ts);
            if observed > o.peak {
                o.peak = observed;
            }
            self.suppressed = self.suppressed.saturating_add(1);
            return Step::Continued;
        }
        let cooled = self
            .last_fire
            .is_none_or(|f| ts.saturating_sub(f) >= rules.cooldown_ms);
        if !cooled {
            self.suppressed = self.suppressed.saturating_add(1);
            return Step::Cooling;
        }
        self.last_fire = Some(ts);
        self.suppressed = 0;
        self.open = Some(Box::new(Open {
            opening: opening(),
            start: ts,
            last: ts,
            count: 1,
            peak: observed,
        }));
        Step::Opened
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: DedupRules = DedupRules {
        cooldown_ms: 300_000,
        episode_gap_ms: 3_600_000,
    };

    fn op(ts: i64) -> Opening {
        Opening {
            seq: 1,
            event_id: "e".into(),
            ts,
            basis: Basis::Static,
        }
    }

    #[test]
    fn a_burst_fires_once_and_closes_with_its_count() {
        let mut e = Episode::default();
        let steps: Vec<Step> = (0..100)
            .map(|i| e.violate(i * 100, i as f64, &R, || op(i * 100)))
            .collect();
        assert_eq!(steps.iter().filter(|s| **s == Step::Opened).count(), 1);
        assert_eq!(steps[0], Step::Opened);
        assert!(e.expire(9_900 + 3_600_000, &R).is_none(), "within the gap");
        let c = e
            .expire(9_900 + 3_600_001, &R)
            .expect("closed after the gap");
        assert_eq!((c.start, c.end, c.count, c.peak), (0, 9_900, 100, 99.0));
        assert_eq!(c.opening, op(0));
        assert!(!e.is_open());
    }

    #[test]
    fn ordinary_events_between_violations_do_not_end_the_episode() {
        // A steady agent over a threshold now and then, all day: one episode.
        let mut e = Episode::default();
        let mut opened = 0;
        for i in 0..600 {
            let ts = i * 60_000;
            assert!(e.expire(ts, &R).is_none());
            if i % 7 == 0 && e.violate(ts, 1.0, &R, || op(ts)) == Step::Opened {
                opened += 1;
            }
        }
        assert_eq!(opened, 1);
    }

    #[test]
    fn a_new_run_after_the_gap_fires_only_after_cooldown() {
        let short = DedupRules {
            cooldown_ms: 300_000,
            episode_gap_ms: 30_000,
        };
        let mut e = Episode::default();
        assert_eq!(e.violate(0, 1.0, &short, || op(0)), Step::Opened);
        assert!(e.expire(60_000, &short).is_some());
        assert_eq!(e.violate(60_000, 1.0, &short, || op(0)), Step::Cooling);
        assert_eq!(e.violate(400_000, 1.0, &short, || op(0)), Step::Opened);
    }
}
