//! Order-id deduplication against the real broker: a re-sent order is
//! routed once, also across a restart, and again once its entry expired.

mod common;

use std::time::Duration;

use cmms_router::model::samples;
use common::World;

const READ: Duration = Duration::from_secs(30);

/// Order ids of the packets, sorted: packets on different trade topics
/// arrive in no set order.
fn ids(packets: &[(String, cmms_router::model::DispatchBatch)]) -> Vec<String> {
    let mut ids: Vec<String> = packets
        .iter()
        .flat_map(|(_, p)| p.orders.iter().map(|o| o.order.order_id.clone()))
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_order_id_is_routed_once_across_restarts_and_again_after_expiry() {
    let world = World::new("dedup", 1).await;
    let mut config = world.config(1, 60_000);
    // Short enough to expire within the test; the sweep runs often.
    config.state.dedup_max_ttl = Duration::from_secs(4);
    config.state.expiry_interval = Duration::from_millis(200);
    let producer = world.producer();
    let order = samples::work_order("DUP-1", "SITE-D", "hvac");
    let marker = |n: usize| samples::work_order(&format!("MARK-{n}"), "SITE-D", "plumbing");

    let router = world.start(config.clone());
    router.wait_ready(READ).await;
    world.send_order(&producer, &order).await;
    world.send_order(&producer, &order).await;
    world.send_order(&producer, &marker(1)).await;
    let seen = ids(&world.read_packets(2, READ));
    assert_eq!(seen, ["DUP-1", "MARK-1"], "the second DUP-1 is dropped");
    assert_eq!(router.metrics.duplicates_total(), 1);
    router.stop().await;

    // After a restart the local store still knows DUP-1.
    let router = world.start(config.clone());
    router.wait_ready(READ).await;
    world.send_order(&producer, &order).await;
    world.send_order(&producer, &marker(2)).await;
    let seen = ids(&world.read_packets(3, READ));
    assert_eq!(
        seen,
        ["DUP-1", "MARK-1", "MARK-2"],
        "DUP-1 is still a duplicate after a restart"
    );

    // Once the entry has expired (4 s TTL) the same id is new again.
    tokio::time::sleep(Duration::from_secs(6)).await;
    world.send_order(&producer, &order).await;
    world.send_order(&producer, &marker(3)).await;
    let seen = ids(&world.read_packets(5, READ));
    assert_eq!(
        seen,
        ["DUP-1", "DUP-1", "MARK-1", "MARK-2", "MARK-3"],
        "routed once more after expiry"
    );
    router.stop().await;
}
