//! OpenTelemetry traces as audit input: an OTLP `ExportTraceServiceRequest`, in protobuf (the
//! Collector's `otlp_proto`) or JSON (`otlp_json`), holds a batch of spans; each tool-call span
//! becomes one audit event.
//!
//! - A tool call is a span with `gen_ai.operation.name = execute_tool` (tool
//!   `gen_ai.tool.name`), an MCP span with `mcp.method.name = tools/call` (tool
//!   `gen_ai.tool.name`, else the span name), an OpenInference span with
//!   `openinference.span.kind = TOOL` (tool `tool.name`, else the span name), or, from
//!   instrumentations built on earlier conventions, an OpenLLMetry span with
//!   `traceloop.span.kind = tool` (tool `traceloop.entity.name`, else the span name).
//! - An `invoke_agent` span (`gen_ai.operation.name`) that names its agent binds its trace to
//!   the agent (a session binding, the trace id being the session); other spans are skipped.
//! - The agent: the first of [`OtlpOptions::agent_attributes`] (`gen_ai.agent.id`, then
//!   `gen_ai.agent.name`) on the span; else the agent of the trace's `invoke_agent` span, in the
//!   same request or seen before (resolved like AgentShield sessions); else the resource's
//!   `service.name` when [`OtlpOptions::service_name_fallback`] is on, else the trace id.
//! - Event time: the span's start. Event id: the span id. Environment: the resource's
//!   `deployment.environment.name` (or the older `deployment.environment`). Outcome: `ALLOW`
//!   unless the span's status is `ERROR` or it has `error.type` (or the older
//!   `otel.status_code = ERROR`): then `TIMEOUT` when the error type says timeout, else an
//!   outcome of its own ([`Outcome::Other`]). Volume: [`OtlpOptions::volume_attribute`].
//!   Group (for blueprint assignment): [`OtlpOptions::group_attribute`], on the span or its
//!   resource.
//! - The spans of a request are handed on in order of start time.
//!
//! In OTLP/JSON, trace and span ids are hex strings, 64-bit integers are strings (numbers are
//! accepted too) and enums are integers.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use opentelemetry_proto::tonic::collector::trace::v1 as collector;
use opentelemetry_proto::tonic::common::v1 as common;
use prost::Message;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::error::{bounded, DecodeError};
use super::model::{AgentSource, AuditEvent, EntryKind, Format, Outcome};
use super::timestamp::MAX_TIMESTAMP_MS;

/// Longest id or name taken from a span, in bytes (as for the other formats).
const MAX_FIELD_BYTES: usize = 512;

/// How spans are read: which attributes name the agent, and where the data volume is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpOptions {
    /// Span attributes naming the agent, the first present wins.
    pub agent_attributes: Vec<String>,
    /// Whether a span whose agent is named neither on it nor on its trace takes the resource's
    /// `service.name` (else the trace id).
    pub service_name_fallback: bool,
    /// Span attribute holding the call's data volume in bytes (none by default).
    pub volume_attribute: Option<String>,
    /// Attribute holding the agent's group for blueprint assignment rules, on the span or its
    /// resource (none by default; the assignment's `group_field` is a JSON pointer into events
    /// and does not apply to spans).
    pub group_attribute: Option<String>,
}

impl Default for OtlpOptions {
    fn default() -> Self {
        OtlpOptions {
            agent_attributes: vec!["gen_ai.agent.id".into(), "gen_ai.agent.name".into()],
            service_name_fallback: true,
            volume_attribute: None,
            group_attribute: None,
        }
    }
}

// The request's strings borrow from a JSON payload where they have no escapes (`Cow`), so a
// span's ids, tool and agent reach its event without a copy.

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Request<'a> {
    #[serde(default, borrow)]
    resource_spans: Vec<ResourceSpans<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ResourceSpans<'a> {
    #[serde(default, borrow)]
    resource: Option<Attributes<'a>>,
    #[serde(default, borrow)]
    scope_spans: Vec<ScopeSpans<'a>>,
}

#[derive(Deserialize, Default)]
struct Attributes<'a> {
    #[serde(default, borrow)]
    attributes: Vec<KeyValue<'a>>,
}

#[derive(Deserialize, Default)]
struct ScopeSpans<'a> {
    #[serde(default, borrow)]
    spans: Vec<Span<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Span<'a> {
    #[serde(default, borrow)]
    trace_id: Cow<'a, str>,
    #[serde(default, borrow)]
    span_id: Cow<'a, str>,
    #[serde(default, borrow)]
    name: Cow<'a, str>,
    #[serde(default)]
    start_time_unix_nano: Option<Int64>,
    #[serde(default, borrow)]
    attributes: Vec<KeyValue<'a>>,
    #[serde(default)]
    status: Option<Status>,
}

#[derive(Deserialize, Default)]
struct Status {
    /// 0 unset, 1 ok, 2 error (or the enum's name).
    #[serde(default)]
    code: StatusCode,
}

#[derive(Deserialize)]
struct KeyValue<'a> {
    #[serde(borrow)]
    key: Cow<'a, str>,
    #[serde(default, borrow)]
    value: AnyValue<'a>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct AnyValue<'a> {
    #[serde(default, borrow)]
    string_value: Option<Text<'a>>,
    #[serde(default)]
    int_value: Option<Int64>,
    #[serde(default)]
    double_value: Option<f64>,
}

/// A string that borrows from the payload when it can (serde borrows a `Cow` only outside an
/// `Option`).
#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

/// An OTLP/JSON 64-bit integer: a string of digits, or a JSON number (negative ones are
/// refused: no value read here may be negative).
#[derive(Debug, Clone, Copy, Default)]
struct Int64(u64);

impl<'de> Deserialize<'de> for Int64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Int64;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an unsigned 64-bit integer, or one as a string of digits")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Int64, E> {
                Ok(Int64(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Int64, E> {
                u64::try_from(v)
                    .map(Int64)
                    .map_err(|_| E::custom(format!("{v} is negative")))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Int64, E> {
                s.parse().map(Int64).map_err(|_| {
                    E::custom(format!(
                        "{} is not an unsigned 64-bit integer",
                        bounded(format!("{s:?}"))
                    ))
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// A span status code: its number, or the enum's name (`STATUS_CODE_ERROR`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct StatusCode(i32);

impl<'de> Deserialize<'de> for StatusCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = StatusCode;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a status code: 0, 1, 2 or its name")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<StatusCode, E> {
                i32::try_from(v)
                    .map(StatusCode)
                    .map_err(|_| E::custom(format!("{v} is not a status code")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<StatusCode, E> {
                i32::try_from(v)
                    .map(StatusCode)
                    .map_err(|_| E::custom(format!("{v} is not a status code")))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<StatusCode, E> {
                match s {
                    "STATUS_CODE_UNSET" => Ok(StatusCode(0)),
                    "STATUS_CODE_OK" => Ok(StatusCode(1)),
                    "STATUS_CODE_ERROR" => Ok(StatusCode(2)),
                    _ => Err(E::custom(format!(
                        "{} is not a status code",
                        bounded(format!("{s:?}"))
                    ))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// Whether `payload` is an OTLP/JSON request: a JSON object whose first key is
/// `resourceSpans`.
pub fn is_otlp_json(payload: &[u8]) -> bool {
    let t = payload.trim_ascii_start();
    t.strip_prefix(b"{")
        .is_some_and(|r| r.trim_ascii_start().starts_with(b"\"resourceSpans\""))
}

/// Whether `payload` may be a protobuf OTLP request: it starts with the tag of its first field
/// (`resource_spans`, length-delimited) and is not a JSON object.
pub fn is_otlp_proto(payload: &[u8]) -> bool {
    payload.first() == Some(&0x0A) && !payload.trim_ascii_start().starts_with(b"{")
}

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

/// Decodes an OTLP/JSON request into one event per span that is a tool call or an agent
/// binding, appended to `out`; returns the number of other spans (skipped). All or nothing: a
/// request with one bad span adds no event.
pub fn decode_json<'a>(
    payload: &'a [u8],
    opts: &OtlpOptions,
    out: &mut Vec<AuditEvent<'a>>,
) -> Result<u64, DecodeError> {
    let req: Request<'a> = serde_json::from_slice(payload).map_err(|e| DecodeError::NotJson {
        reason: bounded(e.to_string()),
    })?;
    events(&req, opts, out)
}

/// Decodes a protobuf OTLP request (`ExportTraceServiceRequest`) as [`decode_json`] does.
pub fn decode_proto<'a>(
    payload: &[u8],
    opts: &OtlpOptions,
    out: &mut Vec<AuditEvent<'a>>,
) -> Result<u64, DecodeError> {
    let req = collector::ExportTraceServiceRequest::decode(payload).map_err(|e| {
        DecodeError::NotProtobuf {
            reason: bounded(e.to_string()),
        }
    })?;
    events(&from_proto(req), opts, out)
}

/// The protobuf request in the JSON request's terms (ids as lower-case hex).
fn from_proto(req: collector::ExportTraceServiceRequest) -> Request<'static> {
    fn attributes(kvs: Vec<common::KeyValue>) -> Vec<KeyValue<'static>> {
        kvs.into_iter()
            .map(|kv| {
                let mut value = AnyValue::default();
                match kv.value.and_then(|v| v.value) {
                    Some(common::any_value::Value::StringValue(s)) => {
                        value.string_value = Some(Text(Cow::Owned(s)))
                    }
                    // A negative integer is no volume: kept out, as in JSON.
                    Some(common::any_value::Value::IntValue(i)) => {
                        value.int_value = u64::try_from(i).ok().map(Int64)
                    }
                    Some(common::any_value::Value::DoubleValue(d)) => value.double_value = Some(d),
                    _ => {}
                }
                KeyValue {
                    key: Cow::Owned(kv.key),
                    value,
                }
            })
            .collect()
    }
    Request {
        resource_spans: req
            .resource_spans
            .into_iter()
            .map(|rs| ResourceSpans {
                resource: rs.resource.map(|r| Attributes {
                    attributes: attributes(r.attributes),
                }),
                scope_spans: rs
                    .scope_spans
                    .into_iter()
                    .map(|ss| ScopeSpans {
                        spans: ss
                            .spans
                            .into_iter()
                            .map(|s| Span {
                                trace_id: Cow::Owned(hex::encode(&s.trace_id)),
                                span_id: Cow::Owned(hex::encode(&s.span_id)),
                                name: Cow::Owned(s.name),
                                start_time_unix_nano: (s.start_time_unix_nano != 0)
                                    .then_some(Int64(s.start_time_unix_nano)),
                                attributes: attributes(s.attributes),
                                status: s.status.map(|st| Status {
                                    code: StatusCode(st.code),
                                }),
                            })
                            .collect(),
                    })
                    .collect(),
            })
            .collect(),
    }
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

fn events<'a>(
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
    let named = |span: &Span<'a>| -> Option<Cow<'a, str>> {
        opts.agent_attributes
            .iter()
            .find_map(|k| attr(&span.attributes, k))
            .cloned()
    };
    // The agents of the request's own traces: an `invoke_agent` span ends, and so is exported,
    // after its tool calls.
    let mut traces: HashMap<&str, Cow<'a, str>> = HashMap::new();
    for span in req
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
    {
        if attr_is(&span.attributes, "gen_ai.operation.name", "invoke_agent")
            && !span.trace_id.is_empty()
        {
            if let Some(agent) = named(span) {
                traces.insert(&span.trace_id, agent);
            }
        }
    }
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
            let on_span = named(span);
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
            let (agent, agent_source) = match (on_span, trace.and_then(|t| traces.get(t.as_ref())))
            {
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
            };
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(spans: serde_json::Value) -> Vec<u8> {
        json!({"resourceSpans": [{
            "resource": {"attributes": [
                {"key": "service.name", "value": {"stringValue": "travel-svc"}},
                {"key": "deployment.environment.name", "value": {"stringValue": "prod"}}]},
            "scopeSpans": [{"scope": {"name": "s"}, "spans": spans}]}]})
        .to_string()
        .into_bytes()
    }

    fn kv(k: &str, v: &str) -> serde_json::Value {
        json!({"key": k, "value": {"stringValue": v}})
    }

    #[test]
    fn tool_spans_become_events_and_agent_spans_bind_their_trace() {
        let payload = request(json!([
            {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "aaaaaaaaaaaaaaaa",
             "name": "invoke_agent planner", "startTimeUnixNano": "1772550000000000000",
             "attributes": [kv("gen_ai.operation.name", "invoke_agent"), kv("gen_ai.agent.name", "planner")]},
            {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "bbbbbbbbbbbbbbbb",
             "name": "execute_tool get_weather", "startTimeUnixNano": 1772550001500000000u64,
             "attributes": [kv("gen_ai.operation.name", "execute_tool"), kv("gen_ai.tool.name", "get_weather")]},
            {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "cccccccccccccccc",
             "name": "tools/call search", "startTimeUnixNano": "1772550002000000000",
             "attributes": [kv("mcp.method.name", "tools/call")]},
            {"traceId": "t", "spanId": "d", "name": "lookup", "startTimeUnixNano": "1772550003000000000",
             "attributes": [kv("openinference.span.kind", "TOOL"), kv("tool.name", "lookup_order"),
                            kv("gen_ai.agent.id", "agent-7")]},
            {"traceId": "t", "spanId": "e", "name": "chat", "startTimeUnixNano": "1772550004000000000",
             "attributes": [kv("gen_ai.operation.name", "chat")]}
        ]));
        assert!(is_otlp_json(&payload));
        let mut out = Vec::new();
        assert_eq!(
            decode_json(&payload, &OtlpOptions::default(), &mut out),
            Ok(1),
            "the chat span is skipped"
        );
        let got: Vec<_> = out
            .iter()
            .map(|e| {
                (
                    e.kind,
                    e.agent_id.as_ref(),
                    e.agent_source,
                    e.tool_name.as_ref(),
                    e.ts_ms,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    EntryKind::SessionBinding,
                    "planner",
                    AgentSource::Named,
                    "",
                    1_772_550_000_000
                ),
                (
                    EntryKind::ToolCall,
                    "planner",
                    AgentSource::Trace,
                    "get_weather",
                    1_772_550_001_500
                ),
                (
                    EntryKind::ToolCall,
                    "planner",
                    AgentSource::Trace,
                    "tools/call search",
                    1_772_550_002_000
                ),
                (
                    EntryKind::ToolCall,
                    "agent-7",
                    AgentSource::Named,
                    "lookup_order",
                    1_772_550_003_000
                ),
            ]
        );
        assert_eq!(out[1].event_id, "bbbbbbbbbbbbbbbb");
        assert_eq!(
            out[1].session.as_deref(),
            Some("5b8efff798038103d269b633813fc60c")
        );
        assert_eq!(out[1].environment.as_deref(), Some("prod"));
        assert_eq!(out[1].outcome, Some(Outcome::Allow));
        assert_eq!(out[1].bytes, None, "no volume attribute by default");
    }

    /// An attribute given twice in a span or a resource is refused whole (as a JSON key given
    /// twice is), not read first-wins; the same key in two spans is no duplicate.
    #[test]
    fn an_attribute_given_twice_is_a_duplicate_key() {
        let span = |attrs: Vec<serde_json::Value>| {
            json!({"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b1",
                   "name": "execute_tool", "startTimeUnixNano": "1772550001000000000",
                   "attributes": attrs})
        };
        let tool = || {
            vec![
                kv("gen_ai.operation.name", "execute_tool"),
                kv("gen_ai.tool.name", "read_ledger"),
            ]
        };
        let mut twice = tool();
        twice.push(kv("gen_ai.agent.id", "fin-7"));
        twice.push(kv("gen_ai.agent.id", "decoy"));
        // (skipped spans, events) of a request, or its error.
        let decode = |payload: &[u8]| {
            let mut out = Vec::new();
            decode_json(payload, &OtlpOptions::default(), &mut out).map(|n| (n, out.len()))
        };
        assert_eq!(
            decode(&request(json!([span(twice.clone())]))),
            Err(DecodeError::DuplicateKey {
                key: "gen_ai.agent.id".into()
            })
        );
        // Many attributes (another way of looking): still found.
        let mut many: Vec<_> = (0..40).map(|i| kv(&format!("app.k{i}"), "v")).collect();
        many.extend(twice);
        assert!(matches!(
            decode(&request(json!([span(many)]))),
            Err(DecodeError::DuplicateKey { .. })
        ));
        // In the resource.
        let mut req: serde_json::Value =
            serde_json::from_slice(&request(json!([span(tool())]))).expect("json");
        req["resourceSpans"][0]["resource"]["attributes"]
            .as_array_mut()
            .expect("attributes")
            .push(kv("service.name", "other-svc"));
        assert!(matches!(
            decode(req.to_string().as_bytes()),
            Err(DecodeError::DuplicateKey { .. })
        ));
        // The same keys in two spans.
        let mut other = span(tool());
        other["spanId"] = "b2".into();
        assert_eq!(decode(&request(json!([span(tool()), other]))), Ok((0, 2)));
    }

    /// An agent's span ends after its tool calls, so exporters send it after them: in the same
    /// request it still names them.
    #[test]
    fn a_trace_takes_its_agent_from_an_agent_span_sent_after_it_or_earlier() {
        let tool = |span: &str, at: &str| {
            json!({"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": span, "name": "execute_tool",
                   "startTimeUnixNano": at, "attributes": [kv("gen_ai.operation.name", "execute_tool"),
                   kv("gen_ai.tool.name", "read_ledger")]})
        };
        let agent_span = json!({"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "a0",
            "name": "invoke_agent", "startTimeUnixNano": "1772550000000000000",
            "attributes": [kv("gen_ai.operation.name", "invoke_agent"), kv("gen_ai.agent.id", "fin-7")]});
        let first = request(json!([
            tool("b2", "1772550002000000000"),
            tool("b1", "1772550001000000000"),
            agent_span
        ]));
        let mut out = Vec::new();
        decode_json(&first, &OtlpOptions::default(), &mut out).expect("decodes");
        let got: Vec<_> = out
            .iter()
            .map(|e| (e.event_id.as_ref(), e.agent_id.as_ref(), e.agent_source))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a0", "fin-7", AgentSource::Named),
                ("b1", "fin-7", AgentSource::Trace),
                ("b2", "fin-7", AgentSource::Trace)
            ],
            "in order of start, each with the trace's agent"
        );
        // The next request of the same trace has no agent span: the resource's service stands
        // in until the session map resolves it (`state::identity`).
        let later = request(json!([tool("b3", "1772550003000000000")]));
        let mut next = Vec::new();
        decode_json(&later, &OtlpOptions::default(), &mut next).expect("decodes");
        assert_eq!(next[0].agent_id, "travel-svc");
        assert_eq!(next[0].agent_source, AgentSource::Service);
        // Without the service fallback, an unresolved call keeps its trace id.
        let opts = OtlpOptions {
            service_name_fallback: false,
            ..OtlpOptions::default()
        };
        let lone = request(json!([tool("c1", "1772550004000000000")]));
        let mut alone = Vec::new();
        decode_json(&lone, &opts, &mut alone).expect("decodes");
        assert_eq!(alone[0].agent_id, "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(alone[0].agent_source, AgentSource::Session);
    }

    #[test]
    fn outcome_comes_from_the_status_and_error_type_and_volume_from_the_chosen_attribute() {
        let span = |extra: Vec<serde_json::Value>, status: serde_json::Value| {
            let mut attrs = vec![
                kv("gen_ai.operation.name", "execute_tool"),
                kv("gen_ai.tool.name", "t"),
            ];
            attrs.extend(extra);
            json!({"traceId": "t1", "spanId": "s", "name": "x", "startTimeUnixNano": "1772550000000000000",
                   "attributes": attrs, "status": status})
        };
        let opts = OtlpOptions {
            volume_attribute: Some("app.bytes".into()),
            ..OtlpOptions::default()
        };
        let cases = [
            (span(vec![], json!({})), Some(Outcome::Allow), None),
            (span(vec![], json!({"code": 1})), Some(Outcome::Allow), None),
            (
                span(vec![], json!({"code": 2, "message": "boom"})),
                Some(Outcome::Other),
                None,
            ),
            (
                span(vec![], json!({"code": "STATUS_CODE_ERROR"})),
                Some(Outcome::Other),
                None,
            ),
            (
                span(vec![kv("error.type", "TimeoutError")], json!({"code": 2})),
                Some(Outcome::Timeout),
                None,
            ),
            (
                span(
                    vec![json!({"key": "app.bytes", "value": {"intValue": "52000"}})],
                    json!({}),
                ),
                Some(Outcome::Allow),
                Some(52000.0),
            ),
            (
                span(
                    vec![json!({"key": "app.bytes", "value": {"doubleValue": 12.5}})],
                    json!({}),
                ),
                Some(Outcome::Allow),
                Some(12.5),
            ),
        ];
        for (s, outcome, bytes) in cases {
            let mut out = Vec::new();
            let payload = request(json!([s.clone()]));
            decode_json(&payload, &opts, &mut out).expect("decodes");
            assert_eq!((out[0].outcome, out[0].bytes), (outcome, bytes), "{s}");
        }
        for bad in [
            json!({"intValue": "-5"}),
            json!({"stringValue": "lots"}),
            json!({"doubleValue": -1.0}),
        ] {
            let s = span(vec![json!({"key": "app.bytes", "value": bad})], json!({}));
            let payload = request(json!([s]));
            let mut out = Vec::new();
            assert!(decode_json(&payload, &opts, &mut out).is_err(), "{bad}");
            assert!(out.is_empty());
        }
    }

    #[test]
    fn the_group_comes_from_the_chosen_attribute_of_the_span_or_its_resource() {
        let opts = OtlpOptions {
            group_attribute: Some("app.team".into()),
            ..OtlpOptions::default()
        };
        let spans = json!([
            {"traceId": "t1", "spanId": "s1", "name": "x", "startTimeUnixNano": "1772550000000000000",
             "attributes": [kv("gen_ai.operation.name", "execute_tool"), kv("app.team", "finance")]},
            {"traceId": "t1", "spanId": "s2", "name": "x", "startTimeUnixNano": "1772550001000000000",
             "attributes": [kv("gen_ai.operation.name", "execute_tool")]}
        ]);
        let payload = json!({"resourceSpans": [{
            "resource": {"attributes": [kv("service.name", "svc"), kv("app.team", "soc")]},
            "scopeSpans": [{"spans": spans}]}]})
        .to_string();
        let mut out = Vec::new();
        decode_json(payload.as_bytes(), &opts, &mut out).expect("decodes");
        let groups: Vec<_> = out.iter().map(|e| e.group.as_deref()).collect();
        assert_eq!(groups, [Some("finance"), Some("soc")]);
        let mut plain = Vec::new();
        decode_json(payload.as_bytes(), &OtlpOptions::default(), &mut plain).expect("decodes");
        assert!(
            plain.iter().all(|e| e.group.is_none()),
            "none unless chosen"
        );
    }

    /// The same spans as protobuf give the same events (ids as lower-case hex).
    #[test]
    fn protobuf_requests_give_the_events_of_their_json_form() {
        use opentelemetry_proto::tonic::common::v1::{
            any_value, AnyValue as PAny, KeyValue as PKv,
        };
        use opentelemetry_proto::tonic::resource::v1::Resource;
        use opentelemetry_proto::tonic::trace::v1::{
            status, ResourceSpans as PRs, ScopeSpans as PSs, Span as PSpan, Status as PStatus,
        };
        let pkv = |k: &str, v: &str| PKv {
            key: k.into(),
            value: Some(PAny {
                value: Some(any_value::Value::StringValue(v.into())),
            }),
            ..Default::default()
        };
        let trace = vec![
            0x5b, 0x8e, 0xff, 0xf7, 0x98, 0x03, 0x81, 0x03, 0xd2, 0x69, 0xb6, 0x33, 0x81, 0x3f,
            0xc6, 0x0c,
        ];
        let spans = vec![
            PSpan {
                trace_id: trace.clone(),
                span_id: vec![0xbb; 8],
                name: "execute_tool get_weather".into(),
                start_time_unix_nano: 1_772_550_001_500_000_000,
                attributes: vec![
                    pkv("gen_ai.operation.name", "execute_tool"),
                    pkv("gen_ai.tool.name", "get_weather"),
                ],
                status: Some(PStatus {
                    message: "x".into(),
                    code: status::StatusCode::Error as i32,
                }),
                ..Default::default()
            },
            PSpan {
                trace_id: trace.clone(),
                span_id: vec![0xaa; 8],
                name: "invoke_agent planner".into(),
                start_time_unix_nano: 1_772_550_000_000_000_000,
                attributes: vec![
                    pkv("gen_ai.operation.name", "invoke_agent"),
                    pkv("gen_ai.agent.name", "planner"),
                ],
                ..Default::default()
            },
            PSpan {
                trace_id: trace.clone(),
                span_id: vec![0xcc; 8],
                name: "chat".into(),
                start_time_unix_nano: 1_772_550_002_000_000_000,
                attributes: vec![pkv("gen_ai.operation.name", "chat")],
                ..Default::default()
            },
        ];
        let req = collector::ExportTraceServiceRequest {
            resource_spans: vec![PRs {
                resource: Some(Resource {
                    attributes: vec![
                        pkv("service.name", "travel-svc"),
                        pkv("deployment.environment.name", "prod"),
                    ],
                    ..Default::default()
                }),
                scope_spans: vec![PSs {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let bytes = req.encode_to_vec();
        assert!(is_otlp_proto(&bytes) && !is_otlp_json(&bytes));
        let mut proto = Vec::new();
        assert_eq!(
            decode_proto(&bytes, &OtlpOptions::default(), &mut proto),
            Ok(1)
        );
        let json_form = request(json!([
            {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "bbbbbbbbbbbbbbbb",
             "name": "execute_tool get_weather", "startTimeUnixNano": "1772550001500000000",
             "attributes": [kv("gen_ai.operation.name", "execute_tool"), kv("gen_ai.tool.name", "get_weather")],
             "status": {"code": 2, "message": "x"}},
            {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "aaaaaaaaaaaaaaaa",
             "name": "invoke_agent planner", "startTimeUnixNano": "1772550000000000000",
             "attributes": [kv("gen_ai.operation.name", "invoke_agent"), kv("gen_ai.agent.name", "planner")]},
            {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "cccccccccccccccc", "name": "chat",
             "startTimeUnixNano": "1772550002000000000", "attributes": [kv("gen_ai.operation.name", "chat")]}
        ]));
        let mut json_events = Vec::new();
        assert_eq!(
            decode_json(&json_form, &OtlpOptions::default(), &mut json_events),
            Ok(1)
        );
        assert_eq!(proto, json_events);
        assert_eq!(proto[1].agent_id, "planner");
        assert_eq!(proto[1].outcome, Some(Outcome::Other));
        // Cut short anywhere, a request is an error (or a shorter valid request), never a panic.
        for n in 0..bytes.len() {
            let mut out = Vec::new();
            let _ = decode_proto(&bytes[..n], &OtlpOptions::default(), &mut out);
        }
        let mut out = Vec::new();
        assert!(matches!(
            decode_proto(
                b"\x0a\xff\xff\xff\xff\x0f",
                &OtlpOptions::default(),
                &mut out
            ),
            Err(DecodeError::NotProtobuf { .. })
        ));
    }

    #[test]
    fn malformed_requests_are_errors_never_panics() {
        let mut out = Vec::new();
        for bad in [
            &b"{\"resourceSpans\": 5}"[..],
            b"{\"resourceSpans\": [{\"scopeSpans\": [{\"spans\": [{\"startTimeUnixNano\": \"soon\"}]}]}]}",
            b"{\"resourceSpans\": [",
        ] {
            assert!(matches!(
                decode_json(bad, &OtlpOptions::default(), &mut out),
                Err(DecodeError::NotJson { .. })
            ));
        }
        let no_time = request(json!([{"traceId": "t", "spanId": "s", "name": "x",
            "attributes": [kv("gen_ai.operation.name", "execute_tool")]}]));
        assert!(matches!(
            decode_json(&no_time, &OtlpOptions::default(), &mut out),
            Err(DecodeError::MissingField { .. })
        ));
        assert!(out.is_empty());
        assert!(!is_otlp_json(b"{\"agent_id\":\"a\"}"));
    }
}
