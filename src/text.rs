//! Text an attacker may have written (agent ids, tool names, reasons, parser messages), shown
//! where a person reads it: a terminal, a human log line, a table.
//!
//! Characters that can rewrite what the reader sees are escaped as `\u{…}`: control characters
//! (C0, DEL, C1: a newline forges a log line, an ANSI sequence clears the screen), the
//! bidirectional marks, embeddings, overrides and isolates (they reorder the rest of the line),
//! the zero-width characters (they make two ids look the same) and the line and paragraph
//! separators; in JSON output (ECS, OCSF) the same characters are written as `\u` escapes, so
//! the line holds none of them raw while its values stay what the input said. A leaf module: it
//! imports nothing of the crate.

use std::borrow::Cow;
use std::fmt;

/// Whether `c` is escaped when shown.
pub fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{2069}'
                | '\u{FEFF}'
        )
}

/// `s` with its hidden characters escaped (borrowed when it has none).
pub fn shown(s: &str) -> Cow<'_, str> {
    if !s.chars().any(hidden) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        push(&mut out, c);
    }
    Cow::Owned(out)
}

/// `s` shown in at most `max` characters, cut between characters and never inside an escape;
/// a cut ends with `…` (counted in `max`).
pub fn shown_within(s: &str, max: usize) -> String {
    let full = shown(s);
    if full.chars().count() <= max {
        return full.into_owned();
    }
    let mut out = String::new();
    let mut used = 0;
    let mut piece = String::new();
    for c in s.chars() {
        piece.clear();
        push(&mut piece, c);
        let n = piece.chars().count();
        if used + n + 1 > max {
            break;
        }
        out.push_str(&piece);
        used += n;
    }
    if max > 0 {
        out.push('…');
    }
    out
}

fn push(out: &mut String, c: char) {
    if hidden(c) {
        out.extend(c.escape_unicode());
    } else {
        out.push(c);
    }
}

/// `v` as one line of JSON in which the hidden characters of its strings are `\uXXXX` escapes
/// (serde_json escapes only C0 controls; C1, bidi and zero-width characters would go out raw).
pub fn json_line(v: &serde_json::Value) -> Result<String, serde_json::Error> {
    use serde::ser::Error as _;
    use serde::Serialize;
    let mut out = Vec::with_capacity(512);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, Escaping);
    v.serialize(&mut ser)?;
    // The formatter writes only what serde_json gives it, and escapes: valid UTF-8.
    String::from_utf8(out).map_err(serde_json::Error::custom)
}

/// serde_json's compact form, with [`hidden`] characters escaped.
struct Escaping;

impl serde_json::ser::Formatter for Escaping {
    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if hidden(c) {
                writer.write_all(&fragment.as_bytes()[start..i])?;
                // Every hidden character is in the Basic Multilingual Plane: one escape.
                write!(writer, "\\u{:04x}", u32::from(c))?;
                start = i + c.len_utf8();
            }
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }
}

/// Display form of [`shown`], for log fields (`agent = %Shown(&id)`).
#[derive(Debug, Clone, Copy)]
pub struct Shown<'a>(pub &'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&shown(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed_and_what_rewrites_a_line_is_escaped() {
        assert!(matches!(shown("fin-01"), Cow::Borrowed("fin-01")));
        assert_eq!(shown("a\u{202E}gnp.exe"), "a\\u{202e}gnp.exe");
        assert_eq!(shown("x\u{1b}[2Jy\u{2066}"), "x\\u{1b}[2Jy\\u{2066}");
        assert_eq!(
            shown("evil\nINFO operator command"),
            "evil\\u{a}INFO operator command"
        );
        for c in [
            '\u{85}', '\u{200B}', '\u{200D}', '\u{2028}', '\u{2060}', '\u{FEFF}', '\u{7f}',
        ] {
            let s = format!("a{c}b");
            assert!(!shown(&s).contains(c), "{:?} is escaped", c);
        }
        // Letters of other scripts are text, not tricks.
        assert_eq!(shown("агент-é-代理"), "агент-é-代理");
        assert_eq!(Shown("a\rb").to_string(), "a\\u{d}b");
    }

    #[test]
    fn json_lines_escape_what_rewrites_a_line_and_read_back_the_same() {
        let v = serde_json::json!({
            "agent_id": "a\u{202E}gnp\u{200B}\u{85}\u{7f}",
            "plain": "fin-01 агент",
            "nested": ["x\ny", {"k\u{2066}": 1}],
        });
        let line = json_line(&v).unwrap();
        assert!(!line.chars().any(hidden), "{line:?}");
        assert!(
            line.contains("\\u202e") && line.contains("\\u200b"),
            "{line}"
        );
        assert!(
            line.contains("fin-01 агент"),
            "other text is left as it is: {line}"
        );
        let back: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(back, v);
        assert_eq!(
            json_line(&serde_json::json!({"a": 1})).unwrap(),
            r#"{"a":1}"#
        );
    }

    #[test]
    fn a_cut_falls_between_characters_and_never_inside_an_escape() {
        assert_eq!(shown_within("fin-01", 6), "fin-01");
        assert_eq!(shown_within("fin-0123", 6), "fin-0…");
        // "a" then an escape of 8 characters: no room for the escape, so it is left out whole.
        assert_eq!(shown_within("a\u{202E}bcdefgh", 6), "a…");
        assert_eq!(shown_within("é漢字abc", 3), "é漢…");
        for max in 0..20 {
            let s = shown_within("x\u{1b}[2J\u{2066}yz", max);
            assert!(s.chars().count() <= max.max(1), "{max}: {s}");
            assert!(!s.contains('\u{1b}') && !s.contains('\u{2066}'));
            let open = s.matches("\\u{").count();
            assert_eq!(open, s.matches('}').count(), "{max}: {s} cuts an escape");
        }
    }
}
