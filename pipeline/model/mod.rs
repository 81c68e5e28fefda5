//! Rust mirrors of the Avro records in `schemas/`.
//!
//! The `.avsc` files are the contract; these types only give the records a
//! shape in Rust so serde can move them to and from Avro bytes through the
//! schema-aware serializer. Field names, order and enum symbols must match the
//! schema files: the round-trip tests in `codec` fail when they drift.
//!
//! Timestamps are Avro `timestamp-millis`, kept as milliseconds since the Unix
//! epoch (`i64`) so encoding never depends on a time zone.

mod dead_letter;
mod dedup_entry;
mod dispatch;
mod roster;
mod work_order;

pub mod samples;

pub use dead_letter::{DeadLetter, DeadLetterReason};
pub use dedup_entry::DedupEntry;
pub use dispatch::{
    Candidate, CloseReason, Destination, DispatchBatch, RoutedOrder, Score, Tier, UnassignedReason,
};
pub use roster::{Availability, Certification, TechnicianRoster};
pub use work_order::{NormalizedWorkOrder, PmSchedule, SafetyClass, WorkType};

/// Version written into the `schema_version` field of every record we produce.
pub const SCHEMA_VERSION: i32 = 1;
