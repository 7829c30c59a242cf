//! suspicious_sequence: blueprint tool patterns matched in event-time order within each
//! pattern's `within` window (matched calls are not reused), judged against the agent.
//!
//! Each match has a form: how many other calls came between its steps (0, 1, 2, 3 or more). A
//! form is routine for the agent when the share of its matches of the rule that are at least this
//! tight, from its own history blended with its blueprint's peers (50 matches' worth of weight;
//! the peers count only when at least three of them made a match that tight), is at least
//! `sequence_rarity` (no history: share 0, so new until shown routine; the learning period gives
//! the history), or when the agent made matches of that form on `routine_days` days:
//! a `baseline` finding, once per form. A form the agent and its peers (almost) never make — the
//! pattern's steps back to back where they always had other calls between, or a pattern never
//! completed at all — is a new incident, one per match. Matches judged new are not learned from.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::cohort::ShiftTest;
use super::frequency::judge;
use super::habit::{Habit, Report};
use super::peers::{SequenceCounts, FORMS};
use super::{human_ms, Context, Finding, Judgement, Observation};
use crate::blueprint::{Blueprint, SequenceRule};
use crate::prefetch;
use crate::response::{BaselineFacts, Basis, IncidentType, Source};

/// Weight of the peers' share in an agent's estimate, in matches.
const PEER_WEIGHT: f64 = 50.0;
/// Peers that must have made a form before their share of it counts.
const MIN_PEER_AGENTS: u32 = 3;

/// One rule's history for one agent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct RuleMemory {
    /// Matches judged routine or seen while learning, by form.
    counts: SequenceCounts,
    /// Per form: days with routine matches (and what was reported).
    routine: [Habit; FORMS],
    /// Per form: days with matches judged new (a new form that recurs becomes routine).
    new: [Habit; FORMS],
    /// Whether the learning-period finding was reported.
    learning: Habit,
}

/// A remembered call: (event time, the agent's event number, tool hash).
type Call = (i64, u64, u64);

/// Per-agent sequence state: the recent calls in event-time order and, per pattern, the last
/// call consumed by a match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SequenceState {
    calls: VecDeque<Call>,
    /// The latest call matches were looked for ending with: every call up to it is final.
    settled: (i64, u64),
    /// Event time of the oldest call not yet settled that can end a match, if any.
    pending: Option<i64>,
    consumed: Vec<(i64, u64)>,
    rules: Vec<RuleMemory>,
}

impl SequenceState {
    /// An empty state with nothing pending (see [`super::DetectorState::husk`]).
    pub fn husk() -> SequenceState {
        SequenceState {
            calls: VecDeque::new(),
            settled: (i64::MIN, 0),
            pending: None,
            consumed: Vec::new(),
            rules: Vec::new(),
        }
    }

    /// Fresh state for a blueprint.
    pub fn new(bp: &Blueprint) -> SequenceState {
        SequenceState {
            calls: VecDeque::with_capacity(bp.sequence_memory + 1),
            settled: (i64::MIN, 0),
            pending: None,
            consumed: vec![(i64::MIN, 0); bp.sequences.len()],
            rules: vec![RuleMemory::default(); bp.sequences.len()],
        }
    }

    /// Event time of the oldest call that may still end a match once settled.
    pub fn pending(&self) -> Option<i64> {
        self.pending
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

/// How a match of form `form` of rule `k` stands, and the figures behind it.
fn judgement(
    bp: &Blueprint,
    rule: &SequenceRule,
    mem: &RuleMemory,
    peers: &SequenceCounts,
    learning: bool,
    form: usize,
) -> (Judgement, f64) {
    let (k, n) = (mem.counts.at_most(form) as f64, mem.counts.total() as f64);
    // Nothing is routine until shown to be: with no history the share is 0. The peers' share
    // counts only when several of them made such matches (one agent's habit is not its
    // blueprint's).
    let peer_share = if peers.agents[form] >= MIN_PEER_AGENTS {
        peers.at_most(form) as f64 / (peers.total() as f64 + 1.0)
    } else {
        0.0
    };
    let rate = (k + PEER_WEIGHT * peer_share) / (n + PEER_WEIGHT);
    let days = bp.learned.routine_days;
    let habitual = mem.routine[..=form].iter().any(|h| h.is_routine(days))
        || mem.new[..=form].iter().any(|h| h.is_routine(days));
    let routine = rate >= bp.learned.sequence_rarity || habitual;
    (judge(rule.routine, learning, routine), rate)
}

/// Remembers one event's call. Matches ending with it are looked for once it is final: when no
/// call that could come between its steps can still arrive (see [`settle`]).
pub fn observe(
    bp: &Blueprint,
    st: &mut SequenceState,
    ctx: &mut Context<'_>,
    obs: &Observation<'_>,
    out: &mut Vec<Finding>,
) {
    if !obs.in_order || bp.sequences.is_empty() {
        return;
    }
    let call: Call = (obs.ts, obs.seq, obs.tool);
    // A call older than what is already final cannot take part any more.
    if key(&call) > st.settled {
        let pos = st
            .calls
            .iter()
            .rposition(|c| key(c) <= key(&call))
            .map_or(0, |p| p + 1);
        st.calls.insert(pos, call);
        if bp
            .sequences
            .iter()
            .any(|r| r.pattern_hashes.last() == Some(&obs.tool))
        {
            st.pending = Some(st.pending.map_or(obs.ts, |p| p.min(obs.ts)));
        }
    }
    settle(
        bp,
        st,
        ctx,
        obs,
        obs.watermark.saturating_sub(bp.allowed_lateness_ms),
        out,
    );
}

/// Looks for matches ending with each call up to event time `until` not looked at yet, in
/// event-time order: every call that can come between their steps has arrived by then. The
/// engine calls it with its own watermark too, so an agent that falls quiet after a sequence is
/// still judged within the allowed lateness. `obs`: the event that triggers it (for the agent's
/// id, history and local calendar).
pub fn settle(
    bp: &Blueprint,
    st: &mut SequenceState,
    ctx: &mut Context<'_>,
    obs: &Observation<'_>,
    until: i64,
    out: &mut Vec<Finding>,
) {
    if bp.sequences.is_empty() {
        return;
    }
    if st.consumed.len() != bp.sequences.len() {
        st.consumed = vec![(i64::MIN, 0); bp.sequences.len()];
    }
    if st.rules.len() != bp.sequences.len() {
        st.rules = vec![RuleMemory::default(); bp.sequences.len()];
    }
    ctx.peers.fit(bp);
    if st.pending.is_some_and(|p| p <= until) {
        let first = st.calls.partition_point(|c| key(c) <= st.settled);
        let last = st.calls.partition_point(|c| c.0 <= until);
        for end in first..last {
            st.settled = st.settled.max(key(&st.calls[end]));
            for (k, rule) in bp.sequences.iter().enumerate() {
                if let Some(f) = judge_match(bp, st, ctx, obs, k, rule, end) {
                    out.push(f);
                }
            }
        }
        let settled = st.settled;
        st.pending = st.calls.iter().find_map(|c| {
            (key(c) > settled
                && bp
                    .sequences
                    .iter()
                    .any(|r| r.pattern_hashes.last() == Some(&c.2)))
            .then_some(c.0)
        });
    } else if st.pending.is_none() {
        // Nothing can end a match: every call up to `until` is final (found from the newest
        // end: only the calls of the allowed lateness lie after it).
        if let Some(c) = st.calls.iter().rev().find(|c| c.0 <= until) {
            st.settled = st.settled.max(key(c));
        }
    }
    // Forget calls no pattern can still use: final, and older than the longest window before
    // the earliest call still to come.
    let horizon =
        bp.sequences.iter().map(|r| r.within_ms).max().unwrap_or(0) + bp.allowed_lateness_ms;
    while st.calls.len() > bp.sequence_memory
        || st
            .calls
            .front()
            .is_some_and(|c| key(c) <= st.settled && obs.watermark - c.0 > horizon)
    {
        st.calls.pop_front();
    }
}

/// The finding, if any, about a match of rule `k` ending with `calls[end]`.
fn judge_match(
    bp: &Blueprint,
    st: &mut SequenceState,
    ctx: &mut Context<'_>,
    obs: &Observation<'_>,
    k: usize,
    rule: &SequenceRule,
    end: usize,
) -> Option<Finding> {
    let start = match_ending(&st.calls, end, rule, st.consumed[k])?;
    let (s, e) = (st.calls[start].0, st.calls[end].0);
    let end_key = key(&st.calls[end]);
    st.consumed[k] = end_key;
    let between = (end - start + 1).saturating_sub(rule.pattern.len());
    let form = between.min(FORMS - 1);
    let day = crate::detect::local_time(bp.timezone, e).day;
    let learning = e < ctx.learning_until;
    let mem = &mut st.rules[k];
    let peers = &mut ctx.peers.sequences[k];
    let (j, rate) = judgement(bp, rule, mem, peers, learning, form);
    let facts = BaselineFacts {
        source: Source::Agent,
        history_days: obs.history_days,
        samples: mem.counts.total(),
        seen_before: mem.counts.at_most(form),
    };
    if remember(rule, mem, peers, j, form, day) != Report::Say {
        return None;
    }
    let mut f = Finding::new(
        IncidentType::SuspiciousSequence,
        Basis::Static,
        rule.severity,
    );
    f.judgement = j;
    f.weighs = j == Judgement::New;
    f.observed = (e - s) as f64 / 1000.0;
    f.expected = rule.within_ms as f64 / 1000.0;
    f.unit = "seconds";
    f.window_start = s;
    f.window_end = e;
    f.pattern = Some(rule.pattern.clone());
    f.disc = k as u32;
    f.facts = Some(facts);
    f.trigger = Some(end_key);
    if j == Judgement::New {
        f.shift = Some(ShiftTest::Sequence { rule: k as u32 });
    }
    let history = format!(
        "{} of this agent's {} earlier matches were this tight, {} of its peers' {} \
         (estimated share {rate:.1e})",
        facts.seen_before,
        facts.samples,
        peers.at_most(form),
        peers.total()
    );
    f.description = describe(obs, rule, e - s, between, j, history);
    Some(f)
}

/// Records a match of form `form` judged `j` on local day `day` in the agent's memory of its
/// rule (and, unless new, its peers'); whether to report it.
fn remember(
    rule: &SequenceRule,
    mem: &mut RuleMemory,
    peers: &mut SequenceCounts,
    j: Judgement,
    form: usize,
    day: i32,
) -> Report {
    match j {
        Judgement::New => {
            mem.new[form].see(day);
            Report::Say
        }
        j => {
            // The agent counts among the peers making each form at least this tight the first
            // time it makes one.
            for f in form..FORMS {
                if mem.counts.at_most(f) == 0 {
                    peers.agents[f] += 1;
                }
            }
            mem.counts.matches[form] += 1;
            peers.matches[form] += 1;
            mem.routine[form].see(day);
            if j == Judgement::Learning {
                mem.learning.report_learning(rule.routine)
            } else {
                mem.routine[form].report_routine(rule.routine, 1.0)
            }
        }
    }
}

/// One sentence about a match of `rule` judged `j` spanning `span_ms`, with `between` other
/// calls between its steps; `history`: what the agent and its peers made before.
fn describe(
    obs: &Observation<'_>,
    rule: &SequenceRule,
    span_ms: i64,
    between: usize,
    j: Judgement,
    history: String,
) -> String {
    let form_words = match between {
        0 => "with no other call between its steps".to_string(),
        1 => "with 1 other call between its steps".to_string(),
        n => format!("with {n} other calls between its steps"),
    };
    format!(
        "Agent {:?} ran the tool sequence [{}] within {} (window {}) {form_words}; {}.",
        obs.agent_id,
        rule.pattern.join(" → "),
        human_ms(span_ms),
        human_ms(rule.within_ms),
        match j {
            Judgement::New => history,
            Judgement::Routine => format!("routine for this agent: {history}; reported once"),
            Judgement::Learning =>
                "seen during the learning period; its baseline will tell whether this is routine"
                    .to_string(),
        }
    )
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::FORMS;
    use crate::response::IncidentType;

    fn seqs(found: &[super::Finding]) -> Vec<Vec<String>> {
        incidents(found, IncidentType::SuspiciousSequence)
            .iter()
            .filter_map(|f| f.pattern.clone())
            .collect()
    }

    /// One working day of a finance agent that always reads something between querying the
    /// customer database and sending an e-mail (the loose form of the rule, every day).
    fn workday(day_start: i64) -> Vec<Ev> {
        let mut evs = Vec::new();
        for i in 0..8 {
            let t = day_start + i * 3_600_000;
            evs.push(ev(t, "query_customer_db", None));
            evs.push(ev(t + 60_000, "read_invoice", None));
            evs.push(ev(t + 120_000, "send_email", None));
            evs.push(ev(t + 600_000, "get_balance", None));
        }
        evs
    }

    #[test]
    fn a_routine_sequence_is_reported_once_and_a_new_form_is_an_incident() {
        let mut k = Kit::new(finance());
        let mon = at("2026-03-02T14:00:00Z"); // 09:00 New York
        let mut evs = Vec::new();
        for d in weekdays(21) {
            evs.extend(workday(mon + d * 86_400_000));
        }
        let found = k.feed(evs);
        assert!(
            seqs(&found).is_empty(),
            "routine matches are not incidents: {:?}",
            incidents(&found, IncidentType::SuspiciousSequence)
        );
        let b = baselines(&found, IncidentType::SuspiciousSequence);
        assert_eq!(
            b.len(),
            2,
            "once while learning, once when judged routine: {b:?}"
        );
        // Day 22: the query straight followed by an e-mail, a form it never made.
        let t = mon + 22 * 86_400_000;
        let found = k.feed(vec![
            ev(t, "query_customer_db", None),
            ev(t + 30_000, "send_email", None),
        ]);
        let s = incidents(&found, IncidentType::SuspiciousSequence);
        assert_eq!(s.len(), 1, "{found:?}");
        assert!(
            s[0].description.contains("no other call between"),
            "{}",
            s[0].description
        );
        assert!(s[0].weighs);
    }

    #[test]
    fn a_form_the_peers_make_routinely_is_routine_for_a_new_agent() {
        let mut k = Kit::after_learning(finance());
        k.peers.fit(&k.bp);
        // Peers: two payments in a row, a hundred times, by four of them.
        k.peers.sequences[1].matches[0] = 100;
        k.peers.sequences[1].agents = [4; FORMS];
        let t0 = at("2026-03-02T15:00:00Z");
        let found = k.feed(vec![
            ev(t0, "trigger_payment", None),
            ev(t0 + 1000, "trigger_payment", None),
        ]);
        assert!(seqs(&found).is_empty(), "{found:?}");
        assert_eq!(baselines(&found, IncidentType::SuspiciousSequence).len(), 1);
    }

    #[test]
    fn one_peers_habit_is_not_its_blueprints() {
        let mut k = Kit::after_learning(finance());
        k.peers.fit(&k.bp);
        // One peer made two payments in a row a hundred times; no other peer ever did.
        k.peers.sequences[1].matches[0] = 100;
        k.peers.sequences[1].agents = [1; FORMS];
        let t0 = at("2026-03-02T15:00:00Z");
        let found = k.feed(vec![
            ev(t0, "trigger_payment", None),
            ev(t0 + 1000, "trigger_payment", None),
        ]);
        assert_eq!(seqs(&found).len(), 1, "{found:?}");
    }

    #[test]
    fn query_then_email_within_window_matches_once() {
        let mut k = Kit::after_learning(finance()); // [query_customer_db, send_email] within 15m, gaps allowed
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
        let mut k = Kit::after_learning(finance());
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
        let mut k = Kit::after_learning(peer_soc()); // peer form: [read_secrets, *, http_request], consecutive
        let t0 = at("2026-03-02T15:00:00Z");
        let found = k.feed(vec![
            ev(t0, "read_secrets", None),
            ev(t0 + 1000, "list_files", None),
            ev(t0 + 2000, "http_request", None),
        ]);
        assert_eq!(seqs(&found).len(), 1);
        let mut k = Kit::after_learning(peer_soc());
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
        let mut k = Kit::after_learning(soc()); // [read_secrets, *, http_request] within 10m, gaps allowed
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
        let mut k = Kit::after_learning(soc()); // shell_execute x3 consecutive within 1m
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
        let mut k = Kit::after_learning(finance());
        let t0 = at("2026-03-02T15:00:00Z");
        // The email arrives first but happened after the query.
        let found = k.feed(vec![
            ev(t0 + 10_000, "send_email", None),
            ev(t0, "query_customer_db", None),
        ]);
        assert_eq!(seqs(&found).len(), 1);
        // Reverse order in event time: no match.
        let mut k = Kit::after_learning(finance());
        let found = k.feed(vec![
            ev(t0, "send_email", None),
            ev(t0 + 10_000, "query_customer_db", None),
        ]);
        assert!(seqs(&found).is_empty());
    }

    #[test]
    fn contiguous_pattern_is_broken_by_another_call() {
        let mut k = Kit::after_learning(finance()); // [trigger_payment, trigger_payment] contiguous within 5m
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
