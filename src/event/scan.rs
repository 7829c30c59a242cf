//! The decoder's fast path: one validating pass over the bytes of an audit event.
//!
//! The scanner handles the shape SDKs write (compact objects, plain strings, integers) and
//! returns `None` at the first thing it does not handle itself: an escape, a number with an
//! exponent or a long or negative number in a wanted field, deep nesting, or any syntax error.
//! The decoder then runs serde_json over the same payload, so serde_json stays the judge of
//! everything unusual (and words the errors); the scanner only has to be right about what it
//! accepts, which the property tests below check against serde_json.

use std::borrow::Cow;

use super::keys::{pack, Entry, Node, Scalar, Slots};

/// Deepest nesting the scanner follows (serde_json's own limit is 128).
const MAX_DEPTH: u32 = 64;
/// Longest run of integer digits taken without serde_json (10^18 fits any integer type).
const MAX_INT_DIGITS: usize = 18;
/// Longest fraction taken without serde_json.
const MAX_FRACTION_DIGITS: usize = 32;

/// An object with no keys that matter, for skipping.
static SKIPPED: Node = Node {
    entries: Vec::new(),
    table: Vec::new(),
    mul: 0,
};

/// Fills `slots` from the JSON object in `text`; `None` when serde_json must decide.
pub(super) fn scan<'a>(text: &'a str, root: &Node, slots: &mut Slots<'a>) -> Option<()> {
    let mut s = Scanner { text, pos: 0 };
    s.skip_ws();
    s.eat(b'{')?;
    s.object(root, slots, 1)?;
    s.skip_ws();
    (s.pos == text.len()).then_some(())
}

/// Position in the payload being scanned.
struct Scanner<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.pos += 1)
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// The members of an object whose `{` was just read, filling the slots of `node`'s keys.
    fn object(&mut self, node: &Node, slots: &mut Slots<'a>, depth: u32) -> Option<()> {
        let mut closed = self.open(b'}', depth)?;
        while !closed {
            self.skip_ws();
            let start = self.pos + 1;
            let key = self.string()?;
            // Inside a skipped object no key matters, so none is looked up.
            let found = match node.entries.is_empty() {
                true => None,
                false => node.find_packed(pack(self.text.as_bytes(), start, key.len()), key),
            };
            self.skip_ws();
            self.eat(b':')?;
            self.skip_ws();
            match found {
                Some(i) => self.wanted(&node.entries[i], slots, depth)?,
                None => self.skip(slots, depth)?,
            }
            closed = self.comma_or(b'}')?;
        }
        Some(())
    }

    /// The elements of an array whose `[` was just read.
    fn array(&mut self, slots: &mut Slots<'a>, depth: u32) -> Option<()> {
        let mut closed = self.open(b']', depth)?;
        while !closed {
            self.skip_ws();
            self.skip(slots, depth)?;
            closed = self.comma_or(b']')?;
        }
        Some(())
    }

    /// Just inside an object or array: whether it is empty (its `close` read); `None` when
    /// nested deeper than the scanner follows.
    fn open(&mut self, close: u8, depth: u32) -> Option<bool> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.skip_ws();
        Some(self.eat(close).is_some())
    }

    /// After a member or element: `true` at the closing `close`, `false` after a comma.
    fn comma_or(&mut self, close: u8) -> Option<bool> {
        self.skip_ws();
        let c = self.peek()?;
        self.pos += 1;
        match c {
            b',' => Some(false),
            c if c == close => Some(true),
            _ => None,
        }
    }

    /// The value of a key that fills slots (or has keys below it that do).
    fn wanted(&mut self, entry: &Entry, slots: &mut Slots<'a>, depth: u32) -> Option<()> {
        let value = match self.peek()? {
            b'"' => Scalar::Str(Cow::Borrowed(self.string()?)),
            b'{' => {
                self.pos += 1;
                self.object(entry.child.as_ref().unwrap_or(&SKIPPED), slots, depth + 1)?;
                if !entry.is_wanted() {
                    return Some(());
                }
                Scalar::Object
            }
            b'[' => {
                self.pos += 1;
                self.array(slots, depth + 1)?;
                Scalar::Array
            }
            b't' => self.literal(b"true", Scalar::Bool)?,
            b'f' => self.literal(b"false", Scalar::Bool)?,
            b'n' => self.literal(b"null", Scalar::Null)?,
            b'0'..=b'9' => Scalar::UInt(self.unsigned()?),
            _ => return None,
        };
        // A key that appears twice goes to serde_json, which reports it.
        entry.fill(slots, value).then_some(())
    }

    /// Any value, checked and passed over.
    fn skip(&mut self, slots: &mut Slots<'a>, depth: u32) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' => {
                self.pos += 1;
                self.object(&SKIPPED, slots, depth + 1)
            }
            b'[' => {
                self.pos += 1;
                self.array(slots, depth + 1)
            }
            b't' => self.literal(b"true", ()),
            b'f' => self.literal(b"false", ()),
            b'n' => self.literal(b"null", ()),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    /// A string whose opening quote is next, if it has no escapes or control characters.
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let bytes = self.text.as_bytes();
        let start = self.pos;
        let end = string_end(bytes, start)?;
        if bytes[end] != b'"' {
            return None;
        }
        self.pos = end + 1;
        // Both ends sit next to an ASCII quote, so they are character boundaries.
        self.text.get(start..end)
    }

    fn literal<T>(&mut self, word: &[u8], value: T) -> Option<T> {
        let end = self.pos + word.len();
        (self.text.as_bytes().get(self.pos..end)? == word).then(|| {
            self.pos = end;
            value
        })
    }

    /// Digits from the current position; `None` if there are none or more than `max`.
    fn digits(&mut self, max: usize) -> Option<usize> {
        let bytes = self.text.as_bytes();
        let start = self.pos;
        while bytes.get(self.pos).is_some_and(u8::is_ascii_digit) {
            self.pos += 1;
        }
        let n = self.pos - start;
        (1..=max).contains(&n).then_some(n)
    }

    /// A non-negative integer as serde_json gives it (`u64`); fractions and exponents are left
    /// to serde_json.
    fn unsigned(&mut self) -> Option<u64> {
        let start = self.pos;
        let n = self.digits(MAX_INT_DIGITS)?;
        let text = self.text.as_bytes().get(start..self.pos)?;
        if (n > 1 && text[0] == b'0') || matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        Some(text.iter().fold(0u64, |v, d| v * 10 + u64::from(d - b'0')))
    }

    /// A number to skip: integer and fraction parts; an exponent is left to serde_json, which
    /// rejects numbers out of the range of `f64`.
    fn number(&mut self) -> Option<()> {
        self.eat(b'-');
        let start = self.pos;
        let n = self.digits(MAX_INT_DIGITS)?;
        if n > 1 && self.text.as_bytes()[start] == b'0' {
            return None;
        }
        if self.eat(b'.').is_some() {
            self.digits(MAX_FRACTION_DIGITS)?;
        }
        match self.peek() {
            Some(b'e' | b'E') => None,
            _ => Some(()),
        }
    }
}

/// Index of the first quote, backslash or control character at or after `from`.
///
/// Sixteen bytes at a time with SSE2 on x86_64 ([`first_special_16`]), then eight at a time: in
/// each lane test the lowest flagged byte is always a true match (the subtraction's borrow only
/// runs upwards), so the lowest flag over the three tests is the first byte that ends the plain
/// part of a string.
fn string_end(bytes: &[u8], from: usize) -> Option<usize> {
    const ONES: u64 = u64::MAX / 0xff;
    const HIGH: u64 = ONES * 0x80;
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x;
    let mut i = from;
    #[cfg(target_arch = "x86_64")]
    while let Some(chunk) = bytes.get(i..i + 16) {
        if let Some(p) = first_special_16(chunk) {
            return Some(i + p);
        }
        i += 16;
    }
    while let Some(chunk) = bytes.get(i..i + 8) {
        let w = u64::from_le_bytes(chunk.try_into().ok()?);
        let found = (zero_byte(w ^ (ONES * u64::from(b'"')))
            | zero_byte(w ^ (ONES * u64::from(b'\\')))
            | (w.wrapping_sub(ONES * 0x20) & !w))
            & HIGH;
        if found != 0 {
            return Some(i + (found.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    let tail = bytes.get(i..)?;
    tail.iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
        .map(|p| i + p)
}

/// [`string_end`] of a 16-byte chunk with SSE2 (part of the x86_64 baseline): most keys and
/// values are shorter than 16 bytes, so most strings end in the first chunk, with one branch.
#[cfg(target_arch = "x86_64")]
#[inline]
fn first_special_16(chunk: &[u8]) -> Option<usize> {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };
    if chunk.len() < 16 {
        return None;
    }
    // SAFETY: SSE2 is part of the x86_64 baseline, and the unaligned load reads the 16 bytes
    // of `chunk`, which holds at least that many.
    let mask = unsafe {
        let v = _mm_loadu_si128(chunk.as_ptr().cast());
        let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
        let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
        // Below 0x20 (unsigned) exactly when min(byte, 0x1f) is the byte itself.
        let control = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1f)), v);
        _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), control)) as u32
    };
    (mask != 0).then(|| mask.trailing_zeros() as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Decoder, DecoderOptions};
    use proptest::prelude::*;

    fn decoder() -> Decoder {
        Decoder::new(&DecoderOptions {
            group_pointer: Some("/safe_payload/team".into()),
            ..Default::default()
        })
        .expect("valid options")
    }

    /// The scanner's slots, or `None` when it hands over to serde_json.
    fn scanned<'a>(d: &Decoder, text: &'a str) -> Option<Slots<'a>> {
        let mut slots: Slots<'a> = Default::default();
        scan(text, d.root(), &mut slots).map(|()| slots)
    }

    /// What serde_json makes of the same text.
    fn walked<'a>(d: &Decoder, text: &'a str) -> Option<Slots<'a>> {
        let mut slots: Slots<'a> = Default::default();
        d.walk(text, &mut slots).ok().map(|()| slots)
    }

    const SPM: &str = r#"{"event_id":"soc-1-2","timestamp":"2026-03-02T02:00:00.666Z","request_id":"req-2","agent_id":"soc-1","tool_name":"query_siem","outcome":"ALLOW","reasons":[{"code":"ALLOW","message":"policy decision"}],"safe_payload":{"agent_id":"soc-1","tool_name":"query_siem","environment":"prod","outcome":"ALLOW","bytes":3623,"team":"soc","amount":-12.50},"plugin_source":"agent-spm","extra":{"deep":[1,2,{"a":null,"b":[true,false]}]}}"#;

    #[test]
    fn takes_the_common_shape_itself_and_agrees_with_serde_json() {
        let d = decoder();
        for text in [
            SPM,
            r#"{"type":"tool_call","timestamp":1772460000250,"eventId":"x","sessionId":"s-9","toolName":"read_file"}"#,
            " {\n \"agent_id\" : \"a\" ,\t\"timestamp\":\"2026-03-02T14:00:00Z\", \"safe_payload\":{} }\r\n",
        ] {
            let fast = scanned(&d, text).expect("the scanner takes it");
            assert_eq!(Some(fast), walked(&d, text), "{text}");
        }
        // A key it reads, given twice: handed over, and serde_json's walk refuses it.
        let twice = r#"{"agent_id":"a","agent_id":"b","timestamp":"t","safe_payload":{"bytes":0}}"#;
        assert!(scanned(&d, twice).is_none() && walked(&d, twice).is_none());
        let slots = scanned(&d, SPM).expect("scans");
        assert_eq!(slots[d.volume_slot()], Scalar::UInt(3623));
    }

    #[test]
    fn hands_over_what_it_does_not_handle() {
        let d = decoder();
        for text in [
            r#"{"agent_id":"a\"b","timestamp":"t"}"#,
            r#"{"agent_id":"a","safe_payload":{"bytes":1.5}}"#,
            r#"{"agent_id":"a","safe_payload":{"bytes":-1}}"#,
            r#"{"agent_id":"a","x":1e400}"#,
            r#"{"agent_id":"a","x":12345678901234567890}"#,
            r#"{"agent_id":"a","x":01}"#,
            r#"{"agent_id":"a",}"#,
            r#"{"agent_id":"a","x":[1,]}"#,
            r#"{"agent_id":"a"} x"#,
            r#"{"agent_id":"a""#,
            "{\"agent_id\":\"a\tb\"}",
            r#"[{"agent_id":"a"}]"#,
            r#"{"agent_id":tru}"#,
        ] {
            assert!(scanned(&d, text).is_none(), "{text}");
        }
        let deep = format!("{{\"x\":{}1{}}}", "[".repeat(80), "]".repeat(80));
        assert!(scanned(&d, &deep).is_none());
    }

    proptest! {
        /// The word-at-a-time search finds exactly the first byte a byte-by-byte search finds.
        #[test]
        fn string_end_is_the_first_special_byte(bytes in proptest::collection::vec(
            prop_oneof![1 => Just(b'"'), 1 => Just(b'\\'), 1 => 0u8..0x20,
                // Bytes at the edges of the tests (signed and unsigned).
                1 => prop::sample::select(vec![0x1fu8, 0x20, 0x21, 0x7f, 0x80, 0xff]),
                24 => 0x20u8..=0xff], 0..70),
            from in 0usize..70,
        ) {
            let from = from.min(bytes.len());
            let want = bytes[from..]
                .iter()
                .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
                .map(|p| from + p);
            prop_assert_eq!(string_end(&bytes, from), want);
        }
    }

    /// JSON values with the oddities the scanner must either get right or hand over.
    fn value() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::{json, Value};
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|v| json!(v)),
            any::<u64>().prop_map(|v| json!(v)),
            (0u64..100_000).prop_map(|v| json!(v)),
            any::<f64>().prop_map(|v| json!(v)),
            "[a-z_\\-:. ]{0,12}".prop_map(Value::String),
            any::<String>().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                proptest::collection::vec(
                    (
                        prop_oneof![
                            Just("agent_id".to_string()),
                            Just("timestamp".to_string()),
                            Just("safe_payload".to_string()),
                            Just("bytes".to_string()),
                            Just("team".to_string()),
                            "[a-z_]{1,8}",
                        ],
                        inner
                    ),
                    0..6
                )
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    /// Whole documents: any value, or an event-like object around such values.
    fn document() -> impl Strategy<Value = serde_json::Value> {
        prop_oneof![
            value(),
            (value(), value(), value(), value()).prop_map(|(a, t, b, x)| serde_json::json!({
                "agent_id": a, "timestamp": t, "tool_name": "q",
                "safe_payload": {"bytes": b, "team": x, "environment": "prod"},
                "extra": x,
            })),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Whatever the scanner accepts, serde_json accepts too, with the same values.
        #[test]
        fn accepts_only_what_serde_json_accepts_and_reads_the_same(
            v in document(),
            pretty in any::<bool>(),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            damage in 0u8..3,
        ) {
            let d = decoder();
            let mut text = if pretty {
                serde_json::to_string_pretty(&v)
            } else {
                serde_json::to_string(&v)
            }
            .expect("serialises");
            match damage {
                1 if !text.is_empty() => {
                    let mut at = cut.index(text.len());
                    while !text.is_char_boundary(at) {
                        at -= 1;
                    }
                    text.truncate(at);
                }
                2 if !text.is_empty() && byte.is_ascii() => {
                    let at = flip.index(text.len());
                    if text.is_char_boundary(at) && text.is_char_boundary(at + 1) {
                        text.replace_range(at..at + 1, &char::from(byte).to_string());
                    }
                }
                _ => {}
            }
            if let Some(fast) = scanned(&d, &text) {
                prop_assert_eq!(Some(fast), walked(&d, &text), "{}", text);
            }
        }
    }
}
