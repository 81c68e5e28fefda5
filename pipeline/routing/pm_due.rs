//! Preventive work due soon on an asset, so a corrective visit can take it
//! along.
//!
//! The memory holds the PM schedules of preventive orders routed for an
//! asset, per (site, asset): the latest order of a PM id replaces the window
//! remembered for it. A PM is **due soon** at `now` when its window opens
//! within the horizon (`window_start <= now + horizon`) and has not closed
//! (`now <= window_end`). A window that has closed is forgotten: whether the
//! PM was done is not something the router can see, and an overdue PM gets
//! its own attention through its score.
//!
//! Only preventive orders that name an asset are remembered, and only orders
//! that name one are checked: a location is too coarse to put two jobs in one
//! visit. The memory is bounded; past its capacity, the PM whose window closes
//! first is forgotten first.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroUsize;

use crate::model::PmSchedule;

/// (site, asset).
type AssetKey = (String, String);

#[derive(Debug, Clone, Copy)]
struct Window {
    start: i64,
    end: i64,
    /// Tie-breaker of `end` in the closing index, unique per update.
    stamp: u64,
}

/// PM windows of routed preventive orders, bounded and expiring.
#[derive(Debug, Clone)]
pub(super) struct PmMemory {
    by_asset: HashMap<AssetKey, BTreeMap<String, Window>>,
    /// `(window_end, stamp)` of every PM, earliest closing first.
    by_end: BTreeMap<(i64, u64), (AssetKey, String)>,
    next_stamp: u64,
    capacity: NonZeroUsize,
}

impl PmMemory {
    pub(super) fn new(capacity: NonZeroUsize) -> Self {
        Self {
            by_asset: HashMap::new(),
            by_end: BTreeMap::new(),
            next_stamp: 0,
            capacity,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.by_end.len()
    }

    pub(super) fn clear(&mut self) {
        self.by_asset.clear();
        self.by_end.clear();
    }

    /// Remembers the PM of a routed preventive order on `asset` at `site`.
    pub(super) fn remember(&mut self, site: &str, asset: &str, pm: &PmSchedule, now_ms: i64) {
        self.forget_closed(now_ms);
        if pm.window_end < now_ms {
            return;
        }
        let key = (site.to_string(), asset.to_string());
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        let window = Window {
            start: pm.window_start,
            end: pm.window_end,
            stamp,
        };
        let pms = self.by_asset.entry(key.clone()).or_default();
        if let Some(old) = pms.insert(pm.pm_id.clone(), window) {
            self.by_end.remove(&(old.end, old.stamp));
        }
        self.by_end
            .insert((window.end, stamp), (key, pm.pm_id.clone()));
        while self.by_end.len() > self.capacity.get() {
            let Some((_, (key, pm_id))) = self.by_end.pop_first() else {
                break;
            };
            self.remove(&key, &pm_id);
        }
    }

    /// PM ids on `asset` at `site` due within `horizon_ms` of `now_ms`,
    /// earliest window first (ties by id).
    pub(super) fn due_soon(
        &mut self,
        site: &str,
        asset: &str,
        horizon_ms: i64,
        now_ms: i64,
    ) -> Vec<String> {
        self.forget_closed(now_ms);
        let key = (site.to_string(), asset.to_string());
        let Some(pms) = self.by_asset.get(&key) else {
            return Vec::new();
        };
        let opens_by = now_ms.saturating_add(horizon_ms);
        let mut due: Vec<(i64, &String)> = pms
            .iter()
            .filter(|(_, w)| w.start <= opens_by && now_ms <= w.end)
            .map(|(id, w)| (w.start, id))
            .collect();
        due.sort();
        due.into_iter().map(|(_, id)| id.clone()).collect()
    }

    fn forget_closed(&mut self, now_ms: i64) {
        while let Some(entry) = self.by_end.first_entry() {
            if entry.key().0 >= now_ms {
                break;
            }
            let (key, pm_id) = entry.remove();
            self.remove(&key, &pm_id);
        }
    }

    fn remove(&mut self, key: &AssetKey, pm_id: &str) {
        if let Some(pms) = self.by_asset.get_mut(key) {
            pms.remove(pm_id);
            if pms.is_empty() {
                self.by_asset.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::samples;

    const DAY: i64 = 24 * 3_600_000;
    const NOW: i64 = samples::MONDAY_8AM;

    fn pm(id: &str, start: i64, end: i64) -> PmSchedule {
        PmSchedule {
            pm_id: id.into(),
            window_start: NOW + start,
            window_end: NOW + end,
            frequency_days: Some(90),
        }
    }

    fn memory(capacity: usize) -> PmMemory {
        PmMemory::new(NonZeroUsize::new(capacity).expect("positive"))
    }

    #[test]
    fn due_soon_table() {
        let horizon = 14 * DAY;
        // (case, PM window relative to now, due soon)
        let table = [
            ("opens tomorrow", pm("PM", DAY, 8 * DAY), true),
            ("open now", pm("PM", -DAY, DAY), true),
            ("window exactly now", pm("PM", 0, 0), true),
            (
                "opens at the horizon",
                pm("PM", horizon, horizon + DAY),
                true,
            ),
            (
                "opens after the horizon",
                pm("PM", horizon + 1, horizon + DAY),
                false,
            ),
            ("closed", pm("PM", -3 * DAY, -1), false),
        ];
        for (case, schedule, expected) in table {
            let mut m = memory(10);
            m.remember("S1", "AHU-07", &schedule, NOW);
            let due = m.due_soon("S1", "AHU-07", horizon, NOW);
            assert_eq!(!due.is_empty(), expected, "{case}");
            assert!(
                m.due_soon("S1", "AHU-08", horizon, NOW).is_empty(),
                "{case}"
            );
            assert!(
                m.due_soon("S2", "AHU-07", horizon, NOW).is_empty(),
                "{case}"
            );
        }
    }

    #[test]
    fn several_pms_earliest_first_and_latest_window_wins() {
        let mut m = memory(10);
        m.remember("S1", "A", &pm("PM-B", 2 * DAY, 3 * DAY), NOW);
        m.remember("S1", "A", &pm("PM-A", 5 * DAY, 6 * DAY), NOW);
        assert_eq!(m.due_soon("S1", "A", 14 * DAY, NOW), ["PM-B", "PM-A"]);
        // PM-A rescheduled further out: its old window is gone.
        m.remember("S1", "A", &pm("PM-A", 30 * DAY, 31 * DAY), NOW);
        assert_eq!(m.due_soon("S1", "A", 14 * DAY, NOW), ["PM-B"]);
        assert_eq!(m.len(), 2);
        // After PM-B's window closes it is forgotten.
        assert!(m
            .due_soon("S1", "A", 14 * DAY, NOW + 3 * DAY + 1)
            .is_empty());
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn bounded_forgets_the_earliest_closing() {
        let mut m = memory(2);
        m.remember("S1", "A", &pm("PM-1", 0, DAY), NOW);
        m.remember("S1", "A", &pm("PM-2", 0, 3 * DAY), NOW);
        m.remember("S1", "A", &pm("PM-3", 0, 2 * DAY), NOW);
        assert_eq!(m.len(), 2);
        let mut due = m.due_soon("S1", "A", DAY, NOW);
        due.sort();
        assert_eq!(due, ["PM-2", "PM-3"]);
    }
}
