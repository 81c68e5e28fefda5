//! The four parts of an order's score and their weighted total.
//!
//! Each part is between 0 and 1 and kept in the [`Score`] record, so a
//! dispatcher can see why an order ranks where it does:
//!
//! - **criticality** = failure impact x safety weight. Impact is the asset
//!   criticality over 5 (0.2 to 1.0); an order without one counts as
//!   `criticality.missing_asset_criticality` (3 by default, the middle of the
//!   scale, never the lowest). The safety weight comes from
//!   `[safety_weights]`, life-safety and regulatory weighing most.
//! - **urgency** = `m / (m + time left)` with `m = urgency.midpoint_ms`: 1.0
//!   when the deadline is now or past, 0.5 at one midpoint left, falling
//!   towards 0 but never reaching it, so two distant deadlines still order.
//!   No deadline: `urgency.without_deadline` (0.1 by default).
//! - **trade match** = the best share of the order's required skills held,
//!   with a certification valid now, by a technician on duty at the site in
//!   the trade (see [`candidates`](super::candidates) for "on duty"). No
//!   required skills: 1.0 when anyone of the trade is on duty, else 0.
//! - **PM window** (preventive work, i.e. an order with a `pm` schedule):
//!   0 until `pm_window.lead_ms` before the window opens, rising linearly to
//!   `pm_window.start_value` at the opening, then to 1.0 at the window's end,
//!   and 1.0 once the window has passed. Orders without a schedule: 0, so
//!   corrective work neither gains nor loses against other corrective work.
//!
//! `total` = the weighted sum of the parts (weights normalised to sum to 1,
//! so 0 to 1), plus [`OVERDUE_BOOST`] when the SLA deadline has passed. The
//! boost makes an overdue order rank above every order that is not overdue:
//! its total is at least 1, everyone else's at most 1, and an exact tie is
//! broken by the earlier deadline, which is the overdue one.
//!
//! Pure: the clock is the `now_ms` argument.

use super::candidates::{is_on_duty, RequiredSkills};
use super::RoutingConfig;
use crate::model::{NormalizedWorkOrder, Score, TechnicianRoster};

/// Added to the total of an order whose SLA deadline has passed; equal to the
/// largest weighted sum, so overdue orders sort above all others.
pub const OVERDUE_BOOST: f64 = 1.0;

/// Whether the order's SLA deadline has passed at `now_ms`. An order due
/// exactly now is not overdue yet (its urgency is already 1.0).
pub fn is_overdue(order: &NormalizedWorkOrder, now_ms: i64) -> bool {
    order.sla_deadline.is_some_and(|deadline| deadline < now_ms)
}

/// Failure impact x safety weight, 0 to 1.
pub fn criticality(order: &NormalizedWorkOrder, config: &RoutingConfig) -> f64 {
    // Intake rejects values outside 1 to 5; the clamp keeps the part in range
    // for orders that did not come through it.
    let level = order
        .asset_criticality
        .unwrap_or(config.missing_asset_criticality)
        .clamp(1, 5);
    let impact = f64::from(level) / 5.0;
    impact * config.safety_weights.weight(order.safety_class)
}

/// Time left to the SLA deadline as a part from 0 to 1 (1 = due or overdue).
pub fn urgency(order: &NormalizedWorkOrder, config: &RoutingConfig, now_ms: i64) -> f64 {
    let Some(deadline) = order.sla_deadline else {
        return config.urgency_without_deadline;
    };
    let left = deadline.saturating_sub(now_ms);
    if left <= 0 {
        return 1.0;
    }
    // Division and addition are correctly rounded, so this is monotone in
    // `left`: an earlier deadline never gets a lower urgency.
    let midpoint = config.urgency_midpoint_ms as f64;
    midpoint / (midpoint + left as f64)
}

/// Best share of the required skills held by a technician on duty at `site`
/// in the order's trade, counting only certifications valid at `now_ms`.
///
/// `technicians` is what the roster lists for the site and trade; anyone in
/// it who is not actually listed there is ignored rather than trusted.
pub fn trade_match(
    order: &NormalizedWorkOrder,
    technicians: &[TechnicianRoster],
    site: &str,
    now_ms: i64,
) -> f64 {
    let skills = RequiredSkills::of(order);
    technicians
        .iter()
        .filter(|t| skills.works_at(t, site) && is_on_duty(t, now_ms))
        .map(|t| skills.share_held(t, now_ms))
        .fold(0.0, f64::max)
}

/// Proximity to the preventive-maintenance window, 0 to 1; 0 for orders
/// without a PM schedule.
pub fn pm_window(order: &NormalizedWorkOrder, config: &RoutingConfig, now_ms: i64) -> f64 {
    let Some(pm) = &order.pm else {
        return 0.0;
    };
    let start_value = config.pm_start_value;
    if now_ms < pm.window_start {
        let lead = pm.window_start.saturating_sub(now_ms) as f64;
        let ahead = (1.0 - lead / config.pm_lead_ms as f64).max(0.0);
        return start_value * ahead;
    }
    if now_ms >= pm.window_end {
        // Past the window, or a window that closes this very moment.
        return 1.0;
    }
    let elapsed = now_ms.saturating_sub(pm.window_start) as f64;
    let length = pm.window_end.saturating_sub(pm.window_start) as f64;
    start_value + (1.0 - start_value) * (elapsed / length)
}

/// Scores an order: its parts (trade match computed by the caller, which
/// holds the roster) and the total.
pub fn score(
    order: &NormalizedWorkOrder,
    trade_match: f64,
    config: &RoutingConfig,
    now_ms: i64,
) -> Score {
    let mut score = Score {
        total: 0.0,
        criticality: criticality(order, config),
        urgency: urgency(order, config, now_ms),
        trade_match: trade_match.clamp(0.0, 1.0),
        pm_window: pm_window(order, config, now_ms),
    };
    score.total = config.weights.weighted_sum(&score)
        + if is_overdue(order, now_ms) {
            OVERDUE_BOOST
        } else {
            0.0
        };
    score
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::model::{samples, PmSchedule, SafetyClass};
    use crate::routing::config::tests::config;

    const HOUR: i64 = 3_600_000;
    const NOW: i64 = samples::MONDAY_8AM;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn criticality_table() {
        let c = RoutingConfig::default();
        // (asset criticality, safety class, expected)
        let table = [
            (Some(5), SafetyClass::LifeSafety, 1.0),
            (Some(5), SafetyClass::Regulatory, 0.9),
            (Some(5), SafetyClass::Safety, 0.7),
            (Some(5), SafetyClass::None, 0.4),
            (Some(5), SafetyClass::Unknown, 0.55),
            (Some(1), SafetyClass::LifeSafety, 0.2),
            // Missing criticality counts as 3 of 5, not as the lowest.
            (None, SafetyClass::LifeSafety, 0.6),
            (None, SafetyClass::None, 0.24),
        ];
        for (level, class, expected) in table {
            let mut o = samples::work_order("A", "S1", "hvac");
            o.asset_criticality = level;
            o.safety_class = class;
            let got = criticality(&o, &c);
            assert!(close(got, expected), "{level:?} {class:?}: {got}");
        }
        let mut missing = samples::work_order("A", "S1", "hvac");
        missing.asset_criticality = None;
        let mut lowest = missing.clone();
        lowest.asset_criticality = Some(1);
        assert!(criticality(&missing, &c) > criticality(&lowest, &c));
    }

    #[test]
    fn urgency_table() {
        let c = RoutingConfig::default();
        let day = 24 * HOUR;
        // (deadline relative to now, expected urgency, overdue)
        let table = [
            (Some(-HOUR), 1.0, true),
            (Some(-1), 1.0, true),
            (Some(0), 1.0, false),
            (Some(day), 0.5, false),
            (Some(3 * day), 0.25, false),
            (Some(9 * day), 0.1, false),
            (None, 0.1, false),
        ];
        for (offset, expected, overdue) in table {
            let mut o = samples::work_order("A", "S1", "hvac");
            o.sla_deadline = offset.map(|d| NOW + d);
            let got = urgency(&o, &c, NOW);
            assert!(close(got, expected), "{offset:?}: {got}");
            assert_eq!(is_overdue(&o, NOW), overdue, "{offset:?}");
        }
    }

    #[test]
    fn pm_window_table() {
        let c = RoutingConfig::default();
        let day = 24 * HOUR;
        let pm = |start: i64, end: i64| PmSchedule {
            pm_id: "PM-1".into(),
            window_start: NOW + start,
            window_end: NOW + end,
            frequency_days: Some(30),
        };
        // (window relative to now, expected part)
        let table = [
            // far ahead of the window: can wait
            (Some(pm(30 * day, 37 * day)), 0.0),
            (Some(pm(7 * day, 14 * day)), 0.0),
            // a day ahead: rising towards the start value
            (Some(pm(day, 8 * day)), 0.6 * 6.0 / 7.0),
            // opens now
            (Some(pm(0, 2 * day)), 0.6),
            // half way through
            (Some(pm(-day, day)), 0.8),
            // window exactly now: opens and closes at this moment
            (Some(pm(0, 0)), 1.0),
            // closes now
            (Some(pm(-day, 0)), 1.0),
            // past the window
            (Some(pm(-3 * day, -day)), 1.0),
            // not preventive
            (None, 0.0),
        ];
        for (schedule, expected) in table {
            let mut o = samples::preventive_order("P", "S1");
            o.pm = schedule.clone();
            let got = pm_window(&o, &c, NOW);
            assert!(close(got, expected), "{schedule:?}: {got}");
        }
    }

    #[test]
    fn trade_match_table() {
        let mut order = samples::work_order("A", "S1", "hvac");
        order.required_skills = vec!["EPA608".into(), "NFPA70E".into()];
        let tech = samples::certified_technician;
        let elsewhere = {
            let mut t = tech("T9", &[("EPA608", None), ("NFPA70E", None)]);
            t.sites = vec!["S2".into()];
            t
        };
        let off_shift = {
            let mut t = tech("T8", &[("EPA608", None), ("NFPA70E", None)]);
            t.shift_start = Some(NOW + HOUR);
            t
        };
        // (roster, expected)
        let table = [
            (vec![], 0.0),
            (
                vec![tech("T1", &[("EPA608", None), ("NFPA70E", None)])],
                1.0,
            ),
            (vec![tech("T1", &[("EPA608", None)])], 0.5),
            (
                vec![
                    tech("T1", &[("EPA608", None)]),
                    tech("T2", &[("epa608 ", None), ("NFPA70E", None)]),
                ],
                1.0,
            ),
            // expired before now: does not count
            (
                vec![tech("T1", &[("EPA608", Some(-1)), ("NFPA70E", None)])],
                0.5,
            ),
            // expiring exactly now: no longer valid
            (
                vec![tech("T1", &[("EPA608", Some(0)), ("NFPA70E", None)])],
                0.5,
            ),
            // expiring during the shift: valid now, counts
            (
                vec![tech("T1", &[("EPA608", Some(HOUR)), ("NFPA70E", None)])],
                1.0,
            ),
            // technician at another site, or off shift: not counted
            (vec![elsewhere], 0.0),
            (vec![off_shift], 0.0),
        ];
        for (roster, expected) in table {
            let got = trade_match(&order, &roster, "S1", NOW);
            assert!(close(got, expected), "{roster:?}: {got}");
        }
        order.required_skills.clear();
        assert_eq!(
            trade_match(&order, &[tech("T1", &[])], "S1", NOW),
            1.0,
            "no skills needed, someone on duty"
        );
        assert_eq!(trade_match(&order, &[], "S1", NOW), 0.0);
    }

    #[test]
    fn total_is_weighted_sum_plus_overdue_boost() {
        let c = config("[weights]\ncriticality = 1\nurgency = 1\ntrade_match = 1\npm_window = 1\n");
        let mut o = samples::work_order("A", "S1", "hvac");
        o.asset_criticality = Some(5);
        o.safety_class = SafetyClass::LifeSafety;
        o.sla_deadline = Some(NOW + 24 * HOUR);
        let s = score(&o, 1.0, &c, NOW);
        assert!(close(s.total, (1.0 + 0.5 + 1.0 + 0.0) / 4.0), "{s:?}");
        o.sla_deadline = Some(NOW - 1);
        let s = score(&o, 1.0, &c, NOW);
        assert!(close(s.total, OVERDUE_BOOST + 3.0 / 4.0), "{s:?}");
    }

    #[test]
    fn overdue_ranks_above_the_best_order_that_is_not() {
        let c = RoutingConfig::default();
        let mut best = samples::work_order("BEST", "S1", "hvac");
        best.asset_criticality = Some(5);
        best.safety_class = SafetyClass::LifeSafety;
        best.sla_deadline = Some(NOW);
        best.pm = Some(PmSchedule {
            pm_id: "PM".into(),
            window_start: NOW - 48 * HOUR,
            window_end: NOW - 1,
            frequency_days: None,
        });
        let mut worst_overdue = samples::work_order("LATE", "S1", "hvac");
        worst_overdue.asset_criticality = Some(1);
        worst_overdue.safety_class = SafetyClass::None;
        worst_overdue.sla_deadline = Some(NOW - 1);
        let best = score(&best, 1.0, &c, NOW);
        let late = score(&worst_overdue, 0.0, &c, NOW);
        assert!(close(best.total, 1.0), "{best:?}");
        assert!(late.total > best.total, "{late:?} vs {best:?}");
    }

    fn any_order() -> impl Strategy<Value = NormalizedWorkOrder> {
        (
            prop::option::of(1..=5i32),
            prop::sample::select(vec![
                SafetyClass::None,
                SafetyClass::Safety,
                SafetyClass::LifeSafety,
                SafetyClass::Regulatory,
                SafetyClass::Unknown,
            ]),
            prop::option::of((-30 * 24 * HOUR..30 * 24 * HOUR, 0..30 * 24 * HOUR)),
        )
            .prop_map(|(level, class, window)| {
                let mut o = samples::work_order("A", "S1", "hvac");
                o.asset_criticality = level;
                o.safety_class = class;
                o.pm = window.map(|(start, len)| PmSchedule {
                    pm_id: "PM".into(),
                    window_start: NOW + start,
                    window_end: NOW + start + len,
                    frequency_days: None,
                });
                o
            })
    }

    proptest! {
        /// An earlier deadline, everything else equal, never lowers the total.
        #[test]
        fn earlier_deadline_never_lowers_the_total(
            order in any_order(),
            a in -60 * 24 * HOUR..60 * 24 * HOUR,
            b in -60 * 24 * HOUR..60 * 24 * HOUR,
            trade_match in 0.0..=1.0f64,
            urgency_weight in 0.0..10.0f64,
        ) {
            let c = config(&format!("[weights]\nurgency = {urgency_weight:?}\n"));
            let (earlier, later) = (a.min(b), a.max(b));
            let mut first = order.clone();
            first.sla_deadline = Some(NOW + earlier);
            let mut second = order;
            second.sla_deadline = Some(NOW + later);
            let s1 = score(&first, trade_match, &c, NOW);
            let s2 = score(&second, trade_match, &c, NOW);
            prop_assert!(s1.urgency >= s2.urgency, "{s1:?} {s2:?}");
            prop_assert!(s1.total >= s2.total, "{s1:?} {s2:?}");
        }

        /// Every part stays in [0, 1]; the total in [0, 1] or, overdue, [1, 2].
        #[test]
        fn parts_stay_in_range(
            order in any_order(),
            deadline in prop::option::of(-60 * 24 * HOUR..60 * 24 * HOUR),
            trade_match in 0.0..=1.0f64,
        ) {
            let mut o = order;
            o.sla_deadline = deadline.map(|d| NOW + d);
            let s = score(&o, trade_match, &RoutingConfig::default(), NOW);
            for part in [s.criticality, s.urgency, s.trade_match, s.pm_window] {
                prop_assert!((0.0..=1.0).contains(&part), "{s:?}");
            }
            let base = if is_overdue(&o, NOW) { OVERDUE_BOOST } else { 0.0 };
            prop_assert!((base..=base + 1.0).contains(&s.total), "{s:?}");
        }
    }
}
