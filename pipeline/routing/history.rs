//! What routing remembers between batches: recent problems (for repeat
//! requests, see [`repeat`](super::repeat)) and upcoming PM windows (for
//! PM-due-soon, see [`pm_due`](super::pm_due)).
//!
//! Pure and in memory: time is the `now_ms` passed in, both memories are
//! bounded by configuration. One history belongs to one task (input
//! partition); since the input is keyed by site, everything a site needs is
//! in its partition's history.
//!
//! Limits, on purpose for now: the history is not in a changelog, so a
//! restart or a partition moving to another instance starts it empty (the
//! first repeat after that is not recognised); and an aborted transaction
//! does not roll it back. Neither can drop or duplicate an order: the
//! history only adds a link and flags, and the same order id read again is
//! never taken for a repeat of itself.

use std::num::NonZeroUsize;

use super::pm_due::PmMemory;
use super::repeat::{ProblemKey, RepeatMemory};
use super::RoutingConfig;
use crate::model::{NormalizedWorkOrder, WorkType};

/// What the history says about an order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recall {
    /// The first order of the same problem, when this one repeats it.
    pub repeat_of: Option<String>,
    /// PM ids on the same asset due soon, earliest window first.
    pub pm_due_soon: Vec<String>,
}

/// Recently routed problems and upcoming PM windows of one task.
#[derive(Debug, Clone)]
pub struct DispatchHistory {
    repeats: RepeatMemory,
    pms: PmMemory,
}

impl Default for DispatchHistory {
    /// An empty history sized by the default configuration.
    fn default() -> Self {
        Self::new(&RoutingConfig::default())
    }
}

/// Capacity used for a feature that is off, so switching it on at runtime
/// with a config that was not used to build the history still works.
const FALLBACK_CAPACITY: NonZeroUsize = match NonZeroUsize::new(50_000) {
    Some(n) => n,
    None => NonZeroUsize::MIN,
};

impl DispatchHistory {
    /// An empty history with the capacities of `config`.
    pub fn new(config: &RoutingConfig) -> Self {
        Self {
            repeats: RepeatMemory::new(
                config
                    .repeat()
                    .map_or(FALLBACK_CAPACITY, |r| r.max_remembered),
            ),
            pms: PmMemory::new(
                config
                    .pm_due_soon()
                    .map_or(FALLBACK_CAPACITY, |p| p.max_remembered),
            ),
        }
    }

    /// Checks `order` (routed at `site`, at `now_ms`) against the history,
    /// then remembers it. Orders must be observed in the order they are
    /// routed: a repeat links to the first one observed.
    pub fn observe(
        &mut self,
        order: &NormalizedWorkOrder,
        site: &str,
        config: &RoutingConfig,
        now_ms: i64,
    ) -> Recall {
        let mut recall = Recall::default();
        if let Some(settings) = config.repeat() {
            if let Some(key) = ProblemKey::of(order, site) {
                recall.repeat_of =
                    self.repeats
                        .observe(key, &order.order_id, settings.period_ms, now_ms);
            }
        }
        if let (Some(settings), Some(asset)) = (config.pm_due_soon(), asset_of(order)) {
            match &order.pm {
                Some(pm) => self.pms.remember(site, asset, pm, now_ms),
                None if order.work_type != WorkType::Preventive => {
                    recall.pm_due_soon =
                        self.pms.due_soon(site, asset, settings.horizon_ms, now_ms);
                }
                None => {}
            }
        }
        recall
    }

    /// Number of problems and of PM windows remembered.
    pub fn len(&self) -> (usize, usize) {
        (self.repeats.len(), self.pms.len())
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0)
    }

    /// Forgets everything (a partition handed over).
    pub fn clear(&mut self) {
        self.repeats.clear();
        self.pms.clear();
    }
}

fn asset_of(order: &NormalizedWorkOrder) -> Option<&str> {
    order
        .asset_id
        .as_deref()
        .map(str::trim)
        .filter(|a| !a.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::samples;
    use crate::routing::config::tests::config;

    const HOUR: i64 = 3_600_000;
    const NOW: i64 = samples::MONDAY_8AM;

    #[test]
    fn repeat_and_pm_due_soon_together() {
        let c = RoutingConfig::default();
        let mut h = DispatchHistory::new(&c);
        let mut pm = samples::preventive_order("PM-ORDER", "S1");
        pm.asset_id = Some("AHU-07".into());
        assert_eq!(h.observe(&pm, "S1", &c, NOW), Recall::default());
        let first = samples::work_order("WO-1", "S1", "hvac");
        let second = samples::work_order("WO-2", "S1", "hvac");
        let r1 = h.observe(&first, "S1", &c, NOW);
        assert_eq!(r1.repeat_of, None);
        assert_eq!(r1.pm_due_soon, ["PM-BOILER-Q"]);
        let r2 = h.observe(&second, "S1", &c, NOW + HOUR);
        assert_eq!(r2.repeat_of.as_deref(), Some("WO-1"));
        assert_eq!(r2.pm_due_soon, ["PM-BOILER-Q"]);
        assert_eq!(h.len(), (2, 1));
    }

    #[test]
    fn switched_off_features_neither_flag_nor_remember() {
        let c = config("[repeat]\nenabled = false\n[pm_due_soon]\nenabled = false\n");
        let mut h = DispatchHistory::new(&c);
        let pm = samples::preventive_order("PM-ORDER", "S1");
        h.observe(&pm, "S1", &c, NOW);
        h.observe(&samples::work_order("WO-1", "S1", "hvac"), "S1", &c, NOW);
        let r = h.observe(&samples::work_order("WO-2", "S1", "hvac"), "S1", &c, NOW);
        assert_eq!(r, Recall::default());
        assert!(h.is_empty());
    }

    #[test]
    fn order_without_asset_is_not_checked_for_pm() {
        let c = RoutingConfig::default();
        let mut h = DispatchHistory::new(&c);
        h.observe(&samples::preventive_order("PM-ORDER", "S1"), "S1", &c, NOW);
        let mut o = samples::work_order("WO-1", "S1", "hvac");
        o.asset_id = None;
        assert!(h.observe(&o, "S1", &c, NOW).pm_due_soon.is_empty());
    }
}
