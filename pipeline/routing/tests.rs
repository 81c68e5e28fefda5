//! Tests of `route_batch` and `route_one` as a whole: packets, destinations,
//! flags, determinism, "every order out exactly once", and a replay of a
//! day of real NYC 311 requests.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use proptest::prelude::*;

use super::*;
use crate::intake::validate;
use crate::model::{samples, Availability, Certification, SafetyClass, WorkType};
use crate::replay::{self, Source, NON_BUILDING_TRADE};
use crate::window::Held;

const HOUR: i64 = 3_600_000;
const NOW: i64 = samples::MONDAY_8AM;

fn topology() -> Topology {
    Topology::load(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/topology/topology.toml"
    )))
    .expect("valid")
}

fn closed(site: &str, orders: Vec<NormalizedWorkOrder>) -> ClosedBatch<ValidOrder> {
    let t = topology();
    ClosedBatch {
        site: site.into(),
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

/// One certified, on-shift technician per trade at S1.
fn staffed() -> StaticRoster {
    StaticRoster::new(
        ["hvac", "plumbing", "electrical", "elevator"]
            .into_iter()
            .map(|trade| samples::technician(&format!("T-{trade}"), "S1", trade)),
    )
}

fn route(orders: Vec<NormalizedWorkOrder>, roster: &dyn RosterView) -> Vec<Packet> {
    route_batch(
        closed("S1", orders),
        4,
        &topology(),
        roster,
        &mut DispatchHistory::default(),
        &RoutingConfig::default(),
        NOW,
    )
}

fn ids(packet: &Packet) -> Vec<&str> {
    packet
        .batch
        .orders
        .iter()
        .map(|o| o.order.order_id.as_str())
        .collect()
}

#[test]
fn splits_by_trade_and_routes_to_trade_topics() {
    let packets = route(
        vec![
            samples::work_order("A", "S1", "hvac"),
            samples::work_order("B", "S1", "plumbing"),
            samples::work_order("C", "S1", "hvac"),
        ],
        &staffed(),
    );
    let summary: Vec<_> = packets.iter().map(|p| (p.topic.as_str(), ids(p))).collect();
    assert_eq!(
        summary,
        [
            ("cmms.dispatch.hvac", vec!["A", "C"]),
            ("cmms.dispatch.plumbing", vec!["B"])
        ]
    );
    assert!(packets.iter().all(|p| p.batch.site_id == "S1"
        && p.batch.close_reason == CloseReason::MaxOrders
        && p.batch.destination == Destination::Trade));
    let c = &packets[0].batch.orders[1];
    assert_eq!((c.source_partition, c.source_offset), (4, 102));
    assert_eq!(c.candidates[0].technician_id, "T-hvac");
    assert_eq!(c.unassigned_reason, None);
    assert_eq!(c.score.trade_match, 1.0);
}

#[test]
fn nobody_qualified_goes_to_fallback_or_vendor_desk_flagged() {
    let mut vendor = samples::work_order("V", "S1", "hvac");
    vendor.vendor_managed = true;
    let own = samples::work_order("O", "S1", "hvac");
    let packets = route(vec![vendor, own], &StaticRoster::default());
    let summary: Vec<_> = packets
        .iter()
        .map(|p| (p.topic.as_str(), p.batch.destination, ids(p)))
        .collect();
    assert_eq!(
        summary,
        [
            ("cmms.dispatch.fallback", Destination::Fallback, vec!["O"]),
            (
                "cmms.dispatch.vendor-desk",
                Destination::VendorDesk,
                vec!["V"]
            ),
        ]
    );
    for p in &packets {
        assert_eq!(p.batch.trade, "hvac");
        let o = &p.batch.orders[0];
        assert!(o.candidates.is_empty());
        assert_eq!(
            o.unassigned_reason,
            Some(UnassignedReason::NoQualifiedTechnician)
        );
    }
}

#[test]
fn unassigned_reasons_follow_the_roster() {
    let mut expired = samples::technician("T1", "S1", "hvac");
    expired.certifications[0].expires_at = Some(NOW - 1);
    let mut off = samples::technician("T2", "S1", "hvac");
    off.shift_start = Some(NOW + HOUR);
    let reason = |roster: StaticRoster| {
        route(vec![samples::work_order("A", "S1", "hvac")], &roster)[0]
            .batch
            .orders[0]
            .unassigned_reason
    };
    assert_eq!(
        reason(StaticRoster::new([expired])),
        Some(UnassignedReason::CertificationExpired)
    );
    assert_eq!(
        reason(StaticRoster::new([off])),
        Some(UnassignedReason::OutsideShift)
    );
    let mut elsewhere = samples::technician("T3", "S1", "hvac");
    elsewhere.sites = vec!["S2".into()];
    assert_eq!(
        reason(StaticRoster::new([elsewhere])),
        Some(UnassignedReason::NoQualifiedTechnician)
    );
}

#[test]
fn non_building_goes_to_fallback_with_reason_even_when_vendor_managed() {
    let mut o = samples::work_order("A", "S1", NON_BUILDING_TRADE);
    o.vendor_managed = true;
    let packets = route(vec![o], &staffed());
    assert_eq!(packets[0].topic, "cmms.dispatch.fallback");
    assert_eq!(packets[0].batch.destination, Destination::Fallback);
    assert_eq!(packets[0].batch.trade, NON_BUILDING_TRADE);
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
    low.description = "filter change".into();
    let mut late = samples::work_order("LATE", "S1", "hvac");
    late.asset_criticality = Some(1);
    late.created_at = NOW - 10 * HOUR;
    late.sla_deadline = Some(NOW - HOUR);
    late.description = "thermostat".into();
    let packets = route(vec![low, life, late], &staffed());
    assert_eq!(ids(&packets[0]), ["LATE", "LIFE", "LOW"]);
    let orders = &packets[0].batch.orders;
    assert_eq!(orders[0].flags, [FLAG_OVERDUE]);
    assert_eq!(orders[1].tier, Tier::Critical);
    assert_eq!(packets[0].batch.tier, Tier::Critical);
    assert_eq!(packets[0].batch.earliest_sla_deadline, Some(NOW - HOUR));
}

#[test]
fn equal_scores_sort_by_deadline_then_offset() {
    let mut a = samples::work_order("A", "S1", "hvac");
    a.description = "a".into();
    let mut b = samples::work_order("B", "S1", "hvac");
    b.description = "b".into();
    let mut c = samples::work_order("C", "S1", "hvac");
    c.description = "c".into();
    // A deadline nine midpoints out has the no-deadline urgency (0.1), so
    // all three score the same; B's deadline puts it first, then offsets.
    a.sla_deadline = None;
    c.sla_deadline = None;
    b.sla_deadline = Some(NOW + 9 * 24 * HOUR);
    let packets = route(vec![a, c, b], &staffed());
    let orders = &packets[0].batch.orders;
    assert!((orders[0].score.total - orders[2].score.total).abs() < 1e-12);
    assert_eq!(ids(&packets[0]), ["B", "A", "C"]);
}

#[test]
fn repeats_are_linked_and_flagged_never_dropped() {
    let first = samples::work_order("WO-1", "S1", "hvac");
    let again = samples::work_order("WO-2", "S1", "hvac");
    let mut history = DispatchHistory::default();
    let config = RoutingConfig::default();
    let mut run = |orders: Vec<NormalizedWorkOrder>, now: i64| {
        route_batch(
            closed("S1", orders),
            0,
            &topology(),
            &staffed(),
            &mut history,
            &config,
            now,
        )
    };
    let p1 = run(vec![first], NOW);
    assert_eq!(p1[0].batch.orders[0].repeat_of, None);
    let p2 = run(vec![again.clone()], NOW + HOUR);
    let o = &p2[0].batch.orders[0];
    assert_eq!(o.repeat_of.as_deref(), Some("WO-1"));
    assert_eq!(o.flags, [FLAG_REPEAT]);
    assert_eq!(o.candidates.len(), 1, "still routed to a technician");

    let off = config::tests::config("[repeat]\nenabled = false\n");
    let p3 = route_batch(
        closed("S1", vec![again]),
        0,
        &topology(),
        &staffed(),
        &mut DispatchHistory::new(&off),
        &off,
        NOW,
    );
    assert_eq!(p3[0].batch.orders[0].repeat_of, None);
}

#[test]
fn corrective_work_flags_the_pm_due_on_its_asset() {
    let pm = samples::preventive_order("PM-ORDER", "S1");
    let fix = samples::work_order("FIX", "S1", "hvac");
    let packets = route(vec![pm, fix], &staffed());
    let fix = packets[0]
        .batch
        .orders
        .iter()
        .find(|o| o.order.order_id == "FIX")
        .expect("routed");
    assert_eq!(fix.flags, ["pm_due_soon", "pm_due_soon:PM-BOILER-Q"]);
    let pm = packets[0]
        .batch
        .orders
        .iter()
        .find(|o| o.order.order_id == "PM-ORDER")
        .expect("routed");
    assert_eq!(pm.tier, Tier::PmWindow);
    assert!(pm.flags.is_empty());
}

#[test]
fn batch_id_is_deterministic_and_depends_on_coordinates_and_destination() {
    let make = || {
        closed(
            "S1",
            vec![
                samples::work_order("A", "S1", "hvac"),
                samples::work_order("B", "S1", "hvac"),
            ],
        )
    };
    let run = |partition: i32, roster: &StaticRoster| {
        route_batch(
            make(),
            partition,
            &topology(),
            roster,
            &mut DispatchHistory::default(),
            &RoutingConfig::default(),
            NOW,
        )
    };
    let a = run(0, &staffed());
    let b = run(0, &staffed());
    let c = run(1, &staffed());
    let d = run(0, &StaticRoster::default());
    assert_eq!(a[0].batch.batch_id, b[0].batch.batch_id);
    assert_ne!(a[0].batch.batch_id, c[0].batch.batch_id);
    assert_ne!(
        a[0].batch.batch_id, d[0].batch.batch_id,
        "trade vs fallback"
    );
    assert!(Uuid::parse_str(&a[0].batch.batch_id).is_ok());
}

#[test]
fn fast_lane_routes_one_critical_order_on_its_own() {
    let mut o = samples::work_order("GAS", "S1", "plumbing");
    o.safety_class = SafetyClass::LifeSafety;
    o.work_type = WorkType::Emergency;
    o.required_skills.clear();
    let t = topology();
    let roster = staffed();
    let config = RoutingConfig::default();
    let assessed = assess(&o, "S1", &t, &roster, &config, NOW);
    assert!(is_fast_lane(&o, assessed.tier));
    let routine = samples::work_order("ROUTINE", "S1", "hvac");
    let assessed_routine = assess(&routine, "S1", &t, &roster, &config, NOW);
    assert!(!is_fast_lane(&routine, assessed_routine.tier));

    let packet = route_one(
        validate(o, &t).expect("valid"),
        3,
        77,
        &t,
        &roster,
        &mut DispatchHistory::default(),
        &config,
        NOW,
    );
    assert_eq!(packet.topic, "cmms.dispatch.plumbing");
    assert_eq!(packet.batch.close_reason, CloseReason::FastLane);
    assert_eq!(packet.batch.tier, Tier::Critical);
    assert_eq!((packet.batch.opened_at, packet.batch.closed_at), (NOW, NOW));
    let routed = &packet.batch.orders[0];
    assert_eq!((routed.source_partition, routed.source_offset), (3, 77));
    assert_eq!(routed.score, assessed.score);
    assert_eq!(routed.candidates[0].technician_id, "T-plumbing");
}

/// Strategy: a random batch at S1 and a random roster at S1 and S2.
fn batch_and_roster() -> impl Strategy<Value = (Vec<NormalizedWorkOrder>, StaticRoster)> {
    let trades = ["hvac", "plumbing", "electrical", NON_BUILDING_TRADE];
    let codes = ["EPA608", "NFPA70E"];
    let orders = prop::collection::vec(
        (
            0..trades.len(),
            any::<bool>(),
            prop::collection::btree_set(0..codes.len(), 0..=2),
            prop::option::of(0..100 * HOUR),
            0..4usize,
        ),
        1..25,
    )
    .prop_map(move |rows| {
        rows.into_iter()
            .enumerate()
            .map(|(i, (trade, vendor, skills, deadline, problem))| {
                let mut o = samples::work_order(&format!("O{i}"), "S1", trades[trade]);
                o.vendor_managed = vendor;
                o.required_skills = skills.iter().map(|&c| codes[c].to_string()).collect();
                o.sla_deadline = deadline.map(|d| NOW - 50 * HOUR + d);
                o.created_at = NOW - 60 * HOUR;
                o.description = format!("problem {problem}");
                o
            })
            .collect()
    });
    let roster = prop::collection::vec(
        (
            0..2usize,
            0..trades.len() - 1,
            prop::collection::vec((0..codes.len(), prop::option::of(-HOUR..HOUR)), 0..3),
            prop::option::of((-5 * HOUR..HOUR, 0..5 * HOUR)),
            any::<bool>(),
        ),
        0..10,
    )
    .prop_map(move |rows| {
        StaticRoster::new(rows.into_iter().enumerate().map(
            |(i, (site, trade, certs, shift, available))| {
                let mut t =
                    samples::technician(&format!("T{i}"), ["S1", "S2"][site], trades[trade]);
                t.certifications = certs
                    .into_iter()
                    .map(|(c, exp)| Certification {
                        code: codes[c].into(),
                        expires_at: exp.map(|e| NOW + e),
                    })
                    .collect();
                t.shift_start = shift.map(|(s, _)| NOW + s);
                t.shift_end = shift.map(|(s, len)| NOW + s + len);
                if !available {
                    t.availability = Availability::OnLeave;
                }
                t
            },
        ))
    });
    (orders, roster)
}

proptest! {
    /// Every order in comes out exactly once, either with candidates on its
    /// trade topic or with an unassigned reason on the vendor desk or
    /// fallback, in a packet of its own trade.
    #[test]
    fn every_order_out_exactly_once((orders, roster) in batch_and_roster()) {
        let t = topology();
        let config = RoutingConfig::default();
        let input: BTreeMap<String, NormalizedWorkOrder> =
            orders.iter().map(|o| (o.order_id.clone(), o.clone())).collect();
        let packets = route_batch(
            closed("S1", orders),
            0,
            &t,
            &roster,
            &mut DispatchHistory::default(),
            &config,
            NOW,
        );
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for p in &packets {
            prop_assert!(!p.batch.orders.is_empty());
            for o in &p.batch.orders {
                *seen.entry(o.order.order_id.clone()).or_default() += 1;
                prop_assert_eq!(&o.order.trade, &p.batch.trade);
                prop_assert_eq!(o.candidates.is_empty(), o.unassigned_reason.is_some());
                prop_assert!(o.candidates.len() <= config.max_candidates().get());
                match p.batch.destination {
                    Destination::Trade => {
                        prop_assert_eq!(Some(&TradeRoute::Topic(p.topic.clone())), t.route(&p.batch.trade));
                        prop_assert!(o.unassigned_reason.is_none());
                    }
                    Destination::VendorDesk => {
                        prop_assert_eq!(&p.topic, &t.vendor_desk.name);
                        prop_assert!(o.order.vendor_managed);
                        prop_assert!(o.unassigned_reason.is_some());
                    }
                    Destination::Fallback => {
                        prop_assert_eq!(&p.topic, &t.fallback.name);
                        prop_assert!(o.unassigned_reason.is_some());
                        prop_assert!(!o.order.vendor_managed || o.order.trade == NON_BUILDING_TRADE);
                    }
                }
                if o.order.trade == NON_BUILDING_TRADE {
                    prop_assert_eq!(o.unassigned_reason, Some(UnassignedReason::NotBuildingTrade));
                }
            }
        }
        prop_assert_eq!(seen.len(), input.len());
        prop_assert!(seen.values().all(|&n| n == 1), "{:?}", seen);
    }
}

/// Counts of a replay, by (topic, trade, unassigned reason).
type Counts = BTreeMap<(String, String, String), usize>;

/// Routes valid orders in input order, in batches of up to 20 per site
/// (closed on count, the rest flushed at the end), and returns the packets.
fn replay_batches(valid: &[ValidOrder], roster: &dyn RosterView, now: i64) -> Vec<Packet> {
    const PER_BATCH: usize = 20;
    let t = topology();
    let config = RoutingConfig::default();
    let mut history = DispatchHistory::new(&config);
    let mut open: BTreeMap<String, Vec<Held<ValidOrder>>> = BTreeMap::new();
    let mut packets = Vec::new();
    let mut close = |site: String, items: Vec<Held<ValidOrder>>, reason, history: &mut _| {
        let batch = ClosedBatch {
            site,
            reason,
            opened_at_ms: now,
            closed_at_ms: now,
            items,
        };
        packets.extend(route_batch(batch, 0, &t, roster, history, &config, now));
    };
    for (offset, order) in valid.iter().enumerate() {
        let site = order.site().to_string();
        let items = open.entry(site.clone()).or_default();
        items.push(Held {
            offset: offset as i64,
            item: order.clone(),
        });
        if items.len() == PER_BATCH {
            let items = open.remove(&site).unwrap_or_default();
            close(site, items, CloseReason::MaxOrders, &mut history);
        }
    }
    let mut rest: Vec<_> = open.into_iter().collect();
    rest.sort_by_key(|(_, items)| items.first().map(|h| h.offset));
    for (site, items) in rest {
        close(site, items, CloseReason::Shutdown, &mut history);
    }
    packets
}

fn counts(packets: &[Packet]) -> Counts {
    let mut counts = Counts::new();
    for p in packets {
        for o in &p.batch.orders {
            let reason = o
                .unassigned_reason
                .map_or("-".to_string(), |r| format!("{r:?}"));
            *counts
                .entry((p.topic.clone(), p.batch.trade.clone(), reason))
                .or_default() += 1;
        }
    }
    counts
}

fn print_counts(title: &str, packets: &[Packet]) {
    println!("{title}: {} packets", packets.len());
    for ((topic, trade, reason), n) in counts(packets) {
        println!("  {topic:<32} {trade:<14} {reason:<24} {n:>5}");
    }
    let mut tiers: BTreeMap<String, usize> = BTreeMap::new();
    let mut flags: BTreeMap<String, usize> = BTreeMap::new();
    for o in packets.iter().flat_map(|p| &p.batch.orders) {
        *tiers.entry(format!("{:?}", o.tier)).or_default() += 1;
        for f in &o.flags {
            *flags.entry(f.clone()).or_default() += 1;
        }
    }
    println!("  tiers: {tiers:?}");
    println!("  flags: {flags:?}");
}

/// Where a routed order went, by order id.
fn placements(packets: &[Packet]) -> HashMap<&str, (&str, &RoutedOrder)> {
    packets
        .iter()
        .flat_map(|p| {
            p.batch
                .orders
                .iter()
                .map(move |o| (o.order.order_id.as_str(), (p.topic.as_str(), o)))
        })
        .collect()
}

#[test]
fn nyc311_replay_routes_each_complaint_to_its_trade() {
    let Some(path) = replay::tests::data_file(Source::Nyc311) else {
        return;
    };
    let mut orders = replay::load(Source::Nyc311, &path).expect("nyc311 file loads");
    let now = NOW;
    replay::rebase(&mut orders, now);
    let t = topology();
    let total = orders.len();
    let valid: Vec<ValidOrder> = orders
        .into_iter()
        .filter_map(|o| validate(o, &t).ok())
        .collect();
    println!(
        "nyc311: {total} rows, {} valid, {} dead-lettered (no address)",
        valid.len(),
        total - valid.len()
    );

    // Empty roster: nobody can take building work, so it all lands on the
    // fallback with NO_QUALIFIED_TECHNICIAN, still labelled with its trade.
    let empty = replay_batches(&valid, &StaticRoster::default(), now);
    print_counts("empty roster", &empty);

    // One technician per trade, on shift at every site.
    let sites: Vec<String> = valid.iter().map(|o| o.site().to_string()).collect();
    let roster = StaticRoster::new(
        t.trades
            .iter()
            .filter(|(_, route)| matches!(route, TradeRoute::Topic(_)))
            .map(|(trade, _)| {
                let mut tech = samples::technician(&format!("T-{trade}"), "", trade);
                tech.sites = sites.clone();
                tech.certifications.clear();
                tech.shift_start = Some(now - HOUR);
                tech.shift_end = Some(now + 8 * HOUR);
                tech
            }),
    );
    let staffed = replay_batches(&valid, &roster, now);
    print_counts("one technician per trade at every site", &staffed);

    for packets in [&empty, &staffed] {
        let placed = placements(packets);
        assert_eq!(placed.len(), valid.len(), "every order exactly once");
        assert_eq!(
            packets.iter().map(|p| p.batch.orders.len()).sum::<usize>(),
            valid.len()
        );
    }
    let attribute = |o: &RoutedOrder, key: &str| {
        o.order
            .attributes
            .get(key)
            .map(|v| v.to_ascii_uppercase())
            .unwrap_or_default()
    };
    let mut checked: BTreeMap<&str, usize> = BTreeMap::new();
    for (id, (topic, routed)) in placements(&staffed) {
        let agency = attribute(routed, "agency");
        let complaint = attribute(routed, "complaint_type");
        let expected = match (agency.as_str(), complaint.as_str()) {
            ("HPD", "HEATING") => Some("cmms.dispatch.hvac"),
            ("HPD" | "DOB", "PLUMBING") => Some("cmms.dispatch.plumbing"),
            ("DOB", "ELEVATOR") => Some("cmms.dispatch.elevator"),
            _ => None,
        };
        if let Some(expected) = expected {
            assert_eq!(topic, expected, "{id}: {agency} {complaint}");
            assert!(!routed.candidates.is_empty(), "{id}");
            *checked.entry(expected).or_default() += 1;
        }
        if routed.order.trade == NON_BUILDING_TRADE {
            assert_eq!(topic, "cmms.dispatch.fallback", "{id}");
            assert_eq!(
                routed.unassigned_reason,
                Some(UnassignedReason::NotBuildingTrade),
                "{id}"
            );
            *checked.entry("non_building").or_default() += 1;
        }
    }
    println!("checked: {checked:?}");
    assert!(
        checked.len() == 4,
        "each kind of complaint occurs: {checked:?}"
    );

    for (id, (topic, routed)) in placements(&empty) {
        assert_eq!(topic, "cmms.dispatch.fallback", "{id}");
        let expected = if routed.order.trade == NON_BUILDING_TRADE {
            UnassignedReason::NotBuildingTrade
        } else {
            UnassignedReason::NoQualifiedTechnician
        };
        assert_eq!(routed.unassigned_reason, Some(expected), "{id}");
    }
}

proptest! {
    /// The fast-lane shortcut gives the same answer as assessing the order
    /// against the roster, whatever the thresholds: it only skips the roster
    /// when the trade match cannot change the answer.
    #[test]
    fn fast_lane_shortcut_agrees_with_a_full_assessment(
        (orders, roster) in batch_and_roster(),
        critical in 0.0..1.5f64,
        high_below in 0.0..1.0f64,
        life_safety in prop::collection::vec(any::<bool>(), 25),
    ) {
        let t = topology();
        let config = RoutingConfig {
            critical_threshold: critical,
            high_threshold: critical * high_below,
            ..RoutingConfig::default()
        };
        for (mut order, life) in orders.into_iter().zip(life_safety) {
            if life {
                order.safety_class = SafetyClass::LifeSafety;
            }
            let full = is_fast_lane(&order, assess(&order, "S1", &t, &roster, &config, NOW).tier);
            prop_assert_eq!(
                takes_fast_lane(&order, "S1", &t, &roster, &config, NOW),
                full,
                "order {:?}",
                order
            );
        }
    }
}
