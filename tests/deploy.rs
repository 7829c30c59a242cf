//! The deployment files in `deploy/`: the systemd unit keeps its hardening and passes
//! `systemd-analyze verify`; the example configurations (`deploy/guardian.toml`, the compose one
//! and the Kubernetes ConfigMap's) pass `guardian run --check-config`; the Grafana dashboard, the
//! alert rules and the runbook name only metrics the daemon exports; every supervisor waits longer
//! than the daemon's `shutdown_timeout`; the YAML files parse (with python3's yaml module, when
//! it is installed) and agree with each other.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

mod support;

const GUARDIAN: &str = env!("CARGO_BIN_EXE_guardian");

/// Every counter and gauge the daemon exports.
const METRICS: &[&str] = &[
    "guardian_events_consumed_total",
    "guardian_bad_events_total",
    "guardian_incidents_total",
    "guardian_commands_sent_total",
    "guardian_api_connections_refused_total",
    "guardian_commands_applied_total",
    "guardian_commands_rejected_total",
    "guardian_dead_letters_lost_total",
    "guardian_audit_entries_total",
    "guardian_kills_suppressed_total",
    "guardian_learning_partitions",
    "guardian_outputs_suppressed_total",
    "guardian_checkpoints_total",
    "guardian_sink_delivered_total",
    "guardian_sink_failures_total",
    "guardian_sink_dropped_total",
    "guardian_email_sent_total",
    "guardian_email_failures_total",
    "guardian_posture_snapshots_total",
    "guardian_consumer_lag_messages",
    "guardian_engine_queue_depth",
    "guardian_partitions_assigned",
    "guardian_agents",
    "guardian_agents_killed",
    "guardian_agents_in_memory",
    "guardian_agent_states_unloaded_total",
    "guardian_agent_states_loaded_total",
    "guardian_state_size_bytes",
    "guardian_sink_queue_depth",
    "guardian_ready",
    "guardian_fleet_risk_score",
    "guardian_build_info",
    "guardian_duplicate_events_total",
    "guardian_binding_conflicts_total",
    "guardian_duplicate_identities",
    "guardian_findings_explained_total",
    "guardian_fleet_shifts",
    "guardian_changelog_records_total",
    "guardian_changelog_restores_total",
    "guardian_changelog_records_restored_total",
    "guardian_restore_skipped_events_total",
    "guardian_peer_snapshots_total",
    "guardian_peer_snapshots_rejected_total",
];

/// Histograms: queried as `NAME_bucket`, `NAME_sum`, `NAME_count`.
const HISTOGRAMS: &[&str] = &[
    "guardian_processing_latency_seconds",
    "guardian_event_age_seconds",
];

/// Written like metrics in the runbook, but configuration keys.
const NOT_METRICS: &[&str] = &["guardian_id"];

const SIGNING_KEY: &str = "deploy-test-signing-key-0123456789";
const API_TOKEN: &str = "deploy-test-api-token-0123456789";

fn deploy(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(deploy(rel)).unwrap_or_else(|e| panic!("deploy/{rel}: {e}"))
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

// ---- systemd ------------------------------------------------------------------------------

/// `(section, key, value)` of every assignment in a unit file, in order.
fn unit_directives(unit: &str) -> Vec<(String, String, String)> {
    let (mut section, mut pending, mut out) = (String::new(), String::new(), Vec::new());
    for line in unit.lines() {
        let line = line.trim();
        if pending.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with(';'))
        {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        let full = std::mem::take(&mut pending) + line;
        if let Some(name) = full.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (k, v) = full
            .split_once('=')
            .unwrap_or_else(|| panic!("not an assignment: {full:?}"));
        out.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
    }
    out
}

/// What `[Service]` must say (an empty value: the list is empty).
const SERVICE: &[(&str, &str)] = &[
    ("Type", "exec"),
    (
        "ExecStart",
        "/usr/local/bin/guardian run --config /etc/agent-guardian/guardian.toml",
    ),
    ("User", "agent-guardian"),
    ("Group", "agent-guardian"),
    ("DynamicUser", "no"),
    ("EnvironmentFile", "-/etc/agent-guardian/guardian.env"),
    ("StateDirectory", "agent-guardian"),
    ("LogsDirectory", "agent-guardian"),
    ("Restart", "on-failure"),
    ("KillSignal", "SIGTERM"),
    ("TimeoutStopSec", "45"),
    ("LimitNOFILE", "65536"),
    ("UMask", "0077"),
    ("NoNewPrivileges", "yes"),
    ("CapabilityBoundingSet", ""),
    ("AmbientCapabilities", ""),
    ("ProtectSystem", "strict"),
    ("ProtectHome", "yes"),
    ("PrivateTmp", "yes"),
    ("PrivateDevices", "yes"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"),
    ("ProtectClock", "yes"),
    ("ProtectHostname", "yes"),
    ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
    ("RestrictNamespaces", "yes"),
    ("RestrictRealtime", "yes"),
    ("RestrictSUIDSGID", "yes"),
    ("LockPersonality", "yes"),
    ("MemoryDenyWriteExecute", "yes"),
    ("SystemCallArchitectures", "native"),
    ("SystemCallFilter", "@system-service"),
    ("SystemCallFilter", "~@privileged @resources"),
];

#[test]
fn systemd_unit_is_hardened_and_verifies() {
    let unit = read("agent-guardian.service");
    let all = unit_directives(&unit);
    let service: Vec<(&str, &str)> = all
        .iter()
        .filter(|(s, ..)| s == "Service")
        .map(|(_, k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut wrong = Vec::new();
    for &(key, want) in SERVICE {
        let list = key == "SystemCallFilter";
        // systemd: the last assignment of a setting wins (list settings accumulate).
        let ok = if list {
            service.contains(&(key, want))
        } else {
            service.iter().rev().find(|(k, _)| *k == key) == Some(&(key, want))
        };
        if !ok {
            wrong.push(format!("{key}={want}"));
        }
    }
    if service.contains(&("SystemCallFilter", "")) {
        wrong.push("no `SystemCallFilter=` reset".into());
    }
    assert!(
        wrong.is_empty(),
        "deploy/agent-guardian.service [Service] should have: {wrong:#?}"
    );
    assert!(
        all.iter()
            .any(|(s, k, v)| s == "Install" && k == "WantedBy" && v == "multi-user.target"),
        "[Install] WantedBy=multi-user.target"
    );

    let Some(analyze) = find_program("systemd-analyze") else {
        assert!(
            !support::required(),
            "systemd-analyze not found (GUARDIAN_REQUIRE_E2E=1)"
        );
        eprintln!("skipping systemd-analyze verify/security: systemd-analyze not found");
        return;
    };
    // verify checks that ExecStart's program exists: point it at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let name = "agent-guardian.service";
    let copy = dir.path().join(name);
    let mut rewritten = String::new();
    for line in unit.lines() {
        match line.strip_prefix("ExecStart=/usr/local/bin/guardian ") {
            Some(args) => rewritten.push_str(&format!("ExecStart={GUARDIAN} {args}")),
            None => rewritten.push_str(line),
        }
        rewritten.push('\n');
    }
    assert!(rewritten.contains(&format!(
        "ExecStart={GUARDIAN} run --config /etc/agent-guardian/guardian.toml\n"
    )));
    std::fs::write(&copy, rewritten).unwrap();

    let out = Command::new(&analyze)
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    // verify also reports problems of other units on the host: only ours count.
    let ours: Vec<&str> = stderr
        .lines()
        .chain(stdout.lines())
        .filter(|l| l.contains(name))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify {}: {}\n{stdout}{stderr}",
        copy.display(),
        out.status
    );

    let out = Command::new(&analyze)
        .args(["security", "--offline=true"])
        .arg(&copy)
        .output()
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    if !out.status.success() && stderr.contains("offline") {
        eprintln!("skipping systemd-analyze security: no --offline in this systemd ({stderr})");
        return;
    }
    let line = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("systemd-analyze security: {}\n{stdout}{stderr}", out.status));
    eprintln!("{}", line.trim());
    let exposure: f64 = line
        .split_once(&format!("{name}:"))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|x| x.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the exposure level in {line:?}"));
    assert!(
        exposure <= 2.0,
        "exposure {exposure} (was 1.1 when the unit was written)"
    );
}

// ---- configurations -----------------------------------------------------------------------

/// The literal block scalar `key: |` of a plain YAML file, as YAML reads it (one final newline).
fn yaml_block(yaml: &str, key: &str) -> String {
    fn indent(l: &str) -> usize {
        l.len() - l.trim_start().len()
    }
    let head = format!("{key}: |");
    let lines: Vec<&str> = yaml.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim() == head)
        .unwrap_or_else(|| panic!("no `{head}` block"));
    let outer = indent(lines[start]);
    let body: Vec<&str> = lines[start + 1..]
        .iter()
        .take_while(|l| l.trim().is_empty() || indent(l) > outer)
        .copied()
        .collect();
    let inner = body
        .iter()
        .find(|l| !l.trim().is_empty())
        .map(|l| indent(l))
        .unwrap_or_else(|| panic!("`{key}: |` is empty"));
    let dedented: Vec<&str> = body.iter().map(|l| l.get(inner..).unwrap_or("")).collect();
    dedented.join("\n").trim_end_matches('\n').to_string() + "\n"
}

/// The example configurations: (name, TOML text, the assignment file it should use).
fn example_configs(dir: &Path) -> Vec<(&'static str, String, PathBuf)> {
    let configmap = read("kubernetes/configmap.yaml");
    let assignment = dir.join("configmap-assignment.json");
    std::fs::write(&assignment, yaml_block(&configmap, "assignment.json")).unwrap();
    vec![
        (
            "deploy/guardian.toml",
            read("guardian.toml"),
            deploy("assignment.json"),
        ),
        (
            "deploy/compose/guardian.toml",
            read("compose/guardian.toml"),
            deploy("assignment.json"),
        ),
        (
            "deploy/kubernetes/configmap.yaml (guardian.toml)",
            yaml_block(&configmap, "guardian.toml"),
            assignment,
        ),
    ]
}

fn shutdown_timeout(toml_text: &str) -> Duration {
    let t: toml::Table = toml::from_str(toml_text).expect("TOML");
    let v = t
        .get("shutdown_timeout")
        .and_then(|v| v.as_str())
        .unwrap_or("30s");
    humantime::parse_duration(v).expect("shutdown_timeout")
}

#[test]
fn example_configs_pass_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for (i, (name, toml_text, assignment)) in example_configs(dir.path()).into_iter().enumerate() {
        let t: toml::Table = toml::from_str(&toml_text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let s = |k: &str| t.get(k).and_then(|v| v.as_str()).map(str::to_string);
        assert_eq!(
            s("state_dir").as_deref(),
            Some("/var/lib/agent-guardian"),
            "{name}"
        );
        if name.contains("configmap") {
            assert_eq!(
                s("guardian_id"),
                None,
                "{name}: guardian_id defaults to the pod name"
            );
        }
        if name != "deploy/guardian.toml" {
            assert_eq!(s("log_format").as_deref(), Some("json"), "{name}");
            let api = t.get("api").and_then(|v| v.as_table());
            let listen = api.and_then(|a| a.get("listen")).and_then(|v| v.as_str());
            assert_eq!(listen, Some("0.0.0.0:9464"), "{name}: [api] listen");
            let brokers = t.get("kafka").and_then(|k| k.get("brokers"));
            assert_eq!(
                brokers.and_then(|v| v.as_str()),
                Some("kafka:9092"),
                "{name}"
            );
        }
        // The assignment lives at /etc/agent-guardian/ in every deployment; here, beside the test.
        let file = dir.path().join(format!("config-{i}.toml"));
        let local = toml_text.replace(
            "\"/etc/agent-guardian/assignment.json\"",
            &format!("{:?}", assignment.to_str().unwrap()),
        );
        std::fs::write(&file, local).unwrap();
        let out = Command::new(GUARDIAN)
            .args(["run", "--check-config", "--config"])
            .arg(&file)
            .env("GUARDIAN_SIGNING_KEY", SIGNING_KEY)
            .env("GUARDIAN_API_TOKEN", API_TOKEN)
            .env_remove("GUARDIAN_CONFIG")
            .output()
            .unwrap();
        if !out.status.success() {
            failures.push(format!(
                "{name}: guardian run --check-config: {}\n{}{}",
                out.status,
                text(&out.stdout),
                text(&out.stderr)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn supervisors_wait_longer_than_shutdown_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let configs = example_configs(dir.path());
    let find = |file: &str, prefix: &str| -> String {
        let text = read(file);
        let line = text
            .lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("deploy/{file}: no `{prefix}`"));
        line.split_whitespace().next().unwrap().to_string()
    };
    let secs = |v: &str| match v.parse::<u64>() {
        Ok(n) => Duration::from_secs(n),
        Err(_) => humantime::parse_duration(v).unwrap(),
    };
    let checks = [
        (
            "systemd TimeoutStopSec",
            secs(&find("agent-guardian.service", "TimeoutStopSec=")),
            &configs[0],
        ),
        (
            "compose stop_grace_period",
            secs(&find("docker-compose.yml", "stop_grace_period:")),
            &configs[1],
        ),
        (
            "Kubernetes terminationGracePeriodSeconds",
            secs(&find(
                "kubernetes/statefulset.yaml",
                "terminationGracePeriodSeconds:",
            )),
            &configs[2],
        ),
    ];
    for (what, wait, (name, toml_text, _)) in checks {
        let deadline = shutdown_timeout(toml_text);
        assert!(
            wait >= deadline + Duration::from_secs(10),
            "{what} ({wait:?}) must exceed shutdown_timeout of {name} ({deadline:?}) by 10 s or more"
        );
    }
}

#[test]
fn dockerfile_is_multi_stage_and_non_root_as_documented() {
    let df = read("Dockerfile");
    let lines: Vec<&str> = df.lines().map(str::trim).collect();
    for want in [
        "FROM rust:1-bookworm AS builder",
        "FROM debian:bookworm-slim",
        "USER 10001:10001",
        "VOLUME [\"/var/lib/agent-guardian\"]",
        "EXPOSE 9464",
        "ENTRYPOINT [\"guardian\"]",
        "CMD [\"run\", \"--config\", \"/etc/agent-guardian/guardian.toml\"]",
    ] {
        assert!(lines.contains(&want), "deploy/Dockerfile: no `{want}`");
    }
    assert!(df.contains("cargo build --release --locked --bin guardian"));
    assert!(!lines.iter().any(|l| l.starts_with("HEALTHCHECK")));
    let ignore = read("Dockerfile.dockerignore");
    for want in [".git", "target"] {
        assert!(ignore.lines().any(|l| l.trim() == want), "ignore {want}");
    }
    let sts = read("kubernetes/statefulset.yaml");
    assert!(sts.contains("runAsUser: 10001") && sts.contains("runAsGroup: 10001"));
}

// ---- metrics ------------------------------------------------------------------------------

/// `guardian_…` names in a text (not preceded by a name character).
fn metric_tokens(s: &str) -> Vec<&str> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(off) = s[i..].find("guardian_") {
        let at = i + off;
        let end = at
            + b[at..]
                .iter()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || **c == b'_')
                .count();
        let name_char = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
        if at == 0 || !name_char(b[at - 1]) {
            out.push(&s[at..end]);
        }
        i = end;
    }
    out
}

fn is_series(name: &str) -> bool {
    METRICS.contains(&name)
        || HISTOGRAMS.iter().any(|h| {
            name.strip_prefix(h)
                .is_some_and(|rest| ["_bucket", "_sum", "_count"].contains(&rest))
        })
}

/// Problems of one PromQL expression: unknown metrics, unbalanced brackets or quotes.
fn check_promql(expr: &str) -> Vec<String> {
    let mut problems: Vec<String> = metric_tokens(expr)
        .into_iter()
        .filter(|t| !is_series(t))
        .map(|t| format!("unknown metric {t}"))
        .collect();
    let mut stack = Vec::new();
    let mut quoted = false;
    for c in expr.chars() {
        match c {
            '"' => quoted = !quoted,
            '(' | '[' | '{' if !quoted => stack.push(c),
            ')' | ']' | '}' if !quoted => {
                let open = match c {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                if stack.pop() != Some(open) {
                    problems.push(format!("unbalanced {c}"));
                }
            }
            _ => {}
        }
    }
    if quoted || !stack.is_empty() {
        problems.push("unclosed quote or bracket".into());
    }
    problems
}

/// Every string under a key `expr`, `definition` or `query`, with the title of the enclosing
/// panel.
fn queries<'a>(v: &'a Value, title: &'a str, out: &mut Vec<(&'a str, &'a str, &'a str)>) {
    match v {
        Value::Object(m) => {
            let title = m.get("title").and_then(Value::as_str).unwrap_or(title);
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr" | "definition" | "query", Value::String(s)) => {
                        out.push((title, k.as_str(), s.as_str()))
                    }
                    _ => queries(x, title, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| queries(x, title, out)),
        _ => {}
    }
}

#[test]
fn grafana_dashboard_uses_only_exported_metrics() {
    let d: Value = serde_json::from_str(&read("grafana-dashboard.json")).expect("dashboard JSON");
    assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    let vars = d["templating"]["list"].as_array().expect("templating");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no ${name} variable"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    assert_eq!(var("instance")["type"], "query");

    let mut found = Vec::new();
    queries(&d, "", &mut found);
    let exprs: Vec<_> = found.iter().filter(|(_, k, _)| *k == "expr").collect();
    assert!(exprs.len() >= 20, "{} expressions", exprs.len());
    let mut problems = Vec::new();
    for (title, key, q) in &found {
        for p in check_promql(q) {
            problems.push(format!("{title:?} {key} {q:?}: {p}"));
        }
        if *key == "expr" && !q.contains("instance=~\"$instance\"") {
            problems.push(format!("{title:?}: {q:?} ignores $instance"));
        }
    }
    let used: BTreeSet<&str> = found
        .iter()
        .flat_map(|(_, _, q)| metric_tokens(q))
        .collect();
    for m in METRICS {
        if !used.contains(m) {
            problems.push(format!("{m} is on no panel"));
        }
    }
    for h in HISTOGRAMS {
        if !used.contains(format!("{h}_bucket").as_str()) {
            problems.push(format!("{h} is on no panel"));
        }
    }

    let mut ids = BTreeSet::new();
    for p in d["panels"].as_array().expect("panels") {
        let title = p["title"].as_str().unwrap_or("?");
        if !ids.insert(p["id"].as_u64().expect("panel id")) {
            problems.push(format!("{title:?}: duplicate id"));
        }
        if p["type"] == "row" {
            continue;
        }
        let targets = p["targets"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        if targets.is_empty() {
            problems.push(format!("{title:?}: no query"));
        }
        for ds in std::iter::once(&p["datasource"]).chain(targets.iter().map(|t| &t["datasource"]))
        {
            if ds["uid"] != "${datasource}" {
                problems.push(format!(
                    "{title:?}: data source {ds} is not ${{datasource}}"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "deploy/grafana-dashboard.json:\n{}",
        problems.join("\n")
    );
}

/// `expr:` values of the alert rules (each on one line; a trailing ` # comment` removed).
fn alert_exprs(rules: &str) -> Vec<&str> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .map(|e| e.split(" #").next().unwrap().trim())
        .collect()
}

#[test]
fn alert_rules_use_only_exported_metrics() {
    let rules = read("prometheus-alerts.yml");
    let exprs = alert_exprs(&rules);
    assert!(exprs.len() >= 10, "{} rules", exprs.len());
    let mut problems = Vec::new();
    for e in &exprs {
        if e.starts_with('|') || e.starts_with('>') || e.is_empty() {
            problems.push(format!("keep each expr on its line: {e:?}"));
        }
        for p in check_promql(e) {
            problems.push(format!("{e:?}: {p}"));
        }
    }
    let used: BTreeSet<&str> = exprs.iter().flat_map(|e| metric_tokens(e)).collect();
    for m in [
        "guardian_ready",
        "guardian_bad_events_total",
        "guardian_consumer_lag_messages",
        "guardian_sink_queue_depth",
        "guardian_sink_dropped_total",
        "guardian_commands_rejected_total",
        "guardian_kills_suppressed_total",
        "guardian_incidents_total",
        "guardian_processing_latency_seconds_bucket",
        "guardian_state_size_bytes",
    ] {
        if !used.contains(m) {
            problems.push(format!("no alert on {m}"));
        }
    }
    let names: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(str::trim)
        .collect();
    assert_eq!(names.len(), exprs.len(), "one expr per alert");
    assert_eq!(
        names.iter().collect::<BTreeSet<_>>().len(),
        names.len(),
        "alert names are unique"
    );
    assert!(
        problems.is_empty(),
        "deploy/prometheus-alerts.yml:\n{}",
        problems.join("\n")
    );
}

#[test]
fn runbook_documents_every_metric() {
    let runbook = read("RUNBOOK.md");
    let mut problems = Vec::new();
    for m in METRICS.iter().chain(HISTOGRAMS) {
        if !runbook.contains(&format!("| `{m}` |")) {
            problems.push(format!("{m} has no row in the metrics table"));
        }
    }
    for t in metric_tokens(&runbook) {
        if !is_series(t) && !HISTOGRAMS.contains(&t) && !NOT_METRICS.contains(&t) {
            problems.push(format!("unknown metric {t}"));
        }
    }
    assert!(
        problems.is_empty(),
        "deploy/RUNBOOK.md:\n{}",
        problems.join("\n")
    );
}

// ---- YAML ---------------------------------------------------------------------------------

const YAML_FILES: &[&str] = &[
    "kubernetes/namespace.yaml",
    "kubernetes/configmap.yaml",
    "kubernetes/secret.yaml",
    "kubernetes/statefulset.yaml",
    "kubernetes/service.yaml",
    "kubernetes/servicemonitor.yaml",
    "docker-compose.yml",
    "compose/prometheus.yml",
    "compose/grafana/datasources.yml",
    "compose/grafana/dashboards.yml",
    "prometheus-alerts.yml",
];

/// The documents of each YAML file as JSON, read by python3's yaml module; `None` without it.
fn yaml_documents() -> Option<serde_json::Map<String, Value>> {
    // Debian's python3 (python3-yaml, installed by scripts/packages.sh) first, then PATH's.
    let python = [
        Some(PathBuf::from("/usr/bin/python3")),
        find_program("python3"),
    ]
    .into_iter()
    .flatten()
    .find(|p| {
        Command::new(p)
            .args(["-c", "import yaml"])
            .output()
            .is_ok_and(|o| o.status.success())
    })?;
    let script = "import json, sys, yaml\n\
                  out = {}\n\
                  for p in sys.argv[1:]:\n    \
                      with open(p) as f:\n        \
                          out[p] = [d for d in yaml.safe_load_all(f)]\n\
                  json.dump(out, sys.stdout, default=str)\n";
    let out = Command::new(&python)
        .arg("-c")
        .arg(script)
        .args(YAML_FILES.iter().map(|f| deploy(f)))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "YAML does not parse:\n{}",
        text(&out.stderr)
    );
    let all: serde_json::Map<String, Value> = serde_json::from_slice(&out.stdout).unwrap();
    Some(
        YAML_FILES
            .iter()
            .map(|f| (f.to_string(), all[deploy(f).to_str().unwrap()].clone()))
            .collect(),
    )
}

/// `${NAME:-default}` → default.
fn compose_default(v: &Value) -> String {
    let s = v.as_str().expect("string");
    let inner = s
        .strip_prefix("${")
        .and_then(|s| s.strip_suffix('}'))
        .unwrap_or_else(|| panic!("{s:?} is not ${{NAME:-default}}"));
    inner.split_once(":-").expect(":-").1.to_string()
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    let sel = selector.as_object().expect("selector");
    !sel.is_empty() && sel.iter().all(|(k, v)| &labels[k] == v)
}

#[test]
fn yaml_files_parse_and_agree() {
    let Some(docs) = yaml_documents() else {
        assert!(
            !support::required(),
            "python3 with its yaml module is needed (python3-yaml, scripts/packages.sh)"
        );
        eprintln!("skipping the YAML checks: python3 with its yaml module not found");
        return;
    };
    let k8s: Vec<&Value> = docs
        .iter()
        .filter(|(f, _)| f.starts_with("kubernetes/"))
        .flat_map(|(_, d)| d.as_array().unwrap())
        .collect();
    let kind =
        |k: &str| -> Vec<&Value> { k8s.iter().copied().filter(|d| d["kind"] == k).collect() };
    let one = |k: &str| -> &Value {
        let v = kind(k);
        assert_eq!(v.len(), 1, "one {k}");
        v[0]
    };
    let ns = one("Namespace")["metadata"]["name"].clone();
    for d in &k8s {
        if d["kind"] != "Namespace" {
            assert_eq!(d["metadata"]["namespace"], ns, "{}", d["metadata"]["name"]);
        }
    }

    // ConfigMap: the embedded files are what the TOML check above used.
    let cm = one("ConfigMap");
    let cm_text = read("kubernetes/configmap.yaml");
    for key in ["guardian.toml", "assignment.json"] {
        assert_eq!(cm["data"][key], yaml_block(&cm_text, key).as_str(), "{key}");
    }
    let _: Value = serde_json::from_str(cm["data"]["assignment.json"].as_str().unwrap())
        .expect("the ConfigMap's assignment.json is JSON");

    // Secret: both variables, as stringData.
    let secret = one("Secret");
    for key in ["GUARDIAN_SIGNING_KEY", "GUARDIAN_API_TOKEN"] {
        assert!(secret["stringData"][key].is_string(), "Secret {key}");
    }

    // StatefulSet.
    let sts = one("StatefulSet");
    let spec = &sts["spec"];
    let pod = &spec["template"]["spec"];
    let pod_labels = &spec["template"]["metadata"]["labels"];
    assert!(labels_match(&spec["selector"]["matchLabels"], pod_labels));
    assert_eq!(spec["podManagementPolicy"], "Parallel");
    assert_eq!(pod["terminationGracePeriodSeconds"], 45);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(
        c["args"],
        serde_json::json!(["run", "--config", "/etc/agent-guardian/guardian.toml"])
    );
    let sc = &c["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(c["ports"][0]["name"], "admin");
    assert_eq!(c["ports"][0]["containerPort"], 9464);
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "admin");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "admin");
    assert_eq!(
        c["envFrom"][0]["secretRef"]["name"],
        secret["metadata"]["name"]
    );
    assert!(c["resources"]["limits"]["memory"].is_string());
    let mounts = c["volumeMounts"].as_array().unwrap();
    let mount = |path: &str| -> &Value {
        &mounts
            .iter()
            .find(|m| m["mountPath"] == path)
            .unwrap_or_else(|| panic!("nothing mounted at {path}"))["name"]
    };
    let claims = spec["volumeClaimTemplates"].as_array().unwrap();
    assert!(claims
        .iter()
        .any(|t| t["metadata"]["name"] == *mount("/var/lib/agent-guardian")));
    let volumes = pod["volumes"].as_array().unwrap();
    let config = volumes
        .iter()
        .find(|v| v["name"] == *mount("/etc/agent-guardian"))
        .expect("config volume");
    assert_eq!(config["configMap"]["name"], cm["metadata"]["name"]);

    // Services: the headless one of the StatefulSet and a ClusterIP one, both on port admin.
    let services = kind("Service");
    let headless = services
        .iter()
        .find(|s| s["spec"]["clusterIP"] == "None")
        .expect("headless Service");
    assert_eq!(headless["metadata"]["name"], spec["serviceName"]);
    let cluster_ip = services
        .iter()
        .find(|s| s["spec"]["clusterIP"] != "None")
        .expect("ClusterIP Service");
    for s in [headless, cluster_ip] {
        assert!(labels_match(&s["spec"]["selector"], pod_labels));
        assert_eq!(s["spec"]["ports"][0]["name"], "admin");
        assert_eq!(s["spec"]["ports"][0]["port"], 9464);
    }

    // ServiceMonitor: the headless Service only (else every pod is scraped twice), with the token.
    let sm = one("ServiceMonitor");
    let sel = &sm["spec"]["selector"]["matchLabels"];
    assert!(labels_match(sel, &headless["metadata"]["labels"]));
    assert!(!labels_match(sel, &cluster_ip["metadata"]["labels"]));
    let ep = &sm["spec"]["endpoints"][0];
    assert_eq!(ep["port"], "admin");
    assert_eq!(ep["path"], "/metrics");
    assert_eq!(
        ep["authorization"]["credentials"]["name"],
        secret["metadata"]["name"]
    );
    assert_eq!(
        ep["authorization"]["credentials"]["key"],
        "GUARDIAN_API_TOKEN"
    );

    // docker compose.
    let compose = &docs["docker-compose.yml"][0]["services"];
    let kafka = &compose["kafka"];
    assert_eq!(kafka["image"], "apache/kafka:3.9.0");
    assert_eq!(
        kafka["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"],
        "true"
    );
    let init = compose["kafka-init"]["command"].to_string();
    assert!(
        init.contains("--topic agent-audit --partitions 6"),
        "{init}"
    );
    for t in [
        "guardian-incidents",
        "guardian-control",
        "guardian-dead-letter",
        "guardian-posture",
    ] {
        assert!(init.contains(t), "kafka-init creates {t}");
    }
    let g = &compose["guardian"];
    assert_eq!(g["build"]["context"], "..");
    assert_eq!(g["build"]["dockerfile"], "deploy/Dockerfile");
    assert_eq!(
        g["depends_on"]["kafka-init"]["condition"],
        "service_completed_successfully"
    );
    let key = compose_default(&g["environment"]["GUARDIAN_SIGNING_KEY"]);
    let token = compose_default(&g["environment"]["GUARDIAN_API_TOKEN"]);
    assert!(
        key.len() >= 16 && token.len() >= 16,
        "defaults of 16 bytes or more"
    );
    assert!(g["ports"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p.as_str().unwrap().ends_with(":9464:9464")));
    // Every file a service mounts exists; note where each lands.
    let mut mounted = std::collections::BTreeMap::new();
    for (name, svc) in compose.as_object().unwrap() {
        for v in svc["volumes"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            let v = v.as_str().unwrap();
            if let Some(rel) = v.strip_prefix("./") {
                let (host, target) = rel.split_once(':').unwrap();
                assert!(deploy(host).exists(), "{name} mounts missing {host}");
                let target = target.trim_end_matches(":ro");
                mounted.insert(host.to_string(), target.to_string());
            }
        }
    }
    assert_eq!(
        mounted["compose/guardian.toml"],
        "/etc/agent-guardian/guardian.toml"
    );
    assert_eq!(
        mounted["assignment.json"],
        "/etc/agent-guardian/assignment.json"
    );

    // Prometheus scrapes guardian with the compose default token and loads the alert rules.
    let prom = &docs["compose/prometheus.yml"][0];
    let job = &prom["scrape_configs"][0];
    assert_eq!(job["authorization"]["credentials"], token.as_str());
    assert_eq!(job["static_configs"][0]["targets"][0], "guardian:9464");
    assert_eq!(job["metrics_path"], "/metrics");
    assert_eq!(
        prom["rule_files"][0],
        mounted["prometheus-alerts.yml"].as_str()
    );

    // Grafana: the provisioned dashboard directory holds the dashboard.
    let ds = &docs["compose/grafana/datasources.yml"][0]["datasources"][0];
    assert_eq!(ds["type"], "prometheus");
    let provider = &docs["compose/grafana/dashboards.yml"][0]["providers"][0];
    let dir = provider["options"]["path"].as_str().unwrap();
    assert_eq!(
        Path::new(&mounted["grafana-dashboard.json"]).parent(),
        Some(Path::new(dir))
    );

    // Alert rules, as Prometheus reads them.
    let mut names = BTreeSet::new();
    let groups = docs["prometheus-alerts.yml"][0]["groups"]
        .as_array()
        .unwrap();
    for rule in groups.iter().flat_map(|g| g["rules"].as_array().unwrap()) {
        let name = rule["alert"].as_str().expect("alert name");
        assert!(names.insert(name), "duplicate alert {name}");
        let expr = rule["expr"].as_str().expect("expr");
        assert!(check_promql(expr).is_empty(), "{name}: {expr}");
        assert!(alert_exprs(&read("prometheus-alerts.yml")).contains(&expr.trim()));
        assert!(rule["labels"]["severity"].is_string(), "{name}: severity");
        assert!(
            rule["annotations"]["summary"].is_string(),
            "{name}: summary"
        );
    }
}
