//! The changelog: each checkpoint's changes to a partition's keys (its agents, sessions,
//! duplicate-memory chunks and, last, its meta), as records for a compacted Kafka topic keyed by
//! store key, and the restore of a partition's keys from them.
//!
//! Every record carries the checkpoint it belongs to (the partition's next offset at that
//! checkpoint). The meta record closes a checkpoint: a restore takes the last meta's offset as
//! the partition's position. Records of a checkpoint whose meta never came (the owner stopped
//! while writing them) may be the only version of their key left after compaction, so they are
//! kept and marked instead: an agent's state ahead of the position gets a skip offset (the fold
//! leaves that agent's events below it alone, they are in its state already); an identity chunk
//! ahead of it is dropped (the replay remembers those identities again); a session binding is
//! kept (binding a session to its agent again changes nothing).

use std::collections::HashMap;

use super::codec::{decode_meta, part_prefix};
use super::{Store, StoreError};

/// One changed key of a partition's state, for the changelog topic (partition = the audit
/// partition; key = the store key; no value = the key was removed, a tombstone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangelogRecord {
    /// The audit partition, and so the changelog partition.
    pub partition: i32,
    /// The store key.
    pub key: Vec<u8>,
    /// The stored value; `None` when the key was removed.
    pub value: Option<Vec<u8>>,
    /// The partition's next offset at the checkpoint that wrote it.
    pub checkpoint: i64,
}

/// The Kafka header that carries a record's checkpoint (decimal).
pub const CHECKPOINT_HEADER: &str = "guardian.checkpoint";

/// The Kafka header that carries a record's signature (HMAC-SHA256 with the command signing
/// key, hex): whoever may write to the changelog topic without the key cannot plant a state (an
/// agent never killed, a kill budget spent).
pub const SIGNATURE_HEADER: &str = "guardian.signature";

impl ChangelogRecord {
    /// Its signature with `key`: HMAC-SHA256 over the partition, the checkpoint, the key and
    /// the value (each length-prefixed), hex.
    pub fn signature(&self, key: &[u8]) -> String {
        signature(
            key,
            self.partition,
            self.checkpoint,
            &self.key,
            self.value.as_deref(),
        )
    }
}

/// The signature of a changelog record's parts (see [`ChangelogRecord::signature`]).
pub fn signature(
    secret: &[u8],
    partition: i32,
    checkpoint: i64,
    key: &[u8],
    value: Option<&[u8]>,
) -> String {
    use hmac::Mac;
    hex::encode(
        mac(secret, partition, checkpoint, key, value)
            .finalize()
            .into_bytes(),
    )
}

/// Whether `sig` (hex) is the signature of a changelog record's parts with `secret` (compared
/// in constant time).
pub fn signed_by(
    secret: &[u8],
    (partition, checkpoint): (i32, i64),
    key: &[u8],
    value: Option<&[u8]>,
    sig: &[u8],
) -> bool {
    use hmac::Mac;
    let Ok(sig) = hex::decode(sig) else {
        return false;
    };
    mac(secret, partition, checkpoint, key, value)
        .verify_slice(&sig)
        .is_ok()
}

/// The signature of a posture snapshot keyed `key` (its instance's id) with payload `json`: a
/// changelog signature at partition -1, which no changelog record has, so neither kind of
/// record can pass for the other.
pub fn snapshot_signature(secret: &[u8], key: &[u8], json: &[u8]) -> String {
    signature(secret, -1, 0, key, Some(json))
}

/// Whether `sig` (hex) is [`snapshot_signature`] of a posture snapshot with `secret`.
pub fn snapshot_signed_by(secret: &[u8], key: &[u8], json: &[u8], sig: &[u8]) -> bool {
    signed_by(secret, (-1, 0), key, Some(json), sig)
}

/// HMAC-SHA256 over the partition, the checkpoint, the key and the value, each length-prefixed.
fn mac(
    secret: &[u8],
    partition: i32,
    checkpoint: i64,
    key: &[u8],
    value: Option<&[u8]>,
) -> hmac::Hmac<sha2::Sha256> {
    use hmac::Mac;
    // HMAC accepts keys of any length.
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(&partition.to_be_bytes());
    mac.update(&checkpoint.to_be_bytes());
    mac.update(&(key.len() as u64).to_be_bytes());
    mac.update(key);
    match value {
        Some(v) => {
            mac.update(&[1]);
            mac.update(&(v.len() as u64).to_be_bytes());
            mac.update(v);
        }
        None => mac.update(&[0]),
    }
    mac
}

/// Records applied to the store per batch while restoring: the restore's buffer is bounded
/// whatever the changelog's size.
const RESTORE_BATCH: usize = 1_000;

/// What a restore from the changelog brought back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restored {
    /// The partition's position: every event below it is in the restored state (except the
    /// skipped ones' agents, see the module doc).
    pub next_offset: i64,
    /// Changelog records read (of this partition's keys).
    pub records: u64,
    /// Agents whose state is ahead of the position (written by a checkpoint left unfinished).
    pub ahead: usize,
}

/// A restore of one partition's keys in progress (see the module doc).
pub struct Restore<'s> {
    store: &'s Store,
    topic: String,
    partition: i32,
    /// The partition's key prefixes: agents, sessions, identity chunks (each with its `/`), and
    /// its meta key.
    prefixes: [String; 3],
    meta_key: String,
    /// The partition's changelog mark ([`mark_key`]), and whether the changelog held it.
    mark_key: String,
    marked: bool,
    batch: sled::Batch,
    in_batch: usize,
    /// The latest meta record: its value and checkpoint.
    meta: Option<(Vec<u8>, i64)>,
    /// Keys whose latest record is of a checkpoint after the latest meta's, with that checkpoint.
    ahead: HashMap<Vec<u8>, i64>,
    records: u64,
}

/// The key of a partition's changelog mark: in the changelog, that the partition is published
/// whole from there on (its stored keys, then its meta, follow it; a restore needs it and voids
/// what came before it); in the store, the changelog topic this partition's state was published
/// to whole (its value).
pub fn mark_key(topic: &str, partition: i32) -> String {
    part_prefix('l', topic, partition)
}

impl Store {
    /// The changelog topic a partition's state was published to whole, if any.
    pub fn changelog_mark(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Option<String>, StoreError> {
        Ok(self
            .db
            .get(mark_key(topic, partition))?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Records that a partition's state was published whole to changelog topic `changelog`.
    pub fn set_changelog_mark(
        &self,
        topic: &str,
        partition: i32,
        changelog: &str,
    ) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        b.insert(mark_key(topic, partition).as_bytes(), changelog.as_bytes());
        self.write(b)
    }

    /// The next offset of a partition's stored state, if it has one.
    pub fn stored_next(&self, topic: &str, partition: i32) -> Result<Option<i64>, StoreError> {
        let meta_key = part_prefix('m', topic, partition);
        match self.db.get(&meta_key)? {
            Some(meta) => Ok(Some(decode_meta(meta_key.as_bytes(), &meta)?.next_offset)),
            None => Ok(None),
        }
    }

    /// Every stored key of a partition as a changelog publishes it, given to `each` with the
    /// stored state's next offset, in order: agents, sessions, identity chunks, then the meta;
    /// that next offset (`None`, and nothing given, without a meta: nothing is stored).
    pub fn each_stored_record<E: From<StoreError>>(
        &self,
        topic: &str,
        partition: i32,
        mut each: impl FnMut(i64, &[u8], &[u8]) -> Result<(), E>,
    ) -> Result<Option<i64>, E> {
        let meta_key = part_prefix('m', topic, partition);
        let Some(meta) = self.db.get(&meta_key).map_err(StoreError::from)? else {
            return Ok(None);
        };
        let next = decode_meta(meta_key.as_bytes(), &meta)?.next_offset;
        for kind in ['a', 's', 'd'] {
            for kv in self
                .db
                .scan_prefix(format!("{}/", part_prefix(kind, topic, partition)))
            {
                let (k, v) = kv.map_err(StoreError::from)?;
                each(next, &k, &v)?;
            }
        }
        each(next, meta_key.as_bytes(), &meta)?;
        Ok(Some(next))
    }

    /// Starts restoring partition `partition` of `topic` from its changelog: its stored keys
    /// are dropped first (a partition is restored only when it has no meta, and keys without
    /// one are leftovers).
    pub fn begin_restore(&self, topic: &str, partition: i32) -> Result<Restore<'_>, StoreError> {
        self.clear_partition(topic, partition)?;
        Ok(Restore {
            store: self,
            topic: topic.to_string(),
            partition,
            prefixes: ['a', 's', 'd'].map(|k| format!("{}/", part_prefix(k, topic, partition))),
            meta_key: part_prefix('m', topic, partition),
            mark_key: mark_key(topic, partition),
            marked: false,
            batch: sled::Batch::default(),
            in_batch: 0,
            meta: None,
            ahead: HashMap::new(),
            records: 0,
        })
    }

    /// Drops every key of one partition (meta, changelog mark, agents, sessions, identity
    /// chunks, skips).
    fn clear_partition(&self, topic: &str, partition: i32) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        b.remove(part_prefix('m', topic, partition).as_bytes());
        b.remove(mark_key(topic, partition).as_bytes());
        for kind in ['a', 's', 'd', 'k'] {
            for kv in self
                .db
                .scan_prefix(format!("{}/", part_prefix(kind, topic, partition)))
            {
                b.remove(kv?.0);
            }
        }
        self.write(b)
    }

    /// Agents of a partition whose state is ahead of its position, with the offset below which
    /// their events are in it already (see [`Restore`]).
    pub fn skips(&self, topic: &str, partition: i32) -> Result<HashMap<String, i64>, StoreError> {
        let prefix = format!("{}/", part_prefix('k', topic, partition));
        let mut out = HashMap::new();
        for kv in self.db.scan_prefix(&prefix) {
            let (k, v) = kv?;
            let agent = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            let at = <[u8; 8]>::try_from(&v[..])
                .map(i64::from_le_bytes)
                .map_err(|_| StoreError::Decode {
                    key: String::from_utf8_lossy(&k).into_owned(),
                    reason: "not an offset".into(),
                })?;
            out.insert(agent, at);
        }
        Ok(out)
    }
}

impl Restore<'_> {
    /// Takes one changelog record (in log order); records of other partitions' keys are
    /// ignored.
    pub fn apply(
        &mut self,
        key: &[u8],
        value: Option<&[u8]>,
        checkpoint: i64,
    ) -> Result<(), StoreError> {
        if key == self.mark_key.as_bytes() {
            // A mark opens a whole publication of the partition: what came before is void.
            if let Some(v) = value {
                self.store.clear_partition(&self.topic, self.partition)?;
                self.batch = sled::Batch::default();
                self.in_batch = 0;
                self.meta = None;
                self.ahead.clear();
                self.records += 1;
                self.marked = true;
                self.batch.insert(key, v);
            }
            return Ok(());
        }
        if key == self.meta_key.as_bytes() {
            let Some(v) = value else {
                // A meta is never removed: a tombstone for it is not ours to honour.
                return Ok(());
            };
            self.records += 1;
            self.meta = Some((v.to_vec(), checkpoint));
            self.ahead.retain(|_, c| *c > checkpoint);
            return Ok(());
        }
        if !self.prefixes.iter().any(|p| key.starts_with(p.as_bytes())) {
            return Ok(());
        }
        self.records += 1;
        match value {
            Some(v) => self.batch.insert(key, v),
            None => self.batch.remove(key),
        }
        if self.meta.as_ref().is_none_or(|(_, at)| checkpoint > *at) {
            self.ahead.insert(key.to_vec(), checkpoint);
        } else {
            self.ahead.remove(key);
        }
        self.in_batch += 1;
        if self.in_batch >= RESTORE_BATCH {
            self.store.db.apply_batch(std::mem::take(&mut self.batch))?;
            self.in_batch = 0;
        }
        Ok(())
    }

    /// Gives the restore up: drops what it applied (the partition has no state again).
    pub fn abandon(self) -> Result<(), StoreError> {
        self.store.clear_partition(&self.topic, self.partition)
    }

    /// Ends the restore: marks or drops what is ahead of the last meta, then writes the meta
    /// (last, so a restore cut short leaves no partition behind). `None` when the changelog holds
    /// no finished checkpoint of the partition, or does not hold all of its state (no mark: it
    /// was turned on for a state that had not been published whole); its keys are dropped again.
    pub fn finish(mut self) -> Result<Option<Restored>, StoreError> {
        self.store.db.apply_batch(std::mem::take(&mut self.batch))?;
        let (Some((meta, _)), true) = (self.meta, self.marked) else {
            self.store.clear_partition(&self.topic, self.partition)?;
            return Ok(None);
        };
        let decoded = match decode_meta(self.meta_key.as_bytes(), &meta) {
            Ok(d) => d,
            Err(e) => {
                // Another state format (a changelog written before an upgrade), or not a meta:
                // what was applied is not a state this version reads, and goes.
                self.store.clear_partition(&self.topic, self.partition)?;
                return Err(e);
            }
        };
        let position = decoded.next_offset;
        let mut b = sled::Batch::default();
        let mut ahead = 0;
        let [agents, _, chunks] = &self.prefixes;
        for (key, at) in &self.ahead {
            if *at <= position {
                continue;
            }
            if let Some(agent) = key.strip_prefix(agents.as_bytes()) {
                let skip = format!("k/{}", &agents[2..]);
                let mut k = skip.into_bytes();
                k.extend_from_slice(agent);
                b.insert(k, &at.to_le_bytes()[..]);
                ahead += 1;
            } else if key.starts_with(chunks.as_bytes()) {
                b.remove(key.as_slice());
            }
        }
        b.insert(self.meta_key.as_bytes(), meta);
        self.store.write(b)?;
        Ok(Some(Restored {
            next_offset: position,
            records: self.records,
            ahead,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blueprint::BlueprintSet;
    use crate::state::{
        AgentState, EngineStats, FleetState, SeenChanges, SeenEntry, SeenFigures, SessionAgent,
    };
    use crate::store::{checkpoint_batch, PartitionDelta};

    const KEY: &[u8] = b"signing key";

    /// A partition's changes: `agents` at `next`, a session bound, an identity chunk added.
    fn delta<'a>(
        stats: &'a EngineStats,
        partition: i32,
        next: i64,
        agents: Vec<&'a AgentState>,
    ) -> PartitionDelta<'a> {
        PartitionDelta {
            topic: "audit",
            partition,
            next_offset: next,
            stats,
            fleet: FleetState::default(),
            agents,
            sessions: (
                vec![SessionAgent {
                    session: format!("s{next}"),
                    agent: "a".into(),
                    last_used: next,
                }],
                Vec::new(),
            ),
            duplicates: SeenChanges {
                start: next as u64,
                added: vec![SeenEntry {
                    ts: next,
                    id: next as u64,
                    content: 1,
                }],
                forgotten_chunks: Vec::new(),
            },
            duplicate_figures: SeenFigures::default(),
            caught_up: Vec::new(),
        }
    }

    /// Writes a checkpoint of `deltas` to `store`; returns its changelog records.
    fn checkpoint(store: &Store, deltas: &[PartitionDelta<'_>]) -> Vec<ChangelogRecord> {
        let mut log = Vec::new();
        let b = checkpoint_batch(deltas, &[], &[], &[], None, Some(&mut log)).unwrap();
        store.write(b).unwrap();
        log
    }

    /// The mark a seed publishes first for partition `partition` (it starts from nothing).
    fn mark(partition: i32) -> ChangelogRecord {
        ChangelogRecord {
            partition,
            key: mark_key("audit", partition).into_bytes(),
            value: Some(b"changelog".to_vec()),
            checkpoint: 0,
        }
    }

    /// Restores partition `partition` of `into` from `log`, in order.
    fn restore(into: &Store, log: &[ChangelogRecord], partition: i32) -> Option<Restored> {
        let mut r = into.begin_restore("audit", partition).unwrap();
        for rec in log {
            r.apply(&rec.key, rec.value.as_deref(), rec.checkpoint)
                .unwrap();
        }
        r.finish().unwrap()
    }

    /// A store that writes the changelog and one that restores from it (with their directories,
    /// kept while the test runs).
    fn two_stores() -> ([tempfile::TempDir; 2], Store, Store) {
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let src = Store::open(dirs[0].path()).unwrap();
        let dst = Store::open(dirs[1].path()).unwrap();
        (dirs, src, dst)
    }

    fn agent(id: &str, seen: i64) -> AgentState {
        AgentState::new(id, BlueprintSet::builtin().get(0), seen, None)
    }

    #[test]
    fn a_restore_gives_the_partition_the_writer_stored_and_ignores_other_partitions() {
        let (_dirs, src, dst) = two_stores();
        let stats = EngineStats::default();
        let (a, b, c) = (agent("a", 1), agent("b", 2), agent("c", 3));
        let mut log = vec![mark(0), mark(1)];
        log.extend(checkpoint(
            &src,
            &[
                delta(&stats, 0, 10, vec![&a, &b]),
                delta(&stats, 1, 7, vec![&c]),
            ],
        ));
        let a2 = agent("a", 15);
        let mut second = delta(&stats, 0, 20, vec![&a2]);
        second.sessions.1.push("s10".into());
        log.extend(checkpoint(&src, &[second]));

        let r = restore(&dst, &log, 0).expect("a finished checkpoint");
        assert_eq!(r.next_offset, 20);
        assert_eq!(r.ahead, 0);
        assert_eq!(
            dst.load_partition("audit", 0).unwrap(),
            src.load_partition("audit", 0).unwrap()
        );
        assert!(dst.load_partition("audit", 1).unwrap().is_none());
        assert!(dst.find_agent("c").unwrap().is_empty());
        assert!(dst.skips("audit", 0).unwrap().is_empty());
        assert_eq!(
            dst.changelog_mark("audit", 0).unwrap().as_deref(),
            Some("changelog"),
            "restored whole: nothing to publish again"
        );
    }

    /// The changelog was turned on for a state already stored: its checkpoints publish only
    /// the agents that change. Restored from that, the partition would lack the others' baselines:
    /// without the mark nothing is restored (the partition is replayed); once the stored state
    /// is published whole (the seed: its stored keys, then the mark), the restore gives it all.
    #[test]
    fn a_changelog_turned_on_for_a_stored_state_restores_only_once_published_whole() {
        let (_dirs, src, dst) = two_stores();
        let stats = EngineStats::default();
        let (a, idle) = (agent("a", 1), agent("idle", 2));
        checkpoint(&src, &[delta(&stats, 0, 10, vec![&a, &idle])]);
        // Turned on now: the next checkpoint publishes only what changed.
        let a2 = agent("a", 15);
        let changed = checkpoint(&src, &[delta(&stats, 0, 20, vec![&a2])]);
        assert_eq!(
            restore(&dst, &changed, 0),
            None,
            "no mark: not a whole state"
        );
        assert!(dst.db().scan_prefix("a/").next().is_none(), "nothing left");

        let mut seed = vec![ChangelogRecord {
            checkpoint: 20,
            ..mark(0)
        }];
        let next = src
            .each_stored_record::<StoreError>("audit", 0, |at, k, v| {
                seed.push(ChangelogRecord {
                    partition: 0,
                    key: k.to_vec(),
                    value: Some(v.to_vec()),
                    checkpoint: at,
                });
                Ok(())
            })
            .unwrap();
        assert_eq!(next, Some(20));
        assert!(
            seed.last().is_some_and(|r| r.key.starts_with(b"m/")),
            "meta last"
        );
        let a3 = agent("a", 25);
        seed.extend(checkpoint(&src, &[delta(&stats, 0, 30, vec![&a3])]));
        // What the changelog held before the seed is void: an agent gone since does not return.
        let elsewhere = tempfile::tempdir().unwrap();
        let ghost = agent("ghost", 3);
        let mut log = checkpoint(
            &Store::open(elsewhere.path()).unwrap(),
            &[delta(&stats, 0, 5, vec![&ghost])],
        );
        log.extend(seed);
        let r = restore(&dst, &log, 0).expect("a whole state");
        assert_eq!(r.next_offset, 30);
        assert_eq!(
            dst.load_partition("audit", 0).unwrap(),
            src.load_partition("audit", 0).unwrap()
        );
        assert_eq!(
            dst.find_agent("idle").unwrap().len(),
            1,
            "the idle agent too"
        );
        assert!(
            dst.find_agent("ghost").unwrap().is_empty(),
            "nothing from before the mark"
        );
        assert_eq!(
            src.each_stored_record::<StoreError>("audit", 9, |_, _, _| Ok(()))
                .unwrap(),
            None
        );
    }

    #[test]
    fn a_checkpoint_cut_short_marks_its_agents_and_drops_its_identities() {
        let (_dirs, src, dst) = two_stores();
        let stats = EngineStats::default();
        let (a, b) = (agent("a", 1), agent("b", 2));
        let mut log = vec![mark(0)];
        log.extend(checkpoint(&src, &[delta(&stats, 0, 10, vec![&a, &b])]));
        let a2 = agent("a", 15);
        let mut cut = checkpoint(&src, &[delta(&stats, 0, 20, vec![&a2])]);
        // The writer stopped before the meta that closes the second checkpoint.
        let meta = cut.pop().unwrap();
        assert!(meta.key.starts_with(b"m/"));
        log.extend(cut);

        let r = restore(&dst, &log, 0).expect("the first checkpoint");
        assert_eq!(r.next_offset, 10);
        assert_eq!(r.ahead, 1);
        let (next, snap) = dst.load_partition("audit", 0).unwrap().unwrap();
        assert_eq!(next, 10);
        // The agent's newer state is the only one compaction may have left: kept, marked.
        let restored_a = snap.agents.iter().find(|s| s.agent_id == "a").unwrap();
        assert_eq!(restored_a, &a2);
        assert_eq!(
            dst.skips("audit", 0).unwrap(),
            [("a".to_string(), 20)].into_iter().collect()
        );
        // The identities of the cut checkpoint are remembered again by the replay.
        assert_eq!(dst.db().scan_prefix("d/").count(), 1);
        // Its session binding is kept (binding again changes nothing).
        assert_eq!(snap.sessions.len(), 2);
    }

    /// Asserts that `s` holds no partition's keys (meta, agents, sessions, identity chunks,
    /// skips, changelog marks).
    fn assert_no_partition_state(s: &Store) {
        for kind in ["m/", "a/", "s/", "d/", "k/", "l/"] {
            assert_eq!(s.db().scan_prefix(kind).count(), 0, "{kind}");
        }
    }

    /// The changelog of one checkpoint of agent `a` on partition 0, from its mark on.
    fn one_checkpoint(src: &Store) -> Vec<ChangelogRecord> {
        let stats = EngineStats::default();
        let a = agent("a", 1);
        let mut log = vec![mark(0)];
        log.extend(checkpoint(src, &[delta(&stats, 0, 10, vec![&a])]));
        log
    }

    #[test]
    fn a_changelog_without_a_finished_checkpoint_restores_nothing_and_leaves_nothing() {
        let (_dirs, src, dst) = two_stores();
        let mut log = one_checkpoint(&src);
        log.pop();
        assert_eq!(restore(&dst, &log, 0), None);
        assert_no_partition_state(&dst);
        // A restore given up half-way (a forged record, a timeout) leaves nothing either.
        let r = dst.begin_restore("audit", 0).unwrap();
        // A batch of it already applied.
        dst.db()
            .insert("a/audit/0000000000/x", b"partial".to_vec())
            .unwrap();
        r.abandon().unwrap();
        assert_eq!(dst.db().scan_prefix("a/").count(), 0);
    }

    #[test]
    fn a_changelog_of_another_state_format_is_refused_and_leaves_nothing() {
        let (_dirs, src, dst) = two_stores();
        let mut log = one_checkpoint(&src);
        // The meta closes the checkpoint: written by a build of the format before this one.
        let meta = log.last_mut().and_then(|r| r.value.as_mut()).unwrap();
        let (version, rest) = postcard::take_from_bytes::<u32>(meta).unwrap();
        let mut older = postcard::to_stdvec(&(version - 1)).unwrap();
        older.extend_from_slice(rest);
        *meta = older;
        let mut r = dst.begin_restore("audit", 0).unwrap();
        for rec in &log {
            r.apply(&rec.key, rec.value.as_deref(), rec.checkpoint)
                .unwrap();
        }
        assert!(matches!(r.finish(), Err(StoreError::Version { .. })));
        assert_no_partition_state(&dst);
    }

    #[test]
    fn a_signature_covers_the_partition_the_checkpoint_the_key_and_the_value() {
        let r = ChangelogRecord {
            partition: 2,
            key: b"a/audit/0000000002/x".to_vec(),
            value: Some(b"state".to_vec()),
            checkpoint: 40,
        };
        let sig = r.signature(KEY);
        let ok = |k: &[u8], at: (i32, i64), key: &[u8], v: Option<&[u8]>| {
            signed_by(k, at, key, v, sig.as_bytes())
        };
        assert!(ok(KEY, (2, 40), &r.key, Some(b"state")));
        assert!(!ok(b"other key", (2, 40), &r.key, Some(b"state")));
        assert!(!ok(KEY, (3, 40), &r.key, Some(b"state")));
        assert!(!ok(KEY, (2, 41), &r.key, Some(b"state")));
        assert!(!ok(KEY, (2, 40), b"a/audit/0000000002/y", Some(b"state")));
        assert!(!ok(KEY, (2, 40), &r.key, Some(b"statf")));
        assert!(!ok(KEY, (2, 40), &r.key, None));
        assert!(!signed_by(KEY, (2, 40), &r.key, Some(b"state"), b"not hex"));
        // A tombstone is not an empty value.
        let t = ChangelogRecord {
            value: None,
            ..r.clone()
        };
        let empty = ChangelogRecord {
            value: Some(Vec::new()),
            ..r
        };
        assert_ne!(t.signature(KEY), empty.signature(KEY));
    }
}
