//! Keeps the local roster current: a catch-up at start (blocking, before the
//! instance reports ready) and then a background thread that tails the
//! compacted roster topic and applies each record as it arrives.
//!
//! Every instance reads the whole roster topic (all partitions, read
//! committed) without a consumer group; where it resumes is the per-partition
//! offset stored with the roster in RocksDB, so a restart with current local
//! state reads only what changed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::model::TechnicianRoster;
use crate::routing::RosterView;
use crate::state::{ChangelogRecord, RestoreOptions, RosterChange, RosterStore, StateError};
use crate::telemetry::Metrics;

/// The roster shared between the tail thread (writer) and routing (readers).
#[derive(Debug, Clone)]
pub struct SharedRoster(Arc<RwLock<RosterStore>>);

impl SharedRoster {
    /// Wraps a loaded roster store.
    pub fn new(store: RosterStore) -> Self {
        Self(Arc::new(RwLock::new(store)))
    }

    /// Catches up with the topic (blocking).
    pub fn catch_up(
        &self,
        client: &ClientConfig,
        topic: &str,
        metrics: &Metrics,
    ) -> Result<(), StateError> {
        let mut store = self.0.write().unwrap_or_else(|p| p.into_inner());
        let stats = store.catch_up(client, topic, &RestoreOptions::default(), &mut |p| {
            metrics.restore_progress("roster", p.records, p.remaining_offsets);
        })?;
        metrics.restored("roster", stats.records, stats.elapsed);
        Ok(())
    }
}

impl RosterView for SharedRoster {
    fn technicians(&self, site: &str, trade: &str) -> Vec<TechnicianRoster> {
        // A poisoned lock means the tail thread panicked mid-update of the
        // in-memory index; the data is still the last consistent record set.
        let store = self.0.read().unwrap_or_else(|p| p.into_inner());
        store
            .roster()
            .listed(site, trade)
            .into_iter()
            .cloned()
            .collect()
    }
}

/// The running tail thread; dropping it does not stop it, [`RosterTail::stop`] does.
#[derive(Debug)]
pub struct RosterTail {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl RosterTail {
    /// Starts tailing `topic` from the store's next offsets.
    pub fn start(
        roster: SharedRoster,
        client: ClientConfig,
        topic: String,
        metrics: Metrics,
    ) -> Result<Self, super::RouterError> {
        let consumer: BaseConsumer = client
            .clone()
            .set("group.id", "cmms-router-roster-tail")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "earliest")
            .create()
            .map_err(|source| StateError::Kafka {
                topic: topic.clone(),
                operation: "create the roster tail consumer",
                source,
            })?;
        let next = roster
            .0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .next_offsets();
        let mut tpl = TopicPartitionList::new();
        let partitions = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .ok()
            .and_then(|m| {
                m.topics()
                    .first()
                    .map(|t| t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>())
            })
            .unwrap_or_default();
        for p in partitions {
            let offset = next
                .get(&p)
                .map_or(Offset::Beginning, |&o| Offset::Offset(o));
            tpl.add_partition_offset(&topic, p, offset)
                .map_err(|source| StateError::Kafka {
                    topic: topic.clone(),
                    operation: "assign the roster partitions",
                    source,
                })?;
        }
        consumer.assign(&tpl).map_err(|source| StateError::Kafka {
            topic: topic.clone(),
            operation: "assign the roster partitions",
            source,
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("roster-tail".into())
            .spawn(move || tail(consumer, roster, flag, metrics))
            .map_err(super::RouterError::Thread)?;
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn tail(consumer: BaseConsumer, roster: SharedRoster, stop: Arc<AtomicBool>, metrics: Metrics) {
    while !stop.load(Ordering::Relaxed) {
        let Some(result) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = match result {
            Ok(m) => m,
            Err(e) => {
                metrics.retried("roster_tail", &e);
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
        };
        let record = ChangelogRecord {
            offset: message.offset(),
            key: message.key(),
            value: message.payload(),
        };
        let mut store = roster.0.write().unwrap_or_else(|p| p.into_inner());
        match store.apply(message.partition(), record) {
            Ok(RosterChange::Updated(id)) => {
                tracing::debug!(technician = %id, "roster entry updated")
            }
            Ok(RosterChange::Removed(id)) => {
                tracing::debug!(technician = %id, "roster entry removed")
            }
            Ok(RosterChange::Rejected { key, reason }) => {
                tracing::warn!(key = %key, reason = %reason, "unusable roster record; technician removed")
            }
            Ok(RosterChange::AlreadyApplied) => {}
            Err(e) => {
                // The local roster can no longer follow the topic; routing
                // keeps the last good view and the error is loud.
                tracing::error!(error = %e, "cannot apply roster record; roster updates stopped");
                return;
            }
        }
    }
}
