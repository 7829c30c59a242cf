//! Compliance with evidence: each control's status is computed from facts the guardian knows
//! (coverage of the audit stream, gaps, commands issued, blueprints in force, retention, sinks)
//! and lists those facts.

use serde::Serialize;

use super::facts::{Ledger, PartitionFact};
use super::report::Posture;
use super::settings::PostureSettings;
use crate::event::format_rfc3339_ms;
use crate::state::AgentState;

/// A supported framework.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framework {
    /// EU AI Act (Regulation (EU) 2024/1689).
    EuAiAct,
    /// UK AI regulation principles.
    UkAiPrinciples,
    /// NIST AI Risk Management Framework 1.0.
    NistAiRmf,
}

impl Framework {
    /// Every framework.
    pub const ALL: [Framework; 3] = [
        Framework::EuAiAct,
        Framework::UkAiPrinciples,
        Framework::NistAiRmf,
    ];

    /// URL segment: `eu-ai-act`, `uk-ai-principles`, `nist-ai-rmf`.
    pub fn id(self) -> &'static str {
        match self {
            Framework::EuAiAct => "eu-ai-act",
            Framework::UkAiPrinciples => "uk-ai-principles",
            Framework::NistAiRmf => "nist-ai-rmf",
        }
    }

    /// Parses an id.
    pub fn parse(s: &str) -> Option<Framework> {
        Framework::ALL.into_iter().find(|f| f.id() == s)
    }

    /// Full title.
    pub fn title(self) -> &'static str {
        match self {
            Framework::EuAiAct => "EU AI Act (Regulation (EU) 2024/1689)",
            Framework::UkAiPrinciples => "UK AI regulation principles (AI white paper, 2023)",
            Framework::NistAiRmf => "NIST AI Risk Management Framework 1.0",
        }
    }
}

/// A control's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlStatus {
    /// The facts show the control in place.
    Met,
    /// In place in part; `gaps` says what is missing.
    Partial,
    /// Not in place.
    NotMet,
    /// Outside what the guardian can observe.
    NotAssessed,
}

/// One fact offered as evidence.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evidence {
    /// What the fact is.
    pub fact: String,
    /// Its value.
    pub value: String,
    /// Where it comes from.
    pub source: &'static str,
}

/// One control and its evaluation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Control {
    /// Identifier within the framework (`art-14`, `govern`…).
    pub id: &'static str,
    /// Title.
    pub title: &'static str,
    /// What the control asks, in one sentence.
    pub requirement: &'static str,
    /// Status computed from the evidence.
    pub status: ControlStatus,
    /// The facts.
    pub evidence: Vec<Evidence>,
    /// What is missing for `met` (empty when met).
    pub gaps: Vec<String>,
}

/// Counts of control statuses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Met.
    pub met: usize,
    /// Partial.
    pub partial: usize,
    /// Not met.
    pub not_met: usize,
    /// Not assessed.
    pub not_assessed: usize,
}

/// A framework's report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ComplianceReport {
    /// Framework id.
    pub framework: &'static str,
    /// Framework title.
    pub title: &'static str,
    /// Event time of the evidence (RFC 3339).
    pub as_of: String,
    /// Status counts.
    pub summary: Summary,
    /// The controls.
    pub controls: Vec<Control>,
}

/// Everything the controls are evaluated on.
pub struct Inputs<'a> {
    /// Fleet posture.
    pub posture: &'a Posture,
    /// Agent states (merged by id).
    pub states: &'a [AgentState],
    /// Stored partitions.
    pub partitions: &'a [PartitionFact],
    /// The guardian's ledger.
    pub ledger: &'a Ledger,
    /// Posture settings (required coverage and retention).
    pub settings: &'a PostureSettings,
}

/// Facts derived once for every control.
struct Derived {
    agents: usize,
    events: u64,
    bad: u64,
    late: u64,
    first: Option<i64>,
    last: Option<i64>,
    coverage_days: f64,
    auto_kills: u64,
    manual_kills: u64,
    revives: u64,
    killed_now: usize,
    warm: usize,
    no_environment: usize,
    incidents: u64,
    blocking: Vec<String>,
    monitoring: Vec<String>,
}

const DAY_MS: f64 = 86_400_000.0;

fn derive(i: &Inputs<'_>) -> Derived {
    let first = i.states.iter().map(|s| s.first_seen).min();
    let last = i.states.iter().map(|s| s.last_seen).max();
    let mut d = Derived {
        agents: i.states.len(),
        events: i.partitions.iter().map(|p| p.events).sum(),
        bad: i.partitions.iter().map(|p| p.bad_events).sum(),
        late: i.partitions.iter().map(|p| p.late_events).sum(),
        first,
        last,
        coverage_days: match (first, last) {
            (Some(f), Some(l)) => (l - f) as f64 / DAY_MS,
            _ => 0.0,
        },
        auto_kills: 0,
        manual_kills: 0,
        revives: 0,
        killed_now: 0,
        warm: 0,
        no_environment: 0,
        incidents: 0,
        blocking: Vec::new(),
        monitoring: Vec::new(),
    };
    for s in i.states {
        let p = &s.profile;
        d.auto_kills += u64::from(p.auto_kills);
        d.manual_kills += u64::from(p.manual_kills);
        d.revives += u64::from(p.revives);
        d.killed_now += usize::from(s.kill.killed);
        d.no_environment += usize::from(p.environments.is_empty());
        d.incidents += p.incidents.iter().sum::<u64>();
        // Warm: a week or more of history.
        if s.last_seen - s.first_seen >= 7 * 86_400_000 {
            d.warm += 1;
        }
    }
    for b in &i.ledger.blueprints {
        let label = format!("{} ({})", b.key, b.mode);
        if b.mode != "monitor" && b.kill_threshold > 0.0 && !b.dry_run {
            d.blocking.push(label);
        } else {
            d.monitoring.push(label);
        }
    }
    d
}

fn ev(fact: &str, value: impl Into<String>, source: &'static str) -> Evidence {
    Evidence {
        fact: fact.to_string(),
        value: value.into(),
        source,
    }
}

fn status(gaps: &[String], hard: bool) -> ControlStatus {
    if gaps.is_empty() {
        ControlStatus::Met
    } else if hard {
        ControlStatus::NotMet
    } else {
        ControlStatus::Partial
    }
}

/// Adds a control whose status follows from its gaps (`hard`: gaps make it `not_met`).
fn push(
    controls: &mut Vec<Control>,
    id: &'static str,
    title: &'static str,
    requirement: &'static str,
    evidence: Vec<Evidence>,
    gaps: Vec<String>,
    hard: bool,
) {
    controls.push(Control {
        id,
        title,
        requirement,
        status: status(&gaps, hard),
        evidence,
        gaps,
    });
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// Evaluates one framework.
pub fn evaluate(f: Framework, i: &Inputs<'_>) -> ComplianceReport {
    let d = derive(i);
    let l = i.ledger;
    let s = i.settings;
    let has_data = d.agents > 0 && d.events > 0;
    let span = match (d.first, d.last) {
        (Some(a), Some(b)) => format!(
            "{:.1} days ({} to {})",
            d.coverage_days,
            format_rfc3339_ms(a),
            format_rfc3339_ms(b)
        ),
        _ => "no events".into(),
    };
    let bps: Vec<String> = l
        .blueprints
        .iter()
        .map(|b| {
            format!(
                "{} \"{}\" mode {}, kill threshold {}{}",
                b.key,
                b.name,
                b.mode,
                b.kill_threshold,
                if b.dry_run { ", dry run" } else { "" }
            )
        })
        .collect();
    let gaps_txt: Vec<String> = l
        .gaps
        .iter()
        .map(|g| {
            format!(
                "{}/{} offsets {}..{} never read (found {})",
                g.topic,
                g.partition,
                g.from_offset,
                g.to_offset,
                format_rfc3339_ms(g.found_at)
            )
        })
        .collect();
    let parts: Vec<String> = i
        .partitions
        .iter()
        .map(|p| format!("{}/{} @ {}", p.topic, p.partition, p.next_offset))
        .collect();
    let fleet = &i.posture.fleet;

    // Building blocks shared by frameworks.
    let e_blueprints = ev("blueprints in force", list_or_none(&bps), "configuration");
    let e_agents = ev(
        "agents assessed",
        format!(
            "{} agents, {} tools, fleet risk {}/100 ({}), {} agents at high or critical risk",
            d.agents,
            fleet.tools,
            fleet.score,
            fleet.level.as_str(),
            fleet.by_risk_level.get("high").unwrap_or(&0)
                + fleet.by_risk_level.get("critical").unwrap_or(&0)
        ),
        "state: agent profiles",
    );
    let e_incidents = ev(
        "incidents raised",
        format!(
            "{} (every one with basis, observed and expected figures and a description)",
            d.incidents
        ),
        "state: agent profiles",
    );
    let e_baselines = ev(
        "learned baselines",
        format!(
            "{} of {} agents have a week or more of hourly history",
            d.warm, d.agents
        ),
        "state: detector baselines",
    );
    let e_coverage = ev(
        "audit stream coverage (event time)",
        span.clone(),
        "state: agent states",
    );
    let e_events = ev(
        "audit events folded",
        format!("{} events; partitions {}", d.events, list_or_none(&parts)),
        "state: partition offsets",
    );
    let e_gaps = ev(
        "unread stretches of the log",
        list_or_none(&gaps_txt),
        "ledger",
    );
    let e_bad = ev(
        "malformed events",
        format!(
            "{} {}, none dropped; {} late events kept out of baselines",
            d.bad,
            if l.dead_letter_topic.is_empty() {
                "reported with the reason by the replay".to_string()
            } else {
                format!("dead-lettered to {:?} with the reason", l.dead_letter_topic)
            },
            d.late
        ),
        "state: partition counters",
    );
    let e_signed = ev(
        "command signing",
        if l.commands_signed {
            "kill and revive commands are signed with HMAC-SHA256; unsigned or forged ones are rejected"
        } else {
            "no signing key"
        },
        "configuration",
    );
    let e_rejected = ev(
        "control commands rejected",
        format!("{} (unsigned, forged or malformed)", l.commands_rejected),
        "ledger",
    );
    let e_stop = ev(
        "stop procedure",
        format!(
            "control topic {:?}; `guardian kill` / `guardian revive`{}; {} automatic kills, {} operator kills, {} revives; {} agents killed now",
            l.control_topic,
            if l.api { " and POST /agents/{id}/kill|revive on the admin API" } else { "" },
            d.auto_kills,
            d.manual_kills,
            d.revives,
            d.killed_now
        ),
        "state: kill history",
    );
    let e_export = ev(
        "records exported",
        format!(
            "incidents topic {:?}; SIEM sinks: {}; email routes: {}",
            l.incidents_topic,
            list_or_none(&l.sinks),
            l.email_routes
        ),
        "configuration",
    );
    let e_retention = ev(
        "retention",
        format!(
            "incidents kept {} days in the state (required: {} days); audit events are kept by the broker's topic retention",
            l.incident_retention_days, s.log_retention_days
        ),
        "configuration",
    );
    let e_ids = ev(
        "guardian instances",
        format!("{} (source: {})", list_or_none(&l.guardian_ids), l.source),
        "ledger",
    );

    let mut controls = Vec::new();
    let no_data = || "no audit events have been processed yet".to_string();
    let warm_gap = (d.warm * 2 < d.agents).then(|| {
        format!(
            "learned baselines are still warming up for {} of {} agents",
            d.agents - d.warm,
            d.agents
        )
    });
    let coverage_gap = (d.coverage_days < f64::from(s.coverage_days)).then(|| {
        format!(
            "{:.1} days of coverage, {} required",
            d.coverage_days, s.coverage_days
        )
    });
    let export_gap = l
        .sinks
        .is_empty()
        .then(|| "no SIEM sink exports the records".to_string());
    let retention_gap = (l.incident_retention_days < f64::from(s.log_retention_days)).then(|| {
        format!(
            "incidents are kept {} days, less than {} days",
            l.incident_retention_days, s.log_retention_days
        )
    });
    let sign_gap = (!l.commands_signed).then(|| "commands are not signed".to_string());
    let drill_gap = (d.manual_kills + d.revives == 0 && l.api_commands == 0).then(|| {
        "no operator kill or revive is recorded: exercise the stop procedure (a drill)".to_string()
    });
    let blocking_gap = d.blocking.is_empty().then(|| {
        format!(
            "no blueprint stops agents by itself (monitor mode or dry run: {})",
            list_or_none(&d.monitoring)
        )
    });
    let opt =
        |v: &[&Option<String>]| -> Vec<String> { v.iter().filter_map(|x| (*x).clone()).collect() };

    match f {
        Framework::EuAiAct => {
            let mut g = opt(&[&warm_gap]);
            if !has_data {
                g.push(no_data());
            }
            if l.blueprints.is_empty() {
                g.push("no blueprint is in force".into());
            }
            push(
                &mut controls,
                "art-9",
                "Risk management system",
                "Identify, analyse and evaluate risks continuously over the system's life cycle.",
                vec![
                    e_blueprints.clone(),
                    e_agents.clone(),
                    e_incidents.clone(),
                    e_baselines.clone(),
                ],
                g,
                !has_data || l.blueprints.is_empty(),
            );
            let mut g = gaps_txt.clone();
            g.extend(opt(&[&coverage_gap]));
            if !has_data {
                g.push(no_data());
            }
            push(
                &mut controls,
                "art-12",
                "Record-keeping",
                "Automatically record events over the system's lifetime so that its functioning can be traced.",
                vec![e_coverage.clone(), e_events.clone(), e_gaps.clone(), e_bad.clone()],
                g,
                !l.gaps.is_empty() || !has_data,
            );
            let g = opt(&[&retention_gap, &export_gap]);
            let hard = retention_gap.is_some() && export_gap.is_some();
            push(
                &mut controls,
                "art-19",
                "Automatically generated logs",
                "Keep the automatically generated logs for at least six months.",
                vec![e_retention.clone(), e_export.clone()],
                g,
                hard,
            );
            let g = opt(&[&sign_gap, &drill_gap]);
            push(
                &mut controls,
                "art-14",
                "Human oversight",
                "Let people oversee the system and interrupt it through a stop button or a similar procedure.",
                vec![e_stop.clone(), e_signed.clone(), e_blueprints.clone()],
                g,
                !l.commands_signed,
            );
            let mut g = opt(&[&sign_gap]);
            g.extend(gaps_txt.iter().cloned());
            push(
                &mut controls,
                "art-15",
                "Accuracy, robustness and cybersecurity",
                "Be resilient to errors, faults and attempts by unauthorised third parties to alter use or behaviour.",
                vec![e_bad.clone(), e_rejected.clone(), e_signed.clone(), e_gaps.clone()],
                g,
                !l.commands_signed,
            );
        }
        Framework::UkAiPrinciples => {
            let g = opt(&[&sign_gap, &blocking_gap]);
            push(
                &mut controls,
                "safety-security-robustness",
                "Safety, security and robustness",
                "AI systems function in a robust, secure and safe way, and risks are continually identified, assessed and managed.",
                vec![e_blueprints.clone(), e_stop.clone(), e_rejected.clone(), e_bad.clone()],
                g,
                !l.commands_signed,
            );
            let g = if has_data { vec![] } else { vec![no_data()] };
            let reasons = i
                .posture
                .top_risks
                .first()
                .map(|r| format!("{}: {}", r.agent_id, r.reasons.join("; ")))
                .unwrap_or_else(|| "no agent at risk".into());
            push(
                &mut controls,
                "transparency-explainability",
                "Appropriate transparency and explainability",
                "Decisions about AI systems can be understood: what was observed, against what, and why.",
                vec![
                    e_incidents.clone(),
                    ev("risk reasons (top agent)", reasons, "posture"),
                    e_export.clone(),
                ],
                g,
                false,
            );
            controls.push(Control {
                id: "fairness",
                title: "Fairness",
                requirement: "AI systems do not undermine legal rights, discriminate or create unfair outcomes.",
                status: ControlStatus::NotAssessed,
                evidence: vec![],
                gaps: vec!["outside what an audit stream of tool calls shows; assess the agents' decisions themselves".into()],
            });
            let g = opt(&[&export_gap, &sign_gap]);
            push(
                &mut controls,
                "accountability-governance",
                "Accountability and governance",
                "Clear lines of accountability and effective oversight of AI systems across their life cycle.",
                vec![e_ids.clone(), e_blueprints.clone(), e_export.clone(), e_signed.clone()],
                g,
                l.blueprints.is_empty(),
            );
            let mut g = opt(&[&sign_gap]);
            if d.auto_kills + d.manual_kills > 0 && d.revives == 0 {
                g.push(format!(
                    "{} kills and no revive: review each kill and revive the agents wrongly stopped",
                    d.auto_kills + d.manual_kills
                ));
            }
            push(
                &mut controls,
                "contestability-redress",
                "Contestability and redress",
                "Outcomes can be contested and reversed: a killed agent can be revived through a recorded procedure.",
                vec![e_stop.clone(), e_signed.clone()],
                g,
                !l.commands_signed,
            );
        }
        Framework::NistAiRmf => {
            let g = opt(&[&sign_gap]);
            push(
                &mut controls,
                "govern",
                "GOVERN",
                "Policies, processes and accountability for AI risk are in place and applied.",
                vec![e_blueprints.clone(), e_ids.clone(), e_signed.clone()],
                if l.blueprints.is_empty() {
                    vec!["no blueprint is in force".into()]
                } else {
                    g
                },
                l.blueprints.is_empty(),
            );
            let mut g = Vec::new();
            if !has_data {
                g.push(no_data());
            }
            if d.no_environment * 2 > d.agents {
                g.push(format!(
                    "{} of {} agents report no environment",
                    d.no_environment, d.agents
                ));
            }
            push(
                &mut controls,
                "map",
                "MAP",
                "The context is known: which agents run, where, with which tools.",
                vec![e_agents.clone(), e_coverage.clone()],
                g,
                !has_data,
            );
            let mut g = opt(&[&warm_gap]);
            if !has_data {
                g.push(no_data());
            }
            push(
                &mut controls,
                "measure",
                "MEASURE",
                "Risks are measured and tracked with appropriate methods and metrics.",
                vec![e_agents.clone(), e_baselines.clone(), e_incidents.clone()],
                g,
                !has_data,
            );
            let g = opt(&[&blocking_gap, &export_gap]);
            let hard = blocking_gap.is_some() && export_gap.is_some() && d.manual_kills == 0;
            push(
                &mut controls,
                "manage",
                "MANAGE",
                "Risks are prioritised and acted on: responses, alerts and recovery.",
                vec![e_stop.clone(), e_export.clone()],
                g,
                hard,
            );
        }
    }
    let mut summary = Summary::default();
    for c in &controls {
        match c.status {
            ControlStatus::Met => summary.met += 1,
            ControlStatus::Partial => summary.partial += 1,
            ControlStatus::NotMet => summary.not_met += 1,
            ControlStatus::NotAssessed => summary.not_assessed += 1,
        }
    }
    ComplianceReport {
        framework: f.id(),
        title: f.title(),
        as_of: i.posture.as_of.clone(),
        summary,
        controls,
    }
}
