//! From a trace request to audit events: which spans are tool calls and agent bindings, and
//! each one's agent, time, outcome, volume and group.

use std::borrow::Cow;
use std::collections::HashMap;

use crate::event::error::{bounded, DecodeError};
use crate::event::model::{AgentSource, AuditEvent, EntryKind, Format, Outcome};
use crate::event::timestamp::MAX_TIMESTAMP_MS;

use super::model::{Int64, KeyValue, Request, Span, StatusCode, Text};
use super::options::OtlpOptions;

/// Longest id or name taken from a span, in bytes (as for the other formats).
const MAX_FIELD_BYTES: usize = 512;

/// The non-empty string value of attribute `key`.
fn attr<'s, 'a>(attrs: &'s [KeyValue<'a>], key: &str) -> Option<&'s Cow<'a, str>> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.string_value.as_ref())
        .map(|t| &t.0)
        .filter(|v| !v.is_empty())
}

/// The first attribute key given twice in `attrs`, if any.
fn twice<'s>(attrs: &'s [KeyValue<'_>]) -> Option<&'s str> {
    if attrs.len() <= 16 {
        return attrs
            .iter()
            .enumerate()
            .find(|(i, kv)| attrs[i + 1..].iter().any(|o| o.key == kv.key))
            .map(|(_, kv)| kv.key.as_ref());
    }
    let mut seen = std::collections::HashSet::with_capacity(attrs.len());
    attrs
        .iter()
        .find(|kv| !seen.insert(kv.key.as_ref()))
        .map(|kv| kv.key.as_ref())
}

/// Whether attribute `key` has the string value `value`.
fn attr_is(attrs: &[KeyValue<'_>], key: &str, value: &str) -> bool {
    attr(attrs, key).is_some_and(|v| v == value)
}

fn checked(field: &str, v: &str) -> Result<(), DecodeError> {
    if v.len() > MAX_FIELD_BYTES {
        return Err(DecodeError::InvalidValue {
            field: field.to_string(),
            reason: format!("{} bytes, more than {MAX_FIELD_BYTES}", v.len()),
        });
    }
    Ok(())
}

/// The tool a span calls, if it is a tool call.
fn tool_of<'s, 'a>(span: &'s Span<'a>) -> Option<&'s Cow<'a, str>> {
    let a = &span.attributes;
    if attr_is(a, "gen_ai.operation.name", "execute_tool")
        || attr_is(a, "mcp.method.name", "tools/call")
    {
        Some(attr(a, "gen_ai.tool.name").unwrap_or(&span.name))
    } else if attr_is(a, "openinference.span.kind", "TOOL") {
        Some(attr(a, "tool.name").unwrap_or(&span.name))
    } else if attr_is(a, "traceloop.span.kind", "tool") {
        Some(attr(a, "traceloop.entity.name").unwrap_or(&span.name))
    } else {
        None
    }
}

/// The outcome a span's status and error attributes give.
fn outcome_of(span: &Span<'_>) -> Outcome {
    let a = &span.attributes;
    let error_type = attr(a, "error.type");
    let failed = span
        .status
        .as_ref()
        .is_some_and(|s| s.code == StatusCode(2))
        || error_type.is_some()
        || attr_is(a, "otel.status_code", "ERROR");
    match error_type {
        _ if !failed => Outcome::Allow,
        Some(t) if t.to_ascii_lowercase().contains("timeout") => Outcome::Timeout,
        _ => Outcome::Other,
    }
}

/// The data volume in the configured attribute, if present and a number.
fn volume_of(span: &Span<'_>, opts: &OtlpOptions) -> Result<Option<f64>, DecodeError> {
    let Some(key) = opts.volume_attribute.as_deref() else {
        return Ok(None);
    };
    let Some(kv) = span.attributes.iter().find(|kv| kv.key == key) else {
        return Ok(None);
    };
    let v = &kv.value;
    let n = match (v.int_value, v.double_value, v.string_value.as_ref()) {
        (Some(Int64(i)), _, _) => i as f64,
        (None, Some(d), _) => d,
        (None, None, Some(Text(s))) => s.parse::<f64>().map_err(|_| DecodeError::InvalidValue {
            field: key.to_string(),
            reason: format!("{} is not a number", bounded(format!("{s:?}"))),
        })?,
        (None, None, None) => return Ok(None),
    };
    if !n.is_finite() || n < 0.0 {
        return Err(DecodeError::InvalidValue {
            field: key.to_string(),
            reason: format!("{n} is not a size in bytes"),
        });
    }
    Ok(Some(n))
}

/// The events of a request's tool-call and agent spans, appended to `out` in order of start
/// time; returns the number of other spans (skipped). All or nothing: a request with one bad
/// span adds no event.
pub(super) fn events<'a>(
    req: &Request<'a>,
    opts: &OtlpOptions,
    out: &mut Vec<AuditEvent<'a>>,
) -> Result<u64, DecodeError> {
    // Attribute keys are unique in a span and in a resource (the OTLP specification): a key
    // given twice is refused as a JSON key given twice is, not read first-wins.
    for rs in &req.resource_spans {
        let resource = rs.resource.as_ref().map_or(&[][..], |r| &r.attributes[..]);
        if let Some(key) = std::iter::once(resource)
            .chain(
                rs.scope_spans
                    .iter()
                    .flat_map(|ss| &ss.spans)
                    .map(|s| &s.attributes[..]),
            )
            .find_map(twice)
        {
            return Err(DecodeError::DuplicateKey {
                key: bounded(key.to_string()),
            });
        }
    }
    let before = out.len();
    let r = events_into(req, opts, out);
    match r {
        Ok(_) => out[before..].sort_by_key(|e| e.ts_ms),
        Err(_) => out.truncate(before),
    }
    r
}

fn events_into<'a>(
    req: &Request<'a>,
    opts: &OtlpOptions,
    out: &mut Vec<AuditEvent<'a>>,
) -> Result<u64, DecodeError> {
    let traces = trace_agents(req, opts);
    let mut skipped = 0;
    for rs in &req.resource_spans {
        let resource = rs
            .resource
            .as_ref()
            .map(|r| &r.attributes[..])
            .unwrap_or(&[]);
        let service = attr(resource, "service.name");
        let environment = attr(resource, "deployment.environment.name")
            .or_else(|| attr(resource, "deployment.environment"));
        for span in rs.scope_spans.iter().flat_map(|s| &s.spans) {
            let tool = tool_of(span);
            let on_span = named(span, opts);
            let kind = match (tool, &on_span) {
                (Some(_), _) => EntryKind::ToolCall,
                (None, Some(_))
                    if attr_is(&span.attributes, "gen_ai.operation.name", "invoke_agent") =>
                {
                    EntryKind::SessionBinding
                }
                _ => {
                    skipped += 1;
                    continue;
                }
            };
            let trace = (!span.trace_id.is_empty()).then_some(&span.trace_id);
            let (agent, agent_source) = agent_of(on_span, trace, &traces, service, opts)?;
            let ts_ms = start_ms(span)?;
            checked("gen_ai.agent.id", &agent)?;
            checked("traceId", &span.trace_id)?;
            checked("spanId", &span.span_id)?;
            let tool = tool.cloned().unwrap_or_default();
            checked("gen_ai.tool.name", &tool)?;
            if let Some(e) = environment {
                checked("deployment.environment.name", e)?;
            }
            let bytes = volume_of(span, opts)?;
            let group = opts
                .group_attribute
                .as_deref()
                .and_then(|g| attr(&span.attributes, g).or_else(|| attr(resource, g)));
            if let Some(g) = group {
                checked("group", g)?;
            }
            out.push(AuditEvent {
                format: Format::Otlp,
                event_id: span.span_id.clone(),
                ts_ms,
                agent_id: agent,
                tool_name: tool,
                outcome: (kind == EntryKind::ToolCall).then(|| outcome_of(span)),
                environment: environment.cloned(),
                group: group.cloned(),
                bytes,
                kind,
                agent_source,
                user: None,
                session: trace.cloned(),
                parent_session: None,
            });
        }
    }
    Ok(skipped)
}

/// A span's agent and where it comes from: named on the span, by its trace's `invoke_agent`
/// span, the service's name (when the options allow), or its trace as a session to resolve.
fn agent_of<'a>(
    on_span: Option<Cow<'a, str>>,
    trace: Option<&Cow<'a, str>>,
    traces: &HashMap<&str, Cow<'a, str>>,
    service: Option<&Cow<'a, str>>,
    opts: &OtlpOptions,
) -> Result<(Cow<'a, str>, AgentSource), DecodeError> {
    Ok(
        match (on_span, trace.and_then(|t| traces.get(t.as_ref()))) {
            (Some(n), _) => (n, AgentSource::Named),
            (None, Some(n)) => (n.clone(), AgentSource::Trace),
            (None, None) => match (service, trace) {
                (Some(s), _) if opts.service_name_fallback => (s.clone(), AgentSource::Service),
                (_, Some(t)) => (t.clone(), AgentSource::Session),
                (_, None) => {
                    return Err(DecodeError::MissingField {
                        field: "/resourceSpans/*/scopeSpans/*/spans/*/traceId",
                    })
                }
            },
        },
    )
}

/// The agent a span names on itself: the first of the configured attributes present.
fn named<'a>(span: &Span<'a>, opts: &OtlpOptions) -> Option<Cow<'a, str>> {
    opts.agent_attributes
        .iter()
        .find_map(|k| attr(&span.attributes, k))
        .cloned()
}

/// The agents of the request's own traces, by trace id: an `invoke_agent` span ends, and so is
/// exported, after its tool calls.
fn trace_agents<'s, 'a>(
    req: &'s Request<'a>,
    opts: &OtlpOptions,
) -> HashMap<&'s str, Cow<'a, str>> {
    let mut traces = HashMap::new();
    for span in req
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
    {
        if attr_is(&span.attributes, "gen_ai.operation.name", "invoke_agent")
            && !span.trace_id.is_empty()
        {
            if let Some(agent) = named(span, opts) {
                traces.insert(span.trace_id.as_ref(), agent);
            }
        }
    }
    traces
}

/// A span's start as event time (ms), at most 9999.
fn start_ms(span: &Span<'_>) -> Result<i64, DecodeError> {
    let Some(Int64(start)) = span.start_time_unix_nano else {
        return Err(DecodeError::MissingField {
            field: "/resourceSpans/*/scopeSpans/*/spans/*/startTimeUnixNano",
        });
    };
    let ts_ms = i64::try_from(start / 1_000_000).unwrap_or(i64::MAX);
    if ts_ms > MAX_TIMESTAMP_MS {
        return Err(DecodeError::InvalidValue {
            field: "startTimeUnixNano".into(),
            reason: format!("{start} ns is after 9999"),
        });
    }
    Ok(ts_ms)
}
