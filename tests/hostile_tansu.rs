//! Hostile input against the real binary on a Tansu broker: what an attacker (or a broken agent)
//! who can write to the audit and control topics can send, and operator commands around stops
//! and crashes. The daemon keeps running, refuses or dead-letters each bad message with its
//! reason, counts it in `/metrics`, still detects, and obeys each operator command once.
//!
//! Run by `scripts/test.sh` (which starts Tansu); skipped without it unless
//! `GUARDIAN_REQUIRE_E2E` is set.

use std::path::Path;
use std::time::Duration;

use agent_guardian::control::{Command, Verb};
use agent_guardian::event::format_rfc3339_ms;
use agent_guardian::sink::kafka::{KafkaSink, OutputTopics as _};

#[path = "support/tansu.rs"]
mod tansu;
use tansu::*;

fn now() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A writer onto the topics that may send large messages (as an attacker's client would).
fn writer(b: &Broker) -> KafkaSink {
    let big = [("message.max.bytes".to_string(), "4000000".to_string())].into();
    KafkaSink::new(&b.addr, &big).expect("producer")
}

fn send(w: &mut KafkaSink, topic: &str, key: &str, payload: &[u8]) {
    w.send(topic, Some(key.as_bytes()), payload, None)
        .expect("send");
    w.settle(Duration::from_secs(30)).expect("acknowledged");
}

fn call(agent: &str, id: &str, ts: i64, tool: &str) -> Vec<u8> {
    serde_json::json!({
        "event_id": id, "timestamp": format_rfc3339_ms(ts), "agent_id": agent,
        "tool_name": tool, "outcome": "ALLOW",
    })
    .to_string()
    .into_bytes()
}

/// The agent's stored state, read with `guardian state inspect` from a stopped daemon.
fn inspect(dir: &Path, agent: &str) -> serde_json::Value {
    let out = guardian()
        .args(["state", "inspect", "--state-dir"])
        .arg(dir.join("state"))
        .arg(agent)
        .output()
        .expect("inspect");
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("json")
}

fn kill_history(v: &serde_json::Value) -> Vec<String> {
    v["state"]["profile"]["kill_history"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e["kind"].as_str().unwrap_or("?").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Every hostile message of the issue, against one running daemon: it keeps running, each is
/// refused or dead-lettered with its reason and counted by reason, and the burst that follows
/// a forged far-future event is still detected.
#[test]
fn hostile_messages_are_refused_with_their_reason_and_counted_and_the_daemon_keeps_detecting() {
    let Some(b) = broker() else { return };
    let prefix = format!("hostile{}", std::process::id());
    b.topics(&prefix, 2);
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let cfg = write_config_with(dir.path(), &b, &prefix, &api_section(port));
    let mut d = Daemon::start(&cfg, port, &dir.path().join("run.log"));
    let (audit, control) = (format!("{prefix}-audit"), format!("{prefix}-control"));
    let mut w = writer(&b);
    let t = now() - 600_000;

    // An agent with a little history, then operator commands around it.
    for i in 0..3 {
        let id = format!("c{i}");
        send(
            &mut w,
            &audit,
            "fin-cmd",
            &call("fin-cmd", &id, t + i * 1000, "read_ledger"),
        );
    }
    d.until("3 events", |d| {
        d.metric("guardian_events_consumed_total") >= 3.0
    });
    operator(&cfg, "kill", "fin-cmd");
    operator(&cfg, "revive", "fin-cmd");
    operator(&cfg, "kill", "fin-cmd");
    d.until("3 commands applied", |d| {
        d.metric("guardian_commands_applied_total") >= 3.0
    });
    let published: Vec<Vec<u8>> = read_topic(&b.addr, &control, 1);
    let first_kill = published[0].clone();
    let first_revive = published[1].clone();
    // Replayed, byte for byte: the first kill and the revive are older than the last command.
    send(&mut w, &control, "fin-cmd", &first_kill);
    send(&mut w, &control, "fin-cmd", &first_revive);
    // Expired: issued two hours ago, valid for a minute.
    let expired = Command::manual(Verb::Revive, "fin-cmd", "old", now() - 7_200_000, "ops")
        .valid_for(now() - 7_200_000, 60_000)
        .sign(KEY.as_bytes())
        .expect("sign");
    send(
        &mut w,
        &control,
        "fin-cmd",
        &expired.to_json().expect("json"),
    );
    // Valid, but its Kafka key names another agent.
    let misaddressed = Command::manual(Verb::Revive, "fin-cmd", "x", now(), "ops")
        .sign(KEY.as_bytes())
        .expect("sign");
    send(
        &mut w,
        &control,
        "fin-other",
        &misaddressed.to_json().expect("json"),
    );
    // Oversized and unsigned: a 1 MiB agent id in the old format.
    let oversized = serde_json::json!({
        "command": "kill", "command_id": "x", "agent_id": "a".repeat(1 << 20), "reason": "r",
        "incident_ids": [], "issued_at": format_rfc3339_ms(now()), "guardian_id": "evil",
        "blueprint": null, "origin": "manual", "signature": ""
    });
    send(&mut w, &control, "x", oversized.to_string().as_bytes());
    // A command with a duplicate key (the second `agent_id` would win in a lax parser).
    let json = String::from_utf8(misaddressed.to_json().expect("json")).expect("utf8");
    let dup = json.replacen("{", "{\"agent_id\":\"fin-victim\",", 1);
    send(&mut w, &control, "fin-cmd", dup.as_bytes());
    // Audit side: a 1.1 MB event, an event with a duplicate `agent_id`, a far-future event.
    let huge = format!(
        r#"{{"agent_id":"fin-burst","timestamp":"{}","tool_name":"t","pad":"{}"}}"#,
        format_rfc3339_ms(t),
        "x".repeat(1_100_000)
    );
    send(&mut w, &audit, "fin-burst", huge.as_bytes());
    let dup_event = format!(
        r#"{{"event_id":"d1","timestamp":"{}","agent_id":"fin-dup","tool_name":"t","outcome":"ALLOW","agent_id":"fin-other"}}"#,
        format_rfc3339_ms(t)
    );
    send(&mut w, &audit, "fin-dup", dup_event.as_bytes());
    let future = call("fin-burst", "f0", 253_402_300_799_000, "read_ledger"); // 9999-12-31
    send(&mut w, &audit, "fin-burst", &future);
    // Then a burst of 100 calls in 10 s, now.
    let start = now() - 20_000;
    for i in 0..100 {
        w.send(
            &audit,
            Some(b"fin-burst"),
            &call(
                "fin-burst",
                &format!("b{i}"),
                start + i * 100,
                "read_ledger",
            ),
            None,
        )
        .expect("send");
    }
    w.settle(Duration::from_secs(30)).expect("acknowledged");

    let refused = [
        "stale",
        "stale",
        "expired",
        "key_mismatch",
        "old_format",
        "malformed",
    ];
    for reason in [
        "stale",
        "expired",
        "key_mismatch",
        "old_format",
        "malformed",
    ] {
        let want = refused.iter().filter(|r| **r == reason).count() as f64;
        let sample = format!("guardian_commands_rejected_total{{reason=\"{reason}\"}}");
        d.until(&sample, |d| d.metric(&sample) >= want);
    }
    for kind in ["oversized", "duplicate_key", "future_timestamp"] {
        let sample = format!("guardian_bad_events_total{{kind=\"{kind}\"}}");
        d.until(&sample, |d| d.metric(&sample) >= 1.0);
    }
    d.until("the burst detected", |d| {
        d.get("/incidents?agent=fin-burst")
            .1
            .contains("frequency_spike")
    });
    d.alive();
    assert_eq!(d.metric("guardian_commands_applied_total"), 3.0);
    d.stop();

    // Every bad event is on the dead-letter topic with its reason.
    let dead = agent_guardian::kafka::read_to_end(
        &b.addr,
        &format!("{prefix}-dlq"),
        1,
        Duration::from_secs(30),
    );
    let kinds: Vec<String> = dead
        .iter()
        .filter_map(|m| {
            use rdkafka::message::{Headers, Message};
            let h = m.headers()?;
            h.iter()
                .find(|x| x.key == "guardian.error.kind")
                .and_then(|x| x.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        })
        .collect();
    for kind in ["oversized", "duplicate_key", "future_timestamp"] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} not in {kinds:?}");
    }
    // The replays did not kill or revive again: killed, by the second kill.
    let st = inspect(dir.path(), "fin-cmd");
    assert_eq!(st["killed"], true);
    assert_eq!(
        kill_history(&st),
        vec!["manual_kill", "revive", "manual_kill"]
    );
}

/// An operator kill is obeyed once whenever it is published: while the daemon is stopped, just
/// before the daemon is killed with SIGKILL, and on an idle fleet (persisted within the
/// checkpoint interval, with no event after it).
#[test]
fn operator_kills_survive_stops_crashes_and_idle_fleets_and_apply_once() {
    let Some(b) = broker() else { return };
    let prefix = format!("durable{}", std::process::id());
    b.topics(&prefix, 2);
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let cfg = write_config_with(dir.path(), &b, &prefix, &api_section(port));
    let audit = format!("{prefix}-audit");
    let mut w = writer(&b);
    let t = now() - 600_000;
    let agents = ["fin-stopped", "fin-crash", "fin-idle"];
    for (n, a) in agents.iter().enumerate() {
        for i in 0..3 {
            let id = format!("{a}-{i}");
            let ts = t + (n as i64 * 10 + i) * 1000;
            send(&mut w, &audit, a, &call(a, &id, ts, "read_ledger"));
        }
    }
    let log = |name: &str| dir.path().join(name);
    let mut d = Daemon::start(&cfg, port, &log("1.log"));
    d.until("9 events", |d| {
        d.metric("guardian_events_consumed_total") >= 9.0
    });
    d.stop();

    // 1. Published while the daemon is stopped.
    operator(&cfg, "kill", "fin-stopped");
    let mut d = Daemon::start(&cfg, port, &log("2.log"));
    d.until("the kill read while stopped applied", |d| {
        d.metric("guardian_commands_applied_total") >= 1.0
    });
    // 2. On an idle fleet: no event follows; it reaches the state by the next checkpoint.
    operator(&cfg, "kill", "fin-idle");
    d.until("the idle kill applied", |d| {
        d.metric("guardian_commands_applied_total") >= 2.0
    });
    d.until("the idle kill in the state", |d| {
        d.get("/agents/fin-idle")
            .1
            .contains("\"status\":\"killed\"")
    });
    // 3. Just before SIGKILL.
    operator(&cfg, "kill", "fin-crash");
    d.kill_9();
    let mut d = Daemon::start(&cfg, port, &log("3.log"));
    d.until("ready after the crash", |d| d.get("/readyz").0 == 200);
    d.until("the kill before the crash applied", |d| {
        d.get("/agents/fin-crash")
            .1
            .contains("\"status\":\"killed\"")
    });
    d.stop();

    for a in agents {
        let st = inspect(dir.path(), a);
        assert_eq!(st["killed"], true, "{a}: {st}");
        assert_eq!(kill_history(&st), vec!["manual_kill"], "{a} killed once");
    }
}
