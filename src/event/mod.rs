//! Audit events: the model the engine consumes and the decoders of the SDK formats that carry it.
//!
//! Layer: uses nothing of the crate.

mod agent_spm;
mod agentshield;
mod decode;
mod error;
mod keys;
mod model;
mod object;
pub mod otlp;
mod scan;
mod timestamp;
mod walk;

pub use decode::{Decoder, DecoderOptions, DEFAULT_MAX_EVENT_BYTES, DEFAULT_VOLUME_POINTER};
pub use error::{bounded, DecodeError};
pub(crate) use keys::parse_pointer;
pub use model::{tool_hash, AgentSource, AuditEvent, EntryKind, Format, Outcome};
pub use object::MAX_AGENT_ID_BYTES;
pub use otlp::OtlpOptions;
pub use timestamp::{format_rfc3339_ms, parse_rfc3339_ms, rfc3339_serde, MAX_TIMESTAMP_MS};
