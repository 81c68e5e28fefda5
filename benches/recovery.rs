//! How long the router binary takes to route again after a SIGKILL, next to
//! its own steady-state latency in the same run on the same broker, so the
//! ratio holds across machines even where the absolute figures do not.
//!
//! One world of the integration tests (its own topics, group and
//! transactional id on the local broker), one router process with a window
//! of one order (each order is its own packet) and the 100 ms commit
//! interval of `World::config_text`, and one independent read_committed
//! reader on every packet topic:
//!
//! 1. History: 20,000 orders are sent as fast as the broker takes them and
//!    read back, so the dedup changelog holds real content.
//! 2. Steady state: 20 times, one order is sent and the time until its packet
//!    is readable is taken. A random pause of up to one commit interval
//!    between them spreads the sends over the commit cycle.
//! 3. Recovery: 5 times, the router is SIGKILLed, a new process is started
//!    at once with the same config (transactional id, group instance id and
//!    state directory) and a fresh order is sent; the time is from the kill
//!    to that order's packet being readable.
//! 4. Lost state: once more, with the state directory deleted before the
//!    restart, so the dedup store is rebuilt from the whole changelog.
//!
//! The reader asks the broker to answer fetches after at most 10 ms
//! (`fetch.wait.max.ms`), so its own polling adds little to the figures.
//! Each restart's log is read back to show where the recovery time went:
//! the offsets from the kill to the router's startup milestones.
//!
//! Run with `cargo bench --bench recovery` (about 20 s once built) against
//! `CMMS_TEST_BOOTSTRAP` (default 127.0.0.1:9092; `scripts/kafka-local.sh
//! start`). Cargo builds the router binary with the bench, in the same
//! profile, and names it in `CARGO_BIN_EXE_cmms-router`. Without a
//! `--bench` argument (as under `cargo test --all-targets`) a smoke version
//! runs: 200 history orders, one sample of each, every packet still awaited.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use cmms_router::model::samples;
use common::{RouterProcess, World};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};

/// Input partitions: more than one, so assignment and restore are per
/// partition as in production.
const PARTITIONS: i32 = 3;

/// Concurrent senders of the history; one sender waits for each delivery.
const SENDERS: usize = 32;

/// The longest wait for one packet before the run is declared broken.
const PACKET_WAIT: Duration = Duration::from_secs(60);

/// The longest wait for the whole history to be dispatched.
const HISTORY_WAIT: Duration = Duration::from_secs(120);

/// Router log level: info shows the startup milestones; debug would log
/// every record.
const LOG: &str = "info";

/// Pause before each kill, so every kill hits a settled instance rather than
/// one still joining or restoring after the previous restart.
const SETTLE: Duration = Duration::from_secs(1);

/// Log lines marking the router's startup milestones, in startup order.
/// A record of a partition not yet restored triggers its restore before the
/// assignment itself is logged, so "assigned" may follow one restore.
const MILESTONES: [(&str, &str); 5] = [
    ("transactional producer initialised", "producer"),
    ("roster caught up", "roster"),
    ("partitions assigned", "assigned"),
    (DEDUP_RESTORED, "restored"),
    ("first transaction committed", "committed"),
];

/// The log line of one dedup partition's restore (the roster's restore is
/// logged with the same message and `store="roster"`).
const DEDUP_RESTORED: &str = "local state restored store=\"dedup\"";

/// How much one run measures.
struct Plan {
    history: usize,
    steady: usize,
    recoveries: usize,
}

const FULL: Plan = Plan {
    history: 20_000,
    steady: 20,
    recoveries: 5,
};

const SMOKE: Plan = Plan {
    history: 200,
    steady: 1,
    recoveries: 1,
};

/// An independent read_committed reader of every packet topic, from the
/// beginning, kept open so each wait starts where the last one ended.
struct Reader<'w> {
    consumer: BaseConsumer,
    world: &'w World,
}

impl<'w> Reader<'w> {
    fn new(world: &'w World) -> Self {
        let consumer: BaseConsumer = common::client()
            .set("group.id", common::unique("bench-reader"))
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .create()
            .expect("reader");
        // Assigned, not subscribed: no group join in the measured path.
        let packet_topics = world.dispatch_topics();
        let mut partitions = TopicPartitionList::new();
        for topic in world.topology.router_topics() {
            if packet_topics.contains(&topic.name) {
                for p in 0..topic.partitions {
                    partitions
                        .add_partition_offset(&topic.name, p, Offset::Beginning)
                        .expect("beginning is a valid offset");
                }
            }
        }
        consumer.assign(&partitions).expect("assign packet topics");
        Self { consumer, world }
    }

    /// Reads packets until `done` returns true for one of their order ids;
    /// the instant that packet was read, or `None` after `timeout`.
    fn read_until(&self, timeout: Duration, mut done: impl FnMut(&str) -> bool) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    let packet = self
                        .world
                        .codec
                        .decode_dispatch(m.payload().unwrap_or_default())
                        .expect("packets are valid DispatchBatch datums");
                    let read = Instant::now();
                    if packet.orders.iter().any(|o| done(&o.order.order_id)) {
                        return Some(read);
                    }
                }
                Some(Err(e)) => panic!("reader error: {e}"),
                None => {}
            }
        }
        None
    }

    /// Sends one order and waits for its packet; the time between.
    fn round_trip(
        &self,
        runtime: &tokio::runtime::Runtime,
        producer: &FutureProducer,
        id: &str,
        since: Instant,
    ) -> Duration {
        let order = samples::work_order(id, "SITE-0", "hvac");
        runtime.block_on(self.world.send_order(producer, &order));
        let read = self
            .read_until(PACKET_WAIT, |got| got == id)
            .unwrap_or_else(|| panic!("order {id} not dispatched within {PACKET_WAIT:?}"));
        read - since
    }
}

/// Sends `count` orders over several sites and trades from `SENDERS` tasks.
async fn send_history(world: Arc<World>, producer: FutureProducer, count: usize) {
    const TRADES: [&str; 4] = ["hvac", "plumbing", "electrical", "general"];
    let mut senders = tokio::task::JoinSet::new();
    for s in 0..SENDERS {
        let (world, producer) = (world.clone(), producer.clone());
        senders.spawn(async move {
            for i in (s..count).step_by(SENDERS) {
                let order = samples::work_order(
                    &format!("H-{i:06}"),
                    &format!("SITE-{}", i % 11),
                    TRADES[i % TRADES.len()],
                );
                world.send_order(&producer, &order).await;
            }
        });
    }
    while let Some(sent) = senders.join_next().await {
        sent.expect("history sender did not panic");
    }
}

/// One restart, timed from the kill.
struct Recovery {
    took: Duration,
    /// Offsets from the kill to each milestone the new process logged.
    milestones: Vec<(&'static str, Duration)>,
    /// Dedup records restored from the changelog by the new process.
    restored_records: u64,
}

/// Kills the router, optionally deletes its state, starts a new one with the
/// same config and sends order `id` at once; returns when its packet is read.
#[allow(clippy::too_many_arguments)] // One call site per kind of run.
fn recover(
    runtime: &tokio::runtime::Runtime,
    reader: &Reader<'_>,
    producer: &FutureProducer,
    router: &mut RouterProcess,
    config: &Path,
    state: Option<&Path>,
    log: &Path,
    id: &str,
) -> Recovery {
    std::thread::sleep(SETTLE);
    let killed_at = Instant::now();
    let killed_wall = SystemTime::now();
    router.kill_hard();
    if let Some(state) = state {
        std::fs::remove_dir_all(state).expect("state directory removed");
    }
    *router = RouterProcess::spawn(config, log, LOG);
    let took = reader.round_trip(runtime, producer, id, killed_at);
    let (milestones, restored_records) = read_log(log, killed_wall);
    Recovery {
        took,
        milestones,
        restored_records,
    }
}

/// The offset from `since` of the last line of each milestone in a router
/// log (the last, as restores are logged per partition), and the sum of
/// the `records=` fields of the restore lines.
fn read_log(log: &Path, since: SystemTime) -> (Vec<(&'static str, Duration)>, u64) {
    let text = std::fs::read_to_string(log).expect("router log readable");
    let mut found: Vec<(&'static str, Duration)> = Vec::new();
    let mut records = 0;
    for line in text.lines() {
        let Some((marker, label)) = MILESTONES.iter().find(|(m, _)| line.contains(m)) else {
            continue;
        };
        // Text format: an RFC 3339 timestamp, then level, spans and message.
        let Some(at) = line
            .split_whitespace()
            .next()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(SystemTime::from)
        else {
            continue;
        };
        let offset = at.duration_since(since).unwrap_or_default();
        found.retain(|(l, _)| l != label);
        found.push((label, offset));
        if *marker == DEDUP_RESTORED {
            records += line
                .split_whitespace()
                .find_map(|f| f.strip_prefix("records="))
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    found.sort_by_key(|(_, offset)| *offset);
    (found, records)
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

fn describe(r: &Recovery) -> String {
    let steps: Vec<String> = r
        .milestones
        .iter()
        .map(|(label, at)| format!("{label} +{}", ms(*at)))
        .collect();
    format!(
        "{} [{}; {} dedup records restored]",
        ms(r.took),
        steps.join(", "),
        r.restored_records
    )
}

/// Cheap randomness without another dependency: a fresh v4 UUID's bits.
fn random_below(n: u64) -> u64 {
    (uuid::Uuid::new_v4().as_u128() as u64) % n
}

fn main() {
    // `cargo bench` passes `--bench`; anything else (cargo test) gets the smoke run.
    let full = std::env::args().any(|a| a == "--bench");
    let plan = if full { FULL } else { SMOKE };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");

    let world = Arc::new(runtime.block_on(World::new("recovery-bench", PARTITIONS)));
    let state = world.dir.path().join("state");
    let config = world.dir.path().join("router.toml");
    std::fs::write(&config, world.config_text(1, 1_000, "bench", &state))
        .expect("router config written");
    let log = |n: usize| world.dir.path().join(format!("router-{n}.log"));
    let producer = world.producer();
    let reader = Reader::new(&world);
    let mut router = RouterProcess::spawn(&config, &log(0), LOG);

    // 1. History, read back in full: dispatched, and its dedup entries committed.
    let started = Instant::now();
    runtime.block_on(send_history(world.clone(), producer.clone(), plan.history));
    let sent = started.elapsed();
    let mut seen = HashSet::new();
    reader
        .read_until(HISTORY_WAIT, |id| {
            if id.starts_with("H-") {
                seen.insert(id.to_string());
            }
            seen.len() == plan.history
        })
        .unwrap_or_else(|| {
            panic!(
                "{} of {} history orders dispatched within {HISTORY_WAIT:?}",
                seen.len(),
                plan.history
            )
        });
    println!(
        "history: {} orders sent in {}, all dispatched after {}",
        plan.history,
        ms(sent),
        ms(started.elapsed())
    );

    // 2. Steady state.
    let mut steady = Vec::new();
    for i in 0..plan.steady {
        std::thread::sleep(Duration::from_millis(random_below(100)));
        let id = format!("S-{i:03}");
        steady.push(reader.round_trip(&runtime, &producer, &id, Instant::now()));
    }
    steady.sort();
    let steady_median = percentile(&steady, 0.5);
    println!(
        "steady state: median {}, p90 {} over {} orders",
        ms(steady_median),
        ms(percentile(&steady, 0.9)),
        steady.len()
    );

    // 3. Recovery with the state directory intact.
    let mut recoveries = Vec::new();
    for i in 0..plan.recoveries {
        let r = recover(
            &runtime,
            &reader,
            &producer,
            &mut router,
            &config,
            None,
            &log(i + 1),
            &format!("R-{i:03}"),
        );
        println!("recovery {}/{}: {}", i + 1, plan.recoveries, describe(&r));
        recoveries.push(r.took);
    }
    recoveries.sort();
    let recovery_median = percentile(&recoveries, 0.5);
    let recovery_max = recoveries[recoveries.len() - 1];

    // 4. Recovery with the state directory lost.
    let lost = recover(
        &runtime,
        &reader,
        &producer,
        &mut router,
        &config,
        Some(&state),
        &log(plan.recoveries + 1),
        "L-000",
    );
    println!("recovery, state lost: {}", describe(&lost));

    let ratio = |d: Duration| d.as_secs_f64() / steady_median.as_secs_f64();
    println!(
        "recovery: median {} ({:.1}x steady median), max {} ({:.1}x); state lost: {} ({:.1}x)",
        ms(recovery_median),
        ratio(recovery_median),
        ms(recovery_max),
        ratio(recovery_max),
        ms(lost.took),
        ratio(lost.took)
    );

    router.stop();
    let admin: AdminClient<DefaultClientContext> = common::client().create().expect("admin client");
    let topics: Vec<&str> = world
        .topology
        .router_topics()
        .into_iter()
        .map(|t| t.name.as_str())
        .collect();
    // Best effort: the names are unique to this run either way.
    let _ = runtime.block_on(admin.delete_topics(&topics, &AdminOptions::new()));
}
