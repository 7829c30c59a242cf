//! `guardian run`: the long-running daemon.
//!
//! Layer: uses `config`, `api`, `telemetry`, `store`, `stop`, `source`, `sink`, `posture`, `engine`,
//! `state`, `control`, `response`, `event`; only the commands (`cli`, `demo`) use it.
//!
//! ```text
//! audit topics ─► source (consumer group thread) ─┐                  ┌─► incidents topic
//!                                                  ├─► bounded queue ─► engine thread ─┼─► control topic (kill)
//! control topic ─► source (reader thread) ────────┘   fold ─► publish  └─► dead-letter topic, SIEM
//!                                                         │ checkpoint: settle outputs → encode batch
//!                                                         ▼
//!                                          checkpoint writer thread: sled batch + flush → commit
//! posture thread: reads the store every interval ─► the queue ─► engine thread publishes it
//! SIEM and email deliveries: one thread per sink, from its spool to its receiver
//! ```
//!
//! The engine thread is a loop over three parts: the [`fold::Fold`] (records in, outputs and
//! checkpoints out, no I/O), the [`publish::Publisher`] (outputs onto Kafka and the SIEM sinks)
//! and the [`writer::CheckpointWriter`]. Each audit partition has its own engine: its state is
//! the fold of that partition's log, stored in sled with the next offset it reflects. A
//! checkpoint first waits until every output sent so far is acknowledged, then encodes the
//! changed agents and the offsets as one batch; the writer thread applies it, flushes, and only
//! then commits the offsets to Kafka (for lag monitoring), while the engine goes on with the
//! next events. After a crash each partition resumes at its stored offset; outputs of the
//! replayed tail are sent again with the same deterministic ids.
//!
//! Every thread runs under one [`supervise::Supervisor`]: the first to fail stops them all, and
//! its error, with the thread's name, is the daemon's. The sources, the posture thread and the
//! API watch the stop signal; the engine ends when its sources have; the SIEM deliveries and the
//! checkpoint writer end when the engine closes their input after its last checkpoint.

pub mod commander;
mod core;
pub mod fold;
pub mod peers;
pub mod publish;
pub mod snapshot;
pub mod supervise;
pub mod writer;

use std::sync::Arc;
use std::time::Duration;

use self::core::{run_engine, Core, CoreSettings};
use crate::config::Resolved;
use crate::posture::Ledger;
use crate::sink::kafka::{KafkaSink, ProduceError};
use crate::sink::SiemSinks;
use crate::source::kafka as source;
use crate::source::queue::Queue;
use crate::stop::Stop;
use crate::store::{Store, StoreError};
use crate::telemetry::{Live, Metrics};
use fold::{Fold, FoldError, FoldSettings};
use publish::Publisher;
use snapshot::Snapshots;
use supervise::Supervisor;
use writer::CheckpointWriter;

/// Why the daemon stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Kafka client setup failed.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// An output could not be written.
    #[error(transparent)]
    Produce(#[from] ProduceError),
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A SIEM sink could not be started, or its delivery failed.
    #[error(transparent)]
    Siem(#[from] crate::sink::delivery::SiemError),
    /// A SIEM sink's spool failed.
    #[error(transparent)]
    Spool(#[from] crate::sink::spool::SpoolError),
    /// An output could not be encoded (nothing empty is ever published in its place).
    #[error("cannot encode an output: {0}")]
    Encode(#[from] serde_json::Error),
    /// The fold could not go on.
    #[error(transparent)]
    Fold(#[from] FoldError),
    /// A source failed.
    #[error("source: {0}")]
    Source(#[from] source::SourceError),
    /// The admin API could not start or stopped serving.
    #[error(transparent)]
    Api(#[from] crate::api::ApiError),
    /// A thread could not be started.
    #[error("cannot start thread {thread}: {source}")]
    Spawn {
        /// The thread.
        thread: String,
        /// Why.
        source: std::io::Error,
    },
    /// A thread panicked.
    #[error("panicked")]
    Panicked,
    /// A thread ended on its own before the daemon was asked to stop.
    #[error("ended before the daemon was asked to stop")]
    EndedEarly,
    /// A thread failed; the daemon stopped.
    #[error("thread {thread}: {source}")]
    Thread {
        /// The thread that failed first.
        thread: String,
        /// Its error.
        source: Box<DaemonError>,
    },
    /// The graceful shutdown took longer than allowed.
    #[error("shutdown deadline of {0:?} exceeded (still running: {1})")]
    Deadline(Duration, String),
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

/// A running daemon's handles.
pub struct Daemon {
    /// Live counters.
    pub metrics: Arc<Metrics>,
    /// What the admin API reads.
    pub live: Arc<Live>,
    /// The admin API's address, if it is on.
    pub api_addr: Option<std::net::SocketAddr>,
    supervisor: Supervisor,
}

/// How long a checkpoint waits for the broker to acknowledge outputs when `message.timeout.ms`
/// is not set (librdkafka's default), before the daemon stops with an error.
const DEFAULT_MESSAGE_TIMEOUT: Duration = Duration::from_millis(300_000);

impl Daemon {
    /// Runs every start-up step that can fail (the store, the Kafka clients, the SIEM sinks, the
    /// API's listener), then starts the threads under one supervisor.
    pub fn start(cfg: Resolved) -> Result<Daemon, DaemonError> {
        let store = Store::open(&cfg.config.state_dir)?;
        let (queue, rx, depth) = Queue::bounded(cfg.config.queue_capacity);
        let metrics = Arc::new(Metrics {
            queue_depth: depth.clone(),
            ..Metrics::default()
        });
        let k = &cfg.config.kafka;
        let fold = open_fold(&cfg, &store, &metrics)?;
        let sink = KafkaSink::new(&k.brokers, &cfg.kafka_options)?;
        let consumer = source::audit_consumer(
            k,
            &cfg.kafka_options,
            &cfg.command_keys(),
            queue.clone(),
            store.clone(),
            cfg.config.backfill,
            metrics.lag.clone(),
        )?;
        let live = Arc::new(Live {
            store: store.clone(),
            metrics: metrics.clone(),
            owned: std::sync::RwLock::new(Vec::new()),
            view: Default::default(),
            peers: Default::default(),
            guardian_id: cfg.config.guardian_id.clone(),
        });
        let api = bind_api(&cfg, &live)?;
        let (publisher, deliveries) = open_publisher(&cfg, sink, &store, &metrics)?;
        let api_addr = api.as_ref().map(crate::api::Server::addr);
        let (writer, writer_loop) = CheckpointWriter::new(store.clone(), consumer.clone());
        let snapshots = Snapshots {
            store: store.clone(),
            live: live.clone(),
            blueprints: cfg.blueprints.clone(),
            settings: cfg.posture.clone(),
            guardian_id: cfg.config.guardian_id.clone(),
        };
        // Every step that can fail has run: the threads start. Should one not start, what was
        // built is dropped: the supervisor's guard sets the stop signal, the SIEM spools close
        // and the writer's channel closes, so every thread already started ends.
        let mut sup = Supervisor::new(Stop::new());
        let stop = sup.stop().clone();
        spawn_sources(&mut sup, &cfg, consumer, &queue, &store)?;
        {
            let s = stop.clone();
            sup.spawn("posture", move || Ok(snapshots.run(&queue, s)?))?;
        }
        {
            let reader = peers::PeerReader {
                brokers: k.brokers.clone(),
                options: cfg.kafka_options.clone(),
                topic: cfg.posture.topic.clone(),
                keys: cfg.command_keys(),
                guardian_id: cfg.config.guardian_id.clone(),
                live: live.clone(),
            };
            let s = stop.clone();
            sup.spawn("posture-view", move || reader.run(s))?;
        }
        if let Some(server) = api {
            let s = stop.clone();
            sup.spawn("admin-api", move || Ok(server.run(s)?))?;
        }
        // The deliveries and the writer end when the engine closes their input (the SIEM
        // spools, the writer's channel), after its last checkpoint: nothing it wrote is lost.
        for d in deliveries {
            sup.spawn(&format!("sink-{}", d.name()), move || Ok(d.run()?))?;
        }
        sup.spawn("checkpoint", move || {
            writer_loop.run();
            Ok(())
        })?;
        let core = Core::new(
            CoreSettings::from_resolved(&cfg),
            fold,
            publisher,
            writer,
            store,
            metrics.clone(),
            live.clone(),
        );
        sup.spawn("engine", move || run_engine(core, rx, 2, stop))?;
        Ok(Daemon {
            metrics,
            live,
            api_addr,
            supervisor: sup,
        })
    }

    /// Asks for a graceful stop.
    pub fn shutdown(&self) {
        self.supervisor.stop().set();
    }

    /// The stop signal every thread watches: set by [`Daemon::shutdown`] or by a thread that
    /// fails.
    pub fn stop_signal(&self) -> &Stop {
        self.supervisor.stop()
    }

    /// Whether a thread has failed (the daemon is then stopping).
    pub fn is_finished(&self) -> bool {
        self.supervisor.failed()
    }

    /// Stops the daemon (if not yet) and waits up to `deadline` for every thread; returns the
    /// first failure, naming its thread.
    pub fn join(self, deadline: Duration) -> Result<(), DaemonError> {
        self.supervisor.join(deadline)
    }
}
/// The fold as the store left it: the ledger (with this run's setup), the operator commands
/// waiting for their agents, the control topic's re-read marks.
fn open_fold(cfg: &Resolved, store: &Store, metrics: &Arc<Metrics>) -> Result<Fold, DaemonError> {
    let mut ledger = store.ledger()?;
    ledger.record_setup(setup_ledger(cfg), chrono::Utc::now().timestamp_millis());
    let mut fold = Fold::new(
        FoldSettings::from_resolved(cfg),
        metrics.clone(),
        store.pending()?,
        ledger,
    )?;
    fold.set_control_marks(store.control_marks()?);
    fold.set_store(store.clone());
    Ok(fold)
}

/// The publisher onto the output topics (through `sink`) and the SIEM and email sinks, whose
/// spools live in the store's database; returns it with the sinks' deliveries to run.
fn open_publisher(
    cfg: &Resolved,
    sink: KafkaSink,
    store: &Store,
    metrics: &Arc<Metrics>,
) -> Result<(Publisher, Vec<crate::sink::delivery::Delivery>), DaemonError> {
    let k = &cfg.config.kafka;
    let (siem, deliveries) = SiemSinks::open(
        &cfg.config.sinks,
        cfg.config.email.as_ref(),
        store.db(),
        &cfg.config.guardian_id,
        &k.brokers,
        &cfg.kafka_options,
    )?;
    let deadline = settle_deadline(cfg);
    let publisher = Publisher::new(Box::new(sink), siem, metrics.clone(), k, deadline);
    Ok((publisher, deliveries))
}

/// The admin API bound to its address (with the commander it publishes operator commands
/// through), if it is on.
fn bind_api(cfg: &Resolved, live: &Arc<Live>) -> Result<Option<crate::api::Server>, DaemonError> {
    let Some(a) = &cfg.api else {
        return Ok(None);
    };
    let state = crate::api::AppState::new(
        live.clone(),
        cfg.blueprints.clone(),
        cfg.posture.clone(),
        &a.token,
        Some(Box::new(commander::Commander::new(cfg, "api")?)),
    );
    Ok(Some(crate::api::bind(a, state)?))
}

/// How long a checkpoint waits for the broker: the producer's `message.timeout.ms` (librdkafka's
/// default unless the user sets it) and 10 s.
fn settle_deadline(cfg: &Resolved) -> Duration {
    crate::kafka::option_for(
        &cfg.kafka_options,
        crate::kafka::ClientRole::Producer,
        "message.timeout.ms",
    )
    .and_then(|v| v.parse::<u64>().ok())
    .map_or(DEFAULT_MESSAGE_TIMEOUT, Duration::from_millis)
        + Duration::from_secs(10)
}

/// Starts the audit consumer's and the control reader's threads, feeding `queue`.
fn spawn_sources(
    sup: &mut Supervisor,
    cfg: &Resolved,
    consumer: Arc<source::AuditConsumer>,
    queue: &Queue,
    store: &Store,
) -> Result<(), DaemonError> {
    let k = &cfg.config.kafka;
    let stop = sup.stop().clone();
    {
        let (q, s) = (queue.clone(), stop.clone());
        sup.spawn("audit-source", move || {
            source::run_audit(consumer, q, s);
            Ok(())
        })?;
    }
    let (q, st) = (queue.clone(), store.clone());
    let (brokers, group, opts, topic) = (
        k.brokers.clone(),
        k.group_id.clone(),
        cfg.kafka_options.clone(),
        k.control_topic.clone(),
    );
    sup.spawn("control-source", move || {
        Ok(source::run_control(
            &brokers, &group, &opts, &topic, &st, q, stop,
        )?)
    })
}
