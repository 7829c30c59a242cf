//! OTLP/JSON (the Collector's `otlp_json`): a trace request as one JSON object.

use crate::event::error::{bounded, DecodeError};
use crate::event::model::AuditEvent;

use super::model::Request;
use super::options::OtlpOptions;
use super::spans::events;

/// Whether `payload` is an OTLP/JSON request: a JSON object whose first key is
/// `resourceSpans`.
pub fn claims(payload: &[u8]) -> bool {
    let t = payload.trim_ascii_start();
    t.strip_prefix(b"{")
        .is_some_and(|r| r.trim_ascii_start().starts_with(b"\"resourceSpans\""))
}

/// Decodes an OTLP/JSON request into one event per span that is a tool call or an agent
/// binding, appended to `out`; returns the number of other spans (skipped). All or nothing: a
/// request with one bad span adds no event.
pub fn decode<'a>(
    payload: &'a [u8],
    opts: &OtlpOptions,
    out: &mut Vec<AuditEvent<'a>>,
) -> Result<u64, DecodeError> {
    let req: Request<'a> = serde_json::from_slice(payload).map_err(|e| DecodeError::NotJson {
        reason: bounded(e.to_string()),
    })?;
    events(&req, opts, out)
}
