//! The partition fold: batches of Kafka records in, outputs and checkpoints out, with no Kafka
//! and no I/O but reading back from the store the agents a memory bound keeps out of memory
//! ([`Fold::evict`]), so it is tested as a unit.
//!
//! Each owned audit partition has its own [`Engine`], whose state is the fold of that partition's
//! log up to `next`. Audit records are decoded into a reused buffer and handed to
//! [`Engine::process_batch`] in runs (one partition, one side of its quiet mark); bad records
//! become dead letters; control records apply operator commands or become rejected-command
//! incidents. What the fold decides goes into [`Output`]s, which the publisher sends; what it
//! knows goes into a [`Checkpoint`], which the writer persists.
//!
//! Layer: uses `engine`, `event`, `control`, `response`, `store` (the checkpoint encoding),
//! `posture` (the ledger) and `telemetry` (counters).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::blueprint::BlueprintSet;
use crate::config::Resolved;
use crate::control::{Command, Origin, Verb};
use crate::engine::Engine;
use crate::event::{AuditEvent, DecodeError, Decoder, DecoderOptions};
use crate::posture::{Gap, Ledger};
use crate::response::{Action, Incident, IncidentType};
use crate::state::EngineStats;
use crate::state::{KillEventKind, Resolution};
use crate::store::{checkpoint_batch, ChangelogRecord, PartitionDelta, StoreError};
use crate::telemetry::{Metrics, BAD_EVENT_KINDS};
use crate::text::Shown;

use crate::source::queue::{Message, PartitionAssignment};

/// What the fold needs to know of the configuration.
#[derive(Clone)]
pub struct FoldSettings {
    /// The audit topics, by the index records carry.
    pub audit_topics: Vec<String>,
    /// The control topic (named in rejected-command incidents).
    pub control_topic: String,
    /// This instance's id (signs its kill commands).
    pub guardian_id: String,
    /// The command signing key.
    pub signing_key: Vec<u8>,
    /// Keys whose commands are accepted: the signing key and those of a rotation.
    pub command_keys: Vec<Vec<u8>>,
    /// How long a command is valid (ms).
    pub command_ttl_ms: i64,
    /// The blueprints in force.
    pub blueprints: Arc<BlueprintSet>,
    /// How events are decoded.
    pub decoder: DecoderOptions,
    /// How far ahead of the clock an event's time may be (ms).
    pub max_future_ms: i64,
    /// How event identities are remembered for dropping re-deliveries.
    pub duplicates: crate::state::SeenSettings,
    /// Agents kept per partition at most (`max_agents_per_partition`).
    pub max_agents: usize,
    /// Agents' states in memory at most over the owned partitions (`max_agents_in_memory`;
    /// `None`: every agent stays).
    pub max_in_memory: Option<usize>,
    /// Checkpoints also give their partitions' changes as changelog records
    /// (`kafka.changelog_topic` is set).
    pub changelog: bool,
}

impl FoldSettings {
    /// The name of audit topic `i` (by the index records carry).
    fn topic(&self, i: u16) -> &str {
        self.audit_topics.get(i as usize).map_or("", String::as_str)
    }

    /// The fold's part of a resolved configuration.
    pub fn from_resolved(cfg: &Resolved) -> FoldSettings {
        let c = &cfg.config;
        FoldSettings {
            audit_topics: c.kafka.audit_topics.clone(),
            control_topic: c.kafka.control_topic.clone(),
            guardian_id: c.guardian_id.clone(),
            signing_key: cfg.signing_key.clone(),
            command_keys: cfg.command_keys(),
            command_ttl_ms: cfg.command_ttl_ms(),
            blueprints: cfg.blueprints.clone(),
            decoder: DecoderOptions {
                volume_pointer: c.volume_pointer.clone(),
                max_event_bytes: c.max_event_bytes,
                otlp: c.otlp.clone(),
                ..cfg.blueprints.decoder_options()
            },
            max_future_ms: i64::try_from(cfg.max_future.as_millis()).unwrap_or(i64::MAX),
            duplicates: cfg.duplicates,
            max_agents: c.max_agents_per_partition,
            max_in_memory: (c.max_agents_in_memory > 0).then_some(c.max_agents_in_memory),
            changelog: c.kafka.changelog_topic.is_some(),
        }
    }
}

/// Why the fold could not go on.
#[derive(Debug, thiserror::Error)]
pub enum FoldError {
    /// The decoder settings are invalid.
    #[error("event decoder: {0}")]
    Decoder(#[from] DecodeError),
    /// A kill command could not be signed or encoded (nothing unsigned is ever published).
    #[error("cannot encode a kill command: {0}")]
    Encode(#[from] serde_json::Error),
    /// The state of an agent out of memory could not be read back from the store.
    #[error("cannot read back an agent's state: {0}")]
    Store(#[from] StoreError),
}

/// Largest payload a dead letter carries; a longer one keeps this prefix, and the original size
/// goes in a header. With the key and headers bounded too, a dead letter stays well below a
/// broker's default 1 MB message limit, so one oversized record cannot stop the daemon.
pub const DEAD_LETTER_MAX_VALUE: usize = 512 * 1024;

/// Largest key a dead letter carries (a longer one keeps this prefix).
pub const DEAD_LETTER_MAX_KEY: usize = 1024;

/// Longest agent id a rejected-command incident names (a longer one keeps a prefix).
const MAX_NAMED_AGENT: usize = 512;

/// A record that could not be decoded, for the dead-letter topic and the SIEM.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRecord {
    /// The audit topic it came from.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its key (at most [`DEAD_LETTER_MAX_KEY`] bytes of it).
    pub key: Option<Vec<u8>>,
    /// Its payload as received, or its first [`DEAD_LETTER_MAX_VALUE`] bytes.
    pub payload: Vec<u8>,
    /// The payload's size as received (more than `payload.len()` when cut).
    pub original_size: usize,
    /// The kind of error (one of the metrics' kinds).
    pub kind: &'static str,
    /// The error.
    pub error: String,
    /// The broker's timestamp, else when the fold saw it (ms).
    pub at: i64,
}

/// Something the fold decided, to be published.
#[derive(Debug, Clone)]
pub enum Output {
    /// An incident, for the incidents topic and the SIEM.
    Incident(Incident),
    /// A signed automatic kill command, for the control topic and the SIEM.
    Kill(Command),
    /// An operator command applied by this instance, for the SIEM.
    Applied(Command),
    /// An undecodable audit record, for the dead-letter topic and the SIEM.
    DeadLetter(BadRecord),
}

/// The encoded state of every owned partition, and the offsets it reflects.
pub struct Checkpoint {
    /// The sled batch: changed agents, fleet state, offsets, pending commands, incidents, ledger.
    pub batch: sled::Batch,
    /// `(topic, partition, next offset)` of each owned audit partition, to commit to Kafka.
    pub offsets: Vec<(String, i32, i64)>,
    /// The partitions' changes for the changelog topic (empty when it is off).
    pub changelog: Vec<ChangelogRecord>,
}

/// One owned audit partition.
struct Part {
    engine: Engine,
    /// The next offset to fold (everything below is in the state).
    next: i64,
    /// Outputs of offsets below this were already published.
    quiet_below: i64,
    /// Wall time (ms) of the latest record folded, and of the latest quiet pass since.
    last_record: i64,
    last_quiet_pass: i64,
    /// Agents restored ahead of `next`: their events below the offset are in their state.
    skips: HashMap<String, i64>,
    /// The least offset of `skips` (`i64::MAX` when none).
    skips_until: i64,
    /// Agents whose skip offset was passed since the previous checkpoint (their marks go).
    caught_up: Vec<String>,
}

/// Wall time without a record after which a partition's event time is let pass (see
/// [`Fold::pass_quiet_time`]).
pub const QUIET_AFTER_MS: i64 = 60_000;

/// Wall time between two quiet passes of a partition.
const QUIET_PASS_EVERY_MS: i64 = 10_000;

/// The engine thread's state: every owned partition's engine and what is to be checkpointed.
pub struct Fold {
    settings: FoldSettings,
    decoder: Decoder,
    metrics: Arc<Metrics>,
    parts: HashMap<(u16, i32), Part>,
    control_next: HashMap<i32, i64>,
    /// Per control-topic partition, the offset below which records were folded before a
    /// `state rebuild`: read again, they change the state as they did, nothing is published.
    control_marks: HashMap<i32, i64>,
    /// Operator commands waiting for their agent (not seen yet) or for their time (the agent's
    /// partition is replayed and has not reached it).
    pending: Vec<Command>,
    /// Ids of waiting commands that were read again below their mark (applied, not published).
    reread: HashSet<String>,
    /// Incidents raised since the previous checkpoint (stored with it).
    raised: Vec<Incident>,
    ledger: Ledger,
    /// Posture snapshots counted in the ledger when this run started.
    snapshots_before: u64,
    since_checkpoint: u64,
    /// Reused: the decoded events of a run (empty between runs, see [`reuse`]).
    events: Vec<AuditEvent<'static>>,
    /// Reused: the incidents of a run.
    out: Vec<Incident>,
    /// Where the states of agents out of memory are read back from (see [`Fold::evict`]).
    store: Option<crate::store::Store>,
}

impl Fold {
    /// A fold owning no partition yet, with the stored pending commands and ledger.
    pub fn new(
        settings: FoldSettings,
        metrics: Arc<Metrics>,
        pending: Vec<Command>,
        ledger: Ledger,
    ) -> Result<Fold, FoldError> {
        let decoder = Decoder::new(&settings.decoder)?;
        metrics
            .commands_pending
            .store(pending.len() as u64, Ordering::Relaxed);
        Ok(Fold {
            decoder,
            metrics,
            parts: HashMap::new(),
            control_next: HashMap::new(),
            control_marks: HashMap::new(),
            pending,
            reread: HashSet::new(),
            raised: Vec::new(),
            snapshots_before: ledger.posture_snapshots,
            ledger,
            since_checkpoint: 0,
            events: Vec::new(),
            out: Vec::new(),
            store: None,
            settings,
        })
    }

    /// The state store, where agents out of memory are read back from: with
    /// `max_in_memory`, agents leave memory only once it is set.
    pub fn set_store(&mut self, store: crate::store::Store) {
        self.store = Some(store);
    }

    /// Keeps the agents' states in memory over the owned partitions within `max_in_memory`:
    /// once it is passed, each partition keeps its share (by its agents in memory) of seven
    /// eighths of it, the least recently used of those stored already leaving memory. Call
    /// once the latest checkpoint is on disk (what changed since is not stored yet and
    /// stays). Returns how many left.
    pub fn evict(&mut self) -> usize {
        let (Some(bound), Some(_)) = (self.settings.max_in_memory, &self.store) else {
            return 0;
        };
        let total = self.agents_in_memory();
        if total <= bound {
            return 0;
        }
        let target = bound - bound / 8;
        let mut left = 0;
        for p in self.parts.values_mut() {
            let r = p.engine.resident_count();
            let keep = (r as u128 * target as u128 / total as u128) as usize;
            left += p.engine.evict(keep, crate::engine::Evict::Stored).0;
        }
        self.metrics
            .agents_unloaded
            .fetch_add(left as u64, Ordering::Relaxed);
        left
    }

    /// Whether more agents' states are in memory than `max_in_memory` allows.
    pub fn over_memory_bound(&self) -> bool {
        self.settings
            .max_in_memory
            .is_some_and(|b| self.store.is_some() && self.agents_in_memory() > b)
    }

    /// Agents' states in memory over the owned partitions.
    pub fn agents_in_memory(&self) -> usize {
        self.parts.values().map(|p| p.engine.resident_count()).sum()
    }

    /// Reads back the state of `agent` in every owned partition where it is out of memory (before
    /// a command for it is judged or applied).
    fn load_agent(&mut self, agent: &str) -> Result<(), FoldError> {
        for (&(t, p), part) in self.parts.iter_mut() {
            if part.engine.is_idle(agent) {
                let topic = self.settings.topic(t);
                load_idle(
                    self.store.as_ref(),
                    topic,
                    p,
                    &mut part.engine,
                    &[agent],
                    &self.metrics,
                )?;
            }
        }
        Ok(())
    }

    /// The control-topic offsets below which records were folded before the last `state
    /// rebuild` ([`crate::store::Store::control_marks`]).
    pub fn set_control_marks(&mut self, marks: HashMap<i32, i64>) {
        self.control_marks = marks;
    }

    fn topic(&self, i: u16) -> &str {
        self.settings.topic(i)
    }

    /// Takes over assigned partitions, from their stored state or from scratch; `now` (ms)
    /// dates the retention gaps found. Operator commands waiting for an agent of a partition
    /// taken over apply now, and are reported to `out`.
    pub fn assign(&mut self, list: Vec<PartitionAssignment>, now: i64, out: &mut Vec<Output>) {
        for a in list {
            let key = (a.topic, a.partition);
            if let Some((from, to)) = a.gap {
                self.ledger.gaps.push(Gap {
                    topic: self.topic(a.topic).to_string(),
                    partition: a.partition,
                    from_offset: from,
                    to_offset: to,
                    found_at: now,
                });
            }
            if let Some(r) = &a.restored {
                self.metrics
                    .changelog_restores
                    .fetch_add(1, Ordering::Relaxed);
                self.metrics
                    .changelog_records_restored
                    .fetch_add(r.records, Ordering::Relaxed);
            }
            let mut engine = match a.state {
                Some(s) => Engine::restore(self.settings.blueprints.clone(), s),
                None => {
                    self.ledger.rebuilds += 1;
                    let mut e = Engine::new(self.settings.blueprints.clone());
                    // A new state draws its own secret key for the digests of event identities.
                    e.draw_duplicate_key();
                    e
                }
            };
            engine.set_duplicates(self.settings.duplicates);
            self.parts.insert(
                key,
                Part {
                    engine,
                    next: a.start,
                    quiet_below: a.quiet_below,
                    last_record: now,
                    last_quiet_pass: now,
                    skips_until: a.skips.values().copied().min().unwrap_or(i64::MAX),
                    skips: a.skips,
                    caught_up: Vec::new(),
                },
            );
            self.apply_pending(key, out);
        }
    }

    /// Applies the waiting operator commands whose agent partition `key` holds, unless the
    /// partition is replayed and has not reached the command's time for that agent.
    fn apply_pending(&mut self, key: (u16, i32), out: &mut Vec<Output>) {
        let Some(part) = self.parts.get_mut(&key) else {
            return;
        };
        let idle: Vec<&str> = self
            .pending
            .iter()
            .map(|c| c.agent_id.as_str())
            .filter(|a| part.engine.is_idle(a))
            .collect();
        if !idle.is_empty() {
            let topic = self.settings.topic(key.0);
            if let Err(e) = load_idle(
                self.store.as_ref(),
                topic,
                key.1,
                &mut part.engine,
                &idle,
                &self.metrics,
            ) {
                // They keep waiting, for the next run of the partition.
                tracing::error!(error = %e, "waiting commands: an agent's state cannot be read back");
                return;
            }
        }
        let replaying = part.next < part.quiet_below;
        let mut applied = Vec::new();
        self.pending.retain(|c| {
            let Some(agent) = part.engine.agent(&c.agent_id) else {
                return true;
            };
            if replaying && agent.last_seen < c.issued_at {
                return true;
            }
            if !reflected(&part.engine, c) {
                apply(&mut part.engine, c);
                applied.push(c.clone());
            }
            false
        });
        self.count_pending();
        // The change is checkpointed like a folded record.
        self.since_checkpoint += applied.len() as u64;
        self.report_applied(applied, true, out);
    }

    /// Counts and reports operator commands applied from the waiting list (`publish`: outside a
    /// replay); those read again after a rebuild were counted and reported when first applied.
    fn report_applied(&mut self, applied: Vec<Command>, publish: bool, out: &mut Vec<Output>) {
        for c in applied {
            if self.reread.remove(&c.command_id) {
                continue;
            }
            self.ledger.commands_applied += 1;
            self.metrics
                .commands_applied
                .fetch_add(1, Ordering::Relaxed);
            if publish {
                out.push(Output::Applied(c));
            }
        }
    }

    /// Lets partitions go (checkpoint them first).
    pub fn revoke(&mut self, list: &[(u16, i32)]) {
        for k in list {
            self.parts.remove(k);
        }
    }

    /// The owned audit partitions, by topic name.
    pub fn owned(&self) -> Vec<(String, i32)> {
        self.parts
            .keys()
            .map(|&(t, p)| (self.topic(t).to_string(), p))
            .collect()
    }

    fn count_pending(&self) {
        self.metrics
            .commands_pending
            .store(self.pending.len() as u64, Ordering::Relaxed);
    }

    /// How many partitions are owned.
    pub fn partitions(&self) -> usize {
        self.parts.len()
    }

    /// Records (audit and control) folded since the previous checkpoint.
    pub fn since_checkpoint(&self) -> u64 {
        self.since_checkpoint
    }

    /// `(open fleet shifts, event identities remembered)` over the owned partitions.
    pub fn cohort_figures(&self) -> (u64, u64) {
        self.parts.values().fold((0, 0), |(s, d), p| {
            (
                s + p.engine.fleet_shifts().count() as u64,
                d + p.engine.duplicates_kept() as u64,
            )
        })
    }

    /// `(agents, killed agents, partitions still learning)` of the owned partitions.
    pub fn figures(&self) -> (u64, u64, u64) {
        let (mut agents, mut killed, mut learning) = (0u64, 0u64, 0u64);
        for p in self.parts.values() {
            agents += p.engine.agent_count() as u64;
            killed += p.engine.killed_count() as u64;
            learning += u64::from(p.engine.learning_now());
        }
        (agents, killed, learning)
    }

    /// Folds a batch of audit records (taken at `now`, ms) into their partitions' state; what is
    /// to be published goes to `out`. Records of partitions not owned, or already folded, are
    /// skipped.
    pub fn audit(
        &mut self,
        batch: &[Message],
        now: i64,
        out: &mut Vec<Output>,
    ) -> Result<(), FoldError> {
        let mut rest = batch;
        while let Some(first) = rest.first() {
            // A run: consecutive records of one partition on one side of its quiet mark.
            let key = (first.topic, first.partition);
            let quiet_below = self.parts.get(&key).map_or(i64::MIN, |p| p.quiet_below);
            let quiet = first.offset < quiet_below;
            let len = rest
                .iter()
                .take_while(|r| (r.topic, r.partition) == key && (r.offset < quiet_below) == quiet)
                .count();
            let (run, tail) = rest.split_at(len);
            rest = tail;
            self.run(key, run, quiet, now, out)?;
        }
        Ok(())
    }

    /// Folds one run of records of partition `key`: decodes each record (a dead letter when it
    /// cannot be), processes the events with any waiting operator commands in their place, and
    /// passes the outcome on.
    fn run(
        &mut self,
        key: (u16, i32),
        run: &[Message],
        quiet: bool,
        now: i64,
        out: &mut Vec<Output>,
    ) -> Result<(), FoldError> {
        let topic = self.topic(key.0).to_string();
        let Some(part) = self.parts.get_mut(&key) else {
            return Ok(()); // not (or no longer) ours
        };
        let mut events = reuse(std::mem::take(&mut self.events));
        // New agents of this run, not yet in the engine (tracked once near the cap).
        let mut run_new: Option<HashSet<String>> = None;
        for r in run {
            if r.offset < part.next {
                continue; // already folded into the stored state
            }
            part.next = r.offset + 1;
            part.last_record = now;
            self.since_checkpoint += 1;
            observe_age(&self.metrics, r.timestamp, now);
            let payload = r.payload.as_deref().unwrap_or_default();
            let ctx = RecordContext {
                decoder: &self.decoder,
                metrics: &self.metrics,
                settings: &self.settings,
                now,
            };
            let before = events.len();
            if let Err(e) = ctx.decode(
                payload,
                &mut part.engine,
                &mut events,
                &mut run_new,
                &mut self.out,
            ) {
                ctx.count_bad(&e);
                part.engine.count_bad_event();
                if !quiet {
                    out.push(Output::DeadLetter(dead_letter(&topic, r, payload, &e, now)));
                }
            }
            if !part.skips.is_empty() {
                skip_restored(part, &mut events, before, r.offset, &self.metrics);
            }
        }
        self.metrics
            .events
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        let idle = part.engine.idle_among(&events);
        if !idle.is_empty() {
            let (store, metrics) = (self.store.as_ref(), &self.metrics);
            load_idle(store, &topic, key.1, &mut part.engine, &idle, metrics)?;
        }
        let before = part.engine.stats().clone();
        let unloaded = part.engine.unloaded_events();
        let waited = !self.pending.is_empty();
        let applied = process_with_commands(
            &mut part.engine,
            &events,
            &mut self.pending,
            quiet,
            &mut self.out,
        );
        if waited {
            let left = self.pending.len() as u64;
            self.metrics.commands_pending.store(left, Ordering::Relaxed);
        }
        // A burst of new agents found while processing.
        part.engine.take_identity_incidents(&mut self.out);
        let missed = part.engine.unloaded_events() - unloaded;
        if missed > 0 {
            // Never expected: every agent of the run was read back above.
            tracing::error!(topic = %topic, partition = key.1, events = missed, "events of agents out of memory were not processed");
            self.metrics.bad_events.fetch_add(missed, Ordering::Relaxed);
        }
        self.events = reuse(events);
        count_engine_figures(&self.metrics, &before, part.engine.stats());
        self.report_applied(applied, !quiet, out);
        self.emit(quiet, now, out)?;
        let replayed = self
            .parts
            .get(&key)
            .is_some_and(|p| p.next >= p.quiet_below);
        if replayed && !self.pending.is_empty() {
            // A replay that ended before a waiting command's time: it applies now.
            self.apply_pending(key, out);
        }
        Ok(())
    }

    /// Passes the engine's incidents on (`quiet`: already published by whoever folded these
    /// offsets before: counted, not sent), with a signed command for each kill.
    fn emit(&mut self, quiet: bool, now: i64, out: &mut Vec<Output>) -> Result<(), FoldError> {
        for inc in self.out.drain(..) {
            self.raised.push(inc.clone());
            if quiet {
                self.metrics.suppressed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let kill = (inc.action_taken == Action::Killed).then(|| {
                Command::for_kill(&inc, &self.settings.guardian_id)
                    .valid_for(now, self.settings.command_ttl_ms)
            });
            out.push(Output::Incident(inc));
            if let Some(cmd) = kill {
                out.push(Output::Kill(cmd.sign(&self.settings.signing_key)?));
                self.ledger.kill_commands_sent += 1;
            }
        }
        Ok(())
    }

    /// Lets event time pass for the partitions that have folded no record for
    /// [`QUIET_AFTER_MS`] of wall time (`now`, ms), as much as the wall clock passed since their
    /// latest record: a quiet partition (a night, the end of a day) judges what waits for its
    /// time — a sequence to be final, a finding for its cohort — instead of holding it until its
    /// next record. Partitions still being read up to their end are never quiet.
    pub fn pass_quiet_time(&mut self, now: i64, out: &mut Vec<Output>) -> Result<(), FoldError> {
        let keys: Vec<(u16, i32)> = self
            .parts
            .iter()
            .filter(|(_, p)| {
                now - p.last_record >= QUIET_AFTER_MS
                    && now - p.last_quiet_pass >= QUIET_PASS_EVERY_MS
            })
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            let Some(part) = self.parts.get_mut(&key) else {
                continue;
            };
            part.last_quiet_pass = now;
            let quiet = part.next < part.quiet_below;
            if part
                .engine
                .pass_quiet_time(now - part.last_record, &mut self.out)
            {
                // The state changed: it goes with the next checkpoint.
                self.since_checkpoint += 1;
            }
            self.emit(quiet, now, out)?;
        }
        Ok(())
    }

    /// Wall time (ms) until the next partition's quiet pass is due (see
    /// [`Fold::pass_quiet_time`]); `None` while no partition is owned.
    pub fn next_quiet_pass(&self, now: i64) -> Option<i64> {
        self.parts
            .values()
            .map(|p| {
                let at = p
                    .last_record
                    .saturating_add(QUIET_AFTER_MS)
                    .max(p.last_quiet_pass.saturating_add(QUIET_PASS_EVERY_MS));
                (at - now).max(0)
            })
            .min()
    }

    /// Folds one control-topic record: an operator command is applied to the owned agents (or
    /// waits for the agent, or for a replayed partition to reach its time), an automatic one is
    /// already part of the state it came from, and an invalid one becomes a rejected-command
    /// incident. A record read again after a `state rebuild` (below its partition's mark)
    /// changes the state as it did the first time and publishes nothing.
    pub fn control(
        &mut self,
        r: &Message,
        now: i64,
        out: &mut Vec<Output>,
    ) -> Result<(), FoldError> {
        // The control position and what the command changed are checkpointed like events.
        self.since_checkpoint += 1;
        self.control_next.insert(r.partition, r.offset + 1);
        let again = self
            .control_marks
            .get(&r.partition)
            .is_some_and(|&mark| r.offset < mark);
        let payload = r.payload.as_deref().unwrap_or_default();
        // When the command reached the topic: the broker's timestamp, or now without one.
        let delivered = r.timestamp.unwrap_or(now);
        let parsed = Command::parse_verified(payload, &self.settings.command_keys);
        if let Ok(c) = &parsed {
            if c.origin != Origin::Auto {
                // A verified command's agent is judged and changed in memory.
                self.load_agent(&c.agent_id)?;
            }
        }
        let verdict = parsed.and_then(|c| self.admissible(c, r.key.as_deref(), now, delivered));
        match verdict {
            Ok(c) if c.origin == Origin::Auto => {}
            Ok(c) if self.already_applied(&c) => {
                // The same command read again (a restart re-reads the control topic's tail).
                tracing::debug!(agent = %Shown(&c.agent_id), command_id = %Shown(&c.command_id), "operator command already applied");
            }
            Ok(c) => self.apply_command(c, again, out),
            Err(rejected) if again => {
                // Refused the first time it was read, with its incident.
                tracing::debug!(partition = r.partition, offset = r.offset, reason = %Shown(&rejected.why.to_string()), "control command read again, refused again");
            }
            Err(rejected) => self.reject(r, payload, rejected, out),
        }
        Ok(())
    }

    /// Applies an operator command to the owned agents it names, or keeps it waiting for the
    /// agent (or for a replayed partition to reach its time). `again`: read again below the
    /// partition's re-read mark (nothing is published).
    fn apply_command(&mut self, c: Command, again: bool, out: &mut Vec<Output>) {
        if again {
            tracing::debug!(agent = %Shown(&c.agent_id), command = ?c.command, "operator command read again");
        } else {
            tracing::info!(agent = %Shown(&c.agent_id), command = ?c.command, by = %Shown(&c.guardian_id), "operator command");
        }
        let mut applied = false;
        for p in self.parts.values_mut() {
            let Some(agent) = p.engine.agent(&c.agent_id) else {
                continue;
            };
            // A partition replayed (after a rebuild, or taken over without state) gets the
            // command when its replay reaches the command's time for the agent.
            if p.next < p.quiet_below && agent.last_seen < c.issued_at {
                continue;
            }
            apply(&mut p.engine, &c);
            applied = true;
        }
        if applied {
            // Reported by the instances that own the agent (every instance reads the control
            // topic); an agent not seen yet reports it when the command applies.
            if !again {
                self.report_applied(vec![c], true, out);
            }
        } else {
            if again {
                self.reread.insert(c.command_id.clone());
            }
            self.pending.push(c);
            self.count_pending();
        }
    }

    /// Counts a refused control record and raises its `rejected_command` incident.
    fn reject(
        &mut self,
        r: &Message,
        payload: &[u8],
        rejected: crate::control::Rejected,
        out: &mut Vec<Output>,
    ) {
        self.metrics
            .commands_rejected
            .fetch_add(1, Ordering::Relaxed);
        if let Some(i) = crate::control::REJECTION_KINDS
            .iter()
            .position(|k| *k == rejected.why.kind())
        {
            self.metrics.commands_rejected_by[i].fetch_add(1, Ordering::Relaxed);
        }
        self.ledger.commands_rejected += 1;
        let agent = match rejected.agent_id {
            Some(a) if a.len() > MAX_NAMED_AGENT => {
                let mut end = MAX_NAMED_AGENT;
                while !a.is_char_boundary(end) {
                    end -= 1;
                }
                format!("{}…({} bytes)", &a[..end], a.len())
            }
            Some(a) => a,
            None => "(unknown)".to_string(),
        };
        tracing::warn!(agent = %Shown(&agent), partition = r.partition, offset = r.offset, reason = %Shown(&rejected.why.to_string()), "control command rejected");
        let inc = rejected_command(
            &self.settings.control_topic,
            r,
            payload,
            agent,
            &rejected.why,
        );
        self.raised.push(inc.clone());
        out.push(Output::Incident(inc));
    }

    /// A verified command that may be applied: its Kafka key (when there is one) names its
    /// agent, it was not issued ahead of the clock nor of its delivery, it was fresh when it was
    /// `delivered` to the control topic (within its expiry and `command_ttl` of its issue: an
    /// applied kill stands however long ago it was issued, so a rebuild or a lost disk that
    /// reads the topic again applies it again), and it was not issued before the last command
    /// applied to the agent (a replayed kill after a revive, or an old revive after a kill).
    fn admissible(
        &self,
        c: Command,
        key: Option<&[u8]>,
        now: i64,
        delivered: i64,
    ) -> Result<Command, crate::control::Rejected> {
        use crate::control::{Rejected, Rejection};
        let refuse = |c: Command, why: Rejection| {
            Err(Rejected {
                why,
                agent_id: Some(c.agent_id),
            })
        };
        if c.origin == Origin::Auto {
            return Ok(c);
        }
        if let Some(k) = key.filter(|k| *k != c.agent_id.as_bytes()) {
            let shown = String::from_utf8_lossy(&k[..k.len().min(MAX_NAMED_AGENT)]).into_owned();
            return refuse(c, Rejection::KeyMismatch { key: shown });
        }
        if c.issued_at
            > now
                .min(delivered)
                .saturating_add(self.settings.max_future_ms)
        {
            let at = crate::event::format_rfc3339_ms(c.issued_at);
            return refuse(c, Rejection::FromTheFuture(at));
        }
        // Valid until its signed expiry, but never longer after its issue than this reader's
        // `command_ttl` (itself at most a week): a signed "valid until 9999" or a command
        // issued years ago and published again now is no standing order.
        let expires = c
            .expires_at
            .min(c.issued_at.saturating_add(self.settings.command_ttl_ms));
        if delivered > expires {
            let at = crate::event::format_rfc3339_ms(expires);
            return refuse(c, Rejection::Expired(at));
        }
        if let Some(last) = self.last_command_at(&c.agent_id) {
            // At or before: two different commands issued in the same millisecond cannot be
            // ordered, so the later one read is refused (the one applied, read again, is not).
            if c.issued_at < last || (c.issued_at == last && !self.already_applied(&c)) {
                let why = Rejection::Stale {
                    issued: crate::event::format_rfc3339_ms(c.issued_at),
                    last: crate::event::format_rfc3339_ms(last),
                };
                return refuse(c, why);
            }
        }
        Ok(c)
    }

    /// When the last operator command applied to `agent`, or waiting for it, was issued, over
    /// the owned partitions.
    fn last_command_at(&self, agent: &str) -> Option<i64> {
        let waiting = self
            .pending
            .iter()
            .filter(|c| c.agent_id == agent)
            .map(|c| c.issued_at);
        self.parts
            .values()
            .filter_map(|p| p.engine.agent(agent))
            .filter_map(|a| a.profile.last_operator_command())
            .chain(waiting)
            .max()
    }

    /// Whether `c` is the command last applied to its agent, read again (issued at the same time
    /// and of the same kind), or is waiting already.
    fn already_applied(&self, c: &Command) -> bool {
        self.pending.iter().any(|p| p.command_id == c.command_id)
            || self
                .parts
                .values()
                .filter_map(|p| p.engine.agent(&c.agent_id))
                .filter_map(|a| a.profile.kill_history.last())
                .any(|e| {
                    e.at == c.issued_at
                        && matches!(
                            (e.kind, c.command),
                            (KillEventKind::ManualKill, Verb::Kill)
                                | (KillEventKind::Revive, Verb::Revive)
                        )
                })
    }

    /// Records in the ledger the dead letters the broker refused.
    pub fn record_lost(&mut self, lost: Vec<crate::posture::LostOutput>) {
        use crate::posture::MAX_LOST_KEPT;
        if lost.is_empty() {
            return;
        }
        self.ledger.dead_letters_lost += lost.len() as u64;
        self.ledger.lost.extend(lost);
        let cut = self.ledger.lost.len().saturating_sub(MAX_LOST_KEPT);
        self.ledger.lost.drain(..cut);
        self.since_checkpoint += 1;
    }

    /// Encodes the changed state of every owned partition with the offsets it reflects (call
    /// once every output so far is acknowledged); `now` (ms) dates the ledger.
    pub fn checkpoint(&mut self, now: i64) -> Result<Checkpoint, StoreError> {
        let topics = &self.settings.audit_topics;
        let stats: Vec<EngineStats> = self
            .parts
            .values()
            .map(|p| p.engine.stats().clone())
            .collect();
        let mut offsets = Vec::with_capacity(self.parts.len());
        let mut deltas = Vec::with_capacity(self.parts.len());
        for ((&(t, p), part), s) in self.parts.iter_mut().zip(&stats) {
            let topic = topics.get(t as usize).map_or("", String::as_str);
            offsets.push((topic.to_string(), p, part.next));
            let fleet = part.engine.fleet_state();
            let sessions = part.engine.take_session_changes();
            let (duplicates, duplicate_figures) = part.engine.take_duplicate_changes();
            deltas.push(PartitionDelta {
                topic,
                partition: p,
                next_offset: part.next,
                stats: s,
                fleet,
                agents: part.engine.take_dirty(),
                sessions,
                duplicates,
                duplicate_figures,
                caught_up: std::mem::take(&mut part.caught_up),
            });
        }
        let control: Vec<(i32, i64)> = self.control_next.iter().map(|(&p, &o)| (p, o)).collect();
        self.ledger.last_written = now;
        self.ledger.posture_snapshots =
            self.snapshots_before + self.metrics.posture_snapshots.load(Ordering::Relaxed);
        let mut changelog = Vec::new();
        let batch = checkpoint_batch(
            &deltas,
            &control,
            &self.pending,
            &self.raised,
            Some(&self.ledger),
            self.settings.changelog.then_some(&mut changelog),
        )?;
        drop(deltas);
        self.raised.clear();
        self.since_checkpoint = 0;
        Ok(Checkpoint {
            batch,
            offsets,
            changelog,
        })
    }
}

/// What decoding one record needs besides the partition's engine.
struct RecordContext<'f> {
    decoder: &'f Decoder,
    metrics: &'f Metrics,
    settings: &'f FoldSettings,
    /// The daemon's wall clock (ms).
    now: i64,
}

impl RecordContext<'_> {
    /// Decodes one record's payload into `events`: one event, or the spans of an OTLP request,
    /// all of them or none. Events dated too far ahead are refused; session bindings and other
    /// entries that are not tool calls are learnt from or skipped (counted), not kept; new agents
    /// beyond the partition's cap are refused.
    fn decode<'p>(
        &self,
        payload: &'p [u8],
        engine: &mut Engine,
        events: &mut Vec<AuditEvent<'p>>,
        run_new: &mut Option<HashSet<String>>,
        incidents: &mut Vec<Incident>,
    ) -> Result<(), DecodeError> {
        let before = events.len();
        let skipped = self.decoder.decode_into(payload, events)?;
        let limit = self.now.saturating_add(self.settings.max_future_ms);
        if let Some(ev) = events[before..].iter().find(|e| e.ts_ms > limit) {
            let err = DecodeError::FutureTimestamp {
                at: crate::event::format_rfc3339_ms(ev.ts_ms),
                now: crate::event::format_rfc3339_ms(self.now),
                allowed: humantime::format_duration(std::time::Duration::from_millis(
                    self.settings.max_future_ms.max(0) as u64,
                ))
                .to_string(),
            };
            events.truncate(before);
            return Err(err);
        }
        let count = |how: Resolution, n: u64| {
            self.metrics.identity[how.index()].fetch_add(n, Ordering::Relaxed);
        };
        count(Resolution::Skipped, skipped);
        let mut keep = before;
        for i in before..events.len() {
            let how = engine.resolve(&mut events[i]);
            count(how, 1);
            if how.is_tool_call() {
                events.swap(keep, i);
                keep += 1;
            }
        }
        events.truncate(keep);
        // Emitted with the run's incidents (held back the same way in a replay).
        engine.take_identity_incidents(incidents);
        let cap = self.settings.max_agents;
        if beyond_cap(engine, events, before, cap, run_new) {
            events.truncate(before);
            engine.count_refused_agent();
            engine.take_identity_incidents(incidents);
            return Err(DecodeError::AgentCap { cap });
        }
        Ok(())
    }

    /// Counts a record that did not decode, by kind.
    fn count_bad(&self, e: &DecodeError) {
        self.metrics.bad_events.fetch_add(1, Ordering::Relaxed);
        if let Some(i) = BAD_EVENT_KINDS.iter().position(|k| *k == e.kind()) {
            self.metrics.bad_by_kind[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The dead letter of record `r` of `topic`: a bounded copy of its key and payload, and why.
fn dead_letter(topic: &str, r: &Message, payload: &[u8], e: &DecodeError, now: i64) -> BadRecord {
    BadRecord {
        topic: topic.to_string(),
        partition: r.partition,
        offset: r.offset,
        key: r
            .key
            .as_deref()
            .map(|k| k[..k.len().min(DEAD_LETTER_MAX_KEY)].to_vec()),
        payload: payload[..payload.len().min(DEAD_LETTER_MAX_VALUE)].to_vec(),
        original_size: payload.len(),
        kind: e.kind(),
        error: e.to_string(),
        at: r.timestamp.unwrap_or(now),
    }
}

/// Observes a record's age on arrival (the broker's `timestamp` to `now`); a clock behind the
/// producer's would give a negative age: it counts as 0.
fn observe_age(metrics: &Metrics, timestamp: Option<i64>, now: i64) {
    if let Some(ts) = timestamp {
        let age = now.saturating_sub(ts).max(0);
        metrics.event_age.observe(age as f64 / 1000.0);
    }
}

/// Leaves out the events decoded from the record at `offset` (from `events[from..]`) whose agent
/// was restored ahead of it (they are in its state already), counting them; an agent whose
/// offset the partition reached is done with.
fn skip_restored(
    part: &mut Part,
    events: &mut Vec<AuditEvent<'_>>,
    from: usize,
    offset: i64,
    metrics: &Metrics,
) {
    let mut i = from;
    while i < events.len() {
        if part
            .skips
            .get(events[i].agent_id.as_ref())
            .is_some_and(|&until| offset < until)
        {
            events.remove(i);
            metrics.restore_skipped.fetch_add(1, Ordering::Relaxed);
        } else {
            i += 1;
        }
    }
    let next = offset + 1;
    if next < part.skips_until {
        return;
    }
    let done: Vec<String> = part
        .skips
        .iter()
        .filter(|(_, &until)| until <= next)
        .map(|(a, _)| a.clone())
        .collect();
    for a in done {
        part.skips.remove(&a);
        part.caught_up.push(a);
    }
    part.skips_until = part.skips.values().copied().min().unwrap_or(i64::MAX);
}

/// Processes `events`, applying the waiting operator `pending` commands in their place; returns
/// the commands applied. A command applies before its agent's first event (the kill keeps its
/// own time: a call made after it is activity after the kill, one made before it and delivered
/// late is not); while the partition is replayed (`quiet`), before the agent's first event at
/// or after the command's time, so a rebuild applies commands and events in the order they
/// happened. One event at a time while any command waits.
fn process_with_commands(
    engine: &mut Engine,
    events: &[AuditEvent<'_>],
    pending: &mut Vec<Command>,
    quiet: bool,
    out: &mut Vec<Incident>,
) -> Vec<Command> {
    let mut applied = Vec::new();
    if pending.is_empty() {
        engine.process_batch(events, out);
        return applied;
    }
    for ev in events {
        let agent = ev.agent_id.as_ref();
        if pending.iter().any(|c| c.agent_id == agent) {
            engine.admit(ev);
        }
        pending.retain(|c| {
            if c.agent_id != agent || (quiet && ev.ts_ms < c.issued_at) {
                return true;
            }
            if !reflected(engine, c) {
                apply(engine, c);
                applied.push(c.clone());
            }
            false
        });
        engine.process(ev, out);
    }
    applied
}

/// Adds what the engine counted during a run (re-deliveries, id conflicts, findings a fleet
/// shift explained) to the daemon's counters.
fn count_engine_figures(metrics: &Metrics, before: &EngineStats, after: &EngineStats) {
    for (counter, n) in [
        (&metrics.duplicates, after.duplicates - before.duplicates),
        (
            &metrics.id_conflicts,
            after.id_conflicts - before.id_conflicts,
        ),
        (
            &metrics.findings_explained,
            after.explained - before.explained,
        ),
    ] {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Whether the calls `events[from..]` (of one record) would take the partition beyond `cap`
/// agents, counting the new agents of the run accepted before (`run_new`, which gets this
/// record's when they fit). Far below the cap, nothing is looked up; the first time it is
/// near, the run's earlier new agents are gathered.
fn beyond_cap(
    engine: &Engine,
    events: &[AuditEvent<'_>],
    from: usize,
    cap: usize,
    run_new: &mut Option<HashSet<String>>,
) -> bool {
    if engine.agent_count().saturating_add(events.len()) < cap {
        return false;
    }
    let run_new = run_new.get_or_insert_with(|| {
        events[..from]
            .iter()
            .map(|e| e.agent_id.as_ref())
            .filter(|a| !engine.knows(a))
            .map(str::to_string)
            .collect()
    });
    let mut added: Vec<&str> = Vec::new();
    for ev in &events[from..] {
        let a = ev.agent_id.as_ref();
        if !engine.knows(a) && !run_new.contains(a) && !added.contains(&a) {
            added.push(a);
        }
    }
    if engine.agent_count() + run_new.len() + added.len() > cap {
        return true;
    }
    run_new.extend(added.into_iter().map(str::to_string));
    false
}

/// An empty buffer of events that may borrow from other records, reusing `v`'s allocation.
fn reuse<'a, 'b>(mut v: Vec<AuditEvent<'a>>) -> Vec<AuditEvent<'b>> {
    v.clear();
    // An empty vector's elements are never produced; collecting an `IntoIter` into a vector of
    // an element type of the same size and alignment reuses the allocation.
    v.into_iter()
        .map(|_| unreachable!("the vector is empty"))
        .collect()
}

/// Reads back from `store` the states of agents `ids` of `topic`/`partition`, out of memory in
/// `engine` (counted in `metrics`).
fn load_idle(
    store: Option<&crate::store::Store>,
    topic: &str,
    partition: i32,
    engine: &mut Engine,
    ids: &[&str],
    metrics: &Metrics,
) -> Result<(), FoldError> {
    let Some(store) = store else {
        // Agents leave memory only with a store to read them back from.
        return Ok(());
    };
    for st in store.load_agents(topic, partition, ids)? {
        if engine.reload(st) {
            metrics.agents_loaded.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// Whether the state of `c`'s agent in `engine` already holds `c` or a later operator command:
/// a partition taken over with state written where the command was applied (a waiting copy is
/// then dropped, not applied twice).
fn reflected(engine: &Engine, c: &Command) -> bool {
    engine
        .agent(&c.agent_id)
        .and_then(|a| a.profile.last_operator_command())
        .is_some_and(|last| last >= c.issued_at)
}

fn apply(engine: &mut Engine, c: &Command) {
    match c.command {
        Verb::Kill => engine.kill(&c.agent_id, c.issued_at),
        Verb::Revive => engine.revive(&c.agent_id, c.issued_at),
    };
}

/// The incident of a control record that was refused, identified by its place and content.
fn rejected_command(
    control_topic: &str,
    r: &Message,
    payload: &[u8],
    agent: String,
    why: &dyn std::fmt::Display,
) -> Incident {
    let at = r.timestamp.unwrap_or(0);
    let id = crate::control::command_id(&[
        b"rejected",
        &r.partition.to_le_bytes(),
        &r.offset.to_le_bytes(),
        payload,
    ]);
    let description = format!(
        "Rejected a control command for agent {agent:?} at {control_topic}:{}/{}: {why}.",
        r.partition, r.offset
    );
    let mut i = Incident::rule(
        IncidentType::RejectedCommand,
        id,
        agent,
        at,
        "commands",
        description,
    );
    i.event_id = format!("control:{}:{}", r.partition, r.offset);
    i
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::blueprint::{load_blueprint, Assignment as Assign};
    use crate::response::IncidentType;
    use crate::store::Store;
    use serde_json::json;

    pub(crate) const KEY: &[u8] = b"test-key";
    const T0: i64 = 1_764_000_000_000;
    /// The clock of the tests: after every call they make.
    const NOW: i64 = T0 + 7_200_000;

    /// Every agent on one blueprint where two calls of `x` in a row are a sequence and two
    /// violations kill.
    /// A fold's settings: one blueprint that kills on the second `x` → `x` sequence.
    pub(crate) fn settings() -> FoldSettings {
        let doc = json!({"name": "T", "mode": "block", "auto_kill_threshold": 2,
                         "anomaly": {"suspicious_sequences": [["x", "x"]]},
                         "learned": {"learning_period": 0}});
        let bp = load_blueprint("t", &doc).expect("blueprint");
        let set = BlueprintSet::from_blueprints(
            vec![bp],
            Assign {
                default: "t".into(),
                ..Assign::default()
            },
        )
        .expect("set");
        FoldSettings {
            audit_topics: vec!["audit".into()],
            control_topic: "control".into(),
            guardian_id: "g1".into(),
            signing_key: KEY.to_vec(),
            command_keys: vec![KEY.to_vec()],
            command_ttl_ms: crate::control::DEFAULT_TTL_MS,
            decoder: set.decoder_options(),
            blueprints: Arc::new(set),
            max_future_ms: 300_000,
            duplicates: crate::state::SeenSettings::default(),
            max_agents: crate::config::DEFAULT_MAX_AGENTS_PER_PARTITION,
            max_in_memory: None,
            changelog: false,
        }
    }

    fn fold() -> Fold {
        Fold::new(settings(), Arc::default(), Vec::new(), Ledger::default()).expect("fold")
    }

    fn owning(mut f: Fold, partitions: &[i32], quiet_below: i64) -> Fold {
        let list = partitions
            .iter()
            .map(|&p| PartitionAssignment {
                topic: 0,
                partition: p,
                start: 0,
                quiet_below,
                state: None,
                gap: None,
                skips: Default::default(),
                restored: None,
            })
            .collect();
        f.assign(list, T0, &mut Vec::new());
        f
    }

    /// Partition 0 of `store`, assigned with its stored state, as after a restart.
    fn restored(store: &Store) -> Vec<PartitionAssignment> {
        let (next, state) = store
            .load_partition("audit", 0)
            .expect("load")
            .expect("stored");
        vec![PartitionAssignment {
            topic: 0,
            partition: 0,
            start: next,
            quiet_below: 0,
            state: Some(state),
            gap: None,
            skips: Default::default(),
            restored: None,
        }]
    }

    fn record(partition: i32, offset: i64, payload: &[u8]) -> Message {
        Message {
            topic: 0,
            partition,
            offset,
            key: Some(b"k".to_vec()),
            payload: Some(payload.to_vec()),
            timestamp: Some(T0),
        }
    }

    fn call(partition: i32, offset: i64, agent: &str, tool: &str) -> Message {
        call_at(partition, offset, T0 + offset * 1000, agent, tool)
    }

    fn call_at(partition: i32, offset: i64, ts: i64, agent: &str, tool: &str) -> Message {
        let line = json!({"event_id": format!("e{partition}-{offset}"),
                          "timestamp": crate::event::format_rfc3339_ms(ts),
                          "agent_id": agent, "tool_name": tool, "outcome": "ALLOW"});
        record(partition, offset, line.to_string().as_bytes())
    }

    /// A control record of `c`, keyed by its agent as `guardian kill` does.
    fn control(offset: i64, c: &Command) -> Message {
        let mut r = record(0, offset, &c.to_json().expect("json"));
        r.key = Some(c.agent_id.as_bytes().to_vec());
        r.timestamp = Some(NOW);
        r
    }

    fn kinds(out: &[Output]) -> Vec<String> {
        out.iter()
            .map(|o| match o {
                Output::Incident(i) => format!("incident {} {}", i.agent_id, i.kind.as_str()),
                Output::Kill(c) => format!("kill {}", c.agent_id),
                Output::Applied(c) => format!("applied {:?} {}", c.command, c.agent_id),
                Output::DeadLetter(b) => format!("dead {}@{} {}", b.partition, b.offset, b.kind),
            })
            .collect()
    }

    /// A partition's calls: agent `a` calls `x` four times (two sequences: a kill), `b` calls `y`;
    /// an hour later `a` calls `z` (the sequences are final by then).
    /// A partition's calls: agent `a` calls `x` four times (two sequences: a kill), `b` calls `y`;
    /// an hour later `a` calls `z` (the sequences are final by then).
    pub(crate) fn calls(partition: i32) -> Vec<Message> {
        let tools = [
            ("a", "x"),
            ("b", "y"),
            ("a", "x"),
            ("b", "y"),
            ("a", "x"),
            ("a", "x"),
        ];
        let mut v: Vec<Message> = tools
            .iter()
            .enumerate()
            .map(|(i, (agent, tool))| call(partition, i as i64, agent, tool))
            .collect();
        v.push(call_at(partition, 6, T0 + 3_600_000, "a", "z"));
        v
    }

    #[test]
    fn good_records_raise_incidents_and_a_signed_kill_in_order() {
        let mut f = owning(fold(), &[0], 0);
        let mut out = Vec::new();
        f.audit(&calls(0), NOW, &mut out).expect("fold");
        let k = kinds(&out);
        assert!(
            k.iter().any(|s| s == "kill a"),
            "a kill for the agent that repeated the sequence: {k:?}"
        );
        assert!(
            k.iter().all(|s| !s.contains(" b ")),
            "b did nothing wrong: {k:?}"
        );
        let kill = out.iter().find_map(|o| match o {
            Output::Kill(c) => Some(c.clone()),
            _ => None,
        });
        let kill = kill.expect("kill");
        let verified = Command::parse_verified(&kill.to_json().expect("json"), &[KEY]);
        assert!(
            verified.is_ok(),
            "the kill is signed with the key: {verified:?}"
        );
        // Its incident comes before it.
        let at_kill = k.iter().position(|s| s == "kill a").unwrap_or(0);
        assert!(k[..at_kill].iter().any(|s| s.starts_with("incident a")));
        assert_eq!(f.metrics.events.load(Ordering::Relaxed), 7);
        assert_eq!(f.since_checkpoint(), 7);
    }

    #[test]
    fn a_quiet_partition_lets_its_time_pass_and_concludes_what_waited_for_it() {
        // The same calls without the later one that makes the sequences final.
        let mut f = owning(fold(), &[0], 0);
        let mut out = Vec::new();
        let mut records = calls(0);
        records.pop();
        f.audit(&records, NOW, &mut out).expect("fold");
        assert!(
            !kinds(&out).iter().any(|s| s.starts_with("incident a")),
            "{:?}",
            kinds(&out)
        );
        // Not yet quiet.
        f.pass_quiet_time(NOW + QUIET_AFTER_MS - 1, &mut out)
            .expect("pass");
        assert!(!kinds(&out).iter().any(|s| s.starts_with("incident a")));
        let checkpointed = f.since_checkpoint();
        f.pass_quiet_time(NOW + QUIET_AFTER_MS, &mut out)
            .expect("pass");
        let k = kinds(&out);
        assert!(k.iter().any(|s| s.starts_with("incident a")), "{k:?}");
        assert!(k.iter().any(|s| s == "kill a"), "{k:?}");
        assert!(
            f.since_checkpoint() > checkpointed,
            "the change is checkpointed"
        );
    }

    /// An OTLP/JSON request of `(span id, start, operation)` spans of one trace whose agent span
    /// names `a`.
    fn otlp(offset: i64, spans: &[(&str, i64, &str)]) -> Message {
        let spans: Vec<_> = spans
            .iter()
            .map(|(id, ts, op)| {
                json!({"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": id, "name": op,
                       "startTimeUnixNano": (*ts as u64 * 1_000_000).to_string(),
                       "attributes": [{"key": "gen_ai.operation.name", "value": {"stringValue": op}},
                                      {"key": "gen_ai.tool.name", "value": {"stringValue": "x"}},
                                      {"key": "gen_ai.agent.id", "value": {"stringValue": if *op == "invoke_agent" { "a" } else { "" }}}]})
            })
            .collect();
        let req = json!({"resourceSpans": [{"resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": "svc"}}]}, "scopeSpans": [{"spans": spans}]}]});
        record(0, offset, req.to_string().as_bytes())
    }

    /// A message of spans is folded as its tool calls, all or none: one span dated too far
    /// ahead dead-letters the whole message.
    #[test]
    fn an_otlp_request_gives_its_tool_calls_or_is_dead_lettered_whole() {
        let mut f = owning(fold(), &[0], 0);
        let mut out = Vec::new();
        let good = otlp(
            0,
            &[
                ("s1", T0, "execute_tool"),
                ("s2", T0 + 1000, "execute_tool"),
                ("s0", T0, "invoke_agent"),
                ("c", T0, "chat"),
            ],
        );
        f.audit(&[good], NOW, &mut out).expect("fold");
        assert_eq!(
            f.metrics.events.load(Ordering::Relaxed),
            2,
            "the two tool calls"
        );
        let counted: Vec<u64> = f
            .metrics
            .identity
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        // named, resolved, unresolved, bound, skipped, refused, reattributed
        assert_eq!(counted, [0, 2, 0, 1, 1, 0, 0]);
        let far = NOW + 3_600_000;
        let bad = otlp(
            1,
            &[
                ("s3", T0 + 2000, "execute_tool"),
                ("s4", far, "execute_tool"),
            ],
        );
        let mut out = Vec::new();
        f.audit(&[bad], NOW, &mut out).expect("fold");
        assert_eq!(kinds(&out), ["dead 0@1 future_timestamp"]);
        assert_eq!(f.metrics.events.load(Ordering::Relaxed), 2, "no span of it");
        // The two calls of the good request were `a`'s: once final, they are its sequence.
        let mut out = Vec::new();
        f.audit(&[call_at(0, 2, T0 + 3_600_000, "a", "z")], NOW, &mut out)
            .expect("fold");
        assert!(
            kinds(&out)
                .iter()
                .any(|k| k == "incident a suspicious_sequence"),
            "{:?}",
            kinds(&out)
        );
    }

    #[test]
    fn a_batch_gives_the_same_outputs_as_its_records_one_by_one() {
        let mut recs = calls(0);
        recs.extend(calls(1));
        recs.insert(3, record(0, 100, b"{not json"));
        let mut whole = owning(fold(), &[0, 1], 0);
        let mut one_by_one = owning(fold(), &[0, 1], 0);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        whole.audit(&recs, NOW, &mut a).expect("fold");
        for r in &recs {
            one_by_one
                .audit(std::slice::from_ref(r), NOW, &mut b)
                .expect("fold");
        }
        let sorted = |o: &[Output]| {
            let mut k = kinds(o);
            k.sort();
            k
        };
        assert_eq!(sorted(&a), sorted(&b));
        assert!(!a.is_empty());
    }

    #[test]
    fn a_bad_record_is_dead_lettered_with_its_reason_and_the_partition_goes_on() {
        let mut f = owning(fold(), &[0], 0);
        let mut recs = calls(0);
        recs.insert(1, record(0, 50, b"{\"agent_id\": 3}"));
        let mut out = Vec::new();
        f.audit(&recs[..2], NOW, &mut out).expect("fold");
        let dead: Vec<&BadRecord> = out
            .iter()
            .filter_map(|o| match o {
                Output::DeadLetter(b) => Some(b),
                _ => None,
            })
            .collect();
        assert_eq!(dead.len(), 1);
        assert_eq!((dead[0].partition, dead[0].offset), (0, 50));
        assert_eq!(dead[0].payload, b"{\"agent_id\": 3}");
        assert!(!dead[0].error.is_empty());
        assert_eq!(f.metrics.bad_events.load(Ordering::Relaxed), 1);
        // Offsets below the bad one's are now behind the partition: skipped as already folded.
        let mut later = Vec::new();
        f.audit(&recs[2..], NOW, &mut later).expect("fold");
        assert_eq!(
            f.metrics.events.load(Ordering::Relaxed),
            1,
            "records behind `next` are skipped"
        );
    }

    /// Outputs derived from hostile records stay bounded: a dead letter keeps a prefix of an
    /// oversized payload and key with the original size; a forged command naming a 1 MiB agent
    /// gives an incident that names a prefix of it.
    #[test]
    fn outputs_of_oversized_records_are_bounded() {
        let mut s = settings();
        s.decoder.max_event_bytes = 4 << 20;
        let mut f = owning(
            Fold::new(s, Arc::default(), Vec::new(), Ledger::default()).expect("fold"),
            &[0],
            0,
        );
        let mut big = record(0, 0, &vec![b'x'; 2 << 20]);
        big.key = Some(vec![b'k'; 100_000]);
        let mut out = Vec::new();
        f.audit(&[big], NOW, &mut out).expect("fold");
        match out.as_slice() {
            [Output::DeadLetter(b)] => {
                assert_eq!(b.payload.len(), DEAD_LETTER_MAX_VALUE);
                assert_eq!(b.original_size, 2 << 20);
                assert_eq!(b.key.as_ref().map(Vec::len), Some(DEAD_LETTER_MAX_KEY));
                assert!(b.error.len() < 200, "{}", b.error);
            }
            other => panic!("{other:?}"),
        }
        let mut forged = Command::manual(Verb::Kill, &"a".repeat(1 << 20), "r", T0, "op");
        forged.signature = "00".repeat(32);
        out.clear();
        f.control(&control(0, &forged), NOW, &mut out)
            .expect("control");
        match out.as_slice() {
            [Output::Incident(i)] => {
                assert!(i.agent_id.len() < 600, "{}", i.agent_id.len());
                assert!(i.agent_id.ends_with("(1048576 bytes)"));
                let json = serde_json::to_vec(i).expect("json");
                assert!(json.len() < 4096, "{}", json.len());
            }
            other => panic!("{:?}", kinds(other)),
        }
    }

    /// An event stamped far ahead of the clock is dead-lettered and does not move the agent's
    /// time: the agent's later calls are judged as usual (here: still killed on its sequence).
    #[test]
    fn an_event_from_the_future_is_dead_lettered_and_blinds_nothing() {
        let mut f = owning(fold(), &[0], 0);
        let mut out = Vec::new();
        f.audit(
            &[call_at(0, 0, 253_402_300_799_000, "a", "x")],
            NOW,
            &mut out,
        )
        .expect("fold");
        assert_eq!(kinds(&out), vec!["dead 0@0 future_timestamp"]);
        assert_eq!(f.metrics.bad_by_kind[6].load(Ordering::Relaxed), 1);
        out.clear();
        let later: Vec<Message> = calls(0)
            .into_iter()
            .map(|mut r| {
                r.offset += 10;
                r
            })
            .collect();
        f.audit(&later, NOW, &mut out).expect("fold");
        assert!(
            kinds(&out).iter().any(|k| k == "kill a"),
            "{:?}",
            kinds(&out)
        );
        // Up to five minutes ahead is clock skew, not forgery.
        let mut g = owning(fold(), &[0], 0);
        out.clear();
        g.audit(&[call_at(0, 0, NOW + 299_000, "b", "y")], NOW, &mut out)
            .expect("fold");
        assert!(out.is_empty(), "{:?}", kinds(&out));
    }

    #[test]
    fn records_below_the_quiet_mark_change_the_state_but_publish_nothing() {
        let mut f = owning(fold(), &[0], 7);
        let mut out = Vec::new();
        f.audit(&calls(0), NOW, &mut out).expect("fold");
        assert!(
            out.is_empty(),
            "replayed history is quiet: {:?}",
            kinds(&out)
        );
        assert!(f.metrics.suppressed.load(Ordering::Relaxed) > 0);
        assert_eq!(f.figures().1, 1, "the kill is in the state all the same");
        f.audit(&[record(0, 7, b"nope")], NOW, &mut out)
            .expect("fold");
        assert_eq!(kinds(&out), vec!["dead 0@7 not_json"]);
    }

    #[test]
    fn records_of_partitions_not_owned_are_skipped() {
        let mut f = owning(fold(), &[0], 0);
        let mut out = Vec::new();
        f.audit(&calls(7), NOW, &mut out).expect("fold");
        assert!(out.is_empty());
        assert_eq!(f.since_checkpoint(), 0);
    }

    #[test]
    fn agents_out_of_memory_are_read_back_for_their_events_and_commands() {
        // Two folds of the same records over two partitions, one keeping every agent, one at
        // most 3 of 16 in memory (agents leave once a checkpoint is on disk): the same outputs,
        // the agent that attacks after an idle stretch is killed, and an operator's kill and
        // revive of an agent out of memory apply.
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path()).expect("store");
        let mut whole = owning(fold(), &[0, 1], 0);
        let mut s = settings();
        s.max_in_memory = Some(3);
        let metrics = Arc::new(Metrics::default());
        let mut bounded =
            Fold::new(s, metrics.clone(), Vec::new(), Ledger::default()).expect("fold");
        bounded.set_store(store.clone());
        let mut bounded = owning(bounded, &[0, 1], 0);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let mut offsets = [0i64; 2];
        let mut step = |whole: &mut Fold, bounded: &mut Fold, records: Vec<Message>| {
            whole.audit(&records, NOW, &mut a).expect("fold");
            bounded.audit(&records, NOW, &mut b).expect("fold");
            store
                .write(bounded.checkpoint(NOW).expect("checkpoint").batch)
                .expect("write");
            bounded.evict();
        };
        // Every agent calls `y` now and then, 8 on each partition.
        let mut t = T0;
        for round in 0..4 {
            for i in 0..16 {
                let p = i % 2;
                let o = offsets[p as usize];
                offsets[p as usize] += 1;
                t += 1_000;
                let r = call_at(p, o, t, &format!("agent-{i}"), "y");
                step(&mut whole, &mut bounded, vec![r]);
                assert!(bounded.agents_in_memory() <= 4, "round {round}");
            }
        }
        assert!(metrics.agents_unloaded.load(Ordering::Relaxed) > 16);
        assert!(metrics.agents_loaded.load(Ordering::Relaxed) > 16);
        assert_eq!(
            whole.figures(),
            bounded.figures(),
            "agents, killed, learning"
        );
        // agent-5 (partition 1), out of memory by now, calls `x` four times: a kill (once
        // its sequences are final, at its call an hour later).
        assert!(bounded.parts[&(0, 1)].engine.is_idle("agent-5"));
        let mut burst: Vec<Message> = (0..4)
            .map(|k| call_at(1, offsets[1] + k, t + 1_000 * (k + 1), "agent-5", "x"))
            .collect();
        burst.push(call_at(1, offsets[1] + 4, t + 3_600_000, "agent-5", "z"));
        step(&mut whole, &mut bounded, burst);
        assert!(
            kinds(&b).contains(&"kill agent-5".to_string()),
            "{:?}",
            kinds(&b)
        );
        // An operator kills agent-2 (partition 0), out of memory, then revives it.
        assert!(bounded.parts[&(0, 0)].engine.is_idle("agent-2"));
        let kill = Command::manual(Verb::Kill, "agent-2", "test", t + 10_000, "op")
            .sign(KEY)
            .expect("sign");
        let revive = Command::manual(Verb::Revive, "agent-2", "test", t + 20_000, "op")
            .sign(KEY)
            .expect("sign");
        for (o, c) in [(0, &kill), (1, &revive)] {
            whole.control(&control(o, c), NOW, &mut a).expect("control");
            bounded
                .control(&control(o, c), NOW, &mut b)
                .expect("control");
            store
                .write(bounded.checkpoint(NOW).expect("checkpoint").batch)
                .expect("write");
            bounded.evict();
        }
        assert!(kinds(&b).contains(&"applied Kill agent-2".to_string()));
        assert!(kinds(&b).contains(&"applied Revive agent-2".to_string()));
        assert!(
            bounded.pending.is_empty(),
            "no command waits for a known agent"
        );
        assert_eq!(kinds(&a), kinds(&b));
        assert_eq!(whole.figures(), bounded.figures());
        // And what is stored of it is its whole state, not the husk it left in memory.
        let stored = store
            .agent("audit", 0, "agent-2")
            .expect("read")
            .expect("stored");
        let kept = whole.parts[&(0, 0)].engine.agent("agent-2").expect("kept");
        assert_eq!(&stored, kept);
    }

    #[test]
    fn operator_commands_apply_to_known_agents_wait_for_unknown_ones_and_bad_ones_are_incidents() {
        let mut f = owning(fold(), &[0], 0);
        let mut out = Vec::new();
        f.audit(&calls(0)[..2], NOW, &mut out).expect("fold");
        out.clear();
        let kill_b = Command::manual(Verb::Kill, "b", "test", T0, "op")
            .sign(KEY)
            .expect("sign");
        f.control(&control(0, &kill_b), NOW, &mut out)
            .expect("control");
        assert_eq!(kinds(&out), vec!["applied Kill b"]);
        // Not seen yet: waits for the agent's first event, whatever its time; read again while
        // it waits, it is not queued twice.
        let kill_c = Command::manual(Verb::Kill, "c", "test", T0 + 10_000, "op")
            .sign(KEY)
            .expect("sign");
        out.clear();
        f.control(&control(1, &kill_c), NOW, &mut out)
            .expect("control");
        f.control(&control(1, &kill_c), NOW, &mut out)
            .expect("control");
        assert!(out.is_empty());
        assert_eq!(f.metrics.commands_pending.load(Ordering::Relaxed), 1);
        f.audit(&[call(0, 5, "c", "q")], NOW, &mut out)
            .expect("fold");
        assert_eq!(kinds(&out), vec!["applied Kill c"]);
        assert_eq!(f.metrics.commands_pending.load(Ordering::Relaxed), 0);
        // The call was made before the kill: not activity after it; the next one after it is.
        out.clear();
        f.audit(&[call(0, 15, "c", "q")], NOW, &mut out)
            .expect("fold");
        assert!(
            out.iter().any(
                |o| matches!(o, Output::Incident(i) if i.kind == IncidentType::ActivityAfterKill && i.agent_id == "c")
            ),
            "{:?}",
            kinds(&out)
        );
        // Killed while unseen, and its very first call comes after the kill: the kill applies
        // before that call, which is activity after the kill.
        let kill_d = Command::manual(Verb::Kill, "d", "test", T0 + 10_000, "op")
            .sign(KEY)
            .expect("sign");
        out.clear();
        f.control(&control(2, &kill_d), NOW, &mut out)
            .expect("control");
        assert!(out.is_empty(), "{:?}", kinds(&out));
        f.audit(&[call(0, 16, "d", "q")], NOW, &mut out)
            .expect("fold");
        assert!(kinds(&out).contains(&"applied Kill d".to_string()));
        assert!(
            out.iter().any(
                |o| matches!(o, Output::Incident(i) if i.kind == IncidentType::ActivityAfterKill && i.agent_id == "d")
            ),
            "{:?}",
            kinds(&out)
        );
        // Forged: a rejected-command incident naming the agent.
        let mut forged = Command::manual(Verb::Revive, "b", "test", T0, "op");
        forged.signature = "00".repeat(32);
        out.clear();
        f.control(&control(3, &forged), NOW, &mut out)
            .expect("control");
        assert_eq!(kinds(&out), vec!["incident b rejected_command"]);
        assert_eq!(f.metrics.commands_rejected.load(Ordering::Relaxed), 1);
        assert_eq!(f.metrics.commands_applied.load(Ordering::Relaxed), 3);
        // An agent killed by an operator that acts again is reported.
        out.clear();
        f.audit(&[call(0, 20, "b", "y")], NOW, &mut out)
            .expect("fold");
        assert!(
            out.iter().any(
                |o| matches!(o, Output::Incident(i) if i.kind == IncidentType::ActivityAfterKill)
            ),
            "{:?}",
            kinds(&out)
        );
    }

    /// A signed command is obeyed once, in order, for the agent its message is keyed by: a
    /// replayed kill after a revive, an old revive after a kill, a mismatched key, a command from
    /// the future and an upper-case signature are refused with their reason; the same command
    /// read again (a restart) is ignored quietly.
    #[test]
    fn signed_commands_are_refused_when_replayed_out_of_order_misaddressed_or_from_the_future() {
        let mut f = owning(fold(), &[0], 0);
        let mut out = Vec::new();
        f.audit(&calls(0)[..2], NOW, &mut out).expect("fold");
        let cmd = |v: Verb, at: i64| {
            Command::manual(v, "b", "test", at, "op")
                .sign(KEY)
                .expect("sign")
        };
        let (kill1, revive, kill2) = (
            cmd(Verb::Kill, T0 + 100_000),
            cmd(Verb::Revive, T0 + 200_000),
            cmd(Verb::Kill, T0 + 300_000),
        );
        let mut offset = 0;
        let mut send = |f: &mut Fold, r: Message| {
            let mut out = Vec::new();
            let mut r = r;
            r.offset = offset;
            offset += 1;
            f.control(&r, NOW, &mut out).expect("control");
            kinds(&out)
        };
        assert_eq!(send(&mut f, control(0, &kill1)), vec!["applied Kill b"]);
        assert_eq!(
            send(&mut f, control(0, &kill1)),
            Vec::<String>::new(),
            "read again"
        );
        assert_eq!(send(&mut f, control(0, &revive)), vec!["applied Revive b"]);
        assert_eq!(
            send(&mut f, control(0, &kill1)),
            vec!["incident b rejected_command"]
        );
        assert_eq!(send(&mut f, control(0, &kill2)), vec!["applied Kill b"]);
        assert_eq!(
            send(&mut f, control(0, &revive)),
            vec!["incident b rejected_command"]
        );
        let mut wrong_key = control(0, &cmd(Verb::Revive, T0 + 400_000));
        wrong_key.key = Some(b"a".to_vec());
        assert_eq!(send(&mut f, wrong_key), vec!["incident b rejected_command"]);
        let future = cmd(Verb::Revive, NOW + 3_600_000);
        assert_eq!(
            send(&mut f, control(0, &future)),
            vec!["incident b rejected_command"]
        );
        let mut upper = cmd(Verb::Revive, T0 + 500_000);
        upper.signature = upper.signature.to_uppercase();
        assert_eq!(
            send(&mut f, control(0, &upper)),
            vec!["incident b rejected_command"]
        );
        assert_eq!(f.metrics.commands_rejected.load(Ordering::Relaxed), 5);
        assert_eq!(f.figures().1, 1, "b stays killed by the second kill");
    }

    /// A command read before the partition of its agent is assigned (a kill published while the
    /// daemon was stopped, read at start-up) applies when the partition is taken over with its
    /// stored state, is checkpointed, and a later restart neither loses nor repeats it.
    #[test]
    fn a_command_read_before_its_partition_is_assigned_applies_at_assignment_once() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path()).expect("store");
        let mut first = owning(fold(), &[0], 0);
        first
            .audit(&calls(0)[..2], NOW, &mut Vec::new())
            .expect("fold");
        store
            .write(first.checkpoint(T0).expect("checkpoint").batch)
            .expect("write");
        drop(first);

        let mut second = fold();
        let kill = Command::manual(Verb::Kill, "b", "stopped", NOW - 1_000, "op")
            .sign(KEY)
            .expect("sign");
        let mut out = Vec::new();
        second
            .control(&control(0, &kill), NOW, &mut out)
            .expect("control");
        assert!(out.is_empty(), "no partition yet: {:?}", kinds(&out));
        assert_eq!(second.metrics.commands_pending.load(Ordering::Relaxed), 1);
        second.assign(restored(&store), NOW, &mut out);
        assert_eq!(kinds(&out), vec!["applied Kill b"]);
        assert_eq!(second.metrics.commands_pending.load(Ordering::Relaxed), 0);
        assert!(
            second.since_checkpoint() > 0,
            "the change is to be checkpointed"
        );
        store
            .write(second.checkpoint(NOW).expect("checkpoint").batch)
            .expect("write");
        drop(second);

        let mut third = fold();
        third.assign(restored(&store), NOW, &mut out);
        assert_eq!(third.figures().1, 1, "b is still killed");
        let history = |f: &Fold| {
            f.parts
                .values()
                .filter_map(|p| p.engine.agent("b"))
                .map(|a| a.profile.kill_history.len())
                .sum::<usize>()
        };
        assert_eq!(history(&third), 1, "killed once");
        // The control topic's tail read again after a crash: not applied twice.
        out.clear();
        third
            .control(&control(0, &kill), NOW, &mut out)
            .expect("control");
        assert!(out.is_empty(), "{:?}", kinds(&out));
        assert_eq!(history(&third), 1);
        // Another instance read the command while it did not own the partition (it waits
        // there), then takes the partition over with state that already holds it: dropped.
        let mut other = fold();
        other
            .control(&control(0, &kill), NOW, &mut out)
            .expect("control");
        assert_eq!(other.metrics.commands_pending.load(Ordering::Relaxed), 1);
        out.clear();
        other.assign(restored(&store), NOW, &mut out);
        assert!(out.is_empty(), "{:?}", kinds(&out));
        assert_eq!(history(&other), 1, "not applied twice");
        assert_eq!(other.metrics.commands_pending.load(Ordering::Relaxed), 0);
    }

    /// Commands are refused once expired, accepted under a key of a rotation, and a different
    /// command issued in the same millisecond as the last applied one cannot be ordered.
    #[test]
    fn expired_commands_are_refused_and_previous_keys_still_verify() {
        const OLD: &[u8] = b"old-key-of-the-rotation";
        let mut s = settings();
        s.command_keys.push(OLD.to_vec());
        let mut f = Fold::new(s, Arc::default(), Vec::new(), Ledger::default()).expect("fold");
        f = owning(f, &[0], 0);
        f.audit(&calls(0)[..2], NOW, &mut Vec::new()).expect("fold");
        let mut out = Vec::new();
        let expired = Command::manual(Verb::Kill, "b", "late", T0, "op")
            .valid_for(T0, 60_000)
            .sign(KEY)
            .expect("sign");
        f.control(&control(0, &expired), NOW, &mut out)
            .expect("control");
        assert_eq!(kinds(&out), vec!["incident b rejected_command"]);
        let Some(Output::Incident(i)) = out.first() else {
            unreachable!()
        };
        assert!(i.description.contains("expired at"), "{}", i.description);
        // Signed valid until 9999, or valid from now but issued a long time ago: no longer
        // than this reader's command_ttl after its issue.
        let ttl = settings().command_ttl_ms;
        for (issued, why) in [
            (NOW - ttl - 1, "issued a ttl ago"),
            (T0 - 10 * 365 * 86_400_000, "ten years ago"),
        ] {
            out.clear();
            let mut forever = Command::manual(Verb::Kill, "b", why, issued, "op");
            forever.expires_at = crate::event::MAX_TIMESTAMP_MS;
            f.control(
                &control(0, &forever.sign(KEY).expect("sign")),
                NOW,
                &mut out,
            )
            .expect("control");
            assert_eq!(kinds(&out), vec!["incident b rejected_command"], "{why}");
        }
        out.clear();
        let by_old = Command::manual(Verb::Kill, "b", "rotation", NOW - 5_000, "op")
            .sign(OLD)
            .expect("sign");
        f.control(&control(1, &by_old), NOW, &mut out)
            .expect("control");
        assert_eq!(kinds(&out), vec!["applied Kill b"]);
        out.clear();
        let same_ms = Command::manual(Verb::Revive, "b", "same", NOW - 5_000, "op")
            .sign(KEY)
            .expect("sign");
        f.control(&control(2, &same_ms), NOW, &mut out)
            .expect("control");
        assert_eq!(kinds(&out), vec!["incident b rejected_command"]);
        assert_eq!(f.figures().1, 1);
    }

    #[test]
    fn a_checkpoint_in_the_middle_then_a_restart_gives_the_outputs_of_one_run() {
        let recs = calls(0);
        let mut once = owning(fold(), &[0], 0);
        let mut expected = Vec::new();
        once.audit(&recs[..3], NOW, &mut Vec::new()).expect("fold");
        once.audit(&recs[3..], NOW, &mut expected).expect("fold");

        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path()).expect("store");
        let mut first = owning(fold(), &[0], 0);
        first.audit(&recs[..3], NOW, &mut Vec::new()).expect("fold");
        let cp = first.checkpoint(T0).expect("checkpoint");
        assert_eq!(cp.offsets, vec![("audit".to_string(), 0, 3)]);
        store.write(cp.batch).expect("write");
        drop(first);

        let stored = restored(&store);
        assert_eq!(stored[0].start, 3);
        let mut second = fold();
        second.assign(stored, T0, &mut Vec::new());
        let mut got = Vec::new();
        // The broker hands the whole log again: what the state holds is skipped.
        second.audit(&recs, NOW, &mut got).expect("fold");
        assert_eq!(kinds(&got), kinds(&expected));
        assert!(!got.is_empty());
        let ids = |o: &[Output]| {
            o.iter()
                .filter_map(|o| match o {
                    Output::Incident(i) => Some(i.incident_id.clone()),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&got), ids(&expected), "the same deterministic ids");
    }

    /// A partition restored from a changelog whose last checkpoint was cut short (an agent's
    /// newer state, no meta closing it): the replay from the last finished checkpoint leaves
    /// that agent's events below its mark alone, so every agent ends as in one run, and the
    /// next checkpoint drops the mark.
    #[test]
    fn a_restore_past_a_cut_checkpoint_counts_no_event_twice() {
        let recs: Vec<Message> = (0..12)
            .map(|o| call(0, o, if o % 3 == 0 { "p" } else { "q" }, "t"))
            .collect();
        let mut once = owning(fold(), &[0], 0);
        once.audit(&recs, NOW, &mut Vec::new()).expect("fold");

        let with_log = || {
            let s = FoldSettings {
                changelog: true,
                ..settings()
            };
            Fold::new(s, Arc::default(), Vec::new(), Ledger::default()).expect("fold")
        };
        let (d1, d2) = (
            tempfile::tempdir().expect("dir"),
            tempfile::tempdir().expect("dir"),
        );
        let (src, dst) = (
            Store::open(d1.path()).expect("store"),
            Store::open(d2.path()).expect("store"),
        );
        let mut first = owning(with_log(), &[0], 0);
        first.audit(&recs[..4], NOW, &mut Vec::new()).expect("fold");
        let cp = first.checkpoint(T0).expect("checkpoint");
        src.write(cp.batch).expect("write");
        // The partition started from nothing with the changelog on: its seed was the mark.
        let mut log = vec![crate::store::ChangelogRecord {
            partition: 0,
            key: crate::store::mark_key("audit", 0).into_bytes(),
            value: Some(b"changelog".to_vec()),
            checkpoint: 0,
        }];
        log.extend(cp.changelog);
        first
            .audit(&recs[4..9], NOW, &mut Vec::new())
            .expect("fold");
        let mut cut = first.checkpoint(T0).expect("checkpoint").changelog;
        assert!(cut.pop().is_some_and(|m| m.key.starts_with(b"m/")));
        log.extend(cut);

        let mut r = dst.begin_restore("audit", 0).expect("restore");
        for rec in &log {
            r.apply(&rec.key, rec.value.as_deref(), rec.checkpoint)
                .expect("apply");
        }
        let restored_from = r.finish().expect("finish").expect("a finished checkpoint");
        assert_eq!(restored_from.next_offset, 4);
        assert_eq!(
            restored_from.ahead, 2,
            "both agents changed in the cut checkpoint"
        );
        let mut assignment = restored(&dst);
        assignment[0].skips = dst.skips("audit", 0).expect("skips");
        let metrics = Arc::new(Metrics::default());
        let mut second =
            Fold::new(settings(), metrics.clone(), Vec::new(), Ledger::default()).expect("fold");
        second.assign(assignment, T0, &mut Vec::new());
        second.audit(&recs, NOW, &mut Vec::new()).expect("fold");
        for a in ["p", "q"] {
            assert_eq!(
                second.parts[&(0, 0)].engine.agent(a),
                once.parts[&(0, 0)].engine.agent(a),
                "agent {a}"
            );
        }
        assert_eq!(metrics.restore_skipped.load(Ordering::Relaxed), 5);
        dst.write(second.checkpoint(T0).expect("checkpoint").batch)
            .expect("write");
        assert!(dst.skips("audit", 0).expect("skips").is_empty());
    }

    /// Operator kills and revives of a known, an automatically killed and a re-killed agent;
    /// then a `state rebuild` (the control topic read again from its start, below its mark,
    /// before the audit log is replayed) and a lost disk (read again with no mark): each time the
    /// statuses and kill histories equal those before, the rebuild publishes nothing again, a
    /// killed agent's next call is activity after the kill, and old commands published again are
    /// refused.
    #[test]
    fn operator_intent_survives_a_rebuild_and_a_lost_disk() {
        let cmd = |v: Verb, agent: &str, at: i64| {
            Command::manual(v, agent, "op", at, "op")
                .sign(KEY)
                .expect("sign")
        };
        let delivered = |offset: i64, c: &Command| {
            let mut r = control(offset, c);
            r.timestamp = Some(c.issued_at + 1_000);
            r
        };
        let h = 3_600_000;
        let commands = [
            cmd(Verb::Revive, "a", T0 + h + 100_000),
            cmd(Verb::Kill, "b", T0 + h + 200_000),
            cmd(Verb::Revive, "b", T0 + h + 300_000),
            cmd(Verb::Kill, "b", T0 + h + 400_000),
        ];
        let mut audit = calls(0);
        let after = |offset: i64, ms: i64, agent: &str| call_at(0, offset, T0 + h + ms, agent, "y");
        // Each command, then a call of its agent after it (none after the last one).
        let mut live: Vec<(Message, Option<Message>)> = Vec::new();
        for (i, (c, ms)) in commands
            .iter()
            .zip([150_000, 250_000, 350_000, 0])
            .enumerate()
        {
            let r = (ms > 0).then(|| after(audit.len() as i64, ms, &c.agent_id));
            audit.extend(r.clone());
            live.push((delivered(i as i64, c), r));
        }
        let view = |f: &Fold| {
            ["a", "b"].map(|agent| {
                f.parts
                    .values()
                    .filter_map(|p| p.engine.agent(agent))
                    .map(|s| (s.kill.killed, s.profile.kill_history.clone()))
                    .next()
                    .expect("agent")
            })
        };
        let mut first = owning(fold(), &[0], 0);
        let mut out = Vec::new();
        first.audit(&audit[..7], NOW, &mut out).expect("fold");
        assert!(view(&first)[0].0, "a is killed automatically");
        for (c, r) in &live {
            first.control(c, NOW, &mut out).expect("control");
            first.audit(r.as_slice(), NOW, &mut out).expect("fold");
        }
        let before = view(&first);
        assert_eq!(
            (before[0].0, before[1].0),
            (false, true),
            "a revived, b killed"
        );
        assert_eq!(before[1].1.len(), 3, "{:?}", before[1].1);
        let applied = kinds(&out)
            .iter()
            .filter(|k| k.starts_with("applied"))
            .count();
        assert_eq!(applied, commands.len());

        let end = audit.len() as i64;
        for marks in [Some(HashMap::from([(0, commands.len() as i64)])), None] {
            let mut again = owning(fold(), &[0], end);
            let rebuild = marks.is_some();
            if let Some(m) = marks {
                again.set_control_marks(m);
            }
            let mut out = Vec::new();
            for (c, _) in &live {
                again.control(c, NOW, &mut out).expect("control");
            }
            again.audit(&audit, NOW, &mut out).expect("fold");
            assert_eq!(view(&again), before, "rebuild {rebuild}");
            if rebuild {
                assert!(out.is_empty(), "nothing published again: {:?}", kinds(&out));
            }
            // The killed agent's next call is activity after the kill.
            out.clear();
            again
                .audit(&[after(end, 500_000, "b")], NOW, &mut out)
                .expect("fold");
            assert!(
                kinds(&out).contains(&"incident b activity_after_kill".to_string()),
                "{:?}",
                kinds(&out)
            );
            // Old commands published again two days later are refused (stale or expired).
            let later = NOW + 48 * h;
            for (i, c) in commands.iter().enumerate() {
                out.clear();
                let mut r = control(commands.len() as i64 + i as i64, c);
                r.timestamp = Some(later);
                again.control(&r, later, &mut out).expect("control");
                assert_eq!(
                    kinds(&out),
                    vec![format!("incident {} rejected_command", c.agent_id)]
                );
            }
            assert_eq!(view(&again), before);
        }
    }

    /// A command is judged fresh by when it reached the control topic: read days later (a
    /// lost disk), one delivered while fresh applies; the same command delivered late does not.
    #[test]
    fn freshness_is_judged_at_delivery_not_at_reading() {
        let days = 3 * 86_400_000;
        let kill = Command::manual(Verb::Kill, "b", "op", T0, "op")
            .sign(KEY)
            .expect("sign");
        for (delivered, applies) in [(T0 + 5_000, true), (T0 + days, false)] {
            let mut f = owning(fold(), &[0], 0);
            f.audit(&calls(0)[..2], NOW, &mut Vec::new()).expect("fold");
            let mut r = control(0, &kill);
            r.timestamp = Some(delivered);
            let mut out = Vec::new();
            f.control(&r, T0 + days + 60_000, &mut out)
                .expect("control");
            let want = if applies {
                "applied Kill b"
            } else {
                "incident b rejected_command"
            };
            assert_eq!(kinds(&out), vec![want]);
            assert_eq!(f.figures().1, u64::from(applies));
        }
    }

    /// A session hijack: a second `session_created` naming a decoy for a killed agent's
    /// session, then the session's calls. The binding is refused with a `binding_conflict`
    /// naming both agents (once), and the calls stay the killed agent's: activity after the kill.
    #[test]
    fn a_hijacked_session_stays_with_its_killed_agent() {
        let mut f = owning(fold(), &[0], 0);
        let line =
            |offset: i64, json: serde_json::Value| record(0, offset, json.to_string().as_bytes());
        let created = |offset: i64, agent: &str| {
            line(
                offset,
                json!({"type": "session_created", "timestamp": T0 + offset * 1000,
                                "sessionId": "s-1", "userId": "u-1", "agentId": agent}),
            )
        };
        let tool = |offset: i64| {
            line(
                offset,
                json!({"type": "tool_allowed", "timestamp": T0 + offset * 1000,
                                "eventId": format!("e{offset}"), "sessionId": "s-1",
                                "userId": "u-1", "toolName": "pay"}),
            )
        };
        let mut out = Vec::new();
        f.audit(&[created(0, "victim"), tool(1)], NOW, &mut out)
            .expect("fold");
        let kill = Command::manual(Verb::Kill, "victim", "op", T0 + 2_000, "op")
            .sign(KEY)
            .expect("sign");
        f.control(&control(0, &kill), NOW, &mut out)
            .expect("control");
        out.clear();
        f.audit(
            &[created(3, "decoy"), tool(4), created(5, "decoy"), tool(6)],
            NOW,
            &mut out,
        )
        .expect("fold");
        let got = kinds(&out);
        assert_eq!(
            got.iter()
                .filter(|k| *k == "incident victim binding_conflict")
                .count(),
            1,
            "{got:?}"
        );
        assert!(
            got.contains(&"incident victim activity_after_kill".to_string()),
            "{got:?}"
        );
        let conflict = out
            .iter()
            .find_map(|o| match o {
                Output::Incident(i) if i.kind == IncidentType::BindingConflict => Some(i),
                _ => None,
            })
            .expect("conflict");
        assert_eq!(conflict.agents, ["victim", "decoy"]);
        let refused = f.metrics.identity[Resolution::Refused.index()].load(Ordering::Relaxed);
        assert_eq!(refused, 2);
        assert!(f.parts.values().all(|p| p.engine.agent("decoy").is_none()));
    }

    /// A partition holds at most `max_agents` agents: a call of a further new agent is
    /// dead-lettered as `agent_cap` (with its reason), the agents it holds go on.
    #[test]
    fn new_agents_beyond_the_cap_are_dead_lettered_and_known_ones_go_on() {
        let mut s = settings();
        s.max_agents = 3;
        let mut f = Fold::new(s, Arc::default(), Vec::new(), Ledger::default()).expect("fold");
        f = owning(f, &[0], 0);
        let mut out = Vec::new();
        let batch: Vec<Message> = ["a", "b", "c", "d", "a", "e", "b"]
            .iter()
            .enumerate()
            .map(|(i, agent)| call(0, i as i64, agent, "y"))
            .collect();
        f.audit(&batch, NOW, &mut out).expect("fold");
        let dead: Vec<String> = kinds(&out)
            .into_iter()
            .filter(|k| k.starts_with("dead"))
            .collect();
        assert_eq!(dead, ["dead 0@3 agent_cap", "dead 0@5 agent_cap"]);
        let Some(Output::DeadLetter(d)) = out.iter().find(|o| matches!(o, Output::DeadLetter(_)))
        else {
            unreachable!()
        };
        assert!(d.error.contains("max_agents_per_partition"), "{}", d.error);
        assert_eq!(f.figures().0, 3);
        assert_eq!(
            f.metrics.events.load(Ordering::Relaxed),
            5,
            "the known agents' calls"
        );
        // Later batches: still capped, still counting the known agents' calls.
        out.clear();
        f.audit(&[call(0, 7, "f", "y"), call(0, 8, "c", "y")], NOW, &mut out)
            .expect("fold");
        assert_eq!(kinds(&out), ["dead 0@7 agent_cap"]);
        assert_eq!(f.figures().0, 3);
    }
}
