//! The router against the real local broker: routing content, batch
//! closing, dead letters, committed offsets and exactly-once visibility
//! for a read_committed consumer.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use cmms_router::model::{
    samples, CloseReason, DeadLetterReason, Destination, NormalizedWorkOrder, UnassignedReason,
};
use common::World;

const READ: Duration = Duration::from_secs(30);

fn order(id: &str, site: &str, trade: &str) -> NormalizedWorkOrder {
    samples::work_order(id, site, trade)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_orders_arrive_in_their_trade_topic_exactly_once() {
    let world = World::new("exactly-once", 3).await;
    let router = world.start(world.config(4, 400));
    router.wait_ready(Duration::from_secs(30)).await;
    let producer = world.producer();

    let trades = ["hvac", "plumbing", "electrical", "elevator", "general"];
    let mut sent: BTreeMap<String, (String, String)> = BTreeMap::new();
    for i in 0..60 {
        let site = format!("SITE-{}", i % 7);
        let trade = trades[i % trades.len()];
        let id = format!("WO-{i:03}");
        world.send_order(&producer, &order(&id, &site, trade)).await;
        sent.insert(id, (site, trade.to_string()));
    }

    let packets = world.read_packets(sent.len(), READ);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (topic, packet) in &packets {
        assert_eq!(
            topic,
            &format!("{}.{}", world.id, packet.trade),
            "packet on the topic of its trade"
        );
        assert_eq!(packet.destination, Destination::Trade);
        for routed in &packet.orders {
            let (site, trade) = &sent[&routed.order.order_id];
            assert_eq!(
                &packet.site_id, site,
                "order {} in its site's packet",
                routed.order.order_id
            );
            assert_eq!(&routed.order.trade, trade);
            assert_eq!(
                routed.order,
                order(&routed.order.order_id, site, trade),
                "order content kept whole"
            );
            *seen.entry(routed.order.order_id.clone()).or_default() += 1;
        }
    }
    let missing: Vec<_> = sent.keys().filter(|id| !seen.contains_key(*id)).collect();
    assert!(missing.is_empty(), "orders never dispatched: {missing:?}");
    let repeated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "orders dispatched more than once: {repeated:?}"
    );

    // Reading on for a while finds nothing more: no late duplicates.
    let extra = world.read_packets(sent.len() + 1, Duration::from_secs(3));
    let total: usize = extra.iter().map(|(_, p)| p.orders.len()).sum();
    assert_eq!(total, sent.len(), "a second full read sees each order once");

    let summary = router.stop().await;
    assert_eq!(summary.aborts, 0);
    // Everything was dispatched, so the committed offsets are the ends of the input.
    let committed = world.committed_offsets();
    for (p, end) in world.input_end_offsets() {
        // A partition no order was keyed to has nothing to commit.
        let expected = if end == 0 {
            committed[&p].and(Some(0))
        } else {
            Some(end)
        };
        assert_eq!(
            committed[&p], expected,
            "partition {p} committed to its end"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_closes_on_count_and_commit_never_passes_an_open_batch() {
    let world = World::new("count", 1).await;
    // max_wait far beyond the test, so only the count can close a batch.
    let router = world.start(world.config(3, 600_000));
    router.wait_ready(Duration::from_secs(30)).await;
    let producer = world.producer();

    let (_, held_offset) = world
        .send_order(&producer, &order("HELD-1", "SITE-B", "hvac"))
        .await;
    for (id, trade) in [("A-1", "hvac"), ("A-2", "plumbing"), ("A-3", "hvac")] {
        world
            .send_order(&producer, &order(id, "SITE-A", trade))
            .await;
    }

    let packets = world.read_packets(3, READ);
    let mut by_trade: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (_, p) in &packets {
        assert_eq!(p.site_id, "SITE-A");
        assert_eq!(p.close_reason, CloseReason::MaxOrders);
        by_trade.insert(
            p.trade.clone(),
            p.orders.iter().map(|o| o.order.order_id.clone()).collect(),
        );
    }
    assert_eq!(by_trade["hvac"], ["A-1", "A-3"]);
    assert_eq!(by_trade["plumbing"], ["A-2"]);

    // SITE-B's order is still held: the committed offset must not pass it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let committed = world.committed_offsets();
    assert!(
        committed[&0].is_none_or(|c| c <= held_offset),
        "committed {:?} passed the held order at {held_offset}",
        committed[&0]
    );
    assert!(router.is_running());

    // A graceful stop flushes the held batch with its reason and commits to the end.
    router.stop().await;
    let all = world.read_packets(4, READ);
    let held: Vec<_> = all.iter().filter(|(_, p)| p.site_id == "SITE-B").collect();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].1.close_reason, CloseReason::Shutdown);
    assert_eq!(
        world.committed_offsets()[&0],
        Some(world.input_end_offsets()[&0])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_closes_on_time_without_further_input() {
    let world = World::new("time", 1).await;
    let router = world.start(world.config(100, 1_000));
    router.wait_ready(Duration::from_secs(30)).await;
    let producer = world.producer();

    world
        .send_order(&producer, &order("T-1", "SITE-Q", "hvac"))
        .await;
    world
        .send_order(&producer, &order("T-2", "SITE-Q", "hvac"))
        .await;
    // Nothing else is sent: only the wall-clock timer can close the batch.
    let packets = world.read_packets(2, READ);
    assert_eq!(packets.len(), 1, "{packets:?}");
    let p = &packets[0].1;
    assert_eq!(p.close_reason, CloseReason::MaxWait);
    assert_eq!(
        p.orders
            .iter()
            .map(|o| o.order.order_id.as_str())
            .collect::<Vec<_>>(),
        ["T-1", "T-2"]
    );
    assert!(
        p.closed_at - p.opened_at >= 1_000,
        "closed after max_wait: {} ms",
        p.closed_at - p.opened_at
    );
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_are_dead_lettered_with_reason_and_bytes_and_the_router_goes_on() {
    let world = World::new("dead-letters", 1).await;
    let router = world.start(world.config(1, 60_000));
    router.wait_ready(Duration::from_secs(30)).await;
    let producer = world.producer();

    let garbage = b"\x00\x00\x00\x00\x07not avro at all".to_vec();
    let mut no_site = order("NS-1", "SITE-X", "hvac");
    no_site.site_id = None;
    let no_site_bytes = world.codec.encode_work_order(&no_site).expect("encode");
    let unknown_trade_bytes = world
        .codec
        .encode_work_order(&order("UT-1", "SITE-X", "astrology"))
        .expect("encode");
    let mut late = order("DL-1", "SITE-X", "hvac");
    late.sla_deadline = Some(late.created_at - 60_000);
    let late_bytes = world.codec.encode_work_order(&late).expect("encode");

    let expected = [
        (
            world.send_raw(&producer, Some(b"SITE-X"), &garbage).await,
            DeadLetterReason::Undecodable,
            garbage.clone(),
        ),
        (
            world
                .send_raw(&producer, Some(b"SITE-X"), &no_site_bytes)
                .await,
            DeadLetterReason::MissingSite,
            no_site_bytes.clone(),
        ),
        (
            world
                .send_raw(&producer, Some(b"SITE-X"), &unknown_trade_bytes)
                .await,
            DeadLetterReason::UnknownTrade,
            unknown_trade_bytes.clone(),
        ),
        (
            world
                .send_raw(&producer, Some(b"SITE-X"), &late_bytes)
                .await,
            DeadLetterReason::DeadlineBeforeCreation,
            late_bytes.clone(),
        ),
    ];
    // A valid order after the bad ones: the router must still be routing.
    world
        .send_order(&producer, &order("OK-1", "SITE-X", "plumbing"))
        .await;

    let letters = world.read_dead_letters(expected.len(), READ);
    assert_eq!(letters.len(), expected.len(), "{letters:?}");
    for (((partition, offset), reason, bytes), letter) in expected.iter().zip(&letters) {
        assert_eq!(letter.reason, *reason, "{letter:?}");
        assert_eq!(
            (letter.source_partition, letter.source_offset),
            (*partition, *offset)
        );
        assert_eq!(letter.source_topic, world.topology.input.name);
        assert_eq!(letter.original_value.as_deref(), Some(bytes.as_slice()));
        assert_eq!(letter.original_key.as_deref(), Some(&b"SITE-X"[..]));
        assert!(!letter.detail.is_empty());
    }
    assert!(
        letters[2].detail.contains("astrology"),
        "{}",
        letters[2].detail
    );

    let packets = world.read_packets(1, READ);
    assert_eq!(packets.len(), 1);
    assert_eq!(packets[0].1.orders[0].order.order_id, "OK-1");
    assert!(router.is_running());
    assert_eq!(router.metrics.dead_letters_total(), 4);

    router.stop().await;
    // Nothing more arrives in the dead-letter topic: each bad record once.
    assert_eq!(
        world
            .read_dead_letters(expected.len() + 1, Duration::from_secs(3))
            .len(),
        expected.len()
    );
    assert_eq!(
        world.committed_offsets()[&0],
        Some(world.input_end_offsets()[&0])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_building_work_goes_to_the_fallback_flagged() {
    let world = World::new("fallback", 1).await;
    let router = world.start(world.config(1, 60_000));
    router.wait_ready(Duration::from_secs(30)).await;
    let producer = world.producer();
    world
        .send_order(&producer, &order("NB-1", "SITE-N", "non_building"))
        .await;
    let packets = world.read_packets(1, READ);
    assert_eq!(packets[0].0, world.topology.fallback.name);
    assert_eq!(packets[0].1.destination, Destination::Fallback);
    assert_eq!(
        packets[0].1.orders[0].unassigned_reason,
        Some(UnassignedReason::NotBuildingTrade)
    );
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_router_stops_with_an_error_and_its_successor_routes_exactly_once() {
    let world = World::new("fenced", 1).await;
    let config = world.config(1, 60_000);
    let first = world.start(config.clone());
    first.wait_ready(Duration::from_secs(30)).await;
    let producer = world.producer();
    world
        .send_order(&producer, &order("F-1", "SITE-F", "hvac"))
        .await;
    assert_eq!(world.read_packets(1, READ).len(), 1);

    // A newer producer registers the same transactional id, as a replacement
    // instance would: the first router's next transaction must fail fatally
    // and the loop must stop with that error instead of retrying forever.
    let newcomer: rdkafka::producer::BaseProducer = common::client()
        .set("transactional.id", &config.kafka.transactional_id)
        .create()
        .expect("producer");
    tokio::task::spawn_blocking(move || {
        rdkafka::producer::Producer::init_transactions(&newcomer, Duration::from_secs(30))
            .expect("fences the first");
    })
    .await
    .expect("init ran");
    world
        .send_order(&producer, &order("F-2", "SITE-F", "hvac"))
        .await;
    let outcome = tokio::time::timeout(Duration::from_secs(60), first.handle)
        .await
        .expect("fenced router stops")
        .expect("no panic");
    let err = outcome.expect_err("fenced router reports an error");
    assert!(err.to_string().contains("fatal"), "{err}");

    // Its successor picks up from the committed offset and routes F-2 once.
    let second = world.start(config);
    second.wait_ready(Duration::from_secs(30)).await;
    let packets = world.read_packets(2, READ);
    let ids: Vec<_> = packets
        .iter()
        .flat_map(|(_, p)| p.orders.iter().map(|o| o.order.order_id.clone()))
        .collect();
    assert_eq!(ids, ["F-1", "F-2"]);
    second.stop().await;
    assert_eq!(
        world.read_packets(3, Duration::from_secs(3)).len(),
        2,
        "nothing dispatched twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn life_safety_orders_take_the_fast_lane_past_an_open_batch() {
    let world = World::new("fast-lane", 1).await;
    // Only the fast lane can dispatch within the test: batches wait 10 min.
    let router = world.start(world.config(100, 600_000));
    router.wait_ready(Duration::from_secs(30)).await;
    let producer = world.producer();

    world
        .send_order(&producer, &order("WAITS-1", "SITE-A", "hvac"))
        .await;
    let mut gas = order("GAS-LEAK-1", "SITE-A", "plumbing");
    gas.safety_class = cmms_router::model::SafetyClass::LifeSafety;
    world.send_order(&producer, &gas).await;

    let packets = world.read_packets(1, READ);
    assert_eq!(packets.len(), 1, "{packets:?}");
    let p = &packets[0].1;
    assert_eq!(p.close_reason, CloseReason::FastLane);
    assert_eq!(p.tier, cmms_router::model::Tier::Critical);
    assert_eq!(p.orders[0].order.order_id, "GAS-LEAK-1");
    // The ordinary order still waits in its site batch.
    assert_eq!(world.read_packets(2, Duration::from_secs(2)).len(), 1);
    router.stop().await;
}
