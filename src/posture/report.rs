//! Fleet posture: the inventory with risks, a fleet score with its trend, the top risks, and a
//! table for terminals.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::inventory::AgentStatus;
use super::risk;
use super::risk::RiskLevel;
use super::settings::PostureSettings;
use crate::event::format_rfc3339_ms;
use crate::state::AgentFacts;
use crate::text::{shown, shown_within};

/// A past fleet score, kept in the state for the trend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPoint {
    /// Event time the score was computed as of (epoch ms).
    pub as_of: i64,
    /// Fleet score.
    pub score: u8,
    /// Agents then.
    pub agents: u32,
    /// Killed agents then.
    pub killed: u32,
}

/// How the fleet score moved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trend {
    /// `up`, `down`, `flat`, or `new` (no earlier score).
    pub direction: &'static str,
    /// Score now minus the earlier score.
    pub delta: i16,
    /// The earlier score compared with.
    pub previous: Option<u8>,
    /// When the earlier score was computed (RFC 3339 event time).
    pub since: Option<String>,
}

/// The fleet at a glance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fleet {
    /// Mean risk of the riskiest tenth of the agents (at least one), 0–100.
    pub score: u8,
    /// Level of the score.
    pub level: RiskLevel,
    /// Movement since about a day earlier (event time).
    pub trend: Trend,
    /// Agents.
    pub agents: usize,
    /// Agents per status.
    pub by_status: BTreeMap<String, usize>,
    /// Agents per risk level.
    pub by_risk_level: BTreeMap<String, usize>,
    /// Agents per blueprint.
    pub by_blueprint: BTreeMap<String, usize>,
    /// Agents per environment.
    pub by_environment: BTreeMap<String, usize>,
    /// Distinct tool names seen.
    pub tools: usize,
    /// Events folded.
    pub events: u64,
    /// The first-deployment learning period and the kills held back (from the stored
    /// partitions; absent when posture is computed from agent states alone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub safety: Option<KillSafety>,
}

/// What keeps the guard from killing a healthy fleet.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KillSafety {
    /// Whether the learning period is in force as of the posture: nothing is judged new yet,
    /// nothing is killed.
    pub learning: bool,
    /// When the learning period ends or ended (RFC 3339 event time), once an event was seen.
    pub learning_until: Option<String>,
    /// Kill decisions not carried out, by reason.
    pub kills_held: BTreeMap<&'static str, u64>,
    /// Baseline findings reported: routine matches, and matches seen while learning.
    pub baseline_findings: u64,
}

/// One agent in the posture's list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRow {
    /// The agent.
    pub agent_id: String,
    /// Blueprint.
    pub blueprint: String,
    /// Status.
    pub status: AgentStatus,
    /// Risk score.
    pub risk: u8,
    /// Risk level.
    pub level: RiskLevel,
    /// Events.
    pub events: u64,
    /// Incidents ever.
    pub incidents: u64,
    /// Latest event (RFC 3339).
    pub last_seen: String,
    /// Environments reported.
    #[serde(default)]
    pub environments: Vec<String>,
    /// The reasons of the largest factors, largest first (at most three).
    pub reasons: Vec<String>,
}

/// One tool across the fleet.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolRow {
    /// Tool name.
    pub name: String,
    /// Agents that called it.
    pub agents: usize,
    /// Calls.
    pub calls: u64,
    /// First call (RFC 3339).
    pub first_seen: String,
    /// Latest call (RFC 3339).
    pub last_seen: String,
    /// Whether it matches `posture.sensitive_tools`.
    pub sensitive: bool,
}

/// The fleet's posture.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Posture {
    /// Event time it is computed as of (the latest event of the fleet), RFC 3339.
    pub as_of: String,
    /// Same, epoch ms.
    pub as_of_ms: i64,
    /// Fleet summary.
    pub fleet: Fleet,
    /// The riskiest agents (at most ten, risk > 0).
    pub top_risks: Vec<AgentRow>,
    /// Every tool seen, sensitive ones first, then by calls.
    pub tools: Vec<ToolRow>,
    /// Every agent, riskiest first.
    pub agents: Vec<AgentRow>,
}

/// The row of an agent's state as of event time `now`: what its inventory view's row holds
/// ([`super::inventory::view`]), without the rest of the view (tools with their times, baseline, kill
/// history), which a fleet-wide list does not show.
pub fn row(a: &impl AgentFacts, s: &PostureSettings, now: i64) -> AgentRow {
    row_with(a, s, now, &mut |t| s.sensitive.is_match(t))
}

/// [`row`], whether a tool is sensitive answered by `sensitive` (see [`risk::score_with`]).
fn row_with(
    a: &impl AgentFacts,
    s: &PostureSettings,
    now: i64,
    sensitive: &mut dyn FnMut(&str) -> bool,
) -> AgentRow {
    let risk = risk::score_with(a, s, now, sensitive);
    let st = a.facts();
    AgentRow {
        agent_id: st.agent_id.to_string(),
        blueprint: st.blueprint.to_string(),
        status: AgentStatus::of(a),
        risk: risk.score,
        level: risk.level,
        events: st.events,
        incidents: st.profile.incidents.iter().sum(),
        last_seen: format_rfc3339_ms(st.last_seen),
        environments: st.profile.environments.clone(),
        reasons: risk
            .factors
            .iter()
            .take(3)
            .map(|f| format!("{}: {}", f.factor, f.reason))
            .collect(),
    }
}

/// Event time of the fleet's latest event.
pub fn as_of<A: AgentFacts>(states: &[A]) -> i64 {
    states
        .iter()
        .map(|s| s.facts().last_seen)
        .max()
        .unwrap_or(0)
}

/// The fleet's point of history from its agents' rows as of `now` (the [`Posture::point`] of
/// their posture): for a fleet whose states are read a part at a time.
pub fn point_of(rows: &[AgentRow], now: i64) -> HistoryPoint {
    let mut tally = Tally::default();
    for r in rows {
        tally.add(r);
    }
    let killed = tally.by_status.get("killed").copied().unwrap_or(0);
    HistoryPoint {
        as_of: now,
        score: tally.score(),
        agents: rows.len() as u32,
        killed: killed as u32,
    }
}

/// The rows of every agent (merged by id), riskiest first, computed on `threads` threads.
pub fn rows<A: AgentFacts + Sync>(
    states: &[A],
    s: &PostureSettings,
    now: i64,
    threads: usize,
) -> Vec<AgentRow> {
    let mut v: Vec<AgentRow> = crate::chunks::map_chunks(states, threads, 1_000, |chunk| {
        // A fleet has few tool names and many agents: each name is matched against the
        // sensitive patterns once.
        let mut known: std::collections::HashMap<String, bool> = std::collections::HashMap::new();
        let mut sensitive = |t: &str| {
            if let Some(b) = known.get(t) {
                return *b;
            }
            let b = s.sensitive.is_match(t);
            known.insert(t.to_string(), b);
            b
        };
        chunk
            .iter()
            .map(|a| row_with(a, s, now, &mut sensitive))
            .collect::<Vec<_>>()
    })
    .concat();
    v.sort_by(|a, b| {
        b.risk
            .cmp(&a.risk)
            .then_with(|| a.agent_id.cmp(&b.agent_id))
    });
    v
}

/// Mean of the riskiest tenth of the scores (at least one score).
pub fn fleet_score(sorted_desc: &[u8]) -> u8 {
    if sorted_desc.is_empty() {
        return 0;
    }
    let n = sorted_desc.len().div_ceil(10);
    let sum: u32 = sorted_desc[..n].iter().map(|&s| u32::from(s)).sum();
    (f64::from(sum) / n as f64).round() as u8
}

/// The trend of `score` at `now` against the latest history point a day or more earlier (or the
/// earliest point, if none is that old).
pub fn trend(score: u8, now: i64, history: &[HistoryPoint]) -> Trend {
    let day = 86_400_000;
    let earlier = history
        .iter()
        .filter(|p| p.as_of <= now - day)
        .max_by_key(|p| p.as_of)
        .or_else(|| {
            history
                .iter()
                .filter(|p| p.as_of < now)
                .min_by_key(|p| p.as_of)
        });
    match earlier {
        None => Trend {
            direction: "new",
            delta: 0,
            previous: None,
            since: None,
        },
        Some(p) => {
            let delta = i16::from(score) - i16::from(p.score);
            Trend {
                direction: match delta {
                    d if d > 0 => "up",
                    d if d < 0 => "down",
                    _ => "flat",
                },
                delta,
                previous: Some(p.score),
                since: Some(format_rfc3339_ms(p.as_of)),
            }
        }
    }
}

/// Computes the posture of merged agent states.
pub fn posture<A: AgentFacts + Sync>(
    states: &[A],
    s: &PostureSettings,
    history: &[HistoryPoint],
) -> Posture {
    posture_with(states, s, history, 1)
}

/// [`posture`], the agents' rows computed on `threads` threads.
pub fn posture_with<A: AgentFacts + Sync>(
    states: &[A],
    s: &PostureSettings,
    history: &[HistoryPoint],
    threads: usize,
) -> Posture {
    let now = as_of(states);
    let (tool_count, tool_rows) = tool_rows(states, s);
    let agents = rows(states, s, now, threads);
    let mut tally = Tally::default();
    for r in &agents {
        tally.add(r);
    }
    let score = tally.score();
    Posture {
        as_of: format_rfc3339_ms(now),
        as_of_ms: now,
        fleet: Fleet {
            score,
            level: RiskLevel::of(score),
            trend: trend(score, now, history),
            agents: agents.len(),
            by_status: tally.by_status,
            by_risk_level: tally.by_risk_level,
            by_blueprint: tally.by_blueprint,
            by_environment: tally.by_environment,
            tools: tool_count,
            events: states.iter().map(|a| a.facts().events).sum(),
            safety: None,
        },
        top_risks: agents
            .iter()
            .filter(|a| a.risk > 0)
            .take(10)
            .cloned()
            .collect(),
        tools: tool_rows,
        agents,
    }
}

/// Agents counted by status, risk level, blueprint and environment (every status and level
/// listed, at 0 when none), with their events and risk scores: what a fleet's figures are
/// summed from, per partition and across instances.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    /// Agents.
    pub agents: usize,
    /// Agents by status.
    pub by_status: BTreeMap<String, usize>,
    /// Agents by risk level.
    pub by_risk_level: BTreeMap<String, usize>,
    /// Agents by blueprint.
    pub by_blueprint: BTreeMap<String, usize>,
    /// Agents by environment, `(none)` for those that report none.
    pub by_environment: BTreeMap<String, usize>,
    /// Events folded.
    pub events: u64,
    /// Agents by risk score.
    pub risks: BTreeMap<u8, usize>,
}

impl Default for Tally {
    fn default() -> Self {
        let statuses = [
            AgentStatus::Active,
            AgentStatus::Killed,
            AgentStatus::Revived,
        ];
        let levels = [
            RiskLevel::Low,
            RiskLevel::Medium,
            RiskLevel::High,
            RiskLevel::Critical,
        ];
        Tally {
            agents: 0,
            by_status: statuses.iter().map(|s| (s.as_str().into(), 0)).collect(),
            by_risk_level: levels.iter().map(|l| (l.as_str().into(), 0)).collect(),
            by_blueprint: BTreeMap::new(),
            by_environment: BTreeMap::new(),
            events: 0,
            risks: BTreeMap::new(),
        }
    }
}

impl Tally {
    /// Counts one agent's row.
    pub fn add(&mut self, r: &AgentRow) {
        self.agents += 1;
        *self.by_status.entry(r.status.as_str().into()).or_insert(0) += 1;
        *self
            .by_risk_level
            .entry(r.level.as_str().into())
            .or_insert(0) += 1;
        *self.by_blueprint.entry(r.blueprint.clone()).or_insert(0) += 1;
        if r.environments.is_empty() {
            *self.by_environment.entry("(none)".into()).or_insert(0) += 1;
        }
        for e in &r.environments {
            *self.by_environment.entry(e.clone()).or_insert(0) += 1;
        }
        self.events += r.events;
        *self.risks.entry(r.risk).or_insert(0) += 1;
    }

    /// Adds another tally's counts.
    pub fn merge(&mut self, o: &Tally) {
        self.agents += o.agents;
        for (mine, theirs) in [
            (&mut self.by_status, &o.by_status),
            (&mut self.by_risk_level, &o.by_risk_level),
            (&mut self.by_blueprint, &o.by_blueprint),
            (&mut self.by_environment, &o.by_environment),
        ] {
            for (k, v) in theirs {
                *mine.entry(k.clone()).or_insert(0) += v;
            }
        }
        self.events += o.events;
        for (k, v) in &o.risks {
            *self.risks.entry(*k).or_insert(0) += v;
        }
    }

    /// The fleet score of the counted agents: [`fleet_score`] of their risk scores.
    pub fn score(&self) -> u8 {
        let total: usize = self.risks.values().sum();
        if total == 0 {
            return 0;
        }
        let n = total.div_ceil(10);
        let (mut left, mut sum) = (n, 0u64);
        for (score, count) in self.risks.iter().rev() {
            let take = left.min(*count);
            sum += u64::from(*score) * take as u64;
            left -= take;
            if left == 0 {
                break;
            }
        }
        (sum as f64 / n as f64).round() as u8
    }
}

/// The fleet's tools (how many, and a row each: sensitive ones first, then by calls).
fn tool_rows<A: AgentFacts>(states: &[A], s: &PostureSettings) -> (usize, Vec<ToolRow>) {
    let mut tools: BTreeMap<&str, (usize, u64, i64, i64, bool)> = BTreeMap::new();
    for a in states.iter().map(AgentFacts::facts) {
        for t in &a.profile.tools {
            let e = tools
                .entry(t.name.as_str())
                .or_insert_with(|| (0, 0, i64::MAX, i64::MIN, s.sensitive.is_match(&t.name)));
            e.0 += 1;
            e.1 += t.calls;
            e.2 = e.2.min(t.first_seen);
            e.3 = e.3.max(t.last_seen);
        }
    }
    let mut rows: Vec<ToolRow> = tools
        .iter()
        .map(|(name, (agents, calls, first, last, sensitive))| ToolRow {
            name: name.to_string(),
            agents: *agents,
            calls: *calls,
            first_seen: format_rfc3339_ms(*first),
            last_seen: format_rfc3339_ms(*last),
            sensitive: *sensitive,
        })
        .collect();
    rows.sort_by(|a, b| b.sensitive.cmp(&a.sensitive).then(b.calls.cmp(&a.calls)));
    (tools.len(), rows)
}

impl Posture {
    /// The history point of this posture.
    pub fn point(&self) -> HistoryPoint {
        HistoryPoint {
            as_of: self.as_of_ms,
            score: self.fleet.score,
            agents: self.fleet.agents as u32,
            killed: self.fleet.by_status.get("killed").copied().unwrap_or(0) as u32,
        }
    }

    /// A readable report for terminals: the fleet, then the agents as a table (at most `limit`
    /// rows, riskiest first).
    pub fn render_table(&self, limit: usize) -> String {
        let f = &self.fleet;
        let mut s = String::new();
        let trend = match (&f.trend.previous, &f.trend.since) {
            (Some(p), Some(since)) => format!(
                "{} {:+} (from {p} at {since})",
                f.trend.direction, f.trend.delta
            ),
            _ => "new (no earlier score)".to_string(),
        };
        let _ = writeln!(s, "Fleet posture as of {}", self.as_of);
        let _ = writeln!(
            s,
            "  fleet risk   {}/100 ({}), trend {trend}",
            f.score,
            f.level.as_str()
        );
        let _ = writeln!(
            s,
            "  agents       {} ({} active, {} killed, {} revived); {} tools; {} events",
            f.agents,
            f.by_status.get("active").unwrap_or(&0),
            f.by_status.get("killed").unwrap_or(&0),
            f.by_status.get("revived").unwrap_or(&0),
            f.tools,
            f.events
        );
        let levels: Vec<String> = ["critical", "high", "medium", "low"]
            .iter()
            .map(|l| format!("{} {l}", f.by_risk_level.get(*l).unwrap_or(&0)))
            .collect();
        let _ = writeln!(s, "  risk levels  {}", levels.join(", "));
        let bps: Vec<String> = f
            .by_blueprint
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(s, "  blueprints   {}", bps.join(", "));
        if let Some(k) = &f.safety {
            let held: Vec<String> = k
                .kills_held
                .iter()
                .filter(|(_, v)| **v > 0)
                .map(|(r, v)| format!("{v} {r}"))
                .collect();
            let _ = writeln!(
                s,
                "  kill safety  learning period {} {}; kills held back: {}; {} baseline findings",
                if k.learning { "until" } else { "over since" },
                k.learning_until.as_deref().unwrap_or("(no event yet)"),
                if held.is_empty() {
                    "none".to_string()
                } else {
                    held.join(", ")
                },
                k.baseline_findings
            );
        }
        let _ = writeln!(s);
        self.render_agents(&mut s, limit);
        s
    }

    /// The table of the riskiest `limit` agents, onto `s`.
    fn render_agents(&self, s: &mut String, limit: usize) {
        let w = self
            .agents
            .iter()
            .take(limit)
            .map(|a| a.agent_id.chars().count())
            .max()
            .unwrap_or(5)
            .clamp(5, 40);
        let _ = writeln!(
            s,
            "{:<w$}  {:>4}  {:<8}  {:<7}  {:<12}  {:>9}  {:>9}  TOP REASON",
            "AGENT", "RISK", "LEVEL", "STATUS", "BLUEPRINT", "EVENTS", "INCIDENTS"
        );
        for a in self.agents.iter().take(limit) {
            let id = shown_within(&a.agent_id, w);
            let _ = writeln!(
                s,
                "{id:<w$}  {:>4}  {:<8}  {:<7}  {:<12}  {:>9}  {:>9}  {}",
                a.risk,
                a.level.as_str(),
                a.status.as_str(),
                shown_within(&a.blueprint, 12),
                a.events,
                a.incidents,
                a.reasons.first().map_or(Cow::Borrowed("-"), |r| shown(r))
            );
        }
        if self.agents.len() > limit {
            let _ = writeln!(
                s,
                "… {} more (use --limit or --json)",
                self.agents.len() - limit
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_score_is_the_mean_of_the_riskiest_tenth() {
        assert_eq!(fleet_score(&[]), 0);
        assert_eq!(fleet_score(&[80]), 80);
        let mut v = vec![90, 70];
        v.extend(std::iter::repeat_n(0, 18));
        assert_eq!(fleet_score(&v), 80);
    }

    #[test]
    fn a_tally_scores_as_the_fleet_score_of_its_agents() {
        for n in [1usize, 3, 10, 11, 57, 200] {
            let scores: Vec<u8> = (0..n).map(|i| ((i * 37 + 11) % 101) as u8).collect();
            let mut t = Tally::default();
            for s in &scores {
                *t.risks.entry(*s).or_insert(0) += 1;
            }
            let mut sorted = scores.clone();
            sorted.sort_unstable_by(|a, b| b.cmp(a));
            assert_eq!(t.score(), fleet_score(&sorted), "{n} agents");
        }
        assert_eq!(Tally::default().score(), 0);
    }

    #[test]
    fn trend_compares_with_a_day_earlier() {
        let day = 86_400_000;
        let h = [
            HistoryPoint {
                as_of: 0,
                score: 10,
                agents: 1,
                killed: 0,
            },
            HistoryPoint {
                as_of: day,
                score: 30,
                agents: 1,
                killed: 0,
            },
            HistoryPoint {
                as_of: 2 * day - 1,
                score: 60,
                agents: 1,
                killed: 0,
            },
        ];
        let t = trend(50, 2 * day, &h);
        assert_eq!((t.direction, t.delta, t.previous), ("up", 20, Some(30)));
        assert_eq!(trend(50, 0, &h).direction, "new");
        assert_eq!(
            trend(5, day / 2, &h).delta,
            -5,
            "no point a day old: the earliest"
        );
    }
}
