//! At-least-once delivery: the identities of the events a partition folded recently, so that an
//! event delivered again (a producer retry, a retry storm, a forwarder that restarted) is counted
//! as a duplicate and changes nothing else.
//!
//! An event's identity is its format's own: Agent-SPM's `event_id`, AgentShield's `eventId`,
//! an OpenTelemetry span's trace and span id, each with the agent it is attributed to. A record
//! without one falls back to its content (agent, time to the millisecond, tool, bytes, outcome,
//! session): two calls identical in all of those count once. A duplicate is an identity seen
//! before *with the same content*; the same identity with other content is not dropped (a forged
//! record cannot hide a real one by borrowing its id) but counted as a conflict.
//!
//! The memory is bounded twice: by a horizon of event time behind the partition's latest event
//! (identities older than that are forgotten) and by a cap on the identities kept (the oldest go
//! first). Identities are kept as keyed 64-bit SipHash digests, the key drawn when the state is
//! created and kept with it, so nobody can craft records whose digests collide with another's.
//! It is part of the partition's state: checkpointed in chunks of the identities added between
//! two checkpoints, restored with it, and folded identically after a restore.

use std::collections::VecDeque;
use std::hash::Hasher;

use serde::{Deserialize, Serialize};
use siphasher::sip::SipHasher13;

use crate::event::AuditEvent;

/// Default horizon of event time behind the latest event (10 minutes).
pub const DEFAULT_HORIZON_MS: i64 = 600_000;

/// Default cap on the identities kept per partition.
pub const DEFAULT_MAX_ENTRIES: usize = 200_000;

/// How long and how many identities are remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeenSettings {
    /// Event time behind the latest event after which an identity is forgotten (ms); 0 turns
    /// duplicate detection off.
    pub horizon_ms: i64,
    /// Most identities kept; the oldest are forgotten first.
    pub max_entries: usize,
}

impl Default for SeenSettings {
    fn default() -> Self {
        SeenSettings {
            horizon_ms: DEFAULT_HORIZON_MS,
            max_entries: DEFAULT_MAX_ENTRIES,
        }
    }
}

/// One remembered identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenEntry {
    /// Event time of the event (ms).
    pub ts: i64,
    /// Keyed digest of its identity.
    pub id: u64,
    /// Keyed digest of its content.
    pub content: u64,
}

/// What the memory made of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// Seen for the first time: fold it.
    First,
    /// The same identity and content were seen within the horizon: drop it.
    Duplicate,
    /// The identity was seen with other content: fold it, and count the conflict.
    Conflict,
}

/// The identities added since the previous checkpoint, and the chunks no longer needed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SeenChanges {
    /// Position (in the count of identities ever added) of the first new identity.
    pub start: u64,
    /// The new identities, in the order they were added.
    pub added: Vec<SeenEntry>,
    /// Start positions of stored chunks that hold only forgotten identities.
    pub forgotten_chunks: Vec<u64>,
}

/// The stored form: the key and the identities kept, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SeenSnapshot {
    /// The digest key.
    pub key: [u64; 2],
    /// Identities ever added (the position after the last one).
    pub total: u64,
    /// The identities kept, oldest first (the last one is at position `total - 1`).
    pub entries: Vec<SeenEntry>,
    /// Start positions of the chunks stored for them.
    pub chunks: Vec<u64>,
    /// Latest event time remembered (the horizon counts back from it).
    pub latest: i64,
}

/// What is stored of the memory beside its chunks (in the partition's meta).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenFigures {
    /// The digest key.
    pub key: [u64; 2],
    /// Identities ever added.
    pub total: u64,
    /// Identities kept (the last ones added).
    pub kept: u64,
    /// Latest event time remembered.
    pub latest: i64,
}

impl SeenSnapshot {
    /// The figures stored beside the chunks.
    pub fn figures(&self) -> SeenFigures {
        SeenFigures {
            key: self.key,
            total: self.total,
            kept: self.entries.len() as u64,
            latest: self.latest,
        }
    }
}

/// The memory of recent identities of one partition.
#[derive(Debug, Clone)]
pub struct Seen {
    settings: SeenSettings,
    key: [u64; 2],
    order: VecDeque<SeenEntry>,
    /// Where each identity in `order` is, by its digest.
    table: Table,
    /// Identities ever added.
    total: u64,
    /// Latest event time folded.
    latest: i64,
    /// Identities ever added when [`Seen::take_changes`] was last called.
    taken: u64,
    /// Start positions of the chunks written (or to be written) for the kept identities.
    chunks: VecDeque<u64>,
    /// Reused: the bytes of an identity being digested.
    scratch: Vec<u8>,
}

impl PartialEq for Seen {
    fn eq(&self, o: &Self) -> bool {
        self.key == o.key
            && self.order == o.order
            && self.total == o.total
            && self.latest == o.latest
    }
}

impl Default for Seen {
    fn default() -> Self {
        Seen::new(SeenSettings::default(), [0, 0])
    }
}

impl Seen {
    /// An empty memory whose digests use `key`.
    pub fn new(settings: SeenSettings, key: [u64; 2]) -> Seen {
        Seen {
            settings,
            key,
            order: VecDeque::new(),
            table: Table::with_room_for(0),
            total: 0,
            latest: i64::MIN,
            taken: 0,
            chunks: VecDeque::new(),
            scratch: Vec::with_capacity(128),
        }
    }

    /// An empty memory with a key drawn from the operating system's randomness.
    pub fn random(settings: SeenSettings) -> Seen {
        Seen::new(settings, [rand::random(), rand::random()])
    }

    /// The memory as stored, with `settings` (applied to what comes next; use
    /// [`Seen::set_settings`] to apply lowered bounds to what is kept).
    pub fn restore(settings: SeenSettings, snap: SeenSnapshot) -> Seen {
        let mut s = Seen::new(settings, snap.key);
        // A stored memory never keeps more identities than it ever added.
        s.total = snap.total.max(snap.entries.len() as u64);
        s.taken = s.total;
        s.chunks = snap.chunks.into();
        s.latest = snap.latest;
        for e in snap.entries {
            s.latest = s.latest.max(e.ts);
            s.order.push_back(e);
        }
        s.rebuild();
        s
    }

    /// The stored form.
    pub fn snapshot(&self) -> SeenSnapshot {
        SeenSnapshot {
            key: self.key,
            total: self.total,
            entries: self.order.iter().copied().collect(),
            chunks: self.chunks.iter().copied().collect(),
            latest: self.latest,
        }
    }

    /// The figures stored beside the chunks.
    pub fn figures(&self) -> SeenFigures {
        SeenFigures {
            key: self.key,
            total: self.total,
            kept: self.order.len() as u64,
            latest: self.latest,
        }
    }

    /// Sets the bounds (lowered ones apply at once).
    pub fn set_settings(&mut self, settings: SeenSettings) {
        self.settings = settings;
        self.forget();
    }

    /// The bounds in force.
    pub fn settings(&self) -> SeenSettings {
        self.settings
    }

    /// Identities kept.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether no identity is kept.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Checks `ev` (attributed to its agent) against the memory and remembers it.
    pub fn deliver(&mut self, ev: &AuditEvent<'_>) -> Received {
        match self.identity(ev) {
            Some(i) => self.deliver_identity(ev.ts_ms, i),
            None => Received::First,
        }
    }

    /// The digests of `ev`'s identity and content (`None` when the memory is off).
    pub fn identity(&mut self, ev: &AuditEvent<'_>) -> Option<Identity> {
        if self.settings.horizon_ms <= 0 || self.settings.max_entries == 0 {
            return None;
        }
        let session = ev.session.as_deref().unwrap_or("");
        // Both digests are keyed: nobody can aim an identity at another's, nor make another
        // call's content look like a re-delivery of theirs. Each is one SipHash-1-3 over one
        // buffer, the bytes a streaming hasher would be fed (so stored memories stay valid).
        let content = {
            let b = Digest::start(&mut self.scratch);
            b.text(&ev.agent_id)
                .word(ev.ts_ms as u64)
                .text(&ev.tool_name)
                .word(ev.bytes.map_or(u64::MAX, f64::to_bits))
                .byte(ev.outcome.map_or(0xff, |o| o as u8))
                .text(session)
                .finish(self.key)
        };
        let id = if ev.event_id.is_empty() {
            content
        } else {
            Digest::start(&mut self.scratch)
                .byte(ev.format as u8)
                .text(&ev.agent_id)
                .text(session)
                .text(&ev.event_id)
                .finish(self.key)
        };
        // 0 marks an empty place in the table.
        Some(Identity {
            id: id.max(1),
            content,
        })
    }

    /// Announces the memory that checking identity `i` reads (see [`crate::prefetch`]).
    pub fn prefetch(&self, i: &Identity) {
        self.table.prefetch(i.id);
    }

    /// Checks an identity (of an event at `ts`) against the memory and remembers it.
    pub fn deliver_identity(&mut self, ts: i64, i: Identity) -> Received {
        let first_kept = self.total - self.order.len() as u64;
        let at = match self.table.find(i.id, first_kept) {
            Ok(pos) => {
                let kept = &self.order[(pos - first_kept) as usize];
                return if kept.content == i.content {
                    Received::Duplicate
                } else {
                    Received::Conflict
                };
            }
            Err(at) => at,
        };
        // New, or forgotten already: remembered (again) at the next position.
        self.table.put(at, i.id, self.total);
        self.latest = self.latest.max(ts);
        self.order.push_back(SeenEntry {
            ts,
            id: i.id,
            content: i.content,
        });
        self.total += 1;
        self.forget();
        if self.table.crowded() {
            self.rebuild();
        }
        Received::First
    }

    /// Forgets the identities beyond the horizon or the cap, oldest first (their places in the
    /// table are taken again later, or cleared by the next rebuild).
    fn forget(&mut self) {
        let cutoff = self.latest.saturating_sub(self.settings.horizon_ms);
        while let Some(front) = self.order.front() {
            if front.ts >= cutoff && self.order.len() <= self.settings.max_entries {
                break;
            }
            self.order.pop_front();
        }
    }

    /// A table sized for the identities kept, holding them.
    /// (In place when the table's size still fits: a steady stream allocates nothing.)
    fn rebuild(&mut self) {
        let first_kept = self.total - self.order.len() as u64;
        self.table.reset_for(self.order.len());
        for (k, e) in self.order.iter().enumerate() {
            if let Err(at) = self.table.find(e.id, first_kept) {
                self.table.put(at, e.id, first_kept + k as u64);
            }
        }
    }

    /// The identities added since the previous call and the stored chunks now wholly forgotten
    /// (for the checkpoint).
    pub fn take_changes(&mut self) -> SeenChanges {
        // Those added since and still kept (one forgotten already needs no storing).
        let first_kept = self.total - self.order.len() as u64;
        let start = self.taken.max(first_kept);
        let added: Vec<SeenEntry> = self
            .order
            .range((start - first_kept) as usize..)
            .copied()
            .collect();
        self.taken = self.total;
        if !added.is_empty() {
            self.chunks.push_back(start);
        }
        // A chunk is forgotten when the next one starts at or before the oldest identity kept.
        let mut forgotten_chunks = Vec::new();
        while self.chunks.len() > 1 && self.chunks[1] <= first_kept {
            if let Some(c) = self.chunks.pop_front() {
                forgotten_chunks.push(c);
            }
        }
        if self.order.is_empty() {
            forgotten_chunks.extend(self.chunks.drain(..));
        }
        SeenChanges {
            start,
            added,
            forgotten_chunks,
        }
    }

    /// Rebuilds the stored form from chunks read back (`(start, identities)`, in any order) and
    /// the memory's figures (see [`SeenSnapshot::figures`]).
    pub fn from_chunks(
        figures: SeenFigures,
        mut chunks: Vec<(u64, Vec<SeenEntry>)>,
    ) -> SeenSnapshot {
        chunks.sort_by_key(|c| c.0);
        let kept = usize::try_from(figures.kept).unwrap_or(usize::MAX);
        let starts = chunks.iter().map(|c| c.0).collect();
        let mut entries: Vec<SeenEntry> = chunks.into_iter().flat_map(|c| c.1).collect();
        entries.drain(..entries.len().saturating_sub(kept));
        SeenSnapshot {
            key: figures.key,
            total: figures.total,
            entries,
            chunks: starts,
            latest: figures.latest,
        }
    }
}

/// The digests that identify an event to the memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// Keyed digest of its identity (never 0).
    id: u64,
    /// Digest of its content.
    content: u64,
}

/// The bytes of one keyed digest, gathered in a reused buffer.
struct Digest<'a>(&'a mut Vec<u8>);

impl<'a> Digest<'a> {
    /// Starts a digest in `buf` (emptied).
    fn start(buf: &'a mut Vec<u8>) -> Digest<'a> {
        buf.clear();
        Digest(buf)
    }

    /// One byte.
    fn byte(self, b: u8) -> Self {
        self.0.push(b);
        self
    }

    /// One 64-bit word (little-endian).
    fn word(self, w: u64) -> Self {
        self.0.extend_from_slice(&w.to_le_bytes());
        self
    }

    /// A string with its length first, so that adjacent fields cannot run into each other.
    fn text(self, s: &str) -> Self {
        self.0.extend_from_slice(&(s.len() as u64).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self
    }

    /// SipHash-1-3 of the bytes under `key`.
    fn finish(self, key: [u64; 2]) -> u64 {
        let mut h = SipHasher13::new_with_keys(key[0], key[1]);
        h.write(self.0);
        h.finish()
    }
}

/// Where each kept identity is: open addressing with linear probing, two 8-byte words a place
/// (the identity digest, 0 for a place never taken, and the position of the identity in the
/// order of arrival). A place whose position is before the oldest identity kept is forgotten
/// and taken again by the next identity probing past it; the table is rebuilt when three
/// quarters of its places have been taken. Checking an identity reads one place (and its
/// neighbours on a collision), which the engine fetches ahead of use.
#[derive(Debug, Clone)]
struct Table {
    places: Vec<[u64; 2]>,
    /// Places ever taken since the table was built.
    taken: usize,
}

impl Table {
    /// A table with room for `n` identities and as many more.
    fn with_room_for(n: usize) -> Table {
        Table {
            places: vec![[0, 0]; Table::size_for(n)],
            taken: 0,
        }
    }

    /// Places for `n` identities and as many more (a power of two).
    fn size_for(n: usize) -> usize {
        (2 * n + 1).next_power_of_two().max(1024)
    }

    /// Empties the table and gives it room for `n` identities: the same places when they are
    /// enough and not more than eight times too many, else new ones.
    fn reset_for(&mut self, n: usize) {
        let size = Table::size_for(n);
        if size > self.places.len() || self.places.len() > 8 * size {
            self.places = vec![[0, 0]; size];
        } else {
            self.places.fill([0, 0]);
        }
        self.taken = 0;
    }

    fn home(&self, id: u64) -> usize {
        (id as usize) & (self.places.len() - 1)
    }

    fn prefetch(&self, id: u64) {
        crate::prefetch::line(&self.places[self.home(id)]);
    }

    /// The position of identity `id` if it is kept (`Ok`), else the place to put it at.
    fn find(&self, id: u64, first_kept: u64) -> Result<u64, usize> {
        let mask = self.places.len() - 1;
        let mut i = self.home(id);
        let mut free = None;
        loop {
            let [pid, pos] = self.places[i];
            if pid == 0 {
                return Err(free.unwrap_or(i));
            }
            if pid == id {
                return if pos >= first_kept {
                    Ok(pos)
                } else {
                    Err(free.unwrap_or(i))
                };
            }
            if pos < first_kept && free.is_none() {
                free = Some(i);
            }
            i = (i + 1) & mask;
        }
    }

    /// Puts identity `id` at position `pos` at place `at` (from [`Table::find`]).
    fn put(&mut self, at: usize, id: u64, pos: u64) {
        if self.places[at][0] == 0 {
            self.taken += 1;
        }
        self.places[at] = [id, pos];
    }

    /// Whether three quarters of its places have been taken.
    fn crowded(&self) -> bool {
        4 * self.taken >= 3 * self.places.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Format;

    fn ev<'a>(id: &'a str, agent: &'a str, ts: i64, bytes: f64) -> AuditEvent<'a> {
        AuditEvent {
            bytes: Some(bytes),
            ..AuditEvent::tool_call(agent, id, ts, "export")
        }
    }

    fn settings(horizon_ms: i64, max_entries: usize) -> SeenSettings {
        SeenSettings {
            horizon_ms,
            max_entries,
        }
    }

    #[test]
    fn the_same_identity_and_content_is_a_duplicate_other_content_a_conflict() {
        let mut s = Seen::new(SeenSettings::default(), [1, 2]);
        assert_eq!(s.deliver(&ev("e1", "a", 1000, 30e6)), Received::First);
        assert_eq!(s.deliver(&ev("e1", "a", 1000, 30e6)), Received::Duplicate);
        assert_eq!(s.deliver(&ev("e1", "a", 1000, 5.0)), Received::Conflict);
        // The same id for another agent is another event.
        assert_eq!(s.deliver(&ev("e1", "b", 1000, 30e6)), Received::First);
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn the_digests_are_those_a_streaming_hasher_gives_so_stored_memories_stay_valid() {
        let key = [7, 11];
        let mut e = ev("e1", "agent-a", 1_000, 30e6);
        e.session = Some("s-1".into());
        let mut s = Seen::new(SeenSettings::default(), key);
        let i = s.identity(&e).expect("memory on");
        let text = |h: &mut SipHasher13, t: &str| {
            h.write_usize(t.len());
            h.write(t.as_bytes());
        };
        let mut h = SipHasher13::new_with_keys(key[0], key[1]);
        text(&mut h, "agent-a");
        h.write_i64(1_000);
        text(&mut h, "export");
        h.write_u64(30e6f64.to_bits());
        h.write_u8(0xff);
        text(&mut h, "s-1");
        assert_eq!(i.content, h.finish());
        let mut h = SipHasher13::new_with_keys(key[0], key[1]);
        h.write_u8(Format::AgentSpm as u8);
        text(&mut h, "agent-a");
        text(&mut h, "s-1");
        text(&mut h, "e1");
        assert_eq!(i.id, h.finish().max(1));
        // Without an id, the content is the identity.
        e.event_id = "".into();
        let j = s.identity(&e).expect("memory on");
        assert_eq!((j.id, j.content), (i.content.max(1), i.content));
    }

    #[test]
    fn a_call_of_another_tool_under_a_delivered_id_is_a_conflict_not_a_duplicate() {
        let mut s = Seen::new(SeenSettings::default(), [3, 4]);
        let a = ev("e1", "a", 1000, 10.0);
        let mut b = a.clone();
        b.tool_name = "payments.transfer".into();
        assert_eq!(s.deliver(&a), Received::First);
        assert_eq!(s.deliver(&b), Received::Conflict);
        assert_eq!(s.deliver(&a), Received::Duplicate);
    }

    #[test]
    fn the_table_answers_as_a_plain_map_of_the_kept_identities_through_forgetting_and_rebuilds() {
        use std::collections::{HashMap, VecDeque};
        let (horizon, cap) = (5_000i64, 700usize);
        let mut s = Seen::new(settings(horizon, cap), [5, 6]);
        // The reference: the kept (id, content) pairs in arrival order.
        let mut kept: VecDeque<(String, i64, u64)> = VecDeque::new();
        let mut latest = i64::MIN;
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for n in 0..60_000i64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Ids drawn from a pool so that a share of them come again, some with other bytes.
            let id = format!("e{}", x % 3_000);
            let ts = n / 4 - (x % 8) as i64;
            let bytes = (x >> 40) % 2;
            let e = ev(&id, "a", ts, bytes as f64);
            let expected = match kept.iter().find(|(k, _, _)| *k == id) {
                Some((_, t, b)) if *t == ts && *b == bytes => Received::Duplicate,
                Some(_) => Received::Conflict,
                None => {
                    latest = latest.max(ts);
                    kept.push_back((id.clone(), ts, bytes));
                    while let Some((_, t, _)) = kept.front() {
                        if *t >= latest - horizon && kept.len() <= cap {
                            break;
                        }
                        kept.pop_front();
                    }
                    Received::First
                }
            };
            assert_eq!(s.deliver(&e), expected, "delivery {n} of {id}");
            assert_eq!(s.len(), kept.len(), "after delivery {n}");
        }
        let distinct: HashMap<&str, ()> = kept.iter().map(|(k, _, _)| (k.as_str(), ())).collect();
        assert_eq!(distinct.len(), kept.len());
    }

    #[test]
    fn records_without_an_id_are_told_apart_by_their_content() {
        let mut s = Seen::new(SeenSettings::default(), [1, 2]);
        assert_eq!(s.deliver(&ev("", "a", 1000, 10.0)), Received::First);
        assert_eq!(s.deliver(&ev("", "a", 1001, 10.0)), Received::First);
        assert_eq!(s.deliver(&ev("", "a", 1000, 10.0)), Received::Duplicate);
    }

    #[test]
    fn identities_are_forgotten_beyond_the_horizon_and_the_cap() {
        let mut s = Seen::new(settings(60_000, 3), [1, 2]);
        s.deliver(&ev("e1", "a", 0, 1.0));
        s.deliver(&ev("e2", "a", 10_000, 1.0));
        s.deliver(&ev("e3", "a", 70_000, 1.0)); // e1 is now beyond the horizon
        assert_eq!(s.len(), 2);
        assert_eq!(s.deliver(&ev("e1", "a", 0, 1.0)), Received::First);
        // The cap: e2 (the oldest) goes.
        s.deliver(&ev("e4", "a", 70_001, 1.0));
        assert_eq!(s.len(), 3);
        assert_eq!(s.deliver(&ev("e3", "a", 70_000, 1.0)), Received::Duplicate);
    }

    #[test]
    fn a_restore_from_the_checkpointed_chunks_remembers_the_same_identities() {
        let mut s = Seen::new(settings(60_000, 1_000), [7, 9]);
        let mut stored: Vec<(u64, Vec<SeenEntry>)> = Vec::new();
        for round in 0..5i64 {
            for i in 0..10i64 {
                let id = format!("e{round}-{i}");
                s.deliver(&ev(&id, "a", round * 30_000 + i, 1.0));
            }
            let c = s.take_changes();
            stored.retain(|(start, _)| !c.forgotten_chunks.contains(start));
            stored.push((c.start, c.added));
        }
        assert!(
            stored.len() < 5,
            "chunks wholly beyond the horizon are deleted"
        );
        let snap = Seen::from_chunks(s.snapshot().figures(), stored);
        let mut r = Seen::restore(settings(60_000, 1_000), snap);
        assert_eq!(r, s);
        assert_eq!(
            r.deliver(&ev("e4-3", "a", 120_003, 1.0)),
            Received::Duplicate
        );
        assert_eq!(r.deliver(&ev("e0-3", "a", 3, 1.0)), Received::First);
    }

    #[test]
    fn a_zero_horizon_turns_the_memory_off() {
        let mut s = Seen::new(settings(0, 10), [1, 2]);
        assert_eq!(s.deliver(&ev("e1", "a", 0, 1.0)), Received::First);
        assert_eq!(s.deliver(&ev("e1", "a", 0, 1.0)), Received::First);
        assert!(s.is_empty());
    }
}
