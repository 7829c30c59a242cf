//! Command line: `guardian run | demo | produce | kill | revive | state | posture | replay |
//! simulate | evaluate | blueprint`.
//!
//! Layer: uses every module: it is the top.

/// Writes a line to standard error, ignoring a closed stream (`eprintln!` panics when stderr is
/// a pipe whose reader has gone, as in `guardian replay … 2>&1 | head`).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod daemon;
mod posture;

use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::blueprint::{Assignment, BlueprintSet, LoadError};
use crate::engine::Engine;
use crate::event::{
    Decoder, DecoderOptions, OtlpOptions, DEFAULT_MAX_EVENT_BYTES, DEFAULT_VOLUME_POINTER,
};
use crate::replay::{self, JsonLines};
use crate::simulate::{evaluate, SimConfig, Simulation};
use crate::sink::{Formatter, RecordFormat, RecordLines};

/// agent-guardian: watches fleets of AI agents through their audit events and stops rogue ones.
#[derive(Debug, Parser)]
#[command(name = "guardian", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: consume audit topics, detect, emit incidents and kill commands.
    Run(daemon::RunArgs),
    /// The embedded demo: the real daemon pipeline on an in-process Kafka mock cluster.
    Demo,
    /// Publish audit events (JSON lines) to the audit topic, keyed by agent id.
    Produce(daemon::ProduceArgs),
    /// Publish a signed kill command for an agent on the control topic.
    Kill(daemon::CommandArgs),
    /// Publish a signed revive command for an agent on the control topic.
    Revive(daemon::CommandArgs),
    /// Inspect or reset a stopped daemon's stored state.
    #[command(subcommand)]
    State(daemon::StateCommand),
    /// Fleet posture (inventory, risk with reasons, trend) or a compliance report of a stored state.
    Posture(posture::PostureArgs),
    /// Replay audit events (JSON lines) through the detectors; incidents to stdout, summary to stderr.
    Replay(ReplayArgs),
    /// Generate a realistic fleet's audit events (Agent-SPM JSON lines) with injected anomalies.
    Simulate(SimulateArgs),
    /// Simulate a fleet with injected anomalies, replay it offline, print incidents and precision/recall.
    Evaluate(DemoArgs),
    /// Validate or show blueprints.
    #[command(subcommand)]
    Blueprint(BlueprintCommand),
}

#[derive(Debug, Args)]
struct RulesArgs {
    /// Directory of blueprint JSON files (default: the shipped finance, soc and engineering).
    #[arg(long, value_name = "DIR")]
    blueprints: Option<PathBuf>,
    /// Assignment of agents to blueprints (JSON; default: every agent → engineering).
    #[arg(long, value_name = "FILE")]
    assign: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ReplayArgs {
    #[command(flatten)]
    rules: RulesArgs,
    /// JSON pointer of a call's data volume in bytes.
    #[arg(long, default_value = DEFAULT_VOLUME_POINTER)]
    volume_pointer: String,
    /// Largest accepted event in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_EVENT_BYTES)]
    max_event_bytes: usize,
    /// OpenTelemetry spans: an attribute naming the agent, the first present wins (repeat it;
    /// default gen_ai.agent.id, then gen_ai.agent.name).
    #[arg(long = "otlp-agent-attribute", value_name = "ATTRIBUTE")]
    otlp_agent_attributes: Vec<String>,
    /// OpenTelemetry spans: the attribute holding a call's data volume in bytes (none by default).
    #[arg(long, value_name = "ATTRIBUTE")]
    otlp_volume_attribute: Option<String>,
    /// OpenTelemetry spans: the span or resource attribute holding the agent's group for the
    /// assignment rules (none by default).
    #[arg(long, value_name = "ATTRIBUTE")]
    otlp_group_attribute: Option<String>,
    /// How far ahead of the stream's own time (its latest event) a line may be dated: a line
    /// further ahead is folded only once other lines confirm its time, and dead-lettered as
    /// `future_timestamp` otherwise.
    /// At most a day.
    #[arg(long, default_value = "5m", value_parser = future_bound)]
    max_future: std::time::Duration,
    /// How long (event time behind the latest event) an event's identity is remembered, so that
    /// a re-delivery of it is dropped as a duplicate; 0 turns this off.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    duplicate_horizon: std::time::Duration,
    /// Most event identities remembered (the oldest are forgotten first).
    #[arg(long, default_value_t = crate::state::DUPLICATE_MAX_ENTRIES)]
    duplicate_max_entries: usize,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
    /// What to print: incident JSON lines, or every record the SIEM sinks would send (incidents,
    /// kill commands, dead letters) as CEF, ECS JSON or OCSF lines.
    #[arg(long, value_enum, default_value = "incidents")]
    output: ReplayOutput,
    /// Guardian id in kill commands, and host name in CEF/JSON records (default: the host name).
    #[arg(long)]
    guardian_id: Option<String>,
    /// Also write the resulting state (agents, incidents, daily fleet scores) to this directory,
    /// for `guardian posture --state DIR`.
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// With `--state`: at most this many agents' states in memory, the least recently used
    /// others in the state directory until their next event (detection is the same; memory
    /// follows the bound, not the fleet).
    #[arg(long, value_name = "N", requires = "state", value_parser = clap::value_parser!(u64).range(1..))]
    max_agents_in_memory: Option<u64>,
    /// Events file (JSON lines), or `-` for stdin.
    events: PathBuf,
}

/// `guardian replay --output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ReplayOutput {
    /// Incidents as JSON lines.
    Incidents,
    /// CEF lines.
    Cef,
    /// ECS JSON lines.
    Json,
    /// OCSF JSON lines (Detection Finding, Remediation Activity, Application Error).
    Ocsf,
}

/// Where `guardian replay` writes.
enum ReplaySink<W: Write> {
    Incidents(JsonLines<W>),
    Records(RecordLines<W>),
}

impl<W: Write> replay::IncidentSink for ReplaySink<W> {
    fn incident(&mut self, i: &crate::response::Incident) -> io::Result<()> {
        match self {
            ReplaySink::Incidents(s) => s.incident(i),
            ReplaySink::Records(s) => s.incident(i),
        }
    }

    fn dead_letter(
        &mut self,
        line: u64,
        e: &crate::event::DecodeError,
        bytes: usize,
    ) -> io::Result<()> {
        match self {
            ReplaySink::Incidents(s) => s.dead_letter(line, e, bytes),
            ReplaySink::Records(s) => s.dead_letter(line, e, bytes),
        }
    }
}

impl<W: Write> ReplaySink<W> {
    fn flush(&mut self) -> io::Result<()> {
        match self {
            ReplaySink::Incidents(s) => s.0.flush(),
            ReplaySink::Records(s) => s.flush(),
        }
    }
}

#[derive(Debug, Args)]
struct SimulateArgs {
    /// Number of agents.
    #[arg(long, default_value_t = 100)]
    agents: usize,
    /// Number of days.
    #[arg(long, default_value_t = 28)]
    days: u32,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// First day (UTC date).
    #[arg(long, default_value = "2026-03-02")]
    start: chrono::NaiveDate,
    /// Write the labels of injected anomalies and negative controls here (JSON lines).
    #[arg(long, value_name = "FILE")]
    labels: Option<PathBuf>,
    /// Generate normal activity only.
    #[arg(long)]
    no_inject: bool,
    /// Output file (default stdout).
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// Number of agents.
    #[arg(long, default_value_t = 200)]
    agents: usize,
    /// Number of days.
    #[arg(long, default_value_t = 28)]
    days: u32,
    /// Random seed.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

#[derive(Debug, Subcommand)]
enum BlueprintCommand {
    /// Validate blueprint (or assignment) files; reports every error with its JSON path.
    Validate {
        /// Files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print a blueprint with every default filled in.
    Show {
        /// Blueprint key (file stem, e.g. `finance`), display name, or path to a file.
        name: String,
        /// Directory of blueprint JSON files (default: the shipped ones).
        #[arg(long, value_name = "DIR")]
        blueprints: Option<PathBuf>,
    },
    /// List the blueprints in force.
    List {
        /// Directory of blueprint JSON files (default: the shipped ones).
        #[arg(long, value_name = "DIR")]
        blueprints: Option<PathBuf>,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run(_)) {
        // `run` sets up logging from its configuration.
        let _ = tracing_subscriber::fmt()
            .with_writer(io::stderr)
            .with_ansi(io::stderr().is_terminal())
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .try_init();
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            say!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Replay(a) => replay_cmd(a),
        Command::Simulate(a) => simulate_cmd(a),
        Command::Run(a) => daemon::run_cmd(a),
        Command::Demo => daemon::demo_cmd(),
        Command::Produce(a) => daemon::produce_cmd(a),
        Command::Kill(a) => daemon::command_cmd(crate::control::Verb::Kill, a),
        Command::Revive(a) => daemon::command_cmd(crate::control::Verb::Revive, a),
        Command::State(c) => daemon::state_cmd(c),
        Command::Evaluate(a) => evaluate_cmd(a),
        Command::Posture(a) => posture::posture_cmd(a),
        Command::Blueprint(BlueprintCommand::Validate { files }) => Ok(validate_cmd(&files)),
        Command::Blueprint(BlueprintCommand::Show { name, blueprints }) => {
            show_cmd(&name, blueprints.as_deref())
        }
        Command::Blueprint(BlueprintCommand::List { blueprints }) => {
            let set = BlueprintSet::load(blueprints.as_deref(), None)?;
            for b in set.blueprints() {
                println!(
                    "{}\t{}\t{}\t{}",
                    b.key,
                    b.name,
                    b.mode.as_str(),
                    b.timezone.name()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Loads the rules in force for a replay.
fn load_rules(r: &RulesArgs) -> anyhow::Result<BlueprintSet> {
    Ok(BlueprintSet::load(
        r.blueprints.as_deref(),
        r.assign.as_deref(),
    )?)
}

/// A duration in whole milliseconds, saturating.
fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// `guardian replay`: the events file through the engine, incidents or records to stdout, the
/// summary to stderr, and with `--state` the state written for `guardian posture`.
fn replay_cmd(a: ReplayArgs) -> anyhow::Result<ExitCode> {
    let set = Arc::new(load_rules(&a.rules)?);
    let decoder = replay_decoder(&a, &set)?;
    let (input, len) = crate::source::lines::open(&a.events)
        .with_context(|| format!("cannot open {}", a.events.display()))?;
    let progress = (!a.quiet && io::stderr().is_terminal()).then(|| progress_bar(len));
    if let Some(dir) = &a.state {
        // The state written is this replay's alone: merging it into another would mix two logs.
        let used = std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some());
        if used {
            anyhow::bail!(
                "{} is not empty: `--state` writes a new state, give a new or empty directory",
                dir.display()
            );
        }
    }
    let mut engine = Engine::new(set);
    engine.set_duplicates(crate::state::SeenSettings {
        horizon_ms: millis(a.duplicate_horizon),
        max_entries: a.duplicate_max_entries,
    });
    engine.draw_duplicate_key();
    let options = replay::ReplayOptions {
        max_future_ms: millis(a.max_future),
    };
    let source = a.events.display().to_string();
    let mut sink = replay_sink(&a, &source);
    let mut shown = 0u64;
    let on_error = |line, e: &crate::event::DecodeError| {
        shown += 1;
        if shown <= 100 {
            say!("line {line}: {e}");
        }
    };
    let progress = progress.as_ref();
    let summary = match &a.state {
        None => {
            let s = replay::run_with(
                &mut engine,
                &decoder,
                input,
                &mut sink,
                on_error,
                progress,
                options,
            )?;
            sink.flush()?;
            s
        }
        Some(dir) => {
            let store = crate::store::Store::open(dir)
                .with_context(|| format!("cannot open the state {}", dir.display()))?;
            let mut rec =
                replay::StateRecorder::new(sink, crate::posture::PostureSettings::default())
                    .spilling_to(store);
            if engine.unloaded_events() > 0 {
                // Never expected: every agent of a batch is read back before it.
                say!(
                    "error: {} event(s) of agents out of memory were not processed",
                    engine.unloaded_events()
                );
            }
            if let Some(n) = a.max_agents_in_memory {
                rec = rec.bounded(usize::try_from(n).unwrap_or(usize::MAX), &source);
            }
            let s = replay::run_with(
                &mut engine,
                &decoder,
                input,
                &mut rec,
                on_error,
                progress,
                options,
            )?;
            rec.inner.flush()?;
            if let Some(n) = a.max_agents_in_memory {
                say!(
                    "at most {n} agents in memory: {} of {} out of memory at the end; states left memory {} times and were read back {} times",
                    engine.agent_count() - engine.resident_count(),
                    engine.agent_count(),
                    rec.unloaded,
                    rec.loaded
                );
            }
            write_replay_state(dir, engine, &rec, &source, s.lines)?;
            s
        }
    };
    if summary.malformed > 100 {
        say!("… and {} more malformed line(s)", summary.malformed - 100);
    }
    say!("{}", summary.render());
    Ok(ExitCode::SUCCESS)
}

/// The replay's decoder: the blueprints' options with the command line's.
fn replay_decoder(a: &ReplayArgs, set: &BlueprintSet) -> anyhow::Result<Decoder> {
    Ok(Decoder::new(&DecoderOptions {
        volume_pointer: a.volume_pointer.clone(),
        max_event_bytes: a.max_event_bytes,
        otlp: OtlpOptions {
            agent_attributes: if a.otlp_agent_attributes.is_empty() {
                OtlpOptions::default().agent_attributes
            } else {
                a.otlp_agent_attributes.clone()
            },
            volume_attribute: a.otlp_volume_attribute.clone(),
            group_attribute: a.otlp_group_attribute.clone(),
            ..OtlpOptions::default()
        },
        ..set.decoder_options()
    })?)
}

/// A progress bar over `len` bytes (a spinner when the length is unknown: stdin).
fn progress_bar(len: Option<u64>) -> ProgressBar {
    let p = ProgressBar::new(len.unwrap_or(0));
    let style = if len.is_some() {
        "{bar:40} {bytes}/{total_bytes} {msg} ({eta})"
    } else {
        "{spinner} {bytes} {msg}"
    };
    p.set_style(
        ProgressStyle::with_template(style).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    p
}

/// Where the replay's output goes: incidents as JSON lines, or SIEM records, on stdout.
fn replay_sink(a: &ReplayArgs, source: &str) -> ReplaySink<BufWriter<io::StdoutLock<'static>>> {
    let out = BufWriter::with_capacity(1 << 16, io::stdout().lock());
    let guardian_id = a
        .guardian_id
        .clone()
        .unwrap_or_else(crate::config::default_guardian_id);
    let format = match a.output {
        ReplayOutput::Incidents => return ReplaySink::Incidents(JsonLines(out)),
        ReplayOutput::Cef => RecordFormat::Cef,
        ReplayOutput::Ocsf => RecordFormat::Ocsf,
        ReplayOutput::Json => RecordFormat::Json,
    };
    let f = Formatter::new(format, &guardian_id);
    ReplaySink::Records(RecordLines::new(out, f, &guardian_id, source))
}

/// Writes the replay's state to `dir` and says where.
fn write_replay_state<S: replay::IncidentSink>(
    dir: &std::path::Path,
    engine: Engine,
    rec: &replay::StateRecorder<S>,
    source: &str,
    lines: u64,
) -> anyhow::Result<()> {
    replay::write_state(dir, engine, rec, source, lines).with_context(|| {
        format!(
            "cannot write the state to {} (is a daemon running on it?)",
            dir.display()
        )
    })?;
    say!(
        "state written to {} (read it with `guardian posture --state {}`)",
        dir.display(),
        dir.display()
    );
    Ok(())
}

fn sim_config(
    agents: usize,
    days: u32,
    seed: u64,
    start: chrono::NaiveDate,
    inject: bool,
) -> SimConfig {
    let start_ms = start
        .and_hms_opt(0, 0, 0)
        .map_or(0, |d| d.and_utc().timestamp_millis());
    SimConfig {
        agents,
        days,
        seed,
        start_ms,
        inject,
        ..SimConfig::default()
    }
}

fn simulate_cmd(a: SimulateArgs) -> anyhow::Result<ExitCode> {
    if a.agents == 0 || a.days == 0 {
        bail!("--agents and --days must be at least 1");
    }
    let sim = Simulation::new(sim_config(a.agents, a.days, a.seed, a.start, !a.no_inject));
    let n = match &a.output {
        Some(p) => {
            let f = File::create(p).with_context(|| format!("cannot create {}", p.display()))?;
            let mut w = BufWriter::with_capacity(1 << 20, f);
            let n = sim.write_all(&mut w)?;
            w.flush()?;
            n
        }
        None => {
            let mut w = BufWriter::with_capacity(1 << 20, io::stdout().lock());
            let n = sim.write_all(&mut w)?;
            w.flush()?;
            n
        }
    };
    if let Some(p) = &a.labels {
        let mut w = BufWriter::new(
            File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        );
        for l in &sim.labels {
            serde_json::to_writer(&mut w, l)?;
            w.write_all(b"\n")?;
        }
        w.flush()?;
    }
    say!(
        "wrote {n} events of {} agents over {} days; {} labels",
        sim.fleet.len(),
        a.days,
        sim.labels.len()
    );
    Ok(ExitCode::SUCCESS)
}

fn evaluate_cmd(a: DemoArgs) -> anyhow::Result<ExitCode> {
    let start = chrono::NaiveDate::from_ymd_opt(2026, 3, 2).unwrap_or_default();
    let sim = Simulation::new(sim_config(a.agents, a.days, a.seed, start, true));
    say!(
        "Simulating {} agents over {} days (finance, SOC and engineering; one rogue agent) …",
        sim.fleet.len(),
        a.days
    );
    let events = sim.to_jsonl();
    let set = crate::demo::demo_blueprints()?;
    let decoder = Decoder::new(&set.decoder_options())?;
    let mut engine = Engine::new(set);
    let mut incidents = Vec::new();
    let summary = replay::run(
        &mut engine,
        &decoder,
        &events[..],
        &mut incidents,
        |_, _| {},
        None,
    )?;
    let mut out = io::stdout().lock();
    for i in &incidents {
        writeln!(
            out,
            "{}  {:<8} {:<20} {:<7} {:<16} {:<12} {}",
            crate::event::format_rfc3339_ms(i.at),
            i.severity.as_str(),
            i.kind.as_str(),
            match i.basis {
                crate::response::Basis::Static => "static",
                crate::response::Basis::Learned => "learned",
            },
            i.agent_id,
            serde_json::to_value(i.action_taken)?.as_str().unwrap_or(""),
            i.description
        )?;
    }
    let ev = evaluate(&sim.labels, &incidents);
    say!("{}", summary.render());
    say!(
        "against the injected labels: recall {:.3} ({}/{} anomalies found), precision {:.3} ({}/{} incidents explained), {} negative control(s) fired",
        ev.recall(),
        ev.found,
        ev.positives,
        ev.precision(),
        ev.true_incidents,
        ev.incidents,
        ev.negatives_fired.len()
    );
    Ok(ExitCode::SUCCESS)
}

fn validate_cmd(files: &[PathBuf]) -> ExitCode {
    let mut bad = 0;
    for f in files {
        let result = crate::blueprint::read_json_file(f).and_then(|v| {
            let looks_like_assignment = v.get("rules").is_some()
                || (v.get("default").is_some() && v.get("anomaly").is_none());
            if looks_like_assignment {
                Assignment::from_json(&v)
                    .map(|_| "assignment")
                    .map_err(|errors| LoadError::Invalid {
                        path: f.clone(),
                        errors,
                    })
            } else {
                BlueprintSet::load_file(f).map(|_| "blueprint")
            }
        });
        match result {
            Ok(kind) => println!("{}: OK ({kind})", f.display()),
            Err(LoadError::Invalid { errors, .. }) => {
                bad += 1;
                for e in errors {
                    println!("{}: {e}", f.display());
                }
            }
            Err(e) => {
                bad += 1;
                println!("{e}");
            }
        }
    }
    if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn show_cmd(name: &str, dir: Option<&Path>) -> anyhow::Result<ExitCode> {
    let path = Path::new(name);
    let bp = if path.is_file() {
        BlueprintSet::load_file(path)?
    } else {
        let set = BlueprintSet::load(dir, None)?;
        match set.index_of(name) {
            Some(i) => set.get(i).clone(),
            None => {
                let keys: Vec<&str> = set.blueprints().iter().map(|b| b.key.as_str()).collect();
                bail!("no blueprint {name:?} (have: {})", keys.join(", "))
            }
        }
    };
    println!("{}", serde_json::to_string_pretty(&bp.to_json())?);
    Ok(ExitCode::SUCCESS)
}

/// Why `--max-future` was refused.
#[derive(Debug, thiserror::Error)]
enum FutureBoundError {
    /// Not a duration.
    #[error(transparent)]
    Text(#[from] humantime::DurationError),
    /// Longer than [`crate::config::MAX_FUTURE`].
    #[error("{} is longer than the longest allowed, {}", humantime::format_duration(*.0), humantime::format_duration(crate::config::MAX_FUTURE))]
    TooLong(std::time::Duration),
}

/// Parses `--max-future`: a duration of at most [`crate::config::MAX_FUTURE`].
fn future_bound(s: &str) -> Result<std::time::Duration, FutureBoundError> {
    let d = humantime::parse_duration(s)?;
    if d > crate::config::MAX_FUTURE {
        return Err(FutureBoundError::TooLong(d));
    }
    Ok(d)
}
