//! Blueprints: detection thresholds and response policy per class of agent, and the rules that
//! assign each agent to one.
//!
//! Layer: uses `event`.

mod assign;
mod load;
mod schema;
mod set;
mod severity;
mod walk;

pub use assign::{Assignment, AssignmentRule};
pub use load::{load_blueprint, parse_duration_ms, DurationError};
pub use schema::{
    AllowedHours, Blueprint, CohortBy, CohortRules, DataVolumeRules, DedupRules, KillRules,
    LearnedRules, Mode, RoutineMode, RoutineRules, SequenceRule, Severities, Weekdays,
};
pub use set::{read_json_file, BlueprintSet, LoadError, BUILTIN};
pub use severity::Severity;
pub use walk::{duplicate_keys, PathError};
