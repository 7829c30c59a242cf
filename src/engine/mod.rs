//! The engine: (agent state, audit event) → (new state, incidents). Deterministic and pure: no
//! I/O, no clock. Sources feed it decoded events; sinks consume the incidents it writes.
//!
//! Layer: uses `state`, `detect`, `response`, `blueprint`, `event`, `prefetch`.
//!
//! Findings go through the agent's cohort (`cohorts.rs`) before they become incidents.

mod cohorts;
mod conflict;

use std::sync::Arc;

use compact_str::CompactString;
use rustc_hash::FxHashMap;

use crate::blueprint::Severity;
use crate::blueprint::{Blueprint, BlueprintSet};
use crate::detect::{outside_allowed, Finding, Input, Judgement, Peers};
use crate::event::AuditEvent;
use crate::prefetch;
use crate::response::{
    incident_id, Action, Basis, Incident, IncidentType, KillBudget, Spent, Status, Suppression,
    Verdict,
};
use crate::state::{suppression_index, EngineStats, FleetState};
use crate::state::{
    AgentState, Arrivals, CohortState, Flood, Identities, Identity, KillEventKind, Received,
    Resolution, Seen, SeenChanges, SeenFigures, SeenSettings, SessionAgent, Snapshot,
    SNAPSHOT_VERSION,
};

struct Agent {
    bp: usize,
    /// Position of its cohort in [`Engine::cohorts`].
    cohort: u32,
    /// Changed since the last [`Engine::take_dirty`].
    dirty: bool,
    /// In [`Engine::pending`].
    pending: bool,
    /// In [`Engine::holding`].
    holding: bool,
    /// Its whole state is in memory; otherwise `state` is its husk ([`AgentState::husk`]) and
    /// the state lives only in the store (see [`Engine::evict`]).
    resident: bool,
    /// The latest batch that processed an event of it (see [`Engine::tick`]).
    used: u64,
    state: AgentState,
}

/// A cohort of agents judged together: its members in this engine and its state.
struct Cohort {
    bp: usize,
    /// Positions of its agents.
    members: Vec<u32>,
    state: CohortState,
}

/// Which agents' states may leave memory (see [`Engine::evict`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evict {
    /// Only those stored already (unchanged since the last checkpoint): the daemon's.
    Stored,
    /// Changed ones too, handed to the caller to store: a replay's.
    Changed,
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
    /// Start of the learning period.
    origin: Option<i64>,
    /// Latest event time folded.
    latest: i64,
    /// Peers per blueprint (by index).
    peers: Vec<Peers>,
    budget: KillBudget,
    /// Agents and killed agents per blueprint (by index).
    agents_by_bp: Vec<usize>,
    killed_by_bp: Vec<usize>,
    /// Agents with calls that may complete a sequence once final (see [`Engine::sweep`]).
    pending: Vec<u32>,
    /// Ten-second tick of event time of the last sweep.
    swept: i64,
    /// Scratch list of the agents a sweep settles.
    due: Vec<(i64, u32)>,
    /// Sessions and their agents, for records that do not name theirs.
    identities: Identities,
    /// New agents per hour of event time, and the bursts found.
    arrivals: Arrivals,
    floods: Vec<Flood>,
    /// Identities of recent events, for dropping re-deliveries.
    seen: Seen,
    /// Cohorts, in the order they were first seen.
    cohorts: Vec<Cohort>,
    /// Cohort key → position in `cohorts`.
    cohort_index: FxHashMap<String, u32>,
    /// Agents with findings waiting for their cohort (see [`cohorts`]).
    holding: Vec<u32>,
    /// Reused: the findings of a conclusion that become incidents.
    raise: Vec<Finding>,
    /// How late the stream delivers calls.
    lag: crate::detect::DeliveryLag,
    /// Batches processed: the clock of [`Agent::used`].
    tick: u64,
    /// Agents whose state lives only in the store.
    idle: usize,
    /// Events of agents whose state was not loaded, not processed (see [`Engine::evict`]).
    unloaded: u64,
}

/// Position of an incident type in [`EngineStats::incidents`].
pub fn type_index(t: IncidentType) -> usize {
    IncidentType::ALL.iter().position(|x| *x == t).unwrap_or(0)
}

impl Engine {
    /// An engine with no agents.
    pub fn new(set: Arc<BlueprintSet>) -> Engine {
        let peers = set.blueprints().iter().map(Peers::new).collect();
        let n = set.blueprints().len();
        Engine {
            set,
            index: FxHashMap::default(),
            agents: Vec::new(),
            dirty: Vec::new(),
            findings: Vec::with_capacity(8),
            stats: EngineStats::default(),
            origin: None,
            latest: i64::MIN,
            peers,
            budget: KillBudget::default(),
            agents_by_bp: vec![0; n],
            killed_by_bp: vec![0; n],
            pending: Vec::new(),
            swept: i64::MIN,
            due: Vec::new(),
            identities: Identities::default(),
            arrivals: Arrivals::default(),
            floods: Vec::new(),
            seen: Seen::default(),
            cohorts: Vec::new(),
            cohort_index: FxHashMap::default(),
            holding: Vec::new(),
            raise: Vec::with_capacity(8),
            lag: crate::detect::DeliveryLag::default(),
            tick: 0,
            idle: 0,
            unloaded: 0,
        }
    }

    /// Sets how long and how many event identities are remembered for dropping re-deliveries
    /// (bounds lowered apply at once).
    pub fn set_duplicates(&mut self, settings: SeenSettings) {
        self.seen.set_settings(settings);
    }

    /// Draws a new secret key for the digests of event identities, so that nobody can craft
    /// records whose digests collide with another's: for a new state, before its first event
    /// (the remembered identities and their stored chunks are digests under the key in force).
    pub fn draw_duplicate_key(&mut self) {
        if self.seen.is_empty() && self.stats.events == 0 {
            self.seen = Seen::random(self.seen.settings());
        }
    }

    /// Event identities remembered for dropping re-deliveries.
    pub fn duplicates_kept(&self) -> usize {
        self.seen.len()
    }

    /// Identities remembered since the previous call, stored chunks now forgotten, and the
    /// memory's figures (for the checkpoint).
    pub fn take_duplicate_changes(&mut self) -> (SeenChanges, SeenFigures) {
        (self.seen.take_changes(), self.seen.figures())
    }

    /// Attributes `ev` to its session's agent when it does not name one, or learns a session's
    /// agent from it (call before [`Engine::process`], in log order; only entries whose
    /// [`Resolution::is_tool_call`] go on to be processed).
    pub fn resolve(&mut self, ev: &mut AuditEvent<'_>) -> Resolution {
        let (index, agents) = (&self.index, &self.agents);
        let killed = |a: &str| {
            index
                .get(a)
                .is_some_and(|&i| agents[i as usize].state.kill.killed)
        };
        self.identities.resolve_keeping(ev, &killed)
    }

    /// Counts a new agent whose call was refused (the partition is at its cap): the flood is
    /// still measured.
    pub fn count_refused_agent(&mut self) {
        if let Some(f) = self.arrivals.arrive(self.latest, self.origin) {
            self.floods.push(f);
        }
    }

    /// The incidents of the records resolved since the previous call, appended to `out`:
    /// `binding_conflict` for those that named another agent for a session or trace bound
    /// already (one per session and agent named), `identity_flood` for bursts of new sessions.
    pub fn take_identity_incidents(&mut self, out: &mut Vec<Incident>) {
        for f in self.floods.drain(..).chain(self.identities.take_floods()) {
            out.push(conflict::flood(&f));
        }
        for c in self.identities.take_conflicts() {
            let bp = self.index.get(c.bound.as_str()).map_or_else(
                || self.set.assign(&c.bound, None, None),
                |&i| self.agents[i as usize].bp,
            );
            out.push(conflict::incident(&c, &self.set.get(bp).name));
        }
    }

    /// Sessions bound or used since the previous call, and sessions forgotten (for the
    /// checkpoint).
    pub fn take_session_changes(&mut self) -> (Vec<SessionAgent>, Vec<String>) {
        self.identities.take_changes()
    }

    /// Sessions whose agent is known.
    pub fn sessions(&self) -> usize {
        self.identities.len()
    }

    /// Start of the first-deployment learning period (the first event's time), if any event was seen.
    pub fn origin(&self) -> Option<i64> {
        self.origin
    }

    /// End of a blueprint's learning period (event time); before any event, never.
    fn learning_ends(&self, bp: &Blueprint) -> i64 {
        self.origin.map_or(i64::MAX, |o| {
            o.saturating_add(bp.learned.learning_period_ms)
        })
    }

    /// End of the learning period (event time): the first event's time plus the longest
    /// learning period of the blueprints; `None` before any event.
    pub fn learning_until(&self) -> Option<i64> {
        let longest = self
            .set
            .blueprints()
            .iter()
            .map(|b| b.learned.learning_period_ms)
            .max()
            .unwrap_or(0);
        self.origin.map(|o| o.saturating_add(longest))
    }

    /// Whether some blueprint is still in its learning period as of the latest event folded
    /// (or no event was folded yet).
    pub fn learning_now(&self) -> bool {
        self.learning_until().is_none_or(|u| self.latest < u)
    }

    /// The kill budget's counters.
    pub fn budget(&self) -> &KillBudget {
        &self.budget
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

    /// One agent's state, if it is in memory (see [`Engine::is_idle`]).
    pub fn agent(&self, agent_id: &str) -> Option<&AgentState> {
        self.resident_position(agent_id)
            .map(|i| &self.agents[i].state)
    }

    /// The position of an agent whose state is in memory.
    fn resident_position(&self, agent_id: &str) -> Option<usize> {
        self.index
            .get(agent_id)
            .map(|&i| i as usize)
            .filter(|&i| self.agents[i].resident)
    }

    /// Whether the agent is known here, its state in memory or not.
    pub fn knows(&self, agent_id: &str) -> bool {
        self.index.contains_key(agent_id)
    }

    /// Whether the agent is known but its state lives only in the store: load it
    /// ([`Engine::reload`]) before its events or a command for it.
    pub fn is_idle(&self, agent_id: &str) -> bool {
        self.index
            .get(agent_id)
            .is_some_and(|&i| !self.agents[i as usize].resident)
    }

    /// Agents whose state is in memory.
    pub fn resident_count(&self) -> usize {
        self.agents.len() - self.idle
    }

    /// Killed agents, in memory or not.
    pub fn killed_count(&self) -> usize {
        self.killed_by_bp.iter().sum()
    }

    /// Events not processed because their agent's state was not loaded (a caller that did
    /// not [`Engine::reload`] first; always 0 in the daemon and in a replay).
    pub fn unloaded_events(&self) -> u64 {
        self.unloaded
    }

    /// The agents named by `events` whose state lives only in the store, each once, in id
    /// order: what to load ([`Engine::reload`]) before processing them.
    pub fn idle_among<'e>(&self, events: &'e [AuditEvent<'_>]) -> Vec<&'e str> {
        if self.idle == 0 {
            return Vec::new();
        }
        let mut ids: Vec<&'e str> = events
            .iter()
            .map(|ev| ev.agent_id.as_ref())
            .filter(|id| self.is_idle(id))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// The agents whose state lives only in the store: id and latest event time.
    pub fn idle_agents(&self) -> impl Iterator<Item = (&str, i64)> {
        self.agents
            .iter()
            .filter(|a| !a.resident)
            .map(|a| (a.state.agent_id.as_str(), a.state.last_seen))
    }

    /// Puts an agent's stored state back in memory in place of its husk; `false` (and nothing
    /// changes) when that agent is not idle here.
    pub fn reload(&mut self, state: AgentState) -> bool {
        let Some(&i) = self.index.get(state.agent_id.as_str()) else {
            return false;
        };
        let a = &mut self.agents[i as usize];
        if a.resident {
            return false;
        }
        a.state = state;
        a.resident = true;
        a.used = self.tick;
        self.idle -= 1;
        true
    }

    /// Keeps at most `keep` agents' states in memory: beyond it, the least recently used of
    /// those that wait for nothing (no sequence pending, no finding held for their cohort)
    /// leave memory, a husk of what their cohort reads of them staying ([`AgentState::husk`]).
    /// `Stored`: only states unchanged since the last [`Engine::take_dirty`] (in the store
    /// already) leave; `Changed`: changed ones too, returned to be written (the caller writes
    /// them before it loads any of them again). Returns how many left, and those states.
    /// Detection is unchanged as long as each is reloaded before its next event.
    pub fn evict(&mut self, keep: usize, which: Evict) -> (usize, Vec<AgentState>) {
        let over = self.resident_count().saturating_sub(keep);
        if over == 0 {
            return (0, Vec::new());
        }
        let changed_too = which == Evict::Changed;
        let mut candidates: Vec<(u64, u32)> = self
            .agents
            .iter()
            .enumerate()
            // The flags alone: reading each agent's state here would fetch the whole fleet.
            .filter(|(_, a)| a.resident && (changed_too || !a.dirty) && !a.pending && !a.holding)
            .map(|(i, a)| (a.used, i as u32))
            .collect();
        let n = over.min(candidates.len());
        if n == 0 {
            return (0, Vec::new());
        }
        if n < candidates.len() {
            candidates.select_nth_unstable(n - 1);
        }
        let mut changed = Vec::new();
        for &(_, i) in &candidates[..n] {
            let a = &mut self.agents[i as usize];
            debug_assert!(a.state.detectors.pending().is_none() && a.state.cohort.held.is_empty());
            let husk = a.state.husk();
            let state = std::mem::replace(&mut a.state, husk);
            a.resident = false;
            if a.dirty {
                a.dirty = false;
                changed.push(state);
            }
        }
        if !changed.is_empty() {
            let agents = &self.agents;
            self.dirty.retain(|&i| agents[i as usize].resident);
        }
        self.idle += n;
        (n, changed)
    }

    /// Adds an agent, or replaces the one with the same id.
    fn insert(&mut self, bp: usize, state: AgentState) -> usize {
        let cohort = self.cohort_of(bp, state.cohort.group.as_deref());
        let holding = !state.cohort.held.is_empty();
        let agent = Agent {
            bp,
            cohort,
            dirty: false,
            pending: false,
            holding: false,
            resident: true,
            used: self.tick,
            state,
        };
        let i = if let Some(&j) = self.index.get(agent.state.agent_id.as_str()) {
            let old = &self.agents[j as usize];
            self.idle -= usize::from(!old.resident);
            self.agents_by_bp[old.bp] -= 1;
            self.killed_by_bp[old.bp] -= usize::from(old.state.kill.killed);
            self.cohorts[old.cohort as usize]
                .members
                .retain(|m| *m != j);
            self.agents_by_bp[agent.bp] += 1;
            self.killed_by_bp[agent.bp] += usize::from(agent.state.kill.killed);
            let was_holding = old.holding;
            self.agents[j as usize] = agent;
            self.agents[j as usize].holding = was_holding;
            j as usize
        } else {
            self.agents_by_bp[agent.bp] += 1;
            self.killed_by_bp[agent.bp] += usize::from(agent.state.kill.killed);
            let i = self.agents.len();
            self.index
                .insert(CompactString::from(agent.state.agent_id.as_str()), i as u32);
            self.agents.push(agent);
            i
        };
        self.cohorts[cohort as usize].members.push(i as u32);
        if holding && !self.agents[i].holding {
            self.agents[i].holding = true;
            self.holding.push(i as u32);
        }
        i
    }

    fn mark_dirty(&mut self, i: usize) {
        if let Some(a) = self.agents.get_mut(i) {
            debug_assert!(a.resident, "a husk is never changed");
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

    /// The states changed since the last [`Engine::take_dirty`], moved out of the engine it
    /// consumes: a whole fleet can be written without being held twice.
    pub fn into_dirty_states(self) -> impl Iterator<Item = AgentState> {
        self.agents.into_iter().filter(|a| a.dirty).map(|a| a.state)
    }

    /// Every agent's state in memory, in first-seen order (see [`Engine::idle_agents`] for the
    /// others).
    pub fn agents(&self) -> impl Iterator<Item = &AgentState> {
        self.agents.iter().filter(|a| a.resident).map(|a| &a.state)
    }

    /// Counts a malformed event of the stream this engine folds.
    pub fn count_bad_event(&mut self) {
        self.stats.bad_events += 1;
    }

    /// Marks an agent killed by an operator at `ts`; `false` if the agent is unknown or not in
    /// memory ([`Engine::is_idle`]).
    pub fn kill(&mut self, agent_id: &str, ts: i64) -> bool {
        let Some(i) = self.resident_position(agent_id) else {
            return false;
        };
        let a = &mut self.agents[i];
        let st = &mut a.state;
        if !st.kill.killed {
            self.killed_by_bp[a.bp] += 1;
        }
        st.kill.kill(ts);
        st.profile.kill_event(ts, KillEventKind::ManualKill);
        self.mark_dirty(i);
        true
    }

    /// The position of the agent of `ev`, its state created from `ev` (blueprint, group,
    /// environment) if it has none yet; `ev` itself is not processed.
    pub fn admit(&mut self, ev: &AuditEvent<'_>) -> usize {
        if let Some(&i) = self.index.get(ev.agent_id.as_ref()) {
            return i as usize;
        }
        let set = &*self.set;
        let bp = set.assign(&ev.agent_id, ev.environment.as_deref(), ev.group.as_deref());
        let mut state = AgentState::new(
            &ev.agent_id,
            set.get(bp),
            ev.ts_ms,
            ev.environment.as_deref(),
        );
        state.cohort.group = ev.group.as_deref().map(str::to_string);
        let i = self.insert(bp, state);
        self.mark_dirty(i);
        if let Some(f) = self.arrivals.arrive(self.latest, self.origin) {
            self.floods.push(f);
        }
        i
    }

    /// Processes one event, appending the incidents it raises to `out`.
    pub fn process(&mut self, ev: &AuditEvent<'_>, out: &mut Vec<Incident>) {
        self.tick += 1;
        let i = self.index.get(ev.agent_id.as_ref()).copied();
        let identity = self.seen.identity(ev);
        self.process_at(i, ev, identity, out);
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
        self.tick += 1;
        let mut at = [None::<u32>; CHUNK];
        let mut identities = [None::<Identity>; CHUNK];
        for chunk in events.chunks(CHUNK) {
            for ((i, id), ev) in at.iter_mut().zip(identities.iter_mut()).zip(chunk) {
                *i = self.index.get(ev.agent_id.as_ref()).copied();
                // Its place in the memory of identities is announced with its agent.
                *id = self.seen.identity(ev);
            }
            for j in 0..chunk.len().min(2 * AHEAD) {
                self.announce(at[j], identities[j].as_ref());
            }
            for (j, ev) in chunk.iter().enumerate() {
                if j + AHEAD < chunk.len() {
                    if let Some(a) = at[j + AHEAD].and_then(|i| self.agents.get(i as usize)) {
                        a.state.prefetch_buffers();
                    }
                }
                if j + 2 * AHEAD < chunk.len() {
                    self.announce(at[j + 2 * AHEAD], identities[j + 2 * AHEAD].as_ref());
                }
                // The agent may have been created by an earlier event of the batch.
                let i = at[j].or_else(|| self.index.get(ev.agent_id.as_ref()).copied());
                self.process_at(i, ev, identities[j], out);
            }
        }
    }

    /// Announces the state of the agent at position `i` and the place of an event's identity
    /// in the memory of identities (see [`crate::prefetch`]).
    fn announce(&self, i: Option<u32>, identity: Option<&Identity>) {
        if let Some(a) = i.and_then(|i| self.agents.get(i as usize)) {
            prefetch::value(a);
        }
        if let Some(id) = identity {
            self.seen.prefetch(id);
        }
    }

    /// Processes one event of the agent at position `i` (`None`: a new agent), with the
    /// digests of its identity (`None`: the memory of identities is off).
    fn process_at(
        &mut self,
        i: Option<u32>,
        ev: &AuditEvent<'_>,
        identity: Option<Identity>,
        out: &mut Vec<Incident>,
    ) {
        if i.is_some_and(|i| !self.agents[i as usize].resident) {
            self.unloaded += 1;
            return;
        }
        if !self.first_delivery(ev.ts_ms, identity) {
            return;
        }
        let i = match i {
            Some(i) => i as usize,
            None => self.admit(ev),
        };
        self.agents[i].used = self.tick;
        self.mark_dirty(i);
        self.origin.get_or_insert(ev.ts_ms);
        self.latest = self.latest.max(ev.ts_ms);
        let set = &*self.set;
        let agent = &mut self.agents[i];
        let bpi = agent.bp;
        let bp = set.get(bpi);
        let learning_until = self.origin.map_or(i64::MAX, |o| {
            o.saturating_add(bp.learned.learning_period_ms)
        });
        let st = &mut agent.state;
        count_call(st, ev);
        self.stats.events += 1;

        let input = Input {
            agent_id: &ev.agent_id,
            event_id: &ev.event_id,
            seq: st.events,
            tool_name: &ev.tool_name,
            ts: ev.ts_ms,
            bytes: ev.bytes,
        };
        self.findings.clear();
        let shift = self.cohorts[agent.cohort as usize].state.rate;
        let obs = st.detectors.observe(
            bp,
            &mut self.peers[bpi],
            &shift,
            learning_until,
            &input,
            &mut self.findings,
        );
        st.profile.observe(
            obs.tool,
            &ev.tool_name,
            ev.ts_ms,
            ev.outcome,
            ev.environment.as_deref(),
            outside_allowed(bp, obs.local),
        );
        if obs.in_order {
            // An agent's first call tells nothing of the stream's delivery.
            if st.events > 1 {
                self.lag.observe(self.latest, self.latest - ev.ts_ms);
            }
        } else {
            st.late_events += 1;
            self.stats.late_events += 1;
        }
        watch_after_kill(bp, st, ev, &obs, &mut self.findings);
        if self.agents[i].state.detectors.pending().is_some() && !self.agents[i].pending {
            self.agents[i].pending = true;
            self.pending.push(i as u32);
        }
        self.conclude(i, ev.ts_ms, &ev.event_id, &ev.tool_name, out);
        self.settle_if_final(i, out);
        self.sweep(out);
    }

    /// Whether an event with this identity is delivered for the first time: a re-delivery
    /// changes nothing but its counter; an identity reused for other content is counted and
    /// the event goes on.
    fn first_delivery(&mut self, ts: i64, identity: Option<Identity>) -> bool {
        let delivery = identity.map_or(Received::First, |id| self.seen.deliver_identity(ts, id));
        match delivery {
            Received::First => true,
            Received::Duplicate => {
                self.stats.duplicates += 1;
                false
            }
            Received::Conflict => {
                self.stats.id_conflicts += 1;
                true
            }
        }
    }

    /// Judges now the calls of the agent at position `i` that the partition's watermark has
    /// already made final (its stream runs behind the partition's), not at the next sweep: a
    /// kill they decide goes out with this event.
    fn settle_if_final(&mut self, i: usize, out: &mut Vec<Incident>) {
        let lateness = self.set.get(self.agents[i].bp).allowed_lateness_ms;
        if self.agents[i]
            .state
            .detectors
            .pending()
            .is_some_and(|p| p <= self.latest.saturating_sub(lateness))
        {
            self.settle(i, self.latest, out);
        }
    }

    /// Turns the findings of the agent at position `i` into incidents and decides on a kill;
    /// `ts`, `event_id` and `tool_name`: the triggering event.
    fn conclude(
        &mut self,
        i: usize,
        ts: i64,
        event_id: &str,
        tool_name: &str,
        out: &mut Vec<Incident>,
    ) {
        if self.findings.is_empty() {
            return;
        }
        let mut findings = std::mem::take(&mut self.findings);
        let mut raise = std::mem::take(&mut self.raise);
        raise.clear();
        for f in findings.drain(..) {
            self.through_cohort(i, f, ts, event_id, tool_name, &mut raise);
        }
        self.findings = findings;
        self.raise(i, ts, event_id, tool_name, &mut raise, out);
        self.raise = raise;
    }

    /// Turns findings of the agent at position `i` into incidents, adds their kill weight and
    /// decides on a kill; `ts`, `event_id` and `tool_name`: the triggering event.
    fn raise(
        &mut self,
        i: usize,
        ts: i64,
        event_id: &str,
        tool_name: &str,
        findings: &mut Vec<Finding>,
        out: &mut Vec<Incident>,
    ) {
        if findings.is_empty() {
            return;
        }
        let set = self.set.clone();
        let bp = set.get(self.agents[i].bp);
        let st = &mut self.agents[i].state;
        let mut last = None;
        for f in findings.drain(..) {
            // A sequence judged once final names the call that completed it, not this event.
            let (at, id, tool) = match f.trigger {
                Some((t, _)) => (t, "", ""),
                None => (ts, event_id, tool_name),
            };
            if f.closing.is_none() && f.judgement == Judgement::New {
                if f.weighs {
                    st.kill.record(&bp.kill, at, f.severity);
                    last = Some(f.kind);
                }
                st.profile.incident(at, f.severity, f.kind);
            }
            let inc = make_incident(bp, st, id, tool, at, f, Action::Logged);
            self.stats.incidents[type_index(inc.kind)] += 1;
            out.push(inc);
        }
        if let Some(last) = last {
            self.decide_kill(i, ts, event_id, tool_name, last, out);
        }
    }

    /// Decides on a kill of the agent at position `i`, whose latest weighing finding was of
    /// type `last`: killed, or held back (monitor mode, learning, the fleet's or the cohort's
    /// kill budget, the allowlist) with one alert when a budget is first spent.
    fn decide_kill(
        &mut self,
        i: usize,
        ts: i64,
        event_id: &str,
        tool_name: &str,
        last: IncidentType,
        out: &mut Vec<Incident>,
    ) {
        let set = self.set.clone();
        let bpi = self.agents[i].bp;
        let ci = self.agents[i].cohort as usize;
        let bp = set.get(bpi);
        let learning = ts < self.learning_ends(bp);
        let st = &mut self.agents[i].state;
        if !st.kill.due(&bp.kill, ts) {
            return;
        }
        // Killing an agent that is down already (it kept acting) widens no blast radius.
        let was_killed = st.kill.killed;
        let (spent, cohort_spent) = if bp.dry_run() || learning || was_killed {
            (None, None)
        } else {
            let fleet = (self.killed_by_bp[bpi], self.agents_by_bp[bpi]);
            match self.budget.check(&bp.kill, ts, fleet.0, fleet.1) {
                Err(s) => (Some(s), None),
                // A run of kills inside one cohort is itself evidence of a fleet event.
                Ok(_) => (None, self.cohorts[ci].state.kills.check(&bp.kill, ts).err()),
            }
        };
        let hold = hold_reason(
            bp.dry_run(),
            learning,
            spent.is_some(),
            cohort_spent.is_some(),
        );
        let Some(d) = st.kill.decide(&bp.kill, &st.agent_id, ts, hold) else {
            return;
        };
        let f = kill_finding(bp, &st.agent_id, &d, last, ts);
        self.stats.incidents[type_index(IncidentType::AutoKill)] += 1;
        st.profile.incident(ts, f.severity, f.kind);
        match d.action {
            Action::Killed => {
                st.profile.kill_event(ts, KillEventKind::AutoKill);
                if !was_killed {
                    self.budget.spend(ts);
                    self.killed_by_bp[bpi] += 1;
                    self.cohorts[ci].state.kills.spend(ts);
                }
            }
            Action::WouldKill => st.profile.kill_event(ts, KillEventKind::WouldKill),
            _ => {}
        }
        if let Some(s) = d.suppressed {
            self.stats.kills_suppressed[suppression_index(s)] += 1;
        }
        let mut inc = make_incident(bp, st, event_id, tool_name, ts, f, d.action);
        inc.suppressed_by = d.suppressed;
        out.push(inc);
        // One alert when a budget first holds a kill back.
        let alert = match (spent, cohort_spent, d.suppressed) {
            (Some(s), _, Some(Suppression::Budget)) if self.budget.hold(ts) => {
                Some((budget_alert(bp, &st.agent_id, s, ts), Suppression::Budget))
            }
            (_, Some(n), Some(Suppression::Cohort)) if self.cohorts[ci].state.kills.hold(ts) => {
                let key = &self.cohorts[ci].state.key;
                Some((
                    cohort_alert(bp, key, &st.agent_id, n, ts),
                    Suppression::Cohort,
                ))
            }
            _ => None,
        };
        if let Some((f, by)) = alert {
            self.stats.incidents[type_index(IncidentType::KillBudget)] += 1;
            let mut inc = make_incident(bp, st, event_id, tool_name, ts, f, Action::WouldKill);
            inc.suppressed_by = Some(by);
            out.push(inc);
        }
    }

    /// Judges the sequences of agents that fell quiet: every ten seconds of event time, the calls
    /// up to the engine's watermark less the allowed lateness are final.
    /// Findings waiting for their cohort are judged once their wait is over, and the cohorts'
    /// shifts are evaluated again or closed, at the same ticks.
    fn sweep(&mut self, out: &mut Vec<Incident>) {
        const SWEEP_MS: i64 = 10_000;
        let tick = self.latest.div_euclid(SWEEP_MS);
        if tick == self.swept {
            return;
        }
        self.swept = tick;
        self.sweep_at(self.latest, out);
    }

    /// The sweep's work as of event time `latest`: sequences final by then, findings whose wait
    /// for their cohort is over, cohorts' shifts.
    fn sweep_at(&mut self, latest: i64, out: &mut Vec<Incident>) {
        if !self.pending.is_empty() {
            self.settle_due(latest, out);
        }
        // Cohorts are judged as of the time the stream has delivered their members' calls up to.
        let as_of = latest.saturating_sub(self.lag_ms());
        if !self.holding.is_empty() {
            self.release(as_of, false, out);
        }
        self.review_shifts(as_of, out);
    }

    /// Lets event time pass for a partition that has been quiet for `quiet_ms` (the daemon's
    /// wall clock says so): what waits for the partition's time — sequences to be final,
    /// findings for their cohort — is judged as if its latest event were that much later. The
    /// partition's state keeps its latest event time; a replay never calls this.
    /// Returns whether anything waited.
    pub fn pass_quiet_time(&mut self, quiet_ms: i64, out: &mut Vec<Incident>) -> bool {
        if (self.pending.is_empty() && self.holding.is_empty()) || self.latest == i64::MIN {
            return false;
        }
        self.sweep_at(self.latest.saturating_add(quiet_ms.max(0)), out);
        true
    }

    /// Settles the sequences of the agents whose oldest pending call is final as of event time
    /// `latest`.
    fn settle_due(&mut self, latest: i64, out: &mut Vec<Incident>) {
        let set = &*self.set;
        let mut due = std::mem::take(&mut self.due);
        due.clear();
        let agents = &mut self.agents;
        self.pending.retain(|&i| {
            let a = &mut agents[i as usize];
            match a.state.detectors.pending() {
                None => {
                    a.pending = false;
                    false
                }
                Some(p) => {
                    if p <= latest.saturating_sub(set.get(a.bp).allowed_lateness_ms) {
                        due.push((p, i));
                    }
                    true
                }
            }
        });
        if due.is_empty() {
            self.due = due;
            return;
        }
        // A canonical order (not the order agents became pending), so a restored engine gives
        // the same output.
        due.sort_by(|a, b| {
            a.0.cmp(&b.0).then_with(|| {
                self.agents[a.1 as usize]
                    .state
                    .agent_id
                    .cmp(&self.agents[b.1 as usize].state.agent_id)
            })
        });
        for &(_, i) in &due {
            self.settle(i as usize, latest, out);
        }
        self.due = due;
        let agents = &mut self.agents;
        self.pending.retain(|&i| {
            let a = &mut agents[i as usize];
            a.pending = a.state.detectors.pending().is_some();
            a.pending
        });
    }

    /// Settles the agent at position `i` as of engine watermark `latest` (`i64::MAX`: the end of
    /// the stream) and concludes its findings.
    fn settle(&mut self, i: usize, latest: i64, out: &mut Vec<Incident>) {
        let set = &*self.set;
        let agent = &mut self.agents[i];
        let bp = set.get(agent.bp);
        let learning_until = self.origin.map_or(i64::MIN, |o| {
            o.saturating_add(bp.learned.learning_period_ms)
        });
        let until = latest.saturating_sub(bp.allowed_lateness_ms);
        self.findings.clear();
        let st = &mut agent.state;
        st.detectors.settle(
            bp,
            &mut self.peers[agent.bp],
            learning_until,
            &st.agent_id,
            until,
            &mut self.findings,
        );
        // Settling changes the agent's state even when it finds nothing.
        self.mark_dirty(i);
        if self.findings.is_empty() {
            return;
        }
        // Each finding is concluded at the time of the call that completed it.
        let found: Vec<Finding> = self.findings.drain(..).collect();
        for f in found {
            let ts = f.trigger.map_or(self.agents[i].state.last_seen, |t| t.0);
            self.findings.push(f);
            self.conclude(i, ts, "", "", out);
        }
    }

    /// Ends the stream: judges every sequence still waiting for calls that could come between its
    /// steps (at the end of a replay nothing more will come).
    pub fn finish(&mut self, out: &mut Vec<Incident>) {
        let mut due: Vec<u32> = std::mem::take(&mut self.pending);
        due.sort_by(|a, b| {
            self.agents[*a as usize]
                .state
                .agent_id
                .cmp(&self.agents[*b as usize].state.agent_id)
        });
        for i in due {
            self.settle(i as usize, i64::MAX, out);
            self.agents[i as usize].pending = false;
        }
        // Nothing more will come: findings waiting for their cohort are judged now.
        self.release(self.latest, true, out);
    }

    /// Revives a killed agent (a `revive` command) at event time `ts`; `false` if the agent is
    /// unknown or not in memory ([`Engine::is_idle`]).
    pub fn revive(&mut self, agent_id: &str, ts: i64) -> bool {
        match self.resident_position(agent_id) {
            Some(i) => {
                let a = &mut self.agents[i];
                if a.state.kill.killed {
                    self.killed_by_bp[a.bp] -= 1;
                }
                a.state.kill.revive(ts);
                a.state.after_kill = crate::detect::Episode::default();
                a.state.profile.kill_event(ts, KillEventKind::Revive);
                self.mark_dirty(i);
                true
            }
            None => false,
        }
    }

    /// The whole state as a value: agents (those in memory) sorted by id, and the counters.
    pub fn snapshot(&self) -> Snapshot {
        let mut agents: Vec<AgentState> = self.agents().cloned().collect();
        agents.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        Snapshot {
            version: SNAPSHOT_VERSION,
            stats: self.stats.clone(),
            agents,
            fleet: self.fleet_state(),
            sessions: self.identities.all(),
            duplicates: self.seen.snapshot(),
        }
    }

    /// The fleet part of the state: learning start, peers, kill budget.
    pub fn fleet_state(&self) -> FleetState {
        FleetState {
            origin: self.origin,
            peers: (0..self.set.blueprints().len())
                .map(|i| (self.set.get(i).key.clone(), self.peers[i].clone()))
                .collect(),
            budget: self.budget.clone(),
            cohorts: self.cohorts.iter().map(|c| c.state.clone()).collect(),
            lag: self.lag.clone(),
        }
    }

    /// An engine continuing from a snapshot. Agents keep their blueprint if it is still loaded,
    /// otherwise they are assigned again.
    pub fn restore(set: Arc<BlueprintSet>, snap: Snapshot) -> Engine {
        let mut e = Engine::new(set);
        e.identities = Identities::restore(snap.sessions);
        e.seen = Seen::restore(SeenSettings::default(), snap.duplicates);
        e.stats = snap.stats;
        e.origin = snap.fleet.origin;
        e.budget = snap.fleet.budget;
        e.lag = snap.fleet.lag;
        for c in snap.fleet.cohorts {
            e.restore_cohort(c);
        }
        for (key, peers) in snap.fleet.peers {
            if let Some(i) = e.set.index_of(&key) {
                e.peers[i] = peers;
            }
        }
        for state in snap.agents {
            let bp = e.set.index_of(&state.blueprint).unwrap_or_else(|| {
                e.set
                    .assign(&state.agent_id, state.environment.as_deref(), None)
            });
            e.insert(bp, state);
        }
        e.latest = e
            .agents
            .iter()
            .map(|a| a.state.last_seen)
            .max()
            .unwrap_or(i64::MIN);
        e.swept = e.latest.div_euclid(10_000);
        for (i, a) in e.agents.iter_mut().enumerate() {
            if a.state.detectors.pending().is_some() {
                a.pending = true;
                e.pending.push(i as u32);
            }
        }
        e
    }
}
/// Activity of a killed agent: closes the episode that `ev` ends, and opens one (a finding)
/// for a call made after the kill (a call made before it and delivered late is not activity
/// after it).
fn watch_after_kill(
    bp: &Blueprint,
    st: &mut AgentState,
    ev: &AuditEvent<'_>,
    obs: &crate::detect::Observation<'_>,
    findings: &mut Vec<Finding>,
) {
    if let Some(c) = st.after_kill.expire(ev.ts_ms, &bp.dedup) {
        findings.push(Finding::closing(
            IncidentType::ActivityAfterKill,
            bp.severities.activity_after_kill,
            c,
            "events",
            0,
        ));
    }
    // A call made before the kill (delivered late) is not activity after it.
    if st.kill.killed && st.kill.last_decision.is_none_or(|k| ev.ts_ms >= k) {
        let opening = || obs.opening(Basis::Static);
        if st.after_kill.violate(ev.ts_ms, 1.0, &bp.dedup, opening) == crate::detect::Step::Opened {
            let mut f = Finding::new(
                IncidentType::ActivityAfterKill,
                Basis::Static,
                bp.severities.activity_after_kill,
            );
            f.weighs = false;
            f.observed = 1.0;
            f.unit = "events";
            f.window_start = st.kill.last_decision.unwrap_or(ev.ts_ms);
            f.window_end = ev.ts_ms;
            f.description = format!(
                "Agent {:?} is still active after it was killed (call {:?}); the kill has not taken effect.",
                &*ev.agent_id, &*ev.tool_name
            );
            findings.push(f);
        }
    }
}

/// The auto-kill finding of a kill decision `d` of `agent` at `ts`, whose latest weighing
/// finding was of type `last`.
fn kill_finding(
    bp: &Blueprint,
    agent: &str,
    d: &crate::response::KillDecision,
    last: IncidentType,
    ts: i64,
) -> Finding {
    let what = match (d.action, d.suppressed) {
        (Action::Killed, _) => "killed",
        (_, Some(Suppression::Allowlist)) => "is on the kill allowlist and was not killed",
        (_, Some(Suppression::Learning)) => "would be killed, but the learning period is not over",
        (_, Some(Suppression::Budget)) => {
            "would be killed, but the kill budget is spent; an operator must confirm"
        }
        (_, Some(Suppression::Cohort)) => {
            "would be killed, but other agents of its cohort were killed this hour (a fleet \
             event is more likely); an operator must confirm"
        }
        _ => "would be killed (monitor mode or dry run)",
    };
    let mut f = Finding::new(
        IncidentType::AutoKill,
        Basis::Static,
        bp.severities.auto_kill,
    );
    f.weighs = false;
    f.observed = d.score;
    f.expected = bp.kill.threshold;
    f.unit = "score";
    f.window_start = ts.saturating_sub(bp.kill.half_life_ms);
    f.window_end = ts;
    f.description = format!(
        "Agent {agent:?} {what}: violation score {:.2} reached the threshold {} (latest: {}).",
        d.score,
        bp.kill.threshold,
        last.as_str()
    );
    f
}

/// The alert of the fleet's kill budget spent (`s`) when it first holds back a kill of `agent`.
fn budget_alert(bp: &Blueprint, agent: &str, s: Spent, ts: i64) -> Finding {
    let why = match s {
        Spent::PerHour(n) => format!(
            "{n} automatic kills this hour (limit {})",
            bp.kill.budget_per_hour
        ),
        Spent::Share { killed, agents } => format!(
            "{killed} of the {agents} agents of blueprint {:?} are killed (limit {:.0} %)",
            bp.key,
            bp.kill.budget_share * 100.0
        ),
    };
    let mut f = Finding::new(IncidentType::KillBudget, Basis::Static, Severity::Critical);
    f.weighs = false;
    (f.observed, f.expected, f.unit) = match s {
        Spent::PerHour(n) => (f64::from(n), f64::from(bp.kill.budget_per_hour), "kills"),
        Spent::Share { killed, agents } => (
            killed as f64,
            bp.kill.budget_share * agents as f64,
            "agents",
        ),
    };
    f.window_start = ts.div_euclid(3_600_000) * 3_600_000;
    f.window_end = ts;
    f.description = format!(
        "Kill budget spent: {why}. Agent {agent:?} and any further agent this hour are only \
         would-kill decisions; confirm with `guardian kill {agent}` if they must stop."
    );
    f
}

/// The alert of cohort `key`'s kill budget spent (`n` kills within the hour) when it first
/// holds back a kill of `agent`.
fn cohort_alert(bp: &Blueprint, key: &str, agent: &str, n: u32, ts: i64) -> Finding {
    let mut f = Finding::new(IncidentType::KillBudget, Basis::Static, Severity::Critical);
    f.weighs = false;
    f.observed = f64::from(n);
    f.expected = f64::from(bp.kill.budget_per_cohort);
    f.unit = "kills";
    f.window_start = ts.saturating_sub(3_600_000);
    f.window_end = ts;
    f.description = format!(
        "Kill budget of cohort {key:?} spent: {n} of its agents were killed automatically \
         within the hour (limit {}), more likely a fleet event than that many rogue \
         agents. Agent {agent:?} and any further agent of the cohort this hour are only \
         would-kill decisions; confirm with `guardian kill {agent}` if they must stop.",
        bp.kill.budget_per_cohort
    );
    f
}

fn make_incident(
    bp: &Blueprint,
    st: &AgentState,
    event_id: &str,
    tool_name: &str,
    ts: i64,
    f: Finding,
    action: Action,
) -> Incident {
    let (kind, severity, about, verdict) = judged(&f);
    let (incident_id, status, count, at) = match &f.closing {
        Some(c) => (
            incident_id(
                &st.agent_id,
                kind,
                c.opening.basis,
                c.opening.seq,
                &c.opening.event_id,
                c.opening.ts,
                f.disc,
            ),
            Status::Closed,
            c.count,
            c.opening.ts,
        ),
        None => {
            let (ts, seq) = f.trigger.unwrap_or((ts, st.events));
            (
                incident_id(
                    &st.agent_id,
                    kind,
                    f.basis,
                    seq,
                    event_id,
                    ts,
                    // Baseline records of different rules on one event stay apart.
                    f.disc + about.map_or(0, |a| (1 + type_index(a) as u32) << 16),
                ),
                Status::Open,
                1,
                ts,
            )
        }
    };
    Incident {
        incident_id,
        agent_id: st.agent_id.clone(),
        kind,
        severity,
        at,
        window_start: f.window_start,
        window_end: f.window_end,
        blueprint: bp.key.clone(),
        basis: f.basis,
        observed: f.observed,
        expected: f.expected,
        unit: f.unit.to_string(),
        description: f.description,
        action_taken: action,
        event_id: event_id.to_string(),
        tool_name: match (&f.pattern, tool_name) {
            (Some(p), "") => p.last().cloned().unwrap_or_default(),
            _ => tool_name.to_string(),
        },
        pattern: f.pattern,
        status,
        count,
        about,
        verdict,
        baseline: f.facts,
        suppressed_by: None,
        agents: Vec::new(),
    }
}

/// Why a due kill is held back, if it is, in order: monitor mode or dry run, the learning
/// period, the fleet's kill budget, the cohort's.
fn hold_reason(
    dry_run: bool,
    learning: bool,
    budget_spent: bool,
    cohort_spent: bool,
) -> Option<Suppression> {
    if dry_run {
        Some(Suppression::Monitor)
    } else if learning {
        Some(Suppression::Learning)
    } else if budget_spent {
        Some(Suppression::Budget)
    } else {
        cohort_spent.then_some(Suppression::Cohort)
    }
}

/// A finding's type and severity as its judgement makes them: a new finding keeps its own; a
/// routine one, or one during learning, is a low `baseline` record about its type, with the
/// verdict.
fn judged(
    f: &Finding,
) -> (
    IncidentType,
    Severity,
    Option<IncidentType>,
    Option<Verdict>,
) {
    match f.judgement {
        Judgement::New => (f.kind, f.severity, None, None),
        Judgement::Routine => (
            IncidentType::Baseline,
            Severity::Low,
            Some(f.kind),
            Some(Verdict::Routine),
        ),
        Judgement::Learning => (
            IncidentType::Baseline,
            Severity::Low,
            Some(f.kind),
            Some(Verdict::Learning),
        ),
    }
}

/// An agent's own counts of a call: events, first and last seen, its environment once known.
fn count_call(st: &mut AgentState, ev: &AuditEvent<'_>) {
    st.events += 1;
    st.first_seen = st.first_seen.min(ev.ts_ms);
    st.last_seen = st.last_seen.max(ev.ts_ms);
    if st.environment.is_none() {
        if let Some(env) = &ev.environment {
            st.environment = Some(env.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blueprint::{load_blueprint, Assignment};
    use serde_json::json;

    /// A blueprint where three calls of `x` in a row are a sequence (one high violation each match).
    fn set(mode: &str, kill: serde_json::Value) -> Arc<BlueprintSet> {
        only(json!({"name": "T", "mode": mode, "auto_kill_threshold": 2,
                    "anomaly": {"suspicious_sequences": [["x", "x"]]}, "kill": kill,
                    "learned": {"learning_period": 0}}))
    }

    /// A set of one blueprint, every agent's.
    fn only(doc: serde_json::Value) -> Arc<BlueprintSet> {
        let bp = load_blueprint("t", &doc).unwrap();
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
        AuditEvent::tool_call(agent, "", ts, tool)
    }

    /// Processes the calls, then ends the stream (sequences are judged once final).
    fn run(e: &mut Engine, agent: &str, calls: &[(i64, &str)]) -> Vec<Incident> {
        let mut out = Vec::new();
        for (ts, tool) in calls {
            e.process(&ev(agent, *ts, tool), &mut out);
        }
        e.finish(&mut out);
        out
    }

    fn kinds(v: &[Incident]) -> Vec<(IncidentType, Action)> {
        v.iter().map(|i| (i.kind, i.action_taken)).collect()
    }

    #[test]
    fn a_call_made_before_an_operator_kill_is_not_activity_after_it() {
        let mut e = Engine::new(set("block", json!({})));
        let mut out = Vec::new();
        e.process(&ev("a", 10_000, "y"), &mut out);
        assert!(e.kill("a", 20_000));
        e.process(&ev("a", 15_000, "y"), &mut out); // late: made before the kill
        assert!(
            !out.iter()
                .any(|i| i.kind == IncidentType::ActivityAfterKill),
            "{:?}",
            kinds(&out)
        );
        e.process(&ev("a", 25_000, "y"), &mut out);
        assert!(out
            .iter()
            .any(|i| i.kind == IncidentType::ActivityAfterKill));
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
            .filter(|i| i.kind == IncidentType::ActivityAfterKill && i.status == Status::Open)
            .collect();
        assert_eq!(after.len(), 2, "one per episode: {later:?}");
        let closed: Vec<_> = later
            .iter()
            .filter(|i| i.status == Status::Closed)
            .collect();
        assert_eq!(closed.len(), 1, "the first episode closed: {later:?}");
        assert_eq!(
            (closed[0].count, &closed[0].incident_id),
            (2, &after[0].incident_id)
        );
        assert!(after
            .iter()
            .all(|i| i.severity == crate::blueprint::Severity::Critical));
        assert!(e.agent("a").unwrap().kill.killed);
    }

    #[test]
    fn a_kill_final_by_the_partition_s_watermark_goes_out_with_its_deciding_event() {
        let mut e = Engine::new(set("block", json!({})));
        let mut out = Vec::new();
        // Another agent has moved the partition's event time far ahead (ten minutes).
        e.process(&ev("busy", 0, "y"), &mut out);
        e.process(&ev("busy", 600_000, "y"), &mut out);
        // A rogue whose calls arrive behind it: every call is final by the partition's
        // watermark, so the sequence ending with its fourth call is judged as it arrives.
        for ts in [1000, 2000, 3000, 4000] {
            e.process(&ev("rogue", ts, "x"), &mut out);
        }
        assert!(
            out.iter()
                .any(|i| i.kind == IncidentType::AutoKill && i.agent_id == "rogue"),
            "no kill before any later event or sweep: {:?}",
            kinds(&out)
        );
        // An agent whose last call is its own newest stays pending until it is final.
        let mut e = Engine::new(set("block", json!({})));
        let mut out = Vec::new();
        for ts in [0, 1000, 2000, 3000] {
            e.process(&ev("rogue", ts, "x"), &mut out);
        }
        assert!(!out.iter().any(|i| i.kind == IncidentType::AutoKill));
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

    /// A blueprint whose `[x, x]` matches always alert (routine or learning), with a learning
    /// period and a kill budget.
    fn budgeted(learning: &str, budget: serde_json::Value) -> Arc<BlueprintSet> {
        only(
            json!({"name": "T", "mode": "block", "auto_kill_threshold": 2,
                    "anomaly": {"suspicious_sequences": [{"pattern": ["x", "x"], "contiguous": true, "routine": "alert"}]},
                    "kill": {"budget": budget}, "learned": {"learning_period": learning}}),
        )
    }

    const XXXX: [(i64, &str); 4] = [(0, "x"), (1000, "x"), (2000, "x"), (3000, "x")];

    fn shifted(t: i64) -> Vec<(i64, &'static str)> {
        XXXX.iter().map(|(d, x)| (t + d, *x)).collect()
    }

    #[test]
    fn no_automatic_kill_during_the_learning_period() {
        let mut e = Engine::new(budgeted("1h", json!({})));
        let out = run(&mut e, "a", &XXXX);
        let kill: Vec<_> = out
            .iter()
            .filter(|i| i.kind == IncidentType::AutoKill)
            .collect();
        assert_eq!(kill.len(), 1, "{out:?}");
        assert_eq!(kill[0].action_taken, Action::WouldKill);
        assert_eq!(kill[0].suppressed_by, Some(Suppression::Learning));
        assert!(!e.agent("a").unwrap().kill.killed);
        assert_eq!(
            e.stats().kills_suppressed[suppression_index(Suppression::Learning)],
            1
        );
        // After the learning period (and the kill cooldown) the same behaviour kills.
        let out = run(&mut e, "a", &shifted(2 * 3_600_000));
        assert!(
            kinds(&out).contains(&(IncidentType::AutoKill, Action::Killed)),
            "{out:?}"
        );
    }

    #[test]
    fn the_kill_budget_turns_further_kills_into_would_kill_and_one_alert() {
        let mut e = Engine::new(budgeted("0s", json!({"per_hour": 2, "share": 1.0})));
        let mut all = Vec::new();
        for (k, agent) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            all.extend(run(&mut e, agent, &shifted(k as i64 * 10_000)));
        }
        let kills: Vec<_> = all
            .iter()
            .filter(|i| i.kind == IncidentType::AutoKill)
            .collect();
        assert_eq!(kills.len(), 5);
        let killed = kills
            .iter()
            .filter(|i| i.action_taken == Action::Killed)
            .count();
        assert_eq!(killed, 2, "{kills:?}");
        assert!(kills
            .iter()
            .filter(|i| i.action_taken != Action::Killed)
            .all(|i| i.suppressed_by == Some(Suppression::Budget)));
        let alerts: Vec<_> = all
            .iter()
            .filter(|i| i.kind == IncidentType::KillBudget)
            .collect();
        assert_eq!(alerts.len(), 1, "one alert per hour");
        assert_eq!(alerts[0].severity, Severity::Critical);
        assert!(
            alerts[0].description.contains("guardian kill"),
            "{}",
            alerts[0].description
        );
        assert_eq!(e.budget().held, 3);
        // A share of the blueprint: with 10 agents and 20 %, two may be down at once.
        let mut e = Engine::new(budgeted("0s", json!({"per_hour": 0, "share": 0.2})));
        for k in 0..10 {
            run(&mut e, &format!("idle-{k}"), &[(0, "y")]);
        }
        let mut all = Vec::new();
        for k in 0..4 {
            all.extend(run(
                &mut e,
                &format!("idle-{k}"),
                &shifted(10_000 * (k + 1)),
            ));
        }
        let killed = all
            .iter()
            .filter(|i| i.action_taken == Action::Killed)
            .count();
        assert_eq!(killed, 2, "{all:?}");
    }

    /// A call of `agent` with an event id and a data volume.
    fn delivered<'a>(agent: &'a str, id: &'a str, ts: i64, bytes: f64) -> AuditEvent<'a> {
        AuditEvent {
            event_id: id.into(),
            bytes: Some(bytes),
            ..ev(agent, ts, "export")
        }
    }

    /// 50 MB a minute at most, judged statically from the start.
    fn fifty_mb() -> Arc<BlueprintSet> {
        only(
            json!({"name": "T", "mode": "block", "auto_kill_threshold": 3, "anomaly": {},
                    "data_volume": {"max_bytes": 50_000_000, "window": "1m"},
                    "learned": {"learning_period": 0}}),
        )
    }

    #[test]
    fn a_duplicate_of_a_large_call_adds_nothing() {
        let mut e = Engine::new(fifty_mb());
        let mut out = Vec::new();
        e.process(&delivered("a", "e1", 10_000, 30e6), &mut out);
        // The producer's retry: the same record again.
        e.process(&delivered("a", "e1", 10_000, 30e6), &mut out);
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(e.stats().duplicates, 1);
        assert_eq!(e.agent("a").unwrap().events, 1);
        // Two different calls of that size are 60 MB in the minute.
        e.process(&delivered("a", "e2", 20_000, 30e6), &mut out);
        assert_eq!(
            kinds(&out),
            vec![(IncidentType::VolumeSpike, Action::Logged)]
        );
        // The same id with other content is not dropped: counted as a conflict.
        e.process(&delivered("a", "e2", 20_000, 5.0), &mut out);
        assert_eq!((e.stats().duplicates, e.stats().id_conflicts), (1, 1));
    }

    /// 2,000 calls of 20 agents, one a second each, from `t`; ids `{agent}/{n}`.
    fn block(t: i64) -> Vec<(String, String, i64)> {
        (0..100)
            .flat_map(|n| {
                (0..20).map(move |a| (format!("agent-{a}"), format!("agent-{a}/{n}"), t + n * 1000))
            })
            .collect()
    }

    fn events(b: &[(String, String, i64)]) -> Vec<AuditEvent<'_>> {
        b.iter()
            .map(|(a, id, ts)| delivered(a, id, *ts, 1_000.0))
            .collect()
    }

    #[test]
    fn a_block_of_re_delivered_lines_adds_nothing_and_is_not_late() {
        let first = block(0);
        let next = block(100_000);
        let mut once = Engine::new(set("block", json!({})));
        let mut want = Vec::new();
        once.process_batch(&events(&first), &mut want);
        once.process_batch(&events(&next[..300]), &mut want);
        once.process_batch(&events(&next[300..]), &mut want);
        // A retry storm: the first block delivered again, 15 s into the next one.
        let mut twice = Engine::new(set("block", json!({})));
        let mut got = Vec::new();
        twice.process_batch(&events(&first), &mut got);
        twice.process_batch(&events(&next[..300]), &mut got);
        twice.process_batch(&events(&first), &mut got);
        twice.process_batch(&events(&next[300..]), &mut got);
        assert_eq!(got, want);
        assert_eq!(twice.stats().duplicates, 2_000);
        assert_eq!(twice.stats().late_events, 0);
        assert_eq!(twice.stats().events, once.stats().events);
        let mut a = twice.snapshot();
        let b = once.snapshot();
        a.stats = b.stats.clone();
        assert_eq!(a, b, "nothing else changed");
    }

    #[test]
    fn the_duplicate_memory_survives_a_restore_from_a_checkpoint() {
        let first = block(0);
        let mut e = Engine::new(set("block", json!({})));
        e.draw_duplicate_key();
        let mut out = Vec::new();
        e.process_batch(&events(&first), &mut out);
        let bytes = e.snapshot().to_bytes().unwrap();
        let mut e = Engine::restore(
            e.blueprints().clone().into(),
            Snapshot::from_bytes(&bytes).unwrap(),
        );
        e.process_batch(&events(&first), &mut out);
        assert_eq!(e.stats().duplicates, 2_000);
        assert_eq!(e.stats().events, 2_000);
    }

    #[test]
    fn routine_findings_add_no_kill_weight() {
        // The agent pairs x calls every day of the learning period and after it.
        let set = only(
            json!({"name": "T", "mode": "block", "auto_kill_threshold": 2,
                    "anomaly": {"suspicious_sequences": [{"pattern": ["x", "x"], "contiguous": true}]},
                    "learned": {"learning_period": "3d"}}),
        );
        let mut e = Engine::new(set);
        let mut out = Vec::new();
        for day in 0..10 {
            out.extend(run(&mut e, "a", &shifted(day * 86_400_000)));
        }
        assert!(
            out.iter().all(|i| i.kind == IncidentType::Baseline),
            "{out:?}"
        );
        assert_eq!(out.len(), 2, "learning, then routine: {out:?}");
        assert_eq!(e.agent("a").unwrap().kill.score, 0.0);
    }
}
