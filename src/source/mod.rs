//! Where events come from: the daemon's Kafka consumers ([`kafka`]: the audit consumer group and
//! the control-topic reader, feeding the engine's one bounded queue), and the replay's lines from
//! a file or stdin ([`lines`]), and the restore of a partition from the changelog topic
//! ([`changelog`]).
//!
//! Layer: uses `config`, `store`, `state`, `stop`, `kafka`; the daemon and the commands use it.

pub mod changelog;
pub mod kafka;
pub mod lines;
pub mod queue;
