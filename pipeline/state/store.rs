//! The instance's one RocksDB database: its column families, its key layout,
//! and the promise the rest of `state` builds on: a [`StateBatch`] reaches
//! the database whole or not at all.
//!
//! # Layout
//!
//! | family | key | value |
//! |---|---|---|
//! | `dedup` | input partition (4 bytes, big-endian) + order id bytes | [`EntryValue`] (compact, below) |
//! | `dedup_expiry` | input partition (4, BE) + `expires_at` (8, order-preserving) + order id bytes | empty |
//! | `roster` | technician id bytes | the `cmms.TechnicianRoster` Avro datum, as read from the topic |
//! | `meta` | `dedup-changelog/<partition>` or `roster/<partition>` (ASCII) | offset (i64, 8 bytes BE) of the last topic record the state reflects |
//!
//! Partition first keeps each partition's entries contiguous, so a partition
//! is wiped with one range delete and scanned with one bounded iterator.
//! `expires_at` is stored with its sign bit flipped, so byte order equals
//! numeric order and "everything expired by now" is the key range up to
//! `now`, not a scan of the whole family.
//!
//! The `dedup` value is not the Avro changelog datum: partition and order id
//! are already in the key, and restore decodes every changelog record once
//! anyway, so the store keeps a fixed layout read without a schema: a format
//! byte (`1`), `first_seen_at` and `expires_at` (i64 BE each), a presence
//! byte for the batch id (0 or 1), then the batch id's UTF-8 bytes.
//!
//! # Atomicity
//!
//! RocksDB writes a `WriteBatch` as one record of its write-ahead log, which
//! all column families of a database share; recovery replays a log record
//! completely or not at all and stops at the first torn one. So one batch
//! spanning `dedup`, `dedup_expiry` and `meta` is atomic across families, and
//! after a crash the database holds a prefix of the batches written. Every
//! batch that changes state also carries the changelog offset it reflects,
//! so whatever prefix survives is a consistent (state, offset) pair.
//! `atomic_flush` is on as well: it keeps memtable flushes of the families in
//! step, which is what would keep the promise if a writer ever skipped the log.
//!
//! Writes are not fsynced. A killed process loses nothing (the log is in the
//! page cache); a machine crash may lose the last batches, which only sends
//! the stored offsets back and makes the next restore read a little more.

use std::path::{Path, PathBuf};

use rocksdb::{
    BlockBasedOptions, ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, Direction,
    IteratorMode, Options, ReadOptions, WriteBatch, DB,
};

/// Failure of the local state layer. Every variant means the local state
/// cannot be trusted to move on from here; the loop should stop, and a
/// restart restores from the changelog what the local store lacks.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The database could not be opened or created.
    #[error("cannot open state store at {path}: {source}; check that the directory is writable and no other router instance uses it")]
    Open {
        /// The state directory.
        path: PathBuf,
        /// RocksDB's complaint.
        source: rocksdb::Error,
    },
    /// A read or write failed.
    #[error("state store at {path}: {operation} failed: {source}")]
    Io {
        /// The state directory.
        path: PathBuf,
        /// What was being done.
        operation: &'static str,
        /// RocksDB's complaint.
        source: rocksdb::Error,
    },
    /// A stored value does not have the layout this build writes.
    #[error("state store at {path}: corrupt {family} entry {key:?}: {reason}; delete the state directory to rebuild it from the changelog")]
    Corrupt {
        /// The state directory.
        path: PathBuf,
        /// Column family.
        family: &'static str,
        /// The key, lossily as text.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A changelog record cannot be applied.
    #[error("changelog record {topic}/{partition}@{offset} cannot be applied: {reason}")]
    Changelog {
        /// Changelog topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// Offset of the record.
        offset: i64,
        /// What is wrong with it.
        reason: String,
    },
    /// A Kafka client call failed during restore.
    #[error("restore from {topic}: {operation} failed: {source}")]
    Kafka {
        /// Topic being read.
        topic: String,
        /// The failing call.
        operation: &'static str,
        /// The client error.
        source: rdkafka::error::KafkaError,
    },
    /// A restore made no progress for too long.
    #[error("restore from {topic} stalled: no progress for {idle_ms} ms, partition positions {positions:?} short of end offsets {ends:?}; an open transaction on the topic holds read_committed readers back (initialise this instance's transactional producer before restoring so it aborts its own), or the broker is unreachable")]
    Stalled {
        /// Topic being read.
        topic: String,
        /// How long nothing moved.
        idle_ms: u128,
        /// Position per partition not yet at its end.
        positions: Vec<(i32, i64)>,
        /// End offset per partition.
        ends: Vec<(i32, i64)>,
    },
    /// A dedup lookup or write for a partition this store has not adopted.
    #[error("dedup partition {partition} is not owned here: restore it and adopt it before use (a bug in the caller)")]
    NotOwned {
        /// The partition.
        partition: i32,
    },
    /// An earlier committed write failed to apply, so local state lags the changelog.
    #[error("dedup store is out of step with its changelog since a failed write ({cause}); restart the instance so it restores the difference")]
    Poisoned {
        /// The earlier failure.
        cause: String,
    },
    /// The configured TTL cap is unusable.
    #[error("dedup max ttl {max:?} is not positive: a zero cap would forget every order at once")]
    ZeroTtl {
        /// The rejected value.
        max: std::time::Duration,
    },
}

/// The column families, one per kind of state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    /// Live dedup entries by (partition, order id).
    Dedup,
    /// Secondary index of `Dedup` by (partition, expires_at, order id).
    DedupExpiry,
    /// Roster entries by technician id.
    Roster,
    /// Topic offsets the state reflects.
    Meta,
}

impl Family {
    const ALL: [Family; 4] = [Self::Dedup, Self::DedupExpiry, Self::Roster, Self::Meta];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Dedup => "dedup",
            Self::DedupExpiry => "dedup_expiry",
            Self::Roster => "roster",
            Self::Meta => "meta",
        }
    }
}

/// Key of a stored topic offset in the `meta` family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaKey {
    /// Last dedup changelog record applied for this input partition.
    DedupChangelog(i32),
    /// Last roster topic record applied from this roster partition.
    Roster(i32),
}

impl MetaKey {
    fn encode(self) -> Vec<u8> {
        match self {
            Self::DedupChangelog(p) => format!("dedup-changelog/{p}").into_bytes(),
            Self::Roster(p) => format!("roster/{p}").into_bytes(),
        }
    }
}

/// The 4-byte big-endian key prefix of a partition. Kafka partitions are
/// never negative, so the unsigned view sorts them in numeric order.
pub(crate) fn partition_prefix(partition: i32) -> [u8; 4] {
    (partition as u32).to_be_bytes()
}

/// First key after every key of `partition`: the next partition's prefix.
fn partition_end(partition: i32) -> Vec<u8> {
    match (partition as u32).checked_add(1) {
        Some(next) => next.to_be_bytes().to_vec(),
        // The last possible prefix: nothing sorts after five 0xff bytes that
        // starts with four of them, except keys we never write.
        None => vec![0xff; 5],
    }
}

/// `i64` as 8 bytes whose byte order is the numeric order.
fn ordered_i64(v: i64) -> [u8; 8] {
    ((v as u64) ^ (1 << 63)).to_be_bytes()
}

fn from_ordered_i64(b: [u8; 8]) -> i64 {
    (u64::from_be_bytes(b) ^ (1 << 63)) as i64
}

/// `dedup` key.
pub(crate) fn dedup_key(partition: i32, order_id: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + order_id.len());
    k.extend_from_slice(&partition_prefix(partition));
    k.extend_from_slice(order_id);
    k
}

/// `dedup_expiry` key.
pub(crate) fn expiry_key(partition: i32, expires_at: i64, order_id: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(12 + order_id.len());
    k.extend_from_slice(&partition_prefix(partition));
    k.extend_from_slice(&ordered_i64(expires_at));
    k.extend_from_slice(order_id);
    k
}

/// Splits a `dedup_expiry` key into (`expires_at`, order id).
pub(crate) fn parse_expiry_key(key: &[u8]) -> Option<(i64, &[u8])> {
    let exp: [u8; 8] = key.get(4..12)?.try_into().ok()?;
    Some((from_ordered_i64(exp), &key[12..]))
}

/// The stored form of a dedup entry (the key holds partition and order id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EntryValue {
    pub(crate) first_seen_at: i64,
    pub(crate) expires_at: i64,
    pub(crate) batch_id: Option<String>,
}

impl EntryValue {
    const FORMAT: u8 = 1;
    const FIXED: usize = 1 + 8 + 8 + 1;

    /// The layout described in the module docs.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let batch = self.batch_id.as_deref().unwrap_or("");
        let mut v = Vec::with_capacity(Self::FIXED + batch.len());
        v.push(Self::FORMAT);
        v.extend_from_slice(&self.first_seen_at.to_be_bytes());
        v.extend_from_slice(&self.expires_at.to_be_bytes());
        v.push(u8::from(self.batch_id.is_some()));
        v.extend_from_slice(batch.as_bytes());
        v
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() < Self::FIXED {
            return Err(format!(
                "{} bytes, shorter than the {} of the fixed part",
                bytes.len(),
                Self::FIXED
            ));
        }
        if bytes[0] != Self::FORMAT {
            return Err(format!(
                "format byte {} (this build writes {})",
                bytes[0],
                Self::FORMAT
            ));
        }
        let long = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            i64::from_be_bytes(b)
        };
        let rest = &bytes[Self::FIXED..];
        let batch_id = match bytes[17] {
            0 if rest.is_empty() => None,
            1 => Some(
                String::from_utf8(rest.to_vec())
                    .map_err(|_| "batch id is not UTF-8".to_string())?,
            ),
            flag => {
                return Err(format!(
                    "batch id flag {flag} with {} bytes after it",
                    rest.len()
                ))
            }
        };
        Ok(Self {
            first_seen_at: long(1),
            expires_at: long(9),
            batch_id,
        })
    }
}

/// A key and value read from the database.
pub(crate) type KeyValue = (Box<[u8]>, Box<[u8]>);

/// The local RocksDB database of one router instance.
pub struct StateStore {
    db: DB,
    path: PathBuf,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("path", &self.path)
            .finish()
    }
}

impl StateStore {
    /// Opens the database at `path`, creating the directory and the column
    /// families when missing.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StateError> {
        let path = path.as_ref().to_path_buf();
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_atomic_flush(true);
        let families =
            Family::ALL.map(|f| ColumnFamilyDescriptor::new(f.name(), family_options(f)));
        let db =
            DB::open_cf_descriptors(&opts, &path, families).map_err(|source| StateError::Open {
                path: path.clone(),
                source,
            })?;
        Ok(Self { db, path })
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The topic offset stored under `key`, if any.
    pub fn offset(&self, key: MetaKey) -> Result<Option<i64>, StateError> {
        let raw = key.encode();
        let Some(bytes) = self.get(Family::Meta, &raw, "read offset")? else {
            return Ok(None);
        };
        let arr: [u8; 8] = bytes.as_slice().try_into().map_err(|_| {
            self.corrupt(
                Family::Meta,
                &raw,
                format!("offset of {} bytes, expected 8", bytes.len()),
            )
        })?;
        Ok(Some(i64::from_be_bytes(arr)))
    }

    /// Every stored offset of one kind (`Roster` or `DedupChangelog`), by partition.
    pub(crate) fn offsets(
        &self,
        kind: fn(i32) -> MetaKey,
    ) -> Result<std::collections::BTreeMap<i32, i64>, StateError> {
        let prefix = kind(0).encode();
        let prefix = &prefix[..prefix.len() - 1]; // "roster/" or "dedup-changelog/"
        let mut out = std::collections::BTreeMap::new();
        for item in self.db.iterator_cf(
            self.cf(Family::Meta),
            IteratorMode::From(prefix, Direction::Forward),
        ) {
            let (k, v) = item.map_err(|source| self.io("scan offsets", source))?;
            let Some(p) = k.strip_prefix(prefix) else {
                break;
            };
            let p: i32 = std::str::from_utf8(p)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| {
                    self.corrupt(Family::Meta, &k, "partition is not a number".into())
                })?;
            let arr: [u8; 8] = v[..].try_into().map_err(|_| {
                self.corrupt(Family::Meta, &k, format!("offset of {} bytes", v.len()))
            })?;
            out.insert(p, i64::from_be_bytes(arr));
        }
        Ok(out)
    }

    /// A new, empty batch against this store.
    pub(crate) fn batch(&self) -> StateBatch<'_> {
        StateBatch {
            store: self,
            batch: WriteBatch::default(),
        }
    }

    pub(crate) fn cf(&self, family: Family) -> &ColumnFamily {
        self.db
            .cf_handle(family.name())
            .expect("open() creates every column family before returning")
    }

    pub(crate) fn get(
        &self,
        family: Family,
        key: &[u8],
        operation: &'static str,
    ) -> Result<Option<Vec<u8>>, StateError> {
        self.db
            .get_cf(self.cf(family), key)
            .map_err(|source| self.io(operation, source))
    }

    /// Iterates `family` over keys in `[lower, upper)`, in key order.
    pub(crate) fn range(
        &self,
        family: Family,
        lower: Vec<u8>,
        upper: Vec<u8>,
    ) -> impl Iterator<Item = Result<KeyValue, StateError>> + '_ {
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(lower);
        ro.set_iterate_upper_bound(upper);
        self.db
            .iterator_cf_opt(self.cf(family), ro, IteratorMode::Start)
            .map(|r| r.map_err(|source| self.io("scan", source)))
    }

    /// Every key and value of `family`.
    pub(crate) fn all(
        &self,
        family: Family,
    ) -> impl Iterator<Item = Result<KeyValue, StateError>> + '_ {
        self.db
            .iterator_cf(self.cf(family), IteratorMode::Start)
            .map(|r| r.map_err(|source| self.io("scan", source)))
    }

    pub(crate) fn io(&self, operation: &'static str, source: rocksdb::Error) -> StateError {
        StateError::Io {
            path: self.path.clone(),
            operation,
            source,
        }
    }

    pub(crate) fn corrupt(&self, family: Family, key: &[u8], reason: String) -> StateError {
        StateError::Corrupt {
            path: self.path.clone(),
            family: family.name(),
            key: String::from_utf8_lossy(key).into_owned(),
            reason,
        }
    }
}

fn family_options(family: Family) -> Options {
    let mut o = Options::default();
    // Built without compression libraries (see Cargo.toml); say so rather
    // than rely on RocksDB's fallback when its default codec is missing.
    o.set_compression_type(DBCompressionType::None);
    if family == Family::Dedup {
        // Most lookups are for order ids never seen: a bloom filter answers
        // those without reading a data block.
        let mut t = BlockBasedOptions::default();
        t.set_bloom_filter(10.0, false);
        o.set_block_based_table_factory(&t);
    }
    o
}

/// Changes to apply to the store in one atomic write (see the module docs).
pub(crate) struct StateBatch<'s> {
    store: &'s StateStore,
    batch: WriteBatch,
}

impl StateBatch<'_> {
    pub(crate) fn put_dedup(&mut self, partition: i32, order_id: &[u8], value: &EntryValue) {
        let cf = self.store.cf(Family::Dedup);
        self.batch
            .put_cf(cf, dedup_key(partition, order_id), value.encode());
        let cf = self.store.cf(Family::DedupExpiry);
        self.batch
            .put_cf(cf, expiry_key(partition, value.expires_at, order_id), b"");
    }

    pub(crate) fn delete_dedup(&mut self, partition: i32, order_id: &[u8]) {
        let cf = self.store.cf(Family::Dedup);
        self.batch.delete_cf(cf, dedup_key(partition, order_id));
    }

    pub(crate) fn delete_expiry(&mut self, partition: i32, expires_at: i64, order_id: &[u8]) {
        let cf = self.store.cf(Family::DedupExpiry);
        self.batch
            .delete_cf(cf, expiry_key(partition, expires_at, order_id));
    }

    /// Forgets everything of one dedup partition, its offset included.
    pub(crate) fn wipe_dedup_partition(&mut self, partition: i32) {
        let (from, to) = (
            partition_prefix(partition).to_vec(),
            partition_end(partition),
        );
        self.batch
            .delete_range_cf(self.store.cf(Family::Dedup), &from, &to);
        self.batch
            .delete_range_cf(self.store.cf(Family::DedupExpiry), &from, &to);
        self.batch.delete_cf(
            self.store.cf(Family::Meta),
            MetaKey::DedupChangelog(partition).encode(),
        );
    }

    pub(crate) fn put_roster(&mut self, technician_id: &[u8], avro: &[u8]) {
        self.batch
            .put_cf(self.store.cf(Family::Roster), technician_id, avro);
    }

    pub(crate) fn delete_roster(&mut self, technician_id: &[u8]) {
        self.batch
            .delete_cf(self.store.cf(Family::Roster), technician_id);
    }

    /// Forgets the whole roster and its offsets.
    pub(crate) fn wipe_roster(&mut self) -> Result<(), StateError> {
        // Roster keys are arbitrary bytes, so there is no end key for a
        // range delete; the roster is small enough to delete key by key.
        let store = self.store;
        for item in store.all(Family::Roster) {
            let (k, _) = item?;
            self.batch.delete_cf(store.cf(Family::Roster), k);
        }
        self.batch.delete_range_cf(
            store.cf(Family::Meta),
            b"roster/".to_vec(),
            b"roster0".to_vec(), // '0' is the byte after '/'
        );
        Ok(())
    }

    pub(crate) fn put_offset(&mut self, key: MetaKey, offset: i64) {
        self.batch.put_cf(
            self.store.cf(Family::Meta),
            key.encode(),
            offset.to_be_bytes(),
        );
    }

    /// Writes the batch, atomically.
    pub(crate) fn commit(self, operation: &'static str) -> Result<(), StateError> {
        let store = self.store;
        store
            .db
            .write(self.batch)
            .map_err(|source| store.io(operation, source))
    }
}

/// Bounds of a partition's entries in `dedup_expiry` expiring at or before `now_ms`.
pub(crate) fn expired_range(partition: i32, now_ms: i64) -> (Vec<u8>, Vec<u8>) {
    let lower = partition_prefix(partition).to_vec();
    let upper = match now_ms.checked_add(1) {
        Some(after) => {
            let mut u = lower.clone();
            u.extend_from_slice(&ordered_i64(after));
            u
        }
        None => partition_end(partition),
    };
    (lower, upper)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordered_i64_sorts_like_numbers() {
        let mut values = [i64::MIN, -5, -1, 0, 1, 7, 1_767_600_000_000, i64::MAX];
        let mut encoded: Vec<[u8; 8]> = values.iter().map(|v| ordered_i64(*v)).collect();
        encoded.sort();
        values.sort();
        let back: Vec<i64> = encoded.into_iter().map(from_ordered_i64).collect();
        assert_eq!(back, values);
    }

    #[test]
    fn expiry_key_round_trips_and_groups_by_partition() {
        let k = expiry_key(3, 1_767_600_000_000, b"WO-1");
        assert_eq!(&k[..4], &[0, 0, 0, 3]);
        assert_eq!(
            parse_expiry_key(&k),
            Some((1_767_600_000_000, &b"WO-1"[..]))
        );
        let (lo, hi) = expired_range(3, 1_767_600_000_000);
        assert!(lo.as_slice() <= k.as_slice() && k.as_slice() < hi.as_slice());
        let (_, hi_before) = expired_range(3, 1_767_600_000_000 - 1);
        assert!(
            k.as_slice() >= hi_before.as_slice(),
            "not expired a ms earlier"
        );
        assert!(expiry_key(4, i64::MIN, b"").as_slice() >= partition_end(3).as_slice());
    }

    #[test]
    fn entry_value_round_trips_and_rejects_garbage() {
        for batch_id in [None, Some(String::new()), Some("b-1".to_string())] {
            let v = EntryValue {
                first_seen_at: 5,
                expires_at: -7,
                batch_id,
            };
            assert_eq!(EntryValue::decode(&v.encode()), Ok(v));
        }
        assert!(EntryValue::decode(b"").is_err());
        let mut bad = EntryValue {
            first_seen_at: 1,
            expires_at: 2,
            batch_id: None,
        }
        .encode();
        bad[0] = 9;
        assert!(EntryValue::decode(&bad)
            .expect_err("bad format")
            .contains("format byte 9"));
    }

    #[test]
    fn offsets_survive_reopen_and_batches_span_families() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = StateStore::open(dir.path()).expect("open");
            assert_eq!(
                store.offset(MetaKey::DedupChangelog(0)).expect("read"),
                None
            );
            let mut b = store.batch();
            b.put_dedup(
                0,
                b"WO-1",
                &EntryValue {
                    first_seen_at: 1,
                    expires_at: 10,
                    batch_id: None,
                },
            );
            b.put_offset(MetaKey::DedupChangelog(0), 41);
            b.put_offset(MetaKey::Roster(2), 7);
            b.put_offset(MetaKey::Roster(10), 8);
            b.commit("test").expect("write");
        }
        let store = StateStore::open(dir.path()).expect("reopen");
        assert_eq!(
            store.offset(MetaKey::DedupChangelog(0)).expect("read"),
            Some(41)
        );
        assert_eq!(
            store.offsets(MetaKey::Roster).expect("scan"),
            [(2, 7), (10, 8)].into_iter().collect()
        );
        assert_eq!(
            store.offsets(MetaKey::DedupChangelog).expect("scan"),
            [(0, 41)].into_iter().collect()
        );
        assert!(store
            .get(Family::Dedup, &dedup_key(0, b"WO-1"), "read")
            .expect("read")
            .is_some());
    }
}
