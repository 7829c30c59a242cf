//! Load benchmark through a Tansu broker process: sustained events/s of the daemon, and latency
//! from producing the deciding event to the kill command arriving on the control topic.
//!
//! `cargo bench --bench kafka_load` starts its own Tansu (`scripts/tansu.sh`) unless
//! `TANSU_BROKER` and `TANSU_BIN` are set, and then runs the same phases on librdkafka's mock
//! cluster hosted in a process of its own (this binary, started again), reached over TCP: a
//! broker whose fetch cost does not grow with its log, so the daemon's share of the latency is
//! told apart from the test broker's. `LOAD_BROKERS` (default "tansu,mock") picks them.
//! Environment: `LOAD_EVENTS` (default 1,000,000),
//! `LOAD_RATE` (events/s of the latency phase, default 10,000), `LOAD_SECONDS` (default 30),
//! `LOAD_LINGER_MS` (`linger.ms` of the producer standing in for the agents, default 5 as in
//! librdkafka; one producer sends the whole fleet's events, so this sets how many produce
//! requests the broker handles per second), `LOAD_ROGUE_EVERY` (events per rogue agent, each
//! one kill command; default 500), `LOAD_LAT_PARTITIONS` (audit partition counts of the
//! latency phases, one phase each; default "1,4"), `LOAD_CHANGELOG` (1: checkpoints also publish
//! the changelog topic; default 0), `LOAD_MAX_IN_MEMORY` (the daemon's `max_agents_in_memory`,
//! default 0: no bound; the throughput phase's fleet is 300 agents, and the phase then prints how
//! often states left memory and were read back).
//!
//! The latency is reported from the moment the deciding event is handed to the agents' producer,
//! from the moment the broker acknowledged it (the agent's own batching taken out), and split at
//! the kill command's CreateTime.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_guardian::app::Daemon;
use agent_guardian::config::KafkaConfig;
use agent_guardian::demo;
use agent_guardian::event::format_rfc3339_ms;
use agent_guardian::simulate::{SimConfig, Simulation};
use agent_guardian::sink::kafka::{KafkaSink, OutputTopics as _};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Broker {
    name: &'static str,
    addr: String,
    bin: String,
    pid: Option<String>,
    /// The mock cluster's process (its topics are created at its start).
    mock: Option<std::process::Child>,
}

/// Audit partitions of each phase's topics: the throughput phase and one latency phase per count.
fn phases() -> Vec<(String, u32)> {
    let mut v = vec![("load".to_string(), 4)];
    let counts = std::env::var("LOAD_LAT_PARTITIONS").unwrap_or_else(|_| "1,4".into());
    for n in counts
        .split(',')
        .filter_map(|n| n.trim().parse::<u32>().ok())
    {
        v.push((format!("lat{}", n.max(1)), n.max(1)));
    }
    v
}

/// Whether checkpoints also publish the changelog (`LOAD_CHANGELOG=1`), to measure its cost.
fn changelog() -> bool {
    env_or("LOAD_CHANGELOG", 0) == 1
}

/// In the mock-cluster child: hosts the cluster with every phase's topics, prints its address,
/// and lives until its standard input closes (the parent ends).
fn mock_cluster_child() {
    let c = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
    for (prefix, n) in phases() {
        let log = changelog().then_some(("changelog", n));
        for (t, parts) in [("audit", n), ("incidents", 1), ("control", 1), ("dlq", 1)]
            .into_iter()
            .chain(log)
        {
            c.create_topic(&format!("{prefix}-{t}"), parts as i32, 1)
                .expect("mock topic");
        }
    }
    println!("MOCK_BROKER={}", c.bootstrap_servers());
    let mut sink = String::new();
    while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
}

fn mock_broker() -> Broker {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().expect("exe"))
        .env("LOAD_MOCK_CHILD", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("mock cluster process");
    let mut line = String::new();
    let out = child.stdout.take().expect("stdout");
    std::io::BufReader::new(out)
        .read_line(&mut line)
        .expect("mock address");
    let addr = line
        .trim()
        .strip_prefix("MOCK_BROKER=")
        .expect("MOCK_BROKER=")
        .to_string();
    Broker {
        name: "mock cluster",
        addr,
        bin: String::new(),
        pid: None,
        mock: Some(child),
    }
}

fn broker() -> Broker {
    if let (Ok(addr), Ok(bin)) = (std::env::var("TANSU_BROKER"), std::env::var("TANSU_BIN")) {
        return Broker {
            name: "Tansu",
            addr,
            bin,
            pid: None,
            mock: None,
        };
    }
    let port = 40_000 + std::process::id() % 10_000;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/tansu.sh");
    let out = std::process::Command::new(script)
        .args(["start", &port.to_string()])
        .output()
        .expect("scripts/tansu.sh");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |k: &str| {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .unwrap_or_default()
            .to_string()
    };
    Broker {
        name: "Tansu",
        addr: format!("127.0.0.1:{port}"),
        bin: field("TANSU_BIN="),
        pid: Some(field("TANSU_PID=")),
        mock: None,
    }
}

impl Broker {
    fn topics(&self, prefix: &str, audit_partitions: u32) -> KafkaConfig {
        let log = changelog().then_some(("changelog", audit_partitions));
        for (t, n) in [
            ("audit", audit_partitions),
            ("incidents", 1),
            ("control", 1),
            ("dlq", 1),
        ]
        .into_iter()
        .chain(log)
        {
            if self.mock.is_some() {
                break; // created with the cluster
            }
            let s = std::process::Command::new(&self.bin)
                .args(["topic", "create", &format!("{prefix}-{t}"), "--partitions"])
                .arg(n.to_string())
                .args(["--broker", &format!("tcp://{}", self.addr)])
                .output()
                .expect("tansu topic create");
            assert!(s.status.success(), "{s:?}");
        }
        KafkaConfig {
            brokers: self.addr.clone(),
            group_id: format!("{prefix}-group"),
            audit_topics: vec![format!("{prefix}-audit")],
            incidents_topic: format!("{prefix}-incidents"),
            control_topic: format!("{prefix}-control"),
            dead_letter_topic: format!("{prefix}-dlq"),
            changelog_topic: changelog().then(|| format!("{prefix}-changelog")),
            ..KafkaConfig::default()
        }
    }

    fn stop(&mut self) {
        if let Some(pid) = &self.pid {
            let _ = std::process::Command::new("kill").arg(pid).status();
        }
        if let Some(mut c) = self.mock.take() {
            drop(c.stdin.take());
            let _ = c.wait();
        }
    }
}

/// The daemon configuration of the benchmark: the demo's, with production checkpointing (1 s),
/// for a guard past its first-deployment learning period (a fresh state would otherwise judge
/// nothing new and kill nothing for its first days of event time) and without the fleet's or the
/// cohort's kill budget (the latency phase kills one agent in 500 on purpose, to time each kill;
/// with the cohort's budget only the first two of them would be killed).
fn config(k: KafkaConfig, dir: &std::path::Path) -> agent_guardian::config::Resolved {
    let set = demo::demo_blueprints_learned().expect("blueprints");
    let unbudgeted = set
        .blueprints()
        .iter()
        .cloned()
        .map(|mut b| {
            b.kill.budget_per_hour = u32::MAX;
            b.kill.budget_share = 1.0;
            b.kill.budget_per_cohort = 0;
            b
        })
        .collect();
    let set = agent_guardian::blueprint::BlueprintSet::from_blueprints(
        unbudgeted,
        set.assignment().clone(),
    )
    .expect("blueprints");
    let mut cfg = demo::local_config(k, dir, std::sync::Arc::new(set));
    cfg.checkpoint_interval = Duration::from_secs(env_or("LOAD_CHECKPOINT_S", 1));
    cfg.config.checkpoint_interval = "1s".into();
    cfg.config.checkpoint_events = env_or("LOAD_CHECKPOINT_EVENTS", cfg.config.checkpoint_events);
    cfg.config.max_agents_in_memory = env_or("LOAD_MAX_IN_MEMORY", 0) as usize;
    // Extra librdkafka options to experiment with: LOAD_OPTS="consumer.fetch.wait.max.ms=10,…".
    for kv in std::env::var("LOAD_OPTS").unwrap_or_default().split(',') {
        if let Some((k, v)) = kv.split_once('=') {
            cfg.kafka_options.insert(k.trim().into(), v.trim().into());
        }
    }
    cfg
}

fn throughput(b: &Broker, n: u64) {
    let k = b.topics("load", 4);
    throughput_on(k, n, b.name);
}

fn throughput_on(k: KafkaConfig, n: u64, broker: &str) {
    let days = (n / 56_000 + 1) as u32;
    let sim = Simulation::new(SimConfig {
        agents: 300,
        days,
        seed: 1,
        ..SimConfig::default()
    });
    let events = sim.to_jsonl();
    let mut sink = KafkaSink::new(&k.brokers, &Default::default()).expect("producer");
    let t = Instant::now();
    let mut produced = 0u64;
    for line in events.split(|&c| c == b'\n').filter(|l| !l.is_empty()) {
        if produced == n {
            break;
        }
        // The key is the agent id; the simulator writes it as the fourth field.
        let key = line
            .windows(12)
            .position(|w| w == b"\"agent_id\":\"")
            .and_then(|p| {
                let rest = &line[p + 12..];
                rest.iter().position(|&c| c == b'"').map(|e| &rest[..e])
            });
        sink.send(&k.audit_topics[0], key, line, None)
            .expect("send");
        produced += 1;
    }
    sink.settle(Duration::from_secs(10)).expect("settle");
    let produce_s = t.elapsed().as_secs_f64();
    println!(
        "[{broker}] produce: {produced} events in {produce_s:.2} s = {:.0} events/s",
        produced as f64 / produce_s
    );

    let dir = tempfile::tempdir().expect("tmp");
    let d = Daemon::start(config(k, dir.path())).expect("daemon");
    let t0 = Instant::now();
    // Sustained rate: from the first processed event to the last.
    let mut first: Option<(Instant, u64)> = None;
    loop {
        let e = d.metrics.events.load(Ordering::Relaxed);
        if first.is_none() && e > 0 {
            first = Some((Instant::now(), e));
        }
        if e >= produced || t0.elapsed() > Duration::from_secs(600) {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let end = Instant::now();
    let total = d.metrics.events.load(Ordering::Relaxed);
    let (t1, e1) = first.unwrap_or((t0, 0));
    let secs = (end - t1).as_secs_f64();
    println!(
        "[{broker}] consume+detect+checkpoint: {} events in {secs:.2} s after the group join ({:.2} s) = {:.0} events/s sustained (target >= 200,000)",
        total - e1,
        (t1 - t0).as_secs_f64(),
        (total - e1) as f64 / secs
    );
    if env_or("LOAD_MAX_IN_MEMORY", 0) > 0 {
        println!(
            "[{broker}] at most {} agents in memory: {} in memory now, states left memory {} times and were read back {} times",
            env_or("LOAD_MAX_IN_MEMORY", 0),
            d.metrics.agents_in_memory.load(Ordering::Relaxed),
            d.metrics.agents_unloaded.load(Ordering::Relaxed),
            d.metrics.agents_loaded.load(Ordering::Relaxed)
        );
    }
    d.shutdown();
    d.join(Duration::from_secs(60)).expect("join");
}

fn latency(b: &Broker, rate: u64, seconds: u64, partitions: u32) {
    println!(
        "[{}] latency phase: audit topic of {partitions} partition(s)",
        b.name
    );
    let k = b.topics(&format!("lat{partitions}"), partitions);
    let dir = tempfile::tempdir().expect("tmp");
    let d = Daemon::start(config(k.clone(), dir.path())).expect("daemon");
    while d.metrics.partitions.load(Ordering::Relaxed) == 0 {
        std::thread::sleep(Duration::from_millis(20));
    }
    // Reader of the control topic: agent → arrival time of its kill command, and the command's
    // CreateTime (wall-clock ms set by the daemon's producer) to split the latency in two.
    let arrivals: Arc<Mutex<HashMap<String, Arrival>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (arrivals, stop, k) = (arrivals.clone(), stop.clone(), k.clone());
        std::thread::spawn(move || {
            let c: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &k.brokers)
                .set("group.id", "lat-reader")
                .set("fetch.wait.max.ms", "5")
                .create()
                .expect("reader");
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&k.control_topic, 0, Offset::Beginning)
                .expect("tpl");
            c.assign(&tpl).expect("assign");
            while !stop.load(Ordering::Relaxed) {
                if let Some(Ok(m)) = c.poll(Duration::from_millis(10)) {
                    let now = (
                        Instant::now(),
                        wall_ms(),
                        m.timestamp().to_millis().unwrap_or(0),
                    );
                    if let Some(k) = m.key() {
                        if let Ok(mut a) = arrivals.lock() {
                            a.entry(String::from_utf8_lossy(k).into_owned())
                                .or_insert(now);
                        }
                    }
                }
            }
        })
    };
    // The agents' producer batches for up to 5 ms, as Kafka clients do by default. Its delivery
    // callback notes when the broker acknowledged each rogue's deciding event.
    let acked: Arc<Mutex<HashMap<usize, Instant>>> = Arc::default();
    let producer: ThreadedProducer<AckTimes> = ClientConfig::new()
        .set("bootstrap.servers", &k.brokers)
        .set("linger.ms", env_or("LOAD_LINGER_MS", 5).to_string())
        .set("compression.type", "lz4")
        .create_with_context(AckTimes(acked.clone()))
        .expect("producer");
    // Tuesday 2026-03-03 10:00 New York: working hours for every blueprint.
    let base = 1_772_550_000_000i64;
    let total = rate * seconds;
    // One rogue agent per `LOAD_ROGUE_EVERY` events (default 500: 600 kill commands in 30 s, so
    // the p99 is not just the second-worst sample); each needs 6 calls to be killed.
    let rogue_every = env_or("LOAD_ROGUE_EVERY", 500).max(7);
    // The payloads are built before the clock starts, so the load generator leaves the CPU to
    // the broker and the daemon (two cores here for all three).
    let events: Vec<(String, Vec<u8>, Option<usize>)> = (0..total)
        .map(|i| {
            let (agent, ts, tool, deciding) = if i % rogue_every >= rogue_every - 6 {
                // The rogue: six contiguous payments, 1 s apart in event time → three sequence
                // incidents → kill on the sixth.
                let r = i / rogue_every;
                let j = (i % rogue_every - (rogue_every - 6)) as i64;
                let deciding = (i % rogue_every == rogue_every - 1).then_some(r as usize);
                (
                    format!("fin-rogue-{r}"),
                    base + j * 1000,
                    "trigger_payment",
                    deciding,
                )
            } else {
                let a = i % 1000;
                let ts = base + (i / 1000) as i64 * 10_000;
                (format!("eng-bg-{a:04}"), ts, "read_repo", None)
            };
            let payload = serde_json::json!({"event_id": format!("{agent}-{i}"),
                "timestamp": format_rfc3339_ms(ts), "request_id": "r", "agent_id": agent,
                "tool_name": tool, "outcome": "ALLOW", "reasons": [],
                "safe_payload": {"environment": "prod", "bytes": 2000}})
            .to_string()
            .into_bytes();
            (agent, payload, deciding)
        })
        .collect();
    let mut sent_at: HashMap<String, (Instant, i64, usize)> = HashMap::new();
    let start = Instant::now();
    let mut i = 0usize;
    while i < events.len() {
        // Pace to `rate` events/s in 1 ms ticks (sleeping, not spinning).
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as usize + 1).min(events.len());
        while i < due {
            let (agent, payload, deciding) = &events[i];
            let mut rec =
                BaseRecord::with_opaque_to(&k.audit_topics[0], deciding.unwrap_or(usize::MAX))
                    .key(agent.as_bytes())
                    .payload(payload.as_slice());
            loop {
                match producer.send(rec) {
                    Ok(()) => break,
                    Err((_, r)) => {
                        rec = r;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
            if let Some(r) = deciding {
                sent_at.insert(agent.clone(), (Instant::now(), wall_ms(), *r));
            }
            i += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let sent_s = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let _ = reader.join();
    let arrivals = arrivals.lock().map(|a| a.clone()).unwrap_or_default();
    let acked = acked.lock().map(|a| a.clone()).unwrap_or_default();
    // For one rogue (its agent; send time, send wall clock, index): latency, the two parts of its
    // wall-clock split, and the time to the broker's acknowledgement (all ms).
    let samples_of = |agent: &String, s: &(Instant, i64, usize)| -> Option<Sample> {
        let ack = acked
            .get(&s.2)
            .map_or(f64::NAN, |t| (*t - s.0).as_secs_f64() * 1000.0);
        arrivals.get(agent).map(|r| {
            (
                (r.0 - s.0).as_secs_f64() * 1000.0,
                r.2 - s.1,
                r.1 - r.2,
                ack,
            )
        })
    };
    let report = |label: &str, warmup: Duration| {
        let samples: Vec<Sample> = sent_at
            .iter()
            .filter(|(_, s)| s.0 - start >= warmup)
            .filter_map(|(a, s)| samples_of(a, s))
            .collect();
        // The slowest samples, where they fall in the run and how they split.
        let mut slow: Vec<(f64, f64, Sample)> = sent_at
            .iter()
            .filter(|(_, s)| s.0 - start >= warmup)
            .filter_map(|(a, s)| samples_of(a, s).map(|x| (x.0, (s.0 - start).as_secs_f64(), x)))
            .collect();
        slow.sort_by(|a, b| b.0.total_cmp(&a.0));
        let slow: Vec<String> = slow
            .iter()
            .take(8)
            .map(|(lat, at, x)| {
                format!(
                    "{lat:.0} ms at {at:.1} s (to command {} + to reader {}, ack {:.0})",
                    x.1, x.2, x.3
                )
            })
            .collect();
        println!("  slowest ({label}): {}", slow.join("; "));
        // The same by 5 s of the run: a broker whose fetches slow as its log grows shows here.
        let mut by_window: std::collections::BTreeMap<u64, Vec<f64>> = Default::default();
        for (a, s) in sent_at.iter().filter(|(_, s)| s.0 - start >= warmup) {
            if let Some((lat, ..)) = samples_of(a, s) {
                by_window
                    .entry((s.0 - start).as_secs() / 5)
                    .or_default()
                    .push(lat);
            }
        }
        let windows: Vec<String> = by_window
            .into_iter()
            .map(|(w, mut v)| {
                v.sort_by(f64::total_cmp);
                format!(
                    "{}-{} s: p50 {:.0}, p99 {:.0}",
                    w * 5,
                    w * 5 + 5,
                    percentile(&v, 0.5),
                    percentile(&v, 0.99)
                )
            })
            .collect();
        println!("  by time in the run ({label}, ms): {}", windows.join("; "));
        let mut lat: Vec<f64> = samples.iter().map(|s| s.0).collect();
        lat.sort_by(f64::total_cmp);
        if lat.is_empty() {
            println!("latency ({label}): no kill command arrived");
            return;
        }
        let pct = |p: f64| percentile(&lat, p);
        // Wall-clock split (ms resolution): send → the daemon produces the command, then
        // command produced → it is read from the control topic.
        let split = |f: fn(&Sample) -> i64| {
            let mut v: Vec<f64> = samples.iter().map(|s| f(s) as f64).collect();
            v.sort_by(f64::total_cmp);
            let q = |p: f64| percentile(&v, p);
            format!("p50 {} ms, p90 {} ms, p99 {} ms", q(0.5), q(0.9), q(0.99))
        };
        println!(
            "  split ({label}): send → command produced: {}; produced → read: {}",
            split(|s| s.1),
            split(|s| s.2)
        );
        // From the broker's acknowledgement of the deciding event (the agent's own batching
        // and the produce round trip taken out) to the kill command read back.
        let mut from_ack: Vec<f64> = samples
            .iter()
            .map(|s| s.0 - s.3)
            .filter(|v| v.is_finite())
            .collect();
        from_ack.sort_by(f64::total_cmp);
        if !from_ack.is_empty() {
            let q = |p: f64| percentile(&from_ack, p);
            println!(
                "  from the broker's ack of the deciding event ({label}): p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms",
                q(0.5),
                q(0.9),
                q(0.99)
            );
        }
        println!(
            "[{}] latency at {:.0} events/s, {partitions} partition(s) ({label}): {} kill commands; produce → kill command on the control topic: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms (target p99 <= 50 ms)",
            b.name,
            total as f64 / sent_s,
            lat.len(),
            pct(0.5),
            pct(0.9),
            pct(0.99),
            lat.last().copied().unwrap_or(f64::NAN)
        );
    };
    println!(
        "[{}] daemon: {} events, {} incidents, {} kill commands",
        b.name,
        d.metrics.events.load(Ordering::Relaxed),
        d.metrics.incidents.load(Ordering::Relaxed),
        d.metrics.kill_commands.load(Ordering::Relaxed)
    );
    println!(
        "kills: {} of {} expected arrived",
        sent_at.keys().filter(|a| arrivals.contains_key(*a)).count(),
        sent_at.len()
    );
    report("all", Duration::ZERO);
    report("after the first second", Duration::from_secs(1));
    d.shutdown();
    d.join(Duration::from_secs(60)).expect("join");
}

/// The `p` quantile (nearest rank) of sorted, non-empty `v`.
fn percentile(v: &[f64], p: f64) -> f64 {
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

/// One rogue's latency (ms), its wall-clock split (send → command produced, produced → read,
/// ms) and the time to the broker's acknowledgement of its deciding event (ms).
type Sample = (f64, i64, i64, f64);

/// When a kill command was read, that in wall-clock ms, and its CreateTime (ms).
type Arrival = (Instant, i64, i64);

/// Producer context noting when the broker acknowledged the messages that carry an index.
struct AckTimes(Arc<Mutex<HashMap<usize, Instant>>>);

impl ClientContext for AckTimes {}

impl ProducerContext for AckTimes {
    type DeliveryOpaque = usize;
    fn delivery(&self, result: &DeliveryResult<'_>, index: usize) {
        if index != usize::MAX && result.is_ok() {
            if let Ok(mut a) = self.0.lock() {
                a.insert(index, Instant::now());
            }
        }
    }
}

/// Wall-clock time in ms since the epoch (Kafka message timestamps use it).
fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn main() {
    if std::env::var_os("LOAD_MOCK_CHILD").is_some() {
        return mock_cluster_child();
    }
    // `cargo test --benches` runs bench binaries with `--bench` absent: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let brokers = std::env::var("LOAD_BROKERS").unwrap_or_else(|_| "tansu,mock".into());
    for name in brokers.split(',').map(str::trim) {
        let mut b = match name {
            "tansu" => broker(),
            "mock" => mock_broker(),
            other => panic!("LOAD_BROKERS: unknown broker {other:?} (tansu, mock)"),
        };
        // The mock cluster keeps only the newest few MB of a partition (librdkafka's mock
        // retention), so a million events produced ahead cannot be read from the start there:
        // the throughput phase runs on Tansu only.
        if b.mock.is_none() {
            throughput(&b, env_or("LOAD_EVENTS", 1_000_000));
        }
        // One latency phase per audit partition count (`LOAD_LAT_PARTITIONS`, default "1,4"):
        // Tansu's in-memory storage lists every batch of a partition on each fetch of it, so its
        // cost per fetch grows with partitions × log length (see the README's Performance
        // section); the mock cluster's does not.
        for (_, n) in phases().into_iter().skip(1) {
            latency(
                &b,
                env_or("LOAD_RATE", 10_000),
                env_or("LOAD_SECONDS", 30),
                n,
            );
        }
        b.stop();
    }
}
