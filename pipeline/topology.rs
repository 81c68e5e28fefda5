//! The topic set and trade map, read from `topology/topology.toml`, and the
//! `topology apply` / `topology check` commands that hold a cluster to it.
//!
//! The router never creates topics implicitly: partition counts decide
//! co-partitioning (the dedup changelog must match the input one for one), so
//! they are declared here, applied once, and checked for drift.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use serde::Deserialize;

/// A problem with the topology file.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The file could not be read.
    #[error("cannot read topology file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not valid TOML, or an unknown or mistyped key.
    #[error("invalid topology file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, naming the key.
        message: String,
    },
    /// A value is out of range.
    #[error("topology key `{key}`: {problem}")]
    Invalid {
        /// The key, e.g. `trades[2].topic`.
        key: String,
        /// What is wrong.
        problem: String,
    },
}

/// A failure talking to the cluster while applying or checking.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The admin request failed as a whole.
    #[error("{operation} failed: {source}")]
    Kafka {
        /// What was being done.
        operation: &'static str,
        /// The client error.
        source: KafkaError,
    },
    /// The broker refused to create a topic.
    #[error("cannot create topic {topic}: {code}")]
    Create {
        /// The topic.
        topic: String,
        /// The broker's error code.
        code: RDKafkaErrorCode,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTopology {
    app_id: String,
    #[serde(default = "default_replication")]
    replication_factor: i32,
    input: RawTopic,
    roster: RawTopic,
    dead_letter: RawTopic,
    vendor_desk: RawTopic,
    fallback: RawTopic,
    #[serde(default)]
    trades: Vec<RawTrade>,
}

fn default_replication() -> i32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTopic {
    name: String,
    partitions: i32,
    #[serde(default)]
    config: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrade {
    code: String,
    topic: Option<String>,
    partitions: Option<i32>,
    route: Option<String>,
    #[serde(default)]
    config: BTreeMap<String, String>,
}

/// One topic as declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Topic name.
    pub name: String,
    /// Partition count.
    pub partitions: i32,
    /// Topic-level configs that must hold on the cluster.
    pub config: BTreeMap<String, String>,
}

/// Where a trade's packets go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TradeRoute {
    /// The trade's own dispatch topic.
    Topic(String),
    /// The fallback topic, flagged as not building work.
    Fallback,
}

/// The validated topology.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Prefix of internal topics.
    pub app_id: String,
    /// Replication factor of created topics.
    pub replication_factor: i32,
    /// Normalized work orders.
    pub input: TopicSpec,
    /// Technician roster (compacted).
    pub roster: TopicSpec,
    /// Dead letters.
    pub dead_letter: TopicSpec,
    /// Vendor desk.
    pub vendor_desk: TopicSpec,
    /// Fallback.
    pub fallback: TopicSpec,
    /// Dedup changelog, co-partitioned with the input.
    pub dedup_changelog: TopicSpec,
    /// Trade code to route.
    pub trades: BTreeMap<String, TradeRoute>,
    trade_topics: Vec<TopicSpec>,
}

impl Topology {
    /// Reads and validates a topology file.
    pub fn load(path: &Path) -> Result<Self, TopologyError> {
        let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates topology text (`path` only names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Self, TopologyError> {
        let raw: RawTopology = toml::from_str(text).map_err(|e| TopologyError::Parse {
            path: path.to_path_buf(),
            message: e.message().to_string(),
        })?;
        let invalid = |key: String, problem: String| TopologyError::Invalid { key, problem };
        if raw.app_id.trim().is_empty() || !raw.app_id.chars().all(legal_topic_char) {
            return Err(invalid(
                "app_id".into(),
                format!(
                    "{:?} must be non-empty and use only letters, digits, '.', '_' and '-'",
                    raw.app_id
                ),
            ));
        }
        if raw.replication_factor < 1 {
            return Err(invalid(
                "replication_factor".into(),
                format!("{} must be at least 1", raw.replication_factor),
            ));
        }
        let topic = |key: &str, t: RawTopic| -> Result<TopicSpec, TopologyError> {
            check_topic(key, &t.name, t.partitions)?;
            Ok(TopicSpec {
                name: t.name,
                partitions: t.partitions,
                config: t.config,
            })
        };
        let input = topic("input", raw.input)?;
        let mut roster = topic("roster", raw.roster)?;
        // The roster is reference data keyed by technician: only the latest
        // entry per key matters, whatever the file says.
        roster
            .config
            .insert("cleanup.policy".into(), "compact".into());
        let dead_letter = topic("dead_letter", raw.dead_letter)?;
        let vendor_desk = topic("vendor_desk", raw.vendor_desk)?;
        let fallback = topic("fallback", raw.fallback)?;
        let dedup_changelog = TopicSpec {
            name: format!("{}-dedup-changelog", raw.app_id),
            partitions: input.partitions,
            config: BTreeMap::from([("cleanup.policy".to_string(), "compact".to_string())]),
        };

        let mut trades = BTreeMap::new();
        let mut trade_topics = Vec::new();
        for (i, t) in raw.trades.into_iter().enumerate() {
            let key = |field: &str| format!("trades[{i}].{field}");
            if t.code.is_empty()
                || !t
                    .code
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                return Err(invalid(
                    key("code"),
                    format!("{:?} must be lowercase letters, digits and '_'", t.code),
                ));
            }
            let route = match (t.route.as_deref(), t.topic) {
                (Some("fallback"), None) => TradeRoute::Fallback,
                (Some("fallback"), Some(_)) => {
                    return Err(invalid(
                        key("topic"),
                        "a trade routed to the fallback has no topic of its own".into(),
                    ))
                }
                (Some(other), _) => {
                    return Err(invalid(
                        key("route"),
                        format!("{other:?} is not a route: the only one is \"fallback\""),
                    ))
                }
                (None, Some(name)) => {
                    let partitions = t.partitions.unwrap_or(input.partitions);
                    check_topic(&key("topic"), &name, partitions)?;
                    trade_topics.push(TopicSpec {
                        name: name.clone(),
                        partitions,
                        config: t.config,
                    });
                    TradeRoute::Topic(name)
                }
                (None, None) => {
                    return Err(invalid(
                        key("topic"),
                        "missing: give the trade a topic, or route = \"fallback\"".into(),
                    ))
                }
            };
            if trades.insert(t.code.clone(), route).is_some() {
                return Err(invalid(
                    key("code"),
                    format!("{:?} is declared twice", t.code),
                ));
            }
        }
        if trades.is_empty() {
            return Err(invalid("trades".into(), "no trades declared".into()));
        }
        let topology = Self {
            app_id: raw.app_id,
            replication_factor: raw.replication_factor,
            input,
            roster,
            dead_letter,
            vendor_desk,
            fallback,
            dedup_changelog,
            trades,
            trade_topics,
        };
        let mut seen = BTreeSet::new();
        for t in topology.router_topics() {
            if t.name == topology.input.name && seen.contains(&t.name) {
                return Err(invalid(
                    "input.name".into(),
                    format!("{:?} is also an output topic", t.name),
                ));
            }
            seen.insert(t.name.clone());
        }
        Ok(topology)
    }

    /// Every topic the router reads or writes, each once.
    pub fn router_topics(&self) -> Vec<&TopicSpec> {
        let mut out: Vec<&TopicSpec> = vec![
            &self.input,
            &self.roster,
            &self.dead_letter,
            &self.vendor_desk,
            &self.fallback,
            &self.dedup_changelog,
        ];
        out.extend(self.trade_topics.iter());
        let mut seen = BTreeSet::new();
        out.retain(|t| seen.insert(t.name.as_str()));
        out
    }

    /// The topic a trade's packets go to, or `None` for an undeclared trade.
    pub fn route(&self, trade: &str) -> Option<&TradeRoute> {
        self.trades.get(trade)
    }
}

fn legal_topic_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

fn check_topic(key: &str, name: &str, partitions: i32) -> Result<(), TopologyError> {
    if name.is_empty() || name.len() > 249 || !name.chars().all(legal_topic_char) {
        return Err(TopologyError::Invalid {
            key: key.to_string(),
            problem: format!("{name:?} is not a legal Kafka topic name (letters, digits, '.', '_', '-', at most 249)"),
        });
    }
    if !(1..=10_000).contains(&partitions) {
        return Err(TopologyError::Invalid {
            key: key.to_string(),
            problem: format!("{name}: {partitions} partitions is out of range (1 to 10000)"),
        });
    }
    Ok(())
}

/// What `apply` or `check` found for one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicStatus {
    /// Created now.
    Created,
    /// Present and as declared.
    Matches,
    /// Not present (check only).
    Missing,
    /// Present but different; each entry says how.
    Differs(Vec<String>),
}

/// One line of an apply or check report.
#[derive(Debug, Clone)]
pub struct TopicReport {
    /// Topic name.
    pub topic: String,
    /// What was found or done.
    pub status: TopicStatus,
}

impl std::fmt::Display for TopicReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.status {
            TopicStatus::Created => write!(f, "created  {}", self.topic),
            TopicStatus::Matches => write!(f, "ok       {}", self.topic),
            TopicStatus::Missing => write!(f, "missing  {}", self.topic),
            TopicStatus::Differs(d) => write!(f, "differs  {}: {}", self.topic, d.join("; ")),
        }
    }
}

/// Creates missing topics (when `create` is set) and compares existing ones
/// with the declaration. Existing topics are never altered: changing a
/// partition count would move keys between partitions, so differences are
/// reported for an operator to decide.
pub async fn reconcile(
    topology: &Topology,
    client: &ClientConfig,
    create: bool,
) -> Result<Vec<TopicReport>, ApplyError> {
    let admin: AdminClient<DefaultClientContext> =
        client.create().map_err(|source| ApplyError::Kafka {
            operation: "creating the admin client",
            source,
        })?;
    let timeout = Duration::from_secs(30);
    let opts = AdminOptions::new().operation_timeout(Some(timeout));
    let metadata = admin
        .inner()
        .fetch_metadata(None, timeout)
        .map_err(|source| ApplyError::Kafka {
            operation: "fetching cluster metadata",
            source,
        })?;
    let existing: BTreeMap<String, i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| (t.name().to_string(), t.partitions().len() as i32))
        .collect();

    let mut reports = Vec::new();
    let mut to_create = Vec::new();
    for spec in topology.router_topics() {
        match existing.get(&spec.name) {
            None if create => to_create.push(spec),
            None => reports.push(TopicReport {
                topic: spec.name.clone(),
                status: TopicStatus::Missing,
            }),
            Some(&partitions) => {
                let mut diffs = Vec::new();
                if partitions != spec.partitions {
                    diffs.push(format!(
                        "{partitions} partitions, declared {}",
                        spec.partitions
                    ));
                }
                let results = admin
                    .describe_configs([&ResourceSpecifier::Topic(&spec.name)], &opts)
                    .await
                    .map_err(|source| ApplyError::Kafka {
                        operation: "describing topic configs",
                        source,
                    })?;
                for result in results {
                    let resource = result.map_err(|code| ApplyError::Kafka {
                        operation: "describing topic configs",
                        source: KafkaError::AdminOp(code),
                    })?;
                    for (key, want) in &spec.config {
                        let have = resource.get(key).and_then(|e| e.value.clone());
                        if have.as_deref() != Some(want.as_str()) {
                            diffs.push(format!(
                                "{key}={}, declared {want}",
                                have.as_deref().unwrap_or("<unset>")
                            ));
                        }
                    }
                }
                reports.push(TopicReport {
                    topic: spec.name.clone(),
                    status: if diffs.is_empty() {
                        TopicStatus::Matches
                    } else {
                        TopicStatus::Differs(diffs)
                    },
                });
            }
        }
    }
    if !to_create.is_empty() {
        let new_topics: Vec<NewTopic<'_>> = to_create
            .iter()
            .map(|spec| {
                spec.config.iter().fold(
                    NewTopic::new(
                        &spec.name,
                        spec.partitions,
                        TopicReplication::Fixed(topology.replication_factor),
                    ),
                    |t, (k, v)| t.set(k, v),
                )
            })
            .collect();
        let results = admin
            .create_topics(&new_topics, &opts)
            .await
            .map_err(|source| ApplyError::Kafka {
                operation: "creating topics",
                source,
            })?;
        for result in results {
            match result {
                Ok(topic) => reports.push(TopicReport {
                    topic,
                    status: TopicStatus::Created,
                }),
                // Another process created it between our metadata read and now.
                Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => reports.push(TopicReport {
                    topic,
                    status: TopicStatus::Matches,
                }),
                Err((topic, code)) => return Err(ApplyError::Create { topic, code }),
            }
        }
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> Topology {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/topology/topology.toml"
        ));
        Topology::load(path).expect("shipped topology is valid")
    }

    #[test]
    fn shipped_topology_is_valid_and_co_partitions_the_changelog() {
        let t = shipped();
        assert_eq!(t.dedup_changelog.partitions, t.input.partitions);
        assert_eq!(t.dedup_changelog.config["cleanup.policy"], "compact");
        assert_eq!(
            t.route("hvac"),
            Some(&TradeRoute::Topic("cmms.dispatch.hvac".into()))
        );
        assert_eq!(t.route("non_building"), Some(&TradeRoute::Fallback));
        assert_eq!(t.route("astrology"), None);
    }

    #[test]
    fn every_topic_listed_once() {
        let t = shipped();
        let names: Vec<_> = t.router_topics().iter().map(|t| t.name.clone()).collect();
        let unique: BTreeSet<_> = names.iter().collect();
        assert_eq!(names.len(), unique.len());
        assert!(names.contains(&"cmms-router-dedup-changelog".to_string()));
    }

    #[test]
    fn bad_values_name_their_key() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/topology/topology.toml"
        ))
        .expect("readable");
        let zero = text.replacen("partitions = 6", "partitions = 0", 1);
        let err = Topology::parse(&zero, Path::new("t.toml"))
            .expect_err("zero")
            .to_string();
        assert!(
            err.contains("`input`") && err.contains("0 partitions"),
            "{err}"
        );

        let dup = format!("{text}\n[[trades]]\ncode = \"hvac\"\ntopic = \"x\"\n");
        let err = Topology::parse(&dup, Path::new("t.toml"))
            .expect_err("dup")
            .to_string();
        assert!(err.contains("declared twice"), "{err}");

        let typo = text.replacen("app_id", "appid", 1);
        let err = Topology::parse(&typo, Path::new("t.toml"))
            .expect_err("typo")
            .to_string();
        assert!(err.contains("appid"), "{err}");
    }
}
