//! CMMS work-order router: reads normalized maintenance work orders from
//! Kafka, batches them per site, routes each batch into per-trade job packets
//! and writes those, the dead letters and the input offsets in one Kafka
//! transaction.
//!
//! The modules follow the pipeline: [`intake`] decodes and validates,
//! [`window`] batches per site, [`routing`] turns a closed batch into packets,
//! [`dead_letter`] builds rejected records, [`dispatch`] owns the
//! transactional producer, [`state`] keeps the dedup and roster stores in
//! local RocksDB, and [`router`] runs the loop that ties them together under
//! the commit invariant described there.

pub mod codec;
pub mod config;
pub mod dead_letter;
pub mod dispatch;
pub mod http;
pub mod intake;
pub mod model;
pub mod replay;
pub mod router;
pub mod routing;
pub mod state;
pub mod telemetry;
pub mod topology;
pub mod watch;
pub mod window;
