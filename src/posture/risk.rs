//! Risk of one agent, 0–100, as the sum of capped factors, each with the reason it scores.
//!
//! | factor | at most | from |
//! |---|---|---|
//! | `incidents` | 35 | incidents weighted by severity (low 1, medium 3, high 8, critical 15), halved every `incident_half_life` (default 30 days) of event time |
//! | `kill_history` | 20 | 20 while killed; else 5 per past kill |
//! | `deny_ratio` | 15 | share of calls DENY / REJECTED / KILL_SWITCH / RATE_LIMITED; full at 30 % (needs 20 calls with an outcome) |
//! | `sensitive_tools` | 10 | 4 per sensitive tool used |
//! | `environment` | 10 | production 10, staging 5, unknown 5, development / test 0 |
//! | `off_hours` | 10 | share of calls outside the blueprint's hours; full at 20 % |

use serde::{Deserialize, Serialize};

use super::settings::PostureSettings;
use crate::blueprint::Severity;
use crate::state::{AgentFacts, Facts, IncidentMark, Profile};

/// Risk level of a score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RiskLevel {
    /// Under 25.
    Low,
    /// 25 to 49.
    Medium,
    /// 50 to 74.
    High,
    /// 75 and more.
    Critical,
}

impl RiskLevel {
    /// The level of a score.
    pub fn of(score: u8) -> RiskLevel {
        match score {
            75.. => RiskLevel::Critical,
            50..=74 => RiskLevel::High,
            25..=49 => RiskLevel::Medium,
            _ => RiskLevel::Low,
        }
    }

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            RiskLevel::Low => "low",
            RiskLevel::Medium => "medium",
            RiskLevel::High => "high",
            RiskLevel::Critical => "critical",
        }
    }
}

/// One factor of a risk score.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Factor {
    /// Factor name (see the module table).
    pub factor: &'static str,
    /// Points it adds (0 to its cap, one decimal).
    pub points: f64,
    /// Most points it can add.
    pub max: f64,
    /// Why, in words.
    pub reason: String,
}

/// An agent's risk.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Risk {
    /// 0–100.
    pub score: u8,
    /// Level of the score.
    pub level: RiskLevel,
    /// The factors, largest first; factors worth nothing are left out.
    pub factors: Vec<Factor>,
}

const SEVERITY_WEIGHT: [f64; 4] = [1.0, 3.0, 8.0, 15.0];

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Risk points of an environment name (lower-cased).
pub fn environment_points(env: &str) -> f64 {
    let e = env.to_ascii_lowercase();
    if ["prod", "production", "live", "prd"]
        .iter()
        .any(|p| e == *p)
        || e.starts_with("prod")
    {
        10.0
    } else if [
        "dev",
        "development",
        "test",
        "testing",
        "sandbox",
        "local",
        "ci",
    ]
    .iter()
    .any(|p| e == *p)
    {
        0.0
    } else {
        5.0
    }
}

/// Scores an agent as of event time `now`.
pub fn score(a: &impl AgentFacts, s: &PostureSettings, now: i64) -> Risk {
    score_with(a, s, now, &mut |t| s.sensitive.is_match(t))
}

/// [`score`], whether a tool is sensitive answered by `sensitive` (a memo over the fleet's few
/// tool names, where many agents are scored).
pub fn score_with(
    a: &impl AgentFacts,
    s: &PostureSettings,
    now: i64,
    sensitive: &mut dyn FnMut(&str) -> bool,
) -> Risk {
    let st = a.facts();
    let p = st.profile;
    let factors = [
        incidents_factor(p, s, now),
        kill_history_factor(&st),
        deny_ratio_factor(p),
        sensitive_tools_factor(p, sensitive),
        environment_factor(p),
        off_hours_factor(&st),
    ];
    risk_of(factors.into_iter().flatten().collect())
}

/// A factor worth `points` clamped to `0..=max` and rounded to one decimal; `None` when
/// worth nothing.
fn capped(factor: &'static str, max: f64, points: f64, reason: String) -> Option<Factor> {
    let points = round1(points.clamp(0.0, max));
    (points > 0.0).then_some(Factor {
        factor,
        points,
        max,
        reason,
    })
}

/// The risk of the factors: sorted largest first, summed to a score and its level.
fn risk_of(mut factors: Vec<Factor>) -> Risk {
    factors.sort_by(|a, b| b.points.total_cmp(&a.points));
    let total: f64 = factors.iter().map(|f| f.points).sum();
    let score = total.round().clamp(0.0, 100.0) as u8;
    Risk {
        score,
        level: RiskLevel::of(score),
        factors,
    }
}

/// Incidents, weighted by severity and recency.
fn incidents_factor(p: &Profile, s: &PostureSettings, now: i64) -> Option<Factor> {
    let half = s.incident_half_life_ms.max(1) as f64;
    let (weight, recent) = weigh_incidents(&p.recent, half, now);
    let within = half_life_text(s.incident_half_life_ms, half);
    let counts: Vec<String> = Severity::ALL
        .iter()
        .rev()
        .filter(|sv| recent[sv.index()] > 0)
        .map(|sv| format!("{} {}", recent[sv.index()], sv.as_str()))
        .collect();
    capped(
        "incidents",
        35.0,
        weight,
        format!(
            "{} in the last {within}; {} in all (weighted by severity and age: {:.1})",
            if counts.is_empty() {
                "none".to_string()
            } else {
                counts.join(", ")
            },
            p.incidents.iter().sum::<u64>(),
            weight
        ),
    )
}

/// The incidents' weight (severity halved every `half` ms of age) and, per severity, how many
/// are at most `half` old.
fn weigh_incidents(marks: &[IncidentMark], half: f64, now: i64) -> (f64, [u32; 4]) {
    let mut weight = 0.0;
    let mut recent = [0u32; 4];
    for m in marks {
        let age = (now - m.at).max(0) as f64;
        weight += SEVERITY_WEIGHT[m.severity.index()] * 0.5f64.powf(age / half);
        if age <= half {
            recent[m.severity.index()] += 1;
        }
    }
    (weight, recent)
}

/// The half-life in words: whole days, else `half` (the half-life, at least 1 ms) as
/// `humantime` writes it.
fn half_life_text(half_life_ms: i64, half: f64) -> String {
    let day = 86_400_000;
    if half_life_ms % day == 0 {
        format!("{} days", half_life_ms / day)
    } else {
        humantime::format_duration(std::time::Duration::from_millis(half as u64)).to_string()
    }
}

/// Kill history: full while killed, else by past kills.
fn kill_history_factor(st: &Facts<'_>) -> Option<Factor> {
    let p = st.profile;
    let kills = p.auto_kills + p.manual_kills;
    if st.kill.killed {
        capped(
            "kill_history",
            20.0,
            20.0,
            format!(
                "killed now ({} automatic, {} by operators, {} revives)",
                p.auto_kills, p.manual_kills, p.revives
            ),
        )
    } else if kills > 0 {
        capped(
            "kill_history",
            20.0,
            5.0 * f64::from(kills),
            format!(
                "killed {kills} time(s) before ({} automatic, {} by operators), revived {}",
                p.auto_kills, p.manual_kills, p.revives
            ),
        )
    } else {
        None
    }
}

/// Deny ratio, once enough calls have an outcome.
fn deny_ratio_factor(p: &Profile) -> Option<Factor> {
    let with_outcome = p.events_with_outcome();
    if with_outcome < 20 {
        return None;
    }
    let ratio = p.denied() as f64 / with_outcome as f64;
    capped(
        "deny_ratio",
        15.0,
        15.0 * (ratio / 0.3).min(1.0),
        format!(
            "{:.1} % of {with_outcome} calls denied, rejected, rate-limited or stopped by the SDK",
            ratio * 100.0
        ),
    )
}

/// Sensitive tools used.
fn sensitive_tools_factor(
    p: &Profile,
    is_sensitive: &mut dyn FnMut(&str) -> bool,
) -> Option<Factor> {
    let sensitive: Vec<&str> = p
        .tools
        .iter()
        .filter(|t| is_sensitive(&t.name))
        .map(|t| t.name.as_str())
        .collect();
    if sensitive.is_empty() {
        return None;
    }
    capped(
        "sensitive_tools",
        10.0,
        4.0 * sensitive.len() as f64,
        format!("uses {}", sensitive.join(", ")),
    )
}

/// Environment: the riskiest one the agent runs in.
fn environment_factor(p: &Profile) -> Option<Factor> {
    let (env_points, env) = if p.environments.is_empty() {
        (5.0, "no environment reported".to_string())
    } else {
        let worst = p
            .environments
            .iter()
            .max_by(|a, b| environment_points(a).total_cmp(&environment_points(b)))
            .map_or("", String::as_str);
        (
            environment_points(worst),
            format!("runs in {}", p.environments.join(", ")),
        )
    };
    capped("environment", 10.0, env_points, env)
}

/// Off-hours share of the agent's calls.
fn off_hours_factor(st: &Facts<'_>) -> Option<Factor> {
    let p = st.profile;
    if st.events == 0 || p.off_hours_events == 0 {
        return None;
    }
    let share = p.off_hours_events as f64 / st.events as f64;
    capped(
        "off_hours",
        10.0,
        10.0 * (share / 0.2).min(1.0),
        format!(
            "{:.1} % of {} calls outside the blueprint's hours and days",
            share * 100.0,
            st.events
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blueprint::BlueprintSet;
    use crate::event::Outcome;
    use crate::response::IncidentType;
    use crate::state::AgentState;

    const DAY: i64 = 86_400_000;

    fn agent(env: &str) -> AgentState {
        let set = BlueprintSet::builtin();
        let mut a = AgentState::new("a", set.get(0), 0, Some(env));
        for i in 0..100 {
            a.events += 1;
            a.profile
                .observe(1, "search_docs", i, Some(Outcome::Allow), Some(env), false);
        }
        a
    }

    #[test]
    fn quiet_development_agent_scores_low_with_no_factors() {
        let r = score(&agent("dev"), &PostureSettings::default(), DAY);
        assert_eq!(r.score, 0);
        assert_eq!(r.level, RiskLevel::Low);
        assert!(r.factors.is_empty(), "{:?}", r.factors);
    }

    #[test]
    fn recent_critical_incidents_outweigh_old_ones() {
        let s = PostureSettings::default();
        let half = s.incident_half_life_ms;
        let mut fresh = agent("dev");
        let mut old = agent("dev");
        for _ in 0..2 {
            fresh.profile.incident(
                4 * half,
                Severity::Critical,
                IncidentType::ActivityAfterKill,
            );
            old.profile
                .incident(0, Severity::Critical, IncidentType::ActivityAfterKill);
        }
        let (f, o) = (score(&fresh, &s, 4 * half), score(&old, &s, 4 * half));
        assert_eq!(f.factors[0].factor, "incidents");
        assert_eq!(f.factors[0].points, 30.0);
        assert!(o.score * 10 < f.score, "four half-lives later: {o:?}");
        assert!(f.factors[0].reason.starts_with("2 critical"), "{f:?}");
    }

    #[test]
    fn killed_production_agent_with_denials_and_payments_is_high() {
        let s = PostureSettings::default();
        let mut a = agent("production");
        for i in 0..50 {
            a.events += 1;
            a.profile.observe(
                2,
                "stripe_payment_create",
                i,
                Some(Outcome::Deny),
                None,
                true,
            );
        }
        a.kill.killed = true;
        a.profile
            .kill_event(10, crate::state::KillEventKind::AutoKill);
        let r = score(&a, &s, 100);
        let names: Vec<_> = r.factors.iter().map(|f| f.factor).collect();
        assert_eq!(
            names,
            [
                "kill_history",
                "deny_ratio",
                "environment",
                "off_hours",
                "sensitive_tools"
            ]
        );
        // 20 + 15 × (50/150 ÷ 0.3 → capped 1) + 10 + 10 × (50/150 ÷ 0.2 → 1) + 4
        assert_eq!(r.score, 59);
        assert_eq!(r.level, RiskLevel::High);
    }
}
