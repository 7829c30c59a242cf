//! One checkpoint as one atomic sled batch: the partitions' changed agents, sessions, duplicate
//! memory and next offsets, the control-topic position, the pending operator commands, the
//! incidents raised since the previous checkpoint and the ledger.

use super::changelog::ChangelogRecord;
use super::codec::{agent_incident_key, encode, encode_json, incident_key, part_prefix};
use super::{PartitionMeta, StoreError};
use crate::control::Command;
use crate::posture::Ledger;
use crate::response::Incident;
use crate::state::{
    AgentState, EngineStats, FleetState, SeenChanges, SeenFigures, SessionAgent, SNAPSHOT_VERSION,
};

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
    /// Agents whose skip offset (after a restore, see [`super::changelog`]) the partition has
    /// passed: their marks are removed.
    pub caught_up: Vec<String>,
}

/// The atomic batch of one checkpoint: partitions' changes, the control-topic position, the
/// incidents raised since the previous checkpoint and the ledger. With `changelog`, each change
/// to a partition's keys is also added to it as a record (the partition's meta last).
pub fn checkpoint_batch(
    parts: &[PartitionDelta<'_>],
    control: &[(i32, i64)],
    pending: &[Command],
    incidents: &[Incident],
    ledger: Option<&Ledger>,
    mut changelog: Option<&mut Vec<ChangelogRecord>>,
) -> Result<sled::Batch, StoreError> {
    let mut b = sled::Batch::default();
    insert_incidents(&mut b, incidents)?;
    if let Some(l) = ledger {
        b.insert("f/ledger", encode_json("the ledger", l)?);
    }
    for p in parts {
        for (key, value) in partition_changes(p)? {
            if let Some(log) = changelog.as_deref_mut() {
                log.push(ChangelogRecord {
                    partition: p.partition,
                    key: key.clone(),
                    value: value.clone(),
                    checkpoint: p.next_offset,
                });
            }
            match value {
                Some(v) => b.insert(key, v),
                None => b.remove(key),
            }
        }
        let prefix = part_prefix('k', p.topic, p.partition);
        for agent in &p.caught_up {
            b.remove(format!("{prefix}/{agent}").as_bytes());
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

/// The changes of one partition's keys in a checkpoint, in the order they are written: agents,
/// sessions, identity chunks, then the meta that closes them (`None`: the key is removed).
fn partition_changes(p: &PartitionDelta<'_>) -> Result<Vec<KeyChange>, StoreError> {
    let mut out = Vec::with_capacity(p.agents.len() + 1);
    let prefix = part_prefix('a', p.topic, p.partition);
    for a in &p.agents {
        out.push((
            format!("{prefix}/{}", a.agent_id).into_bytes(),
            Some(encode("an agent's state", *a)?),
        ));
    }
    let prefix = part_prefix('s', p.topic, p.partition);
    for s in &p.sessions.0 {
        out.push((
            format!("{prefix}/{}", s.session).into_bytes(),
            Some(encode("a session's agent", s)?),
        ));
    }
    for s in &p.sessions.1 {
        out.push((format!("{prefix}/{s}").into_bytes(), None));
    }
    let prefix = part_prefix('d', p.topic, p.partition);
    if !p.duplicates.added.is_empty() {
        out.push((
            format!("{prefix}/{:020}", p.duplicates.start).into_bytes(),
            Some(encode("event identities", &p.duplicates.added)?),
        ));
    }
    for start in &p.duplicates.forgotten_chunks {
        out.push((format!("{prefix}/{start:020}").into_bytes(), None));
    }
    let meta = PartitionMeta {
        version: SNAPSHOT_VERSION,
        next_offset: p.next_offset,
        stats: p.stats.clone(),
        fleet: p.fleet.clone(),
        duplicates: p.duplicate_figures,
    };
    out.push((
        part_prefix('m', p.topic, p.partition).into_bytes(),
        Some(encode("a partition's meta", &meta)?),
    ));
    Ok(out)
}

/// A key and its new value (`None`: removed).
type KeyChange = (Vec<u8>, Option<Vec<u8>>);

/// Adds incidents to a batch, keyed by event time.
pub(super) fn insert_incidents(
    b: &mut sled::Batch,
    incidents: &[Incident],
) -> Result<(), StoreError> {
    for i in incidents {
        let key = incident_key(i.at, &i.incident_id);
        b.insert(
            agent_incident_key(&i.agent_id, i.at, &i.incident_id).as_bytes(),
            key.as_bytes(),
        );
        b.insert(key.as_bytes(), encode_json("an incident", i)?);
    }
    Ok(())
}

/// Adds agents' states of one partition to a batch.
pub(super) fn insert_agents(
    b: &mut sled::Batch,
    topic: &str,
    partition: i32,
    agents: &[&AgentState],
) -> Result<(), StoreError> {
    let prefix = part_prefix('a', topic, partition);
    for a in agents {
        b.insert(
            format!("{prefix}/{}", a.agent_id).as_bytes(),
            encode("an agent's state", *a)?,
        );
    }
    Ok(())
}
