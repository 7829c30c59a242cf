//! Email alerts through a real SMTP server (aiosmtpd, `tests/support/smtp_server.py`) with
//! STARTTLS and authentication: routing by severity and blueprint, the rate limit with the excess
//! in one digest, retries while the server is down and on transient errors, and a permanent
//! rejection counted and dropped.
//!
//! Needs Debian's python3-aiosmtpd (for `/usr/bin/python3`, or `SMTP_PYTHON`) and openssl;
//! `scripts/packages.sh` installs them. Without them the test is skipped, unless
//! `GUARDIAN_REQUIRE_E2E` is set, when it fails.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use agent_guardian::blueprint::Severity;
use agent_guardian::response::{Action, Basis, Incident, IncidentType};
use agent_guardian::secret::Secret;
use agent_guardian::sink::email::{EmailConfig, EmailSink, Route, Security};
use agent_guardian::sink::spool::WhenFull;
use agent_guardian::sink::Record;
use serde_json::Value;
use support::{certificates, free_tcp, required, tool};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn smtp_server(python: &Path, port: u16, dir: &Path, extra: &[&str]) -> Server {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/smtp_server.py");
    let mut child = Command::new(python)
        .arg(script)
        .args(["--port", &port.to_string(), "--out"])
        .arg(dir.join("mail.jsonl"))
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("smtp.log")).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(
        line.trim(),
        "READY",
        "smtp server: {}",
        std::fs::read_to_string(dir.join("smtp.log")).unwrap_or_default()
    );
    Server(child)
}

/// A Python that has aiosmtpd (`SMTP_PYTHON`, else Debian's `/usr/bin/python3`).
fn aiosmtpd_python() -> Option<std::path::PathBuf> {
    tool("smtp_python", &["/usr/bin/python3"]).filter(|p| {
        Command::new(p)
            .args(["-c", "import aiosmtpd"])
            .status()
            .is_ok_and(|s| s.success())
    })
}

fn incident(n: u32, blueprint: &str, severity: Severity) -> Incident {
    Incident {
        incident_id: format!("inc-{n}"),
        agent_id: format!("agent-<{n}>"),
        kind: IncidentType::FrequencySpike,
        severity,
        at: 1_772_460_000_000 + n as i64,
        window_start: 1_772_460_000_000,
        window_end: 1_772_460_000_000 + n as i64,
        blueprint: blueprint.into(),
        basis: Basis::Static,
        observed: 50.0,
        expected: 30.0,
        unit: "calls".into(),
        description: format!("Agent agent-<{n}> made 50 calls"),
        action_taken: Action::Logged,
        event_id: format!("ev-{n}"),
        tool_name: "payments.transfer".into(),
        pattern: None,
        status: Default::default(),
        count: 1,
        about: None,
        verdict: None,
        baseline: None,
        suppressed_by: None,
        agents: Vec::new(),
    }
}

fn mails(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("mail.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn alerts_are_routed_rate_limited_into_a_digest_retried_and_rejections_counted() {
    let (Some(python), Some(openssl)) = (aiosmtpd_python(), tool("openssl", &["/usr/bin/openssl"]))
    else {
        assert!(
            !required(),
            "GUARDIAN_REQUIRE_E2E is set but aiosmtpd or openssl is missing"
        );
        eprintln!("skipped: aiosmtpd or openssl not installed");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path(), &openssl);
    let port = free_tcp();
    std::env::set_var("GUARDIAN_TEST_SMTP_PASSWORD", "s3cret pass");
    let cfg = EmailConfig {
        server: "localhost".into(),
        port: Some(port),
        security: Security::Starttls,
        ca_file: Some(dir.path().join("ca.pem")),
        username: Some("guardian".into()),
        password: Some(Secret::Env {
            env: "GUARDIAN_TEST_SMTP_PASSWORD".into(),
        }),
        from: "agent-guardian <guardian@example.com>".into(),
        routes: vec![
            Route {
                to: vec!["secops@example.com".into()],
                min_severity: 0,
                blueprints: vec!["finance".into()],
            },
            Route {
                to: vec!["Finance Team <finance@example.com>".into()],
                min_severity: 8,
                blueprints: vec!["finance".into()],
            },
            Route {
                to: vec!["nobody@example.com".into()],
                min_severity: 0,
                blueprints: vec!["soc".into()],
            },
        ],
        rate_limit: 2,
        rate_window: "1h".into(),
        timeout: "10s".into(),
        spool_max_records: 100,
        when_full: WhenFull::DropOldest,
    };
    let mut errors = Vec::new();
    cfg.validate(&mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    let db = sled::open(dir.path().join("state")).unwrap();
    // The server is not up yet: everything waits in the spool and is retried.
    let (sink, delivery) = EmailSink::open(&cfg, &db).unwrap();
    let worker = std::thread::spawn(delivery);
    let high: Vec<Incident> = (0..3)
        .map(|n| incident(n, "finance", Severity::High))
        .collect();
    let medium: Vec<Incident> = (3..6)
        .map(|n| incident(n, "finance", Severity::Medium))
        .collect();
    let soc = incident(6, "soc", Severity::Critical);
    let engineering = incident(7, "engineering", Severity::Critical); // no route
    for i in high.iter().chain(&medium).chain([&soc, &engineering]) {
        sink.emit(&Record::Incident(i)).unwrap();
    }
    assert_eq!(sink.spooled(), 7);
    // The sink has tried while no server listens: the mail waits in the spool.
    let t = Instant::now();
    while sink.stats.transient_failures.load(Ordering::Relaxed) == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no attempt: {:?}",
            sink.stats
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(sink.spooled(), 7);
    let _server = smtp_server(
        &python,
        port,
        dir.path(),
        &[
            "--cert",
            &dir.path().join("server.pem").display().to_string(),
            "--key",
            &dir.path().join("server.key").display().to_string(),
            "--user",
            "guardian",
            "--password",
            "s3cret pass",
            "--transient",
            "2",
            "--reject",
            "nobody@example.com",
        ],
    );
    let t = Instant::now();
    while mails(dir.path()).len() < 4 || sink.stats.permanent_failures.load(Ordering::Relaxed) < 1 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "mails: {:#?}; stats {:?}; server log: {}",
            mails(dir.path()),
            sink.stats,
            std::fs::read_to_string(dir.path().join("smtp.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Nothing more may arrive: the delivery thread is stopped (and joined) before counting.
    sink.close(Instant::now());
    worker.join().unwrap().unwrap();
    let m = mails(dir.path());
    assert_eq!(m.len(), 4, "{m:#?}");
    for mail in &m {
        assert_eq!(mail["auth"], true, "authenticated");
        assert_eq!(mail["tls"], true, "STARTTLS");
        assert_eq!(mail["from"], "agent-guardian <guardian@example.com>");
        assert!(mail["html"].as_str().unwrap().contains("<table>"));
        assert!(
            !mail["html"].as_str().unwrap().contains("agent-<"),
            "escaped"
        );
    }
    // Per recipient list: one email on its own, then the rest in one digest (limit 2/hour).
    for (to, first) in [
        (vec!["finance@example.com", "secops@example.com"], &high[0]),
        (vec!["secops@example.com"], &medium[0]),
    ] {
        let to: Vec<Value> = to.into_iter().map(Value::from).collect();
        let mine: Vec<&Value> = m
            .iter()
            .filter(|x| x["to"].as_array() == Some(&to))
            .collect();
        assert_eq!(mine.len(), 2, "{to:?}: {mine:#?}");
        let single = mine
            .iter()
            .find(|x| !x["subject"].as_str().unwrap().contains("digest"))
            .unwrap();
        let text = single["text"].as_str().unwrap();
        assert!(
            text.contains(&format!("Incident id: {}", first.incident_id)),
            "{text}"
        );
        assert!(text.contains("Action taken: logged"));
        assert_eq!(
            single["subject"],
            format!(
                "[agent-guardian] Frequency spike (severity {}): {}",
                if first.severity == Severity::High {
                    8
                } else {
                    5
                },
                first.agent_id
            )
        );
        assert!(text.contains(&format!("Agent: {}", first.agent_id)));
        let digest = mine
            .iter()
            .find(|x| x["subject"] == "[agent-guardian] digest: 2 alerts")
            .unwrap();
        assert_eq!(
            digest["text"]
                .as_str()
                .unwrap()
                .matches("Incident id: inc-")
                .count(),
            2
        );
    }
    let s = &sink.stats;
    assert_eq!(
        s.permanent_failures.load(Ordering::Relaxed),
        1,
        "nobody@ rejected"
    );
    assert!(
        s.transient_failures.load(Ordering::Relaxed) >= 3,
        "down + two 451s"
    );
    assert_eq!(s.sent.load(Ordering::Relaxed), 4);
    assert_eq!(s.digested.load(Ordering::Relaxed), 4);
    assert_eq!(sink.spooled(), 0);
}

#[test]
fn a_burst_of_500_incidents_sends_at_most_the_rate_limit_and_the_digest_covers_the_rest() {
    let Some(python) = aiosmtpd_python() else {
        assert!(
            !required(),
            "GUARDIAN_REQUIRE_E2E is set but aiosmtpd is missing"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_tcp();
    let cfg = EmailConfig {
        server: "127.0.0.1".into(),
        port: Some(port),
        security: Security::None,
        ca_file: None,
        username: None,
        password: None,
        from: "guardian@example.com".into(),
        routes: vec![Route {
            to: vec!["oncall@example.com".into()],
            min_severity: 0,
            blueprints: vec![],
        }],
        rate_limit: 5,
        rate_window: "1h".into(),
        timeout: "10s".into(),
        spool_max_records: 1000,
        when_full: WhenFull::Block,
    };
    let db = sled::open(dir.path().join("state")).unwrap();
    let (sink, delivery) = EmailSink::open(&cfg, &db).unwrap();
    let worker = std::thread::spawn(delivery);
    let burst: Vec<Incident> = (0..500)
        .map(|n| incident(n, "finance", Severity::High))
        .collect();
    for i in &burst {
        sink.emit(&Record::Incident(i)).unwrap();
    }
    // SMTP comes up after the burst: the alerts are delivered after recovery.
    let _server = smtp_server(&python, port, dir.path(), &[]);
    let t = Instant::now();
    while sink.spooled() > 0 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "stats {:?}",
            sink.stats
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The spool is empty; the delivery thread is stopped (and joined) before counting.
    sink.close(Instant::now());
    worker.join().unwrap().unwrap();
    let m = mails(dir.path());
    assert!(m.len() <= 5, "{} mails, limit 5", m.len());
    let digests: Vec<&Value> = m
        .iter()
        .filter(|x| x["subject"].as_str().unwrap().contains("digest"))
        .collect();
    assert_eq!(digests.len(), 1);
    // Every incident is in exactly one mail.
    let all: String = m.iter().map(|x| x["text"].as_str().unwrap()).collect();
    for i in &burst {
        assert_eq!(
            all.lines()
                .filter(|l| l.trim_end() == format!("Incident id: {}", i.incident_id))
                .count(),
            1,
            "{} in {:?}",
            i.incident_id,
            &all[..all.len().min(600)]
        );
    }
    for x in &m {
        assert_eq!(x["to"], serde_json::json!(["oncall@example.com"]));
        assert_eq!(x["tls"], false);
    }
}
