//! What an operator decided and which agent made a call, against the real binary on a Tansu
//! broker: operator kills and revives survive `state rebuild` and a lost state directory, and
//! old commands published again are refused.
//!
//! Run by `scripts/test.sh` (which starts Tansu); skipped without it unless
//! `GUARDIAN_REQUIRE_E2E` is set.

use std::path::Path;
use std::time::Duration;

use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use agent_guardian::control::{Command, Verb};
use agent_guardian::event::format_rfc3339_ms;

#[path = "support/tansu.rs"]
mod tansu;
use tansu::*;

const DAY: i64 = 86_400_000;

fn now() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Sends records, each with the timestamp it carries (a producer's CreateTime), and waits
/// for their acknowledgement.
fn send_at(addr: &str, records: &[(&str, &str, Vec<u8>, Option<i64>)]) {
    let p: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", addr)
        .create()
        .expect("producer");
    for (topic, key, payload, ts) in records {
        let mut r = BaseRecord::to(topic).key(*key).payload(payload);
        if let Some(ts) = ts {
            r = r.timestamp(*ts);
        }
        p.send(r).map_err(|(e, _)| e).expect("send");
    }
    p.flush(Duration::from_secs(30)).expect("acknowledged");
}

fn call(agent: &str, id: &str, ts: i64) -> Vec<u8> {
    serde_json::json!({
        "event_id": id, "timestamp": format_rfc3339_ms(ts), "agent_id": agent,
        "tool_name": "read_ledger", "outcome": "ALLOW",
    })
    .to_string()
    .into_bytes()
}

/// Each agent's kill status and kill history, read with `guardian state inspect` from a
/// stopped daemon.
fn intent(dir: &Path, agents: &[&str]) -> Vec<(String, serde_json::Value, serde_json::Value)> {
    agents
        .iter()
        .map(|a| {
            let out = guardian()
                .args(["state", "inspect", "--state-dir"])
                .arg(dir.join("state"))
                .arg(a)
                .output()
                .expect("inspect");
            assert!(out.status.success(), "{out:?}");
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
            (
                a.to_string(),
                v["killed"].clone(),
                v["state"]["profile"]["kill_history"].clone(),
            )
        })
        .collect()
}

/// The sum of a metric's samples whose labels start with `labels` (`name{labels...} value`).
fn total(d: &Daemon, name: &str, labels: &str) -> f64 {
    let (_, body) = d.get("/metrics");
    let prefix = format!("{name}{{{labels}");
    body.lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Operator kills and revives (one of them issued two days ago and delivered then, older than
/// `command_ttl`), then `guardian state rebuild`, then a lost state directory: each time the
/// statuses and kill histories equal those before, a killed agent's next call is activity after
/// the kill, and old commands published again are refused (stale, or expired).
#[test]
fn operator_intent_survives_a_rebuild_and_a_lost_disk() {
    let Some(b) = broker() else { return };
    let (prefix, dir, port, cfg) = setup_with_api(&b, "intent", 2);
    let (audit, control) = (format!("{prefix}-audit"), format!("{prefix}-control"));
    let killed = ["fin-k1", "fin-k2", "fin-k3"];
    let revived = ["fin-r1", "fin-r2"];
    let agents = [
        "fin-k1", "fin-k2", "fin-k3", "fin-r1", "fin-r2", "fin-old", "fin-a",
    ];
    let t = now() - 600_000;
    let mut records = Vec::new();
    for (n, a) in agents.iter().enumerate() {
        for i in 0..3 {
            let ts = t + (n as i64 * 10 + i) * 1000;
            records.push((audit.as_str(), *a, call(a, &format!("{a}-{i}"), ts), None));
        }
    }
    // A kill issued two days ago and delivered then (command_ttl is one day).
    let old = Command::manual(Verb::Kill, "fin-old", "two days ago", now() - 2 * DAY, "op")
        .valid_for(now() - 2 * DAY, DAY)
        .sign(KEY.as_bytes())
        .expect("sign");
    let old_json = old.to_json().expect("json");
    records.push((
        control.as_str(),
        "fin-old",
        old_json.clone(),
        Some(old.issued_at + 1000),
    ));
    send_at(&b.addr, &records);
    let events = records.len() as f64 - 1.0;

    let log = |name: &str| dir.path().join(name);
    let mut d = Daemon::start(&cfg, port, &log("1.log"));
    d.until("the events", |d| {
        d.metric("guardian_events_consumed_total") >= events
    });
    for a in killed.iter().chain(&revived) {
        operator(&cfg, "kill", a);
    }
    for a in revived {
        operator(&cfg, "revive", a);
    }
    d.until("every command applied", |d| {
        d.metric("guardian_commands_applied_total") >= 8.0
    });
    d.stop();
    let before = intent(dir.path(), &agents);
    for (a, killed_now, history) in &before {
        let want = killed.contains(&a.as_str()) || a == "fin-old";
        assert_eq!(killed_now, want, "{a}: {history}");
    }
    let published = read_topic(&b.addr, &control, 1);
    let kill_of = |agent: &str| {
        published
            .iter()
            .find(|p| {
                serde_json::from_slice::<Command>(p)
                    .is_ok_and(|c| c.agent_id == agent && c.command == Verb::Kill)
            })
            .expect("the kill on the topic")
            .clone()
    };

    for (round, (prepare, agent, revived_agent)) in [
        ("state rebuild", "fin-k1", "fin-r1"),
        ("lost disk", "fin-k2", "fin-r2"),
    ]
    .into_iter()
    .enumerate()
    {
        if round == 0 {
            let out = guardian()
                .args(["state", "rebuild", "--state-dir"])
                .arg(dir.path().join("state"))
                .output()
                .expect("rebuild");
            assert!(out.status.success(), "{out:?}");
        } else {
            std::fs::remove_dir_all(dir.path().join("state")).expect("lose the disk");
        }
        let mut d = Daemon::start(&cfg, port, &log(&format!("{prepare}.log")));
        d.until("ready", |d| d.get("/readyz").0 == 200);
        for (a, k, _) in &before {
            let status = match (k == true, revived.contains(&a.as_str())) {
                (true, _) => "killed",
                (false, true) => "revived",
                (false, false) => "active",
            };
            d.until(&format!("{a} {status} after the {prepare}"), |d| {
                d.get(&format!("/agents/{a}"))
                    .1
                    .contains(&format!("\"status\":\"{status}\""))
            });
        }
        let after_kill = |d: &Daemon| {
            total(
                d,
                "guardian_incidents_total",
                "type=\"activity_after_kill\"",
            )
        };
        let rejected = |d: &Daemon, why: &str| {
            total(
                d,
                "guardian_commands_rejected_total",
                &format!("reason=\"{why}\""),
            )
        };
        let seen = after_kill(&d);
        send_at(
            &b.addr,
            &[(
                audit.as_str(),
                agent,
                call(agent, &format!("{agent}-late"), now()),
                None,
            )],
        );
        d.until(&format!("{agent}'s call is activity after the kill"), |d| {
            after_kill(d) > seen
        });
        // Published again now: the kill of an agent revived since, and the old kill.
        send_at(
            &b.addr,
            &[
                (
                    control.as_str(),
                    revived_agent,
                    kill_of(revived_agent),
                    None,
                ),
                (control.as_str(), "fin-old", old_json.clone(), None),
            ],
        );
        // After a lost disk, the copies published in the first round are read again and
        // refused again, with their incidents (a rebuild keeps the mark and publishes nothing).
        let refusals = round as f64 + 1.0;
        d.until("the old commands refused", |d| {
            rejected(d, "stale") >= refusals && rejected(d, "expired") >= refusals
        });
        d.stop();
        assert_eq!(intent(dir.path(), &agents), before, "after the {prepare}");
    }
}

/// An AgentShield line.
fn shield(json: serde_json::Value) -> Vec<u8> {
    json.to_string().into_bytes()
}

/// An OTLP/JSON request of one trace: an `invoke_agent` span naming `agent`, and a tool span.
fn spans(trace: &str, agent: &str, ts: i64) -> Vec<u8> {
    let span = |id: &str, op: &str, extra: serde_json::Value| {
        serde_json::json!({"traceId": trace, "spanId": id, "name": op,
            "startTimeUnixNano": (ts as u64 * 1_000_000).to_string(),
            "attributes": [{"key": "gen_ai.operation.name", "value": {"stringValue": op}}, extra]})
    };
    let agent = serde_json::json!({"key": "gen_ai.agent.id", "value": {"stringValue": agent}});
    let tool =
        serde_json::json!({"key": "gen_ai.tool.name", "value": {"stringValue": "read_ledger"}});
    serde_json::json!({"resourceSpans": [{"resource": {"attributes": [
        {"key": "service.name", "value": {"stringValue": "svc"}}]},
        "scopeSpans": [{"spans": [span(&format!("{ts:016x}"), "execute_tool", tool),
                                  span(&format!("{:016x}", ts + 1), "invoke_agent", agent)]}]}]})
    .to_string()
    .into_bytes()
}

/// A session hijack (a second `session_created` naming a decoy for a killed agent's session,
/// then the session's calls) and a trace hijack (a request whose `invoke_agent` span names a
/// decoy for a killed agent's trace, with a tool span): both are refused with a
/// `binding_conflict` incident naming both agents, and the killed agents' calls still raise
/// `activity_after_kill`; the decoy gets nothing.
#[test]
fn session_and_trace_hijacks_are_refused_and_a_killed_agents_calls_stay_its_own() {
    let Some(b) = broker() else { return };
    let (prefix, dir, port, cfg) = setup_with_api(&b, "hijack", 1);
    let audit = format!("{prefix}-audit");
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let created = |ts: i64, agent: &str| {
        shield(
            serde_json::json!({"type": "session_created", "timestamp": ts,
            "sessionId": "s-1", "userId": "u-1", "agentId": agent}),
        )
    };
    let tool = |ts: i64| {
        shield(serde_json::json!({"type": "tool_allowed", "timestamp": ts,
            "eventId": format!("call-{ts}"), "sessionId": "s-1", "userId": "u-1",
            "toolName": "read_ledger"}))
    };
    let t = now() - 120_000;
    send_at(
        &b.addr,
        &[
            (audit.as_str(), "u-1", created(t, "fin-victim"), None),
            (audit.as_str(), "u-1", tool(t + 1000), None),
            (
                audit.as_str(),
                "svc",
                spans(trace, "fin-tracer", t + 2000),
                None,
            ),
        ],
    );
    let log = |name: &str| dir.path().join(name);
    let mut d = Daemon::start(&cfg, port, &log("hijack.log"));
    d.until("the first calls", |d| {
        d.metric("guardian_events_consumed_total") >= 2.0
    });
    for a in ["fin-victim", "fin-tracer"] {
        operator(&cfg, "kill", a);
    }
    d.until("both kills applied", |d| {
        d.metric("guardian_commands_applied_total") >= 2.0
    });
    let t = now();
    send_at(
        &b.addr,
        &[
            (audit.as_str(), "u-1", created(t, "fin-decoy"), None),
            (audit.as_str(), "u-1", tool(t + 1), None),
            (
                audit.as_str(),
                "svc",
                spans(trace, "fin-decoy", t + 2),
                None,
            ),
        ],
    );
    let count =
        |d: &Daemon, kind: &str| total(d, "guardian_incidents_total", &format!("type=\"{kind}\""));
    d.until(
        "the hijacks refused and the calls after the kills reported",
        |d| count(d, "binding_conflict") >= 2.0 && count(d, "activity_after_kill") >= 2.0,
    );
    assert_eq!(d.get("/agents/fin-decoy").0, 404, "the decoy got nothing");
    d.stop();
    let incidents: Vec<serde_json::Value> = read_topic(&b.addr, &format!("{prefix}-incidents"), 1)
        .iter()
        .filter_map(|p| serde_json::from_slice(p).ok())
        .collect();
    for victim in ["fin-victim", "fin-tracer"] {
        let of = |kind: &str| {
            incidents
                .iter()
                .filter(|i| i["agent_id"] == victim && i["type"] == kind)
                .count()
        };
        assert_eq!(of("binding_conflict"), 1, "{victim}: {incidents:?}");
        assert!(of("activity_after_kill") >= 1, "{victim}: {incidents:?}");
        let conflict = incidents
            .iter()
            .find(|i| i["agent_id"] == victim && i["type"] == "binding_conflict")
            .expect("conflict");
        assert_eq!(conflict["agents"], serde_json::json!([victim, "fin-decoy"]));
    }
    assert!(
        incidents.iter().all(|i| i["agent_id"] != "fin-decoy"),
        "{incidents:?}"
    );
}

/// A flood of 100,000 fresh sessions, half under the real user's id and half under a new id
/// each, between the real sessions' creation and their calls: the bindings of the killed agent
/// and of the active one stay (their calls are attributed, the killed agent's is activity after
/// the kill), and the flood is an `identity_flood` incident.
#[test]
fn a_flood_of_fresh_sessions_leaves_the_real_bindings_in_place() {
    let Some(b) = broker() else { return };
    let (prefix, dir, port, cfg) = setup_with_api(&b, "flood", 1);
    let audit = format!("{prefix}-audit");
    let created = |ts: i64, session: &str, user: &str, agent: &str| {
        shield(
            serde_json::json!({"type": "session_created", "timestamp": ts,
            "sessionId": session, "userId": user, "agentId": agent}),
        )
    };
    let tool = |ts: i64, session: &str| {
        shield(serde_json::json!({"type": "tool_allowed", "timestamp": ts,
            "eventId": format!("{session}-{ts}"), "sessionId": session, "userId": "u-1",
            "toolName": "read_ledger"}))
    };
    let t = now() - 120_000;
    send_at(
        &b.addr,
        &[
            (
                audit.as_str(),
                "u-1",
                created(t, "real-k", "u-1", "fin-victim"),
                None,
            ),
            (
                audit.as_str(),
                "u-1",
                created(t, "real-a", "u-1", "fin-worker"),
                None,
            ),
            (audit.as_str(), "u-1", tool(t + 1000, "real-k"), None),
            (audit.as_str(), "u-1", tool(t + 1000, "real-a"), None),
        ],
    );
    let log = |name: &str| dir.path().join(name);
    let mut d = Daemon::start(&cfg, port, &log("flood.log"));
    d.until("the first calls", |d| {
        d.metric("guardian_events_consumed_total") >= 2.0
    });
    operator(&cfg, "kill", "fin-victim");
    d.until("the kill applied", |d| {
        d.metric("guardian_commands_applied_total") >= 1.0
    });
    let t = now();
    let flood: Vec<(String, Vec<u8>)> = (0..100_000)
        .map(|i| {
            let user = if i % 2 == 0 {
                "u-1".to_string()
            } else {
                format!("u-flood-{i}")
            };
            let line = created(
                t,
                &format!("flood-{i}"),
                &user,
                &format!("fin-decoy-{}", i % 100),
            );
            (user, line)
        })
        .collect();
    let records: Vec<(&str, &str, Vec<u8>, Option<i64>)> = flood
        .iter()
        .map(|(user, line)| (audit.as_str(), user.as_str(), line.clone(), None))
        .collect();
    send_at(&b.addr, &records);
    send_at(
        &b.addr,
        &[
            (audit.as_str(), "u-1", tool(t + 1, "real-k"), None),
            (audit.as_str(), "u-1", tool(t + 1, "real-a"), None),
        ],
    );
    let count =
        |d: &Daemon, kind: &str| total(d, "guardian_incidents_total", &format!("type=\"{kind}\""));
    let entries = |d: &Daemon, result: &str| {
        total(
            d,
            "guardian_audit_entries_total",
            &format!("result=\"{result}\""),
        )
    };
    d.until("the calls after the flood", |d| {
        d.metric("guardian_events_consumed_total") >= 4.0
    });
    assert_eq!(
        entries(&d, "resolved"),
        4.0,
        "every real call found its agent"
    );
    assert_eq!(entries(&d, "unresolved"), 0.0);
    d.until("the killed agent's call and the flood reported", |d| {
        count(d, "activity_after_kill") >= 1.0 && count(d, "identity_flood") >= 1.0
    });
    d.stop();
}

/// An agent-id flood (3,000 calls, each of a new agent) on a partition whose fleet has been
/// there for two days: it raises an `identity_flood` incident, the partition stays within
/// `max_agents_per_partition`, and the calls beyond it are dead letters with their reason while
/// the agents it holds are still judged.
#[test]
fn an_agent_id_flood_raises_its_incident_and_stays_within_the_cap() {
    let Some(b) = broker() else { return };
    let (prefix, dir, port, cfg) = setup_with_api(&b, "agents", 1);
    let cap = 500;
    let extra = format!("max_agents_per_partition = {cap}\n");
    // Top-level keys go before the first table of the generated file.
    let text = std::fs::read_to_string(&cfg).expect("config");
    std::fs::write(&cfg, format!("{extra}{text}")).expect("config");
    let audit = format!("{prefix}-audit");
    let t = now();
    let mut records = vec![(
        audit.as_str(),
        "fin-seed".to_string(),
        call("fin-seed", "seed", t - 2 * DAY),
    )];
    for a in 0..10 {
        let agent = format!("fin-{a}");
        records.push((
            audit.as_str(),
            agent.clone(),
            call(&agent, &format!("{agent}-0"), t - 60_000),
        ));
    }
    for i in 0..3_000 {
        let agent = format!("x-{i}");
        records.push((
            audit.as_str(),
            agent.clone(),
            call(&agent, &format!("x{i}"), t),
        ));
    }
    records.push((
        audit.as_str(),
        "fin-1".to_string(),
        call("fin-1", "fin-1-after", t + 1),
    ));
    let sent: Vec<(&str, &str, Vec<u8>, Option<i64>)> = records
        .iter()
        .map(|(topic, key, payload)| (*topic, key.as_str(), payload.clone(), None))
        .collect();
    send_at(&b.addr, &sent);
    let log = |name: &str| dir.path().join(name);
    let mut d = Daemon::start(&cfg, port, &log("agents.log"));
    let refused = |d: &Daemon| d.metric("guardian_bad_events_total{kind=\"agent_cap\"}");
    d.until("the flood read", |d| {
        d.metric("guardian_events_consumed_total") + refused(d) >= records.len() as f64
    });
    assert_eq!(d.metric("guardian_agents"), cap as f64, "within the cap");
    // Every call of a new agent beyond the cap; the known agent's last call is folded.
    let beyond = records.len() - cap - 1;
    assert_eq!(refused(&d), beyond as f64);
    d.until("the flood reported", |d| {
        total(d, "guardian_incidents_total", "type=\"identity_flood\"") >= 1.0
    });
    let (status, body) = d.get("/agents/fin-1");
    assert_eq!(status, 200, "{body}");
    d.stop();
    let dead = read_topic(&b.addr, &format!("{prefix}-dlq"), 1);
    assert_eq!(dead.len(), beyond);
}
