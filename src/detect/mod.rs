//! Detectors: pure functions of (agent state, event, blueprint) that emit findings.
//!
//! Layer: uses `response`, `blueprint`, `event`, `prefetch`.
//!
//! No I/O, no clock, no randomness: time comes from the event. The set is closed and called in a
//! fixed order by `observe`.

mod clock;
mod cohort;
mod episode;
mod frequency;
mod habit;
mod off_hours;
mod peers;
mod rhythm;
mod scales;
mod sequence;
mod stats;
mod volume;
mod window;

pub use clock::{hour_of_week, local_time, LocalClock, LocalTime};
pub use cohort::{
    CohortShift, DeliveryLag, Member, Presence, RateEvaluation, ShiftKind, ShiftTest, SHIFT_KINDS,
};
pub use episode::{Closed, Episode, Opening, Step};
pub use frequency::FrequencyState;
pub use habit::Habit;
pub use off_hours::{outside_allowed, OffHoursState};
pub use peers::{Peers, SequenceCounts, FORMS};
pub use rhythm::{DayStats, HourStats, Rhythm};
pub use scales::{Scales, BUCKET_MS};
pub use sequence::SequenceState;
pub use stats::{count_tail, count_threshold, HOUR_MS};
pub use volume::{ToolStats, VolumeState};
pub use window::Ring;

use serde::{Deserialize, Serialize};

use crate::blueprint::Blueprint;
use crate::blueprint::Severity;
use crate::event::tool_hash;
use crate::response::{BaselineFacts, Basis, IncidentType};

const DAY_MS: f64 = 86_400_000.0;

/// Days of history in a span of event time, to a thousandth of a day (about a minute and a half).
fn days(ms: i64) -> f64 {
    (ms.max(0) as f64 / DAY_MS * 1000.0).round() / 1000.0
}

/// What detectors see of the event being processed.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    /// The agent.
    pub agent_id: &'a str,
    /// The event's id.
    pub event_id: &'a str,
    /// The agent's event number of this event.
    pub seq: u64,
    /// The tool called.
    pub tool_name: &'a str,
    /// [`tool_hash`] of the tool.
    pub tool: u64,
    /// Event time (ms).
    pub ts: i64,
    /// Data volume (bytes), if reported.
    pub bytes: Option<f64>,
    /// Local time in the blueprint's zone.
    pub local: LocalTime,
    /// Latest event time seen for the agent, this event included.
    pub watermark: i64,
    /// `false` when the event is later than the allowed lateness: it then only feeds stateless checks.
    pub in_order: bool,
    /// Days of the agent's history (from its first event).
    pub history_days: f64,
    /// Whether the agent's own baseline is past its warm-up: learned findings from it add kill weight.
    pub warm: bool,
}

impl Observation<'_> {
    /// What identifies an incident this event opens.
    pub fn opening(&self, basis: Basis) -> Opening {
        Opening {
            seq: self.seq,
            event_id: self.event_id.to_string(),
            ts: self.ts,
            basis,
        }
    }
}

/// How a finding stands against the agent's baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Judgement {
    /// New for the agent: an incident.
    New,
    /// Routine for the agent: a `baseline` finding.
    Routine,
    /// Seen during the learning period, before a baseline could judge it: a `baseline` finding.
    Learning,
}

/// A detector's verdict, turned into an incident by the engine (stored as a
/// `StoredFinding` while it waits for its cohort).
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// Kind.
    pub kind: IncidentType,
    /// Static or learned.
    pub basis: Basis,
    /// Severity.
    pub severity: Severity,
    /// The figure observed.
    pub observed: f64,
    /// The threshold or baseline.
    pub expected: f64,
    /// Unit of both figures.
    pub unit: &'static str,
    /// Span of event time covered.
    pub window_start: i64,
    /// End of that span.
    pub window_end: i64,
    /// One sentence for people.
    pub description: String,
    /// The matched pattern, for sequences.
    pub pattern: Option<Vec<String>>,
    /// Distinguishes findings of one kind on one event (pattern index).
    pub disc: u32,
    /// New, routine, or seen while learning.
    pub judgement: Judgement,
    /// The baseline behind the judgement.
    pub facts: Option<BaselineFacts>,
    /// Whether it adds to the kill score: new findings, and of learned ones only those judged
    /// against the agent's own warm baseline.
    pub weighs: bool,
    /// On the record that closes an episode: the episode.
    pub closing: Option<Closed>,
    /// The call that completed it, when that is not the event being processed (a sequence
    /// judged once final): its event time and the agent's event number.
    pub trigger: Option<(i64, u64)>,
    /// How a shift of the agent's cohort could explain it (see [`cohort`](self::CohortShift)):
    /// `None` for findings no cohort explains (static ceilings, closings, baseline facts).
    pub shift: Option<ShiftTest>,
}

/// The units findings use, as stored with a finding that waits for its cohort.
const UNITS: [&str; 10] = [
    "",
    "calls",
    "turns",
    "bytes",
    "seconds",
    "events",
    "score",
    "local_hour",
    "kills",
    "agents",
];

/// A [`Finding`] as stored (its unit by name).
#[derive(Serialize, Deserialize)]
struct StoredFinding {
    kind: IncidentType,
    basis: Basis,
    severity: Severity,
    observed: f64,
    expected: f64,
    unit: String,
    window_start: i64,
    window_end: i64,
    description: String,
    pattern: Option<Vec<String>>,
    disc: u32,
    judgement: Judgement,
    facts: Option<BaselineFacts>,
    weighs: bool,
    closing: Option<Closed>,
    trigger: Option<(i64, u64)>,
    shift: Option<ShiftTest>,
}

impl From<Finding> for StoredFinding {
    fn from(f: Finding) -> Self {
        StoredFinding {
            kind: f.kind,
            basis: f.basis,
            severity: f.severity,
            observed: f.observed,
            expected: f.expected,
            unit: f.unit.to_string(),
            window_start: f.window_start,
            window_end: f.window_end,
            description: f.description,
            pattern: f.pattern,
            disc: f.disc,
            judgement: f.judgement,
            facts: f.facts,
            weighs: f.weighs,
            closing: f.closing,
            trigger: f.trigger,
            shift: f.shift,
        }
    }
}

impl Serialize for Finding {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        StoredFinding::from(self.clone()).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Finding {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Finding::try_from(StoredFinding::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A stored finding names a unit this version does not know.
#[derive(Debug, thiserror::Error)]
#[error("unknown unit {0:?}")]
pub struct UnknownUnit(pub String);

impl TryFrom<StoredFinding> for Finding {
    type Error = UnknownUnit;

    fn try_from(f: StoredFinding) -> Result<Self, UnknownUnit> {
        let Some(unit) = UNITS.iter().find(|u| **u == f.unit).copied() else {
            return Err(UnknownUnit(f.unit));
        };
        Ok(Finding {
            kind: f.kind,
            basis: f.basis,
            severity: f.severity,
            observed: f.observed,
            expected: f.expected,
            unit,
            window_start: f.window_start,
            window_end: f.window_end,
            description: f.description,
            pattern: f.pattern,
            disc: f.disc,
            judgement: f.judgement,
            facts: f.facts,
            weighs: f.weighs,
            closing: f.closing,
            trigger: f.trigger,
            shift: f.shift,
        })
    }
}

impl Finding {
    /// A new finding of `kind` with empty figures, to be filled in.
    pub fn new(kind: IncidentType, basis: Basis, severity: Severity) -> Finding {
        Finding {
            kind,
            basis,
            severity,
            observed: 0.0,
            expected: 0.0,
            unit: "",
            window_start: 0,
            window_end: 0,
            description: String::new(),
            pattern: None,
            disc: 0,
            judgement: Judgement::New,
            facts: None,
            weighs: basis == Basis::Static,
            closing: None,
            trigger: None,
            shift: None,
        }
    }

    /// This finding as a baseline fact: seen during learning, or routine (`routine` says why).
    pub fn into_baseline(mut self, j: Judgement, routine: &str) -> Finding {
        self.judgement = j;
        self.weighs = false;
        self.description = match j {
            Judgement::Learning => format!(
                "{} Seen during the learning period; its baseline will tell whether this is routine.",
                self.description
            ),
            _ => format!("{} {routine}", self.description),
        };
        self
    }

    /// The record that closes an episode of `kind`.
    pub fn closing(
        kind: IncidentType,
        severity: Severity,
        c: Closed,
        unit: &'static str,
        disc: u32,
    ) -> Finding {
        let mut f = Finding::new(kind, c.opening.basis, severity);
        f.weighs = false;
        f.observed = c.peak;
        f.unit = unit;
        f.window_start = c.start;
        f.window_end = c.end;
        f.disc = disc;
        f.description = format!(
            "Episode ended: {} violating events over {} (peak {}).",
            c.count,
            human_ms(c.end - c.start),
            c.peak
        );
        f.closing = Some(c);
        f
    }
}

/// The event fields detectors use.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// The agent.
    pub agent_id: &'a str,
    /// The event's id.
    pub event_id: &'a str,
    /// The agent's event number of this event.
    pub seq: u64,
    /// The tool called.
    pub tool_name: &'a str,
    /// Event time (ms).
    pub ts: i64,
    /// Data volume (bytes), if reported.
    pub bytes: Option<f64>,
}

/// What detectors know beyond the agent's own detector state.
pub struct Context<'a> {
    /// The first-deployment learning period is in force: nothing is judged new yet.
    pub learning: bool,
    /// End of the learning period (event time), for judging calls other than the current one.
    pub learning_until: i64,
    /// The agent's weekly rhythm.
    pub rhythm: &'a Rhythm,
    /// The agents of the same blueprint.
    pub peers: &'a mut Peers,
    /// An off-hours incident of the agent is open: other calls at this time are part of it.
    pub off_hours_open: bool,
    /// How clustered the agent's calls are (1: one at a time; about the session size when they
    /// come in sessions), learned by the frequency detector; read by the off-hours detector when
    /// a local hour starts (set only then).
    pub dispersion: f64,
    /// The agent's cohort's shift of call rates, if one is going on: expected counts are
    /// multiplied by its factors.
    pub cohort: &'a CohortShift,
}

/// All detector state of one agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectorState {
    /// Latest event time seen.
    pub watermark: i64,
    /// Event time of the first event.
    pub first_ts: i64,
    /// Local-time cache.
    pub clock: LocalClock,
    /// Weekly rhythm.
    pub rhythm: Rhythm,
    /// Frequency windows and episodes.
    pub frequency: FrequencyState,
    /// Data-volume window and per-tool baselines.
    pub volume: VolumeState,
    /// Recent calls for sequence matching.
    pub sequence: SequenceState,
    /// Off-hours episode.
    pub off_hours: OffHoursState,
}

impl DetectorState {
    /// Fresh state sized for a blueprint.
    pub fn new(bp: &Blueprint) -> DetectorState {
        DetectorState {
            watermark: i64::MIN,
            first_ts: i64::MAX,
            clock: LocalClock::default(),
            rhythm: Rhythm::default(),
            frequency: FrequencyState::new(bp),
            volume: VolumeState::new(bp),
            sequence: SequenceState::new(bp),
            off_hours: OffHoursState::default(),
        }
    }
}

impl DetectorState {
    /// What the agent's cohort reads of it while its state lives only in the store (its rhythm
    /// and the counts of its frequency windows), the rest empty: a stand-in never folded into.
    pub fn husk(&self) -> DetectorState {
        DetectorState {
            watermark: self.watermark,
            first_ts: self.first_ts,
            clock: self.clock.clone(),
            rhythm: self.rhythm.clone(),
            frequency: self.frequency.husk(),
            volume: self.volume.husk(),
            sequence: SequenceState::husk(),
            off_hours: OffHoursState::default(),
        }
    }

    /// Announces the memory an event reads (see [`crate::prefetch`]).
    pub fn prefetch(&self) {
        self.frequency.prefetch();
        self.volume.prefetch();
        self.sequence.prefetch();
    }

    /// Runs every detector on one event, appending findings to `out`; returns what they saw.
    ///
    /// An event older than the agent's latest event time minus the allowed lateness is "late":
    /// it still feeds the stateless off-hours check but not windows, baselines or sequences.
    /// `learning`: the fleet's first-deployment learning period is in force.
    pub fn observe<'a>(
        &mut self,
        bp: &Blueprint,
        peers: &mut Peers,
        cohort: &CohortShift,
        learning_until: i64,
        input: &Input<'a>,
        out: &mut Vec<Finding>,
    ) -> Observation<'a> {
        let learning = input.ts < learning_until;
        let in_order = self.watermark == i64::MIN
            || input.ts >= self.watermark.saturating_sub(bp.allowed_lateness_ms);
        self.watermark = self.watermark.max(input.ts);
        self.first_ts = self.first_ts.min(input.ts);
        let history_ms = (self.watermark - self.first_ts).max(0);
        let local = self.clock.local(bp.timezone, input.ts);
        if in_order {
            let before = self.rhythm.active_days();
            self.rhythm.observe(local, input.ts);
            if self.rhythm.active_days() > before {
                peers.day(self.rhythm.last_day_rate());
            }
        }
        let obs = Observation {
            agent_id: input.agent_id,
            event_id: input.event_id,
            seq: input.seq,
            tool_name: input.tool_name,
            tool: tool_hash(input.tool_name),
            ts: input.ts,
            bytes: input.bytes,
            local,
            watermark: self.watermark,
            in_order,
            history_days: days(history_ms),
            warm: history_ms >= bp.learned.warmup_ms
                && self.rhythm.active_days() >= bp.learned.min_active_days,
        };
        // Only a new local hour's off-hours limits read the dispersion (it is not on the
        // frequency state's lines an ordinary event touches).
        let dispersion = if self.off_hours.limits_stale(local) {
            self.frequency.dispersion()
        } else {
            1.0
        };
        let mut ctx = Context {
            learning,
            learning_until,
            rhythm: &self.rhythm,
            peers,
            off_hours_open: false,
            dispersion,
            cohort,
        };
        off_hours::observe(bp, &mut self.off_hours, &mut ctx, &obs, out);
        ctx.off_hours_open = self.off_hours.is_open();
        frequency::observe(bp, &mut self.frequency, &mut ctx, &obs, out);
        volume::observe(bp, &mut self.volume, &mut ctx, &obs, out);
        sequence::observe(bp, &mut self.sequence, &mut ctx, &obs, out);
        obs
    }

    /// Forgets the episode of `kind` (and `disc`) opened by the event at `ts`, whose opening was
    /// explained by the agent's cohort: it raised no incident, so it closes with no record, and
    /// the agent's next violation opens an episode of its own. An episode opened since by
    /// another event is left alone.
    pub fn forget_episode(&mut self, kind: IncidentType, disc: u32, ts: i64) {
        match (kind, disc) {
            (IncidentType::FrequencySpike, _) => self.frequency.forget_episode(ts),
            (IncidentType::VolumeSpike, 0) => self.volume.forget_episode(ts),
            (IncidentType::OffHours, _) => self.off_hours.forget_episode(ts),
            _ => {}
        }
    }

    /// Event time of the oldest call that may still complete a sequence once final.
    pub fn pending(&self) -> Option<i64> {
        self.sequence.pending()
    }

    /// Judges the sequences ending with the agent's calls up to event time `until` (the engine's
    /// watermark less the allowed lateness), for an agent that has fallen quiet. `agent_id`: the
    /// agent.
    pub fn settle(
        &mut self,
        bp: &Blueprint,
        peers: &mut Peers,
        learning_until: i64,
        agent_id: &str,
        until: i64,
        out: &mut Vec<Finding>,
    ) {
        let ts = self.watermark;
        let obs = Observation {
            agent_id,
            event_id: "",
            seq: 0,
            tool_name: "",
            tool: 0,
            ts,
            bytes: None,
            local: self.clock.local(bp.timezone, ts),
            watermark: self.watermark,
            in_order: true,
            history_days: days(self.watermark - self.first_ts),
            warm: false,
        };
        let mut ctx = Context {
            learning: ts < learning_until,
            learning_until,
            rhythm: &self.rhythm,
            peers,
            off_hours_open: false,
            dispersion: self.frequency.dispersion(),
            cohort: &CohortShift::NONE,
        };
        sequence::settle(bp, &mut self.sequence, &mut ctx, &obs, until, out);
    }
}

/// Formats a duration in ms for descriptions ("1m", "30s").
pub(crate) fn human_ms(ms: i64) -> String {
    humantime::format_duration(std::time::Duration::from_millis(ms.max(0) as u64)).to_string()
}

#[cfg(test)]
pub(crate) mod testkit;

#[cfg(test)]
mod tests {
    use super::testkit::*;
    use crate::response::IncidentType;

    /// An ordinary finance working day: 20 calls an hour of a few tools, 09:00-17:00 London.
    fn workday(t: i64) -> Vec<Ev> {
        let tools = [
            ("get_balance", 500.0),
            ("query_customer_db", 20_000.0),
            ("read_invoice", 30_000.0),
            ("send_email", 6_000.0),
        ];
        (0..160)
            .map(|i| {
                let (tool, b) = tools[(i * 7 % 4) as usize];
                ev(
                    t + i * 180_000,
                    tool,
                    Some(b * (1.0 + (i % 5) as f64 * 0.2)),
                )
            })
            .collect()
    }

    #[test]
    fn an_agent_back_after_a_two_week_pause_raises_nothing() {
        let mut k = Kit::new(finance_in("Europe/London"));
        let mon = at("2026-03-02T09:00:00Z");
        let mut evs = Vec::new();
        // Three weeks of work, two weeks away, a week back.
        for d in weekdays(21).chain(weekdays(7).map(|d| d + 35)) {
            evs.extend(workday(mon + d * 86_400_000));
        }
        let found = k.feed(evs);
        for kind in IncidentType::DETECTED {
            assert!(
                incidents(&found, *kind).is_empty(),
                "{kind:?}: {:?}",
                incidents(&found, *kind)
            );
        }
    }
}
