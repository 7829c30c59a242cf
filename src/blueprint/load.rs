//! Validation of blueprint JSON into [`Blueprint`], reporting every error with its path.

use super::schema::*;
use super::walk::{join, kind, PathError, Walker};
use super::Severity;
use crate::event::tool_hash;
use globset::{Glob, GlobSetBuilder};
use serde_json::Value;

const TOP_KEYS: &[&str] = &[
    "id",
    "name",
    "mode",
    "anomaly",
    "auto_kill_threshold",
    "escalation_webhook",
    "timezone",
    "working_days",
    "allowed_lateness",
    "sequence_within",
    "sequence_memory",
    "data_volume",
    "learned",
    "kill",
    "severities",
    "dedup",
    "routine",
    "cohort",
];
const ANOMALY_KEYS: &[&str] = &[
    "frequency_threshold",
    "volume_threshold",
    "volume_window_ms",
    "suspicious_sequences",
    "allowed_hours",
];
const DAY: i64 = 86_400_000;

/// Parses a duration: a number of milliseconds, or a string such as `30s`, `10m`, `6h`, `14d`.
pub fn parse_duration_ms(v: &Value) -> Result<i64, DurationError> {
    match v {
        Value::Number(n) => match n.as_u64() {
            Some(ms) if ms <= i64::MAX as u64 / 4 => Ok(ms as i64),
            _ => Err(DurationError::NotWholeMs(n.to_string())),
        },
        Value::String(s) => {
            let d = humantime::parse_duration(s).map_err(|e| DurationError::Text(s.clone(), e))?;
            i64::try_from(d.as_millis()).map_err(|_| DurationError::TooLong(s.clone()))
        }
        other => Err(DurationError::Kind(kind(other))),
    }
}

/// Why a value is not a duration.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum DurationError {
    /// A number that is not a whole, non-negative count of milliseconds.
    #[error("{0} is not a whole number of milliseconds")]
    NotWholeMs(String),
    /// Text humantime does not read.
    #[error("{0:?} is not a duration like \"30s\", \"10m\", \"6h\" or \"14d\": {1}")]
    Text(String, humantime::DurationError),
    /// Text of a duration longer than the milliseconds an `i64` holds.
    #[error("{0:?} is too long")]
    TooLong(String),
    /// Neither a number nor text.
    #[error("expected a duration (\"30s\" or milliseconds), found {0}")]
    Kind(&'static str),
}

impl Walker {
    fn duration(
        &mut self,
        m: &serde_json::Map<String, Value>,
        key: &str,
        path: &str,
        min: i64,
        max: i64,
    ) -> Option<i64> {
        let v = Walker::field(m, key)?;
        let p = join(path, key);
        match parse_duration_ms(v) {
            Ok(ms) if ms >= min && ms <= max => Some(ms),
            Ok(ms) => {
                self.err(&p, format!("{ms} ms is out of range {min}..={max} ms"));
                None
            }
            Err(e) => {
                self.err(&p, e.to_string());
                None
            }
        }
    }

    fn severity(
        &mut self,
        m: &serde_json::Map<String, Value>,
        key: &str,
        path: &str,
    ) -> Option<Severity> {
        let s = self.string(m, key, path)?;
        match Severity::parse(s) {
            Some(sev) => Some(sev),
            None => {
                self.err(
                    &join(path, key),
                    format!("{s:?} is not one of low, medium, high, critical"),
                );
                None
            }
        }
    }
}

impl Walker {
    fn routine(
        &mut self,
        m: &serde_json::Map<String, Value>,
        key: &str,
        path: &str,
    ) -> Option<RoutineMode> {
        let s = self.string(m, key, path)?;
        match RoutineMode::parse(s) {
            Some(r) => Some(r),
            None => {
                self.err(
                    &join(path, key),
                    format!("{s:?} is not one of silence, report, alert"),
                );
                None
            }
        }
    }
}

/// Validates one blueprint document; `key` names it in assignment rules and incidents.
pub fn load_blueprint(key: &str, doc: &Value) -> Result<Blueprint, Vec<PathError>> {
    let mut w = Walker::default();
    let Some(top) = w.object(doc, "", TOP_KEYS) else {
        return Err(w.errors);
    };
    let name = read_name(&mut w, top);
    let id = w.string(top, "id", "").map(str::to_string);
    if let Some(url) = w.string(top, "escalation_webhook", "") {
        let _ = url; // accepted for compatibility with the peer; alerts go through the configured sinks
    }
    let mode = read_mode(&mut w, top);
    let timezone = read_timezone(&mut w, top);
    let working_days = read_working_days(&mut w, top);
    let allowed_lateness_ms = w
        .duration(top, "allowed_lateness", "", 0, 600_000)
        .unwrap_or(30_000);
    let sequence_within_ms = w
        .duration(top, "sequence_within", "", 1, 7 * DAY)
        .unwrap_or(600_000);
    let sequence_memory = w.integer(top, "sequence_memory", "", 2, 1024).unwrap_or(64) as usize;
    let anomaly = anomaly_section(&mut w, top);
    let severities = read_severities(&mut w, top);
    let anomaly = anomaly
        .map(|a| read_anomaly(&mut w, a, sequence_within_ms))
        .unwrap_or_default();
    let data_volume = read_data_volume(&mut w, top);
    let learned = read_learned(&mut w, top);
    let auto_kill = w
        .number(top, "auto_kill_threshold", "", 0.0, 1e9)
        .unwrap_or(0.0);
    let kill = read_kill(&mut w, top, auto_kill);
    let dedup = read_dedup(&mut w, top);
    let routine = read_routine(&mut w, top);
    let cohort = read_cohort(&mut w, top);

    if !w.errors.is_empty() {
        return Err(w.errors);
    }
    Ok(Blueprint {
        key: key.to_string(),
        name,
        id,
        mode,
        timezone,
        working_days,
        allowed_hours: anomaly.allowed_hours,
        frequency_threshold: anomaly.frequency_threshold,
        count_volume_threshold: anomaly.count_volume_threshold,
        window_ms: anomaly.window_ms,
        data_volume,
        sequences: anomaly.sequences,
        sequence_within_ms,
        sequence_memory,
        allowed_lateness_ms,
        learned,
        kill,
        severities,
        dedup,
        routine,
        cohort,
    })
}

/// The blueprint's display name (required; empty if it is missing or not a string).
fn read_name(w: &mut Walker, top: &serde_json::Map<String, Value>) -> String {
    match w.string(top, "name", "") {
        Some(n) => n.to_string(),
        None => {
            if !top.contains_key("name") {
                w.err("/name", "missing field (the blueprint's display name)");
            }
            String::new()
        }
    }
}

/// The blueprint's mode (required; monitor if it is missing or not one).
fn read_mode(w: &mut Walker, top: &serde_json::Map<String, Value>) -> Mode {
    match w.string(top, "mode", "") {
        None => {
            if !top.contains_key("mode") {
                w.err("/mode", "missing field (monitor, block or correct)");
            }
            Mode::Monitor
        }
        Some("monitor") => Mode::Monitor,
        Some("block") => Mode::Block,
        Some("correct") => Mode::Correct,
        Some(other) => {
            w.err(
                "/mode",
                format!("{other:?} is not one of monitor, block, correct"),
            );
            Mode::Monitor
        }
    }
}

/// The time zone of working hours and days (UTC unless set).
fn read_timezone(w: &mut Walker, top: &serde_json::Map<String, Value>) -> chrono_tz::Tz {
    match w.string(top, "timezone", "") {
        None => chrono_tz::UTC,
        Some(s) => s.parse().unwrap_or_else(|_| {
            w.err(
                "/timezone",
                format!("{s:?} is not an IANA time zone such as \"Europe/London\""),
            );
            chrono_tz::UTC
        }),
    }
}

/// The working days, by their names' beginnings (every day unless set).
fn read_working_days(w: &mut Walker, top: &serde_json::Map<String, Value>) -> Weekdays {
    let Some(days) = w.strings(top, "working_days", "") else {
        return Weekdays::ALL;
    };
    let mut bits = 0u8;
    for (i, d) in days.iter().enumerate() {
        let lower = d.to_ascii_lowercase();
        match Weekdays::NAMES.iter().position(|n| lower.starts_with(n)) {
            Some(b) => bits |= 1 << b,
            None => w.err(
                &format!("/working_days/{i}"),
                format!("{d:?} is not a day (mon … sun)"),
            ),
        }
    }
    Weekdays(bits)
}

/// The settings of the peer's anomaly section.
struct Anomaly {
    /// Calls within the window above which a frequency spike is raised (`None`: off).
    frequency_threshold: Option<u32>,
    /// The count-based `volume_threshold`: calls within the window (`None`: off).
    count_volume_threshold: Option<u32>,
    /// Sliding window of the frequency check, in milliseconds.
    window_ms: i64,
    /// Allowed local hours; `None`: any hour.
    allowed_hours: Option<AllowedHours>,
    /// The suspicious sequences.
    sequences: Vec<SequenceRule>,
}

impl Default for Anomaly {
    /// No thresholds, a one-minute window, any hour, no sequences.
    fn default() -> Self {
        Anomaly {
            frequency_threshold: None,
            count_volume_threshold: None,
            window_ms: 60_000,
            allowed_hours: None,
            sequences: Vec::new(),
        }
    }
}

/// The anomaly section (required), if it is an object of known keys.
fn anomaly_section<'v>(
    w: &mut Walker,
    top: &'v serde_json::Map<String, Value>,
) -> Option<&'v serde_json::Map<String, Value>> {
    match Walker::field(top, "anomaly") {
        Some(a) => w.object(a, "/anomaly", ANOMALY_KEYS),
        None => {
            w.err("/anomaly", "missing field (the detection thresholds)");
            None
        }
    }
}

/// The anomaly section's thresholds, allowed hours and sequences (`default_within`: the window
/// of a sequence that sets none).
fn read_anomaly(
    w: &mut Walker,
    a: &serde_json::Map<String, Value>,
    default_within: i64,
) -> Anomaly {
    let frequency_threshold = w
        .integer(a, "frequency_threshold", "/anomaly", 0, u32::MAX as u64)
        .filter(|v| *v > 0);
    let count_volume_threshold = w
        .integer(a, "volume_threshold", "/anomaly", 0, u32::MAX as u64)
        .filter(|v| *v > 0);
    let window_ms = w
        .integer(a, "volume_window_ms", "/anomaly", 1000, 86_400_000)
        .unwrap_or(60_000) as i64;
    let allowed_hours = Walker::field(a, "allowed_hours").and_then(|h| read_allowed_hours(w, h));
    let sequences = Walker::field(a, "suspicious_sequences")
        .map(|seqs| read_sequences(w, seqs, default_within))
        .unwrap_or_default();
    Anomaly {
        frequency_threshold: frequency_threshold.map(|v| v as u32),
        count_volume_threshold: count_volume_threshold.map(|v| v as u32),
        window_ms,
        allowed_hours,
        sequences,
    }
}

/// The allowed hours `h` (`start` and `end` both required), if valid.
fn read_allowed_hours(w: &mut Walker, h: &Value) -> Option<AllowedHours> {
    let p = "/anomaly/allowed_hours";
    let hm = w.object(h, p, &["start", "end"])?;
    let start = w.integer(hm, "start", p, 0, 23);
    let end = w.integer(hm, "end", p, 0, 24);
    for k in ["start", "end"] {
        if !hm.contains_key(k) {
            w.err(&format!("{p}/{k}"), "missing field (an hour 0-24)");
        }
    }
    let (start, end) = (start?, end?);
    Some(AllowedHours {
        start: start as u8,
        end: end as u8,
    })
}

/// The data-volume thresholds (no limit, a one-minute window, unless set).
fn read_data_volume(w: &mut Walker, top: &serde_json::Map<String, Value>) -> DataVolumeRules {
    let p = "/data_volume";
    match Walker::field(top, "data_volume").and_then(|v| w.object(v, p, &["max_bytes", "window"])) {
        None => DataVolumeRules {
            max_bytes: None,
            window_ms: 60_000,
        },
        Some(m) => DataVolumeRules {
            max_bytes: w.number(m, "max_bytes", p, 1.0, 1e18),
            window_ms: w.duration(m, "window", p, 1000, DAY).unwrap_or(60_000),
        },
    }
}

/// The incident cooldown and episode gap (5 min and 1 h unless set).
fn read_dedup(w: &mut Walker, top: &serde_json::Map<String, Value>) -> DedupRules {
    match Walker::field(top, "dedup")
        .and_then(|v| w.object(v, "/dedup", &["cooldown", "episode_gap"]))
    {
        None => DedupRules {
            cooldown_ms: 300_000,
            episode_gap_ms: 3_600_000,
        },
        Some(m) => DedupRules {
            cooldown_ms: w
                .duration(m, "cooldown", "/dedup", 0, 7 * DAY)
                .unwrap_or(300_000),
            episode_gap_ms: w
                .duration(m, "episode_gap", "/dedup", 1000, 7 * DAY)
                .unwrap_or(3_600_000),
        },
    }
}

/// What to do with static matches that are routine for the agent, per detector (the defaults
/// unless set).
fn read_routine(w: &mut Walker, top: &serde_json::Map<String, Value>) -> RoutineRules {
    let mut routine = RoutineRules::default();
    if let Some(m) = Walker::field(top, "routine")
        .and_then(|v| w.object(v, "/routine", &["frequency", "volume", "off_hours"]))
    {
        for (k, slot) in [
            ("frequency", &mut routine.frequency),
            ("volume", &mut routine.volume),
            ("off_hours", &mut routine.off_hours),
        ] {
            if let Some(r) = w.routine(m, k, "/routine") {
                *slot = r;
            }
        }
    }
    routine
}

/// The rules for judging agents against their cohort (the defaults where unset).
fn read_cohort(w: &mut Walker, top: &serde_json::Map<String, Value>) -> CohortRules {
    let mut c = CohortRules::default();
    let p = "/cohort";
    let keys = [
        "enabled",
        "by",
        "wait",
        "max_wait",
        "min_agents",
        "share",
        "min_factor",
        "window",
        "gap",
        "beyond",
    ];
    let Some(m) = Walker::field(top, "cohort").and_then(|v| w.object(v, p, &keys)) else {
        return c;
    };
    c.enabled = w.boolean(m, "enabled", p).unwrap_or(c.enabled);
    match w.string(m, "by", p) {
        None => {}
        Some("blueprint") => c.by = CohortBy::Blueprint,
        Some("group") => c.by = CohortBy::Group,
        Some(other) => w.err(
            "/cohort/by",
            format!("{other:?} is not one of blueprint, group"),
        ),
    }
    c.wait_ms = w.duration(m, "wait", p, 0, 3_600_000).unwrap_or(c.wait_ms);
    c.max_wait_ms = w
        .duration(m, "max_wait", p, 0, 3_600_000)
        .unwrap_or(c.max_wait_ms.max(c.wait_ms));
    if c.max_wait_ms < c.wait_ms {
        w.err("/cohort/max_wait", "shorter than /cohort/wait");
    }
    c.min_agents = w
        .integer(m, "min_agents", p, 2, 1_000_000)
        .map_or(c.min_agents, |v| v as u32);
    c.share = w.number(m, "share", p, 0.1, 1.0).unwrap_or(c.share);
    c.min_factor = w
        .number(m, "min_factor", p, 1.1, 1000.0)
        .unwrap_or(c.min_factor);
    c.window_ms = w
        .duration(m, "window", p, 60_000, DAY)
        .unwrap_or(c.window_ms);
    c.gap_ms = w.duration(m, "gap", p, 60_000, DAY).unwrap_or(c.gap_ms);
    c.beyond = w.number(m, "beyond", p, 1.0, 1e6).unwrap_or(c.beyond);
    c
}

/// The suspicious sequences `seqs` (`default_within`: the window of one that sets none); each
/// invalid sequence is reported and left out.
fn read_sequences(w: &mut Walker, seqs: &Value, default_within: i64) -> Vec<SequenceRule> {
    let base = "/anomaly/suspicious_sequences";
    let Some(items) = seqs.as_array() else {
        w.err(
            base,
            format!("expected an array of sequences, found {}", kind(seqs)),
        );
        return Vec::new();
    };
    items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| read_sequence(w, item, &format!("{base}/{i}"), default_within))
        .collect()
}

/// A sequence's settings, and its steps as yet unread with their path.
struct SequenceForm<'v> {
    /// The list of tool names.
    pattern: &'v Value,
    /// The list's JSON path.
    path: String,
    /// The whole match must fit in this span of event time (ms).
    within_ms: i64,
    /// `true`: consecutive calls only; `false`: other calls may come between.
    contiguous: bool,
    /// Severity of a match.
    severity: Severity,
    /// What to do with matches that are routine for the agent.
    routine: RoutineMode,
}

/// The sequence `item` at path `p`, if valid.
fn read_sequence(
    w: &mut Walker,
    item: &Value,
    p: &str,
    default_within: i64,
) -> Option<SequenceRule> {
    let form = match item {
        // The peer's form: a bare list of tool names, matched on consecutive calls.
        Value::Array(_) => SequenceForm {
            pattern: item,
            path: p.to_string(),
            within_ms: default_within,
            contiguous: true,
            severity: Severity::High,
            routine: RoutineMode::default(),
        },
        Value::Object(_) => sequence_object(w, item, p, default_within)?,
        other => {
            w.err(
                p,
                format!(
                    "expected a list of tool names or an object, found {}",
                    kind(other)
                ),
            );
            return None;
        }
    };
    let pattern = read_pattern(w, form.pattern, &form.path)?;
    let pattern_hashes = pattern
        .iter()
        .map(|s| if s == "*" { 0 } else { tool_hash(s) })
        .collect();
    Some(SequenceRule {
        pattern,
        pattern_hashes,
        within_ms: form.within_ms,
        contiguous: form.contiguous,
        severity: form.severity,
        routine: form.routine,
    })
}

/// The settings of a sequence written as an object, if its keys are known and it has a
/// `pattern`.
fn sequence_object<'v>(
    w: &mut Walker,
    item: &'v Value,
    p: &str,
    default_within: i64,
) -> Option<SequenceForm<'v>> {
    let m = w.object(
        item,
        p,
        &["pattern", "within", "contiguous", "severity", "routine"],
    )?;
    let within_ms = w
        .duration(m, "within", p, 1, 7 * DAY)
        .unwrap_or(default_within);
    let contiguous = w.boolean(m, "contiguous", p).unwrap_or(false);
    let severity = w.severity(m, "severity", p).unwrap_or(Severity::High);
    let routine = w.routine(m, "routine", p).unwrap_or_default();
    let path = format!("{p}/pattern");
    let Some(pattern) = m.get("pattern") else {
        w.err(&path, "missing field (a list of tool names)");
        return None;
    };
    Some(SequenceForm {
        pattern,
        path,
        within_ms,
        contiguous,
        severity,
        routine,
    })
}

/// The steps of a sequence: two to 16 tool names; `*` (any one call) neither first nor last.
fn read_pattern(w: &mut Walker, value: &Value, path: &str) -> Option<Vec<String>> {
    let Some(names) = value.as_array() else {
        w.err(
            path,
            format!("expected a list of tool names, found {}", kind(value)),
        );
        return None;
    };
    let mut pattern = Vec::new();
    for (j, n) in names.iter().enumerate() {
        match n.as_str() {
            Some(s) if !s.is_empty() => pattern.push(s.to_string()),
            _ => w.err(
                &format!("{path}/{j}"),
                "expected a non-empty tool name or \"*\"",
            ),
        }
    }
    if names.len() < 2 {
        w.err(path, "a sequence needs at least two steps");
        return None;
    }
    if pattern.first().map(String::as_str) == Some("*")
        || pattern.last().map(String::as_str) == Some("*")
    {
        w.err(path, "a sequence cannot start or end with \"*\"");
        return None;
    }
    if pattern.len() > 16 {
        w.err(path, "a sequence has at most 16 steps");
        return None;
    }
    Some(pattern)
}

/// The severity per incident type (the defaults where unset).
fn read_severities(w: &mut Walker, top: &serde_json::Map<String, Value>) -> Severities {
    let mut s = Severities {
        frequency_spike: Severity::High,
        volume_spike: Severity::High,
        off_hours: Severity::Medium,
        auto_kill: Severity::Critical,
        activity_after_kill: Severity::Critical,
    };
    let keys = [
        "frequency_spike",
        "volume_spike",
        "off_hours",
        "auto_kill",
        "activity_after_kill",
    ];
    if let Some(m) =
        Walker::field(top, "severities").and_then(|v| w.object(v, "/severities", &keys))
    {
        let slots: [&mut Severity; 5] = [
            &mut s.frequency_spike,
            &mut s.volume_spike,
            &mut s.off_hours,
            &mut s.auto_kill,
            &mut s.activity_after_kill,
        ];
        for (k, slot) in keys.iter().zip(slots) {
            if let Some(v) = w.severity(m, k, "/severities") {
                *slot = v;
            }
        }
    }
    s
}

/// The learned detection's settings where the blueprint sets none (`rare_evidence` follows
/// `sensitivity` once it is read).
fn default_learned() -> LearnedRules {
    LearnedRules {
        enabled: true,
        sensitivity: 1e-6,
        learning_period_ms: 7 * DAY,
        warmup_ms: 7 * DAY,
        min_active_days: 3,
        burst_ratio: 5.0,
        slow_burn_ratio: 4.0,
        min_window_count: 6,
        volume_warmup_calls: 50,
        volume_min_bytes: 0.0,
        rare_share: 0.1,
        routine_days: 3,
        sequence_rarity: 1e-3,
        rare_evidence: 0.0,
    }
}

/// The keys of the learned section, earlier names included.
const LEARNED_KEYS: &[&str] = &[
    "enabled",
    "sensitivity",
    "learning_period",
    "warmup",
    "min_active_days",
    "burst_ratio",
    "slow_burn_ratio",
    "min_window_count",
    "volume_warmup_calls",
    "volume_min_bytes",
    "rare_share",
    "routine_days",
    "sequence_rarity",
    // Earlier names, still accepted (see the README's "Changes of meaning").
    "min_slot_observations",
    "min_hourly_count",
    "rare_hour_share",
];

/// The learned detection's settings (the defaults where unset).
fn read_learned(w: &mut Walker, top: &serde_json::Map<String, Value>) -> LearnedRules {
    let mut l = default_learned();
    let p = "/learned";
    if let Some(m) = Walker::field(top, "learned").and_then(|v| w.object(v, p, LEARNED_KEYS)) {
        l.enabled = w.boolean(m, "enabled", p).unwrap_or(l.enabled);
        l.sensitivity = w
            .number(m, "sensitivity", p, 1e-15, 0.5)
            .unwrap_or(l.sensitivity);
        l.learning_period_ms = w
            .duration(m, "learning_period", p, 0, 365 * DAY)
            .unwrap_or(l.learning_period_ms);
        l.warmup_ms = w
            .duration(m, "warmup", p, 0, 365 * DAY)
            .unwrap_or(l.warmup_ms);
        for key in ["min_slot_observations", "min_active_days"] {
            if let Some(v) = w.integer(m, key, p, 1, 1000) {
                l.min_active_days = v as u32;
            }
        }
        l.burst_ratio = w
            .number(m, "burst_ratio", p, 1.0, 1e6)
            .unwrap_or(l.burst_ratio);
        l.slow_burn_ratio = w
            .number(m, "slow_burn_ratio", p, 1.0, 1e6)
            .unwrap_or(l.slow_burn_ratio);
        for key in ["min_hourly_count", "min_window_count"] {
            if let Some(v) = w.integer(m, key, p, 1, u32::MAX as u64) {
                l.min_window_count = v as u32;
            }
        }
        l.volume_warmup_calls = w
            .integer(m, "volume_warmup_calls", p, 2, u32::MAX as u64)
            .unwrap_or(50) as u32;
        l.volume_min_bytes = w
            .number(m, "volume_min_bytes", p, 0.0, 1e18)
            .unwrap_or(l.volume_min_bytes);
        for key in ["rare_hour_share", "rare_share"] {
            if let Some(v) = w.number(m, key, p, 0.0, 0.5) {
                l.rare_share = v;
            }
        }
        l.routine_days = w
            .integer(m, "routine_days", p, 1, 365)
            .map_or(l.routine_days, |v| v as u32);
        l.sequence_rarity = w
            .number(m, "sequence_rarity", p, 0.0, 1.0)
            .unwrap_or(l.sequence_rarity);
    }
    l.rare_evidence = (1.0 / l.sensitivity).ln();
    l
}

/// The kill rules, with the blueprint's `auto_kill_threshold` (the defaults where unset).
fn read_kill(w: &mut Walker, top: &serde_json::Map<String, Value>, threshold: f64) -> KillRules {
    let mut k = KillRules {
        threshold,
        half_life_ms: 6 * 3_600_000,
        cooldown_ms: 3_600_000,
        allowlist: Vec::new(),
        allowlist_set: globset::GlobSet::empty(),
        dry_run: false,
        weights: [0.5, 1.0, 1.0, 2.0],
        budget_per_hour: 3,
        budget_share: 0.1,
        budget_per_cohort: 2,
    };
    let p = "/kill";
    if let Some(m) = Walker::field(top, "kill").and_then(|v| {
        w.object(
            v,
            p,
            &[
                "half_life",
                "cooldown",
                "allowlist",
                "dry_run",
                "weights",
                "budget",
            ],
        )
    }) {
        k.half_life_ms = w
            .duration(m, "half_life", p, 1000, 365 * DAY)
            .unwrap_or(k.half_life_ms);
        k.cooldown_ms = w
            .duration(m, "cooldown", p, 0, 30 * DAY)
            .unwrap_or(k.cooldown_ms);
        k.dry_run = w.boolean(m, "dry_run", p).unwrap_or(false);
        if let Some(list) = w.strings(m, "allowlist", p) {
            if let Some(set) = read_allowlist(w, &list) {
                k.allowlist_set = set;
            }
            k.allowlist = list;
        }
        read_budget(w, m, &mut k);
        read_kill_weights(w, m, &mut k.weights);
    }
    k
}

/// The allowlist's globs as one set, if they all build.
fn read_allowlist(w: &mut Walker, list: &[String]) -> Option<globset::GlobSet> {
    let mut b = GlobSetBuilder::new();
    for (i, g) in list.iter().enumerate() {
        match Glob::new(g) {
            Ok(glob) => {
                b.add(glob);
            }
            Err(e) => w.err(&format!("/kill/allowlist/{i}"), format!("bad glob: {e}")),
        }
    }
    match b.build() {
        Ok(set) => Some(set),
        Err(e) => {
            w.err("/kill/allowlist", format!("bad glob set: {e}"));
            None
        }
    }
}

/// The fleet kill budget of the kill section `m` into `k` (what is set).
fn read_budget(w: &mut Walker, m: &serde_json::Map<String, Value>, k: &mut KillRules) {
    let p = "/kill/budget";
    let Some(bm) = Walker::field(m, "budget")
        .and_then(|v| w.object(v, p, &["per_hour", "share", "per_cohort"]))
    else {
        return;
    };
    if let Some(n) = w.integer(bm, "per_cohort", p, 0, 1_000_000) {
        k.budget_per_cohort = n as u32;
    }
    if let Some(n) = w.integer(bm, "per_hour", p, 0, 1_000_000) {
        k.budget_per_hour = n as u32;
    }
    if let Some(x) = w.number(bm, "share", p, 0.0, 1.0) {
        k.budget_share = x;
    }
}

/// The kill weights by severity, low to critical, of the kill section `m` into `weights` (what
/// is set).
fn read_kill_weights(w: &mut Walker, m: &serde_json::Map<String, Value>, weights: &mut [f64; 4]) {
    let names = ["low", "medium", "high", "critical"];
    if let Some(wm) = Walker::field(m, "weights").and_then(|v| w.object(v, "/kill/weights", &names))
    {
        for (i, n) in names.iter().enumerate() {
            if let Some(x) = w.number(wm, n, "/kill/weights", 0.0, 1e6) {
                weights[i] = x;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn peer_config_loads_with_peer_defaults() {
        let bp = load_blueprint(
            "x",
            &json!({"name": "N", "mode": "block", "anomaly": {"frequency_threshold": 30, "volume_threshold": 100,
                    "suspicious_sequences": [["a", "b"]], "allowed_hours": {"start": 8, "end": 18}},
                    "auto_kill_threshold": 3}),
        )
        .unwrap();
        assert_eq!(bp.frequency_threshold, Some(30));
        assert_eq!(bp.count_volume_threshold, Some(100));
        assert_eq!(bp.window_ms, 60_000);
        assert_eq!(bp.working_days, Weekdays::ALL);
        assert_eq!(bp.timezone, chrono_tz::UTC);
        assert!(bp.sequences[0].contiguous);
        assert_eq!(bp.kill.threshold, 3.0);
        assert_eq!(bp.allowed_hours, Some(AllowedHours { start: 8, end: 18 }));
    }

    #[test]
    fn every_error_is_reported_with_its_path() {
        let errs = load_blueprint(
            "x",
            &json!({"mode": "loud", "anomaly": {"frequency_threshold": -1, "allowed_hours": {"start": 25},
                    "suspicious_sequences": [["only"], {"pattern": ["a", "b"], "within": "soon"}], "typo": 1},
                    "timezone": "Mars/Olympus", "working_days": ["mon", "funday"],
                    "kill": {"weights": {"high": "x"}}, "learned": {"sensitivity": 2}}),
        )
        .unwrap_err();
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        for want in [
            "/name",
            "/mode",
            "/anomaly/frequency_threshold",
            "/anomaly/allowed_hours/start",
            "/anomaly/allowed_hours/end",
            "/anomaly/suspicious_sequences/0",
            "/anomaly/suspicious_sequences/1/within",
            "/anomaly/typo",
            "/timezone",
            "/working_days/1",
            "/kill/weights/high",
            "/learned/sensitivity",
        ] {
            assert!(paths.contains(&want), "missing {want} in {paths:?}");
        }
    }

    #[test]
    fn show_output_loads_back_to_the_same_blueprint() {
        let bp = load_blueprint(
            "x",
            &json!({"name": "N", "mode": "monitor", "timezone": "Europe/London", "working_days": ["mon", "fri"],
                    "anomaly": {"suspicious_sequences": [{"pattern": ["a", "*", "b"], "within": "2m", "severity": "critical"}]},
                    "kill": {"allowlist": ["svc-*"], "half_life": "2h"}, "data_volume": {"max_bytes": 5e6}}),
        )
        .unwrap();
        let again = load_blueprint("x", &bp.to_json()).unwrap();
        assert_eq!(bp, again);
    }

    #[test]
    fn durations_accept_strings_and_milliseconds() {
        assert_eq!(parse_duration_ms(&json!("30s")), Ok(30_000));
        assert_eq!(parse_duration_ms(&json!("14d")), Ok(14 * DAY));
        assert_eq!(parse_duration_ms(&json!(1500)), Ok(1500));
        assert!(parse_duration_ms(&json!(-5)).is_err());
        assert!(parse_duration_ms(&json!(true)).is_err());
    }

    #[test]
    fn blueprints_written_for_earlier_versions_still_validate_with_the_new_defaults() {
        // The shipped finance blueprint as it was before the detection model of state format 4.
        let old = json!({
            "name": "Finance Guardian", "mode": "block",
            "anomaly": {"frequency_threshold": 30, "volume_window_ms": 60000,
                "suspicious_sequences": [
                    {"pattern": ["query_customer_db", "send_email"], "within": "15m", "severity": "high"},
                    {"pattern": ["trigger_payment", "trigger_payment"], "within": "5m", "contiguous": true, "severity": "high"}],
                "allowed_hours": {"start": 8, "end": 18}},
            "auto_kill_threshold": 3, "timezone": "America/New_York",
            "working_days": ["mon", "tue", "wed", "thu", "fri"], "allowed_lateness": "30s",
            "data_volume": {"max_bytes": 50000000, "window": "1m"},
            "learned": {"enabled": true, "sensitivity": 1e-6, "warmup": "14d", "min_hourly_count": 20,
                        "volume_min_bytes": 1000000, "min_slot_observations": 2, "rare_hour_share": 0.05},
            "kill": {"half_life": "6h", "cooldown": "1h", "allowlist": [], "dry_run": false},
            "dedup": {"cooldown": "5m", "episode_gap": "1h"}
        });
        let bp = load_blueprint("finance", &old).unwrap();
        // Former names read as their successors; what it does not mention gets the defaults.
        assert_eq!(bp.learned.min_window_count, 20);
        assert_eq!(bp.learned.min_active_days, 2);
        assert_eq!(bp.learned.rare_share, 0.05);
        assert_eq!(bp.learned.volume_min_bytes, 1e6);
        assert_eq!(bp.learned.warmup_ms, 14 * DAY);
        assert_eq!(bp.learned.learning_period_ms, 7 * DAY);
        assert_eq!(bp.routine, RoutineRules::default());
        assert!(bp
            .sequences
            .iter()
            .all(|r| r.routine == RoutineMode::Report));
        assert_eq!((bp.kill.budget_per_hour, bp.kill.budget_share), (3, 0.1));
        // The new settings are validated with their paths.
        let errs = load_blueprint(
            "x",
            &json!({"name": "N", "mode": "block", "anomaly": {"suspicious_sequences": [
                        {"pattern": ["a", "b"], "routine": "sometimes"}]},
                    "routine": {"frequency": "loud"}, "kill": {"budget": {"share": 2}},
                    "learned": {"learning_period": "soon", "burst_ratio": 0.5}}),
        )
        .unwrap_err();
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        for want in [
            "/anomaly/suspicious_sequences/0/routine",
            "/routine/frequency",
            "/kill/budget/share",
            "/learned/learning_period",
            "/learned/burst_ratio",
        ] {
            assert!(paths.contains(&want), "missing {want} in {paths:?}");
        }
    }
}
