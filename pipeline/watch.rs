//! Follow what the router emits: job packets on the dispatch topics and dead
//! letters, read as a downstream connector would (read_committed), one line
//! per record. Used by `cmms-router watch` and the README's demo.

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;

use crate::codec::Codec;
use crate::model::{DeadLetter, DispatchBatch};
use crate::topology::{Topology, TradeRoute};

/// One record seen on an output topic.
#[derive(Debug)]
pub enum Emitted {
    /// A job packet.
    Packet(DispatchBatch),
    /// A dead letter.
    DeadLetter(DeadLetter),
    /// Bytes on an output topic that are not ours (written by something else).
    Foreign {
        /// Topic.
        topic: String,
        /// Why it did not decode.
        error: String,
    },
}

/// The topics a downstream reader follows: every trade topic, the vendor
/// desk, the fallback and the dead letters.
pub fn output_topics(topology: &Topology) -> Vec<String> {
    let mut topics: Vec<String> = topology
        .trades
        .values()
        .filter_map(|r| match r {
            TradeRoute::Topic(t) => Some(t.clone()),
            TradeRoute::Fallback => None,
        })
        .collect();
    topics.push(topology.vendor_desk.name.clone());
    topics.push(topology.fallback.name.clone());
    topics.push(topology.dead_letter.name.clone());
    topics.sort();
    topics.dedup();
    topics
}

/// Reads the output topics from the beginning with a throwaway group, calling
/// `on_record` for each, until `idle` passes with nothing new (or forever
/// when `idle` is `None`) or `on_record` returns false.
pub fn follow(
    client: &ClientConfig,
    topology: &Topology,
    codec: &Codec,
    idle: Option<Duration>,
    mut on_record: impl FnMut(Emitted) -> bool,
) -> Result<(), KafkaError> {
    let consumer: BaseConsumer = client
        .clone()
        .set(
            "group.id",
            format!("cmms-router-watch-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    let topics = output_topics(topology);
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&refs)?;
    let mut last = Instant::now();
    loop {
        if idle.is_some_and(|idle| last.elapsed() >= idle) {
            return Ok(());
        }
        let Some(message) = consumer.poll(Duration::from_millis(250)) else {
            continue;
        };
        let message = message?;
        last = Instant::now();
        let bytes = message.payload().unwrap_or_default();
        let emitted = if message.topic() == topology.dead_letter.name {
            codec.decode_dead_letter(bytes).map(Emitted::DeadLetter)
        } else {
            codec.decode_dispatch(bytes).map(Emitted::Packet)
        }
        .unwrap_or_else(|e| Emitted::Foreign {
            topic: message.topic().to_string(),
            error: e.to_string(),
        });
        if !on_record(emitted) {
            return Ok(());
        }
    }
}
