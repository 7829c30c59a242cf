//! off_hours: activity outside the blueprint's hours and working days in its time zone (static),
//! or in an hour of the week this agent (almost) never uses (learned).

use serde::{Deserialize, Serialize};

use super::{Episode, Finding, HourView, LocalTime, Observation};
use crate::blueprint::{Blueprint, Weekdays};
use crate::response::{Basis, IncidentType};

/// Per-agent off-hours state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OffHoursState {
    episode: Episode,
}

fn day_name(d: u8) -> &'static str {
    ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"][usize::from(d % 7)]
}

/// Whether a local time is outside the blueprint's allowed hours or working days.
pub fn outside_allowed(bp: &Blueprint, l: LocalTime) -> bool {
    bp.allowed_hours.is_some_and(|h| !h.contains(l.hour)) || !bp.working_days.contains(l.weekday)
}

/// Checks one event.
pub fn observe(
    bp: &Blueprint,
    st: &mut OffHoursState,
    hour: &HourView,
    obs: &Observation<'_>,
    out: &mut Vec<Finding>,
) {
    let l = obs.local;
    let over_static = outside_allowed(bp, l);
    let over_learned = !over_static && hour.rare;
    if !over_static && !over_learned {
        st.episode.calm();
        return;
    }
    if !st.episode.violate(obs.ts, &bp.dedup) {
        return;
    }
    let when = format!(
        "{} {:02}:{:02} {}",
        day_name(l.weekday),
        l.hour,
        l.minute,
        bp.timezone.name()
    );
    let finding = if over_static {
        let hours = bp.allowed_hours.map_or("any hour".to_string(), |h| {
            format!("{:02}:00-{:02}:00", h.start, h.end)
        });
        let days = if bp.working_days == Weekdays::ALL {
            "every day".to_string()
        } else {
            bp.working_days.names().join(",")
        };
        Finding {
            kind: IncidentType::OffHours,
            basis: Basis::Static,
            severity: bp.severities.off_hours,
            observed: f64::from(l.hour) + f64::from(l.minute) / 60.0,
            expected: bp.allowed_hours.map_or(0.0, |h| f64::from(h.start)),
            unit: "local_hour",
            window_start: obs.ts,
            window_end: obs.ts,
            description: format!(
                "Agent {:?} active at {when}, outside allowed hours {hours} on {days}.",
                obs.agent_id
            ),
            pattern: None,
            disc: 0,
        }
    } else {
        let hour_start = obs.ts.div_euclid(super::HOUR_MS) * super::HOUR_MS;
        Finding {
            kind: IncidentType::OffHours,
            basis: Basis::Learned,
            severity: bp.severities.off_hours,
            observed: f64::from(hour.count),
            expected: f64::from(hour.stats.mean),
            unit: "calls",
            window_start: hour_start,
            window_end: obs.ts,
            description: format!(
                "Agent {:?} active at {when}, an hour of the week it used in {} of the {} weeks observed.",
                obs.agent_id, hour.stats.active, hour.stats.n
            ),
            pattern: None,
            disc: 0,
        }
    };
    out.push(finding);
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use crate::response::{Basis, IncidentType};

    fn off(found: &[super::Finding]) -> Vec<Basis> {
        found
            .iter()
            .filter(|f| f.kind == IncidentType::OffHours)
            .map(|f| f.basis)
            .collect()
    }

    #[test]
    fn night_activity_in_new_york_fires_once_per_night() {
        let mut k = Kit::new(finance()); // 08-18 Mon-Fri America/New_York
        let t0 = at("2026-03-03T08:00:00Z"); // Tue 03:00 EST
        let found = k.feed((0..60).map(|i| ev(t0 + i * 60_000, "q", None)));
        assert_eq!(off(&found), vec![Basis::Static]);
    }

    #[test]
    fn just_before_closing_time_is_allowed() {
        let mut k = Kit::new(finance());
        let found = k.feed(vec![ev(at("2026-03-03T22:59:59Z"), "q", None)]); // Tue 17:59:59 EST
        assert!(off(&found).is_empty());
        let found = k.feed(vec![ev(at("2026-03-03T23:00:00Z"), "q", None)]); // 18:00 EST
        assert_eq!(off(&found), vec![Basis::Static]);
    }

    #[test]
    fn weekend_is_off_hours_in_working_day_blueprints() {
        let mut k = Kit::new(finance());
        let found = k.feed(vec![ev(at("2026-03-07T15:00:00Z"), "q", None)]); // Saturday 10:00
        assert_eq!(off(&found), vec![Basis::Static]);
    }

    #[test]
    fn new_york_march_and_november_dst_changes() {
        // 08:30 local on the Monday after each change is allowed, 07:30 is not.
        for (ok, bad) in [
            ("2026-03-09T12:30:00Z", "2026-03-09T11:30:00Z"), // EDT, UTC-4
            ("2026-11-02T13:30:00Z", "2026-11-02T12:30:00Z"), // EST, UTC-5
            ("2026-03-06T13:30:00Z", "2026-03-06T12:30:00Z"), // Friday before: EST
        ] {
            let mut k = Kit::new(finance());
            assert!(off(&k.feed(vec![ev(at(ok), "q", None)])).is_empty(), "{ok}");
            let mut k = Kit::new(finance());
            assert_eq!(
                off(&k.feed(vec![ev(at(bad), "q", None)])),
                vec![Basis::Static],
                "{bad}"
            );
        }
    }

    #[test]
    fn london_march_and_october_dst_changes() {
        // Engineering: 06-22 Europe/London. 21:30 local allowed, 22:30 not, in GMT and BST.
        for (ok, bad) in [
            ("2026-03-27T21:30:00Z", "2026-03-27T22:30:00Z"), // Fri before the change: GMT
            ("2026-03-30T20:30:00Z", "2026-03-30T21:30:00Z"), // Mon after: BST, UTC+1
            ("2026-10-23T20:30:00Z", "2026-10-23T21:30:00Z"), // Fri before: BST
            ("2026-10-26T21:30:00Z", "2026-10-26T22:30:00Z"), // Mon after: GMT
        ] {
            let mut k = Kit::new(engineering());
            assert!(off(&k.feed(vec![ev(at(ok), "q", None)])).is_empty(), "{ok}");
            let mut k = Kit::new(engineering());
            assert_eq!(
                off(&k.feed(vec![ev(at(bad), "q", None)])),
                vec![Basis::Static],
                "{bad}"
            );
        }
    }

    #[test]
    fn learned_rare_hour_fires_after_warmup_only() {
        let mut k = Kit::new(soc()); // no static hours
        let start = at("2026-03-02T09:00:00Z"); // Monday 09:00 UTC
        let mut evs = Vec::new();
        for day in 0..21 {
            for h in 0..8 {
                for c in 0..4 {
                    evs.push(ev(
                        start + day * 86_400_000 + h * 3_600_000 + c * 900_000,
                        "triage",
                        None,
                    ));
                }
            }
        }
        // 03:00 on day 2 (warm-up): silent. 03:00 on day 21: learned off-hours.
        evs.push(ev(start + 2 * 86_400_000 - 6 * 3_600_000, "triage", None));
        evs.push(ev(start + 21 * 86_400_000 - 6 * 3_600_000, "triage", None));
        evs.sort_by_key(|e| e.ts);
        let found = k.feed(evs);
        assert_eq!(off(&found), vec![Basis::Learned], "{found:?}");
    }
}
