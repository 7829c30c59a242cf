//! The sled state: per partition, the agents' states and the next offset they reflect, written in
//! one atomic batch and flushed before any Kafka offset commit.
//!
//! Keys (one tree): `m/{topic}/{partition:010}` → [`PartitionMeta`], `a/{topic}/{partition:010}/{agent}`
//! → [`AgentState`], `c/offset/{partition:010}` → next control-topic offset, `c/pending` →
//! operator commands waiting for their agent.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::control::Command;
use crate::engine::EngineStats;
use crate::state::{AgentState, Snapshot, SNAPSHOT_VERSION};

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed (disk, corruption, lock held by another process).
    #[error("state store: {0}")]
    Sled(#[from] sled::Error),
    /// A stored value does not decode (written by an incompatible version?).
    #[error("state store: cannot decode {key}: {reason}")]
    Decode {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
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
    /// Agents changed since the previous checkpoint.
    pub agents: Vec<&'a AgentState>,
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

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).unwrap_or_default()
}

impl Store {
    /// Opens (or creates) the state directory.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Ok(Store {
            db: sled::Config::new().path(dir).open()?,
        })
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
        let meta: PartitionMeta = decode(mkey.as_bytes(), &m)?;
        let mut agents = Vec::new();
        let prefix = format!("{}/", part_prefix('a', topic, partition));
        for kv in self.db.scan_prefix(&prefix) {
            let (k, v) = kv?;
            agents.push(decode::<AgentState>(&k, &v)?);
        }
        Ok(Some((
            meta.next_offset,
            Snapshot {
                version: SNAPSHOT_VERSION,
                stats: meta.stats,
                agents,
            },
        )))
    }

    /// Writes partitions' changes and the control-topic position in one atomic batch and
    /// flushes it to disk.
    pub fn checkpoint(
        &self,
        parts: &[PartitionDelta<'_>],
        control: &[(i32, i64)],
        pending: &[Command],
    ) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        for p in parts {
            let meta = PartitionMeta {
                version: SNAPSHOT_VERSION,
                next_offset: p.next_offset,
                stats: p.stats.clone(),
            };
            b.insert(
                part_prefix('m', p.topic, p.partition).as_bytes(),
                encode(&meta),
            );
            let prefix = part_prefix('a', p.topic, p.partition);
            for a in &p.agents {
                b.insert(format!("{prefix}/{}", a.agent_id).as_bytes(), encode(*a));
            }
        }
        for (partition, next) in control {
            b.insert(
                format!("c/offset/{partition:010}").as_bytes(),
                &next.to_le_bytes()[..],
            );
        }
        let pending: Vec<Vec<u8>> = pending.iter().map(Command::to_json).collect();
        b.insert("c/pending", encode(&pending));
        self.db.apply_batch(b)?;
        self.db.flush()?;
        Ok(())
    }

    /// The next control-topic offset of a partition, if stored.
    pub fn control_offset(&self, partition: i32) -> Result<Option<i64>, StoreError> {
        Ok(self
            .db
            .get(format!("c/offset/{partition:010}"))?
            .and_then(|v| <[u8; 8]>::try_from(&v[..]).ok())
            .map(i64::from_le_bytes))
    }

    /// Operator commands waiting for their agent.
    pub fn pending(&self) -> Result<Vec<Command>, StoreError> {
        let Some(v) = self.db.get("c/pending")? else {
            return Ok(Vec::new());
        };
        let raw: Vec<Vec<u8>> = decode(b"c/pending", &v)?;
        Ok(raw
            .iter()
            .filter_map(|j| serde_json::from_slice(j).ok())
            .collect())
    }

    /// Every stored partition: (topic, partition, meta, agents).
    pub fn partitions(&self) -> Result<Vec<(String, i32, PartitionMeta, usize)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.db.scan_prefix("m/") {
            let (k, v) = kv?;
            let key = String::from_utf8_lossy(&k).into_owned();
            let meta: PartitionMeta = decode(&k, &v)?;
            let Some((topic, part)) = key[2..].rsplit_once('/') else {
                continue;
            };
            let partition = part.parse().unwrap_or(-1);
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
    /// the log; the control-topic position is kept. Returns the partitions dropped.
    pub fn clear_partitions(&self, topic: Option<&str>) -> Result<usize, StoreError> {
        let mut n = 0;
        for prefix in ["m/", "a/"] {
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
                agents: vec![&a, &b],
            }],
            &[(0, 7)],
            &[],
        )
        .unwrap();
        drop(s);
        let s = Store::open(d.path()).unwrap();
        let (next, snap) = s.load_partition("audit", 3).unwrap().unwrap();
        assert_eq!(next, 42);
        assert_eq!(snap.agents.len(), 2);
        assert!(s.load_partition("audit", 2).unwrap().is_none());
        assert_eq!(s.control_offset(0).unwrap(), Some(7));
        assert_eq!(s.find_agent("agent/with/slashes").unwrap().len(), 1);
        assert_eq!(s.partitions().unwrap()[0].3, 2);
        assert_eq!(s.clear_partitions(None).unwrap(), 1);
        assert!(s.load_partition("audit", 3).unwrap().is_none());
        assert_eq!(s.control_offset(0).unwrap(), Some(7));
    }
}
