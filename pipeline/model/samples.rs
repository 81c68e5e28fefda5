//! Example records, one builder per type, shared by the unit tests,
//! integration tests and benches so they all exercise the same shapes.
//! They are realistic but invented; the replay module carries real data.

use std::collections::BTreeMap;

use super::*;

/// 2026-01-05T08:00:00Z, a Monday morning, as epoch millis.
pub const MONDAY_8AM: i64 = 1_767_600_000_000;
const HOUR: i64 = 3_600_000;

/// A corrective HVAC order at site `site` with id `order_id`.
pub fn work_order(order_id: &str, site: &str, trade: &str) -> NormalizedWorkOrder {
    NormalizedWorkOrder {
        schema_version: SCHEMA_VERSION,
        order_id: order_id.to_string(),
        source_system: "maximo".to_string(),
        site_id: Some(site.to_string()),
        location: Some("BLDG-2/L3".to_string()),
        asset_id: Some("AHU-07".to_string()),
        asset_criticality: Some(4),
        vendor_managed: false,
        safety_class: SafetyClass::None,
        work_type: WorkType::Corrective,
        trade: trade.to_string(),
        required_skills: vec!["EPA608".to_string()],
        skill_level: Some(3),
        priority: Some(2),
        reported_at: MONDAY_8AM - 10 * 60_000,
        created_at: MONDAY_8AM,
        sla_deadline: Some(MONDAY_8AM + 8 * HOUR),
        pm: None,
        description: "AHU-07 supply fan tripping on overload".to_string(),
        attributes: BTreeMap::from([("cost_centre".to_string(), "FAC-200".to_string())]),
    }
}

/// A preventive order with a PM window.
pub fn preventive_order(order_id: &str, site: &str) -> NormalizedWorkOrder {
    NormalizedWorkOrder {
        work_type: WorkType::Preventive,
        safety_class: SafetyClass::Regulatory,
        required_skills: vec![],
        sla_deadline: None,
        pm: Some(PmSchedule {
            pm_id: "PM-BOILER-Q".to_string(),
            window_start: MONDAY_8AM + 24 * HOUR,
            window_end: MONDAY_8AM + 7 * 24 * HOUR,
            frequency_days: Some(90),
        }),
        description: "Quarterly boiler inspection".to_string(),
        ..work_order(order_id, site, "hvac")
    }
}

/// A technician on shift at `site` for `trade`.
pub fn technician(id: &str, site: &str, trade: &str) -> TechnicianRoster {
    TechnicianRoster {
        schema_version: SCHEMA_VERSION,
        technician_id: id.to_string(),
        name: format!("Technician {id}"),
        sites: vec![site.to_string()],
        trades: vec![trade.to_string()],
        skill_level: Some(4),
        certifications: vec![Certification {
            code: "EPA608".to_string(),
            expires_at: Some(MONDAY_8AM + 365 * 24 * HOUR),
        }],
        shift_start: Some(MONDAY_8AM - HOUR),
        shift_end: Some(MONDAY_8AM + 7 * HOUR),
        availability: Availability::Available,
        updated_at: MONDAY_8AM - 2 * HOUR,
    }
}

/// An hvac technician at site S1 holding exactly `certs`: (code, expiry as
/// millis after [`MONDAY_8AM`], or `None` for no expiry).
pub fn certified_technician(id: &str, certs: &[(&str, Option<i64>)]) -> TechnicianRoster {
    TechnicianRoster {
        certifications: certs
            .iter()
            .map(|(code, expires)| Certification {
                code: (*code).to_string(),
                expires_at: expires.map(|e| MONDAY_8AM + e),
            })
            .collect(),
        ..technician(id, "S1", "hvac")
    }
}

/// A packet holding the given orders.
pub fn packet(orders: Vec<NormalizedWorkOrder>) -> DispatchBatch {
    let site = orders
        .first()
        .and_then(|o| o.site_id.clone())
        .unwrap_or_default();
    DispatchBatch {
        schema_version: SCHEMA_VERSION,
        batch_id: "00000000-0000-5000-8000-000000000000".to_string(),
        site_id: site,
        trade: "hvac".to_string(),
        destination: Destination::Trade,
        tier: Tier::High,
        close_reason: CloseReason::MaxOrders,
        earliest_sla_deadline: orders.iter().filter_map(|o| o.sla_deadline).min(),
        opened_at: MONDAY_8AM,
        closed_at: MONDAY_8AM + 1_000,
        orders: orders
            .into_iter()
            .enumerate()
            .map(|(i, order)| RoutedOrder {
                order,
                source_partition: 0,
                source_offset: i as i64,
                score: Score {
                    total: 0.7,
                    criticality: 0.8,
                    urgency: 0.5,
                    trade_match: 1.0,
                    pm_window: 0.0,
                },
                tier: Tier::High,
                candidates: vec![Candidate {
                    technician_id: "T-1".to_string(),
                    match_ratio: 1.0,
                }],
                unassigned_reason: None,
                repeat_of: None,
                flags: vec![],
            })
            .collect(),
    }
}

/// A dead letter for undecodable bytes.
pub fn dead_letter() -> DeadLetter {
    DeadLetter {
        schema_version: SCHEMA_VERSION,
        reason: DeadLetterReason::Undecodable,
        detail: "not a cmms.NormalizedWorkOrder Avro datum".to_string(),
        source_topic: "cmms.workorders.normalized".to_string(),
        source_partition: 2,
        source_offset: 41,
        source_timestamp: Some(MONDAY_8AM),
        original_key: Some(b"SITE-1".to_vec()),
        original_value: Some(vec![0xde, 0xad, 0xbe, 0xef]),
        failed_at: MONDAY_8AM + 5,
        router_instance: "router-1".to_string(),
    }
}
