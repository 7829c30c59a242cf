//! RFC 3339 timestamps to and from epoch milliseconds.

use chrono::{DateTime, SecondsFormat, Utc};

/// Latest accepted event time: 9999-12-31T23:59:59.999Z.
pub const MAX_TIMESTAMP_MS: i64 = 253_402_300_799_999;

/// Parses an RFC 3339 timestamp into epoch milliseconds (sub-millisecond digits are truncated).
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let dt = DateTime::parse_from_rfc3339(s).ok()?;
    let ms = dt.timestamp_millis();
    (0..=MAX_TIMESTAMP_MS).contains(&ms).then_some(ms)
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
        super::parse_rfc3339_ms(&s).ok_or_else(|| serde::de::Error::custom(format!("bad time {s:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_offsets_and_fractions() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(parse_rfc3339_ms("1970-01-01T01:00:01.5+01:00"), Some(1500));
        assert_eq!(parse_rfc3339_ms("2026-03-02T09:00:00.123456Z"), Some(1_772_442_000_123));
        assert_eq!(parse_rfc3339_ms("yesterday"), None);
        assert_eq!(parse_rfc3339_ms("1969-12-31T23:59:59Z"), None);
    }

    #[test]
    fn formats_round_trip() {
        let ms = 1_772_442_000_123;
        assert_eq!(format_rfc3339_ms(ms), "2026-03-02T09:00:00.123Z");
        assert_eq!(parse_rfc3339_ms(&format_rfc3339_ms(ms)), Some(ms));
    }
}
