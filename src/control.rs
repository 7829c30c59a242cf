//! Control-topic commands (`kill`, `revive`), signed with HMAC-SHA256 so agents and guardians
//! can tell them from forgeries.
//!
//! Layer: uses `response`, `event`.
//!
//! The signature is `hex(HMAC-SHA256(key, canonical))` where `canonical` is the command's JSON
//! object without `signature`, keys sorted, no whitespace (RFC 8785 form; every field is a
//! string, null or an array of strings, except `v`, the format version, a small integer).
//!
//! Format 2 (this one) signs the agent, when the command was issued and when it expires, the
//! id of the key that signed it (so keys can be rotated with two accepted at once) and a nonce.
//! Commands without `v` (format 1, before expiry and key ids) are refused as `old_format`.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::event::{rfc3339_serde, MAX_AGENT_ID_BYTES};
use crate::response::{uuid_string, Incident};

/// What a command asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verb {
    /// Stop the agent.
    Kill,
    /// Let a killed agent act again.
    Revive,
}

/// Who decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// The kill policy of a guardian.
    Auto,
    /// An operator (`guardian kill`, `guardian revive`, the admin API).
    Manual,
}

/// The command format this build writes and accepts.
pub const FORMAT: u32 = 2;

/// How long a command is valid after it is issued unless configured (`command_ttl`).
pub const DEFAULT_TTL_MS: i64 = 24 * 3_600_000;

/// A command on the control topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    /// Format version ([`FORMAT`]); absent (0) in format-1 commands.
    #[serde(default)]
    pub v: u32,
    /// `kill` or `revive`.
    pub command: Verb,
    /// Deterministic id: the same decision always has the same id, so receivers can dedupe.
    pub command_id: String,
    /// The agent.
    pub agent_id: String,
    /// Why, for people.
    pub reason: String,
    /// Incidents behind the decision (empty for manual commands).
    pub incident_ids: Vec<String>,
    /// When it was decided (RFC 3339): the event time of the deciding event for automatic kills.
    #[serde(with = "rfc3339_serde")]
    pub issued_at: i64,
    /// When it stops being valid (RFC 3339): refused by the daemon, and by agents, after it.
    #[serde(default, with = "rfc3339_serde")]
    pub expires_at: i64,
    /// Which key signed it: [`key_id`] of the key.
    #[serde(default)]
    pub key_id: String,
    /// Makes every command unique: random for operator commands, the deciding incident's id
    /// for automatic kills.
    #[serde(default)]
    pub nonce: String,
    /// The guardian instance or operator tool that issued it.
    pub guardian_id: String,
    /// Blueprint in force for the agent, if known.
    pub blueprint: Option<String>,
    /// Automatic or manual.
    pub origin: Origin,
    /// `hex(HMAC-SHA256(key, canonical form))`.
    #[serde(default)]
    pub signature: String,
}

/// Longest reason an operator's command may carry (bytes): a sentence or a ticket reference,
/// far below the control topic's message size.
pub const MAX_REASON_BYTES: usize = 4096;

/// Why an operator's request for a command is refused before anything is signed or sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The agent id is empty or too long (its length in bytes).
    #[error("agent id must have 1 to {MAX_AGENT_ID_BYTES} bytes (it has {0})")]
    AgentId(usize),
    /// The reason is too long (its length in bytes).
    #[error("reason has {0} bytes, more than {MAX_REASON_BYTES}")]
    ReasonTooLong(usize),
}

/// Why a control message was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejection {
    /// Not a command object.
    #[error("malformed command: {0}")]
    Malformed(String),
    /// No signature.
    #[error("unsigned command")]
    Unsigned,
    /// Signature does not match (or is not 64 lower-case hex digits, its only form).
    #[error("bad signature")]
    BadSignature,
    /// The message's Kafka key names another agent than the command.
    #[error("the message key {key:?} names another agent than the command")]
    KeyMismatch {
        /// The key (a bounded prefix).
        key: String,
    },
    /// Issued further ahead of the reader's clock than allowed.
    #[error("issued at {0}, ahead of the clock")]
    FromTheFuture(String),
    /// A command of another format than this build's (format 1 has no expiry and no key id).
    #[error("command format {0} is not accepted: this version reads format {FORMAT}, which signs an expiry and a key id; issue it again")]
    OldFormat(u32),
    /// Signed with a key this reader does not hold (bounded prefix of the id).
    #[error("signed with unknown key id {0:?}")]
    UnknownKey(String),
    /// Read after its expiry.
    #[error("expired at {0}")]
    Expired(String),
    /// Issued before the last command applied to the agent: a replay or an out-of-order copy.
    #[error("issued at {issued}, before the last command applied to the agent ({last})")]
    Stale {
        /// When this command was issued.
        issued: String,
        /// When the agent's last applied command was issued.
        last: String,
    },
}

/// The kinds of [`Rejection`], as metric labels, in [`Rejection::kind`] order.
pub const REJECTION_KINDS: [&str; 9] = [
    "malformed",
    "unsigned",
    "bad_signature",
    "key_mismatch",
    "from_the_future",
    "old_format",
    "unknown_key",
    "expired",
    "stale",
];

impl Rejection {
    /// A stable label for metrics (one of [`REJECTION_KINDS`]).
    pub fn kind(&self) -> &'static str {
        let i = match self {
            Rejection::Malformed(_) => 0,
            Rejection::Unsigned => 1,
            Rejection::BadSignature => 2,
            Rejection::KeyMismatch { .. } => 3,
            Rejection::FromTheFuture(_) => 4,
            Rejection::OldFormat(_) => 5,
            Rejection::UnknownKey(_) => 6,
            Rejection::Expired(_) => 7,
            Rejection::Stale { .. } => 8,
        };
        REJECTION_KINDS[i]
    }
}

/// A rejected control message: why, and the agent it named if it could be read.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// Why.
    pub why: Rejection,
    /// The agent of the command, when it parsed.
    pub agent_id: Option<String>,
}

type HmacSha256 = Hmac<Sha256>;

impl Command {
    /// The kill command for an automatic kill incident, valid [`DEFAULT_TTL_MS`] after the
    /// deciding event (see [`Command::valid_for`]).
    pub fn for_kill(incident: &Incident, guardian_id: &str) -> Command {
        Command {
            v: FORMAT,
            expires_at: incident.at.saturating_add(DEFAULT_TTL_MS),
            key_id: String::new(),
            nonce: incident.incident_id.clone(),
            command: Verb::Kill,
            command_id: command_id(&[b"auto-kill", incident.incident_id.as_bytes()]),
            agent_id: incident.agent_id.clone(),
            reason: incident.description.clone(),
            incident_ids: vec![incident.incident_id.clone()],
            issued_at: incident.at,
            guardian_id: guardian_id.to_string(),
            blueprint: Some(incident.blueprint.clone()),
            origin: Origin::Auto,
            signature: String::new(),
        }
    }

    /// Checks what an operator asks for before it is signed: an agent id of 1 to
    /// [`MAX_AGENT_ID_BYTES`] bytes (as an audit event's) and a reason of at most
    /// [`MAX_REASON_BYTES`].
    pub fn check_request(agent_id: &str, reason: &str) -> Result<(), RequestError> {
        if agent_id.is_empty() || agent_id.len() > MAX_AGENT_ID_BYTES {
            return Err(RequestError::AgentId(agent_id.len()));
        }
        if reason.len() > MAX_REASON_BYTES {
            return Err(RequestError::ReasonTooLong(reason.len()));
        }
        Ok(())
    }

    /// An operator's command issued at `at` (ms), with a fresh random nonce, valid
    /// [`DEFAULT_TTL_MS`] (see [`Command::valid_for`]).
    pub fn manual(verb: Verb, agent_id: &str, reason: &str, at: i64, issuer: &str) -> Command {
        let verb_name: &[u8] = match verb {
            Verb::Kill => b"kill",
            Verb::Revive => b"revive",
        };
        let nonce = hex::encode(rand::random::<[u8; 16]>());
        Command {
            v: FORMAT,
            expires_at: at.saturating_add(DEFAULT_TTL_MS),
            key_id: String::new(),
            command_id: command_id(&[
                b"manual",
                verb_name,
                agent_id.as_bytes(),
                &at.to_le_bytes(),
                reason.as_bytes(),
                nonce.as_bytes(),
            ]),
            nonce,
            command: verb,
            agent_id: agent_id.to_string(),
            reason: reason.to_string(),
            incident_ids: Vec::new(),
            issued_at: at,
            guardian_id: issuer.to_string(),
            blueprint: None,
            origin: Origin::Manual,
            signature: String::new(),
        }
    }

    /// The canonical bytes that are signed: the command's JSON object without `signature`, keys
    /// sorted. An encoding failure is an error, never an empty form that every command shares.
    pub fn canonical(&self) -> Result<Vec<u8>, serde_json::Error> {
        let v = serde_json::to_value(self)?;
        let serde_json::Value::Object(m) = v else {
            return Err(serde::ser::Error::custom("a command is not a JSON object"));
        };
        let sorted: BTreeMap<String, serde_json::Value> =
            m.into_iter().filter(|(k, _)| k != "signature").collect();
        serde_json::to_vec(&sorted)
    }

    fn mac(&self, key: &[u8]) -> Result<HmacSha256, serde_json::Error> {
        // HMAC accepts keys of any length.
        let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
        mac.update(&self.canonical()?);
        Ok(mac)
    }

    /// Valid for `ttl_ms` from `now` or from its issue, whichever is later (an automatic kill
    /// decided on a late event still reaches its agent).
    pub fn valid_for(mut self, now: i64, ttl_ms: i64) -> Command {
        self.expires_at = self.issued_at.max(now).saturating_add(ttl_ms);
        self
    }

    /// Sets `key_id` and `signature`.
    pub fn sign(mut self, key: &[u8]) -> Result<Command, serde_json::Error> {
        self.key_id = key_id(key);
        self.signature = hex::encode(self.mac(key)?.finalize().into_bytes());
        Ok(self)
    }

    /// Checks the format and the signature (constant time) with the key of `key_id` among
    /// `keys` (the signing key and those still accepted during a rotation).
    pub fn verify<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<(), Rejection> {
        if self.v != FORMAT {
            return Err(Rejection::OldFormat(self.v.max(1)));
        }
        if self.signature.is_empty() {
            return Err(Rejection::Unsigned);
        }
        let Some(key) = keys
            .iter()
            .map(AsRef::as_ref)
            .find(|k| key_id(k) == self.key_id)
        else {
            let mut end = self.key_id.len().min(64);
            while !self.key_id.is_char_boundary(end) {
                end -= 1;
            }
            return Err(Rejection::UnknownKey(self.key_id[..end].to_string()));
        };
        // One form only: 64 lower-case hex digits (an upper-case copy is another message).
        let canonical = self.signature.len() == 64
            && self
                .signature
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !canonical {
            return Err(Rejection::BadSignature);
        }
        let sig = hex::decode(&self.signature).map_err(|_| Rejection::BadSignature)?;
        self.mac(key)
            .map_err(|e| Rejection::Malformed(e.to_string()))?
            .verify_slice(&sig)
            .map_err(|_| Rejection::BadSignature)
    }

    /// Parses and verifies a control-topic payload (see [`Command::verify`]).
    pub fn parse_verified<K: AsRef<[u8]>>(payload: &[u8], keys: &[K]) -> Result<Command, Rejected> {
        let c: Command = serde_json::from_slice(payload).map_err(|e| Rejected {
            // The parser may quote the input (an unknown field's name): bounded, as every output
            // derived from input.
            why: Rejection::Malformed(crate::event::bounded(e.to_string())),
            agent_id: None,
        })?;
        match c.verify(keys) {
            Ok(()) => Ok(c),
            Err(why) => Err(Rejected {
                why,
                agent_id: Some(c.agent_id),
            }),
        }
    }

    /// The JSON payload.
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }
}

/// The id of a signing key: the first 16 hex digits of its SHA-256, so agents holding the key
/// compute it too, and the id tells nothing usable about the key.
pub fn key_id(key: &[u8]) -> String {
    let mut h = hex::encode(Sha256::digest(key));
    h.truncate(16);
    h
}

/// A deterministic UUID-shaped id from length-prefixed parts.
pub fn command_id(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    uuid_string(&h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"test-key-0123456789";

    #[test]
    fn an_operator_request_needs_an_agent_id_of_an_event_s_size_and_a_bounded_reason() {
        assert_eq!(Command::check_request("fin-1", "stop"), Ok(()));
        assert_eq!(
            Command::check_request("", "stop"),
            Err(RequestError::AgentId(0))
        );
        let long = "a".repeat(MAX_AGENT_ID_BYTES + 1);
        assert_eq!(
            Command::check_request(&long, "stop"),
            Err(RequestError::AgentId(MAX_AGENT_ID_BYTES + 1))
        );
        assert_eq!(
            Command::check_request(&long[1..], &"r".repeat(MAX_REASON_BYTES)),
            Ok(())
        );
        assert_eq!(
            Command::check_request("fin-1", &"r".repeat(MAX_REASON_BYTES + 1)),
            Err(RequestError::ReasonTooLong(MAX_REASON_BYTES + 1))
        );
    }

    #[test]
    fn signed_commands_verify_and_tampering_is_detected() {
        let c = Command::manual(Verb::Kill, "fin-1", "stop", 1_772_000_000_000, "ops")
            .sign(KEY)
            .unwrap();
        assert_eq!(c.verify(&[KEY]), Ok(()));
        let parsed = Command::parse_verified(&c.to_json().unwrap(), &[KEY]).unwrap();
        assert_eq!(parsed, c);
        let mut t = c.clone();
        t.agent_id = "fin-2".into();
        assert_eq!(t.verify(&[KEY]), Err(Rejection::BadSignature));
        for field in ["expires_at", "nonce", "key_id", "issued_at"] {
            let mut v = serde_json::to_value(&c).unwrap();
            v[field] = "2099-01-01T00:00:00.000Z".into();
            let json = serde_json::to_vec(&v).unwrap();
            assert!(
                Command::parse_verified(&json, &[KEY]).is_err(),
                "{field} is signed"
            );
        }
        let other: &[u8] = b"another-key-000000";
        assert_eq!(c.verify(&[other]), Err(Rejection::UnknownKey(key_id(KEY))));
        let mut lying = c.clone();
        lying.key_id = key_id(other);
        assert_eq!(lying.verify(&[KEY, other]), Err(Rejection::BadSignature));
        let mut upper = c.clone();
        upper.signature = upper.signature.to_uppercase();
        assert_eq!(upper.verify(&[KEY]), Err(Rejection::BadSignature));
        let mut u = c.clone();
        u.signature.clear();
        assert_eq!(u.verify(&[KEY]), Err(Rejection::Unsigned));
        assert!(matches!(
            Command::parse_verified(b"{\"command\":\"kill\"}", &[KEY]),
            Err(Rejected {
                why: Rejection::Malformed(_),
                agent_id: None
            })
        ));
    }

    #[test]
    fn keys_rotate_with_two_accepted_at_once() {
        let (old, new): (&[u8], &[u8]) = (b"old-key-0123456789", b"new-key-0123456789");
        let by_old = Command::manual(Verb::Kill, "a", "r", 1, "ops")
            .sign(old)
            .unwrap();
        let by_new = Command::manual(Verb::Kill, "a", "r", 1, "ops")
            .sign(new)
            .unwrap();
        assert_ne!(by_old.key_id, by_new.key_id);
        assert_eq!(by_old.verify(&[new, old]), Ok(()));
        assert_eq!(by_new.verify(&[new, old]), Ok(()));
        assert!(matches!(
            by_old.verify(&[new]),
            Err(Rejection::UnknownKey(_))
        ));
    }

    #[test]
    fn format_one_commands_and_unknown_fields_are_refused() {
        let c = Command::manual(Verb::Kill, "a", "r", 1, "ops")
            .sign(KEY)
            .unwrap();
        let mut v = serde_json::to_value(&c).unwrap();
        let m = v.as_object_mut().unwrap();
        for k in ["v", "expires_at", "key_id", "nonce"] {
            m.remove(k);
        }
        let old = serde_json::to_vec(&v).unwrap();
        assert_eq!(
            Command::parse_verified(&old, &[KEY]).map_err(|r| r.why),
            Err(Rejection::OldFormat(1))
        );
        let mut v = serde_json::to_value(&c).unwrap();
        v["unsigned_extra"] = "x".into();
        let extra = serde_json::to_vec(&v).unwrap();
        assert!(matches!(
            Command::parse_verified(&extra, &[KEY]).map_err(|r| r.why),
            Err(Rejection::Malformed(_))
        ));
    }

    #[test]
    fn a_rejection_quoting_the_input_is_bounded() {
        let c = Command::manual(Verb::Kill, "a", "r", 1, "ops")
            .sign(KEY)
            .unwrap();
        let mut v = serde_json::to_value(&c).unwrap();
        v[&"k".repeat(100_000)] = "x".into();
        let why = Command::parse_verified(&serde_json::to_vec(&v).unwrap(), &[KEY])
            .unwrap_err()
            .why
            .to_string();
        assert!(
            why.len() < 300 && why.ends_with("bytes)"),
            "{} bytes",
            why.len()
        );
    }

    #[test]
    fn validity_runs_from_the_later_of_issue_and_now() {
        let c = Command::manual(Verb::Kill, "a", "r", 1_000, "ops");
        assert_eq!(c.expires_at, 1_000 + DEFAULT_TTL_MS);
        assert_eq!(c.clone().valid_for(5_000, 10).expires_at, 5_010);
        assert_eq!(c.valid_for(0, 10).expires_at, 1_010);
    }

    #[test]
    fn canonical_form_is_sorted_compact_json_without_signature() {
        let c = Command::manual(Verb::Revive, "a", "ok", 0, "ops")
            .sign(KEY)
            .unwrap();
        let s = String::from_utf8(c.canonical().unwrap()).unwrap();
        assert!(
            s.starts_with("{\"agent_id\":\"a\",\"blueprint\":null,\"command\":\"revive\","),
            "{s}"
        );
        assert!(!s.contains("signature") && !s.contains(' '));
        // An independent HMAC over the documented form gives the same signature.
        let mut mac = HmacSha256::new_from_slice(KEY).unwrap();
        mac.update(s.as_bytes());
        assert_eq!(hex::encode(mac.finalize().into_bytes()), c.signature);
    }

    #[test]
    fn automatic_ids_are_deterministic_and_manual_ones_unique() {
        let a = Command::manual(Verb::Kill, "a", "r", 5, "x");
        let b = Command::manual(Verb::Kill, "a", "r", 5, "x");
        assert_ne!(a.command_id, b.command_id);
        assert_ne!(a.nonce, b.nonce);
        assert_eq!(a.nonce.len(), 32);
    }
}
