//! Detection quality on a labelled fleet the project did not write (`../shared/eval`, or
//! `GUARDIAN_EVAL_DIR`): the shipped blueprints with only the owner's calendar (its
//! `customer_config.py`), the fleet replayed through the engine, scored by its own `score.py`.
//!
//! A regression gate, not a tuning target: it fails when a fleet's score falls below its bar
//! ([`bar`]: the clean month stays where it is, the months with operations hold issue 26's bar;
//! every type's recall 0.8, no wrongful kill, attacked agents ranked above clean ones with an AUC
//! of 0.9). Where the fleet is absent the test says so and passes, unless
//! `GUARDIAN_REQUIRE_EVAL` is set (as `.ci/run` does).

use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use agent_guardian::blueprint::BlueprintSet;
use agent_guardian::engine::Engine;
use agent_guardian::event::{Decoder, DecoderOptions, OtlpOptions};
use agent_guardian::posture::PostureSettings;
use agent_guardian::replay::{self, JsonLines};
use serde_json::Value;

const MIN_TYPE_RECALL: f64 = 0.8;
const MIN_RANKING_AUC: f64 = 0.9;

/// The least precision and recall and the most negative controls flagged a fleet may score.
struct Bar {
    precision: f64,
    recall: f64,
    controls: u64,
}

/// The bar of a labelled fleet: the shared clean month stays where it is (precision 1.000,
/// recall 0.987, no control flagged); a month with production's operations (`…-ops…`) holds
/// issue 26's bar, precision and recall 0.95 and two controls at most (`fleet-dev-ops` scores
/// 1.000 and 0.962, 75 of 78); any other fleet, precision and recall 0.9 and one control.
fn bar(name: &str) -> Bar {
    match name {
        "fleet-dev" => Bar {
            precision: 1.0,
            recall: 0.987,
            controls: 0,
        },
        n if n.contains("-ops") => Bar {
            precision: 0.95,
            recall: 0.95,
            controls: 2,
        },
        _ => Bar {
            precision: 0.9,
            recall: 0.9,
            controls: 1,
        },
    }
}

fn eval_dir() -> PathBuf {
    std::env::var_os("GUARDIAN_EVAL_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/eval"),
        PathBuf::from,
    )
}

/// The labelled fleets in the directory: (name, labels, events).
fn fleets(dir: &Path) -> Vec<(String, PathBuf, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| {
            let name = p
                .file_name()?
                .to_str()?
                .strip_suffix(".labels.jsonl")?
                .to_string();
            let data = dir.join(format!("{name}.jsonl.zst"));
            data.exists().then_some((name, p, data))
        })
        .collect();
    out.sort();
    out
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Area under the ROC curve of `score` separating `positive` agents from the rest.
fn auc(scores: &[(bool, f64)]) -> f64 {
    let pos: Vec<f64> = scores.iter().filter(|s| s.0).map(|s| s.1).collect();
    let neg: Vec<f64> = scores.iter().filter(|s| !s.0).map(|s| s.1).collect();
    let mut wins = 0.0;
    for p in &pos {
        for n in &neg {
            wins += if p > n {
                1.0
            } else if p == n {
                0.5
            } else {
                0.0
            };
        }
    }
    wins / (pos.len() * neg.len()).max(1) as f64
}

/// Replays the JSON lines of `input` with the blueprints `set`, scores the incidents against
/// `labels` with the fleet's own `score.py`, and ranks the agents by posture risk: the score
/// (`score.py --json`), the ranking AUC, and the fleet-shift records raised.
fn score(
    dir: &Path,
    label: &str,
    labels: &Path,
    set: &Arc<BlueprintSet>,
    input: impl std::io::Read,
    tmp: &Path,
) -> (Value, f64, u64) {
    // OTLP requests carry whole traces (`scripts/to-otlp.py`): larger than one event, and the
    // volume in a span attribute.
    let decoder = Decoder::new(&DecoderOptions {
        max_event_bytes: 16 << 20,
        otlp: OtlpOptions {
            volume_attribute: Some("app.tool.bytes".into()),
            ..OtlpOptions::default()
        },
        ..set.decoder_options()
    })
    .unwrap();
    let mut engine = Engine::new(set.clone());
    let incidents = tmp.join(format!("{label}.incidents.jsonl"));
    let mut sink = JsonLines(std::io::BufWriter::new(
        std::fs::File::create(&incidents).unwrap(),
    ));
    let summary = replay::run(
        &mut engine,
        &decoder,
        BufReader::with_capacity(1 << 20, input),
        &mut sink,
        |_, _| {},
        None,
    )
    .unwrap();
    drop(sink);
    eprintln!("{label}: {}", summary.render());
    let shifts = summary.incidents
        [agent_guardian::engine::type_index(agent_guardian::response::IncidentType::FleetShift)];

    let score_json = tmp.join(format!("{label}.score.json"));
    let table = run(Command::new("python3")
        .arg(dir.join("score.py"))
        .arg(labels)
        .arg(&incidents)
        .arg("--json")
        .arg(&score_json));
    eprintln!("{table}");
    let s: Value = serde_json::from_str(&std::fs::read_to_string(&score_json).unwrap()).unwrap();

    // Ranking: attacked agents above clean ones, by risk as of the end of the fleet.
    let attacked: std::collections::BTreeSet<String> = std::fs::read_to_string(labels)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["expect"] == "alert")
        .filter_map(|l| l["agent_id"].as_str().map(str::to_string))
        .collect();
    let states: Vec<_> = engine.agents().cloned().collect();
    let posture = agent_guardian::posture::posture(&states, &PostureSettings::default(), &[]);
    let ranking: Vec<(bool, f64)> = posture
        .agents
        .iter()
        .map(|a| (attacked.contains(&a.agent_id), f64::from(a.risk)))
        .collect();
    let ranking_auc = auc(&ranking);
    eprintln!(
        "{label}: ranking AUC {ranking_auc:.3}; fleet risk {} ({})",
        posture.fleet.score,
        posture.fleet.level.as_str()
    );
    (s, ranking_auc, shifts)
}

/// What keeps a score below the bar.
fn problems(s: &Value, ranking_auc: f64, bar: &Bar) -> Vec<String> {
    let o = &s["overall"];
    let num = |v: &Value| v.as_f64().unwrap_or(0.0);
    let mut problems = Vec::new();
    // The scorer's figures are exact fractions; the bars are given to three decimals.
    if num(&o["precision"]) < bar.precision - 5e-4 {
        problems.push(format!("precision {}", o["precision"]));
    }
    if num(&o["recall"]) < bar.recall - 5e-4 {
        problems.push(format!("recall {}", o["recall"]));
    }
    for (t, r) in s["per_type"].as_object().unwrap() {
        if r["labels"].as_u64().unwrap_or(0) > 0 && num(&r["recall"]) < MIN_TYPE_RECALL {
            problems.push(format!("{t} recall {}", r["recall"]));
        }
    }
    if o["nc_violated"].as_u64().unwrap_or(u64::MAX) > bar.controls {
        problems.push(format!("{} negative controls flagged", o["nc_violated"]));
    }
    if s["auto_kill"]["wrongful_agents"].as_u64() != Some(0) {
        problems.push(format!(
            "{} wrongful kills",
            s["auto_kill"]["wrongful_agents"]
        ));
    }
    if ranking_auc < MIN_RANKING_AUC {
        problems.push(format!("ranking AUC {ranking_auc:.3}"));
    }
    problems
}

/// `zstd -dc data`, its output piped.
fn decompress(data: &Path) -> std::process::Child {
    Command::new("zstd")
        .args(["-d", "-q", "--long=27", "-c"])
        .arg(data)
        .stdout(Stdio::piped())
        .spawn()
        .expect("zstd (scripts/packages.sh installs it)")
}

/// Where the rewritten fleets are kept between runs: `GUARDIAN_EVAL_CACHE`, or
/// `$HOME/.cache/agent-guardian/eval` (none without a home).
fn cache_dir() -> Option<PathBuf> {
    std::env::var_os("GUARDIAN_EVAL_CACHE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/agent-guardian/eval"))
        })
}

/// What a rewrite depends on: the fleet's and the script's bytes. (`DefaultHasher`'s algorithm
/// may change between Rust releases: that only misses the cache once.)
fn rewrite_key(data: &Path, script: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for f in [data, script] {
        std::fs::read(f).expect("readable").hash(&mut h);
    }
    h.finish()
}

/// Copies what is read from `r` into `w` (the cache being written); a failed write stops the
/// copy and leaves the cache unwritten, the stream goes on.
struct Tee<R, W> {
    r: R,
    w: Option<W>,
    failed: bool,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.r.read(buf)?;
        if let Some(w) = &mut self.w {
            if w.write_all(&buf[..n]).is_err() {
                self.w = None;
                self.failed = true;
            }
        }
        Ok(n)
    }
}

/// Runs `consume` on the fleet `data` rewritten by the Python `script` (its standard input the
/// fleet, its output the stream). The Python rewrite takes most of a minute per fleet, so its
/// output is kept (zstd) in [`cache_dir`] under `entry` and the fleet's and script's
/// [`rewrite_key`]: a later run with the same fleet and script reads it back instead (once
/// `zstd -t` finds it whole), and a new key replaces the entry's older files.
fn rewritten<T>(
    data: &Path,
    script: &Path,
    entry: &str,
    consume: impl FnOnce(&mut dyn Read) -> T,
) -> T {
    let cache = cache_dir().filter(|d| std::fs::create_dir_all(d).is_ok());
    let key = rewrite_key(data, script);
    let kept = cache
        .as_ref()
        .map(|d| d.join(format!("{entry}.{key:016x}.jsonl.zst")));
    // A kept copy is checked whole before it is read; a damaged one is written again.
    let intact = |k: &Path| {
        k.exists()
            && Command::new("zstd")
                .args(["-t", "-q", "--long=27"])
                .arg(k)
                .status()
                .is_ok_and(|s| s.success())
    };
    if let Some(kept) = kept.as_ref().filter(|k| intact(k)) {
        let mut unzip = decompress(kept);
        let out = consume(&mut unzip.stdout.take().expect("piped"));
        assert!(unzip.wait().unwrap().success(), "{}", kept.display());
        return out;
    }
    let mut zstd = decompress(data);
    let mut rewrite = Command::new("python3")
        .arg(script)
        .stdin(Stdio::from(zstd.stdout.take().expect("piped")))
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    // The copy kept: written beside its final name (one per process), renamed once whole.
    let partial = kept
        .as_ref()
        .map(|k| k.with_extension(format!("{}.partial", std::process::id())));
    let mut keep = partial.as_ref().and_then(|p| {
        Command::new("zstd")
            .args(["-1", "-q", "-f", "-o"])
            .arg(p)
            .stdin(Stdio::piped())
            .spawn()
            .ok()
    });
    let mut tee = Tee {
        r: rewrite.stdout.take().expect("piped"),
        w: keep.as_mut().and_then(|k| k.stdin.take()),
        failed: false,
    };
    let out = consume(&mut tee);
    // What the consumer left unread still goes into the copy, which is kept whole or not at all.
    let whole = std::io::copy(&mut tee, &mut std::io::sink()).is_ok() && !tee.failed;
    drop(tee);
    assert!(zstd.wait().unwrap().success() && rewrite.wait().unwrap().success());
    let written = keep.map(|mut k| k.wait().is_ok_and(|s| s.success()));
    if let (Some(true), true, Some(partial), Some(kept), Some(dir)) =
        (written, whole, &partial, &kept, &cache)
    {
        // Older copies of the entry (another fleet or script) go.
        let prefix = format!("{entry}.");
        for old in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if old.file_name().to_string_lossy().starts_with(&prefix) && old.path() != *partial {
                let _ = std::fs::remove_file(old.path());
            }
        }
        let _ = std::fs::rename(partial, kept);
    } else if let Some(partial) = &partial {
        let _ = std::fs::remove_file(partial);
    }
    out
}

/// Holds the bar on each labelled fleet, and again on the same fleet rewritten in AgentShield's
/// shape (`scripts/to-agentshield.py`: tool entries that name only their session and user,
/// several agents per user) and as OpenTelemetry traces (`scripts/to-otlp.py`: OTLP/JSON
/// requests of whole hour-long traces whose tool spans do not name their agent, the agent span
/// last), where attribution through sessions and traces must give the same detection.
#[test]
fn detection_on_the_shared_labelled_fleet_holds_the_bar() {
    let dir = eval_dir();
    let found = fleets(&dir);
    if found.is_empty() {
        assert!(
            std::env::var_os("GUARDIAN_REQUIRE_EVAL").is_none(),
            "GUARDIAN_REQUIRE_EVAL is set but no labelled fleet is in {}",
            dir.display()
        );
        eprintln!(
            "no labelled fleet in {}: detection gate skipped",
            dir.display()
        );
        return;
    }
    for (name, labels, data) in found {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = tmp.path().join("config");
        run(Command::new("python3")
            .arg(dir.join("customer_config.py"))
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("blueprints"))
            .arg(&cfg));
        let set = Arc::new(
            BlueprintSet::load(
                Some(&cfg.join("blueprints")),
                Some(&cfg.join("assign.json")),
            )
            .expect("the owner's configuration loads"),
        );

        let mut zstd = decompress(&data);
        let stdout = zstd.stdout.take().expect("piped");
        let (spm, spm_auc, shifts) = score(&dir, &name, &labels, &set, stdout, tmp.path());
        assert!(zstd.wait().unwrap().success());
        let bar = bar(&name);
        let p = problems(&spm, spm_auc, &bar);
        assert!(p.is_empty(), "{name} below the bar: {}", p.join(", "));

        for (shape, slug, script) in [
            ("AgentShield", "agentshield", "scripts/to-agentshield.py"),
            ("OTLP traces", "otlp", "scripts/to-otlp.py"),
        ] {
            let label = format!("{name} as {shape}");
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
            let (got, got_auc, _) = rewritten(&data, &script, &format!("{name}.{slug}"), |input| {
                score(&dir, &label, &labels, &set, input, tmp.path())
            });
            let p = problems(&got, got_auc, &bar);
            assert!(p.is_empty(), "{label} below the bar: {}", p.join(", "));
            // Agents judged on their own give the same detection whatever the order their calls
            // come in. Cohorts are judged as the stream delivers their members' calls: whole
            // hour-long traces, one agent after another, deliver them in another order than
            // the calls were made, so where a cohort shifted the OTLP form holds the bar only.
            if shape == "AgentShield" || shifts == 0 {
                assert_eq!(got["overall"], spm["overall"], "{label}: another detection");
                assert_eq!(
                    got["per_type"], spm["per_type"],
                    "{label}: another detection"
                );
            }
        }
    }
}

#[test]
fn auc_counts_ties_as_half() {
    assert_eq!(auc(&[(true, 2.0), (false, 1.0)]), 1.0);
    assert_eq!(auc(&[(true, 1.0), (false, 2.0)]), 0.0);
    assert_eq!(auc(&[(true, 1.0), (false, 1.0)]), 0.5);
}
