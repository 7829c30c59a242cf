//! End to end against a separate Kafka-protocol broker process (Tansu), with the real binary:
//! `guardian produce` a simulated fleet, `guardian run` it, stop it with SIGTERM, and compare the
//! kill commands on the control topic with what the offline engine decides for the same events.
//!
//! `scripts/test.sh` starts the broker and sets `TANSU_BROKER` and `TANSU_BIN`, and
//! `TANSU_DURABLE_BIN` (a Tansu build with SQLite storage, for the broker restart); without them
//! the tests are skipped unless `GUARDIAN_REQUIRE_E2E` is set (then they fail).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command as Proc, Stdio};
use std::time::{Duration, Instant};

use agent_guardian::control::Command;
use agent_guardian::engine::Engine;
use agent_guardian::event::Decoder;
use agent_guardian::response::{Action, Incident};
use agent_guardian::simulate::{SimConfig, Simulation};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

#[path = "support/tansu.rs"]
mod tansu;
use tansu::*;

#[test]
fn fleet_scenario_through_tansu_yields_the_expected_signed_kill_commands() {
    let Some(b) = broker() else {
        return;
    };
    let (prefix, dir, cfg) = setup(&b, "e2e", 3);

    // A simulated fleet with injected anomalies, and the offline engine's decisions on it.
    // Twelve days: the anomalies come after the blueprints' seven-day learning period.
    let sim = Simulation::new(SimConfig {
        agents: 40,
        days: 12,
        seed: 11,
        ..SimConfig::default()
    });
    let events = sim.to_jsonl();
    let events_file = dir.path().join("events.jsonl");
    std::fs::write(&events_file, &events).unwrap();

    let produce = guardian()
        .args(["produce", "--config"])
        .arg(&cfg)
        .arg(&events_file)
        .env("E2E_GUARDIAN_KEY", KEY)
        .output()
        .unwrap();
    assert!(produce.status.success(), "{produce:?}");
    let expected = reference(&b.addr, &format!("{prefix}-audit"), 3).command_ids;
    assert!(!expected.is_empty(), "the scenario must contain kills");

    let mut run = guardian()
        .args(["run", "--config"])
        .arg(&cfg)
        .env("E2E_GUARDIAN_KEY", KEY)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let control = format!("{prefix}-control");
    let t = Instant::now();
    let mut got = Vec::new();
    while t.elapsed() < Duration::from_secs(90) {
        got = kills(&b.addr, &control);
        if got.len() >= expected.len() {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    // Let the daemon go on a little: no further (duplicate) command may appear.
    std::thread::sleep(Duration::from_secs(2));
    let status = sigterm(&mut run);
    assert!(status.success(), "graceful stop exits 0: {status:?}");
    let got_after = kills(&b.addr, &control);
    assert_eq!(
        got_after.len(),
        got.len(),
        "no command after the last expected one"
    );
    let ids: BTreeSet<String> = got.iter().map(|c| c.command_id.clone()).collect();
    assert_eq!(
        ids, expected,
        "kill commands equal the offline engine's decisions"
    );
    assert_eq!(ids.len(), got.len(), "no duplicates");
    for c in &got {
        assert!(c.verify(&[KEY.as_bytes()]).is_ok(), "signature of {c:?}");
    }
    // The state was persisted and can be inspected by operators.
    let inspect = guardian()
        .args(["state", "inspect", "--state-dir"])
        .arg(dir.path().join("state"))
        .arg(&got[0].agent_id)
        .output()
        .unwrap();
    assert!(inspect.status.success(), "{inspect:?}");
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(text.contains("\"killed\": true"), "{text}");
}

#[test]
fn check_config_reports_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(
        &p,
        "checkpoint_interval = \"never\"\n[kafka]\naudit_topics = []\n",
    )
    .unwrap();
    let out = guardian()
        .args(["run", "--check-config", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in ["audit_topics", "signing_key", "checkpoint_interval"] {
        assert!(err.contains(needle), "{needle} not in {err}");
    }
}

/// Offsets the group has committed on a topic, summed (−1 offsets count as 0); 0 if the broker
/// does not answer.
fn committed_total(addr: &str, group: &str, topic: &str, partitions: i32) -> i64 {
    try_committed_total(addr, group, topic, partitions).unwrap_or(0)
}

/// Offsets the group has committed on a topic, summed (−1 offsets count as 0); `None` if the
/// broker does not answer.
fn try_committed_total(addr: &str, group: &str, topic: &str, partitions: i32) -> Option<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    c.committed_offsets(tpl, Duration::from_secs(10))
        .ok()
        .map(|l| {
            l.elements()
                .iter()
                .map(|e| match e.offset() {
                    Offset::Offset(o) => o,
                    _ => 0,
                })
                .sum()
        })
}

/// The high watermarks of a topic's partitions, summed.
fn high_watermarks(addr: &str, topic: &str, partitions: i32) -> i64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .create()
        .unwrap();
    (0..partitions)
        .map(|p| {
            c.fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap()
                .1
        })
        .sum()
}

#[test]
fn kill_dash_nine_at_random_points_loses_nothing_and_counts_nothing_twice() {
    let Some(b) = broker() else {
        return;
    };
    let (prefix, dir, cfg) = setup(&b, "crash", 4);
    let audit = format!("{prefix}-audit");

    // At least 1,000,000 events: 300 agents over 18 days, with injected anomalies.
    let sim = Simulation::new(SimConfig {
        agents: 300,
        days: 18,
        seed: 5,
        ..SimConfig::default()
    });
    let events = sim.to_jsonl();
    let lines = lines_of(&events);
    assert!(lines.len() >= 1_000_000, "{} events", lines.len());
    let events_file = dir.path().join("events.jsonl");
    std::fs::write(&events_file, &events).unwrap();

    let produce = guardian()
        .args(["produce", "--config"])
        .arg(&cfg)
        .arg(&events_file)
        .env("E2E_GUARDIAN_KEY", KEY)
        .output()
        .unwrap();
    assert!(produce.status.success(), "{produce:?}");
    // The uninterrupted run, offline: incidents, kill commands and final agent states.
    let want = reference(&b.addr, &audit, 4);
    assert!(!want.command_ids.is_empty());

    // kill -9 at random points, restarting each time.
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::process::id() as u64);
    eprintln!("crash points from CRASH_SEED={seed}");
    let mut rng = seed;
    let spawn = || {
        guardian()
            .args(["run", "--config"])
            .arg(&cfg)
            .env("E2E_GUARDIAN_KEY", KEY)
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let total = lines.len() as i64;
    let group = format!("{prefix}-group");
    let mut before = 0;
    for round in 0..4 {
        let mut child = spawn();
        // Wait until this run is consuming (its first checkpoint is committed), then kill it at
        // a random point of its work.
        let t = Instant::now();
        while committed_total(&b.addr, &group, &audit, 4) <= before
            && t.elapsed() < Duration::from_secs(60)
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let ms = (rng >> 33) % 1_500;
        std::thread::sleep(Duration::from_millis(ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        before = committed_total(&b.addr, &group, &audit, 4);
        eprintln!("round {round}: killed {ms} ms into consuming; committed {before} of {total}");
    }
    let mut child = spawn();
    let t = Instant::now();
    while committed_total(&b.addr, &group, &audit, 4) < total {
        assert!(t.elapsed() < Duration::from_secs(300), "did not finish");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(sigterm(&mut child).success());

    let got_incidents: Vec<Incident> = read_topic(&b.addr, &format!("{prefix}-incidents"), 1)
        .iter()
        .map(|p| serde_json::from_slice(p).unwrap())
        .collect();
    let ids: BTreeSet<String> = got_incidents
        .iter()
        .map(|i| i.incident_id.clone())
        .collect();
    assert_eq!(
        ids, want.incident_ids,
        "incident ids equal the uninterrupted run's"
    );
    // A duplicate is allowed only with an identical id (and then identical content; an
    // episode's closing record repeats its incident's id with the status closed).
    for i in &got_incidents {
        let orig = want
            .incidents
            .iter()
            .find(|o| o.incident_id == i.incident_id && o.status == i.status)
            .unwrap();
        assert_eq!(i, orig);
    }
    let cmds = kills(&b.addr, &format!("{prefix}-control"));
    let cmd_ids: BTreeSet<String> = cmds.iter().map(|c| c.command_id.clone()).collect();
    assert_eq!(
        cmd_ids, want.command_ids,
        "kill command ids equal the uninterrupted run's"
    );

    // The final state of every agent equals the uninterrupted run's.
    let store = agent_guardian::store::Store::open(&dir.path().join("state")).unwrap();
    let mut agents = 0;
    for st in want.engines.iter().flat_map(|e| e.agents()) {
        let found = store.find_agent(&st.agent_id).unwrap();
        assert_eq!(found.len(), 1, "{}", st.agent_id);
        assert_eq!(&found[0].1, st, "state of {}", st.agent_id);
        agents += 1;
    }
    assert_eq!(agents, sim.fleet.len());
}

/// What an uninterrupted offline run decides on some events.
struct Reference {
    incidents: Vec<Incident>,
    incident_ids: BTreeSet<String>,
    command_ids: BTreeSet<String>,
    /// One engine per audit partition.
    engines: Vec<Engine>,
}

/// The uninterrupted offline run: each partition of the audit topic, as the broker holds it (in
/// offset order), through an engine of its own, as the daemon folds each partition (the peers of
/// a blueprint, the learning period and the kill budget are the partition's).
fn reference(addr: &str, audit: &str, partitions: i32) -> Reference {
    let set = agent_guardian::demo::demo_blueprints().unwrap();
    let decoder = Decoder::new(&set.decoder_options()).unwrap();
    let mut engines: Vec<Engine> = (0..partitions).map(|_| Engine::new(set.clone())).collect();
    let mut incidents = Vec::new();
    for m in agent_guardian::kafka::read_to_end(addr, audit, partitions, Duration::from_secs(60)) {
        if let Ok(ev) = decoder.decode(m.payload().unwrap_or_default()) {
            engines[m.partition() as usize].process(&ev, &mut incidents);
        }
    }
    Reference {
        incident_ids: incidents.iter().map(|i| i.incident_id.clone()).collect(),
        command_ids: incidents
            .iter()
            .filter(|i| i.action_taken == Action::Killed)
            .map(|i| Command::for_kill(i, "e2e-1").command_id)
            .collect(),
        incidents,
        engines,
    }
}

/// The non-empty lines of a JSON-lines buffer.
fn lines_of(events: &[u8]) -> Vec<&[u8]> {
    events
        .split(|&c| c == b'\n')
        .filter(|l| !l.is_empty())
        .collect()
}

fn produce_lines(cfg: &Path, dir: &Path, name: &str, lines: &[&[u8]]) {
    let f = dir.join(name);
    let mut text = Vec::new();
    for l in lines {
        text.extend_from_slice(l);
        text.push(b'\n');
    }
    std::fs::write(&f, text).unwrap();
    // A broker restarted on its SQLite database, shared with the other tests' load, can take
    // more than the default 30 s to acknowledge a hundred thousand events (it answers with
    // passing errors meanwhile, which the producer sends again).
    let out = guardian()
        .args(["produce", "--timeout", "300s", "--config"])
        .arg(cfg)
        .arg(&f)
        .env("E2E_GUARDIAN_KEY", KEY)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

fn incident_ids(addr: &str, topic: &str) -> BTreeSet<String> {
    read_topic(addr, topic, 1)
        .iter()
        .map(|p| serde_json::from_slice::<Incident>(p).unwrap().incident_id)
        .collect()
}

fn wait_committed(b: &Broker, group: &str, topic: &str, parts: i32, at_least: i64) {
    let t = Instant::now();
    while committed_total(&b.addr, group, topic, parts) < at_least {
        assert!(
            t.elapsed() < Duration::from_secs(180),
            "committed offsets did not reach {at_least}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn fleet_lines(agents: usize, days: u32, seed: u64) -> Vec<u8> {
    Simulation::new(SimConfig {
        agents,
        days,
        seed,
        ..SimConfig::default()
    })
    .to_jsonl()
}

/// A private Tansu broker with SQLite storage (the `TANSU_DURABLE_BIN` build, `libsql` feature),
/// so that it can be stopped and started again without losing topics, records or group offsets.
struct DurableBroker {
    bin: String,
    port: u16,
    db: std::path::PathBuf,
    log: std::path::PathBuf,
    child: Option<Child>,
}

fn durable_bin() -> Option<String> {
    match std::env::var("TANSU_DURABLE_BIN") {
        Ok(bin) if !bin.is_empty() => Some(bin),
        _ => unavailable("TANSU_DURABLE_BIN", "no durable Tansu build"),
    }
}

impl DurableBroker {
    /// Starts a broker on a free loopback port, keeping its database and log in `dir`.
    fn start(bin: String, dir: &Path) -> DurableBroker {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut b = DurableBroker {
            bin,
            port,
            db: dir.join("tansu.db"),
            log: dir.join("tansu.log"),
            child: None,
        };
        b.restart();
        b
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn broker(&self) -> Broker {
        Broker {
            addr: self.addr(),
            bin: self.bin.clone(),
        }
    }

    /// Starts the process (again) on the same port with the same database; returns once it
    /// has logged "ready in" and accepts connections.
    fn restart(&mut self) {
        assert!(self.child.is_none(), "the broker is running");
        let ready_before = self.ready_count();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let url = format!("tcp://{}", self.addr());
        // `sqlite://` + an absolute path (a fourth slash): `sqlite:///a/b` would be `a/b` in the cwd.
        let storage = format!("sqlite:///{}", self.db.display());
        let mut child = Proc::new(&self.bin)
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", &storage])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let t = Instant::now();
        while self.ready_count() == ready_before
            || std::net::TcpStream::connect(self.addr()).is_err()
        {
            if let Some(s) = child.try_wait().unwrap() {
                panic!("tansu exited ({s}): {}", self.log_text());
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "tansu not ready: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child = Some(child);
    }

    /// Stops the process: SIGTERM (Tansu then waits up to 5 s for open connections), SIGKILL if
    /// it has not exited after 10 s.
    fn stop(&mut self) {
        let mut child = self.child.take().expect("the broker is not running");
        let _ = Proc::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let t = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if t.elapsed() > Duration::from_secs(10) {
                eprintln!("tansu ignored SIGTERM for 10 s: SIGKILL");
                child.kill().unwrap();
                child.wait().unwrap();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("tansu stopped after {:.1?}", t.elapsed());
    }

    fn ready_count(&self) -> usize {
        self.log_text().matches("ready in").count()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for DurableBroker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn a_broker_outage_of_30_seconds_loses_nothing_and_the_daemon_keeps_running() {
    let Some(bin) = durable_bin() else {
        return;
    };
    // A private broker with its data on disk: this test stops and restarts it.
    let broker_dir = tempfile::tempdir().unwrap();
    let mut tansu = DurableBroker::start(bin, broker_dir.path());
    let b = tansu.broker();
    let (prefix, dir, cfg) = setup(&b, "outage", 2);
    let audit = format!("{prefix}-audit");
    let events = fleet_lines(60, 11, 21);
    let lines = lines_of(&events);
    let half = lines.len() / 2;
    produce_lines(&cfg, dir.path(), "a.jsonl", &lines[..half]);
    // The daemon's log, shown if it stops when it must not.
    let log = dir.path().join("daemon.log");
    let mut run = guardian()
        .args(["run", "--config"])
        .arg(&cfg)
        .env("E2E_GUARDIAN_KEY", KEY)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let tail = || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    };
    let group = format!("{prefix}-group");
    wait_committed(&b, &group, &audit, 2, 1);
    let committed = committed_total(&b.addr, &group, &audit, 2);
    eprintln!(
        "stopping the broker: {half} of {} events produced, {committed} committed",
        lines.len()
    );
    // Mid-stream the broker process stops (SIGTERM), stays down for 30 s, and is started again
    // on the same port with the same database.
    tansu.stop();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(30) {
        assert!(
            run.try_wait().unwrap().is_none(),
            "the daemon exited while the broker was down; its log ends:\n{}",
            tail()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    tansu.restart();
    assert!(
        run.try_wait().unwrap().is_none(),
        "the daemon survived the outage"
    );
    // The restarted broker has the records and the group's committed offsets of before.
    assert_eq!(high_watermarks(&b.addr, &audit, 2), half as i64);
    let t = Instant::now();
    let after = loop {
        if let Some(n) = try_committed_total(&b.addr, &group, &audit, 2) {
            break n;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "no offsets answer");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        after >= committed,
        "committed offsets after the restart: {after}, before: {committed}"
    );
    produce_lines(&cfg, dir.path(), "b.jsonl", &lines[half..]);
    let want = reference(&b.addr, &audit, 2);
    wait_committed(&b, &group, &audit, 2, lines.len() as i64);
    assert!(run.try_wait().unwrap().is_none(), "the daemon is running");
    assert!(sigterm(&mut run).success());
    assert_eq!(
        incident_ids(&b.addr, &format!("{prefix}-incidents")),
        want.incident_ids
    );
    let cmds: BTreeSet<String> = kills(&b.addr, &format!("{prefix}-control"))
        .into_iter()
        .map(|c| c.command_id)
        .collect();
    assert_eq!(cmds, want.command_ids);
    tansu.stop();
}

#[test]
fn two_daemons_split_the_partitions_and_one_takes_over_when_the_other_stops() {
    let Some(b) = broker() else {
        return;
    };
    let prefix = format!("pair{}", std::process::id());
    let audit = format!("{prefix}-audit");
    b.topics(&prefix, 4);
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let cfg_a = write_config(dir_a.path(), &b, &prefix);
    let cfg_b = write_config(dir_b.path(), &b, &prefix);
    let events = fleet_lines(80, 11, 33);
    let lines = lines_of(&events);
    let third = lines.len() / 3;
    produce_lines(&cfg_a, dir_a.path(), "1.jsonl", &lines[..third]);
    let start = |cfg: &Path, log: &Path| {
        guardian()
            .args(["run", "--config"])
            .arg(cfg)
            .env("E2E_GUARDIAN_KEY", KEY)
            .env("RUST_LOG", "info")
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap()
    };
    let log_a = dir_a.path().join("a.log");
    let log_b = dir_b.path().join("b.log");
    let mut a = start(&cfg_a, &log_a);
    let mut bb = start(&cfg_b, &log_b);
    let assigned = |log: &Path| {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .matches("partition assigned")
            .count()
    };
    // Both members hold partitions once the group has settled.
    let t = Instant::now();
    while assigned(&log_b) == 0 || assigned(&log_a) == 0 {
        assert!(t.elapsed() < Duration::from_secs(60), "group did not split");
        std::thread::sleep(Duration::from_millis(200));
    }
    produce_lines(&cfg_a, dir_a.path(), "2.jsonl", &lines[third..2 * third]);
    let group = format!("{prefix}-group");
    wait_committed(&b, &group, &audit, 4, (2 * third) as i64);
    // B stops; A takes over its partitions.
    let a_before = assigned(&log_a);
    assert!(sigterm(&mut bb).success());
    produce_lines(&cfg_a, dir_a.path(), "3.jsonl", &lines[2 * third..]);
    let want = reference(&b.addr, &audit, 4);
    wait_committed(&b, &group, &audit, 4, lines.len() as i64);
    assert!(sigterm(&mut a).success());
    assert!(
        assigned(&log_a) > a_before,
        "A was assigned B's partitions after B stopped"
    );
    assert_eq!(
        incident_ids(&b.addr, &format!("{prefix}-incidents")),
        want.incident_ids,
        "same incidents as one instance"
    );
    let cmds: BTreeSet<String> = kills(&b.addr, &format!("{prefix}-control"))
        .into_iter()
        .map(|c| c.command_id)
        .collect();
    assert_eq!(cmds, want.command_ids);
}

#[test]
fn a_topic_is_read_to_its_end_even_when_the_newest_batch_holds_several_records() {
    let Some(b) = broker() else {
        return;
    };
    // Tansu answers a latest-offset query with the start of the newest batch plus one, so a
    // reader that stops at that "high watermark" misses the rest of the batch: the tests once
    // reported incidents as lost that were on the topic.
    let topic = format!("batches{}", std::process::id());
    b.create_topic(&topic, 1);
    let p: rdkafka::producer::BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &b.addr)
        .set("linger.ms", "50")
        .create()
        .unwrap();
    let mut sent = Vec::new();
    for batch in [1, 4, 3] {
        for _ in 0..batch {
            let payload = format!("record {}", sent.len());
            p.send(
                rdkafka::producer::BaseRecord::<[u8], [u8]>::to(&topic).payload(payload.as_bytes()),
            )
            .unwrap();
            sent.push(payload.into_bytes());
        }
        rdkafka::producer::Producer::flush(&p, Duration::from_secs(10)).unwrap();
    }
    assert_eq!(read_topic(&b.addr, &topic, 1), sent);
}

/// Two daemons with a changelog topic. One stops for good: the other takes its partitions over
/// from the changelog (restored, not rebuilt from history) and goes on detecting with the
/// baselines intact (the incidents and kill commands of one uninterrupted run). Then the
/// survivor crashes right after a checkpoint's changelog records are acknowledged and before
/// its state is written (`GUARDIAN_FAILPOINT=after-changelog`, an abort), and a third daemon
/// with an empty disk restores from that changelog: nothing is lost, no kill is issued under a
/// new id, and every agent's state equals the uninterrupted run's.
#[test]
fn the_survivor_takes_over_from_the_changelog_and_a_crash_after_it_loses_nothing() {
    let Some(b) = broker() else {
        return;
    };
    let prefix = format!("handoff{}", std::process::id());
    let audit = format!("{prefix}-audit");
    let changelog = format!("{prefix}-changelog");
    b.topics(&prefix, 4);
    b.create_topic(&changelog, 4);
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let cfgs: Vec<std::path::PathBuf> = dirs
        .iter()
        .map(|d| {
            let p = write_config(d.path(), &b, &prefix);
            let text = std::fs::read_to_string(&p).unwrap().replace(
                "dead_letter_topic =",
                &format!("changelog_topic = {changelog:?}\ndead_letter_topic ="),
            );
            std::fs::write(&p, text).unwrap();
            p
        })
        .collect();
    let events = fleet_lines(80, 11, 33);
    let lines = lines_of(&events);
    let cut = |share: f64| (lines.len() as f64 * share) as usize;
    let (first, second) = (cut(0.4), cut(0.7));
    produce_lines(&cfgs[0], dirs[0].path(), "1.jsonl", &lines[..first]);
    let start = |i: usize, failpoint: Option<&str>| {
        let mut p = guardian();
        p.args(["run", "--config"])
            .arg(&cfgs[i])
            .env("E2E_GUARDIAN_KEY", KEY)
            .env("RUST_LOG", "info")
            .stderr(std::fs::File::create(dirs[i].path().join("run.log")).unwrap());
        if let Some(f) = failpoint {
            p.env("GUARDIAN_FAILPOINT", f);
        }
        p.spawn().unwrap()
    };
    let log =
        |i: usize| std::fs::read_to_string(dirs[i].path().join("run.log")).unwrap_or_default();
    let count = |i: usize, what: &str| log(i).matches(what).count();
    let mut a = start(0, None);
    let mut bb = start(1, None);
    let t = Instant::now();
    while count(0, "partition assigned") == 0 || count(1, "partition assigned") == 0 {
        assert!(t.elapsed() < Duration::from_secs(60), "group did not split");
        std::thread::sleep(Duration::from_millis(200));
    }
    let group = format!("{prefix}-group");
    wait_committed(&b, &group, &audit, 4, first as i64);

    // B stops for good; A restores B's partitions from the changelog.
    let seen = log(0).len();
    let stopped = Instant::now();
    assert!(sigterm(&mut bb).success());
    while !log(0)[seen..].contains("partition restored from the changelog") {
        assert!(
            stopped.elapsed() < Duration::from_secs(60),
            "A restored nothing:\n{}",
            log(0)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let takeover = stopped.elapsed();
    // Give the group time to settle, then nothing of the takeover was rebuilt from history.
    wait_committed(&b, &group, &audit, 4, first as i64);
    std::thread::sleep(Duration::from_secs(2));
    let after = log(0)[seen..].to_string();
    assert!(
        !after.contains("rebuild=true"),
        "A rebuilt a partition from its history:\n{after}"
    );
    let restore_line = after
        .lines()
        .find(|l| l.contains("partition restored from the changelog"))
        .map(str::to_string)
        .unwrap_or_default();
    eprintln!("takeover: B stopped → A restored in {takeover:?}; {restore_line}");
    produce_lines(&cfgs[0], dirs[0].path(), "2.jsonl", &lines[first..second]);
    wait_committed(&b, &group, &audit, 4, second as i64);
    assert!(sigterm(&mut a).success());

    // A again, crashing right after its first changelog write; then C on an empty disk.
    let mut crashing = start(0, Some("after-changelog"));
    produce_lines(&cfgs[0], dirs[0].path(), "3.jsonl", &lines[second..]);
    let status = exit_of(
        &mut crashing,
        Duration::from_secs(120),
        "the failpoint was not reached",
    );
    assert!(!status.success(), "aborted at the failpoint: {status:?}");
    assert!(log(0).contains("failpoint"), "{}", log(0));
    let mut c = start(2, None);
    let want = reference(&b.addr, &audit, 4);
    wait_committed(&b, &group, &audit, 4, lines.len() as i64);
    assert!(sigterm(&mut c).success());
    assert_eq!(
        count(2, "partition restored from the changelog"),
        4,
        "{}",
        log(2)
    );
    assert_eq!(
        incident_ids(&b.addr, &format!("{prefix}-incidents")),
        want.incident_ids,
        "the incidents of one uninterrupted run"
    );
    let cmds: BTreeSet<String> = kills(&b.addr, &format!("{prefix}-control"))
        .into_iter()
        .map(|c| c.command_id)
        .collect();
    assert_eq!(cmds, want.command_ids, "no kill under a new id, none lost");
    assert!(!want.command_ids.is_empty());
    let store = agent_guardian::store::Store::open(&dirs[2].path().join("state")).unwrap();
    for st in want.engines.iter().flat_map(|e| e.agents()) {
        let found = store.find_agent(&st.agent_id).unwrap();
        assert_eq!(found.len(), 1, "{}", st.agent_id);
        assert_eq!(&found[0].1, st, "state of {}", st.agent_id);
    }
}

/// Two instances on one broker, sharing four partitions: the admin API of either shows every
/// agent of both (counts, score, top risks), with the owner of each partition, and names the
/// instance that holds an agent it does not.
#[test]
fn two_instances_show_one_fleet_with_the_owner_of_each_partition() {
    let Some(b) = broker() else {
        return;
    };
    let prefix = format!("fleetview{}", std::process::id());
    b.topics(&prefix, 4);
    let posture = format!("{prefix}-posture");
    b.create_topic(&posture, 1);
    let ids = ["e2e-a", "e2e-b"];
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let ports = [free_port(), free_port()];
    let cfgs: Vec<std::path::PathBuf> = (0..2)
        .map(|i| {
            let extra = format!(
                "[posture]\ntopic = {posture:?}\ninterval = \"1s\"\n{}",
                api_section(ports[i])
            );
            let p = write_config_with(dirs[i].path(), &b, &prefix, &extra);
            let text = std::fs::read_to_string(&p).unwrap().replace(
                "guardian_id = \"e2e-1\"",
                &format!("guardian_id = {:?}", ids[i]),
            );
            std::fs::write(&p, text).unwrap();
            p
        })
        .collect();
    let events = fleet_lines(40, 2, 7);
    let lines = lines_of(&events);
    let agents: BTreeSet<String> = lines
        .iter()
        .filter_map(|l| serde_json::from_slice::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("agent_id")?.as_str().map(str::to_string))
        .collect();
    let producer = tempfile::tempdir().unwrap();
    let plain = write_config(producer.path(), &b, &prefix);
    produce_lines(&plain, producer.path(), "fleet.jsonl", &lines);
    let mut daemons: Vec<Daemon> = (0..2)
        .map(|i| Daemon::start(&cfgs[i], ports[i], &dirs[i].path().join("run.log")))
        .collect();
    wait_committed(
        &b,
        &format!("{prefix}-group"),
        &format!("{prefix}-audit"),
        4,
        lines.len() as i64,
    );
    let whole = |d: &Daemon| -> Option<serde_json::Value> {
        let (status, body) = d.get("/posture");
        let p: serde_json::Value = serde_json::from_str(&body).ok().filter(|_| status == 200)?;
        let owners: BTreeSet<&str> = p["partitions"]
            .as_array()?
            .iter()
            .filter_map(|r| r["owner"].as_str())
            .collect();
        let counted = p["fleet"]["agents"].as_u64()? as usize == agents.len();
        let four = p["partitions"].as_array()?.len() == 4;
        (counted && four && owners == BTreeSet::from(ids)).then_some(p)
    };
    let mut views = Vec::new();
    for d in &mut daemons {
        d.until("every agent of both instances in GET /posture", |d| {
            whole(d).is_some()
        });
        views.push(whole(d).unwrap());
    }
    for (i, p) in views.iter().enumerate() {
        let instances = p["instances"].as_array().unwrap();
        assert_eq!(instances.len(), 2, "{p}");
        let this: Vec<&str> = instances
            .iter()
            .filter(|r| r["this"] == true)
            .filter_map(|r| r["guardian_id"].as_str())
            .collect();
        assert_eq!(this, [ids[i]]);
        let sum: u64 = instances.iter().filter_map(|r| r["agents"].as_u64()).sum();
        assert_eq!(sum as usize, agents.len(), "each agent counted once: {p}");
        assert_eq!(p["fleet"]["score"], views[0]["fleet"]["score"], "one score");
    }
    // An agent of b, asked of a: a names b.
    let (status, body) = daemons[1].get("/agents?limit=1000");
    assert_eq!(status, 200, "{body}");
    let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
    let of_b = listed["agents"][0]["agent_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, body) = daemons[0].get(&format!("/agents/{of_b}"));
    assert_eq!(status, 404, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["owner"]["guardian_id"], ids[1], "{answer}");

    // Whoever may write to the posture topic without the signing key cannot re-point the
    // partitions: a newer snapshot under another id, claiming every partition, unsigned or
    // signed with another key, is refused and counted.
    let published = read_topic(&b.addr, &posture, 1);
    let mut forged: serde_json::Value =
        serde_json::from_slice(published.last().expect("a published snapshot")).unwrap();
    forged["guardian_id"] = "e2e-forger".into();
    forged["published_at"] = (chrono_now_ms() + 60_000).into();
    let forged = serde_json::to_vec(&forged).unwrap();
    let p: rdkafka::producer::BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &b.addr)
        .create()
        .unwrap();
    let bad_sig = "00".repeat(32);
    for sig in [None, Some(bad_sig.as_str())] {
        let mut rec = rdkafka::producer::BaseRecord::<[u8], [u8]>::to(&posture)
            .key(b"e2e-forger".as_slice())
            .payload(&forged);
        if let Some(sig) = sig {
            rec = rec.headers(rdkafka::message::OwnedHeaders::new().insert(
                rdkafka::message::Header {
                    key: "guardian.signature",
                    value: Some(sig),
                },
            ));
        }
        p.send(rec).map_err(|(e, _)| e).unwrap();
    }
    rdkafka::producer::Producer::flush(&p, Duration::from_secs(10)).unwrap();
    for d in &mut daemons {
        d.until("both forged snapshots refused", |d| {
            d.metric("guardian_peer_snapshots_rejected_total") >= 2.0
        });
        let p = whole(d).expect("the fleet of a and b only");
        assert!(!p.to_string().contains("e2e-forger"), "{p}");
    }
    for d in daemons {
        d.stop();
    }
}

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
