//! The transactional producer: everything staged since the last commit goes
//! out in one Kafka transaction together with the input offsets.
//!
//! Promise: after [`Dispatcher::commit`] returns `Ok`, the records and the
//! offsets are committed together; after it returns [`TxnError::Abortable`]
//! neither is visible to a read_committed consumer and the caller must rewind
//! its input to the last committed offsets; after [`TxnError::Fatal`] this
//! producer can do nothing more (it was fenced by a newer instance with the
//! same transactional id, or hit an unrecoverable error) and the process
//! should stop.
//!
//! Records are only handed to librdkafka at commit time, so an aborted
//! transaction never left anything half-sent in our own state.
//!
//! librdkafka's transaction calls block, so they run on tokio's blocking
//! pool, never on a runtime worker.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::TopicPartitionList;

use crate::config::KafkaConfig;
use crate::telemetry::Metrics;

/// One record to produce in the next transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Outbound {
    /// Destination topic.
    pub topic: String,
    /// Explicit partition (changelogs are co-partitioned with the input);
    /// `None` lets the producer partition by key.
    pub partition: Option<i32>,
    /// Record key.
    pub key: Option<Vec<u8>>,
    /// Avro datum; `None` is a tombstone (compacted topics forget the key).
    pub payload: Option<Vec<u8>>,
    /// Full name of the Avro record in `payload`, sent as a header.
    pub schema: &'static str,
}

/// What a committed transaction wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Committed {
    /// Time from begin to commit.
    pub took: Duration,
    /// Highest offset written per (topic, partition); changelog offsets are
    /// recorded next to the local state they produced.
    pub last_offsets: BTreeMap<(String, i32), i64>,
}

/// How a transaction failed.
#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    /// The transaction was aborted; rewind the input and go on.
    #[error("transaction aborted during {operation}: {source}")]
    Abortable {
        /// The failing step.
        operation: &'static str,
        /// The client error.
        source: KafkaError,
    },
    /// The producer cannot continue (fenced, or a fatal librdkafka error).
    #[error("transactional producer failed fatally during {operation}: {source}; another instance with the same kafka.transactional_id may have taken over")]
    Fatal {
        /// The failing step.
        operation: &'static str,
        /// The client error.
        source: KafkaError,
    },
}

enum Class {
    Retriable,
    Abortable,
    Fatal,
}

fn classify(e: &KafkaError) -> Class {
    match e.rdkafka_error_code() {
        _ if matches!(e, KafkaError::Transaction(t) if t.is_fatal()) => Class::Fatal,
        _ if matches!(e, KafkaError::Transaction(t) if t.is_retriable()) => Class::Retriable,
        _ if matches!(e, KafkaError::Transaction(t) if t.txn_requires_abort()) => Class::Abortable,
        Some(RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced) => Class::Fatal,
        // A transaction error with no class set: librdkafka says treat it as fatal.
        _ if matches!(e, KafkaError::Transaction(_)) => Class::Fatal,
        _ => Class::Abortable,
    }
}

/// Owns the instance's transactional producer.
#[derive(Clone)]
pub struct Dispatcher {
    producer: FutureProducer,
    timeout: Duration,
    metrics: Metrics,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Base client config shared by every client of the router.
pub fn base_client_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.bootstrap_servers);
    for (k, v) in &kafka.client {
        c.set(k, v);
    }
    c
}

impl Dispatcher {
    /// Creates the producer (no network yet).
    pub fn new(kafka: &KafkaConfig, metrics: Metrics) -> Result<Self, KafkaError> {
        let timeout_ms = kafka.transaction_timeout.as_millis().to_string();
        let producer: FutureProducer = base_client_config(kafka)
            .set("transactional.id", &kafka.transactional_id)
            .set("enable.idempotence", "true")
            .set("transaction.timeout.ms", &timeout_ms)
            // A delivery must resolve before the transaction times out.
            .set("message.timeout.ms", &timeout_ms)
            .set("linger.ms", "5")
            // librdkafka waits retry.backoff.ms after CONCURRENT_TRANSACTIONS,
            // which the broker answers right after each commit; the 100 ms
            // default would stall back-to-back commits.
            .set("retry.backoff.ms", "20")
            .create()?;
        Ok(Self {
            producer,
            // Every blocking transaction call gets this long before it is
            // classified; retriable errors are retried within it.
            timeout: kafka.transaction_timeout.min(Duration::from_secs(30)),
            metrics,
        })
    }

    /// Registers the transactional id with the broker, fencing any previous
    /// instance with the same id and aborting its open transaction. Retries
    /// (with backoff) while the broker is unreachable; only a fatal error ends it.
    ///
    /// `known_topic` (one the router writes to) is looked up twice first.
    /// The first lookup goes through the bootstrap connection, which
    /// librdkafka drops once it has learnt the brokers; the second connects
    /// a learnt broker, so one is up when the producer id is requested.
    /// Without that, about half of the recovery bench's restarts found no
    /// broker up and waited for librdkafka's 500 ms coordinator timer; with
    /// one lookup, most still did.
    pub async fn init(&self, known_topic: &str) -> Result<(), TxnError> {
        let mut backoff = Backoff::new();
        loop {
            let producer = self.producer.clone();
            let timeout = self.timeout;
            let topic = known_topic.to_string();
            let result = tokio::task::spawn_blocking(move || {
                // Best effort: init_transactions reports any real problem.
                for _ in 0..2 {
                    let _ = producer.client().fetch_metadata(Some(&topic), timeout);
                }
                producer.init_transactions(timeout)
            })
            .await
            .map_err(|e| join_failed("init_transactions", e))?;
            match result {
                Ok(()) => return Ok(()),
                Err(e) => match classify(&e) {
                    Class::Fatal => {
                        return Err(TxnError::Fatal {
                            operation: "init_transactions",
                            source: e,
                        })
                    }
                    Class::Retriable | Class::Abortable => {
                        self.metrics.retried("init_transactions", &e);
                        tokio::time::sleep(backoff.next()).await;
                    }
                },
            }
        }
    }

    /// Produces `records` and commits them with `offsets` (the next offsets to
    /// read, per input partition) in one transaction.
    pub async fn commit(
        &self,
        records: Vec<Outbound>,
        offsets: TopicPartitionList,
        group: ConsumerGroupMetadata,
    ) -> Result<Committed, TxnError> {
        let this = self.clone();
        let (took, deliveries) =
            tokio::task::spawn_blocking(move || this.commit_blocking(records, &offsets, &group))
                .await
                .map_err(|e| join_failed("commit", e))??;
        // The transaction committed, so every delivery has completed; these
        // awaits only collect the offsets the broker assigned.
        let mut last_offsets: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for (topic, delivery) in deliveries {
            if let Ok(Ok(d)) = delivery.await {
                let slot = last_offsets.entry((topic, d.partition)).or_insert(d.offset);
                *slot = (*slot).max(d.offset);
            }
        }
        Ok(Committed { took, last_offsets })
    }

    fn commit_blocking(
        &self,
        records: Vec<Outbound>,
        offsets: &TopicPartitionList,
        group: &ConsumerGroupMetadata,
    ) -> Result<(Duration, Vec<(String, DeliveryFuture)>), TxnError> {
        let started = Instant::now();
        self.step("begin_transaction", || self.producer.begin_transaction())?;
        let result = self.produce_and_commit(records, offsets, group);
        match result {
            Ok(deliveries) => Ok((started.elapsed(), deliveries)),
            Err(TxnError::Abortable { operation, source }) => {
                self.step("abort_transaction", || {
                    self.producer.abort_transaction(self.timeout)
                })?;
                Err(TxnError::Abortable { operation, source })
            }
            Err(fatal) => Err(fatal),
        }
    }

    fn produce_and_commit(
        &self,
        records: Vec<Outbound>,
        offsets: &TopicPartitionList,
        group: &ConsumerGroupMetadata,
    ) -> Result<Vec<(String, DeliveryFuture)>, TxnError> {
        let mut deliveries = Vec::with_capacity(records.len());
        for r in &records {
            let headers = OwnedHeaders::new().insert(Header {
                key: "content-type",
                value: Some(format!("application/avro; schema={}", r.schema).as_bytes()),
            });
            let mut record: FutureRecord<'_, Vec<u8>, Vec<u8>> =
                FutureRecord::to(&r.topic).headers(headers);
            if let Some(payload) = &r.payload {
                record = record.payload(payload);
            }
            if let Some(key) = &r.key {
                record = record.key(key);
            }
            if let Some(partition) = r.partition {
                record = record.partition(partition);
            }
            let deadline = Instant::now() + self.timeout;
            loop {
                match self.producer.send_result(record) {
                    // Delivery is confirmed by commit_transaction, which fails
                    // if any record of the transaction failed.
                    Ok(delivery) => {
                        deliveries.push((r.topic.clone(), delivery));
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                        if Instant::now() < deadline =>
                    {
                        record = back;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err((e, _)) => {
                        return Err(match classify(&e) {
                            Class::Fatal => TxnError::Fatal {
                                operation: "produce",
                                source: e,
                            },
                            _ => TxnError::Abortable {
                                operation: "produce",
                                source: e,
                            },
                        })
                    }
                }
            }
        }
        if offsets.count() > 0 {
            self.step("send_offsets_to_transaction", || {
                self.producer
                    .send_offsets_to_transaction(offsets, group, self.timeout)
            })?;
        }
        self.step("commit_transaction", || {
            self.producer.commit_transaction(self.timeout)
        })?;
        Ok(deliveries)
    }

    /// Runs one transaction call, retrying retriable errors with backoff
    /// until the transaction timeout, then classifying the error.
    fn step(
        &self,
        operation: &'static str,
        mut call: impl FnMut() -> Result<(), KafkaError>,
    ) -> Result<(), TxnError> {
        let deadline = Instant::now() + self.timeout;
        let mut backoff = Backoff::new();
        loop {
            match call() {
                Ok(()) => return Ok(()),
                Err(e) => match classify(&e) {
                    Class::Retriable if Instant::now() < deadline => {
                        self.metrics.retried(operation, &e);
                        std::thread::sleep(backoff.next());
                    }
                    Class::Fatal => {
                        return Err(TxnError::Fatal {
                            operation,
                            source: e,
                        })
                    }
                    _ => {
                        return Err(TxnError::Abortable {
                            operation,
                            source: e,
                        })
                    }
                },
            }
        }
    }
}

/// A transaction call that panicked or was cancelled on the blocking pool
/// leaves the producer in an unknown state: stop rather than guess.
fn join_failed(operation: &'static str, e: tokio::task::JoinError) -> TxnError {
    tracing::error!(operation, error = %e, "transaction call did not complete on the blocking pool");
    TxnError::Fatal {
        operation,
        source: KafkaError::Canceled,
    }
}

/// Exponential backoff from 50 ms to 10 s, with no jitter: one producer per
/// instance, so there is no herd to spread out.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(50);
    const MAX: Duration = Duration::from_secs(10);

    /// Starts at the first step.
    pub fn new() -> Self {
        Self { next: Self::FIRST }
    }

    /// The wait before the next attempt.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        now
    }

    /// Back to the first step after a success.
    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap_and_resets() {
        let mut b = Backoff::new();
        let steps: Vec<_> = (0..10).map(|_| b.next().as_millis()).collect();
        assert_eq!(&steps[..4], &[50, 100, 200, 400]);
        assert_eq!(*steps.last().expect("ten steps"), 10_000);
        b.reset();
        assert_eq!(b.next().as_millis(), 50);
    }

    #[test]
    fn non_transaction_errors_abort_rather_than_stop() {
        let e = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        assert!(matches!(classify(&e), Class::Abortable));
        let fenced = KafkaError::MessageProduction(RDKafkaErrorCode::ProducerFenced);
        assert!(matches!(classify(&fenced), Class::Fatal));
    }
}
