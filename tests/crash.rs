//! Exactly once across crashes: the router binary is killed with SIGKILL at
//! random points while replayed traffic flows, restarted each time, and in
//! the end an independent read_committed consumer finds every valid, unique
//! order in exactly one packet and every bad record in exactly one dead
//! letter. Also: losing the state directory, and a second instance taking
//! over from a killed one.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cmms_router::model::{samples, DeadLetterReason, NormalizedWorkOrder};
use common::{RouterProcess, World};
use rdkafka::producer::FutureProducer;

const READ: Duration = Duration::from_secs(60);

/// Router log level: debug shows each duplicate and skipped record.
const LOG: &str = "info,cmms_router=debug";

fn spawn(config: &Path, log: &Path) -> RouterProcess {
    RouterProcess::spawn(config, log, LOG)
}

/// Cheap randomness without another dependency: a fresh v4 UUID's bits.
fn random_below(n: u64) -> u64 {
    (uuid::Uuid::new_v4().as_u128() as u64) % n
}

/// The traffic: valid orders over several sites and trades, bad records in
/// between, and upstream re-sends of orders already sent.
struct Traffic {
    valid: BTreeMap<String, (String, String)>,
    bad: Vec<(Vec<u8>, DeadLetterReason)>,
}

async fn send_traffic(
    world: &World,
    producer: &FutureProducer,
    count: usize,
    pace: Duration,
) -> Traffic {
    let trades = ["hvac", "plumbing", "electrical", "general"];
    let mut traffic = Traffic {
        valid: BTreeMap::new(),
        bad: Vec::new(),
    };
    let mut sent_orders: Vec<NormalizedWorkOrder> = Vec::new();
    for i in 0..count {
        let site = format!("SITE-{}", i % 11);
        let trade = trades[i % trades.len()];
        let id = format!("WO-{i:05}");
        let order = samples::work_order(&id, &site, trade);
        world.send_order(producer, &order).await;
        traffic.valid.insert(id, (site, trade.to_string()));
        sent_orders.push(order);
        if i % 37 == 5 {
            let garbage = format!("garbage #{i}").into_bytes();
            world.send_raw(producer, Some(b"SITE-0"), &garbage).await;
            traffic.bad.push((garbage, DeadLetterReason::Undecodable));
        }
        if i % 29 == 7 {
            let mut no_site = samples::work_order(&format!("NS-{i}"), "x", "hvac");
            no_site.site_id = None;
            let bytes = world.codec.encode_work_order(&no_site).expect("encode");
            world.send_raw(producer, Some(b"SITE-1"), &bytes).await;
            traffic.bad.push((bytes, DeadLetterReason::MissingSite));
        }
        if i % 13 == 12 {
            // An upstream re-send of an earlier order: must not be routed again.
            let earlier = &sent_orders[i / 2];
            world.send_order(producer, earlier).await;
        }
        tokio::time::sleep(pace).await;
    }
    traffic
}

fn check_exactly_once(world: &World, traffic: &Traffic) {
    let packets = world.read_packets(traffic.valid.len(), READ);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (_, packet) in &packets {
        for routed in &packet.orders {
            let (site, trade) = traffic
                .valid
                .get(&routed.order.order_id)
                .unwrap_or_else(|| panic!("unexpected order {}", routed.order.order_id));
            assert_eq!(&packet.site_id, site);
            assert_eq!(&packet.trade, trade);
            *seen.entry(routed.order.order_id.clone()).or_default() += 1;
        }
    }
    // Read on past the expected count: late duplicates would show up here.
    let again = world.read_packets(traffic.valid.len() + 1, Duration::from_secs(5));
    let total: usize = again.iter().map(|(_, p)| p.orders.len()).sum();
    let missing: Vec<_> = traffic
        .valid
        .keys()
        .filter(|id| !seen.contains_key(*id))
        .collect();
    let repeated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    // Where each repeated order went: input coordinates and packet.
    let repeats: Vec<String> = packets
        .iter()
        .flat_map(|(topic, p)| {
            p.orders
                .iter()
                .filter(|o| seen.get(&o.order.order_id).is_some_and(|n| *n > 1))
                .map(move |o| {
                    format!(
                        "{} from {}@{} in {topic} {} {:?} closed {}",
                        o.order.order_id,
                        o.source_partition,
                        o.source_offset,
                        p.batch_id,
                        p.close_reason,
                        p.closed_at
                    )
                })
        })
        .collect();
    assert!(
        repeated.is_empty() && missing.is_empty(),
        "{} orders never dispatched: {missing:?}; orders dispatched more than once: {repeated:?}:\n{}",
        missing.len(),
        repeats.join("\n")
    );
    assert_eq!(
        total,
        traffic.valid.len(),
        "a full re-read finds each order once"
    );

    let letters = world.read_dead_letters(traffic.bad.len() + 1, Duration::from_secs(15));
    let mut expected: Vec<(Vec<u8>, &str)> = traffic
        .bad
        .iter()
        .map(|(b, r)| (b.clone(), r.as_str()))
        .collect();
    let mut got: Vec<(Vec<u8>, &str)> = letters
        .iter()
        .map(|d| {
            (
                d.original_value.clone().unwrap_or_default(),
                d.reason.as_str(),
            )
        })
        .collect();
    expected.sort();
    got.sort();
    assert_eq!(
        got, expected,
        "the dead-letter topic holds exactly the bad records, once each"
    );
}

fn write_config(world: &World, name: &str, instance: &str, state: &Path) -> PathBuf {
    let path = world.dir.path().join(format!("{name}.toml"));
    std::fs::write(&path, world.config_text(5, 300, instance, state)).expect("config");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_and_restarted_router_routes_every_order_exactly_once() {
    let world = World::new("crash", 3).await;
    let state = world.dir.path().join("state-a");
    let config = write_config(&world, "a", "a", &state);
    let log = world.dir.path().join("router-a.log");
    let producer = world.producer();

    let mut router = spawn(&config, &log);
    let traffic = {
        let sender = send_traffic(&world, &producer, 400, Duration::from_millis(15));
        tokio::pin!(sender);
        // Kill the router three times at random points while traffic flows.
        let mut kills = 0;
        let mut next_kill = Instant::now() + Duration::from_millis(1_000 + random_below(1_500));
        loop {
            tokio::select! {
                traffic = &mut sender => break traffic,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {
                    if kills < 3 && Instant::now() >= next_kill {
                        router.kill_hard();
                        kills += 1;
                        router = spawn(&config, &log);
                        next_kill = Instant::now() + Duration::from_millis(1_000 + random_below(1_500));
                    }
                }
            }
        }
    };
    // One more kill after the traffic, before everything is dispatched.
    tokio::time::sleep(Duration::from_millis(200)).await;
    router.kill_hard();
    let router = spawn(&config, &log);
    check_exactly_once(&world, &traffic);
    router.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_state_directory_is_rebuilt_from_the_changelog() {
    let world = World::new("lost-disk", 2).await;
    let state = world.dir.path().join("state-lost");
    let config = write_config(&world, "lost", "lost", &state);
    let log = world.dir.path().join("router-lost.log");
    let producer = world.producer();

    let router = spawn(&config, &log);
    let traffic = send_traffic(&world, &producer, 60, Duration::from_millis(5)).await;
    check_exactly_once(&world, &traffic);
    router.stop();

    // The disk is gone while the router is stopped.
    std::fs::remove_dir_all(&state).expect("state dir removed");
    assert!(!state.exists());

    // Every order is sent again by upstream: the rebuilt dedup store must
    // still know them all, so nothing is dispatched a second time.
    let router = spawn(&config, &log);
    for (id, (site, trade)) in &traffic.valid {
        world
            .send_order(&producer, &samples::work_order(id, site, trade))
            .await;
    }
    // A new order after the re-sends proves the router processed them.
    world
        .send_order(
            &producer,
            &samples::work_order("AFTER-LOSS", "SITE-0", "hvac"),
        )
        .await;
    let packets = world.read_packets(traffic.valid.len() + 1, READ);
    let ids: Vec<String> = packets
        .iter()
        .flat_map(|(_, p)| p.orders.iter().map(|o| o.order.order_id.clone()))
        .collect();
    assert_eq!(
        ids.iter().filter(|id| id.as_str() == "AFTER-LOSS").count(),
        1
    );
    assert_eq!(
        ids.len(),
        traffic.valid.len() + 1,
        "no re-sent order was dispatched again"
    );
    router.stop();
    assert!(state.exists(), "state directory recreated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_takes_over_a_killed_ones_partitions_exactly_once() {
    let world = World::new("takeover", 4).await;
    let config_a = write_config(&world, "a", "a", &world.dir.path().join("state-a"));
    let config_b = write_config(&world, "b", "b", &world.dir.path().join("state-b"));
    let producer = world.producer();

    let mut a = spawn(&config_a, &world.dir.path().join("a.log"));
    let b = spawn(&config_b, &world.dir.path().join("b.log"));
    let traffic = {
        let sender = send_traffic(&world, &producer, 300, Duration::from_millis(15));
        tokio::pin!(sender);
        let kill_at = Instant::now() + Duration::from_millis(2_000 + random_below(1_500));
        let mut killed = false;
        loop {
            tokio::select! {
                traffic = &mut sender => break traffic,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {
                    if !killed && Instant::now() >= kill_at {
                        // A dies mid-stream and stays dead: B must take over.
                        a.kill_hard();
                        killed = true;
                    }
                }
            }
        }
    };
    if a.is_running() {
        a.kill_hard();
    }
    check_exactly_once(&world, &traffic);
    b.stop();
}

/// The last 40 lines of a router log above debug level, for failure messages.
fn log_tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().filter(|l| !l.contains(" DEBUG ")).collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn log_has(log: &Path, text: &str) -> bool {
    std::fs::read_to_string(log).is_ok_and(|l| l.contains(text))
}

/// Sends a signal to a process by pid (`kill -<signal>`).
fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_instance_loses_its_partitions_and_output_stays_exactly_once() {
    let world = World::new("zombie", 4).await;
    // The broker's minimum session timeout: the pause below outlasts it.
    let session = "[kafka.client]\n\"session.timeout.ms\" = \"6000\"\n";
    let config = |name: &str| {
        let path = world.dir.path().join(format!("{name}.toml"));
        let state = world.dir.path().join(format!("state-{name}"));
        let text = world.config_text(5, 300, name, &state) + session;
        std::fs::write(&path, text).expect("config");
        path
    };
    let (config_a, config_b) = (config("a"), config("b"));
    let producer = world.producer();

    let mut a = spawn(&config_a, &world.dir.path().join("a.log"));
    let b = spawn(&config_b, &world.dir.path().join("b.log"));
    let traffic = {
        let sender = send_traffic(&world, &producer, 1_000, Duration::from_millis(15));
        tokio::pin!(sender);
        // SIGSTOP freezes the instance wherever it is, perhaps inside a
        // transaction; the group moves its partitions to b after the
        // session timeout; SIGCONT wakes it as a zombie that must not get
        // anything committed for them.
        // Paused only once it routes (it may join the group after b).
        let mut pause_at = None;
        let (mut paused, mut resumed) = (false, false);
        loop {
            tokio::select! {
                traffic = &mut sender => break traffic,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {
                    if pause_at.is_none() && log_has(&a.log, "first transaction committed") {
                        pause_at = Some(Instant::now() + Duration::from_millis(random_below(1_000)));
                    }
                    let resume_at = pause_at.map(|p| p + Duration::from_secs(9));
                    if !paused && pause_at.is_some_and(|p| Instant::now() >= p) {
                        signal(a.pid(), "STOP");
                        paused = true;
                    }
                    if paused && !resumed && resume_at.is_some_and(|r| Instant::now() >= r) {
                        signal(a.pid(), "CONT");
                        resumed = true;
                    }
                }
            }
        }
    };
    // The zombie notices when librdkafka next talks to the group.
    let deadline = Instant::now() + Duration::from_secs(30);
    let log = loop {
        let log = std::fs::read_to_string(&a.log).unwrap_or_default();
        if log.contains("partitions gone without a handover") || !a.is_running() {
            break log;
        }
        assert!(
            Instant::now() < deadline,
            "no loss noticed; the log ends:\n{}",
            log_tail(&log)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        a.is_running(),
        "the resumed instance goes on; its log ends:\n{}",
        log_tail(&log)
    );
    check_exactly_once(&world, &traffic);
    b.stop();
    a.stop();
}
