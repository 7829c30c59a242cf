//! SIEM outputs: CEF and ECS JSON records of incidents, commands and dead letters.

pub mod cef;
pub mod ecs;
pub mod lines;
pub mod record;
pub mod syslog;

pub use cef::CefFormatter;
pub use ecs::EcsFormatter;
pub use lines::{Format, Formatter, RecordLines};
pub use record::{DeadLetter, Record};
