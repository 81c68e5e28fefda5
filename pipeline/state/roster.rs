//! The technician roster: every technician of the compacted roster topic
//! (all of its partitions, on every instance), kept in RocksDB so a restart
//! does not re-read the topic, and indexed in memory for the lookup routing
//! needs: who is on shift at a site in a trade, and with which valid
//! certifications.
//!
//! Promise: after [`RosterStore::catch_up`] returns, the roster reflects
//! every committed record of the topic up to the end offsets taken at its
//! start; [`RosterStore::apply`] then moves it forward one record at a time
//! (the background tail). Each change is written to RocksDB together with
//! its topic offset before the in-memory index changes, so memory never runs
//! ahead of disk, and a record at or below the stored offset is skipped, so
//! replaying the tail is harmless.
//!
//! A null value removes the technician. A value that is not a
//! `cmms.TechnicianRoster` datum, or names another technician than its key,
//! removes the technician too, counted and logged: the roster is someone
//! else's data, one bad record must not stop the router, and routing work to
//! a technician whose current entry we cannot read is worse than not.
//!
//! Shared between the loop (lookups) and a tail (updates), the store needs a
//! lock around it, e.g. `RwLock<RosterStore>`: lookups take `&self`, updates
//! `&mut self`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;

use super::restore::{
    kafka, plan, read_to_end, restore_consumer, ChangelogRecord, Plan, RestoreOptions,
    RestoreProgress, RestoreStats, Span,
};
use super::store::{Family, MetaKey, StateError, StateStore};
use crate::codec::Codec;
use crate::model::TechnicianRoster;

/// The roster in memory, indexed by site and trade.
#[derive(Debug, Default, Clone)]
pub struct Roster {
    by_id: HashMap<String, TechnicianRoster>,
    /// site -> trade -> technician ids.
    by_site_trade: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
}

impl Roster {
    /// Number of technicians.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether the roster is empty.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// One technician by id.
    pub fn get(&self, technician_id: &str) -> Option<&TechnicianRoster> {
        self.by_id.get(technician_id)
    }

    /// Every technician, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &TechnicianRoster> + '_ {
        self.by_id.values()
    }

    /// Every technician listed at `site` in `trade`, whatever their shift,
    /// availability or certificates, by id. Who qualifies is decided in one
    /// place only, `routing::candidates`, which also needs the others to say
    /// why nobody does.
    pub fn listed(&self, site: &str, trade: &str) -> Vec<&TechnicianRoster> {
        self.by_site_trade
            .get(site)
            .and_then(|t| t.get(trade))
            .map(|ids| ids.iter().filter_map(|id| self.by_id.get(id)).collect())
            .unwrap_or_default()
    }

    fn upsert(&mut self, technician: TechnicianRoster) {
        self.remove(&technician.technician_id);
        for site in &technician.sites {
            for trade in &technician.trades {
                self.by_site_trade
                    .entry(site.clone())
                    .or_default()
                    .entry(trade.clone())
                    .or_default()
                    .insert(technician.technician_id.clone());
            }
        }
        self.by_id
            .insert(technician.technician_id.clone(), technician);
    }

    fn remove(&mut self, technician_id: &str) {
        let Some(old) = self.by_id.remove(technician_id) else {
            return;
        };
        for site in &old.sites {
            let Some(trades) = self.by_site_trade.get_mut(site) else {
                continue;
            };
            for trade in &old.trades {
                if let Some(ids) = trades.get_mut(trade) {
                    ids.remove(technician_id);
                    if ids.is_empty() {
                        trades.remove(trade);
                    }
                }
            }
            if trades.is_empty() {
                self.by_site_trade.remove(site);
            }
        }
    }
}

/// What one roster record did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RosterChange {
    /// The technician was added or replaced.
    Updated(String),
    /// The technician was removed (null value).
    Removed(String),
    /// The record was unusable; the technician (if the key names one) was removed.
    Rejected {
        /// The key, lossily as text.
        key: String,
        /// Why.
        reason: String,
    },
    /// At or below the stored offset of its partition: already applied.
    AlreadyApplied,
}

/// The roster, persisted and indexed.
#[derive(Debug)]
pub struct RosterStore {
    store: Arc<StateStore>,
    codec: Arc<Codec>,
    roster: Roster,
    /// Last applied offset per roster partition, mirroring `meta`.
    offsets: BTreeMap<i32, i64>,
}

/// One decoded roster record, ready to write.
enum Decision {
    Put {
        id: String,
        avro: Vec<u8>,
        technician: TechnicianRoster,
    },
    Delete {
        id: Vec<u8>,
        change: RosterChange,
    },
}

impl RosterStore {
    /// Loads the roster kept in `store`.
    pub fn open(store: Arc<StateStore>, codec: Arc<Codec>) -> Result<Self, StateError> {
        let mut roster = Roster::default();
        for item in store.all(Family::Roster) {
            let (key, value) = item?;
            let technician = codec.decode_roster(&value).map_err(|e| {
                store.corrupt(
                    Family::Roster,
                    &key,
                    format!("{e} (written by a build with another roster schema?)"),
                )
            })?;
            roster.upsert(technician);
        }
        let offsets = store.offsets(MetaKey::Roster)?;
        Ok(Self {
            store,
            codec,
            roster,
            offsets,
        })
    }

    /// The roster as of the last applied record.
    pub fn roster(&self) -> &Roster {
        &self.roster
    }

    /// Last applied offset per roster partition.
    pub fn offsets(&self) -> &BTreeMap<i32, i64> {
        &self.offsets
    }

    /// Where a tail consumer should start per partition it has seen: the
    /// stored offset + 1. Partitions not listed start at the beginning.
    pub fn next_offsets(&self) -> BTreeMap<i32, i64> {
        self.offsets.iter().map(|(p, o)| (*p, o + 1)).collect()
    }

    fn decide(&self, record: &ChangelogRecord<'_>) -> Decision {
        let Some(key) = record.key else {
            return Decision::Delete {
                id: Vec::new(),
                change: RosterChange::Rejected {
                    key: String::new(),
                    reason: "no key; roster keys are technician ids".into(),
                },
            };
        };
        let key_text = String::from_utf8_lossy(key).into_owned();
        let reject = |reason: String| Decision::Delete {
            id: key.to_vec(),
            change: RosterChange::Rejected {
                key: key_text.clone(),
                reason,
            },
        };
        let Some(value) = record.value else {
            return Decision::Delete {
                id: key.to_vec(),
                change: RosterChange::Removed(key_text.clone()),
            };
        };
        match self.codec.decode_roster(value) {
            Err(e) => reject(e.to_string()),
            Ok(t) if t.technician_id.as_bytes() != key => reject(format!(
                "value names technician {:?}, key {key_text:?}",
                t.technician_id
            )),
            Ok(t) => Decision::Put {
                id: key_text.clone(),
                avro: value.to_vec(),
                technician: t,
            },
        }
    }

    /// Applies records of one partition in one write batch, then to memory.
    fn apply_batch<'r>(
        &mut self,
        partition: i32,
        records: impl IntoIterator<Item = ChangelogRecord<'r>>,
        stats: &mut RestoreStats,
    ) -> Result<Vec<RosterChange>, StateError> {
        let stored = self.offsets.get(&partition).copied();
        let mut changes = Vec::new();
        let mut decided = Vec::new();
        let mut batch = self.store.batch();
        let mut last = None;
        for r in records {
            if stored.is_some_and(|s| r.offset <= s) {
                changes.push(RosterChange::AlreadyApplied);
                continue;
            }
            let d = self.decide(&r);
            match &d {
                Decision::Put { id, avro, .. } => batch.put_roster(id.as_bytes(), avro),
                Decision::Delete { id, change } => {
                    if let RosterChange::Rejected { key, reason } = change {
                        tracing::warn!(
                            partition,
                            offset = r.offset,
                            %key,
                            %reason,
                            "unusable roster record; technician removed"
                        );
                        stats.rejected += 1;
                    } else {
                        stats.tombstones += 1;
                    }
                    if !id.is_empty() {
                        batch.delete_roster(id);
                    }
                }
            }
            stats.records += 1;
            last = Some(r.offset);
            decided.push(d);
        }
        let Some(offset) = last else {
            return Ok(changes);
        };
        batch.put_offset(MetaKey::Roster(partition), offset);
        batch.commit("apply roster records")?;
        stats.batches += 1;
        self.offsets.insert(partition, offset);
        for d in decided {
            changes.push(match d {
                Decision::Put { id, technician, .. } => {
                    self.roster.upsert(technician);
                    RosterChange::Updated(id)
                }
                Decision::Delete { id, change } => {
                    self.roster.remove(&String::from_utf8_lossy(&id));
                    change
                }
            });
        }
        Ok(changes)
    }

    /// Applies one record read from roster `partition` (the background tail).
    pub fn apply(
        &mut self,
        partition: i32,
        record: ChangelogRecord<'_>,
    ) -> Result<RosterChange, StateError> {
        let mut stats = RestoreStats::default();
        let mut changes = self.apply_batch(partition, [record], &mut stats)?;
        Ok(changes.pop().unwrap_or(RosterChange::AlreadyApplied))
    }

    /// Reads the roster topic from the stored offsets to its current end
    /// (blocking; for startup). With current local state it reads nothing.
    pub fn catch_up(
        &mut self,
        client: &ClientConfig,
        topic: &str,
        options: &RestoreOptions,
        progress: &mut dyn FnMut(&RestoreProgress<'_>),
    ) -> Result<RestoreStats, StateError> {
        let started = Instant::now();
        let consumer = restore_consumer(client, topic)?;
        let metadata = consumer
            .fetch_metadata(Some(topic), options.request_timeout)
            .map_err(kafka(topic, "fetch metadata"))?;
        let partitions: Vec<i32> = match metadata.topics().iter().find(|t| t.name() == topic) {
            Some(t) if t.error().is_none() => t.partitions().iter().map(|p| p.id()).collect(),
            found => {
                let code = found
                    .and_then(|t| t.error())
                    .map(rdkafka::types::RDKafkaErrorCode::from);
                return Err(StateError::Kafka {
                    topic: topic.to_string(),
                    operation: "find topic",
                    source: rdkafka::error::KafkaError::MetadataFetch(
                        code.unwrap_or(rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition),
                    ),
                });
            }
        };
        let mut watermarks = BTreeMap::new();
        for &p in &partitions {
            let w = consumer
                .fetch_watermarks(topic, p, options.request_timeout)
                .map_err(kafka(topic, "fetch watermarks"))?;
            watermarks.insert(p, w);
        }
        let mut stats = RestoreStats {
            topic: topic.to_string(),
            ..RestoreStats::default()
        };
        let plans: BTreeMap<i32, Plan> = watermarks
            .iter()
            .map(|(&p, &(low, high))| (p, plan(self.offsets.get(&p).copied(), low, high)))
            .collect();
        if let Some((p, Plan::Reset(why))) =
            plans.iter().find(|(_, pl)| matches!(pl, Plan::Reset(_)))
        {
            // Technicians are not stored by partition, so a partition that
            // does not fit means re-reading the whole (small) roster.
            tracing::warn!(topic, partition = *p, "wiping the local roster: {why}");
            let mut batch = self.store.batch();
            batch.wipe_roster()?;
            batch.commit("wipe roster")?;
            self.roster = Roster::default();
            self.offsets.clear();
            stats.reset = true;
        }
        let spans: Vec<Span> = watermarks
            .iter()
            .filter_map(|(&partition, &(low, high))| {
                let start = match plan(self.offsets.get(&partition).copied(), low, high) {
                    Plan::From(o) => o,
                    Plan::Current => return None,
                    Plan::Reset(_) => low,
                };
                Some(Span {
                    partition,
                    start,
                    end: high,
                })
            })
            .collect();
        stats.ranges = spans
            .iter()
            .map(|s| (s.partition, s.start, s.end))
            .collect();
        read_to_end(
            &consumer,
            topic,
            &spans,
            options,
            started,
            &mut |msgs| {
                // A batch mixes partitions; keep each partition's records in
                // order and store each partition's own last offset.
                let mut by_partition: BTreeMap<i32, Vec<ChangelogRecord<'_>>> = BTreeMap::new();
                for m in msgs {
                    by_partition
                        .entry(m.partition())
                        .or_default()
                        .push(ChangelogRecord::of(m));
                }
                for (p, records) in by_partition {
                    self.apply_batch(p, records, &mut stats)?;
                }
                Ok(())
            },
            progress,
        )?;
        stats.elapsed = started.elapsed();
        tracing::info!(
            topic,
            technicians = self.roster.len(),
            records = stats.records,
            rejected = stats.rejected,
            elapsed_ms = stats.elapsed.as_millis() as u64,
            "roster caught up"
        );
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::samples::{self, MONDAY_8AM};
    use crate::model::Availability;

    fn codec() -> Arc<Codec> {
        Arc::new(
            Codec::load(std::path::Path::new(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/schemas"
            )))
            .expect("schemas load"),
        )
    }

    fn ids(ts: Vec<&TechnicianRoster>) -> Vec<&str> {
        ts.into_iter().map(|t| t.technician_id.as_str()).collect()
    }

    fn roster(ts: Vec<TechnicianRoster>) -> Roster {
        let mut r = Roster::default();
        for t in ts {
            r.upsert(t);
        }
        r
    }

    #[test]
    fn listed_filters_site_and_trade_only_and_orders_by_id() {
        let mut off = samples::technician("T-2", "S1", "hvac");
        off.availability = Availability::Off;
        off.shift_end = Some(MONDAY_8AM - 1);
        let r = roster(vec![
            off,
            samples::technician("T-1", "S1", "hvac"),
            samples::technician("T-3", "S2", "hvac"),
            samples::technician("T-4", "S1", "plumbing"),
        ]);
        // Off shift and off duty still listed: routing needs them for the reason.
        assert_eq!(ids(r.listed("S1", "hvac")), ["T-1", "T-2"]);
        assert_eq!(ids(r.listed("S2", "hvac")), ["T-3"]);
        assert!(r.listed("S1", "electrical").is_empty());
        assert!(r.listed("NOWHERE", "hvac").is_empty());
    }

    #[test]
    fn updates_move_and_removals_drop_technicians_and_persist() {
        let dir = tempfile::tempdir().expect("tempdir");
        let codec = codec();
        let avro = |t: &TechnicianRoster| codec.encode_roster(t).expect("encode");
        let t1 = samples::technician("T-1", "S1", "hvac");
        let t2 = samples::technician("T-2", "S1", "hvac");
        let mut moved = t1.clone();
        moved.sites = vec!["S2".into()];
        let (v1, v2, v_moved) = (avro(&t1), avro(&t2), avro(&moved));
        let rec = |offset, key: &'static str, value: Option<&'static [u8]>| ChangelogRecord {
            offset,
            key: Some(key.as_bytes()),
            value,
        };
        // Leaked so the records can borrow them for 'static; a test, a few bytes.
        let [v1, v2, v_moved]: [&'static [u8]; 3] =
            [v1, v2, v_moved].map(|v| &*Box::leak(v.into_boxed_slice()));
        {
            let store = Arc::new(StateStore::open(dir.path()).expect("open"));
            let mut rs = RosterStore::open(store, codec.clone()).expect("roster");
            assert_eq!(
                rs.apply(0, rec(0, "T-1", Some(v1))).expect("apply"),
                RosterChange::Updated("T-1".into())
            );
            rs.apply(0, rec(1, "T-2", Some(v2))).expect("apply");
            rs.apply(0, rec(2, "T-1", Some(v_moved))).expect("apply");
            assert_eq!(
                rs.apply(0, rec(3, "T-2", None)).expect("apply"),
                RosterChange::Removed("T-2".into())
            );
            assert_eq!(
                rs.apply(0, rec(3, "T-2", None)).expect("apply"),
                RosterChange::AlreadyApplied
            );
            let bad = rs
                .apply(1, rec(0, "T-9", Some(&b"junk"[..])))
                .expect("apply");
            assert!(matches!(bad, RosterChange::Rejected { .. }), "{bad:?}");
            let mismatch = rs.apply(1, rec(1, "T-8", Some(v1))).expect("apply");
            assert!(
                matches!(mismatch, RosterChange::Rejected { ref reason, .. } if reason.contains("T-1")),
                "{mismatch:?}"
            );
        }
        let store = Arc::new(StateStore::open(dir.path()).expect("reopen"));
        let rs = RosterStore::open(store, codec).expect("roster");
        assert_eq!(rs.roster().len(), 1);
        assert!(
            rs.roster().listed("S1", "hvac").is_empty(),
            "T-1 moved, T-2 removed"
        );
        assert_eq!(ids(rs.roster().listed("S2", "hvac")), ["T-1"]);
        assert_eq!(rs.next_offsets(), BTreeMap::from([(0, 4), (1, 2)]));
    }
}
