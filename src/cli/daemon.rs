//! Daemon commands: `run`, `demo`, `produce`, `kill`, `revive`, `state`.

use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::app::Daemon;
use crate::config::{Config, Resolved};
use crate::control::Verb;
use crate::event::{format_rfc3339_ms, Decoder, DecoderOptions};
use crate::sink::kafka::{KafkaSink, OutputTopics as _};
use crate::store::Store;

/// `guardian run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Configuration file (TOML or JSON).
    #[arg(long, short, value_name = "FILE", env = "GUARDIAN_CONFIG")]
    config: PathBuf,
    /// Validate the configuration, report every error, and exit.
    #[arg(long)]
    check_config: bool,
}

/// Where a command finds Kafka and the signing key.
#[derive(Debug, Args)]
pub struct ConfigArg {
    /// Configuration file of the daemon (brokers, topics, signing key).
    #[arg(long, short, value_name = "FILE", env = "GUARDIAN_CONFIG")]
    config: PathBuf,
}

/// `guardian produce`.
#[derive(Debug, Args)]
pub struct ProduceArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Audit topic (default: the first configured one).
    #[arg(long)]
    topic: Option<String>,
    /// Events as JSON lines, or `-` for stdin.
    input: PathBuf,
    /// How long the broker may take to acknowledge the events (e.g. `30s`); past it the command
    /// fails with the count it could not deliver.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// `guardian kill` / `guardian revive`.
#[derive(Debug, Args)]
pub struct CommandArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The agent.
    agent: String,
    /// Why (recorded in the command and the incident trail).
    #[arg(long, default_value = "operator decision")]
    reason: String,
}

/// `guardian state`.
#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// Print the stored state of an agent (JSON) from a stopped daemon's state directory.
    Inspect {
        /// State directory (sled).
        #[arg(long, value_name = "DIR")]
        state_dir: PathBuf,
        /// The agent.
        agent: String,
    },
    /// List the stored partitions with their offsets and agent counts.
    Partitions {
        /// State directory (sled).
        #[arg(long, value_name = "DIR")]
        state_dir: PathBuf,
    },
    /// Drop the stored partition states so the next start rebuilds them from the log (operator
    /// commands are read again from the control topic's start).
    Rebuild {
        /// State directory (sled).
        #[arg(long, value_name = "DIR")]
        state_dir: PathBuf,
        /// Only this audit topic.
        #[arg(long)]
        topic: Option<String>,
    },
}

fn resolve(path: &Path) -> anyhow::Result<Resolved> {
    Ok(Config::load(path)?.resolve(path)?)
}

fn init_logging(format: &str, default: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into());
    let b = tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
        .with_env_filter(filter);
    let _ = if format == "json" {
        b.json().try_init()
    } else {
        b.try_init()
    };
}

/// `guardian run`: until SIGINT/SIGTERM (graceful, within the deadline); a second signal exits at once.
pub fn run_cmd(a: RunArgs) -> anyhow::Result<ExitCode> {
    let cfg = match Config::load(&a.config).and_then(|c| c.resolve(&a.config)) {
        Ok(c) => c,
        Err(e) => {
            say!("{e}");
            return Ok(ExitCode::from(2));
        }
    };
    if a.check_config {
        println!("{}: ok", a.config.display());
        println!(
            "{}",
            cfg.config
                .redacted()
                .context("printing the configuration")?
        );
        return Ok(ExitCode::SUCCESS);
    }
    init_logging(&cfg.config.log_format, "info");
    let shown = cfg
        .config
        .redacted()
        .context("printing the configuration")?;
    tracing::info!(config = %shown, "agent-guardian starting");
    let deadline = cfg.shutdown_timeout;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let daemon = Daemon::start(cfg)?;
        // Until a signal, or the daemon's own stop signal (a thread failed).
        let stop = daemon.stop_signal().clone();
        let failed = tokio::select! {
            _ = term.recv() => false,
            _ = int.recv() => false,
            () = stop.stopped() => true,
        };
        if !failed {
            tracing::info!(
                ?deadline,
                "signal received: stopping (a second signal exits at once)"
            );
        }
        daemon.shutdown();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
            say!("second signal: exiting now");
            std::process::exit(130);
        });
        let joined = tokio::task::spawn_blocking(move || daemon.join(deadline)).await;
        anyhow::Ok(joined.map_err(|e| anyhow::anyhow!("{e}"))?)
    })?;
    match result {
        Ok(()) => {
            tracing::info!("stopped cleanly");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            tracing::error!(error = %e, "agent-guardian stopped on a failure");
            Ok(ExitCode::from(1))
        }
    }
}

/// `guardian produce`: audit events to the audit topic, keyed by agent id.
pub fn produce_cmd(a: ProduceArgs) -> anyhow::Result<ExitCode> {
    init_logging("human", "warn");
    let cfg = resolve(&a.config.config)?;
    let k = &cfg.config.kafka;
    let topic = a
        .topic
        .clone()
        .or_else(|| k.audit_topics.first().cloned())
        .context("no audit topic")?;
    let decoder = Decoder::new(&DecoderOptions {
        volume_pointer: cfg.config.volume_pointer.clone(),
        otlp: cfg.config.otlp.clone(),
        ..Default::default()
    })?;
    // librdkafka gives up on a message after `message.timeout.ms`: the command's own deadline,
    // unless the configuration sets one.
    let mut options = cfg.kafka_options.clone();
    if crate::kafka::option_for(
        &options,
        crate::kafka::ClientRole::Producer,
        "message.timeout.ms",
    )
    .is_none()
    {
        options.insert(
            "producer.message.timeout.ms".into(),
            a.timeout.as_millis().max(1).to_string(),
        );
    }
    let mut sink = KafkaSink::new(&k.brokers, &options)?;
    let input: Box<dyn BufRead> = if a.input.as_os_str() == "-" {
        Box::new(io::stdin().lock())
    } else {
        Box::new(BufReader::new(
            std::fs::File::open(&a.input)
                .with_context(|| format!("cannot open {}", a.input.display()))?,
        ))
    };
    let (mut sent, mut unkeyed) = (0u64, 0u64);
    for (n, line) in input.split(b'\n').enumerate() {
        let line = line?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        // An OTLP request is one message, keyed as its first span.
        let mut events = Vec::with_capacity(1);
        let key = match decoder.decode_into(&line, &mut events) {
            Ok(_) => events
                .first()
                .map(|ev| ev.partition_key().as_bytes().to_vec()),
            Err(e) => {
                say!(
                    "line {}: {e} (sent unkeyed; the daemon dead-letters it)",
                    n + 1
                );
                unkeyed += 1;
                None
            }
        };
        sink.send(&topic, key.as_deref(), &line, None)?;
        sent += 1;
    }
    sink.settle_until(
        Duration::from_secs(10),
        Some(a.timeout + Duration::from_secs(5)),
    )
    .with_context(|| {
        format!(
            "{} of {sent} events not acknowledged by {} within {:?}",
            sent.saturating_sub(sink.delivered()),
            k.brokers,
            a.timeout
        )
    })?;
    say!("produced {sent} events to {topic} ({unkeyed} malformed, sent unkeyed)");
    Ok(ExitCode::SUCCESS)
}

/// `guardian kill` / `guardian revive`: a signed operator command on the control topic.
pub fn command_cmd(verb: Verb, a: CommandArgs) -> anyhow::Result<ExitCode> {
    init_logging("human", "warn");
    crate::control::Command::check_request(&a.agent, &a.reason)?;
    let cfg = resolve(&a.config.config)?;
    let cmd = crate::app::commander::Commander::new(&cfg, "operator")?
        .publish(verb, &a.agent, &a.reason)
        .map_err(|e| anyhow::anyhow!("control topic: {e}"))?;
    println!("{}", String::from_utf8_lossy(&cmd.to_json()?));
    Ok(ExitCode::SUCCESS)
}

/// `guardian state …`.
pub fn state_cmd(c: StateCommand) -> anyhow::Result<ExitCode> {
    let open = |d: &Path| {
        Store::open_existing(d).with_context(|| {
            format!(
                "cannot open the state in {} (is a daemon still running on it?)",
                d.display()
            )
        })
    };
    let mut out = io::stdout().lock();
    match c {
        StateCommand::Inspect { state_dir, agent } => {
            let found = open(&state_dir)?.find_agent(&agent)?;
            if found.is_empty() {
                say!("agent {agent:?} is not in {}", state_dir.display());
                return Ok(ExitCode::from(1));
            }
            for (key, st) in found {
                let v = serde_json::json!({
                    "key": key,
                    "agent_id": st.agent_id,
                    "blueprint": st.blueprint,
                    "first_seen": format_rfc3339_ms(st.first_seen),
                    "last_seen": format_rfc3339_ms(st.last_seen),
                    "events": st.events,
                    "late_events": st.late_events,
                    "environment": st.environment,
                    "killed": st.kill.killed,
                    "kills": st.kill.kills,
                    "violation_score": st.kill.score,
                    "state": st,
                });
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
            }
        }
        StateCommand::Partitions { state_dir } => {
            for (topic, p, meta, agents) in open(&state_dir)?.partitions()? {
                writeln!(
                    out,
                    "{topic}\t{p}\tnext_offset={}\tagents={agents}\tevents={}",
                    meta.next_offset, meta.stats.events
                )?;
            }
        }
        StateCommand::Rebuild { state_dir, topic } => {
            let n = open(&state_dir)?.clear_partitions(topic.as_deref())?;
            writeln!(
                out,
                "dropped the state of {n} partition(s); the next start replays them from the earliest retained offset and reads the control topic again from its start, applying every operator command again in order (outputs already emitted are not repeated)"
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `guardian demo`: the daemon against the in-process mock cluster.
pub fn demo_cmd() -> anyhow::Result<ExitCode> {
    init_logging("human", "warn");
    let dir = tempfile_dir()?;
    say!("Starting an in-process Kafka mock cluster and producing a finance fleet (20 agents, 7 working days of history, then one rogue agent) …");
    let r = crate::demo::run(&dir)?;
    let _ = std::fs::remove_dir_all(&dir);
    let mut out = io::stdout().lock();
    writeln!(out, "── incidents ({}) ──", r.incidents.len())?;
    for i in &r.incidents {
        writeln!(
            out,
            "{}  {:<8} {:<20} {:<16} {:<12} {}",
            format_rfc3339_ms(i.at),
            i.severity.as_str(),
            i.kind.as_str(),
            i.agent_id,
            serde_json::to_value(i.action_taken)?.as_str().unwrap_or(""),
            i.description
        )?;
    }
    writeln!(
        out,
        "── kill commands on the control topic ({}) ──",
        r.kills.len()
    )?;
    for k in &r.kills {
        writeln!(
            out,
            "{}  kill {}  command_id={}  signature ok  incidents={:?}",
            format_rfc3339_ms(k.issued_at),
            k.agent_id,
            k.command_id,
            k.incident_ids
        )?;
    }
    writeln!(out, "── dead letters ({}) ──", r.dead_letters.len())?;
    for (reason, payload) in &r.dead_letters {
        writeln!(out, "{reason}: {payload}")?;
    }
    say!(
        "produced {} audit messages; the daemon processed {} events in {:.1}s, raised {} incidents, issued {} kill command(s), dead-lettered {} message(s)",
        r.produced,
        r.events,
        r.elapsed.as_secs_f64(),
        r.incidents.len(),
        r.kills.len(),
        r.dead_letters.len()
    );
    Ok(ExitCode::SUCCESS)
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("guardian-demo-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
