//! Agent-SPM audit events: one JSON object per tool call, snake_case fields, an RFC 3339
//! timestamp and an outcome.

use std::borrow::Cow;

use super::error::DecodeError;
use super::keys::Scalar;
use super::model::{AuditEvent, Format, Outcome};
use super::object::{quoted, wrong, Fields, ObjectFormat};
use super::timestamp::parse_rfc3339_ms;

const AGENT_ID: usize = 0;
const EVENT_ID: usize = 1;
const TIMESTAMP: usize = 2;
const TOOL_NAME: usize = 3;
const OUTCOME: usize = 4;

/// The format: an object with `agent_id` or `event_id` is Agent-SPM's.
pub(super) const FORMAT: ObjectFormat = ObjectFormat {
    fields: &[
        "/agent_id",
        "/event_id",
        "/timestamp",
        "/tool_name",
        "/outcome",
    ],
    claims: |f| f.present(AGENT_ID) || f.present(EVENT_ID),
    map,
};

fn map<'a>(f: &mut Fields<'_, 'a>, e: &mut AuditEvent<'a>) -> Result<(), DecodeError> {
    e.format = Format::AgentSpm;
    e.agent_id = f.required_str(AGENT_ID)?;
    e.ts_ms = match f.take(TIMESTAMP) {
        Scalar::Str(s) => parse_rfc3339_ms(&s).ok_or_else(|| DecodeError::InvalidValue {
            field: f.pointer(TIMESTAMP).into(),
            reason: format!(
                "{} is not an RFC 3339 time between 1970 and 9999",
                quoted(&s)
            ),
        })?,
        Scalar::Absent | Scalar::Null => {
            return Err(DecodeError::MissingField {
                field: f.pointer(TIMESTAMP),
            })
        }
        _ => return Err(wrong(f.pointer(TIMESTAMP), "an RFC 3339 string")),
    };
    e.event_id = f.optional_str(EVENT_ID)?.unwrap_or(Cow::Borrowed(""));
    e.tool_name = f.optional_str(TOOL_NAME)?.unwrap_or(Cow::Borrowed(""));
    e.outcome = f.text(OUTCOME)?.map(|s| Outcome::parse(&s));
    Ok(())
}
