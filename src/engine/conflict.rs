//! The incident of a record that named another agent for a session or trace bound already.

use crate::response::{incident_id, Action, Basis, Incident, IncidentType, Severity, Status};
use crate::state::Conflict;

/// The `identity_conflict` incident of `c`, on the agent the session stays bound to (whose
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
            IncidentType::IdentityConflict,
            Basis::Static,
            0,
            &format!("{}\u{1f}{}", c.session, c.named),
            0,
            0,
        ),
        agent_id: c.bound.clone(),
        kind: IncidentType::IdentityConflict,
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
