//! Repeat requests: the same problem reported again while the first report
//! may still be open.
//!
//! A problem is identified by a [`ProblemKey`]: the site, the place (the
//! asset when the order names one, else its location, else the whole site),
//! the trade, and the problem itself:
//!
//! - when the order's attributes carry a complaint type and/or a descriptor
//!   (keys matched ignoring case, spaces, `-` and `_`, so `"Complaint Type"`
//!   and `complaint_type` are the same), those two values, normalised;
//! - else its description, normalised;
//! - else there is no key and the order is never a repeat: two blank
//!   requests say nothing about being the same problem.
//!
//! Normalised means lower-case, every run of non-alphanumeric characters a
//! single space, trimmed: `"No  heat!"` and `"no heat"` are the same problem,
//! `"no heat"` and `"heat off"` are not (no guessing at synonyms).
//!
//! The memory keeps, per key, the first order routed for it and when the
//! problem was last seen; a matching order with another id is a repeat of
//! that first order, and moves "last seen" to now, so a run of daily
//! complaints stays linked to the first. A key not seen for longer than the
//! period is forgotten. The memory is bounded: past its capacity, the key
//! seen longest ago is forgotten first.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroUsize;

use crate::model::NormalizedWorkOrder;

/// What a request is about, for recognising it when it is reported again.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProblemKey {
    site: String,
    place: Place,
    trade: String,
    problem: String,
}

/// Where at the site the problem is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Place {
    Asset(String),
    Location(String),
    Site,
}

impl ProblemKey {
    /// The key of `order` at `site`, or `None` when the order says nothing
    /// about its problem.
    pub fn of(order: &NormalizedWorkOrder, site: &str) -> Option<Self> {
        let non_blank = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let place = match (non_blank(&order.asset_id), non_blank(&order.location)) {
            (Some(asset), _) => Place::Asset(asset),
            (None, Some(location)) => Place::Location(location),
            (None, None) => Place::Site,
        };
        Some(Self {
            site: site.trim().to_string(),
            place,
            trade: order.trade.clone(),
            problem: problem_of(order)?,
        })
    }
}

/// The problem part of the key; see the module docs.
fn problem_of(order: &NormalizedWorkOrder) -> Option<String> {
    let attribute = |name: &str| {
        order
            .attributes
            .iter()
            .find(|(key, _)| attribute_name(key) == name)
            .map(|(_, value)| normalize(value))
            .unwrap_or_default()
    };
    let complaint = attribute("complainttype");
    let descriptor = attribute("descriptor");
    // The prefixes keep a description from colliding with an attribute pair.
    if !complaint.is_empty() || !descriptor.is_empty() {
        return Some(format!("attributes:{complaint}|{descriptor}"));
    }
    let description = normalize(&order.description);
    (!description.is_empty()).then(|| format!("description:{description}"))
}

fn attribute_name(key: &str) -> String {
    key.chars()
        .filter(|c| !matches!(c, ' ' | '_' | '-'))
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

fn normalize(text: &str) -> String {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

#[derive(Debug, Clone)]
struct Remembered {
    first_order_id: String,
    last_seen_ms: i64,
    /// Tie-breaker of `last_seen_ms` in the age index, unique per update.
    stamp: u64,
}

/// Problems routed recently, bounded and expiring.
#[derive(Debug, Clone)]
pub(super) struct RepeatMemory {
    entries: HashMap<ProblemKey, Remembered>,
    /// `(last_seen_ms, stamp)` of every entry, oldest first: what to forget.
    by_age: BTreeMap<(i64, u64), ProblemKey>,
    next_stamp: u64,
    capacity: NonZeroUsize,
}

impl RepeatMemory {
    pub(super) fn new(capacity: NonZeroUsize) -> Self {
        Self {
            entries: HashMap::new(),
            by_age: BTreeMap::new(),
            next_stamp: 0,
            capacity,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(super) fn clear(&mut self) {
        self.entries.clear();
        self.by_age.clear();
    }

    /// Remembers that `order_id` was routed for `key` at `now_ms`, and returns
    /// the first order of the same problem when this is a repeat of it.
    ///
    /// The same order id seen again (the input re-read after an aborted
    /// transaction) is not a repeat of itself.
    pub(super) fn observe(
        &mut self,
        key: ProblemKey,
        order_id: &str,
        period_ms: i64,
        now_ms: i64,
    ) -> Option<String> {
        self.forget_older_than(now_ms.saturating_sub(period_ms));
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        if let Some(entry) = self.entries.get_mut(&key) {
            self.by_age.remove(&(entry.last_seen_ms, entry.stamp));
            // A wall clock stepping back must not make an entry look older.
            entry.last_seen_ms = entry.last_seen_ms.max(now_ms);
            entry.stamp = stamp;
            self.by_age.insert((entry.last_seen_ms, stamp), key.clone());
            return (entry.first_order_id != order_id).then(|| entry.first_order_id.clone());
        }
        self.by_age.insert((now_ms, stamp), key.clone());
        self.entries.insert(
            key,
            Remembered {
                first_order_id: order_id.to_string(),
                last_seen_ms: now_ms,
                stamp,
            },
        );
        while self.entries.len() > self.capacity.get() {
            let Some((_, oldest)) = self.by_age.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
        None
    }

    fn forget_older_than(&mut self, cutoff_ms: i64) {
        while let Some(entry) = self.by_age.first_entry() {
            if entry.key().0 >= cutoff_ms {
                break;
            }
            let key = entry.remove();
            self.entries.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::samples;

    const HOUR: i64 = 3_600_000;
    const NOW: i64 = samples::MONDAY_8AM;

    fn key(order: &NormalizedWorkOrder) -> ProblemKey {
        ProblemKey::of(order, order.site_id.as_deref().unwrap_or_default()).expect("has a problem")
    }

    fn nyc(id: &str, complaint: &str, descriptor: &str) -> NormalizedWorkOrder {
        let mut o = samples::work_order(id, "1 MAIN ST 10001", "hvac");
        o.asset_id = None;
        o.location = Some("MANHATTAN".into());
        o.description = descriptor.into();
        o.attributes = BTreeMap::from([
            ("complaint_type".to_string(), complaint.to_string()),
            ("descriptor".to_string(), descriptor.to_string()),
        ]);
        o
    }

    /// An edit of the base order.
    type Change = fn(&mut NormalizedWorkOrder);

    #[test]
    fn problem_key_table() {
        let base = samples::work_order("A", "S1", "hvac");
        let same = |f: fn(&mut NormalizedWorkOrder)| {
            let mut o = base.clone();
            f(&mut o);
            key(&o) == key(&base)
        };
        // (case, change, still the same problem)
        let table: [(&str, Change, bool); 8] = [
            ("another order id", |o| o.order_id = "B".into(), true),
            (
                "description in other case and punctuation",
                |o| o.description = "ahu 07: Supply fan -- tripping on overload!".into(),
                true,
            ),
            (
                "another description",
                |o| o.description = "AHU-07 noisy".into(),
                false,
            ),
            (
                "another asset",
                |o| o.asset_id = Some("AHU-08".into()),
                false,
            ),
            ("another trade", |o| o.trade = "electrical".into(), false),
            ("another site", |o| o.site_id = Some("S2".into()), false),
            (
                "location changes but the asset decides",
                |o| o.location = Some("BLDG-9".into()),
                true,
            ),
            (
                "attributes without complaint or descriptor",
                |o| {
                    o.attributes.insert("status".into(), "Open".into());
                },
                true,
            ),
        ];
        for (case, change, expected) in table {
            assert_eq!(same(change), expected, "{case}");
        }
    }

    #[test]
    fn attributes_win_over_description_and_spelling_of_keys_does_not_matter() {
        let a = nyc("A", "HEATING", "HEAT");
        let mut b = nyc("B", "Heating", "heat");
        b.description = "tenant says the radiators are cold".into();
        assert_eq!(key(&a), key(&b));
        let mut c = a.clone();
        c.attributes = BTreeMap::from([
            ("Complaint Type".to_string(), "HEATING".to_string()),
            ("Descriptor".to_string(), "HEAT".to_string()),
        ]);
        assert_eq!(key(&a), key(&c));
        assert_ne!(key(&a), key(&nyc("D", "HEATING", "HOT WATER")));
    }

    #[test]
    fn blank_problem_has_no_key() {
        let mut o = samples::work_order("A", "S1", "hvac");
        o.description = "  --  ".into();
        o.attributes.clear();
        assert_eq!(ProblemKey::of(&o, "S1"), None);
    }

    #[test]
    fn repeats_link_to_the_first_and_expire_after_the_period() {
        let mut m = RepeatMemory::new(NonZeroUsize::new(10).expect("positive"));
        let k = key(&nyc("A", "HEATING", "HEAT"));
        let period = 72 * HOUR;
        assert_eq!(m.observe(k.clone(), "A", period, NOW), None);
        assert_eq!(
            m.observe(k.clone(), "A", period, NOW),
            None,
            "not its own repeat"
        );
        assert_eq!(
            m.observe(k.clone(), "B", period, NOW + HOUR),
            Some("A".into())
        );
        // B refreshed the problem: 72 h after B it is still remembered...
        assert_eq!(
            m.observe(k.clone(), "C", period, NOW + HOUR + period),
            Some("A".into())
        );
        // ...and forgotten once a full period passes without a report.
        let later = NOW + HOUR + 2 * period + 1;
        assert_eq!(m.observe(k.clone(), "D", period, later), None);
        assert_eq!(m.observe(k, "E", period, later), Some("D".into()));
    }

    #[test]
    fn bounded_forgets_the_oldest_first() {
        let mut m = RepeatMemory::new(NonZeroUsize::new(2).expect("positive"));
        let period = 72 * HOUR;
        let k = |d: &str| key(&nyc(d, "HEATING", d));
        assert_eq!(m.observe(k("one"), "1", period, NOW), None);
        assert_eq!(m.observe(k("two"), "2", period, NOW + 1), None);
        // "one" seen again: now "two" is the oldest.
        assert_eq!(m.observe(k("one"), "1b", period, NOW + 2), Some("1".into()));
        assert_eq!(m.observe(k("three"), "3", period, NOW + 3), None);
        assert_eq!(m.len(), 2);
        assert_eq!(
            m.observe(k("two"), "2b", period, NOW + 4),
            None,
            "forgotten"
        );
        assert_eq!(
            m.observe(k("three"), "3b", period, NOW + 5),
            Some("3".into())
        );
    }
}
