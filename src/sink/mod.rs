//! The outputs: incidents, commands and dead letters as CEF, ECS JSON and OCSF records
//! ([`record`]), sent over syslog (TCP, UDP, TLS), to files, stdout or Kafka through a persistent
//! spool per sink ([`delivery`]), by email ([`email`]), and the one Kafka producer of every output
//! ([`kafka`]: the daemon's incidents, kill commands and dead letters, and the SIEM's Kafka
//! transport).
//!
//! Layer: uses `control`, `response`, `event`, `kafka`, `secret`; never the daemon or the
//! configuration.

pub mod backoff;
pub mod delivery;
pub mod email;
pub mod kafka;
pub mod record;
pub mod settings;
pub mod spool;
pub mod syslog;
pub mod transport;

pub use delivery::{SiemSinks, SinkStatus};
pub use email::EmailConfig;
pub use record::lines::{Formatter, RecordFormat, RecordLines};
pub use record::{DeadLetter, PostureSummary, Record};
pub use settings::{SinkConfig, SinkType};
