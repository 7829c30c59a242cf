//! RFC 3339 timestamps to and from epoch milliseconds.

use chrono::{DateTime, Datelike, SecondsFormat, Utc};

/// Latest accepted event time: 9999-12-31T23:59:59.999Z.
pub const MAX_TIMESTAMP_MS: i64 = 253_402_300_799_999;

/// Parses an RFC 3339 timestamp into epoch milliseconds (sub-millisecond digits are truncated).
///
/// ```
/// use agent_guardian::event::parse_rfc3339_ms;
/// assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:01.5Z"), Some(1500));
/// assert_eq!(parse_rfc3339_ms("1970-01-01T01:00:00+01:00"), Some(0));
/// assert_eq!(parse_rfc3339_ms("not a time"), None);
/// ```
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let ms = match fast_utc(s.as_bytes()) {
        Some(ms) => ms,
        None => DateTime::parse_from_rfc3339(s).ok()?.timestamp_millis(),
    };
    (0..=MAX_TIMESTAMP_MS).contains(&ms).then_some(ms)
}

/// The common shape `YYYY-MM-DDTHH:MM:SS[.fff…]Z` without chrono's general parser; `None`
/// for anything else (which chrono then parses or rejects).
fn fast_utc(b: &[u8]) -> Option<i64> {
    if b.len() < 20
        || b.len() > 35
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    if *b.last()? != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        b[r].iter().try_fold(0i64, |acc, c| {
            c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
        })
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let frac = &b[19..b.len() - 1];
    let millis = match frac {
        [] => 0,
        [b'.', digits @ ..] if !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) => {
            let mut m = 0;
            for i in 0..3 {
                m = m * 10 + digits.get(i).map_or(0, |c| i64::from(c - b'0'));
            }
            m
        }
        _ => return None,
    };
    let date = chrono::NaiveDate::from_ymd_opt(y as i32, mo as u32, d as u32)?;
    if h > 23 || mi > 59 || sec > 59 {
        return None; // leap seconds and the like: chrono decides
    }
    let days = i64::from(date.num_days_from_ce()) - 719_163;
    Some(((days * 24 + h) * 60 + mi) * 60_000 + sec * 1000 + millis)
}

/// Formats epoch milliseconds as RFC 3339 in UTC with millisecond precision, e.g. `2026-03-02T09:00:00.000Z`.
pub fn format_rfc3339_ms(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Serde adapter for epoch-ms fields written as RFC 3339 strings.
pub mod rfc3339_serde {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes epoch ms as RFC 3339.
    pub fn serialize<S: Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_rfc3339_ms(*ms))
    }

    /// Reads RFC 3339 into epoch ms.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        super::parse_rfc3339_ms(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("bad time {s:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_offsets_and_fractions() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(parse_rfc3339_ms("1970-01-01T01:00:01.5+01:00"), Some(1500));
        assert_eq!(
            parse_rfc3339_ms("2026-03-02T09:00:00.123456Z"),
            Some(1_772_442_000_123)
        );
        assert_eq!(parse_rfc3339_ms("yesterday"), None);
        assert_eq!(parse_rfc3339_ms("1969-12-31T23:59:59Z"), None);
    }

    #[test]
    fn fast_path_agrees_with_chrono() {
        for s in [
            "2026-03-02T09:00:00Z",
            "2026-03-02T09:00:00.1Z",
            "2026-03-02T09:00:00.123456789Z",
            "2024-02-29T23:59:59.999Z",
            "1970-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999Z",
        ] {
            let chrono_ms = DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis();
            assert_eq!(fast_utc(s.as_bytes()), Some(chrono_ms), "{s}");
        }
        for s in [
            "2026-02-30T09:00:00Z",
            "2026-03-02T24:00:00Z",
            "2026-03-02T09:00:00.Z",
            "2026-03-02t09:00:00Z",
            "2026-03-02T09:00:00+01:00",
        ] {
            assert_eq!(fast_utc(s.as_bytes()), None, "{s}");
        }
        assert_eq!(parse_rfc3339_ms("2026-02-30T09:00:00Z"), None);
    }

    proptest::proptest! {
        /// The fast path agrees with chrono's parser on any instant of 0000-9999.
        #[test]
        fn fast_path_agrees_with_chrono_on_any_date(
            y in 0i64..=9999, mo in 1i64..=12, d in 1i64..=31,
            h in 0i64..24, mi in 0i64..60, sec in 0i64..60, ms in 0i64..1000,
        ) {
            let s = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{sec:02}.{ms:03}Z");
            let want = DateTime::parse_from_rfc3339(&s).ok().map(|t| t.timestamp_millis());
            proptest::prop_assert_eq!(fast_utc(s.as_bytes()), want, "{}", s);
        }
    }

    #[test]
    fn formats_round_trip() {
        let ms = 1_772_442_000_123;
        assert_eq!(format_rfc3339_ms(ms), "2026-03-02T09:00:00.123Z");
        assert_eq!(parse_rfc3339_ms(&format_rfc3339_ms(ms)), Some(ms));
    }
}
