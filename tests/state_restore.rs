//! Restoring local state from real topics on the local broker: the dedup
//! changelog (transactional, with an aborted transaction that must not be
//! restored) and the roster (updates, removals, resuming from stored
//! offsets). Each test creates its own uniquely named topics.
//!
//! The broker address comes from `CMMS_TEST_BOOTSTRAP` (default
//! 127.0.0.1:9092); `scripts/kafka-local.sh start` starts one.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cmms_router::codec::Codec;
use cmms_router::model::{samples, DedupEntry, TechnicianRoster, SCHEMA_VERSION};
use cmms_router::state::{
    restore_dedup, DedupStore, Lookup, MetaKey, RestoreOptions, RestoreStats, RosterStore,
    StateStore,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

const TIMEOUT: Duration = Duration::from_secs(30);
const HOUR: i64 = 3_600_000;
/// A time at which every entry the tests write is live.
const NOW: i64 = samples::MONDAY_8AM;

fn client() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set(
        "bootstrap.servers",
        std::env::var("CMMS_TEST_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".to_string()),
    );
    c
}

fn unique(label: &str) -> String {
    format!(
        "t-{label}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

fn codec() -> Arc<Codec> {
    Arc::new(
        Codec::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas"))
            .expect("shipped schemas load"),
    )
}

async fn create_compacted(topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = client().create().expect("admin client");
    let spec = NewTopic::new(topic, partitions, TopicReplication::Fixed(1))
        .set("cleanup.policy", "compact");
    let results = admin
        .create_topics(
            &[spec],
            &AdminOptions::new().operation_timeout(Some(TIMEOUT)),
        )
        .await
        .expect("create topics request");
    for r in results {
        r.expect("topic created");
    }
}

fn entry(partition: i32, id: &str) -> DedupEntry {
    DedupEntry {
        schema_version: SCHEMA_VERSION,
        order_id: id.to_string(),
        input_partition: partition,
        first_seen_at: NOW - HOUR,
        expires_at: NOW + 8 * HOUR,
        batch_id: Some(format!("batch-of-{id}")),
    }
}

/// A transactional producer, initialised.
fn txn_producer() -> FutureProducer {
    let p: FutureProducer = client()
        .set("transactional.id", unique("txn"))
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    p.init_transactions(TIMEOUT).expect("init transactions");
    p
}

/// Sends (key, value) records to one partition; returns the last offset.
async fn send_all(
    producer: &FutureProducer,
    topic: &str,
    partition: i32,
    records: &[(String, Option<Vec<u8>>)],
) -> i64 {
    let mut deliveries = Vec::new();
    for (key, value) in records {
        let mut r: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic)
            .partition(partition)
            .key(key.as_str());
        if let Some(v) = value {
            r = r.payload(v.as_slice());
        }
        deliveries.push(producer.send_result(r).map_err(|(e, _)| e).expect("queued"));
    }
    let mut last = -1;
    for d in deliveries {
        let delivery = d.await.expect("not cancelled").expect("delivered");
        last = last.max(delivery.offset);
    }
    last
}

/// One committed (or aborted) transaction of dedup changelog records.
async fn dedup_txn(
    producer: &FutureProducer,
    codec: &Codec,
    topic: &str,
    partition: i32,
    puts: &[String],
    tombstones: &[String],
    commit: bool,
) -> i64 {
    producer.begin_transaction().expect("begin");
    let mut records: Vec<(String, Option<Vec<u8>>)> = puts
        .iter()
        .map(|id| {
            let bytes = codec
                .encode_dedup_entry(&entry(partition, id))
                .expect("encode");
            (id.clone(), Some(bytes))
        })
        .collect();
    records.extend(tombstones.iter().map(|id| (id.clone(), None)));
    let last = send_all(producer, topic, partition, &records).await;
    if commit {
        producer.commit_transaction(TIMEOUT).expect("commit");
    } else {
        producer.abort_transaction(TIMEOUT).expect("abort");
    }
    last
}

fn restore(
    store: &StateStore,
    codec: &Codec,
    topic: &str,
    partition: i32,
) -> cmms_router::state::RestoredPartition {
    let mut reports = 0u32;
    let restored = restore_dedup(
        store,
        codec,
        &client(),
        topic,
        &[partition],
        &RestoreOptions {
            batch_records: 100, // several batches even for small tests
            ..RestoreOptions::default()
        },
        &mut |_| reports += 1,
    )
    .expect("restore")
    .pop()
    .expect("one partition restored");
    if restored.stats().records > 0 {
        assert!(reports > 0, "progress is reported");
    }
    restored
}

fn ids(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("WO-{i:04}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_restore_skips_aborted_records_and_then_reads_only_the_tail() {
    let topic = unique("dedup-changelog");
    let partition = 1; // not 0, so a partition mix-up shows
    create_compacted(&topic, 2).await;
    let codec = codec();
    let producer = txn_producer();

    // 500 entries, then tombstones for every 10th, in one committed transaction.
    let puts = ids(0..500);
    let gone: Vec<String> = puts.iter().step_by(10).cloned().collect();
    let last_committed = dedup_txn(&producer, &codec, &topic, partition, &puts, &gone, true).await;
    // An aborted transaction: new entries and a tombstone that must not apply.
    let aborted_puts = ids(1000..1050);
    let aborted_tombstone = vec!["WO-0001".to_string()];
    dedup_txn(
        &producer,
        &codec,
        &topic,
        partition,
        &aborted_puts,
        &aborted_tombstone,
        false,
    )
    .await;

    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(StateStore::open(dir.path()).expect("open"));
    let first = restore(&store, &codec, &topic, partition);
    let stats: &RestoreStats = first.stats();
    assert_eq!(
        stats.records, 550,
        "500 puts + 50 tombstones, nothing aborted"
    );
    assert_eq!(stats.tombstones, 50);
    assert!(!stats.reset);
    assert_eq!(
        store
            .offset(MetaKey::DedupChangelog(partition))
            .expect("offset"),
        Some(last_committed),
        "stored offset is the last committed record"
    );

    let mut dedup = DedupStore::new(store.clone());
    dedup.adopt(first);
    for id in &puts {
        let want_seen = !gone.contains(id);
        let got = dedup.check(partition, id, NOW).expect("check");
        assert_eq!(matches!(got, Lookup::Seen(_)), want_seen, "{id}: {got:?}");
    }
    assert_eq!(
        dedup.check(partition, "WO-0001", NOW).expect("check"),
        Lookup::Seen(entry(partition, "WO-0001")),
        "the aborted tombstone was not applied; the entry is whole"
    );
    for id in &aborted_puts {
        assert_eq!(dedup.check(partition, id, NOW).expect("check"), Lookup::New);
    }

    // More changes arrive; the next restore reads only them.
    let tail = ids(500..520);
    let tail_gone = vec!["WO-0003".to_string()];
    let last_tail = dedup_txn(
        &producer, &codec, &topic, partition, &tail, &tail_gone, true,
    )
    .await;
    dedup.release(partition);
    let second = restore(&store, &codec, &topic, partition);
    assert_eq!(second.stats().records, 21, "only the tail");
    assert_eq!(
        second.stats().ranges[0].1,
        last_committed + 1,
        "from the stored offset + 1"
    );
    assert_eq!(
        store
            .offset(MetaKey::DedupChangelog(partition))
            .expect("offset"),
        Some(last_tail)
    );
    dedup.adopt(second);
    assert!(matches!(
        dedup.check(partition, "WO-0519", NOW).expect("check"),
        Lookup::Seen(_)
    ));
    assert_eq!(
        dedup.check(partition, "WO-0003", NOW).expect("check"),
        Lookup::New
    );

    // Current state: a restore reads nothing (at most a commit marker).
    let third = restore(&store, &codec, &topic, partition);
    assert_eq!(third.stats().records, 0);

    // The same state against a shorter, newer topic: its offset does not fit,
    // so the partition is wiped and restored from scratch.
    let recreated = unique("dedup-changelog-recreated");
    create_compacted(&recreated, 2).await;
    dedup_txn(
        &producer,
        &codec,
        &recreated,
        partition,
        &ids(0..5),
        &[],
        true,
    )
    .await;
    let fresh = restore(&store, &codec, &recreated, partition);
    assert!(fresh.stats().reset, "{:?}", fresh.stats());
    assert_eq!(fresh.stats().records, 5);
    dedup.release(partition);
    dedup.adopt(fresh);
    assert!(matches!(
        dedup.check(partition, "WO-0004", NOW).expect("check"),
        Lookup::Seen(_)
    ));
    assert_eq!(
        dedup.check(partition, "WO-0100", NOW).expect("check"),
        Lookup::New,
        "entries of the old topic are gone"
    );
}

fn roster_records(codec: &Codec, ts: &[TechnicianRoster]) -> Vec<(String, Option<Vec<u8>>)> {
    ts.iter()
        .map(|t| {
            (
                t.technician_id.clone(),
                Some(codec.encode_roster(t).expect("encode")),
            )
        })
        .collect()
}

/// Sends roster records keyed by technician, spread over partitions by key.
async fn send_roster(
    producer: &FutureProducer,
    topic: &str,
    records: &[(String, Option<Vec<u8>>)],
) {
    let mut deliveries = Vec::new();
    for (key, value) in records {
        let mut r: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).key(key.as_str());
        if let Some(v) = value {
            r = r.payload(v.as_slice());
        }
        deliveries.push(producer.send_result(r).map_err(|(e, _)| e).expect("queued"));
    }
    for d in deliveries {
        d.await.expect("not cancelled").expect("delivered");
    }
}

fn catch_up(roster: &mut RosterStore, topic: &str) -> RestoreStats {
    roster
        .catch_up(&client(), topic, &RestoreOptions::default(), &mut |_| {})
        .expect("catch up")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roster_catch_up_applies_updates_and_removals_and_resumes_from_stored_offsets() {
    let topic = unique("roster");
    create_compacted(&topic, 3).await;
    let codec = codec();
    let producer: FutureProducer = client()
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");

    let technicians: Vec<TechnicianRoster> = (0..30)
        .map(|i| samples::technician(&format!("T-{i:02}"), "S1", "hvac"))
        .collect();
    send_roster(&producer, &topic, &roster_records(&codec, &technicians)).await;
    let mut moved = technicians[1].clone();
    moved.sites = vec!["S2".into()];
    let mut updates = roster_records(&codec, &[moved]);
    updates.push(("T-02".to_string(), None));
    send_roster(&producer, &topic, &updates).await;

    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = Arc::new(StateStore::open(dir.path()).expect("open"));
        let mut roster = RosterStore::open(store, codec.clone()).expect("roster");
        let first = catch_up(&mut roster, &topic);
        assert_eq!(first.records, 32);
        assert_eq!(first.tombstones, 1);
        let r = roster.roster();
        assert_eq!(r.len(), 29);
        assert!(r.get("T-02").is_none(), "removed");
        let s1 = r.listed("S1", "hvac");
        assert_eq!(s1.len(), 28);
        assert!(s1.iter().all(|t| t.technician_id != "T-01"), "moved away");
        let s2 = r.listed("S2", "hvac");
        assert_eq!(s2.len(), 1);
        assert_eq!(s2[0].technician_id, "T-01");
        assert_eq!(
            catch_up(&mut roster, &topic).records,
            0,
            "current: reads nothing"
        );
    }

    // Restart: the roster comes from disk, the topic is not read again.
    let store = Arc::new(StateStore::open(dir.path()).expect("reopen"));
    let mut roster = RosterStore::open(store, codec.clone()).expect("roster");
    assert_eq!(roster.roster().len(), 29);
    assert!(roster.roster().get("T-02").is_none());
    assert_eq!(roster.roster().listed("S2", "hvac").len(), 1);
    let after_restart = catch_up(&mut roster, &topic);
    assert_eq!(after_restart.records, 0, "{after_restart:?}");

    // One more change: only it is read.
    send_roster(&producer, &topic, &[("T-03".to_string(), None)]).await;
    let tail = catch_up(&mut roster, &topic);
    assert_eq!(tail.records, 1);
    assert_eq!(roster.roster().len(), 28);
    let stored: BTreeMap<i32, i64> = roster.offsets().clone();
    assert!(!stored.is_empty() && stored.keys().all(|p| (0..3).contains(p)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_restore_reads_several_partitions_each_to_its_own_offset() {
    let topic = unique("dedup-changelog-multi");
    create_compacted(&topic, 3).await;
    let codec = codec();
    let producer = txn_producer();
    // Different sizes per partition, the same order ids on two of them:
    // entries are kept per input partition.
    let mut last = BTreeMap::new();
    for (partition, count) in [(0, 300), (1, 40), (2, 300)] {
        let puts = ids(0..count);
        let offset = dedup_txn(&producer, &codec, &topic, partition, &puts, &[], true).await;
        last.insert(partition, offset);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(StateStore::open(dir.path()).expect("open"));
    // Partition 1 is current before the joint restore: it must read nothing.
    restore(&store, &codec, &topic, 1);

    let restored = restore_dedup(
        &store,
        &codec,
        &client(),
        &topic,
        &[0, 1, 2],
        &RestoreOptions {
            batch_records: 64, // batches that mix partitions
            ..RestoreOptions::default()
        },
        &mut |_| {},
    )
    .expect("restore");
    let records: BTreeMap<i32, u64> = restored
        .iter()
        .map(|r| (r.partition(), r.stats().records))
        .collect();
    assert_eq!(records, BTreeMap::from([(0, 300), (1, 0), (2, 300)]));
    for (partition, offset) in &last {
        assert_eq!(
            store
                .offset(MetaKey::DedupChangelog(*partition))
                .expect("offset"),
            Some(*offset),
            "partition {partition} records its own last offset"
        );
    }
    let mut dedup = DedupStore::new(store.clone());
    for r in restored {
        dedup.adopt(r);
    }
    for partition in [0, 2] {
        assert!(matches!(
            dedup.check(partition, "WO-0299", NOW).expect("check"),
            Lookup::Seen(_)
        ));
    }
    assert!(matches!(
        dedup.check(1, "WO-0039", NOW).expect("check"),
        Lookup::Seen(_)
    ));
    assert_eq!(
        dedup.check(1, "WO-0040", NOW).expect("check"),
        Lookup::New,
        "partition 1 never saw WO-0040, though partitions 0 and 2 did"
    );
}
