//! CEF through a real syslog receiver and a real CEF parser: the daemon (on librdkafka's mock
//! cluster) sends incidents about agents with hostile ids and tool names — pipes, equals signs,
//! backslashes, line breaks, non-ASCII — over syslog TCP (octet counting, RFC 5424), UDP
//! (RFC 3164) and TLS (newline framing, RFC 5424) to rsyslog, which parses them with liblognorm's
//! CEF parser (mmnormalize). Every parsed field must equal the original.
//!
//! Needs `rsyslogd` with the `mmnormalize` and `ossl` modules and `openssl` (Debian: rsyslog,
//! rsyslog-openssl, openssl; `scripts/test.sh` installs them). Without them the test is skipped,
//! unless `GUARDIAN_REQUIRE_E2E` is set, when it fails.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Proc, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

mod support;

use agent_guardian::app::Daemon;
use agent_guardian::blueprint::{BlueprintSet, RoutineMode};
use agent_guardian::config::KafkaConfig;
use agent_guardian::demo;
use agent_guardian::event::format_rfc3339_ms;
use agent_guardian::response::{Incident, Status};
use agent_guardian::sink::kafka::{KafkaSink, OutputTopics as _};
use agent_guardian::sink::record::{cef_severity, CLASSES};
use rdkafka::mocking::MockCluster;
use serde_json::{json, Value};
use support::{certificates, free_tcp, free_udp, required, tool};

struct Rsyslog(Child);

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts rsyslogd with three inputs feeding one ruleset: mmnormalize with liblognorm's CEF
/// parser, then every parsed message as one JSON line in `out.jsonl`.
fn rsyslog(bin: &Path, dir: &Path, tcp: u16, udp: u16, tls: u16) -> Rsyslog {
    std::fs::write(dir.join("cef.rb"), "version=2\nrule=:%.:cef%\n").unwrap();
    let d = dir.display();
    let conf = format!(
        r#"global(workDirectory="{d}" maxMessageSize="64k")
module(load="imtcp")
module(load="imudp")
module(load="mmnormalize")
input(type="imtcp" port="{tcp}" address="127.0.0.1" ruleset="cef")
input(type="imudp" port="{udp}" address="127.0.0.1" ruleset="cef")
input(type="imtcp" port="{tls}" address="127.0.0.1" ruleset="cef"
      streamDriver.name="ossl" streamDriver.mode="1" streamDriver.authMode="anon"
      streamDriver.CAFile="{d}/ca.pem" streamDriver.CertFile="{d}/server.pem"
      streamDriver.KeyFile="{d}/server.key")
template(name="json" type="list") {{ property(name="$!all-json") constant(value="\n") }}
ruleset(name="cef") {{
  set $!syslog!hostname = $hostname;
  set $!syslog!app = $app-name;
  set $!syslog!msgid = $msgid;
  set $!syslog!severity = $syslogseverity;
  set $!syslog!facility = $syslogfacility;
  # liblognorm 2.0.6 (Debian 12) drops the first character of the first extension key unless
  # a space follows the header (rsyslog/liblognorm#363, fixed upstream): insert one.
  set $.m = ltrim($msg);
  set $.hdr = re_extract($.m, "^CEF:[0-9]+(\\|([^|\\\\]|\\\\.)*){{6}}\\|", 0, 0, "");
  set $.cef = $.hdr & " " & substring($.m, strlen($.hdr), 1000000);
  action(type="mmnormalize" rulebase="{d}/cef.rb" variable="$.cef" path="$!cef")
  action(type="omfile" file="{d}/out.jsonl" template="json")
}}
"#
    );
    let conf_path = dir.join("rsyslog.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let check = Proc::new(bin)
        .arg("-N1")
        .arg("-f")
        .arg(&conf_path)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "rsyslog config: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let child = Proc::new(bin)
        .arg("-n")
        .arg("-f")
        .arg(&conf_path)
        .arg("-i")
        .arg(dir.join("rsyslog.pid"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("rsyslog.log")).unwrap())
        .spawn()
        .unwrap();
    let r = Rsyslog(child);
    let t = Instant::now();
    for port in [tcp, tls] {
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "rsyslogd did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    r
}

/// Agent ids and tool names a SIEM pipeline must survive.
const HOSTILE: [(&str, &str); 6] = [
    ("evil|agent=1\\x", "db|query=x\\y"),
    ("line\nbreak\ragent", "tool\nwith\nlines"),
    ("代理-ü-🚀", "outil-é"),
    ("CEF:0|fake|header|1|1|x|10|cs1=owned", "a=b=c"),
    ("trailing-backslash\\", "\\\\double"),
    ("spaces  in the middle", "pipe|at|end|"),
];

fn event(agent: &str, tool: &str, n: u64, ts: i64) -> Vec<u8> {
    json!({
        "event_id": format!("ev-{n}"), "timestamp": format_rfc3339_ms(ts),
        "request_id": "r", "agent_id": agent, "tool_name": tool, "outcome": "ALLOW",
        "reasons": [], "safe_payload": {"environment": "prod"}
    })
    .to_string()
    .into_bytes()
}

/// A mock cluster with the audit topic (`partitions`) and the daemon's output topics.
fn mock_cluster(
    group: &str,
    partitions: i32,
) -> (
    MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    KafkaConfig,
) {
    let cluster = MockCluster::new(1).unwrap();
    let k = KafkaConfig {
        brokers: cluster.bootstrap_servers(),
        group_id: group.into(),
        audit_topics: vec!["audit".into()],
        ..KafkaConfig::default()
    };
    cluster.create_topic("audit", partitions, 1).unwrap();
    for t in [&k.control_topic, &k.incidents_topic, &k.dead_letter_topic] {
        cluster.create_topic(t, 1, 1).unwrap();
    }
    (cluster, k)
}

/// rsyslogd and openssl, or `None` (the test is skipped, unless `GUARDIAN_REQUIRE_E2E` is set).
fn programs() -> Option<(PathBuf, PathBuf)> {
    match (
        tool("rsyslogd", &["/usr/sbin/rsyslogd"]),
        tool("openssl", &["/usr/bin/openssl"]),
    ) {
        (Some(r), Some(o)) => Some((r, o)),
        _ => {
            assert!(
                !required(),
                "GUARDIAN_REQUIRE_E2E is set but rsyslogd or openssl is missing"
            );
            eprintln!("skipped: rsyslogd or openssl not installed");
            None
        }
    }
}

fn parsed_records(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn hostile_incidents_reach_rsyslog_over_tcp_udp_and_tls_and_parse_back_to_the_originals() {
    let Some((rsyslogd, openssl)) = programs() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path(), &openssl);
    let (tcp, udp, tls) = (free_tcp(), free_udp(), free_tcp());
    let _rsyslog = rsyslog(&rsyslogd, dir.path(), tcp, udp, tls);

    let (_cluster, k) = mock_cluster("siem", 1);
    let ca = dir.path().join("ca.pem");
    let sinks = json!([
        {"name": "tcp", "type": "syslog", "address": format!("127.0.0.1:{tcp}"),
         "protocol": "tcp", "framing": "octet_counting", "syslog_format": "rfc5424",
         "app_name": "guardian-tcp"},
        {"name": "udp", "type": "syslog", "address": format!("127.0.0.1:{udp}"),
         "protocol": "udp", "syslog_format": "rfc3164", "facility": "local0",
         "app_name": "guardian-udp"},
        {"name": "tls", "type": "syslog", "address": format!("127.0.0.1:{tls}"),
         "protocol": "tls", "framing": "newline", "syslog_format": "rfc5424",
         "app_name": "guardian-tls", "tls": {"ca_file": ca, "server_name": "localhost"}},
    ]);
    // A guard past its learning period: the agents' first calls are judged.
    let mut cfg = demo::local_config(
        k.clone(),
        &dir.path().join("state"),
        demo::demo_blueprints_learned().unwrap(),
    );
    cfg.config.sinks = serde_json::from_value(sinks).unwrap();
    cfg.config.guardian_id = "guard|=1".into();

    // Each hostile agent acts at 03:00 London time: an off-hours incident each (engineering
    // blueprint, the default), and one malformed event keyed by a hostile id.
    let t0 = 1_772_420_400_000; // 2026-03-02T03:00:00Z
    let mut s = KafkaSink::new(&k.brokers, &Default::default()).unwrap();
    for (n, (agent, t)) in HOSTILE.iter().enumerate() {
        let p = event(agent, t, n as u64, t0 + n as i64 * 1000);
        s.send("audit", Some(agent.as_bytes()), &p, None).unwrap();
    }
    s.send("audit", Some("bad|key=\\".as_bytes()), b"{not json", None)
        .unwrap();
    s.settle(Duration::from_secs(10)).unwrap();

    let d = Daemon::start(cfg).unwrap();
    let m = d.metrics.clone();
    let want_records = HOSTILE.len() + 1;
    let out = dir.path().join("out.jsonl");
    let t = Instant::now();
    loop {
        let by_app = parsed_records(&out)
            .iter()
            .fold(BTreeMap::new(), |mut acc, r| {
                *acc.entry(r["syslog"]["app"].as_str().unwrap_or("").to_string())
                    .or_insert(0usize) += 1;
                acc
            });
        if ["guardian-tcp", "guardian-udp", "guardian-tls"]
            .iter()
            .all(|a| by_app.get(*a).copied().unwrap_or(0) >= want_records)
        {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "records at rsyslog by sink: {by_app:?}; events {}, incidents {}; rsyslog log: {}",
            m.events.load(Ordering::Relaxed),
            m.incidents.load(Ordering::Relaxed),
            std::fs::read_to_string(dir.path().join("rsyslog.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    d.shutdown();
    d.join(Duration::from_secs(30)).unwrap();

    let incidents: Vec<Incident> = agent_guardian::kafka::read_all(&k.brokers, &k.incidents_topic)
        .into_iter()
        .map(|(_, p)| serde_json::from_slice(&p).unwrap())
        .collect();
    assert_eq!(incidents.len(), HOSTILE.len(), "{incidents:?}");
    let records = parsed_records(&out);
    for app in ["guardian-tcp", "guardian-udp", "guardian-tls"] {
        let mine: Vec<&Value> = records
            .iter()
            .filter(|r| r["syslog"]["app"] == app)
            .collect();
        assert_eq!(mine.len(), want_records, "{app}: {mine:#?}");
        for r in &mine {
            let cef = &r["cef"];
            assert!(cef.get("unparsed-data").is_none(), "{app}: not parsed: {r}");
            assert_eq!(cef["DeviceVendor"], "agent-guardian");
            assert_eq!(cef["DeviceProduct"], "agent-guardian");
            assert_eq!(cef["DeviceVersion"], env!("CARGO_PKG_VERSION"));
            assert_eq!(r["syslog"]["hostname"], "guard1", "{app}: sanitised host");
        }
        for i in &incidents {
            let r = mine
                .iter()
                .find(|r| r["cef"]["Extensions"]["externalId"] == i.incident_id.as_str())
                .unwrap_or_else(|| panic!("{app}: no record for {}", i.incident_id));
            let (cef, x) = (&r["cef"], &r["cef"]["Extensions"]);
            let class = CLASSES.iter().find(|c| c.key == i.kind.as_str()).unwrap();
            assert_eq!(cef["SignatureID"], class.id.to_string());
            assert_eq!(cef["Name"], class.name);
            assert_eq!(cef["Severity"], cef_severity(i.severity).to_string());
            assert_eq!(x["suser"], i.agent_id.as_str(), "{app}");
            assert_eq!(x["cs2"], i.tool_name.as_str(), "{app}");
            assert_eq!(x["cs2Label"], "tool");
            assert_eq!(x["msg"], i.description.as_str(), "{app}");
            assert_eq!(x["cs1"], i.blueprint.as_str());
            assert_eq!(x["cat"], i.kind.as_str());
            assert_eq!(x["rt"], i.at.to_string());
            assert_eq!(x["start"], i.window_start.to_string());
            assert_eq!(x["dvchost"], "guard|=1");
            if app != "guardian-udp" {
                assert_eq!(r["syslog"]["msgid"], i.kind.as_str());
            }
        }
        // The dead letter keeps its hostile key.
        let dl = mine
            .iter()
            .find(|r| r["cef"]["Extensions"]["cat"] == "dead_letter")
            .unwrap_or_else(|| panic!("{app}: no dead letter"));
        assert_eq!(dl["cef"]["Extensions"]["suser"], "bad|key=\\");
        assert_eq!(dl["cef"]["Extensions"]["cs2"], "audit/0@6");
        assert_eq!(dl["cef"]["Severity"], "2");
    }
    // Every hostile agent id and tool name came through.
    for (agent, t) in HOSTILE {
        assert!(incidents
            .iter()
            .any(|i| i.agent_id == agent && i.tool_name == t));
    }
}

/// The TCP syslog receiver stops for 30 s during a stream of incidents and comes back: every
/// CEF record arrives, each once or again with the same id, in order per agent.
#[test]
fn a_30_second_receiver_outage_loses_no_record_and_keeps_order_per_agent() {
    let Some((rsyslogd, openssl)) = programs() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path(), &openssl);
    let (tcp, udp, tls) = (free_tcp(), free_udp(), free_tcp());
    let mut receiver = Some(rsyslog(&rsyslogd, dir.path(), tcp, udp, tls));

    let (_cluster, k) = mock_cluster("outage", 2);
    // Off-hours activity every night would soon be routine for these agents: this test wants
    // an incident per night, as for a rule that must always fire.
    let set = demo::demo_blueprints_learned().unwrap();
    let always: Vec<_> = set
        .blueprints()
        .iter()
        .cloned()
        .map(|mut b| {
            b.routine.off_hours = RoutineMode::Alert;
            b
        })
        .collect();
    let set = std::sync::Arc::new(
        BlueprintSet::from_blueprints(always, set.assignment().clone()).unwrap(),
    );
    let mut cfg = demo::local_config(k.clone(), &dir.path().join("state"), set);
    cfg.config.sinks = serde_json::from_value(json!([
        {"name": "tcp", "type": "syslog", "address": format!("127.0.0.1:{tcp}"),
         "app_name": "guardian-tcp"}
    ]))
    .unwrap();
    let d = Daemon::start(cfg).unwrap();

    // 12 agents, each active at 03:00 London on successive nights: an off-hours incident per
    // agent per night, produced over ~45 s.
    let agents = 12;
    let nights = 36;
    let brokers = k.brokers.clone();
    let producer = std::thread::spawn(move || {
        let mut s = KafkaSink::new(&brokers, &Default::default()).unwrap();
        for night in 0..nights {
            for a in 0..agents {
                let agent = format!("agent|{a}=x");
                let ts = 1_772_420_400_000 + night as i64 * 86_400_000 + a as i64 * 1000;
                let p = event(&agent, "db.query", (night * agents + a) as u64, ts);
                s.send("audit", Some(agent.as_bytes()), &p, None).unwrap();
            }
            s.settle(Duration::from_secs(10)).unwrap();
            std::thread::sleep(Duration::from_millis(1250));
        }
    });
    std::thread::sleep(Duration::from_secs(5));
    drop(receiver.take()); // the receiver goes away (SIGKILL) for 30 s mid-stream
    let down_at = Instant::now();
    std::thread::sleep(Duration::from_secs(30));
    receiver = Some(rsyslog(&rsyslogd, dir.path(), tcp, udp, tls));
    producer.join().unwrap();
    let out = dir.path().join("out.jsonl");
    // The incidents raised (an episode's closing record repeats its id).
    let incidents = || -> Vec<Incident> {
        agent_guardian::kafka::read_all(&k.brokers, &k.incidents_topic)
            .into_iter()
            .map(|(_, p)| serde_json::from_slice::<Incident>(&p).unwrap())
            .filter(|i| i.status == Status::Open)
            .collect()
    };
    let t = Instant::now();
    let mut want = incidents();
    loop {
        let got: BTreeSet<String> = parsed_records(&out)
            .iter()
            .filter_map(|r| {
                r["cef"]["Extensions"]["externalId"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect();
        if want.len() >= agents * nights && want.iter().all(|i| got.contains(&i.incident_id)) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(90),
            "{} incidents, {} at the receiver",
            want.len(),
            got.len()
        );
        std::thread::sleep(Duration::from_millis(200));
        want = incidents();
    }
    d.shutdown();
    d.join(Duration::from_secs(30)).unwrap();
    assert!(down_at.elapsed() > Duration::from_secs(30));
    assert_eq!(
        want.len(),
        agents * nights,
        "one incident per agent per night"
    );
    // Each record once, or again with the same id; per agent, first arrivals in event order.
    let records = parsed_records(&out);
    let mut seen = BTreeSet::new();
    let mut per_agent: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for r in &records {
        let x = &r["cef"]["Extensions"];
        let id = x["externalId"].as_str().unwrap().to_string();
        if seen.insert(id) {
            per_agent
                .entry(x["suser"].as_str().unwrap().to_string())
                .or_default()
                .push(x["rt"].as_str().unwrap().parse().unwrap());
        }
    }
    assert_eq!(seen.len(), want.len());
    assert_eq!(per_agent.len(), agents);
    for (agent, times) in &per_agent {
        assert!(
            times.windows(2).all(|w| w[0] < w[1]),
            "{agent}: out of order {times:?}"
        );
    }
    eprintln!(
        "{} records received for {} incidents ({} repeated after the outage)",
        records.len(),
        want.len(),
        records.len() - want.len()
    );
    drop(receiver);
}
