//! Local state of a router instance: the dedup store of the input
//! partitions it owns and the technician roster, in one RocksDB database
//! that is a cache of two compacted topics.
//!
//! - [`store`]: the database, its key layout, and atomic write batches.
//! - [`dedup`]: order ids already handled; writes are staged, sealed for a
//!   Kafka transaction and applied only after it committed.
//! - [`restore`]: rebuilding a dedup partition from its changelog topic.
//! - [`roster`]: every technician of the roster topic, listed by site and
//!   trade for routing.
//!
//! Promise: local state never holds a write whose transaction did not
//! commit, and it records the topic offset it reflects in the same atomic
//! write, so a restart reads only the topic tail after it, and losing the
//! directory costs a full restore, never correctness. The run loop is not
//! part of this module: it decides when to stage, commit and restore.

pub mod dedup;
pub mod restore;
pub mod roster;
pub mod store;

#[cfg(test)]
mod model_test;

pub use dedup::{
    ChangelogWrite, DedupStore, DedupTtl, Expired, Lookup, PendingCommit, StagedDedup,
};
pub use restore::{
    replay_dedup, restore_dedup, ChangelogRecord, RestoreOptions, RestoreProgress, RestoreStats,
    RestoredPartition,
};
pub use roster::{Roster, RosterChange, RosterStore};
pub use store::{MetaKey, StateError, StateStore};
