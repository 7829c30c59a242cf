//! librdkafka clients as the guardian configures them (one builder for consumers and producers,
//! with the user's pass-through options; the one producer of every output, built on it, is
//! `sink::kafka`), a topic's retention settings, and reading a topic back to its end for the demo, the tests and
//! operators' checks.
//!
//! Layer: a leaf; imports nothing of the crate.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;

/// Which kind of client a configuration is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientRole {
    /// A consumer: gets the options prefixed `consumer.` and the unprefixed ones.
    Consumer,
    /// A producer: gets the options prefixed `producer.` and the unprefixed ones.
    Producer,
}

/// A client configuration on `brokers`: the guardian's `settings` for it, then the user's
/// pass-through `options` for `role` (prefix removed; the other role's options left out).
pub fn client_config(
    brokers: &str,
    role: ClientRole,
    settings: &[(&str, &str)],
    options: &BTreeMap<String, String>,
) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    for (k, v) in settings {
        c.set(*k, *v);
    }
    // Unprefixed options first, then this role's, which win over them.
    for (k, v) in options {
        if bare_option(k) == k {
            c.set(k, v);
        }
    }
    for (k, v) in options {
        if let Some(bare) = k.strip_prefix(role.prefix()) {
            c.set(bare, v);
        }
    }
    c
}

impl ClientRole {
    /// The prefix of the options meant for this role only.
    fn prefix(self) -> &'static str {
        match self {
            ClientRole::Consumer => "consumer.",
            ClientRole::Producer => "producer.",
        }
    }
}

/// An option's librdkafka name: `key` without its `consumer.` or `producer.` prefix.
pub fn bare_option(key: &str) -> &str {
    key.strip_prefix("consumer.")
        .or_else(|| key.strip_prefix("producer."))
        .unwrap_or(key)
}

/// The value `role`'s clients get for librdkafka option `key` from the user's `options` (the
/// role's prefixed form wins over the bare one), if the user set it.
pub fn option_for<'a>(
    options: &'a BTreeMap<String, String>,
    role: ClientRole,
    key: &str,
) -> Option<&'a String> {
    options
        .get(&format!("{}{key}", role.prefix()))
        .or_else(|| options.get(key))
}

/// An idempotent producer's configuration (`acks=all`, so every output is written exactly once
/// per send), with the user's options.
pub fn producer_config(brokers: &str, options: &BTreeMap<String, String>) -> ClientConfig {
    client_config(
        brokers,
        ClientRole::Producer,
        &[
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("linger.ms", "2"),
            ("compression.type", "lz4"),
        ],
        options,
    )
}

/// How often one kind of librdkafka complaint (a log line or an error, its numbers aside) is
/// logged: a broker that is down makes librdkafka report it several times a second per client.
pub const COMPLAINT_INTERVAL: Duration = Duration::from_secs(30);

/// librdkafka's complaints by kind: when each was last logged and how many were held back since.
#[derive(Debug, Default)]
pub struct Complaints {
    seen: std::sync::Mutex<std::collections::HashMap<String, (Instant, u64)>>,
}

impl Complaints {
    /// Whether a complaint `message` seen at `now` is logged: the first of its kind (the message
    /// with its digits left out) is, then the next one [`COMPLAINT_INTERVAL`] later, carrying
    /// the count held back in between (`Some(count)`); the others are counted (`None`).
    pub fn admit(&self, message: &str, now: Instant) -> Option<u64> {
        // librdkafka's own repeat note is part of the count, not of the kind.
        let kind: String = message
            .chars()
            .filter(|c| !c.is_ascii_digit() && *c != ',' && !c.is_whitespace())
            .collect::<String>()
            .replace("identicalerror(s)suppressed", "");
        let Ok(mut seen) = self.seen.lock() else {
            return Some(0);
        };
        if seen.len() > 1000 {
            seen.clear(); // many kinds: a flood of distinct messages is still bounded
        }
        match seen.get_mut(&kind) {
            Some((last, held)) if now.duration_since(*last) < COMPLAINT_INTERVAL => {
                *held += 1;
                None
            }
            Some((last, held)) => {
                let n = *held;
                *last = now;
                *held = 0;
                Some(n)
            }
            None => {
                seen.insert(kind, (now, 0));
                Some(0)
            }
        }
    }
}

/// The complaints of every client of this process.
static COMPLAINTS: std::sync::LazyLock<Complaints> = std::sync::LazyLock::new(Complaints::default);

/// librdkafka's log callback for every client context: each kind of line at most once per
/// [`COMPLAINT_INTERVAL`], with the count of the ones held back.
pub fn quiet_log(level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
    use rdkafka::config::RDKafkaLogLevel as L;
    let Some(held_back) = COMPLAINTS.admit(message, Instant::now()) else {
        return;
    };
    match level {
        L::Emerg | L::Alert | L::Critical | L::Error => {
            tracing::error!(target: "librdkafka", fac, held_back, "{message}")
        }
        L::Warning => tracing::warn!(target: "librdkafka", fac, held_back, "{message}"),
        L::Notice | L::Info => tracing::info!(target: "librdkafka", fac, held_back, "{message}"),
        L::Debug => tracing::debug!(target: "librdkafka", fac, held_back, "{message}"),
    }
}

/// librdkafka's error callback for every client context: the end of a partition at debug
/// level (readers wait for it), other errors as [`quiet_log`] does.
pub fn quiet_error(error: &KafkaError, reason: &str) {
    if error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) {
        tracing::debug!(reason, "end of partition");
        return;
    }
    let message = format!("{error}: {reason}");
    if let Some(held_back) = COMPLAINTS.admit(&message, Instant::now()) {
        tracing::error!(target: "librdkafka", held_back, "{message}");
    }
}

/// A client context that only logs quietly (for plain consumers and producers, and topic
/// readers, for which the end of a partition is what they wait for, at debug level).
#[derive(Debug, Default, Clone, Copy)]
pub struct Quiet;

impl ClientContext for Quiet {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        quiet_log(level, fac, message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        quiet_error(&error, reason);
    }
}

impl ConsumerContext for Quiet {}

impl rdkafka::producer::ProducerContext for Quiet {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::producer::DeliveryResult<'_>, _: ()) {}
}

/// How long a topic keeps its records, as its configuration on the broker says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// `cleanup.policy` includes `compact` (the latest record of each key is kept).
    pub compacted: bool,
    /// `cleanup.policy` includes `delete` with this `retention.ms` (-1: unlimited).
    pub deleted_after_ms: Option<i64>,
    /// `message.timestamp.type` is `LogAppendTime` (the broker dates each record).
    pub broker_time: bool,
}

impl Retention {
    /// What an operator must know of this retention for a topic that holds a durable record:
    /// records deleted after a while are lost to a rebuild; producer-set timestamps can be
    /// chosen by whoever writes.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if let Some(ms) = self.deleted_after_ms.filter(|&ms| ms >= 0) {
            w.push(format!(
                "records are deleted after {} (retention.ms={ms}): operator commands older than that are lost to a `state rebuild` or a lost disk; set retention.ms=-1",
                humantime::format_duration(Duration::from_millis(ms as u64))
            ));
        }
        if !self.broker_time {
            w.push("records carry their producer's timestamp (message.timestamp.type=CreateTime): a command's freshness is judged by a time its writer chose; set message.timestamp.type=LogAppendTime".to_string());
        }
        w
    }
}

/// Reads `topic`'s cleanup policy, retention and timestamp type from the broker
/// (DescribeConfigs), within `timeout`.
pub fn topic_retention(
    brokers: &str,
    options: &BTreeMap<String, String>,
    topic: &str,
    timeout: Duration,
) -> Result<Retention, KafkaError> {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    let admin: AdminClient<Quiet> =
        client_config(brokers, ClientRole::Consumer, &[], options).create_with_context(Quiet)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| KafkaError::AdminOpCreation(e.to_string()))?;
    let opts = AdminOptions::new().request_timeout(Some(timeout));
    let specifier = ResourceSpecifier::Topic(topic);
    let results = runtime.block_on(async {
        tokio::time::timeout(timeout, admin.describe_configs([&specifier], &opts))
            .await
            .map_err(|_| KafkaError::AdminOp(RDKafkaErrorCode::OperationTimedOut))?
    })?;
    let resource = results
        .into_iter()
        .next()
        .ok_or(KafkaError::AdminOp(RDKafkaErrorCode::UnknownTopic))?
        .map_err(KafkaError::AdminOp)?;
    let value = |name: &str| resource.get(name).and_then(|e| e.value.clone());
    let policy = value("cleanup.policy").unwrap_or_else(|| "delete".to_string());
    let deleted_after_ms = if policy.contains("delete") {
        Some(
            value("retention.ms")
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(7 * 86_400_000),
        )
    } else {
        None
    };
    Ok(Retention {
        compacted: policy.contains("compact"),
        deleted_after_ms,
        broker_time: value("message.timestamp.type").as_deref() == Some("LogAppendTime"),
    })
}

/// Every message of partition 0 of a topic: (the `guardian.error` header, payload).
pub fn read_all(brokers: &str, topic: &str) -> Vec<(Option<String>, Vec<u8>)> {
    read_to_end(brokers, topic, 1, Duration::from_secs(10))
        .into_iter()
        .map(|m| {
            let reason = m.headers().and_then(|h| {
                h.iter()
                    .find(|x| x.key == "guardian.error")
                    .and_then(|x| x.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            });
            (reason, m.payload().unwrap_or_default().to_vec())
        })
        .collect()
}

/// Every message of partitions `0..partitions` of a topic, read from the beginning until each
/// partition reports its end (or `deadline` passes: then what was read so far).
///
/// The end is the one the broker's fetch responses report, not a watermark query before
/// reading: some Kafka-compatible brokers answer `ListOffsets` (latest) with the start of the
/// newest batch rather than the end of the log, which would cut the reading short.
pub fn read_to_end(
    brokers: &str,
    topic: &str,
    partitions: i32,
    deadline: Duration,
) -> Vec<rdkafka::message::OwnedMessage> {
    let mut out = Vec::new();
    let Ok(c) = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "guardian-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create_with_context::<_, BaseConsumer<Quiet>>(Quiet)
    else {
        return out;
    };
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        if tpl
            .add_partition_offset(topic, p, Offset::Beginning)
            .is_err()
        {
            return out;
        }
    }
    if c.assign(&tpl).is_err() {
        return out;
    }
    let mut at_end = std::collections::BTreeSet::new();
    let until = Instant::now() + deadline;
    while (at_end.len() as i32) < partitions && Instant::now() < until {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => out.push(m.detach()),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod option_tests {
    use super::*;

    /// A role's prefixed option wins over the bare one, whatever their order; the other role's
    /// prefixed option is not its.
    #[test]
    fn a_roles_prefixed_option_wins_and_the_other_roles_is_left_out() {
        let opts: BTreeMap<String, String> = [
            ("message.timeout.ms", "1000"),
            ("producer.message.timeout.ms", "2000"),
            ("consumer.fetch.wait.max.ms", "7"),
            ("zzz.after.prefixes", "1"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let p = client_config("b:1", ClientRole::Producer, &[], &opts);
        assert_eq!(p.get("message.timeout.ms"), Some("2000"));
        assert_eq!(p.get("fetch.wait.max.ms"), None);
        assert_eq!(p.get("zzz.after.prefixes"), Some("1"));
        assert_eq!(
            option_for(&opts, ClientRole::Producer, "message.timeout.ms").map(String::as_str),
            Some("2000")
        );
        assert_eq!(
            option_for(&opts, ClientRole::Consumer, "message.timeout.ms").map(String::as_str),
            Some("1000")
        );
        assert_eq!(
            bare_option("consumer.fetch.wait.max.ms"),
            "fetch.wait.max.ms"
        );
    }
}

#[cfg(test)]
mod complaint_tests {
    use super::*;

    #[test]
    fn a_complaint_is_logged_once_per_interval_with_the_count_held_back() {
        let c = Complaints::default();
        let t0 = Instant::now();
        assert_eq!(c.admit("1/1 brokers are down", t0), Some(0));
        // The same kind, numbers aside, 33 times a second for the rest of the interval.
        for i in 1..=990u64 {
            let msg = format!("{}/1 brokers are down", i % 2);
            assert_eq!(c.admit(&msg, t0 + Duration::from_millis(i * 30)), None);
        }
        assert_eq!(c.admit("another kind", t0), Some(0));
        let note = "refused (after 0ms in state CONNECT)";
        assert_eq!(c.admit(note, t0), Some(0));
        let repeated = "refused (after 0ms in state CONNECT, 1 identical error(s) suppressed)";
        assert_eq!(c.admit(repeated, t0), None);
        assert_eq!(
            c.admit("0/1 brokers are down", t0 + COMPLAINT_INTERVAL),
            Some(990)
        );
        assert_eq!(
            c.admit("1/1 brokers are down", t0 + COMPLAINT_INTERVAL),
            None
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_durable_topic_is_unlimited_or_compacted_and_dated_by_the_broker() {
        let r = |compacted, deleted_after_ms, broker_time| super::Retention {
            compacted,
            deleted_after_ms,
            broker_time,
        };
        assert!(r(false, Some(-1), true).warnings().is_empty());
        assert!(r(true, None, true).warnings().is_empty());
        let week = r(false, Some(604_800_000), true).warnings();
        assert_eq!(week.len(), 1);
        assert!(week[0].contains("7days"), "{week:?}");
        let both = r(true, Some(86_400_000), false).warnings();
        assert_eq!(both.len(), 2, "{both:?}");
        assert!(both[1].contains("LogAppendTime"));
    }

    use super::*;

    #[test]
    fn each_role_gets_its_own_and_the_shared_options() {
        let opts: BTreeMap<String, String> = [
            ("security.protocol", "SSL"),
            ("consumer.fetch.min.bytes", "7"),
            ("producer.linger.ms", "9"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let c = client_config("b:9092", ClientRole::Consumer, &[("group.id", "g")], &opts);
        assert_eq!(c.get("security.protocol"), Some("SSL"));
        assert_eq!(c.get("fetch.min.bytes"), Some("7"));
        assert_eq!(c.get("linger.ms"), None);
        assert_eq!(c.get("group.id"), Some("g"));
        let p = producer_config("b:9092", &opts);
        assert_eq!(p.get("linger.ms"), Some("9"), "the user's option wins");
        assert_eq!(p.get("fetch.min.bytes"), None);
        assert_eq!(p.get("acks"), Some("all"));
        assert_eq!(p.get("bootstrap.servers"), Some("b:9092"));
    }
}
