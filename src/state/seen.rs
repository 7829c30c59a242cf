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

use rustc_hash::FxHashMap;
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
pub enum Delivery {
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
    /// Identity digest → content digest, for the identities in `order`.
    by_id: FxHashMap<u64, u64>,
    /// Identities ever added.
    total: u64,
    /// Latest event time folded.
    latest: i64,
    /// Identities ever added when [`Seen::take_changes`] was last called.
    taken: u64,
    /// Start positions of the chunks written (or to be written) for the kept identities.
    chunks: VecDeque<u64>,
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
            by_id: FxHashMap::default(),
            total: 0,
            latest: i64::MIN,
            taken: 0,
            chunks: VecDeque::new(),
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
            s.by_id.insert(e.id, e.content);
            s.order.push_back(e);
        }
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

    fn digest(&self) -> SipHasher13 {
        SipHasher13::new_with_keys(self.key[0], self.key[1])
    }

    /// Checks `ev` (attributed to its agent) against the memory and remembers it.
    pub fn deliver(&mut self, ev: &AuditEvent<'_>) -> Delivery {
        if self.settings.horizon_ms <= 0 || self.settings.max_entries == 0 {
            return Delivery::First;
        }
        let content = {
            let mut h = self.digest();
            write_str(&mut h, &ev.agent_id);
            h.write_i64(ev.ts_ms);
            write_str(&mut h, &ev.tool_name);
            h.write_u64(ev.bytes.map_or(u64::MAX, f64::to_bits));
            h.write_u8(ev.outcome.map_or(0xff, |o| o as u8));
            write_str(&mut h, ev.session.as_deref().unwrap_or(""));
            h.finish()
        };
        let id = if ev.event_id.is_empty() {
            content
        } else {
            let mut h = self.digest();
            h.write_u8(ev.format as u8);
            write_str(&mut h, &ev.agent_id);
            write_str(&mut h, ev.session.as_deref().unwrap_or(""));
            write_str(&mut h, &ev.event_id);
            h.finish()
        };
        if let Some(&c) = self.by_id.get(&id) {
            return if c == content {
                Delivery::Duplicate
            } else {
                Delivery::Conflict
            };
        }
        // Too old to be remembered by now: it cannot be told from a re-delivery either way.
        self.latest = self.latest.max(ev.ts_ms);
        let e = SeenEntry {
            ts: ev.ts_ms,
            id,
            content,
        };
        self.by_id.insert(id, content);
        self.order.push_back(e);
        self.total += 1;
        self.forget();
        Delivery::First
    }

    /// Forgets the identities beyond the horizon or the cap, oldest first.
    fn forget(&mut self) {
        let cutoff = self.latest.saturating_sub(self.settings.horizon_ms);
        while let Some(front) = self.order.front() {
            if front.ts >= cutoff && self.order.len() <= self.settings.max_entries {
                break;
            }
            let id = front.id;
            self.order.pop_front();
            self.by_id.remove(&id);
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

/// Writes a string with its length, so that adjacent fields cannot run into each other.
fn write_str(h: &mut SipHasher13, s: &str) {
    h.write_usize(s.len());
    h.write(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{AgentSource, EntryKind, Format};

    fn ev<'a>(id: &'a str, agent: &'a str, ts: i64, bytes: f64) -> AuditEvent<'a> {
        AuditEvent {
            format: Format::AgentSpm,
            event_id: id.into(),
            ts_ms: ts,
            agent_id: agent.into(),
            tool_name: "export".into(),
            outcome: None,
            environment: None,
            group: None,
            bytes: Some(bytes),
            kind: EntryKind::ToolCall,
            agent_source: AgentSource::Named,
            user: None,
            session: None,
            parent_session: None,
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
        assert_eq!(s.deliver(&ev("e1", "a", 1000, 30e6)), Delivery::First);
        assert_eq!(s.deliver(&ev("e1", "a", 1000, 30e6)), Delivery::Duplicate);
        assert_eq!(s.deliver(&ev("e1", "a", 1000, 5.0)), Delivery::Conflict);
        // The same id for another agent is another event.
        assert_eq!(s.deliver(&ev("e1", "b", 1000, 30e6)), Delivery::First);
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn records_without_an_id_are_told_apart_by_their_content() {
        let mut s = Seen::new(SeenSettings::default(), [1, 2]);
        assert_eq!(s.deliver(&ev("", "a", 1000, 10.0)), Delivery::First);
        assert_eq!(s.deliver(&ev("", "a", 1001, 10.0)), Delivery::First);
        assert_eq!(s.deliver(&ev("", "a", 1000, 10.0)), Delivery::Duplicate);
    }

    #[test]
    fn identities_are_forgotten_beyond_the_horizon_and_the_cap() {
        let mut s = Seen::new(settings(60_000, 3), [1, 2]);
        s.deliver(&ev("e1", "a", 0, 1.0));
        s.deliver(&ev("e2", "a", 10_000, 1.0));
        s.deliver(&ev("e3", "a", 70_000, 1.0)); // e1 is now beyond the horizon
        assert_eq!(s.len(), 2);
        assert_eq!(s.deliver(&ev("e1", "a", 0, 1.0)), Delivery::First);
        // The cap: e2 (the oldest) goes.
        s.deliver(&ev("e4", "a", 70_001, 1.0));
        assert_eq!(s.len(), 3);
        assert_eq!(s.deliver(&ev("e3", "a", 70_000, 1.0)), Delivery::Duplicate);
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
            Delivery::Duplicate
        );
        assert_eq!(r.deliver(&ev("e0-3", "a", 3, 1.0)), Delivery::First);
    }

    #[test]
    fn a_zero_horizon_turns_the_memory_off() {
        let mut s = Seen::new(settings(0, 10), [1, 2]);
        assert_eq!(s.deliver(&ev("e1", "a", 0, 1.0)), Delivery::First);
        assert_eq!(s.deliver(&ev("e1", "a", 0, 1.0)), Delivery::First);
        assert!(s.is_empty());
    }
}
