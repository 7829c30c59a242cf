//! Session identities: which agent a session belongs to, learnt from the records that name the
//! agent and used for those that do not. AgentShield's runtime names the agent once, in
//! `session_created {sessionId, userId, agentId}` (carried on by `session_delegated`); its tool
//! entries carry only `sessionId` and `userId`. Without this map every tool entry would be
//! attributed to the user, and all the agents of one person would share one baseline.
//!
//! The map belongs to a partition's state (checkpointed with it, so a restart between a
//! session's creation and its tool calls keeps it), is bounded ([`MAX_SESSIONS`]) and forgets
//! sessions unused for [`SESSION_TTL_MS`] of event time.
//!
//! **A binding is never re-pointed.** A session (or an OTLP trace) stays with the agent it was
//! first bound to until it is forgotten: a later record that names another agent for it is
//! refused for attribution and reported as a [`Conflict`] (a binding is not learnt; a tool call
//! is attributed to the session's agent, so a killed agent's calls stay its own). The legitimate
//! way to hand work to another agent is a new session: AgentShield's `session_delegated` binds
//! its own `sessionId` (a child of `parentSessionId`) to the agent it names, or to the parent's
//! agent when it names none; it cannot re-point the parent.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::event::{AgentSource, AuditEvent, EntryKind};

/// Sessions kept per partition at most; beyond it, fresh ones (never used by a call) go first,
/// then the least recently used; those of killed agents last.
pub const MAX_SESSIONS: usize = 100_000;

/// Sessions kept per source (AgentShield's `userId`, else the agent named) at most: a flood
/// written under one user evicts that user's fresh sessions, not the rest of the map.
pub const MAX_SESSIONS_PER_SOURCE: usize = 10_000;

/// New fresh sessions (bound without a call, as `session_created` and OTLP `invoke_agent` spans
/// do) from one source within an hour of event time beyond which the burst is reported (once per
/// source and hour), unless ten times the source's busiest hour seen so far is more.
pub const BURST_PER_SOURCE: u32 = 5_000;

/// New sessions of a partition within an hour of event time beyond which the burst is
/// reported, unless ten times the busiest hour seen so far is more.
pub const BURST_TOTAL: u32 = 20_000;

/// Sources counted within an hour, and sources whose busiest hour is remembered (only those
/// above a hundred new sessions in an hour), at most.
const MAX_BUSY_SOURCES: usize = 100_000;

/// An hour, in ms.
pub(crate) const HOUR_MS: i64 = 3_600_000;

/// A session unused for this long (event time) is forgotten.
pub const SESSION_TTL_MS: i64 = 7 * 86_400_000;

/// A session's use is written to the state at most this often (event time), so a busy session
/// does not rewrite its entry at every checkpoint.
const TOUCH_MS: i64 = 3_600_000;

/// Bindings made between two sweeps of expired sessions.
const SWEEP_EVERY: u32 = 10_000;

/// One session's agent, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionAgent {
    /// The session id.
    pub session: String,
    /// Its agent.
    pub agent: String,
    /// Event time it was last used (ms).
    pub last_used: i64,
}

/// What resolution made of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// A tool call that names its agent.
    Named,
    /// A tool call attributed to its session's agent.
    Resolved,
    /// A tool call whose session's agent is not known: it keeps the fallback id (the user, else
    /// the session).
    Unresolved,
    /// A session binding: learnt, not a tool call.
    Bound,
    /// Another entry that is not a tool call: skipped by detection.
    Skipped,
    /// A binding (or another entry that is not a tool call) naming another agent for a session
    /// or trace bound already: not learnt, reported.
    Refused,
    /// A tool call naming another agent than its bound session's: attributed to the session's
    /// agent, reported.
    Reattributed,
}

impl Resolution {
    /// Every value, in the order of [`Resolution::label`]s for metrics.
    pub const ALL: [Resolution; 7] = [
        Resolution::Named,
        Resolution::Resolved,
        Resolution::Unresolved,
        Resolution::Bound,
        Resolution::Skipped,
        Resolution::Refused,
        Resolution::Reattributed,
    ];

    /// Its position in [`Resolution::ALL`] (the order of the counters).
    pub fn index(self) -> usize {
        self as usize
    }

    /// A stable label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Resolution::Named => "named",
            Resolution::Resolved => "resolved",
            Resolution::Unresolved => "unresolved",
            Resolution::Bound => "bound",
            Resolution::Skipped => "skipped",
            Resolution::Refused => "refused",
            Resolution::Reattributed => "reattributed",
        }
    }

    /// Whether the entry goes on to detection.
    pub fn is_tool_call(self) -> bool {
        matches!(
            self,
            Resolution::Named
                | Resolution::Resolved
                | Resolution::Unresolved
                | Resolution::Reattributed
        )
    }
}

/// A record that named another agent for a session or trace bound already.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The session id (or OTLP trace id).
    pub session: String,
    /// The agent it is bound to (and keeps).
    pub bound: String,
    /// The agent the record named instead.
    pub named: String,
    /// The record's event time (ms).
    pub at: i64,
    /// Whether the record was a tool call (attributed to `bound`) or a binding (not learnt).
    pub call: bool,
}

/// A burst of new identities (sessions, traces or agents): more than the usual within an hour
/// of event time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flood {
    /// What arrived: `"sessions"` (and traces) or `"agents"`.
    pub of: &'static str,
    /// The source that wrote them, or `None` for the partition's total.
    pub source: Option<String>,
    /// New sessions in the hour when the burst was reported.
    pub count: u32,
    /// The threshold crossed.
    pub limit: u32,
    /// Start of the hour (event time, ms).
    pub hour: i64,
    /// Event time of the record that crossed it.
    pub at: i64,
}

/// One session's binding, in memory.
#[derive(Debug, Clone)]
struct Binding {
    agent: String,
    last_used: i64,
    /// A tool call was attributed through it (restored bindings count as used).
    used: bool,
    /// Who wrote it (AgentShield's `userId`, else the agent named); `None` when restored.
    source: Option<String>,
    /// The hour whose burst count it is in, while fresh (`i64::MIN`: none).
    counted_in: i64,
}

/// (session, named agent) pairs reported already, at most: a stream of hijacked calls raises
/// one incident per pair, not one per call (forgotten all at once when full).
const MAX_REPORTED: usize = 10_000;

/// The sessions of one partition and their agents.
#[derive(Debug, Default, Clone)]
pub struct Identities {
    map: HashMap<String, Binding>,
    /// Live sessions per source.
    per_source: HashMap<String, usize>,
    /// Start of the hour the counts below are of, the new sessions in it, per source, and the
    /// most new sessions of an earlier hour.
    hour: i64,
    new_in_hour: u32,
    new_by_source: HashMap<String, u32>,
    busiest_hour: u32,
    busiest_by_source: HashMap<String, u32>,
    /// Bursts found since the last [`Identities::take_floods`].
    floods: Vec<Flood>,
    /// Sessions added or changed since the last [`Identities::take_changes`].
    changed: HashSet<String>,
    /// Sessions forgotten since then.
    removed: Vec<String>,
    latest: i64,
    binds: u32,
    /// Conflicts found since the last [`Identities::take_conflicts`], one per new pair.
    conflicts: Vec<Conflict>,
    /// The (session, named agent) pairs reported.
    reported: HashSet<(String, String)>,
}

impl Identities {
    /// The map as stored.
    pub fn restore(list: Vec<SessionAgent>) -> Identities {
        let mut ids = Identities::default();
        for s in list {
            ids.latest = ids.latest.max(s.last_used);
            ids.map.insert(
                s.session,
                Binding {
                    agent: s.agent,
                    last_used: s.last_used,
                    used: true,
                    source: None,
                    counted_in: i64::MIN,
                },
            );
        }
        ids
    }

    /// Sessions known.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no session is known.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The agent of `session`, if known.
    pub fn agent_of(&self, session: &str) -> Option<&str> {
        self.map.get(session).map(|b| b.agent.as_str())
    }

    /// Learns from `ev` or attributes it: a binding records its session's agent (a delegated
    /// session without an agent takes its parent session's); a tool call without an agent gets
    /// its session's agent when known.
    pub fn resolve(&mut self, ev: &mut AuditEvent<'_>) -> Resolution {
        self.resolve_keeping(ev, &|_| false)
    }

    /// [`Identities::resolve`], where the sessions of agents for which `killed` holds are the
    /// last to be forgotten when the map is full.
    pub fn resolve_keeping(
        &mut self,
        ev: &mut AuditEvent<'_>,
        killed: &dyn Fn(&str) -> bool,
    ) -> Resolution {
        // A span's agent found through its trace in the same request is resolved, not named.
        let resolved_in_record = ev.agent_source == AgentSource::Trace;
        if resolved_in_record {
            ev.agent_source = AgentSource::Named;
        }
        let named = ev.agent_source == AgentSource::Named;
        match ev.kind {
            EntryKind::SessionBinding => {
                let agent = if named {
                    Some(ev.agent_id.to_string())
                } else {
                    ev.parent_session
                        .as_deref()
                        .and_then(|p| self.agent_of(p))
                        .map(str::to_string)
                };
                let (Some(s), Some(a)) = (ev.session.as_deref(), agent) else {
                    return Resolution::Bound;
                };
                if self.conflicts_with(s, &a, ev.ts_ms, false) {
                    return Resolution::Refused;
                }
                self.bind(s, a, ev.ts_ms, source_of(ev), false, killed);
                Resolution::Bound
            }
            EntryKind::NotAToolCall => {
                if let (true, Some(s)) = (named, ev.session.as_deref()) {
                    if self.conflicts_with(s, &ev.agent_id, ev.ts_ms, false) {
                        return Resolution::Refused;
                    }
                    let agent = ev.agent_id.to_string();
                    self.bind(s, agent, ev.ts_ms, source_of(ev), false, killed);
                }
                Resolution::Skipped
            }
            EntryKind::ToolCall if named => self.named_call(ev, resolved_in_record, killed),
            EntryKind::ToolCall => self.unnamed_call(ev),
        }
    }

    /// A tool call that names its agent: binds its session when new; a session bound to another
    /// agent keeps it (the call is reattributed, the conflict reported).
    fn named_call(
        &mut self,
        ev: &mut AuditEvent<'_>,
        resolved_in_record: bool,
        killed: &dyn Fn(&str) -> bool,
    ) -> Resolution {
        if let Some(s) = ev.session.as_deref() {
            match self.agent_of(s) {
                None => {
                    let agent = ev.agent_id.to_string();
                    self.bind(s, agent, ev.ts_ms, source_of(ev), true, killed);
                }
                Some(a) if a == ev.agent_id.as_ref() => self.touch(s, ev.ts_ms),
                Some(a) => {
                    let bound = a.to_string();
                    self.conflicts_with(s, &ev.agent_id, ev.ts_ms, true);
                    self.touch(s, ev.ts_ms);
                    ev.agent_id = Cow::Owned(bound);
                    return Resolution::Reattributed;
                }
            }
        }
        if resolved_in_record {
            Resolution::Resolved
        } else {
            Resolution::Named
        }
    }

    /// A tool call without its agent: its session's agent when known, the session's use
    /// recorded.
    fn unnamed_call(&mut self, ev: &mut AuditEvent<'_>) -> Resolution {
        let Some(s) = ev.session.as_deref() else {
            return Resolution::Unresolved;
        };
        let Some(b) = self.map.get_mut(s) else {
            return Resolution::Unresolved;
        };
        // One allocation per call (the agent id); the session's use is recorded at most
        // every TOUCH_MS.
        let agent = b.agent.clone();
        if !b.used {
            b.used = true;
            let (hour, source) = (b.counted_in, b.source.clone());
            self.uncount(hour, source.as_deref());
        }
        let Some(b) = self.map.get_mut(s) else {
            return Resolution::Unresolved;
        };
        if ev.ts_ms.saturating_sub(b.last_used) >= TOUCH_MS {
            b.last_used = ev.ts_ms;
            self.changed.insert(s.to_string());
        }
        self.latest = self.latest.max(ev.ts_ms);
        ev.agent_id = Cow::Owned(agent);
        ev.agent_source = AgentSource::Named;
        Resolution::Resolved
    }

    /// Whether `session` is bound to another agent than `named`; if so, the conflict is reported
    /// (once per session and named agent).
    fn conflicts_with(&mut self, session: &str, named: &str, ts: i64, call: bool) -> bool {
        let Some(bound) = self.agent_of(session) else {
            return false;
        };
        if bound == named {
            return false;
        }
        let conflict = Conflict {
            session: session.to_string(),
            bound: bound.to_string(),
            named: named.to_string(),
            at: ts,
            call,
        };
        if self.reported.len() >= MAX_REPORTED {
            self.reported.clear();
        }
        if self
            .reported
            .insert((conflict.session.clone(), conflict.named.clone()))
        {
            self.conflicts.push(conflict);
        }
        true
    }

    /// Conflicts found since the previous call, one per new (session, named agent) pair.
    pub fn take_conflicts(&mut self) -> Vec<Conflict> {
        std::mem::take(&mut self.conflicts)
    }

    /// Bursts of new sessions found since the previous call.
    pub fn take_floods(&mut self) -> Vec<Flood> {
        std::mem::take(&mut self.floods)
    }

    /// Binds a new `session` to `agent` (`used`: by a tool call that names both, as an OTLP
    /// tool span does; a binding without a call is fresh, and only fresh ones count toward a
    /// burst: a busy agent's traces are not a flood).
    fn bind(
        &mut self,
        session: &str,
        agent: String,
        ts: i64,
        source: &str,
        used: bool,
        killed: &dyn Fn(&str) -> bool,
    ) {
        self.latest = self.latest.max(ts);
        if let Some(b) = self.map.get_mut(session) {
            // The same agent named again (a binding naming another is refused before this).
            b.agent = agent;
            b.last_used = b.last_used.max(ts);
            self.changed.insert(session.to_string());
            return;
        }
        let counted_in = if used {
            i64::MIN
        } else {
            self.count_new(source, ts)
        };
        self.map.insert(
            session.to_string(),
            Binding {
                agent,
                last_used: ts,
                used,
                source: Some(source.to_string()),
                counted_in,
            },
        );
        self.changed.insert(session.to_string());
        let n = self.per_source.entry(source.to_string()).or_insert(0);
        *n += 1;
        if *n > MAX_SESSIONS_PER_SOURCE {
            self.evict(Some(source), MAX_SESSIONS_PER_SOURCE * 9 / 10, killed);
        }
        self.binds += 1;
        if self.map.len() > MAX_SESSIONS || self.binds >= SWEEP_EVERY {
            self.sweep(killed);
        }
    }

    /// Counts a new fresh session of `source` in the hour of the partition's event time (a
    /// binding dated in the past counts now: timestamps are the writer's), reporting a burst
    /// when a count crosses its threshold; the hour it is counted in.
    fn count_new(&mut self, source: &str, ts: i64) -> i64 {
        let hour = self.latest.div_euclid(HOUR_MS).saturating_mul(HOUR_MS);
        if hour > self.hour {
            self.busiest_hour = self.busiest_hour.max(self.new_in_hour);
            for (src, n) in self.new_by_source.drain() {
                if n <= 100 {
                    continue;
                }
                let room = self.busiest_by_source.len() < MAX_BUSY_SOURCES;
                match self.busiest_by_source.get_mut(&src) {
                    Some(b) => *b = (*b).max(n),
                    None if room => {
                        self.busiest_by_source.insert(src, n);
                    }
                    None => {}
                }
            }
            self.hour = hour;
            self.new_in_hour = 0;
        }
        self.new_in_hour += 1;
        let total_limit = BURST_TOTAL.max(self.busiest_hour.saturating_mul(10));
        if self.new_in_hour == total_limit + 1 {
            self.floods.push(Flood {
                of: "sessions",
                source: None,
                count: self.new_in_hour,
                limit: total_limit,
                hour,
                at: ts,
            });
        }
        if self.new_by_source.len() >= MAX_BUSY_SOURCES && !self.new_by_source.contains_key(source)
        {
            return hour; // a flood of sources: the partition's burst reports it
        }
        let usual = self.busiest_by_source.get(source).copied().unwrap_or(0);
        let limit = BURST_PER_SOURCE.max(usual.saturating_mul(10));
        let n = self.new_by_source.entry(source.to_string()).or_insert(0);
        *n += 1;
        if *n == limit + 1 {
            let count = *n;
            self.floods.push(Flood {
                of: "sessions",
                source: Some(source.to_string()),
                count,
                limit,
                hour,
                at: ts,
            });
        }
        hour
    }

    fn touch(&mut self, session: &str, ts: i64) {
        self.latest = self.latest.max(ts);
        let Some(b) = self.map.get_mut(session) else {
            return;
        };
        if ts.saturating_sub(b.last_used) >= TOUCH_MS {
            b.last_used = ts;
            self.changed.insert(session.to_string());
        }
        if !b.used {
            b.used = true;
            let (hour, source) = (b.counted_in, b.source.clone());
            self.uncount(hour, source.as_deref());
        }
    }

    /// A fresh session counted in `hour` got its first call: it no longer counts toward that
    /// hour's burst (a trace whose agent span came before its tool span, a session used soon
    /// after its creation).
    fn uncount(&mut self, hour: i64, source: Option<&str>) {
        if hour != self.hour {
            return;
        }
        self.new_in_hour = self.new_in_hour.saturating_sub(1);
        if let Some(n) = source.and_then(|s| self.new_by_source.get_mut(s)) {
            *n = n.saturating_sub(1);
        }
    }

    /// Forgets sessions unused for [`SESSION_TTL_MS`], then, if still over [`MAX_SESSIONS`],
    /// down to 90 % of it in the order of [`Identities::evict`].
    fn sweep(&mut self, killed: &dyn Fn(&str) -> bool) {
        self.binds = 0;
        let cutoff = self.latest.saturating_sub(SESSION_TTL_MS);
        let gone: Vec<String> = self
            .map
            .iter()
            .filter(|(_, b)| b.last_used < cutoff)
            .map(|(s, _)| s.clone())
            .collect();
        self.forget(gone);
        if self.map.len() > MAX_SESSIONS {
            self.evict(None, MAX_SESSIONS * 9 / 10, killed);
        }
    }

    /// Forgets sessions (of `source`, or of any) down to `keep`: fresh ones first (never used
    /// by a call), then used ones, the sessions of killed agents last; the least recently used
    /// first within each.
    fn evict(&mut self, source: Option<&str>, keep: usize, killed: &dyn Fn(&str) -> bool) {
        let mut ranked: Vec<(u8, i64, &String)> = self
            .map
            .iter()
            .filter(|(_, b)| source.is_none() || b.source.as_deref() == source)
            .map(|(s, b)| {
                let tier = if killed(&b.agent) {
                    2
                } else {
                    u8::from(b.used)
                };
                (tier, b.last_used, s)
            })
            .collect();
        let excess = ranked.len().saturating_sub(keep);
        if excess == 0 {
            return;
        }
        ranked.select_nth_unstable(excess - 1);
        let gone: Vec<String> = ranked[..excess]
            .iter()
            .map(|(_, _, s)| (*s).clone())
            .collect();
        self.forget(gone);
    }

    fn forget(&mut self, gone: Vec<String>) {
        for s in gone {
            if let Some(b) = self.map.remove(&s) {
                if let Some(src) = b.source {
                    if let Some(n) = self.per_source.get_mut(&src) {
                        *n -= 1;
                        if *n == 0 {
                            self.per_source.remove(&src);
                        }
                    }
                }
            }
            self.changed.remove(&s);
            self.removed.push(s);
        }
    }

    /// Sessions changed and forgotten since the previous call (for the checkpoint).
    pub fn take_changes(&mut self) -> (Vec<SessionAgent>, Vec<String>) {
        let changed = std::mem::take(&mut self.changed)
            .into_iter()
            .filter_map(|s| {
                let b = self.map.get(&s)?;
                Some(SessionAgent {
                    agent: b.agent.clone(),
                    last_used: b.last_used,
                    session: s,
                })
            })
            .collect();
        (changed, std::mem::take(&mut self.removed))
    }

    /// Every session, sorted (for snapshots).
    pub fn all(&self) -> Vec<SessionAgent> {
        let mut v: Vec<SessionAgent> = self
            .map
            .iter()
            .map(|(s, b)| SessionAgent {
                session: s.clone(),
                agent: b.agent.clone(),
                last_used: b.last_used,
            })
            .collect();
        v.sort_by(|a, b| a.session.cmp(&b.session));
        v
    }
}

/// Who wrote a binding: AgentShield's `userId`, else the agent it names.
fn source_of<'e>(ev: &'e AuditEvent<'_>) -> &'e str {
    ev.user.as_deref().unwrap_or(ev.agent_id.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Decoder;

    fn entry(json: &str) -> AuditEvent<'static> {
        let bytes: &'static [u8] = Box::leak(json.as_bytes().to_vec().into_boxed_slice());
        Decoder::default().decode(bytes).expect("decodes")
    }

    const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
    const T0_MS: u64 = 1_772_550_000_000;

    /// An OTLP span of `trace` starting at `ms`: an `invoke_agent` span naming `name` as its
    /// agent, or an `execute_tool` span calling tool `name`.
    fn span(trace: &str, id: &str, ms: u64, op: &str, name: &str) -> serde_json::Value {
        let key = if op == "invoke_agent" {
            "gen_ai.agent.id"
        } else {
            "gen_ai.tool.name"
        };
        serde_json::json!({"traceId": trace, "spanId": id, "name": op,
            "startTimeUnixNano": (ms * 1_000_000).to_string(),
            "attributes": [{"key": "gen_ai.operation.name", "value": {"stringValue": op}},
                           {"key": key, "value": {"stringValue": name}}]})
    }

    /// An OTLP/JSON request of `spans` from service `svc`.
    fn request(spans: Vec<serde_json::Value>) -> String {
        serde_json::json!({"resourceSpans": [{"resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": "svc"}}]},
            "scopeSpans": [{"spans": spans}]}]})
        .to_string()
    }

    /// Decodes `body` and resolves its entries in `ids`: how each was resolved, and its agent.
    fn resolve_request(ids: &mut Identities, body: &str) -> (Vec<Resolution>, Vec<String>) {
        let mut events = Vec::new();
        Decoder::default()
            .decode_into(body.as_bytes(), &mut events)
            .expect("decodes");
        let how = events.iter_mut().map(|e| ids.resolve(e)).collect();
        let agents = events.iter().map(|e| e.agent_id.to_string()).collect();
        (how, agents)
    }

    #[test]
    fn tool_entries_take_the_agent_their_session_was_created_for() {
        let mut ids = Identities::default();
        let mut created = entry(
            r#"{"type":"session_created","timestamp":1000,"sessionId":"s1","userId":"u1","agentId":"agent-a"}"#,
        );
        assert_eq!(ids.resolve(&mut created), Resolution::Bound);
        let mut call = entry(
            r#"{"type":"tool_allowed","timestamp":2000,"eventId":"e1","sessionId":"s1","userId":"u1","toolName":"read"}"#,
        );
        assert_eq!(call.agent_id, "u1", "the fallback before resolution");
        // Both are keyed by the user on Kafka, so they reach one partition.
        assert_eq!(
            (created.partition_key(), call.partition_key()),
            ("u1", "u1")
        );
        assert_eq!(ids.resolve(&mut call), Resolution::Resolved);
        assert_eq!(call.agent_id, "agent-a");
        // Another session of the same user, not created in this partition: unresolved.
        let mut other = entry(
            r#"{"type":"tool_blocked","timestamp":3000,"sessionId":"s2","userId":"u1","toolName":"read"}"#,
        );
        assert_eq!(ids.resolve(&mut other), Resolution::Unresolved);
        assert_eq!(other.agent_id, "u1");
    }

    #[test]
    fn a_delegated_session_names_its_agent_or_continues_its_parents() {
        let mut ids = Identities::default();
        for json in [
            r#"{"type":"session_created","timestamp":1,"sessionId":"p","userId":"u","agentId":"planner"}"#,
            r#"{"type":"session_delegated","timestamp":2,"sessionId":"c1","parentSessionId":"p","userId":"u","agentId":"coder"}"#,
            r#"{"type":"session_delegated","timestamp":3,"sessionId":"c2","parentSessionId":"p","userId":"u"}"#,
        ] {
            assert_eq!(ids.resolve(&mut entry(json)), Resolution::Bound);
        }
        assert_eq!(ids.agent_of("c1"), Some("coder"));
        assert_eq!(ids.agent_of("c2"), Some("planner"));
    }

    #[test]
    fn index_is_the_position_in_all() {
        for (i, r) in Resolution::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }

    /// An OTLP agent span binds its trace: a span of the trace in a later request, left with
    /// the resource's service, takes the agent; one attributed in its own request counts as
    /// resolved.
    #[test]
    fn an_otlp_trace_names_the_agent_of_its_spans_in_later_requests() {
        let first = request(vec![
            span(TRACE, "b1", T0_MS, "execute_tool", "read_ledger"),
            span(TRACE, "a0", T0_MS, "invoke_agent", "fin-7"),
        ]);
        let later = request(vec![span(
            TRACE,
            "b2",
            T0_MS,
            "execute_tool",
            "read_ledger",
        )]);
        let mut ids = Identities::default();
        let (how, _) = resolve_request(&mut ids, &first);
        assert_eq!(how, [Resolution::Resolved, Resolution::Bound]);
        let (how, agents) = resolve_request(&mut ids, &later);
        assert_eq!(
            (how[0], agents[0].as_str()),
            (Resolution::Resolved, "fin-7")
        );
        // A trace never bound keeps its fallback, the resource's service.
        let (how, agents) = resolve_request(&mut Identities::default(), &later);
        assert_eq!(
            (how[0], agents[0].as_str()),
            (Resolution::Unresolved, "svc")
        );
    }

    #[test]
    fn entries_that_are_not_tool_calls_are_skipped() {
        let mut ids = Identities::default();
        for t in ["auth_denied", "runtime_shutdown", "session_closed"] {
            let json = format!(r#"{{"type":"{t}","timestamp":1,"sessionId":"s","userId":"u"}}"#);
            let mut e = entry(&json);
            assert_eq!(ids.resolve(&mut e), Resolution::Skipped, "{t}");
            assert!(!Resolution::Skipped.is_tool_call());
        }
        let mut spm =
            entry(r#"{"agent_id":"a","timestamp":"2026-03-02T09:00:00Z","tool_name":"q"}"#);
        assert_eq!(ids.resolve(&mut spm), Resolution::Named);
    }

    #[test]
    fn the_map_is_bounded_and_forgets_old_sessions_and_restores_from_its_changes() {
        let mut ids = Identities::default();
        let day = 86_400_000;
        let bind = |ids: &mut Identities, s: &str, a: &str, ts: i64| {
            let json = format!(
                r#"{{"type":"session_created","timestamp":{ts},"sessionId":"{s}","agentId":"{a}"}}"#
            );
            ids.resolve(&mut entry(&json));
        };
        bind(&mut ids, "old", "a", day);
        let (changed, removed) = ids.take_changes();
        assert_eq!(changed.len(), 1);
        assert!(removed.is_empty());
        for i in 0..MAX_SESSIONS + 1 {
            bind(&mut ids, &format!("s{i}"), "b", 10 * day + i as i64);
        }
        assert!(ids.len() <= MAX_SESSIONS, "{}", ids.len());
        assert_eq!(ids.agent_of("old"), None, "unused for longer than the TTL");
        assert_eq!(
            ids.agent_of(&format!("s{MAX_SESSIONS}")),
            Some("b"),
            "the newest stays"
        );
        let (changed, removed) = ids.take_changes();
        assert!(removed.contains(&"old".to_string()));
        let restored = Identities::restore(ids.all());
        assert_eq!(restored.all(), ids.all());
        assert!(changed.len() <= MAX_SESSIONS);
    }

    /// A session stays with the agent it was bound to: a second `session_created` naming
    /// another agent is refused, a tool entry naming another agent is attributed to the
    /// session's, each reported once per session and agent named; a delegation binds its own
    /// new session and cannot re-point an existing one.
    #[test]
    fn a_bound_session_is_never_re_pointed() {
        let mut ids = Identities::default();
        let created = |ts: i64, s: &str, a: &str| {
            format!(
                r#"{{"type":"session_created","timestamp":{ts},"sessionId":"{s}","userId":"u","agentId":"{a}"}}"#
            )
        };
        assert_eq!(
            ids.resolve(&mut entry(&created(1, "s1", "victim"))),
            Resolution::Bound
        );
        assert_eq!(
            ids.resolve(&mut entry(&created(2, "s1", "decoy"))),
            Resolution::Refused
        );
        assert_eq!(ids.agent_of("s1"), Some("victim"));
        let mut call = entry(
            r#"{"type":"tool_allowed","timestamp":3,"eventId":"e1","sessionId":"s1","userId":"u","toolName":"pay"}"#,
        );
        assert_eq!(ids.resolve(&mut call), Resolution::Resolved);
        assert_eq!(call.agent_id, "victim");
        for n in 0..2 {
            let mut named = entry(&format!(
                r#"{{"type":"tool_allowed","timestamp":{},"eventId":"n{n}","sessionId":"s1","userId":"u","agentId":"decoy","toolName":"pay"}}"#,
                4 + n
            ));
            assert_eq!(ids.resolve(&mut named), Resolution::Reattributed);
            assert!(Resolution::Reattributed.is_tool_call());
            assert_eq!(
                named.agent_id, "victim",
                "attributed to the session's agent"
            );
        }
        assert_eq!(ids.agent_of("s1"), Some("victim"));
        let conflicts = ids.take_conflicts();
        assert_eq!(
            conflicts
                .iter()
                .map(|c| (c.bound.as_str(), c.named.as_str(), c.call))
                .collect::<Vec<_>>(),
            vec![("victim", "decoy", false)],
            "one report per session and agent named"
        );
        // Delegation: a new child session for another agent is legitimate; re-pointing an
        // existing session through a delegation is not.
        let delegated = |s: &str, a: &str| {
            format!(
                r#"{{"type":"session_delegated","timestamp":9,"sessionId":"{s}","parentSessionId":"s1","userId":"u","agentId":"{a}"}}"#
            )
        };
        assert_eq!(
            ids.resolve(&mut entry(&delegated("c1", "helper"))),
            Resolution::Bound
        );
        assert_eq!(ids.agent_of("c1"), Some("helper"));
        assert_eq!(
            ids.resolve(&mut entry(&delegated("s1", "helper"))),
            Resolution::Refused
        );
        assert_eq!(ids.agent_of("s1"), Some("victim"));
        assert_eq!(ids.take_conflicts().len(), 1);
    }

    /// An `invoke_agent` span naming another agent for a bound trace is refused, and the tool
    /// spans its request attributes to that agent go to the trace's agent.
    #[test]
    fn a_bound_trace_is_never_re_pointed() {
        let mut ids = Identities::default();
        let bound = request(vec![span(TRACE, "a0", T0_MS, "invoke_agent", "fin-7")]);
        resolve_request(&mut ids, &bound);
        let hijack = request(vec![
            span(TRACE, "b1", T0_MS, "execute_tool", "read_ledger"),
            span(TRACE, "a1", T0_MS, "invoke_agent", "decoy"),
        ]);
        let (how, agents) = resolve_request(&mut ids, &hijack);
        assert_eq!(how, [Resolution::Reattributed, Resolution::Refused]);
        assert_eq!(agents[0], "fin-7");
        let c = ids.take_conflicts();
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!(
            (c[0].bound.as_str(), c[0].named.as_str()),
            ("fin-7", "decoy")
        );
    }

    /// A flood of fresh sessions, written under the real user's id and then under a new id
    /// each: the bindings of a killed agent and of an agent whose session is in use stay, the
    /// map and each source stay within their bounds, and each burst is reported once.
    #[test]
    fn bindings_of_killed_and_active_agents_survive_a_flood_of_fresh_sessions() {
        let mut ids = Identities::default();
        let killed = |a: &str| a == "victim";
        let created = |ts: i64, s: &str, u: &str, a: &str| {
            entry(&format!(
                r#"{{"type":"session_created","timestamp":{ts},"sessionId":"{s}","userId":"{u}","agentId":"{a}"}}"#
            ))
        };
        let t0 = 1_772_550_000_000;
        for (s, a) in [
            ("real-killed", "victim"),
            ("real-active", "worker"),
            ("real-idle", "idle"),
        ] {
            ids.resolve_keeping(&mut created(t0, s, "u-real", a), &killed);
        }
        let mut call = entry(&format!(
            r#"{{"type":"tool_allowed","timestamp":{},"eventId":"e","sessionId":"real-active","userId":"u-real","toolName":"t"}}"#,
            t0 + 1
        ));
        assert_eq!(
            ids.resolve_keeping(&mut call, &killed),
            Resolution::Resolved
        );
        for i in 0..MAX_SESSIONS + 1 {
            let user = if i < MAX_SESSIONS / 2 {
                "u-real".to_string()
            } else {
                format!("u{i}")
            };
            let ts = t0 + 2 + i as i64 / 100;
            ids.resolve_keeping(
                &mut created(ts, &format!("flood{i}"), &user, "decoy"),
                &killed,
            );
            assert!(ids.len() <= MAX_SESSIONS);
        }
        assert_eq!(ids.agent_of("real-killed"), Some("victim"));
        assert_eq!(ids.agent_of("real-active"), Some("worker"));
        assert!(ids
            .per_source
            .get("u-real")
            .is_some_and(|&n| n <= MAX_SESSIONS_PER_SOURCE));
        let floods = ids.take_floods();
        let sources: Vec<Option<&str>> = floods.iter().map(|f| f.source.as_deref()).collect();
        assert_eq!(sources, [Some("u-real"), None], "{floods:?}");
        assert_eq!(floods[0].count, BURST_PER_SOURCE + 1);
        // The usual rate is not a flood: a session per agent and hour for a thousand agents.
        let mut calm = Identities::default();
        for h in 0..48i64 {
            for a in 0..1_000 {
                let ts = t0 + h * HOUR_MS + a;
                let user = format!("u{}", a % 200);
                calm.resolve(&mut created(
                    ts,
                    &format!("s{h}-{a}"),
                    &user,
                    &format!("agent{a}"),
                ));
            }
        }
        assert!(calm.take_floods().is_empty());
    }

    /// A busy agent is not a flood: sessions used by a call soon after their creation, and
    /// traces whose agent span comes before or after their tool span, do not count toward a
    /// burst, however many there are in an hour.
    #[test]
    fn sessions_and_traces_used_by_calls_are_not_a_flood() {
        let mut ids = Identities::default();
        let t0 = 1_772_550_000_000;
        for i in 0..20_000i64 {
            let s = format!("s{i}");
            ids.resolve(&mut entry(&format!(
                r#"{{"type":"session_created","timestamp":{},"sessionId":"{s}","userId":"u","agentId":"busy"}}"#,
                t0 + i
            )));
            ids.resolve(&mut entry(&format!(
                r#"{{"type":"tool_allowed","timestamp":{},"eventId":"e{i}","sessionId":"{s}","userId":"u","toolName":"t"}}"#,
                t0 + i
            )));
        }
        for i in 0..6_000u64 {
            let trace = format!("{i:032x}");
            let mut spans = vec![
                span(&trace, "a", T0_MS + i, "invoke_agent", "otel-busy"),
                span(&trace, "b", T0_MS + i, "execute_tool", "t"),
            ];
            if i % 2 == 1 {
                spans.reverse();
            }
            resolve_request(&mut ids, &request(spans));
        }
        assert!(ids.take_floods().is_empty());
    }
}
