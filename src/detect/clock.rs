//! Local time in a blueprint's zone, computed from event time (never the wall clock).

use chrono::{DateTime, Offset, TimeZone};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

const DAY_MS: i64 = 86_400_000;
const QUARTER_MS: i64 = 900_000;

/// A local wall-clock reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LocalTime {
    /// Hour of day, 0–23.
    pub hour: u8,
    /// Minute, 0–59.
    pub minute: u8,
    /// Day of week, 0 = Monday … 6 = Sunday.
    pub weekday: u8,
    /// Hour of week, 0 = Monday 00:00 … 167 = Sunday 23:00.
    pub hour_of_week: u8,
    /// Local calendar day, counted from 1970-01-01.
    pub day: i32,
}

impl LocalTime {
    /// Local week, counted in Monday-to-Sunday weeks from the Monday before 1970-01-01.
    pub fn week(&self) -> i32 {
        (self.day + 3).div_euclid(7)
    }
}

/// UTC offset of a zone at an instant, in ms.
fn offset_ms(tz: Tz, utc_ms: i64) -> i64 {
    let utc = DateTime::from_timestamp_millis(utc_ms)
        .unwrap_or_default()
        .naive_utc();
    i64::from(tz.offset_from_utc_datetime(&utc).fix().local_minus_utc()) * 1000
}

fn from_local_ms(local_ms: i64) -> LocalTime {
    let days = local_ms.div_euclid(DAY_MS);
    let in_day = local_ms.rem_euclid(DAY_MS);
    let weekday = (days + 3).rem_euclid(7) as u8; // 1970-01-01 was a Thursday
    let hour = (in_day / 3_600_000) as u8;
    let minute = ((in_day / 60_000) % 60) as u8;
    LocalTime {
        hour,
        minute,
        weekday,
        hour_of_week: weekday * 24 + hour,
        day: days.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32,
    }
}

/// Local time of an instant in a zone (exact, handles daylight-saving changes).
pub fn local_time(tz: Tz, utc_ms: i64) -> LocalTime {
    from_local_ms(utc_ms + offset_ms(tz, utc_ms))
}

/// Local hour of week of an instant.
pub fn hour_of_week(tz: Tz, utc_ms: i64) -> u8 {
    local_time(tz, utc_ms).hour_of_week
}

/// Caches a zone's offset for the current quarter hour (zone changes fall on quarter hours), so
/// the per-event cost is arithmetic.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalClock {
    #[serde(skip, default = "no_quarter")]
    quarter: i64,
    #[serde(skip)]
    offset: i64,
    #[serde(skip)]
    tz: Option<Tz>,
}

fn no_quarter() -> i64 {
    i64::MIN
}

impl Default for LocalClock {
    fn default() -> Self {
        LocalClock {
            quarter: i64::MIN,
            offset: 0,
            tz: None,
        }
    }
}

impl PartialEq for LocalClock {
    fn eq(&self, _: &Self) -> bool {
        true // a cache: equal whatever it holds
    }
}

impl LocalClock {
    /// Local time of an instant in a zone.
    pub fn local(&mut self, tz: Tz, utc_ms: i64) -> LocalTime {
        let q = utc_ms.div_euclid(QUARTER_MS);
        if q != self.quarter || self.tz != Some(tz) {
            self.offset = offset_ms(tz, utc_ms);
            self.quarter = q;
            self.tz = Some(tz);
        }
        from_local_ms(utc_ms + self.offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::parse_rfc3339_ms;

    fn at(s: &str) -> i64 {
        parse_rfc3339_ms(s).unwrap()
    }

    #[test]
    fn london_spring_forward_and_fall_back() {
        let tz: Tz = "Europe/London".parse().unwrap();
        // 2026-03-29 01:00 UTC: clocks go from 01:00 GMT to 02:00 BST.
        assert_eq!(local_time(tz, at("2026-03-29T00:59:00Z")).hour, 0);
        assert_eq!(local_time(tz, at("2026-03-29T01:00:00Z")).hour, 2);
        // 2026-10-25 01:00 UTC: back from 02:00 BST to 01:00 GMT.
        assert_eq!(local_time(tz, at("2026-10-25T00:30:00Z")).hour, 1);
        assert_eq!(local_time(tz, at("2026-10-25T01:30:00Z")).hour, 1);
        assert_eq!(local_time(tz, at("2026-10-26T09:00:00Z")).hour, 9);
    }

    #[test]
    fn new_york_dst_and_weekdays() {
        let tz: Tz = "America/New_York".parse().unwrap();
        // 2026-03-08: EST (-5) → EDT (-4) at 07:00 UTC.
        let before = local_time(tz, at("2026-03-06T13:00:00Z")); // Friday 08:00 EST
        assert_eq!((before.weekday, before.hour), (4, 8));
        let after = local_time(tz, at("2026-03-09T12:00:00Z")); // Monday 08:00 EDT
        assert_eq!((after.weekday, after.hour, after.hour_of_week), (0, 8, 8));
        // 2026-11-01: EDT → EST at 06:00 UTC.
        assert_eq!(local_time(tz, at("2026-11-02T13:00:00Z")).hour, 8);
        assert_eq!(local_time(tz, at("2026-10-30T12:00:00Z")).hour, 8);
    }

    #[test]
    fn cached_clock_agrees_with_exact_conversion_across_a_change() {
        let tz: Tz = "America/New_York".parse().unwrap();
        let mut c = LocalClock::default();
        let start = at("2026-03-08T05:00:00Z");
        for i in 0..(4 * 60) {
            let t = start + i * 60_000;
            assert_eq!(c.local(tz, t), local_time(tz, t), "at {t}");
        }
    }
}
