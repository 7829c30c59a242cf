//! off_hours, judged against the agent.
//!
//! - **Static:** activity outside the blueprint's hours or working days in its time zone. It is
//!   routine when the agent's rhythm says it works then (that hour on 30 % of its active days and
//!   at least `routine_days` of them; that day of the week on half its occurrences, at least
//!   twice), or it was seen there on `routine_days` days before: a `baseline` finding, once per
//!   hour or day.
//! - **Learned:** within the blueprint's hours and days, a day of the week or an hour of the day
//!   the agent does not work in — strong evidence from its history (no call where its usual rate
//!   would have made many) and use on at most `rare_share` of its weeks or days — with more calls
//!   there than its rhythm makes probable (tail below `sensitivity`), counted in turns (calls
//!   less than 10 s apart are one turn, so one session at an odd hour is one turn). Ordinary
//!   variation at the edge of its hours is expected, not an incident: an hour next to one it
//!   works in is never off, and a day needs two idle occurrences and the block of quiet days
//!   around it (a weekend) four — or, in a block of several days that has recurred (another of
//!   its days idle twice), one idle occurrence and three in the block.
//! - One episode (a night, a weekend afternoon) is one incident, closed when it ends.

use serde::{Deserialize, Serialize};

use super::cohort::ShiftTest;
use super::frequency::judge;
use super::habit::{Habit, Report};
use super::stats::improbable_sessions;
use super::{Context, Episode, Finding, Judgement, LocalTime, Observation, Step};
use crate::blueprint::{Blueprint, Weekdays};
use crate::response::{BaselineFacts, Basis, IncidentType, Source};

/// Day-to-day spread assumed for counts at an off hour.
const OFF_CV: f64 = 0.5;
/// Share of active days (or weeks) from which an hour (or day) is one the agent works in.
const ROUTINE_SHARE: f64 = 0.3;

/// Counts from which the current local hour (and its day) are rare for the agent, computed when
/// the hour starts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Limits {
    /// Local day × 24 + hour they hold for.
    key: i64,
    /// Calls on this day from which they are improbable (`u32::MAX`: a day the agent works).
    day_from: u32,
    /// Calls in this hour from which they are improbable (`u32::MAX`: an hour it works).
    hour_from: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            key: i64::MIN,
            day_from: u32::MAX,
            hour_from: u32::MAX,
        }
    }
}

/// Per-agent off-hours state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OffHoursState {
    episode: Episode,
    /// Routine memory per local hour of day (0–23) and per weekday (24–30).
    habits: Vec<Habit>,
    limits: Limits,
}

impl OffHoursState {
    /// Whether the learned limits are for another local hour than `l`'s.
    pub fn limits_stale(&self, l: LocalTime) -> bool {
        self.limits.key != i64::from(l.day) * 24 + i64::from(l.hour)
    }

    /// Forgets the episode opened at event time `ts` (see
    /// [`super::DetectorState::forget_episode`]).
    pub fn forget_episode(&mut self, ts: i64) {
        self.episode.forget_opened_at(ts);
    }

    /// Whether an off-hours incident is open.
    pub fn is_open(&self) -> bool {
        self.episode.is_open()
    }
}

fn day_name(d: u8) -> &'static str {
    ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"][usize::from(d % 7)]
}

/// Whether a local time is outside the blueprint's allowed hours or working days.
pub fn outside_allowed(bp: &Blueprint, l: LocalTime) -> bool {
    outside_hours(bp, l) || !bp.working_days.contains(l.weekday)
}

fn outside_hours(bp: &Blueprint, l: LocalTime) -> bool {
    bp.allowed_hours.is_some_and(|h| !h.contains(l.hour))
}

/// Least idle occurrences of a day of the week before it can be a day the agent does not work
/// in (one idle Friday may be a holiday).
const MIN_IDLE_DAYS: u16 = 2;
/// Least idle occurrences of the block of days off around it (a weekend twice over): an agent
/// that works some weekend days at random is idle two Saturdays in a row often enough.
const MIN_IDLE_BLOCK: u32 = 4;
/// Least idle occurrences of a block of two or more days off that has recurred (one of its
/// other days idle [`MIN_IDLE_DAYS`] times), for a day of it idle once: a weekday agent's
/// Sunday after an idle weekend and an idle Saturday.
const MIN_IDLE_RECURRED_BLOCK: u32 = 3;

/// The block of days of the week the agent does not work around day `d`: `d` and the
/// neighbouring days it works on less than half the time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct OffBlock {
    /// Days of the block.
    days: u32,
    /// Occurrences of its days observed, and of them active.
    seen: u32,
    active: u32,
    /// Whether a day of the block other than `d` was idle [`MIN_IDLE_DAYS`] times.
    recurred: bool,
}

impl OffBlock {
    /// Whether the block says `d` (idle `idle` times) is a day the agent does not work: idle
    /// twice and the block four times, or once in a block of several days that has recurred
    /// and was idle three times; and worked on at most `rare_share` of its occurrences.
    fn holds(&self, idle: u16, rare_share: f64) -> bool {
        let block_idle = self.seen.saturating_sub(self.active);
        let enough = (idle >= MIN_IDLE_DAYS && block_idle >= MIN_IDLE_BLOCK)
            || (idle >= 1
                && self.days >= 2
                && self.recurred
                && block_idle >= MIN_IDLE_RECURRED_BLOCK);
        enough && f64::from(self.active) <= rare_share * f64::from(self.seen)
    }
}

/// The block of days off around day `d` (see [`OffBlock`]).
fn off_block(r: &super::Rhythm, d: u8) -> OffBlock {
    let quiet = |x: u8| {
        let s = r.weekday(x);
        s.seen > 0 && u32::from(s.active) * 2 < u32::from(s.seen)
    };
    // Days of the block, a bit per weekday.
    let d = d % 7;
    let mut days = 1u8 << d;
    for step in [1u8, 6] {
        let mut x = (d + step) % 7;
        while days & (1 << x) == 0 && quiet(x) {
            days |= 1 << x;
            x = (x + step) % 7;
        }
    }
    (0..7u8)
        .filter(|x| days & (1 << x) != 0)
        .fold(OffBlock::default(), |b, x| {
            let s = r.weekday(x);
            OffBlock {
                days: b.days + 1,
                seen: b.seen + u32::from(s.seen),
                active: b.active + u32::from(s.active),
                recurred: b.recurred
                    || (x != d && s.seen.saturating_sub(s.active) >= MIN_IDLE_DAYS),
            }
        })
}

/// Smallest number of turns that is improbable (tail below `sensitivity`) where `e` calls are
/// expected; a turn holds `dispersion` calls on average (see the frequency detector).
fn improbable_from(e: f64, dispersion: f64, sensitivity: f64) -> u32 {
    improbable_sessions(e / dispersion.max(1.0), OFF_CV, sensitivity)
}

/// Whether the agent does not work in local hour `h`: strong evidence from its history, use on
/// at most `rare_share` of its active days, and the same for the hours either side (the edge of
/// its working day varies; an hour next to one it works in is not off).
fn hour_off(bp: &Blueprint, r: &super::Rhythm, h: u8) -> bool {
    let lr = &bp.learned;
    r.off_hour_evidence(h) >= lr.rare_evidence
        && [h, (h + 23) % 24, (h + 1) % 24]
            .iter()
            .all(|x| r.hour_share(*x) <= lr.rare_share)
}

/// The learned limits of a local hour: a day or an hour the agent does not work in — strong
/// evidence from its history and use on at most `rare_share` of its days — and the calls there
/// from which they are improbable.
fn limits(bp: &Blueprint, ctx: &Context<'_>, l: LocalTime, key: i64) -> Limits {
    let r = ctx.rhythm;
    let lr = &bp.learned;
    let mut out = Limits {
        key,
        ..Limits::default()
    };
    if r.active_days() < lr.min_active_days {
        return out;
    }
    let d = r.weekday(l.weekday);
    if f64::from(d.evidence) >= lr.rare_evidence
        && f64::from(d.active) <= lr.rare_share * f64::from(d.seen)
        && off_block(r, l.weekday).holds(d.seen.saturating_sub(d.active), lr.rare_share)
    {
        out.day_from = improbable_from(
            r.off_day_expectation(l.weekday),
            ctx.dispersion,
            lr.sensitivity,
        );
    }
    if hour_off(bp, r, l.hour) {
        out.hour_from = improbable_from(
            r.off_hour_expectation(l.hour),
            ctx.dispersion,
            lr.sensitivity,
        );
    }
    out
}

/// What the learned check found.
struct Rare {
    /// Calls on the day (`by_day`) or in the hour.
    count: u32,
    /// Turns among them.
    turns: u32,
    expected: f64,
    by_day: bool,
    /// Days (or occurrences of the day of the week) with activity there, and of them observed.
    seen: u64,
    samples: u64,
    /// The block of days off the day belongs to, when it has several days (by day only).
    block: Option<OffBlock>,
}

impl Rare {
    /// One sentence for the incident (built only when it opens one).
    fn describe(&self, l: LocalTime) -> String {
        let (count, turns) = (self.count, self.turns);
        if self.by_day {
            let block = self.block.map_or(String::new(), |b| {
                format!(
                    ", in a block of {} days off it worked on {} of {} occurrences",
                    b.days, b.active, b.seen
                )
            });
            format!(
                "{count} calls in {turns} turns on a {} (local), a day it worked on {} of the {} seen{block}",
                day_name(l.weekday),
                self.seen,
                self.samples
            )
        } else {
            format!(
                "{count} calls in {turns} turns between {:02}:00 and {:02}:00 local, an hour it used on {} of its {} active days",
                l.hour,
                (l.hour + 1) % 24,
                self.seen,
                self.samples
            )
        }
    }
}

/// The learned check: improbably many turns on a day or in an hour the agent does not work in.
fn rare(ctx: &Context<'_>, lim: &Limits, l: LocalTime) -> Option<Rare> {
    let r = ctx.rhythm;
    let (today, this_hour) = r.turns(l.hour);
    if today >= lim.day_from {
        let d = r.weekday(l.weekday);
        return Some(Rare {
            count: r.today_calls(),
            turns: today,
            expected: r.off_day_expectation(l.weekday),
            by_day: true,
            seen: u64::from(d.active),
            samples: u64::from(d.seen),
            block: Some(off_block(r, l.weekday)).filter(|b| b.days >= 2),
        });
    }
    if this_hour >= lim.hour_from {
        return Some(Rare {
            count: r.calls_in_hour(l.hour),
            turns: this_hour,
            expected: r.off_hour_expectation(l.hour),
            by_day: false,
            seen: u64::from(r.hour(l.hour).used),
            samples: u64::from(r.active_days()),
            block: None,
        });
    }
    None
}

/// Whether the agent's rhythm says it works at this static off time.
fn works_then(bp: &Blueprint, ctx: &Context<'_>, l: LocalTime, by_hour: bool) -> bool {
    let r = ctx.rhythm;
    let min = bp.learned.routine_days;
    if by_hour {
        let h = r.hour(l.hour);
        u32::from(h.used) >= min && r.hour_share(l.hour) >= ROUTINE_SHARE
    } else {
        let d = r.weekday(l.weekday);
        u32::from(d.active) >= min.min(2) && f64::from(d.active) >= 0.5 * f64::from(d.seen)
    }
}

/// Checks one event.
pub fn observe(
    bp: &Blueprint,
    st: &mut OffHoursState,
    ctx: &mut Context<'_>,
    obs: &Observation<'_>,
    out: &mut Vec<Finding>,
) {
    if let Some(c) = st.episode.expire(obs.ts, &bp.dedup) {
        out.push(Finding::closing(
            IncidentType::OffHours,
            bp.severities.off_hours,
            c,
            "calls",
            0,
        ));
    }
    let l = obs.local;
    let by_hour = outside_hours(bp, l);
    let over_static = by_hour || !bp.working_days.contains(l.weekday);
    if st.habits.len() != 31 {
        st.habits = vec![Habit::default(); 31];
    }
    if over_static {
        static_check(bp, st, ctx, obs, by_hour, out);
        return;
    }
    if !obs.in_order || ctx.learning {
        return;
    }
    let key = i64::from(l.day) * 24 + i64::from(l.hour);
    if st.limits.key != key {
        st.limits = limits(bp, ctx, l, key);
    }
    if let Some(r) = rare(ctx, &st.limits, l) {
        let step = st
            .episode
            .violate(obs.ts, f64::from(r.count), &bp.dedup, || {
                obs.opening(Basis::Learned)
            });
        if step == Step::Opened {
            out.push(learned_finding(bp, obs, &r));
        }
    }
}

/// The static check of an event outside the blueprint's hours (`by_hour`) or working days:
/// judged against the agent, it opens an incident or is reported as a baseline finding.
fn static_check(
    bp: &Blueprint,
    st: &mut OffHoursState,
    ctx: &Context<'_>,
    obs: &Observation<'_>,
    by_hour: bool,
    out: &mut Vec<Finding>,
) {
    let l = obs.local;
    let cell = if by_hour {
        usize::from(l.hour % 24)
    } else {
        24 + usize::from(l.weekday % 7)
    };
    let mode = bp.routine.off_hours;
    let routine =
        works_then(bp, ctx, l, by_hour) || st.habits[cell].is_routine(bp.learned.routine_days);
    match judge(mode, ctx.learning, routine) {
        Judgement::New => {
            if st
                .episode
                .violate(obs.ts, 1.0, &bp.dedup, || obs.opening(Basis::Static))
                == Step::Opened
            {
                let mut f = static_finding(bp, ctx, obs, by_hour, &st.habits[cell]);
                f.shift = Some(ShiftTest::OffHours);
                out.push(f);
            }
        }
        j => {
            let h = &mut st.habits[cell];
            if h.report(j, mode, l.day, 1.0, !obs.in_order) == Report::Say {
                let why = format!(
                    "Routine for this agent (it works then on {} days); reported once.",
                    h.days
                );
                let f = static_finding(bp, ctx, obs, by_hour, h).into_baseline(j, &why);
                out.push(f);
            }
        }
    }
}

/// The learned finding about the rare day or hour `r`.
fn learned_finding(bp: &Blueprint, obs: &Observation<'_>, r: &Rare) -> Finding {
    let mut f = Finding::new(
        IncidentType::OffHours,
        Basis::Learned,
        bp.severities.off_hours,
    );
    f.observed = f64::from(r.count);
    f.expected = r.expected;
    f.unit = "calls";
    f.window_start = obs.ts.div_euclid(super::HOUR_MS) * super::HOUR_MS;
    f.window_end = obs.ts;
    f.description = format!(
        "Agent {:?} made {} ({:.2} expected at this time).",
        obs.agent_id,
        r.describe(obs.local),
        r.expected
    );
    f.facts = Some(BaselineFacts {
        source: Source::Agent,
        history_days: obs.history_days,
        samples: r.samples,
        seen_before: r.seen,
    });
    f.weighs = obs.warm;
    f.shift = Some(ShiftTest::OffHours);
    f
}

fn static_finding(
    bp: &Blueprint,
    ctx: &Context<'_>,
    obs: &Observation<'_>,
    by_hour: bool,
    h: &Habit,
) -> Finding {
    let l = obs.local;
    let when = format!(
        "{} {:02}:{:02} {}",
        day_name(l.weekday),
        l.hour,
        l.minute,
        bp.timezone.name()
    );
    let hours = bp.allowed_hours.map_or("any hour".to_string(), |h| {
        format!("{:02}:00-{:02}:00", h.start, h.end)
    });
    let days = if bp.working_days == Weekdays::ALL {
        "every day".to_string()
    } else {
        bp.working_days.names().join(",")
    };
    let r = ctx.rhythm;
    let usual = if by_hour {
        format!(
            "it used this hour on {} of its {} active days",
            r.hour(l.hour).used,
            r.active_days()
        )
    } else {
        let d = r.weekday(l.weekday);
        format!("it worked on {} of the {} such days seen", d.active, d.seen)
    };
    let mut f = Finding::new(
        IncidentType::OffHours,
        Basis::Static,
        bp.severities.off_hours,
    );
    f.observed = f64::from(l.hour) + f64::from(l.minute) / 60.0;
    f.expected = bp.allowed_hours.map_or(0.0, |h| f64::from(h.start));
    f.unit = "local_hour";
    f.window_start = obs.ts;
    f.window_end = obs.ts;
    f.description = format!(
        "Agent {:?} active at {when}, outside allowed hours {hours} on {days}; {usual}.",
        obs.agent_id
    );
    f.facts = Some(BaselineFacts {
        source: Source::Agent,
        history_days: obs.history_days,
        samples: u64::from(r.active_days()),
        seen_before: u64::from(h.days),
    });
    f
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use crate::response::{Basis, IncidentType};

    fn off(found: &[super::Finding]) -> Vec<Basis> {
        incidents(found, IncidentType::OffHours)
            .iter()
            .map(|f| f.basis)
            .collect()
    }

    #[test]
    fn night_activity_in_new_york_fires_once_per_night() {
        let mut k = Kit::after_learning(finance()); // 08-18 Mon-Fri America/New_York
        let t0 = at("2026-03-03T08:00:00Z"); // Tue 03:00 EST
        let found = k.feed((0..60).map(|i| ev(t0 + i * 60_000, "q", None)));
        assert_eq!(off(&found), vec![Basis::Static]);
    }

    #[test]
    fn just_before_closing_time_is_allowed() {
        let mut k = Kit::after_learning(finance());
        let found = k.feed(vec![ev(at("2026-03-03T22:59:59Z"), "q", None)]); // Tue 17:59:59 EST
        assert!(off(&found).is_empty());
        let found = k.feed(vec![ev(at("2026-03-03T23:00:00Z"), "q", None)]); // 18:00 EST
        assert_eq!(off(&found), vec![Basis::Static]);
    }

    #[test]
    fn weekend_is_off_hours_in_working_day_blueprints() {
        let mut k = Kit::after_learning(finance());
        let found = k.feed(vec![ev(at("2026-03-07T15:00:00Z"), "q", None)]); // Saturday 10:00
        assert_eq!(off(&found), vec![Basis::Static]);
    }

    #[test]
    fn new_york_march_and_november_dst_changes() {
        // 08:30 local on the Monday after each change is allowed, 07:30 is not.
        for (ok, bad) in [
            ("2026-03-09T12:30:00Z", "2026-03-09T11:30:00Z"), // EDT, UTC-4
            ("2026-11-02T13:30:00Z", "2026-11-02T12:30:00Z"), // EST, UTC-5
            ("2026-03-06T13:30:00Z", "2026-03-06T12:30:00Z"), // Friday before: EST
        ] {
            let mut k = Kit::after_learning(finance());
            assert!(off(&k.feed(vec![ev(at(ok), "q", None)])).is_empty(), "{ok}");
            let mut k = Kit::after_learning(finance());
            assert_eq!(
                off(&k.feed(vec![ev(at(bad), "q", None)])),
                vec![Basis::Static],
                "{bad}"
            );
        }
    }

    #[test]
    fn london_march_and_october_dst_changes() {
        // Engineering: 06-22 Europe/London. 21:30 local allowed, 22:30 not, in GMT and BST.
        for (ok, bad) in [
            ("2026-03-27T21:30:00Z", "2026-03-27T22:30:00Z"), // Fri before the change: GMT
            ("2026-03-30T20:30:00Z", "2026-03-30T21:30:00Z"), // Mon after: BST, UTC+1
            ("2026-10-23T20:30:00Z", "2026-10-23T21:30:00Z"), // Fri before: BST
            ("2026-10-26T21:30:00Z", "2026-10-26T22:30:00Z"), // Mon after: GMT
        ] {
            let mut k = Kit::after_learning(engineering());
            assert!(off(&k.feed(vec![ev(at(ok), "q", None)])).is_empty(), "{ok}");
            let mut k = Kit::after_learning(engineering());
            assert_eq!(
                off(&k.feed(vec![ev(at(bad), "q", None)])),
                vec![Basis::Static],
                "{bad}"
            );
        }
    }

    #[test]
    fn an_hour_the_agent_works_every_day_outside_the_calendar_is_routine() {
        // Finance hours end at 18:00; this agent also works 18:00-19:00 every weekday.
        let mut k = Kit::new(finance_in("UTC"));
        let mon = at("2026-03-02T08:00:00Z");
        let found = k.feed(routine(mon, weekdays(21), 11, 6, "q"));
        assert!(
            off(&found).is_empty(),
            "{:?}",
            incidents(&found, IncidentType::OffHours)
        );
        let b = baselines(&found, IncidentType::OffHours);
        assert_eq!(b.len(), 2, "learning, then routine: {b:?}");
    }

    #[test]
    fn a_weekday_agent_on_a_sunday_is_found_by_its_rhythm() {
        // SOC: every day allowed. This agent works weekdays 09:00-17:00 UTC, 20 calls an hour.
        let mut k = Kit::new(soc());
        let mon = at("2026-03-02T09:00:00Z");
        // Two weekends idle, then work on the third Sunday (one idle Sunday could be a holiday).
        let mut evs = routine(mon, weekdays(21), 8, 20, "triage");
        let sunday = at("2026-03-22T11:00:00Z");
        evs.extend((0..12).map(|i| ev(sunday + i * 300_000, "triage", None)));
        evs.sort_by_key(|e| e.ts);
        let found = k.feed(evs);
        assert_eq!(off(&found), vec![Basis::Learned], "{found:?}");
    }

    /// SOC (every day allowed), an agent working 09:00-17:00 UTC at 20 calls an hour on the
    /// weekdays among `days` (offsets from Monday 2026-03-02), then a dozen calls on day `then`.
    fn weekday_agent_then(days: impl Iterator<Item = i64>, then: i64) -> Vec<super::Finding> {
        let mut k = Kit::new(soc());
        let mon = at("2026-03-02T09:00:00Z");
        let mut evs = routine(mon, days.filter(|d| d % 7 < 5), 8, 20, "triage");
        let t = mon + then * 86_400_000 + 2 * 3_600_000;
        evs.extend((0..12).map(|i| ev(t + i * 300_000, "triage", None)));
        evs.sort_by_key(|e| e.ts);
        k.feed(evs)
    }

    #[test]
    fn a_weekday_agent_on_its_second_sunday_is_found_once_its_weekend_has_recurred() {
        // From a Wednesday: an idle weekend, a working week, an idle Saturday; then a Sunday.
        let found = weekday_agent_then(2..12, 13);
        assert_eq!(off(&found), vec![Basis::Learned], "{found:?}");
        let f = incidents(&found, IncidentType::OffHours);
        assert!(
            f[0].description
                .contains("in a block of 2 days off it worked on 0 of 3 occurrences"),
            "{}",
            f[0].description
        );
    }

    #[test]
    fn one_idle_weekend_does_not_make_the_next_saturday_off() {
        // Two working weeks around one idle weekend, then the second Saturday: the weekend has
        // not recurred (two idle occurrences in the block, each day idle once).
        let found = weekday_agent_then(0..12, 12);
        assert!(off(&found).is_empty(), "{found:?}");
    }

    #[test]
    fn a_first_friday_off_before_a_weekend_does_not_make_the_next_friday_off() {
        // Monday to Thursday worked, the Friday idle (a holiday) with the weekend, then a week
        // worked to Thursday and the Friday: three idle days in the block, none of them twice.
        let found = weekday_agent_then((0..4).chain(7..11), 11);
        assert!(off(&found).is_empty(), "{found:?}");
    }

    #[test]
    fn a_low_rate_agent_at_the_edge_of_its_hours_is_not_an_incident() {
        // 3 calls an hour 09:00-17:00 UTC every day; now and then a call or two at 17:xx or 08:xx.
        let mut k = Kit::new(soc());
        let mon = at("2026-03-02T09:00:00Z");
        let mut evs = routine(mon, 0..28, 8, 3, "triage");
        for d in (9..28).step_by(3) {
            evs.push(ev(
                mon + d * 86_400_000 + 8 * 3_600_000 + 600_000,
                "triage",
                None,
            ));
            evs.push(ev(
                mon + d * 86_400_000 + 8 * 3_600_000 + 1_500_000,
                "triage",
                None,
            ));
            evs.push(ev(mon + (d + 1) * 86_400_000 - 1_800_000, "triage", None));
        }
        evs.sort_by_key(|e| e.ts);
        let found = k.feed(evs);
        assert!(
            off(&found).is_empty(),
            "{:?}",
            incidents(&found, IncidentType::OffHours)
        );
    }

    #[test]
    fn a_night_of_a_day_agent_is_found_by_its_rhythm() {
        let mut k = Kit::new(soc());
        let mon = at("2026-03-02T09:00:00Z");
        let mut evs = routine(mon, 0..14, 8, 3, "triage");
        let night = at("2026-03-16T02:10:00Z");
        evs.extend((0..8).map(|i| ev(night + i * 240_000, "triage", None)));
        evs.sort_by_key(|e| e.ts);
        let found = k.feed(evs);
        assert_eq!(off(&found), vec![Basis::Learned], "{found:?}");
    }
}
