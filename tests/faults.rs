//! Faults of the parts around the daemon, each ending in the documented way: the daemon stops
//! with a non-zero exit and one error line naming the cause, never a hang or a silent loss.
//! (The broker being down when `POST /agents/{id}/kill` is called is in `tests/api.rs`: a 503
//! within the deadline.)

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent_guardian::app::Daemon;
use agent_guardian::config::KafkaConfig;
use agent_guardian::demo;
use agent_guardian::event::format_rfc3339_ms;
use agent_guardian::sink::kafka::{KafkaSink, OutputTopics as _};
use rdkafka::mocking::MockCluster;

const BIN: &str = env!("CARGO_BIN_EXE_guardian");

fn cluster() -> (
    MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    KafkaConfig,
) {
    let c = MockCluster::new(1).expect("mock cluster");
    let k = KafkaConfig {
        brokers: c.bootstrap_servers(),
        group_id: "faults".into(),
        audit_topics: vec!["audit".into()],
        ..KafkaConfig::default()
    };
    c.create_topic("audit", 1, 1).expect("topic");
    for t in [&k.control_topic, &k.incidents_topic, &k.dead_letter_topic] {
        c.create_topic(t, 1, 1).expect("topic");
    }
    (c, k)
}

/// `n` calls of one agent, a second apart, from `t0`.
fn produce(k: &KafkaConfig, n: usize, t0: i64) {
    let s = KafkaSink::new(&k.brokers, &Default::default()).expect("producer");
    for i in 0..n {
        let line = serde_json::json!({
            "event_id": format!("f-{t0}-{i}"),
            "timestamp": format_rfc3339_ms(t0 + i as i64 * 1000),
            "agent_id": format!("agent-{:05}", i % 10_000),
            "tool_name": "query_customer_db",
            "outcome": "ALLOW",
        });
        s.send("audit", None, line.to_string().as_bytes(), None)
            .expect("send");
    }
    let mut s = s;
    s.settle(Duration::from_secs(10)).expect("settle");
}

/// The daemon's own ERROR lines (sled and librdkafka log their side of a fault too).
fn error_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("ERROR agent_guardian"))
        .collect()
}

fn config(dir: &Path, brokers: &str, extra: &str) -> std::path::PathBuf {
    let text = format!(
        r#"guardian_id = "faults-1"
state_dir = {state:?}
signing_key = "faults-key-0123456789abcdef"
checkpoint_interval = "100ms"
{extra}
[kafka]
brokers = "{brokers}"
group_id = "faults"
audit_topics = ["audit"]
"#,
        state = dir.join("state"),
    );
    let p = dir.join("guardian.toml");
    std::fs::write(&p, text).expect("config");
    p
}

/// Runs `guardian run` until it exits (or `deadline`), with the shell's `prefix` before it.
fn run(config: &Path, prefix: &str, deadline: Duration) -> (Option<i32>, String) {
    let log = config.with_file_name("daemon.log");
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(format!("{prefix} exec \"$0\" run --config \"$1\""))
        .arg(BIN)
        .arg(config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("guardian run");
    let t = Instant::now();
    let code = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s.code();
        }
        if t.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (code, std::fs::read_to_string(&log).unwrap_or_default())
}

#[test]
fn an_smtp_transport_that_cannot_be_built_fails_the_start_with_one_line() {
    let dir = tempfile::tempdir().expect("dir");
    let cfg = config(
        dir.path(),
        "127.0.0.1:1",
        r#"[email]
server = "smtp.example.com"
security = "starttls"
ca_file = "/nonexistent/smtp-ca.pem"
from = "guardian@example.com"
[[email.routes]]
to = ["soc@example.com"]
"#,
    );
    let (code, log) = run(&cfg, "", Duration::from_secs(60));
    // Found by the configuration check, before anything starts: exit 2, the field and the cause.
    assert_eq!(code, Some(2), "log:\n{log}");
    assert!(
        log.lines().count() <= 2 && log.contains("email.ca_file: /nonexistent/smtp-ca.pem"),
        "{log}"
    );
}

#[test]
fn a_state_store_that_refuses_writes_stops_the_daemon_with_one_line() {
    let (c, k) = cluster();
    let dir = tempfile::tempdir().expect("dir");
    let cfg = config(dir.path(), &c.bootstrap_servers(), "");
    produce(&k, 30_000, 1_764_000_000_000);
    // The disk is full: files may not grow past 1 MiB (and the signal that would kill the
    // process instead of failing the write is ignored, as a daemon's supervisor would).
    let (code, log) = run(
        &cfg,
        "trap '' XFSZ; ulimit -f 1024;",
        Duration::from_secs(120),
    );
    assert_eq!(code, Some(1), "exit {code:?}, log:\n{log}");
    let errors = error_lines(&log);
    assert_eq!(errors.len(), 1, "one error line: {log}");
    assert!(
        errors[0].contains("stopped on a failure")
            && errors[0].contains("thread engine: state store"),
        "{log}"
    );
}

#[test]
fn a_siem_sink_whose_spool_fails_stops_the_daemon_naming_the_sink() {
    let (_c, k) = cluster();
    let dir = tempfile::tempdir().expect("dir");
    let mut cfg = demo::local_config(
        k.clone(),
        dir.path(),
        demo::demo_blueprints_learned().expect("bp"),
    );
    let sink: agent_guardian::sink::SinkConfig = serde_json::from_value(serde_json::json!({
        "name": "cef-file", "type": "file", "path": dir.path().join("cef.log"),
    }))
    .expect("sink");
    cfg.config.sinks = vec![sink];
    let d = Daemon::start(cfg).expect("start");
    // The spool's tree is removed from under the running sink (a corrupted or tampered state).
    d.live
        .store
        .db()
        .drop_tree("spool/cef-file")
        .expect("drop tree");
    produce(&k, 50, 1_764_000_000_000);
    // A line that does not decode: its dead letter is a record for the sink, so the spool is
    // used (by the engine writing it, or by the delivery reading it).
    let s = KafkaSink::new(&k.brokers, &Default::default()).expect("producer");
    s.send("audit", None, b"not an event", None).expect("send");
    let mut s = s;
    s.settle(Duration::from_secs(10)).expect("settle");
    let t = Instant::now();
    while !d.is_finished() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the daemon keeps running with a dead sink"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let e = d.join(Duration::from_secs(30)).expect_err("a failure");
    let msg = e.to_string();
    assert!(
        msg.contains("spool cef-file")
            && (msg.contains("thread engine") || msg.contains("thread sink-cef-file")),
        "{msg}"
    );
}

/// Messages a hostile writer can put on the topics, each of which used to stop the daemon for
/// good (its output was too large to produce, so it exited, and again on every restart): an
/// unsigned control message naming a 1 MiB agent id, and a 1.1 MB audit event. Both end as
/// bounded outputs; the daemon keeps running and goes on detecting.
#[test]
fn oversized_hostile_messages_give_bounded_outputs_and_the_daemon_keeps_running() {
    use rdkafka::message::{Headers, Message};
    let (_c, k) = cluster();
    let dir = tempfile::tempdir().expect("dir");
    let cfg = demo::local_config(
        k.clone(),
        dir.path(),
        demo::demo_blueprints_learned().expect("bp"),
    );
    let d = Daemon::start(cfg).expect("start");
    // A writer that may send large messages (the daemon's own producer keeps librdkafka's 1 MB).
    let big: std::collections::BTreeMap<String, String> =
        [("message.max.bytes".to_string(), "4000000".to_string())].into();
    let s = KafkaSink::new(&k.brokers, &big).expect("producer");
    let forged = serde_json::json!({
        "command": "kill", "command_id": "x", "agent_id": "a".repeat(1 << 20), "reason": "r",
        "incident_ids": [], "issued_at": "2026-03-03T10:00:00Z", "guardian_id": "evil",
        "blueprint": null, "origin": "manual", "signature": "00"
    });
    s.send(
        &k.control_topic,
        Some(b"x"),
        forged.to_string().as_bytes(),
        None,
    )
    .expect("send");
    let huge = format!(
        r#"{{"agent_id":"a","timestamp":"2026-03-03T10:00:00Z","tool_name":"t","pad":"{}"}}"#,
        "x".repeat(1_100_000)
    );
    s.send("audit", Some(b"a"), huge.as_bytes(), None)
        .expect("send");
    let mut s = s;
    s.settle(Duration::from_secs(20)).expect("settle");
    let t = Instant::now();
    while d
        .metrics
        .commands_rejected
        .load(std::sync::atomic::Ordering::Relaxed)
        < 1
        || d.metrics
            .bad_events
            .load(std::sync::atomic::Ordering::Relaxed)
            < 1
    {
        assert!(!d.is_finished(), "the daemon stopped");
        assert!(t.elapsed() < Duration::from_secs(60), "not read");
        std::thread::sleep(Duration::from_millis(50));
    }
    // It goes on: an ordinary event after them is processed.
    produce(&k, 1, 1_772_550_000_000);
    let t = Instant::now();
    while d.metrics.events.load(std::sync::atomic::Ordering::Relaxed) < 1 {
        assert!(!d.is_finished(), "the daemon stopped");
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the next event was not processed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    d.shutdown();
    d.join(Duration::from_secs(30)).expect("a clean stop");
    let dead = agent_guardian::kafka::read_to_end(
        &k.brokers,
        &k.dead_letter_topic,
        1,
        Duration::from_secs(30),
    );
    assert_eq!(dead.len(), 1);
    let m = &dead[0];
    assert_eq!(m.payload().map(<[u8]>::len), Some(512 * 1024));
    let size = m.headers().and_then(|h| {
        h.iter()
            .find(|x| x.key == "guardian.original.size")
            .and_then(|x| x.value.map(|v| String::from_utf8_lossy(v).into_owned()))
    });
    assert_eq!(size, Some(huge.len().to_string()));
    let incidents = agent_guardian::kafka::read_to_end(
        &k.brokers,
        &k.incidents_topic,
        1,
        Duration::from_secs(30),
    );
    let rejected: Vec<serde_json::Value> = incidents
        .iter()
        .filter_map(|m| serde_json::from_slice(m.payload().unwrap_or_default()).ok())
        .filter(|v: &serde_json::Value| v["type"] == "rejected_command")
        .collect();
    assert_eq!(rejected.len(), 1);
    assert!(rejected[0]["agent_id"]
        .as_str()
        .is_some_and(|a| a.len() < 600 && a.ends_with("(1048576 bytes)")));
}

/// A dead letter that the broker refuses even cut to its bounded size (here the producer's
/// `message.max.bytes` is below it) is recorded in the state's ledger, counted and skipped: the
/// daemon neither stops nor retries it, and goes on with the next event.
#[test]
fn a_dead_letter_the_broker_refuses_is_recorded_counted_and_skipped() {
    use std::sync::atomic::Ordering::Relaxed;
    let (_c, k) = cluster();
    let dir = tempfile::tempdir().expect("dir");
    let mut cfg = demo::local_config(
        k.clone(),
        dir.path(),
        demo::demo_blueprints_learned().expect("bp"),
    );
    cfg.kafka_options
        .insert("producer.message.max.bytes".into(), "20000".into());
    let d = Daemon::start(cfg).expect("start");
    let s = KafkaSink::new(&k.brokers, &Default::default()).expect("producer");
    let junk = "not json ".repeat(10_000);
    s.send("audit", Some(b"a"), junk.as_bytes(), None)
        .expect("send");
    let mut s = s;
    s.settle(Duration::from_secs(20)).expect("settle");
    let t = Instant::now();
    while d.metrics.dead_letters_lost.load(Relaxed) < 1 {
        assert!(!d.is_finished(), "the daemon stopped");
        assert!(t.elapsed() < Duration::from_secs(60), "not recorded");
        std::thread::sleep(Duration::from_millis(50));
    }
    produce(&k, 1, 1_772_550_000_000);
    let t = Instant::now();
    while d.metrics.events.load(Relaxed) < 1 {
        assert!(!d.is_finished(), "the daemon stopped");
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the next event was not processed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(d.metrics.bad_events.load(Relaxed), 1);
    d.shutdown();
    d.join(Duration::from_secs(30)).expect("a clean stop");
    let ledger = agent_guardian::store::Store::open(dir.path())
        .expect("store")
        .ledger()
        .expect("ledger");
    assert_eq!(ledger.dead_letters_lost, 1);
    assert_eq!(ledger.lost.len(), 1);
    assert_eq!(ledger.lost[0].source.as_deref(), Some("audit/0@0"));
    assert_eq!(ledger.lost[0].bytes, junk.len());
    assert!(
        ledger.lost[0].reason.contains("too large"),
        "{:?}",
        ledger.lost[0]
    );
}
