//! Kill policy: a violation score weighted by severity that decays with event time, a threshold,
//! a cooldown between decisions, an allowlist and dry-run.

use serde::{Deserialize, Serialize};

use super::incident::{Action, Suppression};
use crate::blueprint::{KillRules, Severity};

/// Per-agent kill-policy state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KillState {
    /// Violation score as of `score_ts`.
    pub score: f64,
    /// Event time the score refers to.
    pub score_ts: i64,
    /// Whether the agent is killed (and not revived).
    pub killed: bool,
    /// Event time of the last kill (or would-kill) decision.
    pub last_decision: Option<i64>,
    /// Number of kill decisions so far.
    pub kills: u32,
}

/// A kill decision taken for the current event.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KillDecision {
    /// What is done.
    pub action: Action,
    /// The score that crossed the threshold.
    pub score: f64,
    /// Why the kill is not carried out, if it is not.
    pub suppressed: Option<Suppression>,
}

impl KillState {
    /// The score at `ts`: halved for every full half-life of event time without a new violation.
    ///
    /// Step decay keeps the peer's meaning of the threshold ("N violations") exact for violations
    /// that come within one half-life of each other, while a quiet agent's score still fades.
    pub fn score_at(&self, rules: &KillRules, ts: i64) -> f64 {
        let dt = ts.saturating_sub(self.score_ts);
        if dt <= 0 || self.score == 0.0 {
            return self.score;
        }
        let halvings = (dt / rules.half_life_ms.max(1)).min(1100) as i32;
        self.score * 0.5f64.powi(halvings)
    }

    /// Adds one violation of this severity at event time `ts`.
    pub fn record(&mut self, rules: &KillRules, ts: i64, severity: Severity) {
        let now = ts.max(self.score_ts);
        self.score = self.score_at(rules, now) + rules.weights[severity.index()];
        self.score_ts = now;
    }

    /// Whether a kill would be decided now: score at or over the threshold, outside the cooldown.
    pub fn due(&self, rules: &KillRules, ts: i64) -> bool {
        rules.threshold > 0.0
            && self.score_at(rules, ts.max(self.score_ts)) >= rules.threshold
            && self
                .last_decision
                .is_none_or(|t| ts.saturating_sub(t) >= rules.cooldown_ms)
    }

    /// Decides whether to kill now: score at or over the threshold, outside the cooldown.
    /// `hold`: a reason the kill must not be carried out (monitor mode, learning, budget).
    pub fn decide(
        &mut self,
        rules: &KillRules,
        agent_id: &str,
        ts: i64,
        hold: Option<Suppression>,
    ) -> Option<KillDecision> {
        if !self.due(rules, ts) {
            return None;
        }
        let score = self.score_at(rules, ts.max(self.score_ts));
        self.last_decision = Some(ts);
        let (action, suppressed) = if rules.allowlist_set.is_match(agent_id) {
            (
                Action::KillSuppressedAllowlist,
                Some(Suppression::Allowlist),
            )
        } else if let Some(h) = hold {
            (Action::WouldKill, Some(h))
        } else {
            self.killed = true;
            self.kills += 1;
            (Action::Killed, None)
        };
        Some(KillDecision {
            action,
            score,
            suppressed,
        })
    }

    /// Marks the agent killed by an operator's command at `ts`.
    pub fn kill(&mut self, ts: i64) {
        if !self.killed {
            self.killed = true;
            self.kills += 1;
        }
        self.last_decision = Some(ts);
    }

    /// Clears the kill and the score (a revive command).
    pub fn revive(&mut self, ts: i64) {
        self.killed = false;
        self.score = 0.0;
        self.score_ts = self.score_ts.max(ts);
        self.last_decision = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blueprint::BlueprintSet;

    fn rules(allow: &[&str]) -> KillRules {
        let mut r = BlueprintSet::builtin().get(0).kill.clone();
        r.threshold = 3.0;
        r.half_life_ms = 3_600_000;
        r.cooldown_ms = 600_000;
        let mut b = globset::GlobSetBuilder::new();
        for g in allow {
            b.add(globset::Glob::new(g).unwrap());
        }
        r.allowlist_set = b.build().unwrap();
        r
    }

    #[test]
    fn violations_decay_with_event_time() {
        let r = rules(&[]);
        let mut k = KillState::default();
        k.record(&r, 0, Severity::High);
        k.record(&r, 0, Severity::High);
        assert!(
            (k.score_at(&r, 3_600_000) - 1.0).abs() < 1e-9,
            "one half-life halves the score"
        );
        // Two violations, then a third two half-lives later: 2/4 + 1 = 1.5 < 3, no kill.
        k.record(&r, 7_200_000, Severity::High);
        assert!((k.score - 1.5).abs() < 1e-9);
        assert_eq!(k.decide(&r, "a", 7_200_000, None), None);
    }

    #[test]
    fn threshold_kills_once_within_cooldown() {
        let r = rules(&[]);
        let mut k = KillState::default();
        for _ in 0..3 {
            k.record(&r, 1000, Severity::High);
        }
        assert_eq!(
            k.decide(&r, "a", 1000, None).map(|d| d.action),
            Some(Action::Killed)
        );
        assert!(k.killed);
        k.record(&r, 2000, Severity::Critical);
        assert_eq!(k.decide(&r, "a", 2000, None), None, "cooldown");
        assert!(
            k.decide(&r, "a", 1000 + 600_000, None).is_some(),
            "after the cooldown a re-kill is decided"
        );
    }

    #[test]
    fn allowlisted_agent_is_never_killed() {
        let r = rules(&["svc-*"]);
        let mut k = KillState::default();
        for _ in 0..5 {
            k.record(&r, 0, Severity::Critical);
        }
        assert_eq!(
            k.decide(&r, "svc-backup", 0, None).map(|d| d.action),
            Some(Action::KillSuppressedAllowlist)
        );
        assert!(!k.killed);
    }

    #[test]
    fn dry_run_would_kill_without_killing() {
        let r = rules(&[]);
        let mut k = KillState::default();
        for _ in 0..3 {
            k.record(&r, 0, Severity::High);
        }
        assert_eq!(
            k.decide(&r, "a", 0, Some(Suppression::Monitor))
                .map(|d| d.action),
            Some(Action::WouldKill)
        );
        assert!(!k.killed);
    }

    #[test]
    fn zero_threshold_disables_kills() {
        let mut r = rules(&[]);
        r.threshold = 0.0;
        let mut k = KillState::default();
        k.record(&r, 0, Severity::Critical);
        assert_eq!(k.decide(&r, "a", 0, None), None);
    }
}
