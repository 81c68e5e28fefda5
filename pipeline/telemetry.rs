//! What can happen in the router, as events: each one updates its metric
//! and writes its log line in one place, so the two never disagree.
//!
//! Metric names follow Prometheus conventions: the `cmms_router_` prefix,
//! base units in the name, `_total` on counters. Label values are bounded
//! (trade codes from the topology, reason codes, partitions), never order
//! ids or free text.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::model::{CloseReason, DeadLetterReason, Destination};

/// The router's metrics, registered in their own registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    records_consumed: IntCounter,
    records_skipped: IntCounter,
    orders_accepted: IntCounter,
    dead_letters: IntCounterVec,
    batches_closed: IntCounterVec,
    batch_size: Histogram,
    packets_committed: IntCounterVec,
    orders_dispatched: IntCounterVec,
    open_batches: IntGauge,
    held_orders: IntGauge,
    commit_duration: Histogram,
    commits: IntCounter,
    aborts: IntCounterVec,
    retries: IntCounterVec,
    batch_age: HistogramVec,
    assigned_partitions: IntGauge,
    revoked_partitions: IntCounterVec,
    duplicates: IntCounterVec,
    dedup_expired: IntCounter,
    restore_records: IntCounterVec,
    restore_remaining: IntGaugeVec,
    restore_duration: HistogramVec,
    consumer_lag: IntGaugeVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn register<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    r.register(Box::new(c.clone()))
        .expect("each metric is registered once, under a unique static name");
    c
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    register(
        r,
        IntCounter::new(name, help).expect("static metric definition"),
    )
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        r,
        IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition"),
    )
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    register(
        r,
        IntGauge::new(name, help).expect("static metric definition"),
    )
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(buckets);
    register(
        r,
        Histogram::with_opts(opts).expect("static metric definition"),
    )
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let r = Registry::new();
        let seconds = exponential_buckets(0.001, 2.0, 16).expect("valid buckets");
        Self {
            records_consumed: counter(
                &r,
                "cmms_router_records_consumed_total",
                "Input records read.",
            ),
            records_skipped: counter(
                &r,
                "cmms_router_records_skipped_total",
                "Input records re-read after a rewind whose effect was already committed.",
            ),
            orders_accepted: counter(
                &r,
                "cmms_router_orders_accepted_total",
                "Orders that passed validation.",
            ),
            dead_letters: counter_vec(
                &r,
                "cmms_router_dead_letters_total",
                "Records sent to the dead-letter topic, by reason (committed or not).",
                &["reason"],
            ),
            batches_closed: counter_vec(
                &r,
                "cmms_router_batches_closed_total",
                "Site batches closed, by reason.",
                &["reason"],
            ),
            batch_size: histogram(
                &r,
                "cmms_router_batch_size_orders",
                "Orders in a site batch when it closed.",
                vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 500.0],
            ),
            packets_committed: counter_vec(
                &r,
                "cmms_router_packets_committed_total",
                "Job packets committed to dispatch topics.",
                &["trade", "destination"],
            ),
            orders_dispatched: counter_vec(
                &r,
                "cmms_router_orders_dispatched_total",
                "Orders committed inside job packets.",
                &["trade"],
            ),
            open_batches: gauge(
                &r,
                "cmms_router_window_open_batches",
                "Site batches currently open.",
            ),
            held_orders: gauge(
                &r,
                "cmms_router_window_held_orders",
                "Orders held in open site batches.",
            ),
            commit_duration: histogram(
                &r,
                "cmms_router_transaction_commit_duration_seconds",
                "Time to produce, send offsets and commit one transaction.",
                seconds.clone(),
            ),
            commits: counter(
                &r,
                "cmms_router_transactions_committed_total",
                "Transactions committed.",
            ),
            aborts: counter_vec(
                &r,
                "cmms_router_transactions_aborted_total",
                "Transactions aborted, by cause.",
                &["cause"],
            ),
            retries: counter_vec(
                &r,
                "cmms_router_retries_total",
                "Retried operations, by operation.",
                &["operation"],
            ),
            batch_age: register(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "cmms_router_dispatch_delay_seconds",
                        "Time from a site batch's first order to the commit of its packets.",
                    )
                    .buckets(seconds),
                    &["close_reason"],
                )
                .expect("static metric definition"),
            ),
            duplicates: counter_vec(
                &r,
                "cmms_router_duplicates_total",
                "Orders dropped because their order id was already held or dispatched.",
                &["kind"],
            ),
            dedup_expired: counter(
                &r,
                "cmms_router_dedup_expired_total",
                "Dedup entries expired (tombstoned in the changelog).",
            ),
            restore_records: counter_vec(
                &r,
                "cmms_router_restore_records_total",
                "Changelog or roster records applied while restoring local state.",
                &["store"],
            ),
            restore_remaining: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "cmms_router_restore_remaining_offsets",
                        "Offsets left to read by the running restore (0 when none runs).",
                    ),
                    &["store"],
                )
                .expect("static metric definition"),
            ),
            restore_duration: register(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "cmms_router_restore_duration_seconds",
                        "Time one restore took.",
                    )
                    .buckets(exponential_buckets(0.01, 2.0, 14).expect("valid buckets")),
                    &["store"],
                )
                .expect("static metric definition"),
            ),
            revoked_partitions: counter_vec(
                &r,
                "cmms_router_partitions_revoked_total",
                "Input partitions handed to another instance, by outcome: committed (pending work committed first), aborted (that commit failed; the next owner re-reads), dropped (lost to the group before this instance could commit; the next owner re-reads).",
                &["outcome"],
            ),
            assigned_partitions: gauge(
                &r,
                "cmms_router_assigned_partitions",
                "Input partitions assigned to this instance.",
            ),
            consumer_lag: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "cmms_router_consumer_lag_records",
                        "Records between the consumer position and the end of the partition.",
                    ),
                    &["partition"],
                )
                .expect("static metric definition"),
            ),
            registry: r,
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// An input record was read.
    pub fn record_consumed(&self) {
        self.records_consumed.inc();
    }

    /// A re-read record was skipped because its effect was already committed.
    pub fn record_skipped(&self, partition: i32, offset: i64) {
        self.records_skipped.inc();
        tracing::debug!(
            partition,
            offset,
            "skipped record already committed before the rewind"
        );
    }

    /// An order passed validation.
    pub fn order_accepted(&self) {
        self.orders_accepted.inc();
    }

    /// A record was rejected and staged for the dead-letter topic.
    pub fn dead_lettered(
        &self,
        reason: DeadLetterReason,
        partition: i32,
        offset: i64,
        detail: &str,
    ) {
        self.dead_letters
            .with_label_values(&[reason.as_str()])
            .inc();
        if WARN_LIMIT.allow() {
            tracing::warn!(
                reason = reason.as_str(),
                partition,
                offset,
                detail,
                "record dead-lettered"
            );
        }
    }

    /// A site batch closed.
    pub fn batch_closed(&self, reason: CloseReason, site: &str, partition: i32, orders: usize) {
        self.batches_closed
            .with_label_values(&[reason.as_str()])
            .inc();
        self.batch_size.observe(orders as f64);
        tracing::debug!(
            reason = reason.as_str(),
            site,
            partition,
            orders,
            "site batch closed"
        );
    }

    /// A transaction committed; `packets` lists (trade, destination, orders, batch age).
    pub fn transaction_committed(
        &self,
        took: Duration,
        records: usize,
        packets: &[(String, Destination, usize, CloseReason, i64)],
    ) {
        self.commits.inc();
        self.commit_duration.observe(took.as_secs_f64());
        let now = now_millis();
        for (trade, destination, orders, reason, opened_at) in packets {
            let dest = match destination {
                Destination::Trade => "trade",
                Destination::VendorDesk => "vendor_desk",
                Destination::Fallback => "fallback",
            };
            self.packets_committed
                .with_label_values(&[trade, dest])
                .inc();
            self.orders_dispatched
                .with_label_values(&[trade])
                .inc_by(*orders as u64);
            self.batch_age
                .with_label_values(&[reason.as_str()])
                .observe((now - opened_at).max(0) as f64 / 1000.0);
        }
        tracing::debug!(
            records,
            packets = packets.len(),
            took_ms = took.as_millis() as u64,
            "transaction committed"
        );
    }

    /// A transaction was aborted and the input rewound.
    pub fn transaction_aborted(&self, cause: &'static str, error: &dyn std::fmt::Display) {
        self.aborts.with_label_values(&[cause]).inc();
        tracing::warn!(cause, %error, "transaction aborted; rewinding to the committed offsets");
    }

    /// An operation is being retried.
    pub fn retried(&self, operation: &'static str, error: &dyn std::fmt::Display) {
        self.retries.with_label_values(&[operation]).inc();
        if WARN_LIMIT.allow() {
            tracing::warn!(operation, %error, "retrying");
        }
    }

    /// Window occupancy after a change.
    pub fn windows(&self, open_batches: usize, held_orders: usize) {
        self.open_batches.set(open_batches as i64);
        self.held_orders.set(held_orders as i64);
    }

    /// Partition assignment changed.
    pub fn assigned(&self, partitions: usize) {
        self.assigned_partitions.set(partitions as i64);
    }

    /// Input partitions were handed over; `outcome` is "committed",
    /// "aborted" or "dropped".
    pub fn revoked(&self, outcome: &'static str, partitions: usize) {
        self.revoked_partitions
            .with_label_values(&[outcome])
            .inc_by(partitions as u64);
    }

    /// An order was dropped as a duplicate; `kind` is "held" (its original
    /// waits in a batch) or "dispatched" (found in the dedup store).
    pub fn duplicate(&self, partition: i32, order_id: &str, kind: &'static str) {
        self.duplicates.with_label_values(&[kind]).inc();
        tracing::debug!(partition, order_id, kind, "duplicate order dropped");
    }

    /// Expired dedup entries were tombstoned.
    pub fn dedup_expired(&self, partition: i32, entries: usize) {
        if entries > 0 {
            self.dedup_expired.inc_by(entries as u64);
            tracing::debug!(partition, entries, "dedup entries expired");
        }
    }

    /// A restore is progressing.
    pub fn restore_progress(&self, store: &'static str, records: u64, remaining_offsets: i64) {
        self.restore_remaining
            .with_label_values(&[store])
            .set(remaining_offsets);
        tracing::info!(store, records, remaining_offsets, "restoring local state");
    }

    /// A restore finished.
    pub fn restored(&self, store: &'static str, records: u64, took: Duration) {
        self.restore_records
            .with_label_values(&[store])
            .inc_by(records);
        self.restore_remaining.with_label_values(&[store]).set(0);
        self.restore_duration
            .with_label_values(&[store])
            .observe(took.as_secs_f64());
        tracing::info!(
            store,
            records,
            took_ms = took.as_millis() as u64,
            "local state restored"
        );
    }

    /// Current value of the duplicates counter, for tests.
    pub fn duplicates_total(&self) -> u64 {
        ["held", "dispatched"]
            .iter()
            .map(|k| self.duplicates.with_label_values(&[k]).get())
            .sum()
    }

    /// Current value of the consumed-records counter, for tests.
    pub fn records_consumed_total(&self) -> u64 {
        self.records_consumed.get()
    }

    /// Partitions handed over with `outcome`, for tests.
    pub fn revoked_total(&self, outcome: &str) -> u64 {
        self.revoked_partitions.with_label_values(&[outcome]).get()
    }

    /// Consumer lag of one partition, from librdkafka statistics.
    pub fn lag(&self, partition: i32, records: i64) {
        self.consumer_lag
            .with_label_values(&[&partition.to_string()])
            .set(records);
    }

    /// Current value of a counter, for tests and the replay benchmark.
    pub fn dead_letters_total(&self) -> u64 {
        DeadLetterReason::ALL
            .iter()
            .map(|r| self.dead_letters.with_label_values(&[r.as_str()]).get())
            .sum()
    }
}

/// Current wall time, epoch millis.
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// At most `PER_SECOND` per-record warnings a second, so a flood of bad
/// records cannot drown the log; the counters still count every one.
struct RateLimit {
    window: AtomicU64,
    used: AtomicU64,
}

const PER_SECOND: u64 = 20;
static WARN_LIMIT: RateLimit = RateLimit {
    window: AtomicU64::new(0),
    used: AtomicU64::new(0),
};

impl RateLimit {
    fn allow(&self) -> bool {
        let second = (now_millis() / 1000) as u64;
        if self.window.swap(second, Ordering::Relaxed) != second {
            self.used.store(0, Ordering::Relaxed);
        }
        self.used.fetch_add(1, Ordering::Relaxed) < PER_SECOND
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_with_conventional_names() {
        let m = Metrics::new();
        m.dead_lettered(DeadLetterReason::MissingSite, 0, 1, "x");
        m.transaction_committed(
            Duration::from_millis(3),
            2,
            &[(
                "hvac".into(),
                Destination::Trade,
                4,
                CloseReason::MaxOrders,
                now_millis(),
            )],
        );
        let text = m.render();
        assert!(
            text.contains("cmms_router_dead_letters_total{reason=\"missing_site\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("cmms_router_orders_dispatched_total{trade=\"hvac\"} 4"),
            "{text}"
        );
        assert!(
            text.contains("cmms_router_transaction_commit_duration_seconds_count 1"),
            "{text}"
        );
        assert_eq!(m.dead_letters_total(), 1);
    }
}
