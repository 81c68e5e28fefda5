//! The consumer's librdkafka callbacks: rebalance events and statistics are
//! forwarded from librdkafka's threads to the run loop, which owns all state.
//! The callbacks themselves touch nothing but a channel and the metrics.

use std::sync::mpsc;

use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, TopicPartitionList};

use crate::telemetry::Metrics;

/// A change of the input partitions this instance owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RebalanceEvent {
    /// These partitions were taken away (revoked or lost).
    Revoked(Vec<i32>),
    /// These partitions were added.
    Assigned(Vec<i32>),
}

/// Consumer context of the router's input consumer.
pub(super) struct RouterContext {
    /// Input topic: the only one the consumer subscribes to.
    pub(super) topic: String,
    /// To the run loop; unbounded, but a rebalance sends one event.
    pub(super) events: mpsc::Sender<RebalanceEvent>,
    /// Lag gauges are set from the statistics callback.
    pub(super) metrics: Metrics,
}

impl RouterContext {
    fn partitions(&self, tpl: &TopicPartitionList) -> Vec<i32> {
        tpl.elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect()
    }
}

impl ClientContext for RouterContext {
    fn stats(&self, statistics: Statistics) {
        if let Some(topic) = statistics.topics.get(&self.topic) {
            for (id, p) in &topic.partitions {
                if *id >= 0 && p.consumer_lag >= 0 {
                    self.metrics.lag(*id, p.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for RouterContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            // The receiver lives as long as the loop; a send error only means
            // the loop is already gone.
            let _ = self
                .events
                .send(RebalanceEvent::Revoked(self.partitions(tpl)));
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let _ = self
                .events
                .send(RebalanceEvent::Assigned(self.partitions(tpl)));
        }
    }
}
