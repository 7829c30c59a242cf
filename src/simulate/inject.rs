//! The injection plan: anomalies on chosen agents at chosen times, and negative controls.

use rand::seq::{IndexedRandom, SliceRandom};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::fleet::{AgentProfile, Role};
use super::label::Label;
use super::{SimConfig, SimEvent, DAY_MS, HOUR_MS};
use crate::detect::local_time;
use crate::response::{Basis, IncidentType};

/// One planned injection: the calls it adds (sorted), and tools of the agent to remove around it.
#[derive(Debug, Clone)]
pub(crate) struct Injection {
    agent: u32,
    calls: Vec<(i64, &'static str, u64)>,
    /// Remove the agent's normal calls of this tool within this span (to keep a control clean).
    remove: Option<(&'static str, i64, i64)>,
    /// Remove all of the agent's normal calls within this span (a pause).
    silence: Option<(i64, i64)>,
}

impl Injection {
    /// Calls added to one agent, removing nothing.
    fn new(agent: usize, calls: Vec<(i64, &'static str, u64)>) -> Injection {
        Injection {
            agent: agent as u32,
            calls,
            remove: None,
            silence: None,
        }
    }

    /// Adds the calls that fall on the day starting at `day_start`.
    pub(crate) fn apply(&self, day_start: i64, out: &mut Vec<SimEvent>) {
        let day_end = day_start + DAY_MS;
        if let Some((tool, from, to)) = self.remove {
            out.retain(|e| {
                !(e.agent == self.agent && e.tool == tool && e.ts >= from && e.ts <= to)
            });
        }
        if let Some((from, to)) = self.silence {
            out.retain(|e| !(e.agent == self.agent && e.ts >= from && e.ts < to));
        }
        for &(ts, tool, bytes) in &self.calls {
            if ts >= day_start && ts < day_end {
                out.push(SimEvent {
                    ts,
                    agent: self.agent,
                    tool,
                    bytes,
                    outcome: "ALLOW",
                });
            }
        }
    }
}

/// A UTC time on or after `day` inside the agent's working hours, at least an hour after its start
/// and two hours before its end (weekdays only if asked).
fn work_time(
    a: &AgentProfile,
    cfg: &SimConfig,
    day: u32,
    rng: &mut impl Rng,
    weekday_only: bool,
) -> Option<i64> {
    for d in day..cfg.days {
        let day_start = cfg.start_ms + i64::from(d) * DAY_MS;
        let mut hours = Vec::new();
        for h in 0..24 {
            let t = day_start + h * HOUR_MS;
            let lt = local_time(a.tz, t);
            let next = local_time(a.tz, t + 2 * HOUR_MS);
            if a.works(lt.weekday, lt.hour)
                && a.works(next.weekday, next.hour)
                && (!weekday_only || lt.weekday < 5)
                && (a.always_on || lt.hour > a.start)
            {
                hours.push(t);
            }
        }
        if let Some(t) = hours.choose(rng) {
            return Some(*t + rng.random_range(0..20) * 60_000);
        }
    }
    None
}

/// UTC time of a local wall-clock time on the first day ≥ `day` whose local weekday satisfies `pred`.
fn local_at(
    a: &AgentProfile,
    cfg: &SimConfig,
    day: u32,
    hour: u8,
    minute: u8,
    pred: impl Fn(u8) -> bool,
) -> Option<i64> {
    for d in day..cfg.days {
        let day_start = cfg.start_ms + i64::from(d) * DAY_MS;
        for m in 0..(24 * 60) {
            let t = day_start + m * 60_000;
            let lt = local_time(a.tz, t);
            if lt.hour == hour && lt.minute == minute && pred(lt.weekday) {
                return Some(t);
            }
        }
    }
    None
}

/// UTC times of a local wall-clock time on every weekday (Monday to Friday) of the span.
fn working_days_at<'a>(
    a: &'a AgentProfile,
    cfg: &'a SimConfig,
    hour: u8,
    minute: u8,
) -> impl Iterator<Item = i64> + 'a {
    (0..cfg.days).filter_map(move |d| {
        local_at(a, cfg, d, hour, minute, |wd| wd < 5)
            .filter(|t| *t < cfg.start_ms + i64::from(d + 1) * DAY_MS)
    })
}

fn label(
    a: &AgentProfile,
    expect: Option<IncidentType>,
    basis: Option<Basis>,
    start: i64,
    end: i64,
    note: &str,
) -> Label {
    Label {
        agent_id: a.id.clone(),
        expect,
        basis,
        start,
        end,
        note: note.to_string(),
    }
}

/// Eight calls of the agent's main tool, 2.5 minutes apart from `t`, labelled as off-hours activity.
fn off_hours_trickle(
    a: &AgentProfile,
    agent: usize,
    t: i64,
    basis: Basis,
    note: &str,
) -> (Injection, Label) {
    let calls = (0..8)
        .map(|k| (t + k * 150_000, a.tools[0].name, 10_000))
        .collect();
    let l = label(
        a,
        Some(IncidentType::OffHours),
        Some(basis),
        t,
        t + 20 * 60_000,
        note,
    );
    (Injection::new(agent, calls), l)
}

fn threshold(role: Role) -> (u64, u64) {
    // (frequency threshold per minute, data volume bytes per minute) of the shipped blueprints
    match role {
        Role::Finance => (30, 50_000_000),
        Role::Soc => (100, 500_000_000),
        Role::Engineering => (60, 200_000_000),
    }
}

/// Plans injections and controls for a fleet.
pub(crate) fn plan(
    fleet: &[AgentProfile],
    cfg: &SimConfig,
    rng: &mut ChaCha8Rng,
) -> (Vec<Injection>, Vec<Label>) {
    let first_day = cfg.first_injection_day.max(1);
    if fleet.len() < 20 || cfg.days < first_day + 2 {
        return (Vec::new(), Vec::new());
    }
    let learned_ok = cfg.days > first_day + 2;
    let mut p = Planner::new(fleet, cfg, rng, first_day);
    for _ in 0..(fleet.len() / 100).max(1) {
        for step in STATIC_KINDS {
            step(&mut p);
        }
        if learned_ok {
            for step in LEARNED_KINDS {
                step(&mut p);
            }
        }
    }
    rogue(&mut p);
    for step in CONTROLS {
        step(&mut p);
    }
    p.finish()
}

/// Agents 0 (closing-time control), 2 (batch job) and 5 (query/email control) are reserved.
const RESERVED: [usize; 3] = [0, 2, 5];

/// Anomalies against the blueprints' fixed rules (thresholds, sequences, hours): one of each per
/// hundred agents (at least one).
const STATIC_KINDS: [fn(&mut Planner<'_>); 5] = [
    static_burst,
    static_export,
    tight_sequence,
    night_activity,
    weekend_activity,
];

/// Anomalies only the learned baselines catch: one of each per hundred agents (at least one) when
/// the span leaves time to learn.
const LEARNED_KINDS: [fn(&mut Planner<'_>); 5] = [
    hourly_spike,
    one_large_call,
    large_transfer_run,
    slow_burn,
    unused_hour,
];

/// Negative controls and routines that must raise nothing, planned once after the rogue.
const CONTROLS: [fn(&mut Planner<'_>); 7] = [
    batch_job,
    query_then_email,
    closing_time,
    loose_sequence,
    steady_over_threshold,
    pause,
    daylight_saving,
];

/// What the planning steps share: the fleet, the seeded random source, the agents still free and
/// what has been planned so far.
struct Planner<'a> {
    /// The agents.
    fleet: &'a [AgentProfile],
    /// What to generate.
    cfg: &'a SimConfig,
    /// The seeded random source: the steps draw from it in a fixed order.
    rng: &'a mut ChaCha8Rng,
    /// Agents not given a scenario yet, in shuffled order.
    free: Vec<usize>,
    /// First day (0-based, at least 1) anomalies are injected on.
    first_day: u32,
    /// End of the simulated span (epoch ms).
    end_ms: i64,
    /// The injections planned so far.
    plan: Vec<Injection>,
    /// The labels written so far.
    labels: Vec<Label>,
}

impl<'a> Planner<'a> {
    /// Shuffles the fleet into the pool of free agents, leaving out the reserved controls.
    fn new(
        fleet: &'a [AgentProfile],
        cfg: &'a SimConfig,
        rng: &'a mut ChaCha8Rng,
        first_day: u32,
    ) -> Planner<'a> {
        let mut order: Vec<usize> = (0..fleet.len()).collect();
        order.shuffle(rng);
        let free = order
            .into_iter()
            .filter(|i| !RESERVED.contains(i))
            .collect();
        Planner {
            fleet,
            cfg,
            rng,
            free,
            first_day,
            end_ms: cfg.start_ms + i64::from(cfg.days) * DAY_MS,
            plan: Vec::new(),
            labels: Vec::new(),
        }
    }

    /// The agent at index `i` of the fleet.
    fn agent(&self, i: usize) -> &'a AgentProfile {
        &self.fleet[i]
    }

    /// Start of the first injection day (epoch ms).
    fn first_day_ms(&self) -> i64 {
        self.cfg.start_ms + i64::from(self.first_day) * DAY_MS
    }

    /// Removes the first free agent matching `pred` from the pool.
    fn take(&mut self, pred: impl Fn(&AgentProfile) -> bool) -> Option<usize> {
        let pos = self.free.iter().position(|i| pred(&self.fleet[*i]))?;
        Some(self.free.remove(pos))
    }

    /// Takes a free agent matching `pred` and draws a day for it (no draw when none matches).
    fn take_on_day(&mut self, pred: impl Fn(&AgentProfile) -> bool) -> Option<(usize, u32)> {
        let i = self.take(pred)?;
        let from = self.first_day;
        let d = self
            .rng
            .random_range(from..self.cfg.days.saturating_sub(1).max(from + 1));
        Some((i, d))
    }

    /// Takes a free agent matching `pred` and a time in its working hours on or after a drawn day
    /// (see [`work_time`]); the agent stays taken when no time is found.
    fn take_at_work(
        &mut self,
        pred: impl Fn(&AgentProfile) -> bool,
        weekday_only: bool,
    ) -> Option<(usize, i64)> {
        let (i, d) = self.take_on_day(pred)?;
        let t = work_time(self.agent(i), self.cfg, d, self.rng, weekday_only)?;
        Some((i, t))
    }

    /// Takes a free agent matching `pred` and the UTC time of a local wall-clock time on or after a
    /// drawn day (see [`local_at`]); the agent stays taken when no time is found.
    fn take_at_local(
        &mut self,
        pred: impl Fn(&AgentProfile) -> bool,
        hour: u8,
        minute: u8,
        weekday: impl Fn(u8) -> bool,
    ) -> Option<(usize, i64)> {
        let (i, d) = self.take_on_day(pred)?;
        let t = local_at(self.agent(i), self.cfg, d, hour, minute, weekday)?;
        Some((i, t))
    }

    /// Adds one injection and its label.
    fn push(&mut self, inj: Injection, l: Label) {
        self.plan.push(inj);
        self.labels.push(l);
    }

    /// The plan, each injection's calls sorted by time, and the labels.
    fn finish(mut self) -> (Vec<Injection>, Vec<Label>) {
        // Every injection uses its own deterministic times; keep a stable order.
        for inj in &mut self.plan {
            inj.calls.sort_by_key(|c| c.0);
        }
        (self.plan, self.labels)
    }
}

impl Injection {
    /// The same injection, also removing all of the agent's normal calls in `from..to`.
    fn silencing(mut self, from: i64, to: i64) -> Injection {
        self.silence = Some((from, to));
        self
    }
}

/// An agent whose calls come at random times (not a steady batch job).
fn irregular(a: &AgentProfile) -> bool {
    a.steady_per_sec.is_none()
}

/// A finance or engineering agent (the roles with office hours in their blueprints).
fn finance_or_engineering(a: &AgentProfile) -> bool {
    matches!(a.role, Role::Finance | Role::Engineering)
}

/// A negative control: a span of the agent's activity that must raise nothing.
fn control(a: &AgentProfile, start: i64, end: i64, note: &str) -> Label {
    label(a, None, None, start, end, note)
}

/// Static frequency spike: twice the blueprint's per-minute threshold within 40 s.
fn static_burst(p: &mut Planner) {
    let Some((i, t)) = p.take_at_work(irregular, false) else {
        return;
    };
    let a = p.agent(i);
    let n = threshold(a.role).0 * 2;
    let calls = (0..n)
        .map(|k| (t + (k as i64) * 40_000 / n as i64, a.tools[0].name, 2_000))
        .collect();
    // Either basis: a burst may first cross the learned hourly threshold; one burst, one incident.
    let l = label(
        a,
        Some(IncidentType::FrequencySpike),
        None,
        t,
        t + 60_000,
        "burst over the static threshold",
    );
    p.push(Injection::new(i, calls), l);
}

/// Static data volume: three exports of half the per-minute limit within 20 s.
fn static_export(p: &mut Planner) {
    let Some((i, t)) = p.take_at_work(irregular, false) else {
        return;
    };
    let a = p.agent(i);
    let b = threshold(a.role).1 / 2;
    let calls = (0..3).map(|k| (t + k * 10_000, "export_data", b)).collect();
    let l = label(
        a,
        Some(IncidentType::VolumeSpike),
        Some(Basis::Static),
        t,
        t + 20_000,
        "exfiltration-size export",
    );
    p.push(Injection::new(i, calls), l);
}

/// Suspicious sequence of the agent's blueprint.
fn tight_sequence(p: &mut Planner) {
    let Some((i, t)) = p.take_at_work(irregular, false) else {
        return;
    };
    let a = p.agent(i);
    // The tight form (no call between the steps): the loose one is some agents'
    // routine (see `loose_sequence`).
    let calls = match a.role {
        Role::Finance => vec![
            (t, "query_customer_db", 40_000),
            (t + 90_000, "send_email", 45_000),
        ],
        Role::Soc => vec![
            (t, "read_secrets", 500),
            (t + 20_000, "enrich_ioc", 3_000),
            (t + 60_000, "http_request", 9_000),
        ],
        Role::Engineering => vec![
            (t, "read_secrets", 500),
            (t + 60_000, "http_request", 9_000),
        ],
    };
    // Nothing of the agent's own work comes between the steps.
    let inj = Injection::new(i, calls).silencing(t, t + 90_001);
    let l = label(
        a,
        Some(IncidentType::SuspiciousSequence),
        None,
        t,
        t + 90_000,
        "blueprint tool sequence",
    );
    p.push(inj, l);
}

/// Night activity on a weekday, 02:00 local.
fn night_activity(p: &mut Planner) {
    if let Some((i, t)) = p.take_at_local(finance_or_engineering, 2, 10, |wd| wd < 5) {
        let (inj, l) = off_hours_trickle(p.agent(i), i, t, Basis::Static, "night activity");
        p.push(inj, l);
    }
}

/// Weekend activity (finance works Monday to Friday).
fn weekend_activity(p: &mut Planner) {
    if let Some((i, t)) = p.take_at_local(|a| a.role == Role::Finance, 11, 0, |wd| wd == 5) {
        let (inj, l) = off_hours_trickle(p.agent(i), i, t, Basis::Static, "weekend activity");
        p.push(inj, l);
    }
}

/// Frequency spike below the static threshold but far above the agent's own hour: 12x its peak over an hour.
fn hourly_spike(p: &mut Planner) {
    let Some((i, t)) = p.take_at_work(finance_or_engineering, false) else {
        return;
    };
    let a = p.agent(i);
    let h = t - t.rem_euclid(HOUR_MS);
    let n = ((a.peak_rate * 12.0) as i64).max(200);
    let calls = (0..n)
        .map(|k| (h + 1000 + k * (HOUR_MS - 2000) / n, a.tools[0].name, 3_000))
        .collect();
    let l = label(
        a,
        Some(IncidentType::FrequencySpike),
        Some(Basis::Learned),
        h,
        h + HOUR_MS,
        "hourly rate far above the agent's baseline, under the static threshold",
    );
    p.push(Injection::new(i, calls), l);
}

/// One call of a usual tool moving 8 MB where it usually moves kilobytes (under the static limit).
fn one_large_call(p: &mut Planner) {
    let Some((i, t)) = p.take_at_work(finance_or_engineering, false) else {
        return;
    };
    let a = p.agent(i);
    let l = label(
        a,
        Some(IncidentType::VolumeSpike),
        Some(Basis::Learned),
        t,
        t + 1000,
        "one call far above the tool's learned size",
    );
    p.push(Injection::new(i, vec![(t, a.tools[0].name, 8_000_000)]), l);
}

/// A run of large transfers: five consecutive calls of the agent's tools, each 40× its
/// usual size (none alone far out in the tail, all under the static limit).
fn large_transfer_run(p: &mut Planner) {
    let Some((i, t)) = p.take_at_work(finance_or_engineering, false) else {
        return;
    };
    let a = p.agent(i);
    let calls: Vec<_> = (0..5)
        .map(|k| {
            let tool = &a.tools[k % a.tools.len()];
            (
                t + k as i64 * 15_000,
                tool.name,
                (tool.median_bytes * 40.0) as u64,
            )
        })
        .collect();
    let l = label(
        a,
        Some(IncidentType::VolumeSpike),
        Some(Basis::Learned),
        t,
        t + 60_000,
        "a run of five transfers at 40x their tools' usual size",
    );
    p.push(Injection::new(i, calls), l);
}

/// A slow burn: five times the agent's peak rate on top of its work for three hours.
fn slow_burn(p: &mut Planner) {
    let Some((i, d)) = p.take_on_day(|a| a.role == Role::Engineering && a.end >= a.start + 8)
    else {
        return;
    };
    let a = p.agent(i);
    let Some(t) = local_at(a, p.cfg, d, a.start + 1, 0, |wd| wd < 5) else {
        return;
    };
    let n = (a.peak_rate * 4.0 * 3.0) as i64;
    let calls = (0..n)
        .map(|k| (t + k * 3 * HOUR_MS / n, a.tools[0].name, 5_000))
        .collect();
    let l = label(
        a,
        Some(IncidentType::FrequencySpike),
        Some(Basis::Learned),
        t,
        t + 3 * HOUR_MS,
        "a slow burn: five times the agent's peak rate for three hours",
    );
    p.push(Injection::new(i, calls), l);
}

/// A day-shift SOC agent (no static hours) active at 03:00 UTC.
fn unused_hour(p: &mut Planner) {
    let day_shift_soc = |a: &AgentProfile| a.role == Role::Soc && !a.always_on && irregular(a);
    if let Some((i, t)) = p.take_at_local(day_shift_soc, 3, 5, |_| true) {
        let note = "activity in an hour the agent never uses";
        let (inj, l) = off_hours_trickle(p.agent(i), i, t, Basis::Learned, note);
        p.push(inj, l);
    }
}

/// The rogue: burst, exfiltration and the finance sequence within 15 minutes → auto kill; it keeps acting.
fn rogue(p: &mut Planner) {
    let Some((i, t)) = p.take_at_work(|a| a.role == Role::Finance, true) else {
        return;
    };
    let a = p.agent(i);
    let mut calls: Vec<(i64, &'static str, u64)> = (0..70)
        .map(|k| (t + k * 500, "query_customer_db", 20_000))
        .collect();
    calls.extend((0..3).map(|k| (t + 300_000 + k * 5_000, "export_data", 30_000_000)));
    calls.extend([
        (t + 600_000, "query_customer_db", 20_000),
        (t + 660_000, "send_email", 60_000),
    ]);
    p.plan
        .push(Injection::new(i, calls).silencing(t + 600_000, t + 660_001));
    let end = p.end_ms;
    let incident = |kind, basis, from, to| label(a, Some(kind), basis, from, to, "rogue agent");
    p.labels.extend([
        // Either basis: the burst may cross the agent's learned rate before the static one.
        incident(IncidentType::FrequencySpike, None, t, t + 40_000),
        incident(
            IncidentType::VolumeSpike,
            Some(Basis::Static),
            t + 300_000,
            t + 310_000,
        ),
        incident(
            IncidentType::SuspiciousSequence,
            None,
            t + 600_000,
            t + 660_000,
        ),
        incident(IncidentType::AutoKill, None, t, end),
        label(
            a,
            Some(IncidentType::ActivityAfterKill),
            None,
            t + 660_001,
            end,
            "rogue agent keeps acting after the kill",
        ),
    ]);
}

/// Agent 2, the steady high-rate batch job: labelled for the whole span, nothing injected.
fn batch_job(p: &mut Planner) {
    let note = "steady high-rate batch job (90 calls a minute, 02:00-04:00 UTC daily)";
    let l = control(p.agent(2), p.cfg.start_ms, p.end_ms, note);
    p.labels.push(l);
}

/// Agent 5: a query half an hour into the working day, an email three hours later.
fn query_then_email(p: &mut Planner) {
    let qe = p.agent(5);
    let Some(t) = local_at(qe, p.cfg, 3, qe.start, 30, |wd| wd < 5) else {
        return;
    };
    let email = t + 3 * HOUR_MS;
    let calls = vec![
        (t, "query_customer_db", 30_000),
        (email, "send_email", 30_000),
    ];
    let mut inj = Injection::new(5, calls);
    inj.remove = Some(("query_customer_db", email - 20 * 60_000, email));
    let note = "query, then an email three hours later";
    p.push(inj, control(qe, t, email + 60_000, note));
}

/// Agent 0: activity just before closing time (18:00 local) on a weekday.
fn closing_time(p: &mut Planner) {
    let closing = p.agent(0);
    let Some(t) = local_at(closing, p.cfg, 2, 17, 58, |wd| wd < 5) else {
        return;
    };
    let calls = vec![
        (t, "query_ledger", 9_000),
        (t + 60_000, "query_ledger", 9_000),
        (t + 119_000, "read_invoice", 9_000),
    ];
    let note = "activity just before closing time (18:00)";
    p.push(
        Injection::new(0, calls),
        control(closing, t - 60_000, t + 119_000, note),
    );
}

/// Routine: a finance agent that always reads an invoice between querying the customer
/// database and sending an e-mail, every working day from the first (the loose form of its
/// blueprint's sequence): a baseline fact, never an incident.
fn loose_sequence(p: &mut Planner) {
    let Some(i) = p.take(|a| a.role == Role::Finance) else {
        return;
    };
    let a = p.agent(i);
    let calls = working_days_at(a, p.cfg, a.start + 1, 30)
        .flat_map(|t| {
            [
                (t, "query_customer_db", 20_000),
                (t + 40_000, "read_invoice", 30_000),
                (t + 90_000, "send_email", 9_000),
            ]
        })
        .collect();
    let note = "the loose form of the blueprint's sequence, every working day";
    let l = control(a, p.first_day_ms(), p.end_ms, note);
    p.push(Injection::new(i, calls), l);
}

/// Steady over the static threshold: a finance agent that runs 32 calls a minute for two
/// hours every working day (the threshold is 30): routine for it.
fn steady_over_threshold(p: &mut Planner) {
    let Some(i) = p.take(|a| a.role == Role::Finance && a.end >= a.start + 4) else {
        return;
    };
    let a = p.agent(i);
    let calls = working_days_at(a, p.cfg, a.start + 1, 0)
        .flat_map(|t| (0..3840).map(move |k| (t + k * 1875, "query_ledger", 12_000)))
        .collect();
    let note = "steady 32 calls a minute, two hours every working day (threshold 30)";
    let l = control(a, p.first_day_ms(), p.end_ms, note);
    p.push(Injection::new(i, calls), l);
}

/// A pause: an engineering agent away for twelve days, then back to its usual work; the three
/// days after its return raise nothing.
fn pause(p: &mut Planner) {
    if p.cfg.days < p.first_day + 16 {
        return;
    }
    let Some(i) = p.take(|a| a.role == Role::Engineering) else {
        return;
    };
    let from = p.first_day_ms();
    let back = from + 12 * DAY_MS;
    let inj = Injection::new(i, Vec::new()).silencing(from, back);
    let note = "back after a twelve-day pause";
    p.push(inj, control(p.agent(i), back, back + 3 * DAY_MS, note));
}

/// Daylight-saving weeks: normal agents must stay silent through the change.
fn daylight_saving(p: &mut Planner) {
    let us_dst = (1_772_928_000_000, 1_773_532_800_000); // 2026-03-08 .. 03-15 UTC
    let eu_dst = (1_774_742_400_000, 1_775_347_200_000); // 2026-03-29 .. 04-05 UTC
    for (role, (from, to)) in [(Role::Finance, us_dst), (Role::Engineering, eu_dst)] {
        if from < p.cfg.start_ms || to > p.end_ms {
            continue;
        }
        for _ in 0..3 {
            if let Some(i) = p.take(|a| a.role == role) {
                let note = "normal hours across a daylight-saving change";
                let l = control(p.agent(i), from, to, note);
                p.labels.push(l);
            }
        }
    }
}
