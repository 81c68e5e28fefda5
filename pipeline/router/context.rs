//! The consumer's librdkafka callbacks: rebalance events and statistics are
//! forwarded from librdkafka to the run loop, which owns all state.
//!
//! Rebalance callbacks run inside the loop's own `recv()` poll, where the
//! loop's state is out of reach. Assignments are applied at once and
//! announced. A cooperative revocation is only announced: the partitions
//! stay assigned until the loop has committed their pending work and calls
//! `incremental_unassign` itself ([`RouterContext::finish_revoke`]), so the
//! next owner, which the group coordinator holds back until this member
//! gives the partitions up, starts from that commit. Once the loop is
//! closing (`closing` is set), revocations are applied at once, because
//! closing the consumer waits for them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaResult;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, TopicPartitionList};

use crate::telemetry::Metrics;

/// A change of the input partitions this instance owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RebalanceEvent {
    /// These partitions are being taken away.
    Revoked {
        /// Input partitions.
        partitions: Vec<i32>,
        /// They are still assigned: the loop commits their pending work,
        /// then calls [`RouterContext::finish_revoke`]. Otherwise they are
        /// gone already (lost to a session timeout, or revoked while
        /// closing) and nothing may be committed for them any more.
        handover: bool,
    },
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
    /// Set when the loop has stopped handling events: revocations are
    /// then applied in the callback.
    pub(super) closing: Arc<AtomicBool>,
}

impl RouterContext {
    fn partitions(&self, tpl: &TopicPartitionList) -> Vec<i32> {
        tpl.elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect()
    }

    /// Gives up input partitions whose revocation the callback deferred.
    pub(super) fn finish_revoke<C: Consumer<Self>>(
        &self,
        consumer: &C,
        partitions: &[i32],
    ) -> KafkaResult<()> {
        let mut tpl = TopicPartitionList::new();
        for &p in partitions {
            tpl.add_partition(&self.topic, p);
        }
        consumer.incremental_unassign(&tpl)
    }

    fn send(&self, event: RebalanceEvent) {
        // The receiver lives as long as the loop; a send error only means
        // the loop is already gone, and then `closing` is set too.
        let _ = self.events.send(event);
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
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let partitions = self.partitions(tpl);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let applied = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                match applied {
                    Ok(()) => self.send(RebalanceEvent::Assigned(partitions)),
                    // librdkafka retries the rebalance; nothing was taken.
                    Err(e) => tracing::error!(error = %e, ?partitions, "cannot apply assignment"),
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // Lost partitions belong to another member already: give
                // them up at once, like every revocation while closing.
                let handover = cooperative
                    && !consumer.assignment_lost()
                    && !self.closing.load(Ordering::SeqCst);
                if !handover {
                    let applied = if cooperative {
                        consumer.incremental_unassign(tpl)
                    } else {
                        consumer.unassign()
                    };
                    if let Err(e) = applied {
                        tracing::error!(error = %e, ?partitions, "cannot apply revocation");
                    }
                }
                self.send(RebalanceEvent::Revoked {
                    partitions,
                    handover,
                });
            }
            other => {
                // A failed rebalance: librdkafka expects the assignment to be
                // dropped, and the loop must forget the partitions' work.
                tracing::error!(error = ?other, ?partitions, "rebalance failed");
                let applied = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = applied {
                    tracing::error!(error = %e, "cannot drop the assignment after a failed rebalance");
                }
                self.send(RebalanceEvent::Revoked {
                    partitions,
                    handover: false,
                });
            }
        }
    }
}
