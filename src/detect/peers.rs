//! What the agents of one blueprint do, for judging an agent with little history of its own
//! (population analysis): the spread of their working rates, and for each sequence rule how many
//! of their matches had each form.
//!
//! Kept by the engine per blueprint and partition, folded from the same events as the agents'
//! own state, so it is part of the snapshot and replays identically.

use serde::{Deserialize, Serialize};

use super::stats::ew_update;
use crate::blueprint::Blueprint;

/// Forms of a sequence match, by the calls between its steps: 0, 1, 2, 3 or more.
pub const FORMS: usize = 4;

/// Agent-days after which the rate statistics become exponentially weighted.
const RATE_HORIZON: f32 = 2_000.0;
/// Agent-days the peers need before they stand in for an agent's own rate.
const MIN_RATE_DAYS: u32 = 5;

/// One sequence rule across the peers (or for one agent).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SequenceCounts {
    /// Agents that made a match at least as tight as each form (peers only).
    pub agents: [u32; FORMS],
    /// Matches by form (calls between the steps: 0, 1, 2, 3 or more).
    pub matches: [u64; FORMS],
}

impl SequenceCounts {
    /// Matches of every form.
    pub fn total(&self) -> u64 {
        self.matches.iter().sum()
    }

    /// Matches with at most `form` calls between their steps.
    pub fn at_most(&self, form: usize) -> u64 {
        self.matches[..=form.min(FORMS - 1)].iter().sum()
    }
}

/// The peers of one blueprint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Peers {
    /// Agent-days folded into the rate statistics.
    rate_days: u32,
    /// Mean of ln(calls per active hour) over agent-days.
    rate_mean: f32,
    /// Variance of ln(calls per active hour).
    rate_var: f32,
    /// Per sequence rule of the blueprint, in its order.
    pub sequences: Vec<SequenceCounts>,
}

impl Peers {
    /// Peers of a blueprint, nothing learned yet.
    pub fn new(bp: &Blueprint) -> Peers {
        Peers {
            sequences: vec![SequenceCounts::default(); bp.sequences.len()],
            ..Peers::default()
        }
    }

    /// Keeps the per-rule counts in step with the blueprint's rules.
    pub fn fit(&mut self, bp: &Blueprint) {
        if self.sequences.len() != bp.sequences.len() {
            self.sequences = vec![SequenceCounts::default(); bp.sequences.len()];
        }
    }

    /// Folds one agent's finished active day, at `rate` calls per active hour.
    pub fn day(&mut self, rate: f64) {
        if !(rate.is_finite() && rate > 0.0) {
            return;
        }
        self.rate_days = self.rate_days.saturating_add(1);
        let alpha = 1.0 / (self.rate_days as f32).min(RATE_HORIZON);
        ew_update(
            &mut self.rate_mean,
            &mut self.rate_var,
            rate.ln() as f32,
            alpha,
        );
    }

    /// Agent-days behind the rate statistics.
    pub fn rate_days(&self) -> u32 {
        self.rate_days
    }

    /// Calls per hour that a new agent of this blueprint may reach without being unusual: the
    /// upper end (mean + 2 standard deviations of the log rate) of its peers' working rates;
    /// `None` until the peers have enough history.
    pub fn upper_rate(&self) -> Option<f64> {
        (self.rate_days >= MIN_RATE_DAYS)
            .then(|| f64::from(self.rate_mean + 2.0 * self.rate_var.max(0.0).sqrt()).exp())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upper_rate_needs_history_and_covers_the_spread() {
        let mut p = Peers::default();
        for _ in 0..4 {
            p.day(10.0);
        }
        assert_eq!(p.upper_rate(), None);
        for r in [5.0, 20.0, 10.0, 40.0, 2.5] {
            p.day(r);
        }
        let up = p.upper_rate().unwrap();
        assert!(up > 40.0 && up < 200.0, "{up}");
        p.day(f64::NAN);
        p.day(0.0);
        assert_eq!(p.rate_days(), 9);
    }

    #[test]
    fn forms_count_the_tighter_ones_too() {
        let c = SequenceCounts {
            matches: [1, 2, 3, 4],
            ..SequenceCounts::default()
        };
        assert_eq!(c.at_most(0), 1);
        assert_eq!(c.at_most(2), 6);
        assert_eq!(c.at_most(9), 10);
        assert_eq!(c.total(), 10);
    }
}
