//! Inventory and risk facts of one agent, folded from its events, incidents and commands: the
//! tools it called, its environments, outcomes, off-hours share, recent incidents and kill
//! history. Fixed-size: capped lists, counters.

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::prefetch;

use crate::blueprint::Severity;
use crate::event::Outcome;
use crate::response::IncidentType;

/// Most distinct tools remembered per agent; calls of further tools are counted together.
pub const MAX_TOOLS: usize = 64;
/// Most distinct environments remembered per agent.
pub const MAX_ENVIRONMENTS: usize = 8;
/// Most recent incidents remembered per agent (for recency-weighted risk).
pub const MAX_RECENT_INCIDENTS: usize = 32;
/// Most recent kill / revive events remembered per agent.
pub const MAX_KILL_HISTORY: usize = 16;
/// Number of [`Outcome`] variants.
pub const OUTCOMES: usize = 12;

/// One tool an agent called.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSeen {
    /// [`crate::event::tool_hash`] of the name (the lookup key).
    pub hash: u64,
    /// Tool name.
    pub name: String,
    /// Calls.
    pub calls: u64,
    /// Event time of the first call.
    pub first_seen: i64,
    /// Event time of the latest call.
    pub last_seen: i64,
}

/// One incident, as far as risk needs it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct IncidentMark {
    /// Event time.
    pub at: i64,
    /// Severity.
    pub severity: Severity,
    /// Type.
    pub kind: IncidentType,
}

/// What happened in a kill-history entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KillEventKind {
    /// Killed by the guardian's kill policy.
    AutoKill,
    /// The kill policy would have killed (monitor mode or dry run).
    WouldKill,
    /// Killed by an operator's command.
    ManualKill,
    /// Revived by an operator's command.
    Revive,
}

/// One kill-history entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KillEvent {
    /// Event time (the triggering event, or the command's issue time).
    pub at: i64,
    /// What happened.
    pub kind: KillEventKind,
}

/// The facts posture and risk are computed from. The fields every event touches come first
/// (one cache line); lists live on the heap and are only read when they change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Events per outcome, indexed by [`outcome_index`].
    pub outcomes: [u32; OUTCOMES],
    /// Events outside the blueprint's allowed hours or working days.
    pub off_hours_events: u64,
    /// Hash of the latest environment reported (0: none yet), to skip the list on repeats.
    pub last_environment: u64,
    /// [`ToolSeen::hash`] of each of `tools`, in the same order: the lookup scans this compact
    /// list, held in the struct itself up to eight tools (one cache line, fetched with the
    /// agent), and touches one `tools` entry.
    pub tool_keys: SmallVec<[u64; 8]>,
    /// Tools called, in first-call order, at most [`MAX_TOOLS`].
    pub tools: Vec<ToolSeen>,
    /// Calls of tools beyond [`MAX_TOOLS`].
    pub other_tool_calls: u64,
    /// Environments reported, in first-seen order, at most `MAX_ENVIRONMENTS`.
    pub environments: Vec<String>,
    /// Incidents by severity (low, medium, high, critical), ever.
    pub incidents: [u64; 4],
    /// The latest incidents, oldest first, at most `MAX_RECENT_INCIDENTS`.
    pub recent: Vec<IncidentMark>,
    /// Automatic kills ever.
    pub auto_kills: u32,
    /// Operator kills ever.
    pub manual_kills: u32,
    /// Revives ever.
    pub revives: u32,
    /// The latest kill-history entries, oldest first, at most `MAX_KILL_HISTORY`.
    pub kill_history: Vec<KillEvent>,
}

/// Position of an outcome in [`Profile::outcomes`].
pub fn outcome_index(o: Outcome) -> usize {
    o as usize
}

fn push_capped<T>(v: &mut Vec<T>, cap: usize, x: T) {
    if v.len() >= cap {
        v.remove(0);
    }
    v.push(x);
}

impl Profile {
    /// Announces the memory an event reads (see `crate::prefetch`).
    pub fn prefetch(&self) {
        prefetch::lines(&self.tool_keys, 2);
        prefetch::lines(&self.tools, 4);
    }

    /// Folds one event: its tool, outcome, environment and whether it was off-hours.
    pub fn observe(
        &mut self,
        tool_hash: u64,
        tool_name: &str,
        ts: i64,
        outcome: Option<Outcome>,
        environment: Option<&str>,
        off_hours: bool,
    ) {
        match self.tool_keys.iter().position(|&k| k == tool_hash) {
            Some(i) => {
                if let Some(t) = self.tools.get_mut(i) {
                    t.calls += 1;
                    t.first_seen = t.first_seen.min(ts);
                    t.last_seen = t.last_seen.max(ts);
                }
            }
            None if self.tools.len() < MAX_TOOLS => {
                self.tool_keys.push(tool_hash);
                self.tools.push(ToolSeen {
                    hash: tool_hash,
                    name: tool_name.to_string(),
                    calls: 1,
                    first_seen: ts,
                    last_seen: ts,
                });
            }
            None => self.other_tool_calls += 1,
        }
        if let Some(o) = outcome {
            let c = &mut self.outcomes[outcome_index(o)];
            *c = c.saturating_add(1);
        }
        if let Some(env) = environment {
            let h = crate::event::tool_hash(env);
            if h != self.last_environment {
                self.last_environment = h;
                if self.environments.len() < MAX_ENVIRONMENTS
                    && !self.environments.iter().any(|e| e == env)
                {
                    self.environments.push(env.to_string());
                }
            }
        }
        if off_hours {
            self.off_hours_events += 1;
        }
    }

    /// Records an incident raised for the agent.
    pub fn incident(&mut self, at: i64, severity: Severity, kind: IncidentType) {
        self.incidents[severity.index()] += 1;
        push_capped(
            &mut self.recent,
            MAX_RECENT_INCIDENTS,
            IncidentMark { at, severity, kind },
        );
    }

    /// Records a kill, would-kill or revive.
    pub fn kill_event(&mut self, at: i64, kind: KillEventKind) {
        match kind {
            KillEventKind::AutoKill => self.auto_kills += 1,
            KillEventKind::ManualKill => self.manual_kills += 1,
            KillEventKind::Revive => self.revives += 1,
            KillEventKind::WouldKill => {}
        }
        push_capped(
            &mut self.kill_history,
            MAX_KILL_HISTORY,
            KillEvent { at, kind },
        );
    }

    /// When the last operator command (kill or revive) applied to the agent was issued, if any.
    pub fn last_operator_command(&self) -> Option<i64> {
        self.kill_history
            .iter()
            .filter(|e| matches!(e.kind, KillEventKind::ManualKill | KillEventKind::Revive))
            .map(|e| e.at)
            .max()
    }

    /// Events that carried an outcome.
    pub fn events_with_outcome(&self) -> u64 {
        self.outcomes.iter().map(|&n| u64::from(n)).sum()
    }

    /// Events the agent's SDK refused or stopped: DENY, REJECTED, KILL_SWITCH, RATE_LIMITED.
    pub fn denied(&self) -> u64 {
        [
            Outcome::Deny,
            Outcome::Rejected,
            Outcome::KillSwitch,
            Outcome::RateLimited,
        ]
        .iter()
        .map(|o| u64::from(self.outcomes[outcome_index(*o)]))
        .sum()
    }

    /// Adds another partition's profile of the same agent (unkeyed events spread an agent).
    pub fn merge(&mut self, o: &Profile) {
        for t in &o.tools {
            let full = self.tools.len() >= MAX_TOOLS;
            match self.tools.iter_mut().find(|x| x.hash == t.hash) {
                Some(x) => {
                    x.calls += t.calls;
                    x.first_seen = x.first_seen.min(t.first_seen);
                    x.last_seen = x.last_seen.max(t.last_seen);
                }
                None if !full => {
                    self.tool_keys.push(t.hash);
                    self.tools.push(t.clone());
                }
                None => self.other_tool_calls += t.calls,
            }
        }
        self.other_tool_calls += o.other_tool_calls;
        for e in &o.environments {
            if self.environments.len() < MAX_ENVIRONMENTS && !self.environments.contains(e) {
                self.environments.push(e.clone());
            }
        }
        for i in 0..OUTCOMES {
            self.outcomes[i] = self.outcomes[i].saturating_add(o.outcomes[i]);
        }
        self.off_hours_events += o.off_hours_events;
        for i in 0..4 {
            self.incidents[i] += o.incidents[i];
        }
        self.recent.extend_from_slice(&o.recent);
        self.recent.sort_by_key(|m| m.at);
        let cut = self.recent.len().saturating_sub(MAX_RECENT_INCIDENTS);
        self.recent.drain(..cut);
        self.auto_kills += o.auto_kills;
        self.manual_kills += o.manual_kills;
        self.revives += o.revives;
        self.kill_history.extend_from_slice(&o.kill_history);
        self.kill_history.sort_by_key(|k| k.at);
        let cut = self.kill_history.len().saturating_sub(MAX_KILL_HISTORY);
        self.kill_history.drain(..cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_beyond_the_cap_are_counted_together() {
        let mut p = Profile::default();
        for i in 0..(MAX_TOOLS as u64 + 3) {
            p.observe(i + 1, &format!("t{i}"), 10, None, None, false);
        }
        p.observe(1, "t0", 5, Some(Outcome::Deny), Some("prod"), true);
        assert_eq!(p.tools.len(), MAX_TOOLS);
        assert_eq!(p.other_tool_calls, 3);
        assert_eq!(p.tools[0].calls, 2);
        assert_eq!(p.tools[0].first_seen, 5);
        assert_eq!(p.denied(), 1);
        assert_eq!(p.off_hours_events, 1);
        assert_eq!(p.environments, vec!["prod".to_string()]);
    }

    #[test]
    fn recent_incidents_keep_the_latest() {
        let mut p = Profile::default();
        for i in 0..(MAX_RECENT_INCIDENTS as i64 + 5) {
            p.incident(i, Severity::High, IncidentType::FrequencySpike);
        }
        assert_eq!(p.recent.len(), MAX_RECENT_INCIDENTS);
        assert_eq!(p.recent[0].at, 5);
        assert_eq!(p.incidents[Severity::High.index()], 37);
    }

    #[test]
    fn merge_adds_counts_and_keeps_latest_history() {
        let mut a = Profile::default();
        a.observe(7, "x", 10, Some(Outcome::Allow), Some("prod"), false);
        a.kill_event(10, KillEventKind::AutoKill);
        let mut b = Profile::default();
        b.observe(7, "x", 3, Some(Outcome::Deny), Some("dev"), true);
        b.kill_event(5, KillEventKind::Revive);
        a.merge(&b);
        assert_eq!(a.tools[0].calls, 2);
        assert_eq!(a.tools[0].first_seen, 3);
        assert_eq!(a.environments.len(), 2);
        assert_eq!(a.denied(), 1);
        assert_eq!(a.kill_history[0].kind, KillEventKind::Revive);
        assert_eq!((a.auto_kills, a.revives), (1, 1));
    }
}
