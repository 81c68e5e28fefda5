//! `cmms.DeadLetter`: a record the router could not route, kept whole with the reason.

use serde::{Deserialize, Serialize};

/// Stable reason code of a dead letter (`cmms.DeadLetterReason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeadLetterReason {
    /// The bytes are not a `NormalizedWorkOrder` datum.
    Undecodable,
    /// The order id is blank.
    MissingOrderId,
    /// The site is null or blank.
    MissingSite,
    /// The trade is not declared in the topology.
    UnknownTrade,
    /// The SLA deadline lies before the creation time.
    DeadlineBeforeCreation,
    /// Some other field is out of its range.
    InvalidField,
    /// A symbol this version does not know (schema evolution).
    Other,
}

impl DeadLetterReason {
    /// Every reason, for iterating over labels.
    pub const ALL: [Self; 7] = [
        Self::Undecodable,
        Self::MissingOrderId,
        Self::MissingSite,
        Self::UnknownTrade,
        Self::DeadlineBeforeCreation,
        Self::InvalidField,
        Self::Other,
    ];

    /// Stable lowercase label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Undecodable => "undecodable",
            Self::MissingOrderId => "missing_order_id",
            Self::MissingSite => "missing_site",
            Self::UnknownTrade => "unknown_trade",
            Self::DeadlineBeforeCreation => "deadline_before_creation",
            Self::InvalidField => "invalid_field",
            Self::Other => "other",
        }
    }
}

/// A dead letter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Record layout version.
    pub schema_version: i32,
    /// Stable reason code.
    pub reason: DeadLetterReason,
    /// Human-readable explanation quoting the offending value.
    pub detail: String,
    /// Topic of the original record.
    pub source_topic: String,
    /// Partition of the original record.
    pub source_partition: i32,
    /// Offset of the original record.
    pub source_offset: i64,
    /// Kafka timestamp of the original record, epoch millis.
    pub source_timestamp: Option<i64>,
    /// Original key bytes.
    #[serde(with = "apache_avro::serde::bytes_opt")]
    pub original_key: Option<Vec<u8>>,
    /// Original value bytes.
    #[serde(with = "apache_avro::serde::bytes_opt")]
    pub original_value: Option<Vec<u8>>,
    /// When the router rejected it, epoch millis.
    pub failed_at: i64,
    /// Instance that rejected it.
    pub router_instance: String,
}
