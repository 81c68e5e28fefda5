//! Per-record cost of the router's in-process hot path, each stage measured
//! against plain Avro decoding in the same run, so the ratios hold across
//! machines even where the absolute figures do not.
//!
//! All four benchmarks report per input record (`Throughput::Elements`):
//!
//! - `decode`: Avro decode of one work order (the baseline);
//! - `decode_validate`: `intake::accept`, decode plus validation;
//! - `full_batch`: a site batch of `window.max_orders` (20) orders through
//!   accept, `SiteWindows::add` (the last one closes it on count),
//!   `routing::route_batch` and `Codec::encode_dispatch` of every packet;
//! - `dead_letter`: undecodable bytes through rejection, `dead_letter::build`
//!   and encoding;
//! - `fast_lane_check` and `fast_lane_assess`: the run loop's per-order
//!   fast-lane decision for the batch's orders against a staffed site (20
//!   technicians per trade), by `routing::takes_fast_lane` (what the loop
//!   runs) and by a full `routing::assess` (what it ran before).
//!
//! Kafka, the transaction and metrics are out of scope: this is what one
//! core spends per record between poll and produce.
//!
//! Run with `cargo bench --bench pipeline` (about a minute on 2 cores).

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use cmms_router::codec::Codec;
use cmms_router::config::WindowConfig;
use cmms_router::dead_letter::{self, SourceRecord};
use cmms_router::intake;
use cmms_router::model::{samples, SafetyClass, WorkType};
use cmms_router::routing;
use cmms_router::topology::Topology;
use cmms_router::window::SiteWindows;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// Orders per site batch: the shipped `window.max_orders`.
const BATCH: usize = 20;

/// The loaded schemas and topology, and the input records.
struct Fixture {
    codec: Codec,
    topology: Topology,
    /// The shipped routing matrix.
    routing: routing::RoutingConfig,
    /// One on-shift technician per trade of the batch at its site.
    roster: routing::StaticRoster,
    /// One encoded work order.
    one: Vec<u8>,
    /// A site's batch of encoded orders, mixed trades and classes.
    batch: Vec<Vec<u8>>,
    /// Bytes that are not a work order.
    garbage: Vec<u8>,
}

fn fixture() -> Fixture {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let codec = Codec::load(&repo.join("schemas")).expect("schemas load");
    let topology = Topology::load(&repo.join("topology/topology.toml")).expect("topology loads");
    let one = codec
        .encode_work_order(&samples::work_order("WO-1", "SITE-1", "hvac"))
        .expect("sample encodes");
    let trades = ["hvac", "plumbing", "electrical", "hvac", "general"];
    let batch = (0..BATCH)
        .map(|i| {
            let mut order = if i % 4 == 3 {
                samples::preventive_order(&format!("WO-{i}"), "SITE-1")
            } else {
                samples::work_order(&format!("WO-{i}"), "SITE-1", trades[i % trades.len()])
            };
            if i % 7 == 0 {
                order.safety_class = SafetyClass::LifeSafety;
                order.work_type = WorkType::Emergency;
            }
            order.asset_criticality = Some(1 + (i % 5) as i32);
            codec.encode_work_order(&order).expect("sample encodes")
        })
        .collect();
    let roster = routing::StaticRoster::new(
        ["hvac", "plumbing", "electrical", "general"]
            .into_iter()
            .map(|trade| samples::technician(&format!("T-{trade}"), "SITE-1", trade)),
    );
    let routing = routing::RoutingConfig::load(&repo.join("topology/routing.toml"))
        .expect("routing config loads");
    Fixture {
        codec,
        topology,
        routing,
        roster,
        one,
        batch,
        garbage: b"{\"order_id\": \"WO-1\", \"note\": \"JSON sent to an Avro topic\"}".to_vec(),
    }
}

/// One site batch from bytes to encoded packets; returns the bytes produced.
fn full_batch(f: &Fixture, now: Instant) -> usize {
    let mut windows = SiteWindows::new(WindowConfig {
        max_orders: BATCH,
        max_wait: Duration::from_secs(5),
    });
    let mut produced = 0;
    for (offset, bytes) in f.batch.iter().enumerate() {
        let order =
            intake::accept(&f.codec, &f.topology, Some(bytes)).expect("fixture orders are valid");
        // The router clones the site the same way before handing the order over.
        let site = order.site().to_string();
        let Some(closed) = windows.add(&site, offset as i64, order, now, samples::MONDAY_8AM)
        else {
            continue;
        };
        for packet in routing::route_batch(
            closed,
            0,
            &f.topology,
            &f.roster,
            &mut routing::DispatchHistory::default(),
            &f.routing,
            samples::MONDAY_8AM,
        ) {
            produced += f
                .codec
                .encode_dispatch(&packet.batch)
                .expect("packets encode")
                .len();
        }
    }
    assert!(produced > 0, "the batch never closed on count");
    produced
}

/// Undecodable bytes to an encoded dead letter; returns its length.
fn dead_letter_path(f: &Fixture) -> usize {
    let value = Some(f.garbage.as_slice());
    let rejection = intake::accept(&f.codec, &f.topology, value).expect_err("garbage is rejected");
    let source = SourceRecord {
        topic: "cmms.workorders.normalized",
        partition: 0,
        offset: 41,
        timestamp: Some(samples::MONDAY_8AM),
        key: Some(b"SITE-1"),
        value,
    };
    let letter = dead_letter::build(rejection, &source, "router-1", samples::MONDAY_8AM);
    f.codec
        .encode_dead_letter(&letter)
        .expect("dead letters encode")
        .len()
}

/// A staffed site: `per_trade` technicians of every trade at SITE-1.
fn staffed_roster(per_trade: usize) -> routing::StaticRoster {
    routing::StaticRoster::new(
        ["hvac", "plumbing", "electrical", "general"]
            .into_iter()
            .flat_map(|trade| {
                (0..per_trade)
                    .map(move |i| samples::technician(&format!("T-{trade}-{i}"), "SITE-1", trade))
            }),
    )
}

fn hot_path(c: &mut Criterion) {
    let f = fixture();
    let now = Instant::now();
    let mut group = c.benchmark_group("per_record");

    group.throughput(Throughput::Elements(1));
    group.bench_function("decode", |b| {
        b.iter(|| {
            f.codec
                .decode_work_order(black_box(&f.one))
                .expect("decodes")
        })
    });
    group.bench_function("decode_validate", |b| {
        b.iter(|| intake::accept(&f.codec, &f.topology, Some(black_box(&f.one))).expect("valid"))
    });
    group.bench_function("dead_letter", |b| {
        b.iter(|| dead_letter_path(black_box(&f)))
    });

    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("full_batch", |b| b.iter(|| full_batch(black_box(&f), now)));

    let staffed = staffed_roster(20);
    let orders: Vec<_> = f
        .batch
        .iter()
        .map(|bytes| intake::accept(&f.codec, &f.topology, Some(bytes)).expect("valid"))
        .collect();
    group.bench_function("fast_lane_check", |b| {
        b.iter(|| {
            orders
                .iter()
                .filter(|o| {
                    routing::takes_fast_lane(
                        o.order(),
                        o.site(),
                        &f.topology,
                        &staffed,
                        &f.routing,
                        samples::MONDAY_8AM,
                    )
                })
                .count()
        })
    });
    group.bench_function("fast_lane_assess", |b| {
        b.iter(|| {
            orders
                .iter()
                .filter(|o| {
                    let tier = routing::assess(
                        o.order(),
                        o.site(),
                        &f.topology,
                        &staffed,
                        &f.routing,
                        samples::MONDAY_8AM,
                    )
                    .tier;
                    routing::is_fast_lane(o.order(), tier)
                })
                .count()
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    // Short runs: the ratios to `decode` are the point, not the fourth digit.
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    targets = hot_path
}
criterion_main!(benches);
