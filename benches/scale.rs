//! Scale benchmark: a simulated fleet of 100,000 agents (one day, 18.4 M events) folded by
//! `guardian replay --state`, then the admin API over that state under 20 concurrent clients.
//!
//! `cargo bench --bench scale` prints: the fold rate and peak memory (`/usr/bin/time -v`), the
//! state's size on disk, the time of `guardian posture --state` (median of 3 runs), the time the fleet view takes
//! to compute, and p50 / p99 latencies of `GET /agents/{id}` (a random agent each time),
//! `GET /agents?limit=100` and `GET /posture`, in two rounds, with the resident memory before
//! and after each. The posture snapshot this instance would publish is measured (its size
//! against the Kafka message limit) and read back as a second instance's, so `GET /posture`
//! merges two such fleets.
//! The events are generated once (`guardian simulate | zstd`) and kept under the target
//! directory. The API is called in process through its router (no socket): the figures are
//! the handlers' and the serialization's, not the network's.
//!
//! Environment: `SCALE_AGENTS` (default 100,000), `SCALE_DAYS` (default 1), `SCALE_SEED`
//! (default 5), `SCALE_CLIENTS` (default 20), `SCALE_REQUESTS` (per client and endpoint,
//! default 200). A million agents is `scripts/million.sh` (the simulator holds a whole day in
//! memory, well over 13 GB for a million agents: that script builds the fleet from ten
//! 100,000-agent days, one event in nine of each, and folds it with a bound on the agents in
//! memory).
//! With `SCALE_KEEP=N` the fold runs a second time with `--max-agents-in-memory N`: its rate,
//! peak memory, how often states left memory and were read back, and whether its incidents
//! are byte for byte the unbounded fold's (a simulated day keeps every agent busy all day: a
//! bound below the fleet thrashes there, each event reading its agent back).
//! Not covered here: restart-to-live and a changelog restore (they need a broker; the handoff
//! is timed by `tests/e2e_tansu.rs`).

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_guardian::api::{router, AppState};
use agent_guardian::posture::instances::{Peer, Snapshot, MAX_SNAPSHOT_BYTES};
use agent_guardian::posture::PostureSettings;
use agent_guardian::store::Store;
use agent_guardian::telemetry::{Live, Metrics};
use axum::body::Body;
use axum::http::Request;
use tower::ServiceExt;

const TOKEN: &str = "scale-bench-token-0123456789";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs a shell pipeline; its stderr.
fn sh(script: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", script])
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The number after `label` in a `/usr/bin/time -v` report.
fn time_field(report: &str, label: &str) -> f64 {
    report
        .lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

/// Resident memory of this process (MiB).
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(f64::NAN, |pages| pages * 4096.0 / (1 << 20) as f64)
}

/// The events file, generated once.
fn fleet(bin: &str, agents: u64, days: u64, seed: u64) -> PathBuf {
    let dir = PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()))
        .join("scale");
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join(format!("fleet-{agents}-{days}-{seed}.jsonl.zst"));
    if !file.exists() {
        let t = Instant::now();
        let tmp = file.with_extension("tmp");
        sh(&format!(
            "{bin} simulate --agents {agents} --days {days} --seed {seed} | zstd -q -T1 -3 -o {}",
            tmp.display()
        ));
        std::fs::rename(&tmp, &file).expect("rename");
        println!("generated {} in {:.0?}", file.display(), t.elapsed());
    }
    file
}

/// p50 and p99 of durations, in ms.
fn percentiles(mut d: Vec<Duration>) -> (f64, f64) {
    d.sort();
    let at = |q: f64| {
        d.get(((d.len() as f64 * q) as usize).min(d.len().saturating_sub(1)))
            .map_or(f64::NAN, |x| x.as_secs_f64() * 1000.0)
    };
    (at(0.5), at(0.99))
}

/// Folds `events` again with at most `keep` agents in memory and prints its figures, and whether
/// its incidents are those of the unbounded fold (`incidents`).
fn bounded_fold(bin: &str, events: &std::path::Path, keep: u64, incidents: &std::path::Path) {
    let state = tempfile::tempdir().expect("dir");
    let bounded = state.path().join("bounded.jsonl");
    let report = sh(&format!(
        "zstd -d -q -c {} | /usr/bin/time -v {bin} replay --state {} --max-agents-in-memory {keep} - > {}",
        events.display(),
        state.path().join("state").display(),
        bounded.display()
    ));
    for l in report
        .lines()
        .filter(|l| l.starts_with("replayed ") || l.starts_with("at most "))
    {
        println!("fold, at most {keep} agents in memory: {l}");
    }
    println!(
        "fold, at most {keep} agents in memory: peak memory {:.0} MiB; incidents {}",
        time_field(&report, "Maximum resident set size (kbytes):") / 1024.0,
        if std::fs::read(incidents).ok() == std::fs::read(&bounded).ok() {
            "identical to the unbounded fold's"
        } else {
            "DIFFERENT from the unbounded fold's"
        }
    );
}

fn main() {
    let agents = env_or("SCALE_AGENTS", 100_000);
    let days = env_or("SCALE_DAYS", 1);
    let seed = env_or("SCALE_SEED", 5);
    let clients = env_or("SCALE_CLIENTS", 20) as usize;
    let requests = env_or("SCALE_REQUESTS", 200) as usize;
    let bin = env!("CARGO_BIN_EXE_guardian");
    let events = fleet(bin, agents, days, seed);

    // The fold.
    let state = tempfile::tempdir().expect("dir");
    let work = tempfile::tempdir().expect("dir");
    let incidents = work.path().join("incidents.jsonl");
    let report = sh(&format!(
        "zstd -d -q -c {} | /usr/bin/time -v {bin} replay --state {} - > {}",
        events.display(),
        state.path().display(),
        incidents.display()
    ));
    let summary = report
        .lines()
        .find(|l| l.starts_with("replayed "))
        .unwrap_or("")
        .to_string();
    let peak_mib = time_field(&report, "Maximum resident set size (kbytes):") / 1024.0;
    println!("fold: {summary}");
    println!("fold: peak memory {peak_mib:.0} MiB");

    // The same fold with a bound on the agents in memory.
    let keep = env_or("SCALE_KEEP", 0);
    if keep > 0 {
        bounded_fold(bin, &events, keep, &incidents);
    }
    // Three runs (the first may share the disk with the fold's last writes), their median.
    let mut runs: Vec<f64> = (0..3)
        .map(|_| {
            let t = Instant::now();
            sh(&format!(
                "{bin} posture --state {} --json > /dev/null",
                state.path().display()
            ));
            t.elapsed().as_secs_f64()
        })
        .collect();
    let each: Vec<String> = runs.iter().map(|s| format!("{s:.2}")).collect();
    runs.sort_by(f64::total_cmp);
    println!(
        "guardian posture --state --json: median {:.2} s of 3 runs ({} s)",
        runs[1],
        each.join(", ")
    );

    // The admin API over that state.
    let store = Store::open(state.path()).expect("store");
    println!(
        "state on disk: {:.0} MB (the store's own figure, as `guardian_state_size_bytes`)",
        store.size_on_disk() as f64 / 1e6
    );
    let owned: Vec<(String, i32)> = store
        .partition_metas()
        .expect("partitions")
        .into_iter()
        .map(|(t, p, _)| (t, p))
        .collect();
    let ids: Vec<String> = store
        .state_view(None)
        .expect("view")
        .states
        .iter()
        .map(|s| s.agent_id.clone())
        .collect();
    let live = Arc::new(Live {
        store,
        metrics: Arc::new(Metrics::default()),
        owned: std::sync::RwLock::new(owned),
        view: Default::default(),
        peers: Default::default(),
        guardian_id: "guardian-1".into(),
    });
    let set = Arc::new(agent_guardian::blueprint::BlueprintSet::builtin());
    let settings = PostureSettings::default();
    let t = Instant::now();
    let view = live.refresh_view(&set, &settings).expect("view");
    println!(
        "fleet view (posture and compliance of {} agents): {:.2} s",
        view.view.posture.agents.len(),
        t.elapsed().as_secs_f64()
    );
    // The posture snapshot of this instance, as the posture thread publishes it; read back as a
    // second instance's (its partitions renamed), so that the API merges 2 × the fleet.
    let t = Instant::now();
    let mut snap = Snapshot {
        guardian_id: "guardian-2".into(),
        partitions: Vec::new(),
        fleet: serde_json::to_value(&view.view.posture.fleet).expect("fleet"),
        top_risks: view.view.posture.top_risks.clone(),
        as_of: view.view.posture.as_of.clone(),
        published_at: chrono::Utc::now().timestamp_millis(),
        interval_ms: 300_000,
        parts: view.view.parts.clone(),
    };
    for p in &mut snap.parts {
        p.fact.topic = format!("{}-elsewhere", p.fact.topic);
    }
    let (json, trimmed) = snap.encode_within(MAX_SNAPSHOT_BYTES).expect("snapshot");
    println!(
        "posture snapshot: {:.0} kB, {} of {} partitions without their member list; encoded in {:.2} s",
        json.len() as f64 / 1e3,
        trimmed,
        snap.parts.len(),
        t.elapsed().as_secs_f64()
    );
    let peer = Peer::new(serde_json::from_slice(&json).expect("read back")).expect("peer");
    live.peers
        .write()
        .expect("peers")
        .insert("guardian-2".into(), Arc::new(peer));
    drop(view);
    let app = Arc::new(AppState::new(live, set, settings, TOKEN, None));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let ids = Arc::new(ids);
    let mut rss = vec![rss_mib()];
    for round in 1..=2 {
        for (name, uri) in [
            ("GET /agents/{id}", None),
            ("GET /agents?limit=100", Some("/agents?limit=100")),
            ("GET /posture", Some("/posture")),
        ] {
            let lat = rt.block_on(async {
                let mut tasks = Vec::new();
                for c in 0..clients {
                    let (app, ids) = (app.clone(), ids.clone());
                    tasks.push(tokio::spawn(async move {
                        let mut out = Vec::with_capacity(requests);
                        let mut x = c as u64 * 7919 + 1;
                        for _ in 0..requests {
                            x = x
                                .wrapping_mul(6364136223846793005)
                                .wrapping_add(1442695040888963407);
                            let path = match uri {
                                Some(u) => u.to_string(),
                                None => format!("/agents/{}", ids[(x >> 33) as usize % ids.len()]),
                            };
                            let req = Request::get(path)
                                .header("authorization", format!("Bearer {TOKEN}"))
                                .body(Body::empty())
                                .expect("request");
                            let t = Instant::now();
                            let resp = router(app.clone()).oneshot(req).await.expect("answer");
                            assert!(resp.status().is_success(), "{}", resp.status());
                            let _ = axum::body::to_bytes(resp.into_body(), 1 << 30)
                                .await
                                .expect("body");
                            out.push(t.elapsed());
                        }
                        out
                    }));
                }
                let mut all = Vec::new();
                for t in tasks {
                    all.extend(t.await.expect("client"));
                }
                all
            });
            let n = lat.len();
            let (p50, p99) = percentiles(lat);
            println!(
            "round {round}: {name}: {clients} clients, {n} requests: p50 {p50:.2} ms, p99 {p99:.2} ms"
        );
        }
        rss.push(rss_mib());
    }
    println!(
        "API resident memory: {:.0} MiB before the requests, {:.0} MiB after round 1, {:.0} MiB after round 2 (the same requests again: memory per request grows only if round 2 adds as much as round 1)",
        rss[0], rss[1], rss[2]
    );
}
