//! The dedup store: which order ids the input partitions owned by this
//! instance have already handled, and until when they are remembered.
//!
//! # Commit protocol
//!
//! A change passes through three states, each its own type, so the wrong
//! transition does not compile:
//!
//! 1. **Staged.** [`DedupStore::stage_put`] and [`DedupStore::expire`]
//!    record changes in memory ([`StagedDedup`]). Lookups see them at once;
//!    RocksDB does not.
//! 2. **Pending.** [`DedupStore::begin_commit`] moves them into a
//!    [`PendingCommit`], which borrows the store mutably for as long as the
//!    Kafka transaction is in flight: nothing can be staged or looked up
//!    meanwhile, so what is applied afterwards is exactly what
//!    [`PendingCommit::changelog`] handed to the transaction.
//! 3. **Committed.** Once the transaction has committed,
//!    [`PendingCommit::apply_committed`] writes the changes, their index
//!    entries and the changelog offsets in one atomic batch (see
//!    [`super::store`]). Aborting ([`PendingCommit::discard_staged`], or
//!    just dropping it) throws them away.
//!
//! So local state never holds a write the changelog lacks, and its stored
//! offsets always name the changelog record it reflects: a restart restores
//! only the tail after them. If the batch itself fails, local state lags the
//! changelog; the store then refuses further use ([`StateError::Poisoned`])
//! until a restart has restored the difference.
//!
//! # Expiry
//!
//! An entry is live while `now < expires_at` ([`DedupEntry::is_live`]). Every
//! lookup checks that on the value, so an entry whose tombstone is not
//! written yet, or that RocksDB still holds, is never reported live.
//! [`DedupStore::expire`] stages tombstones for expired entries, found
//! through the `dedup_expiry` index as a range scan up to `now`. The index
//! may hold stale entries (restore writes without reading, so an overwritten
//! or deleted key leaves its old index entry behind); `expire` checks each
//! against the value and drops the stale ones without a changelog record.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use super::restore::RestoredPartition;
use super::store::{
    dedup_key, expired_range, parse_expiry_key, EntryValue, Family, MetaKey, StateError, StateStore,
};
use crate::model::{DedupEntry, NormalizedWorkOrder, SCHEMA_VERSION};

/// How long an order id is remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupTtl {
    max: Duration,
}

impl DedupTtl {
    /// A policy capping every entry at `max` (config `dedup.max_ttl_ms`).
    pub fn new(max: Duration) -> Result<Self, StateError> {
        if max.is_zero() {
            return Err(StateError::ZeroTtl { max });
        }
        Ok(Self { max })
    }

    /// The cap.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// How long an order is remembered: its SLA window (`sla_deadline -
    /// created_at`) capped at the maximum; the maximum when it has no
    /// deadline. A window that is zero or negative is bad data (intake
    /// dead-letters such orders), so it counts as no deadline: remembering
    /// too long costs space, forgetting too early routes a duplicate.
    pub fn ttl(&self, created_at: i64, sla_deadline: Option<i64>) -> Duration {
        match sla_deadline.map(|d| d.saturating_sub(created_at)) {
            Some(window) if window > 0 => self.max.min(Duration::from_millis(window as u64)),
            _ => self.max,
        }
    }

    /// When the entry of `order`, first seen at `first_seen_at`, expires.
    ///
    /// The window counts from when the router saw the order, not from its
    /// `created_at`: duplicates arrive relative to the first delivery, and a
    /// replay of old orders would otherwise expire on arrival and not be
    /// deduplicated at all.
    pub fn expires_at(&self, order: &NormalizedWorkOrder, first_seen_at: i64) -> i64 {
        let ttl = self.ttl(order.created_at, order.sla_deadline);
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        first_seen_at.saturating_add(ttl_ms)
    }

    /// The entry to stage for `order` read from `input_partition`.
    pub fn entry(
        &self,
        order: &NormalizedWorkOrder,
        input_partition: i32,
        first_seen_at: i64,
        batch_id: Option<String>,
    ) -> DedupEntry {
        DedupEntry {
            schema_version: SCHEMA_VERSION,
            order_id: order.order_id.clone(),
            input_partition,
            first_seen_at,
            expires_at: self.expires_at(order, first_seen_at),
            batch_id,
        }
    }
}

/// Answer of a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// No live entry: route the order (and stage its entry).
    New,
    /// A live entry: the order is a duplicate.
    Seen(DedupEntry),
}

/// One staged change of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Staged {
    /// Remember the order.
    Put(DedupEntry),
    /// Forget the order. `indexed_at` is the `expires_at` of the index entry
    /// to delete with it, when known; otherwise that entry turns stale and a
    /// later [`DedupStore::expire`] drops it.
    Tombstone { indexed_at: Option<i64> },
}

/// Changes staged since the last commit, per partition and order id: at most
/// one per key, the last one wins, which is also what compaction keeps.
#[derive(Debug, Default)]
pub struct StagedDedup {
    ops: BTreeMap<i32, BTreeMap<String, Staged>>,
    /// Stale index entries (partition, expires_at, order id) to delete; they
    /// change no answer, so they produce no changelog record.
    stale_index: BTreeSet<(i32, i64, String)>,
}

impl StagedDedup {
    /// Number of changelog records the changes produce.
    pub fn len(&self) -> usize {
        self.ops.values().map(BTreeMap::len).sum()
    }

    /// Whether nothing is staged, not even index clean-up.
    pub fn is_empty(&self) -> bool {
        self.len() == 0 && self.stale_index.is_empty()
    }

    /// Whether the changes write changelog records of `partition`.
    pub fn touches(&self, partition: i32) -> bool {
        self.ops.get(&partition).is_some_and(|ops| !ops.is_empty())
    }

    /// The changelog records to write in the transaction, partition by
    /// partition: produce each to its `partition` of the changelog topic.
    pub fn changelog(&self) -> impl Iterator<Item = ChangelogWrite<'_>> + '_ {
        self.ops.iter().flat_map(|(&partition, ops)| {
            ops.iter().map(move |(id, op)| ChangelogWrite {
                partition,
                order_id: id,
                entry: match op {
                    Staged::Put(e) => Some(e),
                    Staged::Tombstone { .. } => None,
                },
            })
        })
    }
}

/// One record for the dedup changelog topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangelogWrite<'a> {
    /// Changelog partition, equal to the input partition.
    pub partition: i32,
    /// The order id; its UTF-8 bytes are the record key.
    pub order_id: &'a str,
    /// The value to encode with `Codec::encode_dedup_entry`; `None` is a tombstone.
    pub entry: Option<&'a DedupEntry>,
}

/// What [`DedupStore::expire`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expired {
    /// Order ids whose tombstones are now staged (and will be in the changelog).
    pub order_ids: Vec<String>,
    /// False when the limit stopped the sweep before every expired entry was seen.
    pub complete: bool,
}

/// The dedup entries of the input partitions this instance owns.
#[derive(Debug)]
pub struct DedupStore {
    store: Arc<StateStore>,
    owned: BTreeSet<i32>,
    staged: StagedDedup,
    /// Set when a committed write failed to apply: see the module docs.
    poisoned: Option<String>,
}

impl DedupStore {
    /// A dedup store over `store`, owning no partition yet.
    pub fn new(store: Arc<StateStore>) -> Self {
        Self {
            store,
            owned: BTreeSet::new(),
            staged: StagedDedup::default(),
            poisoned: None,
        }
    }

    /// The underlying database, for restores.
    pub fn state_store(&self) -> &Arc<StateStore> {
        &self.store
    }

    /// Takes ownership of a partition whose state has just been restored.
    pub fn adopt(&mut self, restored: RestoredPartition) {
        self.owned.insert(restored.partition());
    }

    /// Gives up a partition (revoked). Commit first: changes still staged
    /// for it are dropped. Its local entries stay on disk, so getting it back
    /// later restores only what other owners wrote meanwhile.
    pub fn release(&mut self, partition: i32) {
        self.owned.remove(&partition);
        self.staged.ops.remove(&partition);
        self.staged.stale_index.retain(|(p, _, _)| *p != partition);
    }

    /// Partitions owned, in order.
    pub fn owned(&self) -> impl Iterator<Item = i32> + '_ {
        self.owned.iter().copied()
    }

    /// Offset of the last changelog record the committed state of
    /// `partition` reflects.
    pub fn committed_offset(&self, partition: i32) -> Result<Option<i64>, StateError> {
        self.store.offset(MetaKey::DedupChangelog(partition))
    }

    fn usable(&self, partition: i32) -> Result<(), StateError> {
        if let Some(cause) = &self.poisoned {
            return Err(StateError::Poisoned {
                cause: cause.clone(),
            });
        }
        if !self.owned.contains(&partition) {
            return Err(StateError::NotOwned { partition });
        }
        Ok(())
    }

    /// Whether `order_id` has a live entry in `partition` at `now_ms`,
    /// counting staged changes.
    pub fn check(&self, partition: i32, order_id: &str, now_ms: i64) -> Result<Lookup, StateError> {
        self.usable(partition)?;
        let staged = self
            .staged
            .ops
            .get(&partition)
            .and_then(|ops| ops.get(order_id));
        let entry = match staged {
            Some(Staged::Put(e)) => Some(e.clone()),
            Some(Staged::Tombstone { .. }) => None,
            None => self.committed(partition, order_id)?,
        };
        Ok(match entry {
            Some(e) if e.is_live(now_ms) => Lookup::Seen(e),
            _ => Lookup::New,
        })
    }

    fn committed(&self, partition: i32, order_id: &str) -> Result<Option<DedupEntry>, StateError> {
        let key = dedup_key(partition, order_id.as_bytes());
        let Some(bytes) = self.store.get(Family::Dedup, &key, "dedup lookup")? else {
            return Ok(None);
        };
        let v =
            EntryValue::decode(&bytes).map_err(|r| self.store.corrupt(Family::Dedup, &key, r))?;
        Ok(Some(DedupEntry {
            schema_version: SCHEMA_VERSION,
            order_id: order_id.to_string(),
            input_partition: partition,
            first_seen_at: v.first_seen_at,
            expires_at: v.expires_at,
            batch_id: v.batch_id,
        }))
    }

    /// Stages remembering `entry.order_id` in `entry.input_partition`
    /// (replacing any entry of that id).
    pub fn stage_put(&mut self, entry: DedupEntry) -> Result<(), StateError> {
        self.usable(entry.input_partition)?;
        self.staged
            .ops
            .entry(entry.input_partition)
            .or_default()
            .insert(entry.order_id.clone(), Staged::Put(entry));
        Ok(())
    }

    /// Stages tombstones for the entries of `partition` expired at `now_ms`.
    ///
    /// `limit` bounds the index entries examined on disk (tombstoned or
    /// dropped as stale), so one sweep cannot stall the loop; call again
    /// while [`Expired::complete`] is false. Staged entries are always
    /// examined: they are few and in memory.
    pub fn expire(
        &mut self,
        partition: i32,
        now_ms: i64,
        limit: usize,
    ) -> Result<Expired, StateError> {
        self.usable(partition)?;
        let Self { store, staged, .. } = self;
        let ops = staged.ops.entry(partition).or_default();
        let mut out = Expired {
            order_ids: Vec::new(),
            complete: true,
        };
        for (id, op) in ops.iter_mut() {
            if matches!(op, Staged::Put(e) if !e.is_live(now_ms)) {
                *op = Staged::Tombstone { indexed_at: None };
                out.order_ids.push(id.clone());
            }
        }
        let (lower, upper) = expired_range(partition, now_ms);
        let mut examined = 0usize;
        for item in store.range(Family::DedupExpiry, lower, upper) {
            let (key, _) = item?;
            let (expires_at, id) = parse_expiry_key(&key)
                .ok_or_else(|| store.corrupt(Family::DedupExpiry, &key, "key too short".into()))?;
            let id = std::str::from_utf8(id).map_err(|_| {
                store.corrupt(Family::DedupExpiry, &key, "order id is not UTF-8".into())
            })?;
            // A staged change of the key decides its fate at commit; an index
            // entry already marked stale needs nothing more. Neither counts
            // against the limit, or repeated sweeps would never finish.
            if ops.contains_key(id)
                || staged
                    .stale_index
                    .contains(&(partition, expires_at, id.to_string()))
            {
                continue;
            }
            if examined == limit {
                out.complete = false;
                break;
            }
            examined += 1;
            let dkey = dedup_key(partition, id.as_bytes());
            let value = store.get(Family::Dedup, &dkey, "expiry lookup")?;
            let value = value
                .map(|b| EntryValue::decode(&b))
                .transpose()
                .map_err(|r| store.corrupt(Family::Dedup, &dkey, r))?;
            match value {
                Some(v) if v.expires_at == expires_at => {
                    ops.insert(
                        id.to_string(),
                        Staged::Tombstone {
                            indexed_at: Some(expires_at),
                        },
                    );
                    out.order_ids.push(id.to_string());
                }
                // Deleted, or overwritten with another expiry: the index
                // entry is left over from an earlier value.
                _ => {
                    staged
                        .stale_index
                        .insert((partition, expires_at, id.to_string()));
                }
            }
        }
        if ops.is_empty() {
            staged.ops.remove(&partition);
        }
        Ok(out)
    }

    /// The changes staged so far.
    pub fn staged(&self) -> &StagedDedup {
        &self.staged
    }

    /// Drops every staged change (the transaction was aborted before
    /// [`DedupStore::begin_commit`]).
    pub fn discard_staged(&mut self) {
        self.staged = StagedDedup::default();
    }

    /// Seals the staged changes for the transaction being committed.
    pub fn begin_commit(&mut self) -> Result<PendingCommit<'_>, StateError> {
        if let Some(cause) = &self.poisoned {
            return Err(StateError::Poisoned {
                cause: cause.clone(),
            });
        }
        let staged = std::mem::take(&mut self.staged);
        Ok(PendingCommit {
            dedup: self,
            staged,
        })
    }
}

/// Staged changes sealed for one Kafka transaction. Apply them after the
/// transaction committed, discard them after it aborted; dropping this
/// discards them too, which is right whenever the outcome is not a commit.
#[must_use = "apply the changes after the transaction commits, or discard them"]
#[derive(Debug)]
pub struct PendingCommit<'a> {
    dedup: &'a mut DedupStore,
    staged: StagedDedup,
}

impl PendingCommit<'_> {
    /// The changelog records this transaction must carry.
    pub fn changelog(&self) -> impl Iterator<Item = ChangelogWrite<'_>> + '_ {
        self.staged.changelog()
    }

    /// The sealed changes.
    pub fn staged(&self) -> &StagedDedup {
        &self.staged
    }

    /// Writes the changes to RocksDB after their transaction committed, in one
    /// batch with `changelog_offsets`: per partition, the offset of the last
    /// changelog record the transaction wrote there. A partition with changes
    /// but no offset keeps its old offset, which is safe (its records are
    /// re-applied on the next restore) but wasteful.
    pub fn apply_committed(self, changelog_offsets: &BTreeMap<i32, i64>) -> Result<(), StateError> {
        let Self { dedup, staged } = self;
        let mut batch = dedup.store.batch();
        // Stale index entries go first: a put staged after the sweep may have
        // re-created the same index entry, and within a batch the later write
        // of a key wins.
        for (partition, expires_at, id) in &staged.stale_index {
            batch.delete_expiry(*partition, *expires_at, id.as_bytes());
        }
        for (&partition, ops) in &staged.ops {
            for (id, op) in ops {
                match op {
                    Staged::Put(e) => batch.put_dedup(
                        partition,
                        id.as_bytes(),
                        &EntryValue {
                            first_seen_at: e.first_seen_at,
                            expires_at: e.expires_at,
                            batch_id: e.batch_id.clone(),
                        },
                    ),
                    Staged::Tombstone { indexed_at } => {
                        batch.delete_dedup(partition, id.as_bytes());
                        if let Some(at) = indexed_at {
                            batch.delete_expiry(partition, *at, id.as_bytes());
                        }
                    }
                }
            }
        }
        for (&partition, &offset) in changelog_offsets {
            batch.put_offset(MetaKey::DedupChangelog(partition), offset);
        }
        batch
            .commit("apply committed dedup changes")
            .inspect_err(|e| {
                dedup.poisoned = Some(e.to_string());
            })
    }

    /// Drops the changes (the transaction aborted).
    pub fn discard_staged(self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::samples::{self, MONDAY_8AM};
    use crate::state::restore::RestoredPartition;

    const HOUR: i64 = 3_600_000;

    fn open(dir: &std::path::Path, partitions: &[i32]) -> DedupStore {
        let store = Arc::new(StateStore::open(dir).expect("open"));
        let mut d = DedupStore::new(store);
        for &p in partitions {
            d.adopt(RestoredPartition::for_tests(p));
        }
        d
    }

    fn entry(p: i32, id: &str, expires_at: i64) -> DedupEntry {
        DedupEntry {
            schema_version: SCHEMA_VERSION,
            order_id: id.to_string(),
            input_partition: p,
            first_seen_at: MONDAY_8AM,
            expires_at,
            batch_id: Some("b-1".into()),
        }
    }

    fn commit(d: &mut DedupStore, offsets: &[(i32, i64)]) {
        d.begin_commit()
            .expect("usable")
            .apply_committed(&offsets.iter().copied().collect())
            .expect("apply");
    }

    #[test]
    fn ttl_is_the_sla_window_capped_at_the_maximum() {
        let ttl = DedupTtl::new(Duration::from_secs(24 * 3600)).expect("positive");
        let day = Duration::from_secs(24 * 3600);
        assert_eq!(ttl.ttl(0, Some(8 * HOUR)), Duration::from_secs(8 * 3600));
        assert_eq!(ttl.ttl(0, Some(48 * HOUR)), day, "capped");
        assert_eq!(ttl.ttl(0, None), day, "no deadline: the cap");
        assert_eq!(
            ttl.ttl(5 * HOUR, Some(HOUR)),
            day,
            "deadline before creation: the cap"
        );
        assert_eq!(ttl.ttl(HOUR, Some(HOUR)), day, "empty window: the cap");
        assert_eq!(
            ttl.ttl(i64::MIN, Some(i64::MAX)),
            day,
            "overflow saturates, then capped"
        );
        assert!(DedupTtl::new(Duration::ZERO)
            .expect_err("zero")
            .to_string()
            .contains("not positive"));
    }

    #[test]
    fn expiry_counts_from_first_sight() {
        let ttl = DedupTtl::new(Duration::from_secs(7 * 24 * 3600)).expect("positive");
        // The sample's SLA window is 8 h after creation at MONDAY_8AM.
        let order = samples::work_order("WO-1", "S1", "hvac");
        let seen = MONDAY_8AM + 365 * 24 * HOUR; // replayed a year later
        assert_eq!(ttl.expires_at(&order, seen), seen + 8 * HOUR);
        let e = ttl.entry(&order, 2, seen, None);
        assert_eq!((e.input_partition, e.order_id.as_str()), (2, "WO-1"));
        assert_eq!(ttl.expires_at(&order, i64::MAX - 1), i64::MAX, "saturates");
    }

    #[test]
    fn staged_entries_are_seen_before_commit_and_gone_after_discard() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut d = open(dir.path(), &[0]);
        d.stage_put(entry(0, "WO-1", MONDAY_8AM + HOUR))
            .expect("stage");
        assert!(matches!(
            d.check(0, "WO-1", MONDAY_8AM).expect("check"),
            Lookup::Seen(_)
        ));
        d.discard_staged();
        assert_eq!(d.check(0, "WO-1", MONDAY_8AM).expect("check"), Lookup::New);
        d.stage_put(entry(0, "WO-1", MONDAY_8AM + HOUR))
            .expect("stage");
        d.begin_commit().expect("usable").discard_staged();
        assert_eq!(d.check(0, "WO-1", MONDAY_8AM).expect("check"), Lookup::New);
        assert_eq!(d.committed_offset(0).expect("read"), None);
    }

    #[test]
    fn apply_committed_writes_entries_and_offsets_and_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut d = open(dir.path(), &[0, 1]);
            d.stage_put(entry(0, "WO-1", MONDAY_8AM + HOUR))
                .expect("stage");
            d.stage_put(entry(1, "WO-2", MONDAY_8AM + HOUR))
                .expect("stage");
            let pending = d.begin_commit().expect("usable");
            let records: Vec<_> = pending
                .changelog()
                .map(|w| (w.partition, w.order_id.to_string()))
                .collect();
            assert_eq!(records, [(0, "WO-1".to_string()), (1, "WO-2".to_string())]);
            pending
                .apply_committed(&BTreeMap::from([(0, 17), (1, 4)]))
                .expect("apply");
            assert_eq!(d.committed_offset(0).expect("read"), Some(17));
        }
        let d = open(dir.path(), &[0, 1]);
        assert_eq!(d.committed_offset(0).expect("read"), Some(17));
        assert_eq!(d.committed_offset(1).expect("read"), Some(4));
        assert_eq!(
            d.check(0, "WO-1", MONDAY_8AM).expect("check"),
            Lookup::Seen(entry(0, "WO-1", MONDAY_8AM + HOUR))
        );
        assert_eq!(
            d.check(1, "WO-1", MONDAY_8AM).expect("check"),
            Lookup::New,
            "partitions are separate"
        );
    }

    #[test]
    fn expired_entries_are_not_live_before_anything_deletes_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut d = open(dir.path(), &[0]);
        let exp = MONDAY_8AM + HOUR;
        d.stage_put(entry(0, "WO-1", exp)).expect("stage");
        commit(&mut d, &[(0, 0)]);
        assert!(matches!(
            d.check(0, "WO-1", exp - 1).expect("check"),
            Lookup::Seen(_)
        ));
        // Still on disk (no sweep, no compaction), but not live any more.
        assert_eq!(d.check(0, "WO-1", exp).expect("check"), Lookup::New);
        assert!(d.committed(0, "WO-1").expect("read").is_some());
    }

    #[test]
    fn expire_tombstones_through_the_index_and_respects_the_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut d = open(dir.path(), &[0, 1]);
        for i in 0..5 {
            d.stage_put(entry(0, &format!("WO-{i}"), MONDAY_8AM + i * HOUR))
                .expect("stage");
        }
        d.stage_put(entry(1, "WO-0", MONDAY_8AM)).expect("stage");
        commit(&mut d, &[(0, 4), (1, 0)]);

        let now = MONDAY_8AM + 2 * HOUR; // WO-0, WO-1, WO-2 expired
        let first = d.expire(0, now, 2).expect("expire");
        assert_eq!(first.order_ids, ["WO-0", "WO-1"]);
        assert!(!first.complete);
        let second = d.expire(0, now, 2).expect("expire");
        assert_eq!(second.order_ids, ["WO-2"]);
        assert!(second.complete);
        let tombstones: Vec<_> = d
            .staged()
            .changelog()
            .filter(|w| w.entry.is_none())
            .map(|w| w.order_id)
            .collect();
        assert_eq!(tombstones, ["WO-0", "WO-1", "WO-2"]);
        // The router commits partition 0's offset with these tombstones.
        assert!(d.staged().touches(0));
        assert!(!d.staged().touches(1));
        commit(&mut d, &[(0, 7)]);
        assert!(!d.staged().touches(0));
        // Nothing left to sweep in partition 0; partition 1 untouched.
        assert_eq!(
            d.expire(0, now, 10).expect("expire"),
            Expired {
                order_ids: vec![],
                complete: true
            }
        );
        assert!(d.committed(1, "WO-0").expect("read").is_some());
        assert!(d.committed(0, "WO-3").expect("read").is_some());
        assert!(d.committed(0, "WO-0").expect("read").is_none());
    }

    #[test]
    fn overwritten_entries_leave_stale_index_entries_that_expire_drops_quietly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut d = open(dir.path(), &[0]);
        d.stage_put(entry(0, "WO-1", MONDAY_8AM)).expect("stage");
        commit(&mut d, &[(0, 0)]);
        d.stage_put(entry(0, "WO-1", MONDAY_8AM + 5 * HOUR))
            .expect("stage");
        commit(&mut d, &[(0, 1)]);
        let swept = d.expire(0, MONDAY_8AM + HOUR, 10).expect("expire");
        assert_eq!(swept.order_ids, Vec::<String>::new(), "the live value wins");
        assert_eq!(
            d.staged().len(),
            0,
            "no changelog record for index clean-up"
        );
        assert!(
            !d.staged().is_empty(),
            "but the stale index entry is queued"
        );
        commit(&mut d, &[]);
        assert!(matches!(
            d.check(0, "WO-1", MONDAY_8AM + HOUR).expect("check"),
            Lookup::Seen(_)
        ));
    }

    #[test]
    fn a_put_staged_after_its_index_entry_was_found_stale_keeps_the_entry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut d = open(dir.path(), &[0]);
        d.stage_put(entry(0, "WO-1", MONDAY_8AM)).expect("stage");
        commit(&mut d, &[(0, 0)]);
        d.stage_put(entry(0, "WO-1", MONDAY_8AM + 5 * HOUR))
            .expect("stage");
        commit(&mut d, &[(0, 1)]);
        // The sweep finds (8AM, WO-1) stale; then the same entry comes back.
        d.expire(0, MONDAY_8AM + HOUR, 10).expect("expire");
        d.stage_put(entry(0, "WO-1", MONDAY_8AM)).expect("stage");
        commit(&mut d, &[(0, 2)]);
        let swept = d.expire(0, MONDAY_8AM + HOUR, 10).expect("expire");
        assert_eq!(
            swept.order_ids,
            ["WO-1"],
            "its index entry survived the clean-up"
        );
    }

    #[test]
    fn staged_puts_that_already_expired_are_tombstoned_too() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut d = open(dir.path(), &[0]);
        d.stage_put(entry(0, "WO-1", MONDAY_8AM)).expect("stage");
        let swept = d.expire(0, MONDAY_8AM, 0).expect("expire");
        assert_eq!(swept.order_ids, ["WO-1"]);
        assert!(swept.complete, "nothing on disk to examine");
    }

    #[test]
    fn partitions_not_adopted_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut d = open(dir.path(), &[0]);
        let err = d.check(3, "WO-1", 0).expect_err("not owned");
        assert!(
            err.to_string().contains("partition 3 is not owned"),
            "{err}"
        );
        assert!(d.stage_put(entry(3, "WO-1", 1)).is_err());
        d.stage_put(entry(0, "WO-1", MONDAY_8AM)).expect("stage");
        d.release(0);
        assert!(
            d.staged().is_empty(),
            "release drops the partition's staged changes"
        );
        assert!(d.check(0, "WO-1", 0).is_err());
    }
}
