//! A broker outage while work is in flight: the local broker is stopped
//! right after a burst of orders, while the router binary has open batches
//! and transactions, and started again seconds later. The router must ride
//! it out (retrying with backoff, not exiting), and afterwards every valid,
//! unique order must be in exactly one packet and every bad record in
//! exactly one dead letter.
//!
//! It stops and starts the broker of `scripts/kafka-local.sh`, so it runs
//! only against that broker (the default `CMMS_TEST_BOOTSTRAP`); against any
//! other it says `skipping`. It is the only test in this binary: Cargo runs
//! test binaries one after another, so no other test sees the outage.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cmms_router::model::{samples, DeadLetterReason};
use common::{check_exactly_once, log_tail, RouterProcess, Traffic, World};

/// How long the broker stays down: longer than librdkafka's request
/// timeouts, shorter than the tests' 30 s transaction timeout.
const OUTAGE: Duration = Duration::from_secs(8);

/// The local broker. Once stopped here, it is started again when dropped
/// if it is still down, so a failing test does not leave it stopped for the
/// test binaries after this one.
struct LocalBroker {
    script: PathBuf,
    stopped: bool,
}

impl LocalBroker {
    /// The broker of `scripts/kafka-local.sh` when it is the one the tests
    /// use and it is running.
    fn managed() -> Option<Self> {
        let port = std::env::var("KAFKA_PORT").unwrap_or_else(|_| "9092".to_string());
        if common::bootstrap() != format!("127.0.0.1:{port}") {
            eprintln!(
                "skipping: {} is not the broker of scripts/kafka-local.sh",
                common::bootstrap()
            );
            return None;
        }
        let broker = Self {
            script: common::repo().join("scripts/kafka-local.sh"),
            stopped: false,
        };
        if !broker.run("status") {
            eprintln!("skipping: scripts/kafka-local.sh reports no running broker");
            return None;
        }
        Some(broker)
    }

    fn run(&self, command: &str) -> bool {
        Command::new(&self.script)
            .arg(command)
            .status()
            .unwrap_or_else(|e| panic!("{} {command}: {e}", self.script.display()))
            .success()
    }

    fn stop(&mut self) {
        self.stopped = true;
        assert!(self.run("stop"), "kafka-local.sh stop");
    }

    fn start(&self) {
        assert!(self.run("start"), "kafka-local.sh start");
    }
}

impl Drop for LocalBroker {
    fn drop(&mut self) {
        if self.stopped && !self.run("status") {
            self.run("start");
        }
    }
}

/// `count` valid orders numbered from `first` over four sites and trades,
/// with an undecodable record every 25th; added to `traffic`.
fn orders(
    world: &World,
    traffic: &mut Traffic,
    first: usize,
    count: usize,
) -> Vec<(String, Vec<u8>)> {
    let trades = ["hvac", "plumbing", "electrical", "general"];
    let mut records = Vec::new();
    for i in first..first + count {
        let (site, trade) = (format!("SITE-{}", i % 4), trades[i % trades.len()]);
        let order = samples::work_order(&format!("WO-{i:05}"), &site, trade);
        records.push(world.input_record(&order));
        traffic
            .valid
            .insert(order.order_id, (site, trade.to_string()));
        if i % 25 == 0 {
            let garbage = format!("garbage #{i}").into_bytes();
            records.push(("SITE-0".to_string(), garbage.clone()));
            traffic.bad.push((garbage, DeadLetterReason::Undecodable));
        }
    }
    records
}

fn write_config(world: &World, state: &Path) -> PathBuf {
    let path = world.dir.path().join("outage.toml");
    std::fs::write(&path, world.config_text(5, 300, "outage", state)).expect("config");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_rides_out_a_broker_outage_and_routes_exactly_once() {
    let Some(mut broker) = LocalBroker::managed() else {
        return;
    };
    let world = World::new("outage", 2).await;
    let config = write_config(&world, &world.dir.path().join("state"));
    let log = world.dir.path().join("router.log");
    let mut router = RouterProcess::spawn(&config, &log, "info,cmms_router=debug");
    let producer = world.producer();
    let mut traffic = Traffic {
        valid: BTreeMap::new(),
        bad: Vec::new(),
    };

    // Routing works before the outage.
    let before = orders(&world, &mut traffic, 0, 40);
    world.send_all(&producer, &before).await;
    check_exactly_once(&world, &traffic);

    // A burst the router is still working on when the broker goes away.
    let burst = orders(&world, &mut traffic, 40, 120);
    world.send_all(&producer, &burst).await;
    broker.stop();
    let down = Instant::now();
    while down.elapsed() < OUTAGE {
        assert!(
            router.is_running(),
            "the router exited during the outage; its log ends:\n{}",
            log_tail(&log)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    broker.start();

    // After it: new orders, and upstream re-sends of orders from both sides
    // of the outage, which must not be routed again.
    let mut after = orders(&world, &mut traffic, 160, 40);
    for i in (0..160).step_by(9) {
        let (site, trade) = &traffic.valid[&format!("WO-{i:05}")];
        after.push(world.input_record(&samples::work_order(&format!("WO-{i:05}"), site, trade)));
    }
    world.send_all(&producer, &after).await;
    check_exactly_once(&world, &traffic);
    assert!(
        router.is_running(),
        "the router is still up; its log ends:\n{}",
        log_tail(&log)
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("transaction aborted") || text.contains("retrying"),
        "the outage was noticed and retried; the log ends:\n{}",
        log_tail(&log)
    );
    router.stop();
}
