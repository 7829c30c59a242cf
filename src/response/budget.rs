//! The fleet-wide budget of automatic kills (blast radius): at most `per_hour` kills per clock
//! hour of event time, and at most `share` of a blueprint's agents (but always one) killed at once. A kill beyond
//! it becomes `would_kill`, and one critical `kill_budget` alert per hour asks an operator to
//! confirm.

use serde::{Deserialize, Serialize};

use crate::blueprint::KillRules;

const HOUR_MS: i64 = 3_600_000;

/// Kills counted against the budget.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KillBudget {
    /// Clock hour (event time) of `this_hour`.
    hour: i64,
    /// Automatic kills in that hour.
    this_hour: u32,
    /// Hour of the last `kill_budget` alert.
    alerted: Option<i64>,
    /// Kill decisions held back by the budget, ever.
    pub held: u64,
}

/// Why the budget holds a kill back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Spent {
    /// `per_hour` kills already this hour.
    PerHour(u32),
    /// Killing one more would put more than `share` of the blueprint's agents down.
    Share {
        /// Agents of the blueprint killed now.
        killed: usize,
        /// Agents of the blueprint.
        agents: usize,
    },
}

impl KillBudget {
    /// Whether one more automatic kill at `ts` fits: `killed` of the blueprint's `agents` are down.
    pub fn check(
        &self,
        rules: &KillRules,
        ts: i64,
        killed: usize,
        agents: usize,
    ) -> Result<(), Spent> {
        let hour = ts.div_euclid(HOUR_MS);
        let this_hour = if hour == self.hour { self.this_hour } else { 0 };
        if rules.budget_per_hour > 0 && this_hour >= rules.budget_per_hour {
            return Err(Spent::PerHour(this_hour));
        }
        // At least one agent of any blueprint may be killed.
        if rules.budget_share < 1.0
            && (killed + 1) as f64 > (rules.budget_share * agents as f64).max(1.0)
        {
            return Err(Spent::Share { killed, agents });
        }
        Ok(())
    }

    /// Counts an automatic kill at `ts`.
    pub fn spend(&mut self, ts: i64) {
        let hour = ts.div_euclid(HOUR_MS);
        if hour > self.hour {
            self.hour = hour;
            self.this_hour = 0;
        }
        self.this_hour += 1;
    }

    /// Counts a held kill; returns whether this hour's alert is still to be raised.
    pub fn hold(&mut self, ts: i64) -> bool {
        self.held += 1;
        let hour = ts.div_euclid(HOUR_MS);
        if self.alerted.is_some_and(|a| hour <= a) {
            return false;
        }
        self.alerted = Some(hour);
        true
    }
}

/// Automatic kills within one cohort: a run of them inside one cohort within an hour is itself
/// evidence of a fleet event, so beyond `per_cohort` kills in an hour the next ones become
/// `would_kill`, with one alert per hour.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CohortKills {
    /// Event times of the automatic kills in the last hour.
    recent: Vec<i64>,
    /// Hour of the last alert.
    alerted: Option<i64>,
}

impl CohortKills {
    /// Kills in the hour before `ts`.
    pub fn in_hour(&self, ts: i64) -> u32 {
        self.recent.iter().filter(|t| ts - **t < HOUR_MS).count() as u32
    }

    /// Whether one more automatic kill at `ts` fits within `rules.budget_per_cohort`.
    pub fn check(&self, rules: &KillRules, ts: i64) -> Result<(), u32> {
        let n = self.in_hour(ts);
        if rules.budget_per_cohort > 0 && n >= rules.budget_per_cohort {
            return Err(n);
        }
        Ok(())
    }

    /// Counts an automatic kill at `ts`.
    pub fn spend(&mut self, ts: i64) {
        self.recent.retain(|t| ts - *t < HOUR_MS);
        self.recent.push(ts);
    }

    /// Counts a held kill; returns whether this hour's alert is still to be raised.
    pub fn hold(&mut self, ts: i64) -> bool {
        let hour = ts.div_euclid(HOUR_MS);
        if self.alerted.is_some_and(|a| hour <= a) {
            return false;
        }
        self.alerted = Some(hour);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blueprint::BlueprintSet;

    fn rules(per_hour: u32, share: f64) -> KillRules {
        let mut r = BlueprintSet::builtin().get(0).kill.clone();
        r.budget_per_hour = per_hour;
        r.budget_share = share;
        r
    }

    #[test]
    fn per_hour_limit_resets_with_the_hour() {
        let r = rules(2, 1.0);
        let mut b = KillBudget::default();
        for _ in 0..2 {
            assert!(b.check(&r, 1000, 0, 100).is_ok());
            b.spend(1000);
        }
        assert_eq!(b.check(&r, 2000, 0, 100), Err(Spent::PerHour(2)));
        assert!(b.check(&r, HOUR_MS + 1, 0, 100).is_ok());
        // A kill stamped an hour earlier (another agent's clock) does not reset the count.
        b.spend(HOUR_MS + 1);
        b.spend(1000);
        assert_eq!(b.check(&r, HOUR_MS + 2, 0, 100), Err(Spent::PerHour(2)));
    }

    #[test]
    fn share_limit_counts_the_blueprint_s_killed_agents() {
        let r = rules(0, 0.1);
        let b = KillBudget::default();
        assert!(b.check(&r, 0, 9, 100).is_ok());
        assert_eq!(
            b.check(&r, 0, 10, 100),
            Err(Spent::Share {
                killed: 10,
                agents: 100
            })
        );
        assert!(
            b.check(&r, 0, 0, 5).is_ok(),
            "one agent of any blueprint may be killed"
        );
        assert!(b.check(&r, 0, 1, 5).is_err());
    }

    #[test]
    fn kills_in_one_cohort_are_limited_per_sliding_hour() {
        let mut r = rules(0, 1.0);
        r.budget_per_cohort = 2;
        let mut c = CohortKills::default();
        for t in [0, 10 * 60_000] {
            assert!(c.check(&r, t).is_ok());
            c.spend(t);
        }
        assert_eq!(c.check(&r, 20 * 60_000), Err(2));
        assert!(c.hold(20 * 60_000));
        assert!(!c.hold(30 * 60_000), "one alert per hour");
        // An hour after the first kill, one more fits.
        assert!(c.check(&r, HOUR_MS).is_ok());
        r.budget_per_cohort = 0;
        assert!(c.check(&r, 20 * 60_000).is_ok(), "0: no limit");
    }

    #[test]
    fn one_alert_per_hour() {
        let mut b = KillBudget::default();
        assert!(b.hold(10));
        assert!(!b.hold(20));
        assert!(b.hold(HOUR_MS + 5));
        assert_eq!(b.held, 3);
    }
}
