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
    let mut plan = Vec::new();
    let mut labels = Vec::new();
    let first_day = cfg.first_injection_day.max(1);
    if fleet.len() < 20 || cfg.days < first_day + 2 {
        return (plan, labels);
    }
    let end_ms = cfg.start_ms + i64::from(cfg.days) * DAY_MS;
    let per_kind = (fleet.len() / 100).max(1);
    let learned_ok = cfg.days > first_day + 2;
    let mut order: Vec<usize> = (0..fleet.len()).collect();
    order.shuffle(rng);
    // Agents 0 (closing-time control), 2 (batch job) and 5 (query/email control) are reserved.
    let reserved = [0usize, 2, 5];
    let mut free: Vec<usize> = order
        .into_iter()
        .filter(|i| !reserved.contains(i))
        .collect();
    let mut take = |pred: &dyn Fn(&AgentProfile) -> bool| -> Option<usize> {
        let pos = free.iter().position(|i| pred(&fleet[*i]))?;
        Some(free.remove(pos))
    };
    let day_in = |rng: &mut ChaCha8Rng, from: u32| {
        rng.random_range(from..cfg.days.saturating_sub(1).max(from + 1))
    };

    for _ in 0..per_kind {
        // Static frequency spike: twice the blueprint's per-minute threshold within 40 s.
        if let Some(i) = take(&|a| a.steady_per_sec.is_none()) {
            let a = &fleet[i];
            let d = day_in(rng, first_day);
            if let Some(t) = work_time(a, cfg, d, rng, false) {
                let n = threshold(a.role).0 * 2;
                let calls = (0..n)
                    .map(|k| (t + (k as i64) * 40_000 / n as i64, a.tools[0].name, 2_000))
                    .collect();
                plan.push(Injection::new(i, calls));
                // Either basis: a burst may first cross the learned hourly threshold; one burst, one incident.
                labels.push(label(
                    a,
                    Some(IncidentType::FrequencySpike),
                    None,
                    t,
                    t + 60_000,
                    "burst over the static threshold",
                ));
            }
        }
        // Static data volume: three exports of half the per-minute limit within 20 s.
        if let Some(i) = take(&|a| a.steady_per_sec.is_none()) {
            let a = &fleet[i];
            let d = day_in(rng, first_day);
            if let Some(t) = work_time(a, cfg, d, rng, false) {
                let b = threshold(a.role).1 / 2;
                let calls = (0..3).map(|k| (t + k * 10_000, "export_data", b)).collect();
                plan.push(Injection::new(i, calls));
                labels.push(label(
                    a,
                    Some(IncidentType::VolumeSpike),
                    Some(Basis::Static),
                    t,
                    t + 20_000,
                    "exfiltration-size export",
                ));
            }
        }
        // Suspicious sequence of the agent's blueprint.
        if let Some(i) = take(&|a| a.steady_per_sec.is_none()) {
            let a = &fleet[i];
            let d = day_in(rng, first_day);
            if let Some(t) = work_time(a, cfg, d, rng, false) {
                // The tight form (no call between the steps): the loose one is some agents'
                // routine (see the control below).
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
                let mut inj = Injection::new(i, calls);
                inj.silence = Some((t, t + 90_001));
                plan.push(inj);
                labels.push(label(
                    a,
                    Some(IncidentType::SuspiciousSequence),
                    None,
                    t,
                    t + 90_000,
                    "blueprint tool sequence",
                ));
            }
        }
        // Night activity on a weekday, 02:00 local.
        if let Some(i) = take(&|a| matches!(a.role, Role::Finance | Role::Engineering)) {
            let a = &fleet[i];
            let d = day_in(rng, first_day);
            if let Some(t) = local_at(a, cfg, d, 2, 10, |wd| wd < 5) {
                let (inj, l) = off_hours_trickle(a, i, t, Basis::Static, "night activity");
                plan.push(inj);
                labels.push(l);
            }
        }
        // Weekend activity (finance works Monday to Friday).
        if let Some(i) = take(&|a| a.role == Role::Finance) {
            let a = &fleet[i];
            let d = day_in(rng, first_day);
            if let Some(t) = local_at(a, cfg, d, 11, 0, |wd| wd == 5) {
                let (inj, l) = off_hours_trickle(a, i, t, Basis::Static, "weekend activity");
                plan.push(inj);
                labels.push(l);
            }
        }
        if !learned_ok {
            continue;
        }
        // Frequency spike below the static threshold but far above the agent's own hour: 12x its peak over an hour.
        if let Some(i) = take(&|a| matches!(a.role, Role::Finance | Role::Engineering)) {
            let a = &fleet[i];
            let d = day_in(rng, first_day);
            if let Some(t) = work_time(a, cfg, d, rng, false) {
                let h = t - t.rem_euclid(HOUR_MS);
                let n = ((a.peak_rate * 12.0) as i64).max(200);
                let calls = (0..n)
                    .map(|k| (h + 1000 + k * (HOUR_MS - 2000) / n, a.tools[0].name, 3_000))
                    .collect();
                plan.push(Injection::new(i, calls));
                labels.push(label(
                    a,
                    Some(IncidentType::FrequencySpike),
                    Some(Basis::Learned),
                    h,
                    h + HOUR_MS,
                    "hourly rate far above the agent's baseline, under the static threshold",
                ));
            }
        }
        // One call of a usual tool moving 8 MB where it usually moves kilobytes (under the static limit).
        if let Some(i) = take(&|a| matches!(a.role, Role::Finance | Role::Engineering)) {
            let a = &fleet[i];
            let d = day_in(rng, first_day);
            if let Some(t) = work_time(a, cfg, d, rng, false) {
                plan.push(Injection::new(i, vec![(t, a.tools[0].name, 8_000_000)]));
                labels.push(label(
                    a,
                    Some(IncidentType::VolumeSpike),
                    Some(Basis::Learned),
                    t,
                    t + 1000,
                    "one call far above the tool's learned size",
                ));
            }
        }
        // A run of large transfers: five consecutive calls of the agent's tools, each 40× its
        // usual size (none alone far out in the tail, all under the static limit).
        if let Some(i) = take(&|a| matches!(a.role, Role::Finance | Role::Engineering)) {
            let a = &fleet[i];
            let d = day_in(rng, first_day);
            if let Some(t) = work_time(a, cfg, d, rng, false) {
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
                plan.push(Injection::new(i, calls));
                labels.push(label(
                    a,
                    Some(IncidentType::VolumeSpike),
                    Some(Basis::Learned),
                    t,
                    t + 60_000,
                    "a run of five transfers at 40x their tools' usual size",
                ));
            }
        }
        // A slow burn: five times the agent's peak rate on top of its work for three hours.
        if let Some(i) = take(&|a| a.role == Role::Engineering && a.end >= a.start + 8) {
            let a = &fleet[i];
            let d = day_in(rng, first_day);
            if let Some(t) = local_at(a, cfg, d, a.start + 1, 0, |wd| wd < 5) {
                let n = (a.peak_rate * 4.0 * 3.0) as i64;
                let calls = (0..n)
                    .map(|k| (t + k * 3 * HOUR_MS / n, a.tools[0].name, 5_000))
                    .collect();
                plan.push(Injection::new(i, calls));
                labels.push(label(
                    a,
                    Some(IncidentType::FrequencySpike),
                    Some(Basis::Learned),
                    t,
                    t + 3 * HOUR_MS,
                    "a slow burn: five times the agent's peak rate for three hours",
                ));
            }
        }
        // A day-shift SOC agent (no static hours) active at 03:00 UTC.
        if let Some(i) =
            take(&|a| a.role == Role::Soc && !a.always_on && a.steady_per_sec.is_none())
        {
            let a = &fleet[i];
            let d = day_in(rng, first_day);
            if let Some(t) = local_at(a, cfg, d, 3, 5, |_| true) {
                let (inj, l) = off_hours_trickle(
                    a,
                    i,
                    t,
                    Basis::Learned,
                    "activity in an hour the agent never uses",
                );
                plan.push(inj);
                labels.push(l);
            }
        }
    }

    // The rogue: burst, exfiltration and the finance sequence within 15 minutes → auto kill; it keeps acting.
    if let Some(i) = take(&|a| a.role == Role::Finance) {
        let a = &fleet[i];
        let d = day_in(rng, first_day);
        if let Some(t) = work_time(a, cfg, d, rng, true) {
            let mut calls: Vec<(i64, &'static str, u64)> = (0..70)
                .map(|k| (t + k * 500, "query_customer_db", 20_000))
                .collect();
            calls.extend((0..3).map(|k| (t + 300_000 + k * 5_000, "export_data", 30_000_000)));
            calls.extend([
                (t + 600_000, "query_customer_db", 20_000),
                (t + 660_000, "send_email", 60_000),
            ]);
            let mut inj = Injection::new(i, calls);
            inj.silence = Some((t + 600_000, t + 660_001));
            plan.push(inj);
            let note = "rogue agent";
            // Either basis: the burst may cross the agent's learned rate before the static one.
            labels.push(label(
                a,
                Some(IncidentType::FrequencySpike),
                None,
                t,
                t + 40_000,
                note,
            ));
            labels.push(label(
                a,
                Some(IncidentType::VolumeSpike),
                Some(Basis::Static),
                t + 300_000,
                t + 310_000,
                note,
            ));
            labels.push(label(
                a,
                Some(IncidentType::SuspiciousSequence),
                None,
                t + 600_000,
                t + 660_000,
                note,
            ));
            labels.push(label(
                a,
                Some(IncidentType::AutoKill),
                None,
                t,
                end_ms,
                note,
            ));
            labels.push(label(
                a,
                Some(IncidentType::ActivityAfterKill),
                None,
                t + 660_001,
                end_ms,
                "rogue agent keeps acting after the kill",
            ));
        }
    }

    // Negative controls.
    let batch = &fleet[2];
    labels.push(label(
        batch,
        None,
        None,
        cfg.start_ms,
        end_ms,
        "steady high-rate batch job (90 calls a minute, 02:00-04:00 UTC daily)",
    ));
    let qe = &fleet[5];
    if let Some(t) = local_at(qe, cfg, 3, qe.start, 30, |wd| wd < 5) {
        // A query half an hour into the working day, an email three hours later.
        let email = t + 3 * HOUR_MS;
        plan.push(Injection {
            agent: 5,
            calls: vec![
                (t, "query_customer_db", 30_000),
                (email, "send_email", 30_000),
            ],
            remove: Some(("query_customer_db", email - 20 * 60_000, email)),
            silence: None,
        });
        labels.push(label(
            qe,
            None,
            None,
            t,
            email + 60_000,
            "query, then an email three hours later",
        ));
    }
    let closing = &fleet[0];
    if let Some(t) = local_at(closing, cfg, 2, 17, 58, |wd| wd < 5) {
        let calls = vec![
            (t, "query_ledger", 9_000),
            (t + 60_000, "query_ledger", 9_000),
            (t + 119_000, "read_invoice", 9_000),
        ];
        plan.push(Injection::new(0, calls));
        labels.push(label(
            closing,
            None,
            None,
            t - 60_000,
            t + 119_000,
            "activity just before closing time (18:00)",
        ));
    }
    // Routine: a finance agent that always reads an invoice between querying the customer
    // database and sending an e-mail, every working day from the first (the loose form of its
    // blueprint's sequence): a baseline fact, never an incident.
    if let Some(i) = take(&|a| a.role == Role::Finance) {
        let a = &fleet[i];
        let calls = working_days_at(a, cfg, a.start + 1, 30)
            .flat_map(|t| {
                [
                    (t, "query_customer_db", 20_000),
                    (t + 40_000, "read_invoice", 30_000),
                    (t + 90_000, "send_email", 9_000),
                ]
            })
            .collect();
        plan.push(Injection::new(i, calls));
        labels.push(label(
            a,
            None,
            None,
            cfg.start_ms + i64::from(first_day) * DAY_MS,
            end_ms,
            "the loose form of the blueprint's sequence, every working day",
        ));
    }
    // Steady over the static threshold: a finance agent that runs 32 calls a minute for two
    // hours every working day (the threshold is 30): routine for it.
    if let Some(i) = take(&|a| a.role == Role::Finance && a.end >= a.start + 4) {
        let a = &fleet[i];
        let calls = working_days_at(a, cfg, a.start + 1, 0)
            .flat_map(|t| (0..3840).map(move |k| (t + k * 1875, "query_ledger", 12_000)))
            .collect();
        plan.push(Injection::new(i, calls));
        labels.push(label(
            a,
            None,
            None,
            cfg.start_ms + i64::from(first_day) * DAY_MS,
            end_ms,
            "steady 32 calls a minute, two hours every working day (threshold 30)",
        ));
    }
    // A pause: an engineering agent away for twelve days, then back to its usual work; the three
    // days after its return raise nothing.
    if cfg.days >= first_day + 16 {
        if let Some(i) = take(&|a| a.role == Role::Engineering) {
            let a = &fleet[i];
            let from = cfg.start_ms + i64::from(first_day) * DAY_MS;
            let back = from + 12 * DAY_MS;
            plan.push(Injection {
                agent: i as u32,
                calls: Vec::new(),
                remove: None,
                silence: Some((from, back)),
            });
            labels.push(label(
                a,
                None,
                None,
                back,
                back + 3 * DAY_MS,
                "back after a twelve-day pause",
            ));
        }
    }
    // Daylight-saving weeks: normal agents must stay silent through the change.
    let us_dst = (1_772_928_000_000, 1_773_532_800_000); // 2026-03-08 .. 03-15 UTC
    let eu_dst = (1_774_742_400_000, 1_775_347_200_000); // 2026-03-29 .. 04-05 UTC
    for (role, (from, to)) in [(Role::Finance, us_dst), (Role::Engineering, eu_dst)] {
        if from >= cfg.start_ms && to <= end_ms {
            for _ in 0..3 {
                if let Some(i) = take(&|a| a.role == role) {
                    labels.push(label(
                        &fleet[i],
                        None,
                        None,
                        from,
                        to,
                        "normal hours across a daylight-saving change",
                    ));
                }
            }
        }
    }
    // Every injection uses its own deterministic times; keep a stable order.
    for inj in &mut plan {
        inj.calls.sort_by_key(|c| c.0);
    }
    (plan, labels)
}
