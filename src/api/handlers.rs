//! JSON handlers of the admin API.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::AppState;
use crate::blueprint::Severity;
use crate::control::{Command, Verb};
use crate::event::parse_rfc3339_ms;
use crate::posture::instances::{
    merge, owner_of, Across, InstanceRow, Local, OwnedRow, PartitionRow, Peer,
};
use crate::posture::{inventory, merge_by_agent, Framework};
use crate::response::IncidentType;
use crate::store::IncidentFilter;
use crate::telemetry::CachedView;
use crate::text::Shown;

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({ "error": msg.into() }))).into_response()
}

/// A bad query parameter (400 with the reason).
struct BadRequest(String);

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        error(StatusCode::BAD_REQUEST, self.0)
    }
}

/// Runs a state-store read off the async threads; failures become 500s.
async fn blocking<T: Send + 'static, E: std::fmt::Display + Send + 'static>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, Response> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

/// The fleet view to answer from: the posture thread's latest, or computed now when there is
/// none yet, or when a checkpoint was written since and the fleet is small enough to compute it
/// again at once ([`crate::telemetry::RECOMPUTE_BELOW`]).
async fn fleet(s: &Arc<AppState>) -> Result<Arc<CachedView>, Response> {
    if let Some(v) = s.live.current_view() {
        return Ok(v);
    }
    let (live, set, settings) = (s.live.clone(), s.blueprints.clone(), s.posture.clone());
    blocking(move || live.refresh_view(&set, &settings)).await
}

/// `GET /readyz`: 200 once the state is restored and partitions are assigned, else 503.
pub async fn readyz(State(s): State<Arc<AppState>>) -> Response {
    let m = &s.live.metrics;
    let ready = m.ready.load(std::sync::atomic::Ordering::Relaxed);
    let body = Json(json!({
        "ready": ready,
        "partitions": m.partitions.load(std::sync::atomic::Ordering::Relaxed),
    }));
    if ready {
        (StatusCode::OK, body).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

/// Query of `GET /agents`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentsQuery {
    status: Option<String>,
    blueprint: Option<String>,
    min_risk: Option<u8>,
    limit: Option<usize>,
}

/// `GET /agents`: the inventory rows, riskiest first.
pub async fn agents(State(s): State<Arc<AppState>>, q: Query<AgentsQuery>) -> Response {
    let v = match fleet(&s).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if let Some(st) = &q.status {
        if !["active", "killed", "revived"].contains(&st.as_str()) {
            return error(
                StatusCode::BAD_REQUEST,
                format!("status {st:?}: expected active, killed or revived"),
            );
        }
    }
    let p = &v.view.posture;
    let rows: Vec<_> = p
        .agents
        .iter()
        .filter(|a| q.status.as_deref().is_none_or(|st| a.status.as_str() == st))
        .filter(|a| q.blueprint.as_deref().is_none_or(|b| a.blueprint == b))
        .filter(|a| q.min_risk.is_none_or(|m| a.risk >= m))
        .take(q.limit.unwrap_or(1000))
        .collect();
    Json(json!({ "as_of": p.as_of, "count": rows.len(), "agents": rows })).into_response()
}

/// `GET /agents/{id}`: status, tools, baseline summary, risk, recent incidents. The agent's
/// state is read by key in each owned partition (as of the latest checkpoint); the fleet's time
/// comes from the fleet view.
pub async fn agent(State(s): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let fleet_as_of = match fleet(&s).await {
        Ok(v) => v.view.posture.as_of_ms,
        Err(r) => return r,
    };
    let live = s.live.clone();
    let wanted = id.clone();
    let found = match blocking(move || {
        let mut states = Vec::new();
        for (topic, partition) in live.owned() {
            states.extend(live.store.agent(&topic, partition, &wanted)?);
        }
        Ok::<_, crate::store::StoreError>(merge_by_agent(states))
    })
    .await
    {
        Ok(f) => f,
        Err(r) => return r,
    };
    let a = found.first().map(|st| {
        let now = fleet_as_of.max(st.last_seen);
        inventory::view(st, &s.blueprints, &s.posture, now)
    });
    let Some(a) = a else {
        return elsewhere(&s, &id);
    };
    let live = s.live.clone();
    let filter = IncidentFilter {
        agent: Some(id),
        limit: 50,
        ..IncidentFilter::default()
    };
    match blocking(move || live.store.incidents(&filter)).await {
        Ok(recent) => Json(json!({ "agent": a, "recent_incidents": recent })).into_response(),
        Err(r) => r,
    }
}

/// The answer for an agent this instance does not hold: 404, naming the instance that owns its
/// partition when another instance's snapshot lists it.
fn elsewhere(s: &AppState, id: &str) -> Response {
    let peers = s.live.peers();
    let peers: Vec<&Peer> = peers.iter().map(AsRef::as_ref).collect();
    match owner_of(id, &s.live.owned(), &peers) {
        Some((owner, topic, partition)) => (
            StatusCode::NOT_FOUND,
            Json(json!({
                "error": format!("agent {id:?} is in partition {topic}/{partition}, owned by instance {owner:?}: ask its admin API"),
                "owner": { "guardian_id": owner, "topic": topic, "partition": partition },
            })),
        )
            .into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no agent {id:?} in the partitions this instance owns, nor in the other instances' snapshots"),
        ),
    }
}

/// Query of `GET /incidents`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentsQuery {
    agent: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    severity: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<usize>,
}

/// A time given as RFC 3339 or epoch milliseconds.
fn time_arg(name: &str, v: &str) -> Result<i64, BadRequest> {
    v.parse::<i64>()
        .ok()
        .or_else(|| parse_rfc3339_ms(v))
        .ok_or_else(|| {
            BadRequest(format!(
                "{name}: {v:?} is neither RFC 3339 nor epoch milliseconds"
            ))
        })
}

fn incident_filter(q: &IncidentsQuery) -> Result<IncidentFilter, BadRequest> {
    let kind = match &q.kind {
        None => None,
        Some(t) => Some(
            IncidentType::ALL
                .into_iter()
                .find(|x| x.as_str() == t)
                .ok_or_else(|| {
                    let all: Vec<_> = IncidentType::ALL.iter().map(|x| x.as_str()).collect();
                    BadRequest(format!("type {t:?}: expected one of {}", all.join(", ")))
                })?,
        ),
    };
    let min_severity = match &q.severity {
        None => None,
        Some(v) => Some(Severity::parse(v).ok_or_else(|| {
            BadRequest(format!(
                "severity {v:?}: expected low, medium, high or critical"
            ))
        })?),
    };
    Ok(IncidentFilter {
        agent: q.agent.clone(),
        kind,
        min_severity,
        since: q
            .since
            .as_deref()
            .map(|v| time_arg("since", v))
            .transpose()?,
        until: q
            .until
            .as_deref()
            .map(|v| time_arg("until", v))
            .transpose()?,
        limit: q.limit.unwrap_or(100).min(10_000),
    })
}

/// `GET /incidents?agent=&type=&severity=&since=&until=&limit=`: newest first.
pub async fn incidents(State(s): State<Arc<AppState>>, q: Query<IncidentsQuery>) -> Response {
    let filter = match incident_filter(&q) {
        Ok(f) => f,
        Err(r) => return r.into_response(),
    };
    let live = s.live.clone();
    match blocking(move || live.store.incidents(&filter)).await {
        Ok(v) => Json(json!({ "count": v.len(), "incidents": v })).into_response(),
        Err(r) => r,
    }
}

/// Query of `GET /posture`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostureQuery {
    #[serde(default)]
    agents: bool,
}

/// The whole fleet: this instance's view merged with the other instances' latest snapshots.
fn across(s: &AppState, v: &CachedView) -> Across {
    let peers = s.live.peers();
    let peers: Vec<&Peer> = peers.iter().map(AsRef::as_ref).collect();
    let owned = s.live.owned();
    let local = Local {
        view: &v.view,
        guardian_id: &s.live.guardian_id,
        owned: &owned,
        computed_at: v.computed_at,
    };
    merge(
        local,
        &peers,
        &s.blueprints,
        chrono::Utc::now().timestamp_millis(),
    )
}

/// `GET /posture[?agents=true]`: the whole fleet's score, counts and top risks (this instance's
/// partitions and the other instances' latest snapshots), the instances and the owner of each
/// partition; this instance's tools (and its agents' rows).
pub async fn posture(State(s): State<Arc<AppState>>, q: Query<PostureQuery>) -> Response {
    let v = match fleet(&s).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let p = &v.view.posture;
    let all = across(&s, &v);
    let doc = PostureDoc {
        as_of: &all.as_of,
        as_of_ms: all.as_of_ms,
        fleet: &all.fleet,
        top_risks: &all.top_risks,
        instances: &all.instances,
        partitions: &all.partitions,
        tools: &p.tools,
        agents: q.agents.then_some(&p.agents),
        computed_at: crate::event::format_rfc3339_ms(v.computed_at),
    };
    Json(doc).into_response()
}

/// `GET /compliance`: each framework's summary.
pub async fn compliance_list(State(s): State<Arc<AppState>>) -> Response {
    let v = match fleet(&s).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let list: Vec<Value> = v
        .view
        .compliance
        .iter()
        .map(|r| json!({ "framework": r.framework, "title": r.title, "summary": r.summary }))
        .collect();
    Json(json!({ "as_of": v.view.posture.as_of, "frameworks": list })).into_response()
}

/// `GET /compliance/{framework}`: every control with its status, evidence and gaps.
pub async fn compliance(State(s): State<Arc<AppState>>, Path(f): Path<String>) -> Response {
    let Some(fw) = Framework::parse(&f) else {
        let all: Vec<_> = Framework::ALL.iter().map(|f| f.id()).collect();
        return error(
            StatusCode::NOT_FOUND,
            format!("framework {f:?}: expected one of {}", all.join(", ")),
        );
    };
    let v = match fleet(&s).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    match v.view.compliance(fw) {
        Some(r) => Json(r).into_response(),
        None => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no report for the framework",
        ),
    }
}

/// The body of `GET /posture`: the whole fleet's posture, this instance's tools (and agents'
/// rows, when asked), and when this instance's view was computed.
#[derive(serde::Serialize)]
struct PostureDoc<'a> {
    as_of: &'a str,
    as_of_ms: i64,
    fleet: &'a crate::posture::report::Fleet,
    top_risks: &'a [OwnedRow],
    instances: &'a [InstanceRow],
    partitions: &'a [PartitionRow],
    tools: &'a [crate::posture::report::ToolRow],
    #[serde(skip_serializing_if = "Option::is_none")]
    agents: Option<&'a Vec<crate::posture::report::AgentRow>>,
    computed_at: String,
}

/// Body of the command endpoints.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandBody {
    reason: Option<String>,
}

async fn command(s: Arc<AppState>, verb: Verb, id: String, body: Bytes) -> Response {
    if let Err(e) = Command::check_request(&id, "") {
        return error(StatusCode::BAD_REQUEST, e.to_string());
    }
    let body: CommandBody = if body.iter().all(u8::is_ascii_whitespace) {
        CommandBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("body: expected {{\"reason\": \"…\"}} ({e})"),
                )
            }
        }
    };
    let reason = body
        .reason
        .unwrap_or_else(|| "operator decision (admin API)".into());
    if let Err(e) = Command::check_request(&id, &reason) {
        return error(StatusCode::PAYLOAD_TOO_LARGE, e.to_string());
    }
    let s2 = s.clone();
    let r = tokio::task::spawn_blocking(move || match &s2.commander {
        Some(c) => c.publish(verb, &id, &reason).map(Some),
        None => Ok(None),
    })
    .await;
    match r {
        Ok(Ok(Some(cmd))) => {
            let m = &s.live.metrics;
            let counter = match verb {
                Verb::Kill => &m.api_kills,
                Verb::Revive => &m.api_revives,
            };
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(agent = %Shown(&cmd.agent_id), command = ?cmd.command, command_id = %cmd.command_id, "command published through the admin API");
            (StatusCode::ACCEPTED, Json(Published { published: &cmd })).into_response()
        }
        Ok(Ok(None)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this API cannot publish commands",
        ),
        Ok(Err(e)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("control topic: {e}"),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The answer to a published command.
#[derive(serde::Serialize)]
struct Published<'a> {
    published: &'a crate::control::Command,
}

/// `POST /agents/{id}/kill` with `{"reason": "…"}`: a signed kill command on the control topic.
pub async fn kill(State(s): State<Arc<AppState>>, Path(id): Path<String>, body: Bytes) -> Response {
    command(s, Verb::Kill, id, body).await
}

/// `POST /agents/{id}/revive` with `{"reason": "…"}`: a signed revive command.
pub async fn revive(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    command(s, Verb::Revive, id, body).await
}
