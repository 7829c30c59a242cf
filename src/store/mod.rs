//! The sled state: per partition, the agents' states and the next offset they reflect, written in
//! one atomic batch and flushed before any Kafka offset commit.
//!
//! Layer: uses `engine` (its counters), `state`, `posture` (the ledger), `control`, `response`,
//! `blueprint`; used by the daemon, the API, `telemetry` and `replay`.
//!
//! Keys (one tree): `m/{topic}/{partition:010}` → [`PartitionMeta`], `a/{topic}/{partition:010}/{agent}`
//! → [`AgentState`], `s/{topic}/{partition:010}/{session}` → [`SessionAgent`] (the agent of a
//! session), `d/{topic}/{partition:010}/{start:020}` → a chunk of the identities of recent events
//! (the ones remembered between two checkpoints, for dropping re-deliveries),
//! `k/{topic}/{partition:010}/{agent}` → the offset below which an agent's events are in its
//! state already (an agent restored ahead of its partition, see [`changelog`]), `c/offset/{partition:010}` → next control-topic offset, `c/reread/{partition:010}` → the
//! control-topic offset below which records were folded before a `state rebuild` (read again,
//! they change the state but are not published again), `c/pending` → operator commands waiting
//! for their agent or for their time, `i/{event time:016x}/{incident id}` → incident
//! (JSON, kept for the posture's retention), `x/{agent id length:08}/{agent}/{event
//! time:016x}/{incident id}` → the incident's key (the index by agent), `f/ledger` → the [`Ledger`] (JSON), `p/{event
//! time:016x}` → a past fleet score.

mod changelog;
mod checkpoint;
mod codec;

pub use changelog::{
    mark_key, signature, signed_by, snapshot_signature, snapshot_signed_by, ChangelogRecord,
    Restore, Restored, CHECKPOINT_HEADER, SIGNATURE_HEADER,
};
pub use checkpoint::{checkpoint_batch, PartitionDelta};

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use codec::{
    agent_incident_key, agent_incidents_prefix, decode, decode_meta, encode_json, part_prefix,
    sortable,
};

use crate::control::Command;
use crate::posture::{merge_by_agent, HistoryPoint, Ledger, PartitionFact, StateView};
use crate::response::{Incident, IncidentType};
use crate::state::{
    AgentState, AgentSummary, Seen, SeenEntry, SeenFigures, SessionAgent, Snapshot,
    SNAPSHOT_VERSION,
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

/// Present when every stored incident has its entry in the index by agent.
const INDEX_MARK: &str = "f/incidents-by-agent";

/// The sled database.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
}

/// sled's page cache per database. Its default, 1 GiB, holds a 100,000-agent state twice over
/// and would double an instance's memory: the engine keeps the live states itself, the store is
/// written in batches and read at assignment, and the OS page cache serves repeated reads.
const CACHE_BYTES: u64 = 16 << 20;

/// Opens (or creates) the sled database in `dir`. sled releases a directory's lock a moment
/// after its last handle goes (its flusher thread holds one until it next wakes), so a reopen in
/// the same process retries for up to 2 s before reporting the lock error.
fn open_db(dir: &std::path::Path) -> Result<sled::Db, sled::Error> {
    let mut tries = 0;
    loop {
        match sled::Config::new()
            .path(dir)
            .cache_capacity(CACHE_BYTES)
            .open()
        {
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
        let store = Store { db: open_db(dir)? };
        store.index_incidents()?;
        Ok(store)
    }

    /// Builds the index of incidents by agent where it is not complete: a state written before
    /// it existed, or incidents written with [`Store::write_incidents_unindexed`] (its
    /// completeness is marked by `f/incidents-by-agent`). Written in batches of 10,000 entries.
    pub fn index_incidents(&self) -> Result<(), StoreError> {
        if self.db.contains_key(INDEX_MARK)? {
            return Ok(());
        }
        let mut b = sled::Batch::default();
        let mut n = 0;
        for kv in self.db.scan_prefix("i/") {
            let (k, v) = kv?;
            let i: Incident = match serde_json::from_slice(&v) {
                Ok(i) => i,
                Err(e) => {
                    // A damaged record: reading it by time still reports it; the index, which
                    // only speeds one agent's reads up, goes on without it.
                    tracing::warn!(key = %String::from_utf8_lossy(&k), error = %e, "stored incident unreadable; not indexed by agent");
                    continue;
                }
            };
            b.insert(
                agent_incident_key(&i.agent_id, i.at, &i.incident_id).as_bytes(),
                k,
            );
            n += 1;
            if n % 10_000 == 0 {
                self.db.apply_batch(std::mem::take(&mut b))?;
            }
        }
        b.insert(INDEX_MARK, &[1u8][..]);
        self.write(b)
    }

    /// Writes incidents now without their index entries, as one flushed batch, and marks the
    /// index incomplete ([`Store::index_incidents`] completes it): `guardian replay --state`
    /// indexes once its fold's memory is freed.
    pub fn write_incidents_unindexed(&self, incidents: &[Incident]) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        b.remove(INDEX_MARK);
        for i in incidents {
            b.insert(
                codec::incident_key(i.at, &i.incident_id).as_bytes(),
                encode_json("an incident", i)?,
            );
        }
        self.write(b)
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

    /// Whether a partition has a stored state (its meta; one key lookup).
    pub fn has_partition(&self, topic: &str, partition: i32) -> Result<bool, StoreError> {
        Ok(self.db.contains_key(part_prefix('m', topic, partition))?)
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
            parts, control, pending, incidents, ledger, None,
        )?)
    }

    /// Applies a batch atomically and flushes it to disk.
    pub fn write(&self, batch: sled::Batch) -> Result<(), StoreError> {
        self.db.apply_batch(batch)?;
        self.db.flush()?;
        Ok(())
    }

    /// Writes incidents now, as one flushed batch (a state written in parts: `guardian replay
    /// --state`).
    pub fn write_incidents(&self, incidents: &[Incident]) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        checkpoint::insert_incidents(&mut b, incidents)?;
        self.write(b)
    }

    /// Writes agents' states of one partition now, as one flushed batch (a state written in
    /// parts: `guardian replay --state`).
    pub fn write_agents(
        &self,
        topic: &str,
        partition: i32,
        agents: &[&AgentState],
    ) -> Result<(), StoreError> {
        self.put_agents(topic, partition, agents)?;
        self.db.flush()?;
        Ok(())
    }

    /// Incidents, newest first, that pass `filter`. One agent's are read through the index by
    /// agent, so the cost follows that agent's incidents, not the fleet's.
    pub fn incidents(&self, filter: &IncidentFilter) -> Result<Vec<Incident>, StoreError> {
        let (since, until) = (
            sortable(filter.since.unwrap_or(i64::MIN)),
            sortable(filter.until.unwrap_or(i64::MAX)),
        );
        let scan: Box<dyn Iterator<Item = Result<(sled::IVec, sled::IVec), StoreError>>> =
            match &filter.agent {
                Some(agent) => {
                    let prefix = agent_incidents_prefix(agent);
                    let lo = format!("{prefix}{since:016x}");
                    let hi = format!("{prefix}{until:016x}~");
                    Box::new(
                        self.db
                            .range(lo.as_bytes()..hi.as_bytes())
                            .rev()
                            .filter_map(|kv| match kv {
                                Ok((_, key)) => match self.db.get(&key) {
                                    Ok(Some(v)) => Some(Ok((key, v))),
                                    Ok(None) => None, // pruned meanwhile
                                    Err(e) => Some(Err(e.into())),
                                },
                                Err(e) => Some(Err(e.into())),
                            }),
                    )
                }
                None => {
                    let lo = format!("i/{since:016x}");
                    let hi = format!("i/{until:016x}~");
                    Box::new(
                        self.db
                            .range(lo.as_bytes()..hi.as_bytes())
                            .rev()
                            .map(|kv| kv.map_err(StoreError::from)),
                    )
                }
            };
        let mut out = Vec::new();
        for kv in scan {
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

    /// Removes incidents with event time before `before`, with their index entries; returns
    /// how many.
    pub fn prune_incidents(&self, before: i64) -> Result<usize, StoreError> {
        let hi = format!("i/{:016x}", sortable(before));
        let mut b = sled::Batch::default();
        let mut n = 0;
        for kv in self.db.range(b"i/".as_slice()..hi.as_bytes()) {
            let (k, v) = kv?;
            if let Ok(i) = serde_json::from_slice::<Incident>(&v) {
                b.remove(agent_incident_key(&i.agent_id, i.at, &i.incident_id).as_bytes());
            }
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
    /// The agents are read as summaries ([`AgentSummary`]: a stored state's leading fields,
    /// without its detector state), which is all the posture and compliance read.
    pub fn state_view(&self, owned: Option<&[(String, i32)]>) -> Result<StateView, StoreError> {
        self.state_view_with(owned, 1)
    }

    /// [`Store::state_view`], the agents' states decoded on `threads` threads (a command that
    /// has the machine to itself; the daemon's posture thread uses one, beside the engine).
    pub fn state_view_with(
        &self,
        owned: Option<&[(String, i32)]>,
        threads: usize,
    ) -> Result<StateView, StoreError> {
        let mut raw: Vec<(sled::IVec, sled::IVec)> = Vec::new();
        let mut home_of: Vec<usize> = Vec::new();
        let mut partitions = Vec::new();
        for (topic, partition, meta) in self.partition_metas()? {
            if owned.is_some_and(|o| !o.iter().any(|(t, p)| *t == topic && *p == partition)) {
                continue;
            }
            let prefix = format!("{}/", part_prefix('a', &topic, partition));
            for kv in self.db.scan_prefix(&prefix) {
                raw.push(kv?);
                home_of.push(partitions.len());
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
        let states = decode_summaries(&raw, threads)?;
        drop(raw);
        let mut homes = std::collections::HashMap::with_capacity(states.len());
        for (st, home) in states.iter().zip(home_of) {
            homes.entry(st.agent_id.clone()).or_insert(home);
        }
        Ok(StateView {
            states: merge_by_agent(states),
            partitions,
            ledger: self.ledger()?,
            history: self.history()?,
            homes,
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

    /// Every stored partition with its count of agents: (topic, partition, meta, agents). The
    /// count reads every agent's key: [`Store::partition_metas`] when it is not needed.
    pub fn partitions(&self) -> Result<Vec<(String, i32, PartitionMeta, usize)>, StoreError> {
        Ok(self
            .partition_metas()?
            .into_iter()
            .map(|(topic, partition, meta)| {
                let prefix = format!("{}/", part_prefix('a', &topic, partition));
                let agents = self.db.scan_prefix(prefix).count();
                (topic, partition, meta, agents)
            })
            .collect())
    }

    /// Every stored partition: (topic, partition, meta).
    pub fn partition_metas(&self) -> Result<Vec<(String, i32, PartitionMeta)>, StoreError> {
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
            out.push((topic.to_string(), partition, meta));
        }
        Ok(out)
    }

    /// An agent's stored state in one partition, if any (one key lookup).
    pub fn agent(
        &self,
        topic: &str,
        partition: i32,
        agent_id: &str,
    ) -> Result<Option<AgentState>, StoreError> {
        let key = format!("{}/{agent_id}", part_prefix('a', topic, partition));
        self.db
            .get(&key)?
            .map(|v| decode(key.as_bytes(), &v))
            .transpose()
    }

    /// Writes agents' states of one partition without waiting for the disk (sled flushes in the
    /// background, and at the next flush): the states a replay moves out of memory, read back
    /// by [`Store::load_agents`] in the same process; the replay's state is only whole once
    /// its meta is written at the end, with a flush.
    pub fn put_agents(
        &self,
        topic: &str,
        partition: i32,
        agents: &[&AgentState],
    ) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        checkpoint::insert_agents(&mut b, topic, partition, agents)?;
        self.db.apply_batch(b)?;
        Ok(())
    }

    /// The stored states of agents of one partition, in the order of `ids`: an error if one is
    /// not stored (an agent out of memory must be: [`crate::engine::Engine::evict`]).
    pub fn load_agents(
        &self,
        topic: &str,
        partition: i32,
        ids: &[&str],
    ) -> Result<Vec<AgentState>, StoreError> {
        ids.iter()
            .map(|id| {
                self.agent(topic, partition, id)?
                    .ok_or_else(|| StoreError::Decode {
                        key: format!("{}/{id}", part_prefix('a', topic, partition)),
                        reason: "an agent out of memory is not stored".into(),
                    })
            })
            .collect()
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
        for prefix in ["m/", "a/", "s/", "d/", "k/", "l/"] {
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

/// The agent summaries of `raw` (key, value) pairs, in their order, decoded on `threads` threads.
fn decode_summaries(
    raw: &[(sled::IVec, sled::IVec)],
    threads: usize,
) -> Result<Vec<AgentSummary>, StoreError> {
    let parts = crate::chunks::map_chunks(raw, threads, 1_000, |chunk| {
        chunk
            .iter()
            .map(|(k, v)| decode::<AgentSummary>(k, v))
            .collect::<Result<Vec<_>, _>>()
    });
    let mut out = Vec::with_capacity(raw.len());
    for p in parts {
        out.extend(p?);
    }
    Ok(out)
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
                    caught_up: Vec::new(),
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
    fn one_agents_incidents_come_through_its_index_and_leave_with_their_retention() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let inc = |n: i64, agent: &str| {
            Incident::rule(
                IncidentType::FrequencySpike,
                format!("id-{n}"),
                agent.to_string(),
                n * 1000,
                "calls",
                "x".into(),
            )
        };
        // "a" and "a/b": neither agent's entries are the other's.
        let all: Vec<Incident> = (0..60)
            .map(|n| inc(n, ["a", "a/b", "c"][n as usize % 3]))
            .collect();
        s.write_incidents(&all).unwrap();
        for agent in ["a", "a/b", "c", "none"] {
            let filter = |since, limit| IncidentFilter {
                agent: Some(agent.to_string()),
                since,
                limit,
                ..IncidentFilter::default()
            };
            let want: Vec<&Incident> = all.iter().rev().filter(|i| i.agent_id == agent).collect();
            let got = s.incidents(&filter(None, 100)).unwrap();
            assert_eq!(got.iter().collect::<Vec<_>>(), want, "{agent}");
            let got = s.incidents(&filter(Some(30_000), 5)).unwrap();
            let want: Vec<&Incident> = want
                .into_iter()
                .filter(|i| i.at >= 30_000)
                .take(5)
                .collect();
            assert_eq!(got.iter().collect::<Vec<_>>(), want, "{agent} since");
        }
        assert_eq!(s.prune_incidents(30_000).unwrap(), 30);
        assert_eq!(
            s.db().scan_prefix("x/").count(),
            30,
            "index entries pruned with them"
        );
        // A state written before the index: it is built when the store is opened.
        s.db().remove("f/incidents-by-agent").unwrap();
        for kv in s.db().scan_prefix("x/") {
            s.db().remove(kv.unwrap().0).unwrap();
        }
        drop(s);
        let s = Store::open(d.path()).unwrap();
        let a = IncidentFilter {
            agent: Some("c".into()),
            ..IncidentFilter::default()
        };
        assert_eq!(s.incidents(&a).unwrap().len(), 10);
        // Written unindexed (a replay's fold), indexed at the end.
        s.write_incidents_unindexed(&[inc(100, "c")]).unwrap();
        assert!(!s.db().contains_key(INDEX_MARK).unwrap());
        s.index_incidents().unwrap();
        assert_eq!(s.incidents(&a).unwrap().len(), 11);
    }

    #[test]
    fn states_decoded_on_several_threads_come_in_the_order_one_thread_gives() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let set = BlueprintSet::builtin();
        let stats = EngineStats::default();
        // Two partitions, one agent in both (events not keyed by agent).
        let agents: Vec<AgentState> = (0..2_500)
            .map(|i| AgentState::new(&format!("a{i:05}"), set.get(0), i, None))
            .collect();
        let (first, second) = agents.split_at(1_300);
        let mut second: Vec<&AgentState> = second.iter().collect();
        second.push(&first[7]);
        let delta = |partition, agents| PartitionDelta {
            topic: "audit",
            partition,
            next_offset: 1,
            stats: &stats,
            fleet: FleetState::default(),
            agents,
            sessions: (Vec::new(), Vec::new()),
            duplicates: crate::state::SeenChanges::default(),
            duplicate_figures: SeenFigures::default(),
            caught_up: Vec::new(),
        };
        s.checkpoint(
            &[delta(0, first.iter().collect()), delta(1, second)],
            &[],
            &[],
            &[],
            None,
        )
        .unwrap();
        let one = s.state_view(None).unwrap();
        let four = s.state_view_with(None, 4).unwrap();
        assert_eq!(one.states.len(), 2_500, "the agent of both partitions once");
        assert_eq!(one.states, four.states);
        assert_eq!(one.homes, four.homes);
        assert_eq!(one.homes.get("a00007"), Some(&0), "its first partition");
        assert_eq!(one.homes.get("a02000"), Some(&1));
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
                caught_up: Vec::new(),
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
        s.set_changelog_mark("audit", 3, "changelog").unwrap();
        assert_eq!(s.clear_partitions(None).unwrap(), 1);
        assert!(s.load_partition("audit", 3).unwrap().is_none());
        assert_eq!(s.db().scan_prefix("s/").count(), 0, "sessions cleared too");
        assert_eq!(
            s.changelog_mark("audit", 3).unwrap(),
            None,
            "published whole again once rebuilt"
        );
        // The control topic is read again from its start; what was read is the re-read mark.
        assert_eq!(s.control_offset(0).unwrap(), None);
        assert_eq!(s.control_marks().unwrap(), HashMap::from([(0, 7)]));
        assert!(s.pending().unwrap().is_empty());
    }
}
