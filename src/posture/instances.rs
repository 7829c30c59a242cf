//! One fleet across instances: each instance publishes its partitions' shares of the posture
//! ([`Part`]) in its posture snapshot ([`Snapshot`]); any instance merges the latest snapshot of
//! every other ([`Peer`]) with its own view ([`merge`]), each audit partition counted once, from
//! the instance that owns it now (itself for its own partitions, else the latest snapshot that
//! claims it).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use super::facts::PartitionFact;
use super::report::{AgentRow, Fleet, Posture, Tally, Trend};
use super::risk::RiskLevel;
use super::FleetView;
use crate::blueprint::BlueprintSet;
use crate::event::format_rfc3339_ms;
use crate::state::AgentSummary;

/// Riskiest agents kept per partition and in the merged fleet.
pub const TOP: usize = 10;

/// Tool names kept per partition (for the fleet's distinct count).
pub const MAX_PART_TOOLS: usize = 2_000;

/// The most bytes a posture snapshot takes (librdkafka refuses messages over its
/// `message.max.bytes`, 1,000,000 by default).
pub const MAX_SNAPSHOT_BYTES: usize = 900_000;

/// A snapshot older than this many of its instance's intervals is shown as stale.
pub const STALE_AFTER_INTERVALS: i64 = 3;

/// One audit partition's share of the fleet posture, as its owner computed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Part {
    /// The partition's facts (topic, partition, offsets, learning origin, kills held).
    pub fact: PartitionFact,
    /// Event time of its latest event (epoch ms).
    pub as_of_ms: i64,
    /// Its agents counted.
    pub tally: Tally,
    /// Distinct tool names its agents called (at most [`MAX_PART_TOOLS`]).
    pub tools: Vec<String>,
    /// Its riskiest agents (at most [`TOP`], risk above 0).
    pub top_risks: Vec<AgentRow>,
    /// Its agents' ids as sorted 32-bit hashes ([`member_hash`]), base64; absent when left out
    /// to keep the snapshot within a Kafka message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<String>,
}

/// An instance's posture snapshot, as published on the posture topic (keyed by its id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The instance.
    pub guardian_id: String,
    /// Its partitions, `topic/partition`.
    pub partitions: Vec<String>,
    /// Its own fleet summary (score, trend, counts).
    pub fleet: serde_json::Value,
    /// Its riskiest agents.
    pub top_risks: Vec<AgentRow>,
    /// Event time of its latest event (RFC 3339).
    pub as_of: String,
    /// Wall time it was published (epoch ms).
    #[serde(default)]
    pub published_at: i64,
    /// Its snapshot interval (ms): a snapshot older than [`STALE_AFTER_INTERVALS`] of them is
    /// stale.
    #[serde(default)]
    pub interval_ms: i64,
    /// Each partition's share.
    #[serde(default)]
    pub parts: Vec<Part>,
}

impl Snapshot {
    /// Its JSON within `max` bytes, and how many parts lost their member lists (largest first)
    /// to fit; then, should that not do, every part its top risks and tool names.
    pub fn encode_within(&mut self, max: usize) -> Result<(Vec<u8>, usize), serde_json::Error> {
        let mut json = serde_json::to_vec(self)?;
        let mut trimmed = 0;
        if json.len() <= max {
            return Ok((json, trimmed));
        }
        let mut by_size: Vec<(usize, usize)> = self
            .parts
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.members.as_ref().map(|m| (m.len(), i)))
            .collect();
        by_size.sort_unstable_by(|a, b| b.cmp(a));
        let mut over = json.len() - max;
        for (len, i) in by_size {
            if over == 0 {
                break;
            }
            if let Some(p) = self.parts.get_mut(i) {
                p.members = None;
                trimmed += 1;
                over = over.saturating_sub(len);
            }
        }
        json = serde_json::to_vec(self)?;
        if json.len() > max {
            for p in &mut self.parts {
                p.top_risks.clear();
                p.tools.clear();
            }
            json = serde_json::to_vec(self)?;
        }
        Ok((json, trimmed))
    }
}

/// The 32-bit hash an agent id is listed under in [`Part::members`] (the first four bytes of
/// its SHA-256: stable across versions and platforms).
pub fn member_hash(agent_id: &str) -> u32 {
    let d = sha2::Sha256::digest(agent_id.as_bytes());
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// Encodes member hashes (sorted and deduplicated here).
pub fn encode_members(mut hashes: Vec<u32>) -> String {
    hashes.sort_unstable();
    hashes.dedup();
    let bytes: Vec<u8> = hashes.iter().flat_map(|h| h.to_be_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Decodes [`Part::members`]: sorted hashes, or why not.
pub fn decode_members(s: &str) -> Result<Vec<u32>, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| format!("members: {e}"))?;
    if bytes.len() % 4 != 0 {
        return Err("members: not a whole number of 4-byte hashes".into());
    }
    let hashes: Vec<u32> = bytes
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if hashes.windows(2).any(|w| w[0] >= w[1]) {
        return Err("members: not sorted".into());
    }
    Ok(hashes)
}

/// Each stored partition's share of `posture` (computed from `states`, whose home partition,
/// an index into `partitions`, `homes` gives).
pub fn parts_of(
    partitions: &[PartitionFact],
    states: &[AgentSummary],
    homes: &HashMap<String, usize>,
    posture: &Posture,
) -> Vec<Part> {
    let mut parts: Vec<Part> = partitions
        .iter()
        .map(|f| Part {
            fact: f.clone(),
            as_of_ms: 0,
            tally: Tally::default(),
            tools: Vec::new(),
            top_risks: Vec::new(),
            members: None,
        })
        .collect();
    let mut hashes: Vec<Vec<u32>> = vec![Vec::new(); parts.len()];
    for r in &posture.agents {
        let Some(&i) = homes.get(&r.agent_id) else {
            continue;
        };
        let (Some(p), Some(h)) = (parts.get_mut(i), hashes.get_mut(i)) else {
            continue;
        };
        p.tally.add(r);
        if r.risk > 0 && p.top_risks.len() < TOP {
            p.top_risks.push(r.clone());
        }
        h.push(member_hash(&r.agent_id));
    }
    let mut tools: Vec<BTreeSet<&str>> = vec![BTreeSet::new(); parts.len()];
    for st in states {
        let Some(&i) = homes.get(&st.agent_id) else {
            continue;
        };
        let (Some(p), Some(t)) = (parts.get_mut(i), tools.get_mut(i)) else {
            continue;
        };
        p.as_of_ms = p.as_of_ms.max(st.last_seen);
        t.extend(st.profile.tools.iter().map(|x| x.name.as_str()));
    }
    for ((p, h), t) in parts.iter_mut().zip(hashes).zip(tools) {
        p.members = Some(encode_members(h));
        p.tools = t
            .into_iter()
            .take(MAX_PART_TOOLS)
            .map(str::to_string)
            .collect();
    }
    parts
}

/// Another instance's latest snapshot, checked, with its members decoded.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The snapshot.
    pub snapshot: Snapshot,
    /// Each part's member hashes (empty when the part lists none).
    pub members: Vec<Vec<u32>>,
}

/// The most parts a peer's snapshot may hold.
const MAX_PARTS: usize = 100_000;

impl Peer {
    /// Checks a snapshot read from the posture topic.
    pub fn new(snapshot: Snapshot) -> Result<Peer, String> {
        let id = &snapshot.guardian_id;
        if id.is_empty() || id.len() > 256 || id.chars().any(char::is_control) {
            return Err(
                "guardian_id: empty, longer than 256 bytes or with control characters".into(),
            );
        }
        if snapshot.parts.len() > MAX_PARTS {
            return Err(format!("more than {MAX_PARTS} parts"));
        }
        if snapshot.parts.iter().any(|p| p.top_risks.len() > TOP) {
            return Err(format!("a part lists more than {TOP} top risks"));
        }
        let members = snapshot
            .parts
            .iter()
            .map(|p| p.members.as_deref().map_or(Ok(Vec::new()), decode_members))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Peer { snapshot, members })
    }

    /// Whether its snapshot is stale at wall time `now_ms`.
    pub fn stale(&self, now_ms: i64) -> bool {
        let every = self.snapshot.interval_ms.max(1_000);
        now_ms - self.snapshot.published_at > STALE_AFTER_INTERVALS.saturating_mul(every)
    }
}

/// The part of each audit partition not owned here, from the latest snapshot that claims it:
/// (peer, index of the part), by (topic, partition).
pub fn claims<'a>(
    owned: &[(String, i32)],
    peers: &'a [&'a Peer],
) -> BTreeMap<(String, i32), (&'a Peer, usize)> {
    let mut won: BTreeMap<(String, i32), (&Peer, usize)> = BTreeMap::new();
    for peer in peers {
        for (i, part) in peer.snapshot.parts.iter().enumerate() {
            let key = (part.fact.topic.clone(), part.fact.partition);
            if owned.contains(&key) {
                continue;
            }
            let newer = won.get(&key).is_none_or(|(w, _)| {
                (peer.snapshot.published_at, &peer.snapshot.guardian_id)
                    > (w.snapshot.published_at, &w.snapshot.guardian_id)
            });
            if newer {
                won.insert(key, (peer, i));
            }
        }
    }
    won
}

/// The instance that owns agent `agent_id`'s partition, by the snapshots of the others:
/// (its id, topic, partition).
pub fn owner_of(
    agent_id: &str,
    owned: &[(String, i32)],
    peers: &[&Peer],
) -> Option<(String, String, i32)> {
    let h = member_hash(agent_id);
    claims(owned, peers)
        .into_iter()
        .find(|(_, (peer, i))| {
            peer.members
                .get(*i)
                .is_some_and(|m| m.binary_search(&h).is_ok())
        })
        .map(|((t, p), (peer, _))| (peer.snapshot.guardian_id.clone(), t, p))
}

/// A riskiest agent with the instance that holds its state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OwnedRow {
    /// The agent's row.
    #[serde(flatten)]
    pub row: AgentRow,
    /// The instance that owns its partition.
    pub guardian_id: String,
}

/// An instance in the merged view.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstanceRow {
    /// Its id.
    pub guardian_id: String,
    /// Whether it is the instance answering.
    pub this: bool,
    /// The partitions counted from it, `topic/partition`.
    pub partitions: Vec<String>,
    /// When its figures were computed (this instance) or published (the others), RFC 3339.
    pub published_at: String,
    /// Seconds since then.
    pub age_s: i64,
    /// Older than [`STALE_AFTER_INTERVALS`] of its snapshot intervals.
    pub stale: bool,
    /// Its own fleet score (of its own partitions).
    pub score: Option<u8>,
    /// Its agents (in the partitions counted from it).
    pub agents: usize,
}

/// An audit partition in the merged view, with its owner and how fresh its figures are.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartitionRow {
    /// Audit topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The instance that owns it.
    pub owner: String,
    /// Its agents.
    pub agents: usize,
    /// Event time of its latest event (RFC 3339), if any.
    pub as_of: Option<String>,
    /// When its figures were computed or published (RFC 3339).
    pub published_at: String,
    /// Whether its owner's snapshot is stale.
    pub stale: bool,
}

/// The whole fleet as one instance sees it: its own partitions and every other's latest.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Across {
    /// Event time of the fleet's latest event (RFC 3339).
    pub as_of: String,
    /// Same, epoch ms.
    pub as_of_ms: i64,
    /// The whole fleet's summary (its trend is this instance's own when no other instance's
    /// partitions are counted, `new` otherwise: only each instance keeps a score history).
    pub fleet: Fleet,
    /// The riskiest agents of the whole fleet, with their instance.
    pub top_risks: Vec<OwnedRow>,
    /// The instances counted.
    pub instances: Vec<InstanceRow>,
    /// Every audit partition counted, with its owner.
    pub partitions: Vec<PartitionRow>,
}

/// What [`merge`] needs of the answering instance.
#[derive(Debug, Clone, Copy)]
pub struct Local<'a> {
    /// Its fleet view.
    pub view: &'a FleetView,
    /// Its id.
    pub guardian_id: &'a str,
    /// Its partitions.
    pub owned: &'a [(String, i32)],
    /// Wall time its view was computed (epoch ms).
    pub computed_at: i64,
}

/// Merges this instance's view with the other instances' latest snapshots, at wall time
/// `now_ms`.
pub fn merge(local: Local<'_>, peers: &[&Peer], set: &BlueprintSet, now_ms: i64) -> Across {
    let own = &local.view.posture;
    let won = claims(local.owned, peers);
    let mut partitions: Vec<PartitionRow> = local
        .view
        .parts
        .iter()
        .map(|p| partition_row(p, local.guardian_id, local.computed_at, false))
        .collect();
    let mut instances = vec![InstanceRow {
        guardian_id: local.guardian_id.to_string(),
        this: true,
        partitions: partitions
            .iter()
            .map(|r| format!("{}/{}", r.topic, r.partition))
            .collect(),
        published_at: format_rfc3339_ms(local.computed_at),
        age_s: (now_ms - local.computed_at).max(0) / 1000,
        stale: false,
        score: Some(own.fleet.score),
        agents: own.fleet.agents,
    }];
    if won.is_empty() {
        return Across {
            as_of: own.as_of.clone(),
            as_of_ms: own.as_of_ms,
            fleet: own.fleet.clone(),
            top_risks: owned_rows(&own.top_risks, local.guardian_id),
            instances,
            partitions,
        };
    }
    let mut tally = Tally::default();
    let mut facts: Vec<PartitionFact> = Vec::new();
    for p in &local.view.parts {
        tally.merge(&p.tally);
        facts.push(p.fact.clone());
    }
    let mut tools: BTreeSet<&str> = own.tools.iter().map(|t| t.name.as_str()).collect();
    let mut top = owned_rows(&own.top_risks, local.guardian_id);
    let mut as_of_ms = own.as_of_ms;
    let mut by_peer: BTreeMap<&str, (&Peer, Vec<&Part>)> = BTreeMap::new();
    for (peer, i) in won.values() {
        let Some(part) = peer.snapshot.parts.get(*i) else {
            continue;
        };
        let stale = peer.stale(now_ms);
        partitions.push(partition_row(
            part,
            &peer.snapshot.guardian_id,
            peer.snapshot.published_at,
            stale,
        ));
        tally.merge(&part.tally);
        facts.push(part.fact.clone());
        tools.extend(part.tools.iter().map(String::as_str));
        top.extend(owned_rows(&part.top_risks, &peer.snapshot.guardian_id));
        as_of_ms = as_of_ms.max(part.as_of_ms);
        by_peer
            .entry(&peer.snapshot.guardian_id)
            .or_insert((peer, Vec::new()))
            .1
            .push(part);
    }
    for (id, (peer, parts)) in by_peer {
        instances.push(InstanceRow {
            guardian_id: id.to_string(),
            this: false,
            partitions: parts
                .iter()
                .map(|p| format!("{}/{}", p.fact.topic, p.fact.partition))
                .collect(),
            published_at: format_rfc3339_ms(peer.snapshot.published_at),
            age_s: (now_ms - peer.snapshot.published_at).max(0) / 1000,
            stale: peer.stale(now_ms),
            score: peer
                .snapshot
                .fleet
                .get("score")
                .and_then(serde_json::Value::as_u64)
                .and_then(|s| u8::try_from(s).ok()),
            agents: parts.iter().map(|p| p.tally.agents).sum(),
        });
    }
    partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    top.sort_by(|a, b| {
        b.row
            .risk
            .cmp(&a.row.risk)
            .then_with(|| a.row.agent_id.cmp(&b.row.agent_id))
    });
    top.truncate(TOP);
    let score = tally.score();
    let fleet = Fleet {
        score,
        level: RiskLevel::of(score),
        trend: Trend {
            direction: "new",
            delta: 0,
            previous: None,
            since: None,
        },
        agents: tally.agents,
        by_status: tally.by_status,
        by_risk_level: tally.by_risk_level,
        by_blueprint: tally.by_blueprint,
        by_environment: tally.by_environment,
        tools: tools.len(),
        events: tally.events,
        safety: Some(super::safety(&facts, set, as_of_ms)),
    };
    Across {
        as_of: format_rfc3339_ms(as_of_ms),
        as_of_ms,
        fleet,
        top_risks: top,
        instances,
        partitions,
    }
}

/// Rows with their owner.
fn owned_rows(rows: &[AgentRow], owner: &str) -> Vec<OwnedRow> {
    rows.iter()
        .map(|r| OwnedRow {
            row: r.clone(),
            guardian_id: owner.to_string(),
        })
        .collect()
}

/// A part's row in the merged view.
fn partition_row(p: &Part, owner: &str, published_at: i64, stale: bool) -> PartitionRow {
    PartitionRow {
        topic: p.fact.topic.clone(),
        partition: p.fact.partition,
        owner: owner.to_string(),
        agents: p.tally.agents,
        as_of: (p.tally.agents > 0).then(|| format_rfc3339_ms(p.as_of_ms)),
        published_at: format_rfc3339_ms(published_at),
        stale,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blueprint::BlueprintSet;
    use crate::event::Outcome;
    use crate::posture::{PostureSettings, StateView};
    use crate::response::IncidentType;
    use crate::state::AgentState;

    /// Agents of varied risk, status, blueprint and environment: agent `i` lives in partition
    /// `i % 4`.
    fn states(set: &BlueprintSet) -> Vec<AgentState> {
        (0..40)
            .map(|i| {
                let env = if i % 3 == 0 { "production" } else { "dev" };
                let bp = set.get(i % set.blueprints().len());
                let mut a = AgentState::new(&format!("agent-{i:02}"), bp, 0, Some(env));
                for k in 0..(10 + i as i64) {
                    a.events += 1;
                    let tool = if i % 7 == 0 {
                        "stripe_payment_create"
                    } else {
                        "search_docs"
                    };
                    let outcome = if i % 5 == 0 {
                        Outcome::Deny
                    } else {
                        Outcome::Allow
                    };
                    a.profile
                        .observe(1, tool, k * 1000, Some(outcome), Some(env), false);
                    a.last_seen = k * 1000;
                }
                for _ in 0..(i % 4) {
                    a.profile.incident(
                        1000,
                        crate::blueprint::Severity::Critical,
                        IncidentType::FrequencySpike,
                    );
                }
                a.kill.killed = i % 9 == 0;
                a
            })
            .collect()
    }

    /// The fleet view of the partitions in `owned` (of 4).
    fn view(all: &[AgentState], owned: &[i32]) -> FleetView {
        let set = BlueprintSet::builtin();
        let mut v = StateView::default();
        for &p in owned {
            v.partitions.push(PartitionFact {
                topic: "audit".into(),
                partition: p,
                next_offset: 100,
                events: 0,
                bad_events: 0,
                late_events: 0,
                learning_origin: Some(0),
                kills_suppressed: [1, 0, 0, 0, 0],
                baseline_findings: 2,
            });
        }
        for (i, st) in all.iter().enumerate() {
            let home = (i % 4) as i32;
            if let Some(idx) = owned.iter().position(|p| *p == home) {
                v.homes.insert(st.agent_id.clone(), idx);
                v.states.push(AgentSummary::from(st));
            }
        }
        v.fleet_view(&set, &PostureSettings::default())
    }

    /// Another instance's snapshot of `v`, published at `at`, read back from its JSON.
    fn peer(id: &str, v: &FleetView, at: i64) -> Peer {
        let mut s = Snapshot {
            guardian_id: id.into(),
            partitions: Vec::new(),
            fleet: serde_json::to_value(&v.posture.fleet).expect("fleet"),
            top_risks: v.posture.top_risks.clone(),
            as_of: v.posture.as_of.clone(),
            published_at: at,
            interval_ms: 60_000,
            parts: v.parts.clone(),
        };
        let (json, trimmed) = s.encode_within(MAX_SNAPSHOT_BYTES).expect("json");
        assert_eq!(trimmed, 0);
        Peer::new(serde_json::from_slice(&json).expect("snapshot")).expect("peer")
    }

    fn local<'a>(v: &'a FleetView, owned: &'a [(String, i32)]) -> Local<'a> {
        Local {
            view: v,
            guardian_id: "a",
            owned,
            computed_at: 1_000_000,
        }
    }

    fn owned(ps: &[i32]) -> Vec<(String, i32)> {
        ps.iter().map(|p| ("audit".to_string(), *p)).collect()
    }

    #[test]
    fn two_instances_merged_give_the_fleet_one_instance_owning_everything_sees() {
        let set = BlueprintSet::builtin();
        let all = states(&set);
        let whole = view(&all, &[0, 1, 2, 3]);
        let (a, b) = (view(&all, &[0, 1]), view(&all, &[2, 3]));
        assert!(a.posture.fleet.agents > 0 && b.posture.fleet.agents > 0);
        let b = peer("b", &b, 990_000);
        let mine = owned(&[0, 1]);
        let m = merge(local(&a, &mine), &[&b], &set, 1_000_000);
        let (w, f) = (&whole.posture.fleet, &m.fleet);
        assert_eq!(f.agents, 40);
        assert_eq!(
            (f.score, &f.by_status, &f.by_risk_level, &f.by_blueprint),
            (w.score, &w.by_status, &w.by_risk_level, &w.by_blueprint)
        );
        assert_eq!(
            (&f.by_environment, f.events, f.tools),
            (&w.by_environment, w.events, w.tools)
        );
        assert_eq!(
            f.safety, w.safety,
            "kills held and findings of all four partitions"
        );
        assert!(w.score > 0, "a fleet with risk to rank");
        let top: Vec<(&str, u8)> = m
            .top_risks
            .iter()
            .map(|r| (r.row.agent_id.as_str(), r.row.risk))
            .collect();
        let want: Vec<(&str, u8)> = whole
            .posture
            .top_risks
            .iter()
            .map(|r| (r.agent_id.as_str(), r.risk))
            .collect();
        assert_eq!(top, want);
        let owners: Vec<(i32, &str, usize)> = m
            .partitions
            .iter()
            .map(|p| (p.partition, p.owner.as_str(), p.agents))
            .collect();
        assert_eq!(
            owners,
            [(0, "a", 10), (1, "a", 10), (2, "b", 10), (3, "b", 10)]
        );
        let ids: Vec<(&str, bool, usize)> = m
            .instances
            .iter()
            .map(|i| (i.guardian_id.as_str(), i.this, i.agents))
            .collect();
        assert_eq!(ids, [("a", true, 20), ("b", false, 20)]);
        assert_eq!(m.as_of_ms, whole.posture.as_of_ms);
    }

    #[test]
    fn a_partition_counts_once_from_its_owner_now() {
        let set = BlueprintSet::builtin();
        let all = states(&set);
        // c owned 1, 2 and 3 before b took 2 and 3 and this instance took 1.
        let c = peer("c", &view(&all, &[1, 2, 3]), 700_000);
        let b = peer("b", &view(&all, &[2, 3]), 990_000);
        let a = view(&all, &[0, 1]);
        let mine = owned(&[0, 1]);
        for peers in [vec![&c, &b], vec![&b, &c]] {
            let m = merge(local(&a, &mine), &peers, &set, 1_000_000);
            assert_eq!(m.fleet.agents, 40, "every agent once");
            let owners: Vec<&str> = m.partitions.iter().map(|p| p.owner.as_str()).collect();
            assert_eq!(owners, ["a", "a", "b", "b"]);
            assert_eq!(m.instances.len(), 2, "c counts for nothing");
        }
        // Until b publishes, c's older figures stand for 2 and 3, shown stale.
        let m = merge(local(&a, &mine), &[&c], &set, 1_000_000);
        assert_eq!(m.fleet.agents, 40);
        assert!(m
            .partitions
            .iter()
            .filter(|p| p.owner == "c")
            .all(|p| p.stale));
        assert_eq!(m.partitions.iter().filter(|p| p.owner == "c").count(), 2);
    }

    #[test]
    fn an_agent_of_another_instance_names_its_owner() {
        let set = BlueprintSet::builtin();
        let all = states(&set);
        let b = peer("b", &view(&all, &[2, 3]), 990_000);
        let mine = owned(&[0, 1]);
        assert_eq!(
            owner_of("agent-02", &mine, &[&b]),
            Some(("b".into(), "audit".into(), 2))
        );
        assert_eq!(owner_of("agent-07", &mine, &[&b]).map(|o| o.2), Some(3));
        assert_eq!(owner_of("agent-01", &mine, &[&b]), None, "not b's");
        assert_eq!(owner_of("nobody", &mine, &[&b]), None);
        // Once this instance owns partition 2, b's old claim names no one.
        assert_eq!(owner_of("agent-02", &owned(&[0, 1, 2]), &[&b]), None);
    }

    #[test]
    fn a_point_of_history_from_rows_in_parts_is_the_posture_s() {
        let set = BlueprintSet::builtin();
        let s = PostureSettings::default();
        let all = states(&set);
        let want = crate::posture::posture(&all, &s, &[]).point();
        assert!(want.agents > 2 && want.score > 0, "{want:?}");
        let now = crate::posture::report::as_of(&all);
        let (a, b) = all.split_at(all.len() / 2);
        let mut rows = crate::posture::report::rows(b, &s, now, 1);
        rows.extend(crate::posture::report::rows(a, &s, now, 1));
        assert_eq!(crate::posture::report::point_of(&rows, now), want);
    }

    #[test]
    fn an_agent_row_is_what_its_inventory_view_shows() {
        let set = BlueprintSet::builtin();
        let s = PostureSettings::default();
        for st in states(&set) {
            let v = crate::posture::inventory::view(&st, &set, &s, 50_000);
            let want = AgentRow {
                agent_id: v.agent_id,
                blueprint: v.blueprint,
                status: v.status,
                risk: v.risk.score,
                level: v.risk.level,
                events: v.events,
                incidents: v.incidents.low
                    + v.incidents.medium
                    + v.incidents.high
                    + v.incidents.critical,
                last_seen: v.last_seen,
                environments: v.environments,
                reasons: v
                    .risk
                    .factors
                    .iter()
                    .take(3)
                    .map(|f| format!("{}: {}", f.factor, f.reason))
                    .collect(),
            };
            assert_eq!(crate::posture::report::row(&st, &s, 50_000), want);
        }
    }

    #[test]
    fn alone_the_instance_shows_its_own_posture_with_its_partitions() {
        let set = BlueprintSet::builtin();
        let all = states(&set);
        let a = view(&all, &[0, 1, 2, 3]);
        let mine = owned(&[0, 1, 2, 3]);
        let m = merge(local(&a, &mine), &[], &set, 1_000_000);
        assert_eq!(m.fleet, a.posture.fleet, "its own trend kept");
        assert_eq!(m.partitions.len(), 4);
        assert!(m.partitions.iter().all(|p| p.owner == "a" && !p.stale));
    }

    #[test]
    fn a_snapshot_over_the_size_drops_member_lists_largest_first() {
        let set = BlueprintSet::builtin();
        let all = states(&set);
        let v = view(&all, &[0, 1, 2, 3]);
        let mut s = Snapshot {
            guardian_id: "a".into(),
            partitions: Vec::new(),
            fleet: serde_json::Value::Null,
            top_risks: Vec::new(),
            as_of: String::new(),
            published_at: 0,
            interval_ms: 0,
            parts: v.parts.clone(),
        };
        let full = serde_json::to_vec(&s).expect("json").len();
        let (json, trimmed) = s.encode_within(full - 10).expect("json");
        assert_eq!(trimmed, 1, "one member list is enough");
        assert!(json.len() <= full - 10);
        let (json, _) = s.clone().encode_within(100).expect("json");
        let back: Snapshot = serde_json::from_slice(&json).expect("snapshot");
        assert!(back
            .parts
            .iter()
            .all(|p| p.members.is_none() && p.top_risks.is_empty()));
        assert_eq!(back.parts.len(), 4, "the counts stay");
    }

    #[test]
    fn member_lists_that_do_not_decode_refuse_the_snapshot() {
        let set = BlueprintSet::builtin();
        let all = states(&set);
        let v = view(&all, &[0]);
        let mut p = peer("b", &v, 0).snapshot;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        for bad in [
            "not base64!".to_string(),
            b64(&[0, 0, 0]),
            b64(&[0, 0, 0, 2, 0, 0, 0, 1]),
            b64(&[0, 0, 0, 1, 0, 0, 0, 1]),
        ] {
            p.parts[0].members = Some(bad.clone());
            assert!(Peer::new(p.clone()).is_err(), "{bad}");
        }
        p.parts[0].members = Some(encode_members(vec![2, 1, 2]));
        assert_eq!(Peer::new(p.clone()).expect("peer").members[0], [1, 2]);
        p.parts[0].members = Some(b64(&[0, 0, 0, 1]));
        assert!(Peer::new(p).is_ok());
    }
}
