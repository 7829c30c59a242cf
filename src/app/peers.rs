//! The other instances' posture snapshots, for one fleet view across instances: the posture
//! topic is read (every partition, from [`HORIZON`] back, no consumer group), and the latest
//! snapshot of each other instance that is signed with a key this instance accepts is kept in
//! [`Live::peers`]; the admin API merges them with this instance's own view
//! ([`crate::posture::instances::merge`]).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Headers, Message as _};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::DaemonError;
use crate::posture::instances::{Peer, Snapshot, MAX_SNAPSHOT_BYTES};
use crate::stop::Stop;
use crate::store::{snapshot_signed_by, SIGNATURE_HEADER};
use crate::telemetry::Live;

/// How far back the posture topic is read at start: an instance whose latest snapshot is older
/// is not part of the fleet view.
pub const HORIZON: Duration = Duration::from_secs(24 * 3600);

/// The most other instances kept (beyond it, the one published longest ago is dropped).
const MAX_PEERS: usize = 1_000;

/// How often the posture topic's partitions are looked up again (a topic created later, or
/// partitions added).
const METADATA_EVERY: Duration = Duration::from_secs(30);

/// The posture topic reader.
pub struct PeerReader {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// The user's librdkafka options.
    pub options: BTreeMap<String, String>,
    /// The posture topic.
    pub topic: String,
    /// Keys whose signatures are accepted.
    pub keys: Vec<Vec<u8>>,
    /// This instance's id (its own snapshots are left out).
    pub guardian_id: String,
    /// Where the snapshots go.
    pub live: Arc<Live>,
}

impl PeerReader {
    /// Until `stop`: reads the posture topic into [`Live::peers`].
    pub fn run(self, stop: Stop) -> Result<(), DaemonError> {
        let c: BaseConsumer<crate::kafka::Quiet> = crate::kafka::client_config(
            &self.brokers,
            crate::kafka::ClientRole::Consumer,
            &[
                ("group.id", "guardian-posture-view"),
                ("enable.auto.commit", "false"),
                ("auto.offset.reset", "earliest"),
            ],
            &self.options,
        )
        .create_with_context(crate::kafka::Quiet)?;
        let mut assigned = 0usize;
        let mut looked: Option<Instant> = None;
        while !stop.is_set() {
            if looked.is_none_or(|t| t.elapsed() >= METADATA_EVERY) {
                looked = Some(Instant::now());
                assigned = self.assign_new(&c, assigned);
            }
            if assigned == 0 {
                stop.wait(Duration::from_millis(500));
                continue;
            }
            match c.poll(Duration::from_millis(250)) {
                Some(Ok(m)) => self.take(&m),
                Some(Err(e)) => crate::kafka::quiet_error(&e, "reading the posture topic"),
                None => {}
            }
        }
        Ok(())
    }

    /// Assigns the posture topic's partitions beyond the first `assigned`, each from
    /// [`HORIZON`] back; returns how many are assigned now.
    fn assign_new(&self, c: &BaseConsumer<crate::kafka::Quiet>, assigned: usize) -> usize {
        let found = match c.fetch_metadata(Some(&self.topic), Duration::from_secs(10)) {
            Ok(md) => md
                .topics()
                .iter()
                .find(|t| t.name() == self.topic && t.error().is_none())
                .map_or(0, |t| t.partitions().len()),
            Err(e) => {
                tracing::warn!(topic = %self.topic, error = %e, "posture topic: no metadata; the fleet view shows this instance only until it is readable");
                return assigned;
            }
        };
        if found <= assigned {
            return assigned;
        }
        let since = chrono::Utc::now().timestamp_millis()
            - i64::try_from(HORIZON.as_millis()).unwrap_or(i64::MAX);
        let mut at = TopicPartitionList::new();
        for p in assigned..found {
            let p = i32::try_from(p).unwrap_or(i32::MAX);
            let _ = at.add_partition_offset(&self.topic, p, Offset::Offset(since));
        }
        // Where the horizon starts, per partition; from the beginning when the broker cannot say.
        let start = c.offsets_for_times(at.clone(), Duration::from_secs(10));
        let mut tpl = TopicPartitionList::new();
        for e in at.elements() {
            let off = start
                .as_ref()
                .ok()
                .and_then(|s| s.find_partition(&self.topic, e.partition()))
                .map(|x| x.offset())
                .filter(|o| matches!(o, Offset::Offset(_) | Offset::End))
                .unwrap_or(Offset::Beginning);
            let _ = tpl.add_partition_offset(&self.topic, e.partition(), off);
        }
        if let Err(e) = c.incremental_assign(&tpl) {
            tracing::warn!(topic = %self.topic, error = %e, "posture topic: cannot read its partitions");
            return assigned;
        }
        tracing::info!(topic = %self.topic, partitions = found, "reading the other instances' posture snapshots");
        found
    }

    /// Takes one record of the posture topic, or counts and logs why not.
    fn take(&self, m: &BorrowedMessage<'_>) {
        match self.check(m) {
            Ok(None) => {}
            Ok(Some(peer)) => {
                self.keep(peer);
                self.live
                    .metrics
                    .peer_snapshots
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(why) => {
                self.live
                    .metrics
                    .peer_snapshots_rejected
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(topic = %self.topic, partition = m.partition(), offset = m.offset(), reason = %why, "posture topic record refused");
            }
        }
    }

    /// The snapshot of another instance a record carries (`None` for this instance's own or one
    /// older than the horizon), or why it is refused.
    fn check(&self, m: &BorrowedMessage<'_>) -> Result<Option<Peer>, String> {
        let payload = m.payload().ok_or("no payload")?;
        if payload.len() > 2 * MAX_SNAPSHOT_BYTES {
            return Err(format!(
                "{} bytes, more than a snapshot takes",
                payload.len()
            ));
        }
        let key = m.key().ok_or("no key")?;
        let sig = m
            .headers()
            .and_then(|h| h.iter().find(|x| x.key == SIGNATURE_HEADER))
            .and_then(|x| x.value)
            .ok_or(format!("no {SIGNATURE_HEADER} header"))?;
        if !self
            .keys
            .iter()
            .any(|k| snapshot_signed_by(k, key, payload, sig))
        {
            return Err("not signed with a key this instance accepts".into());
        }
        let snap: Snapshot =
            serde_json::from_slice(payload).map_err(|e| format!("not a snapshot: {e}"))?;
        if snap.guardian_id.as_bytes() != key {
            return Err("its key is not its guardian_id".into());
        }
        let horizon = i64::try_from(HORIZON.as_millis()).unwrap_or(i64::MAX);
        if snap.guardian_id == self.guardian_id
            || snap.published_at < chrono::Utc::now().timestamp_millis() - horizon
        {
            return Ok(None);
        }
        Peer::new(snap).map(Some)
    }

    /// Keeps `peer` unless a later snapshot of its instance is kept already.
    fn keep(&self, peer: Peer) {
        let Ok(mut peers) = self.live.peers.write() else {
            return;
        };
        let id = peer.snapshot.guardian_id.clone();
        if peers
            .get(&id)
            .is_some_and(|p| p.snapshot.published_at > peer.snapshot.published_at)
        {
            return;
        }
        if !peers.contains_key(&id) && peers.len() >= MAX_PEERS {
            let oldest = peers
                .iter()
                .min_by_key(|(_, p)| p.snapshot.published_at)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                peers.remove(&k);
            }
        }
        peers.insert(id, Arc::new(peer));
    }
}
