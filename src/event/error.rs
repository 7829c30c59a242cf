//! Typed decoding errors: each names the field at fault as a JSON pointer.

use thiserror::Error;

/// Why an audit event could not be decoded.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum DecodeError {
    /// The payload is larger than the configured maximum.
    #[error("event is {size} bytes, more than the maximum of {max}")]
    Oversized {
        /// Size of the payload in bytes.
        size: usize,
        /// Configured maximum in bytes.
        max: usize,
    },
    /// The payload is not a JSON object (syntax error, truncated, or another JSON type).
    #[error("not a JSON object: {reason}")]
    NotJson {
        /// serde_json's description, with line and column.
        reason: String,
    },
    /// A required field is absent or null.
    #[error("missing field {field}")]
    MissingField {
        /// JSON pointer of the field.
        field: &'static str,
    },
    /// A field has the wrong JSON type.
    #[error("field {field} should be {expected}")]
    WrongType {
        /// JSON pointer of the field.
        field: String,
        /// What was expected, e.g. "a string".
        expected: &'static str,
    },
    /// A field the decoder reads appears twice in its object (a second value a log viewer may
    /// not show would otherwise win).
    #[error("duplicate key {key:?}")]
    DuplicateKey {
        /// The key.
        key: String,
    },
    /// The event's time is further ahead of the reader's clock than allowed (a forged or broken
    /// clock would otherwise make every later call of the agent look late).
    #[error("event time {at} is more than {allowed} ahead of the clock ({now})")]
    FutureTimestamp {
        /// The event's time (RFC 3339).
        at: String,
        /// The clock (RFC 3339).
        now: String,
        /// The allowance, e.g. "5m".
        allowed: String,
    },
    /// A call of a new agent when the partition already holds the most agents it may.
    #[error("a new agent beyond the {cap} agents a partition may hold (max_agents_per_partition)")]
    AgentCap {
        /// The cap.
        cap: usize,
    },
    /// A binary message that is not a protobuf OTLP `ExportTraceServiceRequest`.
    #[error("not an OTLP protobuf request: {reason}")]
    NotProtobuf {
        /// prost's description.
        reason: String,
    },
    /// A field has the right type but an unusable value.
    #[error("field {field} is invalid: {reason}")]
    InvalidValue {
        /// JSON pointer of the field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl DecodeError {
    /// A short stable label for metrics and dead-letter headers.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::Oversized { .. } => "oversized",
            DecodeError::NotJson { .. } => "not_json",
            DecodeError::MissingField { .. } => "missing_field",
            DecodeError::WrongType { .. } => "wrong_type",
            DecodeError::InvalidValue { .. } => "invalid_value",
            DecodeError::DuplicateKey { .. } => "duplicate_key",
            DecodeError::FutureTimestamp { .. } => "future_timestamp",
            DecodeError::NotProtobuf { .. } => "not_protobuf",
            DecodeError::AgentCap { .. } => "agent_cap",
        }
    }
}

/// A message cut to 200 bytes at a character boundary, saying so (`… (N bytes)`): a parser's
/// message may quote the input (`invalid type: string "…"`), and what reaches dead-letter
/// headers, incidents and SIEM records stays bounded whatever the input.
pub fn bounded(mut s: String) -> String {
    const KEPT: usize = 200;
    if s.len() <= KEPT {
        return s;
    }
    let size = s.len();
    let mut end = KEPT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push_str(&format!("… ({size} bytes)"));
    s
}
