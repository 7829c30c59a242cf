//! volume_spike on data volume, judged against the agent.
//!
//! - **Static:** bytes in the blueprint's sliding window over `data_volume.max_bytes`; routine
//!   when the calls are ordinary sizes for the agent's tools, or it happened on `routine_days`.
//! - **Learned:** the agent's distribution of ln(1 + bytes) per tool (exponentially weighted,
//!   fixed size). Each call's size gets a surprise, −log10 of its upper tail probability; the
//!   surprises of consecutive calls accumulate, less a drift of 0.8 per call (a CUSUM), so a run
//!   of calls each well above its tool's usual size — 3 calls at 30× or 15 calls at 8× — stands
//!   out as much as one call far out in the tail, while ordinary variation drains away. Alert
//!   when the accumulated surprise reaches −log10(`sensitivity`). No absolute floor: a run of
//!   small files is a run all the same.

use serde::{Deserialize, Serialize};

use super::cohort::ShiftTest;
use super::frequency::{basis_of, judge};
use super::habit::{Habit, Report};
use super::stats::{ew_update, surprise};
use super::{human_ms, Context, Episode, Finding, Judgement, Observation, Ring, Step};
use crate::blueprint::Blueprint;
use crate::prefetch;
use crate::response::{BaselineFacts, Basis, IncidentType, Source};

/// Tools whose volume is learned per agent; calls of further tools are checked statically only.
const MAX_TOOLS: usize = 32;
/// Calls after which a tool's statistics become exponentially weighted.
const TOOL_HORIZON: f32 = 1000.0;
/// Smallest standard deviation of ln(bytes) assumed (a factor of about 1.65).
const MIN_LOG_SD: f32 = 0.5;
/// Surprise an ordinary call drains from the accumulated surprise (−log10 units).
const DRIFT: f64 = 0.8;
/// Most surprise one call can add.
const MAX_SURPRISE: f64 = 12.0;
/// Largest size of one call taken at face value (bytes).
const MAX_CALL_BYTES: f64 = 1e12;

/// Learned distribution of ln(1 + bytes) of one tool's calls.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ToolStats {
    /// [`super::tool_hash`] of the tool.
    pub tool: u64,
    /// Calls learned.
    pub n: u32,
    /// Mean of ln(1 + bytes).
    pub mean: f32,
    /// Variance of ln(1 + bytes).
    pub var: f32,
}

impl ToolStats {
    /// Typical bytes of a call (the median of the learned distribution).
    pub fn typical(&self) -> f64 {
        f64::from(self.mean).exp() - 1.0
    }
}

/// The run of large calls being accumulated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct Run {
    /// Accumulated surprise.
    surprise: f32,
    calls: u32,
    bytes: f64,
    typical: f64,
    start: i64,
}

/// Per-agent data-volume state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeState {
    bytes: Ring<u64>,
    episode: Episode,
    tools: Vec<ToolStats>,
    run: Run,
    habit: Habit,
}

impl VolumeState {
    /// An empty state of the same shape (see [`super::DetectorState::husk`]).
    pub fn husk(&self) -> VolumeState {
        VolumeState {
            bytes: self.bytes.emptied(),
            episode: Episode::default(),
            tools: Vec::new(),
            run: Run::default(),
            habit: Habit::default(),
        }
    }

    /// Fresh state for a blueprint.
    pub fn new(bp: &Blueprint) -> VolumeState {
        VolumeState {
            bytes: Ring::new(bp.data_volume.window_ms, bp.allowed_lateness_ms),
            episode: Episode::default(),
            tools: Vec::new(),
            run: Run::default(),
            habit: Habit::default(),
        }
    }

    /// Forgets the episode opened at event time `ts` (see
    /// [`super::DetectorState::forget_episode`]).
    pub fn forget_episode(&mut self, ts: i64) {
        self.episode.forget_opened_at(ts);
    }

    /// The learned statistics of every tool.
    pub fn tools(&self) -> &[ToolStats] {
        &self.tools
    }

    /// Announces the memory an event reads.
    pub fn prefetch(&self) {
        self.bytes.prefetch();
        prefetch::lines(&self.tools, 12);
    }
}

fn fmt_bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = b;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// Checks one event.
pub fn observe(
    bp: &Blueprint,
    st: &mut VolumeState,
    ctx: &mut Context<'_>,
    obs: &Observation<'_>,
    out: &mut Vec<Finding>,
) {
    if let Some(c) = st.episode.expire(obs.ts, &bp.dedup) {
        out.push(Finding::closing(
            IncidentType::VolumeSpike,
            bp.severities.volume_spike,
            c,
            "bytes",
            0,
        ));
    }
    // A terabyte is more than any call moves; the cap keeps window sums far from overflow.
    let Some(bytes) = obs.bytes.map(|b| b.min(MAX_CALL_BYTES)) else {
        return;
    };
    let sum = window_sum(bp, st, obs, bytes);
    let over_static = bp.data_volume.max_bytes.filter(|m| sum > *m);

    let learned = learned_check(bp, st, ctx, obs, bytes, over_static.is_some());
    let mut new_static = None;
    if let Some(m) = over_static {
        let routine =
            !learned.over && (learned.known || st.habit.is_routine(bp.learned.routine_days));
        match judge(bp.routine.volume, ctx.learning, routine) {
            Judgement::New => new_static = Some(m),
            j => report_routine(bp, &mut st.habit, obs, j, sum, m, out),
        }
    }
    let new_learned = learned.over && !ctx.learning;
    // A run that reached the threshold is reported (or, while learning, dropped) and starts
    // over: its calls are not learned from, and later large calls continue the episode.
    let run = st.run;
    if learned.over {
        st.run = Run::default();
    }
    if new_static.is_none() && !new_learned {
        return;
    }
    let basis = basis_of(new_static);
    if st
        .episode
        .violate(obs.ts, bytes, &bp.dedup, || obs.opening(basis))
        != Step::Opened
    {
        return;
    }
    out.push(match new_static {
        Some(m) => static_finding(bp, obs, sum, m),
        None => learned_finding(bp, obs, &run, learned.idx.map(|i| &st.tools[i]), bytes),
    });
}

/// What the learned check made of a call.
struct Learned {
    /// Index of the statistics of the call's tool, if it had them before the call.
    idx: Option<usize>,
    /// Whether the tool's statistics were past their warm-up.
    known: bool,
    /// Whether the run of large calls reached the alert threshold.
    over: bool,
}

/// The learned check of a call of `bytes`: adds it to the run of large calls and learns its size
/// unless it is part of an anomaly (`over_static`: the window is over the static threshold).
fn learned_check(
    bp: &Blueprint,
    st: &mut VolumeState,
    ctx: &Context<'_>,
    obs: &Observation<'_>,
    bytes: f64,
    over_static: bool,
) -> Learned {
    let l = &bp.learned;
    let x = (1.0 + bytes).ln() as f32;
    let idx = st.tools.iter().position(|t| t.tool == obs.tool);
    let known = idx
        .map(|i| st.tools[i])
        .filter(|t| t.n >= l.volume_warmup_calls);
    let mut z = 0.0f64;
    if let (Some(t), true) = (known, obs.in_order && l.enabled) {
        z = st.run.add(&t, x, bytes, l.volume_min_bytes, obs.ts);
    }
    // While the agent's cohort makes `f` times its usual calls, a run of large calls has `f`
    // times the chances to occur by accident: the tail probability alerting is `f` times smaller.
    let threshold = -l.sensitivity.log10() + ctx.cohort.factor(2).log10();
    let over_learned = f64::from(st.run.surprise) >= threshold;
    // Learn from every in-order call that is not part of an anomaly.
    if obs.in_order && (!(over_learned || over_static) || z < 1.0) {
        learn_tool(&mut st.tools, idx, obs.tool, x);
    }
    Learned {
        idx,
        known: known.is_some(),
        over: over_learned,
    }
}

/// Bytes in the blueprint's window containing the call of `bytes` (counted in it when in
/// order; a late call's own bytes otherwise).
#[inline]
fn window_sum(bp: &Blueprint, st: &mut VolumeState, obs: &Observation<'_>, bytes: f64) -> f64 {
    let mut sum = bytes;
    if obs.in_order {
        if !st
            .bytes
            .fits(bp.data_volume.window_ms, bp.allowed_lateness_ms)
        {
            st.bytes = Ring::new(bp.data_volume.window_ms, bp.allowed_lateness_ms);
        }
        // Whole bytes (saturating) keep the running window sum exact.
        st.bytes.add(obs.ts, bytes.round() as u64);
        sum = st.bytes.max_window_containing(obs.ts) as f64;
    }
    sum
}

impl Run {
    /// Adds a call of `bytes` (`x`: ln(1 + bytes)) at `ts` of the tool learned as `t` to the run
    /// (a CUSUM step; calls under `min_bytes` only drain it); returns the call's z-score.
    #[inline]
    fn add(&mut self, t: &ToolStats, x: f32, bytes: f64, min_bytes: f64, ts: i64) -> f64 {
        let sd = t.var.max(0.0).sqrt().max(MIN_LOG_SD);
        let z = f64::from((x - t.mean) / sd);
        // A call under the blueprint's floor only drains the run. A call at most one standard
        // deviation above its tool's mean has a surprise of at most 0.8 (P ≥ 0.158), so with
        // no run going it cannot start one: the tail is not computed (most calls).
        let sc = if bytes < min_bytes || (z <= 1.0 && self.surprise == 0.0) {
            0.0
        } else {
            surprise(z, MAX_SURPRISE)
        };
        let next = (f64::from(self.surprise) + sc - DRIFT).max(0.0);
        if next <= 0.0 {
            *self = Run::default();
        } else {
            if self.calls == 0 {
                self.start = ts;
            }
            self.surprise = next as f32;
            self.calls += 1;
            self.bytes += bytes;
            self.typical += t.typical();
        }
        z
    }
}

/// Learns a call's ln(1 + bytes) `x` into the statistics of `tool` (at `idx` when it has
/// them; added while fewer than [`MAX_TOOLS`] are learned).
#[inline]
fn learn_tool(tools: &mut Vec<ToolStats>, idx: Option<usize>, tool: u64, x: f32) {
    let i = match idx {
        Some(i) => Some(i),
        None if tools.len() < MAX_TOOLS => {
            tools.push(ToolStats {
                tool,
                n: 0,
                mean: 0.0,
                var: 0.0,
            });
            Some(tools.len() - 1)
        }
        None => None,
    };
    if let Some(i) = i {
        let t = &mut tools[i];
        t.n = t.n.saturating_add(1);
        ew_update(
            &mut t.mean,
            &mut t.var,
            x,
            1.0 / (t.n as f32).min(TOOL_HORIZON),
        );
    }
}

/// Reports a static match judged `j` (routine, or seen while learning) as a baseline finding
/// when the agent's habit says so: `sum` bytes in the window against the threshold `m`.
fn report_routine(
    bp: &Blueprint,
    habit: &mut Habit,
    obs: &Observation<'_>,
    j: Judgement,
    sum: f64,
    m: f64,
    out: &mut Vec<Finding>,
) {
    let say = habit.report(j, bp.routine.volume, obs.local.day, sum, !obs.in_order);
    if say == Report::Say {
        let f = static_finding(bp, obs, sum, m).into_baseline(
            j,
            "Routine for this agent: its calls are of their usual sizes; reported again if the volume doubles.",
        );
        out.push(f);
    }
}

/// The learned finding about the run `r` of large calls ending with this call of `bytes`;
/// `t`: the statistics of its tool, if learned.
fn learned_finding(
    bp: &Blueprint,
    obs: &Observation<'_>,
    r: &Run,
    t: Option<&ToolStats>,
    bytes: f64,
) -> Finding {
    let typical = t.map_or(0.0, |t| t.typical());
    let mut f = Finding::new(
        IncidentType::VolumeSpike,
        Basis::Learned,
        bp.severities.volume_spike,
    );
    f.observed = r.bytes;
    f.expected = r.typical;
    f.unit = "bytes";
    f.window_start = r.start;
    f.window_end = obs.ts;
    f.description = format!(
        "Agent {:?} moved {} in {} calls, {:.0}× the {} its tools usually move in as many calls (last call {:?}: {}, typical {}; learned from {} calls of that tool).",
        obs.agent_id,
        fmt_bytes(r.bytes),
        r.calls,
        r.bytes / r.typical.max(1.0),
        fmt_bytes(r.typical),
        obs.tool_name,
        fmt_bytes(bytes),
        fmt_bytes(typical),
        t.map_or(0, |t| t.n)
    );
    f.facts = Some(BaselineFacts {
        source: Source::Agent,
        history_days: obs.history_days,
        samples: u64::from(t.map_or(0, |t| t.n)),
        seen_before: 0,
    });
    f.weighs = obs.warm;
    f.shift = Some(ShiftTest::Volume {
        ratio: (r.bytes / r.typical.max(1.0)) as f32,
    });
    f
}

fn static_finding(bp: &Blueprint, obs: &Observation<'_>, sum: f64, m: f64) -> Finding {
    let mut f = Finding::new(
        IncidentType::VolumeSpike,
        Basis::Static,
        bp.severities.volume_spike,
    );
    f.observed = sum;
    f.expected = m;
    f.unit = "bytes";
    f.window_start = obs.ts - bp.data_volume.window_ms;
    f.window_end = obs.ts;
    f.description = format!(
        "Agent {:?} moved {} in {} (threshold {}), last call {:?}.",
        obs.agent_id,
        fmt_bytes(sum),
        human_ms(bp.data_volume.window_ms),
        fmt_bytes(m),
        obs.tool_name
    );
    f
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use crate::response::{Basis, IncidentType};

    #[test]
    fn exfiltration_over_static_threshold_in_a_window() {
        let mut k = Kit::after_learning(finance()); // 50 MB per minute
        let t0 = at("2026-03-02T15:00:00Z");
        let found = k.feed((0..6).map(|i| ev(t0 + i * 5_000, "export_report", Some(10e6))));
        let v = incidents(&found, IncidentType::VolumeSpike);
        assert_eq!(v.len(), 1, "{found:?}");
        assert_eq!(v[0].basis, Basis::Static);
        assert_eq!(v[0].observed, 60e6);
    }

    /// Calls of three tools at their usual sizes (1 kB, 20 kB, 200 kB, spread by a factor of
    /// about 3), one a minute.
    fn usual(t0: i64, n: i64) -> Vec<Ev> {
        let tools = [("lookup", 1e3), ("read_invoice", 2e4), ("report", 2e5)];
        (0..n)
            .map(|i| {
                let (tool, size) = tools[(i % 3) as usize];
                let wobble = [0.2, 0.5, 1.0, 2.0, 5.0, 0.35, 3.0][(i % 7) as usize];
                ev(t0 + i * 60_000, tool, Some(size * wobble))
            })
            .collect()
    }

    #[test]
    fn a_run_of_small_files_each_far_above_its_tool_is_one_incident() {
        let mut k = Kit::after_learning(finance());
        let t0 = at("2026-03-02T14:00:00Z");
        let mut evs = usual(t0, 300);
        // Four consecutive calls at 40× their tools' usual sizes: 40 kB to 8 MB, under every
        // static limit.
        let t1 = t0 + 300 * 60_000;
        evs.extend(
            [
                ("lookup", 4e4),
                ("read_invoice", 8e5),
                ("report", 8e6),
                ("lookup", 4e4),
            ]
            .iter()
            .enumerate()
            .map(|(i, (tool, b))| ev(t1 + i as i64 * 20_000, tool, Some(*b))),
        );
        evs.extend(usual(t1 + 120_000, 60));
        let found = k.feed(evs);
        let v = incidents(&found, IncidentType::VolumeSpike);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].basis, Basis::Learned);
        assert!(
            v[0].window_end >= t1 && v[0].window_end <= t1 + 60_000,
            "{v:?}"
        );
        assert!(v[0].description.contains("calls"), "{}", v[0].description);
        assert!(!v[0].description.contains("  "), "{}", v[0].description);
    }

    #[test]
    fn one_large_call_of_an_ordinary_spread_is_not_a_run() {
        let mut k = Kit::after_learning(finance());
        let t0 = at("2026-03-02T14:00:00Z");
        let mut evs = usual(t0, 300);
        // One call at 10× its tool's size, then ordinary calls.
        evs.push(ev(t0 + 300 * 60_000, "read_invoice", Some(2e5)));
        evs.extend(usual(t0 + 301 * 60_000, 100));
        let found = k.feed(evs);
        assert!(
            incidents(&found, IncidentType::VolumeSpike).is_empty(),
            "{found:?}"
        );
    }

    #[test]
    fn learned_volume_is_silent_during_warmup() {
        let mut k = Kit::after_learning(finance());
        let t0 = at("2026-03-02T15:00:00Z");
        let mut evs: Vec<_> = (0..10)
            .map(|i| ev(t0 + i * 60_000, "read_invoice", Some(20_000.0)))
            .collect();
        evs.push(ev(t0 + 11 * 60_000, "read_invoice", Some(5e6)));
        assert!(k.feed(evs).is_empty());
    }
}
