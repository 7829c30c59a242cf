//! agent-guardian: an independent guard for fleets of AI agents.
//!
//! It reads the audit events that agent runtime-security SDKs (Agent-SPM, AgentShield) and
//! OpenTelemetry instrumentation (OTLP, protobuf or JSON) write for every tool call, learns what is normal for each agent, detects frequency and volume spikes,
//! suspicious tool sequences and off-hours activity on event time, and decides kills.
//!
//! # Layers
//! From the top; a module uses its own layer and those below (`tests/layers.rs` holds this
//! order and checks every import against it, and that no layer has a cycle):
//!
//! | layer | modules |
//! |---|---|
//! | commands | [`cli`], [`demo`] (the daemon on librdkafka's mock cluster), [`replay`] (`guardian replay`) |
//! | daemon | [`app`]: `guardian run`, start-up, its threads under one supervisor, the partition fold, publishing, checkpoints |
//! | sources | [`source`]: the Kafka consumers, the replay's file or stdin, the engine's one queue |
//! | configuration | [`config`] |
//! | admin API | [`api`]: HTTP API, Prometheus metrics, the web page |
//! | run-time view | [`telemetry`]: counters and the live view the API reads |
//! | state store | [`store`]: sled (agents, offsets, incidents, ledger, score history, spools' database) |
//! | outputs | [`sink`]: CEF, ECS and OCSF records; syslog, file, stdout, Kafka and email deliveries with on-disk spools; the one Kafka producer |
//! | fleet view | [`posture`]: inventory, risk with reasons, compliance with evidence |
//! | core | [`engine`] (one event in, incidents out; findings through the agent's cohort) → [`state`] → [`detect`] (pure detectors) → [`response`] (incidents, kill policy) → [`blueprint`]; [`control`] (signed commands); [`simulate`] |
//! | leaves | [`event`] (the model and one decoder per input format), [`kafka`] (the client builder), [`stop`] (the one stop signal), [`text`], [`files`], [`secret`], [`tls`], [`prefetch`], [`chunks`] (work split over threads) |
//!
//! # The daemon's flow (`guardian run`)
//! ```text
//! audit topics ──► source::kafka (consumer group) ─┐                       ┌─► sink::kafka ─► incidents, control (kills), dead letters
//! control topic ─► source::kafka (reader) ─────────┼─► source::queue ──► engine thread: app::fold (one engine::Engine
//! posture thread (app::snapshot) ──────────────────┘   (bounded)          per partition) ─► app::publish ─┤
//!                                                                                                         └─► sink spools ─► one delivery thread per sink
//!                         checkpoint: outputs acknowledged ─► app::writer thread: store (sled batch + flush) ─► offsets committed
//! posture topic ─► app::peers (the other instances' signed snapshots) ─► telemetry::Live::peers
//! admin API thread (api) ◄── store, telemetry (its fleet view merged with the peers')
//! ```
//! Every thread runs under one `app::supervise::Supervisor`: the sources, the posture thread
//! and the API watch the stop signal; the engine ends when its sources have; the deliveries and
//! the writer end when the engine closes their input.
//!
//! # The replay's flow (`guardian replay`, and the engine inside the daemon)
//! ```text
//! source::lines (file / stdin) ─► event::Decoder ─► engine::Engine ─► Vec<Incident> ─► sink (stdout)
//!                                              │  state::Seen: a re-delivered event is dropped
//!                                              │  per agent: state::AgentState
//!                                              │    detect::DetectorState::observe → Finding
//!                                              │  per finding: the agent's cohort (held, then
//!                                              │    explained by a fleet shift or raised)
//!                                              │    response::KillState::record/decide
//!                                              └─ state::Snapshot (snapshot / restore)
//! ```

pub mod api;
pub mod app;
pub mod blueprint;
pub mod chunks;
pub mod cli;
pub mod config;
pub mod control;
pub mod demo;
pub mod detect;
pub mod engine;
pub mod event;
pub mod files;
pub mod kafka;
pub mod posture;
pub mod prefetch;
pub mod replay;
pub mod response;
pub mod secret;
pub mod simulate;
pub mod sink;
pub mod source;
pub mod state;
pub mod stop;
pub mod store;
pub mod telemetry;
pub mod text;
pub mod tls;
