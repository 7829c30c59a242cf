//! AgentShield audit entries: one JSON object per entry, camelCase fields, epoch-millisecond
//! timestamps, an entry `type` (tool calls, session bindings, other runtime entries), and the
//! agent named by `agentId`, else by `userId`, else by `sessionId`.

use std::borrow::Cow;

use super::error::DecodeError;
use super::keys::Scalar;
use super::model::{AgentSource, AuditEvent, EntryKind, Format, Outcome};
use super::object::{wrong, Fields, ObjectFormat};
use super::timestamp::MAX_TIMESTAMP_MS;

const TYPE: usize = 0;
const AGENT_ID: usize = 1;
const USER_ID: usize = 2;
const SESSION_ID: usize = 3;
const PARENT_SESSION_ID: usize = 4;
const EVENT_ID: usize = 5;
const TIMESTAMP: usize = 6;
const TOOL_NAME: usize = 7;

/// The format: any object no format before it claims (the decoder's last).
pub(super) const FORMAT: ObjectFormat = ObjectFormat {
    fields: &[
        "/type",
        "/agentId",
        "/userId",
        "/sessionId",
        "/parentSessionId",
        "/eventId",
        "/timestamp",
        "/toolName",
    ],
    claims: |_| true,
    map,
};

/// What an entry of `type` is, and the outcome the type says.
fn kind_of(entry_type: Option<&str>) -> (EntryKind, Option<Outcome>) {
    match entry_type {
        Some("session_created" | "session_delegated") => (EntryKind::SessionBinding, None),
        Some("auth_denied" | "runtime_shutdown") => (EntryKind::NotAToolCall, None),
        Some(t) if t.starts_with("session_") => (EntryKind::NotAToolCall, None),
        Some("tool_allowed") => (EntryKind::ToolCall, Some(Outcome::Allow)),
        Some("tool_blocked" | "policy_denied") => (EntryKind::ToolCall, Some(Outcome::Deny)),
        _ => (EntryKind::ToolCall, None),
    }
}

fn map<'a>(f: &mut Fields<'_, 'a>, e: &mut AuditEvent<'a>) -> Result<(), DecodeError> {
    let nonempty = |v: Option<Cow<'a, str>>| v.filter(|s| !s.is_empty());
    let session = nonempty(f.optional_str(SESSION_ID)?);
    let parent_session = nonempty(f.optional_str(PARENT_SESSION_ID)?);
    let (kind, outcome) = kind_of(f.text(TYPE)?.as_deref());
    let named = nonempty(f.optional_str(AGENT_ID)?);
    let user = nonempty(f.optional_str(USER_ID)?);
    let (agent_id, agent_source) = match (named, &user, &session) {
        (Some(a), _, _) => (a, AgentSource::Named),
        (None, Some(u), _) => (u.clone(), AgentSource::User),
        (None, None, Some(s)) => (s.clone(), AgentSource::Session),
        (None, None, None) => return Err(DecodeError::MissingField { field: "/agent_id" }),
    };
    let ts_ms = match f.take(TIMESTAMP) {
        Scalar::Int(v) => v,
        Scalar::UInt(v) => i64::try_from(v).unwrap_or(i64::MAX),
        Scalar::Float(v) if v.is_finite() => v as i64,
        Scalar::Absent | Scalar::Null => {
            return Err(DecodeError::MissingField {
                field: f.pointer(TIMESTAMP),
            })
        }
        _ => return Err(wrong(f.pointer(TIMESTAMP), "epoch milliseconds (a number)")),
    };
    if !(0..=MAX_TIMESTAMP_MS).contains(&ts_ms) {
        return Err(DecodeError::InvalidValue {
            field: f.pointer(TIMESTAMP).into(),
            reason: format!("{ts_ms} ms is outside 1970..9999"),
        });
    }
    e.format = Format::AgentShield;
    e.event_id = f.optional_str(EVENT_ID)?.unwrap_or(Cow::Borrowed(""));
    e.ts_ms = ts_ms;
    e.agent_id = agent_id;
    e.tool_name = f.optional_str(TOOL_NAME)?.unwrap_or(Cow::Borrowed(""));
    e.outcome = outcome;
    e.kind = kind;
    e.agent_source = agent_source;
    e.user = user;
    e.session = session;
    e.parent_session = parent_session;
    Ok(())
}
