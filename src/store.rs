//! The sled state: per partition, the agents' states and the next offset they reflect, written in
//! one atomic batch and flushed before any Kafka offset commit.
//!
//! Layer: uses `engine` (its counters), `state`, `posture` (the ledger), `control`, `response`,
//! `blueprint`; used by the daemon, the API, `telemetry` and `replay`.
//!
//! Keys (one tree): `m/{topic}/{partition:010}` → [`PartitionMeta`], `a/{topic}/{partition:010}/{agent}`
//! → [`AgentState`], `s/{topic}/{partition:010}/{session}` → [`SessionAgent`] (the agent of a
//! session), `d/{topic}/{partition:010}/{start:020}` → a chunk of the identities of recent events
//! (the ones remembered between two checkpoints, for dropping re-deliveries), `c/offset/{partition:010}` → next control-topic offset, `c/reread/{partition:010}` → the
//! control-topic offset below which records were folded before a `state rebuild` (read again,
//! they change the state but are not published again), `c/pending` → operator commands waiting
//! for their agent or for their time, `i/{event time:016x}/{incident id}` → incident
//! (JSON, kept for the posture's retention), `f/ledger` → the [`Ledger`] (JSON), `p/{event
//! time:016x}` → a past fleet score.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::control::Command;
use crate::posture::{merge_by_agent, HistoryPoint, Ledger, PartitionFact, StateView};
use crate::response::{Incident, IncidentType};
use crate::state::{
    AgentState, Seen, SeenChanges, SeenEntry, SeenFigures, SessionAgent, Snapshot, SNAPSHOT_VERSION,
};
use crate::state::{EngineStats, FleetState};

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed (disk, corruption, lock held by another process).
    #[error("state store: {0}")]
    Sled(#[from] sled::Error),
    /// The state was written by another state format version.
    #[error("state store: {key} has state format {found}, this version reads {SNAPSHOT_VERSION}: run `guardian state rebuild --state-dir DIR` to rebuild it from the log")]
    Version {
        /// The key.
        key: String,
        /// Version found.
        found: u32,
    },
    /// A stored value does not decode (written by an incompatible version?).
    #[error("state store: cannot decode {key}: {reason}")]
    Decode {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
    /// A value could not be encoded for the store (nothing of the checkpoint is written).
    #[error("state store: cannot encode {what}: {reason}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// A command that reads a state found none where it was pointed (a typo would otherwise
    /// create an empty state there and report on it).
    #[error("{0} holds no agent-guardian state")]
    NoState(std::path::PathBuf),
    /// The checkpoint writer thread is gone (it panicked or could not start).
    #[error("state store: the checkpoint writer thread stopped")]
    WriterGone,
}

/// What is stored per partition besides its agents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionMeta {
    /// Snapshot format version.
    pub version: u32,
    /// The next offset to process: every event before it is folded into the stored state.
    pub next_offset: i64,
    /// Engine counters of the partition.
    pub stats: EngineStats,
    /// The partition's fleet state: learning start, peers, kill budget.
    pub fleet: FleetState,
    /// The memory of recent event identities, beside its chunks.
    pub duplicates: SeenFigures,
}

/// One partition's changes in a checkpoint.
pub struct PartitionDelta<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Next offset.
    pub next_offset: i64,
    /// Counters.
    pub stats: &'a EngineStats,
    /// Fleet state.
    pub fleet: FleetState,
    /// Agents changed since the previous checkpoint.
    pub agents: Vec<&'a AgentState>,
    /// Sessions bound or used since the previous checkpoint, and sessions forgotten.
    pub sessions: (Vec<SessionAgent>, Vec<String>),
    /// Event identities remembered since the previous checkpoint, and chunks forgotten.
    pub duplicates: SeenChanges,
    /// The memory's figures after those changes.
    pub duplicate_figures: SeenFigures,
}

/// Which incidents [`Store::incidents`] returns.
#[derive(Debug, Clone)]
pub struct IncidentFilter {
    /// Only this agent's.
    pub agent: Option<String>,
    /// Only this type.
    pub kind: Option<IncidentType>,
    /// Only this severity or higher.
    pub min_severity: Option<crate::blueprint::Severity>,
    /// Event time at or after (epoch ms).
    pub since: Option<i64>,
    /// Event time at or before (epoch ms).
    pub until: Option<i64>,
    /// At most this many.
    pub limit: usize,
}

impl Default for IncidentFilter {
    fn default() -> Self {
        IncidentFilter {
            agent: None,
            kind: None,
            min_severity: None,
            since: None,
            until: None,
            limit: 100,
        }
    }
}

/// Maps an i64 onto a u64 that sorts the same way (for keys).
fn sortable(t: i64) -> u64 {
    (t as u64) ^ (1 << 63)
}

fn incident_key(at: i64, id: &str) -> String {
    format!("i/{:016x}/{id}", sortable(at))
}

/// The sled database.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
}

fn part_prefix(kind: char, topic: &str, partition: i32) -> String {
    format!("{kind}/{topic}/{partition:010}")
}

fn decode<T: for<'de> Deserialize<'de>>(key: &[u8], v: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(v).map_err(|e| StoreError::Decode {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    })
}

/// Decodes a partition's meta, checking the state format version first (it leads the value).
fn decode_meta(key: &[u8], v: &[u8]) -> Result<PartitionMeta, StoreError> {
    if let Ok((found, _)) = postcard::take_from_bytes::<u32>(v) {
        if found != SNAPSHOT_VERSION {
            return Err(StoreError::Version {
                key: String::from_utf8_lossy(key).into_owned(),
                found,
            });
        }
    }
    decode(key, v)
}

fn encode<T: Serialize>(what: &'static str, v: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_stdvec(v).map_err(|e| StoreError::Encode {
        what,
        reason: e.to_string(),
    })
}

fn encode_json<T: Serialize>(what: &'static str, v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Encode {
        what,
        reason: e.to_string(),
    })
}

/// The atomic batch of one checkpoint: partitions' changes, the control-topic position, the
/// incidents raised since the previous checkpoint and the ledger.
pub fn checkpoint_batch(
    parts: &[PartitionDelta<'_>],
    control: &[(i32, i64)],
    pending: &[Command],
    incidents: &[Incident],
    ledger: Option<&Ledger>,
) -> Result<sled::Batch, StoreError> {
    let mut b = sled::Batch::default();
    for i in incidents {
        b.insert(
            incident_key(i.at, &i.incident_id).as_bytes(),
            encode_json("an incident", i)?,
        );
    }
    if let Some(l) = ledger {
        b.insert("f/ledger", encode_json("the ledger", l)?);
    }
    for p in parts {
        let meta = PartitionMeta {
            version: SNAPSHOT_VERSION,
            next_offset: p.next_offset,
            stats: p.stats.clone(),
            fleet: p.fleet.clone(),
            duplicates: p.duplicate_figures,
        };
        b.insert(
            part_prefix('m', p.topic, p.partition).as_bytes(),
            encode("a partition's meta", &meta)?,
        );
        let prefix = part_prefix('a', p.topic, p.partition);
        for a in &p.agents {
            b.insert(
                format!("{prefix}/{}", a.agent_id).as_bytes(),
                encode("an agent's state", *a)?,
            );
        }
        let prefix = part_prefix('s', p.topic, p.partition);
        for s in &p.sessions.0 {
            b.insert(
                format!("{prefix}/{}", s.session).as_bytes(),
                encode("a session's agent", s)?,
            );
        }
        for s in &p.sessions.1 {
            b.remove(format!("{prefix}/{s}").as_bytes());
        }
        let prefix = part_prefix('d', p.topic, p.partition);
        if !p.duplicates.added.is_empty() {
            b.insert(
                format!("{prefix}/{:020}", p.duplicates.start).as_bytes(),
                encode("event identities", &p.duplicates.added)?,
            );
        }
        for start in &p.duplicates.forgotten_chunks {
            b.remove(format!("{prefix}/{start:020}").as_bytes());
        }
    }
    for (partition, next) in control {
        b.insert(
            format!("c/offset/{partition:010}").as_bytes(),
            &next.to_le_bytes()[..],
        );
    }
    let pending: Vec<Vec<u8>> = pending
        .iter()
        .map(Command::to_json)
        .collect::<Result<_, _>>()
        .map_err(|e| StoreError::Encode {
            what: "the pending commands",
            reason: e.to_string(),
        })?;
    b.insert("c/pending", encode("the pending commands", &pending)?);
    Ok(b)
}

/// Opens (or creates) the sled database in `dir`. sled releases a directory's lock a moment
/// after its last handle goes (its flusher thread holds one until it next wakes), so a reopen in
/// the same process retries for up to 2 s before reporting the lock error.
fn open_db(dir: &std::path::Path) -> Result<sled::Db, sled::Error> {
    let mut tries = 0;
    loop {
        match sled::Config::new().path(dir).open() {
            Err(sled::Error::Io(e))
                if tries < 100 && e.to_string().contains("could not acquire lock") =>
            {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

impl Store {
    /// Opens (or creates) the state directory.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Ok(Store { db: open_db(dir)? })
    }

    /// Opens a state directory that exists already (for commands that read or repair one).
    pub fn open_existing(dir: &Path) -> Result<Store, StoreError> {
        if !(dir.join("conf").is_file() && dir.join("db").is_file()) {
            return Err(StoreError::NoState(dir.to_path_buf()));
        }
        Store::open(dir)
    }

    /// The sled database (the SIEM sinks keep their spools in it, flushed with each checkpoint).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// A partition's stored state: the next offset and the agents, if any.
    pub fn load_partition(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Option<(i64, Snapshot)>, StoreError> {
        let mkey = part_prefix('m', topic, partition);
        let Some(m) = self.db.get(&mkey)? else {
            return Ok(None);
        };
        let meta = decode_meta(mkey.as_bytes(), &m)?;
        let mut agents = Vec::new();
        let prefix = format!("{}/", part_prefix('a', topic, partition));
        for kv in self.db.scan_prefix(&prefix) {
            let (k, v) = kv?;
            agents.push(decode::<AgentState>(&k, &v)?);
        }
        let mut sessions = Vec::new();
        let prefix = format!("{}/", part_prefix('s', topic, partition));
        for kv in self.db.scan_prefix(&prefix) {
            let (k, v) = kv?;
            sessions.push(decode::<SessionAgent>(&k, &v)?);
        }
        let mut chunks = Vec::new();
        let prefix = format!("{}/", part_prefix('d', topic, partition));
        for kv in self.db.scan_prefix(&prefix) {
            let (k, v) = kv?;
            let start = std::str::from_utf8(&k[prefix.len()..])
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| StoreError::Decode {
                    key: String::from_utf8_lossy(&k).into_owned(),
                    reason: "not a chunk position".into(),
                })?;
            chunks.push((start, decode::<Vec<SeenEntry>>(&k, &v)?));
        }
        Ok(Some((
            meta.next_offset,
            Snapshot {
                version: SNAPSHOT_VERSION,
                stats: meta.stats,
                agents,
                fleet: meta.fleet,
                sessions,
                duplicates: Seen::from_chunks(meta.duplicates, chunks),
            },
        )))
    }

    /// Writes partitions' changes, the control-topic position, the incidents raised since the
    /// previous checkpoint and the ledger in one atomic batch and flushes it to disk.
    pub fn checkpoint(
        &self,
        parts: &[PartitionDelta<'_>],
        control: &[(i32, i64)],
        pending: &[Command],
        incidents: &[Incident],
        ledger: Option<&Ledger>,
    ) -> Result<(), StoreError> {
        self.write(checkpoint_batch(
            parts, control, pending, incidents, ledger,
        )?)
    }

    /// Applies a batch atomically and flushes it to disk.
    pub fn write(&self, batch: sled::Batch) -> Result<(), StoreError> {
        self.db.apply_batch(batch)?;
        self.db.flush()?;
        Ok(())
    }

    /// Incidents, newest first, that pass `filter`.
    pub fn incidents(&self, filter: &IncidentFilter) -> Result<Vec<Incident>, StoreError> {
        let lo = format!("i/{:016x}", sortable(filter.since.unwrap_or(i64::MIN)));
        let hi = format!("i/{:016x}~", sortable(filter.until.unwrap_or(i64::MAX)));
        let mut out = Vec::new();
        for kv in self.db.range(lo.as_bytes()..hi.as_bytes()).rev() {
            let (k, v) = kv?;
            let i: Incident = serde_json::from_slice(&v).map_err(|e| StoreError::Decode {
                key: String::from_utf8_lossy(&k).into_owned(),
                reason: e.to_string(),
            })?;
            if filter.agent.as_deref().is_some_and(|a| a != i.agent_id)
                || filter.kind.is_some_and(|t| t != i.kind)
                || filter.min_severity.is_some_and(|s| i.severity < s)
            {
                continue;
            }
            out.push(i);
            if out.len() >= filter.limit {
                break;
            }
        }
        Ok(out)
    }

    /// Removes incidents with event time before `before`; returns how many.
    pub fn prune_incidents(&self, before: i64) -> Result<usize, StoreError> {
        let hi = format!("i/{:016x}", sortable(before));
        let mut b = sled::Batch::default();
        let mut n = 0;
        for kv in self.db.range(b"i/".as_slice()..hi.as_bytes()) {
            let (k, _) = kv?;
            b.remove(k);
            n += 1;
        }
        if n > 0 {
            self.db.apply_batch(b)?;
        }
        Ok(n)
    }

    /// The ledger, or an empty one.
    pub fn ledger(&self) -> Result<Ledger, StoreError> {
        Ok(match self.db.get("f/ledger")? {
            Some(v) => serde_json::from_slice(&v).map_err(|e| StoreError::Decode {
                key: "f/ledger".into(),
                reason: e.to_string(),
            })?,
            None => Ledger::default(),
        })
    }

    /// Records a fleet score (flushed with the next checkpoint).
    pub fn push_history(&self, p: &HistoryPoint) -> Result<(), StoreError> {
        self.db.insert(
            format!("p/{:016x}", sortable(p.as_of)),
            encode_json("a fleet score", p)?,
        )?;
        Ok(())
    }

    /// Past fleet scores, oldest first.
    pub fn history(&self) -> Result<Vec<HistoryPoint>, StoreError> {
        let mut out = Vec::new();
        for kv in self.db.scan_prefix("p/") {
            let (_, v) = kv?;
            if let Ok(p) = serde_json::from_slice(&v) {
                out.push(p);
            }
        }
        Ok(out)
    }

    /// What posture is computed from: the agents of the given partitions (all stored ones when
    /// `owned` is `None`), merged by id, with the partitions' facts, the ledger and the history.
    pub fn state_view(&self, owned: Option<&[(String, i32)]>) -> Result<StateView, StoreError> {
        let mut states = Vec::new();
        let mut partitions = Vec::new();
        for (topic, partition, meta, _) in self.partitions()? {
            if owned.is_some_and(|o| !o.iter().any(|(t, p)| *t == topic && *p == partition)) {
                continue;
            }
            let prefix = format!("{}/", part_prefix('a', &topic, partition));
            for kv in self.db.scan_prefix(&prefix) {
                let (k, v) = kv?;
                states.push(decode::<AgentState>(&k, &v)?);
            }
            partitions.push(PartitionFact {
                topic,
                partition,
                next_offset: meta.next_offset,
                events: meta.stats.events,
                bad_events: meta.stats.bad_events,
                late_events: meta.stats.late_events,
                learning_origin: meta.fleet.origin,
                kills_suppressed: meta.stats.kills_suppressed,
                baseline_findings: meta.stats.incidents
                    [crate::engine::type_index(crate::response::IncidentType::Baseline)],
            });
        }
        Ok(StateView {
            states: merge_by_agent(states),
            partitions,
            ledger: self.ledger()?,
            history: self.history()?,
        })
    }

    /// Bytes the state takes on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// The next control-topic offset of a partition, if stored.
    pub fn control_offset(&self, partition: i32) -> Result<Option<i64>, StoreError> {
        Ok(self
            .db
            .get(format!("c/offset/{partition:010}"))?
            .and_then(|v| <[u8; 8]>::try_from(&v[..]).ok())
            .map(i64::from_le_bytes))
    }

    /// Per control-topic partition, the offset below which records were folded before the last
    /// `state rebuild`: read again, they rebuild the state without being published again.
    pub fn control_marks(&self) -> Result<HashMap<i32, i64>, StoreError> {
        self.control_offsets("c/reread/")
    }

    /// The control-topic offsets stored under `prefix`, by partition.
    fn control_offsets(&self, prefix: &str) -> Result<HashMap<i32, i64>, StoreError> {
        let mut out = HashMap::new();
        for kv in self.db.scan_prefix(prefix) {
            let (k, v) = kv?;
            let partition = std::str::from_utf8(&k[prefix.len()..])
                .ok()
                .and_then(|p| p.parse::<i32>().ok());
            let offset = <[u8; 8]>::try_from(&v[..]).ok().map(i64::from_le_bytes);
            match (partition, offset) {
                (Some(p), Some(o)) => {
                    out.insert(p, o);
                }
                _ => {
                    return Err(StoreError::Decode {
                        key: String::from_utf8_lossy(&k).into_owned(),
                        reason: "not a partition and an offset".into(),
                    })
                }
            }
        }
        Ok(out)
    }

    /// Operator commands waiting for their agent or their time.
    pub fn pending(&self) -> Result<Vec<Command>, StoreError> {
        let Some(v) = self.db.get("c/pending")? else {
            return Ok(Vec::new());
        };
        let raw: Vec<Vec<u8>> = decode(b"c/pending", &v)?;
        // Written by this daemon: a command that does not decode is a damaged store, not one
        // to drop.
        raw.iter()
            .map(|j| {
                serde_json::from_slice(j).map_err(|e| StoreError::Decode {
                    key: "c/pending".into(),
                    reason: e.to_string(),
                })
            })
            .collect()
    }

    /// Every stored partition: (topic, partition, meta, agents).
    pub fn partitions(&self) -> Result<Vec<(String, i32, PartitionMeta, usize)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.db.scan_prefix("m/") {
            let (k, v) = kv?;
            let key = String::from_utf8_lossy(&k).into_owned();
            let meta = decode_meta(&k, &v)?;
            let damaged = |why: &str| StoreError::Decode {
                key: key.clone(),
                reason: why.into(),
            };
            let (topic, part) = key[2..]
                .rsplit_once('/')
                .ok_or_else(|| damaged("no topic/partition"))?;
            let partition = part
                .parse()
                .map_err(|_| damaged("the partition is not a number"))?;
            let agents = self
                .db
                .scan_prefix(format!("{}/", part_prefix('a', topic, partition)))
                .count();
            out.push((topic.to_string(), partition, meta, agents));
        }
        Ok(out)
    }

    /// The stored states of one agent (one per partition it appeared in).
    pub fn find_agent(&self, agent_id: &str) -> Result<Vec<(String, AgentState)>, StoreError> {
        let mut out = Vec::new();
        let suffix = format!("/{agent_id}");
        for kv in self.db.scan_prefix("a/") {
            let (k, v) = kv?;
            if k.ends_with(suffix.as_bytes()) {
                let key = String::from_utf8_lossy(&k).into_owned();
                let state: AgentState = decode(&k, &v)?;
                if state.agent_id == agent_id {
                    out.push((key, state));
                }
            }
        }
        Ok(out)
    }

    /// Forgets the partition states (all, or one topic's), so the next start rebuilds them from
    /// the log, and the control-topic position with the commands waiting, so the next start reads
    /// the control topic again from its start and applies every operator command again, in
    /// order (the position reached is kept as the mark below which records are not published
    /// again). Returns the partitions dropped.
    pub fn clear_partitions(&self, topic: Option<&str>) -> Result<usize, StoreError> {
        let mut control = sled::Batch::default();
        let marks = self.control_marks()?;
        for (p, at) in self.control_offsets("c/offset/")? {
            let mark = marks.get(&p).copied().unwrap_or(i64::MIN).max(at);
            control.insert(
                format!("c/reread/{p:010}").as_bytes(),
                &mark.to_le_bytes()[..],
            );
            control.remove(format!("c/offset/{p:010}").as_bytes());
        }
        control.remove("c/pending");
        self.db.apply_batch(control)?;
        let mut n = 0;
        for prefix in ["m/", "a/", "s/", "d/"] {
            let p = match topic {
                Some(t) => format!("{prefix}{t}/"),
                None => prefix.to_string(),
            };
            let mut b = sled::Batch::default();
            for kv in self.db.scan_prefix(&p) {
                let (k, _) = kv?;
                if prefix == "m/" {
                    n += 1;
                }
                b.remove(k);
            }
            self.db.apply_batch(b)?;
        }
        self.db.flush()?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blueprint::BlueprintSet;

    /// A call of `agent` with an id.
    fn call<'a>(agent: &'a str, id: &'a str, ts: i64) -> crate::event::AuditEvent<'a> {
        crate::event::AuditEvent::tool_call(agent, id, ts, "t")
    }

    #[test]
    fn the_duplicate_memory_comes_back_from_its_checkpointed_chunks() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let set = std::sync::Arc::new(BlueprintSet::builtin());
        let mut e = crate::engine::Engine::new(set.clone());
        e.set_duplicates(crate::state::SeenSettings {
            horizon_ms: 60_000,
            max_entries: 250,
        });
        e.draw_duplicate_key();
        let ids: Vec<String> = (0..2_000).map(|n| format!("e{n}")).collect();
        let mut out = Vec::new();
        // Ten checkpoints of 200 calls, 20 s apart: the horizon and the cap forget the older
        // ones, and their chunks are deleted.
        for round in 0..10 {
            for n in 0..200 {
                let k = round * 200 + n;
                e.process(&call("a", &ids[k], k as i64 * 100), &mut out);
            }
            let stats = e.stats().clone();
            let fleet = e.fleet_state();
            let sessions = e.take_session_changes();
            let (duplicates, duplicate_figures) = e.take_duplicate_changes();
            let agents = e.take_dirty();
            s.checkpoint(
                &[PartitionDelta {
                    topic: "audit",
                    partition: 0,
                    next_offset: (round as i64 + 1) * 200,
                    stats: &stats,
                    fleet,
                    agents,
                    sessions,
                    duplicates,
                    duplicate_figures,
                }],
                &[],
                &[],
                &[],
                None,
            )
            .unwrap();
        }
        let chunks = s.db().scan_prefix("d/").count();
        assert!(chunks <= 3, "{chunks} chunks kept for 250 identities");
        let (_, snap) = s.load_partition("audit", 0).unwrap().unwrap();
        let mut r = crate::engine::Engine::restore(set, snap);
        assert_eq!(r.snapshot().duplicates, e.snapshot().duplicates);
        // The last calls are remembered, the first are not.
        r.process(&call("a", &ids[1_999], 199_900), &mut out);
        r.process(&call("a", &ids[0], 0), &mut out);
        assert_eq!(r.stats().duplicates, 1);
        assert_eq!(r.stats().events, e.stats().events + 1);
    }

    #[test]
    fn checkpoint_roundtrip_and_clear() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let set = BlueprintSet::builtin();
        let a = AgentState::new("agent/with/slashes", set.get(0), 5, None);
        let b = AgentState::new("b", set.get(0), 6, Some("prod"));
        let stats = EngineStats::default();
        s.checkpoint(
            &[PartitionDelta {
                topic: "audit",
                partition: 3,
                next_offset: 42,
                stats: &stats,
                fleet: FleetState::default(),
                agents: vec![&a, &b],
                sessions: (
                    vec![crate::state::SessionAgent {
                        session: "s/1".into(),
                        agent: "b".into(),
                        last_used: 6,
                    }],
                    Vec::new(),
                ),
                duplicates: crate::state::SeenChanges::default(),
                duplicate_figures: SeenFigures::default(),
            }],
            &[(0, 7)],
            &[],
            &[],
            None,
        )
        .unwrap();
        drop(s);
        let s = Store::open(d.path()).unwrap();
        let (next, snap) = s.load_partition("audit", 3).unwrap().unwrap();
        assert_eq!(next, 42);
        assert_eq!(snap.agents.len(), 2);
        assert_eq!(snap.sessions.len(), 1);
        assert_eq!(snap.sessions[0].agent, "b");
        assert!(s.load_partition("audit", 2).unwrap().is_none());
        assert_eq!(s.control_offset(0).unwrap(), Some(7));
        assert_eq!(s.find_agent("agent/with/slashes").unwrap().len(), 1);
        assert_eq!(s.partitions().unwrap()[0].3, 2);
        assert_eq!(s.clear_partitions(None).unwrap(), 1);
        assert!(s.load_partition("audit", 3).unwrap().is_none());
        assert_eq!(s.db().scan_prefix("s/").count(), 0, "sessions cleared too");
        // The control topic is read again from its start; what was read is the re-read mark.
        assert_eq!(s.control_offset(0).unwrap(), None);
        assert_eq!(s.control_marks().unwrap(), HashMap::from([(0, 7)]));
        assert!(s.pending().unwrap().is_empty());
    }
}
