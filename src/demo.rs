//! `guardian demo`: the real daemon pipeline against librdkafka's in-process mock cluster.
//!
//! Layer: uses `app`, `sink`, `config`, `kafka`, `posture`, `control`, `response`, `blueprint`, `event`.
//!
//! A scripted finance fleet (20 well-behaved agents over seven working days, the shipped
//! blueprints' learning period, and one rogue agent on the last day) is produced onto the audit
//! topic, with two malformed lines and one forged kill command. The daemon consumes it, and the
//! demo reads back the incidents, kill commands and dead letters.

use crate::kafka::read_all;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;

use crate::app::Daemon;
use crate::blueprint::{Assignment, BlueprintSet};
use crate::config::{Backfill, Config, KafkaConfig, Resolved};
use crate::control::{Command, Verb};
use crate::event::format_rfc3339_ms;
use crate::response::Incident;
use crate::sink::kafka::{KafkaSink, OutputTopics as _};

/// Signing key of the demo (never use a literal key in production).
pub const DEMO_KEY: &[u8] = b"demo-signing-key-not-for-production";

/// What the demo observed.
#[derive(Debug, Default)]
pub struct DemoReport {
    /// Audit messages produced (including malformed ones).
    pub produced: usize,
    /// Incidents read back from the incidents topic.
    pub incidents: Vec<Incident>,
    /// Kill commands read back from the control topic (signature verified).
    pub kills: Vec<Command>,
    /// Dead letters: (reason header, payload).
    pub dead_letters: Vec<(String, String)>,
    /// Events the daemon processed.
    pub events: u64,
    /// Wall time of the daemon run.
    pub elapsed: Duration,
}

/// The scripted audit stream: (agent id, JSON line) in event-time order. Seven working days of
/// ordinary work from Monday 2026-02-23 (the learning period of the shipped blueprints: what
/// the guard learns from), then the rogue agent on Tuesday 2026-03-03.
pub fn script() -> Vec<(String, String)> {
    // Monday 2026-02-23; New York is UTC-5 then.
    let day0 = 1_771_804_800_000i64 + 5 * 3_600_000;
    let days = [0, 1, 2, 3, 4, 7, 8];
    let tools = [
        "read_ledger",
        "query_customer_db",
        "generate_report",
        "reconcile_accounts",
    ];
    let mut evs: Vec<(i64, String, &str, u64)> = Vec::new();
    for d in days {
        for a in 0..20u64 {
            let agent = format!("fin-agent-{a:02}");
            // One call every 4 to 7 minutes from 09:00 to 17:00 local.
            let mut t = day0 + d * 86_400_000 + 9 * 3_600_000 + (a as i64) * 11_000;
            let mut i = a;
            while t < day0 + d * 86_400_000 + 17 * 3_600_000 {
                evs.push((
                    t,
                    agent.clone(),
                    tools[(i % 4) as usize],
                    2_000 + (i * 37) % 5_000,
                ));
                i += 1;
                t += 240_000 + ((i * 7919) % 180) as i64 * 1000;
            }
        }
    }
    let rogue = "fin-agent-rogue";
    let t = day0 + 8 * 86_400_000 + 10 * 3_600_000; // Tuesday 2026-03-03 10:00 local
    let mut r = |at: i64, tool: &'static str, bytes: u64| evs.push((at, rogue.into(), tool, bytes));
    r(t - 3_600_000, "read_ledger", 3_000);
    r(t, "query_customer_db", 40_000);
    r(t + 120_000, "send_email", 8_000);
    r(t + 300_000, "trigger_payment", 1_000);
    r(t + 310_000, "trigger_payment", 1_000);
    for k in 0..45 {
        r(t + 360_000 + k * 500, "query_customer_db", 2_000);
    }
    r(t + 600_000, "export_data", 80_000_000);
    r(t + 1_200_000, "query_customer_db", 2_000);
    evs.sort_by_key(|e| e.0);
    evs.into_iter()
        .enumerate()
        .map(|(n, (ts, agent, tool, bytes))| {
            let line = serde_json::json!({
                "event_id": format!("demo-{n}"),
                "timestamp": format_rfc3339_ms(ts),
                "request_id": format!("req-{n}"),
                "agent_id": agent,
                "tool_name": tool,
                "outcome": "ALLOW",
                "reasons": [],
                "safe_payload": {"agent_id": agent, "tool_name": tool, "environment": "prod",
                                 "outcome": "ALLOW", "bytes": bytes, "team": "finance"},
            })
            .to_string();
            (agent, line)
        })
        .collect()
}

/// The demo's daemon configuration: fast checkpoints, history emitted, the demo key.
pub fn local_config(
    kafka: KafkaConfig,
    state_dir: &std::path::Path,
    blueprints: Arc<BlueprintSet>,
) -> Resolved {
    Resolved {
        signing_key: DEMO_KEY.to_vec(),
        previous_signing_keys: Vec::new(),
        command_ttl: Duration::from_millis(crate::control::DEFAULT_TTL_MS as u64),
        kafka_options: [(
            "consumer.session.timeout.ms".to_string(),
            "6000".to_string(),
        )]
        .into(),
        checkpoint_interval: Duration::from_millis(200),
        shutdown_timeout: Duration::from_secs(20),
        max_future: Duration::from_secs(300),
        duplicates: crate::state::SeenSettings::default(),
        blueprints,
        posture: crate::posture::PostureSettings::default(),
        api: None,
        config: Config {
            guardian_id: "guardian-demo-1".into(),
            kafka,
            state_dir: state_dir.to_path_buf(),
            checkpoint_interval: "200ms".into(),
            backfill: Backfill::Emit,
            ..Config::default()
        },
    }
}

/// The shipped blueprints with the example assignment of `deploy/assignment.json`.
pub fn demo_blueprints() -> anyhow::Result<Arc<BlueprintSet>> {
    let assignment: serde_json::Value =
        serde_json::from_str(include_str!("../deploy/assignment.json"))?;
    let assignment = Assignment::from_json(&assignment).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(Arc::new(BlueprintSet::from_blueprints(
        BlueprintSet::builtin().blueprints().to_vec(),
        assignment,
    )?))
}

/// The demo blueprints with no first-deployment learning period: a guard that has learned its
/// fleet already (for tests of the pipeline that feed short streams with no history).
pub fn demo_blueprints_learned() -> anyhow::Result<Arc<BlueprintSet>> {
    let set = demo_blueprints()?;
    let blueprints = set
        .blueprints()
        .iter()
        .cloned()
        .map(|mut b| {
            b.learned.learning_period_ms = 0;
            b
        })
        .collect();
    Ok(Arc::new(BlueprintSet::from_blueprints(
        blueprints,
        set.assignment().clone(),
    )?))
}

/// Produces the scenario onto the audit topic, two malformed lines, and a forged kill command
/// onto the control topic; returns how many audit messages went out.
fn produce_scenario(brokers: &str, kafka: &KafkaConfig) -> anyhow::Result<usize> {
    let mut producer = KafkaSink::new(brokers, &Default::default())?;
    let mut produced = 0;
    for (agent, line) in script() {
        producer.send(
            &kafka.audit_topics[0],
            Some(agent.as_bytes()),
            line.as_bytes(),
            None,
        )?;
        produced += 1;
    }
    for bad in [
        &b"{\"agent_id\": \"fin-agent-03\", \"timestamp\": \"yesterday\"}"[..],
        &b"not json at all"[..],
    ] {
        producer.send(&kafka.audit_topics[0], None, bad, None)?;
        produced += 1;
    }
    let forged = Command::manual(
        Verb::Kill,
        "fin-agent-07",
        "forged",
        1_772_500_000_000,
        "mallory",
    )
    .sign(b"not-the-guardian-key-0000")?;
    producer.send(&kafka.control_topic, None, &forged.to_json()?, None)?;
    producer.settle(Duration::from_secs(10))?;
    Ok(produced)
}

/// Runs the demo end to end; `state_dir` holds the daemon's sled state.
pub fn run(state_dir: &std::path::Path) -> anyhow::Result<DemoReport> {
    let cluster = MockCluster::new(1)?;
    let brokers = cluster.bootstrap_servers();
    let kafka = KafkaConfig {
        brokers: brokers.clone(),
        group_id: "guardian-demo".into(),
        audit_topics: vec!["agent-audit".into()],
        ..KafkaConfig::default()
    };
    cluster.create_topic(&kafka.audit_topics[0], 3, 1)?;
    for t in [
        &kafka.control_topic,
        &kafka.incidents_topic,
        &kafka.dead_letter_topic,
        "guardian-posture",
    ] {
        cluster.create_topic(t, 1, 1)?;
    }
    let blueprints = demo_blueprints()?;

    let produced = produce_scenario(&brokers, &kafka)?;

    let resolved = local_config(kafka, state_dir, blueprints);
    let config = resolved.config.clone();
    let started = Instant::now();
    let daemon = Daemon::start(resolved)?;
    let deadline = started + Duration::from_secs(60);
    loop {
        let m = &daemon.metrics;
        let seen = m.events.load(Ordering::Relaxed) + m.bad_events.load(Ordering::Relaxed);
        if (seen as usize >= produced && m.commands_rejected.load(Ordering::Relaxed) >= 1)
            || Instant::now() > deadline
            || daemon.is_finished()
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let events = daemon.metrics.events.load(Ordering::Relaxed);
    daemon.shutdown();
    daemon.join(Duration::from_secs(20))?;
    let elapsed = started.elapsed();

    let k = &config.kafka;
    let incidents = read_all(&brokers, &k.incidents_topic)
        .into_iter()
        .filter_map(|(_, p)| serde_json::from_slice(&p).ok())
        .collect();
    let kills = read_all(&brokers, &k.control_topic)
        .into_iter()
        .filter_map(|(_, p)| Command::parse_verified(&p, &[DEMO_KEY]).ok())
        .collect();
    let dead_letters = read_all(&brokers, &k.dead_letter_topic)
        .into_iter()
        .map(|(r, p)| {
            (
                r.unwrap_or_default(),
                String::from_utf8_lossy(&p).into_owned(),
            )
        })
        .collect();
    Ok(DemoReport {
        produced,
        incidents,
        kills,
        dead_letters,
        events,
        elapsed,
    })
}
