//! Agent profiles: role, time zone, working rhythm, tool mix and payload sizes.

use chrono_tz::Tz;
use rand::Rng;

use super::{normal, SimEvent};

/// An agent's job, which decides its blueprint, tools and rhythm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Finance agents: New York business hours, Monday to Friday.
    Finance,
    /// SOC agents: UTC, around the clock or in a day shift.
    Soc,
    /// Engineering agents: London, long days, weekdays mostly.
    Engineering,
}

impl Role {
    /// The group field value and agent id prefix.
    pub fn team(self) -> &'static str {
        match self {
            Role::Finance => "finance",
            Role::Soc => "soc",
            Role::Engineering => "engineering",
        }
    }
}

/// A tool with its share of calls and payload size distribution.
#[derive(Debug, Clone, Copy)]
pub struct ToolMix {
    /// Tool name.
    pub name: &'static str,
    /// Relative weight.
    pub weight: f64,
    /// Median payload in bytes.
    pub median_bytes: f64,
    /// Spread of ln(bytes).
    pub sigma: f64,
}

const FIN_TOOLS: &[ToolMix] = &[
    ToolMix {
        name: "query_ledger",
        weight: 4.0,
        median_bytes: 12_000.0,
        sigma: 0.5,
    },
    ToolMix {
        name: "read_invoice",
        weight: 3.0,
        median_bytes: 30_000.0,
        sigma: 0.6,
    },
    ToolMix {
        name: "generate_report",
        weight: 1.0,
        median_bytes: 80_000.0,
        sigma: 0.5,
    },
    ToolMix {
        name: "reconcile_account",
        weight: 2.0,
        median_bytes: 5_000.0,
        sigma: 0.4,
    },
    ToolMix {
        name: "query_customer_db",
        weight: 1.0,
        median_bytes: 20_000.0,
        sigma: 0.6,
    },
    ToolMix {
        name: "trigger_payment",
        weight: 1.0,
        median_bytes: 1_500.0,
        sigma: 0.3,
    },
];
const SOC_TOOLS: &[ToolMix] = &[
    ToolMix {
        name: "read_alerts",
        weight: 4.0,
        median_bytes: 8_000.0,
        sigma: 0.5,
    },
    ToolMix {
        name: "query_siem",
        weight: 4.0,
        median_bytes: 60_000.0,
        sigma: 0.7,
    },
    ToolMix {
        name: "enrich_ioc",
        weight: 2.0,
        median_bytes: 3_000.0,
        sigma: 0.4,
    },
    ToolMix {
        name: "triage",
        weight: 2.0,
        median_bytes: 2_000.0,
        sigma: 0.3,
    },
    ToolMix {
        name: "shell_execute",
        weight: 1.0,
        median_bytes: 1_000.0,
        sigma: 0.5,
    },
];
const ENG_TOOLS: &[ToolMix] = &[
    ToolMix {
        name: "read_file",
        weight: 5.0,
        median_bytes: 6_000.0,
        sigma: 0.8,
    },
    ToolMix {
        name: "write_file",
        weight: 2.0,
        median_bytes: 4_000.0,
        sigma: 0.8,
    },
    ToolMix {
        name: "run_tests",
        weight: 2.0,
        median_bytes: 20_000.0,
        sigma: 0.6,
    },
    ToolMix {
        name: "git_commit",
        weight: 1.0,
        median_bytes: 2_000.0,
        sigma: 0.5,
    },
    ToolMix {
        name: "http_request",
        weight: 1.0,
        median_bytes: 15_000.0,
        sigma: 0.7,
    },
    ToolMix {
        name: "query_db",
        weight: 1.0,
        median_bytes: 25_000.0,
        sigma: 0.6,
    },
];
/// The batch agent's only tool.
const BATCH_TOOL: ToolMix = ToolMix {
    name: "query_siem",
    weight: 1.0,
    median_bytes: 4_000.0,
    sigma: 0.2,
};

/// One simulated agent.
#[derive(Debug, Clone)]
pub struct AgentProfile {
    /// Agent id.
    pub id: String,
    /// Role.
    pub role: Role,
    /// Local time zone (that of its blueprint).
    pub tz: Tz,
    /// Environment reported in events.
    pub environment: &'static str,
    /// First local working hour.
    pub start: u8,
    /// First local hour after work.
    pub end: u8,
    /// Working days bit set (bit 0 = Monday).
    pub days: u8,
    /// Around the clock (with a softer night).
    pub always_on: bool,
    /// Calls per working hour at the peak of the day.
    pub peak_rate: f64,
    /// A batch job at a fixed rate (calls per second) in its hours, instead of random calls.
    pub steady_per_sec: Option<f64>,
    /// Tools.
    pub tools: &'static [ToolMix],
}

impl AgentProfile {
    /// Expected calls in a local hour (0 when off).
    pub fn rate_at(&self, weekday: u8, hour: u8) -> f64 {
        if self.steady_per_sec.is_some() {
            return if (self.start..self.end).contains(&hour) {
                1.0
            } else {
                0.0
            };
        }
        if self.always_on {
            let day = (6..22).contains(&hour);
            return if day {
                self.peak_rate
            } else {
                (self.peak_rate * 0.4).max(8.0)
            };
        }
        if self.days & (1 << weekday) == 0 || !(self.start..self.end).contains(&hour) {
            return 0.0;
        }
        let span = f64::from(self.end - self.start);
        let x = (f64::from(hour - self.start) + 0.5) / span;
        // A working-day curve: busier mid-day, never below the floor that keeps every working hour in use.
        (self.peak_rate * (0.6 + 0.4 * (std::f64::consts::PI * x).sin())).max(8.0)
    }

    /// Whether the agent works at this local time.
    pub fn works(&self, weekday: u8, hour: u8) -> bool {
        self.rate_at(weekday, hour) > 0.0
    }

    /// A normal call; `prev` is the previous tool, to keep normal flows free of blueprint sequences.
    pub fn call(
        &self,
        agent: u32,
        ts: i64,
        rng: &mut impl Rng,
        prev: Option<&'static str>,
    ) -> SimEvent {
        let tools = if self.steady_per_sec.is_some() {
            std::slice::from_ref(&BATCH_TOOL)
        } else {
            self.tools
        };
        let total: f64 = tools.iter().map(|t| t.weight).sum();
        let mut tool = &tools[0];
        for _ in 0..8 {
            let mut x = rng.random_range(0.0..total);
            for t in tools {
                x -= t.weight;
                if x <= 0.0 {
                    tool = t;
                    break;
                }
            }
            // No back-to-back payments or shell commands in normal work.
            let repeat =
                prev == Some(tool.name) && matches!(tool.name, "trigger_payment" | "shell_execute");
            if !repeat {
                break;
            }
            tool = &tools[0];
        }
        let z = normal(rng).clamp(-3.0, 3.0);
        let bytes = (tool.median_bytes * (tool.sigma * z).exp()) as u64;
        let r: f64 = rng.random();
        let outcome = if r < 0.95 {
            "ALLOW"
        } else if r < 0.98 {
            "DENY"
        } else {
            "REQUIRE_APPROVAL"
        };
        SimEvent {
            ts,
            agent,
            tool: tool.name,
            bytes,
            outcome,
        }
    }
}

/// Builds a fleet of `n` agents: 40 % finance, 20 % SOC, 40 % engineering; agent 0 of SOC is a
/// steady batch job (a negative control).
pub fn make_fleet(n: usize, rng: &mut impl Rng) -> Vec<AgentProfile> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let role = match i % 5 {
            0 | 1 => Role::Finance,
            2 => Role::Soc,
            _ => Role::Engineering,
        };
        let peak_rate = (2.6 + 0.5 * normal(rng)).exp().clamp(8.0, 60.0);
        let environment = if rng.random_bool(0.9) {
            "prod"
        } else {
            "staging"
        };
        let id = format!("{}-{:05}", &role.team()[..3], i);
        let common = Common {
            i,
            id,
            environment,
            peak_rate,
        };
        out.push(match role {
            Role::Finance => finance_profile(common, rng),
            Role::Engineering => engineering_profile(common, rng),
            Role::Soc => soc_profile(common, rng),
        });
    }
    out
}

/// What every agent draws the same way before its role's own draws.
struct Common {
    /// Index of the agent in the fleet.
    i: usize,
    /// Agent id (team prefix and index).
    id: String,
    /// Deployment environment.
    environment: &'static str,
    /// Calls per working hour at the peak of the day, before the role's scaling.
    peak_rate: f64,
}

/// A finance agent: New York, Monday to Friday; agent 0 works until 18:00 (the closing-time control).
fn finance_profile(c: Common, rng: &mut impl Rng) -> AgentProfile {
    AgentProfile {
        id: c.id,
        role: Role::Finance,
        tz: chrono_tz::America::New_York,
        environment: c.environment,
        start: rng.random_range(8..=10),
        end: if c.i == 0 {
            18
        } else {
            rng.random_range(16..=18)
        },
        days: 0b001_1111,
        always_on: false,
        peak_rate: c.peak_rate,
        steady_per_sec: None,
        tools: FIN_TOOLS,
    }
}

/// An engineering agent: London, long days, one in five also on Saturdays, a higher peak rate.
fn engineering_profile(c: Common, rng: &mut impl Rng) -> AgentProfile {
    AgentProfile {
        id: c.id,
        role: Role::Engineering,
        tz: chrono_tz::Europe::London,
        environment: c.environment,
        start: rng.random_range(6..=10),
        end: rng.random_range(17..=22),
        days: if rng.random_bool(0.2) {
            0b011_1111
        } else {
            0b001_1111
        },
        always_on: false,
        peak_rate: c.peak_rate * 1.5,
        steady_per_sec: None,
        tools: ENG_TOOLS,
    }
}

/// A SOC agent: UTC, around the clock or in a day shift; agent 2 is the steady batch job.
fn soc_profile(c: Common, rng: &mut impl Rng) -> AgentProfile {
    let batch = c.i == 2;
    let always_on = !batch && rng.random_bool(0.5);
    AgentProfile {
        id: if batch {
            "soc-batch-00002".to_string()
        } else {
            c.id
        },
        role: Role::Soc,
        tz: chrono_tz::UTC,
        environment: c.environment,
        start: if batch { 2 } else { 8 },
        end: if batch { 4 } else { 20 },
        days: 0b111_1111,
        always_on,
        peak_rate: c.peak_rate,
        steady_per_sec: batch.then_some(1.5),
        tools: SOC_TOOLS,
    }
}
