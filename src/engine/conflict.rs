//! The incidents of the identity map: a record that named another agent for a session or trace
//! bound already, and a burst of new sessions.

use crate::response::{incident_id, Action, Basis, Incident, IncidentType, Severity, Status};
use crate::state::{Conflict, Flood};

/// The `identity_flood` incident of `f`: on `source:<who>` for one source's burst of new
/// sessions, on `sessions:*` or `agents:*` for the partition's; one id per source and hour.
pub fn flood(f: &Flood) -> Incident {
    let (agent, whose) = match &f.source {
        Some(s) => (format!("source:{s}"), format!("source {s:?}")),
        None => (format!("{}:*", f.of), "the partition".to_string()),
    };
    let (what, then) = if f.of == "agents" {
        ("agent ids", "a flood that would fill the state; agents beyond `max_agents_per_partition` are dead-lettered")
    } else {
        ("sessions or traces", "a flood that would push real bindings out; fresh sessions are forgotten first, those of killed and active agents last")
    };
    Incident {
        incident_id: incident_id(
            &agent,
            IncidentType::IdentityFlood,
            Basis::Static,
            0,
            f.of,
            f.hour,
            0,
        ),
        description: format!(
            "{} new {what} from {whose} within the hour (more than {}): {then}.",
            f.count, f.limit
        ),
        agent_id: agent,
        kind: IncidentType::IdentityFlood,
        severity: Severity::High,
        at: f.at,
        window_start: f.hour,
        window_end: f.at,
        blueprint: String::new(),
        basis: Basis::Static,
        observed: f64::from(f.count),
        expected: f64::from(f.limit),
        unit: f.of.into(),
        action_taken: Action::Logged,
        event_id: String::new(),
        tool_name: String::new(),
        pattern: None,
        status: Status::Open,
        count: 1,
        about: None,
        verdict: None,
        baseline: None,
        suppressed_by: None,
        agents: Vec::new(),
    }
}

/// The `binding_conflict` incident of `c`, on the agent the session stays bound to (whose
/// blueprint is `blueprint`), naming both agents; its id is the same for the same session and
/// agents, so a re-delivery or a restart repeats it rather than adding one.
pub fn incident(c: &Conflict, blueprint: &str) -> Incident {
    let what = if c.call {
        "a tool call naming"
    } else {
        "a record binding it to"
    };
    Incident {
        incident_id: incident_id(
            &c.bound,
            IncidentType::BindingConflict,
            Basis::Static,
            0,
            &format!("{}\u{1f}{}", c.session, c.named),
            0,
            0,
        ),
        agent_id: c.bound.clone(),
        kind: IncidentType::BindingConflict,
        severity: Severity::High,
        at: c.at,
        window_start: c.at,
        window_end: c.at,
        blueprint: blueprint.to_string(),
        basis: Basis::Static,
        observed: 1.0,
        expected: 0.0,
        unit: "records".into(),
        description: format!(
            "Session or trace {:?} is bound to agent {:?}; {what} agent {:?} was refused for attribution (the session's calls stay {:?}'s).",
            c.session, c.bound, c.named, c.bound
        ),
        action_taken: Action::Logged,
        event_id: format!("session:{}", c.session),
        tool_name: String::new(),
        pattern: None,
        status: Status::Open,
        count: 1,
        about: None,
        verdict: None,
        baseline: None,
        suppressed_by: None,
        agents: vec![c.bound.clone(), c.named.clone()],
    }
}
