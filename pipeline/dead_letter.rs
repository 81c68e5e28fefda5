//! Dead letters: a rejected record kept whole, with where it came from and why.
//!
//! The original key and value bytes are copied untouched, so an operator can
//! fix the upstream and replay exactly what was sent.

use crate::intake::Rejection;
use crate::model::{DeadLetter, SCHEMA_VERSION};

/// Where a record was read from, and its raw bytes.
#[derive(Debug, Clone, Copy)]
pub struct SourceRecord<'a> {
    /// Input topic.
    pub topic: &'a str,
    /// Input partition.
    pub partition: i32,
    /// Input offset.
    pub offset: i64,
    /// Kafka timestamp, epoch millis, when the record had one.
    pub timestamp: Option<i64>,
    /// Raw key.
    pub key: Option<&'a [u8]>,
    /// Raw value.
    pub value: Option<&'a [u8]>,
}

/// Builds the dead letter for a rejected record.
pub fn build(
    rejection: Rejection,
    source: &SourceRecord<'_>,
    instance: &str,
    now_ms: i64,
) -> DeadLetter {
    DeadLetter {
        schema_version: SCHEMA_VERSION,
        reason: rejection.reason,
        detail: rejection.detail,
        source_topic: source.topic.to_string(),
        source_partition: source.partition,
        source_offset: source.offset,
        source_timestamp: source.timestamp,
        original_key: source.key.map(<[u8]>::to_vec),
        original_value: source.value.map(<[u8]>::to_vec),
        failed_at: now_ms,
        router_instance: instance.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DeadLetterReason;

    #[test]
    fn keeps_bytes_and_coordinates() {
        let src = SourceRecord {
            topic: "in",
            partition: 3,
            offset: 99,
            timestamp: Some(5),
            key: Some(b"S1"),
            value: Some(b"\x01\x02"),
        };
        let rejection = Rejection {
            reason: DeadLetterReason::MissingSite,
            detail: "site_id is null".into(),
        };
        let d = build(rejection, &src, "r-1", 7);
        assert_eq!(
            (d.source_partition, d.source_offset, d.failed_at),
            (3, 99, 7)
        );
        assert_eq!(d.original_key.as_deref(), Some(&b"S1"[..]));
        assert_eq!(d.original_value.as_deref(), Some(&b"\x01\x02"[..]));
        assert_eq!(d.reason, DeadLetterReason::MissingSite);
    }
}
