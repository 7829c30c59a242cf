//! An agent's weekly rhythm, learned on event time in its blueprint's time zone: calls per local
//! hour of day over the days it was active, its rate while working, and for each day of the
//! week how often it works then and how strong the evidence is that it does not.
//!
//! Learning only from active days (and counting idle days as days off only between active days at
//! most three days apart) keeps the baseline intact across pauses: an agent back from two weeks
//! away is judged by the days it worked.
//! Fixed size, no stored samples.

use serde::{Deserialize, Serialize};

use super::stats::ew_update;
use super::LocalTime;

/// Days after which the hourly statistics become exponentially weighted (four weeks).
const DAY_HORIZON: f32 = 28.0;
/// Longest run of idle days between two active days that counts as days off; a longer one is
/// a pause (holiday, outage) and teaches nothing about the agent's week.
const MAX_IDLE_RUN: i32 = 3;
/// Calls closer together than this (ms) belong to one turn: the burst of tool calls an agent makes
/// for one task. Off-hours activity is counted in turns, so one session of calls at an odd hour
/// is one turn, while calls spread over the night are many.
pub const TURN_GAP_MS: i64 = 10_000;
/// Most evidence (nats) one idle day adds that a day of the week is a day off.
const MAX_DAY_EVIDENCE: f32 = 50.0;

/// Calls in one local hour of day, over the days the agent was active.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct HourStats {
    /// Mean calls in this hour on an active day.
    pub mean: f32,
    /// Variance of those calls.
    pub var: f32,
    /// Active days with at least one call in this hour.
    pub used: u16,
}

/// One day of the week, over the agent's working stretches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct DayStats {
    /// Occurrences of this day observed: active, or idle between active days at most
    /// three days apart.
    pub seen: u16,
    /// Of them, occurrences on which the agent was active.
    pub active: u16,
    /// Calls on this day, summed over those occurrences.
    pub calls: f32,
    /// Evidence (nats) that the agent does not work on this day: for each idle occurrence, the
    /// log-improbability of no call at all on a day at its usual daily rate.
    pub evidence: f32,
}

/// The learned weekly rhythm of one agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rhythm {
    /// Local day of the first event (`i32::MIN` before any).
    first_day: i32,
    /// Local day being counted.
    day: i32,
    /// Weekday (0 = Monday) of `day`.
    weekday: u8,
    /// Calls per local hour on `day`.
    today: [u16; 24],
    /// Calls on `day`.
    today_total: u32,
    /// Turns per local hour on `day`.
    turn_hours: [u16; 24],
    /// Turns on `day`, and in local hour `turn_hour` of it.
    turns_today: u32,
    turns_hour: u32,
    turn_hour: u8,
    /// Event time of the latest call counted.
    last_ts: i64,
    /// Days with at least one call.
    active_days: u16,
    /// What is read when a day closes or an hour starts (boxed: not on every event's path).
    learned: Box<Learned>,
}

/// The statistics of a rhythm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Learned {
    hours: [HourStats; 24],
    days: [DayStats; 7],
    /// Mean calls per active day.
    day_rate: f32,
    /// Mean calls per active hour (the agent's rate while it works).
    hour_rate: f32,
    /// Calls per active hour of the latest active day closed.
    last_rate: f32,
    /// Mean turns per local hour of day over the active days.
    turn_hours: [f32; 24],
}

impl Default for Rhythm {
    fn default() -> Self {
        Rhythm {
            first_day: i32::MIN,
            day: i32::MIN,
            weekday: 0,
            today: [0; 24],
            today_total: 0,
            turn_hours: [0; 24],
            turns_today: 0,
            turns_hour: 0,
            turn_hour: 0,
            last_ts: i64::MIN,
            active_days: 0,
            learned: Box::new(Learned {
                hours: [HourStats::default(); 24],
                days: [DayStats::default(); 7],
                day_rate: 0.0,
                hour_rate: 0.0,
                last_rate: 0.0,
                turn_hours: [0.0; 24],
            }),
        }
    }
}

impl Rhythm {
    /// Counts an in-order call at local time `l`; returns the calls so far in its local hour
    /// (this one included), or 0 for a call of a day already closed.
    pub fn observe(&mut self, l: LocalTime, ts: i64) -> u32 {
        if self.first_day == i32::MIN {
            self.first_day = l.day;
            self.start_day(l);
        }
        if l.day < self.day {
            return 0;
        }
        if l.day > self.day {
            let active = self.close_day();
            // Idle days between two active days close together are days off; a longer run of
            // idle days is a pause.
            let idle = l.day - self.day - 1;
            if active && idle <= MAX_IDLE_RUN {
                let evidence = self.learned.day_rate.min(MAX_DAY_EVIDENCE);
                for d in (self.day + 1)..l.day {
                    let s = &mut self.learned.days[(d + 3).rem_euclid(7) as usize];
                    s.seen = s.seen.saturating_add(1);
                    s.evidence += evidence;
                }
            }
            self.start_day(l);
        }
        self.today_total = self.today_total.saturating_add(1);
        if l.hour != self.turn_hour {
            self.turn_hour = l.hour;
            self.turns_hour = 0;
        }
        if ts.saturating_sub(self.last_ts) >= TURN_GAP_MS || self.turns_hour == 0 {
            self.turns_today += 1;
            self.turns_hour += 1;
            let t = &mut self.turn_hours[usize::from(l.hour % 24)];
            *t = t.saturating_add(1);
        }
        self.last_ts = self.last_ts.max(ts);
        let c = &mut self.today[usize::from(l.hour % 24)];
        *c = c.saturating_add(1);
        u32::from(*c)
    }

    fn start_day(&mut self, l: LocalTime) {
        self.day = l.day;
        self.weekday = l.weekday % 7;
        self.today = [0; 24];
        self.today_total = 0;
        self.turns_today = 0;
        self.turns_hour = 0;
        self.turn_hours = [0; 24];
    }

    /// Folds the day being counted into the statistics; returns whether it was active.
    fn close_day(&mut self) -> bool {
        let total = self.today_total;
        if total == 0 {
            return false;
        }
        self.active_days = self.active_days.saturating_add(1);
        let alpha = 1.0 / f32::from(self.active_days).min(DAY_HORIZON);
        let mut active_hours = 0u32;
        for (h, c) in self.learned.hours.iter_mut().zip(self.today) {
            ew_update(&mut h.mean, &mut h.var, f32::from(c), alpha);
            if c > 0 {
                h.used = h.used.saturating_add(1);
                active_hours += 1;
            }
        }
        self.learned.day_rate += alpha * (total as f32 - self.learned.day_rate);
        let per_hour = total as f32 / active_hours.max(1) as f32;
        self.learned.hour_rate += alpha * (per_hour - self.learned.hour_rate);
        self.learned.last_rate = per_hour;
        for (m, t) in self.learned.turn_hours.iter_mut().zip(self.turn_hours) {
            *m += alpha * (f32::from(t) - *m);
        }
        let s = &mut self.learned.days[usize::from(self.weekday)];
        s.seen = s.seen.saturating_add(1);
        s.active = s.active.saturating_add(1);
        s.calls += total as f32;
        true
    }

    /// Days with at least one call (the current day excluded).
    pub fn active_days(&self) -> u32 {
        u32::from(self.active_days)
    }

    /// Mean calls per active hour.
    pub fn hour_rate(&self) -> f64 {
        f64::from(self.learned.hour_rate)
    }

    /// Calls per active hour of the latest active day closed.
    pub fn last_day_rate(&self) -> f64 {
        f64::from(self.learned.last_rate)
    }

    /// Mean calls per turn in local hour `h` (at least 1): how many calls the agent makes
    /// together, for one task, at that hour; `None` for an hour it has (almost) never worked.
    pub fn calls_per_turn(&self, h: u8) -> Option<f64> {
        let h = usize::from(h % 24);
        let turns = f64::from(self.learned.turn_hours[h]);
        (turns >= 0.5).then(|| (f64::from(self.learned.hours[h].mean) / turns).max(1.0))
    }

    /// Mean calls per active day.
    pub fn day_rate(&self) -> f64 {
        f64::from(self.learned.day_rate)
    }

    /// Statistics of a local hour of day.
    pub fn hour(&self, h: u8) -> HourStats {
        self.learned.hours[usize::from(h % 24)]
    }

    /// Statistics of a day of the week (0 = Monday).
    pub fn weekday(&self, d: u8) -> DayStats {
        self.learned.days[usize::from(d % 7)]
    }

    /// Calls so far today in local hour `h`.
    pub fn calls_in_hour(&self, h: u8) -> u32 {
        u32::from(self.today[usize::from(h % 24)])
    }

    /// Turns so far today, and in local hour `h` of today (0 for another hour).
    pub fn turns(&self, h: u8) -> (u32, u32) {
        (
            self.turns_today,
            if h == self.turn_hour {
                self.turns_hour
            } else {
                0
            },
        )
    }

    /// Calls so far today (the local day being counted).
    pub fn today_calls(&self) -> u32 {
        self.today_total
    }

    /// Days from the first event to the day being counted.
    pub fn history_days(&self) -> u32 {
        if self.first_day == i32::MIN {
            0
        } else {
            (self.day - self.first_day).max(0) as u32
        }
    }

    /// Expected calls in local hour `h` on a working day, from the agent's own history: the
    /// hour's mean, but never less than `floor` of its working rate (a quiet hour of the day is
    /// not a reason to call ordinary work a spike).
    pub fn expected_hour(&self, h: u8, floor: f64) -> f64 {
        f64::from(self.hour(h).mean).max(floor * self.hour_rate())
    }

    /// Share of active days on which the agent used local hour `h`.
    pub fn hour_share(&self, h: u8) -> f64 {
        f64::from(self.hour(h).used) / f64::from(self.active_days.max(1))
    }

    /// Expected calls in local hour `h` when it is an hour the agent does not work: its own
    /// mean there, or a quarter of a neighbouring hour's (the edge of its day varies).
    pub fn off_hour_expectation(&self, h: u8) -> f64 {
        let prev = self.hour((h + 23) % 24).mean;
        let next = self.hour((h + 1) % 24).mean;
        f64::from(self.hour(h).mean.max(0.25 * prev.max(next)))
            .max(0.5 / (f64::from(self.active_days) + 1.0))
    }

    /// Evidence (nats) that the agent does not work in local hour `h`: on its active days it made
    /// no call there although it works at its hourly rate.
    pub fn off_hour_evidence(&self, h: u8) -> f64 {
        let idle = f64::from(self.active_days.saturating_sub(self.hour(h).used));
        idle * self.hour_rate().min(f64::from(MAX_DAY_EVIDENCE))
    }

    /// Expected calls on weekday `d` when it is a day the agent does not work.
    pub fn off_day_expectation(&self, d: u8) -> f64 {
        let s = self.weekday(d);
        (f64::from(s.calls) + 0.5) / (f64::from(s.seen) + 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::local_time;

    fn at(s: &str) -> i64 {
        crate::event::parse_rfc3339_ms(s).unwrap()
    }

    fn feed(
        r: &mut Rhythm,
        tz: chrono_tz::Tz,
        from: i64,
        days: i64,
        hours: std::ops::Range<i64>,
        per_hour: i64,
        skip_weekend: bool,
    ) {
        for d in 0..days {
            let day = from + d * 86_400_000;
            let wd = local_time(tz, day).weekday;
            if skip_weekend && wd >= 5 {
                continue;
            }
            for h in hours.clone() {
                for c in 0..per_hour {
                    let t = day + h * 3_600_000 + c * (3_600_000 / per_hour);
                    r.observe(local_time(tz, t), t);
                }
            }
        }
    }

    #[test]
    fn hour_profile_learns_from_active_days_only() {
        let tz = chrono_tz::UTC;
        let mut r = Rhythm::default();
        let mon = at("2026-03-02T00:00:00Z");
        feed(&mut r, tz, mon, 14, 9..17, 6, true);
        assert_eq!(
            r.active_days(),
            9,
            "the 10th weekday is still being counted"
        );
        assert!((f64::from(r.hour(10).mean) - 6.0).abs() < 1e-3);
        assert_eq!(r.hour(3).mean, 0.0);
        assert!((r.hour_rate() - 6.0).abs() < 1e-3);
        assert!((r.hour_share(12) - 1.0).abs() < 1e-9);
        // Two idle weeks, then back: the profile is unchanged.
        feed(&mut r, tz, mon + 28 * 86_400_000, 3, 9..17, 6, true);
        assert!((f64::from(r.hour(10).mean) - 6.0).abs() < 1e-3);
    }

    #[test]
    fn weekends_of_a_weekday_agent_gather_evidence_of_days_off() {
        let tz = chrono_tz::UTC;
        let mut r = Rhythm::default();
        // From a Wednesday: Wed-Fri worked, Sat-Sun idle, Monday worked again.
        let wed = at("2026-03-04T00:00:00Z");
        feed(&mut r, tz, wed, 6, 9..17, 6, true);
        let sun = r.weekday(6);
        assert_eq!((sun.seen, sun.active), (1, 0));
        assert!(sun.evidence > 14.0, "{sun:?}");
        let mon = r.weekday(0);
        assert_eq!(mon.seen, 0, "Monday is still being counted");
        assert!(r.off_day_expectation(6) < 0.5);
    }

    #[test]
    fn a_pause_is_not_evidence_of_days_off() {
        let tz = chrono_tz::UTC;
        let mut r = Rhythm::default();
        let mon = at("2026-03-02T00:00:00Z");
        // Three days of work, two weeks away, back on a Thursday for a week.
        feed(&mut r, tz, mon, 3, 9..17, 6, false);
        feed(&mut r, tz, mon + 17 * 86_400_000, 7, 9..17, 6, false);
        for d in 0..7 {
            assert_eq!(r.weekday(d).evidence, 0.0, "day {d}");
        }
        assert_eq!(r.active_days(), 9);
    }

    #[test]
    fn calls_per_turn_is_learned_per_hour() {
        let tz = chrono_tz::UTC;
        let mut r = Rhythm::default();
        let mon = at("2026-03-02T00:00:00Z");
        // Each day: one call every 3 minutes 09:00-12:00 (each its own turn), then one long
        // turn of a call every 2 s 12:00-13:00.
        for d in 0..5 {
            let day = mon + d * 86_400_000;
            let mut ts: Vec<i64> = (0..60).map(|i| day + 9 * 3_600_000 + i * 180_000).collect();
            ts.extend((0..1800).map(|i| day + 12 * 3_600_000 + i * 2_000));
            for t in ts {
                r.observe(local_time(tz, t), t);
            }
        }
        let t = mon + 5 * 86_400_000 + 9 * 3_600_000;
        r.observe(local_time(tz, t), t);
        let morning = r.calls_per_turn(10).expect("a worked hour");
        let steady = r.calls_per_turn(12).expect("a worked hour");
        assert!((morning - 1.0).abs() < 1e-6, "{morning}");
        assert!(steady > 1000.0, "{steady}");
        assert_eq!(r.calls_per_turn(20), None, "an hour never worked");
    }
}
