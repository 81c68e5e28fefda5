//! The run loop of one router instance.
//!
//! # Commit invariant
//!
//! Every `commit_interval`, one Kafka transaction carries everything staged
//! since the previous commit (job packets and dead letters) together with,
//! for each input partition, the offset a restart must read from: the lowest
//! offset still held in an open site batch, or the next offset to read when
//! none is open. The committed offset therefore never passes an order that
//! has not been dispatched, and every dispatched order's offset is covered by
//! the same transaction that dispatched it.
//!
//! Orders above the committed offset may already have been dispatched (a
//! batch of another site closed first). Within this process they are
//! remembered per partition, so a rewind after an aborted transaction skips
//! them instead of dispatching them twice. Across a crash that memory is
//! gone: re-read orders are caught by the changelogged dedup store, which is
//! not part of this loop yet (tracked by the exactly-once state issue); until
//! then a crash can duplicate orders that were above the committed offset.
//!
//! # Failure handling
//!
//! A bad record is dead-lettered and the loop goes on. An abortable
//! transaction error drops the staged output and the open batches, rewinds
//! every partition to its committed offset and retries after a backoff (a
//! broker outage is ridden out this way). A fatal error (fenced producer)
//! ends the loop with the error. A partition revocation is treated like an
//! abort: the new owner re-reads from the committed offsets.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tracing::Instrument;

use crate::codec::{Codec, CodecError};
use crate::config::RouterConfig;
use crate::dead_letter::{self, SourceRecord};
use crate::dispatch::{base_client_config, Backoff, Dispatcher, Outbound, TxnError};
use crate::intake::{self, ValidOrder};
use crate::model::{CloseReason, Destination};
use crate::routing;
use crate::telemetry::{now_millis, Metrics};
use crate::topology::Topology;
use crate::window::{ClosedBatch, SiteWindows};

/// Why the loop stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// A Kafka client could not be created or subscribed.
    #[error("kafka client setup failed: {0}")]
    Setup(#[source] KafkaError),
    /// The transactional producer cannot continue.
    #[error(transparent)]
    Fatal(#[from] TxnError),
    /// The consumer could not be rewound after an abort.
    #[error("cannot rewind partition {partition} to committed offset {offset}: {source}")]
    Seek {
        /// Input partition.
        partition: i32,
        /// Committed offset.
        offset: i64,
        /// The client error.
        source: KafkaError,
    },
    /// A packet did not fit its own schema: a bug, stop rather than lose it.
    #[error("cannot encode an outgoing record: {0}")]
    Encode(#[from] CodecError),
}

/// Liveness and readiness, shared with the HTTP endpoint.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
}

impl Health {
    /// Whether the instance has initialised its producer and joined its group.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
}

/// What a finished run did, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RunSummary {
    /// Transactions committed.
    pub commits: u64,
    /// Transactions aborted.
    pub aborts: u64,
}

enum RebalanceEvent {
    Revoked(Vec<i32>),
    Assigned(Vec<i32>),
}

/// Forwards rebalance events and statistics from librdkafka's threads to the loop.
struct RouterContext {
    topic: String,
    events: mpsc::Sender<RebalanceEvent>,
    metrics: Metrics,
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

/// State of one assigned input partition.
#[derive(Debug)]
struct PartitionTask {
    windows: SiteWindows<ValidOrder>,
    /// Offset this task's consumption started from: the committed offset of
    /// the group, or the first offset seen. A rewind seeks here.
    committed: i64,
    /// Next offset to read (last seen + 1).
    next_offset: i64,
    /// Offsets at or above `committed` whose effect is already committed.
    done_above_committed: BTreeSet<i64>,
    /// Offsets whose effect is staged in the open transaction.
    staged: Vec<i64>,
}

impl PartitionTask {
    fn new(config: &RouterConfig, first_offset: i64) -> Self {
        Self {
            windows: SiteWindows::new(config.window),
            committed: first_offset,
            next_offset: first_offset,
            done_above_committed: BTreeSet::new(),
            staged: Vec::new(),
        }
    }

    /// The offset to commit now: nothing below it is held or unread.
    fn commit_target(&self) -> i64 {
        self.windows
            .lowest_held_offset()
            .map_or(self.next_offset, |held| held.min(self.next_offset))
    }
}

/// Output staged for the next transaction.
#[derive(Debug, Default)]
struct Staged {
    records: Vec<Outbound>,
    /// (trade, destination, orders, close reason, opened_at) per packet, for metrics.
    packets: Vec<(String, Destination, usize, CloseReason, i64)>,
}

/// Runs the router until `shutdown` resolves (then it flushes, commits and
/// leaves the group) or a fatal error occurs.
pub async fn run(
    config: RouterConfig,
    topology: Arc<Topology>,
    codec: Arc<Codec>,
    metrics: Metrics,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()>,
) -> Result<RunSummary, RouterError> {
    let span = tracing::info_span!(
        "router",
        input = %topology.input.name,
        group = %config.kafka.group_id,
        transactional_id = %config.kafka.transactional_id,
    );
    run_inner(config, topology, codec, metrics, health, shutdown)
        .instrument(span)
        .await
}

async fn run_inner(
    config: RouterConfig,
    topology: Arc<Topology>,
    codec: Arc<Codec>,
    metrics: Metrics,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()>,
) -> Result<RunSummary, RouterError> {
    let dispatcher = Dispatcher::new(&config.kafka, metrics.clone()).map_err(RouterError::Setup)?;
    // Initialise before consuming, so a predecessor's open transaction is
    // aborted (and it is fenced) before we read what it left.
    dispatcher.init().await?;
    tracing::info!("transactional producer initialised");

    let (events_tx, events) = mpsc::channel();
    let context = RouterContext {
        topic: topology.input.name.clone(),
        events: events_tx,
        metrics: metrics.clone(),
    };
    let consumer: StreamConsumer<RouterContext> = base_client_config(&config.kafka)
        .set("group.id", &config.kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("statistics.interval.ms", "5000")
        .create_with_context(context)
        .map_err(RouterError::Setup)?;
    consumer
        .subscribe(&[&topology.input.name])
        .map_err(RouterError::Setup)?;

    let mut state = Loop {
        config,
        topology,
        codec,
        metrics,
        health,
        dispatcher,
        events,
        tasks: BTreeMap::new(),
        staged: Staged::default(),
        last_commit: Instant::now(),
        backoff: Backoff::new(),
        summary: RunSummary::default(),
    };
    let mut tick = tokio::time::interval(state.tick_period());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);

    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            message = consumer.recv() => state.on_message(message)?,
            _ = tick.tick() => state.on_tick(&consumer).await?,
        }
        state.on_rebalance(&consumer)?;
    }

    tracing::info!("shutting down: closing open batches and committing");
    state.health.set_ready(false);
    state.close_all(CloseReason::Shutdown)?;
    if let Err(e) = state.commit(&consumer).await {
        tracing::warn!(error = %e, "final commit failed; uncommitted input will be read again on restart");
    }
    consumer.unsubscribe();
    Ok(state.summary)
}

struct Loop {
    config: RouterConfig,
    topology: Arc<Topology>,
    codec: Arc<Codec>,
    metrics: Metrics,
    health: Arc<Health>,
    dispatcher: Dispatcher,
    events: mpsc::Receiver<RebalanceEvent>,
    tasks: BTreeMap<i32, PartitionTask>,
    staged: Staged,
    last_commit: Instant,
    backoff: Backoff,
    summary: RunSummary,
}

impl Loop {
    fn tick_period(&self) -> Duration {
        // Often enough that neither commits nor time-closed batches lag
        // noticeably behind their schedule.
        (self.config.commit_interval / 4)
            .clamp(Duration::from_millis(5), Duration::from_millis(100))
    }

    fn on_message(
        &mut self,
        message: Result<BorrowedMessage<'_>, KafkaError>,
    ) -> Result<(), RouterError> {
        let message = match message {
            Ok(m) => m,
            Err(e) => {
                // Consumer errors (broker down, partition EOF notices) are
                // reported by librdkafka and recovered by it; count and go on.
                self.metrics.retried("consume", &e);
                return Ok(());
            }
        };
        self.metrics.record_consumed();
        let partition = message.partition();
        let offset = message.offset();
        let task = self
            .tasks
            .entry(partition)
            .or_insert_with(|| PartitionTask::new(&self.config, offset));
        task.next_offset = offset + 1;
        if task.done_above_committed.contains(&offset) {
            self.metrics.record_skipped(partition, offset);
            return Ok(());
        }
        let now = Instant::now();
        let now_ms = now_millis();
        match intake::accept(&self.codec, &self.topology, message.payload()) {
            Ok(order) => {
                self.metrics.order_accepted();
                let site = order.site().to_string();
                if let Some(closed) = task.windows.add(&site, offset, order, now, now_ms) {
                    self.stage_batch(partition, closed)?;
                }
            }
            Err(rejection) => {
                self.metrics
                    .dead_lettered(rejection.reason, partition, offset, &rejection.detail);
                let source = SourceRecord {
                    topic: message.topic(),
                    partition,
                    offset,
                    timestamp: message.timestamp().to_millis(),
                    key: message.key(),
                    value: message.payload(),
                };
                let letter = dead_letter::build(
                    rejection,
                    &source,
                    &self.config.kafka.transactional_id,
                    now_ms,
                );
                self.staged.records.push(Outbound {
                    topic: self.topology.dead_letter.name.clone(),
                    key: message.key().map(<[u8]>::to_vec),
                    payload: self.codec.encode_dead_letter(&letter)?,
                    schema: "cmms.DeadLetter",
                });
                task.staged.push(offset);
            }
        }
        Ok(())
    }

    fn stage_batch(
        &mut self,
        partition: i32,
        closed: ClosedBatch<ValidOrder>,
    ) -> Result<(), RouterError> {
        self.metrics
            .batch_closed(closed.reason, &closed.site, partition, closed.items.len());
        if let Some(task) = self.tasks.get_mut(&partition) {
            task.staged.extend(closed.items.iter().map(|h| h.offset));
        }
        for packet in routing::route_batch(closed, partition, &self.topology) {
            let b = &packet.batch;
            self.staged.packets.push((
                b.trade.clone(),
                b.destination,
                b.orders.len(),
                b.close_reason,
                b.opened_at,
            ));
            self.staged.records.push(Outbound {
                topic: packet.topic,
                key: Some(b.site_id.as_bytes().to_vec()),
                payload: self.codec.encode_dispatch(b)?,
                schema: "cmms.DispatchBatch",
            });
        }
        Ok(())
    }

    async fn on_tick(
        &mut self,
        consumer: &StreamConsumer<RouterContext>,
    ) -> Result<(), RouterError> {
        let now = Instant::now();
        let now_ms = now_millis();
        let mut expired = Vec::new();
        for (&partition, task) in &mut self.tasks {
            for closed in task.windows.close_expired(now, now_ms) {
                expired.push((partition, closed));
            }
        }
        for (partition, closed) in expired {
            self.stage_batch(partition, closed)?;
        }
        let (open, held) = self.tasks.values().fold((0, 0), |(o, h), t| {
            (o + t.windows.open_batches(), h + t.windows.held_items())
        });
        self.metrics.windows(open, held);
        if now.duration_since(self.last_commit) >= self.config.commit_interval {
            self.commit(consumer).await?;
        }
        Ok(())
    }

    fn close_all(&mut self, reason: CloseReason) -> Result<(), RouterError> {
        let now_ms = now_millis();
        let mut closed = Vec::new();
        for (&partition, task) in &mut self.tasks {
            closed.extend(
                task.windows
                    .close_all(reason, now_ms)
                    .into_iter()
                    .map(|b| (partition, b)),
            );
        }
        for (partition, batch) in closed {
            self.stage_batch(partition, batch)?;
        }
        Ok(())
    }

    /// Commits the staged output and the offsets; on an abortable error,
    /// rewinds. Only a fatal error is returned.
    async fn commit(
        &mut self,
        consumer: &StreamConsumer<RouterContext>,
    ) -> Result<(), RouterError> {
        self.last_commit = Instant::now();
        let mut offsets = TopicPartitionList::new();
        let mut targets = Vec::new();
        for (&partition, task) in &self.tasks {
            let target = task.commit_target();
            if target != task.committed || !task.staged.is_empty() {
                offsets
                    .add_partition_offset(
                        &self.topology.input.name,
                        partition,
                        Offset::Offset(target),
                    )
                    .map_err(RouterError::Setup)?;
                targets.push((partition, target));
            }
        }
        if self.staged.records.is_empty() && targets.is_empty() {
            return Ok(());
        }
        let Some(group) = consumer.group_metadata() else {
            // Only possible before the consumer joined; nothing to commit then.
            return Ok(());
        };
        let records = std::mem::take(&mut self.staged.records);
        let record_count = records.len();
        match self.dispatcher.commit(records, offsets, group).await {
            Ok(took) => {
                for (partition, target) in targets {
                    if let Some(task) = self.tasks.get_mut(&partition) {
                        task.committed = target;
                        let staged = std::mem::take(&mut task.staged);
                        task.done_above_committed
                            .extend(staged.into_iter().filter(|&o| o >= target));
                        task.done_above_committed = task.done_above_committed.split_off(&target);
                    }
                }
                let packets = std::mem::take(&mut self.staged.packets);
                self.metrics
                    .transaction_committed(took, record_count, &packets);
                self.summary.commits += 1;
                self.backoff.reset();
                Ok(())
            }
            Err(e @ TxnError::Abortable { .. }) => {
                self.metrics.transaction_aborted("abortable_error", &e);
                self.summary.aborts += 1;
                self.rewind(consumer)?;
                tokio::time::sleep(self.backoff.next()).await;
                Ok(())
            }
            Err(fatal) => Err(fatal.into()),
        }
    }

    /// Forgets everything uncommitted and seeks every partition back to its
    /// committed offset.
    fn rewind(&mut self, consumer: &StreamConsumer<RouterContext>) -> Result<(), RouterError> {
        self.staged = Staged::default();
        for (&partition, task) in &mut self.tasks {
            task.windows.discard();
            task.staged.clear();
            task.next_offset = task.committed;
            let mut attempts = 0;
            while let Err(e) = consumer.seek(
                &self.topology.input.name,
                partition,
                Offset::Offset(task.committed),
                Duration::from_secs(10),
            ) {
                attempts += 1;
                if attempts >= 3 {
                    // Going on without the seek would skip records and later
                    // commit past them; stopping lets a restart re-read from
                    // the committed offset instead.
                    return Err(RouterError::Seek {
                        partition,
                        offset: task.committed,
                        source: e,
                    });
                }
                self.metrics.retried("seek", &e);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    fn on_rebalance(
        &mut self,
        consumer: &StreamConsumer<RouterContext>,
    ) -> Result<(), RouterError> {
        while let Ok(event) = self.events.try_recv() {
            match event {
                RebalanceEvent::Revoked(partitions) => {
                    tracing::info!(?partitions, "partitions revoked");
                    // Whatever is staged may include the revoked partitions'
                    // work; the new owner re-reads it from the committed
                    // offsets, so drop it all and rewind the partitions we keep.
                    for p in &partitions {
                        self.tasks.remove(p);
                    }
                    if !self.staged.records.is_empty()
                        || self.tasks.values().any(|t| t.windows.held_items() > 0)
                    {
                        self.metrics
                            .transaction_aborted("rebalance", &"partitions revoked");
                        self.rewind(consumer)?;
                    }
                }
                RebalanceEvent::Assigned(partitions) => {
                    tracing::info!(?partitions, "partitions assigned");
                    self.health.set_ready(true);
                }
            }
            let assigned = consumer.assignment().map(|a| a.count()).unwrap_or(0);
            self.metrics.assigned(assigned);
        }
        Ok(())
    }
}
