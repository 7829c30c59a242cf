//! How the store lays out its keys and encodes its values: postcard for states, JSON for what
//! other tools read (incidents, the ledger); keys that sort by partition and by event time.

use serde::{Deserialize, Serialize};

use super::{PartitionMeta, StoreError};
use crate::state::SNAPSHOT_VERSION;

/// Maps an i64 onto a u64 that sorts the same way (for keys).
pub(super) fn sortable(t: i64) -> u64 {
    (t as u64) ^ (1 << 63)
}

/// The key of an incident: its event time first, so a range reads a span.
pub(super) fn incident_key(at: i64, id: &str) -> String {
    format!("i/{:016x}/{id}", sortable(at))
}

/// The prefix of an agent's entries in the index of incidents by agent (the id's length first,
/// so no agent's prefix is another's).
pub(super) fn agent_incidents_prefix(agent: &str) -> String {
    format!("x/{:08}/{agent}/", agent.len())
}

/// The index entry of an incident by agent (its value is the incident's key).
pub(super) fn agent_incident_key(agent: &str, at: i64, id: &str) -> String {
    format!(
        "{}{:016x}/{id}",
        agent_incidents_prefix(agent),
        sortable(at)
    )
}

/// The prefix of a partition's keys of one kind (`a` agents, `m` meta, `s` sessions, `d` duplicates).
pub(super) fn part_prefix(kind: char, topic: &str, partition: i32) -> String {
    format!("{kind}/{topic}/{partition:010}")
}

/// Decodes a postcard value, naming its key on failure.
pub(super) fn decode<T: for<'de> Deserialize<'de>>(key: &[u8], v: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(v).map_err(|e| StoreError::Decode {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    })
}

/// Decodes a partition's meta, checking the state format version first (it leads the value).
pub(super) fn decode_meta(key: &[u8], v: &[u8]) -> Result<PartitionMeta, StoreError> {
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

/// Encodes a value with postcard.
pub(super) fn encode<T: Serialize>(what: &'static str, v: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_stdvec(v).map_err(|e| StoreError::Encode {
        what,
        reason: e.to_string(),
    })
}

/// Encodes a value as JSON (incidents, the ledger: readable by other tools).
pub(super) fn encode_json<T: Serialize>(what: &'static str, v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Encode {
        what,
        reason: e.to_string(),
    })
}
