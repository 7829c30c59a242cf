//! Labels: what the generator injected (and the negative controls), and the evaluation of a
//! run's incidents against them.

use serde::{Deserialize, Serialize};

use crate::response::{Basis, Incident, IncidentType};

/// Slack after a label's end within which a matching incident still counts (ms).
const SLACK_MS: i64 = 600_000;

/// One injected anomaly, or a negative control (`expect` = `None`: nothing may fire).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Label {
    /// The agent.
    pub agent_id: String,
    /// Incident type expected; `None` for a negative control.
    pub expect: Option<IncidentType>,
    /// Basis expected, when it matters.
    pub basis: Option<Basis>,
    /// Start of the injected activity.
    #[serde(with = "crate::event::rfc3339_serde")]
    pub start: i64,
    /// End of the injected activity.
    #[serde(with = "crate::event::rfc3339_serde")]
    pub end: i64,
    /// What was injected.
    pub note: String,
}

impl Label {
    /// Whether an incident is the one this positive label expects.
    pub fn matches(&self, i: &Incident) -> bool {
        self.expect == Some(i.kind)
            && self.basis.is_none_or(|b| b == i.basis)
            && i.agent_id == self.agent_id
            && i.at >= self.start - 1000
            && i.at <= self.end + SLACK_MS
    }

    /// Whether an incident violates this negative control.
    pub fn violated_by(&self, i: &Incident) -> bool {
        self.expect.is_none()
            && i.agent_id == self.agent_id
            && i.at >= self.start
            && i.at <= self.end
    }
}

/// Precision and recall of a run against the labels.
#[derive(Debug, Clone, Default)]
pub struct Evaluation {
    /// Positive labels.
    pub positives: usize,
    /// Positive labels with at least one matching incident.
    pub found: usize,
    /// Incidents in all.
    pub incidents: usize,
    /// Incidents matching some positive label.
    pub true_incidents: usize,
    /// Positive labels with no matching incident.
    pub missed: Vec<Label>,
    /// Incidents matching no positive label.
    pub false_incidents: Vec<Incident>,
    /// Negative controls with an incident inside, and the incident.
    pub negatives_fired: Vec<(Label, Incident)>,
}

impl Evaluation {
    /// Share of incidents that match an injected anomaly.
    pub fn precision(&self) -> f64 {
        if self.incidents == 0 {
            1.0
        } else {
            self.true_incidents as f64 / self.incidents as f64
        }
    }

    /// Share of injected anomalies found.
    pub fn recall(&self) -> f64 {
        if self.positives == 0 {
            1.0
        } else {
            self.found as f64 / self.positives as f64
        }
    }
}

/// Scores incidents against labels. Baseline findings (facts about what is routine, or seen while
/// learning) are not incidents and are left out.
pub fn evaluate(labels: &[Label], incidents: &[Incident]) -> Evaluation {
    let incidents: Vec<&Incident> = incidents
        .iter()
        .filter(|i| i.kind != IncidentType::Baseline)
        .collect();
    let positives: Vec<&Label> = labels.iter().filter(|l| l.expect.is_some()).collect();
    let mut ev = Evaluation {
        positives: positives.len(),
        incidents: incidents.len(),
        ..Default::default()
    };
    for l in &positives {
        if incidents.iter().any(|i| l.matches(i)) {
            ev.found += 1;
        } else {
            ev.missed.push((*l).clone());
        }
    }
    for i in incidents {
        if positives.iter().any(|l| l.matches(i)) {
            ev.true_incidents += 1;
        } else {
            ev.false_incidents.push(i.clone());
        }
        for l in labels.iter().filter(|l| l.violated_by(i)) {
            ev.negatives_fired.push((l.clone(), (*i).clone()));
        }
    }
    ev
}
