//! Rebuilding local state from a compacted topic: the dedup changelog of one
//! input partition, or (through [`super::roster`]) the whole roster topic.
//!
//! Promise: when a restore returns `Ok`, local state reflects every record
//! committed to the partitions read up to the end offset taken at the start,
//! and the stored offset names the last record applied. Records of aborted
//! transactions are never applied: the reader uses `read_committed`.
//!
//! How: a dedicated [`BaseConsumer`] is assigned the partitions (no group
//! membership, no offset commits) from the stored offset + 1, or from the
//! beginning when nothing is stored. It reads until its *position* reaches
//! the end offset (high watermark) taken before reading. Positions, not
//! record counts, because transaction markers and aborted records occupy
//! offsets that are never delivered; librdkafka moves the position past
//! them. Records are applied in batches of [`RestoreOptions::batch_records`],
//! each one RocksDB write batch that also stores the offset of its last
//! record, so an interrupted restore resumes where it stopped.
//!
//! When the stored offset does not fit the topic (beyond its end: the topic
//! was recreated; before its start: records were deleted), the local state
//! of the partition cannot be trusted and is wiped before reading from the
//! beginning.
//!
//! A read_committed reader cannot pass an open transaction. Initialise the
//! instance's transactional producer before restoring so that its own
//! dangling transaction is aborted; another producer's is waited for up to
//! [`RestoreOptions::stall_timeout`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use super::store::{EntryValue, MetaKey, StateError, StateStore};
use crate::codec::Codec;

/// Tuning of a restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreOptions {
    /// Records per RocksDB write batch (and per stored offset).
    pub batch_records: usize,
    /// How long one poll waits for records.
    pub poll_timeout: Duration,
    /// Give up when no record arrives and no position moves for this long.
    /// Longer than the changelog producers' transaction timeout, so an open
    /// transaction of a dead producer is outlived.
    pub stall_timeout: Duration,
    /// Timeout of metadata and watermark requests.
    pub request_timeout: Duration,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        Self {
            // A few thousand: large enough that the per-batch write and
            // position check vanish in the per-record cost, small enough
            // that an interrupted restore loses little.
            batch_records: 4096,
            // Short: a partition that is already current has only a
            // transaction marker past its stored offset, which is never
            // handed out, so its restore ends with one empty poll. The
            // recovery bench did not show the change clearly (its spread
            // is larger); consumer setup per partition dominates.
            poll_timeout: Duration::from_millis(10),
            // Twice the router's default transaction timeout (60 s).
            stall_timeout: Duration::from_secs(120),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// A changelog or roster record, borrowed from the consumer or a test log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangelogRecord<'a> {
    /// Offset in its partition.
    pub offset: i64,
    /// Record key.
    pub key: Option<&'a [u8]>,
    /// Record value; `None` is a tombstone.
    pub value: Option<&'a [u8]>,
}

impl<'a> ChangelogRecord<'a> {
    /// The record a consumer handed out.
    pub(crate) fn of(message: &'a BorrowedMessage<'_>) -> Self {
        Self {
            offset: message.offset(),
            key: message.key(),
            value: message.payload(),
        }
    }
}

/// Progress of a running restore, reported after every applied batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoreProgress<'a> {
    /// Topic being read.
    pub topic: &'a str,
    /// Records applied so far.
    pub records: u64,
    /// Offsets left to read, summed over the partitions (an upper bound on
    /// the records left: markers and compacted gaps count too).
    pub remaining_offsets: i64,
    /// Time since the restore started.
    pub elapsed: Duration,
}

/// What a finished restore did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreStats {
    /// Topic read.
    pub topic: String,
    /// Per partition read: (partition, first offset read, end offset).
    /// Partitions that were already current are not listed.
    pub ranges: Vec<(i32, i64, i64)>,
    /// Records applied (tombstones included).
    pub records: u64,
    /// Of those, tombstones.
    pub tombstones: u64,
    /// Records skipped as unusable (roster only; see `roster`).
    pub rejected: u64,
    /// Write batches.
    pub batches: u64,
    /// Whether local state was wiped first because its offsets did not fit the topic.
    pub reset: bool,
    /// Wall time, connecting included; partitions restored together share it.
    pub elapsed: Duration,
}

impl RestoreStats {
    /// Records applied per second of wall time.
    pub fn records_per_second(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.records as f64 / secs
        } else {
            0.0
        }
    }
}

/// Proof that a dedup partition's local state is current with its
/// changelog; [`super::DedupStore::adopt`] takes it. Only a restore makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoredPartition {
    partition: i32,
    stats: RestoreStats,
}

impl RestoredPartition {
    /// The input partition.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// What the restore did.
    pub fn stats(&self) -> &RestoreStats {
        &self.stats
    }

    #[cfg(test)]
    pub(crate) fn for_tests(partition: i32) -> Self {
        Self {
            partition,
            stats: RestoreStats::default(),
        }
    }
}

/// Where to start reading a partition, given the stored offset and the
/// topic's watermarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Nothing to read.
    Current,
    /// Read from this offset.
    From(i64),
    /// Local state does not fit the topic: wipe it, read from the start.
    Reset(&'static str),
}

pub(crate) fn plan(stored: Option<i64>, low: i64, high: i64) -> Plan {
    match stored {
        None if low >= high => Plan::Current,
        None => Plan::From(low),
        Some(last) => {
            let next = last.saturating_add(1);
            if next > high {
                Plan::Reset(
                    "the stored offset lies beyond the end of the topic (was it recreated?)",
                )
            } else if next < low {
                Plan::Reset("records after the stored offset were deleted from the topic")
            } else if next == high {
                Plan::Current
            } else {
                Plan::From(next)
            }
        }
    }
}

/// A partition to read from `start` until the position reaches `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) partition: i32,
    pub(crate) start: i64,
    pub(crate) end: i64,
}

/// A consumer for restores: assigned, never subscribed; read_committed; no
/// offset commits of any kind.
pub(crate) fn restore_consumer(
    client: &ClientConfig,
    topic: &str,
) -> Result<BaseConsumer, StateError> {
    let mut c = client.clone();
    // librdkafka's assign() refuses a consumer without a group id, though an
    // assigned consumer never joins the group. Its own id keeps it clear of
    // the router's group in any case; nothing is ever committed under it.
    c.set("group.id", format!("{topic}.restore"))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // A start offset that vanished between planning and reading must be
        // an error, not a silent jump that would skip records.
        .set("auto.offset.reset", "error")
        .set("enable.partition.eof", "false")
        // A restore reads a backlog: larger fetches, fewer round trips.
        .set("max.partition.fetch.bytes", "8388608")
        .set("fetch.max.bytes", "67108864")
        // One such fetch holds ~100k small records, past librdkafka's
        // default queued.min.messages; it then postpones the next fetch by
        // fetch.queue.backoff.ms (default 1 s), which capped restores at
        // ~135k records/s. Keep fetching; the byte bound
        // (queued.max.messages.kbytes, 64 MiB) still limits memory.
        .set("queued.min.messages", "1000000")
        .set("fetch.queue.backoff.ms", "10");
    c.create().map_err(|source| StateError::Kafka {
        topic: topic.to_string(),
        operation: "create restore consumer",
        source,
    })
}

pub(crate) fn kafka<'a>(
    topic: &'a str,
    operation: &'static str,
) -> impl FnOnce(KafkaError) -> StateError + 'a {
    move |source| StateError::Kafka {
        topic: topic.to_string(),
        operation,
        source,
    }
}

/// Errors after which reading on cannot succeed.
fn is_fatal(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::AutoOffsetReset
                | RDKafkaErrorCode::OffsetOutOfRange
                | RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::UnknownPartition
                | RDKafkaErrorCode::TopicAuthorizationFailed
        )
    )
}

/// Reads `spans` of `topic` to their ends, handing records to `sink` in
/// batches; `sink` applies them (and their offsets) before the next batch
/// is read.
pub(crate) fn read_to_end(
    consumer: &BaseConsumer,
    topic: &str,
    spans: &[Span],
    options: &RestoreOptions,
    started: Instant,
    sink: &mut dyn FnMut(&[BorrowedMessage<'_>]) -> Result<(), StateError>,
    progress: &mut dyn FnMut(&RestoreProgress<'_>),
) -> Result<(), StateError> {
    let mut todo: BTreeMap<i32, Span> = spans
        .iter()
        .filter(|s| s.start < s.end)
        .map(|s| (s.partition, *s))
        .collect();
    if todo.is_empty() {
        return Ok(());
    }
    let mut applied = 0u64;
    let mut tpl = TopicPartitionList::new();
    for s in todo.values() {
        tpl.add_partition_offset(topic, s.partition, Offset::Offset(s.start))
            .map_err(kafka(topic, "assign"))?;
    }
    consumer.assign(&tpl).map_err(kafka(topic, "assign"))?;
    let mut positions: BTreeMap<i32, i64> = todo.values().map(|s| (s.partition, s.start)).collect();
    let mut last_move = Instant::now();
    let batch_records = options.batch_records.max(1);
    let mut batch: Vec<BorrowedMessage<'_>> = Vec::with_capacity(batch_records);
    let result = loop {
        // Wait for the first record, then drain what is already fetched.
        let mut wait = options.poll_timeout;
        let mut failed = None;
        while batch.len() < batch_records {
            match consumer.poll(wait) {
                Some(Ok(m)) => batch.push(m),
                Some(Err(e)) if is_fatal(&e) => {
                    failed = Some(kafka(topic, "read")(e));
                    break;
                }
                Some(Err(e)) => {
                    // Transport errors and the like: librdkafka retries; the
                    // stall timeout bounds how long we let it.
                    tracing::warn!(topic, error = %e, "restore consumer error, retrying");
                    break;
                }
                None => break,
            }
            wait = Duration::ZERO;
        }
        if let Some(e) = failed {
            break Err(e);
        }
        if !batch.is_empty() {
            if let Err(e) = sink(&batch) {
                break Err(e);
            }
            applied += batch.len() as u64;
            batch.clear();
            last_move = Instant::now();
        }
        let now_at = match consumer.position() {
            Ok(p) => p,
            Err(e) => break Err(kafka(topic, "read position")(e)),
        };
        for e in now_at.elements_for_topic(topic) {
            if let (Offset::Offset(pos), Some(old)) =
                (e.offset(), positions.get_mut(&e.partition()))
            {
                if pos > *old {
                    *old = pos;
                    last_move = Instant::now();
                }
            }
        }
        todo.retain(|p, s| positions.get(p).is_none_or(|&pos| pos < s.end));
        progress(&RestoreProgress {
            topic,
            records: applied,
            remaining_offsets: todo.values().map(|s| s.end - positions[&s.partition]).sum(),
            elapsed: started.elapsed(),
        });
        if todo.is_empty() {
            break Ok(());
        }
        if last_move.elapsed() > options.stall_timeout {
            break Err(StateError::Stalled {
                topic: topic.to_string(),
                idle_ms: last_move.elapsed().as_millis(),
                positions: todo.keys().map(|p| (*p, positions[p])).collect(),
                ends: todo.values().map(|s| (s.partition, s.end)).collect(),
            });
        }
    };
    drop(batch);
    // Nothing to leave behind: no group, no commits. Unassigning stops the
    // fetcher before the consumer is dropped.
    let _ = consumer.unassign();
    result
}

/// Applies dedup changelog records of one partition in write batches.
struct DedupApplier<'s> {
    store: &'s StateStore,
    codec: &'s Codec,
    topic: &'s str,
    partition: i32,
    records: u64,
    tombstones: u64,
    batches: u64,
}

impl<'s> DedupApplier<'s> {
    fn new(store: &'s StateStore, codec: &'s Codec, topic: &'s str, partition: i32) -> Self {
        Self {
            store,
            codec,
            topic,
            partition,
            records: 0,
            tombstones: 0,
            batches: 0,
        }
    }

    fn apply<'r>(
        &mut self,
        records: impl IntoIterator<Item = ChangelogRecord<'r>>,
    ) -> Result<(), StateError> {
        let mut batch = self.store.batch();
        let mut last = None;
        for r in records {
            let bad = |reason: String| StateError::Changelog {
                topic: self.topic.to_string(),
                partition: self.partition,
                offset: r.offset,
                reason,
            };
            let key = r
                .key
                .ok_or_else(|| bad("no key; dedup changelog keys are order ids".into()))?;
            match r.value {
                None => {
                    batch.delete_dedup(self.partition, key);
                    self.tombstones += 1;
                }
                Some(bytes) => {
                    let e = self
                        .codec
                        .decode_dedup_entry(bytes)
                        .map_err(|e| bad(e.to_string()))?;
                    // Co-partitioning is what makes a partition's owner find
                    // its entries; a record elsewhere means a broken writer.
                    if e.input_partition != self.partition || e.order_id.as_bytes() != key {
                        return Err(bad(format!(
                            "entry for order {:?} of input partition {} under key {:?}",
                            e.order_id,
                            e.input_partition,
                            String::from_utf8_lossy(key)
                        )));
                    }
                    batch.put_dedup(
                        self.partition,
                        key,
                        &EntryValue {
                            first_seen_at: e.first_seen_at,
                            expires_at: e.expires_at,
                            batch_id: e.batch_id,
                        },
                    );
                }
            }
            last = Some(r.offset);
            self.records += 1;
        }
        if let Some(offset) = last {
            batch.put_offset(MetaKey::DedupChangelog(self.partition), offset);
            batch.commit("apply restored dedup records")?;
            self.batches += 1;
        }
        Ok(())
    }
}

fn wipe_dedup(store: &StateStore, partition: i32) -> Result<(), StateError> {
    let mut batch = store.batch();
    batch.wipe_dedup_partition(partition);
    batch.commit("wipe dedup partition")
}

/// Restores the dedup state of input `partitions` from their changelog
/// `topic` on the broker `client` points at (bootstrap servers and security
/// settings; consumer settings are set here). One consumer reads every
/// partition that is behind: after a rebalance or a restart, setting up a
/// consumer costs more than reading a partition that is already current.
pub fn restore_dedup(
    store: &StateStore,
    codec: &Codec,
    client: &ClientConfig,
    topic: &str,
    partitions: &[i32],
    options: &RestoreOptions,
    progress: &mut dyn FnMut(&RestoreProgress<'_>),
) -> Result<Vec<RestoredPartition>, StateError> {
    let started = Instant::now();
    if partitions.is_empty() {
        return Ok(Vec::new());
    }
    let consumer = restore_consumer(client, topic)?;
    let mut appliers = BTreeMap::new();
    let mut spans = Vec::new();
    let mut stats = BTreeMap::new();
    for &partition in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, options.request_timeout)
            .map_err(kafka(topic, "fetch watermarks"))?;
        let stored = store.offset(MetaKey::DedupChangelog(partition))?;
        let mut partition_stats = RestoreStats {
            topic: topic.to_string(),
            ..RestoreStats::default()
        };
        let start = match plan(stored, low, high) {
            Plan::Current => None,
            Plan::From(o) => Some(o),
            Plan::Reset(why) => {
                tracing::warn!(
                    topic,
                    partition,
                    ?stored,
                    low,
                    high,
                    "wiping local dedup state: {why}"
                );
                wipe_dedup(store, partition)?;
                partition_stats.reset = true;
                Some(low)
            }
        };
        if let Some(start) = start {
            partition_stats.ranges.push((partition, start, high));
            spans.push(Span {
                partition,
                start,
                end: high,
            });
            appliers.insert(partition, DedupApplier::new(store, codec, topic, partition));
        }
        stats.insert(partition, partition_stats);
    }
    read_to_end(
        &consumer,
        topic,
        &spans,
        options,
        started,
        &mut |msgs| {
            // One write batch per partition: each carries its own offset.
            for (partition, applier) in appliers.iter_mut() {
                applier.apply(
                    msgs.iter()
                        .filter(|m| m.partition() == *partition)
                        .map(ChangelogRecord::of),
                )?;
            }
            Ok(())
        },
        progress,
    )?;
    let elapsed = started.elapsed();
    let mut restored = Vec::with_capacity(stats.len());
    for (partition, mut partition_stats) in stats {
        if let Some(applier) = appliers.get(&partition) {
            partition_stats.records = applier.records;
            partition_stats.tombstones = applier.tombstones;
            partition_stats.batches = applier.batches;
        }
        partition_stats.elapsed = elapsed;
        tracing::info!(
            topic,
            partition,
            records = partition_stats.records,
            tombstones = partition_stats.tombstones,
            elapsed_ms = elapsed.as_millis() as u64,
            reset = partition_stats.reset,
            "dedup partition restored"
        );
        restored.push(RestoredPartition {
            partition,
            stats: partition_stats,
        });
    }
    Ok(restored)
}

/// Restores the dedup state of `partition` from records already in hand
/// (a log kept by a test, or a topic dump), in offset order. Records at or
/// below the stored offset are skipped, as a Kafka restore would not read
/// them. `source` names the log in errors.
pub fn replay_dedup<'r>(
    store: &StateStore,
    codec: &Codec,
    source: &str,
    partition: i32,
    records: impl IntoIterator<Item = ChangelogRecord<'r>>,
    options: &RestoreOptions,
) -> Result<RestoredPartition, StateError> {
    let started = Instant::now();
    let stored = store.offset(MetaKey::DedupChangelog(partition))?;
    let mut applier = DedupApplier::new(store, codec, source, partition);
    let mut pending = Vec::with_capacity(options.batch_records);
    for r in records {
        if stored.is_some_and(|s| r.offset <= s) {
            continue;
        }
        pending.push(r);
        if pending.len() >= options.batch_records {
            applier.apply(pending.drain(..))?;
        }
    }
    applier.apply(pending)?;
    Ok(RestoredPartition {
        partition,
        stats: RestoreStats {
            topic: source.to_string(),
            ranges: vec![],
            records: applier.records,
            tombstones: applier.tombstones,
            rejected: 0,
            batches: applier.batches,
            reset: false,
            elapsed: started.elapsed(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_reads_the_tail_after_the_stored_offset() {
        assert_eq!(plan(None, 0, 0), Plan::Current, "empty topic");
        assert_eq!(plan(None, 0, 10), Plan::From(0));
        assert_eq!(plan(None, 4, 10), Plan::From(4), "from the log start");
        assert_eq!(plan(Some(9), 0, 10), Plan::Current);
        assert_eq!(plan(Some(5), 0, 10), Plan::From(6));
        // A commit marker can be the last offset: the last record applied was
        // at 8, the marker at 9, and the restore must still read to 10.
        assert_eq!(plan(Some(8), 0, 10), Plan::From(9));
        assert!(
            matches!(plan(Some(10), 0, 10), Plan::Reset(_)),
            "ahead of the topic"
        );
        assert!(
            matches!(plan(Some(2), 5, 10), Plan::Reset(_)),
            "records deleted"
        );
        assert_eq!(plan(Some(4), 5, 10), Plan::From(5), "log start right after");
    }

    #[test]
    fn stats_rate_is_per_second_of_wall_time() {
        let s = RestoreStats {
            records: 500,
            elapsed: Duration::from_millis(250),
            ..RestoreStats::default()
        };
        assert!((s.records_per_second() - 2000.0).abs() < 1e-6);
        assert_eq!(RestoreStats::default().records_per_second(), 0.0);
    }
}
