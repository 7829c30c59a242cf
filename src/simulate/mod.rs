//! A realistic fleet generator: agents with daily and weekly rhythms in their time zones, tool
//! mixes and payload sizes per role, and injected anomalies with a label file saying what was
//! injected. Deterministic for a seed. Used by `guardian simulate`, the scenario tests and the
//! benches, so all three share one source of data.
//!
//! Layer: uses `detect`, `response`, `event`.

mod fleet;
mod inject;
mod label;

pub use fleet::{AgentProfile, Role};
pub use label::{evaluate, Evaluation, Label};

use std::io::Write;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Poisson};

use crate::detect::local_time;
use crate::event::format_rfc3339_ms;

const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;

/// What to generate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Number of agents (at least 1; the fleet always includes the negative-control agents when it has 20 or more).
    pub agents: usize,
    /// Number of days.
    pub days: u32,
    /// Random seed.
    pub seed: u64,
    /// First day, 00:00 UTC, as epoch ms (default Monday 2026-03-02, so four weeks span both the
    /// US and the EU daylight-saving changes).
    pub start_ms: i64,
    /// Whether to inject anomalies and negative controls.
    pub inject: bool,
    /// First day (0-based) anomalies are injected on (default 8: after the shipped blueprints'
    /// seven-day learning period and the agents' warm-up, as a guard deployed on a real fleet
    /// judges nothing new before). Short fleets for pipeline tests inject earlier.
    pub first_injection_day: u32,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            agents: 100,
            days: 28,
            seed: 1,
            start_ms: 1_772_409_600_000,
            inject: true,
            first_injection_day: 8,
        }
    }
}

/// One generated call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimEvent {
    /// Event time (ms).
    pub ts: i64,
    /// Index of the agent in the fleet.
    pub agent: u32,
    /// Tool name.
    pub tool: &'static str,
    /// Data volume in bytes.
    pub bytes: u64,
    /// Outcome (Agent-SPM spelling).
    pub outcome: &'static str,
}

/// A generated fleet: profiles, the injection plan and its labels.
pub struct Simulation {
    cfg: SimConfig,
    /// The agents.
    pub fleet: Vec<AgentProfile>,
    plan: Vec<inject::Injection>,
    /// What was injected (positive labels) and the negative controls.
    pub labels: Vec<Label>,
}

impl Simulation {
    /// Plans a fleet and its injections.
    pub fn new(cfg: SimConfig) -> Simulation {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let fleet = fleet::make_fleet(cfg.agents.max(1), &mut rng);
        let (plan, labels) = if cfg.inject {
            inject::plan(&fleet, &cfg, &mut rng)
        } else {
            (Vec::new(), Vec::new())
        };
        Simulation {
            cfg,
            fleet,
            plan,
            labels,
        }
    }

    /// Events of one day (index from 0), sorted by time.
    pub fn day(&self, day: u32) -> Vec<SimEvent> {
        let mut rng = ChaCha8Rng::seed_from_u64(
            self.cfg.seed ^ (u64::from(day) + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        );
        let day_start = self.cfg.start_ms + i64::from(day) * DAY_MS;
        let mut out = Vec::new();
        for (i, a) in self.fleet.iter().enumerate() {
            let day_factor: f64 = (0.15 * normal(&mut rng)).exp();
            let mut prev = None;
            for h in 0..24 {
                let hour_start = day_start + h * HOUR_MS;
                let lt = local_time(a.tz, hour_start);
                let rate = a.rate_at(lt.weekday, lt.hour) * day_factor;
                if rate <= 0.0 {
                    continue;
                }
                if let Some(per_sec) = a.steady_per_sec {
                    let n = (per_sec * 3600.0) as i64;
                    for k in 0..n {
                        let ts = hour_start + (k as f64 * 1000.0 / per_sec) as i64;
                        out.push(a.call(i as u32, ts, &mut rng, None));
                    }
                    continue;
                }
                let n = Poisson::new(rate.max(0.01)).map_or(0, |p| p.sample(&mut rng) as u64);
                let mut times: Vec<i64> = (0..n)
                    .map(|_| hour_start + rng.random_range(0..HOUR_MS))
                    .collect();
                times.sort_unstable();
                for ts in times {
                    let e = a.call(i as u32, ts, &mut rng, prev);
                    prev = Some(e.tool);
                    out.push(e);
                }
            }
        }
        for inj in &self.plan {
            inj.apply(day_start, &mut out);
        }
        out.sort_by(|x, y| x.ts.cmp(&y.ts).then(x.agent.cmp(&y.agent)));
        out
    }

    /// Number of days.
    pub fn days(&self) -> u32 {
        self.cfg.days
    }

    /// Writes one event as an Agent-SPM JSON line; `n` makes event ids unique.
    pub fn write_event(&self, w: &mut impl Write, e: &SimEvent, n: u64) -> std::io::Result<()> {
        let a = &self.fleet[e.agent as usize];
        writeln!(
            w,
            r#"{{"event_id":"{id}-{n}","timestamp":"{ts}","request_id":"req-{n}","agent_id":"{id}","tool_name":"{tool}","outcome":"{o}","reasons":[{{"code":"{o}","message":"policy decision"}}],"safe_payload":{{"agent_id":"{id}","tool_name":"{tool}","environment":"{env}","outcome":"{o}","bytes":{b},"team":"{team}"}},"plugin_source":"agent-spm"}}"#,
            id = a.id,
            ts = format_rfc3339_ms(e.ts),
            tool = e.tool,
            o = e.outcome,
            env = a.environment,
            b = e.bytes,
            team = a.role.team(),
        )
    }

    /// Writes every event of every day as JSON lines; returns the number written.
    pub fn write_all(&self, w: &mut impl Write) -> std::io::Result<u64> {
        let mut n = 0;
        for d in 0..self.cfg.days {
            for e in self.day(d) {
                n += 1;
                self.write_event(w, &e, n)?;
            }
        }
        Ok(n)
    }

    /// All events as JSON lines in memory.
    pub fn to_jsonl(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        self.write_all(&mut buf)
            .expect("writing to memory does not fail");
        buf
    }
}

/// A standard-normal draw.
pub(crate) fn normal(rng: &mut impl Rng) -> f64 {
    rand_distr::StandardNormal.sample(rng)
}
