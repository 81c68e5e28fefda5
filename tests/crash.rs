//! Exactly once across crashes: the router binary is killed with SIGKILL at
//! random points while replayed traffic flows, restarted each time, and in
//! the end an independent read_committed consumer finds every valid, unique
//! order in exactly one packet and every bad record in exactly one dead
//! letter. Also: losing the state directory, a second instance taking
//! over from a killed one, and a paused instance waking up as a zombie.
//!
//! The traffic is either built here (orders over a few sites and trades,
//! undecodable bytes, orders without a site, upstream re-sends) or a day of
//! real NYC 311 requests converted by the replay (`../shared/data`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cmms_router::intake;
use cmms_router::model::{samples, DeadLetterReason, NormalizedWorkOrder};
use cmms_router::replay::{self, Source};
use cmms_router::telemetry::now_millis;
use cmms_router::topology::TradeRoute;
use common::{check_exactly_once, log_tail, RouterProcess, Traffic, World, READ};
use rdkafka::producer::FutureProducer;

/// Router log level: debug shows each duplicate and skipped record.
const LOG: &str = "info,cmms_router=debug";

fn spawn(config: &Path, log: &Path) -> RouterProcess {
    RouterProcess::spawn(config, log, LOG)
}

/// Cheap randomness without another dependency: a fresh v4 UUID's bits.
fn random_below(n: u64) -> u64 {
    (uuid::Uuid::new_v4().as_u128() as u64) % n
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

/// A day of real NYC 311 requests, converted by the replay and rebased to
/// now; `None` when the data set is absent.
fn nyc311_orders() -> Option<Vec<NormalizedWorkOrder>> {
    let path = common::data_file(Source::Nyc311)?;
    let mut orders = replay::load(Source::Nyc311, &path).expect("nyc311 data loads");
    replay::rebase(&mut orders, now_millis());
    Some(orders)
}

/// What the router must make of `orders`, decided by the library's own
/// validation: rows without an address are expected as dead letters.
fn expected<'a>(
    world: &World,
    orders: impl IntoIterator<Item = &'a NormalizedWorkOrder>,
) -> Traffic {
    let mut traffic = Traffic {
        valid: BTreeMap::new(),
        bad: Vec::new(),
    };
    for order in orders {
        match intake::validate(order.clone(), &world.topology) {
            Ok(valid) => {
                let routed_as = (valid.site().to_string(), order.trade.clone());
                let first = traffic.valid.insert(order.order_id.clone(), routed_as);
                assert!(first.is_none(), "order ids in the data set are unique");
            }
            Err(rejection) => {
                let bytes = world.codec.encode_work_order(order).expect("encode");
                traffic.bad.push((bytes, rejection.reason));
            }
        }
    }
    traffic
}

/// Sends `orders` in bursts of `BURST` (each burst's deliveries awaited
/// before the next), every 17th order sent once more in the following
/// burst, as an upstream re-send; returns the orders re-sent.
async fn send_orders<'a>(
    world: &World,
    producer: &FutureProducer,
    orders: &'a [NormalizedWorkOrder],
) -> Vec<&'a NormalizedWorkOrder> {
    const BURST: usize = 100;
    let mut burst = Vec::with_capacity(BURST);
    let mut resends = Vec::new();
    let mut resent = Vec::new();
    for (i, order) in orders.iter().enumerate() {
        let record = world.input_record(order);
        if i % 17 == 3 {
            resends.push(record.clone());
            resent.push(order);
        }
        burst.push(record);
        if burst.len() >= BURST {
            world.send_all(producer, &burst).await;
            burst = std::mem::take(&mut resends);
            // Spreads the day over several seconds, so kills land in it.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    burst.append(&mut resends);
    world.send_all(producer, &burst).await;
    resent
}

/// Drives `sender` to its end while SIGKILLing `router` up to `kills` times,
/// each after a random pause in `pause` (ms), restarting it at once each
/// time; returns the sender's output and the number of kills done.
async fn kill_while<F: Future<Output = T>, T>(
    sender: F,
    router: &mut RouterProcess,
    kills: usize,
    pause: (u64, u64),
    restart: impl Fn() -> RouterProcess,
) -> (T, usize) {
    tokio::pin!(sender);
    let next = || Instant::now() + Duration::from_millis(pause.0 + random_below(pause.1 - pause.0));
    let mut done = 0;
    let mut next_kill = next();
    loop {
        tokio::select! {
            out = &mut sender => break (out, done),
            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                if done < kills && Instant::now() >= next_kill {
                    router.kill_hard();
                    done += 1;
                    *router = restart();
                    next_kill = next();
                }
            }
        }
    }
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
    // Kill the router three times at random points while traffic flows.
    let sender = send_traffic(&world, &producer, 400, Duration::from_millis(15));
    let (traffic, kills) = kill_while(sender, &mut router, 3, (1_000, 2_500), || {
        spawn(&config, &log)
    })
    .await;
    // 400 orders 15 ms apart take over 6 s: room for two kills at least.
    assert!(kills >= 2, "{kills} kills while traffic flowed");
    // One more kill after the traffic, before everything is dispatched.
    tokio::time::sleep(Duration::from_millis(200)).await;
    router.kill_hard();
    let router = spawn(&config, &log);
    check_exactly_once(&world, &traffic);
    router.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_nyc311_day_survives_kills_exactly_once() {
    let Some(orders) = nyc311_orders() else {
        return;
    };
    let world = World::new("crash-nyc", 3).await;
    let mut traffic = expected(&world, &orders);
    assert!(
        traffic.valid.len() > 1_000 && !traffic.bad.is_empty(),
        "the day holds routable requests and requests without an address"
    );
    // One technician on shift for every building trade at every site of the
    // day, so building work reaches its trade topic.
    let mut tech = common::on_shift_now("T-NYC", "", "hvac");
    let sites: BTreeSet<&str> = traffic.valid.values().map(|(s, _)| s.as_str()).collect();
    tech.sites = sites.iter().map(|s| s.to_string()).collect();
    tech.trades = ["hvac", "plumbing", "electrical", "elevator", "general"]
        .map(String::from)
        .to_vec();
    tech.certifications.clear();
    world.publish_roster("T-NYC", Some(&tech)).await;

    let state = world.dir.path().join("state-nyc");
    let config = write_config(&world, "nyc", "nyc", &state);
    let log = world.dir.path().join("router-nyc.log");
    let producer = world.producer();
    let mut router = spawn(&config, &log);
    let sender = send_orders(&world, &producer, &orders);
    let (resent, kills) = kill_while(sender, &mut router, 3, (500, 1_200), || {
        spawn(&config, &log)
    })
    .await;
    // 25 bursts 200 ms apart take over 5 s; three kills take under 4 s.
    assert_eq!(kills, 3, "kills while the day was replayed");
    tokio::time::sleep(Duration::from_millis(200)).await;
    router.kill_hard();
    let router = spawn(&config, &log);
    eprintln!(
        "nyc311: {} routable orders at {} sites, {} without an address, {} re-sent",
        traffic.valid.len(),
        sites.len(),
        traffic.bad.len(),
        resent.len()
    );
    // A re-sent routable order is a duplicate; a re-sent bad record is a
    // record of its own and is dead-lettered again.
    let bad_again = expected(&world, resent).bad;
    traffic.bad.extend(bad_again);

    let packets = check_exactly_once(&world, &traffic);
    // Building work is on its trade's topic, the rest on the fallback.
    for (topic, packet) in &packets {
        let want = match world.topology.route(&packet.trade) {
            Some(TradeRoute::Topic(t)) => t,
            _ => &world.topology.fallback.name,
        };
        assert_eq!(
            topic, want,
            "packet {} of {}",
            packet.batch_id, packet.trade
        );
    }
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
    while !log_has(&a.log, "partitions gone without a handover") && a.is_running() {
        assert!(
            Instant::now() < deadline,
            "no loss noticed; the log ends:\n{}",
            log_tail(&a.log)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        a.is_running(),
        "the resumed instance goes on; its log ends:\n{}",
        log_tail(&a.log)
    );
    check_exactly_once(&world, &traffic);
    b.stop();
    a.stop();
}
