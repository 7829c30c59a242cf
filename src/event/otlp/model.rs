//! The OTLP trace request as the decoder reads it: the parts of an `ExportTraceServiceRequest`
//! that make events, in OTLP/JSON's encoding (serde); the protobuf form is converted into it
//! (see [`super::proto`]).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer};

use crate::event::error::bounded;

// The request's strings borrow from a JSON payload where they have no escapes (`Cow`), so a
// span's ids, tool and agent reach its event without a copy.

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct Request<'a> {
    #[serde(default, borrow)]
    pub(super) resource_spans: Vec<ResourceSpans<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct ResourceSpans<'a> {
    #[serde(default, borrow)]
    pub(super) resource: Option<Attributes<'a>>,
    #[serde(default, borrow)]
    pub(super) scope_spans: Vec<ScopeSpans<'a>>,
}

#[derive(Deserialize, Default)]
pub(super) struct Attributes<'a> {
    #[serde(default, borrow)]
    pub(super) attributes: Vec<KeyValue<'a>>,
}

#[derive(Deserialize, Default)]
pub(super) struct ScopeSpans<'a> {
    #[serde(default, borrow)]
    pub(super) spans: Vec<Span<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct Span<'a> {
    #[serde(default, borrow)]
    pub(super) trace_id: Cow<'a, str>,
    #[serde(default, borrow)]
    pub(super) span_id: Cow<'a, str>,
    #[serde(default, borrow)]
    pub(super) name: Cow<'a, str>,
    #[serde(default)]
    pub(super) start_time_unix_nano: Option<Int64>,
    #[serde(default, borrow)]
    pub(super) attributes: Vec<KeyValue<'a>>,
    #[serde(default)]
    pub(super) status: Option<Status>,
}

#[derive(Deserialize, Default)]
pub(super) struct Status {
    /// 0 unset, 1 ok, 2 error (or the enum's name).
    #[serde(default)]
    pub(super) code: StatusCode,
}

#[derive(Deserialize)]
pub(super) struct KeyValue<'a> {
    #[serde(borrow)]
    pub(super) key: Cow<'a, str>,
    #[serde(default, borrow)]
    pub(super) value: AnyValue<'a>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct AnyValue<'a> {
    #[serde(default, borrow)]
    pub(super) string_value: Option<Text<'a>>,
    #[serde(default)]
    pub(super) int_value: Option<Int64>,
    #[serde(default)]
    pub(super) double_value: Option<f64>,
}

/// A string that borrows from the payload when it can (serde borrows a `Cow` only outside an
/// `Option`).
#[derive(Deserialize)]
pub(super) struct Text<'a>(#[serde(borrow)] pub(super) Cow<'a, str>);

/// An OTLP/JSON 64-bit integer: a string of digits, or a JSON number (negative ones are
/// refused: no value read here may be negative).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Int64(pub(super) u64);

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
pub(super) struct StatusCode(pub(super) i32);

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
