//! Router configuration: a TOML file, then environment overrides, then one
//! validation pass into typed values.
//!
//! The raw layer accepts what a person writes (and rejects unknown keys, so a
//! typo is an error rather than a silently ignored setting); the validated
//! layer holds durations as [`Duration`], paths resolved against the config
//! file's directory, and nothing that still needs checking. Every error names
//! the key, the value and what would be accepted.
//!
//! Environment overrides: `CMMS_ROUTER__<SECTION>__<KEY>=value`, for example
//! `CMMS_ROUTER__KAFKA__BOOTSTRAP_SERVERS=broker:9092`. Values are read as
//! TOML scalars when they parse as one (numbers, booleans), else as strings.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Prefix of environment variables that override config keys.
pub const ENV_PREFIX: &str = "CMMS_ROUTER__";

/// A configuration problem, always naming the key or file involved.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has an unknown or mistyped key.
    #[error("invalid config {origin}: {message}")]
    Parse {
        /// The file or environment it came from.
        origin: String,
        /// The parser's message, which names the key.
        message: String,
    },
    /// An environment override names a key that does not exist.
    #[error("environment variable {var} does not name a config key: expected {ENV_PREFIX}<SECTION>__<KEY>, e.g. {ENV_PREFIX}KAFKA__BOOTSTRAP_SERVERS")]
    EnvKey {
        /// The variable.
        var: String,
    },
    /// A key is missing or its value is out of range.
    #[error("config key `{key}`: {problem}")]
    Invalid {
        /// Dotted key, e.g. `window.max_orders`.
        key: &'static str,
        /// What is wrong and what would be accepted.
        problem: String,
    },
}

fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        problem: problem.into(),
    }
}

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    kafka: RawKafka,
    #[serde(default)]
    router: RawRouter,
    #[serde(default)]
    window: RawWindow,
    #[serde(default)]
    state: RawState,
    #[serde(default)]
    dedup: RawDedup,
    #[serde(default)]
    http: RawHttp,
    #[serde(default)]
    log: RawLog,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKafka {
    bootstrap_servers: Option<String>,
    group_id: Option<String>,
    transactional_id: Option<String>,
    transaction_timeout_ms: Option<u64>,
    /// Extra librdkafka properties for every client (security settings and the like).
    #[serde(default)]
    client: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRouter {
    schemas_dir: Option<PathBuf>,
    topology: Option<PathBuf>,
    routing: Option<PathBuf>,
    commit_interval_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    max_orders: Option<i64>,
    max_wait_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDedup {
    max_ttl_ms: Option<u64>,
    expiry_interval_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<String>,
    filter: Option<String>,
}

/// Kafka connection settings.
#[derive(Clone)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list.
    pub bootstrap_servers: String,
    /// Consumer group shared by all instances.
    pub group_id: String,
    /// Stable per instance, so a restart fences its predecessor.
    pub transactional_id: String,
    /// Broker-side transaction timeout.
    pub transaction_timeout: Duration,
    /// Extra librdkafka properties, applied to every client.
    pub client: BTreeMap<String, String>,
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Extra properties may carry SASL passwords or key material.
        let client: BTreeMap<&str, &str> = self
            .client
            .iter()
            .map(|(k, v)| {
                let secret = k.contains("password") || k.contains("secret") || k.contains("key");
                (k.as_str(), if secret { "***" } else { v.as_str() })
            })
            .collect();
        f.debug_struct("KafkaConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("group_id", &self.group_id)
            .field("transactional_id", &self.transactional_id)
            .field("transaction_timeout", &self.transaction_timeout)
            .field("client", &client)
            .finish()
    }
}

/// Site batching limits: a batch closes at whichever comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowConfig {
    /// Orders in a batch that close it at once (at least 1).
    pub max_orders: usize,
    /// Time after a batch's first order that closes it.
    pub max_wait: Duration,
}

/// Local state and its expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateConfig {
    /// RocksDB directory of this instance; rebuilt from the changelogs when lost.
    pub dir: PathBuf,
    /// Longest time a dedup entry is kept, whatever the order's SLA window.
    pub dedup_max_ttl: Duration,
    /// How often expired dedup entries are swept (and tombstoned in the changelog).
    pub expiry_interval: Duration,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Validated router configuration.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Kafka settings.
    pub kafka: KafkaConfig,
    /// Directory with the `.avsc` files.
    pub schemas_dir: PathBuf,
    /// Topology file (topics and trade map).
    pub topology: PathBuf,
    /// Routing matrix file (weights, thresholds); `None` uses the built-in defaults.
    pub routing: Option<PathBuf>,
    /// How often staged output is committed in one transaction.
    pub commit_interval: Duration,
    /// Site batching limits.
    pub window: WindowConfig,
    /// Local state stores.
    pub state: StateConfig,
    /// Address of the metrics and health endpoint; `None` disables it.
    pub http_listen: Option<SocketAddr>,
    /// Log format.
    pub log_format: LogFormat,
    /// `tracing` filter directive, e.g. `info,cmms_router=debug`.
    pub log_filter: String,
}

// Defaults, and why.
/// A commit every 200 ms keeps dispatch latency low without a transaction per record.
const DEFAULT_COMMIT_INTERVAL_MS: u64 = 200;
/// A typical crew picks up a handful of jobs per visit.
const DEFAULT_MAX_ORDERS: i64 = 20;
/// Long enough to gather a site's burst, short enough for a same-hour SLA.
const DEFAULT_MAX_WAIT_MS: u64 = 5_000;
/// A week: longer than any SLA window we have seen, short enough to bound the store.
const DEFAULT_DEDUP_MAX_TTL_MS: u64 = 7 * 24 * 3_600_000;
/// Sweeping every 10 s keeps tombstones flowing without a scan per commit.
const DEFAULT_EXPIRY_INTERVAL_MS: u64 = 10_000;
/// librdkafka's default transaction timeout.
const DEFAULT_TRANSACTION_TIMEOUT_MS: u64 = 60_000;

impl RouterConfig {
    /// Loads `path`, applies `CMMS_ROUTER__*` variables from the process
    /// environment and validates the result.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// Like [`RouterConfig::load`] with an explicit environment (for tests).
    pub fn load_with_env(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_toml(&text, &path.display().to_string(), base, env)
    }

    /// Parses and validates TOML text; relative paths resolve against `base`.
    pub fn from_toml(
        text: &str,
        origin: &str,
        base: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    origin: origin.to_string(),
                    message: e.message().to_string(),
                })?;
        let mut overridden = Vec::new();
        for (var, value) in env {
            let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let parts: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
            if parts.len() < 2 || parts.iter().any(|p| p.is_empty()) {
                return Err(ConfigError::EnvKey { var });
            }
            set_path(&mut table, &parts, parse_scalar(&value));
            overridden.push(var);
        }
        let raw: RawConfig =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    origin: if overridden.is_empty() {
                        origin.to_string()
                    } else {
                        format!("{origin} with overrides {}", overridden.join(", "))
                    },
                    // Display names the key path ("in `window.max_wait_ms`").
                    message: e.to_string().trim_end().to_string(),
                })?;
        Self::validate(raw, base)
    }

    fn validate(raw: RawConfig, base: &Path) -> Result<Self, ConfigError> {
        let kafka = raw.kafka;
        let bootstrap_servers = required_text(kafka.bootstrap_servers, "kafka.bootstrap_servers")?;
        for server in bootstrap_servers.split(',') {
            let server = server.trim();
            let ok = server
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !ok {
                return Err(invalid(
                    "kafka.bootstrap_servers",
                    format!("{server:?} is not host:port (e.g. 127.0.0.1:9092)"),
                ));
            }
        }
        let group_id = required_text(kafka.group_id, "kafka.group_id")?;
        let transactional_id = required_text(kafka.transactional_id, "kafka.transactional_id")?;
        let timeout_ms = kafka
            .transaction_timeout_ms
            .unwrap_or(DEFAULT_TRANSACTION_TIMEOUT_MS);
        if !(1_000..=900_000).contains(&timeout_ms) {
            return Err(invalid(
                "kafka.transaction_timeout_ms",
                format!("{timeout_ms} is out of range: use 1000 to 900000 (the broker's default transaction.max.timeout.ms)"),
            ));
        }
        for key in kafka.client.keys() {
            if OWNED_CLIENT_KEYS.contains(&key.as_str()) {
                return Err(invalid(
                    "kafka.client",
                    format!("{key:?} is set by the router itself and cannot be overridden"),
                ));
            }
        }

        let schemas_dir = base.join(raw.router.schemas_dir.ok_or_else(|| {
            invalid(
                "router.schemas_dir",
                "missing: the directory holding the .avsc files",
            )
        })?);
        if !schemas_dir.is_dir() {
            return Err(invalid(
                "router.schemas_dir",
                format!("{} is not a directory", schemas_dir.display()),
            ));
        }
        let topology = base.join(raw.router.topology.ok_or_else(|| {
            invalid(
                "router.topology",
                "missing: the path of the topology TOML file",
            )
        })?);
        let routing = raw.router.routing.map(|p| base.join(p));
        let commit_ms = raw
            .router
            .commit_interval_ms
            .unwrap_or(DEFAULT_COMMIT_INTERVAL_MS);
        if !(10..=60_000).contains(&commit_ms) {
            return Err(invalid(
                "router.commit_interval_ms",
                format!("{commit_ms} is out of range: use 10 to 60000"),
            ));
        }
        if commit_ms >= timeout_ms {
            return Err(invalid(
                "router.commit_interval_ms",
                format!("{commit_ms} must be below kafka.transaction_timeout_ms ({timeout_ms})"),
            ));
        }

        let max_orders = raw.window.max_orders.unwrap_or(DEFAULT_MAX_ORDERS);
        if !(1..=10_000).contains(&max_orders) {
            return Err(invalid(
                "window.max_orders",
                format!("{max_orders} is out of range: a batch holds 1 to 10000 orders"),
            ));
        }
        let max_wait_ms = raw.window.max_wait_ms.unwrap_or(DEFAULT_MAX_WAIT_MS);
        if max_wait_ms == 0 || max_wait_ms > 24 * 3_600_000 {
            return Err(invalid(
                "window.max_wait_ms",
                format!("{max_wait_ms} is out of range: use 1 ms to 24 h (86400000)"),
            ));
        }

        let state_dir = base.join(raw.state.dir.ok_or_else(|| {
            invalid(
                "state.dir",
                "missing: the directory for this instance's local state (RocksDB)",
            )
        })?);
        if state_dir.exists() && !state_dir.is_dir() {
            return Err(invalid(
                "state.dir",
                format!("{} exists and is not a directory", state_dir.display()),
            ));
        }
        let max_ttl_ms = raw.dedup.max_ttl_ms.unwrap_or(DEFAULT_DEDUP_MAX_TTL_MS);
        if !(1_000..=366 * 24 * 3_600_000).contains(&max_ttl_ms) {
            return Err(invalid(
                "dedup.max_ttl_ms",
                format!("{max_ttl_ms} is out of range: use 1000 (1 s) to 31622400000 (366 days)"),
            ));
        }
        let expiry_ms = raw
            .dedup
            .expiry_interval_ms
            .unwrap_or(DEFAULT_EXPIRY_INTERVAL_MS);
        if !(100..=3_600_000).contains(&expiry_ms) {
            return Err(invalid(
                "dedup.expiry_interval_ms",
                format!("{expiry_ms} is out of range: use 100 to 3600000 (1 h)"),
            ));
        }

        let http_listen = match raw.http.listen.as_deref().map(str::trim) {
            None | Some("") | Some("off") => None,
            Some(addr) => Some(addr.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    "http.listen",
                    format!("{addr:?} is not ip:port (e.g. 127.0.0.1:9898), or \"off\""),
                )
            })?),
        };
        let log_format = match raw.log.format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(invalid(
                    "log.format",
                    format!("{other:?} is not a log format: use \"text\" or \"json\""),
                ))
            }
        };

        Ok(Self {
            kafka: KafkaConfig {
                bootstrap_servers,
                group_id,
                transactional_id,
                transaction_timeout: Duration::from_millis(timeout_ms),
                client: kafka.client,
            },
            schemas_dir,
            topology,
            routing,
            commit_interval: Duration::from_millis(commit_ms),
            window: WindowConfig {
                // In range 1..=10_000 checked above.
                max_orders: max_orders as usize,
                max_wait: Duration::from_millis(max_wait_ms),
            },
            state: StateConfig {
                dir: state_dir,
                dedup_max_ttl: Duration::from_millis(max_ttl_ms),
                expiry_interval: Duration::from_millis(expiry_ms),
            },
            http_listen,
            log_format,
            log_filter: raw.log.filter.unwrap_or_else(|| "info".to_string()),
        })
    }
}

/// librdkafka properties the router sets itself; overriding them would break
/// the exactly-once protocol.
const OWNED_CLIENT_KEYS: [&str; 8] = [
    "group.instance.id",
    "bootstrap.servers",
    "group.id",
    "transactional.id",
    "enable.auto.commit",
    "isolation.level",
    "enable.idempotence",
    "enable.auto.offset.store",
];

fn required_text(value: Option<String>, key: &'static str) -> Result<String, ConfigError> {
    match value.map(|v| v.trim().to_string()) {
        Some(v) if !v.is_empty() => Ok(v),
        Some(_) => Err(invalid(key, "is empty")),
        None => Err(invalid(key, "missing")),
    }
}

fn parse_scalar(raw: &str) -> toml::Value {
    // Parse as the right-hand side of a TOML assignment so `42` and `true`
    // become typed values; anything else is taken literally as a string.
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => match t.remove("v") {
            Some(
                v @ (toml::Value::Integer(_) | toml::Value::Boolean(_) | toml::Value::Float(_)),
            ) => v,
            _ => toml::Value::String(raw.to_string()),
        },
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

fn set_path(table: &mut toml::Table, parts: &[String], value: toml::Value) {
    let (last, sections) = parts
        .split_last()
        .expect("caller checked at least two parts");
    let mut current = table;
    for section in sections {
        let entry = current
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        current = entry.as_table_mut().expect("just made a table");
    }
    current.insert(last.clone(), value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schemas() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    const GOOD: &str = r#"
        [kafka]
        bootstrap_servers = "127.0.0.1:9092"
        group_id = "g"
        transactional_id = "t-1"
        [router]
        schemas_dir = "schemas"
        topology = "topology/topology.toml"
        [window]
        max_orders = 5
        max_wait_ms = 1500
        [state]
        dir = "target/test-state"
    "#;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<RouterConfig, ConfigError> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        RouterConfig::from_toml(text, "test.toml", &schemas(), env)
    }

    #[test]
    fn good_config_validates_into_typed_values() {
        let c = parse(GOOD, &[]).expect("valid");
        assert_eq!(c.window.max_orders, 5);
        assert_eq!(c.window.max_wait, Duration::from_millis(1500));
        assert_eq!(c.commit_interval, Duration::from_millis(200));
        assert!(c.schemas_dir.ends_with("schemas"));
        assert_eq!(c.log_format, LogFormat::Text);
    }

    #[test]
    fn unknown_key_is_named() {
        let text = GOOD.replace("max_wait_ms", "max_wiat_ms");
        let err = parse(&text, &[]).expect_err("typo").to_string();
        assert!(err.contains("max_wiat_ms"), "{err}");
    }

    #[test]
    fn missing_bootstrap_is_named() {
        let text = GOOD.replace("bootstrap_servers = \"127.0.0.1:9092\"", "");
        let err = parse(&text, &[]).expect_err("missing").to_string();
        assert!(
            err.contains("kafka.bootstrap_servers") && err.contains("missing"),
            "{err}"
        );
    }

    #[test]
    fn zero_max_orders_is_rejected() {
        let text = GOOD.replace("max_orders = 5", "max_orders = 0");
        let err = parse(&text, &[]).expect_err("zero").to_string();
        assert!(
            err.contains("window.max_orders") && err.contains('0'),
            "{err}"
        );
    }

    #[test]
    fn mistyped_value_names_its_key() {
        let text = GOOD.replace("max_wait_ms = 1500", "max_wait_ms = \"soon\"");
        let err = parse(&text, &[])
            .expect_err("string for a number")
            .to_string();
        assert!(err.contains("max_wait_ms") && err.contains("soon"), "{err}");
    }

    #[test]
    fn env_overrides_apply_and_are_typed() {
        let c = parse(
            GOOD,
            &[
                ("CMMS_ROUTER__KAFKA__BOOTSTRAP_SERVERS", "kafka:29092"),
                ("CMMS_ROUTER__WINDOW__MAX_ORDERS", "7"),
                ("UNRELATED", "x"),
            ],
        )
        .expect("valid");
        assert_eq!(c.kafka.bootstrap_servers, "kafka:29092");
        assert_eq!(c.window.max_orders, 7);
    }

    #[test]
    fn env_override_of_unknown_key_is_named() {
        let err = parse(GOOD, &[("CMMS_ROUTER__WINDOW__MAX_ODERS", "7")])
            .expect_err("unknown")
            .to_string();
        assert!(
            err.contains("max_oders") && err.contains("CMMS_ROUTER__WINDOW__MAX_ODERS"),
            "{err}"
        );
    }

    #[test]
    fn bad_bootstrap_address_is_quoted() {
        let text = GOOD.replace("127.0.0.1:9092", "localhost");
        let err = parse(&text, &[]).expect_err("no port").to_string();
        assert!(err.contains("\"localhost\""), "{err}");
    }

    #[test]
    fn secrets_are_masked_in_debug() {
        let text = format!("{GOOD}\n[kafka.client]\n\"sasl.password\" = \"hunter2\"\n");
        // `[kafka.client]` after `[window]` re-opens the kafka table, which TOML allows.
        let c = parse(&text, &[]).expect("valid");
        let shown = format!("{:?}", c.kafka);
        assert!(
            !shown.contains("hunter2") && shown.contains("***"),
            "{shown}"
        );
    }
}
