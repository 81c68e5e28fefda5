//! The roster through the real broker: routing follows roster changes, and a
//! restarted router keeps its roster without re-reading the whole topic.

mod common;

use std::time::Duration;

use cmms_router::model::{samples, Destination, DispatchBatch, TechnicianRoster, UnassignedReason};
use cmms_router::telemetry::now_millis;
use common::World;
use rdkafka::producer::FutureProducer;

const READ: Duration = Duration::from_secs(30);
const HOUR: i64 = 3_600_000;

fn on_shift_now(id: &str, site: &str) -> TechnicianRoster {
    common::on_shift_now(id, site, "hvac")
}

/// Sends one HVAC order needing EPA608 at SITE-R and returns its packet.
async fn route_one(
    world: &World,
    producer: &FutureProducer,
    id: &str,
    seen: usize,
) -> (String, DispatchBatch) {
    let mut order = samples::work_order(id, "SITE-R", "hvac");
    order.created_at = now_millis();
    order.sla_deadline = Some(order.created_at + 8 * HOUR);
    world.send_order(producer, &order).await;
    let packets = world.read_packets(seen + 1, READ);
    packets
        .into_iter()
        .find(|(_, p)| p.orders.iter().any(|o| o.order.order_id == id))
        .unwrap_or_else(|| panic!("order {id} was not dispatched"))
}

fn restored_roster_records(metrics: &cmms_router::telemetry::Metrics) -> u64 {
    metrics
        .render()
        .lines()
        .find(|l| l.starts_with("cmms_router_restore_records_total{store=\"roster\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Waits until the router's roster tail has applied what was published.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1_500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roster_changes_move_orders_and_survive_a_restart() {
    let world = World::new("roster", 1).await;
    let producer = world.producer();
    let config = world.config(1, 60_000);
    world
        .publish_roster("T-1", Some(&on_shift_now("T-1", "SITE-R")))
        .await;

    let router = world.start(config.clone());
    router.wait_ready(READ).await;
    // The seeded T-ALL and T-1.
    assert_eq!(
        restored_roster_records(&router.metrics),
        2,
        "first start reads the roster topic"
    );
    let (topic, packet) = route_one(&world, &producer, "R-1", 0).await;
    assert_eq!(topic, format!("{}.hvac", world.id));
    assert_eq!(packet.orders[0].candidates[0].technician_id, "T-1");

    // T-1 goes off shift: nobody can take the next order.
    let mut off = on_shift_now("T-1", "SITE-R");
    off.shift_end = Some(now_millis() - 60_000);
    off.shift_start = Some(now_millis() - 9 * HOUR);
    world.publish_roster("T-1", Some(&off)).await;
    settle().await;
    let (topic, packet) = route_one(&world, &producer, "R-2", 1).await;
    assert_eq!(topic, world.topology.fallback.name);
    assert_eq!(packet.destination, Destination::Fallback);
    assert_eq!(
        packet.orders[0].unassigned_reason,
        Some(UnassignedReason::OutsideShift)
    );

    // T-2 is on shift but their EPA608 has lapsed: still nobody, and the
    // reason says why.
    let mut lapsed = on_shift_now("T-2", "SITE-R");
    for c in &mut lapsed.certifications {
        c.expires_at = Some(now_millis() - HOUR);
    }
    world.publish_roster("T-2", Some(&lapsed)).await;
    settle().await;
    let (_, packet) = route_one(&world, &producer, "R-3", 2).await;
    assert_eq!(
        packet.orders[0].unassigned_reason,
        Some(UnassignedReason::CertificationExpired)
    );

    // The certification is renewed: the next order is T-2's.
    world
        .publish_roster("T-2", Some(&on_shift_now("T-2", "SITE-R")))
        .await;
    settle().await;
    let (topic, packet) = route_one(&world, &producer, "R-3b", 3).await;
    assert_eq!(topic, format!("{}.hvac", world.id));
    assert_eq!(packet.orders[0].candidates[0].technician_id, "T-2");
    router.stop().await;

    // While the router is down, T-2 is removed (null value).
    world.publish_roster("T-2", None).await;
    let router = world.start(config.clone());
    router.wait_ready(READ).await;
    assert_eq!(
        restored_roster_records(&router.metrics),
        1,
        "a restart reads only the one record published while it was down"
    );
    let (_, packet) = route_one(&world, &producer, "R-4", 4).await;
    assert!(
        packet.orders[0].candidates.is_empty(),
        "T-2's removal is visible after the restart"
    );
    router.stop().await;

    // Nothing changed while down: nothing is re-read.
    let router = world.start(config);
    router.wait_ready(READ).await;
    assert_eq!(
        restored_roster_records(&router.metrics),
        0,
        "current local roster: topic not re-read"
    );
    router.stop().await;
}
