//! The Tansu end-to-end harness: the broker the test script started, topics, the daemon's
//! configuration, reading topics back, stopping the daemon.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command as Proc};
use std::time::{Duration, Instant};

use rdkafka::message::Message;

use agent_guardian::control::{Command, Verb};

pub const KEY: &str = "e2e-signing-key-0123456789";

pub struct Broker {
    /// host:port.
    pub addr: String,
    /// The tansu binary.
    pub bin: String,
}

/// `None`, so the test is skipped; a failure instead when `GUARDIAN_REQUIRE_E2E` is set.
pub fn unavailable<T>(vars: &str, what: &str) -> Option<T> {
    assert!(
        std::env::var_os("GUARDIAN_REQUIRE_E2E").is_none(),
        "GUARDIAN_REQUIRE_E2E is set but {vars} is not"
    );
    eprintln!("skipped: {what} (run scripts/test.sh)");
    None
}

pub fn broker() -> Option<Broker> {
    match (std::env::var("TANSU_BROKER"), std::env::var("TANSU_BIN")) {
        (Ok(addr), Ok(bin)) => Some(Broker { addr, bin }),
        _ => unavailable("TANSU_BROKER / TANSU_BIN", "no Tansu broker"),
    }
}

impl Broker {
    pub fn create_topic(&self, name: &str, partitions: u32) {
        let out = Proc::new(&self.bin)
            .args(["topic", "create", name, "--partitions"])
            .arg(partitions.to_string())
            .args(["--broker", &format!("tcp://{}", self.addr)])
            .output()
            .expect("tansu topic create");
        assert!(out.status.success(), "{out:?}");
    }

    /// The audit topic (with `partitions`) and the three output topics of a test.
    pub fn topics(&self, prefix: &str, partitions: u32) {
        self.create_topic(&format!("{prefix}-audit"), partitions);
        for t in ["incidents", "control", "dlq"] {
            self.create_topic(&format!("{prefix}-{t}"), 1);
        }
    }
}

/// A test's topics (named `{name}{pid}-…`), state directory and config file.
pub fn setup(
    b: &Broker,
    name: &str,
    partitions: u32,
) -> (String, tempfile::TempDir, std::path::PathBuf) {
    let prefix = format!("{name}{}", std::process::id());
    b.topics(&prefix, partitions);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), b, &prefix);
    (prefix, dir, cfg)
}

pub fn guardian() -> Proc {
    Proc::new(env!("CARGO_BIN_EXE_guardian"))
}

pub fn write_config(dir: &Path, b: &Broker, prefix: &str) -> std::path::PathBuf {
    write_config_with(dir, b, prefix, "")
}

/// [`write_config`] with `extra` TOML appended (sections such as `[api]`).
pub fn write_config_with(dir: &Path, b: &Broker, prefix: &str, extra: &str) -> std::path::PathBuf {
    let assignment = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/assignment.json");
    let text = format!(
        r#"guardian_id = "e2e-1"
state_dir = {state:?}
assignment = {assignment:?}
signing_key = {{ env = "E2E_GUARDIAN_KEY" }}
checkpoint_interval = "250ms"
backfill = "emit"
[kafka]
brokers = "{addr}"
group_id = "{prefix}-group"
audit_topics = ["{prefix}-audit"]
incidents_topic = "{prefix}-incidents"
control_topic = "{prefix}-control"
dead_letter_topic = "{prefix}-dlq"
[kafka.options]
"consumer.session.timeout.ms" = "6000"
"consumer.heartbeat.interval.ms" = "500"
"#,
        state = dir.join("state"),
        addr = b.addr,
    );
    let p = dir.join("guardian.toml");
    std::fs::write(&p, text + extra).unwrap();
    p
}

/// Every payload of a topic's partitions, read to the end the broker's fetches report.
pub fn read_topic(addr: &str, topic: &str, partitions: i32) -> Vec<Vec<u8>> {
    agent_guardian::demo::read_to_end(addr, topic, partitions, Duration::from_secs(30))
        .iter()
        .map(|m| m.payload().unwrap_or_default().to_vec())
        .collect()
}

pub fn kills(addr: &str, topic: &str) -> Vec<Command> {
    read_topic(addr, topic, 1)
        .iter()
        .filter_map(|p| serde_json::from_slice::<Command>(p).ok())
        .filter(|c| c.command == Verb::Kill)
        .collect()
}

pub fn sigterm(child: &mut Child) -> std::process::ExitStatus {
    let _ = Proc::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let t = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(40),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
