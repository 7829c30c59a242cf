//! One checkpoint as one atomic sled batch: the partitions' changed agents, sessions, duplicate
//! memory and next offsets, the control-topic position, the pending operator commands, the
//! incidents raised since the previous checkpoint and the ledger.

use super::codec::{encode, encode_json, incident_key, part_prefix};
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
    insert_incidents(&mut b, incidents)?;
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
        insert_agents(&mut b, p.topic, p.partition, &p.agents)?;
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

/// Adds incidents to a batch, keyed by event time.
pub(super) fn insert_incidents(
    b: &mut sled::Batch,
    incidents: &[Incident],
) -> Result<(), StoreError> {
    for i in incidents {
        b.insert(
            incident_key(i.at, &i.incident_id).as_bytes(),
            encode_json("an incident", i)?,
        );
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
