//! The `guardian` binary: blueprint validation and display, replay of good and bad input.

use std::io::Write;
use std::process::{Command, Stdio};

fn guardian(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_guardian"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("guardian runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("guardian exits");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn peer_blueprints_load_and_validate_unchanged() {
    let (code, out, _) = guardian(
        &[
            "blueprint",
            "validate",
            "tests/fixtures/peer/BLUEPRINT_FINANCE.json",
            "tests/fixtures/peer/BLUEPRINT_SOC.json",
            "tests/fixtures/peer/BLUEPRINT_ENGINEERING.json",
            "blueprints/finance.json",
            "blueprints/soc.json",
            "blueprints/engineering.json",
            "deploy/assignment.json",
        ],
        "",
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.matches(": OK").count(), 7, "{out}");
}

#[test]
fn validate_reports_every_error_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.json");
    std::fs::write(
        &f,
        r#"{"name": "B", "mode": "panic", "anomaly": {"frequency_threshold": "lots", "allowed_hours": {"start": 30, "end": 5}},
            "timezone": "Atlantis/Capital", "kill": {"cooldown": "soon"}}"#,
    )
    .unwrap();
    let (code, out, _) = guardian(&["blueprint", "validate", f.to_str().unwrap()], "");
    assert_eq!(code, 1);
    for p in [
        "/mode",
        "/anomaly/frequency_threshold",
        "/anomaly/allowed_hours/start",
        "/timezone",
        "/kill/cooldown",
    ] {
        assert!(out.contains(&format!("{p}: ")), "missing {p} in {out}");
    }
}

#[test]
fn show_prints_the_effective_blueprint_with_defaults() {
    let (code, out, _) = guardian(&["blueprint", "show", "finance"], "");
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["timezone"], "America/New_York");
    assert_eq!(v["anomaly"]["frequency_threshold"], 30);
    assert_eq!(v["learned"]["min_active_days"], 3);
    assert_eq!(v["learned"]["learning_period"], "7days");
    assert_eq!(v["kill"]["budget"]["per_hour"], 3);
    assert_eq!(v["kill"]["weights"]["critical"], 2.0);
    let (code, out, _) = guardian(
        &[
            "blueprint",
            "show",
            "tests/fixtures/peer/BLUEPRINT_SOC.json",
        ],
        "",
    );
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["anomaly"]["volume_threshold"], 500);
    assert_eq!(v["timezone"], "UTC");
}

#[test]
fn replay_counts_malformed_lines_with_line_numbers_and_goes_on() {
    let mut input = String::new();
    input.push_str("not json\n");
    for i in 0..40 {
        input.push_str(&format!(
            r#"{{"event_id":"e{i}","timestamp":"2026-03-03T15:00:{:02}Z","agent_id":"fin-1","tool_name":"q","outcome":"ALLOW","reasons":[],"safe_payload":{{"agent_id":"fin-1","tool_name":"q","environment":"prod","outcome":"ALLOW"}}}}"#,
            i
        ));
        input.push('\n');
    }
    input.push_str("{\"agent_id\": 5, \"timestamp\": \"2026-03-03T15:01:00Z\"}\n\n");
    let (code, out, err) = guardian(
        &["replay", "--blueprints", "blueprints", "--quiet", "-"],
        &input,
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("line 1: not a JSON object"), "{err}");
    assert!(
        err.contains("line 42: field /agent_id should be a string"),
        "{err}"
    );
    assert!(err.contains("replayed 40 events from 1 agents"), "{err}");
    assert!(err.contains("2 malformed line(s)"), "{err}");
    // engineering (the default) allows 60 calls a minute: 40 in 40 s is quiet.
    assert_eq!(out.lines().count(), 0, "{out}");
    // With the finance blueprint (30 a minute) the same input is over the threshold: on a fresh
    // guard, during its learning period, that is one baseline finding, not an incident.
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("assign.json");
    std::fs::write(&a, r#"{"default": "finance"}"#).unwrap();
    let (_, out, _) = guardian(
        &["replay", "--assign", a.to_str().unwrap(), "-q", "-"],
        &input,
    );
    let incidents: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(incidents.len(), 1, "{out}");
    assert_eq!(incidents[0]["type"], "baseline");
    assert_eq!(incidents[0]["about"], "frequency_spike");
    assert_eq!(incidents[0]["verdict"], "learning");
    assert_eq!(incidents[0]["severity"], "low");
    assert_eq!(incidents[0]["at"], "2026-03-03T15:00:30.000Z");
    for k in [
        "incident_id",
        "agent_id",
        "severity",
        "window_start",
        "window_end",
        "blueprint",
        "basis",
        "observed",
        "expected",
        "description",
        "action_taken",
    ] {
        assert!(incidents[0].get(k).is_some(), "missing {k}");
    }
}

/// With the broker unreachable, `guardian produce` and `guardian kill` end within their
/// deadlines with a non-zero exit and a clear last line, not a hang and not a flood of
/// librdkafka errors.
#[test]
fn commands_that_talk_to_a_broker_that_is_down_end_within_their_deadline() {
    let dir = tempfile::tempdir().expect("dir");
    let cfg = dir.path().join("g.toml");
    std::fs::write(
        &cfg,
        format!(
            "guardian_id = \"cli\"\nstate_dir = {:?}\nsigning_key = \"cli-key-0123456789abcdef\"\n[kafka]\nbrokers = \"127.0.0.1:1\"\naudit_topics = [\"audit\"]\n",
            dir.path().join("state")
        ),
    )
    .expect("config");
    let cfg = cfg.display().to_string();
    let events =
        "{\"agent_id\":\"a\",\"timestamp\":\"2026-03-03T10:00:00Z\",\"tool_name\":\"t\"}\n";
    let t = std::time::Instant::now();
    let (code, _, err) = guardian(
        &["produce", "--config", &cfg, "--timeout", "2s", "-"],
        events,
    );
    assert_ne!(code, 0, "{err}");
    assert!(
        t.elapsed() < std::time::Duration::from_secs(30),
        "took {:?}",
        t.elapsed()
    );
    let last = err.lines().last().unwrap_or_default();
    assert!(last.contains("not acknowledged by 127.0.0.1:1"), "{err}");
    assert!(err.lines().count() < 15, "a flood: {err}");
    let t = std::time::Instant::now();
    let (code, _, err) = guardian(&["kill", "--config", &cfg, "agent-1"], "");
    assert_ne!(code, 0, "{err}");
    assert!(
        t.elapsed() < std::time::Duration::from_secs(40),
        "took {:?}",
        t.elapsed()
    );
    assert!(err.lines().count() < 15, "a flood: {err}");
}

/// A state command pointed at a directory with no state (a typo) fails and creates nothing.
#[test]
fn state_commands_refuse_a_directory_without_a_state_and_create_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let typo = dir.path().join("stat");
    let typo_s = typo.display().to_string();
    for args in [
        vec!["state", "partitions", "--state-dir", &typo_s],
        vec!["state", "inspect", "--state-dir", &typo_s, "agent-1"],
        vec!["posture", "--state", &typo_s],
    ] {
        let (code, _, err) = guardian(&args, "");
        assert_ne!(code, 0, "{args:?}: {err}");
        assert!(
            err.contains("holds no agent-guardian state"),
            "{args:?}: {err}"
        );
        assert!(!typo.exists(), "{args:?} created {typo_s}");
    }
}

/// `replay --state` writes a new state: into a directory that holds anything it refuses,
/// before reading a line.
#[test]
fn replay_state_refuses_a_directory_that_is_not_empty() {
    let dir = tempfile::tempdir().expect("dir");
    let state = dir.path().join("state");
    let state_s = state.display().to_string();
    let line = "{\"agent_id\":\"a\",\"timestamp\":\"2026-03-03T10:00:00Z\",\"tool_name\":\"t\"}\n";
    let (code, _, err) = guardian(&["replay", "--state", &state_s, "-"], line);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = guardian(&["replay", "--state", &state_s, "-"], line);
    assert_ne!(code, 0);
    assert!(err.contains("is not empty"), "{err}");
}

/// `replay` reads a line longer than `--max-event-bytes` through without keeping it, reports
/// it as oversized and goes on; with its stderr closed it still ends normally (no panic).
#[test]
fn replay_survives_a_huge_line_and_a_closed_stderr() {
    let good = "{\"agent_id\":\"a\",\"timestamp\":\"2026-03-03T10:00:00Z\",\"tool_name\":\"t\"}\n";
    let input = format!("{}\n{good}", "x".repeat(3_000_000));
    let (code, _, err) = guardian(&["replay", "--max-event-bytes", "1000", "-"], &input);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("line 1: event is 3000000 bytes, more than the maximum of 1000"),
        "{err}"
    );
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_guardian"))
        .args(["replay", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("guardian runs");
    drop(child.stderr.take()); // nobody reads its errors any more
    let bad: String = (0..50).map(|i| format!("not json {i}\n")).collect();
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(bad.as_bytes())
        .expect("write");
    let status = child.wait().expect("exits");
    assert_eq!(status.code(), Some(0), "{status:?}");
}

/// `guardian kill` and `revive` check the agent id and the reason as the admin API does, before
/// reading the configuration or reaching a broker: nothing impossible is signed and published.
#[test]
fn kill_refuses_an_empty_or_over_long_agent_id_and_an_over_long_reason() {
    let long = "a".repeat(600);
    let reason = "r".repeat(5000);
    for args in [
        vec!["kill", ""],
        vec!["kill", long.as_str()],
        vec!["revive", ""],
        vec!["kill", "fin-1", "--reason", reason.as_str()],
    ] {
        // A configuration that does not exist: the request is refused before it is read.
        let args: Vec<&str> = args
            .into_iter()
            .chain(["--config", "/nonexistent/guardian.toml"])
            .collect();
        let (code, out, err) = guardian(&args, "");
        assert_ne!(code, 0, "{args:?} was accepted: {out}");
        assert!(
            err.contains("1 to 512 bytes") || err.contains("more than 4096"),
            "{args:?}: {err}"
        );
        assert!(out.is_empty(), "{args:?} printed a command: {out}");
    }
}

/// `--max-future` is bounded as the daemon's `max_future` is: a century ahead is no defence.
#[test]
fn replay_refuses_a_max_future_beyond_a_day() {
    let (code, _, err) = guardian(&["replay", "--max-future", "100y", "-"], "");
    assert_ne!(code, 0);
    assert!(err.contains("longer than the longest allowed"), "{err}");
    let (code, _, err) = guardian(&["replay", "--max-future", "1day", "-"], "");
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_replay_with_few_agents_in_memory_detects_and_stores_the_same() {
    // A simulated fleet with its injected attacks, folded once with every agent in memory and
    // once with at most 8 of 60: the same incidents, line for line, and the same posture.
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("fleet.jsonl");
    let events_s = events.to_str().unwrap();
    let (code, _, err) = guardian(
        &[
            "simulate", "--agents", "60", "--days", "10", "--seed", "3", "-o", events_s,
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    let fold = |name: &str, more: &[&str]| {
        let state = dir.path().join(name);
        let state_s = state.to_str().unwrap().to_string();
        let mut args = vec!["replay", "--quiet", "--state", &state_s];
        args.extend_from_slice(more);
        args.push(events_s);
        let (code, incidents, err) = guardian(&args, "");
        assert_eq!(code, 0, "{err}");
        let (code, posture, perr) = guardian(&["posture", "--state", &state_s, "--json"], "");
        assert_eq!(code, 0, "{perr}");
        (incidents, posture, err)
    };
    let (incidents, posture, _) = fold("whole", &[]);
    let (bounded, bounded_posture, err) = fold("bounded", &["--max-agents-in-memory", "8"]);
    assert!(incidents.lines().count() > 10, "{incidents}");
    assert!(incidents == bounded, "the incidents differ");
    assert!(posture == bounded_posture, "the postures differ");
    // The states did leave memory and come back.
    let line = err
        .lines()
        .find(|l| l.starts_with("at most 8 agents in memory"))
        .unwrap_or_else(|| panic!("{err}"));
    let figures: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    // [8, out of memory at the end, agents, left, read back]
    assert_eq!(figures.len(), 5, "{line}");
    assert!(figures[1] >= 40 && figures[2] == 60, "{line}");
    assert!(figures[3] > 60 && figures[4] > 60, "{line}");
    // A bound needs a state directory, and is at least one.
    let (code, _, err) = guardian(&["replay", "--max-agents-in-memory", "8", events_s], "");
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = guardian(
        &[
            "replay",
            "--state",
            "x",
            "--max-agents-in-memory",
            "0",
            events_s,
        ],
        "",
    );
    assert_eq!(code, 2, "{err}");
}
