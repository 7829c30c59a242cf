//! agent-guardian: an independent guard for fleets of AI agents.
//!
//! It reads the audit events that agent runtime-security SDKs (Agent-SPM, AgentShield) write for
//! every tool call, learns what is normal for each agent, detects frequency and volume spikes,
//! suspicious tool sequences and off-hours activity on event time, and decides kills.
//!
//! # Layout
//! - [`event`]: the audit event model and the decoders of the SDK formats.
//! - [`blueprint`]: blueprint schema, validation, and assignment of agents to blueprints.
//! - [`detect`]: the detectors, pure functions of (agent state, event, blueprint), and the
//!   learned baselines they use.
//! - [`response`]: incidents with deterministic ids, and the kill policy.
//! - [`state`]: the per-agent state value, the fleet's state and counters, and the snapshot codec.
//! - [`prefetch`]: software prefetch hints (a leaf: imports nothing of the crate).
//! - [`engine`]: ties them together: one event in, incidents out; findings through the agent's
//!   cohort (a fleet shift explains what a whole cohort does at once).
//! - [`replay`]: the `guardian replay` job (file or stdin source, JSON-lines sink).
//! - [`simulate`]: the realistic fleet generator behind `guardian simulate`, tests and benches.
//! - [`config`]: the daemon's configuration file.
//! - [`control`]: signed kill / revive commands of the control topic.
//! - [`daemon`]: `guardian run`: Kafka sources, per-partition engines, sled store, Kafka sinks.
//! - [`siem`]: CEF and ECS JSON records, syslog / file / stdout / Kafka sinks with on-disk spools.
//! - [`posture`]: fleet inventory, risk with reasons, compliance with evidence.
//! - [`api`]: the HTTP admin API, Prometheus metrics and the web page.
//! - [`demo`]: the daemon against librdkafka's in-process mock cluster.
//! - [`cli`]: command-line interface.
//!
//! - [`store`]: the sled state store (agents, offsets, incidents, ledger, score history).
//! - [`telemetry`]: the daemon's counters and the live view the admin API reads.
//! - [`secret`]: configuration secrets whose `Debug` and `Serialize` forms redact.
//! - [`files`]: reading the files the configuration names (regular files of bounded size; a leaf).
//! - [`text`]: text an attacker may have written, shown safely in logs and tables (a leaf).
//! - [`kafka`]: librdkafka client configuration, and reading a topic back to its end.
//! - [`tls`]: PEM certificate chains and keys for rustls.
//! - [`stop`]: the one stop signal every daemon thread watches.
//!
//! Top-level modules only point down (`tests/layers.rs` checks it): commands (`cli`, `demo`,
//! `replay`) → `daemon` → `config` → `api` → `telemetry` → `store` → `siem`, `posture` → `engine`
//! → `state` → `detect` → `response` → `blueprint` → `event`, with `control`, `secret`, `kafka`,
//! `stop` and `prefetch` beside them; each module's doc says what it owns and what it may use.
//!
//! # Data flow
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
