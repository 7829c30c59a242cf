//! Detectors: pure functions of (agent state, event, blueprint) that emit findings.
//!
//! No I/O, no clock, no randomness: time comes from the event. The set is closed and called in a
//! fixed order by [`observe`].

mod baseline;
mod clock;
mod episode;
mod frequency;
mod off_hours;
mod sequence;
mod volume;
mod window;

pub use baseline::{count_threshold, HourView, Seasonal, SlotStats, HOUR_MS};
pub use clock::{hour_of_week, local_time, LocalClock, LocalTime};
pub use episode::Episode;
pub use frequency::FrequencyState;
pub use off_hours::{outside_allowed, OffHoursState};
pub use sequence::SequenceState;
pub use volume::{ToolStats, VolumeState};
pub use window::Ring;

use serde::{Deserialize, Serialize};

use crate::blueprint::Blueprint;
use crate::response::{Basis, IncidentType, Severity};

/// A stable 64-bit FNV-1a hash of a tool name (never 0, which stands for the `*` wildcard).
pub fn tool_hash(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.max(1)
}

/// What detectors see of the event being processed.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    /// The agent.
    pub agent_id: &'a str,
    /// The event's id.
    pub event_id: &'a str,
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
}

/// A detector's verdict, turned into an incident by the engine.
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
}

/// The event fields detectors use.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// The agent.
    pub agent_id: &'a str,
    /// The event's id.
    pub event_id: &'a str,
    /// The tool called.
    pub tool_name: &'a str,
    /// Event time (ms).
    pub ts: i64,
    /// Data volume (bytes), if reported.
    pub bytes: Option<f64>,
}

/// All detector state of one agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectorState {
    /// Latest event time seen.
    pub watermark: i64,
    /// Local-time cache.
    pub clock: LocalClock,
    /// Frequency windows and episodes.
    pub frequency: FrequencyState,
    /// Data-volume window and per-tool baselines.
    pub volume: VolumeState,
    /// Recent calls for sequence matching.
    pub sequence: SequenceState,
    /// Off-hours episode.
    pub off_hours: OffHoursState,
    /// Hour-of-week baseline of activity.
    pub seasonal: Seasonal,
}

impl DetectorState {
    /// Fresh state sized for a blueprint.
    pub fn new(bp: &Blueprint) -> DetectorState {
        DetectorState {
            watermark: i64::MIN,
            clock: LocalClock::default(),
            frequency: FrequencyState::new(bp),
            volume: VolumeState::new(bp),
            sequence: SequenceState::new(bp),
            off_hours: OffHoursState::default(),
            seasonal: Seasonal::default(),
        }
    }
}

impl DetectorState {
    /// Announces the memory an event reads (see [`crate::state::prefetch`]).
    pub fn prefetch(&self) {
        self.frequency.prefetch();
        self.volume.prefetch();
        self.sequence.prefetch();
    }

    /// Runs every detector on one event, appending findings to `out`; returns what they saw.
    ///
    /// An event older than the agent's latest event time minus the allowed lateness is "late":
    /// it still feeds the stateless off-hours check but not windows, baselines or sequences.
    pub fn observe<'a>(
        &mut self,
        bp: &Blueprint,
        input: &Input<'a>,
        out: &mut Vec<Finding>,
    ) -> Observation<'a> {
        let in_order = self.watermark == i64::MIN
            || input.ts >= self.watermark.saturating_sub(bp.allowed_lateness_ms);
        self.watermark = self.watermark.max(input.ts);
        let obs = Observation {
            agent_id: input.agent_id,
            event_id: input.event_id,
            tool_name: input.tool_name,
            tool: tool_hash(input.tool_name),
            ts: input.ts,
            bytes: input.bytes,
            local: self.clock.local(bp.timezone, input.ts),
            watermark: self.watermark,
            in_order,
        };
        let hour = if in_order {
            self.seasonal.observe(bp, obs.ts, obs.watermark)
        } else {
            HourView::default()
        };
        frequency::observe(bp, &mut self.frequency, &hour, &obs, out);
        volume::observe(bp, &mut self.volume, &obs, out);
        sequence::observe(bp, &mut self.sequence, &obs, out);
        off_hours::observe(bp, &mut self.off_hours, &hour, &obs, out);
        obs
    }
}

/// Formats a duration in ms for descriptions ("1m", "30s").
pub(crate) fn human_ms(ms: i64) -> String {
    humantime::format_duration(std::time::Duration::from_millis(ms.max(0) as u64)).to_string()
}

#[cfg(test)]
pub(crate) mod testkit;
