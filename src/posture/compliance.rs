//! Compliance with evidence: each control's status is computed from facts the guardian knows
//! (coverage of the audit stream, gaps, commands issued, blueprints in force, retention, sinks)
//! and lists those facts.

use serde::Serialize;

use super::facts::{Gap, Ledger, PartitionFact};
use super::report::{Fleet, Posture};
use super::settings::PostureSettings;
use crate::event::format_rfc3339_ms;
use crate::state::AgentSummary;

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
    /// Agents (merged by id).
    pub states: &'a [AgentSummary],
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

impl Derived {
    /// Whether any agent and any event were folded.
    fn has_data(&self) -> bool {
        self.agents > 0 && self.events > 0
    }
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

/// A control whose status follows from its gaps (`hard`: gaps make it `not_met`).
fn control(
    id: &'static str,
    title: &'static str,
    requirement: &'static str,
    evidence: Vec<Evidence>,
    gaps: Vec<String>,
    hard: bool,
) -> Control {
    Control {
        id,
        title,
        requirement,
        status: status(&gaps, hard),
        evidence,
        gaps,
    }
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// The gaps that are there, in the order given.
fn present(gaps: &[&Option<String>]) -> Vec<String> {
    gaps.iter().filter_map(|g| (*g).clone()).collect()
}

/// Evidence items shared by the frameworks' controls.
struct SharedEvidence {
    /// Blueprints in force, with their mode and kill threshold.
    blueprints: Evidence,
    /// Agents, tools and fleet risk.
    agents: Evidence,
    /// Incidents raised.
    incidents: Evidence,
    /// Agents with a week or more of history.
    baselines: Evidence,
    /// Event-time span of the audit stream.
    coverage: Evidence,
    /// Events folded and the partitions' offsets.
    events: Evidence,
    /// Stretches of the log never read.
    log_gaps: Evidence,
    /// Malformed and late events.
    malformed: Evidence,
    /// Whether kill and revive commands are signed.
    signing: Evidence,
    /// Control commands rejected.
    rejected: Evidence,
    /// The stop procedure and the kill history.
    stop: Evidence,
    /// Where the records are exported.
    export: Evidence,
    /// How long incidents are kept.
    retention: Evidence,
    /// Guardian instances that wrote the state.
    instances: Evidence,
}

impl SharedEvidence {
    /// Builds every shared evidence item; `log_gap_lines` describe the unread stretches.
    fn build(d: &Derived, i: &Inputs<'_>, log_gap_lines: &[String]) -> SharedEvidence {
        let l = i.ledger;
        SharedEvidence {
            blueprints: ev(
                "blueprints in force",
                list_or_none(&blueprint_lines(l)),
                "configuration",
            ),
            agents: agents_evidence(d, &i.posture.fleet),
            incidents: incidents_evidence(d),
            baselines: baselines_evidence(d),
            coverage: ev(
                "audit stream coverage (event time)",
                coverage_span(d),
                "state: agent states",
            ),
            events: events_evidence(d, i.partitions),
            log_gaps: ev(
                "unread stretches of the log",
                list_or_none(log_gap_lines),
                "ledger",
            ),
            malformed: malformed_evidence(d, l),
            signing: signing_evidence(l),
            rejected: ev(
                "control commands rejected",
                format!("{} (unsigned, forged or malformed)", l.commands_rejected),
                "ledger",
            ),
            stop: stop_evidence(d, l),
            export: export_evidence(l),
            retention: retention_evidence(l, i.settings),
            instances: ev(
                "guardian instances",
                format!("{} (source: {})", list_or_none(&l.guardian_ids), l.source),
                "ledger",
            ),
        }
    }
}

/// One line per blueprint in force: key, name, mode, kill threshold, dry run.
fn blueprint_lines(l: &Ledger) -> Vec<String> {
    l.blueprints
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
        .collect()
}

/// The event-time span of the audit stream, in days and as its two ends.
fn coverage_span(d: &Derived) -> String {
    match (d.first, d.last) {
        (Some(a), Some(b)) => format!(
            "{:.1} days ({} to {})",
            d.coverage_days,
            format_rfc3339_ms(a),
            format_rfc3339_ms(b)
        ),
        _ => "no events".into(),
    }
}

/// Evidence of the agents assessed and the fleet's risk.
fn agents_evidence(d: &Derived, fleet: &Fleet) -> Evidence {
    ev(
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
    )
}

/// Evidence of the incidents raised.
fn incidents_evidence(d: &Derived) -> Evidence {
    ev(
        "incidents raised",
        format!(
            "{} (every one with basis, observed and expected figures and a description)",
            d.incidents
        ),
        "state: agent profiles",
    )
}

/// Evidence of the agents whose baselines are learned.
fn baselines_evidence(d: &Derived) -> Evidence {
    ev(
        "learned baselines",
        format!(
            "{} of {} agents have a week or more of hourly history",
            d.warm, d.agents
        ),
        "state: detector baselines",
    )
}

/// Evidence of the events folded and where each partition stands.
fn events_evidence(d: &Derived, partitions: &[PartitionFact]) -> Evidence {
    let offsets: Vec<String> = partitions
        .iter()
        .map(|p| format!("{}/{} @ {}", p.topic, p.partition, p.next_offset))
        .collect();
    ev(
        "audit events folded",
        format!("{} events; partitions {}", d.events, list_or_none(&offsets)),
        "state: partition offsets",
    )
}

/// Evidence of the malformed events and where they went, and of the late ones.
fn malformed_evidence(d: &Derived, l: &Ledger) -> Evidence {
    ev(
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
    )
}

/// Evidence of whether commands are signed.
fn signing_evidence(l: &Ledger) -> Evidence {
    ev(
        "command signing",
        if l.commands_signed {
            "kill and revive commands are signed with HMAC-SHA256; unsigned or forged ones are rejected"
        } else {
            "no signing key"
        },
        "configuration",
    )
}

/// Evidence of the stop procedure and how often it was used.
fn stop_evidence(d: &Derived, l: &Ledger) -> Evidence {
    ev(
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
    )
}

/// Evidence of where the records are exported.
fn export_evidence(l: &Ledger) -> Evidence {
    ev(
        "records exported",
        format!(
            "incidents topic {:?}; SIEM sinks: {}; email routes: {}",
            l.incidents_topic,
            list_or_none(&l.sinks),
            l.email_routes
        ),
        "configuration",
    )
}

/// Evidence of how long incidents are kept, against the required retention.
fn retention_evidence(l: &Ledger, s: &PostureSettings) -> Evidence {
    ev(
        "retention",
        format!(
            "incidents kept {} days in the state (required: {} days); audit events are kept by the broker's topic retention",
            l.incident_retention_days, s.log_retention_days
        ),
        "configuration",
    )
}

/// Gaps shared by the frameworks' controls (`None`: not a gap here).
struct SharedGaps {
    /// No audit event processed yet.
    no_data: Option<String>,
    /// No blueprint in force.
    no_blueprint: Option<String>,
    /// Baselines still warming up for most agents.
    warm: Option<String>,
    /// Less event-time coverage than required.
    coverage: Option<String>,
    /// No SIEM sink exports the records.
    export: Option<String>,
    /// Incidents kept for less than the required retention.
    retention: Option<String>,
    /// Commands are not signed.
    sign: Option<String>,
    /// The stop procedure was never exercised.
    drill: Option<String>,
    /// No blueprint stops agents by itself.
    blocking: Option<String>,
    /// One line per stretch of the log never read.
    log_lines: Vec<String>,
}

impl SharedGaps {
    /// Finds every shared gap in the derived facts, the ledger and the settings.
    fn build(d: &Derived, l: &Ledger, s: &PostureSettings) -> SharedGaps {
        SharedGaps {
            no_data: (!d.has_data()).then(|| "no audit events have been processed yet".to_string()),
            no_blueprint: l
                .blueprints
                .is_empty()
                .then(|| "no blueprint is in force".to_string()),
            warm: (d.warm * 2 < d.agents).then(|| {
                format!(
                    "learned baselines are still warming up for {} of {} agents",
                    d.agents - d.warm,
                    d.agents
                )
            }),
            coverage: (d.coverage_days < f64::from(s.coverage_days)).then(|| {
                format!(
                    "{:.1} days of coverage, {} required",
                    d.coverage_days, s.coverage_days
                )
            }),
            export: l
                .sinks
                .is_empty()
                .then(|| "no SIEM sink exports the records".to_string()),
            retention: (l.incident_retention_days < f64::from(s.log_retention_days)).then(|| {
                format!(
                    "incidents are kept {} days, less than {} days",
                    l.incident_retention_days, s.log_retention_days
                )
            }),
            sign: (!l.commands_signed).then(|| "commands are not signed".to_string()),
            drill: (d.manual_kills + d.revives == 0 && l.api_commands == 0).then(|| {
                "no operator kill or revive is recorded: exercise the stop procedure (a drill)"
                    .to_string()
            }),
            blocking: d.blocking.is_empty().then(|| {
                format!(
                    "no blueprint stops agents by itself (monitor mode or dry run: {})",
                    list_or_none(&d.monitoring)
                )
            }),
            log_lines: l.gaps.iter().map(log_gap_line).collect(),
        }
    }
}

/// A stretch of the log never read, in words.
fn log_gap_line(g: &Gap) -> String {
    format!(
        "{}/{} offsets {}..{} never read (found {})",
        g.topic,
        g.partition,
        g.from_offset,
        g.to_offset,
        format_rfc3339_ms(g.found_at)
    )
}

/// Everything a framework's controls are judged on, derived once.
struct Assessment<'a> {
    /// Facts derived from the states, partitions and ledger.
    derived: Derived,
    /// The guardian's ledger.
    ledger: &'a Ledger,
    /// Fleet posture.
    posture: &'a Posture,
    /// Evidence items shared by the controls.
    evidence: SharedEvidence,
    /// Gaps shared by the controls.
    gaps: SharedGaps,
}

impl<'a> Assessment<'a> {
    /// Derives the facts, shared evidence and shared gaps of the inputs.
    fn new(i: &Inputs<'a>) -> Assessment<'a> {
        let derived = derive(i);
        let gaps = SharedGaps::build(&derived, i.ledger, i.settings);
        let evidence = SharedEvidence::build(&derived, i, &gaps.log_lines);
        Assessment {
            derived,
            ledger: i.ledger,
            posture: i.posture,
            evidence,
            gaps,
        }
    }
}

/// Evaluates one framework.
pub fn evaluate(f: Framework, i: &Inputs<'_>) -> ComplianceReport {
    let a = Assessment::new(i);
    let controls = match f {
        Framework::EuAiAct => eu_ai_act(&a),
        Framework::UkAiPrinciples => uk_ai_principles(&a),
        Framework::NistAiRmf => nist_ai_rmf(&a),
    };
    ComplianceReport {
        framework: f.id(),
        title: f.title(),
        as_of: i.posture.as_of.clone(),
        summary: count_statuses(&controls),
        controls,
    }
}

/// Counts the controls by status.
fn count_statuses(controls: &[Control]) -> Summary {
    let mut summary = Summary::default();
    for c in controls {
        match c.status {
            ControlStatus::Met => summary.met += 1,
            ControlStatus::Partial => summary.partial += 1,
            ControlStatus::NotMet => summary.not_met += 1,
            ControlStatus::NotAssessed => summary.not_assessed += 1,
        }
    }
    summary
}

/// The EU AI Act's controls: articles 9, 12, 19, 14 and 15.
fn eu_ai_act(a: &Assessment<'_>) -> Vec<Control> {
    vec![
        eu_risk_management(a),
        eu_record_keeping(a),
        eu_log_retention(a),
        eu_human_oversight(a),
        eu_robustness(a),
    ]
}

/// EU AI Act article 9: risk management system.
fn eu_risk_management(a: &Assessment<'_>) -> Control {
    let (e, g) = (&a.evidence, &a.gaps);
    control(
        "art-9",
        "Risk management system",
        "Identify, analyse and evaluate risks continuously over the system's life cycle.",
        vec![
            e.blueprints.clone(),
            e.agents.clone(),
            e.incidents.clone(),
            e.baselines.clone(),
        ],
        present(&[&g.warm, &g.no_data, &g.no_blueprint]),
        !a.derived.has_data() || a.ledger.blueprints.is_empty(),
    )
}

/// EU AI Act article 12: record-keeping.
fn eu_record_keeping(a: &Assessment<'_>) -> Control {
    let (e, g) = (&a.evidence, &a.gaps);
    let mut gaps = g.log_lines.clone();
    gaps.extend(present(&[&g.coverage, &g.no_data]));
    control(
        "art-12",
        "Record-keeping",
        "Automatically record events over the system's lifetime so that its functioning can be traced.",
        vec![e.coverage.clone(), e.events.clone(), e.log_gaps.clone(), e.malformed.clone()],
        gaps,
        !a.ledger.gaps.is_empty() || !a.derived.has_data(),
    )
}

/// EU AI Act article 19: automatically generated logs.
fn eu_log_retention(a: &Assessment<'_>) -> Control {
    let (e, g) = (&a.evidence, &a.gaps);
    control(
        "art-19",
        "Automatically generated logs",
        "Keep the automatically generated logs for at least six months.",
        vec![e.retention.clone(), e.export.clone()],
        present(&[&g.retention, &g.export]),
        g.retention.is_some() && g.export.is_some(),
    )
}

/// EU AI Act article 14: human oversight.
fn eu_human_oversight(a: &Assessment<'_>) -> Control {
    let (e, g) = (&a.evidence, &a.gaps);
    control(
        "art-14",
        "Human oversight",
        "Let people oversee the system and interrupt it through a stop button or a similar procedure.",
        vec![e.stop.clone(), e.signing.clone(), e.blueprints.clone()],
        present(&[&g.sign, &g.drill]),
        !a.ledger.commands_signed,
    )
}

/// EU AI Act article 15: accuracy, robustness and cybersecurity.
fn eu_robustness(a: &Assessment<'_>) -> Control {
    let (e, g) = (&a.evidence, &a.gaps);
    let mut gaps = present(&[&g.sign]);
    gaps.extend(g.log_lines.iter().cloned());
    control(
        "art-15",
        "Accuracy, robustness and cybersecurity",
        "Be resilient to errors, faults and attempts by unauthorised third parties to alter use or behaviour.",
        vec![e.malformed.clone(), e.rejected.clone(), e.signing.clone(), e.log_gaps.clone()],
        gaps,
        !a.ledger.commands_signed,
    )
}

/// The UK AI regulation principles' controls, one per principle.
fn uk_ai_principles(a: &Assessment<'_>) -> Vec<Control> {
    vec![
        uk_safety(a),
        uk_transparency(a),
        uk_fairness(),
        uk_accountability(a),
        uk_contestability(a),
    ]
}

/// UK principle: safety, security and robustness.
fn uk_safety(a: &Assessment<'_>) -> Control {
    let (e, g) = (&a.evidence, &a.gaps);
    control(
        "safety-security-robustness",
        "Safety, security and robustness",
        "AI systems function in a robust, secure and safe way, and risks are continually identified, assessed and managed.",
        vec![e.blueprints.clone(), e.stop.clone(), e.rejected.clone(), e.malformed.clone()],
        present(&[&g.sign, &g.blocking]),
        !a.ledger.commands_signed,
    )
}

/// UK principle: appropriate transparency and explainability.
fn uk_transparency(a: &Assessment<'_>) -> Control {
    let e = &a.evidence;
    let reasons = a
        .posture
        .top_risks
        .first()
        .map(|r| format!("{}: {}", r.agent_id, r.reasons.join("; ")))
        .unwrap_or_else(|| "no agent at risk".into());
    control(
        "transparency-explainability",
        "Appropriate transparency and explainability",
        "Decisions about AI systems can be understood: what was observed, against what, and why.",
        vec![
            e.incidents.clone(),
            ev("risk reasons (top agent)", reasons, "posture"),
            e.export.clone(),
        ],
        present(&[&a.gaps.no_data]),
        false,
    )
}

/// UK principle: fairness, which the audit stream cannot show.
fn uk_fairness() -> Control {
    Control {
        id: "fairness",
        title: "Fairness",
        requirement: "AI systems do not undermine legal rights, discriminate or create unfair outcomes.",
        status: ControlStatus::NotAssessed,
        evidence: vec![],
        gaps: vec!["outside what an audit stream of tool calls shows; assess the agents' decisions themselves".into()],
    }
}

/// UK principle: accountability and governance.
fn uk_accountability(a: &Assessment<'_>) -> Control {
    let (e, g) = (&a.evidence, &a.gaps);
    control(
        "accountability-governance",
        "Accountability and governance",
        "Clear lines of accountability and effective oversight of AI systems across their life cycle.",
        vec![e.instances.clone(), e.blueprints.clone(), e.export.clone(), e.signing.clone()],
        present(&[&g.export, &g.sign]),
        a.ledger.blueprints.is_empty(),
    )
}

/// UK principle: contestability and redress.
fn uk_contestability(a: &Assessment<'_>) -> Control {
    let (d, e) = (&a.derived, &a.evidence);
    let mut gaps = present(&[&a.gaps.sign]);
    if d.auto_kills + d.manual_kills > 0 && d.revives == 0 {
        gaps.push(format!(
            "{} kills and no revive: review each kill and revive the agents wrongly stopped",
            d.auto_kills + d.manual_kills
        ));
    }
    control(
        "contestability-redress",
        "Contestability and redress",
        "Outcomes can be contested and reversed: a killed agent can be revived through a recorded procedure.",
        vec![e.stop.clone(), e.signing.clone()],
        gaps,
        !a.ledger.commands_signed,
    )
}

/// The NIST AI RMF's controls, one per function.
fn nist_ai_rmf(a: &Assessment<'_>) -> Vec<Control> {
    vec![nist_govern(a), nist_map(a), nist_measure(a), nist_manage(a)]
}

/// NIST AI RMF function GOVERN.
fn nist_govern(a: &Assessment<'_>) -> Control {
    let (e, g) = (&a.evidence, &a.gaps);
    control(
        "govern",
        "GOVERN",
        "Policies, processes and accountability for AI risk are in place and applied.",
        vec![e.blueprints.clone(), e.instances.clone(), e.signing.clone()],
        if g.no_blueprint.is_some() {
            present(&[&g.no_blueprint])
        } else {
            present(&[&g.sign])
        },
        a.ledger.blueprints.is_empty(),
    )
}

/// NIST AI RMF function MAP.
fn nist_map(a: &Assessment<'_>) -> Control {
    let (d, e) = (&a.derived, &a.evidence);
    let mut gaps = present(&[&a.gaps.no_data]);
    if d.no_environment * 2 > d.agents {
        gaps.push(format!(
            "{} of {} agents report no environment",
            d.no_environment, d.agents
        ));
    }
    control(
        "map",
        "MAP",
        "The context is known: which agents run, where, with which tools.",
        vec![e.agents.clone(), e.coverage.clone()],
        gaps,
        !d.has_data(),
    )
}

/// NIST AI RMF function MEASURE.
fn nist_measure(a: &Assessment<'_>) -> Control {
    let (e, g) = (&a.evidence, &a.gaps);
    control(
        "measure",
        "MEASURE",
        "Risks are measured and tracked with appropriate methods and metrics.",
        vec![e.agents.clone(), e.baselines.clone(), e.incidents.clone()],
        present(&[&g.warm, &g.no_data]),
        !a.derived.has_data(),
    )
}

/// NIST AI RMF function MANAGE.
fn nist_manage(a: &Assessment<'_>) -> Control {
    let (e, g) = (&a.evidence, &a.gaps);
    control(
        "manage",
        "MANAGE",
        "Risks are prioritised and acted on: responses, alerts and recovery.",
        vec![e.stop.clone(), e.export.clone()],
        present(&[&g.blocking, &g.export]),
        g.blocking.is_some() && g.export.is_some() && a.derived.manual_kills == 0,
    )
}
