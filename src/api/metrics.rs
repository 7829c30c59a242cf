//! `/metrics`: the daemon's counters in the Prometheus / OpenMetrics text format (prometheus-client).
//! Labels are small fixed sets (kind, type, severity, command, origin, sink); never an agent id.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::AppState;
use crate::blueprint::Severity;
use crate::response::IncidentType;
use crate::telemetry::{Live, Metrics, BAD_EVENT_KINDS};

/// Content type of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Reads the live counters at each scrape.
#[derive(Debug)]
struct Figures {
    live: Arc<Live>,
    version: &'static str,
}

fn counter(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    let m = e.encode_descriptor(name, help, None, c.metric_type())?;
    c.encode(m)
}

fn gauge(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: i64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    let m = e.encode_descriptor(name, help, None, g.metric_type())?;
    g.encode(m)
}

fn labelled<const N: usize>(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    is_counter: bool,
    rows: &[([(&str, &str); N], u64)],
) -> std::fmt::Result {
    let kind = if is_counter {
        MetricType::Counter
    } else {
        MetricType::Gauge
    };
    let mut f = e.encode_descriptor(name, help, None, kind)?;
    for (labels, v) in rows {
        let m = f.encode_family(labels)?;
        if is_counter {
            ConstCounter::new(*v).encode(m)?;
        } else {
            ConstGauge::new(*v as i64).encode(m)?;
        }
    }
    Ok(())
}

/// One row of a family with a single label: its (name, value) pair and the figure.
type Row<'a> = ([(&'a str, &'a str); 1], u64);

/// A counter's current value.
fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// Rows labelled `key` = each of `labels`, paired in order with the counters in `values`.
fn rows_by<'a>(
    key: &'a str,
    labels: impl IntoIterator<Item = &'a str>,
    values: &[AtomicU64],
) -> Vec<Row<'a>> {
    labels
        .into_iter()
        .zip(values)
        .map(|(l, v)| ([(key, l)], get(v)))
        .collect()
}

impl Collector for Figures {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let m = &self.live.metrics;
        encode_events(&mut e, m)?;
        encode_incidents(&mut e, m)?;
        encode_commands(&mut e, m)?;
        encode_processing(&mut e, m)?;
        encode_sinks(&mut e, m)?;
        encode_email(&mut e, m)?;
        encode_consumer(&mut e, m)?;
        self.encode_state(&mut e)
    }
}

/// The audit events read: consumed, re-delivered, conflicting, explained by a fleet shift,
/// malformed.
fn encode_events(e: &mut DescriptorEncoder<'_>, m: &Metrics) -> std::fmt::Result {
    counter(
        e,
        "guardian_events_consumed",
        "Audit events consumed and processed.",
        get(&m.events),
    )?;
    counter(
        e,
        "guardian_duplicate_events",
        "Audit events delivered again (the same identity and content within the duplicate horizon): dropped, nothing else changed.",
        get(&m.duplicates),
    )?;
    counter(
        e,
        "guardian_binding_conflicts",
        "Audit events whose identity was seen before with other content: processed (a forged record cannot hide a real one), and counted.",
        get(&m.id_conflicts),
    )?;
    gauge(
        e,
        "guardian_duplicate_identities",
        "Event identities remembered for dropping re-deliveries, over the owned partitions.",
        get(&m.duplicate_identities) as i64,
    )?;
    counter(
        e,
        "guardian_findings_explained",
        "Findings explained by a fleet shift of their agent's cohort: no incident, no kill weight.",
        get(&m.findings_explained),
    )?;
    gauge(
        e,
        "guardian_fleet_shifts",
        "Fleet shifts going on in the owned partitions (one per cohort, partition and kind).",
        get(&m.fleet_shifts) as i64,
    )?;
    labelled(
        e,
        "guardian_bad_events",
        "Malformed audit events sent to the dead-letter topic, by error kind.",
        true,
        &rows_by("kind", BAD_EVENT_KINDS, &m.bad_by_kind),
    )
}

/// The incidents emitted and the kills they led to: sent, refused connections of the API that
/// sends them, suppressed, and the partitions still learning (where nothing is killed).
fn encode_incidents(e: &mut DescriptorEncoder<'_>, m: &Metrics) -> std::fmt::Result {
    let mut inc = Vec::new();
    for (t, row) in IncidentType::ALL.iter().zip(&m.incidents_by) {
        for (s, v) in Severity::ALL.iter().zip(row) {
            inc.push(([("type", t.as_str()), ("severity", s.as_str())], get(v)));
        }
    }
    labelled(
        e,
        "guardian_incidents",
        "Incidents emitted, by type and severity.",
        true,
        &inc,
    )?;
    labelled(
        e,
        "guardian_commands_sent",
        "Control commands published: automatic kills, and kills and revives through the admin API.",
        true,
        &[
            (
                [("command", "kill"), ("origin", "auto")],
                get(&m.kill_commands),
            ),
            ([("command", "kill"), ("origin", "api")], get(&m.api_kills)),
            (
                [("command", "revive"), ("origin", "api")],
                get(&m.api_revives),
            ),
        ],
    )?;
    counter(
        e,
        "guardian_api_connections_refused",
        "Admin API connections closed at once because the most connections were open.",
        get(&m.api_connections_refused),
    )?;
    labelled(
        e,
        "guardian_kills_suppressed",
        "Kill decisions not carried out, by reason: monitor mode or dry run, first-deployment learning period, fleet kill budget, allowlist, kills in one cohort.",
        true,
        &rows_by(
            "reason",
            crate::response::Suppression::LABELS,
            &m.kills_suppressed,
        ),
    )?;
    gauge(
        e,
        "guardian_learning_partitions",
        "Owned partitions still in their first-deployment learning period (nothing judged new, nothing killed).",
        get(&m.learning_partitions) as i64,
    )
}

/// The operator commands read from the control topic: applied, pending, rejected.
fn encode_commands(e: &mut DescriptorEncoder<'_>, m: &Metrics) -> std::fmt::Result {
    counter(
        e,
        "guardian_commands_applied",
        "Operator commands applied to agents this instance owns.",
        get(&m.commands_applied),
    )?;
    gauge(
        e,
        "guardian_commands_pending",
        "Operator commands read and waiting for their agent's first event on this instance.",
        get(&m.commands_pending) as i64,
    )?;
    labelled(
        e,
        "guardian_commands_rejected",
        "Control commands rejected, by reason (malformed, unsigned, forged, misaddressed, expired, replayed…).",
        true,
        &rows_by(
            "reason",
            crate::control::REJECTION_KINDS,
            &m.commands_rejected_by,
        ),
    )
}

/// How audit entries were attributed, and what processing wrote: lost dead letters, outputs
/// not sent again, checkpoints, posture snapshots.
fn encode_processing(e: &mut DescriptorEncoder<'_>, m: &Metrics) -> std::fmt::Result {
    labelled(
        e,
        "guardian_audit_entries",
        "Audit entries (OTLP: spans) by how their agent was found: named by the record, resolved from its session or trace, unresolved (the user, session or service stands in), bound (a session binding or agent span, not a tool call), skipped (not a tool call).",
        true,
        &rows_by(
            "result",
            crate::state::Resolution::ALL.iter().map(|r| r.label()),
            &m.identity,
        ),
    )?;
    counter(
        e,
        "guardian_dead_letters_lost",
        "Dead letters the broker refused even cut to their bounded size: recorded in the state's ledger and skipped.",
        get(&m.dead_letters_lost),
    )?;
    counter(
        e,
        "guardian_outputs_suppressed",
        "Outputs not sent again while rebuilding history already reported.",
        get(&m.suppressed),
    )?;
    counter(
        e,
        "guardian_checkpoints",
        "Checkpoints written (state and offsets, then offset commit).",
        get(&m.checkpoints),
    )?;
    counter(
        e,
        "guardian_changelog_records",
        "Changelog records published with the checkpoints (changed agents, sessions, identity chunks, partition metas).",
        get(&m.changelog_records),
    )?;
    counter(
        e,
        "guardian_changelog_restores",
        "Partitions restored from the changelog topic instead of replaying their history.",
        get(&m.changelog_restores),
    )?;
    counter(
        e,
        "guardian_peer_snapshots",
        "Other instances' posture snapshots taken into the fleet view.",
        get(&m.peer_snapshots),
    )?;
    counter(
        e,
        "guardian_peer_snapshots_rejected",
        "Posture topic records refused (unsigned, malformed, or not a snapshot).",
        get(&m.peer_snapshots_rejected),
    )?;
    counter(
        e,
        "guardian_changelog_records_restored",
        "Changelog records read by restores.",
        get(&m.changelog_records_restored),
    )?;
    counter(
        e,
        "guardian_restore_skipped_events",
        "Audit events left out after a restore because their agent's restored state had them already.",
        get(&m.restore_skipped),
    )?;
    counter(
        e,
        "guardian_posture_snapshots",
        "Posture snapshots published.",
        get(&m.posture_snapshots),
    )
}

/// The sinks' figures as of the latest checkpoint: deliveries, failures and drops of the SIEM
/// sinks, and the spool depth of every sink (email included).
fn encode_sinks(e: &mut DescriptorEncoder<'_>, m: &Metrics) -> std::fmt::Result {
    let sinks = m.sinks.lock().map(|s| s.clone()).unwrap_or_default();
    let siem: Vec<_> = sinks.iter().filter(|s| s.name != "email").collect();
    let rows = |f: fn(&crate::sink::SinkStatus) -> u64| -> Vec<Row<'_>> {
        siem.iter()
            .map(|s| ([("sink", s.name.as_str())], f(s)))
            .collect()
    };
    labelled(
        e,
        "guardian_sink_delivered",
        "Records delivered by each SIEM sink.",
        true,
        &rows(|s| s.sent),
    )?;
    labelled(
        e,
        "guardian_sink_failures",
        "Failed delivery attempts of each SIEM sink (retried).",
        true,
        &rows(|s| s.failures),
    )?;
    labelled(
        e,
        "guardian_sink_dropped",
        "Records dropped because a sink's spool was full (when_full = drop_oldest).",
        true,
        &rows(|s| s.dropped),
    )?;
    let depth: Vec<Row<'_>> = sinks
        .iter()
        .map(|s| ([("sink", s.name.as_str())], s.spooled))
        .collect();
    labelled(
        e,
        "guardian_sink_queue_depth",
        "Records waiting in each sink's spool (email included).",
        false,
        &depth,
    )
}

/// The email alerts as of the latest checkpoint: sent, and failures by kind.
fn encode_email(e: &mut DescriptorEncoder<'_>, m: &Metrics) -> std::fmt::Result {
    let email = m.email.lock().ok().and_then(|e| *e).unwrap_or_default();
    counter(
        e,
        "guardian_email_sent",
        "Alert emails sent (a digest counts once).",
        email[0],
    )?;
    labelled(
        e,
        "guardian_email_failures",
        "Email delivery failures: transient (retried) and permanent (dropped).",
        true,
        &[
            ([("kind", "transient")], email[1]),
            ([("kind", "permanent")], email[2]),
        ],
    )
}

/// The Kafka consumption: lag behind the high watermark, the queue to the engine, the
/// partitions owned.
fn encode_consumer(e: &mut DescriptorEncoder<'_>, m: &Metrics) -> std::fmt::Result {
    gauge(
        e,
        "guardian_consumer_lag_messages",
        "Messages behind the high watermark over owned partitions.",
        get(&m.lag) as i64,
    )?;
    gauge(
        e,
        "guardian_engine_queue_depth",
        "Notices waiting between the Kafka sources and the engine.",
        m.queue_depth.load(Ordering::Relaxed) as i64,
    )?;
    gauge(
        e,
        "guardian_partitions_assigned",
        "Audit partitions this instance owns.",
        m.partitions.load(Ordering::Relaxed) as i64,
    )
}

impl Figures {
    /// The state of the owned partitions and of this instance: agents, killed agents, the state's
    /// size on disk, readiness, fleet risk, and the build.
    fn encode_state(&self, e: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let m = &self.live.metrics;
        gauge(
            e,
            "guardian_agents",
            "Agents in the owned partitions.",
            get(&m.agents) as i64,
        )?;
        gauge(
            e,
            "guardian_agents_killed",
            "Killed agents in the owned partitions.",
            get(&m.agents_killed) as i64,
        )?;
        gauge(
            e,
            "guardian_agents_in_memory",
            "Agents whose state is in memory (max_agents_in_memory bounds them).",
            get(&m.agents_in_memory) as i64,
        )?;
        counter(
            e,
            "guardian_agent_states_unloaded",
            "Times an agent's state left memory for the store.",
            get(&m.agents_unloaded),
        )?;
        counter(
            e,
            "guardian_agent_states_loaded",
            "Times an agent's state was read back from the store.",
            get(&m.agents_loaded),
        )?;
        gauge(
            e,
            "guardian_state_size_bytes",
            "Bytes the sled state takes on disk.",
            self.live.store.size_on_disk() as i64,
        )?;
        gauge(
            e,
            "guardian_ready",
            "1 once the state is restored and partitions are assigned.",
            i64::from(m.ready.load(Ordering::Relaxed)),
        )?;
        gauge(
            e,
            "guardian_fleet_risk_score",
            "Fleet risk (0-100) of the latest posture snapshot.",
            get(&m.fleet_risk) as i64,
        )?;
        labelled(
            e,
            "guardian_build_info",
            "Build information.",
            false,
            &[([("version", self.version)], 1)],
        )
    }
}

/// Renders every metric family.
pub fn render(live: &Arc<Live>, version: &'static str) -> String {
    let mut r = Registry::default();
    r.register_collector(Box::new(Figures {
        live: live.clone(),
        version,
    }));
    r.register(
        "guardian_processing_latency_seconds",
        "Time from the consumer handing a batch (up to 1,024 events) to the engine until it is processed.",
        live.metrics.latency.clone(),
    );
    r.register(
        "guardian_event_age_seconds",
        "Age of audit events when the engine takes them: wall clock minus the Kafka message timestamp (CreateTime, set by the agent's producer, so its batching counts; LogAppendTime on topics configured so).",
        live.metrics.event_age.clone(),
    );
    let mut out = String::with_capacity(8192);
    if prometheus_client::encoding::text::encode(&mut out, &r).is_err() {
        out.clear();
    }
    out
}

/// `GET /metrics`.
pub async fn handler(State(s): State<Arc<AppState>>) -> Response {
    let live = s.live.clone();
    let version = s.version;
    let body = tokio::task::spawn_blocking(move || render(&live, version))
        .await
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response()
}
