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

use crate::detect::{
    local_time, CohortShift, Finding, Judgement, Member, Presence, RateEvaluation, ShiftKind,
    ShiftTest,
};
use crate::response::{incident_id, Action, Basis, Incident, IncidentType, Severity, Status};
use crate::state::{CohortState, HeldFinding, OpenShift};

use super::{type_index, Cohort, Engine};

/// Event time between two evaluations of an open rate shift.
const EVALUATE_EVERY_MS: i64 = 300_000;

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
        let bp = self.set.get(a.bp);
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
        let rules = bp.cohort;
        if !rules.enabled {
            raise.push(f);
            return;
        }
        let c = a.cohort as usize;
        let cohort = &self.cohorts[c];
        if let Some(k) = cohort.state.shift(test.kind(), test.rule()) {
            if std::env::var_os("GUARDIAN_DEBUG_COHORT").is_some() {
                eprintln!(
                    "open {} {:?} at {} factors={:?} test={:?} explained={}",
                    a.state.agent_id,
                    f.kind,
                    crate::event::format_rfc3339_ms(at),
                    cohort.state.rate.factors,
                    test,
                    explains(&cohort.state, k, &test, bp)
                );
            }
            if explains(&cohort.state, k, &test, bp) {
                self.explain(i, c, k, &f, at);
            } else {
                raise.push(f);
            }
            return;
        }
        if rules.wait_ms > 0 && cohort.members.len() >= rules.min_agents as usize {
            self.hold(i, f, at.saturating_add(rules.wait_ms), ts, event_id, tool_name);
        } else {
            raise.push(f);
        }
    }

    /// Holds finding `f` of the agent at position `i` until event time `until`.
    fn hold(
        &mut self,
        i: usize,
        f: Finding,
        until: i64,
        ts: i64,
        event_id: &str,
        tool_name: &str,
    ) {
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

    /// Counts finding `f` of the agent at position `i` (at event time `at`) as explained by
    /// shift `k` of cohort `c`: no incident, no kill weight, and its episode is forgotten.
    fn explain(&mut self, i: usize, c: usize, k: usize, f: &Finding, at: i64) {
        let st = &mut self.agents[i].state;
        st.detectors.forget_episode(f.kind, f.disc);
        self.cohorts[c].state.shifts[k].explain(&st.agent_id, at);
        self.stats.explained += 1;
        self.mark_dirty(i);
    }

    /// Judges the held findings whose wait is over as of event time `now` (all of them when
    /// `all`), agent by agent in a canonical order.
    pub(super) fn release(&mut self, now: i64, all: bool, out: &mut Vec<Incident>) {
        let mut due: Vec<(i64, u32)> = self
            .holding
            .iter()
            .filter_map(|&i| {
                let first = self.agents[i as usize].state.cohort.held.first()?.until;
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
        for (_, i) in due {
            let i = i as usize;
            let held = &mut self.agents[i].state.cohort.held;
            let n = held.iter().take_while(|h| all || h.until <= now).count();
            let ready: Vec<HeldFinding> = held.drain(..n).collect();
            self.mark_dirty(i);
            // Episodes whose opening was explained: their closing records go too.
            let mut explained: Vec<(IncidentType, u32)> = Vec::new();
            for h in ready {
                self.judge_held(i, h, now, &mut explained, out);
            }
        }
        let agents = &mut self.agents;
        self.holding.retain(|&i| {
            let a = &mut agents[i as usize];
            a.holding = !a.state.cohort.held.is_empty();
            a.holding
        });
    }

    /// Judges one held finding of the agent at position `i` at event time `now`.
    fn judge_held(
        &mut self,
        i: usize,
        h: HeldFinding,
        now: i64,
        explained: &mut Vec<(IncidentType, u32)>,
        out: &mut Vec<Incident>,
    ) {
        let f = h.finding;
        let at = f.trigger.map_or(h.at, |t| t.0);
        let raise_one = |e: &mut Engine, f: Finding, out: &mut Vec<Incident>| {
            let mut v = vec![f];
            e.raise(i, h.at, &h.event_id, &h.tool_name, &mut v, out);
        };
        if f.closing.is_some() {
            if !explained.contains(&(f.kind, f.disc)) {
                raise_one(self, f, out);
            }
            return;
        }
        let Some(test) = f.shift.clone() else {
            raise_one(self, f, out);
            return;
        };
        let c = self.agents[i].cohort as usize;
        let (kind, rule) = (test.kind(), test.rule());
        let k = match self.cohorts[c].state.shift(kind, rule) {
            Some(k) => Some(k),
            None => self.evaluate(c, &test, now, at, out),
        };
        let bp = self.set.get(self.agents[i].bp);
        if std::env::var_os("GUARDIAN_DEBUG_COHORT").is_some() {
            eprintln!(
                "held {} {:?} at {} k={:?} factors={:?} test={:?} explained={}",
                self.agents[i].state.agent_id,
                f.kind,
                crate::event::format_rfc3339_ms(at),
                k,
                self.cohorts[c].state.rate.factors,
                test,
                k.is_some_and(|k| explains(&self.cohorts[c].state, k, &test, bp))
            );
        }
        match k {
            Some(k) if explains(&self.cohorts[c].state, k, &test, bp) => {
                self.explain(i, c, k, &f, at);
                explained.push((f.kind, f.disc));
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

    /// Evaluates cohort `c` at event time `now` for a shift that could explain a finding with
    /// `test` (raised at `at`); opens it (and reports it) if found.
    fn evaluate(
        &mut self,
        c: usize,
        test: &ShiftTest,
        now: i64,
        at: i64,
        out: &mut Vec<Incident>,
    ) -> Option<usize> {
        let bp = self.set.get(self.cohorts[c].bp);
        let rules = bp.cohort;
        let kind = test.kind();
        let (factor, shown) = match kind {
            ShiftKind::Rate => {
                let ev = RateEvaluation::of(&self.members_at(c, now));
                let scale = ev.shifted(&rules)?;
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
                let since = now.saturating_sub(rules.window_ms);
                let mut p = Presence::default();
                for &m in &self.cohorts[c].members {
                    let st = &self.agents[m as usize].state;
                    p.active += u32::from(st.last_seen >= since);
                    p.found += u32::from(st.cohort.found_since(kind, test.rule(), since));
                }
                if !p.shifted(&rules) {
                    return None;
                }
                let factor = match test {
                    ShiftTest::Volume { ratio } => *ratio,
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
        Some(k)
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
                if std::env::var_os("GUARDIAN_DEBUG_COHORT").is_some() {
                    eprintln!("eval {} {:?} {:?} {:?} {:?}", crate::event::format_rfc3339_ms(now), ev.eligible, ev.up, ev.median, factors);
                }
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
        let description = match status {
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
        };
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
        ShiftTest::Rate { .. } => test.explained_by_rate(&state.rate.factors, bp.learned.sensitivity),
        ShiftTest::Volume { ratio } => {
            f64::from(*ratio) <= bp.cohort.beyond * f64::from(state.shifts[k].factor).max(1.0)
        }
        ShiftTest::OffHours | ShiftTest::Sequence { .. } => true,
    }
}
