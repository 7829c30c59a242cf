//! The effective blueprint: every field filled, in the units the engine uses (milliseconds).

use chrono_tz::Tz;
use globset::GlobSet;
use serde_json::{json, Value};

use super::Severity;

/// What the guardian does about anomalies (the peer's `mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Record incidents only; kills become "would kill".
    Monitor,
    /// Record incidents and kill agents over the threshold.
    Block,
    /// As `block` (the peer's corrective mode; the guardian itself only alerts and kills).
    Correct,
}

impl Mode {
    /// The JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Monitor => "monitor",
            Mode::Block => "block",
            Mode::Correct => "correct",
        }
    }
}

/// Allowed local hours `[start, end)`; `start > end` spans midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllowedHours {
    /// First allowed hour, 0–23.
    pub start: u8,
    /// First hour no longer allowed, 0–24.
    pub end: u8,
}

impl AllowedHours {
    /// Whether a local hour is allowed.
    pub fn contains(&self, hour: u8) -> bool {
        if self.start <= self.end {
            hour >= self.start && hour < self.end
        } else {
            hour >= self.start || hour < self.end
        }
    }
}

/// Working days as a bit set, bit 0 = Monday … bit 6 = Sunday.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Weekdays(pub u8);

impl Weekdays {
    /// Every day of the week.
    pub const ALL: Weekdays = Weekdays(0x7f);
    /// Day names in bit order.
    pub const NAMES: [&'static str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

    /// Whether the day (0 = Monday) is a working day.
    pub fn contains(&self, day_from_monday: u8) -> bool {
        self.0 & (1 << day_from_monday) != 0
    }

    /// The day names in the set.
    pub fn names(&self) -> Vec<&'static str> {
        (0..7)
            .filter(|d| self.contains(*d))
            .map(|d| Self::NAMES[d as usize])
            .collect()
    }
}

/// One suspicious tool sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct SequenceRule {
    /// Tool names in order; `*` matches any one call.
    pub pattern: Vec<String>,
    /// Precomputed hashes of the pattern (0 for `*`).
    pub pattern_hashes: Vec<u64>,
    /// The whole match must fit in this span of event time (ms).
    pub within_ms: i64,
    /// `true`: consecutive calls only (the peer's meaning); `false`: other calls may come between.
    pub contiguous: bool,
    /// Severity of a match.
    pub severity: Severity,
    /// What to do with matches that are routine for the agent (default: report once).
    pub routine: RoutineMode,
}

/// What the blueprint wants done with matches that are routine for the agent (`routine` of a
/// rule: `silence`, `report` or `alert`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RoutineMode {
    /// Say nothing about routine matches.
    Silence,
    /// Report the routine once as a `baseline` finding, and again when it changes (default).
    #[default]
    Report,
    /// Every match is an incident, routine or not, learning period or not.
    Alert,
}

impl RoutineMode {
    /// The blueprint spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RoutineMode::Silence => "silence",
            RoutineMode::Report => "report",
            RoutineMode::Alert => "alert",
        }
    }

    /// Parses the blueprint spelling.
    pub fn parse(s: &str) -> Option<RoutineMode> {
        match s {
            "silence" => Some(RoutineMode::Silence),
            "report" => Some(RoutineMode::Report),
            "alert" => Some(RoutineMode::Alert),
            _ => None,
        }
    }
}

/// What to do with static matches that are routine for the agent, per detector.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoutineRules {
    /// Frequency threshold (and the peer's count-based volume threshold).
    pub frequency: RoutineMode,
    /// Data-volume threshold.
    pub volume: RoutineMode,
    /// Allowed hours and working days.
    pub off_hours: RoutineMode,
}

/// Static data-volume thresholds.
#[derive(Debug, Clone, PartialEq)]
pub struct DataVolumeRules {
    /// Bytes allowed within the window; `None` disables the static check.
    pub max_bytes: Option<f64>,
    /// Sliding window (ms), default 60 000.
    pub window_ms: i64,
}

/// Learned-baseline settings.
#[derive(Debug, Clone, PartialEq)]
pub struct LearnedRules {
    /// Whether learned detection runs (default true).
    pub enabled: bool,
    /// Tail probability under the agent's own baseline below which a figure is anomalous (default 1e-6).
    pub sensitivity: f64,
    /// First-deployment learning period (ms), from the first event the guard folds (default 7
    /// days): findings are baseline facts, nothing is new yet, nothing is killed.
    pub learning_period_ms: i64,
    /// History an agent needs before its learned findings add kill weight (default 7 days).
    pub warmup_ms: i64,
    /// Active days of its own an agent needs before its rhythm is used; before that, its peers'
    /// (default 3; the former `min_slot_observations`).
    pub min_active_days: u32,
    /// Least ratio of calls to the expected count in 5- and 15-minute windows (default 5).
    pub burst_ratio: f64,
    /// Least ratio in 1- and 4-hour windows (default 4).
    pub slow_burn_ratio: f64,
    /// Fewest calls in a window that can be a learned frequency spike (default 6; the former
    /// `min_hourly_count`).
    pub min_window_count: u32,
    /// Calls of one tool before its volume is judged (default 50).
    pub volume_warmup_calls: u32,
    /// Bytes of one call below which it adds nothing to a learned volume run (default 0).
    pub volume_min_bytes: f64,
    /// Share of weeks (or active days) at or below which a day of the week (or an hour of the
    /// day) the agent does not work in is rare (default 0.1; the former `rare_hour_share`).
    pub rare_share: f64,
    /// Distinct days on which a static match makes it routine for the agent (default 3).
    pub routine_days: u32,
    /// Share of an agent's (and its peers') matches of a sequence at least as tight, below which
    /// a form of the sequence is new for the agent (default 1e-3).
    pub sequence_rarity: f64,
    /// Derived from `sensitivity`: ln(1 / sensitivity), the evidence (nats) that makes an hour or
    /// a day one the agent does not work in (not in JSON).
    pub rare_evidence: f64,
}

/// Kill policy.
#[derive(Debug, Clone)]
pub struct KillRules {
    /// Violation score at which the agent is killed; 0 disables (the peer's `auto_kill_threshold`).
    pub threshold: f64,
    /// Half-life of the violation score (ms), default 6 h.
    pub half_life_ms: i64,
    /// Minimum event time between two kill decisions for one agent (ms), default 1 h.
    pub cooldown_ms: i64,
    /// Agent id globs never killed.
    pub allowlist: Vec<String>,
    /// Compiled allowlist.
    pub allowlist_set: GlobSet,
    /// Decide but do not kill ("would kill").
    pub dry_run: bool,
    /// Score added per incident by severity: low, medium, high, critical.
    pub weights: [f64; 4],
    /// Automatic kills per hour of event time in the fleet beyond which further kills wait for
    /// an operator (`would_kill`), default 3; 0: no limit.
    pub budget_per_hour: u32,
    /// Share of the blueprint's agents that may be killed at once, default 0.1; 1: no limit.
    pub budget_share: f64,
    /// Automatic kills within one cohort in an hour of event time, default 2; 0: no limit. A
    /// run of kills in one cohort is itself evidence of a fleet event: further kills in it
    /// become `would_kill`, with one alert.
    pub budget_per_cohort: u32,
}

impl PartialEq for KillRules {
    fn eq(&self, o: &Self) -> bool {
        self.threshold == o.threshold
            && self.half_life_ms == o.half_life_ms
            && self.cooldown_ms == o.cooldown_ms
            && self.allowlist == o.allowlist
            && self.dry_run == o.dry_run
            && self.weights == o.weights
            && self.budget_per_hour == o.budget_per_hour
            && self.budget_share == o.budget_share
            && self.budget_per_cohort == o.budget_per_cohort
    }
}

/// Severity per incident type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Severities {
    /// frequency_spike (default high).
    pub frequency_spike: Severity,
    /// volume_spike (default high).
    pub volume_spike: Severity,
    /// off_hours (default medium).
    pub off_hours: Severity,
    /// auto_kill (default critical).
    pub auto_kill: Severity,
    /// activity_after_kill (default critical).
    pub activity_after_kill: Severity,
}

/// Deduplication of bursts into one incident.
/// How agents are grouped into cohorts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CohortBy {
    /// The agents of the blueprint.
    #[default]
    Blueprint,
    /// The agents of the blueprint with the same `group` field (the assignment's `group_field`,
    /// or OpenTelemetry's group attribute), as first seen.
    Group,
}

impl CohortBy {
    /// The name in blueprints.
    pub fn as_str(self) -> &'static str {
        match self {
            CohortBy::Blueprint => "blueprint",
            CohortBy::Group => "group",
        }
    }
}

/// Judging agents against their cohort (see [`crate::detect::CohortShift`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CohortRules {
    /// Whether findings are judged against the cohort at all.
    pub enabled: bool,
    /// How agents are grouped.
    pub by: CohortBy,
    /// Event time a finding waits for its cohort to show a shift before it is raised (ms).
    pub wait_ms: i64,
    /// Longest wait while other members show the same kind of finding (ms).
    pub max_wait_ms: i64,
    /// Least members that must show a shift (and least members for a cohort to hold findings).
    pub min_agents: u32,
    /// Least share of the eligible (rates) or active (other kinds) members that must show it.
    pub share: f64,
    /// Least median factor of the members' call rates for a rate shift.
    pub min_factor: f64,
    /// Window of event time over which members' findings and activity are counted (ms).
    pub window_ms: i64,
    /// Event time a shift stays open without being confirmed (ms).
    pub gap_ms: i64,
    /// A volume finding is beyond the shift from this many times the shift's typical ratio.
    pub beyond: f64,
}

impl Default for CohortRules {
    fn default() -> Self {
        CohortRules {
            enabled: true,
            by: CohortBy::Blueprint,
            wait_ms: 300_000,
            max_wait_ms: 900_000,
            min_agents: 5,
            share: 0.5,
            min_factor: 1.5,
            window_ms: 3_600_000,
            gap_ms: 1_800_000,
            beyond: 3.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DedupRules {
    /// Minimum event time between two incidents of one type for one agent (ms), default 5 min.
    pub cooldown_ms: i64,
    /// A pause longer than this ends an episode of one anomaly (ms), default 1 h.
    pub episode_gap_ms: i64,
}

/// A validated blueprint with defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Blueprint {
    /// Key used in assignment rules and incidents (the file stem, e.g. `finance`).
    pub key: String,
    /// Display name (the peer's `name`).
    pub name: String,
    /// The peer's optional guardian `id`.
    pub id: Option<String>,
    /// The peer's `mode`.
    pub mode: Mode,
    /// IANA time zone for hours and days (default UTC).
    pub timezone: Tz,
    /// Working days (default every day, as the peer).
    pub working_days: Weekdays,
    /// Allowed local hours (the peer's `allowed_hours`); `None`: any hour.
    pub allowed_hours: Option<AllowedHours>,
    /// Calls within the window above which a frequency spike is raised (the peer's `frequency_threshold`).
    pub frequency_threshold: Option<u32>,
    /// The peer's count-based `volume_threshold` (calls within the window).
    pub count_volume_threshold: Option<u32>,
    /// Sliding window of the frequency check (the peer's `volume_window_ms`, default 60 000).
    pub window_ms: i64,
    /// Data-volume thresholds.
    pub data_volume: DataVolumeRules,
    /// Suspicious sequences.
    pub sequences: Vec<SequenceRule>,
    /// Default `within` of a sequence (ms), default 10 min.
    pub sequence_within_ms: i64,
    /// Recent calls kept per agent for sequence matching (default 64).
    pub sequence_memory: usize,
    /// Out-of-order tolerance (ms), default 30 000.
    pub allowed_lateness_ms: i64,
    /// Learned baselines.
    pub learned: LearnedRules,
    /// Kill policy.
    pub kill: KillRules,
    /// Severities.
    pub severities: Severities,
    /// Deduplication.
    pub dedup: DedupRules,
    /// What to do with routine static matches, per detector.
    pub routine: RoutineRules,
    /// Judging agents against their cohort.
    pub cohort: CohortRules,
}

fn dur(ms: i64) -> String {
    humantime::format_duration(std::time::Duration::from_millis(ms.max(0) as u64)).to_string()
}

impl Blueprint {
    /// Whether kills are only reported ("would kill"): monitor mode or `kill.dry_run`.
    pub fn dry_run(&self) -> bool {
        self.kill.dry_run || self.mode == Mode::Monitor
    }

    /// The effective blueprint as JSON, loadable again.
    pub fn to_json(&self) -> Value {
        let anomaly = self.anomaly_json();
        let mut out = json!({
            "name": self.name,
            "mode": self.mode.as_str(),
            "anomaly": anomaly,
            "auto_kill_threshold": self.kill.threshold,
            "timezone": self.timezone.name(),
            "working_days": self.working_days.names(),
            "allowed_lateness": dur(self.allowed_lateness_ms),
            "sequence_within": dur(self.sequence_within_ms),
            "sequence_memory": self.sequence_memory,
            "data_volume": {"max_bytes": self.data_volume.max_bytes, "window": dur(self.data_volume.window_ms)},
            "learned": self.learned_json(),
            "routine": {
                "frequency": self.routine.frequency.as_str(),
                "volume": self.routine.volume.as_str(),
                "off_hours": self.routine.off_hours.as_str(),
            },
            "kill": {
                "half_life": dur(self.kill.half_life_ms),
                "cooldown": dur(self.kill.cooldown_ms),
                "allowlist": self.kill.allowlist,
                "dry_run": self.kill.dry_run,
                "weights": {"low": self.kill.weights[0], "medium": self.kill.weights[1],
                            "high": self.kill.weights[2], "critical": self.kill.weights[3]},
                "budget": {"per_hour": self.kill.budget_per_hour, "share": self.kill.budget_share,
                           "per_cohort": self.kill.budget_per_cohort},
            },
            "severities": {
                "frequency_spike": self.severities.frequency_spike.as_str(),
                "volume_spike": self.severities.volume_spike.as_str(),
                "off_hours": self.severities.off_hours.as_str(),
                "auto_kill": self.severities.auto_kill.as_str(),
                "activity_after_kill": self.severities.activity_after_kill.as_str(),
            },
            "dedup": {"cooldown": dur(self.dedup.cooldown_ms), "episode_gap": dur(self.dedup.episode_gap_ms)},
            "cohort": {
                "enabled": self.cohort.enabled,
                "by": self.cohort.by.as_str(),
                "wait": dur(self.cohort.wait_ms),
                "max_wait": dur(self.cohort.max_wait_ms),
                "min_agents": self.cohort.min_agents,
                "share": self.cohort.share,
                "min_factor": self.cohort.min_factor,
                "window": dur(self.cohort.window_ms),
                "gap": dur(self.cohort.gap_ms),
                "beyond": self.cohort.beyond,
            },
        });
        if let Some(id) = &self.id {
            out["id"] = json!(id);
        }
        out
    }

    /// The `anomaly` section: the static thresholds and the suspicious sequences.
    fn anomaly_json(&self) -> Value {
        let seqs: Vec<Value> = self
            .sequences
            .iter()
            .map(|s| {
                json!({"pattern": s.pattern, "within": dur(s.within_ms), "contiguous": s.contiguous,
                       "severity": s.severity.as_str(), "routine": s.routine.as_str()})
            })
            .collect();
        let mut anomaly = json!({
            "volume_window_ms": self.window_ms,
            "suspicious_sequences": seqs,
        });
        if let Some(f) = self.frequency_threshold {
            anomaly["frequency_threshold"] = json!(f);
        }
        if let Some(v) = self.count_volume_threshold {
            anomaly["volume_threshold"] = json!(v);
        }
        if let Some(h) = self.allowed_hours {
            anomaly["allowed_hours"] = json!({"start": h.start, "end": h.end});
        }
        anomaly
    }

    /// The `learned` section: the baselines' settings.
    fn learned_json(&self) -> Value {
        json!({
            "enabled": self.learned.enabled,
            "sensitivity": self.learned.sensitivity,
            "learning_period": dur(self.learned.learning_period_ms),
            "warmup": dur(self.learned.warmup_ms),
            "min_active_days": self.learned.min_active_days,
            "burst_ratio": self.learned.burst_ratio,
            "slow_burn_ratio": self.learned.slow_burn_ratio,
            "min_window_count": self.learned.min_window_count,
            "volume_warmup_calls": self.learned.volume_warmup_calls,
            "volume_min_bytes": self.learned.volume_min_bytes,
            "rare_share": self.learned.rare_share,
            "routine_days": self.learned.routine_days,
            "sequence_rarity": self.learned.sequence_rarity,
        })
    }
}
