//! `guardian run`: the long-running daemon.
//!
//! Layer: uses `config`, `api`, `telemetry`, `store`, `siem`, `posture`, `engine`, `state`,
//! `control`, `response`, `event`; only the commands (`cli`, `demo`) use it.
//!
//! ```text
//! audit topics ─► source (consumer group thread) ─┐                  ┌─► incidents topic
//!                                                  ├─► bounded queue ─► engine thread ─┼─► control topic (kill)
//! control topic ─► source (reader thread) ────────┘   (per partition: Engine, offset) └─► dead-letter topic
//!                                                         │ checkpoint: settle outputs → encode batch
//!                                                         ▼
//!                                          checkpoint writer thread: sled batch + flush → commit
//! ```
//!
//! Each audit partition has its own [`Engine`]: its state is the fold of that partition's log,
//! stored in sled with the next offset it reflects. A checkpoint first waits until every output
//! sent so far is acknowledged, then encodes the changed agents and the offsets as one batch; the
//! writer thread applies it, flushes, and only then commits the offsets to Kafka (for lag
//! monitoring), while the engine goes on with the next events. After a crash each
//! partition resumes at its stored offset; outputs of the replayed tail are sent again with the
//! same deterministic ids.

pub use crate::store;
pub use crate::telemetry::{Live, Metrics, BAD_EVENT_KINDS};

pub mod sink;
pub mod source;
pub mod writer;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::config::Resolved;
use crate::control::{Command, Origin, Verb};
use crate::engine::{Engine, EngineStats};
use crate::event::{Decoder, DecoderOptions};
use crate::posture::{Gap, Ledger};
use crate::response::{Action, Basis, Incident, IncidentType, Severity};
use crate::siem::{DeadLetter, PostureSummary, Record as SiemRecord, SiemSinks};
use crate::store::{checkpoint_batch, PartitionDelta, Store, StoreError};
use sink::{dead_letter_headers, KafkaSink, SinkError};
use source::{Notice, Queue, Record};
use writer::{CheckpointWriter, Job};

/// Why the daemon stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Kafka client setup failed.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// An output could not be written.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A SIEM sink could not be started.
    #[error(transparent)]
    Siem(#[from] crate::siem::sink::SinkError),
    /// A SIEM sink's spool failed.
    #[error(transparent)]
    Spool(#[from] crate::siem::spool::SpoolError),
    /// An output could not be encoded (nothing empty is ever published in its place).
    #[error("cannot encode an output: {0}")]
    Encode(#[from] serde_json::Error),
    /// A source failed.
    #[error("source: {0}")]
    Source(String),
    /// The admin API could not start.
    #[error(transparent)]
    Api(#[from] crate::api::ApiError),
    /// The graceful shutdown took longer than allowed.
    #[error("shutdown deadline of {0:?} exceeded")]
    Deadline(Duration),
}

/// The audit partition an engine folds.
struct Part {
    engine: Engine,
    next: i64,
    quiet_below: i64,
}

/// The engine thread's state.
struct Core {
    cfg: Resolved,
    decoder: Decoder,
    store: Store,
    sink: KafkaSink,
    siem: SiemSinks,
    /// Writes checkpoints to sled and commits offsets, off the engine thread.
    writer: CheckpointWriter,
    parts: HashMap<(u16, i32), Part>,
    control_next: HashMap<i32, i64>,
    pending: Vec<Command>,
    metrics: Arc<Metrics>,
    since_checkpoint: u64,
    last_checkpoint: Instant,
    out: Vec<Incident>,
    live: Arc<Live>,
    /// Incidents raised since the previous checkpoint (stored with it).
    raised: Vec<Incident>,
    ledger: Ledger,
    last_posture: Instant,
    last_prune: Instant,
}

impl Core {
    fn topic(&self, i: u16) -> &str {
        self.cfg
            .config
            .kafka
            .audit_topics
            .get(i as usize)
            .map_or("", String::as_str)
    }

    fn handle(&mut self, n: Notice) -> Result<bool, DaemonError> {
        match n {
            Notice::Assigned(list) => {
                let now = chrono::Utc::now().timestamp_millis();
                for a in &list {
                    if let Some((from, to)) = a.gap {
                        self.ledger.gaps.push(Gap {
                            topic: self.topic(a.topic).to_string(),
                            partition: a.partition,
                            from_offset: from,
                            to_offset: to,
                            found_at: now,
                        });
                    }
                    if a.state.is_none() {
                        self.ledger.rebuilds += 1;
                    }
                }
                for a in list {
                    let engine = match a.state {
                        Some(s) => Engine::restore(self.cfg.blueprints.clone(), s),
                        None => Engine::new(self.cfg.blueprints.clone()),
                    };
                    self.parts.insert(
                        (a.topic, a.partition),
                        Part {
                            engine,
                            next: a.start,
                            quiet_below: a.quiet_below,
                        },
                    );
                }
                self.owned_changed();
            }
            Notice::Revoked(list, ack) => {
                self.checkpoint_now()?;
                for k in list {
                    self.parts.remove(&k);
                }
                self.owned_changed();
                let _ = ack.send(());
            }
            Notice::Audit(batch, handed) => {
                let now = chrono::Utc::now().timestamp_millis();
                for r in batch {
                    self.audit(r, now)?;
                }
                self.metrics.latency.observe(handed.elapsed().as_secs_f64());
            }
            Notice::Control(r) => self.control(r)?,
            Notice::Stopped(Some(e)) => return Err(DaemonError::Source(e)),
            Notice::Stopped(None) => return Ok(false),
        }
        Ok(true)
    }

    /// Publishes the owned partitions and readiness after an assignment change.
    fn owned_changed(&self) {
        let owned: Vec<(String, i32)> = self
            .parts
            .keys()
            .map(|&(t, p)| (self.topic(t).to_string(), p))
            .collect();
        self.metrics
            .partitions
            .store(self.parts.len(), Ordering::Relaxed);
        self.metrics
            .ready
            .store(!owned.is_empty(), Ordering::Relaxed);
        if let Ok(mut o) = self.live.owned.write() {
            *o = owned;
        }
    }

    /// Folds one audit message (taken by the engine at `now`, ms) into its partition's state.
    fn audit(&mut self, r: Record, now: i64) -> Result<(), DaemonError> {
        let topic_name = self.topic(r.topic).to_string();
        let Some(part) = self.parts.get_mut(&(r.topic, r.partition)) else {
            return Ok(()); // not (or no longer) ours
        };
        if r.offset < part.next {
            return Ok(()); // already folded into the stored state
        }
        part.next = r.offset + 1;
        if let Some(ts) = r.timestamp {
            // A clock behind the producer's would give a negative age: count it as 0.
            let age = now.saturating_sub(ts).max(0);
            self.metrics.event_age.observe(age as f64 / 1000.0);
        }
        let quiet = r.offset < part.quiet_below;
        self.since_checkpoint += 1;
        let payload = r.payload.as_deref().unwrap_or_default();
        let ev = match self.decoder.decode(payload) {
            Ok(ev) => ev,
            Err(e) => {
                self.metrics.bad_events.fetch_add(1, Ordering::Relaxed);
                if let Some(i) = BAD_EVENT_KINDS.iter().position(|k| *k == e.kind()) {
                    self.metrics.bad_by_kind[i].fetch_add(1, Ordering::Relaxed);
                }
                part.engine.count_bad_event();
                if !quiet {
                    let h = dead_letter_headers(
                        e.kind(),
                        &e.to_string(),
                        &topic_name,
                        r.partition,
                        r.offset,
                    );
                    self.sink.send(
                        &self.cfg.config.kafka.dead_letter_topic,
                        r.key.as_deref(),
                        payload,
                        Some(h),
                    )?;
                    let d = DeadLetter {
                        source: format!("{topic_name}/{}@{}", r.partition, r.offset),
                        at: r
                            .timestamp
                            .unwrap_or_else(|| chrono::Utc::now().timestamp_millis()),
                        kind: e.kind().into(),
                        error: e.to_string(),
                        key: r
                            .key
                            .as_deref()
                            .and_then(|k| std::str::from_utf8(k).ok())
                            .map(str::to_string),
                        bytes: payload.len(),
                    };
                    self.siem.emit(&SiemRecord::DeadLetter(&d))?;
                }
                return Ok(());
            }
        };
        self.metrics.events.fetch_add(1, Ordering::Relaxed);
        part.engine.process(&ev, &mut self.out);
        if !self.pending.is_empty() {
            // Operator commands for agents this instance had not seen apply on the agent's own
            // timeline, once its event time reaches the command's (so a rebuild from the log
            // puts them where they happened).
            let (agent, ts) = (ev.agent_id.as_ref(), ev.ts_ms);
            let engine = &mut part.engine;
            let metrics = &self.metrics;
            let mut applied = Vec::new();
            self.pending.retain(|c| {
                if c.agent_id != agent || c.issued_at > ts {
                    return true;
                }
                apply(engine, c);
                metrics.commands_applied.fetch_add(1, Ordering::Relaxed);
                applied.push(c.clone());
                false
            });
            self.ledger.commands_applied += applied.len() as u64;
            if !quiet {
                for c in &applied {
                    self.siem.emit(&SiemRecord::Command(c))?;
                }
            }
        }
        if self.out.is_empty() {
            return Ok(());
        }
        let k = &self.cfg.config.kafka;
        for inc in self.out.drain(..) {
            self.raised.push(inc.clone());
            if quiet {
                self.metrics.suppressed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let json = serde_json::to_vec(&inc)?;
            self.sink.send(
                &k.incidents_topic,
                Some(inc.agent_id.as_bytes()),
                &json,
                None,
            )?;
            self.metrics.count_incident(&inc);
            self.siem.emit(&SiemRecord::Incident(&inc))?;
            if inc.action_taken == Action::Killed {
                let cmd = Command::for_kill(&inc, &self.cfg.config.guardian_id)
                    .sign(&self.cfg.signing_key)?;
                self.sink.send(
                    &k.control_topic,
                    Some(inc.agent_id.as_bytes()),
                    &cmd.to_json()?,
                    None,
                )?;
                self.metrics.kill_commands.fetch_add(1, Ordering::Relaxed);
                self.ledger.kill_commands_sent += 1;
                self.siem.emit(&SiemRecord::Command(&cmd))?;
                tracing::warn!(agent = %inc.agent_id, command_id = %cmd.command_id, "kill command issued");
            }
        }
        Ok(())
    }

    fn control(&mut self, r: Record) -> Result<(), DaemonError> {
        self.control_next.insert(r.partition, r.offset + 1);
        let payload = r.payload.as_deref().unwrap_or_default();
        match Command::parse_verified(payload, &self.cfg.signing_key) {
            Ok(c) if c.origin == Origin::Auto => {} // already part of the state it came from
            Ok(c) => {
                tracing::info!(agent = %c.agent_id, command = ?c.command, by = %c.guardian_id, "operator command");
                let mut applied = false;
                for p in self.parts.values_mut() {
                    if p.engine.agent(&c.agent_id).is_some() {
                        apply(&mut p.engine, &c);
                        applied = true;
                    }
                }
                if applied {
                    self.ledger.commands_applied += 1;
                    self.metrics
                        .commands_applied
                        .fetch_add(1, Ordering::Relaxed);
                    // Reported by the instances that own the agent (every instance reads the
                    // control topic); an agent not seen yet reports it when the command applies.
                    self.siem.emit(&SiemRecord::Command(&c))?;
                } else {
                    self.pending.push(c);
                }
            }
            Err(rejected) => {
                self.metrics
                    .commands_rejected
                    .fetch_add(1, Ordering::Relaxed);
                self.ledger.commands_rejected += 1;
                let why = rejected.why;
                let agent = rejected.agent_id.unwrap_or_else(|| "(unknown)".to_string());
                tracing::warn!(%agent, partition = r.partition, offset = r.offset, reason = %why, "control command rejected");
                let at = r.timestamp.unwrap_or(0);
                let inc = Incident {
                    incident_id: crate::control::command_id(&[
                        b"rejected",
                        &r.partition.to_le_bytes(),
                        &r.offset.to_le_bytes(),
                        payload,
                    ]),
                    agent_id: agent.clone(),
                    kind: IncidentType::RejectedCommand,
                    severity: Severity::High,
                    at,
                    window_start: at,
                    window_end: at,
                    blueprint: String::new(),
                    basis: Basis::Static,
                    observed: 1.0,
                    expected: 0.0,
                    unit: "commands".into(),
                    description: format!(
                        "Rejected a control command for agent {agent:?} at {}:{}/{}: {why}.",
                        self.cfg.config.kafka.control_topic, r.partition, r.offset
                    ),
                    action_taken: Action::Logged,
                    event_id: format!("control:{}:{}", r.partition, r.offset),
                    tool_name: String::new(),
                    pattern: None,
                    status: crate::response::Status::Open,
                    count: 1,
                    about: None,
                    verdict: None,
                    baseline: None,
                    suppressed_by: None,
                };
                let json = serde_json::to_vec(&inc)?;
                self.sink.send(
                    &self.cfg.config.kafka.incidents_topic,
                    Some(agent.as_bytes()),
                    &json,
                    None,
                )?;
                self.metrics.count_incident(&inc);
                self.siem.emit(&SiemRecord::Incident(&inc))?;
                self.raised.push(inc);
            }
        }
        Ok(())
    }

    /// Settles outputs and encodes the changed state with its offsets; the writer thread then
    /// persists it and commits the offsets to Kafka.
    fn checkpoint(&mut self) -> Result<(), DaemonError> {
        self.sink.settle(Duration::from_secs(10))?;
        let topics = self.cfg.config.kafka.audit_topics.clone();
        let mut stats: Vec<(u16, i32, i64, EngineStats)> = Vec::new();
        for (&(t, p), part) in &self.parts {
            stats.push((t, p, part.next, part.engine.stats().clone()));
        }
        let mut deltas = Vec::new();
        for ((&(t, p), part), s) in self.parts.iter_mut().zip(&stats) {
            let fleet = part.engine.fleet_state();
            deltas.push(PartitionDelta {
                topic: topics.get(t as usize).map_or("", String::as_str),
                partition: p,
                next_offset: part.next,
                stats: &s.3,
                fleet,
                agents: part.engine.take_dirty(),
            });
        }
        let control: Vec<(i32, i64)> = self.control_next.iter().map(|(&p, &o)| (p, o)).collect();
        self.ledger.last_written = chrono::Utc::now().timestamp_millis();
        let batch = checkpoint_batch(
            &deltas,
            &control,
            &self.pending,
            &self.raised,
            Some(&self.ledger),
        )?;
        drop(deltas);
        self.raised.clear();
        let mut commit = TopicPartitionList::new();
        for (t, p, next, _) in &stats {
            if let Some(name) = topics.get(*t as usize) {
                let _ = commit.add_partition_offset(name, *p, Offset::Offset(*next));
            }
        }
        self.writer.submit(Job { batch, commit })?;
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        self.metrics.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.publish_figures();
        Ok(())
    }

    /// A checkpoint that is on disk when this returns.
    fn checkpoint_now(&mut self) -> Result<(), DaemonError> {
        self.checkpoint()?;
        self.writer.wait()?;
        Ok(())
    }

    /// Agent counts and sink figures for `/metrics` (after each checkpoint).
    fn publish_figures(&self) {
        let (mut agents, mut killed) = (0u64, 0u64);
        for p in self.parts.values() {
            for a in p.engine.agents() {
                agents += 1;
                killed += u64::from(a.kill.killed);
            }
        }
        self.metrics.agents.store(agents, Ordering::Relaxed);
        self.metrics.agents_killed.store(killed, Ordering::Relaxed);
        let learning = self
            .parts
            .values()
            .filter(|p| p.engine.learning_now())
            .count();
        self.metrics
            .learning_partitions
            .store(learning as u64, Ordering::Relaxed);
        let mut sinks = self.siem.status();
        if let Some(depth) = self.siem.email_spooled() {
            sinks.push(crate::siem::SinkStatus {
                name: "email".into(),
                spooled: depth,
                sent: 0,
                failures: 0,
                dropped: 0,
            });
        }
        if let Ok(mut s) = self.metrics.sinks.lock() {
            *s = sinks;
        }
        if let Ok(mut e) = self.metrics.email.lock() {
            *e = self.siem.email_stats();
        }
    }

    /// Every `posture.interval`: the posture of the owned partitions onto the posture topic, as a
    /// summary to the SIEM sinks, and into the score history; incidents past their retention
    /// are pruned.
    fn posture_tick(&mut self) -> Result<(), DaemonError> {
        if self.last_posture.elapsed() < self.cfg.posture.interval || self.parts.is_empty() {
            return Ok(());
        }
        self.last_posture = Instant::now();
        self.checkpoint_now()?;
        let s = &self.cfg.posture;
        let owned = self.live.owned();
        let view = self.store.state_view(Some(&owned))?;
        if view.states.is_empty() {
            return Ok(());
        }
        let posture = view.posture(&self.cfg.blueprints, s);
        let summary = posture_summary(&posture, &self.cfg.config.guardian_id);
        let snapshot = serde_json::json!({
            "guardian_id": self.cfg.config.guardian_id,
            "partitions": owned.iter().map(|(t, p)| format!("{t}/{p}")).collect::<Vec<_>>(),
            "fleet": posture.fleet,
            "top_risks": posture.top_risks,
            "as_of": posture.as_of,
        });
        self.sink.send(
            &s.topic,
            Some(self.cfg.config.guardian_id.as_bytes()),
            &serde_json::to_vec(&snapshot)?,
            None,
        )?;
        self.siem.emit(&SiemRecord::Posture(&summary))?;
        self.store.push_history(&posture.point())?;
        self.metrics
            .fleet_risk
            .store(u64::from(posture.fleet.score), Ordering::Relaxed);
        self.metrics
            .posture_snapshots
            .fetch_add(1, Ordering::Relaxed);
        self.ledger.posture_snapshots += 1;
        if self.last_prune.elapsed() > Duration::from_secs(600) {
            self.last_prune = Instant::now();
            let pruned = self
                .store
                .prune_incidents(posture.as_of_ms - s.incident_retention_ms)?;
            if pruned > 0 {
                tracing::info!(
                    pruned,
                    "incidents past their retention removed from the state"
                );
            }
        }
        tracing::info!(
            fleet_risk = posture.fleet.score,
            agents = posture.fleet.agents,
            "posture snapshot published"
        );
        Ok(())
    }

    fn checkpoint_due(&self) -> bool {
        self.since_checkpoint >= self.cfg.config.checkpoint_events
            || (self.since_checkpoint > 0
                && self.last_checkpoint.elapsed() >= self.cfg.checkpoint_interval)
    }

    fn log_progress(&self) {
        let m = &self.metrics;
        let lag = m.lag.load(Ordering::Relaxed);
        tracing::info!(
            events = m.events.load(Ordering::Relaxed),
            bad_events = m.bad_events.load(Ordering::Relaxed),
            incidents = m.incidents.load(Ordering::Relaxed),
            kill_commands = m.kill_commands.load(Ordering::Relaxed),
            queue_depth = m.queue_depth.load(Ordering::Relaxed),
            outputs_in_flight = self.sink.in_flight(),
            siem_spooled = self.siem.spooled(),
            partitions = self.parts.len(),
            lag,
            "progress"
        );
    }
}

/// The SIEM summary of a posture.
pub fn posture_summary(p: &crate::posture::Posture, guardian_id: &str) -> PostureSummary {
    let f = &p.fleet;
    PostureSummary {
        summary_id: format!("posture:{guardian_id}:{}", p.as_of_ms),
        at: p.as_of_ms,
        guardian_id: guardian_id.to_string(),
        score: f.score,
        level: f.level.as_str().to_string(),
        trend_delta: f.trend.delta,
        agents: f.agents,
        killed: f.by_status.get("killed").copied().unwrap_or(0),
        high_risk: f.by_risk_level.get("high").copied().unwrap_or(0)
            + f.by_risk_level.get("critical").copied().unwrap_or(0),
        top_agent: p.top_risks.first().map(|a| (a.agent_id.clone(), a.risk)),
    }
}

/// This run's setup as ledger facts.
pub fn setup_ledger(cfg: &Resolved) -> Ledger {
    let c = &cfg.config;
    Ledger {
        guardian_ids: vec![c.guardian_id.clone()],
        source: "kafka".into(),
        audit_topics: c.kafka.audit_topics.clone(),
        control_topic: c.kafka.control_topic.clone(),
        incidents_topic: c.kafka.incidents_topic.clone(),
        dead_letter_topic: c.kafka.dead_letter_topic.clone(),
        commands_signed: !cfg.signing_key.is_empty(),
        sinks: c
            .sinks
            .iter()
            .map(|s| format!("{} ({:?}, {:?})", s.name, s.kind, s.format).to_lowercase())
            .collect(),
        email_routes: c.email.as_ref().map_or(0, |e| e.routes.len()),
        api: cfg.api.is_some(),
        api_tls: cfg.api.as_ref().is_some_and(|a| a.tls.is_some()),
        incident_retention_days: cfg.posture.incident_retention_ms as f64 / 86_400_000.0,
        blueprints: crate::posture::blueprint_facts(&cfg.blueprints),
        ..Ledger::default()
    }
}

fn apply(engine: &mut Engine, c: &Command) {
    match c.command {
        Verb::Kill => engine.kill(&c.agent_id, c.issued_at),
        Verb::Revive => engine.revive(&c.agent_id, c.issued_at),
    };
}

/// A running daemon's handles.
pub struct Daemon {
    /// Set to stop gracefully.
    pub stop: Arc<AtomicBool>,
    /// Live counters.
    pub metrics: Arc<Metrics>,
    /// What the admin API reads.
    pub live: Arc<Live>,
    /// The admin API's address, if it is on.
    pub api_addr: Option<std::net::SocketAddr>,
    engine: std::thread::JoinHandle<Result<(), DaemonError>>,
    sources: Vec<std::thread::JoinHandle<()>>,
    api: Option<std::thread::JoinHandle<()>>,
}

impl Daemon {
    /// Starts the sources and the engine thread.
    pub fn start(cfg: Resolved) -> Result<Daemon, DaemonError> {
        let store = Store::open(&cfg.config.state_dir)?;
        let (queue, rx, depth) = Queue::bounded(cfg.config.queue_capacity);
        let metrics = Arc::new(Metrics {
            queue_depth: depth.clone(),
            ..Metrics::default()
        });
        let stop = Arc::new(AtomicBool::new(false));
        let k = &cfg.config.kafka;
        let sink = KafkaSink::new(&k.brokers, &cfg.kafka_options)?;
        let consumer = source::audit_consumer(
            k,
            &cfg.kafka_options,
            queue.clone(),
            store.clone(),
            cfg.config.backfill,
            metrics.lag.clone(),
        )?;
        let decoder = Decoder::new(&DecoderOptions {
            volume_pointer: cfg.config.volume_pointer.clone(),
            max_event_bytes: cfg.config.max_event_bytes,
            ..cfg.blueprints.decoder_options()
        })
        .map_err(|e| DaemonError::Source(e.to_string()))?;
        let mut sources = Vec::new();
        {
            let (c, q, s) = (consumer.clone(), queue.clone(), stop.clone());
            sources.push(
                std::thread::Builder::new()
                    .name("audit-source".into())
                    .spawn(move || source::run_audit(c, q, s))
                    .map_err(|e| DaemonError::Source(e.to_string()))?,
            );
        }
        {
            let (q, s, st) = (queue.clone(), stop.clone(), store.clone());
            let (brokers, group, opts, topic) = (
                k.brokers.clone(),
                k.group_id.clone(),
                cfg.kafka_options.clone(),
                k.control_topic.clone(),
            );
            sources.push(
                std::thread::Builder::new()
                    .name("control-source".into())
                    .spawn(move || source::run_control(&brokers, &group, &opts, &topic, &st, q, s))
                    .map_err(|e| DaemonError::Source(e.to_string()))?,
            );
        }
        drop(queue);
        let pending = store.pending()?;
        let mut ledger = store.ledger()?;
        ledger.record_setup(setup_ledger(&cfg), chrono::Utc::now().timestamp_millis());
        let live = Arc::new(Live {
            store: store.clone(),
            metrics: metrics.clone(),
            owned: std::sync::RwLock::new(Vec::new()),
        });
        let siem = SiemSinks::start(
            &cfg.config.sinks,
            cfg.config.email.as_ref(),
            store.db(),
            &cfg.config.guardian_id,
            &k.brokers,
            &cfg.kafka_options,
        )?;
        let (api, api_addr) = match &cfg.api {
            Some(a) => {
                let (handle, addr) = crate::api::spawn(
                    a,
                    crate::api::AppState::new(
                        live.clone(),
                        cfg.blueprints.clone(),
                        cfg.posture.clone(),
                        &a.token,
                        Some(Box::new(sink::Commander::new(&cfg, "api")?)),
                    ),
                    stop.clone(),
                )?;
                (Some(handle), Some(addr))
            }
            None => (None, None),
        };
        let store_for_writer = store.clone();
        let core = Core {
            cfg,
            decoder,
            store,
            sink,
            siem,
            writer: CheckpointWriter::start(store_for_writer, consumer)
                .map_err(|e| DaemonError::Source(format!("checkpoint writer thread: {e}")))?,
            parts: HashMap::new(),
            control_next: HashMap::new(),
            pending,
            metrics: metrics.clone(),
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            out: Vec::new(),
            live: live.clone(),
            raised: Vec::new(),
            ledger,
            last_posture: Instant::now(),
            last_prune: Instant::now() - Duration::from_secs(3600),
        };
        let stop2 = stop.clone();
        let engine = std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || run_engine(core, rx, 2, stop2))
            .map_err(|e| DaemonError::Source(e.to_string()))?;
        Ok(Daemon {
            stop,
            metrics,
            live,
            api_addr,
            engine,
            sources,
            api,
        })
    }

    /// Asks for a graceful stop.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Whether the engine thread has ended (on its own: an error).
    pub fn is_finished(&self) -> bool {
        self.engine.is_finished()
    }

    /// Waits for the daemon to end (after [`Daemon::shutdown`] or a failure) within `deadline`.
    pub fn join(self, deadline: Duration) -> Result<(), DaemonError> {
        let t = Instant::now();
        while !self.engine.is_finished() {
            if t.elapsed() > deadline {
                return Err(DaemonError::Deadline(deadline));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop.store(true, Ordering::Relaxed);
        let r = self
            .engine
            .join()
            .unwrap_or_else(|_| Err(DaemonError::Source("engine thread panicked".into())));
        for s in self.sources {
            let _ = s.join();
        }
        if let Some(a) = self.api {
            let _ = a.join();
        }
        r
    }
}

fn run_engine(
    mut core: Core,
    rx: Receiver<Notice>,
    mut sources: usize,
    stop: Arc<AtomicBool>,
) -> Result<(), DaemonError> {
    let mut last_log = Instant::now();
    let result = (|| {
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(n) => {
                    core.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
                    if !core.handle(n)? {
                        sources -= 1;
                        if sources == 0 {
                            break;
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if core.checkpoint_due() {
                core.checkpoint()?;
            }
            core.posture_tick()?;
            if last_log.elapsed() > Duration::from_secs(10) {
                core.log_progress();
                last_log = Instant::now();
            }
        }
        core.checkpoint_now()?;
        core.siem.shutdown(core.cfg.shutdown_timeout / 3);
        let _ = core.store.db().flush();
        let m = &core.metrics;
        tracing::info!(
            events = m.events.load(Ordering::Relaxed),
            incidents = m.incidents.load(Ordering::Relaxed),
            kill_commands = m.kill_commands.load(Ordering::Relaxed),
            suppressed = m.suppressed.load(Ordering::Relaxed),
            outputs_acknowledged = core.sink.delivered(),
            "engine stopped after a final checkpoint"
        );
        Ok(())
    })();
    // Whatever happened, make the sources stop too.
    stop.store(true, Ordering::Relaxed);
    // Drain so that sources blocked on a full queue can see the stop flag.
    while rx.try_recv().is_ok() {}
    result
}
