//! `cmms.DedupEntry`: one remembered order id, the value of the dedup changelog topic.

use serde::{Deserialize, Serialize};

/// An order id the router has already handled, remembered until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupEntry {
    /// Record layout version.
    pub schema_version: i32,
    /// Upstream order number (the idempotency key); also the record key.
    pub order_id: String,
    /// Input partition of the order; also the changelog partition.
    pub input_partition: i32,
    /// When the router first accepted the order, epoch millis.
    pub first_seen_at: i64,
    /// First instant at which the entry is no longer live, epoch millis.
    pub expires_at: i64,
    /// Job packet that carried the order, when known.
    pub batch_id: Option<String>,
}

impl DedupEntry {
    /// Whether the entry still marks its order as seen at `now_ms`.
    ///
    /// Live is the half-open interval before `expires_at`, so an entry whose
    /// expiry equals `now_ms` is already gone.
    pub fn is_live(&self, now_ms: i64) -> bool {
        now_ms < self.expires_at
    }
}
