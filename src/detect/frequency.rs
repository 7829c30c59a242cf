//! frequency_spike, judged against the agent.
//!
//! - **Static:** calls in the blueprint's sliding window (1 min by default) over its
//!   `frequency_threshold`. A match is routine when the agent's own rate makes such a count
//!   ordinary (it runs above the threshold every day), or it did so on `routine_days` days: then
//!   it is a `baseline` finding, reported once and again when its level doubles.
//! - **Learned:** calls in windows of 5 min, 15 min, 1 h and 4 h against what the agent usually
//!   makes at this local hour of the day on a working day (never less than half its working
//!   rate): a count that is both improbable (negative binomial tail below `sensitivity`) and at
//!   least `burst_ratio` (short windows) or `slow_burn_ratio` (long windows) times the expected.
//!   An agent with fewer than `min_active_days` of its own is compared with its blueprint's peers.
//!   An agent that works in sessions (at least `MIN_CALLS_PER_TURN` calls per turn in each hour
//!   the windows reach back to that it works) is judged on its turns too: calls split into many
//!   separate turns where it makes about one is a change of behaviour even when the call count
//!   stays within what its sessions make ordinary.
//! - One episode of violations (static or learned) is one incident, closed when it ends. Calls
//!   inside an open off-hours incident are that incident's, not a second one.
//!
//! Also the peer's count-based `volume_threshold`, reported as a volume spike.

use serde::{Deserialize, Serialize};

use super::cohort::{Member, ShiftTest};
use super::habit::{Habit, Report};
use super::rhythm::{Rhythm, TURN_GAP_MS};
use super::scales::{Scales, MINUTES, SCALES};
use super::stats::improbable_sessions;
use super::{human_ms, Context, Episode, Finding, Judgement, Observation, Ring, Step};
use crate::blueprint::Blueprint;
use crate::blueprint::RoutineMode;
use crate::response::{BaselineFacts, Basis, IncidentType, Source};

/// Least expected calls per hour, as a share of the agent's working rate.
const RATE_FLOOR: f64 = 0.5;
/// Day-to-day spread (coefficient of variation) of an hourly rate assumed when it is not learned
/// (peers, or an hour with too few calls to tell).
const RATE_CV: f64 = 0.5;
/// Least and most spread taken from an agent's own hours.
const MIN_CV: f64 = 0.25;
const MAX_CV: f64 = 1.0;
/// Five-minute buckets after which the dispersion estimate becomes exponentially weighted.
const DISPERSION_HORIZON: f32 = 1000.0;
/// Weight (in buckets) of the Poisson prior of the dispersion.
const DISPERSION_PRIOR: f32 = 20.0;
/// Most one bucket can say about the dispersion (one odd bucket must not blind the detector).
const MAX_BUCKET_DISPERSION: f32 = 100.0;
/// Share of a window's alert ratio its most recent part must still run at.
const RECENT_SHARE: f64 = 0.75;
/// Least calls per turn for an agent to be judged on its turns as well as its calls.
const MIN_CALLS_PER_TURN: f64 = 3.0;

/// How clustered the agent's calls are: the mean of (count − expected)² / expected over its
/// five-minute buckets (1 for calls that come one by one at random; about the session size for
/// calls that come in sessions). It widens every window's expected spread.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Dispersion {
    mean: f32,
    n: u32,
}

impl Dispersion {
    /// Learns one bucket of `count` calls where `expected` were expected.
    fn learn(&mut self, count: u32, expected: f64) {
        if expected <= 0.0 {
            return;
        }
        let x =
            (((f64::from(count) - expected).powi(2) / expected) as f32).min(MAX_BUCKET_DISPERSION);
        self.n = self.n.saturating_add(1);
        let alpha = 1.0 / (self.n as f32).min(DISPERSION_HORIZON);
        self.mean += alpha * (x - self.mean);
    }

    /// The dispersion to use: the learned one shrunk towards Poisson (1) while it is young,
    /// never below 1.
    pub fn value(&self) -> f64 {
        let n = self.n as f32;
        f64::from(((self.mean * n + DISPERSION_PRIOR) / (n + DISPERSION_PRIOR)).max(1.0))
    }
}

/// Limits for one local hour, computed when the hour starts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Limits {
    /// Local day × 24 + hour they hold for.
    key: i64,
    /// Expected calls per hour.
    rate: f32,
    /// Day-to-day spread of that rate (coefficient of variation).
    cv: f32,
    /// How clustered the agent's calls are (see [`Dispersion`]).
    dispersion: f32,
    /// Expected calls in each window.
    expected: [f32; SCALES],
    /// Count from which each window is anomalous: a cheap lower bound until `exact` has its bit.
    bound: [u32; SCALES],
    exact: u8,
    /// Expected turns in each window (agents that work in sessions; 0 otherwise).
    turn_expected: [f32; SCALES],
    /// Turns from which each window is anomalous (`u32::MAX`: not judged on turns), a cheap
    /// lower bound until `turn_exact` has its bit.
    turn_bound: [u32; SCALES],
    turn_exact: u8,
    /// The most calls in the static window that are ordinary for the agent (0: not computed).
    routine_max: u32,
    source: Source,
    /// Active days (or peer agent-days) behind `rate`.
    samples: u32,
    /// [`super::CohortShift::epoch`] of the cohort factors applied.
    epoch: u32,
    /// The cohort factor of each window applied to `expected` (1: none).
    factors: [f32; SCALES],
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            key: i64::MIN,
            rate: 0.0,
            cv: RATE_CV as f32,
            dispersion: 1.0,
            expected: [0.0; SCALES],
            bound: [u32::MAX; SCALES],
            exact: 0,
            turn_expected: [0.0; SCALES],
            turn_bound: [u32::MAX; SCALES],
            turn_exact: 0,
            routine_max: 0,
            source: Source::Blueprint,
            samples: 0,
            epoch: 0,
            factors: [1.0; SCALES],
        }
    }
}

/// Per-agent frequency state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrequencyState {
    calls: Ring<u32>,
    scales: Scales,
    /// Turns (calls at least [`TURN_GAP_MS`] after the previous one) in the same windows.
    turns: Scales,
    /// Event time of the latest call.
    last_call: i64,
    episode: Episode,
    count_volume: Episode,
    habit: Habit,
    limits: Limits,
    dispersion: Dispersion,
}

impl FrequencyState {
    /// Fresh state for a blueprint.
    pub fn new(bp: &Blueprint) -> FrequencyState {
        FrequencyState {
            calls: Ring::new(bp.window_ms, bp.allowed_lateness_ms),
            scales: Scales::default(),
            turns: Scales::default(),
            last_call: i64::MIN,
            episode: Episode::default(),
            count_volume: Episode::default(),
            habit: Habit::default(),
            limits: Limits::default(),
            dispersion: Dispersion::default(),
        }
    }

    /// Announces the memory an event reads.
    pub fn prefetch(&self) {
        self.calls.prefetch();
    }

    /// What a cohort reads of it ([`FrequencyState::member_at`]: the counts of its windows),
    /// the rest empty (see [`super::DetectorState::husk`]).
    pub fn husk(&self) -> FrequencyState {
        FrequencyState {
            calls: self.calls.emptied(),
            scales: self.scales.clone(),
            turns: Scales::default(),
            last_call: self.last_call,
            episode: Episode::default(),
            count_volume: Episode::default(),
            habit: Habit::default(),
            limits: Limits::default(),
            dispersion: Dispersion::default(),
        }
    }

    /// Forgets the episode opened at event time `ts` (see
    /// [`super::DetectorState::forget_episode`]).
    pub fn forget_episode(&mut self, ts: i64) {
        self.episode.forget_opened_at(ts);
    }

    /// Whether a frequency incident is open.
    pub fn is_open(&self) -> bool {
        self.episode.is_open()
    }

    /// How clustered the agent's calls are (see `Dispersion`).
    pub fn dispersion(&self) -> f64 {
        self.dispersion.value()
    }

    /// For a cohort evaluation at `ts` (local hour `hour`): the agent's calls in each window of
    /// whole buckets ending before `ts`'s, with its own expected calls there; `None` for an
    /// agent without a baseline of its own.
    pub fn member_at(&self, bp: &Blueprint, rhythm: &Rhythm, hour: u8, ts: i64) -> Option<Member> {
        let e = own_windows(bp, rhythm, hour)?;
        let c = self.scales.complete_at(ts);
        Some(std::array::from_fn(|i| (c[i], e[i])))
    }
}

/// Expected calls in each window ending in local hour `h` from the agent's own rhythm (see
/// [`expectation`]); `None` before it has `min_active_days`.
fn own_windows(bp: &Blueprint, r: &Rhythm, h: u8) -> Option<[f64; SCALES]> {
    if r.active_days() < bp.learned.min_active_days {
        return None;
    }
    let rate = |back: u8| r.expected_hour((h + 24 - back % 24) % 24, RATE_FLOOR);
    let now = rate(0).max(rate(1));
    // Four hours: this one and the three before, or the three before and the fourth before.
    let span: f64 = (1..4).map(rate).sum();
    let four = (span + rate(0)).max(span + rate(4));
    Some([now / 12.0, now / 4.0, now, four])
}

/// What the agent's history says about the current local hour.
struct Expectation {
    /// Expected calls in each window ending now.
    windows: [f64; SCALES],
    /// Day-to-day spread of the rate (coefficient of variation).
    cv: f64,
    source: Source,
    /// Active days (or peer agent-days) behind it.
    samples: u32,
}

/// Expected calls in each window ending in local hour `h`: a window takes the expected rates of
/// the hours it spans (the hour before included, since a window may begin there), so a window
/// that reaches back into busier hours expects their calls. `dispersion`: how clustered the
/// agent's calls are, which also widens its hourly counts and is not part of the day-to-day
/// spread.
fn expectation(
    bp: &Blueprint,
    ctx: &Context<'_>,
    obs: &Observation<'_>,
    dispersion: f64,
) -> Option<Expectation> {
    let r = ctx.rhythm;
    if let Some(windows) = own_windows(bp, r, obs.local.hour) {
        let h = obs.local.hour;
        // Spread of this hour's count beyond what clustered calls explain, widened for a short
        // history.
        let s = r.hour(h);
        let mean = f64::from(s.mean);
        let cv = if mean >= 2.0 {
            let extra = (f64::from(s.var) - dispersion * mean).max(0.0).sqrt() / mean;
            (extra * (1.0 + 1.0 / f64::from(r.active_days())).sqrt()).clamp(MIN_CV, MAX_CV)
        } else {
            RATE_CV
        };
        return Some(Expectation {
            windows,
            cv,
            source: Source::Agent,
            samples: r.active_days(),
        });
    }
    ctx.peers.upper_rate().map(|e| Expectation {
        windows: MINUTES.map(|m| e * m as f64 / 60.0),
        cv: RATE_CV,
        source: Source::Peers,
        samples: ctx.peers.rate_days(),
    })
}

fn limits(
    bp: &Blueprint,
    ctx: &Context<'_>,
    obs: &Observation<'_>,
    key: i64,
    dispersion: &Dispersion,
) -> Limits {
    let mut l = Limits {
        key,
        ..Limits::default()
    };
    l.epoch = ctx.cohort.epoch;
    let Some(mut x) = expectation(bp, ctx, obs, dispersion.value()) else {
        return l;
    };
    // Judged against the shifted expectation while the agent's cohort is shifted.
    for (i, w) in x.windows.iter_mut().enumerate() {
        let f = ctx.cohort.factor(i);
        l.factors[i] = f as f32;
        *w *= f;
    }
    let lr = &bp.learned;
    l.rate = (x.windows[2]) as f32;
    l.cv = x.cv as f32;
    l.dispersion = if x.source == Source::Agent {
        dispersion.value() as f32
    } else {
        1.0
    };
    l.source = x.source;
    l.samples = x.samples;
    // Calls per turn over the hours the windows reach back to that the agent works, the least
    // of them: where it works call by call in any of them, its turns are not judged.
    let h = obs.local.hour;
    let per_turn = (0..5u8)
        .filter_map(|back| ctx.rhythm.calls_per_turn((h + 24 - back) % 24))
        .fold(f64::INFINITY, f64::min);
    for (i, minutes) in MINUTES.iter().enumerate() {
        let e = x.windows[i];
        let ratio = if *minutes < 60 {
            lr.burst_ratio
        } else {
            lr.slow_burn_ratio
        };
        l.expected[i] = e as f32;
        l.bound[i] = ((ratio * e).ceil() as u32).max(lr.min_window_count);
        if x.source == Source::Agent && per_turn.is_finite() && per_turn >= MIN_CALLS_PER_TURN {
            let t = e / per_turn;
            l.turn_expected[i] = t as f32;
            l.turn_bound[i] = ((ratio * t).ceil() as u32).max(lr.min_window_count);
        }
    }
    l
}

/// Checks one event.
pub fn observe(
    bp: &Blueprint,
    st: &mut FrequencyState,
    ctx: &mut Context<'_>,
    obs: &Observation<'_>,
    out: &mut Vec<Finding>,
) {
    if !obs.in_order {
        return;
    }
    close_expired(bp, st, obs.ts, out);
    let count = count_call(bp, st, obs.ts);

    let key = i64::from(obs.local.day) * 24 + i64::from(obs.local.hour);
    if st.limits.key != key || st.limits.epoch != ctx.cohort.epoch {
        st.limits = limits(bp, ctx, obs, key, &st.dispersion);
    }
    let learned = learned_violation(bp, st, obs.ts);
    let static_over = bp.frequency_threshold.filter(|t| count > *t);
    let volume_over = bp.count_volume_threshold.filter(|t| count > *t);
    let routine = (static_over.is_some() || volume_over.is_some())
        && learned.is_none()
        && routine_count(bp, st, count);
    let mode = bp.routine.frequency;
    let folded = ctx.off_hours_open;

    // Static over the threshold: judged against the agent.
    let mut new_static = None;
    if let Some(t) = static_over {
        match judge(mode, ctx.learning, routine) {
            Judgement::New => new_static = Some(t),
            j => {
                let say = st
                    .habit
                    .report(j, mode, obs.local.day, f64::from(count), false);
                if say == Report::Say {
                    out.push(routine_finding(bp, st, obs, j, count, t));
                }
            }
        }
    }
    let new_learned = learned.filter(|_| !ctx.learning);
    if (new_static.is_some() || new_learned.is_some()) && !folded {
        open_episode(bp, st, obs, count, new_static, new_learned, out);
    }

    // The peer's count-based volume threshold, judged the same way.
    if let Some(t) = volume_over {
        if judge(mode, ctx.learning, routine) == Judgement::New {
            count_volume(bp, st, obs, count, t, out);
        }
    }
}

/// Closes the frequency and count-volume episodes that ended before event time `ts`.
fn close_expired(bp: &Blueprint, st: &mut FrequencyState, ts: i64, out: &mut Vec<Finding>) {
    if let Some(c) = st.episode.expire(ts, &bp.dedup) {
        out.push(Finding::closing(
            IncidentType::FrequencySpike,
            bp.severities.frequency_spike,
            c,
            "calls",
            0,
        ));
    }
    if let Some(c) = st.count_volume.expire(ts, &bp.dedup) {
        out.push(Finding::closing(
            IncidentType::VolumeSpike,
            bp.severities.volume_spike,
            c,
            "calls",
            1,
        ));
    }
}

/// Counts a call at `ts` in the static window, the learned windows and the turns (learning the
/// dispersion from the buckets it completes); returns the calls in the static window.
fn count_call(bp: &Blueprint, st: &mut FrequencyState, ts: i64) -> u32 {
    if !st.calls.fits(bp.window_ms, bp.allowed_lateness_ms) {
        st.calls = Ring::new(bp.window_ms, bp.allowed_lateness_ms);
    }
    st.calls.add(ts, 1);
    learn_dispersion(st, ts);
    st.scales.add(ts);
    if ts.saturating_sub(st.last_call) >= TURN_GAP_MS {
        st.turns.add(ts);
    }
    st.last_call = st.last_call.max(ts);
    st.calls.max_window_containing(ts)
}

/// When a call at `ts` completes a five-minute bucket: learns how clustered the agent's calls are
/// from it and from the empty buckets since (up to an hour of them), unless it was part of an
/// incident.
#[inline]
fn learn_dispersion(st: &mut FrequencyState, ts: i64) {
    if let Some((latest, count)) = st.scales.latest() {
        let b = ts.div_euclid(super::scales::BUCKET_MS);
        if b > latest && st.limits.source == Source::Agent && !st.episode.is_open() {
            let e = f64::from(st.limits.expected[0]);
            st.dispersion.learn(count, e);
            for _ in 0..(b - latest - 1).min(11) {
                st.dispersion.learn(0, e);
            }
        }
    }
}

/// Whether `count` calls in the static window are routine for the agent: ordinary at its own
/// rate (the most that is, computed once per hour), or over the threshold on `routine_days`.
fn routine_count(bp: &Blueprint, st: &mut FrequencyState, count: u32) -> bool {
    let l = &mut st.limits;
    if l.routine_max == 0 && l.source == Source::Agent {
        let e = f64::from(l.rate) * bp.window_ms as f64 / crate::detect::HOUR_MS as f64;
        l.routine_max = improbable_from(l.dispersion, l.cv, e, bp.learned.sensitivity)
            .max((2.0 * e) as u32)
            .max(1);
    }
    (l.source == Source::Agent && count <= l.routine_max)
        || st.habit.is_routine(bp.learned.routine_days)
}

/// Counts a new static (`new_static`: its threshold) or learned violation in the frequency
/// episode; the finding when it opens one.
fn open_episode(
    bp: &Blueprint,
    st: &mut FrequencyState,
    obs: &Observation<'_>,
    count: u32,
    new_static: Option<u32>,
    new_learned: Option<(usize, u32, Counted)>,
    out: &mut Vec<Finding>,
) {
    let observed = f64::from(count);
    let step = st.episode.violate(obs.ts, observed, &bp.dedup, || {
        obs.opening(basis_of(new_static))
    });
    if step == Step::Opened {
        out.push(match (new_static, new_learned) {
            (Some(t), _) => static_finding(bp, st, obs, count, t),
            (None, Some((i, c, what))) => learned_finding(bp, st, obs, i, c, what),
            (None, None) => return,
        });
    }
}

/// Counts a new violation of the count-based volume threshold `t` (`count` calls) in its
/// episode; the finding when it opens one.
fn count_volume(
    bp: &Blueprint,
    st: &mut FrequencyState,
    obs: &Observation<'_>,
    count: u32,
    t: u32,
    out: &mut Vec<Finding>,
) {
    if st
        .count_volume
        .violate(obs.ts, f64::from(count), &bp.dedup, || {
            obs.opening(Basis::Static)
        })
        == Step::Opened
    {
        let mut f = window_finding(
            bp,
            IncidentType::VolumeSpike,
            bp.severities.volume_spike,
            obs,
            count,
            t,
        );
        f.disc = 1;
        f.description = format!(
            "Agent {:?} exceeded the volume threshold: {count} actions in {} (limit {t}).",
            obs.agent_id,
            human_ms(bp.window_ms)
        );
        out.push(f);
    }
}

/// Smallest count of a window of mean `e` that is improbable (tail below `alpha`). Calls that come
/// in sessions are counted in units of the agent's dispersion (a quasi-Poisson model: sessions
/// arrive at random, `dispersion` calls each on average), with the day-to-day spread of the rate
/// on top.
fn improbable_from(dispersion: f32, cv: f32, e: f64, alpha: f64) -> u32 {
    let d = f64::from(dispersion).max(1.0);
    let t = improbable_sessions(e / d, f64::from(cv), alpha);
    u32::try_from((f64::from(t) * d).ceil() as u64).unwrap_or(u32::MAX)
}

/// A static finding about the blueprint's window ending with this event: `count` calls against
/// the threshold `t`.
fn window_finding(
    bp: &Blueprint,
    kind: IncidentType,
    severity: crate::blueprint::Severity,
    obs: &Observation<'_>,
    count: u32,
    t: u32,
) -> Finding {
    let mut f = Finding::new(kind, Basis::Static, severity);
    f.observed = f64::from(count);
    f.expected = f64::from(t);
    f.unit = "calls";
    f.window_start = obs.ts - bp.window_ms;
    f.window_end = obs.ts;
    f
}

/// The basis of a finding about an event: static when it is over a static threshold.
pub(super) fn basis_of<T>(static_over: Option<T>) -> Basis {
    if static_over.is_some() {
        Basis::Static
    } else {
        Basis::Learned
    }
}

/// How a static match stands: new, routine for the agent, or seen while learning.
pub(crate) fn judge(mode: RoutineMode, learning: bool, routine: bool) -> Judgement {
    if mode == RoutineMode::Alert {
        Judgement::New
    } else if learning {
        Judgement::Learning
    } else if routine {
        Judgement::Routine
    } else {
        Judgement::New
    }
}

/// What a learned violation counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counted {
    /// Calls.
    Calls,
    /// Turns: calls at least [`TURN_GAP_MS`] apart.
    Turns,
}

/// The window most over its limit, if any: (window index, count in it, what it counts).
fn learned_violation(
    bp: &Blueprint,
    st: &mut FrequencyState,
    ts: i64,
) -> Option<(usize, u32, Counted)> {
    let calls = st.scales.sums();
    let l = &mut st.limits;
    // The common case, cheaply: no window at its (lower) bound.
    let judges_turns = l.turn_bound[0] != u32::MAX;
    let turns = if judges_turns {
        st.turns.sums()
    } else {
        [0; SCALES]
    };
    let over =
        |sums: &[u32; SCALES], bound: &[u32; SCALES]| sums.iter().zip(bound).any(|(c, b)| c >= b);
    if !over(&calls, &l.bound) && !over(&turns, &l.turn_bound) {
        return None;
    }
    let sens = bp.learned.sensitivity;
    let mut best: Option<(usize, u32, Counted, f64)> = None;
    for (what, sums) in [(Counted::Calls, calls), (Counted::Turns, turns)] {
        for i in 0..SCALES {
            let (expected, bound, exact) = match what {
                Counted::Calls => (&l.expected, &mut l.bound, &mut l.exact),
                Counted::Turns => (&l.turn_expected, &mut l.turn_bound, &mut l.turn_exact),
            };
            let c = sums[i];
            if c < bound[i] {
                continue;
            }
            // The window's most recent part (the last minutes of the next shorter window, not
            // its partial latest bucket) must still run at `RECENT_SHARE` of the window's alert
            // ratio: a burst that is over does not keep the longer windows in violation for
            // hours, while one that straddles bucket edges counts.
            let recent = match what {
                Counted::Calls => st.scales.trailing(i.saturating_sub(1), ts),
                Counted::Turns => st.turns.trailing(i.saturating_sub(1), ts),
            };
            if i > 0
                && recent
                    < RECENT_SHARE * f64::from(bound[i]) / f64::from(expected[i]).max(1e-9)
                        * f64::from(expected[i - 1])
            {
                continue;
            }
            let e = f64::from(expected[i]);
            if *exact & (1 << i) == 0 {
                // Calls come in sessions (counted in units of the dispersion); turns are the
                // sessions themselves.
                let improbable = match what {
                    Counted::Calls => improbable_from(l.dispersion, l.cv, e, sens),
                    Counted::Turns => improbable_from(1.0, l.cv, e, sens),
                };
                let (bound, exact) = match what {
                    Counted::Calls => (&mut l.bound, &mut l.exact),
                    Counted::Turns => (&mut l.turn_bound, &mut l.turn_exact),
                };
                bound[i] = bound[i].max(improbable);
                *exact |= 1 << i;
                if c < bound[i] {
                    continue;
                }
            }
            let ratio = f64::from(c) / e.max(1e-9);
            if best.is_none_or(|b| ratio > b.3) {
                best = Some((i, c, what, ratio));
            }
        }
    }
    best.map(|(i, c, what, _)| (i, c, what))
}

fn facts(st: &FrequencyState, obs: &Observation<'_>, source: Source) -> BaselineFacts {
    BaselineFacts {
        source,
        history_days: obs.history_days,
        samples: u64::from(st.limits.samples),
        seen_before: u64::from(st.habit.days),
    }
}

fn static_finding(
    bp: &Blueprint,
    st: &FrequencyState,
    obs: &Observation<'_>,
    count: u32,
    t: u32,
) -> Finding {
    let l = &st.limits;
    let mut f = window_finding(
        bp,
        IncidentType::FrequencySpike,
        bp.severities.frequency_spike,
        obs,
        count,
        t,
    );
    let usual = match l.source {
        Source::Agent => format!(
            "; its usual rate at this hour is {:.1}/h over {} active days",
            l.rate, l.samples
        ),
        Source::Peers => format!("; its blueprint's agents reach {:.1}/h", l.rate),
        Source::Blueprint => "; no baseline yet".to_string(),
    };
    f.description = format!(
        "Agent {:?} made {count} calls in {} (threshold {t}){usual}.",
        obs.agent_id,
        human_ms(bp.window_ms)
    );
    f.facts = Some(facts(
        st,
        obs,
        if l.source == Source::Blueprint {
            Source::Blueprint
        } else {
            l.source
        },
    ));
    // Routine at the cohort's rate, it would be a baseline fact: the same test as `routine`.
    if l.source == Source::Agent {
        let hourly = f64::from(l.rate) / f64::from(l.factors[2]).max(1.0);
        f.shift = Some(ShiftTest::Rate {
            scale: 2,
            observed: count,
            expected: (hourly * bp.window_ms as f64 / crate::detect::HOUR_MS as f64) as f32,
            dispersion: l.dispersion,
            cv: l.cv,
            ratio: 2.0,
            min_count: 1,
        });
    }
    f
}

fn learned_finding(
    bp: &Blueprint,
    st: &FrequencyState,
    obs: &Observation<'_>,
    i: usize,
    c: u32,
    what: Counted,
) -> Finding {
    let l = &st.limits;
    let mut f = Finding::new(
        IncidentType::FrequencySpike,
        Basis::Learned,
        bp.severities.frequency_spike,
    );
    let (e, bound) = match what {
        Counted::Calls => (f64::from(l.expected[i]), l.bound[i]),
        Counted::Turns => (f64::from(l.turn_expected[i]), l.turn_bound[i]),
    };
    f.observed = f64::from(c);
    f.expected = e;
    f.unit = match what {
        Counted::Calls => "calls",
        Counted::Turns => "turns",
    };
    let span = MINUTES[i] * 60_000;
    f.window_start =
        (obs.ts.div_euclid(super::scales::BUCKET_MS) + 1) * super::scales::BUCKET_MS - span;
    f.window_end = obs.ts;
    let whose = match l.source {
        Source::Peers => format!(
            "its blueprint's agents reach {:.1}/h ({} agent-days; the agent's own history is too short)",
            l.rate, l.samples
        ),
        _ => format!(
            "its usual rate at {:02}:00 local is {:.1}/h over {} active days",
            obs.local.hour, l.rate, l.samples
        ),
    };
    let counted = match what {
        Counted::Calls => "calls".to_string(),
        Counted::Turns => format!(
            "separate turns of calls (it usually makes {:.1} calls per turn)",
            f64::from(l.expected[i]) / e.max(1e-9)
        ),
    };
    f.description = format!(
        "Agent {:?} made {c} {counted} in {} min, {:.1}× the {e:.1} expected: {whose} (alert from {bound}).",
        obs.agent_id,
        MINUTES[i],
        f64::from(c) / e.max(1e-9),
    );
    f.facts = Some(facts(st, obs, l.source));
    f.weighs = l.source == Source::Agent && obs.warm;
    f.shift = Some(ShiftTest::Rate {
        scale: i as u8,
        observed: c,
        expected: (e / f64::from(l.factors[i]).max(1.0)) as f32,
        dispersion: match what {
            Counted::Calls => l.dispersion,
            Counted::Turns => 1.0,
        },
        cv: l.cv,
        ratio: if MINUTES[i] < 60 {
            bp.learned.burst_ratio
        } else {
            bp.learned.slow_burn_ratio
        } as f32,
        min_count: bp.learned.min_window_count,
    });
    f
}

fn routine_finding(
    bp: &Blueprint,
    st: &FrequencyState,
    obs: &Observation<'_>,
    j: Judgement,
    count: u32,
    t: u32,
) -> Finding {
    let mut f = window_finding(
        bp,
        IncidentType::FrequencySpike,
        bp.severities.frequency_spike,
        obs,
        count,
        t,
    );
    f.judgement = j;
    let l = &st.limits;
    f.description = match j {
        Judgement::Learning => format!(
            "Agent {:?} made {count} calls in {} (threshold {t}) during the learning period; \
             its baseline will tell whether this is routine.",
            obs.agent_id,
            human_ms(bp.window_ms)
        ),
        _ => format!(
            "Agent {:?} routinely runs above the frequency threshold: {count} calls in {} (threshold {t}); \
             its usual rate at this hour is {:.1}/h, over the threshold on {} days. Reported again if it doubles.",
            obs.agent_id,
            human_ms(bp.window_ms),
            l.rate,
            st.habit.days
        ),
    };
    f.facts = Some(facts(st, obs, l.source));
    f
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use crate::response::{Basis, IncidentType};

    #[test]
    fn burst_over_static_threshold_raises_exactly_one_incident() {
        let mut k = Kit::after_learning(finance());
        // Finance: more than 30 calls a minute. 100 calls in 50 s, Monday 10:00 New York.
        let t0 = at("2026-03-02T15:00:00Z");
        let found = k.feed((0..100).map(|i| ev(t0 + i * 500, "query_ledger", None)));
        let f = incidents(&found, IncidentType::FrequencySpike);
        assert_eq!(f.len(), 1, "{found:?}");
        assert_eq!(f[0].basis, Basis::Static);
        assert_eq!(f[0].observed, 31.0);
        assert_eq!(f[0].expected, 30.0);
    }

    #[test]
    fn steady_rate_under_threshold_is_silent() {
        let mut k = Kit::after_learning(finance());
        let t0 = at("2026-03-02T15:00:00Z");
        let found = k.feed((0..600).map(|i| ev(t0 + i * 2_500, "query_ledger", None))); // 24/min for 25 min
        assert!(
            incidents(&found, IncidentType::FrequencySpike).is_empty(),
            "{found:?}"
        );
    }

    #[test]
    fn late_events_within_lateness_count_in_their_window() {
        let mut k = Kit::after_learning(finance());
        let t0 = at("2026-03-02T15:00:00Z");
        // 30 calls in order, then a call 20 s late: 31 in one minute.
        let mut evs: Vec<_> = (0..30)
            .map(|i| ev(t0 + 20_000 + i * 1000, "q", None))
            .collect();
        evs.push(ev(t0 + 30_000, "q", None));
        let found = k.feed(evs);
        assert_eq!(incidents(&found, IncidentType::FrequencySpike).len(), 1);
    }

    #[test]
    fn events_later_than_the_lateness_do_not_count() {
        let mut k = Kit::after_learning(finance());
        let t0 = at("2026-03-02T15:10:00Z");
        let mut evs: Vec<_> = (0..30).map(|i| ev(t0 + i * 1000, "q", None)).collect();
        evs.push(ev(t0 - 60_000, "q", None)); // 60 s late: beyond the 30 s lateness
        let found = k.feed(evs);
        assert!(incidents(&found, IncidentType::FrequencySpike).is_empty());
        assert_eq!(k.late, 1);
    }

    #[test]
    fn a_steady_agent_over_the_static_threshold_gives_one_baseline_finding_not_incidents() {
        // 40 calls a minute (threshold 30), 08:00-18:00 London on weekdays, for three weeks.
        let mut k = Kit::new(finance_in("Europe/London"));
        let mon = at("2026-03-02T08:00:00Z");
        let evs = routine(mon, weekdays(21), 10, 2400, "get_balance");
        let found = k.feed(evs);
        assert!(
            incidents(&found, IncidentType::FrequencySpike).is_empty(),
            "{:?}",
            incidents(&found, IncidentType::FrequencySpike).first()
        );
        let b = baselines(&found, IncidentType::FrequencySpike);
        assert_eq!(
            b.len(),
            2,
            "one while learning, one when judged routine: {b:?}"
        );
        assert_eq!(b[0].judgement, super::Judgement::Learning);
        assert_eq!(b[1].judgement, super::Judgement::Routine);
    }

    #[test]
    fn a_burst_and_a_slow_burn_of_a_low_rate_agent_are_found() {
        // 6 calls an hour 09:00-17:00 UTC on weekdays: hourly cells hold 0-2 calls per 5 minutes.
        let bp = soc();
        let mon = at("2026-03-02T09:00:00Z");
        let base = routine(mon, weekdays(21), 8, 6, "triage");
        // A burst: 60 calls in 10 minutes (10× the hour's rate in a tenth of it), day 15.
        let burst_at = mon + 15 * 86_400_000 + 3 * 3_600_000 + 120_000;
        let mut evs = base.clone();
        evs.extend((0..60).map(|i| ev(burst_at + i * 10_000, "triage", None)));
        evs.sort_by_key(|e| e.ts);
        let mut k = Kit::new(bp.clone());
        let found = k.feed(evs);
        let f = incidents(&found, IncidentType::FrequencySpike);
        assert_eq!(f.len(), 1, "{found:?}");
        assert_eq!(f[0].basis, Basis::Learned);
        assert!(f[0].window_end >= burst_at && f[0].window_end < burst_at + 600_000);

        // A slow burn: 30 calls an hour (5×) for four hours, day 16: only the long windows see it.
        let burn_at = mon + 16 * 86_400_000 + 2 * 3_600_000 + 1000;
        let mut evs = base;
        evs.retain(|e| e.ts < burn_at || e.ts >= burn_at + 4 * 3_600_000);
        evs.extend((0..120).map(|i| ev(burn_at + i * 120_000, "triage", None)));
        evs.sort_by_key(|e| e.ts);
        let mut k = Kit::new(bp);
        let found = k.feed(evs);
        let f = incidents(&found, IncidentType::FrequencySpike);
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(
            f[0].description.contains("240 min") || f[0].description.contains("60 min"),
            "{}",
            f[0].description
        );
    }

    #[test]
    fn a_session_agent_calling_one_by_one_is_found_by_its_turns() {
        // Two sessions an hour of 8 calls 2 s apart (16 calls an hour), 09:00-17:00 UTC on
        // weekdays: its calls are clustered, so a count of calls alone says little.
        let bp = soc();
        let mon = at("2026-03-02T09:00:00Z");
        let mut base = Vec::new();
        for d in weekdays(21) {
            for h in 0..8 {
                for minute in [7, 37] {
                    let t = mon + d * 86_400_000 + h * 3_600_000 + minute * 60_000;
                    base.extend((0..8).map(|c| ev(t + c * 2_000, "triage", None)));
                }
            }
        }
        // Day 15, 11:12: 40 calls one by one, 20 s apart. Their count stays within what its
        // sessions make ordinary; 40 separate turns where about half of one is usual do not.
        let burst_at = mon + 15 * 86_400_000 + 2 * 3_600_000 + 12 * 60_000;
        let mut evs = base.clone();
        evs.extend((0..40).map(|i| ev(burst_at + i * 20_000, "triage", None)));
        evs.sort_by_key(|e| e.ts);
        let found = Kit::new(bp.clone()).feed(evs);
        let f = incidents(&found, IncidentType::FrequencySpike);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!((f[0].basis, f[0].unit), (Basis::Learned, "turns"), "{f:?}");
        assert!(f[0].window_end >= burst_at && f[0].window_end < burst_at + 800_000);
        // Its ordinary sessions alone raise nothing.
        let found = Kit::new(bp).feed(base);
        assert!(
            incidents(&found, IncidentType::FrequencySpike).is_empty(),
            "{found:?}"
        );
    }

    #[test]
    fn one_episode_closes_with_its_count() {
        let mut k = Kit::after_learning(finance());
        let t0 = at("2026-03-02T15:00:00Z");
        let mut evs: Vec<_> = (0..200).map(|i| ev(t0 + i * 1000, "q", None)).collect();
        evs.push(ev(t0 + 3 * 3_600_000, "q", None));
        let found = k.feed(evs);
        let f = of_kind(&found, IncidentType::FrequencySpike);
        assert_eq!(f.len(), 2, "{f:?}");
        let c = f[1].closing.as_ref().expect("a closing record");
        assert!(c.count > 100, "{c:?}");
        assert_eq!(c.opening.ts, f[0].window_end);
    }

    #[test]
    fn a_new_agent_is_compared_with_its_peers() {
        let mut k = Kit::after_learning(soc());
        // Peers work at 10 calls an hour; the new agent makes 200 calls in ten minutes (under the
        // static 100 a minute) on its first day.
        for _ in 0..40 {
            k.peers.day(10.0);
        }
        let t0 = at("2026-03-02T10:00:00Z");
        let found = k.feed((0..200).map(|i| ev(t0 + i * 3_000, "triage", None)));
        let f = incidents(&found, IncidentType::FrequencySpike);
        assert_eq!(f.len(), 1, "{found:?}");
        assert_eq!(
            f[0].facts.map(|x| x.source),
            Some(crate::response::Source::Peers)
        );
        assert!(!f[0].weighs, "no kill weight from the peers' baseline");
    }

    #[test]
    fn peer_count_volume_threshold_is_honoured() {
        let mut k = Kit::after_learning(peer_finance());
        let t0 = at("2026-03-02T15:00:00Z");
        let found = k.feed((0..150).map(|i| ev(t0 + i * 200, "q", None)));
        let v = incidents(&found, IncidentType::VolumeSpike);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].observed, 101.0);
        assert_eq!(v[0].unit, "calls");
    }
}
