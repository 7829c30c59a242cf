//! `guardian posture --state DIR`: the fleet posture (or a compliance report) of a stopped
//! daemon's state, or of one written by `guardian replay --state DIR`.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::blueprint::BlueprintSet;
use crate::config::Config;
use crate::posture::{ComplianceReport, ControlStatus, Framework, PostureSettings};
use crate::store::Store;

/// `guardian posture`.
#[derive(Debug, Args)]
pub struct PostureArgs {
    /// State directory (sled) of a stopped daemon, or written by `guardian replay --state`.
    #[arg(long, value_name = "DIR")]
    state: PathBuf,
    /// The daemon's configuration, for its blueprints and `[posture]` settings (default: the
    /// shipped blueprints and default settings).
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Rows of the agent table.
    #[arg(long, default_value_t = 25)]
    limit: usize,
    /// Print this framework's compliance report instead: eu-ai-act, uk-ai-principles, nist-ai-rmf.
    #[arg(long, value_name = "FRAMEWORK")]
    compliance: Option<String>,
}

fn status_word(s: ControlStatus) -> &'static str {
    match s {
        ControlStatus::Met => "MET",
        ControlStatus::Partial => "PARTIAL",
        ControlStatus::NotMet => "NOT MET",
        ControlStatus::NotAssessed => "NOT ASSESSED",
    }
}

/// A compliance report for terminals.
pub fn render_compliance(r: &ComplianceReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{} — evidence as of {}", r.title, r.as_of);
    let _ = writeln!(
        s,
        "  {} met, {} partial, {} not met, {} not assessed\n",
        r.summary.met, r.summary.partial, r.summary.not_met, r.summary.not_assessed
    );
    for c in &r.controls {
        let _ = writeln!(s, "[{}] {} {}", status_word(c.status), c.id, c.title);
        let _ = writeln!(s, "    {}", c.requirement);
        for e in &c.evidence {
            let _ = writeln!(s, "    • {}: {} ({})", e.fact, e.value, e.source);
        }
        for g in &c.gaps {
            let _ = writeln!(s, "    ✗ {g}");
        }
        let _ = writeln!(s);
    }
    s
}

/// Runs `guardian posture`.
pub fn posture_cmd(a: PostureArgs) -> anyhow::Result<ExitCode> {
    let (set, settings) = match &a.config {
        Some(p) => {
            let r = Config::load(p)
                .and_then(|c| c.resolve(p))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            ((*r.blueprints).clone(), r.posture)
        }
        None => (BlueprintSet::builtin(), PostureSettings::default()),
    };
    let store = Store::open_existing(&a.state).with_context(|| {
        format!(
            "cannot open the state in {} (is a daemon still running on it?)",
            a.state.display()
        )
    })?;
    // The command has the machine to itself: every core reads and scores.
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let view = store.state_view_with(None, threads)?;
    let posture = view.posture_with(&set, &settings, threads);
    let mut out = io::BufWriter::with_capacity(1 << 16, io::stdout().lock());
    if let Some(f) = &a.compliance {
        let fw = Framework::parse(f).with_context(|| {
            let all: Vec<_> = Framework::ALL.iter().map(|f| f.id()).collect();
            format!(
                "unknown framework {f:?}: expected one of {}",
                all.join(", ")
            )
        })?;
        let report = view.compliance(fw, &posture, &settings);
        if a.json {
            serde_json::to_writer_pretty(&mut out, &report)?;
            writeln!(out)?;
        } else {
            out.write_all(render_compliance(&report).as_bytes())?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if a.json {
        serde_json::to_writer_pretty(&mut out, &posture)?;
        writeln!(out)?;
    } else {
        out.write_all(posture.render_table(a.limit).as_bytes())?;
    }
    out.flush()?;
    // The process ends here: what the store wrote on opening is flushed, and the agents' states
    // and sled's page table are left to the operating system rather than freed one by one
    // (a third of a second at 100,000 agents).
    store.db().flush().context("flushing the state")?;
    std::mem::forget(view);
    std::mem::forget(posture);
    std::mem::forget(store);
    Ok(ExitCode::SUCCESS)
}
