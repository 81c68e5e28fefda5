//! The run loop of one router instance.
//!
//! # Commit invariant
//!
//! Every `commit_interval`, one Kafka transaction carries everything staged
//! since the previous commit: job packets, dead letters, the dedup changelog
//! records of every state change, and, for each input partition, the offset a
//! restart must read from: the lowest offset still held in an open site
//! batch, or the next offset to read when none is open. The committed offset
//! never passes an order that has not been dispatched, and every dispatched
//! order's dedup entry is committed with the packet that carries it.
//!
//! Local RocksDB state is written only after the transaction commits, in one
//! write batch with the changelog offsets it reflects (`state::dedup`). After
//! a crash the open batches are rebuilt by re-reading from the committed
//! offsets; orders already dispatched are found in the dedup store (restored
//! from its changelog when the local copy is behind) and dropped, and
//! records already dead-lettered are found there by their input coordinates.
//!
//! # Failure handling
//!
//! A bad record is dead-lettered and the loop goes on. An abortable
//! transaction error drops the staged output, the staged state changes and
//! the open batches, rewinds every partition to its committed offset and
//! retries after a backoff (a broker outage is ridden out this way). A fatal
//! error (fenced producer) or a local state failure ends the loop with the
//! error.
//!
//! # Rebalances
//!
//! A revoked partition is handed over only after its open batches are
//! closed (`REVOKED`) and everything pending is committed: the consumer
//! context defers the cooperative unassign until the loop has done that, so
//! the next owner, held back by the group until then, starts from this
//! commit. A lost partition (the group already moved it) cannot be
//! committed for: the uncommitted work of every partition is dropped and the
//! partitions kept, if any, are rewound. An assigned partition's dedup state
//! is restored from the changelog before any of its records is routed, and
//! only once no transaction of a previous owner (a paused instance, say) can
//! still commit for it (see `Loop::restore`).

mod context;
mod roster_tail;
mod task;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};

use self::context::{RebalanceEvent, RouterContext};
pub use self::roster_tail::{RosterTail, SharedRoster};
use self::task::PartitionTask;
use crate::codec::{Codec, CodecError};
use crate::config::RouterConfig;
use crate::dead_letter::{self, SourceRecord};
use crate::dispatch::{base_client_config, Backoff, Dispatcher, Outbound, TxnError};
use crate::intake::{self, ValidOrder};
use crate::model::{CloseReason, DedupEntry, Destination, SCHEMA_VERSION};
use crate::routing::{self, DispatchHistory, Packet, RoutingConfig};
use crate::state::{
    DedupStore, DedupTtl, Lookup, RestoreOptions, RosterStore, StateError, StateStore,
};
use crate::telemetry::{now_millis, Metrics};
use crate::topology::Topology;
use crate::window::ClosedBatch;

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
    /// Local state failed; a restart restores it from the changelog.
    #[error("local state: {0}")]
    State(Box<StateError>),
    /// The consumer failed fatally.
    #[error("input consumer failed fatally: {0}; is another instance running with the same kafka.transactional_id (used as group.instance.id)?")]
    Consumer(#[source] KafkaError),
    /// Revoked partitions could not be given back to the group.
    #[error("cannot hand revoked partitions back to the consumer group: {0}")]
    Rebalance(#[source] KafkaError),
    /// A background thread could not be started.
    #[error("cannot start a thread: {0}")]
    Thread(#[source] std::io::Error),
    /// A packet did not fit its own schema: a bug, stop rather than lose it.
    #[error("cannot encode an outgoing record: {0}")]
    Encode(#[from] CodecError),
}

impl From<StateError> for RouterError {
    fn from(e: StateError) -> Self {
        // Boxed: state errors carry paths and keys, and every fallible
        // step of the loop returns this type.
        Self::State(Box::new(e))
    }
}

/// Liveness and readiness, shared with the HTTP endpoint.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
}

impl Health {
    /// Whether the instance has initialised its producer, caught up with the
    /// roster, and restored the state of the partitions it was assigned.
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

/// What the loop reads besides the config: loaded and validated at start.
#[derive(Debug, Clone)]
pub struct Parts {
    /// Topics and trade map.
    pub topology: Arc<Topology>,
    /// Weights and thresholds of the routing matrix.
    pub routing: Arc<RoutingConfig>,
    /// Avro schemas.
    pub codec: Arc<Codec>,
}

/// Output staged for the next transaction.
#[derive(Debug, Default)]
struct Staged {
    records: Vec<Outbound>,
    /// (trade, destination, orders, close reason, opened_at) per packet, for metrics.
    packets: Vec<(String, Destination, usize, CloseReason, i64)>,
}

/// Key prefix of the dedup entries of dead-lettered records, which have no
/// trustworthy order id: they are remembered by input offset instead. The
/// unit separator cannot start an upstream order id in any CMMS we know.
const DEAD_LETTER_KEY: &str = "\u{1f}dead-letter@";

/// Tombstones per partition per sweep, so one sweep cannot stall the loop.
const EXPIRY_SWEEP_LIMIT: usize = 10_000;

/// Runs the router until `shutdown` resolves (then it flushes, commits and
/// leaves the group) or a fatal error occurs.
#[tracing::instrument(
    name = "router",
    skip_all,
    fields(
        input = %parts.topology.input.name,
        group = %config.kafka.group_id,
        transactional_id = %config.kafka.transactional_id,
    )
)]
pub async fn run(
    config: RouterConfig,
    parts: Parts,
    metrics: Metrics,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()>,
) -> Result<RunSummary, RouterError> {
    let client = base_client_config(&config.kafka);
    let store = Arc::new(StateStore::open(&config.state.dir)?);
    let dedup = DedupStore::new(store.clone());
    let roster = SharedRoster::new(RosterStore::open(store.clone(), parts.codec.clone())?);

    let dispatcher = Dispatcher::new(&config.kafka, metrics.clone()).map_err(RouterError::Setup)?;
    // Initialise before reading anything, so a predecessor with our
    // transactional id is fenced and its open transaction aborted: the
    // changelog and input we read next hold no dangling writes of it.
    dispatcher.init(&parts.topology.dead_letter.name).await?;
    tracing::info!("transactional producer initialised");

    {
        let (roster, client, topic, metrics) = (
            roster.clone(),
            client.clone(),
            parts.topology.roster.name.clone(),
            metrics.clone(),
        );
        tokio::task::spawn_blocking(move || roster.catch_up(&client, &topic, &metrics))
            .await
            .map_err(|e| RouterError::Thread(std::io::Error::other(e)))??;
    }
    let tail = RosterTail::start(
        roster.clone(),
        client.clone(),
        parts.topology.roster.name.clone(),
        metrics.clone(),
    )?;

    let (events_tx, events) = mpsc::channel();
    let closing = Arc::new(AtomicBool::new(false));
    let context = RouterContext {
        topic: parts.topology.input.name.clone(),
        events: events_tx,
        metrics: metrics.clone(),
        closing: closing.clone(),
    };
    let mut consumer_config = client.clone();
    // Static membership: a restarted instance (same transactional id) takes
    // its partitions back at once instead of waiting for the group to
    // notice the old member is gone; a member that stays away loses them
    // after the session timeout, which defaults lower than Kafka's 45 s so
    // a survivor takes over quickly.
    if consumer_config.get("session.timeout.ms").is_none() {
        consumer_config.set("session.timeout.ms", "10000");
    }
    // librdkafka keeps one fetch in flight per broker. A partition that
    // becomes fetchable while an empty fetch waits on the broker (right
    // after an assignment, a rewind or a restart) is not fetched before
    // that wait ends: 500 ms by default, which the recovery bench showed
    // as half a second between restore and the first record. Waiting
    // shorter only costs idle fetch requests.
    if consumer_config.get("fetch.wait.max.ms").is_none() {
        consumer_config.set("fetch.wait.max.ms", "100");
    }
    let consumer: Input = consumer_config
        .set("group.id", &config.kafka.group_id)
        .set("group.instance.id", &config.kafka.transactional_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("statistics.interval.ms", "5000")
        .create_with_context(context)
        .map(Arc::new)
        .map_err(RouterError::Setup)?;
    consumer
        .subscribe(&[&parts.topology.input.name])
        .map_err(RouterError::Setup)?;
    // Declared after the consumer, so dropped before it: however this
    // future ends (returned or cancelled), the consumer's close, which
    // waits for its revocations, finds them applied by the callback.
    let _closing_on_drop = CloseOnDrop(closing.clone());

    let ttl = DedupTtl::new(config.state.dedup_max_ttl)?;
    let mut state = Loop {
        last_sweep: Instant::now(),
        config,
        parts,
        client,
        metrics,
        health,
        dispatcher,
        dedup,
        ttl,
        roster,
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

    let result = async {
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                message = consumer.recv() => state.on_message(&consumer, message).await?,
                _ = tick.tick() => state.on_tick(&consumer).await?,
            }
            state.on_rebalance(&consumer).await?;
        }
        tracing::info!("shutting down: closing open batches and committing");
        state.health.set_ready(false);
        state.close_all(CloseReason::Shutdown)?;
        if let Err(e) = state.commit(&consumer).await {
            tracing::warn!(error = %e, "final commit failed; uncommitted input will be read again on restart");
        }
        Ok::<_, RouterError>(())
    }
    .await;
    // From here on nobody handles rebalance events: revocations during the
    // unsubscribe and close must be applied by the callback itself.
    closing.store(true, Ordering::SeqCst);
    consumer.unsubscribe();
    tail.stop();
    result.map(|()| state.summary)
}

/// The input consumer, shared with blocking calls on the blocking pool.
type Input = Arc<StreamConsumer<RouterContext>>;

/// Sets the consumer context's `closing` flag when dropped.
struct CloseOnDrop(Arc<AtomicBool>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Whether `partition` of `topic` is in the consumer's current assignment.
fn is_assigned(consumer: &Input, topic: &str, partition: i32) -> bool {
    consumer
        .assignment()
        .map(|a| a.find_partition(topic, partition).is_some())
        .unwrap_or(false)
}

struct Loop {
    config: RouterConfig,
    parts: Parts,
    client: ClientConfig,
    metrics: Metrics,
    health: Arc<Health>,
    dispatcher: Dispatcher,
    dedup: DedupStore,
    ttl: DedupTtl,
    roster: SharedRoster,
    events: mpsc::Receiver<RebalanceEvent>,
    tasks: BTreeMap<i32, PartitionTask>,
    staged: Staged,
    last_commit: Instant,
    last_sweep: Instant,
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

    async fn on_message(
        &mut self,
        consumer: &Input,
        message: Result<BorrowedMessage<'_>, KafkaError>,
    ) -> Result<(), RouterError> {
        let message = match message {
            Ok(m) => m,
            // librdkafka gives up on the consumer (e.g. another live member
            // uses our static group.instance.id): nothing to retry.
            Err(e @ KafkaError::MessageConsumptionFatal(_)) => {
                return Err(RouterError::Consumer(e))
            }
            Err(e) => {
                // Consumer errors (broker down, transport) are recovered by
                // librdkafka itself; count them and go on.
                self.metrics.retried("consume", &e);
                return Ok(());
            }
        };
        if self.dedup.owned().any(|p| p == message.partition()) {
            return self.process(&message);
        }
        if !is_assigned(consumer, message.topic(), message.partition()) {
            // Fetched before the partition was handed over; its next owner
            // reads it from the committed offset.
            return Ok(());
        }
        // A record of a partition whose state is not restored yet (its
        // assignment event is still queued): restore first. The borrowed
        // message cannot be held across the restore, so it is copied.
        let owned: OwnedMessage = message.detach();
        self.restore(consumer, &[owned.partition()]).await?;
        self.process(&owned)
    }

    fn process(&mut self, message: &impl Message) -> Result<(), RouterError> {
        self.metrics.record_consumed();
        let partition = message.partition();
        let offset = message.offset();
        let task = match self.tasks.entry(partition) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => e.insert(PartitionTask::new(
                self.config.window,
                offset,
                DispatchHistory::new(&self.parts.routing),
            )),
        };
        task.next_offset = offset + 1;
        if task.done_above_committed.contains(&offset) {
            self.metrics.record_skipped(partition, offset);
            return Ok(());
        }
        let now = Instant::now();
        let now_ms = now_millis();
        match intake::accept(&self.parts.codec, &self.parts.topology, message.payload()) {
            Ok(order) => {
                let id = order.order().order_id.clone();
                if task.held_ids.contains(&id) {
                    self.metrics.duplicate(partition, &id, "held");
                    return Ok(());
                }
                if let Lookup::Seen(_) = self.dedup.check(partition, &id, now_ms)? {
                    self.metrics.duplicate(partition, &id, "dispatched");
                    return Ok(());
                }
                self.metrics.order_accepted();
                if routing::takes_fast_lane(
                    order.order(),
                    order.site(),
                    &self.parts.topology,
                    &self.roster,
                    &self.parts.routing,
                    now_ms,
                ) {
                    self.metrics
                        .batch_closed(CloseReason::FastLane, order.site(), partition, 1);
                    task.staged.push(offset);
                    let packet = routing::route_one(
                        order,
                        partition,
                        offset,
                        &self.parts.topology,
                        &self.roster,
                        &mut task.history,
                        &self.parts.routing,
                        now_ms,
                    );
                    return self.stage_packets(partition, vec![packet], now_ms);
                }
                let site = order.site().to_string();
                task.held_ids.insert(id);
                if let Some(closed) = task.windows.add(&site, offset, order, now, now_ms) {
                    self.stage_batch(partition, closed)?;
                }
            }
            Err(rejection) => self.stage_dead_letter(message, rejection, now_ms)?,
        }
        Ok(())
    }

    fn stage_dead_letter(
        &mut self,
        message: &impl Message,
        rejection: intake::Rejection,
        now_ms: i64,
    ) -> Result<(), RouterError> {
        let (partition, offset) = (message.partition(), message.offset());
        let key = format!("{DEAD_LETTER_KEY}{offset}");
        if let Lookup::Seen(_) = self.dedup.check(partition, &key, now_ms)? {
            // Dead-lettered before a crash, in a transaction that committed.
            self.metrics.record_skipped(partition, offset);
            return Ok(());
        }
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
            topic: self.parts.topology.dead_letter.name.clone(),
            partition: None,
            key: message.key().map(<[u8]>::to_vec),
            payload: Some(self.parts.codec.encode_dead_letter(&letter)?),
            schema: "cmms.DeadLetter",
        });
        // Only needed until the committed offset passes this record, but a
        // full TTL costs one small entry per bad record and needs no bookkeeping.
        self.dedup.stage_put(DedupEntry {
            schema_version: SCHEMA_VERSION,
            order_id: key,
            input_partition: partition,
            first_seen_at: now_ms,
            expires_at: now_ms + self.ttl.max().as_millis() as i64,
            batch_id: None,
        })?;
        if let Some(task) = self.tasks.get_mut(&partition) {
            task.staged.push(offset);
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
        let now_ms = now_millis();
        let Some(task) = self.tasks.get_mut(&partition) else {
            return Ok(());
        };
        for held in &closed.items {
            task.held_ids.remove(&held.item.order().order_id);
            task.staged.push(held.offset);
        }
        let packets = routing::route_batch(
            closed,
            partition,
            &self.parts.topology,
            &self.roster,
            &mut task.history,
            &self.parts.routing,
            now_ms,
        );
        self.stage_packets(partition, packets, now_ms)
    }

    /// Stages packets and the dedup entries of their orders.
    fn stage_packets(
        &mut self,
        partition: i32,
        packets: Vec<Packet>,
        now_ms: i64,
    ) -> Result<(), RouterError> {
        for packet in packets {
            let b = &packet.batch;
            for routed in &b.orders {
                let entry =
                    self.ttl
                        .entry(&routed.order, partition, now_ms, Some(b.batch_id.clone()));
                self.dedup.stage_put(entry)?;
            }
            self.staged.packets.push((
                b.trade.clone(),
                b.destination,
                b.orders.len(),
                b.close_reason,
                b.opened_at,
            ));
            self.staged.records.push(Outbound {
                topic: packet.topic,
                partition: None,
                key: Some(b.site_id.as_bytes().to_vec()),
                payload: Some(self.parts.codec.encode_dispatch(b)?),
                schema: "cmms.DispatchBatch",
            });
        }
        Ok(())
    }

    async fn on_tick(&mut self, consumer: &Input) -> Result<(), RouterError> {
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
        if now.duration_since(self.last_sweep) >= self.config.state.expiry_interval {
            self.last_sweep = now;
            self.sweep_expired(now_ms)?;
        }
        if now.duration_since(self.last_commit) >= self.config.commit_interval {
            self.commit(consumer).await?;
        }
        Ok(())
    }

    /// Stages tombstones for expired dedup entries of every owned partition.
    fn sweep_expired(&mut self, now_ms: i64) -> Result<(), RouterError> {
        let owned: Vec<i32> = self.dedup.owned().collect();
        for partition in owned {
            let expired = self.dedup.expire(partition, now_ms, EXPIRY_SWEEP_LIMIT)?;
            self.metrics
                .dedup_expired(partition, expired.order_ids.len());
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

    /// Commits the staged output, the dedup changelog and the offsets in one
    /// transaction, then applies the dedup changes locally; on an abortable
    /// error, rewinds. Only fatal errors are returned.
    async fn commit(&mut self, consumer: &Input) -> Result<(), RouterError> {
        self.last_commit = Instant::now();
        let input = self.parts.topology.input.name.clone();
        let mut offsets = TopicPartitionList::new();
        let mut targets = Vec::new();
        for (&partition, task) in &self.tasks {
            let target = task.commit_target();
            // A partition whose changelog is written carries its offset even
            // when it has not moved (expiry tombstones alone): the group then
            // checks that this instance still owns it, so a paused instance
            // cannot commit changelog records after it lost the partition.
            if target != task.committed
                || !task.staged.is_empty()
                || self.dedup.staged().touches(partition)
            {
                offsets
                    .add_partition_offset(&input, partition, Offset::Offset(target))
                    .map_err(RouterError::Setup)?;
                targets.push((partition, target));
            }
        }
        if self.staged.records.is_empty() && targets.is_empty() && self.dedup.staged().is_empty() {
            return Ok(());
        }
        let Some(group) = consumer.group_metadata() else {
            // Only possible before the consumer joined; nothing to commit then.
            return Ok(());
        };
        let changelog = self.parts.topology.dedup_changelog.name.clone();
        let mut records = std::mem::take(&mut self.staged.records);
        let pending = self.dedup.begin_commit()?;
        for write in pending.changelog() {
            records.push(Outbound {
                topic: changelog.clone(),
                partition: Some(write.partition),
                key: Some(write.order_id.as_bytes().to_vec()),
                payload: write
                    .entry
                    .map(|e| self.parts.codec.encode_dedup_entry(e))
                    .transpose()?,
                schema: "cmms.DedupEntry",
            });
        }
        let record_count = records.len();
        match self.dispatcher.commit(records, offsets, group).await {
            Ok(committed) => {
                let changelog_offsets: BTreeMap<i32, i64> = committed
                    .last_offsets
                    .iter()
                    .filter(|((topic, _), _)| *topic == changelog)
                    .map(|((_, p), o)| (*p, *o))
                    .collect();
                // The transaction is committed: local state must follow or
                // the process must stop (a restart restores from the changelog).
                pending.apply_committed(&changelog_offsets)?;
                for (partition, target) in targets {
                    if let Some(task) = self.tasks.get_mut(&partition) {
                        task.committed_to(target);
                    }
                }
                let packets = std::mem::take(&mut self.staged.packets);
                self.metrics
                    .transaction_committed(committed.took, record_count, &packets);
                self.summary.commits += 1;
                if self.summary.commits == 1 {
                    // A startup milestone: from here on the instance routes.
                    tracing::info!(
                        records = record_count,
                        took_ms = committed.took.as_millis() as u64,
                        "first transaction committed"
                    );
                }
                self.backoff.reset();
                Ok(())
            }
            Err(e @ TxnError::Abortable { .. }) => {
                pending.discard_staged();
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
    fn rewind(&mut self, consumer: &Input) -> Result<(), RouterError> {
        self.staged = Staged::default();
        self.dedup.discard_staged();
        let input = &self.parts.topology.input.name;
        let mut gone = Vec::new();
        for (&partition, task) in &mut self.tasks {
            task.discard_uncommitted();
            let mut attempts = 0;
            while let Err(e) = consumer.seek(
                input,
                partition,
                Offset::Offset(task.committed),
                Duration::from_secs(10),
            ) {
                if consumer.assignment_lost() || !is_assigned(consumer, input, partition) {
                    // The group took the partition away meanwhile (this
                    // instance was paused past its session timeout, say);
                    // its revocation event follows. Nothing of it may be
                    // committed any more, so it is forgotten now.
                    gone.push(partition);
                    break;
                }
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
        if !gone.is_empty() {
            tracing::warn!(partitions = ?gone, "partitions lost while rewinding; dropped");
        }
        for partition in gone {
            self.tasks.remove(&partition);
            self.dedup.release(partition);
        }
        Ok(())
    }

    /// Restores the dedup state of `partitions` from the changelog (blocking
    /// work on the blocking pool, one consumer for all of them) and takes
    /// ownership of them.
    ///
    /// First it waits until the committed input offsets of the partitions
    /// are stable: a read_committed consumer's offset fetch is answered only
    /// once no open transaction holds offsets for them. A previous owner
    /// that was paused (a zombie) may still finish a transaction whose
    /// offsets the group accepted before it lost the partitions, and whose
    /// changelog records had not reached the broker yet; restoring before
    /// that transaction ends would miss its dedup entries, and its orders
    /// would be routed again. Every transaction that writes dedup entries of
    /// a partition also carries that partition's input offset, so once the
    /// offsets are stable its changelog is final.
    async fn restore(&mut self, consumer: &Input, partitions: &[i32]) -> Result<(), RouterError> {
        let todo: Vec<i32> = partitions
            .iter()
            .copied()
            .filter(|p| !self.dedup.owned().any(|o| o == *p))
            .collect();
        if todo.is_empty() {
            return Ok(());
        }
        self.await_stable_offsets(consumer, &todo).await?;
        let store = self.dedup.state_store().clone();
        let (codec, client, topic, metrics) = (
            self.parts.codec.clone(),
            self.client.clone(),
            self.parts.topology.dedup_changelog.name.clone(),
            self.metrics.clone(),
        );
        let started = Instant::now();
        let restored = tokio::task::spawn_blocking(move || {
            crate::state::restore_dedup(
                &store,
                &codec,
                &client,
                &topic,
                &todo,
                &RestoreOptions::default(),
                &mut |p| {
                    metrics.restore_progress("dedup", p.records, p.remaining_offsets);
                },
            )
        })
        .await
        .map_err(|e| RouterError::Thread(std::io::Error::other(e)))??;
        let records = restored.iter().map(|r| r.stats().records).sum();
        self.metrics.restored("dedup", records, started.elapsed());
        for partition in restored {
            self.dedup.adopt(partition);
        }
        Ok(())
    }

    /// Waits (with backoff, however long it takes) until the committed
    /// offsets of input `partitions` are stable; see [`Loop::restore`].
    async fn await_stable_offsets(
        &mut self,
        consumer: &Input,
        partitions: &[i32],
    ) -> Result<(), RouterError> {
        let mut tpl = TopicPartitionList::new();
        for &p in partitions {
            tpl.add_partition(&self.parts.topology.input.name, p);
        }
        let mut backoff = Backoff::new();
        loop {
            let (consumer, tpl) = (consumer.clone(), tpl.clone());
            let fetched = tokio::task::spawn_blocking(move || {
                consumer.committed_offsets(tpl, Duration::from_secs(10))
            })
            .await
            .map_err(|e| RouterError::Thread(std::io::Error::other(e)))?;
            match fetched {
                Ok(_) => return Ok(()),
                // Usually an open transaction of the previous owner, which
                // ends by commit, abort or its transaction timeout.
                Err(e) => {
                    self.metrics.retried("fetch_stable_offsets", &e);
                    tokio::time::sleep(backoff.next()).await;
                }
            }
        }
    }

    async fn on_rebalance(&mut self, consumer: &Input) -> Result<(), RouterError> {
        while let Ok(event) = self.events.try_recv() {
            match event {
                RebalanceEvent::Revoked {
                    partitions,
                    handover,
                } => {
                    self.revoke(consumer, &partitions, handover).await?;
                    if handover {
                        consumer
                            .context()
                            .finish_revoke(consumer.as_ref(), &partitions)
                            .map_err(RouterError::Rebalance)?;
                    }
                }
                RebalanceEvent::Assigned(partitions) => {
                    tracing::info!(?partitions, "partitions assigned; restoring their state");
                    self.health.set_ready(false);
                    self.restore(consumer, &partitions).await?;
                    self.health.set_ready(true);
                }
            }
            let assigned = consumer.assignment().map(|a| a.count()).unwrap_or(0);
            self.metrics.assigned(assigned);
        }
        Ok(())
    }

    /// Gives revoked partitions up. In a `handover` they are still ours:
    /// their open batches are closed and everything pending is committed, so
    /// the next owner starts exactly where this instance stopped. Otherwise
    /// they may belong to someone else already: the uncommitted work is
    /// dropped instead, and the partitions kept are rewound to their
    /// committed offsets.
    async fn revoke(
        &mut self,
        consumer: &Input,
        partitions: &[i32],
        handover: bool,
    ) -> Result<(), RouterError> {
        let mut outcome = "dropped";
        if handover {
            tracing::info!(
                ?partitions,
                "partitions revoked; committing their pending work"
            );
            let now_ms = now_millis();
            let mut closed = Vec::new();
            for &p in partitions {
                if let Some(task) = self.tasks.get_mut(&p) {
                    closed.extend(
                        task.windows
                            .close_all(CloseReason::Revoked, now_ms)
                            .into_iter()
                            .map(|b| (p, b)),
                    );
                }
            }
            for (p, batch) in closed {
                self.stage_batch(p, batch)?;
            }
            let aborts = self.summary.aborts;
            self.commit(consumer).await?;
            // An aborted commit has rewound every partition: the next owner
            // re-reads the revoked ones from their committed offsets.
            outcome = if self.summary.aborts == aborts {
                "committed"
            } else {
                "aborted"
            };
        } else {
            tracing::warn!(
                ?partitions,
                "partitions gone without a handover (lost to the group); dropping uncommitted work"
            );
        }
        for &p in partitions {
            self.tasks.remove(&p);
            self.dedup.release(p);
        }
        if !handover && self.has_uncommitted() {
            // What is staged may include the lost partitions' work, which
            // must not be committed now; drop it all and re-read the rest.
            // (librdkafka declares the whole assignment lost at once, so in
            // practice nothing is kept that would be re-read.)
            self.metrics
                .transaction_aborted("rebalance", &"partitions gone without a handover");
            self.rewind(consumer)?;
        }
        self.metrics.revoked(outcome, partitions.len());
        Ok(())
    }

    fn has_uncommitted(&self) -> bool {
        !self.staged.records.is_empty()
            || !self.dedup.staged().is_empty()
            || self
                .tasks
                .values()
                .any(|t| t.windows.held_items() > 0 || !t.staged.is_empty())
    }
}
