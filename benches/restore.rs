//! Restore rate of the dedup store against the real local broker, next to a
//! plain read_committed consume of the same records in the same run, so the
//! ratio holds across machines even where the absolute figures do not.
//!
//! 1. Produces `CMMS_RESTORE_BENCH_RECORDS` (default 1,000,000) dedup
//!    changelog records to one partition of a fresh compacted topic, in
//!    transactions of 100,000 with an idempotent transactional producer;
//!    one record in 20 is a tombstone of an earlier key, as expiry writes.
//! 2. Baseline: a read_committed consumer reads them all, touching key and
//!    value, writing nothing.
//! 3. `state::restore_dedup` reads them into an empty RocksDB store.
//!
//! Under `cargo test` it runs with 20,000 records as a smoke test.
//!
//! Run with `cargo bench --bench restore` against `CMMS_TEST_BOOTSTRAP`
//! (default 127.0.0.1:9092; `scripts/kafka-local.sh start`). The topic is
//! deleted at the end.

use std::path::Path;
use std::time::{Duration, Instant};

use cmms_router::codec::Codec;
use cmms_router::model::{DedupEntry, SCHEMA_VERSION};
use cmms_router::state::{restore_dedup, DedupStore, Lookup, RestoreOptions, StateStore};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

const TXN_RECORDS: usize = 100_000;
const TIMEOUT: Duration = Duration::from_secs(60);
const MONDAY_8AM: i64 = 1_767_600_000_000;

fn client() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set(
        "bootstrap.servers",
        std::env::var("CMMS_TEST_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".to_string()),
    );
    c
}

fn key(i: usize) -> String {
    format!("WO-{i:09}")
}

fn produce(codec: &Codec, topic: &str, n: usize) -> Duration {
    let producer: BaseProducer = client()
        .set("transactional.id", format!("{topic}-producer"))
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .create()
        .expect("producer");
    producer
        .init_transactions(TIMEOUT)
        .expect("init transactions");
    let started = Instant::now();
    let mut i = 0;
    while i < n {
        producer.begin_transaction().expect("begin");
        let end = (i + TXN_RECORDS).min(n);
        for j in i..end {
            // Every 20th record expires an entry written 100 records earlier.
            let (k, value) = if j % 20 == 19 && j >= 100 {
                (key(j - 100), None)
            } else {
                let entry = DedupEntry {
                    schema_version: SCHEMA_VERSION,
                    order_id: key(j),
                    input_partition: 0,
                    first_seen_at: MONDAY_8AM,
                    expires_at: MONDAY_8AM + 8 * 3_600_000,
                    batch_id: Some(format!("batch-{}", j / 20)),
                };
                (
                    key(j),
                    Some(codec.encode_dedup_entry(&entry).expect("encode")),
                )
            };
            let mut record: BaseRecord<'_, str, [u8]> =
                BaseRecord::to(topic).partition(0).key(k.as_str());
            if let Some(v) = value.as_deref() {
                record = record.payload(v);
            }
            let mut record = Some(record);
            while let Some(r) = record.take() {
                match producer.send(r) {
                    Ok(()) => {}
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        producer.poll(Duration::from_millis(10));
                        record = Some(back);
                    }
                    Err((e, _)) => panic!("produce failed: {e}"),
                }
            }
        }
        producer.commit_transaction(TIMEOUT).expect("commit");
        i = end;
    }
    started.elapsed()
}

/// Reads the partition to its end with read_committed, writing nothing.
fn plain_consume(topic: &str) -> (u64, Duration) {
    let started = Instant::now();
    let consumer: BaseConsumer = client()
        .set("group.id", format!("{topic}.baseline")) // assign() needs one; never joined
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        // The restore consumer's fetch settings, so the two differ only in
        // what is done with each record.
        .set("max.partition.fetch.bytes", "8388608")
        .set("fetch.max.bytes", "67108864")
        .set("queued.min.messages", "1000000")
        .set("fetch.queue.backoff.ms", "10")
        .create()
        .expect("consumer");
    let (_, high) = consumer
        .fetch_watermarks(topic, 0, TIMEOUT)
        .expect("watermarks");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .expect("partition");
    consumer.assign(&tpl).expect("assign");
    let (mut records, mut bytes) = (0u64, 0usize);
    loop {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                records += 1;
                bytes += m.key().map_or(0, <[u8]>::len) + m.payload().map_or(0, <[u8]>::len);
                // Checking the position per record would dominate; every few
                // thousand is what the restore does too.
                if records % 4096 != 0 {
                    continue;
                }
            }
            Some(Err(e)) => panic!("consume failed: {e}"),
            None => {}
        }
        let pos = consumer.position().expect("position");
        if let Some(Offset::Offset(p)) = pos.find_partition(topic, 0).map(|e| e.offset()) {
            if p >= high {
                break;
            }
        }
    }
    std::hint::black_box(bytes);
    (records, started.elapsed())
}

fn dir_size(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn rate(records: u64, elapsed: Duration) -> f64 {
    records as f64 / elapsed.as_secs_f64()
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this
    // binary without it, and then a small smoke run checks the bench still
    // works without spending a minute of every test run on a million records.
    let measuring = std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::var("CMMS_RESTORE_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if measuring { 1_000_000 } else { 20_000 });
    let codec =
        Codec::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")).expect("schemas load");
    let topic = format!(
        "bench-restore-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    );
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let admin: AdminClient<DefaultClientContext> = client().create().expect("admin");
    let options = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    let spec =
        NewTopic::new(&topic, 1, TopicReplication::Fixed(1)).set("cleanup.policy", "compact");
    for r in runtime
        .block_on(admin.create_topics(&[spec], &options))
        .expect("create topic")
    {
        r.expect("topic created");
    }

    let produced = produce(&codec, &topic, n);
    println!(
        "produced {n} changelog records in {:.1} s ({:.0} records/s, transactions of {TXN_RECORDS})",
        produced.as_secs_f64(),
        rate(n as u64, produced)
    );

    let (base_records, base_time) = plain_consume(&topic);
    assert_eq!(base_records, n as u64, "the baseline read every record");
    let base_rate = rate(base_records, base_time);
    println!(
        "baseline: plain read_committed consume   {base_records} records in {:.2} s = {base_rate:.0} records/s",
        base_time.as_secs_f64()
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let store = StateStore::open(dir.path()).expect("open store");
    let mut last_report = Instant::now();
    let restored = restore_dedup(
        &store,
        &codec,
        &client(),
        &topic,
        &[0],
        &RestoreOptions::default(),
        &mut |p| {
            if last_report.elapsed() > Duration::from_secs(2) {
                last_report = Instant::now();
                eprintln!(
                    "  restore: {} records, {} offsets left",
                    p.records, p.remaining_offsets
                );
            }
        },
    )
    .expect("restore")
    .pop()
    .expect("one partition restored");
    let stats = restored.stats().clone();
    assert_eq!(stats.records, n as u64, "the restore applied every record");
    let restore_rate = stats.records_per_second();
    println!(
        "restore:  restore_dedup into RocksDB     {} records in {:.2} s = {restore_rate:.0} records/s ({} tombstones, {} write batches)",
        stats.records,
        stats.elapsed.as_secs_f64(),
        stats.tombstones,
        stats.batches
    );
    println!(
        "ratio:    restore rate / plain consume rate = {:.2} (the restore takes {:.2}x the consume's time); local state {:.1} MiB",
        restore_rate / base_rate,
        base_rate / restore_rate,
        dir_size(dir.path()) as f64 / (1024.0 * 1024.0)
    );

    // Spot-check the restored state.
    let store = std::sync::Arc::new(store);
    let mut dedup = DedupStore::new(store);
    dedup.adopt(restored);
    assert!(matches!(
        dedup.check(0, &key(n - 2), MONDAY_8AM).expect("check"),
        Lookup::Seen(_)
    ));
    assert_eq!(
        dedup.check(0, &key(19), MONDAY_8AM).expect("check"),
        Lookup::New,
        "tombstoned by record 119"
    );

    let _ = runtime.block_on(admin.delete_topics(&[&topic], &options));
}
