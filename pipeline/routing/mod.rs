//! The routing decision matrix: a closed site batch in, job packets out.
//!
//! For every order, in input order:
//!
//! 1. **Where it can go.** The topology maps its trade to a trade topic or to
//!    the fallback (`non_building`: [`NotBuildingTrade`]). For a trade topic,
//!    the roster's technicians at the site in the trade are ranked
//!    ([`candidates`]); when nobody qualifies the order goes to the vendor
//!    desk if its asset is vendor-managed, else to the fallback topic, with
//!    the [`UnassignedReason`] set.
//! 2. **Score and tier** ([`score`], [`tier`]): four parts kept in the
//!    record, a weighted total, a tier from flags and thresholds.
//! 3. **History** ([`DispatchHistory`]): a repeat of a recently routed
//!    problem gets `repeat_of` and the flag [`FLAG_REPEAT`]; a corrective
//!    order on an asset with a PM due soon gets [`FLAG_PM_DUE_SOON`] and one
//!    `pm_due_soon:<pm_id>` per PM. An overdue order gets [`FLAG_OVERDUE`].
//!
//! Every order comes out exactly once, in exactly one packet: with
//! candidates on its trade topic, or with an unassigned reason on the vendor
//! desk or fallback topic. Nothing is dropped.
//!
//! Orders are grouped into packets by (topic, trade), packets ordered by
//! topic then trade. Inside a packet, orders are sorted by total score,
//! highest first, then earlier SLA deadline (none last), then input offset.
//! A packet's tier is that of its most urgent order.
//!
//! Packets get a deterministic id: a UUID v5 over the site, trade,
//! destination and the input coordinates and order ids of their orders. The
//! same input routed into the same packets always yields the same id, so a
//! downstream connector can recognise a packet it has already seen.
//!
//! Pure: no I/O and no clock. The roster is read through [`RosterView`], the
//! time is `now_ms`, and the only state is the [`DispatchHistory`] passed in.
//!
//! [`NotBuildingTrade`]: UnassignedReason::NotBuildingTrade

pub mod candidates;
pub mod config;
mod history;
mod pm_due;
pub mod repeat;
pub mod score;
pub mod tier;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use uuid::Uuid;

use crate::intake::ValidOrder;
use crate::model::{
    CloseReason, Destination, DispatchBatch, NormalizedWorkOrder, RoutedOrder, Score,
    TechnicianRoster, Tier, UnassignedReason, SCHEMA_VERSION,
};
use crate::topology::{Topology, TradeRoute};
use crate::window::ClosedBatch;

pub use candidates::{Assignment, RosterView, Shortlist, StaticRoster};
pub use config::{RoutingConfig, RoutingConfigError};
pub use history::{DispatchHistory, Recall};
pub use tier::is_fast_lane;

/// Flag of an order that repeats a recently routed problem (see `repeat_of`).
pub const FLAG_REPEAT: &str = "repeat";
/// Flag of a corrective order on an asset with preventive work due soon;
/// followed by one `pm_due_soon:<pm_id>` flag per PM.
pub const FLAG_PM_DUE_SOON: &str = "pm_due_soon";
/// Flag of an order whose SLA deadline has passed.
pub const FLAG_OVERDUE: &str = "overdue";

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

/// An order's score and tier, before it is routed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Assessment {
    /// Score with its parts.
    pub score: Score,
    /// Tier.
    pub tier: Tier,
}

/// Scores one order at `site` without routing or remembering it: what the
/// run loop needs to decide whether the order takes the fast lane
/// ([`is_fast_lane`]) before it is put in a site window.
pub fn assess(
    order: &NormalizedWorkOrder,
    site: &str,
    topology: &Topology,
    roster: &dyn RosterView,
    config: &RoutingConfig,
    now_ms: i64,
) -> Assessment {
    let trade_match = match topology.route(&order.trade) {
        Some(TradeRoute::Topic(_)) => {
            let technicians = roster.technicians(site, &order.trade);
            score::trade_match(order, &technicians, site, now_ms)
        }
        _ => 0.0,
    };
    let score = score::score(order, trade_match, config, now_ms);
    Assessment {
        score,
        tier: tier::tier(order, &score, config, now_ms),
    }
}

/// Whether `order` takes the fast lane at `site`: the answer of
/// [`is_fast_lane`] for [`assess`]'s tier, with the roster read only when the
/// answer depends on it. The weights are non-negative, so the tier can only
/// rise with the trade-match part: an order that is fast with no match at
/// all, or not fast even with a full match, is decided without copying the
/// site's technicians. That is most orders, and this runs for every order.
pub fn takes_fast_lane(
    order: &NormalizedWorkOrder,
    site: &str,
    topology: &Topology,
    roster: &dyn RosterView,
    config: &RoutingConfig,
    now_ms: i64,
) -> bool {
    let fast_with = |trade_match: f64| {
        let score = score::score(order, trade_match, config, now_ms);
        is_fast_lane(order, tier::tier(order, &score, config, now_ms))
    };
    if fast_with(0.0) {
        return true;
    }
    if !fast_with(1.0) {
        return false;
    }
    is_fast_lane(
        order,
        assess(order, site, topology, roster, config, now_ms).tier,
    )
}

/// Splits a closed batch of one input partition into packets, one per
/// destination topic and trade; see the module docs.
pub fn route_batch(
    batch: ClosedBatch<ValidOrder>,
    partition: i32,
    topology: &Topology,
    roster: &dyn RosterView,
    history: &mut DispatchHistory,
    config: &RoutingConfig,
    now_ms: i64,
) -> Vec<Packet> {
    let ClosedBatch {
        site,
        reason,
        opened_at_ms,
        closed_at_ms,
        items,
    } = batch;
    // One roster read per trade in the batch, not per order.
    let trades: BTreeSet<&str> = items
        .iter()
        .map(|h| h.item.order().trade.as_str())
        .collect();
    let technicians: HashMap<String, Vec<TechnicianRoster>> = trades
        .into_iter()
        .filter(|t| matches!(topology.route(t), Some(TradeRoute::Topic(_))))
        .map(|t| (t.to_string(), roster.technicians(&site, t)))
        .collect();

    let mut groups: BTreeMap<(String, String), (Destination, Vec<RoutedOrder>)> = BTreeMap::new();
    for held in items {
        let order = held.item.into_order();
        let listed = technicians
            .get(&order.trade)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let (topic, destination, routed) = route_order(
            order,
            &site,
            (partition, held.offset),
            listed,
            topology,
            history,
            config,
            now_ms,
        );
        groups
            .entry((topic, routed.order.trade.clone()))
            .or_insert_with(|| (destination, Vec::new()))
            .1
            .push(routed);
    }
    groups
        .into_iter()
        .map(|((topic, trade), (destination, orders))| {
            packet(
                PacketHead {
                    topic,
                    site: &site,
                    trade,
                    destination,
                    close_reason: reason,
                    opened_at_ms,
                    closed_at_ms,
                },
                orders,
            )
        })
        .collect()
}

/// Routes one order on its own, as a packet closed with
/// [`CloseReason::FastLane`] at `now_ms`: the fast lane for critical and
/// life-safety orders, which do not wait in a site batch.
#[allow(clippy::too_many_arguments)]
pub fn route_one(
    order: ValidOrder,
    partition: i32,
    offset: i64,
    topology: &Topology,
    roster: &dyn RosterView,
    history: &mut DispatchHistory,
    config: &RoutingConfig,
    now_ms: i64,
) -> Packet {
    let site = order.site().to_string();
    let order = order.into_order();
    let technicians = match topology.route(&order.trade) {
        Some(TradeRoute::Topic(_)) => roster.technicians(&site, &order.trade),
        _ => Vec::new(),
    };
    let (topic, destination, routed) = route_order(
        order,
        &site,
        (partition, offset),
        &technicians,
        topology,
        history,
        config,
        now_ms,
    );
    packet(
        PacketHead {
            topic,
            site: &site,
            trade: routed.order.trade.clone(),
            destination,
            close_reason: CloseReason::FastLane,
            opened_at_ms: now_ms,
            closed_at_ms: now_ms,
        },
        vec![routed],
    )
}

/// Scores, tiers, assigns and flags one order; returns its topic and
/// destination kind with it.
#[allow(clippy::too_many_arguments)]
fn route_order(
    order: NormalizedWorkOrder,
    site: &str,
    (partition, offset): (i32, i64),
    technicians: &[TechnicianRoster],
    topology: &Topology,
    history: &mut DispatchHistory,
    config: &RoutingConfig,
    now_ms: i64,
) -> (String, Destination, RoutedOrder) {
    let unassigned = |reason: UnassignedReason| {
        if order.vendor_managed && reason != UnassignedReason::NotBuildingTrade {
            (topology.vendor_desk.name.clone(), Destination::VendorDesk)
        } else {
            (topology.fallback.name.clone(), Destination::Fallback)
        }
    };
    let (topic, destination, candidates, unassigned_reason, trade_match) =
        match topology.route(&order.trade) {
            Some(TradeRoute::Topic(topic)) => {
                let trade_match = score::trade_match(&order, technicians, site, now_ms);
                match candidates::assign(&order, technicians, site, config.max_candidates, now_ms) {
                    Assignment::Candidates(list) => (
                        topic.clone(),
                        Destination::Trade,
                        list.into_vec(),
                        None,
                        trade_match,
                    ),
                    Assignment::Unassigned(reason) => {
                        let (topic, destination) = unassigned(reason);
                        (topic, destination, Vec::new(), Some(reason), trade_match)
                    }
                }
            }
            Some(TradeRoute::Fallback) => {
                let reason = UnassignedReason::NotBuildingTrade;
                let (topic, destination) = unassigned(reason);
                (topic, destination, Vec::new(), Some(reason), 0.0)
            }
            // Intake rejects undeclared trades, so this is a topology swapped
            // under a held batch; the order still goes somewhere a person
            // looks rather than being dropped.
            None => {
                let reason = UnassignedReason::Other;
                let (topic, destination) = unassigned(reason);
                (topic, destination, Vec::new(), Some(reason), 0.0)
            }
        };

    let score = score::score(&order, trade_match, config, now_ms);
    let tier = tier::tier(&order, &score, config, now_ms);
    let recall = history.observe(&order, site, config, now_ms);

    let mut flags = Vec::new();
    if score::is_overdue(&order, now_ms) {
        flags.push(FLAG_OVERDUE.to_string());
    }
    if recall.repeat_of.is_some() {
        flags.push(FLAG_REPEAT.to_string());
    }
    if !recall.pm_due_soon.is_empty() {
        flags.push(FLAG_PM_DUE_SOON.to_string());
        flags.extend(
            recall
                .pm_due_soon
                .iter()
                .map(|pm_id| format!("{FLAG_PM_DUE_SOON}:{pm_id}")),
        );
    }

    let routed = RoutedOrder {
        order,
        source_partition: partition,
        source_offset: offset,
        score,
        tier,
        candidates,
        unassigned_reason,
        repeat_of: recall.repeat_of,
        flags,
    };
    (topic, destination, routed)
}

/// Everything a packet carries besides its orders.
struct PacketHead<'a> {
    topic: String,
    site: &'a str,
    trade: String,
    destination: Destination,
    close_reason: CloseReason,
    opened_at_ms: i64,
    closed_at_ms: i64,
}

fn packet(head: PacketHead<'_>, mut orders: Vec<RoutedOrder>) -> Packet {
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
            .then(a.source_partition.cmp(&b.source_partition))
            .then(a.source_offset.cmp(&b.source_offset))
    });
    // Orders are never empty here (a packet is made for an order that
    // exists); `Standard` only keeps this total.
    let tier = orders
        .iter()
        .map(|o| o.tier)
        .min()
        .unwrap_or(Tier::Standard);
    let batch_id = batch_id(head.site, &head.trade, head.destination, &orders);
    Packet {
        topic: head.topic,
        batch: DispatchBatch {
            schema_version: SCHEMA_VERSION,
            batch_id,
            site_id: head.site.to_string(),
            trade: head.trade,
            destination: head.destination,
            tier,
            close_reason: head.close_reason,
            earliest_sla_deadline: orders.iter().filter_map(|o| o.order.sla_deadline).min(),
            opened_at: head.opened_at_ms,
            closed_at: head.closed_at_ms,
            orders,
        },
    }
}

/// Stable label of a destination in packet ids (the Avro symbol).
fn destination_label(destination: Destination) -> &'static str {
    match destination {
        Destination::Trade => "TRADE",
        Destination::VendorDesk => "VENDOR_DESK",
        Destination::Fallback => "FALLBACK",
    }
}

fn batch_id(site: &str, trade: &str, destination: Destination, orders: &[RoutedOrder]) -> String {
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
    let mut name = format!(
        "{site}\u{1f}{trade}\u{1f}{}",
        destination_label(destination)
    );
    for (p, off, id) in coords {
        name.push_str(&format!("\u{1f}{p}:{off}:{id}"));
    }
    Uuid::new_v5(&BATCH_ID_NAMESPACE, name.as_bytes()).to_string()
}
