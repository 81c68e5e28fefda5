//! An order's tier, from explicit flags first and its score second, and
//! whether it takes the fast lane.
//!
//! In order of precedence:
//!
//! 1. `LIFE_SAFETY` safety class or `EMERGENCY` work type: **critical**,
//!    whatever the score. Life safety is never left to a weighting.
//! 2. Preventive work not yet due: **pm_window**. An order with a PM schedule
//!    is not yet due before its window opens; a `PREVENTIVE` order without a
//!    schedule has no window to be due in, so it waits too.
//! 3. Otherwise thresholds on the weighted sum of the parts (0 to 1, without
//!    the overdue boost): `>= tiers.critical` **critical**, `>= tiers.high`
//!    **high**, else **standard**. The boost is left out so that being late
//!    alone does not send routine work down the fast lane; an overdue order
//!    still sorts first within its packet through its total.
//!
//! Critical orders take the fast lane: they are routed on their own instead
//! of waiting in a site batch (see [`is_fast_lane`]).

use super::RoutingConfig;
use crate::model::{NormalizedWorkOrder, SafetyClass, Score, Tier, WorkType};

/// The tier of a scored order at `now_ms`.
pub fn tier(
    order: &NormalizedWorkOrder,
    score: &Score,
    config: &RoutingConfig,
    now_ms: i64,
) -> Tier {
    if order.safety_class == SafetyClass::LifeSafety || order.work_type == WorkType::Emergency {
        return Tier::Critical;
    }
    if preventive_not_yet_due(order, now_ms) {
        return Tier::PmWindow;
    }
    let sum = config.weights.weighted_sum(score);
    if sum >= config.critical_threshold {
        Tier::Critical
    } else if sum >= config.high_threshold {
        Tier::High
    } else {
        Tier::Standard
    }
}

/// Whether the order is preventive work whose window has not opened at
/// `now_ms` (a window opening exactly now is due).
pub fn preventive_not_yet_due(order: &NormalizedWorkOrder, now_ms: i64) -> bool {
    match &order.pm {
        Some(pm) => now_ms < pm.window_start,
        None => order.work_type == WorkType::Preventive,
    }
}

/// Whether an order of `tier` bypasses the site window: critical and
/// life-safety orders are routed at once, in the next commit.
pub fn is_fast_lane(order: &NormalizedWorkOrder, tier: Tier) -> bool {
    tier == Tier::Critical || order.safety_class == SafetyClass::LifeSafety
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{samples, PmSchedule};
    use crate::routing::score::score;

    const HOUR: i64 = 3_600_000;
    const NOW: i64 = samples::MONDAY_8AM;

    fn with(f: impl FnOnce(&mut NormalizedWorkOrder)) -> NormalizedWorkOrder {
        let mut o = samples::work_order("A", "S1", "hvac");
        // A quiet baseline: standard unless a row changes it.
        o.asset_criticality = Some(2);
        o.safety_class = SafetyClass::None;
        o.sla_deadline = Some(NOW + 72 * HOUR);
        f(&mut o);
        o
    }

    fn pm(start: i64, end: i64) -> Option<PmSchedule> {
        Some(PmSchedule {
            pm_id: "PM-1".into(),
            window_start: NOW + start,
            window_end: NOW + end,
            frequency_days: None,
        })
    }

    #[test]
    fn tier_table() {
        let c = RoutingConfig::default();
        // (case, order, trade match, expected tier)
        let table = [
            ("baseline", with(|_| {}), 1.0, Tier::Standard),
            (
                "life safety, lowest score",
                with(|o| {
                    o.safety_class = SafetyClass::LifeSafety;
                    o.asset_criticality = Some(1);
                    o.sla_deadline = None;
                }),
                0.0,
                Tier::Critical,
            ),
            (
                "emergency",
                with(|o| o.work_type = WorkType::Emergency),
                0.0,
                Tier::Critical,
            ),
            (
                "preventive before its window",
                with(|o| {
                    o.work_type = WorkType::Preventive;
                    o.pm = pm(HOUR, 48 * HOUR);
                }),
                1.0,
                Tier::PmWindow,
            ),
            (
                "preventive without a schedule",
                with(|o| o.work_type = WorkType::Preventive),
                1.0,
                Tier::PmWindow,
            ),
            (
                "preventive, window exactly now",
                with(|o| {
                    o.work_type = WorkType::Preventive;
                    o.pm = pm(0, 0);
                }),
                1.0,
                Tier::Standard,
            ),
            (
                "preventive, window opens now",
                with(|o| {
                    o.work_type = WorkType::Preventive;
                    o.pm = pm(0, 48 * HOUR);
                }),
                1.0,
                Tier::Standard,
            ),
            (
                "life safety preventive before its window is still critical",
                with(|o| {
                    o.safety_class = SafetyClass::LifeSafety;
                    o.pm = pm(HOUR, 2 * HOUR);
                }),
                1.0,
                Tier::Critical,
            ),
            (
                "high: criticality 4 safety, due in 8 h, someone on shift",
                with(|o| {
                    o.asset_criticality = Some(4);
                    o.safety_class = SafetyClass::Safety;
                    o.sla_deadline = Some(NOW + 8 * HOUR);
                }),
                1.0,
                Tier::High,
            ),
            (
                "the same with nobody on shift drops to standard",
                with(|o| {
                    o.asset_criticality = Some(4);
                    o.safety_class = SafetyClass::Safety;
                    o.sla_deadline = Some(NOW + 8 * HOUR);
                }),
                0.0,
                Tier::Standard,
            ),
            (
                "critical by threshold: criticality 5 regulatory, due now",
                with(|o| {
                    o.asset_criticality = Some(5);
                    o.safety_class = SafetyClass::Regulatory;
                    o.sla_deadline = Some(NOW);
                }),
                1.0,
                Tier::Critical,
            ),
            (
                "deadline already past: urgency 1.0 lifts it to high, the boost not to critical",
                with(|o| o.sla_deadline = Some(NOW - HOUR)),
                1.0,
                Tier::High,
            ),
            (
                "missing asset criticality counts as middling",
                with(|o| {
                    o.asset_criticality = None;
                    o.safety_class = SafetyClass::Regulatory;
                    o.sla_deadline = Some(NOW + 8 * HOUR);
                }),
                1.0,
                Tier::High,
            ),
        ];
        for (case, order, trade_match, expected) in table {
            let s = score(&order, trade_match, &c, NOW);
            assert_eq!(tier(&order, &s, &c, NOW), expected, "{case}: {s:?}");
        }
    }

    #[test]
    fn fast_lane_is_critical_or_life_safety() {
        let plain = samples::work_order("A", "S1", "hvac");
        let mut life = plain.clone();
        life.safety_class = SafetyClass::LifeSafety;
        assert!(is_fast_lane(&plain, Tier::Critical));
        assert!(!is_fast_lane(&plain, Tier::High));
        assert!(!is_fast_lane(&plain, Tier::PmWindow));
        assert!(is_fast_lane(&life, Tier::Standard));
    }
}
