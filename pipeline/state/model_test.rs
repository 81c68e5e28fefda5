//! The dedup store against an in-memory model of what it promises.
//!
//! Random sequences of staged puts, lookups, expiry sweeps, commits, aborts
//! (before and after sealing), restarts and lost disks. The model keeps the
//! committed entries, the staged changes and the changelog as the broker
//! would hold it; a restart replays the log tail after the stored offset
//! (which must be empty), a lost disk replays the whole log into an empty
//! directory. After every step, every key is looked up at several instants
//! and the store's answers must equal the model's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use proptest::prelude::*;

use super::dedup::{DedupStore, Lookup};
use super::restore::{replay_dedup, ChangelogRecord, RestoreOptions};
use super::store::{expiry_key, Family, StateStore};
use crate::codec::Codec;
use crate::model::{DedupEntry, SCHEMA_VERSION};

const PARTITIONS: i32 = 2;
// Few ids and coarse instants, so keys are rewritten and expiries collide
// often: that is where staged, committed and index state can disagree.
const IDS: u8 = 3;
const PROBES: [i64; 5] = [0, 15, 30, 45, 60];

#[derive(Debug, Clone)]
enum Op {
    Put {
        partition: i32,
        id: u8,
        expires_at: i64,
    },
    Check {
        partition: i32,
        id: u8,
        now: i64,
    },
    Expire {
        partition: i32,
        now: i64,
        limit: usize,
    },
    Commit,
    /// Abort before sealing: `discard_staged`.
    Abort,
    /// Abort after sealing: the transaction failed to commit.
    AbortSealed,
    Restart,
    LoseDisk,
}

/// An id, with id 0 as a hot key that most operations hit.
fn id() -> impl Strategy<Value = u8> {
    prop_oneof![3 => Just(0u8), 2 => 0..IDS]
}

/// An instant on a coarse grid, so expiries and sweeps meet exactly.
fn instant(max_step: i64) -> impl Strategy<Value = i64> {
    (0..=max_step).prop_map(|t| t * 10)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..PARTITIONS, id(), instant(5))
            .prop_map(|(partition, id, expires_at)| Op::Put { partition, id, expires_at }),
        2 => (0..PARTITIONS, id(), 0..70i64)
            .prop_map(|(partition, id, now)| Op::Check { partition, id, now }),
        3 => (0..PARTITIONS, instant(6), 0..4usize)
            .prop_map(|(partition, now, limit)| Op::Expire { partition, now, limit }),
        4 => Just(Op::Commit),
        1 => Just(Op::Abort),
        1 => Just(Op::AbortSealed),
        1 => Just(Op::Restart),
        1 => Just(Op::LoseDisk),
    ]
}

fn codec() -> &'static Codec {
    static CODEC: OnceLock<Codec> = OnceLock::new();
    CODEC.get_or_init(|| {
        Codec::load(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/schemas")))
            .expect("schemas load")
    })
}

fn order_id(id: u8) -> String {
    format!("WO-{id}")
}

type Key = (i32, String);

/// A changelog record as the broker keeps it.
struct LogRecord {
    offset: i64,
    key: Vec<u8>,
    value: Option<Vec<u8>>,
}

#[derive(Default)]
struct Model {
    /// Committed entries: key -> expires_at.
    committed: BTreeMap<Key, i64>,
    /// Staged changes: key -> Some(expires_at) put, None tombstone.
    staged: BTreeMap<Key, Option<i64>>,
    /// The changelog per partition.
    log: BTreeMap<i32, Vec<LogRecord>>,
    /// Next free offset per partition.
    next_offset: BTreeMap<i32, i64>,
}

impl Model {
    fn effective(&self, key: &Key) -> Option<i64> {
        match self.staged.get(key) {
            Some(change) => *change,
            None => self.committed.get(key).copied(),
        }
    }

    fn live(&self, key: &Key, now: i64) -> Option<i64> {
        self.effective(key).filter(|&exp| now < exp)
    }
}

/// The system under test and where it lives.
struct Sut {
    root: tempfile::TempDir,
    generation: u32,
    dedup: Option<DedupStore>,
}

impl Sut {
    fn dir(&self) -> PathBuf {
        self.root.path().join(format!("state-{}", self.generation))
    }

    /// Opens the store and restores every partition from the model's log.
    /// Returns the records each restore applied.
    fn open(&mut self, model: &Model) -> Vec<u64> {
        let store = Arc::new(StateStore::open(self.dir()).expect("open"));
        let mut dedup = DedupStore::new(store.clone());
        let mut applied = Vec::new();
        for p in 0..PARTITIONS {
            let log = model.log.get(&p).map(Vec::as_slice).unwrap_or_default();
            let records = log.iter().map(|r| ChangelogRecord {
                offset: r.offset,
                key: Some(&r.key),
                value: r.value.as_deref(),
            });
            let options = RestoreOptions {
                batch_records: 3, // small, so restores span several batches
                ..RestoreOptions::default()
            };
            let restored =
                replay_dedup(&store, codec(), "model-log", p, records, &options).expect("replay");
            applied.push(restored.stats().records);
            dedup.adopt(restored);
        }
        self.dedup = Some(dedup);
        applied
    }

    fn dedup(&mut self) -> &mut DedupStore {
        self.dedup.as_mut().expect("open between steps")
    }
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut model = Model::default();
    let mut sut = Sut {
        root: tempfile::tempdir().expect("tempdir"),
        generation: 0,
        dedup: None,
    };
    sut.open(&model);
    for op in ops {
        match op {
            Op::Put {
                partition,
                id,
                expires_at,
            } => {
                let entry = DedupEntry {
                    schema_version: SCHEMA_VERSION,
                    order_id: order_id(id),
                    input_partition: partition,
                    first_seen_at: 0,
                    expires_at,
                    batch_id: (id % 2 == 0).then(|| format!("batch-{id}")),
                };
                sut.dedup().stage_put(entry).expect("stage");
                model
                    .staged
                    .insert((partition, order_id(id)), Some(expires_at));
            }
            Op::Check { partition, id, now } => {
                // Checked below with the other probes; this adds an odd instant.
                check_one(&mut sut, &model, partition, id, now)?;
            }
            Op::Expire {
                partition,
                now,
                limit,
            } => {
                let expired = sut.dedup().expire(partition, now, limit).expect("expire");
                for id in &expired.order_ids {
                    let key = (partition, id.clone());
                    let exp = model.effective(&key);
                    prop_assert!(
                        exp.is_some_and(|e| e <= now),
                        "expire({partition}, {now}) tombstoned {id} whose entry is {exp:?}"
                    );
                    model.staged.insert(key, None);
                }
                if expired.complete {
                    let left: Vec<&Key> = model
                        .staged
                        .keys()
                        .chain(model.committed.keys())
                        .filter(|k| {
                            k.0 == partition && model.effective(k).is_some_and(|e| e <= now)
                        })
                        .collect();
                    prop_assert!(left.is_empty(), "complete sweep left {left:?}");
                }
            }
            Op::Commit => {
                let pending = sut.dedup().begin_commit().expect("seal");
                // The changelog records are exactly the model's staged changes.
                let written: BTreeMap<Key, Option<i64>> = pending
                    .changelog()
                    .map(|w| {
                        if let Some(e) = w.entry {
                            assert_eq!(
                                (e.input_partition, e.order_id.as_str()),
                                (w.partition, w.order_id)
                            );
                        }
                        (
                            (w.partition, w.order_id.to_string()),
                            w.entry.map(|e| e.expires_at),
                        )
                    })
                    .collect();
                prop_assert_eq!(&written, &model.staged);
                // "Produce" them: append to the log, one offset each, then a
                // commit marker that takes an offset of its own.
                let mut offsets = BTreeMap::new();
                for w in pending.changelog() {
                    let next = model.next_offset.entry(w.partition).or_insert(0);
                    model.log.entry(w.partition).or_default().push(LogRecord {
                        offset: *next,
                        key: w.order_id.as_bytes().to_vec(),
                        value: w
                            .entry
                            .map(|e| codec().encode_dedup_entry(e).expect("encode")),
                    });
                    offsets.insert(w.partition, *next);
                    *next += 1;
                }
                for p in offsets.keys() {
                    *model.next_offset.entry(*p).or_insert(0) += 1; // the marker
                }
                pending.apply_committed(&offsets).expect("apply");
                for (key, change) in std::mem::take(&mut model.staged) {
                    match change {
                        Some(exp) => model.committed.insert(key, exp),
                        None => model.committed.remove(&key),
                    };
                }
                for (p, off) in offsets {
                    prop_assert_eq!(sut.dedup().committed_offset(p).expect("offset"), Some(off));
                }
            }
            Op::Abort => {
                sut.dedup().discard_staged();
                model.staged.clear();
            }
            Op::AbortSealed => {
                sut.dedup().begin_commit().expect("seal").discard_staged();
                model.staged.clear();
            }
            Op::Restart => {
                sut.dedup = None; // closes the database
                model.staged.clear();
                let applied = sut.open(&model);
                prop_assert!(
                    applied.iter().all(|&n| n == 0),
                    "restart with current state re-read records: {applied:?}"
                );
            }
            Op::LoseDisk => {
                sut.dedup = None;
                std::fs::remove_dir_all(sut.dir()).expect("remove state dir");
                sut.generation += 1;
                model.staged.clear();
                let applied = sut.open(&model);
                for p in 0..PARTITIONS {
                    let len = model.log.get(&p).map_or(0, Vec::len) as u64;
                    prop_assert_eq!(applied[p as usize], len, "full restore of partition {}", p);
                }
            }
        }
        for p in 0..PARTITIONS {
            for id in 0..IDS {
                for now in PROBES {
                    check_one(&mut sut, &model, p, id, now)?;
                }
            }
        }
        index_covers_committed(&mut sut, &model)?;
    }
    Ok(())
}

/// White-box: every committed entry has its expiry index entry, or no
/// sweep would ever tombstone it (lookups would still be right, so the
/// probes alone cannot see this).
fn index_covers_committed(sut: &mut Sut, model: &Model) -> Result<(), TestCaseError> {
    let store = sut.dedup().state_store().clone();
    for ((p, id), exp) in &model.committed {
        let key = expiry_key(*p, *exp, id.as_bytes());
        let found = store
            .get(Family::DedupExpiry, &key, "test read")
            .expect("read");
        prop_assert!(
            found.is_some(),
            "no index entry for {id} (partition {p}) at {exp}"
        );
    }
    Ok(())
}

fn check_one(sut: &mut Sut, model: &Model, p: i32, id: u8, now: i64) -> Result<(), TestCaseError> {
    let got = sut.dedup().check(p, &order_id(id), now).expect("check");
    let want = model.live(&(p, order_id(id)), now);
    match (got, want) {
        (Lookup::New, None) => {}
        (Lookup::Seen(e), Some(exp)) => {
            prop_assert_eq!(
                e.expires_at,
                exp,
                "entry of {} in partition {}",
                order_id(id),
                p
            );
            prop_assert_eq!(e.batch_id, (id % 2 == 0).then(|| format!("batch-{id}")));
        }
        (got, want) => {
            return Err(TestCaseError::fail(format!(
                "check({p}, {}, {now}): store says {got:?}, model says live until {want:?}",
                order_id(id)
            )))
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn dedup_store_matches_its_model(ops in proptest::collection::vec(op(), 1..40)) {
        run(ops)?;
    }
}
