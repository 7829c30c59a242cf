//! Routine memory: how often an agent matched one static rule (in one form), on how many
//! distinct days, and what was last reported about it. A match the agent makes on enough
//! distinct days is routine for it: a fact about its baseline, reported once and again only
//! when it changes, never a fresh alert per match.

use serde::{Deserialize, Serialize};

use super::Judgement;
use crate::blueprint::RoutineMode;

/// One rule's (or one form's) routine memory for one agent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Habit {
    /// Matches ever.
    pub count: u32,
    /// Distinct local days with a match.
    pub days: u16,
    /// Local day of the latest match.
    last_day: i32,
    /// Level reported last (0: nothing reported yet).
    reported: f32,
    /// Whether the learning-period finding was reported.
    learning_reported: bool,
}

/// What to say about a routine or learning-period match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// Nothing: already reported, or silenced.
    Quiet,
    /// Report it (first time, or it changed).
    Say,
}

impl Habit {
    /// Counts a match on local day `day` (a day before the latest counted is not a new day).
    pub fn see(&mut self, day: i32) {
        self.count = self.count.saturating_add(1);
        if self.days == 0 || day > self.last_day {
            self.days = self.days.saturating_add(1);
            self.last_day = day;
        }
    }

    /// Counts a routine or learning-period match on `day` (unless it is `late`: a late event
    /// makes nothing routine) and says whether to report it; `level`: the routine's figure.
    pub fn report(
        &mut self,
        j: Judgement,
        mode: RoutineMode,
        day: i32,
        level: f64,
        late: bool,
    ) -> Report {
        if !late {
            self.see(day);
        }
        if j == Judgement::Learning {
            self.report_learning(mode)
        } else {
            self.report_routine(mode, level)
        }
    }

    /// Whether the agent matched on at least `min_days` distinct days.
    pub fn is_routine(&self, min_days: u32) -> bool {
        u32::from(self.days) >= min_days
    }

    /// Whether a routine at `level` should be reported: the first time, and again when the level
    /// has at least doubled since the last report.
    pub fn report_routine(&mut self, mode: RoutineMode, level: f64) -> Report {
        if mode == RoutineMode::Silence {
            return Report::Quiet;
        }
        let level = (level as f32).max(f32::MIN_POSITIVE);
        if self.reported > 0.0 && level < 2.0 * self.reported {
            return Report::Quiet;
        }
        self.reported = level;
        Report::Say
    }

    /// Whether a match seen during the learning period should be reported (once).
    pub fn report_learning(&mut self, mode: RoutineMode) -> Report {
        if mode == RoutineMode::Silence || self.learning_reported {
            return Report::Quiet;
        }
        self.learning_reported = true;
        Report::Say
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_count_distinct_days_only() {
        let mut h = Habit::default();
        for d in [3, 3, 3, 4, 4, 9, 4] {
            h.see(d);
        }
        assert_eq!(
            (h.count, h.days),
            (7, 3),
            "a day before the latest is no new day"
        );
        assert!(h.is_routine(3));
        assert!(!h.is_routine(4));
    }

    #[test]
    fn a_routine_is_reported_once_and_again_when_it_doubles() {
        let mut h = Habit::default();
        assert_eq!(h.report_routine(RoutineMode::Report, 40.0), Report::Say);
        assert_eq!(h.report_routine(RoutineMode::Report, 60.0), Report::Quiet);
        assert_eq!(h.report_routine(RoutineMode::Report, 79.0), Report::Quiet);
        assert_eq!(h.report_routine(RoutineMode::Report, 80.0), Report::Say);
        assert_eq!(h.report_routine(RoutineMode::Report, 90.0), Report::Quiet);
        let mut s = Habit::default();
        assert_eq!(s.report_routine(RoutineMode::Silence, 1.0), Report::Quiet);
        assert_eq!(s.report_learning(RoutineMode::Silence), Report::Quiet);
        assert_eq!(h.report_learning(RoutineMode::Report), Report::Say);
        assert_eq!(h.report_learning(RoutineMode::Report), Report::Quiet);
    }
}
