//! The engine: (agent state, audit event) → (new state, incidents). Deterministic and pure: no
//! I/O, no clock. Sources feed it decoded events; sinks consume the incidents it writes.

use std::sync::Arc;

use compact_str::CompactString;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::blueprint::{Blueprint, BlueprintSet};
use crate::detect::{outside_allowed, Finding, Input};
use crate::event::AuditEvent;
use crate::response::{incident_id, Action, Basis, Incident, IncidentType};
use crate::state::{prefetch, AgentState, KillEventKind, Snapshot, SNAPSHOT_VERSION};

/// Counters kept by the engine.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineStats {
    /// Events processed.
    pub events: u64,
    /// Events later than the allowed lateness (fed to stateless checks only).
    pub late_events: u64,
    /// Incidents by type, in [`IncidentType::ALL`] order.
    pub incidents: [u64; IncidentType::ALL.len()],
    /// Malformed events of the stream (counted by the source; they never reach the engine).
    pub bad_events: u64,
}

struct Agent {
    bp: usize,
    /// Changed since the last [`Engine::take_dirty`].
    dirty: bool,
    state: AgentState,
}

/// The detection engine for a fleet.
pub struct Engine {
    set: Arc<BlueprintSet>,
    /// Agent id → position in `agents`: small and dense (ids up to 24 bytes are stored inline),
    /// so a lookup stays in cache and only the agent itself is fetched from memory.
    index: FxHashMap<CompactString, u32>,
    agents: Vec<Agent>,
    /// Positions of the agents changed since the last [`Engine::take_dirty`].
    dirty: Vec<u32>,
    findings: Vec<Finding>,
    stats: EngineStats,
}

fn type_index(t: IncidentType) -> usize {
    IncidentType::ALL.iter().position(|x| *x == t).unwrap_or(0)
}

impl Engine {
    /// An engine with no agents.
    pub fn new(set: Arc<BlueprintSet>) -> Engine {
        Engine {
            set,
            index: FxHashMap::default(),
            agents: Vec::new(),
            dirty: Vec::new(),
            findings: Vec::with_capacity(8),
            stats: EngineStats::default(),
        }
    }

    /// The blueprints in force.
    pub fn blueprints(&self) -> &BlueprintSet {
        &self.set
    }

    /// Counters.
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// Number of agents seen.
    pub fn agent_count(&self) -> usize {
        self.agents.len()
    }

    /// One agent's state.
    pub fn agent(&self, agent_id: &str) -> Option<&AgentState> {
        self.index
            .get(agent_id)
            .map(|&i| &self.agents[i as usize].state)
    }

    /// Adds an agent, or replaces the one with the same id.
    fn insert(&mut self, bp: usize, state: AgentState) -> usize {
        let agent = Agent {
            bp,
            dirty: false,
            state,
        };
        if let Some(&j) = self.index.get(agent.state.agent_id.as_str()) {
            self.agents[j as usize] = agent;
            return j as usize;
        }
        let i = self.agents.len();
        self.index
            .insert(CompactString::from(agent.state.agent_id.as_str()), i as u32);
        self.agents.push(agent);
        i
    }

    fn mark_dirty(&mut self, i: usize) {
        if let Some(a) = self.agents.get_mut(i) {
            if !a.dirty {
                a.dirty = true;
                self.dirty.push(i as u32);
            }
        }
    }

    /// The agents changed since the previous call (for incremental persistence).
    pub fn take_dirty(&mut self) -> Vec<&AgentState> {
        let dirty = std::mem::take(&mut self.dirty);
        for &i in &dirty {
            self.agents[i as usize].dirty = false;
        }
        dirty
            .into_iter()
            .map(|i| &self.agents[i as usize].state)
            .collect()
    }

    /// Every agent's state, in first-seen order.
    pub fn agents(&self) -> impl Iterator<Item = &AgentState> {
        self.agents.iter().map(|a| &a.state)
    }

    /// Counts a malformed event of the stream this engine folds.
    pub fn count_bad_event(&mut self) {
        self.stats.bad_events += 1;
    }

    /// Marks an agent killed by an operator at `ts`; `false` if the agent is unknown.
    pub fn kill(&mut self, agent_id: &str, ts: i64) -> bool {
        let Some(&i) = self.index.get(agent_id) else {
            return false;
        };
        let st = &mut self.agents[i as usize].state;
        st.kill.kill(ts);
        st.profile.kill_event(ts, KillEventKind::ManualKill);
        self.mark_dirty(i as usize);
        true
    }

    /// Processes one event, appending the incidents it raises to `out`.
    pub fn process(&mut self, ev: &AuditEvent<'_>, out: &mut Vec<Incident>) {
        let i = self.index.get(ev.agent_id.as_ref()).copied();
        self.process_at(i, ev, out);
    }

    /// Processes events in order, exactly as [`Engine::process`] one by one, while bringing the
    /// state of the agents of the next events into the CPU cache ahead of use. Events go in
    /// chunks: first every agent of the chunk is looked up (independent lookups, so their cache
    /// misses overlap), then each event is processed while the agent of a later event is
    /// announced (its struct) and, once that is in cache, the buffers it points to. With a fleet
    /// larger than the caches this overlaps the memory round trips of several events.
    pub fn process_batch(&mut self, events: &[AuditEvent<'_>], out: &mut Vec<Incident>) {
        /// Events looked up together.
        const CHUNK: usize = 64;
        /// Events between announcing an agent's buffers and processing it.
        const AHEAD: usize = 4;
        let mut at = [None::<u32>; CHUNK];
        for chunk in events.chunks(CHUNK) {
            for (i, ev) in at.iter_mut().zip(chunk) {
                *i = self.index.get(ev.agent_id.as_ref()).copied();
            }
            for i in at.iter().take(chunk.len().min(2 * AHEAD)) {
                self.announce(*i);
            }
            for (j, ev) in chunk.iter().enumerate() {
                if j + AHEAD < chunk.len() {
                    if let Some(a) = at[j + AHEAD].and_then(|i| self.agents.get(i as usize)) {
                        a.state.prefetch_buffers();
                    }
                }
                if j + 2 * AHEAD < chunk.len() {
                    self.announce(at[j + 2 * AHEAD]);
                }
                // The agent may have been created by an earlier event of the batch.
                let i = at[j].or_else(|| self.index.get(ev.agent_id.as_ref()).copied());
                self.process_at(i, ev, out);
            }
        }
    }

    /// Announces the state of the agent at position `i` (see [`crate::state::prefetch`]).
    fn announce(&self, i: Option<u32>) {
        if let Some(a) = i.and_then(|i| self.agents.get(i as usize)) {
            prefetch::value(a);
        }
    }

    /// Processes one event of the agent at position `i` (`None`: a new agent).
    fn process_at(&mut self, i: Option<u32>, ev: &AuditEvent<'_>, out: &mut Vec<Incident>) {
        let i = match i {
            Some(i) => i as usize,
            None => {
                let set = &*self.set;
                let bp = set.assign(&ev.agent_id, ev.environment.as_deref(), ev.group.as_deref());
                let state = AgentState::new(
                    &ev.agent_id,
                    set.get(bp),
                    ev.ts_ms,
                    ev.environment.as_deref(),
                );
                self.insert(bp, state)
            }
        };
        self.mark_dirty(i);
        let set = &*self.set;
        let agent = &mut self.agents[i];
        let bp = set.get(agent.bp);
        let st = &mut agent.state;
        st.events += 1;
        st.first_seen = st.first_seen.min(ev.ts_ms);
        st.last_seen = st.last_seen.max(ev.ts_ms);
        if st.environment.is_none() {
            if let Some(env) = &ev.environment {
                st.environment = Some(env.to_string());
            }
        }
        self.stats.events += 1;

        let input = Input {
            agent_id: &ev.agent_id,
            event_id: &ev.event_id,
            tool_name: &ev.tool_name,
            ts: ev.ts_ms,
            bytes: ev.bytes,
        };
        self.findings.clear();
        let obs = st.detectors.observe(bp, &input, &mut self.findings);
        st.profile.observe(
            obs.tool,
            &ev.tool_name,
            ev.ts_ms,
            ev.outcome,
            ev.environment.as_deref(),
            outside_allowed(bp, obs.local),
        );
        if !obs.in_order {
            st.late_events += 1;
            self.stats.late_events += 1;
        }
        if st.kill.killed {
            if st.after_kill.violate(ev.ts_ms, &bp.dedup) {
                self.findings.push(Finding {
                    kind: IncidentType::ActivityAfterKill,
                    basis: Basis::Static,
                    severity: bp.severities.activity_after_kill,
                    observed: 1.0,
                    expected: 0.0,
                    unit: "events",
                    window_start: st.kill.last_decision.unwrap_or(ev.ts_ms),
                    window_end: ev.ts_ms,
                    description: format!(
                        "Agent {:?} is still active after it was killed (call {:?}); the kill has not taken effect.",
                        &*ev.agent_id, &*ev.tool_name
                    ),
                    pattern: None,
                    disc: 0,
                });
            }
        } else {
            st.after_kill.calm();
        }
        if self.findings.is_empty() {
            return;
        }
        let mut last = IncidentType::FrequencySpike;
        for f in self.findings.drain(..) {
            st.kill.record(&bp.kill, ev.ts_ms, f.severity);
            st.profile.incident(ev.ts_ms, f.severity, f.kind);
            last = f.kind;
            self.stats.incidents[type_index(f.kind)] += 1;
            out.push(make_incident(bp, st, ev, f, Action::Logged));
        }
        if let Some(d) = st
            .kill
            .decide(&bp.kill, &ev.agent_id, ev.ts_ms, bp.dry_run())
        {
            let what = match d.action {
                Action::Killed => "killed",
                Action::WouldKill => "would be killed (monitor mode or dry run)",
                _ => "is on the kill allowlist and was not killed",
            };
            let f = Finding {
                kind: IncidentType::AutoKill,
                basis: Basis::Static,
                severity: bp.severities.auto_kill,
                observed: d.score,
                expected: bp.kill.threshold,
                unit: "score",
                window_start: ev.ts_ms.saturating_sub(bp.kill.half_life_ms),
                window_end: ev.ts_ms,
                description: format!(
                    "Agent {:?} {what}: violation score {:.2} reached the threshold {} (latest: {}).",
                    &*ev.agent_id,
                    d.score,
                    bp.kill.threshold,
                    last.as_str()
                ),
                pattern: None,
                disc: 0,
            };
            self.stats.incidents[type_index(IncidentType::AutoKill)] += 1;
            st.profile.incident(ev.ts_ms, f.severity, f.kind);
            match d.action {
                Action::Killed => st.profile.kill_event(ev.ts_ms, KillEventKind::AutoKill),
                Action::WouldKill => st.profile.kill_event(ev.ts_ms, KillEventKind::WouldKill),
                _ => {}
            }
            out.push(make_incident(bp, st, ev, f, d.action));
        }
    }

    /// Revives a killed agent (a `revive` command) at event time `ts`.
    pub fn revive(&mut self, agent_id: &str, ts: i64) -> bool {
        match self.index.get(agent_id) {
            Some(&i) => {
                let a = &mut self.agents[i as usize];
                a.state.kill.revive(ts);
                a.state.after_kill.calm();
                a.state.profile.kill_event(ts, KillEventKind::Revive);
                self.mark_dirty(i as usize);
                true
            }
            None => false,
        }
    }

    /// The whole state as a value: agents sorted by id, and the counters.
    pub fn snapshot(&self) -> Snapshot {
        let mut agents: Vec<AgentState> = self.agents.iter().map(|a| a.state.clone()).collect();
        agents.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        Snapshot {
            version: SNAPSHOT_VERSION,
            stats: self.stats.clone(),
            agents,
        }
    }

    /// An engine continuing from a snapshot. Agents keep their blueprint if it is still loaded,
    /// otherwise they are assigned again.
    pub fn restore(set: Arc<BlueprintSet>, snap: Snapshot) -> Engine {
        let mut e = Engine::new(set);
        e.stats = snap.stats;
        for state in snap.agents {
            let bp = e.set.index_of(&state.blueprint).unwrap_or_else(|| {
                e.set
                    .assign(&state.agent_id, state.environment.as_deref(), None)
            });
            e.insert(bp, state);
        }
        e
    }
}

fn make_incident(
    bp: &Blueprint,
    st: &AgentState,
    ev: &AuditEvent<'_>,
    f: Finding,
    action: Action,
) -> Incident {
    Incident {
        incident_id: incident_id(
            &st.agent_id,
            f.kind,
            f.basis,
            st.events,
            &ev.event_id,
            ev.ts_ms,
            f.disc,
        ),
        agent_id: st.agent_id.clone(),
        kind: f.kind,
        severity: f.severity,
        at: ev.ts_ms,
        window_start: f.window_start,
        window_end: f.window_end,
        blueprint: bp.key.clone(),
        basis: f.basis,
        observed: f.observed,
        expected: f.expected,
        unit: f.unit.to_string(),
        description: f.description,
        action_taken: action,
        event_id: ev.event_id.to_string(),
        tool_name: ev.tool_name.to_string(),
        pattern: f.pattern,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blueprint::{load_blueprint, Assignment};
    use crate::event::Format;
    use serde_json::json;

    /// A blueprint where three calls of `x` in a row are a sequence (one high violation each match).
    fn set(mode: &str, kill: serde_json::Value) -> Arc<BlueprintSet> {
        let bp = load_blueprint(
            "t",
            &json!({"name": "T", "mode": mode, "auto_kill_threshold": 2,
                    "anomaly": {"suspicious_sequences": [["x", "x"]]}, "kill": kill}),
        )
        .unwrap();
        Arc::new(
            BlueprintSet::from_blueprints(
                vec![bp],
                Assignment {
                    default: "t".into(),
                    ..Assignment::default()
                },
            )
            .unwrap(),
        )
    }

    fn ev<'a>(agent: &'a str, ts: i64, tool: &'a str) -> AuditEvent<'a> {
        AuditEvent {
            format: Format::AgentSpm,
            event_id: "".into(),
            ts_ms: ts,
            agent_id: agent.into(),
            tool_name: tool.into(),
            outcome: None,
            environment: None,
            group: None,
            bytes: None,
        }
    }

    fn run(e: &mut Engine, agent: &str, calls: &[(i64, &str)]) -> Vec<Incident> {
        let mut out = Vec::new();
        for (ts, tool) in calls {
            e.process(&ev(agent, *ts, tool), &mut out);
        }
        out
    }

    fn kinds(v: &[Incident]) -> Vec<(IncidentType, Action)> {
        v.iter().map(|i| (i.kind, i.action_taken)).collect()
    }

    #[test]
    fn killed_agent_stays_watched_and_further_activity_is_critical() {
        let mut e = Engine::new(set("block", json!({})));
        let out = run(
            &mut e,
            "a",
            &[(0, "x"), (1000, "x"), (2000, "x"), (3000, "x")],
        );
        assert_eq!(
            kinds(&out),
            vec![
                (IncidentType::SuspiciousSequence, Action::Logged),
                (IncidentType::SuspiciousSequence, Action::Logged),
                (IncidentType::AutoKill, Action::Killed),
            ]
        );
        let later = run(
            &mut e,
            "a",
            &[(60_000, "y"), (61_000, "y"), (10_000_000, "y")],
        );
        let after: Vec<_> = later
            .iter()
            .filter(|i| i.kind == IncidentType::ActivityAfterKill)
            .collect();
        assert_eq!(after.len(), 2, "one per episode: {later:?}");
        assert!(after
            .iter()
            .all(|i| i.severity == crate::response::Severity::Critical));
        assert!(e.agent("a").unwrap().kill.killed);
    }

    #[test]
    fn revive_ends_activity_after_kill() {
        let mut e = Engine::new(set("block", json!({})));
        run(
            &mut e,
            "a",
            &[(0, "x"), (1000, "x"), (2000, "x"), (3000, "x")],
        );
        assert!(e.revive("a", 4000));
        let out = run(&mut e, "a", &[(5000, "y")]);
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn monitor_mode_would_kill_and_does_not_mark_the_agent_killed() {
        let mut e = Engine::new(set("monitor", json!({})));
        let out = run(
            &mut e,
            "a",
            &[(0, "x"), (1000, "x"), (2000, "x"), (3000, "x"), (4000, "y")],
        );
        assert!(kinds(&out).contains(&(IncidentType::AutoKill, Action::WouldKill)));
        assert!(!out
            .iter()
            .any(|i| i.kind == IncidentType::ActivityAfterKill));
        assert!(!e.agent("a").unwrap().kill.killed);
    }

    #[test]
    fn dry_run_in_block_mode_would_kill() {
        let mut e = Engine::new(set("block", json!({"dry_run": true})));
        let out = run(
            &mut e,
            "a",
            &[(0, "x"), (1000, "x"), (2000, "x"), (3000, "x")],
        );
        assert!(kinds(&out).contains(&(IncidentType::AutoKill, Action::WouldKill)));
    }

    #[test]
    fn allowlisted_agent_is_reported_but_not_killed() {
        let mut e = Engine::new(set("block", json!({"allowlist": ["svc-*"]})));
        let out = run(
            &mut e,
            "svc-1",
            &[(0, "x"), (1000, "x"), (2000, "x"), (3000, "x"), (4000, "y")],
        );
        assert!(kinds(&out).contains(&(IncidentType::AutoKill, Action::KillSuppressedAllowlist)));
        assert!(!out
            .iter()
            .any(|i| i.kind == IncidentType::ActivityAfterKill));
    }

    #[test]
    fn same_input_gives_same_incident_ids() {
        let calls = [(0, "x"), (1000, "x"), (2000, "x"), (3000, "x")];
        let a = run(&mut Engine::new(set("block", json!({}))), "a", &calls);
        let b = run(&mut Engine::new(set("block", json!({}))), "a", &calls);
        assert_eq!(a, b);
        let ids: std::collections::HashSet<_> = a.iter().map(|i| &i.incident_id).collect();
        assert_eq!(ids.len(), a.len());
    }
}
