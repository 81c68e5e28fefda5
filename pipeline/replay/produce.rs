//! Producing replayed orders to the input topic.
//!
//! Records are keyed and encoded as intake would: key = site id, value = the
//! plain Avro datum, a `content-type` header naming the schema. Sends are
//! paced by a fixed schedule (see `pace`) and never awaited one by one:
//! delivery futures are collected and settled [`DELIVERY_CHUNK`] at a time,
//! so librdkafka can batch. Any failed delivery stops the replay with an
//! error naming the order; a replay that reports success delivered every
//! order it read.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

use super::pace::{InvalidRate, Pacer};
use super::progress::{per_second, Progress, Tracker};
use super::WARNING_ATTRIBUTE;
use crate::codec::{Codec, CodecError};
use crate::model::NormalizedWorkOrder;

/// Value of the `content-type` header on every replayed record.
pub const CONTENT_TYPE: &str = "application/avro; schema=cmms.NormalizedWorkOrder";

/// Deliveries awaited together. Large enough that the producer fills its
/// batches between settles, small enough to bound the futures held and to
/// report a failure soon after it happens.
pub const DELIVERY_CHUNK: usize = 1_000;

/// Wait before retrying a send when librdkafka's queue is full and we hold no
/// delivery of our own to await (another user of the producer filled it).
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(50);

/// Why a replay stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The rate is not usable; nothing was sent.
    #[error(transparent)]
    InvalidRate(#[from] InvalidRate),
    /// An order does not fit the schema: a bug in the conversion, not the data.
    #[error("cannot encode replayed order {order_id:?}: {source}")]
    Encode {
        /// The order.
        order_id: String,
        /// The encoder's complaint.
        source: CodecError,
    },
    /// librdkafka refused to queue a record.
    #[error("cannot queue replayed order {order_id:?} for topic {topic:?}: {source}")]
    Enqueue {
        /// The order.
        order_id: String,
        /// The topic.
        topic: String,
        /// The client error.
        source: KafkaError,
    },
    /// The broker did not take a record.
    #[error("replayed order {order_id:?} was not delivered to topic {topic:?}: {source}; check that the topic exists and the brokers are reachable")]
    Delivery {
        /// The order.
        order_id: String,
        /// The topic.
        topic: String,
        /// The delivery error.
        source: KafkaError,
    },
    /// The producer went away before reporting a delivery.
    #[error(
        "delivery report for replayed order {order_id:?} was lost: the producer shut down first"
    )]
    DeliveryCanceled {
        /// The order.
        order_id: String,
    },
}

/// What a finished replay did.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReplayReport {
    /// Orders taken from the input.
    pub read: u64,
    /// Orders the broker acknowledged; equals `read` on success.
    pub produced: u64,
    /// Orders carrying a `replay_warning` attribute.
    pub warned: u64,
    /// Orders produced per trade.
    pub per_trade: BTreeMap<String, u64>,
    /// Wall time from the first send to the last acknowledgement.
    pub elapsed: Duration,
}

impl ReplayReport {
    /// Acknowledged orders per second over the whole replay.
    pub fn rate(&self) -> f64 {
        per_second(self.produced, self.elapsed)
    }
}

/// Client configuration for the replay producer.
///
/// Idempotent, so a retry after a lost acknowledgement does not write an
/// order twice: the router would drop the copy as a duplicate, but its
/// duplicate counts would then measure our retries instead of the data's
/// real repeat requests. No compression, so broker-side byte counts reflect
/// the Avro records.
pub fn producer_config(bootstrap_servers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap_servers)
        .set("client.id", "cmms-router-replay")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("compression.type", "none");
    config
}

/// Produces `orders` to `topic` at `rate_per_sec` records per second (0 or
/// infinity: as fast as the producer takes them) and waits until every one
/// is acknowledged.
///
/// The key is the site id; an order without one (blank counts as none) is
/// keyed by its order id instead, so it still lands on one deterministic
/// partition, where the router dead-letters it for the missing site.
#[tracing::instrument(name = "replay", skip_all, fields(topic = %topic, rate_per_sec = rate_per_sec))]
pub async fn produce(
    orders: impl IntoIterator<Item = NormalizedWorkOrder>,
    producer: &FutureProducer,
    topic: &str,
    codec: &Codec,
    rate_per_sec: f64,
    progress: Progress,
) -> Result<ReplayReport, ReplayError> {
    let mut pacer = Pacer::new(rate_per_sec)?;
    let orders = orders.into_iter();
    let total = match orders.size_hint() {
        (low, Some(high)) if low == high => Some(low as u64),
        _ => None,
    };
    let mut tracker = Tracker::new(progress, total);
    let mut report = ReplayReport::default();
    let mut pending = Pending {
        topic,
        futures: Vec::with_capacity(DELIVERY_CHUNK),
    };
    let started = Instant::now();

    for order in orders {
        report.read += 1;
        pacer.wait().await;
        let payload = codec
            .encode_work_order(&order)
            .map_err(|source| ReplayError::Encode {
                order_id: order.order_id.clone(),
                source,
            })?;
        let key = order
            .site_id
            .as_deref()
            .filter(|site| !site.trim().is_empty())
            .unwrap_or(&order.order_id);
        let headers = OwnedHeaders::new().insert(Header {
            key: "content-type",
            value: Some(CONTENT_TYPE),
        });
        let mut record = FutureRecord::to(topic)
            .key(key)
            .payload(&payload)
            .headers(headers);
        let delivery = loop {
            match producer.send_result(record) {
                Ok(delivery) => break delivery,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    if pending.futures.is_empty() {
                        tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
                    } else {
                        report.produced += pending.settle().await?;
                    }
                }
                Err((source, _)) => {
                    return Err(ReplayError::Enqueue {
                        order_id: order.order_id.clone(),
                        topic: topic.to_owned(),
                        source,
                    })
                }
            }
        };
        pending.futures.push((order.order_id.clone(), delivery));
        *report.per_trade.entry(order.trade.clone()).or_insert(0) += 1;
        if order.attributes.contains_key(WARNING_ATTRIBUTE) {
            report.warned += 1;
        }
        tracker.update(report.read);
        if pending.futures.len() >= DELIVERY_CHUNK {
            report.produced += pending.settle().await?;
        }
    }
    report.produced += pending.settle().await?;
    report.elapsed = started.elapsed();
    tracker.finish();
    tracing::info!(
        read = report.read,
        produced = report.produced,
        warned = report.warned,
        elapsed_seconds = report.elapsed.as_secs_f64(),
        rate = report.rate(),
        "replay finished"
    );
    Ok(report)
}

/// Deliveries queued but not yet acknowledged.
struct Pending<'a> {
    topic: &'a str,
    futures: Vec<(String, DeliveryFuture)>,
}

impl Pending<'_> {
    /// Awaits every pending delivery and returns how many succeeded; the
    /// first failure is returned as an error naming its order.
    async fn settle(&mut self) -> Result<u64, ReplayError> {
        let mut delivered = 0;
        for (order_id, delivery) in self.futures.drain(..) {
            match delivery.await {
                Ok(Ok(_)) => delivered += 1,
                Ok(Err((source, _message))) => {
                    return Err(ReplayError::Delivery {
                        order_id,
                        topic: self.topic.to_owned(),
                        source,
                    })
                }
                Err(_canceled) => return Err(ReplayError::DeliveryCanceled { order_id }),
            }
        }
        Ok(delivered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::tests::codec;

    fn offline_producer() -> FutureProducer {
        // Nothing listens on port 9; creating the client does not connect.
        producer_config("127.0.0.1:9")
            .create()
            .expect("producer config is valid")
    }

    #[test]
    fn producer_config_is_idempotent_and_uncompressed() {
        let config = producer_config("broker:9092");
        assert_eq!(config.get("bootstrap.servers"), Some("broker:9092"));
        assert_eq!(config.get("enable.idempotence"), Some("true"));
        assert_eq!(config.get("linger.ms"), Some("5"));
        assert_eq!(config.get("compression.type"), Some("none"));
    }

    #[tokio::test]
    async fn invalid_rate_stops_before_sending() {
        let producer = offline_producer();
        let err = produce(Vec::new(), &producer, "t", &codec(), -5.0, Progress::Off)
            .await
            .expect_err("negative rate");
        assert!(matches!(err, ReplayError::InvalidRate(_)), "{err}");
    }

    #[tokio::test]
    async fn empty_replay_reports_nothing_sent() {
        let producer = offline_producer();
        let report = produce(Vec::new(), &producer, "t", &codec(), 0.0, Progress::Off)
            .await
            .expect("nothing to send");
        assert_eq!(report.read, 0);
        assert_eq!(report.produced, 0);
        assert!(report.per_trade.is_empty());
    }
}
