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
//!   outcome of its own (`Outcome::Other`). Volume: [`OtlpOptions::volume_attribute`].
//!   Group (for blueprint assignment): [`OtlpOptions::group_attribute`], on the span or its
//!   resource.
//! - The spans of a request are handed on in order of start time.
//!
//! In OTLP/JSON, trace and span ids are hex strings, 64-bit integers are strings (numbers are
//! accepted too) and enums are integers.

mod model;
mod options;
mod spans;

pub mod json;
pub mod proto;

pub use options::OtlpOptions;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::model::{AgentSource, EntryKind, Outcome};
    use crate::event::DecodeError;
    use opentelemetry_proto::tonic::collector::trace::v1 as collector;
    use prost::Message;
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
        assert!(json::claims(&payload));
        let mut out = Vec::new();
        assert_eq!(
            json::decode(&payload, &OtlpOptions::default(), &mut out),
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
            json::decode(payload, &OtlpOptions::default(), &mut out).map(|n| (n, out.len()))
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
        json::decode(&first, &OtlpOptions::default(), &mut out).expect("decodes");
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
        json::decode(&later, &OtlpOptions::default(), &mut next).expect("decodes");
        assert_eq!(next[0].agent_id, "travel-svc");
        assert_eq!(next[0].agent_source, AgentSource::Service);
        // Without the service fallback, an unresolved call keeps its trace id.
        let opts = OtlpOptions {
            service_name_fallback: false,
            ..OtlpOptions::default()
        };
        let lone = request(json!([tool("c1", "1772550004000000000")]));
        let mut alone = Vec::new();
        json::decode(&lone, &opts, &mut alone).expect("decodes");
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
            json::decode(&payload, &opts, &mut out).expect("decodes");
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
            assert!(json::decode(&payload, &opts, &mut out).is_err(), "{bad}");
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
        json::decode(payload.as_bytes(), &opts, &mut out).expect("decodes");
        let groups: Vec<_> = out.iter().map(|e| e.group.as_deref()).collect();
        assert_eq!(groups, [Some("finance"), Some("soc")]);
        let mut plain = Vec::new();
        json::decode(payload.as_bytes(), &OtlpOptions::default(), &mut plain).expect("decodes");
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
        assert!(proto::claims(&bytes) && !json::claims(&bytes));
        let mut proto = Vec::new();
        assert_eq!(
            proto::decode(&bytes, &OtlpOptions::default(), &mut proto),
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
            json::decode(&json_form, &OtlpOptions::default(), &mut json_events),
            Ok(1)
        );
        assert_eq!(proto, json_events);
        assert_eq!(proto[1].agent_id, "planner");
        assert_eq!(proto[1].outcome, Some(Outcome::Other));
        // Cut short anywhere, a request is an error (or a shorter valid request), never a panic.
        for n in 0..bytes.len() {
            let mut out = Vec::new();
            let _ = proto::decode(&bytes[..n], &OtlpOptions::default(), &mut out);
        }
        let mut out = Vec::new();
        assert!(matches!(
            proto::decode(
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
                json::decode(bad, &OtlpOptions::default(), &mut out),
                Err(DecodeError::NotJson { .. })
            ));
        }
        let no_time = request(json!([{"traceId": "t", "spanId": "s", "name": "x",
            "attributes": [kv("gen_ai.operation.name", "execute_tool")]}]));
        assert!(matches!(
            json::decode(&no_time, &OtlpOptions::default(), &mut out),
            Err(DecodeError::MissingField { .. })
        ));
        assert!(out.is_empty());
        assert!(!json::claims(b"{\"agent_id\":\"a\"}"));
    }
}
