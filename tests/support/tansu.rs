//! The Tansu end-to-end harness: the broker the test script started, topics, the daemon's
//! configuration, reading topics back, stopping the daemon.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command as Proc, Stdio};
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
    agent_guardian::kafka::read_to_end(addr, topic, partitions, Duration::from_secs(30))
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
    exit_of(child, Duration::from_secs(40), "no exit after SIGTERM")
}

/// Waits for the process to exit (panics with `why` after `within`).
pub fn exit_of(child: &mut Child, within: Duration, why: &str) -> std::process::ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(t.elapsed() < within, "{why}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The admin API token of the daemons the tests start.
pub const TOKEN: &str = "hostile-test-token-0123456789";

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A running `guardian run`, its admin API port and its log file.
pub struct Daemon {
    pub child: Child,
    pub port: u16,
    pub log: std::path::PathBuf,
}

impl Daemon {
    pub fn start(cfg: &Path, port: u16, log: &Path) -> Daemon {
        let file = std::fs::File::create(log).expect("log file");
        let child = guardian()
            .args(["run", "--config"])
            .arg(cfg)
            .env("E2E_GUARDIAN_KEY", KEY)
            .env("E2E_API_TOKEN", TOKEN)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("guardian run");
        Daemon {
            child,
            port,
            log: log.to_path_buf(),
        }
    }

    pub fn alive(&mut self) {
        if let Some(s) = self.child.try_wait().expect("wait") {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            panic!("the daemon exited ({s}):\n{log}");
        }
    }

    /// `GET path` on the admin API: status and body; 0 when it does not answer yet.
    pub fn get(&self, path: &str) -> (u16, String) {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return (0, String::new());
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
        );
        let mut raw = Vec::new();
        if s.write_all(req.as_bytes()).is_err() || s.read_to_end(&mut raw).is_err() {
            return (0, String::new());
        }
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (status, body.to_string())
    }

    /// The value of the sample `name` (with its labels, as written in the exposition), 0 if
    /// absent.
    pub fn metric(&self, sample: &str) -> f64 {
        let (_, body) = self.get("/metrics");
        body.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// Waits (at most 90 s) until `ok`, failing if the daemon exits meanwhile.
    pub fn until(&mut self, what: &str, mut ok: impl FnMut(&Daemon) -> bool) {
        let t = Instant::now();
        loop {
            self.alive();
            if ok(self) {
                return;
            }
            assert!(
                t.elapsed() < Duration::from_secs(90),
                "timed out waiting for {what}; metrics:\n{}",
                self.get("/metrics").1
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn stop(mut self) {
        self.alive();
        let s = sigterm(&mut self.child);
        assert!(s.success(), "exit {s}");
    }

    pub fn kill_9(mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }
}

/// A test's topics (named `{name}{pid}-…`), state directory, admin API port and config file.
pub fn setup_with_api(
    b: &Broker,
    name: &str,
    partitions: u32,
) -> (String, tempfile::TempDir, u16, std::path::PathBuf) {
    let prefix = format!("{name}{}", std::process::id());
    b.topics(&prefix, partitions);
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let cfg = write_config_with(dir.path(), b, &prefix, &api_section(port));
    (prefix, dir, port, cfg)
}

/// `guardian kill|revive AGENT` through the CLI, as an operator does.
pub fn operator(cfg: &Path, verb: &str, agent: &str) {
    let out = guardian()
        .args([verb, "--config"])
        .arg(cfg)
        .args([agent, "--reason", "end-to-end test"])
        .env("E2E_GUARDIAN_KEY", KEY)
        .env("E2E_API_TOKEN", TOKEN)
        .output()
        .expect("guardian kill");
    assert!(out.status.success(), "{out:?}");
}

pub fn api_section(port: u16) -> String {
    format!("[api]\nlisten = \"127.0.0.1:{port}\"\ntoken = {{ env = \"E2E_API_TOKEN\" }}\n")
}
