//! The admin API of a running daemon (mock cluster): readiness, `/metrics` from live counters
//! (parsed by Python prometheus_client), kill and revive through the API applied by the daemon,
//! posture snapshots on their topic and in the CEF file, TLS, and the web page in headless
//! Chromium with a screenshot (`$CARGO_TARGET_TMPDIR/web-fleet.png`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use agent_guardian::api::ApiSettings;
use agent_guardian::app::Daemon;
use agent_guardian::config::KafkaConfig;
use agent_guardian::demo;
use agent_guardian::simulate::{SimConfig, Simulation};
use agent_guardian::sink::kafka::{KafkaSink, OutputTopics as _};
use rdkafka::mocking::MockCluster;
use serde_json::Value;

mod support;

const TOKEN: &str = "admin-test-token-0123456789";

fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    (status, body.to_string())
}

fn get_json(addr: SocketAddr, path: &str) -> Value {
    let (status, body) = http(addr, "GET", path, Some(TOKEN), "");
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(90),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Mock cluster, a small simulated fleet on the audit topic, the daemon with the API on a free
/// port, a CEF file sink and posture snapshots every second.
fn start(
    dir: &Path,
) -> (
    MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    KafkaConfig,
    Daemon,
    u64,
) {
    let c = MockCluster::new(1).unwrap();
    let k = KafkaConfig {
        brokers: c.bootstrap_servers(),
        group_id: "admin".into(),
        audit_topics: vec!["audit".into()],
        ..KafkaConfig::default()
    };
    c.create_topic("audit", 2, 1).unwrap();
    for t in [
        &k.control_topic,
        &k.incidents_topic,
        &k.dead_letter_topic,
        "guardian-posture",
    ] {
        c.create_topic(t, 1, 1).unwrap();
    }
    // Anomalies from day 2, for a guard past its learning period (below).
    let sim = Simulation::new(SimConfig {
        agents: 24,
        days: 8,
        seed: 11,
        first_injection_day: 2,
        ..SimConfig::default()
    });
    let mut sink = KafkaSink::new(&k.brokers, &Default::default()).unwrap();
    let mut n = 0u64;
    for line in sim
        .to_jsonl()
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
    {
        let v: Value = serde_json::from_slice(line).unwrap();
        let key = v["agent_id"].as_str().unwrap().to_string();
        sink.send("audit", Some(key.as_bytes()), line, None)
            .unwrap();
        n += 1;
    }
    sink.send("audit", None, b"{not json", None).unwrap();
    sink.settle(Duration::from_secs(30)).unwrap();
    // A guard past its learning period (no history before this fleet): it raises incidents.
    let mut cfg = demo::local_config(
        k.clone(),
        &dir.join("state"),
        demo::demo_blueprints_learned().unwrap(),
    );
    cfg.api = Some(ApiSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        token: TOKEN.into(),
        tls: None,
    });
    cfg.posture.interval = Duration::from_secs(1);
    cfg.config.sinks = vec![serde_json::from_value(serde_json::json!({
        "name": "cef-file", "type": "file", "path": dir.join("cef.log")
    }))
    .unwrap()];
    let d = Daemon::start(cfg).unwrap();
    (c, k, d, n)
}

#[test]
fn running_daemon_serves_metrics_posture_and_applies_api_commands() {
    let dir = tempfile::tempdir().unwrap();
    let (_c, k, d, n) = start(dir.path());
    let addr = d.api_addr.expect("the API is on");
    assert_eq!(http(addr, "GET", "/healthz", None, "").0, 200);
    wait_for("readiness", || {
        http(addr, "GET", "/readyz", None, "").0 == 200
    });
    wait_for("every event", || {
        d.metrics.events.load(Ordering::Relaxed) == n
    });
    wait_for("a posture snapshot", || {
        d.metrics.posture_snapshots.load(Ordering::Relaxed) > 0
    });
    assert_eq!(http(addr, "GET", "/metrics", None, "").0, 401);

    // Metrics: live counters, through an independent parser.
    let (status, text) = http(addr, "GET", "/metrics", Some(TOKEN), "");
    assert_eq!(status, 200);
    if let Some(m) = support::parse_metrics(&text) {
        let fams = &m["openmetrics"];
        let sum = |fam: &str, sample: &str| -> f64 {
            fams[fam]["samples"]
                .as_array()
                .unwrap_or_else(|| panic!("{fam} missing"))
                .iter()
                .filter(|s| s[0] == sample)
                .map(|s| s[2].as_f64().unwrap())
                .sum()
        };
        assert_eq!(
            sum("guardian_events_consumed", "guardian_events_consumed_total"),
            n as f64
        );
        assert_eq!(sum("guardian_bad_events", "guardian_bad_events_total"), 1.0);
        assert_eq!(
            sum("guardian_incidents", "guardian_incidents_total"),
            d.metrics.incidents.load(Ordering::Relaxed) as f64
        );
        assert!(sum("guardian_incidents", "guardian_incidents_total") > 0.0);
        assert!(
            sum("guardian_sink_delivered", "guardian_sink_delivered_total") > 0.0,
            "{text}"
        );
        assert!(
            sum(
                "guardian_processing_latency_seconds",
                "guardian_processing_latency_seconds_count"
            ) > 0.0
        );
        // Every audit message produced carries a CreateTime, so each one is aged, the malformed
        // one too.
        assert_eq!(
            sum(
                "guardian_event_age_seconds",
                "guardian_event_age_seconds_count"
            ),
            (n + 1) as f64
        );
        assert_eq!(
            sum(
                "guardian_partitions_assigned",
                "guardian_partitions_assigned"
            ),
            2.0
        );
        assert_eq!(sum("guardian_agents", "guardian_agents"), 24.0);
        assert_eq!(sum("guardian_ready", "guardian_ready"), 1.0);
        assert!(
            sum(
                "guardian_posture_snapshots",
                "guardian_posture_snapshots_total"
            ) >= 1.0
        );
    }

    // Posture: on the API, on its topic, and as a CEF summary.
    let p = get_json(addr, "/posture");
    assert_eq!(p["fleet"]["agents"], 24);
    let snaps = agent_guardian::kafka::read_all(&k.brokers, "guardian-posture");
    assert!(!snaps.is_empty());
    let snap: Value = serde_json::from_slice(&snaps[0].1).unwrap();
    assert_eq!(snap["guardian_id"], "guardian-demo-1");
    assert!(snap["fleet"]["score"].as_u64().unwrap() <= 100);
    wait_for("the CEF posture summary", || {
        std::fs::read_to_string(dir.path().join("cef.log"))
            .is_ok_and(|s| s.contains("|400|Fleet posture summary|"))
    });

    // Kill and revive through the API: signed, published, applied by the daemon that owns the agent.
    let agents = get_json(addr, "/agents");
    let id = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["status"] == "active")
        .unwrap()["agent_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, body) = http(addr, "POST", &format!("/agents/{id}/kill"), None, "{}");
    assert_eq!(status, 401, "{body}");
    let (status, body) = http(
        addr,
        "POST",
        &format!("/agents/{id}/kill"),
        Some(TOKEN),
        r#"{"reason":"drill"}"#,
    );
    assert_eq!(status, 202, "{body}");
    let cmd: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(cmd["published"]["reason"], "drill");
    assert!(cmd["published"]["signature"].as_str().unwrap().len() >= 64);
    wait_for("the kill applied", || {
        get_json(addr, &format!("/agents/{id}"))["agent"]["status"] == "killed"
    });
    let (status, _) = http(
        addr,
        "POST",
        &format!("/agents/{id}/revive"),
        Some(TOKEN),
        "",
    );
    assert_eq!(status, 202);
    wait_for("the revive applied", || {
        get_json(addr, &format!("/agents/{id}"))["agent"]["status"] == "revived"
    });
    let a = get_json(addr, &format!("/agents/{id}"));
    let kinds: Vec<_> = a["agent"]["kill_history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kind"].clone())
        .collect();
    assert!(
        kinds.contains(&"manual_kill".into()) && kinds.contains(&"revive".into()),
        "{kinds:?}"
    );
    wait_for("the metrics of API commands", || {
        http(addr, "GET", "/metrics", Some(TOKEN), "")
            .1
            .contains("guardian_commands_sent_total{command=\"revive\",origin=\"api\"} 1")
    });
    // The drill is now evidence of human oversight.
    wait_for("art-14 met", || {
        let r = get_json(addr, "/compliance/eu-ai-act");
        r["controls"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == "art-14" && c["status"] == "met")
    });

    browser(addr, &id);
    d.shutdown();
    d.join(Duration::from_secs(30)).unwrap();
}

/// Headless Chromium loads the page from the running daemon and renders the agents table.
fn browser(addr: SocketAddr, agent: &str) {
    let Some(chromium) = support::tool(
        "CHROMIUM",
        &["/usr/bin/chromium", "/usr/bin/chromium-browser"],
    ) else {
        assert!(
            !support::required(),
            "Debian's chromium is needed (scripts/packages.sh)"
        );
        eprintln!("skipped: no chromium");
        return;
    };
    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://{addr}/#token={TOKEN}&agent={agent}");
    let chrome = |extra: &[&str]| {
        let out = std::process::Command::new(&chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1500,1000",
                "--virtual-time-budget=15000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg(&url)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "chromium: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dom = chrome(&["--dump-dom"]);
    assert!(
        dom.contains("data-loaded=\"true\""),
        "the page did not load its data:\n{dom}"
    );
    let rows = dom.matches("<tr data-agent=").count();
    assert_eq!(rows, 24, "one row per agent:\n{dom}");
    assert!(dom.contains(&format!("<tr data-agent=\"{agent}\"")));
    assert!(
        dom.contains("id=\"timeline\"") && dom.contains("manual kill"),
        "the agent's timeline:\n{dom}"
    );
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-fleet.png");
    let _ = std::fs::remove_file(&shot);
    chrome(&[&format!("--screenshot={}", shot.display())]);
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{}",
        png.len()
    );
    eprintln!("screenshot: {}", shot.display());
}

#[test]
fn api_serves_https_with_the_configured_certificate() {
    let Some(openssl) = support::tool("OPENSSL", &["/usr/bin/openssl"]) else {
        assert!(
            !support::required(),
            "openssl is needed (scripts/packages.sh)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    support::certificates(dir.path(), &openssl);
    let store = agent_guardian::store::Store::open(&dir.path().join("state")).unwrap();
    let live = std::sync::Arc::new(agent_guardian::telemetry::Live {
        store,
        metrics: Default::default(),
        owned: Default::default(),
        view: Default::default(),
        peers: Default::default(),
        guardian_id: "guardian-1".into(),
    });
    let state = agent_guardian::api::AppState::new(
        live,
        demo::demo_blueprints().unwrap(),
        Default::default(),
        TOKEN,
        None,
    );
    let settings = ApiSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        token: TOKEN.into(),
        tls: Some((dir.path().join("server.pem"), dir.path().join("server.key"))),
    };
    let stop = agent_guardian::stop::Stop::new();
    let server = agent_guardian::api::bind(&settings, state).unwrap();
    let addr = server.addr();
    let handle = {
        let stop = stop.clone();
        std::thread::spawn(move || server.run(stop))
    };

    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(dir.path().join("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let get = |path: &str, token: Option<&str>| -> String {
        let conn =
            rustls::ClientConnection::new(config.clone(), "localhost".try_into().unwrap()).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, TcpStream::connect(addr).unwrap());
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        write!(
            tls,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    };
    assert!(
        get("/healthz", None).starts_with("HTTP/1.1 200"),
        "{}",
        get("/healthz", None)
    );
    assert!(get("/posture", None).starts_with("HTTP/1.1 401"));
    let posture = get("/posture", Some(TOKEN));
    assert!(
        posture.starts_with("HTTP/1.1 200") && posture.contains("\"fleet\""),
        "{posture}"
    );
    // Plain HTTP on the TLS port gets no answer.
    let mut plain = TcpStream::connect(addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(plain, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let _ = plain.read_to_end(&mut buf);
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));
    stop.set();
    handle.join().unwrap().unwrap();
}
