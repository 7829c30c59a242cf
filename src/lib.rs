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
//! | daemon | [`daemon`]: `guardian run`, its threads under one supervisor |
//! | configuration | [`config`] |
//! | admin API | [`api`]: HTTP API, Prometheus metrics, the web page |
//! | run-time view | [`telemetry`]: counters and the live view the API reads |
//! | state store | [`store`]: sled (agents, offsets, incidents, ledger, score history, spools' database) |
//! | outputs | [`siem`]: CEF, ECS and OCSF records; syslog, file, stdout, Kafka and email deliveries with on-disk spools |
//! | fleet view | [`posture`]: inventory, risk with reasons, compliance with evidence |
//! | core | [`engine`] (one event in, incidents out; findings through the agent's cohort) → [`state`] → [`detect`] (pure detectors) → [`response`] (incidents, kill policy) → [`blueprint`]; [`control`] (signed commands); [`simulate`] |
//! | leaves | [`event`] (the model and one decoder per input format), [`kafka`] (client builder, the one producer of every output), [`stop`] (the one stop signal), [`text`], [`files`], [`secret`], [`tls`], [`prefetch`] |
//!
//! # The daemon's flow (`guardian run`)
//! ```text
//! audit topics ──► daemon::source (consumer group) ─┐                     ┌─► kafka::producer ─► incidents, control (kills), dead letters
//! control topic ─► daemon::source (reader) ─────────┼─► bounded queue ──► engine thread: daemon::fold (one engine::Engine
//! posture thread (daemon::snapshot) ────────────────┘                      per partition) ─► daemon::publish ─┤
//!                                                                                                            └─► siem spools ─► one delivery thread per sink
//!                         checkpoint: outputs acknowledged ─► daemon::writer thread: store (sled batch + flush) ─► offsets committed
//! admin API thread (api) ◄── store, telemetry
//! ```
//! Every thread runs under one `daemon::supervise::Supervisor`: the sources, the posture thread
//! and the API watch the stop signal; the engine ends when its sources have; the deliveries and
//! the writer end when the engine closes their input.
//!
//! # The replay's flow (`guardian replay`, and the engine inside the daemon)
//! ```text
//! source (file / stdin) ─► event::Decoder ─► engine::Engine ─► Vec<Incident> ─► sink (stdout)
//!                                              │  state::Seen: a re-delivered event is dropped
//!                                              │  per agent: state::AgentState
//!                                              │    detect::DetectorState::observe → Finding
//!                                              │  per finding: the agent's cohort (held, then
//!                                              │    explained by a fleet shift or raised)
//!                                              │    response::KillState::record/decide
//!                                              └─ state::Snapshot (snapshot / restore)
//! ```

pub mod api;
pub mod blueprint;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
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
pub mod siem;
pub mod simulate;
pub mod state;
pub mod stop;
pub mod store;
pub mod telemetry;
pub mod text;
pub mod tls;
