//! Audit events: the model the engine consumes and the decoders of the SDK formats that carry it.
//!
//! Layer: uses nothing of the crate.

mod decode;
mod error;
mod model;
pub mod otlp;
mod scan;
mod timestamp;

pub(crate) use decode::parse_pointer;
pub use decode::{
    Decoder, DecoderOptions, DEFAULT_MAX_EVENT_BYTES, DEFAULT_VOLUME_POINTER, MAX_AGENT_ID_BYTES,
};
pub use error::{bounded, DecodeError};
pub use model::{tool_hash, AgentSource, AuditEvent, EntryKind, Format, Outcome};
pub use otlp::OtlpOptions;
pub use timestamp::{format_rfc3339_ms, parse_rfc3339_ms, rfc3339_serde, MAX_TIMESTAMP_MS};
