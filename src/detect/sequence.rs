//! suspicious_sequence: blueprint tool patterns matched in event-time order within each
//! pattern's `within` window; one incident per match (matched calls are not reused).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::{human_ms, Finding, Observation};
use crate::blueprint::{Blueprint, SequenceRule};
use crate::response::{Basis, IncidentType};
use crate::state::prefetch;

/// A remembered call: (event time, arrival number, tool hash).
type Call = (i64, u64, u64);

/// Per-agent sequence state: the recent calls in event-time order and, per pattern, the last
/// call consumed by a match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SequenceState {
    calls: VecDeque<Call>,
    arrivals: u64,
    consumed: Vec<(i64, u64)>,
}

impl SequenceState {
    /// Fresh state for a blueprint.
    pub fn new(bp: &Blueprint) -> SequenceState {
        SequenceState {
            calls: VecDeque::with_capacity(bp.sequence_memory + 1),
            arrivals: 0,
            consumed: vec![(i64::MIN, 0); bp.sequences.len()],
        }
    }

    /// Announces the memory an event reads (its latest calls, where the new one goes).
    pub fn prefetch(&self) {
        // The new call is placed by a scan from the newest end.
        let (a, b) = self.calls.as_slices();
        let newest = if b.is_empty() { a } else { b };
        prefetch::lines(&newest[newest.len().saturating_sub(8)..], 4);
        // Expired calls are dropped from the oldest end.
        if let Some(oldest) = self.calls.front() {
            prefetch::value(oldest);
        }
        prefetch::lines(&self.consumed, 2);
    }
}

fn key(c: &Call) -> (i64, u64) {
    (c.0, c.1)
}

/// Start index of a match of `rule` whose last call is `calls[end]`, using only calls after `floor`.
fn match_ending(
    calls: &VecDeque<Call>,
    end: usize,
    rule: &SequenceRule,
    floor: (i64, u64),
) -> Option<usize> {
    let pat = &rule.pattern_hashes;
    let m = pat.len();
    let end_ts = calls[end].0;
    let usable = |i: usize| key(&calls[i]) > floor && end_ts - calls[i].0 <= rule.within_ms;
    if pat[m - 1] != calls[end].2 || !usable(end) {
        return None;
    }
    if rule.contiguous {
        let start = (end + 1).checked_sub(m)?;
        let ok = (0..m).all(|j| {
            let c = &calls[start + j];
            usable(start + j) && (pat[j] == 0 || pat[j] == c.2)
        });
        return ok.then_some(start);
    }
    // Greedy from the end: each step takes the latest call that fits, which gives the shortest span.
    let mut idx = end;
    for j in (0..m - 1).rev() {
        loop {
            idx = idx.checked_sub(1)?;
            if !usable(idx) {
                return None;
            }
            if pat[j] == 0 || pat[j] == calls[idx].2 {
                break;
            }
        }
    }
    Some(idx)
}

/// Checks one event.
pub fn observe(
    bp: &Blueprint,
    st: &mut SequenceState,
    obs: &Observation<'_>,
    out: &mut Vec<Finding>,
) {
    if !obs.in_order || bp.sequences.is_empty() {
        return;
    }
    if st.consumed.len() != bp.sequences.len() {
        st.consumed = vec![(i64::MIN, 0); bp.sequences.len()];
    }
    st.arrivals += 1;
    let call: Call = (obs.ts, st.arrivals, obs.tool);
    // Insert in event-time order (usually at the back).
    let pos = st
        .calls
        .iter()
        .rposition(|c| key(c) <= key(&call))
        .map_or(0, |p| p + 1);
    st.calls.insert(pos, call);
    // Forget calls no pattern can still use.
    let horizon =
        bp.sequences.iter().map(|r| r.within_ms).max().unwrap_or(0) + bp.allowed_lateness_ms;
    let mut pos = pos;
    while st.calls.len() > bp.sequence_memory
        || st
            .calls
            .front()
            .is_some_and(|c| obs.watermark - c.0 > horizon)
    {
        st.calls.pop_front();
        if pos == 0 {
            return;
        }
        pos -= 1;
    }
    for (k, rule) in bp.sequences.iter().enumerate() {
        for end in pos..st.calls.len() {
            if let Some(start) = match_ending(&st.calls, end, rule, st.consumed[k]) {
                let (s, e) = (st.calls[start].0, st.calls[end].0);
                st.consumed[k] = key(&st.calls[end]);
                out.push(Finding {
                    kind: IncidentType::SuspiciousSequence,
                    basis: Basis::Static,
                    severity: rule.severity,
                    observed: (e - s) as f64 / 1000.0,
                    expected: rule.within_ms as f64 / 1000.0,
                    unit: "seconds",
                    window_start: s,
                    window_end: e,
                    description: format!(
                        "Agent {:?} ran the tool sequence [{}] within {} (window {}).",
                        obs.agent_id,
                        rule.pattern.join(" → "),
                        human_ms(e - s),
                        human_ms(rule.within_ms)
                    ),
                    pattern: Some(rule.pattern.clone()),
                    disc: k as u32,
                });
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use crate::response::IncidentType;

    fn seqs(found: &[super::Finding]) -> Vec<Vec<String>> {
        found
            .iter()
            .filter(|f| f.kind == IncidentType::SuspiciousSequence)
            .filter_map(|f| f.pattern.clone())
            .collect()
    }

    #[test]
    fn query_then_email_within_window_matches_once() {
        let mut k = Kit::new(finance()); // [query_customer_db, send_email] within 15m, gaps allowed
        let t0 = at("2026-03-02T15:00:00Z");
        let found = k.feed(vec![
            ev(t0, "query_customer_db", None),
            ev(t0 + 60_000, "read_invoice", None),
            ev(t0 + 120_000, "send_email", None),
            ev(t0 + 180_000, "send_email", None),
        ]);
        assert_eq!(
            seqs(&found),
            vec![vec![
                "query_customer_db".to_string(),
                "send_email".to_string()
            ]]
        );
    }

    #[test]
    fn sequence_window_expiry() {
        let mut k = Kit::new(finance());
        let t0 = at("2026-03-02T15:00:00Z");
        let found = k.feed(vec![
            ev(t0, "query_customer_db", None),
            ev(t0 + 3 * 3_600_000, "send_email", None),
        ]);
        assert!(
            seqs(&found).is_empty(),
            "three hours apart is not a sequence"
        );
    }

    #[test]
    fn wildcard_matches_exactly_one_call_in_contiguous_mode() {
        let mut k = Kit::new(peer_soc()); // peer form: [read_secrets, *, http_request], consecutive
        let t0 = at("2026-03-02T15:00:00Z");
        let found = k.feed(vec![
            ev(t0, "read_secrets", None),
            ev(t0 + 1000, "list_files", None),
            ev(t0 + 2000, "http_request", None),
        ]);
        assert_eq!(seqs(&found).len(), 1);
        let mut k = Kit::new(peer_soc());
        let found = k.feed(vec![
            ev(t0, "read_secrets", None),
            ev(t0 + 2000, "http_request", None),
        ]);
        assert!(
            seqs(&found).is_empty(),
            "the wildcard needs a call in between"
        );
    }

    #[test]
    fn wildcard_with_gaps_allowed() {
        let mut k = Kit::new(soc()); // [read_secrets, *, http_request] within 10m, gaps allowed
        let t0 = at("2026-03-02T15:00:00Z");
        let found = k.feed(vec![
            ev(t0, "read_secrets", None),
            ev(t0 + 1000, "a", None),
            ev(t0 + 2000, "b", None),
            ev(t0 + 3000, "http_request", None),
        ]);
        assert_eq!(seqs(&found).len(), 1);
    }

    #[test]
    fn repeated_calls_give_one_incident_per_match_not_per_event() {
        let mut k = Kit::new(soc()); // shell_execute x3 consecutive within 1m
        let t0 = at("2026-03-02T15:00:00Z");
        let found = k.feed((0..7).map(|i| ev(t0 + i * 1000, "shell_execute", None)));
        assert_eq!(
            seqs(&found).len(),
            2,
            "7 calls hold two disjoint matches of 3"
        );
    }

    #[test]
    fn out_of_order_delivery_is_matched_in_event_time_order() {
        let mut k = Kit::new(finance());
        let t0 = at("2026-03-02T15:00:00Z");
        // The email arrives first but happened after the query.
        let found = k.feed(vec![
            ev(t0 + 10_000, "send_email", None),
            ev(t0, "query_customer_db", None),
        ]);
        assert_eq!(seqs(&found).len(), 1);
        // Reverse order in event time: no match.
        let mut k = Kit::new(finance());
        let found = k.feed(vec![
            ev(t0, "send_email", None),
            ev(t0 + 10_000, "query_customer_db", None),
        ]);
        assert!(seqs(&found).is_empty());
    }

    #[test]
    fn contiguous_pattern_is_broken_by_another_call() {
        let mut k = Kit::new(finance()); // [trigger_payment, trigger_payment] contiguous within 5m
        let t0 = at("2026-03-02T15:00:00Z");
        let found = k.feed(vec![
            ev(t0, "trigger_payment", None),
            ev(t0 + 1000, "read_invoice", None),
            ev(t0 + 2000, "trigger_payment", None),
        ]);
        assert!(seqs(&found).is_empty());
        let found = k.feed(vec![ev(t0 + 3000, "trigger_payment", None)]);
        assert_eq!(seqs(&found).len(), 1);
    }
}
