//! The audit event as the engine sees it, borrowed from the payload it was decoded from.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// Which SDK wrote the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Agent-SPM `Event` (snake_case fields, RFC 3339 timestamp).
    AgentSpm,
    /// AgentShield MCP security-runtime audit entry (camelCase fields, epoch-ms timestamp).
    AgentShield,
    /// An OpenTelemetry span (OTLP), one of a batch (see [`super::otlp`]).
    Otlp,
}

/// Decision recorded by Agent-SPM for a tool call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Outcome {
    /// The call was allowed.
    Allow,
    /// The call was denied by policy.
    Deny,
    /// The call waits for an approval.
    RequireApproval,
    /// The call needs step-up authentication.
    StepUp,
    /// The call needs a ticket reference.
    RequireTicket,
    /// The call needs a human.
    RequireHuman,
    /// An approval was granted.
    Approved,
    /// An approval was refused.
    Rejected,
    /// The SDK's kill switch stopped the call.
    KillSwitch,
    /// The call was rate limited.
    RateLimited,
    /// The call timed out.
    Timeout,
    /// A value this version does not know (kept, not rejected, so a newer SDK is still watched).
    Other,
}

impl Outcome {
    /// Parses the SDK's upper-case spelling; unknown values become [`Outcome::Other`].
    pub fn parse(s: &str) -> Outcome {
        match s {
            "ALLOW" => Outcome::Allow,
            "DENY" => Outcome::Deny,
            "REQUIRE_APPROVAL" => Outcome::RequireApproval,
            "STEP_UP" => Outcome::StepUp,
            "REQUIRE_TICKET" => Outcome::RequireTicket,
            "REQUIRE_HUMAN" => Outcome::RequireHuman,
            "APPROVED" => Outcome::Approved,
            "REJECTED" => Outcome::Rejected,
            "KILL_SWITCH" => Outcome::KillSwitch,
            "RATE_LIMITED" => Outcome::RateLimited,
            "TIMEOUT" => Outcome::Timeout,
            _ => Outcome::Other,
        }
    }

    /// The SDK's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "ALLOW",
            Outcome::Deny => "DENY",
            Outcome::RequireApproval => "REQUIRE_APPROVAL",
            Outcome::StepUp => "STEP_UP",
            Outcome::RequireTicket => "REQUIRE_TICKET",
            Outcome::RequireHuman => "REQUIRE_HUMAN",
            Outcome::Approved => "APPROVED",
            Outcome::Rejected => "REJECTED",
            Outcome::KillSwitch => "KILL_SWITCH",
            Outcome::RateLimited => "RATE_LIMITED",
            Outcome::Timeout => "TIMEOUT",
            Outcome::Other => "OTHER",
        }
    }
}

/// What an audit entry is, for detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A tool call: every Agent-SPM event, and AgentShield's tool entries (`tool_allowed`,
    /// `tool_blocked`, `policy_denied`, `threat_detected`, `output_threat`, `behavior_anomaly`,
    /// or any other type).
    ToolCall,
    /// An AgentShield entry that names the agent of a session (`session_created`,
    /// `session_delegated`): used to attribute the session's tool entries, not a tool call.
    SessionBinding,
    /// Another entry that is not a tool call (`auth_denied`, `runtime_shutdown`, other
    /// `session_*`): skipped by detection, counted.
    NotAToolCall,
}

/// Where an event's agent id came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentSource {
    /// The record names the agent (`agent_id`, `agentId`).
    Named,
    /// AgentShield's `userId`, for want of an agent (until a session binding resolves it).
    User,
    /// AgentShield's `sessionId`, for want of an agent or a user.
    Session,
    /// An OpenTelemetry resource's `service.name`, for want of an agent on the span or its trace.
    Service,
    /// The agent of the span's trace, named by an `invoke_agent` span of the same request.
    Trace,
}

/// One audit event: one tool call (or one runtime audit entry) of one agent.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent<'a> {
    /// SDK format it was decoded from.
    pub format: Format,
    /// The SDK's event id (empty when the SDK gave none).
    pub event_id: Cow<'a, str>,
    /// Event time in milliseconds since the Unix epoch (UTC).
    pub ts_ms: i64,
    /// The agent that acted.
    pub agent_id: Cow<'a, str>,
    /// Tool called (empty for entries that are not tool calls).
    pub tool_name: Cow<'a, str>,
    /// Agent-SPM outcome; `None` for formats without one.
    pub outcome: Option<Outcome>,
    /// Deployment environment, when the SDK reports one.
    pub environment: Option<Cow<'a, str>>,
    /// Value of the configured group field, used to assign blueprints.
    pub group: Option<Cow<'a, str>>,
    /// Data volume of the call in bytes, from the configured field; `None` when not reported.
    pub bytes: Option<f64>,
    /// What the entry is.
    pub kind: EntryKind,
    /// Where `agent_id` came from.
    pub agent_source: AgentSource,
    /// AgentShield's `userId`, when given.
    pub user: Option<Cow<'a, str>>,
    /// AgentShield's `sessionId`, when given.
    pub session: Option<Cow<'a, str>>,
    /// The session a `session_delegated` entry continues (`parentSessionId`), when given.
    pub parent_session: Option<Cow<'a, str>>,
}

impl<'a> AuditEvent<'a> {
    /// An Agent-SPM tool call of `agent` at `ts` (ms) with nothing else known: no outcome,
    /// environment, group, bytes, user or session.
    pub fn tool_call(
        agent: impl Into<Cow<'a, str>>,
        event_id: impl Into<Cow<'a, str>>,
        ts: i64,
        tool: impl Into<Cow<'a, str>>,
    ) -> AuditEvent<'a> {
        AuditEvent {
            format: Format::AgentSpm,
            event_id: event_id.into(),
            ts_ms: ts,
            agent_id: agent.into(),
            tool_name: tool.into(),
            outcome: None,
            environment: None,
            group: None,
            bytes: None,
            kind: EntryKind::ToolCall,
            agent_source: AgentSource::Named,
            user: None,
            session: None,
            parent_session: None,
        }
    }
}

impl AuditEvent<'_> {
    /// The event with its strings owned, free of the buffer it was decoded from.
    pub fn into_owned(self) -> AuditEvent<'static> {
        fn own(c: Cow<'_, str>) -> Cow<'static, str> {
            Cow::Owned(c.into_owned())
        }
        AuditEvent {
            format: self.format,
            event_id: own(self.event_id),
            ts_ms: self.ts_ms,
            agent_id: own(self.agent_id),
            tool_name: own(self.tool_name),
            outcome: self.outcome,
            environment: self.environment.map(own),
            group: self.group.map(own),
            bytes: self.bytes,
            kind: self.kind,
            agent_source: self.agent_source,
            user: self.user.map(own),
            session: self.session.map(own),
            parent_session: self.parent_session.map(own),
        }
    }

    /// The Kafka key that keeps the records of one agent together: the agent id, except for
    /// AgentShield entries, whose tool calls do not name their agent: the user (else the
    /// session), so a session's binding and its calls reach the same partition; and for spans
    /// whose agent is not known (not named, not in their request): their trace.
    pub fn partition_key(&self) -> &str {
        match self.format {
            Format::AgentSpm => &self.agent_id,
            Format::AgentShield => self
                .user
                .as_deref()
                .or(self.session.as_deref())
                .unwrap_or(&self.agent_id),
            Format::Otlp
                if !matches!(self.agent_source, AgentSource::Named | AgentSource::Trace) =>
            {
                self.session.as_deref().unwrap_or(&self.agent_id)
            }
            Format::Otlp => &self.agent_id,
        }
    }
}

/// A stable 64-bit FNV-1a hash of a tool name (never 0, which stands for the `*` wildcard).
pub fn tool_hash(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.max(1)
}
