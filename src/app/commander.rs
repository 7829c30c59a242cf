//! Operator commands onto the control topic (`guardian kill|revive`, the admin API): signed,
//! published, and acknowledged within a deadline or withdrawn.

use std::time::Duration;

use crate::api::PublishError;
use crate::sink::kafka::{KafkaSink, OutputTopics as _, ProduceError};

/// How long an operator command waits for the broker's acknowledgement before it is withdrawn
/// and reported as not published.
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(10);

/// Publishes signed operator commands onto the control topic (`guardian kill|revive`, the
/// admin API), each acknowledged within [`COMMAND_DEADLINE`] or withdrawn.
pub struct Commander {
    sink: std::sync::Mutex<KafkaSink>,
    topic: String,
    key: Vec<u8>,
    issuer: String,
    ttl_ms: i64,
    deadline: Duration,
}

impl Commander {
    /// A commander on the configured brokers; commands name `{who}@{guardian_id}` as issuer.
    pub fn new(cfg: &crate::config::Resolved, who: &str) -> Result<Commander, ProduceError> {
        Ok(Commander {
            sink: std::sync::Mutex::new(KafkaSink::new(
                &cfg.config.kafka.brokers,
                &cfg.kafka_options,
            )?),
            topic: cfg.config.kafka.control_topic.clone(),
            key: cfg.signing_key.clone(),
            ttl_ms: cfg.command_ttl_ms(),
            issuer: format!("{who}@{}", cfg.config.guardian_id),
            deadline: COMMAND_DEADLINE,
        })
    }

    /// The same, waiting at most `deadline` for each acknowledgement.
    pub fn with_deadline(mut self, deadline: Duration) -> Commander {
        self.deadline = deadline;
        self
    }

    /// Signs and publishes a command; returns once the broker acknowledged it.
    pub fn publish(
        &self,
        verb: crate::control::Verb,
        agent: &str,
        reason: &str,
    ) -> Result<crate::control::Command, PublishError> {
        crate::control::Command::check_request(agent, reason)?;
        let now = chrono::Utc::now().timestamp_millis();
        let cmd = crate::control::Command::manual(verb, agent, reason, now, &self.issuer)
            .valid_for(now, self.ttl_ms)
            .sign(&self.key)?;
        let json = cmd.to_json()?;
        let mut sink = self
            .sink
            .lock()
            .map_err(|_| PublishError::Topic("the producer's lock is poisoned".into()))?;
        let topic = |e: ProduceError| PublishError::Topic(Box::new(e));
        sink.send(&self.topic, Some(agent.as_bytes()), &json, None)
            .map_err(topic)?;
        sink.settle_within(self.deadline).map_err(topic)?;
        Ok(cmd)
    }
}

impl crate::api::Commands for Commander {
    fn publish(
        &self,
        verb: crate::control::Verb,
        agent: &str,
        reason: &str,
    ) -> Result<crate::control::Command, PublishError> {
        Commander::publish(self, verb, agent, reason)
    }
}
