//! Control-topic commands (`kill`, `revive`), signed with HMAC-SHA256 so agents and guardians
//! can tell them from forgeries.
//!
//! Layer: uses `response`, `event`.
//!
//! The signature is `hex(HMAC-SHA256(key, canonical))` where `canonical` is the command's JSON
//! object without `signature`, keys sorted, no whitespace (RFC 8785 form; every field is a
//! string, null or an array of strings).

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::event::rfc3339_serde;
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

/// A command on the control topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
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
    /// Issued before the last command applied to the agent: a replay or an out-of-order copy.
    #[error("issued at {issued}, before the last command applied to the agent ({last})")]
    Stale {
        /// When this command was issued.
        issued: String,
        /// When the agent's last applied command was issued.
        last: String,
    },
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
    /// The kill command for an automatic kill incident.
    pub fn for_kill(incident: &Incident, guardian_id: &str) -> Command {
        Command {
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

    /// An operator's command.
    pub fn manual(verb: Verb, agent_id: &str, reason: &str, at: i64, issuer: &str) -> Command {
        let v: &[u8] = match verb {
            Verb::Kill => b"kill",
            Verb::Revive => b"revive",
        };
        Command {
            command: verb,
            command_id: command_id(&[
                b"manual",
                v,
                agent_id.as_bytes(),
                &at.to_le_bytes(),
                reason.as_bytes(),
            ]),
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

    /// Sets `signature`.
    pub fn sign(mut self, key: &[u8]) -> Result<Command, serde_json::Error> {
        self.signature = hex::encode(self.mac(key)?.finalize().into_bytes());
        Ok(self)
    }

    /// Checks the signature (constant time).
    pub fn verify(&self, key: &[u8]) -> Result<(), Rejection> {
        if self.signature.is_empty() {
            return Err(Rejection::Unsigned);
        }
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

    /// Parses and verifies a control-topic payload.
    pub fn parse_verified(payload: &[u8], key: &[u8]) -> Result<Command, Rejected> {
        let c: Command = serde_json::from_slice(payload).map_err(|e| Rejected {
            why: Rejection::Malformed(e.to_string()),
            agent_id: None,
        })?;
        match c.verify(key) {
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
    fn signed_commands_verify_and_tampering_is_detected() {
        let c = Command::manual(Verb::Kill, "fin-1", "stop", 1_772_000_000_000, "ops")
            .sign(KEY)
            .unwrap();
        assert_eq!(c.verify(KEY), Ok(()));
        let parsed = Command::parse_verified(&c.to_json().unwrap(), KEY).unwrap();
        assert_eq!(parsed, c);
        let mut t = c.clone();
        t.agent_id = "fin-2".into();
        assert_eq!(t.verify(KEY), Err(Rejection::BadSignature));
        assert_eq!(
            c.verify(b"another-key-000000"),
            Err(Rejection::BadSignature)
        );
        let mut upper = c.clone();
        upper.signature = upper.signature.to_uppercase();
        assert_eq!(upper.verify(KEY), Err(Rejection::BadSignature));
        let mut u = c.clone();
        u.signature.clear();
        assert_eq!(u.verify(KEY), Err(Rejection::Unsigned));
        assert!(matches!(
            Command::parse_verified(b"{\"command\":\"kill\"}", KEY),
            Err(Rejected {
                why: Rejection::Malformed(_),
                agent_id: None
            })
        ));
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
    fn ids_are_deterministic() {
        let a = Command::manual(Verb::Kill, "a", "r", 5, "x");
        let b = Command::manual(Verb::Kill, "a", "r", 5, "y");
        let c = Command::manual(Verb::Kill, "a", "r", 6, "x");
        assert_eq!(a.command_id, b.command_id);
        assert_ne!(a.command_id, c.command_id);
    }
}
