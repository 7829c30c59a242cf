//! OTLP protobuf (the Collector's `otlp_proto`): an `ExportTraceServiceRequest`, converted into
//! the request model JSON decodes to.

use std::borrow::Cow;

use opentelemetry_proto::tonic::collector::trace::v1 as collector;
use opentelemetry_proto::tonic::common::v1 as common;
use prost::Message;

use crate::event::error::{bounded, DecodeError};
use crate::event::model::AuditEvent;

use super::model::{
    AnyValue, Attributes, Int64, KeyValue, Request, ResourceSpans, ScopeSpans, Span, Status,
    StatusCode, Text,
};
use super::options::OtlpOptions;
use super::spans::events;

/// Whether `payload` may be a protobuf OTLP request: it starts with the tag of its first field
/// (`resource_spans`, length-delimited) and is not a JSON object.
pub fn claims(payload: &[u8]) -> bool {
    payload.first() == Some(&0x0A) && !payload.trim_ascii_start().starts_with(b"{")
}

/// Decodes a protobuf OTLP request (`ExportTraceServiceRequest`) as [`super::json::decode`] does.
pub fn decode<'a>(
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
