//! How spans are read (`[otlp]` in the configuration).

use serde::{Deserialize, Serialize};

/// How spans are read: which attributes name the agent, and where the data volume is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpOptions {
    /// Span attributes naming the agent, the first present wins.
    pub agent_attributes: Vec<String>,
    /// Whether a span whose agent is named neither on it nor on its trace takes the resource's
    /// `service.name` (else the trace id).
    pub service_name_fallback: bool,
    /// Span attribute holding the call's data volume in bytes (none by default).
    pub volume_attribute: Option<String>,
    /// Attribute holding the agent's group for blueprint assignment rules, on the span or its
    /// resource (none by default; the assignment's `group_field` is a JSON pointer into events
    /// and does not apply to spans).
    pub group_attribute: Option<String>,
}

impl Default for OtlpOptions {
    fn default() -> Self {
        OtlpOptions {
            agent_attributes: vec!["gen_ai.agent.id".into(), "gen_ai.agent.name".into()],
            service_name_fallback: true,
            volume_attribute: None,
            group_attribute: None,
        }
    }
}
