//! frequency_spike: calls in a sliding window over the blueprint threshold (static), or calls in
//! the current hour improbable under the agent's hour-of-week baseline (learned). Also the peer's
//! count-based `volume_threshold`, reported as a volume spike.

use serde::{Deserialize, Serialize};

use super::{human_ms, Episode, Finding, HourView, Observation, Ring};
use crate::blueprint::Blueprint;
use crate::response::{Basis, IncidentType};

/// Per-agent frequency state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrequencyState {
    calls: Ring<u32>,
    episode: Episode,
    count_volume: Episode,
    /// Hour (UTC index) of the last frequency incident: its calls are already reported, so the
    /// learned hourly check stays quiet for the rest of that hour.
    reported_hour: i64,
}

impl FrequencyState {
    /// Fresh state for a blueprint.
    pub fn new(bp: &Blueprint) -> FrequencyState {
        FrequencyState {
            calls: Ring::new(bp.window_ms, bp.allowed_lateness_ms),
            episode: Episode::default(),
            count_volume: Episode::default(),
            reported_hour: i64::MIN,
        }
    }

    /// Announces the memory an event reads.
    pub fn prefetch(&self) {
        self.calls.prefetch();
    }
}

/// Checks one event.
pub fn observe(
    bp: &Blueprint,
    st: &mut FrequencyState,
    hour: &HourView,
    obs: &Observation<'_>,
    out: &mut Vec<Finding>,
) {
    if !obs.in_order {
        return;
    }
    if !st.calls.fits(bp.window_ms, bp.allowed_lateness_ms) {
        st.calls = Ring::new(bp.window_ms, bp.allowed_lateness_ms);
    }
    st.calls.add(obs.ts, 1);
    let count = st.calls.max_window_containing(obs.ts);
    let over_static = bp.frequency_threshold.filter(|t| count > *t);
    let this_hour = obs.ts.div_euclid(super::HOUR_MS);
    let over_learned = hour.over && this_hour != st.reported_hour;
    if over_static.is_some() || over_learned {
        if st.episode.violate(obs.ts, &bp.dedup) {
            st.reported_hour = this_hour;
            out.push(match over_static {
                Some(t) => Finding {
                    kind: IncidentType::FrequencySpike,
                    basis: Basis::Static,
                    severity: bp.severities.frequency_spike,
                    observed: f64::from(count),
                    expected: f64::from(t),
                    unit: "calls",
                    window_start: obs.ts - bp.window_ms,
                    window_end: obs.ts,
                    description: format!(
                        "Agent {:?} made {count} calls in {} (threshold {t}).",
                        obs.agent_id,
                        human_ms(bp.window_ms)
                    ),
                    pattern: None,
                    disc: 0,
                },
                None => {
                    let hour_start = obs.ts.div_euclid(super::HOUR_MS) * super::HOUR_MS;
                    Finding {
                        kind: IncidentType::FrequencySpike,
                        basis: Basis::Learned,
                        severity: bp.severities.frequency_spike,
                        observed: f64::from(hour.count),
                        expected: f64::from(hour.stats.mean),
                        unit: "calls",
                        window_start: hour_start,
                        window_end: obs.ts,
                        description: format!(
                            "Agent {:?} made {} calls this hour; its usual for this hour of the week is {:.1} \
                             (alert from {}, tail probability below {:e}).",
                            obs.agent_id, hour.count, hour.stats.mean, hour.threshold, bp.learned.sensitivity
                        ),
                        pattern: None,
                        disc: 0,
                    }
                }
            });
        }
    } else {
        st.episode.calm();
    }
    if let Some(t) = bp.count_volume_threshold {
        if count > t {
            if st.count_volume.violate(obs.ts, &bp.dedup) {
                out.push(Finding {
                    kind: IncidentType::VolumeSpike,
                    basis: Basis::Static,
                    severity: bp.severities.volume_spike,
                    observed: f64::from(count),
                    expected: f64::from(t),
                    unit: "calls",
                    window_start: obs.ts - bp.window_ms,
                    window_end: obs.ts,
                    description: format!(
                        "Agent {:?} exceeded the volume threshold: {count} actions in {} (limit {t}).",
                        obs.agent_id,
                        human_ms(bp.window_ms)
                    ),
                    pattern: None,
                    disc: 1,
                });
            }
        } else {
            st.count_volume.calm();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use crate::response::{Basis, IncidentType};

    #[test]
    fn burst_over_static_threshold_raises_exactly_one_incident() {
        let mut k = Kit::new(finance());
        // Finance: more than 30 calls a minute. 100 calls in 50 s, Monday 10:00 New York.
        let t0 = at("2026-03-02T15:00:00Z");
        let found = k.feed((0..100).map(|i| ev(t0 + i * 500, "query_ledger", None)));
        let f: Vec<_> = found
            .iter()
            .filter(|f| f.kind == IncidentType::FrequencySpike)
            .collect();
        assert_eq!(f.len(), 1, "{found:?}");
        assert_eq!(f[0].basis, Basis::Static);
        assert_eq!(f[0].observed, 31.0);
        assert_eq!(f[0].expected, 30.0);
    }

    #[test]
    fn steady_rate_under_threshold_is_silent() {
        let mut k = Kit::new(finance());
        let t0 = at("2026-03-02T15:00:00Z");
        let found = k.feed((0..600).map(|i| ev(t0 + i * 2_500, "query_ledger", None))); // 24/min for 25 min
        assert!(
            found.iter().all(|f| f.kind != IncidentType::FrequencySpike),
            "{found:?}"
        );
    }

    #[test]
    fn late_events_within_lateness_count_in_their_window() {
        let mut k = Kit::new(finance());
        let t0 = at("2026-03-02T15:00:00Z");
        // 30 calls in order, then a call 20 s late: 31 in one minute.
        let mut evs: Vec<_> = (0..30)
            .map(|i| ev(t0 + 20_000 + i * 1000, "q", None))
            .collect();
        evs.push(ev(t0 + 30_000, "q", None));
        let found = k.feed(evs);
        assert_eq!(
            found
                .iter()
                .filter(|f| f.kind == IncidentType::FrequencySpike)
                .count(),
            1
        );
    }

    #[test]
    fn events_later_than_the_lateness_do_not_count() {
        let mut k = Kit::new(finance());
        let t0 = at("2026-03-02T15:10:00Z");
        let mut evs: Vec<_> = (0..30).map(|i| ev(t0 + i * 1000, "q", None)).collect();
        evs.push(ev(t0 - 60_000, "q", None)); // 60 s late: beyond the 30 s lateness
        let found = k.feed(evs);
        assert_eq!(
            found
                .iter()
                .filter(|f| f.kind == IncidentType::FrequencySpike)
                .count(),
            0
        );
        assert_eq!(k.late, 1);
    }

    #[test]
    fn learned_spike_below_static_threshold_fires_after_warmup_only() {
        let mut k = Kit::new(finance());
        // Three weeks of 6 calls an hour on weekdays 09:00-17:00 New York.
        let start = at("2026-03-02T14:00:00Z"); // Monday 09:00 EST
        let weekdays = (0..21).filter(|d| d % 7 < 5);
        let mut evs = routine(start, weekdays, 8, 6, "query_ledger");
        // 200 calls over an hour (3.3/min, under 30/min): on day 0 (warm-up) and on day 21.
        for day in [0, 21] {
            let h = start + day * 86_400_000 + 2 * 3_600_000 + 1000;
            evs.extend((0..200).map(|i| ev(h + i * 17_000, "query_ledger", None)));
        }
        evs.sort_by_key(|e| e.ts);
        let found = k.feed(evs);
        let f = of_kind(&found, IncidentType::FrequencySpike);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].basis, Basis::Learned);
        assert!(f[0].window_end > start + 21 * 86_400_000);
    }

    #[test]
    fn a_reported_burst_does_not_raise_a_learned_alert_later_in_the_same_hour() {
        let mut k = Kit::new(finance());
        let start = at("2026-03-02T14:00:00Z");
        let mut evs = routine(start, [0, 7, 14, 21], 8, 6, "q");
        // Week 4, Monday 11:00: a 100-call burst in 50 s, then normal calls for the rest of the hour.
        let burst = start + 21 * 86_400_000 + 2 * 3_600_000 + 60_000;
        evs.extend((0..100).map(|i| ev(burst + i * 500, "q", None)));
        evs.sort_by_key(|e| e.ts);
        let found = k.feed(evs);
        let f = of_kind(&found, IncidentType::FrequencySpike);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].basis, Basis::Static);
    }

    #[test]
    fn peer_count_volume_threshold_is_honoured() {
        let mut k = Kit::new(peer_finance());
        let t0 = at("2026-03-02T15:00:00Z");
        let found = k.feed((0..150).map(|i| ev(t0 + i * 200, "q", None)));
        let v: Vec<_> = found
            .iter()
            .filter(|f| f.kind == IncidentType::VolumeSpike)
            .collect();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].observed, 101.0);
        assert_eq!(v[0].unit, "calls");
    }
}
