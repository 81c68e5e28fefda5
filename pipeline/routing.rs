//! Turn a closed site batch into job packets, one per trade.
//!
//! This is the interim routing step: each order is scored on criticality
//! (asset failure impact x safety weight) and ordered by it, then by SLA
//! deadline, then by input offset. Urgency, trade match against the roster
//! and PM-window proximity are left at zero here; the full decision matrix
//! replaces this scoring (see the routing-matrix issue) without changing the
//! packet layout.
//!
//! Packets get a deterministic id: a UUID v5 over the site, trade and the
//! input coordinates and order ids of their orders. Processing the same input
//! into the same batches always yields the same id, so a downstream connector
//! can recognise a packet it has already seen.

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::intake::ValidOrder;
use crate::model::{
    Destination, DispatchBatch, NormalizedWorkOrder, RoutedOrder, SafetyClass, Score, Tier,
    UnassignedReason, WorkType, SCHEMA_VERSION,
};
use crate::topology::{Topology, TradeRoute};
use crate::window::ClosedBatch;

/// Namespace of packet ids (a fixed random UUID; changing it changes every id).
const BATCH_ID_NAMESPACE: Uuid = Uuid::from_u128(0x5c1e_9a3e_2b7d_4f0e_9d61_8a4c_3f2e_71b0);

/// A packet and the topic it goes to.
#[derive(Debug, Clone, PartialEq)]
pub struct Packet {
    /// Destination topic.
    pub topic: String,
    /// The packet.
    pub batch: DispatchBatch,
}

/// Splits a closed batch of one input partition into packets, one per trade,
/// in trade order.
pub fn route_batch(
    batch: ClosedBatch<ValidOrder>,
    partition: i32,
    topology: &Topology,
) -> Vec<Packet> {
    let mut by_trade: BTreeMap<String, Vec<RoutedOrder>> = BTreeMap::new();
    for held in batch.items {
        let order = held.item.into_order();
        let routed = score(order, partition, held.offset);
        by_trade
            .entry(routed.order.trade.clone())
            .or_default()
            .push(routed);
    }
    by_trade
        .into_iter()
        .filter_map(|(trade, mut orders)| {
            let (topic, destination) = match topology.route(&trade)? {
                TradeRoute::Topic(t) => (t.clone(), Destination::Trade),
                TradeRoute::Fallback => {
                    for o in &mut orders {
                        o.unassigned_reason = Some(UnassignedReason::NotBuildingTrade);
                    }
                    (topology.fallback.name.clone(), Destination::Fallback)
                }
            };
            orders.sort_by(|a, b| {
                b.score
                    .total
                    .total_cmp(&a.score.total)
                    .then(
                        a.order
                            .sla_deadline
                            .unwrap_or(i64::MAX)
                            .cmp(&b.order.sla_deadline.unwrap_or(i64::MAX)),
                    )
                    .then(a.source_offset.cmp(&b.source_offset))
            });
            let tier = orders
                .iter()
                .map(|o| o.tier)
                .min()
                .unwrap_or(Tier::Standard);
            let batch_id = batch_id(&batch.site, &trade, &orders);
            Some(Packet {
                topic,
                batch: DispatchBatch {
                    schema_version: SCHEMA_VERSION,
                    batch_id,
                    site_id: batch.site.clone(),
                    trade,
                    destination,
                    tier,
                    close_reason: batch.reason,
                    earliest_sla_deadline: orders.iter().filter_map(|o| o.order.sla_deadline).min(),
                    opened_at: batch.opened_at_ms,
                    closed_at: batch.closed_at_ms,
                    orders,
                },
            })
        })
        .collect()
}

fn batch_id(site: &str, trade: &str, orders: &[RoutedOrder]) -> String {
    let mut coords: Vec<(i32, i64, &str)> = orders
        .iter()
        .map(|o| {
            (
                o.source_partition,
                o.source_offset,
                o.order.order_id.as_str(),
            )
        })
        .collect();
    coords.sort();
    let mut name = format!("{site}\u{1f}{trade}");
    for (p, off, id) in coords {
        name.push_str(&format!("\u{1f}{p}:{off}:{id}"));
    }
    Uuid::new_v5(&BATCH_ID_NAMESPACE, name.as_bytes()).to_string()
}

/// Weight of each safety class in the criticality part.
fn safety_weight(class: SafetyClass) -> f64 {
    match class {
        SafetyClass::LifeSafety => 1.0,
        SafetyClass::Regulatory => 0.8,
        SafetyClass::Safety => 0.7,
        SafetyClass::None | SafetyClass::Unknown => 0.4,
    }
}

fn score(order: NormalizedWorkOrder, partition: i32, offset: i64) -> RoutedOrder {
    // Unknown criticality counts as middling (3 of 5) rather than lowest, so
    // missing asset data never buries an order.
    let impact = f64::from(order.asset_criticality.unwrap_or(3)) / 5.0;
    let criticality = impact * safety_weight(order.safety_class);
    let tier = match (order.safety_class, order.work_type, order.priority) {
        (SafetyClass::LifeSafety, _, _) | (_, WorkType::Emergency, _) => Tier::Critical,
        (_, WorkType::Preventive, _) => Tier::PmWindow,
        (SafetyClass::Safety, _, _) | (_, _, Some(1 | 2)) => Tier::High,
        _ => Tier::Standard,
    };
    RoutedOrder {
        order,
        source_partition: partition,
        source_offset: offset,
        score: Score {
            total: criticality,
            criticality,
            ..Score::default()
        },
        tier,
        candidates: Vec::new(),
        unassigned_reason: None,
        repeat_of: None,
        flags: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::intake::validate;
    use crate::model::{samples, CloseReason};
    use crate::window::Held;

    fn topology() -> Topology {
        Topology::load(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/topology/topology.toml"
        )))
        .expect("valid")
    }

    fn closed(orders: Vec<NormalizedWorkOrder>) -> ClosedBatch<ValidOrder> {
        let t = topology();
        ClosedBatch {
            site: "S1".into(),
            reason: CloseReason::MaxOrders,
            opened_at_ms: 1,
            closed_at_ms: 2,
            items: orders
                .into_iter()
                .enumerate()
                .map(|(i, o)| Held {
                    offset: 100 + i as i64,
                    item: validate(o, &t).expect("valid"),
                })
                .collect(),
        }
    }

    #[test]
    fn splits_by_trade_and_routes_to_trade_topics() {
        let packets = route_batch(
            closed(vec![
                samples::work_order("A", "S1", "hvac"),
                samples::work_order("B", "S1", "plumbing"),
                samples::work_order("C", "S1", "hvac"),
            ]),
            4,
            &topology(),
        );
        let summary: Vec<_> = packets
            .iter()
            .map(|p| {
                (
                    p.topic.as_str(),
                    p.batch
                        .orders
                        .iter()
                        .map(|o| o.order.order_id.as_str())
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("cmms.dispatch.hvac", vec!["A", "C"]),
                ("cmms.dispatch.plumbing", vec!["B"])
            ]
        );
        assert!(packets
            .iter()
            .all(|p| p.batch.site_id == "S1" && p.batch.close_reason == CloseReason::MaxOrders));
        assert_eq!(packets[0].batch.orders[1].source_offset, 102);
        assert_eq!(packets[0].batch.orders[1].source_partition, 4);
    }

    #[test]
    fn non_building_goes_to_fallback_with_reason() {
        let packets = route_batch(
            closed(vec![samples::work_order("A", "S1", "non_building")]),
            0,
            &topology(),
        );
        assert_eq!(packets[0].topic, "cmms.dispatch.fallback");
        assert_eq!(packets[0].batch.destination, Destination::Fallback);
        assert_eq!(
            packets[0].batch.orders[0].unassigned_reason,
            Some(UnassignedReason::NotBuildingTrade)
        );
    }

    #[test]
    fn orders_sorted_by_score_and_packet_takes_most_urgent_tier() {
        let mut life = samples::work_order("LIFE", "S1", "hvac");
        life.safety_class = SafetyClass::LifeSafety;
        life.asset_criticality = Some(5);
        let mut low = samples::work_order("LOW", "S1", "hvac");
        low.asset_criticality = Some(1);
        low.priority = Some(4);
        let packets = route_batch(closed(vec![low, life]), 0, &topology());
        let ids: Vec<_> = packets[0]
            .batch
            .orders
            .iter()
            .map(|o| o.order.order_id.as_str())
            .collect();
        assert_eq!(ids, ["LIFE", "LOW"]);
        assert_eq!(packets[0].batch.tier, Tier::Critical);
        assert!(
            packets[0].batch.orders[0].score.criticality
                > packets[0].batch.orders[1].score.criticality
        );
    }

    #[test]
    fn batch_id_is_deterministic_and_depends_on_coordinates() {
        let make = || {
            closed(vec![
                samples::work_order("A", "S1", "hvac"),
                samples::work_order("B", "S1", "hvac"),
            ])
        };
        let a = route_batch(make(), 0, &topology());
        let b = route_batch(make(), 0, &topology());
        let c = route_batch(make(), 1, &topology());
        assert_eq!(a[0].batch.batch_id, b[0].batch.batch_id);
        assert_ne!(a[0].batch.batch_id, c[0].batch.batch_id);
        assert!(Uuid::parse_str(&a[0].batch.batch_id).is_ok());
    }
}
