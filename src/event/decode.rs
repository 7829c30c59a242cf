//! One-pass, borrowing decoder for the SDK formats.
//!
//! The decoder compiles the JSON pointers it needs (the fixed fields of both formats plus the
//! configured volume and group pointers) into a small key tree and walks the payload once,
//! keeping only those values: with the scanner of [`super::scan`] for the common shape, else
//! with serde_json. Strings without escapes are borrowed from the payload, so the steady path
//! allocates nothing.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserializer as _;

use super::error::{bounded, DecodeError};
use super::model::{AgentSource, AuditEvent, EntryKind, Format, Outcome};
use super::otlp::{self, OtlpOptions};
use super::scan;
use super::timestamp::{parse_rfc3339_ms, MAX_TIMESTAMP_MS};

/// Default JSON pointer of the data volume of a call.
pub const DEFAULT_VOLUME_POINTER: &str = "/safe_payload/bytes";
/// Default maximum size of one event payload (1 MiB).
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1 << 20;
/// Longest accepted agent id, event id, tool name, environment or group, in bytes: every output
/// derived from an event (incidents, commands, SIEM records) stays far below a broker's 1 MB
/// message limit.
pub const MAX_AGENT_ID_BYTES: usize = 512;

/// `s` quoted for an error message, cut to its first 64 bytes (with its size) when longer.
fn quoted(s: &str) -> String {
    const SHOWN: usize = 64;
    if s.len() <= SHOWN {
        return format!("{s:?}");
    }
    let mut end = SHOWN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}… ({} bytes)", &s[..end], s.len())
}

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

/// Named places the decoder fills.
#[derive(Debug, Clone, Copy)]
#[repr(u8)]
pub(super) enum Slot {
    EventId,
    EventIdCamel,
    Timestamp,
    AgentId,
    AgentIdCamel,
    UserId,
    SessionId,
    ToolName,
    ToolNameCamel,
    Outcome,
    Environment,
    Volume,
    Group,
    EntryType,
    ParentSessionId,
}
pub(super) const SLOT_COUNT: usize = 15;

/// A JSON value reduced to what the decoder needs to know about it.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) enum Scalar<'a> {
    #[default]
    Absent,
    Null,
    Str(Cow<'a, str>),
    Int(i64),
    UInt(u64),
    Float(f64),
    Bool,
    Object,
    Array,
}

/// One key of an object in the tree: the slots its value fills and the keys below it.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    key: String,
    /// `key` packed for comparison (see [`pack`]).
    packed: Option<u128>,
    /// The slots its value fills, one bit per [`Slot`].
    slots: u16,
    /// Keys that matter inside this key's value when it is an object.
    pub(super) child: Option<Node>,
}

impl Entry {
    /// Whether a pointer ends at this key (its value itself is wanted).
    pub(super) fn is_wanted(&self) -> bool {
        self.slots != 0
    }

    /// Stores the key's value in every slot it fills; `false` (and nothing stored) when a slot
    /// is filled already: the key appeared twice in its object.
    #[must_use]
    pub(super) fn fill<'a>(&self, slots: &mut [Scalar<'a>; SLOT_COUNT], value: Scalar<'a>) -> bool {
        let mut bits = self.slots;
        let mut check = bits;
        while check != 0 {
            let s = check.trailing_zeros() as usize;
            check &= check - 1;
            if slots[s] != Scalar::Absent {
                return false;
            }
        }
        while bits != 0 {
            let s = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            if bits == 0 {
                slots[s] = value;
                return true;
            }
            slots[s] = value.clone();
        }
        true
    }

    /// The key.
    pub(super) fn key(&self) -> &str {
        &self.key
    }
}

/// The keys of one object that matter.
#[derive(Debug, Clone, Default)]
pub(super) struct Node {
    /// The keys, in the order they were configured.
    pub(super) entries: Vec<Entry>,
    /// A perfect hash of the [`pack`]ed keys: slot → (packed key, entry index + 1), 0 when
    /// empty; a power-of-two length, or empty when no key packs.
    pub(super) table: Vec<(u128, usize)>,
    /// Multiplier of the hash (see [`Node::slot`]).
    pub(super) mul: u64,
}

impl Node {
    fn insert(&mut self, path: &[String], slot: Slot) {
        let Some((first, rest)) = path.split_first() else {
            return;
        };
        let idx = match self.entries.iter().position(|e| &e.key == first) {
            Some(i) => i,
            None => {
                self.entries.push(Entry {
                    key: first.clone(),
                    packed: pack(first.as_bytes(), 0, first.len()),
                    slots: 0,
                    child: None,
                });
                self.entries.len() - 1
            }
        };
        self.index_keys();
        let entry = &mut self.entries[idx];
        if rest.is_empty() {
            entry.slots |= 1 << slot as u16;
        } else {
            entry
                .child
                .get_or_insert_with(Node::default)
                .insert(rest, slot);
        }
    }

    /// Rebuilds [`Node::table`]: the smallest table (at least four slots per key) and the
    /// first multiplier of a fixed sequence under which no two packed keys share a slot. Should
    /// none be found up to [`MAX_KEY_TABLE`] slots, the table stays empty and keys are compared
    /// one by one.
    fn index_keys(&mut self) {
        let keys: Vec<(u128, usize)> = self
            .entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.packed.map(|p| (p, i + 1)))
            .collect();
        self.table.clear();
        if keys.is_empty() {
            return;
        }
        let mut len = (keys.len() * 4).next_power_of_two();
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        while len <= MAX_KEY_TABLE {
            for _ in 0..64 {
                // splitmix64: a fixed sequence of odd multipliers, so the table is reproducible.
                state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                let mul = (z ^ (z >> 31)) | 1;
                let mut table = vec![(0u128, 0usize); len];
                let free = keys.iter().all(|&(p, i)| {
                    let slot = &mut table[Node::slot(p, mul, len)];
                    let free = slot.1 == 0;
                    *slot = (p, i);
                    free
                });
                if free {
                    self.table = table;
                    self.mul = mul;
                    return;
                }
            }
            len *= 2;
        }
    }

    /// Slot of a packed key in a table of `len` (a power of two) under multiplier `mul`.
    #[inline]
    fn slot(packed: u128, mul: u64, len: usize) -> usize {
        // The low half is multiplied before the halves meet, so two keys whose halves merely
        // xor to the same word do not share a slot under every multiplier.
        let x = (packed as u64).wrapping_mul(mul) ^ ((packed >> 64) as u64);
        (x.wrapping_mul(mul) >> (64 - len.trailing_zeros())) as usize
    }

    /// Index of `key` among the entries, if it matters.
    pub(super) fn find(&self, key: &str) -> Option<usize> {
        self.find_packed(pack(key.as_bytes(), 0, key.len()), key)
    }

    /// Index of `key` among the entries, given its [`pack`]ed form.
    pub(super) fn find_packed(&self, packed: Option<u128>, key: &str) -> Option<usize> {
        match packed {
            Some(p) => {
                let len = self.table.len();
                if len == 0 {
                    return self.entries.iter().position(|e| e.packed == Some(p));
                }
                match self.table.get(Node::slot(p, self.mul, len)) {
                    Some(&(k, i)) if k == p && i != 0 => Some(i - 1),
                    _ => None,
                }
            }
            None => self.entries.iter().position(|e| e.key == key),
        }
    }
}

/// Largest key table of a node (slots); beyond it keys are compared one by one.
const MAX_KEY_TABLE: usize = 1 << 12;

/// The key of `len` bytes at `start` of `bytes`, if at most 15 bytes long, as one number (its
/// bytes, then its length), so that a node finds it with one hash and one comparison (see
/// [`Node::find_packed`]). When 16 bytes are there to read it is one load and a mask.
pub(super) fn pack(bytes: &[u8], start: usize, len: usize) -> Option<u128> {
    if len > 15 {
        return None;
    }
    let word = match bytes.get(start..start + 16) {
        Some(chunk) => u128::from_le_bytes(chunk.try_into().ok()?),
        None => {
            let mut buf = [0u8; 16];
            buf[..len].copy_from_slice(bytes.get(start..start + len)?);
            u128::from_le_bytes(buf)
        }
    };
    Some(word & ((1u128 << (8 * len)) - 1) | (len as u128) << 120)
}

/// Splits an RFC 6901 JSON pointer into its unescaped keys; `None` if it is not a pointer to a key.
pub(crate) fn parse_pointer(pointer: &str) -> Option<Vec<String>> {
    let rest = pointer.strip_prefix('/')?;
    Some(
        rest.split('/')
            .map(|s| s.replace("~1", "/").replace("~0", "~"))
            .collect(),
    )
}

/// Decodes audit events of every supported format.
#[derive(Debug, Clone)]
pub struct Decoder {
    root: Node,
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
        let fixed: [(&str, Slot); 13] = [
            ("/type", Slot::EntryType),
            ("/parentSessionId", Slot::ParentSessionId),
            ("/event_id", Slot::EventId),
            ("/eventId", Slot::EventIdCamel),
            ("/timestamp", Slot::Timestamp),
            ("/agent_id", Slot::AgentId),
            ("/agentId", Slot::AgentIdCamel),
            ("/userId", Slot::UserId),
            ("/sessionId", Slot::SessionId),
            ("/tool_name", Slot::ToolName),
            ("/toolName", Slot::ToolNameCamel),
            ("/outcome", Slot::Outcome),
            ("/safe_payload/environment", Slot::Environment),
        ];
        for (p, slot) in fixed {
            let path = parse_pointer(p).expect("fixed pointers are valid");
            root.insert(&path, slot);
        }
        let bad = |field: &str, value: &str| DecodeError::InvalidValue {
            field: field.to_string(),
            reason: format!("{value:?} is not a JSON pointer to an object key (expected /a/b)"),
        };
        let vol = parse_pointer(&opts.volume_pointer)
            .ok_or_else(|| bad("volume_pointer", &opts.volume_pointer))?;
        root.insert(&vol, Slot::Volume);
        let mut group_pointer = String::new();
        if let Some(g) = &opts.group_pointer {
            let path = parse_pointer(g).ok_or_else(|| bad("group_pointer", g))?;
            root.insert(&path, Slot::Group);
            group_pointer = g.clone();
        }
        Ok(Decoder {
            root,
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
        if otlp::is_otlp_json(payload) {
            otlp::decode_json(payload, &self.otlp, out)
        } else if otlp::is_otlp_proto(payload) {
            otlp::decode_proto(payload, &self.otlp, out)
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
        let mut slots: [Scalar<'a>; SLOT_COUNT] = Default::default();
        // The scanner takes the common shape; whatever it is not sure of (escapes, fractions,
        // errors) goes through serde_json, which also words the errors.
        if scan::scan(text, &self.root, &mut slots).is_none() {
            slots = Default::default();
            self.walk(text, &mut slots)?;
        }
        self.finish(slots)
    }

    /// Fills `slots` from `text` with serde_json (the reference the scanner must agree with).
    pub(super) fn walk<'a>(
        &self,
        text: &'a str,
        slots: &mut [Scalar<'a>; SLOT_COUNT],
    ) -> Result<(), DecodeError> {
        let mut de = serde_json::Deserializer::from_str(text);
        let dup = std::cell::Cell::new(None);
        de.deserialize_map(ObjectVisitor {
            node: &self.root,
            slots,
            dup: &dup,
        })
        .and_then(|()| de.end())
        .map_err(|e| match dup.take() {
            Some(key) => DecodeError::DuplicateKey { key },
            None => DecodeError::NotJson {
                reason: bounded(e.to_string()),
            },
        })
    }

    /// The key tree of the fields this decoder reads.
    #[cfg(test)]
    pub(super) fn root(&self) -> &Node {
        &self.root
    }

    fn finish<'a>(
        &self,
        mut slots: [Scalar<'a>; SLOT_COUNT],
    ) -> Result<AuditEvent<'a>, DecodeError> {
        let mut take = |s: Slot| std::mem::take(&mut slots[s as usize]);
        let spm_agent = take(Slot::AgentId);
        let spm_event = take(Slot::EventId);
        let is_spm = present(&spm_agent) || present(&spm_event);
        let timestamp = take(Slot::Timestamp);
        let mut kind = EntryKind::ToolCall;
        let mut agent_source = AgentSource::Named;
        let mut session = None;
        let mut parent_session = None;
        let mut shield_outcome = None;
        let mut user = None;
        let (format, agent_id, event_id, tool_name, ts_ms) = if is_spm {
            let agent = required_str(spm_agent, "/agent_id")?;
            let ts = match timestamp {
                Scalar::Str(s) => {
                    parse_rfc3339_ms(&s).ok_or_else(|| DecodeError::InvalidValue {
                        field: "/timestamp".into(),
                        reason: format!(
                            "{} is not an RFC 3339 time between 1970 and 9999",
                            quoted(&s)
                        ),
                    })?
                }
                Scalar::Absent | Scalar::Null => {
                    return Err(DecodeError::MissingField {
                        field: "/timestamp",
                    })
                }
                _ => return Err(wrong("/timestamp", "an RFC 3339 string")),
            };
            let event = optional_str(spm_event, "/event_id")?.unwrap_or(Cow::Borrowed(""));
            let tool =
                optional_str(take(Slot::ToolName), "/tool_name")?.unwrap_or(Cow::Borrowed(""));
            (Format::AgentSpm, agent, event, tool, ts)
        } else {
            session = optional_str(take(Slot::SessionId), "/sessionId")?.filter(|s| !s.is_empty());
            parent_session = optional_str(take(Slot::ParentSessionId), "/parentSessionId")?
                .filter(|s| !s.is_empty());
            for (field, v) in [
                ("/sessionId", &session),
                ("/parentSessionId", &parent_session),
            ] {
                if let Some(v) = v.as_deref().filter(|v| v.len() > MAX_AGENT_ID_BYTES) {
                    return Err(DecodeError::InvalidValue {
                        field: field.into(),
                        reason: format!("{} bytes, more than {MAX_AGENT_ID_BYTES}", v.len()),
                    });
                }
            }
            let entry_type = optional_str(take(Slot::EntryType), "/type")?;
            (kind, shield_outcome) = match entry_type.as_deref() {
                Some("session_created" | "session_delegated") => (EntryKind::SessionBinding, None),
                Some("auth_denied" | "runtime_shutdown") => (EntryKind::NotAToolCall, None),
                Some(t) if t.starts_with("session_") => (EntryKind::NotAToolCall, None),
                Some("tool_allowed") => (EntryKind::ToolCall, Some(Outcome::Allow)),
                Some("tool_blocked" | "policy_denied") => {
                    (EntryKind::ToolCall, Some(Outcome::Deny))
                }
                _ => (EntryKind::ToolCall, None),
            };
            let named = first_str([(take(Slot::AgentIdCamel), "/agentId")])?;
            user = first_str([(take(Slot::UserId), "/userId")])?;
            if let Some(u) = user.as_deref().filter(|u| u.len() > MAX_AGENT_ID_BYTES) {
                return Err(DecodeError::InvalidValue {
                    field: "/userId".into(),
                    reason: format!("{} bytes, more than {MAX_AGENT_ID_BYTES}", u.len()),
                });
            }
            let agent = match (named, &user, &session) {
                (Some(a), _, _) => a,
                (None, Some(u), _) => {
                    agent_source = AgentSource::User;
                    u.clone()
                }
                (None, None, Some(s)) => {
                    agent_source = AgentSource::Session;
                    s.clone()
                }
                (None, None, None) => return Err(DecodeError::MissingField { field: "/agent_id" }),
            };
            let ts = match timestamp {
                Scalar::Int(v) => v,
                Scalar::UInt(v) => i64::try_from(v).unwrap_or(i64::MAX),
                Scalar::Float(v) if v.is_finite() => v as i64,
                Scalar::Absent | Scalar::Null => {
                    return Err(DecodeError::MissingField {
                        field: "/timestamp",
                    })
                }
                _ => return Err(wrong("/timestamp", "epoch milliseconds (a number)")),
            };
            if !(0..=MAX_TIMESTAMP_MS).contains(&ts) {
                return Err(DecodeError::InvalidValue {
                    field: "/timestamp".into(),
                    reason: format!("{ts} ms is outside 1970..9999"),
                });
            }
            let event =
                optional_str(take(Slot::EventIdCamel), "/eventId")?.unwrap_or(Cow::Borrowed(""));
            let tool =
                optional_str(take(Slot::ToolNameCamel), "/toolName")?.unwrap_or(Cow::Borrowed(""));
            (Format::AgentShield, agent, event, tool, ts)
        };
        let too_long = |field: &str, v: &str| DecodeError::InvalidValue {
            field: field.into(),
            reason: format!("{} bytes, more than {MAX_AGENT_ID_BYTES}", v.len()),
        };
        if agent_id.len() > MAX_AGENT_ID_BYTES {
            return Err(too_long(
                if is_spm { "/agent_id" } else { "/agentId" },
                &agent_id,
            ));
        }
        if event_id.len() > MAX_AGENT_ID_BYTES {
            return Err(too_long(
                if is_spm { "/event_id" } else { "/eventId" },
                &event_id,
            ));
        }
        if tool_name.len() > MAX_AGENT_ID_BYTES {
            return Err(too_long(
                if is_spm { "/tool_name" } else { "/toolName" },
                &tool_name,
            ));
        }
        let outcome = if is_spm {
            optional_str(take(Slot::Outcome), "/outcome")?.map(|s| Outcome::parse(&s))
        } else {
            shield_outcome
        };
        let environment = optional_str(take(Slot::Environment), "/safe_payload/environment")?;
        let group = if self.group_pointer.is_empty() {
            None
        } else {
            optional_str(take(Slot::Group), &self.group_pointer)?
        };
        if let Some(e) = environment
            .as_deref()
            .filter(|e| e.len() > MAX_AGENT_ID_BYTES)
        {
            return Err(too_long("/safe_payload/environment", e));
        }
        if let Some(g) = group.as_deref().filter(|g| g.len() > MAX_AGENT_ID_BYTES) {
            return Err(too_long(&self.group_pointer, g));
        }
        let bytes = match take(Slot::Volume) {
            Scalar::Absent | Scalar::Null => None,
            Scalar::Int(v) => Some(v as f64),
            Scalar::UInt(v) => Some(v as f64),
            Scalar::Float(v) => Some(v),
            _ => return Err(wrong(&self.volume_pointer, "a number of bytes")),
        };
        if let Some(b) = bytes {
            if !(b.is_finite() && b >= 0.0) {
                return Err(DecodeError::InvalidValue {
                    field: self.volume_pointer.clone(),
                    reason: format!("{b} is not a non-negative number of bytes"),
                });
            }
        }
        Ok(AuditEvent {
            format,
            event_id,
            ts_ms,
            agent_id,
            tool_name,
            outcome,
            environment,
            group,
            bytes,
            kind,
            agent_source,
            user,
            session,
            parent_session,
        })
    }
}

fn present(s: &Scalar<'_>) -> bool {
    !matches!(s, Scalar::Absent | Scalar::Null)
}

fn wrong(field: &str, expected: &'static str) -> DecodeError {
    DecodeError::WrongType {
        field: field.to_string(),
        expected,
    }
}

fn optional_str<'a>(s: Scalar<'a>, field: &str) -> Result<Option<Cow<'a, str>>, DecodeError> {
    match s {
        Scalar::Absent | Scalar::Null => Ok(None),
        Scalar::Str(v) => Ok(Some(v)),
        _ => Err(wrong(field, "a string")),
    }
}

fn required_str<'a>(s: Scalar<'a>, field: &'static str) -> Result<Cow<'a, str>, DecodeError> {
    match optional_str(s, field)? {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(DecodeError::MissingField { field }),
    }
}

/// The first present, non-empty string of a list of candidate fields.
fn first_str<'a, const N: usize>(
    cands: [(Scalar<'a>, &str); N],
) -> Result<Option<Cow<'a, str>>, DecodeError> {
    for (s, field) in cands {
        if let Some(v) = optional_str(s, field)? {
            if !v.is_empty() {
                return Ok(Some(v));
            }
        }
    }
    Ok(None)
}

struct ObjectVisitor<'n, 's, 'a> {
    node: &'n Node,
    slots: &'s mut [Scalar<'a>; SLOT_COUNT],
    /// Set to the key that appeared twice, when one did.
    dup: &'s std::cell::Cell<Option<String>>,
}

impl<'de, 'n, 's> Visitor<'de> for ObjectVisitor<'n, 's, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(found) = map.next_key_seed(KeySeed { node: self.node })? {
            match found {
                Some(i) => {
                    let entry = &self.node.entries[i];
                    map.next_value_seed(ValueSeed {
                        entry,
                        slots: &mut *self.slots,
                        dup: self.dup,
                    })?;
                }
                None => {
                    map.next_value_seed(Skip)?;
                }
            }
        }
        Ok(())
    }
}

struct KeySeed<'n> {
    node: &'n Node,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<usize>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<usize>, E> {
        Ok(self.node.find(v))
    }
}

struct ValueSeed<'n, 's, 'a> {
    entry: &'n Entry,
    slots: &'s mut [Scalar<'a>; SLOT_COUNT],
    dup: &'s std::cell::Cell<Option<String>>,
}

impl<'n, 's, 'a> ValueSeed<'n, 's, 'a> {
    fn set<E: de::Error>(self, value: Scalar<'a>) -> Result<(), E> {
        if self.entry.fill(self.slots, value) {
            return Ok(());
        }
        self.dup.set(Some(self.entry.key().to_string()));
        Err(E::custom(format_args!(
            "duplicate key {:?}",
            self.entry.key()
        )))
    }
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_, '_, 'de> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_, '_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<(), E> {
        self.set(Scalar::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.set(Scalar::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<(), E> {
        self.set(Scalar::Str(Cow::Owned(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.set(Scalar::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.set(Scalar::UInt(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.set(Scalar::Float(v))
    }
    fn visit_bool<E: de::Error>(self, _v: bool) -> Result<(), E> {
        self.set(Scalar::Bool)
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.set(Scalar::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.set(Scalar::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Skip)?.is_some() {}
        self.set(Scalar::Array)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        match &self.entry.child {
            Some(node) => {
                let slots = &mut *self.slots;
                ObjectVisitor {
                    node,
                    slots,
                    dup: self.dup,
                }
                .visit_map(map)?;
                // The object itself also fills the entry's own slots (a pointer to an object).
                if self.entry.is_wanted() {
                    return self.set(Scalar::Object);
                }
                Ok(())
            }
            None => {
                Skip.visit_map(map)?;
                self.set(Scalar::Object)
            }
        }
    }
}

/// Skips a value without allocating for nesting (serde's `IgnoredAny` on serde_json keeps a
/// nesting stack in a buffer that a fresh deserializer must allocate).
struct Skip;

impl<'de> DeserializeSeed<'de> for Skip {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Skip {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Skip)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key::<IgnoredAny>()?.is_some() {
            map.next_value_seed(Skip)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
