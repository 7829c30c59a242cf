//! Daemon configuration (`guardian run --config FILE`): TOML or JSON, secrets from the
//! environment or files, validated as a whole so every error is reported at once.
//!
//! Layer: uses the settings types of `api`, `sink` and `posture`, `blueprint`, `event`, `secret`;
//! never the daemon.

use crate::secret::Secret;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::blueprint::BlueprintSet;

/// Kafka connection and topics.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Consumer group of the guardian instances.
    pub group_id: String,
    /// Topics of audit events.
    pub audit_topics: Vec<String>,
    /// Topic of incidents (JSON).
    pub incidents_topic: String,
    /// Topic of kill and revive commands (written and read).
    pub control_topic: String,
    /// Topic of malformed events, with the reason in headers.
    pub dead_letter_topic: String,
    /// Compacted topic of the partitions' state changes (one partition per audit partition),
    /// written with each checkpoint and read by an instance taking a partition over without
    /// local state; none: such a partition is replayed from its retained history.
    pub changelog_topic: Option<String>,
    /// librdkafka options passed through unchanged (TLS, SASL, timeouts…); values that name
    /// secrets (`sasl.password`, `ssl.key.password`) may be `{ env = … }` or `{ file = … }`.
    pub options: BTreeMap<String, Secret>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            group_id: "agent-guardian".into(),
            audit_topics: vec!["agent-audit".into()],
            incidents_topic: "guardian-incidents".into(),
            control_topic: "guardian-control".into(),
            dead_letter_topic: "guardian-dead-letter".into(),
            changelog_topic: None,
            options: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    /// The topics the guardian writes, with their setting's name.
    fn output_topics(&self) -> [(&'static str, &String); 3] {
        [
            ("incidents_topic", &self.incidents_topic),
            ("control_topic", &self.control_topic),
            ("dead_letter_topic", &self.dead_letter_topic),
        ]
    }

    /// Checks the brokers, the group and the topics: none empty, no output topic read as an
    /// audit topic.
    fn check_topics(&self, errors: &mut Vec<String>) {
        if self.brokers.trim().is_empty() {
            errors.push("kafka.brokers: empty".into());
        }
        if self.group_id.trim().is_empty() {
            errors.push("kafka.group_id: empty".into());
        }
        if self.audit_topics.is_empty() || self.audit_topics.iter().any(|t| t.trim().is_empty()) {
            errors.push("kafka.audit_topics: needs at least one non-empty topic".into());
        }
        for (name, t) in self.output_topics() {
            if t.trim().is_empty() {
                errors.push(format!("kafka.{name}: empty"));
            } else if self.audit_topics.contains(t) {
                errors.push(format!("kafka.{name}: {t:?} is also an audit topic"));
            }
        }
        if let Some(c) = &self.changelog_topic {
            if c.trim().is_empty() {
                errors.push("kafka.changelog_topic: empty (leave it out to have none)".into());
            } else if self.audit_topics.contains(c) {
                errors.push(format!(
                    "kafka.changelog_topic: {c:?} is also an audit topic"
                ));
            } else if let Some((name, _)) = self.output_topics().into_iter().find(|(_, t)| *t == c)
            {
                errors.push(format!("kafka.changelog_topic: {c:?} is also kafka.{name}"));
            }
        }
    }

    /// The librdkafka options with their secrets resolved; refuses those the guardian sets
    /// itself, and any librdkafka does not take.
    fn resolve_options(&self, errors: &mut Vec<String>) -> BTreeMap<String, String> {
        let mut options = BTreeMap::new();
        for (key, v) in &self.options {
            match v.resolve() {
                Ok(v) => {
                    options.insert(key.clone(), v);
                }
                Err(e) => errors.push(format!("kafka.options.{key}: {e}")),
            }
        }
        for key in self.options.keys() {
            let bare = crate::kafka::bare_option(key);
            if let Some((_, why)) = RESERVED_OPTIONS.iter().find(|(k, _)| *k == bare) {
                errors.push(format!("kafka.options.{key}: set by the guardian ({why})"));
            }
        }
        // Each option as librdkafka itself takes it (an unknown name or a value of the wrong
        // kind is refused here, not at the first connection).
        for (key, value) in &options {
            let bare = crate::kafka::bare_option(key);
            let mut one = rdkafka::config::ClientConfig::new();
            one.set(bare, value);
            if let Err(e) = one.create_native_config() {
                errors.push(format!("kafka.options.{key}: {e}"));
            }
        }
        options
    }
}

/// What a partition with no local state replays silently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backfill {
    /// Learn from the retained history without emitting anything for it (default).
    Silent,
    /// Emit incidents and kill commands for history no instance has processed yet.
    Emit,
}

/// The whole daemon configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This instance's name in commands and logs (default: the host name).
    pub guardian_id: String,
    /// Kafka.
    pub kafka: KafkaConfig,
    /// Directory of the sled state.
    pub state_dir: PathBuf,
    /// Blueprint directory (default: the shipped blueprints).
    pub blueprints_dir: Option<PathBuf>,
    /// Assignment file of agents to blueprints.
    pub assignment: Option<PathBuf>,
    /// HMAC-SHA256 key for control commands.
    pub signing_key: Option<Secret>,
    /// Keys whose commands are still accepted during a rotation (commands name their key by
    /// `key_id`); only `signing_key` signs.
    pub previous_signing_keys: Vec<Secret>,
    /// How long a control command is valid after it is issued, e.g. "24h": the daemon refuses
    /// commands read after their `expires_at`, and agents should too.
    pub command_ttl: String,
    /// JSON pointer of a call's data volume.
    pub volume_pointer: String,
    /// Largest accepted event in bytes.
    pub max_event_bytes: usize,
    /// Agents kept per audit partition at most: a call of a further new agent is dead-lettered
    /// as `agent_cap` (an agent-id flood cannot fill the memory, the state or the API).
    pub max_agents_per_partition: usize,
    /// Agents' states kept in memory at most by this instance (0: no bound): beyond it the
    /// least recently used, once checkpointed, live only in the state directory and are read
    /// back on their next event or command.
    pub max_agents_in_memory: usize,
    /// How OpenTelemetry spans are read (`[otlp]`): the attributes naming the agent, the
    /// `service.name` fallback, the data volume's attribute.
    pub otlp: crate::event::OtlpOptions,
    /// How far ahead of the daemon's clock an event's time may be (e.g. "5m"); later events are
    /// dead-lettered as `future_timestamp`, so one forged time cannot blind an agent's windows.
    pub max_future: String,
    /// How long (event time behind a partition's latest event) an event's identity is
    /// remembered, so that a re-delivery of it is dropped as a duplicate, e.g. "10m"; "0s" turns
    /// duplicate detection off.
    pub duplicate_horizon: String,
    /// Most event identities remembered per partition (the oldest are forgotten first; 60–90
    /// bytes each).
    pub duplicate_max_entries: usize,
    /// Time between checkpoints (persist state, then commit offsets), e.g. "1s".
    pub checkpoint_interval: String,
    /// Events after which a checkpoint is taken even before the interval.
    pub checkpoint_events: u64,
    /// Capacity of the queue between the Kafka sources and the engine, in notices: an audit
    /// notice carries a batch of up to 1,024 messages, so it bounds memory at about
    /// `queue_capacity` × 1,024 × `max_event_bytes`.
    pub queue_capacity: usize,
    /// Time allowed for a graceful shutdown, e.g. "30s".
    pub shutdown_timeout: String,
    /// History replayed for a partition with no local state (see [`Backfill`]).
    pub backfill: Backfill,
    /// Log format: "human" or "json".
    pub log_format: String,
    /// SIEM sinks (`[[sinks]]`): CEF or ECS JSON over syslog, to files, stdout or Kafka.
    pub sinks: Vec<crate::sink::SinkConfig>,
    /// Email alerts (`[email]`), none by default.
    pub email: Option<crate::sink::EmailConfig>,
    /// Admin API (`[api]`): health, metrics, agents, incidents, posture, compliance, commands;
    /// off when absent.
    pub api: Option<crate::api::ApiConfig>,
    /// Posture snapshots, incident retention, risk settings (`[posture]`).
    pub posture: crate::posture::PostureConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            guardian_id: default_guardian_id(),
            kafka: KafkaConfig::default(),
            state_dir: PathBuf::from("guardian-state"),
            blueprints_dir: None,
            assignment: None,
            signing_key: None,
            previous_signing_keys: Vec::new(),
            command_ttl: "24h".into(),
            volume_pointer: crate::event::DEFAULT_VOLUME_POINTER.into(),
            max_event_bytes: crate::event::DEFAULT_MAX_EVENT_BYTES,
            max_agents_per_partition: DEFAULT_MAX_AGENTS_PER_PARTITION,
            max_agents_in_memory: 0,
            otlp: crate::event::OtlpOptions::default(),
            max_future: "5m".into(),
            duplicate_horizon: "10m".into(),
            duplicate_max_entries: crate::state::DUPLICATE_MAX_ENTRIES,
            checkpoint_interval: "1s".into(),
            checkpoint_events: 50_000,
            queue_capacity: 10_000,
            shutdown_timeout: "30s".into(),
            backfill: Backfill::Silent,
            log_format: "human".into(),
            sinks: Vec::new(),
            email: None,
            api: None,
            posture: crate::posture::PostureConfig::default(),
        }
    }
}

/// The host name (`HOSTNAME`, else `/etc/hostname`), the default guardian id.
pub fn default_guardian_id() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "guardian".into())
}

/// Everything wrong with a configuration.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration {}:\n  - {}", .file.display(), .errors.join("\n  - "))]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// One line per problem.
    pub errors: Vec<String>,
}

/// A validated configuration with its secrets and durations resolved. Its `Debug` form
/// redacts the signing key and the librdkafka options that hold secrets.
#[derive(Clone)]
pub struct Resolved {
    /// The configuration as written (secrets unresolved).
    pub config: Config,
    /// The signing key.
    pub signing_key: Vec<u8>,
    /// Keys still accepted for commands besides the signing key.
    pub previous_signing_keys: Vec<Vec<u8>>,
    /// How long a command is valid after it is issued.
    pub command_ttl: std::time::Duration,
    /// librdkafka options with secrets resolved.
    pub kafka_options: BTreeMap<String, String>,
    /// Checkpoint interval.
    pub checkpoint_interval: std::time::Duration,
    /// Shutdown deadline.
    pub shutdown_timeout: std::time::Duration,
    /// How far ahead of the clock an event's time may be.
    pub max_future: std::time::Duration,
    /// How event identities are remembered for dropping re-deliveries.
    pub duplicates: crate::state::SeenSettings,
    /// The blueprints in force.
    pub blueprints: std::sync::Arc<BlueprintSet>,
    /// Posture settings.
    pub posture: crate::posture::PostureSettings,
    /// Admin API settings, if the API is on.
    pub api: Option<crate::api::ApiSettings>,
}

impl fmt::Debug for Resolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let options: BTreeMap<&str, &str> = self
            .kafka_options
            .iter()
            .map(|(k, v)| {
                let v = if is_secret_option(k) {
                    "<redacted>"
                } else {
                    v.as_str()
                };
                (k.as_str(), v)
            })
            .collect();
        f.debug_struct("Resolved")
            .field("config", &self.config)
            .field("signing_key", &"<redacted>")
            .field("previous_signing_keys", &"<redacted>")
            .field("kafka_options", &options)
            .field("checkpoint_interval", &self.checkpoint_interval)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("max_future", &self.max_future)
            .field("duplicates", &self.duplicates)
            .field("blueprints", &self.blueprints)
            .field("posture", &self.posture)
            .field("api", &self.api)
            .finish()
    }
}

/// The longest `checkpoint_interval` or `shutdown_timeout`: a checkpoint less often than
/// hourly means hours of replay after a crash, and a shutdown that long is a hang.
const MAX_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3600);

/// The longest validity of a control command: a replay window longer than a week is no bound.
const MAX_COMMAND_TTL: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);

/// The furthest ahead of the clock an event may be dated (`max_future`, and `guardian replay
/// --max-future` against the stream's time): a day covers any clock skew; more would let one
/// forged far-future event blind the detectors again.
pub const MAX_FUTURE: std::time::Duration = std::time::Duration::from_secs(86_400);

/// Agents kept per audit partition unless configured (`max_agents_per_partition`): about
/// 2 GB of memory at the measured 19 KiB per agent.
pub const DEFAULT_MAX_AGENTS_PER_PARTITION: usize = 100_000;

/// The largest `max_agents_per_partition`.
pub const MAX_AGENTS_PER_PARTITION: usize = 10_000_000;

/// The largest `max_event_bytes` (64 MiB): an audit record is kilobytes and an OTLP request
/// megabytes; the decode queue holds up to `queue_capacity` × 1,024 of them.
pub const MAX_EVENT_BYTES: usize = 64 << 20;

/// Longest horizon of remembered event identities (a day).
const MAX_DUPLICATE_HORIZON: std::time::Duration = std::time::Duration::from_secs(86_400);

/// Most event identities remembered per partition (600–900 MB).
const MAX_DUPLICATE_ENTRIES: usize = 10_000_000;

impl Resolved {
    /// The keys whose commands are accepted: the signing key first, then the previous ones.
    pub fn command_keys(&self) -> Vec<Vec<u8>> {
        std::iter::once(self.signing_key.clone())
            .chain(self.previous_signing_keys.iter().cloned())
            .collect()
    }

    /// [`Resolved::command_ttl`] in milliseconds.
    pub fn command_ttl_ms(&self) -> i64 {
        i64::try_from(self.command_ttl.as_millis()).unwrap_or(i64::MAX)
    }
}

/// Whether the daemon can keep its state in `dir`: a writable directory, or one that can be
/// created in the nearest existing ancestor (checked by writing and removing a probe file
/// there; nothing is left behind).
fn writable_dir(dir: &Path) -> std::io::Result<()> {
    let mut at = dir;
    while !at.exists() {
        at = match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
    }
    if !at.is_dir() {
        return Err(std::io::Error::other(format!(
            "{} is not a directory",
            at.display()
        )));
    }
    // Unique per call: two checks at once in one process must not remove each other's probe.
    static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let probe = at.join(format!(".guardian-write-probe-{}-{n}", std::process::id()));
    std::fs::write(&probe, b"")?;
    std::fs::remove_file(&probe)
}

impl Config {
    /// Reads a TOML (`.toml`) or JSON (anything else) file; syntax errors name the position.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let err = |e: String| ConfigError {
            file: path.to_path_buf(),
            errors: vec![e],
        };
        let text = crate::files::read_text(path).map_err(|e| err(e.to_string()))?;
        if path.extension().is_some_and(|x| x == "toml") {
            // TOML itself forbids a key defined twice; the parser reports it with its place.
            toml::from_str(&text).map_err(|e| err(e.to_string()))
        } else {
            let dups = crate::blueprint::duplicate_keys(&text).map_err(|e| err(e.to_string()))?;
            if !dups.is_empty() {
                return Err(ConfigError {
                    file: path.to_path_buf(),
                    errors: dups.iter().map(ToString::to_string).collect(),
                });
            }
            serde_json::from_str(&text).map_err(|e| err(e.to_string()))
        }
    }

    /// Validates everything and resolves secrets, durations and blueprints; reports every error.
    pub fn resolve(self, file: &Path) -> Result<Resolved, ConfigError> {
        let mut errors = Vec::new();
        self.kafka.check_topics(&mut errors);
        let kafka_options = self.kafka.resolve_options(&mut errors);
        self.check_instance(&mut errors);
        let signing_key = self.resolve_signing_key(&mut errors);
        let previous_signing_keys = self.resolve_previous_signing_keys(&mut errors);
        let timing = self.resolve_timing(&mut errors);
        self.check_engine(&mut errors);
        self.check_sinks(&mut errors);
        if let Some(e) = &self.email {
            e.validate(&mut errors);
        }
        let api = self.api.as_ref().and_then(|a| a.validate(&mut errors));
        let posture = self.resolve_posture(&mut errors);
        self.check_volume_pointer(&mut errors);
        self.check_otlp(&mut errors);
        let blueprints = self.load_blueprints(&mut errors);
        match blueprints {
            Some(blueprints) if errors.is_empty() => Ok(Resolved {
                config: self,
                signing_key,
                previous_signing_keys,
                command_ttl: timing.command_ttl,
                kafka_options,
                checkpoint_interval: timing.checkpoint_interval,
                shutdown_timeout: timing.shutdown_timeout,
                max_future: timing.max_future,
                duplicates: timing.duplicates,
                blueprints,
                posture,
                api,
            }),
            _ => Err(ConfigError {
                file: file.to_path_buf(),
                errors,
            }),
        }
    }

    /// Checks this instance's name, its size limits and that its state directory is writable.
    fn check_instance(&self, errors: &mut Vec<String>) {
        if self.guardian_id.trim().is_empty() {
            errors.push("guardian_id: empty (it names this instance in every output)".into());
        }
        if self.max_event_bytes == 0 || self.max_event_bytes > MAX_EVENT_BYTES {
            errors.push(format!(
                "max_event_bytes: {} is not between 1 and {MAX_EVENT_BYTES}",
                self.max_event_bytes
            ));
        }
        if self.max_agents_per_partition == 0
            || self.max_agents_per_partition > MAX_AGENTS_PER_PARTITION
        {
            errors.push(format!(
                "max_agents_per_partition: {} is not between 1 and {MAX_AGENTS_PER_PARTITION}",
                self.max_agents_per_partition
            ));
        }
        if let Err(e) = writable_dir(&self.state_dir) {
            errors.push(format!("state_dir: {}: {e}", self.state_dir.display()));
        }
    }

    /// The signing key (required); empty if it is missing or unusable.
    fn resolve_signing_key(&self, errors: &mut Vec<String>) -> Vec<u8> {
        match &self.signing_key {
            None => {
                errors.push(
                    "signing_key: required (e.g. signing_key = { env = \"GUARDIAN_SIGNING_KEY\" })"
                        .into(),
                );
                Vec::new()
            }
            Some(s) => command_key("signing_key", s).unwrap_or_else(|e| {
                errors.push(e);
                Vec::new()
            }),
        }
    }

    /// The previous signing keys that resolve to usable keys, in order.
    fn resolve_previous_signing_keys(&self, errors: &mut Vec<String>) -> Vec<Vec<u8>> {
        let mut keys = Vec::new();
        for (i, s) in self.previous_signing_keys.iter().enumerate() {
            match command_key(&format!("previous_signing_keys[{i}]"), s) {
                Ok(k) => keys.push(k),
                Err(e) => errors.push(e),
            }
        }
        keys
    }

    /// The durations, each checked against its bound (one second where a duration is unusable).
    fn resolve_timing(&self, errors: &mut Vec<String>) -> Timing {
        let checkpoint_interval =
            positive_duration("checkpoint_interval", &self.checkpoint_interval, errors);
        let shutdown_timeout =
            positive_duration("shutdown_timeout", &self.shutdown_timeout, errors);
        let max_future = positive_duration("max_future", &self.max_future, errors);
        let command_ttl = positive_duration("command_ttl", &self.command_ttl, errors);
        let duplicates = self.resolve_duplicates(errors);
        for (name, d, max) in [
            ("checkpoint_interval", checkpoint_interval, MAX_INTERVAL),
            ("shutdown_timeout", shutdown_timeout, MAX_INTERVAL),
            ("max_future", max_future, MAX_FUTURE),
            ("command_ttl", command_ttl, MAX_COMMAND_TTL),
        ] {
            if d > max {
                errors.push(longer_than(name, d, max));
            }
        }
        Timing {
            checkpoint_interval,
            shutdown_timeout,
            max_future,
            command_ttl,
            duplicates,
        }
    }

    /// How event identities are remembered: the horizon (off where unreadable, the longest
    /// allowed where too long) and the most entries.
    fn resolve_duplicates(&self, errors: &mut Vec<String>) -> crate::state::SeenSettings {
        let horizon = match humantime::parse_duration(&self.duplicate_horizon) {
            Ok(d) if d <= MAX_DUPLICATE_HORIZON => d,
            Ok(d) => {
                errors.push(longer_than("duplicate_horizon", d, MAX_DUPLICATE_HORIZON));
                MAX_DUPLICATE_HORIZON
            }
            Err(_) => {
                errors.push(format!(
                    "duplicate_horizon: {:?} is not a duration like \"10m\" (\"0s\": off)",
                    self.duplicate_horizon
                ));
                std::time::Duration::ZERO
            }
        };
        if self.duplicate_max_entries > MAX_DUPLICATE_ENTRIES {
            errors.push(format!(
                "duplicate_max_entries: {} is more than the most allowed, {MAX_DUPLICATE_ENTRIES}",
                self.duplicate_max_entries
            ));
        }
        crate::state::SeenSettings {
            horizon_ms: i64::try_from(horizon.as_millis()).unwrap_or(i64::MAX),
            max_entries: self.duplicate_max_entries,
        }
    }

    /// Checks the engine's queue, its checkpoint count and the log format.
    fn check_engine(&self, errors: &mut Vec<String>) {
        if self.queue_capacity == 0 {
            errors.push("queue_capacity: must be at least 1".into());
        }
        if self.checkpoint_events == 0 {
            errors.push("checkpoint_events: must be at least 1".into());
        }
        if !matches!(self.log_format.as_str(), "human" | "json") {
            errors.push(format!(
                "log_format: {:?} (expected \"human\" or \"json\")",
                self.log_format
            ));
        }
    }

    /// Checks each sink, and that no two sinks share a name.
    fn check_sinks(&self, errors: &mut Vec<String>) {
        let mut names = std::collections::BTreeSet::new();
        for (i, sink) in self.sinks.iter().enumerate() {
            sink.validate(i, errors);
            if !names.insert(sink.name.as_str()) {
                errors.push(format!("sinks[{i}].name: {:?} is used twice", sink.name));
            }
        }
    }

    /// The posture settings (the defaults where they are invalid); the posture topic must be
    /// none of the Kafka topics.
    fn resolve_posture(&self, errors: &mut Vec<String>) -> crate::posture::PostureSettings {
        let posture = match self.posture.validate() {
            Ok(p) => p,
            Err(e) => {
                errors.extend(e);
                crate::posture::PostureSettings::default()
            }
        };
        let k = &self.kafka;
        for (name, t) in k.output_topics() {
            if *t == self.posture.topic {
                errors.push(format!("posture.topic: {t:?} is also kafka.{name}"));
            }
        }
        if k.changelog_topic.as_ref() == Some(&self.posture.topic) {
            errors.push(format!(
                "posture.topic: {:?} is also kafka.changelog_topic",
                self.posture.topic
            ));
        }
        if k.audit_topics.contains(&self.posture.topic) {
            errors.push(format!(
                "posture.topic: {:?} is also an audit topic",
                self.posture.topic
            ));
        }
        posture
    }

    /// Checks that the decoder takes `volume_pointer`.
    fn check_volume_pointer(&self, errors: &mut Vec<String>) {
        if let Err(e) = crate::event::Decoder::new(&crate::event::DecoderOptions {
            volume_pointer: self.volume_pointer.clone(),
            ..Default::default()
        }) {
            errors.push(format!("volume_pointer: {e}"));
        }
    }

    /// Checks that the OTLP attributes are named, and that spans can name an agent.
    fn check_otlp(&self, errors: &mut Vec<String>) {
        let o = &self.otlp;
        if o.agent_attributes.iter().any(|a| a.trim().is_empty()) {
            errors.push("otlp.agent_attributes: an attribute name is empty".into());
        }
        if o.agent_attributes.is_empty() && !o.service_name_fallback {
            errors.push(
                "otlp: no agent_attributes and no service_name_fallback: spans could name no agent but their trace's"
                    .into(),
            );
        }
        if o.volume_attribute
            .as_deref()
            .is_some_and(|a| a.trim().is_empty())
        {
            errors.push("otlp.volume_attribute: empty".into());
        }
        if o.group_attribute
            .as_deref()
            .is_some_and(|a| a.trim().is_empty())
        {
            errors.push("otlp.group_attribute: empty".into());
        }
    }

    /// The blueprints and their assignment, if they load.
    fn load_blueprints(&self, errors: &mut Vec<String>) -> Option<std::sync::Arc<BlueprintSet>> {
        match BlueprintSet::load(self.blueprints_dir.as_deref(), self.assignment.as_deref()) {
            Ok(s) => Some(std::sync::Arc::new(s)),
            Err(e) => {
                errors.push(format!("blueprints: {e}"));
                None
            }
        }
    }

    /// The configuration as one log line, secrets redacted (a `Secret` serializes redacted;
    /// literal librdkafka options that are not secrets are shown as written).
    pub fn redacted(&self) -> Result<String, serde_json::Error> {
        let mut v = serde_json::to_value(self)?;
        for (key, s) in &self.kafka.options {
            if let Secret::Literal(value) = s {
                if !is_secret_option(key) {
                    v["kafka"]["options"][key] = value.clone().into();
                }
            }
        }
        Ok(v.to_string())
    }
}

/// The durations of a configuration, resolved.
struct Timing {
    /// Checkpoint interval.
    checkpoint_interval: std::time::Duration,
    /// Shutdown deadline.
    shutdown_timeout: std::time::Duration,
    /// How far ahead of the clock an event's time may be.
    max_future: std::time::Duration,
    /// How long a command is valid after it is issued.
    command_ttl: std::time::Duration,
    /// How event identities are remembered for dropping re-deliveries.
    duplicates: crate::state::SeenSettings,
}

/// The shortest key that signs or verifies commands, in bytes.
const MIN_KEY_BYTES: usize = 16;

/// The bytes of the command key `s` (the setting `name`), or the error naming it.
fn command_key(name: &str, s: &Secret) -> Result<Vec<u8>, String> {
    match s.resolve() {
        Ok(v) if v.len() >= MIN_KEY_BYTES => Ok(v.into_bytes()),
        Ok(_) => Err(format!("{name}: shorter than {MIN_KEY_BYTES} bytes")),
        Err(e) => Err(format!("{name}: {e}")),
    }
}

/// The setting `name`, a positive duration such as "1s" in `v`; one second if it is not.
fn positive_duration(name: &str, v: &str, errors: &mut Vec<String>) -> std::time::Duration {
    match humantime::parse_duration(v) {
        Ok(d) if !d.is_zero() => d,
        _ => {
            errors.push(format!(
                "{name}: {v:?} is not a positive duration like \"1s\""
            ));
            std::time::Duration::from_secs(1)
        }
    }
}

/// The error of the setting `name`, whose duration `d` is longer than `max`.
fn longer_than(name: &str, d: std::time::Duration, max: std::time::Duration) -> String {
    format!(
        "{name}: {} is longer than the longest allowed, {}",
        humantime::format_duration(d),
        humantime::format_duration(max)
    )
}

/// librdkafka options the guardian sets itself, with or without a `consumer.` or `producer.`
/// prefix, and why: its guarantees depend on them.
const RESERVED_OPTIONS: [(&str, &str); 6] = [
    ("bootstrap.servers", "use kafka.brokers"),
    ("group.id", "use kafka.group_id"),
    (
        "enable.auto.commit",
        "offsets are committed only after the state that reflects them is on disk",
    ),
    (
        "enable.auto.offset.store",
        "offsets are committed only after the state that reflects them is on disk",
    ),
    (
        "enable.idempotence",
        "outputs are written exactly once per send through an idempotent producer",
    ),
    ("acks", "the idempotent producer needs acks=all"),
];

/// librdkafka options whose values are secrets.
fn is_secret_option(key: &str) -> bool {
    key.contains("password")
        || key.contains("secret")
        || key.ends_with(".pem")
        || key.contains("key")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(name);
        std::fs::write(&p, text).unwrap();
        (d, p)
    }

    /// The errors that resolving a config file `name` holding `text` reports.
    fn resolve_errors(name: &str, text: &str) -> Vec<String> {
        let (_d, p) = write(name, text);
        Config::load(&p).unwrap().resolve(&p).unwrap_err().errors
    }

    #[test]
    fn toml_config_resolves_secrets_from_env_and_file() {
        let (d, _) = write("x", "");
        let key = d.path().join("key");
        std::fs::write(&key, "0123456789abcdef0123\n").unwrap();
        std::env::set_var("AG_TEST_SASL", "hunter2");
        let text = format!(
            "signing_key = {{ file = {:?} }}\n[kafka]\nbrokers = \"b:9092\"\naudit_topics = [\"a\", \"b\"]\n[kafka.options]\n\"sasl.password\" = {{ env = \"AG_TEST_SASL\" }}\n\"security.protocol\" = \"SASL_SSL\"\n",
            key.display()
        );
        let (_d2, p) = write("c.toml", &text);
        let r = Config::load(&p).unwrap().resolve(&p).unwrap();
        assert_eq!(r.signing_key, b"0123456789abcdef0123");
        assert_eq!(r.kafka_options["sasl.password"], "hunter2");
        assert_eq!(r.config.kafka.audit_topics, ["a", "b"]);
        let line = r.config.redacted().unwrap();
        let debug = format!("{r:?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("0123456789abcdef"),
            "{debug}"
        );
        assert!(debug.contains("SASL_SSL"), "{debug}");
        assert!(
            !line.contains("hunter2") && !line.contains("0123456789abcdef"),
            "{line}"
        );
        assert!(line.contains("SASL_SSL"));
    }

    #[test]
    fn a_key_given_twice_is_an_error_with_its_place_in_toml_and_in_json() {
        let (_d, p) = write(
            "g.toml",
            "guardian_id = \"a\"\n[kafka]\nbrokers = \"x:1\"\nbrokers = \"y:1\"\n",
        );
        let e = Config::load(&p).map(|_| ()).unwrap_err().errors.join("\n");
        assert!(e.contains("duplicate key") && e.contains("brokers"), "{e}");
        let (_d, p) = write(
            "g.json",
            r#"{"kafka": {"options": {"acks": "1", "acks": "all"}}}"#,
        );
        let e = Config::load(&p).map(|_| ()).unwrap_err().errors.join("\n");
        assert!(
            e.contains("/kafka/options/acks") && e.contains("duplicate key"),
            "{e}"
        );
    }

    #[test]
    fn a_literal_secret_never_prints_but_resolves() {
        let s = Secret::Literal("hunter2".into());
        assert!(!format!("{s:?} {s}").contains("hunter2"));
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains("hunter2"), "{json}");
        assert_eq!(s.resolve().unwrap(), "hunter2");
        let e = Secret::Env { env: "X".into() };
        assert_eq!(format!("{e:?}"), "Secret(<from env X>)");
    }

    #[test]
    fn every_error_is_reported() {
        let errors = resolve_errors(
            "c.json",
            r#"{"kafka": {"audit_topics": [], "control_topic": ""},
                "signing_key": {"env": "AG_TEST_UNSET_VARIABLE"},
                "checkpoint_interval": "soon", "log_format": "xml", "queue_capacity": 0}"#,
        );
        let all = errors.join("\n");
        for needle in [
            "kafka.audit_topics",
            "kafka.control_topic",
            "AG_TEST_UNSET_VARIABLE",
            "checkpoint_interval",
            "log_format",
            "queue_capacity",
        ] {
            assert!(all.contains(needle), "{needle} missing in:\n{all}");
        }
    }

    #[test]
    fn values_the_daemon_could_not_run_with_are_refused() {
        let errors = resolve_errors(
            "c.toml",
            "guardian_id = \" \"\nstate_dir = \"/proc/guardian-state\"\nsigning_key = \"0123456789abcdef0123\"\ncheckpoint_interval = \"1000y\"\nmax_event_bytes = 99999999999\nmax_future = \"100y\"\n[kafka]\nbrokers = \"x:1\"\naudit_topics = [\"a\"]\n[kafka.options]\n\"no.such.option\" = \"1\"\n\"consumer.fetch.wait.max.ms\" = \"soon\"\n",
        );
        let all = errors.join("\n");
        for needle in [
            "guardian_id: empty",
            "state_dir: /proc/guardian-state",
            "checkpoint_interval: 1000years",
            "max_event_bytes: 99999999999 is not between 1 and",
            "max_future: 100years is longer",
            "no.such.option",
            "fetch.wait.max.ms",
        ] {
            assert!(all.contains(needle), "{needle} missing in:\n{all}");
        }
        assert!(!Path::new("/proc/guardian-state").exists());
    }

    #[test]
    fn otlp_settings_are_read_and_unusable_ones_refused() {
        let (_d, p) = write(
            "c.toml",
            "[kafka]\naudit_topics = [\"otlp_spans\"]\n[otlp]\nagent_attributes = [\"app.agent\"]\nvolume_attribute = \"app.bytes\"\n",
        );
        let c = Config::load(&p).unwrap();
        assert_eq!(c.otlp.agent_attributes, ["app.agent"]);
        assert_eq!(c.otlp.volume_attribute.as_deref(), Some("app.bytes"));
        assert!(c.otlp.service_name_fallback, "on unless set");
        let errors = resolve_errors(
            "c.toml",
            "signing_key = \"0123456789abcdef0123\"\n[kafka]\nbrokers = \"x:1\"\naudit_topics = [\"a\"]\n[otlp]\nagent_attributes = []\nservice_name_fallback = false\nvolume_attribute = \" \"\ngroup_attribute = \"\"\n",
        )
        .join("\n");
        for needle in [
            "otlp: no agent_attributes",
            "otlp.volume_attribute: empty",
            "otlp.group_attribute: empty",
        ] {
            assert!(errors.contains(needle), "{needle} missing in:\n{errors}");
        }
        let (_d, p) = write("c.toml", "[otlp]\nvolume_atribute = \"x\"\n");
        assert!(Config::load(&p).is_err(), "a misspelt key is an error");
    }

    #[test]
    fn the_example_config_parses() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/guardian.toml");
        let c = Config::load(&p).unwrap();
        assert_eq!(c.kafka.audit_topics, ["agent-audit"]);
        assert!(matches!(c.signing_key, Some(Secret::Env { .. })));
        let names: Vec<&str> = c.sinks.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["siem-tls", "cef-file"]);
        let mut errors = Vec::new();
        for (i, s) in c.sinks.iter().enumerate() {
            s.validate(i, &mut errors);
        }
        assert!(errors.is_empty(), "{errors:?}");
    }

    #[test]
    fn sink_errors_are_all_reported_with_their_path() {
        let errors = resolve_errors(
            "c.toml",
            r#"
signing_key = "0123456789abcdef0123"
[[sinks]]
name = "a"
type = "syslog"
address = "no-port"
facility = "kernel"
path = "/tmp/x"
[[sinks]]
name = "a"
type = "file"
[[sinks]]
name = "k"
type = "kafka"
min_severity = 11
"#,
        );
        let all = errors.join("\n");
        for needle in [
            "sinks[0] (a).address: \"no-port\" is not host:port",
            "sinks[0] (a).facility: unknown \"kernel\"",
            "sinks[0] (a).path: not a setting of a Syslog sink",
            "sinks[1] (a).path: missing",
            "sinks[1].name: \"a\" is used twice",
            "sinks[2] (k).topic: missing",
            "sinks[2] (k).min_severity: 11 is above 10",
        ] {
            assert!(all.contains(needle), "{needle} missing in:\n{all}");
        }
    }

    #[test]
    fn unknown_sink_keys_are_errors() {
        let (_d, p) = write(
            "c.json",
            r#"{"sinks": [{"name": "s", "type": "stdout", "adress": "x:1"}]}"#,
        );
        let e = Config::load(&p).unwrap_err();
        assert!(e.errors[0].contains("adress"), "{e}");
    }

    #[test]
    fn options_the_guarantees_depend_on_are_refused_on_either_side() {
        let errors = resolve_errors(
            "c.toml",
            r#"
signing_key = "0123456789abcdef0123"
[kafka.options]
"consumer.group.id" = "other"
"enable.auto.commit" = "true"
"producer.enable.idempotence" = "false"
"producer.acks" = "1"
"bootstrap.servers" = "elsewhere:9092"
"consumer.enable.auto.offset.store" = "true"
"consumer.fetch.wait.max.ms" = "20"
"security.protocol" = "SSL"
"#,
        );
        let all = errors.join("\n");
        for key in [
            "consumer.group.id",
            "enable.auto.commit",
            "producer.enable.idempotence",
            "producer.acks",
            "bootstrap.servers",
            "consumer.enable.auto.offset.store",
        ] {
            assert!(
                all.contains(&format!("kafka.options.{key}: set by the guardian")),
                "{key} not refused in:\n{all}"
            );
        }
        assert_eq!(errors.len(), 6, "{all}");
    }

    #[test]
    fn unknown_fields_are_errors() {
        let (_d, p) = write("c.json", r#"{"kafka": {"brokerz": "x"}}"#);
        let e = Config::load(&p).unwrap_err();
        assert!(e.errors[0].contains("brokerz"), "{e}");
    }
}
