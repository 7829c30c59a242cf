//! The decoder: one entry point for every input format.
//!
//! A message is an OTLP trace request (JSON or protobuf, told apart by its first bytes; see
//! [`super::otlp`]) or one JSON object of a format of single events ([`super::object`]: the
//! [`FORMATS`] in order, the first that claims the object decodes it). For JSON objects the
//! decoder compiles every format's pointers, and the configured volume and group pointers, into
//! one key tree ([`super::keys`]) and walks the payload once, keeping only those values: with the
//! scanner of [`super::scan`] for the common shape, else with serde_json ([`super::walk`]).
//! Strings without escapes are borrowed from the payload, so the steady path allocates nothing.

use super::error::DecodeError;
use super::keys::{parse_pointer, Node, Scalar, Slots, MAX_SLOTS};
use super::model::AuditEvent;
use super::object::{optional_id, wrong, Fields, ObjectFormat, SlotTable};
use super::otlp::{self, OtlpOptions};
use super::{agent_spm, agentshield, scan, walk};

/// The formats of single JSON-object events, in the order they are asked to claim an object:
/// the last claims any object.
const FORMATS: [&ObjectFormat; 2] = [&agent_spm::FORMAT, &agentshield::FORMAT];

/// Slots the decoder fills besides the formats' own: environment, volume, group.
const SHARED_SLOTS: usize = 3;

/// Slots the registered formats and the shared fields need.
const fn slots_needed() -> usize {
    let mut n = SHARED_SLOTS;
    let mut i = 0;
    while i < FORMATS.len() {
        n += FORMATS[i].fields.len();
        i += 1;
    }
    n
}

const _: () = assert!(
    slots_needed() <= MAX_SLOTS,
    "the formats read more fields than keys::MAX_SLOTS"
);

/// Default JSON pointer of the data volume of a call.
pub const DEFAULT_VOLUME_POINTER: &str = "/safe_payload/bytes";
/// Default maximum size of one event payload (1 MiB).
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1 << 20;
/// The environment a call ran in, read for every JSON-object format.
const ENVIRONMENT_POINTER: &str = "/safe_payload/environment";

/// What the decoder extracts besides the fixed fields.
#[derive(Debug, Clone)]
pub struct DecoderOptions {
    /// JSON pointer of the call's data volume in bytes (default `/safe_payload/bytes`).
    pub volume_pointer: String,
    /// JSON pointer of the group field used by blueprint assignment rules, if any.
    pub group_pointer: Option<String>,
    /// Largest accepted payload in bytes (default 1 MiB).
    pub max_event_bytes: usize,
    /// How OpenTelemetry spans are read.
    pub otlp: OtlpOptions,
}

impl Default for DecoderOptions {
    fn default() -> Self {
        DecoderOptions {
            volume_pointer: DEFAULT_VOLUME_POINTER.to_string(),
            group_pointer: None,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            otlp: OtlpOptions::default(),
        }
    }
}

/// Decodes audit events of every supported format.
#[derive(Debug, Clone)]
pub struct Decoder {
    root: Node,
    /// Where each of [`FORMATS`] finds its fields.
    tables: [SlotTable; FORMATS.len()],
    /// Slots of the environment, the volume and the group.
    environment: usize,
    volume: usize,
    group: usize,
    volume_pointer: String,
    group_pointer: String,
    max_event_bytes: usize,
    otlp: OtlpOptions,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(&DecoderOptions::default()).expect("the default pointers are valid")
    }
}

impl Decoder {
    /// Builds a decoder; fails with the offending option when a pointer is not of the form `/a/b`.
    pub fn new(opts: &DecoderOptions) -> Result<Decoder, DecodeError> {
        let mut root = Node::default();
        // One slot per distinct pointer: formats that read the same field share it.
        let mut pointers: Vec<&str> = Vec::new();
        let mut tables = [[0u8; MAX_SLOTS]; FORMATS.len()];
        for (table, format) in tables.iter_mut().zip(FORMATS) {
            for (i, p) in format.fields.iter().enumerate() {
                let slot = match pointers.iter().position(|q| q == p) {
                    Some(slot) => slot,
                    None => {
                        let path = parse_pointer(p).expect("formats' pointers are valid");
                        root.insert(&path, pointers.len());
                        pointers.push(p);
                        pointers.len() - 1
                    }
                };
                table[i] = slot as u8;
            }
        }
        let next = pointers.len();
        let (environment, volume, group) = (next, next + 1, next + 2);
        root.insert(
            &parse_pointer(ENVIRONMENT_POINTER).expect("a valid pointer"),
            environment,
        );
        let bad = |field: &str, value: &str| DecodeError::InvalidValue {
            field: field.to_string(),
            reason: format!("{value:?} is not a JSON pointer to an object key (expected /a/b)"),
        };
        let vol = parse_pointer(&opts.volume_pointer)
            .ok_or_else(|| bad("volume_pointer", &opts.volume_pointer))?;
        root.insert(&vol, volume);
        let mut group_pointer = String::new();
        if let Some(g) = &opts.group_pointer {
            let path = parse_pointer(g).ok_or_else(|| bad("group_pointer", g))?;
            root.insert(&path, group);
            group_pointer = g.clone();
        }
        Ok(Decoder {
            root,
            tables,
            environment,
            volume,
            group,
            volume_pointer: opts.volume_pointer.clone(),
            group_pointer,
            max_event_bytes: opts.max_event_bytes,
            otlp: opts.otlp.clone(),
        })
    }

    /// Decodes one message, appending its events to `out`: one event (Agent-SPM, AgentShield),
    /// or the tool-call and agent spans of an OTLP request (JSON or protobuf, told apart by
    /// their first bytes). Returns the number of spans skipped (neither); on error nothing is
    /// appended.
    pub fn decode_into<'a>(
        &self,
        payload: &'a [u8],
        out: &mut Vec<AuditEvent<'a>>,
    ) -> Result<u64, DecodeError> {
        if payload.len() > self.max_event_bytes {
            return Err(DecodeError::Oversized {
                size: payload.len(),
                max: self.max_event_bytes,
            });
        }
        if otlp::json::claims(payload) {
            otlp::json::decode(payload, &self.otlp, out)
        } else if otlp::proto::claims(payload) {
            otlp::proto::decode(payload, &self.otlp, out)
        } else {
            out.push(self.decode(payload)?);
            Ok(0)
        }
    }

    /// The largest payload it decodes, in bytes.
    pub fn max_event_bytes(&self) -> usize {
        self.max_event_bytes
    }

    /// Decodes one payload (one JSON object; surrounding whitespace allowed).
    ///
    /// ```
    /// use agent_guardian::event::{Decoder, DecodeError};
    /// let d = Decoder::default();
    /// let e = d.decode(br#"{"agent_id":"a","timestamp":"2026-03-02T09:00:00Z","tool_name":"q","safe_payload":{"bytes":10}}"#).unwrap();
    /// assert_eq!((e.agent_id.as_ref(), e.bytes), ("a", Some(10.0)));
    /// assert_eq!(d.decode(br#"{"agent_id":"a"}"#).unwrap_err(), DecodeError::MissingField { field: "/timestamp" });
    /// ```
    pub fn decode<'a>(&self, payload: &'a [u8]) -> Result<AuditEvent<'a>, DecodeError> {
        if payload.len() > self.max_event_bytes {
            return Err(DecodeError::Oversized {
                size: payload.len(),
                max: self.max_event_bytes,
            });
        }
        // One UTF-8 check of the whole payload (fast on ASCII) lets the parser borrow every
        // string without validating each one again.
        let text = std::str::from_utf8(payload).map_err(|e| DecodeError::NotJson {
            reason: format!("invalid UTF-8 at byte {}", e.valid_up_to()),
        })?;
        let mut slots: Slots<'a> = Default::default();
        // The scanner takes the common shape; whatever it is not sure of (escapes, fractions,
        // errors) goes through serde_json, which also words the errors.
        if scan::scan(text, &self.root, &mut slots).is_none() {
            slots = Default::default();
            walk::walk(text, &self.root, &mut slots)?;
        }
        self.finish(slots)
    }

    /// Fills `slots` from `text` with serde_json (the reference the scanner must agree with).
    #[cfg(test)]
    pub(super) fn walk<'a>(&self, text: &'a str, slots: &mut Slots<'a>) -> Result<(), DecodeError> {
        walk::walk(text, &self.root, slots)
    }

    /// The key tree of the fields this decoder reads.
    #[cfg(test)]
    pub(super) fn root(&self) -> &Node {
        &self.root
    }

    /// The slot the volume pointer fills.
    #[cfg(test)]
    pub(super) fn volume_slot(&self) -> usize {
        self.volume
    }

    /// The event of the first format that claims the object, with the fields every format
    /// shares: environment, group, volume.
    fn finish<'a>(&self, mut slots: Slots<'a>) -> Result<AuditEvent<'a>, DecodeError> {
        let mut event = AuditEvent::tool_call("", "", 0, "");
        let mut claimed = false;
        for (format, table) in FORMATS.iter().zip(&self.tables) {
            let mut fields = Fields::new(&mut slots, table, format);
            if (format.claims)(&fields) {
                (format.map)(&mut fields, &mut event)?;
                claimed = true;
                break;
            }
        }
        if !claimed {
            return Err(DecodeError::MissingField { field: "/agent_id" });
        }
        let mut take = |i: usize| std::mem::take(&mut slots[i]);
        event.environment = optional_id(take(self.environment), ENVIRONMENT_POINTER)?;
        if !self.group_pointer.is_empty() {
            event.group = optional_id(take(self.group), &self.group_pointer)?;
        }
        event.bytes = match take(self.volume) {
            Scalar::Absent | Scalar::Null => None,
            Scalar::Int(v) => Some(v as f64),
            Scalar::UInt(v) => Some(v as f64),
            Scalar::Float(v) => Some(v),
            _ => return Err(wrong(&self.volume_pointer, "a number of bytes")),
        };
        if let Some(b) = event.bytes {
            if !(b.is_finite() && b >= 0.0) {
                return Err(DecodeError::InvalidValue {
                    field: self.volume_pointer.clone(),
                    reason: format!("{b} is not a non-negative number of bytes"),
                });
            }
        }
        Ok(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::model::{Format, Outcome};
    use std::borrow::Cow;

    #[test]
    fn a_parser_message_quoting_the_input_is_bounded() {
        let big = format!("\"{}\"", "x".repeat(100_000));
        let e = Decoder::default().decode(big.as_bytes()).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, DecodeError::NotJson { .. }), "{text}");
        assert!(
            text.len() < 300 && text.ends_with("bytes)"),
            "{} bytes",
            text.len()
        );
    }

    const SPM: &str = r#"{"event_id":"e1","timestamp":"2026-03-02T14:00:00.250Z","request_id":"r1",
        "agent_id":"fin-pay-1","tool_name":"trigger_payment","outcome":"ALLOW",
        "reasons":[{"code":"OK","message":"allowed"}],
        "safe_payload":{"agent_id":"fin-pay-1","tool_name":"trigger_payment","environment":"prod","outcome":"ALLOW","bytes":2048,"team":"treasury"},
        "plugin_source":"x","extra":{"deep":[1,2,{"a":null}]}}"#;

    /// Every string an incident or SIEM record carries is bounded, and an error quoting the
    /// input quotes at most its first 64 bytes: no output derived from an event nears a
    /// broker's message limit.
    #[test]
    fn long_fields_are_refused_and_errors_quote_a_bounded_prefix() {
        let d = Decoder::default();
        let long = "x".repeat(100_000);
        for (field, doc) in [
            (
                "/tool_name",
                format!(
                    r#"{{"agent_id":"a","timestamp":"2026-03-02T09:00:00Z","tool_name":"{long}"}}"#
                ),
            ),
            (
                "/event_id",
                format!(
                    r#"{{"agent_id":"a","event_id":"{long}","timestamp":"2026-03-02T09:00:00Z"}}"#
                ),
            ),
            (
                "/safe_payload/environment",
                format!(
                    r#"{{"agent_id":"a","timestamp":"2026-03-02T09:00:00Z","safe_payload":{{"environment":"{long}"}}}}"#
                ),
            ),
        ] {
            match d.decode(doc.as_bytes()) {
                Err(DecodeError::InvalidValue { field: f, reason }) => {
                    assert_eq!(f, field);
                    assert!(reason.len() < 100, "{reason}");
                }
                other => panic!("{field}: {other:?}"),
            }
        }
        let doc = format!(r#"{{"agent_id":"a","timestamp":"{long}"}}"#);
        let e = d
            .decode(doc.as_bytes())
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(e.len() < 200 && e.contains("100000 bytes"), "{e}");
    }

    /// A key the decoder reads, given twice in its object, is an error naming it (in the
    /// scanner's shape and in serde_json's, nested too); a key it does not read may repeat.
    #[test]
    fn a_field_given_twice_is_a_duplicate_key_error() {
        let d = Decoder::default();
        let cases = [
            (
                r#"{"agent_id":"a","timestamp":"2026-03-02T09:00:00Z","agent_id":"b"}"#,
                "agent_id",
            ),
            // An escape sends the payload to serde_json.
            (
                r#"{"agent_id":"aA","timestamp":"2026-03-02T09:00:00Z","agent_id":"b"}"#,
                "agent_id",
            ),
            (
                r#"{"agent_id":"a","timestamp":"2026-03-02T09:00:00Z","safe_payload":{"bytes":1,"bytes":900000}}"#,
                "bytes",
            ),
            (
                r#"{"agentId":"a","timestamp":1,"agentId":"b","type":"tool_allowed"}"#,
                "agentId",
            ),
        ];
        for (doc, key) in cases {
            assert_eq!(
                d.decode(doc.as_bytes()).map(|e| e.agent_id.to_string()),
                Err(DecodeError::DuplicateKey { key: key.into() }),
                "{doc}"
            );
        }
        let fine = r#"{"agent_id":"a","timestamp":"2026-03-02T09:00:00Z","x":1,"x":2}"#;
        assert!(d.decode(fine.as_bytes()).is_ok());
        // The same key in two different objects is not a duplicate.
        let two = r#"{"agent_id":"a","timestamp":"2026-03-02T09:00:00Z","safe_payload":{"agent_id":"a"}}"#;
        assert!(d.decode(two.as_bytes()).is_ok());
    }

    /// Every key of a node's tree is found at its index by the perfect hash; keys one edit away
    /// from a configured one (a byte changed, dropped or added) are found only if configured too.
    #[test]
    fn the_key_hash_finds_exactly_the_configured_keys() {
        fn check(node: &Node) {
            let keys: Vec<&str> = node.entries.iter().map(|e| e.key.as_str()).collect();
            for (i, key) in keys.iter().enumerate() {
                assert_eq!(node.find(key), Some(i), "{key}");
                let b = key.as_bytes();
                let mut near: Vec<Vec<u8>> = Vec::new();
                for at in 0..=b.len() {
                    for c in [b'_', b'a', b'd', b'I', b'z', b'0'] {
                        let mut v = b.to_vec();
                        v.insert(at, c);
                        near.push(v);
                        if at < b.len() {
                            let mut v = b.to_vec();
                            v[at] = c;
                            near.push(v);
                        }
                    }
                    if at < b.len() {
                        let mut v = b.to_vec();
                        v.remove(at);
                        near.push(v);
                    }
                }
                for v in near {
                    let other = String::from_utf8(v).expect("ascii");
                    let want = keys.iter().position(|k| *k == other);
                    assert_eq!(node.find(&other), want, "{other:?} near {key:?}");
                }
            }
            for e in &node.entries {
                if let Some(child) = &e.child {
                    check(child);
                }
            }
        }
        let with = |volume: &str, group: &str| {
            Decoder::new(&DecoderOptions {
                volume_pointer: volume.into(),
                group_pointer: Some(group.into()),
                ..Default::default()
            })
            .expect("valid options")
        };
        let d = with(
            "/safe_payload/a_key_longer_than_fifteen",
            "/safe_payload/team",
        );
        check(d.root());
        check(dec().root());
        assert_eq!(d.root().find(""), None);
        // Two keys whose 8-byte halves xor to the same word (and a node of many keys) still
        // get a table.
        let d = with(
            "/safe_payload/xxxxxxxxyyyyyyy",
            "/safe_payload/yyyyyyyxxxxxxxx",
        );
        check(d.root());
        let payload = d.root().find("safe_payload").expect("configured");
        assert!(!d.root().entries[payload]
            .child
            .as_ref()
            .expect("keys below")
            .table
            .is_empty());
    }

    fn dec() -> Decoder {
        Decoder::new(&DecoderOptions {
            group_pointer: Some("/safe_payload/team".into()),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn decodes_agent_spm_event_and_borrows_strings() {
        let d = dec();
        let e = d.decode(SPM.as_bytes()).unwrap();
        assert_eq!(e.format, Format::AgentSpm);
        assert_eq!(e.agent_id, "fin-pay-1");
        assert!(matches!(e.agent_id, Cow::Borrowed(_)));
        assert_eq!(e.event_id, "e1");
        assert_eq!(e.tool_name, "trigger_payment");
        assert_eq!(e.outcome, Some(Outcome::Allow));
        assert_eq!(e.environment.as_deref(), Some("prod"));
        assert_eq!(e.group.as_deref(), Some("treasury"));
        assert_eq!(e.bytes, Some(2048.0));
        assert_eq!(e.ts_ms, 1_772_460_000_250);
    }

    #[test]
    fn decodes_agentshield_entry_with_agent_fallbacks() {
        let d = dec();
        let e = d
            .decode(br#"{"type":"tool_call","timestamp":1772460000250,"eventId":"x","sessionId":"s-9","toolName":"read_file"}"#)
            .unwrap();
        assert_eq!(e.format, Format::AgentShield);
        assert_eq!(e.agent_id, "s-9");
        assert_eq!(e.ts_ms, 1_772_460_000_250);
        let e = d
            .decode(br#"{"type":"t","timestamp":1,"eventId":"x","sessionId":"s","userId":"u","agentId":"a"}"#)
            .unwrap();
        assert_eq!(e.agent_id, "a");
        let e = d
            .decode(br#"{"type":"t","timestamp":1,"eventId":"x","sessionId":"s","userId":"u"}"#)
            .unwrap();
        assert_eq!(e.agent_id, "u");
        assert_eq!(e.outcome, None);
        assert_eq!(e.bytes, None);
    }

    #[test]
    fn escaped_strings_are_decoded() {
        let e = dec()
            .decode(br#"{"agent_id":"a\"b\\c\u00e9","timestamp":"2026-03-02T14:00:00Z","tool_name":"t|x="}"#)
            .unwrap();
        assert_eq!(e.agent_id, "a\"b\\c\u{e9}");
        assert_eq!(e.tool_name, "t|x=");
    }

    #[test]
    fn bad_input_gives_typed_errors_naming_the_field() {
        let d = dec();
        let cases: &[(&[u8], DecodeError)] = &[
            (b"not json", DecodeError::NotJson { reason: String::new() }),
            (b"[1,2]", DecodeError::NotJson { reason: String::new() }),
            (br#"{"agent_id":"a","timestamp":"2026-03-02T14:00:00Z"} x"#, DecodeError::NotJson { reason: String::new() }),
            (br#"{"timestamp":"2026-03-02T14:00:00Z","event_id":"e"}"#, DecodeError::MissingField { field: "/agent_id" }),
            (br#"{"agent_id":"a"}"#, DecodeError::MissingField { field: "/timestamp" }),
            (br#"{"agent_id":"","timestamp":"2026-03-02T14:00:00Z"}"#, DecodeError::MissingField { field: "/agent_id" }),
            (br#"{"agent_id":7,"timestamp":"2026-03-02T14:00:00Z"}"#, wrong("/agent_id", "a string")),
            (br#"{"agent_id":"a","timestamp":1}"#, wrong("/timestamp", "an RFC 3339 string")),
            (
                br#"{"agent_id":"a","timestamp":"2026-03-02T14:00:00Z","safe_payload":{"bytes":"big"}}"#,
                wrong("/safe_payload/bytes", "a number of bytes"),
            ),
            (
                br#"{"agent_id":"a","timestamp":"2026-03-02T14:00:00Z","tool_name":["x"]}"#,
                wrong("/tool_name", "a string"),
            ),
            (br#"{"eventId":"e","timestamp":"2026-03-02T14:00:00Z","agentId":"a"}"#, wrong("/timestamp", "epoch milliseconds (a number)")),
            (br#"{"eventId":"e","timestamp":1}"#, DecodeError::MissingField { field: "/agent_id" }),
        ];
        for (input, want) in cases {
            let got = d.decode(input).unwrap_err();
            match (want, &got) {
                (DecodeError::NotJson { .. }, DecodeError::NotJson { .. }) => {}
                _ => assert_eq!(&got, want, "input {}", String::from_utf8_lossy(input)),
            }
        }
        let got = d
            .decode(br#"{"agent_id":"a","timestamp":"2026-13-02T14:00:00Z"}"#)
            .unwrap_err();
        assert!(
            matches!(got, DecodeError::InvalidValue { ref field, .. } if field == "/timestamp")
        );
        let got = d
            .decode(br#"{"agent_id":"a","timestamp":"2026-03-02T14:00:00Z","safe_payload":{"bytes":-1}}"#)
            .unwrap_err();
        assert!(
            matches!(got, DecodeError::InvalidValue { ref field, .. } if field == "/safe_payload/bytes")
        );
    }

    #[test]
    fn oversized_payload_is_rejected_before_parsing() {
        let d = Decoder::new(&DecoderOptions {
            max_event_bytes: 16,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            d.decode(&[b' '; 17]).unwrap_err(),
            DecodeError::Oversized { size: 17, max: 16 }
        );
    }

    #[test]
    fn custom_volume_pointer_and_invalid_pointer() {
        let d = Decoder::new(&DecoderOptions {
            volume_pointer: "/meta/size~1kb".into(),
            ..Default::default()
        })
        .unwrap();
        let e = d
            .decode(
                br#"{"agent_id":"a","timestamp":"2026-03-02T14:00:00Z","meta":{"size/kb":1.5}}"#,
            )
            .unwrap();
        assert_eq!(e.bytes, Some(1.5));
        assert!(Decoder::new(&DecoderOptions {
            volume_pointer: "bytes".into(),
            ..Default::default()
        })
        .is_err());
    }

    #[test]
    fn unknown_outcome_is_kept_as_other() {
        let e = dec()
            .decode(br#"{"agent_id":"a","timestamp":"2026-03-02T14:00:00Z","outcome":"NEW_THING"}"#)
            .unwrap();
        assert_eq!(e.outcome, Some(Outcome::Other));
    }
}
