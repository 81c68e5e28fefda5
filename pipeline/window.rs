//! Per-site batching for one input partition.
//!
//! A site batch opens with its first order and closes when it holds
//! `max_orders` orders or when `max_wait` has passed since it opened,
//! whichever comes first. Time is passed in by the caller (a monotonic
//! [`Instant`] for deadlines and epoch millis for the record fields), so the
//! logic is deterministic and tested without sleeping.
//!
//! An [`OpenBatch`] lives only inside [`SiteWindows`] and can only grow; once
//! closed it becomes a [`ClosedBatch`], which has no way back in. The lowest
//! input offset still held in an open batch is what bounds the partition's
//! committable offset (see `router`).

use std::collections::HashMap;
use std::time::Instant;

use crate::config::WindowConfig;
use crate::model::CloseReason;

/// An item with the input offset it was read at.
#[derive(Debug, Clone, PartialEq)]
pub struct Held<T> {
    /// Input offset of the record.
    pub offset: i64,
    /// The item.
    pub item: T,
}

#[derive(Debug)]
struct OpenBatch<T> {
    opened: Instant,
    opened_at_ms: i64,
    items: Vec<Held<T>>,
}

/// A batch that has closed and will not change again.
#[derive(Debug, Clone, PartialEq)]
pub struct ClosedBatch<T> {
    /// Site of every item.
    pub site: String,
    /// Why it closed.
    pub reason: CloseReason,
    /// Wall time of its first item's arrival, epoch millis.
    pub opened_at_ms: i64,
    /// Wall time it closed, epoch millis.
    pub closed_at_ms: i64,
    /// Items in arrival (offset) order.
    pub items: Vec<Held<T>>,
}

/// The open site batches of one input partition.
#[derive(Debug)]
pub struct SiteWindows<T> {
    config: WindowConfig,
    open: HashMap<String, OpenBatch<T>>,
    held: usize,
}

impl<T> SiteWindows<T> {
    /// No open batches.
    pub fn new(config: WindowConfig) -> Self {
        Self {
            config,
            open: HashMap::new(),
            held: 0,
        }
    }

    /// Adds an item to its site's batch, opening one if needed. Returns the
    /// batch when this item filled it to `max_orders`.
    ///
    /// Offsets must arrive in increasing order per partition, which a Kafka
    /// consumer guarantees; the lowest-offset bookkeeping relies on it.
    pub fn add(
        &mut self,
        site: &str,
        offset: i64,
        item: T,
        now: Instant,
        now_ms: i64,
    ) -> Option<ClosedBatch<T>> {
        let batch = self
            .open
            .entry(site.to_string())
            .or_insert_with(|| OpenBatch {
                opened: now,
                opened_at_ms: now_ms,
                items: Vec::new(),
            });
        debug_assert!(batch.items.last().is_none_or(|h| h.offset < offset));
        batch.items.push(Held { offset, item });
        self.held += 1;
        if batch.items.len() >= self.config.max_orders {
            return self.close(site, CloseReason::MaxOrders, now_ms);
        }
        None
    }

    /// Closes and returns every batch whose `max_wait` has passed at `now`,
    /// oldest first.
    pub fn close_expired(&mut self, now: Instant, now_ms: i64) -> Vec<ClosedBatch<T>> {
        let max_wait = self.config.max_wait;
        let mut due: Vec<(Instant, String)> = self
            .open
            .iter()
            .filter(|(_, b)| now.saturating_duration_since(b.opened) >= max_wait)
            .map(|(site, b)| (b.opened, site.clone()))
            .collect();
        due.sort();
        due.into_iter()
            .filter_map(|(_, site)| self.close(&site, CloseReason::MaxWait, now_ms))
            .collect()
    }

    /// Closes every open batch (shutdown, or handing the partition over).
    pub fn close_all(&mut self, reason: CloseReason, now_ms: i64) -> Vec<ClosedBatch<T>> {
        let mut sites: Vec<(i64, String)> = self
            .open
            .iter()
            .map(|(site, b)| (b.items.first().map_or(i64::MAX, |h| h.offset), site.clone()))
            .collect();
        sites.sort();
        sites
            .into_iter()
            .filter_map(|(_, site)| self.close(&site, reason, now_ms))
            .collect()
    }

    /// Drops every open batch without closing it (after an aborted
    /// transaction the records are read again).
    pub fn discard(&mut self) {
        self.open.clear();
        self.held = 0;
    }

    /// Lowest input offset held in any open batch.
    pub fn lowest_held_offset(&self) -> Option<i64> {
        // Items arrive in offset order, so each batch's first is its lowest.
        self.open
            .values()
            .filter_map(|b| b.items.first().map(|h| h.offset))
            .min()
    }

    /// When the oldest open batch reaches `max_wait`.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.open
            .values()
            .map(|b| b.opened + self.config.max_wait)
            .min()
    }

    /// Number of open batches.
    pub fn open_batches(&self) -> usize {
        self.open.len()
    }

    /// Number of items held in open batches.
    pub fn held_items(&self) -> usize {
        self.held
    }

    fn close(&mut self, site: &str, reason: CloseReason, now_ms: i64) -> Option<ClosedBatch<T>> {
        let batch = self.open.remove(site)?;
        self.held -= batch.items.len();
        Some(ClosedBatch {
            site: site.to_string(),
            reason,
            opened_at_ms: batch.opened_at_ms,
            closed_at_ms: now_ms,
            items: batch.items,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn windows(max_orders: usize, max_wait_ms: u64) -> SiteWindows<&'static str> {
        SiteWindows::new(WindowConfig {
            max_orders,
            max_wait: Duration::from_millis(max_wait_ms),
        })
    }

    #[test]
    fn closes_on_count() {
        let t0 = Instant::now();
        let mut w = windows(3, 60_000);
        assert!(w.add("A", 1, "a1", t0, 0).is_none());
        assert!(w.add("B", 2, "b1", t0, 0).is_none());
        assert!(w.add("A", 3, "a2", t0, 0).is_none());
        let closed = w.add("A", 4, "a3", t0, 10).expect("third order closes A");
        assert_eq!(closed.reason, CloseReason::MaxOrders);
        assert_eq!(closed.site, "A");
        assert_eq!(
            closed.items.iter().map(|h| h.offset).collect::<Vec<_>>(),
            [1, 3, 4]
        );
        assert_eq!(w.open_batches(), 1);
        assert_eq!(w.held_items(), 1);
        assert_eq!(w.lowest_held_offset(), Some(2));
    }

    #[test]
    fn closes_on_time_measured_from_first_order() {
        let t0 = Instant::now();
        let mut w = windows(100, 1_000);
        w.add("A", 10, "a1", t0, 0);
        w.add("A", 11, "a2", t0 + Duration::from_millis(900), 900);
        w.add("B", 12, "b1", t0 + Duration::from_millis(500), 500);
        assert!(w
            .close_expired(t0 + Duration::from_millis(999), 999)
            .is_empty());
        let closed = w.close_expired(t0 + Duration::from_millis(1_000), 1_000);
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].site, "A");
        assert_eq!(closed[0].reason, CloseReason::MaxWait);
        assert_eq!(closed[0].items.len(), 2);
        assert_eq!(w.next_deadline(), Some(t0 + Duration::from_millis(1_500)));
    }

    #[test]
    fn max_orders_of_one_closes_every_order_at_once() {
        let t0 = Instant::now();
        let mut w = windows(1, 60_000);
        assert!(w.add("A", 0, "a", t0, 0).is_some());
        assert_eq!(w.lowest_held_offset(), None);
    }

    #[test]
    fn close_all_returns_everything_in_offset_order() {
        let t0 = Instant::now();
        let mut w = windows(10, 60_000);
        w.add("B", 5, "b", t0, 0);
        w.add("A", 7, "a", t0, 0);
        w.add("C", 6, "c", t0, 0);
        let closed = w.close_all(CloseReason::Shutdown, 1);
        assert_eq!(
            closed.iter().map(|b| b.site.as_str()).collect::<Vec<_>>(),
            ["B", "C", "A"]
        );
        assert_eq!(w.held_items(), 0);
        assert_eq!(w.next_deadline(), None);
    }

    #[test]
    fn discard_forgets_open_batches() {
        let t0 = Instant::now();
        let mut w = windows(10, 60_000);
        w.add("A", 1, "a", t0, 0);
        w.discard();
        assert_eq!(w.open_batches(), 0);
        assert_eq!(w.lowest_held_offset(), None);
    }
}
