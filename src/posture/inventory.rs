//! The fleet inventory: one view per agent (status, tools, environments, outcomes, incidents,
//! kill history, baseline summary, risk), built from the stored agent states.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::risk::{self, Risk};
use super::settings::PostureSettings;
use crate::blueprint::BlueprintSet;
use crate::event::{format_rfc3339_ms, Outcome};
use crate::state::{outcome_index, AgentFacts, AgentRecord, AgentState, KillEvent};

/// Whether an agent may act.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentStatus {
    /// Never killed.
    Active,
    /// Killed (automatically or by an operator) and not revived.
    Killed,
    /// Killed before, revived since.
    Revived,
}

impl AgentStatus {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Active => "active",
            AgentStatus::Killed => "killed",
            AgentStatus::Revived => "revived",
        }
    }

    /// The status of an agent.
    pub fn of(a: &impl AgentFacts) -> AgentStatus {
        let st = a.facts();
        if st.kill.killed {
            AgentStatus::Killed
        } else if st.profile.revives > 0 {
            AgentStatus::Revived
        } else {
            AgentStatus::Active
        }
    }
}

/// A tool as the inventory shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolView {
    /// Name.
    pub name: String,
    /// Calls.
    pub calls: u64,
    /// First call (RFC 3339).
    pub first_seen: String,
    /// Latest call (RFC 3339).
    pub last_seen: String,
    /// Whether it matches `posture.sensitive_tools`.
    pub sensitive: bool,
}

/// Incident counts by severity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SeverityCounts {
    /// Low.
    pub low: u64,
    /// Medium.
    pub medium: u64,
    /// High.
    pub high: u64,
    /// Critical.
    pub critical: u64,
}

impl SeverityCounts {
    fn from(a: [u64; 4]) -> SeverityCounts {
        SeverityCounts {
            low: a[0],
            medium: a[1],
            high: a[2],
            critical: a[3],
        }
    }
}

/// What the learned baseline knows about the agent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BaselineView {
    /// Hours of history (event time from its first event to its latest).
    pub history_hours: i64,
    /// Days with at least one call behind its rhythm.
    pub active_days: u32,
    /// Whether the warm-up is over, so its own learned findings add kill weight.
    pub warm: bool,
    /// Hours of the week in which the agent is usually active: hours of the day used on half its
    /// active days or more, times the days of the week it usually works.
    pub usual_hours_of_week: u32,
    /// Mean calls per hour over those hours.
    pub mean_calls_per_active_hour: f64,
    /// Kill-policy violation score as of the agent's latest event.
    pub violation_score: f64,
}

/// One kill-history entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KillEntry {
    /// When (RFC 3339, event time or command time).
    pub at: String,
    /// `auto_kill`, `would_kill`, `manual_kill` or `revive`.
    pub kind: crate::state::KillEventKind,
}

/// One agent in the inventory.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentView {
    /// The agent.
    pub agent_id: String,
    /// Its blueprint.
    pub blueprint: String,
    /// active, killed or revived.
    pub status: AgentStatus,
    /// First event (RFC 3339).
    pub first_seen: String,
    /// Latest event (RFC 3339).
    pub last_seen: String,
    /// Latest event, epoch ms (for sorting and filters).
    pub last_seen_ms: i64,
    /// Events.
    pub events: u64,
    /// Environments reported.
    pub environments: Vec<String>,
    /// Tools called, most called first.
    pub tools: Vec<ToolView>,
    /// Calls of tools beyond the remembered 64.
    pub other_tool_calls: u64,
    /// Events per SDK outcome (only outcomes seen).
    pub outcomes: BTreeMap<&'static str, u64>,
    /// Share of calls with an outcome that were denied, rejected, rate limited or stopped.
    pub deny_ratio: f64,
    /// Share of calls outside the blueprint's hours and days.
    pub off_hours_share: f64,
    /// Incidents ever, by severity.
    pub incidents: SeverityCounts,
    /// Latest incident (RFC 3339), if any.
    pub last_incident: Option<String>,
    /// Automatic kills ever.
    pub auto_kills: u32,
    /// Operator kills ever.
    pub manual_kills: u32,
    /// Revives ever.
    pub revives: u32,
    /// The latest kills and revives, oldest first.
    pub kill_history: Vec<KillEntry>,
    /// Baseline summary.
    pub baseline: BaselineView,
    /// Risk score with its factors.
    pub risk: Risk,
}

const OUTCOME_LIST: [Outcome; crate::state::OUTCOMES] = [
    Outcome::Allow,
    Outcome::Deny,
    Outcome::RequireApproval,
    Outcome::StepUp,
    Outcome::RequireTicket,
    Outcome::RequireHuman,
    Outcome::Approved,
    Outcome::Rejected,
    Outcome::KillSwitch,
    Outcome::RateLimited,
    Outcome::Timeout,
    Outcome::Other,
];

/// Merges the states of agents that appear in several partitions (unkeyed events), by id:
/// sorted by id, the later states of an id merged into its first, in their order. The states
/// are moved once (sorted through their positions).
pub fn merge_by_agent<T: AgentRecord>(states: Vec<T>) -> Vec<T> {
    if states
        .windows(2)
        .all(|w| w[0].facts().agent_id < w[1].facts().agent_id)
    {
        return states; // one partition, or partitions of their own agents in order
    }
    let mut order: Vec<usize> = (0..states.len()).collect();
    order.sort_by(|&a, &b| states[a].facts().agent_id.cmp(states[b].facts().agent_id));
    let mut slots: Vec<Option<T>> = states.into_iter().map(Some).collect();
    let mut out: Vec<T> = Vec::with_capacity(slots.len());
    for i in order {
        let Some(s) = slots.get_mut(i).and_then(Option::take) else {
            continue;
        };
        match out.last_mut() {
            Some(a) if a.facts().agent_id == s.facts().agent_id => a.absorb(s),
            _ => out.push(s),
        }
    }
    out
}

/// What the learned baseline of an agent (under blueprint `bp`, if it is loaded) knows.
fn baseline(
    st: &AgentState,
    bp: Option<&crate::blueprint::Blueprint>,
    violation_score: f64,
) -> BaselineView {
    let rhythm = &st.detectors.rhythm;
    let usual_hours = (0..24u8).filter(|h| rhythm.hour_share(*h) >= 0.5).count() as u32;
    let usual_days: f64 = (0..7u8)
        .map(|d| {
            let w = rhythm.weekday(d);
            if w.seen == 0 {
                0.0
            } else {
                f64::from(w.active) / f64::from(w.seen)
            }
        })
        .sum();
    let history_hours = (st.last_seen - st.first_seen).max(0) / crate::detect::HOUR_MS;
    let warm = bp.is_some_and(|b| {
        history_hours * crate::detect::HOUR_MS >= b.learned.warmup_ms
            && rhythm.active_days() >= b.learned.min_active_days
    });
    BaselineView {
        history_hours,
        active_days: rhythm.active_days(),
        warm,
        usual_hours_of_week: (f64::from(usual_hours) * usual_days).round() as u32,
        mean_calls_per_active_hour: (rhythm.hour_rate() * 10.0).round() / 10.0,
        violation_score: (violation_score * 100.0).round() / 100.0,
    }
}

/// The inventory view of one agent as of event time `now`.
pub fn view(st: &AgentState, set: &BlueprintSet, s: &PostureSettings, now: i64) -> AgentView {
    let p = &st.profile;
    let mut tools: Vec<ToolView> = p
        .tools
        .iter()
        .map(|t| ToolView {
            name: t.name.clone(),
            calls: t.calls,
            first_seen: format_rfc3339_ms(t.first_seen),
            last_seen: format_rfc3339_ms(t.last_seen),
            sensitive: s.sensitive.is_match(&t.name),
        })
        .collect();
    tools.sort_by(|a, b| b.calls.cmp(&a.calls).then_with(|| a.name.cmp(&b.name)));
    let outcomes = OUTCOME_LIST
        .iter()
        .filter(|o| p.outcomes[outcome_index(**o)] > 0)
        .map(|o| (o.as_str(), u64::from(p.outcomes[outcome_index(*o)])))
        .collect();
    let with_outcome = p.events_with_outcome();
    let bp = set.index_of(&st.blueprint).map(|i| set.get(i));
    let violation_score = bp.map_or(st.kill.score, |b| st.kill.score_at(&b.kill, st.last_seen));
    AgentView {
        agent_id: st.agent_id.clone(),
        blueprint: st.blueprint.clone(),
        status: AgentStatus::of(st),
        first_seen: format_rfc3339_ms(st.first_seen),
        last_seen: format_rfc3339_ms(st.last_seen),
        last_seen_ms: st.last_seen,
        events: st.events,
        environments: p.environments.clone(),
        tools,
        other_tool_calls: p.other_tool_calls,
        outcomes,
        deny_ratio: if with_outcome == 0 {
            0.0
        } else {
            p.denied() as f64 / with_outcome as f64
        },
        off_hours_share: if st.events == 0 {
            0.0
        } else {
            p.off_hours_events as f64 / st.events as f64
        },
        incidents: SeverityCounts::from(p.incidents),
        last_incident: p.recent.last().map(|m| format_rfc3339_ms(m.at)),
        auto_kills: p.auto_kills,
        manual_kills: p.manual_kills,
        revives: p.revives,
        kill_history: p
            .kill_history
            .iter()
            .map(|k: &KillEvent| KillEntry {
                at: format_rfc3339_ms(k.at),
                kind: k.kind,
            })
            .collect(),
        baseline: baseline(st, bp, violation_score),
        risk: risk::score(st, s, now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Outcome;

    fn agent(id: &str, calls: i64, from: i64) -> AgentState {
        let set = BlueprintSet::builtin();
        let mut a = AgentState::new(id, set.get(0), from, Some("dev"));
        for k in 0..calls {
            a.events += 1;
            a.profile.observe(
                1,
                "search_docs",
                from + k,
                Some(Outcome::Allow),
                None,
                false,
            );
            a.last_seen = from + k;
        }
        a
    }

    #[test]
    fn states_of_one_agent_in_several_partitions_merge_into_one_sorted_by_id() {
        let states = vec![
            agent("b", 3, 100),
            agent("a", 2, 50),
            agent("c", 1, 0),
            agent("a", 5, 10),
            agent("b", 1, 500),
        ];
        let merged = merge_by_agent(states);
        let got: Vec<(&str, u64, i64, i64)> = merged
            .iter()
            .map(|s| (s.agent_id.as_str(), s.events, s.first_seen, s.last_seen))
            .collect();
        assert_eq!(got, [("a", 7, 10, 51), ("b", 4, 100, 500), ("c", 1, 0, 0)]);
        assert_eq!(merged[0].profile.tools[0].calls, 7, "profiles merged");
        assert!(merge_by_agent(Vec::<AgentState>::new()).is_empty());
    }
}
