//! Scale-out through the consumer group against the real broker: when a
//! second instance joins, the first hands partitions over only after closing
//! their open batches and committing them, so the newcomer starts exactly
//! where it stopped and re-reads nothing.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use cmms_router::config::RouterConfig;
use cmms_router::model::{samples, CloseReason};
use common::World;

/// Long enough that no batch closes on its own while the test runs: every
/// packet before the shutdown is the revocation's doing.
const WINDOW_MS: u64 = 600_000;
const PARTITIONS: i32 = 4;
const WAIT: Duration = Duration::from_secs(60);

fn config(world: &World, instance: &str) -> RouterConfig {
    let state = world.dir.path().join(format!("state-{instance}"));
    let text = world.config_text(1_000, WINDOW_MS, instance, &state);
    RouterConfig::from_toml(&text, "test", Path::new("/"), std::iter::empty())
        .expect("test config is valid")
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "not within {WAIT:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `count` orders over 24 sites; returns the order ids per partition.
async fn send_orders(world: &World, prefix: &str, count: usize) -> BTreeMap<i32, BTreeSet<String>> {
    let producer = world.producer();
    let trades = ["hvac", "plumbing", "electrical"];
    let mut sent: BTreeMap<i32, BTreeSet<String>> = BTreeMap::new();
    for i in 0..count {
        let id = format!("{prefix}-{i:03}");
        let order = samples::work_order(&id, &format!("SITE-{}", i % 24), trades[i % 3]);
        let (partition, _) = world.send_order(&producer, &order).await;
        sent.entry(partition).or_default().insert(id);
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_partitions_are_flushed_and_committed_before_the_handover() {
    let world = World::new("revoke", PARTITIONS).await;
    let a = world.start(config(&world, "a"));
    a.wait_ready(WAIT).await;

    let first = send_orders(&world, "R1", 48).await;
    assert_eq!(
        first.len(),
        PARTITIONS as usize,
        "the sites must spread over every partition: {first:?}"
    );
    wait_until("instance a read every order", || {
        a.metrics.records_consumed_total() >= 48
    })
    .await;
    // Everything is held in open batches; nothing is committed past it.
    assert!(world.read_packets(1, Duration::from_secs(1)).is_empty());

    let b = world.start(config(&world, "b"));
    wait_until("instance a handed partitions over", || {
        a.metrics.revoked_total("committed") > 0
    })
    .await;
    b.wait_ready(WAIT).await;
    assert_eq!(a.metrics.revoked_total("dropped"), 0);
    assert_eq!(a.metrics.revoked_total("aborted"), 0);

    // The handed-over partitions' orders are out now, minutes before their
    // window would close: flushed by instance a on revocation.
    let flushed = world.read_packets(48, Duration::from_secs(5));
    let mut moved: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    for (_, packet) in &flushed {
        assert_eq!(packet.close_reason, CloseReason::Revoked, "{packet:?}");
        for routed in &packet.orders {
            let id = &routed.order.order_id;
            let partition = first
                .iter()
                .find(|(_, ids)| ids.contains(id))
                .map(|(p, _)| *p)
                .expect("every packet order was sent");
            moved.entry(partition).or_default().push(id.clone());
        }
    }
    assert!(
        !moved.is_empty() && moved.len() < PARTITIONS as usize,
        "some but not all partitions move to the newcomer: {moved:?}"
    );
    let committed = world.committed_offsets();
    let ends = world.input_end_offsets();
    for (partition, ids) in &moved {
        let ids: BTreeSet<String> = ids.iter().cloned().collect();
        assert_eq!(ids.len(), moved[partition].len(), "no order twice");
        assert_eq!(
            &ids, &first[partition],
            "partition {partition} flushed whole"
        );
        assert_eq!(
            committed[partition],
            Some(ends[partition]),
            "partition {partition} committed to its end before the handover"
        );
    }
    for partition in first.keys().filter(|p| !moved.contains_key(p)) {
        assert!(
            committed[partition].is_none_or(|c| c < ends[partition]),
            "kept partition {partition} still holds its batches"
        );
    }
    // The newcomer started from that commit: nothing to re-read or drop.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(b.metrics.records_consumed_total(), 0);
    assert_eq!(b.metrics.duplicates_total(), 0);

    // Both instances go on sharing the input; a graceful stop flushes the rest.
    let second = send_orders(&world, "R2", 24).await;
    wait_until("both instances read the new orders", || {
        a.metrics.records_consumed_total() + b.metrics.records_consumed_total() >= 48 + 24
    })
    .await;
    b.stop().await;
    a.stop().await;

    let expected: BTreeSet<String> = first
        .values()
        .chain(second.values())
        .flatten()
        .cloned()
        .collect();
    let all = world.read_packets(expected.len() + 1, Duration::from_secs(10));
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (_, packet) in &all {
        for routed in &packet.orders {
            *seen.entry(routed.order.order_id.clone()).or_default() += 1;
        }
    }
    let twice: Vec<_> = seen.iter().filter(|(_, &n)| n > 1).collect();
    assert!(twice.is_empty(), "dispatched more than once: {twice:?}");
    let got: BTreeSet<String> = seen.into_keys().collect();
    assert_eq!(got, expected, "every order dispatched exactly once");
}
