//! SIEM outputs: CEF, ECS JSON and OCSF records of incidents, commands and dead letters, sent over
//! syslog (TCP, UDP, TLS), to files, stdout or Kafka, through a persistent spool per sink.
//!
//! Layer: uses `control`, `response`, `event`, `kafka`, `secret`; never the daemon or the
//! configuration.

pub mod backoff;
pub mod cef;
pub mod ecs;
pub mod email;
pub mod lines;
pub mod ocsf;
pub mod record;
pub mod settings;
pub mod sink;
pub mod spool;
pub mod syslog;
pub mod transport;

pub use cef::CefFormatter;
pub use ecs::EcsFormatter;
pub use email::EmailConfig;
pub use lines::{Formatter, RecordFormat, RecordLines};
pub use ocsf::{OcsfFormatter, OCSF_VERSION};
pub use record::{DeadLetter, PostureSummary, Record};
pub use settings::{SinkConfig, SinkType};
pub use sink::{SiemSinks, SinkStatus};
