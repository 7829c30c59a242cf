//! Findings through the agent's cohort: agents that move together are one fleet event.
//!
//! A finding a cohort shift could explain (it carries a [`ShiftTest`]) goes one of three ways:
//! - its cohort has an open shift of that kind: judged against it now — explained (no incident,
//!   no kill weight, the agent's episode forgotten so that a later violation of its own opens
//!   one) or beyond it (an incident, raised at once);
//! - its cohort has at least `cohort.min_agents` members here: it waits `cohort.wait` of event
//!   time, then the cohort is evaluated over its members ([`RateEvaluation`] for call rates,
//!   [`Presence`] for the other kinds); a shift found opens a `fleet_shift` record and the
//!   finding is judged against it, otherwise it is raised;
//! - otherwise it is raised at once (per-agent judgement).
//!
//! An open rate shift is evaluated again every five minutes of event time: its factors (the
//! members' median ratio of calls to their own expected calls, per window) are what the members'
//! frequency detectors multiply their expected counts by. A shift not confirmed for
//! `cohort.gap` closes with a record naming the agents it explained.

use crate::blueprint::Severity;
use crate::detect::{
    local_time, CohortShift, Finding, Judgement, Member, Presence, RateEvaluation, ShiftKind,
    ShiftTest,
};
use crate::response::{incident_id, Action, Basis, Incident, IncidentType, Status};
use crate::state::{CohortState, HeldFinding, OpenShift};

use super::{type_index, Cohort, Engine};

/// Event time between two evaluations of an open rate shift.
const EVALUATE_EVERY_MS: i64 = 300_000;
/// Longest delivery lag waited for: a stream later than an hour is judged as it comes (and an
/// attacker who floods old-dated calls delays cohort judgements by an hour at most, for two
/// hours after the flood).
const MAX_LAG_MS: i64 = 3_600_000;
/// Event time between two looks at a cohort that is stirring (see [`Verdict::Stirring`]).
const RECHECK_MS: i64 = 60_000;

/// Findings held per agent at most: beyond, a finding is raised at once.
const MAX_HELD: usize = 32;

/// What an evaluation of a cohort found.
#[derive(Debug, Clone, Copy)]
enum Verdict {
    /// A shift, opened (its position in the cohort's shifts).
    Shift(usize),
    /// No shift yet, but other members show the same kind of finding: the cohort may be moving.
    Stirring,
    /// No shift.
    Quiet,
}

/// Episodes of one agent's release: (kind, discriminator) of openings explained, and of
/// openings that wait on with the time they wait until.
#[derive(Default)]
struct Episodes {
    explained: Vec<(IncidentType, u32)>,
    waiting: Vec<((IncidentType, u32), i64)>,
}

impl Engine {
    /// The position of the cohort of an agent of blueprint `bp` with `group`, created if new.
    pub(super) fn cohort_of(&mut self, bp: usize, group: Option<&str>) -> u32 {
        let b = self.set.get(bp);
        let key = match b.cohort.by {
            crate::blueprint::CohortBy::Blueprint => b.key.clone(),
            crate::blueprint::CohortBy::Group => format!("{}/{}", b.key, group.unwrap_or("-")),
        };
        if let Some(&c) = self.cohort_index.get(&key) {
            return c;
        }
        let c = self.cohorts.len() as u32;
        self.cohorts.push(Cohort {
            bp,
            members: Vec::new(),
            state: CohortState {
                key: key.clone(),
                blueprint: b.key.clone(),
                ..CohortState::default()
            },
        });
        self.cohort_index.insert(key, c);
        c
    }

    /// Takes a cohort's stored state back (before its agents), if its blueprint is still loaded.
    pub(super) fn restore_cohort(&mut self, state: CohortState) {
        let Some(bp) = self.set.index_of(&state.blueprint) else {
            return;
        };
        if self.cohort_index.contains_key(&state.key) {
            return;
        }
        self.cohort_index
            .insert(state.key.clone(), self.cohorts.len() as u32);
        self.cohorts.push(Cohort {
            bp,
            members: Vec::new(),
            state,
        });
    }

    /// The stream's delivery lag (at most `MAX_LAG_MS`): cohorts are judged as of the latest
    /// event time less it, the time up to which the stream has delivered most agents' calls.
    pub(super) fn lag_ms(&self) -> i64 {
        self.lag.value(MAX_LAG_MS)
    }

    /// Open fleet shifts, by cohort key.
    pub fn fleet_shifts(&self) -> impl Iterator<Item = (&str, &OpenShift)> {
        self.cohorts
            .iter()
            .flat_map(|c| c.state.shifts.iter().map(|s| (c.state.key.as_str(), s)))
    }

    /// Sends finding `f` of the agent at position `i` through its cohort: to `raise`, held, or
    /// explained. `ts`, `event_id`, `tool_name`: the event that raised it.
    pub(super) fn through_cohort(
        &mut self,
        i: usize,
        f: Finding,
        ts: i64,
        event_id: &str,
        tool_name: &str,
        raise: &mut Vec<Finding>,
    ) {
        let at = f.trigger.map_or(ts, |t| t.0);
        let a = &mut self.agents[i];
        let set = self.set.clone();
        let bp = set.get(a.bp);
        let marks = &mut a.state.cohort;
        // The closing record of an episode whose opening still waits goes with it.
        if f.closing.is_some() {
            let until = marks
                .held
                .iter()
                .rev()
                .find(|h| h.finding.closing.is_none() && same_episode(&h.finding, &f))
                .map(|h| h.until);
            match until {
                Some(until) => self.hold(i, f, until, ts, event_id, tool_name),
                None => raise.push(f),
            }
            return;
        }
        let Some(test) = f
            .shift
            .clone()
            .filter(|_| f.judgement == Judgement::New && !always_alerts(bp, &f))
        else {
            raise.push(f);
            return;
        };
        marks.found(test.kind(), test.rule(), at);
        if let ShiftTest::Volume { ratio } = test {
            marks.volume_ratio = ratio;
        }
        let rules = bp.cohort;
        if !rules.enabled {
            raise.push(f);
            return;
        }
        let c = a.cohort as usize;
        let held = marks.held.len();
        if let Some(k) = self.going_on(c, &test, at) {
            if explains(&self.cohorts[c].state, k, &test, bp) {
                self.explain(i, c, k, &f, ts, at);
            } else {
                raise.push(f);
            }
            return;
        }
        // A cohort with fewer members at work now than a shift needs cannot show one soon (a
        // night, the end of a day, a new fleet): judged agent by agent at once. "Now" as far as
        // the stream has delivered the members' calls.
        let since = at
            .saturating_sub(rules.wait_ms)
            .saturating_sub(self.lag_ms());
        if rules.wait_ms > 0
            && held < MAX_HELD
            && self.cohorts[c].members.len() >= rules.min_agents as usize
            && self.at_work(c, since) >= rules.min_agents
        {
            self.hold(
                i,
                f,
                at.saturating_add(rules.wait_ms),
                ts,
                event_id,
                tool_name,
            );
        } else {
            raise.push(f);
        }
    }

    /// The open shift of cohort `c` that could explain a finding with `test` at event time
    /// `at`, if it still shows: a shift of another kind than rates not evaluated for five
    /// minutes is evaluated again first (its members' findings alone do not keep it open).
    fn going_on(&mut self, c: usize, test: &ShiftTest, at: i64) -> Option<usize> {
        let k = self.cohorts[c].state.shift(test.kind(), test.rule())?;
        let s = &self.cohorts[c].state.shifts[k];
        if s.kind == ShiftKind::Rate || at.saturating_sub(s.confirmed) < EVALUATE_EVERY_MS {
            return Some(k);
        }
        let bp = self.set.get(self.cohorts[c].bp);
        let p = self.presence(c, test, at);
        if !p.shifted(&bp.cohort) {
            return None;
        }
        let s = &mut self.cohorts[c].state.shifts[k];
        s.confirmed = s.confirmed.max(at);
        s.shown = (p.found, p.active);
        Some(k)
    }

    /// Holds finding `f` of the agent at position `i` until event time `until`.
    fn hold(&mut self, i: usize, f: Finding, until: i64, ts: i64, event_id: &str, tool_name: &str) {
        let a = &mut self.agents[i];
        a.state.cohort.held.push(HeldFinding {
            finding: f,
            until,
            at: ts,
            event_id: event_id.to_string(),
            tool_name: tool_name.to_string(),
        });
        if !a.holding {
            a.holding = true;
            self.holding.push(i as u32);
        }
        self.mark_dirty(i);
    }

    /// Counts finding `f` of the agent at position `i` (raised by its event at `ts`, about event
    /// time `at`) as explained by shift `k` of cohort `c`: no incident, no kill weight, and the
    /// episode it opened is forgotten.
    fn explain(&mut self, i: usize, c: usize, k: usize, f: &Finding, ts: i64, at: i64) {
        let st = &mut self.agents[i].state;
        st.detectors.forget_episode(f.kind, f.disc, ts);
        self.cohorts[c].state.shifts[k].explain(&st.agent_id, at);
        self.stats.explained += 1;
        self.mark_dirty(i);
    }

    /// Judges the held findings whose wait is over as of event time `now` (all of them when
    /// `all`: the end of the stream), agent by agent in a canonical order.
    pub(super) fn release(&mut self, now: i64, all: bool, out: &mut Vec<Incident>) {
        let mut due: Vec<(i64, u32)> = self
            .holding
            .iter()
            .filter_map(|&i| {
                let first = self.agents[i as usize]
                    .state
                    .cohort
                    .held
                    .iter()
                    .map(|h| h.until)
                    .min()?;
                (all || first <= now).then_some((first, i))
            })
            .collect();
        if due.is_empty() {
            return;
        }
        due.sort_by(|a, b| {
            a.0.cmp(&b.0).then_with(|| {
                self.agents[a.1 as usize]
                    .state
                    .agent_id
                    .cmp(&self.agents[b.1 as usize].state.agent_id)
            })
        });
        // Cohorts found quiet in this release, by (cohort, kind, rule, minute): evaluated once.
        let mut quiet: Vec<(usize, ShiftKind, u32, i64, Verdict)> = Vec::new();
        for (_, i) in due {
            let i = i as usize;
            let held = std::mem::take(&mut self.agents[i].state.cohort.held);
            let (ready, rest): (Vec<HeldFinding>, Vec<HeldFinding>) =
                held.into_iter().partition(|h| all || h.until <= now);
            self.agents[i].state.cohort.held = rest;
            self.mark_dirty(i);
            // Episodes whose opening was explained (their closing records go too), and those
            // whose opening waits on (their closing records wait with it).
            let mut episodes = Episodes::default();
            for h in ready {
                // Judged as of the end of its wait (or of the stream).
                let as_of = h.until.min(now);
                self.judge_held(i, h, as_of, all, &mut episodes, &mut quiet, out);
            }
        }
        let agents = &mut self.agents;
        self.holding.retain(|&i| {
            let a = &mut agents[i as usize];
            a.holding = !a.state.cohort.held.is_empty();
            a.holding
        });
    }

    /// Judges one held finding of the agent at position `i` as of event time `now` (`last`: the
    /// end of the stream, nothing waits any more).
    #[allow(clippy::too_many_arguments)]
    fn judge_held(
        &mut self,
        i: usize,
        h: HeldFinding,
        now: i64,
        last: bool,
        episodes: &mut Episodes,
        quiet: &mut Vec<(usize, ShiftKind, u32, i64, Verdict)>,
        out: &mut Vec<Incident>,
    ) {
        let f = h.finding;
        let at = f.trigger.map_or(h.at, |t| t.0);
        let raise_one = |e: &mut Engine, f: Finding, out: &mut Vec<Incident>| {
            let mut v = vec![f];
            e.raise(i, h.at, &h.event_id, &h.tool_name, &mut v, out);
        };
        if f.closing.is_some() {
            let episode = (f.kind, f.disc);
            if episodes.explained.contains(&episode) {
                return;
            }
            if let Some(&(_, until)) = episodes.waiting.iter().find(|w| w.0 == episode) {
                self.hold(i, f, until, h.at, &h.event_id, &h.tool_name);
                return;
            }
            raise_one(self, f, out);
            return;
        }
        let Some(test) = f.shift.clone() else {
            raise_one(self, f, out);
            return;
        };
        let c = self.agents[i].cohort as usize;
        let set = self.set.clone();
        let bp = set.get(self.agents[i].bp);
        let verdict = match self.going_on(c, &test, now) {
            Some(k) => Verdict::Shift(k),
            None => {
                // Evaluated once a minute of event time per cohort and kind in a release.
                let minute = now.div_euclid(60_000) * 60_000;
                let key = (c, test.kind(), test.rule(), minute);
                match quiet
                    .iter()
                    .find(|q| (q.0, q.1, q.2, q.3) == key)
                    .map(|q| q.4)
                {
                    Some(v) => v,
                    None => {
                        let v = self.evaluate(c, &test, i, minute, at, out);
                        if !matches!(v, Verdict::Shift(_)) {
                            quiet.push((key.0, key.1, key.2, key.3, v));
                        }
                        v
                    }
                }
            }
        };
        match verdict {
            Verdict::Shift(k) if explains(&self.cohorts[c].state, k, &test, bp) => {
                self.explain(i, c, k, &f, h.at, at);
                episodes.explained.push((f.kind, f.disc));
            }
            // While other members show the same, it waits on, up to `max_wait`.
            Verdict::Stirring if !last && now < at.saturating_add(bp.cohort.max_wait_ms) => {
                let until = now
                    .saturating_add(RECHECK_MS)
                    .min(at.saturating_add(bp.cohort.max_wait_ms));
                episodes.waiting.push(((f.kind, f.disc), until));
                self.hold(i, f, until, h.at, &h.event_id, &h.tool_name);
            }
            _ => raise_one(self, f, out),
        }
    }

    /// The rate of each member of cohort `c` at event time `now`, with its own expectation.
    fn members_at(&self, c: usize, now: i64) -> Vec<Member> {
        let cohort = &self.cohorts[c];
        let bp = self.set.get(cohort.bp);
        // The windows end with the last whole bucket.
        let end = now.div_euclid(crate::detect::BUCKET_MS) * crate::detect::BUCKET_MS;
        let hour = local_time(bp.timezone, end - 1).hour;
        cohort
            .members
            .iter()
            .filter_map(|&m| {
                let d = &self.agents[m as usize].state.detectors;
                d.frequency.member_at(bp, &d.rhythm, hour, now)
            })
            .collect()
    }

    /// The members of cohort `c` with a baseline of their own (a new agent id counts for
    /// nothing) that showed a finding of `test`'s kind in the window before `now`, and those
    /// active in it.
    fn presence(&self, c: usize, test: &ShiftTest, now: i64) -> Presence {
        let cohort = &self.cohorts[c];
        let bp = self.set.get(cohort.bp);
        let since = now.saturating_sub(bp.cohort.window_ms);
        let mut p = Presence::default();
        for &m in &cohort.members {
            let st = &self.agents[m as usize].state;
            if st.detectors.rhythm.active_days() < bp.learned.min_active_days {
                continue;
            }
            p.active += u32::from(st.last_seen >= since);
            p.found += u32::from(st.cohort.found_since(test.kind(), test.rule(), since));
        }
        p
    }

    /// Members of cohort `c` with a baseline of their own active since event time `since`.
    fn at_work(&self, c: usize, since: i64) -> u32 {
        let cohort = &self.cohorts[c];
        let bp = self.set.get(cohort.bp);
        cohort
            .members
            .iter()
            .map(|&m| &self.agents[m as usize].state)
            .filter(|st| {
                st.last_seen >= since
                    && st.detectors.rhythm.active_days() >= bp.learned.min_active_days
            })
            .count() as u32
    }

    /// The median ratio of the volume runs of the members of cohort `c` other than the agent
    /// at position `i` found in the window before `now` (1 when none).
    fn volume_ratio(&self, c: usize, i: usize, now: i64) -> f32 {
        let cohort = &self.cohorts[c];
        let bp = self.set.get(cohort.bp);
        let since = now.saturating_sub(bp.cohort.window_ms);
        let mut r: Vec<f32> = cohort
            .members
            .iter()
            .filter(|&&m| m as usize != i)
            .map(|&m| &self.agents[m as usize].state.cohort)
            .filter(|mk| mk.found_since(ShiftKind::Volume, 0, since))
            .map(|mk| mk.volume_ratio)
            .collect();
        if r.is_empty() {
            return 1.0;
        }
        r.sort_by(f32::total_cmp);
        r[r.len() / 2].max(1.0)
    }

    /// Evaluates cohort `c` at event time `now` for a shift that could explain a finding with
    /// `test` of the agent at position `i` (raised at `at`); opens it (and reports it) if found.
    fn evaluate(
        &mut self,
        c: usize,
        test: &ShiftTest,
        i: usize,
        now: i64,
        at: i64,
        out: &mut Vec<Incident>,
    ) -> Verdict {
        let bp = self.set.get(self.cohorts[c].bp);
        let rules = bp.cohort;
        let kind = test.kind();
        let (factor, shown) = match kind {
            ShiftKind::Rate => {
                let ev = RateEvaluation::of(&self.members_at(c, now));
                let Some(scale) = ev.shifted(&rules) else {
                    return Verdict::Quiet;
                };
                let factors = ev.factors(&rules);
                let state = &mut self.cohorts[c].state;
                state.rate = CohortShift {
                    epoch: state.rate.epoch.wrapping_add(1),
                    factors,
                };
                state.next_evaluation = now.saturating_add(EVALUATE_EVERY_MS);
                (ev.median[scale], (ev.up[scale], ev.eligible[scale]))
            }
            _ => {
                let p = self.presence(c, test, now);
                if !p.shifted(&rules) {
                    // Other members showing the same: the cohort may be moving.
                    return if p.found >= 2 {
                        Verdict::Stirring
                    } else {
                        Verdict::Quiet
                    };
                }
                // A volume run is judged against the others' (its own cannot explain it).
                let factor = match kind {
                    ShiftKind::Volume => self.volume_ratio(c, i, now),
                    _ => 1.0,
                };
                (factor, (p.found, p.active))
            }
        };
        let state = &mut self.cohorts[c].state;
        let agent_id = cohort_agent(&state.key);
        let shift = OpenShift {
            kind,
            rule: test.rule(),
            opened: now,
            start: at.min(now),
            confirmed: now,
            agents: Vec::new(),
            members: 0,
            explained: 0,
            factor,
            peak: factor,
            shown,
            incident_id: incident_id(
                &agent_id,
                IncidentType::FleetShift,
                Basis::Learned,
                0,
                "",
                now,
                (kind.index() as u32) << 24 | test.rule(),
            ),
        };
        state.shifts.push(shift);
        let k = state.shifts.len() - 1;
        let record = self.shift_record(c, k, Status::Open, now, bp.cohort.window_ms);
        out.push(record);
        Verdict::Shift(k)
    }

    /// Evaluates the open rate shifts that are due and closes the shifts not confirmed for
    /// `cohort.gap`, as of event time `now`.
    pub(super) fn review_shifts(&mut self, now: i64, out: &mut Vec<Incident>) {
        for c in 0..self.cohorts.len() {
            if self.cohorts[c].state.shifts.is_empty() {
                continue;
            }
            let bp = self.set.get(self.cohorts[c].bp);
            let rules = bp.cohort;
            let rate = self.cohorts[c].state.shift(ShiftKind::Rate, 0);
            if let Some(k) = rate.filter(|_| self.cohorts[c].state.next_evaluation <= now) {
                let ev = RateEvaluation::of(&self.members_at(c, now));
                let factors = ev.factors(&rules);
                let state = &mut self.cohorts[c].state;
                state.next_evaluation = now.saturating_add(EVALUATE_EVERY_MS);
                if let Some(scale) = ev.shifted(&rules) {
                    let s = &mut state.shifts[k];
                    s.confirmed = now;
                    s.factor = ev.median[scale];
                    s.peak = s.peak.max(s.factor);
                }
                if factors != state.rate.factors {
                    state.rate = CohortShift {
                        epoch: state.rate.epoch.wrapping_add(1),
                        factors,
                    };
                }
            }
            let mut k = 0;
            while k < self.cohorts[c].state.shifts.len() {
                let s = &self.cohorts[c].state.shifts[k];
                if now.saturating_sub(s.confirmed) <= rules.gap_ms {
                    k += 1;
                    continue;
                }
                let record = self.shift_record(c, k, Status::Closed, now, rules.window_ms);
                out.push(record);
                let state = &mut self.cohorts[c].state;
                let s = state.shifts.remove(k);
                if s.kind == ShiftKind::Rate {
                    state.rate = CohortShift {
                        epoch: state.rate.epoch.wrapping_add(1),
                        factors: CohortShift::NONE.factors,
                    };
                }
            }
        }
    }

    /// The `fleet_shift` record of shift `k` of cohort `c` (opening or closing).
    fn shift_record(
        &mut self,
        c: usize,
        k: usize,
        status: Status,
        now: i64,
        window_ms: i64,
    ) -> Incident {
        let cohort = &self.cohorts[c];
        let bp = self.set.get(cohort.bp);
        let s = &cohort.state.shifts[k];
        let key = &cohort.state.key;
        let description = describe_shift(s, key, bp, status, window_ms);
        let (observed, expected, unit) = match s.kind {
            ShiftKind::Rate | ShiftKind::Volume => (f64::from(s.factor), 1.0, "factor"),
            _ => (f64::from(s.shown.0), f64::from(s.shown.1), "agents"),
        };
        self.stats.incidents[type_index(IncidentType::FleetShift)] += 1;
        Incident {
            incident_id: s.incident_id.clone(),
            agent_id: cohort_agent(key),
            kind: IncidentType::FleetShift,
            severity: Severity::Medium,
            at: s.opened,
            window_start: s.start,
            window_end: match status {
                Status::Open => now,
                Status::Closed => s.confirmed,
            },
            blueprint: bp.key.clone(),
            basis: Basis::Learned,
            observed,
            expected,
            unit: unit.to_string(),
            description,
            action_taken: Action::Logged,
            event_id: String::new(),
            tool_name: String::new(),
            pattern: (s.kind == ShiftKind::Sequence)
                .then(|| bp.sequences.get(s.rule as usize).map(|r| r.pattern.clone()))
                .flatten(),
            status,
            count: match status {
                Status::Open => 1,
                Status::Closed => s.explained,
            },
            about: None,
            verdict: None,
            baseline: None,
            suppressed_by: None,
            agents: s.agents.clone(),
        }
    }
}

/// What a `fleet_shift` record says: the shift of cohort `key` (under blueprint `bp`) as it
/// opens (within `window_ms`) or as it closes (what it explained).
fn describe_shift(
    s: &OpenShift,
    key: &str,
    bp: &crate::blueprint::Blueprint,
    status: Status,
    window_ms: i64,
) -> String {
    let what = match s.kind {
        ShiftKind::Rate => format!(
            "{} of its {} agents with a baseline here make {:.1}× their usual calls (the median)",
            s.shown.0, s.shown.1, s.factor
        ),
        ShiftKind::Volume => format!(
            "{} of its {} active agents moved unusually large data (a run {:.0}× its tools' usual sizes)",
            s.shown.0, s.shown.1, s.factor
        ),
        ShiftKind::OffHours => format!(
            "{} of its {} active agents work at an hour or on a day they do not",
            s.shown.0, s.shown.1
        ),
        ShiftKind::Sequence => format!(
            "{} of its {} active agents made rule {} ({}) in a form they never made",
            s.shown.0,
            s.shown.1,
            s.rule,
            bp.sequences
                .get(s.rule as usize)
                .map_or(String::new(), |r| r.pattern.join(" → "))
        ),
    };
    match status {
        Status::Open => format!(
            "Fleet shift in cohort {key:?} ({}): {what} within {}. Findings of its agents that \
             the shift explains are not incidents and add no kill weight; an agent far beyond \
             it is still judged on its own.",
            s.kind.as_str(),
            crate::detect::human_ms(window_ms)
        ),
        Status::Closed => format!(
            "Fleet shift in cohort {key:?} ({}) ended: {} finding(s) of {} agent(s) explained \
             over {} (peak {:.1}×).",
            s.kind.as_str(),
            s.explained,
            s.members,
            crate::detect::human_ms(s.confirmed - s.start),
            s.peak
        ),
    }
}

/// The id a cohort's records carry in place of an agent's.
fn cohort_agent(key: &str) -> String {
    format!("cohort:{key}")
}

/// Whether two findings are of one episode (same detector, same discriminator).
fn same_episode(a: &Finding, b: &Finding) -> bool {
    a.kind == b.kind && a.disc == b.disc
}

/// Whether the rule behind `f` is set to alert on every match (`routine: "alert"`): no cohort
/// explains it away either.
fn always_alerts(bp: &crate::blueprint::Blueprint, f: &Finding) -> bool {
    use crate::blueprint::RoutineMode;
    let mode = match f.kind {
        IncidentType::FrequencySpike => bp.routine.frequency,
        IncidentType::VolumeSpike => bp.routine.volume,
        IncidentType::OffHours => bp.routine.off_hours,
        IncidentType::SuspiciousSequence => bp
            .sequences
            .get(f.disc as usize)
            .map_or(RoutineMode::Alert, |r| r.routine),
        _ => RoutineMode::Alert,
    };
    mode == RoutineMode::Alert
}

/// Whether shift `k` of a cohort explains a finding with `test`.
fn explains(
    state: &CohortState,
    k: usize,
    test: &ShiftTest,
    bp: &crate::blueprint::Blueprint,
) -> bool {
    match test {
        ShiftTest::Rate { .. } => {
            test.explained_by_rate(&state.rate.factors, bp.learned.sensitivity)
        }
        ShiftTest::Volume { ratio } => {
            f64::from(*ratio) <= bp.cohort.beyond * f64::from(state.shifts[k].factor).max(1.0)
        }
        ShiftTest::OffHours | ShiftTest::Sequence { .. } => true,
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::sync::Arc;

    use serde_json::json;

    use super::super::Engine;
    use crate::blueprint::{load_blueprint, Assignment, BlueprintSet};
    use crate::event::AuditEvent;
    use crate::response::{Action, Incident, IncidentType, Status, Suppression};

    const MIN: i64 = 60_000;
    const HOUR: i64 = 60 * MIN;
    const DAY: i64 = 24 * HOUR;
    /// Monday 2026-03-02 00:00 UTC.
    const T0: i64 = 1_772_409_600_000;
    /// The day of the surges (the fifth), and its 10:00.
    const SURGE: i64 = T0 + 4 * DAY + 10 * HOUR;

    /// A blueprint for cohort tests: UTC, a day of learning, a slow burn from 2.5 times the
    /// usual rate, one sequence rule, the given overrides.
    fn set(over: serde_json::Value) -> Arc<BlueprintSet> {
        let mut doc = json!({
            "name": "Ops", "mode": "block", "timezone": "UTC", "auto_kill_threshold": 3,
            "anomaly": {"suspicious_sequences": [
                {"pattern": ["query_db", "export"], "within": "5m", "severity": "high"}]},
            "learned": {"learning_period": "1d", "warmup": "1d", "slow_burn_ratio": 2.5},
        });
        if let (Some(d), Some(o)) = (doc.as_object_mut(), over.as_object()) {
            for (k, v) in o {
                d.insert(k.clone(), v.clone());
            }
        }
        let bp = load_blueprint("ops", &doc).expect("the test blueprint loads");
        Arc::new(
            BlueprintSet::from_blueprints(
                vec![bp],
                Assignment {
                    default: "ops".into(),
                    ..Assignment::default()
                },
            )
            .expect("one blueprint"),
        )
    }

    fn call(agent: &str, n: u64, ts: i64, tool: &str) -> AuditEvent<'static> {
        AuditEvent {
            bytes: Some(2_000.0),
            ..AuditEvent::tool_call(
                agent.to_string(),
                format!("{agent}/{n}"),
                ts,
                tool.to_string(),
            )
        }
    }

    /// How one agent works: its calls per hour between 08:00 and 18:00 every day, and the
    /// spans of its days when it runs at another rate.
    struct Worker {
        rate: f64,
        surges: Vec<(i64, i64, f64)>,
        tools: &'static [&'static str],
    }

    /// The calls of `workers` (agents `a0`, `a1`, …) from day 0 to the end of day `days - 1`,
    /// merged in time order: arrivals at random (a fixed seed per agent) at the agent's rate.
    fn calls(workers: &[Worker], days: i64) -> Vec<AuditEvent<'static>> {
        let mut out = Vec::new();
        for (i, w) in workers.iter().enumerate() {
            let agent = format!("a{i}");
            let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ (i as u64 + 1).wrapping_mul(0x2545_f491);
            let mut uniform = || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                ((seed >> 11) as f64 + 0.5) / (1u64 << 53) as f64
            };
            let mut n = 0u64;
            for d in 0..days {
                let (start, end) = (T0 + d * DAY + 8 * HOUR, T0 + d * DAY + 18 * HOUR);
                let mut t = start as f64;
                loop {
                    let now = t as i64;
                    let rate = w
                        .surges
                        .iter()
                        .find(|s| now >= s.0 && now < s.1)
                        .map_or(w.rate, |s| w.rate * s.2);
                    t += -uniform().ln() / rate * HOUR as f64;
                    if t as i64 >= end {
                        break;
                    }
                    n += 1;
                    let tool = w.tools[(n as usize) % w.tools.len()];
                    out.push(call(&agent, n, t as i64, tool));
                }
            }
        }
        out.sort_by_key(|e| e.ts_ms);
        out
    }

    const TOOLS: &[&str] = &["read", "query_db", "write", "report"];

    /// `n` agents at 20 to 50 calls an hour, surging `factor` times from 10:00 to 14:00 on the
    /// fifth day when `surging(i)`.
    fn cohort(n: usize, factor: f64, surging: impl Fn(usize) -> bool) -> Vec<Worker> {
        (0..n)
            .map(|i| Worker {
                rate: 20.0 + 10.0 * (i % 4) as f64,
                surges: if surging(i) {
                    vec![(SURGE, SURGE + 4 * HOUR, factor)]
                } else {
                    Vec::new()
                },
                tools: TOOLS,
            })
            .collect()
    }

    fn run(e: &mut Engine, evs: &[AuditEvent<'_>]) -> Vec<Incident> {
        let mut out = Vec::new();
        e.process_batch(evs, &mut out);
        e.finish(&mut out);
        out
    }

    fn of(out: &[Incident], kind: IncidentType) -> Vec<&Incident> {
        out.iter().filter(|i| i.kind == kind).collect()
    }

    #[test]
    fn a_cohort_at_three_times_its_rate_is_one_fleet_shift_with_no_incident_or_kill_weight() {
        let mut e = Engine::new(set(json!({})));
        // Six days: the shift closes the morning after.
        let out = run(&mut e, &calls(&cohort(10, 3.0, |_| true), 6));
        let shifts = of(&out, IncidentType::FleetShift);
        assert_eq!(
            shifts.iter().filter(|i| i.status == Status::Open).count(),
            1,
            "{shifts:#?}"
        );
        let closed: Vec<_> = shifts
            .iter()
            .filter(|i| i.status == Status::Closed)
            .collect();
        assert_eq!(closed.len(), 1, "{shifts:#?}");
        assert_eq!(closed[0].incident_id, shifts[0].incident_id);
        assert!(
            closed[0].count >= 1 && !closed[0].agents.is_empty(),
            "{closed:?}"
        );
        assert!(
            (2.0..4.5).contains(&shifts[0].observed),
            "the cohort's factor: {}",
            shifts[0].observed
        );
        assert_eq!(shifts[0].agent_id, "cohort:ops");
        assert!(e.stats().explained >= 1);
        for kind in IncidentType::DETECTED {
            assert!(
                of(&out, *kind).is_empty(),
                "{kind:?}: {:#?}",
                of(&out, *kind)
            );
        }
        assert!(e.agents().all(|a| a.kill.score == 0.0 && !a.kill.killed));
    }

    #[test]
    fn the_same_three_times_on_one_agent_alone_is_still_a_slow_burn() {
        let mut e = Engine::new(set(json!({})));
        let out = run(&mut e, &calls(&cohort(10, 3.0, |i| i == 0), 5));
        let f = of(&out, IncidentType::FrequencySpike);
        assert!(
            f.iter().any(|i| i.agent_id == "a0"
                && i.status == Status::Open
                && i.at >= SURGE
                && i.at < SURGE + 4 * HOUR),
            "{f:#?}"
        );
        assert!(f.iter().all(|i| i.agent_id == "a0"), "{f:#?}");
        assert!(of(&out, IncidentType::FleetShift).is_empty());
    }

    #[test]
    fn an_agent_at_thirty_times_during_its_cohort_s_three_times_is_an_incident() {
        let mut e = Engine::new(set(json!({})));
        let mut workers = cohort(10, 3.0, |_| true);
        let burst = SURGE + 2 * HOUR;
        workers[1].surges = vec![
            (SURGE, burst, 3.0),
            (burst, burst + 10 * MIN, 30.0),
            (burst + 10 * MIN, SURGE + 4 * HOUR, 3.0),
        ];
        let out = run(&mut e, &calls(&workers, 5));
        let f: Vec<_> = of(&out, IncidentType::FrequencySpike)
            .into_iter()
            .filter(|i| i.status == Status::Open)
            .collect();
        assert_eq!(f.len(), 1, "{f:#?}");
        assert_eq!(f[0].agent_id, "a1");
        assert!(f[0].at >= burst && f[0].at < burst + 15 * MIN, "{f:#?}");
        assert!(f[0].description.contains("calls"), "{}", f[0].description);
        assert_eq!(
            of(&out, IncidentType::FleetShift)
                .iter()
                .filter(|i| i.status == Status::Open)
                .count(),
            1
        );
    }

    #[test]
    fn a_cohort_too_small_for_the_rule_is_judged_agent_by_agent() {
        let mut e = Engine::new(set(json!({})));
        let out = run(&mut e, &calls(&cohort(3, 3.0, |_| true), 5));
        assert!(of(&out, IncidentType::FleetShift).is_empty());
        let agents: std::collections::BTreeSet<_> = of(&out, IncidentType::FrequencySpike)
            .iter()
            .map(|i| i.agent_id.clone())
            .collect();
        assert!(agents.len() >= 2, "{agents:?}");
    }

    #[test]
    fn a_new_tool_adopted_by_a_whole_cohort_at_once_is_one_fleet_shift() {
        let mut e = Engine::new(set(json!({})));
        let mut workers = cohort(10, 1.0, |_| false);
        for w in &mut workers {
            w.surges = vec![(SURGE, SURGE + 4 * HOUR, 1.0)];
        }
        let mut evs = calls(&workers, 5);
        // From 10:00 on the fifth day, every agent exports what it queried: a transition of the
        // blueprint's rule none of them ever made.
        let mut extra = Vec::new();
        for ev in evs
            .iter()
            .filter(|e| e.ts_ms >= SURGE && e.tool_name == "query_db")
        {
            let mut x = call(&ev.agent_id, 0, ev.ts_ms + 1_000, "export");
            x.event_id = Cow::Owned(format!("{}/export", ev.event_id));
            extra.push(x);
        }
        evs.extend(extra);
        evs.sort_by_key(|e| e.ts_ms);
        let out = run(&mut e, &evs);
        let shifts = of(&out, IncidentType::FleetShift);
        assert_eq!(shifts.len(), 1, "{shifts:#?}");
        assert_eq!(
            shifts[0].pattern.as_deref(),
            Some(&["query_db".to_string(), "export".to_string()][..])
        );
        assert!(of(&out, IncidentType::SuspiciousSequence).is_empty());
        assert!(of(&out, IncidentType::AutoKill).is_empty());
        // The same transition by one agent alone is an incident.
        let mut e = Engine::new(set(json!({})));
        let mut evs = calls(&cohort(10, 1.0, |_| false), 5);
        let first = evs
            .iter()
            .find(|e| e.ts_ms >= SURGE && e.tool_name == "query_db")
            .cloned()
            .expect("a query on the fifth day");
        evs.push(call(&first.agent_id, 0, first.ts_ms + 1_000, "export"));
        evs.sort_by_key(|e| e.ts_ms);
        let out = run(&mut e, &evs);
        assert_eq!(of(&out, IncidentType::SuspiciousSequence).len(), 1);
        assert!(of(&out, IncidentType::FleetShift).is_empty());
    }

    #[test]
    fn kills_inside_one_cohort_within_the_hour_become_would_kill_with_one_alert() {
        // A rule that alerts on every match and kills on the second: every agent that makes
        // it is killed, unless the cohort's budget holds the kill back.
        let mut e = Engine::new(set(json!({
            "auto_kill_threshold": 2,
            "anomaly": {"suspicious_sequences": [
                {"pattern": ["x", "x"], "contiguous": true, "routine": "alert", "severity": "high"}]},
            "kill": {"budget": {"per_hour": 100, "share": 1.0, "per_cohort": 2}},
        })));
        let mut evs = calls(&cohort(10, 1.0, |_| false), 4);
        for (k, agent) in ["a0", "a1", "a2", "a3"].iter().enumerate() {
            let t = SURGE + k as i64 * 5 * MIN;
            for j in 0..4 {
                let mut x = call(agent, 0, t + j * 1_000, "x");
                x.event_id = Cow::Owned(format!("{agent}/x{j}"));
                evs.push(x);
            }
        }
        evs.sort_by_key(|e| e.ts_ms);
        let out = run(&mut e, &evs);
        let kills: Vec<_> = of(&out, IncidentType::AutoKill);
        let actions: Vec<_> = kills
            .iter()
            .map(|i| (i.agent_id.as_str(), i.action_taken))
            .collect();
        assert_eq!(
            actions,
            vec![
                ("a0", Action::Killed),
                ("a1", Action::Killed),
                ("a2", Action::WouldKill),
                ("a3", Action::WouldKill)
            ]
        );
        assert!(kills[2..]
            .iter()
            .all(|i| i.suppressed_by == Some(Suppression::Cohort)));
        let alerts = of(&out, IncidentType::KillBudget);
        assert_eq!(alerts.len(), 1, "one alert an hour: {alerts:#?}");
        assert!(
            alerts[0].description.contains("cohort"),
            "{}",
            alerts[0].description
        );
    }

    #[test]
    fn new_agent_ids_cannot_open_a_fleet_shift_that_hides_a_member() {
        // Working hours 08:00-18:00. At 02:00 on the fifth night, six agent ids never seen
        // before act (off-hours, each), then a member of the cohort does.
        let mut e = Engine::new(set(
            json!({"anomaly": {"allowed_hours": {"start": 8, "end": 18}}}),
        ));
        let mut evs = calls(&cohort(10, 1.0, |_| false), 5);
        let night = T0 + 4 * DAY + 2 * HOUR;
        for k in 0..6 {
            evs.push(call(&format!("forged-{k}"), 1, night + k * 1_000, "read"));
        }
        for j in 0..3 {
            evs.push(call(
                "a0",
                90_000 + j,
                night + 60_000 + j as i64 * 20_000,
                "read",
            ));
        }
        evs.sort_by_key(|e| e.ts_ms);
        let out = run(&mut e, &evs);
        assert!(of(&out, IncidentType::FleetShift).is_empty(), "{out:#?}");
        assert!(
            of(&out, IncidentType::OffHours)
                .iter()
                .any(|i| i.agent_id == "a0" && i.status == Status::Open),
            "{:#?}",
            of(&out, IncidentType::OffHours)
        );
    }

    #[test]
    fn findings_waiting_for_their_cohort_are_judged_the_same_after_a_restore() {
        let evs = calls(&cohort(10, 3.0, |_| true), 5);
        let set = set(json!({}));
        let mut one = Engine::new(set.clone());
        let whole = run(&mut one, &evs);
        // Cut a minute after the surge began, while findings wait for the cohort.
        let cut = evs
            .iter()
            .position(|e| e.ts_ms >= SURGE + 7 * MIN)
            .expect("a cut");
        let mut e = Engine::new(set.clone());
        let mut out = Vec::new();
        e.process_batch(&evs[..cut], &mut out);
        let bytes = e.snapshot().to_bytes().expect("encodes");
        let mut e = Engine::restore(
            set,
            crate::state::Snapshot::from_bytes(&bytes).expect("decodes"),
        );
        e.process_batch(&evs[cut..], &mut out);
        e.finish(&mut out);
        assert_eq!(out, whole);
        assert_eq!(e.snapshot(), one.snapshot());
    }

    /// Processes `evs` in batches of `batch`, keeping at most `keep` agents in memory: after
    /// each batch the least recently used leave (changed ones go to `stored`, as a replay
    /// writes them), and before each batch its idle agents come back from `stored`. Returns
    /// the incidents and how many times an agent left memory.
    fn run_bounded(
        e: &mut Engine,
        evs: &[AuditEvent<'_>],
        batch: usize,
        keep: usize,
    ) -> (Vec<Incident>, usize) {
        let mut stored = std::collections::HashMap::new();
        let mut out = Vec::new();
        let mut left = 0;
        for b in evs.chunks(batch) {
            let idle: Vec<String> = e.idle_among(b).into_iter().map(str::to_string).collect();
            for id in idle {
                let st = stored
                    .remove(&id)
                    .expect("an idle agent's state was stored");
                assert!(e.reload(st));
            }
            e.process_batch(b, &mut out);
            let (n, changed) = e.evict(keep, super::super::Evict::Changed);
            left += n;
            for st in changed {
                stored.insert(st.agent_id.clone(), st);
            }
            assert!(e.resident_count() <= keep.max(e.agent_count() - n));
        }
        for (_, st) in stored.drain() {
            assert!(e.reload(st));
        }
        e.finish(&mut out);
        (out, left)
    }

    #[test]
    fn agents_out_of_memory_between_their_events_are_judged_as_if_they_never_left() {
        // A cohort surging 3 times (one fleet shift), one of its agents at 30 times inside it,
        // and a cohort of one alone at 3 times (a slow burn): with three agents of 13 in
        // memory, the others leaving after every batch, the incidents and the final states are
        // those of an engine that keeps every agent.
        let mut workers = cohort(12, 3.0, |i| i > 0);
        let burst = SURGE + 2 * HOUR;
        workers[1].surges = vec![
            (SURGE, burst, 3.0),
            (burst, burst + 10 * MIN, 30.0),
            (burst + 10 * MIN, SURGE + 4 * HOUR, 3.0),
        ];
        workers[0].surges = vec![(SURGE - DAY, SURGE - DAY + 4 * HOUR, 3.0)];
        let evs = calls(&workers, 6);
        let set = set(json!({}));
        let mut whole = Engine::new(set.clone());
        let expected = run(&mut whole, &evs);
        assert!(!of(&expected, IncidentType::FleetShift).is_empty());
        assert!(!of(&expected, IncidentType::FrequencySpike).is_empty());
        let mut e = Engine::new(set);
        let (out, left) = run_bounded(&mut e, &evs, 5, 3);
        assert!(left > evs.len() / 100, "agents left memory {left} times");
        assert_eq!(e.unloaded_events(), 0);
        assert_eq!(out, expected);
        assert_eq!(e.snapshot(), whole.snapshot());
    }

    #[test]
    fn an_event_of_an_agent_not_loaded_is_counted_and_changes_nothing() {
        let evs = calls(&cohort(4, 1.0, |_| false), 2);
        let mut e = Engine::new(set(json!({})));
        let mut out = Vec::new();
        e.process_batch(&evs, &mut out);
        let before = e.agent("a0").cloned().expect("a0 is known");
        let (n, changed) = e.evict(0, super::super::Evict::Stored);
        assert_eq!(
            (n, changed.len()),
            (0, 0),
            "changed states stay until stored"
        );
        let _ = e.take_dirty();
        let (n, changed) = e.evict(0, super::super::Evict::Stored);
        assert_eq!((n, changed.len(), e.resident_count()), (4, 0, 0));
        assert!(e.is_idle("a0") && e.agent("a0").is_none());
        let late = call("a0", 9_999, before.last_seen + MIN, "read");
        e.process_batch(std::slice::from_ref(&late), &mut out);
        assert_eq!(e.unloaded_events(), 1);
        // Nor is a command applied to it.
        assert!(!e.kill("a0", before.last_seen + MIN));
        assert!(e.reload(before.clone()));
        assert!(!e.reload(before.clone()), "loaded once");
        assert_eq!(e.agent("a0"), Some(&before));
        assert!(e.take_dirty().is_empty());
    }
}
