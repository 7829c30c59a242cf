//! The incidents of the identity map: a record that named another agent for a session or trace
//! bound already, and a burst of new sessions, traces or agents.

use crate::response::{incident_id, Basis, Incident, IncidentType};
use crate::state::{Conflict, Flood};

/// The `identity_flood` incident of `f`: on `source:<who>` for one source's burst of new
/// sessions, on `sessions:*` or `agents:*` for the partition's; one id per source and hour.
pub fn flood(f: &Flood) -> Incident {
    let (agent, whose) = match &f.source {
        Some(s) => (format!("source:{s}"), format!("source {s:?}")),
        None => (format!("{}:*", f.of), "the partition".to_string()),
    };
    let (what, then) = if f.of == "agents" {
        (
            "agent ids",
            "a flood that would fill the state; agents beyond `max_agents_per_partition` are dead-lettered",
        )
    } else {
        (
            "sessions or traces",
            "a flood that would push real bindings out; fresh sessions are forgotten first, those of killed and active agents last",
        )
    };
    let kind = IncidentType::IdentityFlood;
    let id = incident_id(&agent, kind, Basis::Static, 0, f.of, f.hour, 0);
    let description = format!(
        "{} new {what} from {whose} within the hour (more than {}): {then}.",
        f.count, f.limit
    );
    let mut i = Incident::rule(kind, id, agent, f.at, f.of, description);
    i.window_start = f.hour;
    i.observed = f64::from(f.count);
    i.expected = f64::from(f.limit);
    i
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
    let kind = IncidentType::BindingConflict;
    let key = format!("{}\u{1f}{}", c.session, c.named);
    let id = incident_id(&c.bound, kind, Basis::Static, 0, &key, 0, 0);
    let description = format!(
        "Session or trace {:?} is bound to agent {:?}; {what} agent {:?} was refused for attribution (the session's calls stay {:?}'s).",
        c.session, c.bound, c.named, c.bound
    );
    let mut i = Incident::rule(kind, id, c.bound.clone(), c.at, "records", description);
    i.blueprint = blueprint.to_string();
    i.event_id = format!("session:{}", c.session);
    i.agents = vec![c.bound.clone(), c.named.clone()];
    i
}
