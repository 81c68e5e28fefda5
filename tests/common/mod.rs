//! Shared plumbing for the integration tests: each test gets its own topics,
//! consumer group and transactional id on the real local broker, runs a
//! router in-process, and checks the outcome with an independent
//! read_committed consumer.
//!
//! The broker address comes from `CMMS_TEST_BOOTSTRAP` (default
//! 127.0.0.1:9092); `scripts/kafka-local.sh start` (or `.ci/run`) starts one.

#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cmms_router::codec::Codec;
use cmms_router::config::RouterConfig;
use cmms_router::model::{
    samples, DeadLetter, DeadLetterReason, DispatchBatch, NormalizedWorkOrder, TechnicianRoster,
};
use cmms_router::replay::Source;
use cmms_router::router::{self, Health, RouterError, RunSummary};
use cmms_router::routing::RoutingConfig;
use cmms_router::telemetry::now_millis;
use cmms_router::telemetry::Metrics;
use cmms_router::topology::{self, Topology};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A replay data set's file in `CMMS_DATA_DIR`, or in the shared data
/// directory beside the repository; `None` (and a `skipping` line) when it
/// is not there.
pub fn data_file(source: Source) -> Option<PathBuf> {
    let dir = std::env::var_os("CMMS_DATA_DIR")
        .map_or_else(|| repo().join("../shared/data"), PathBuf::from);
    let path = dir.join(source.default_file());
    if path.is_file() {
        Some(path)
    } else {
        eprintln!("skipping: replay data file {} is absent", path.display());
        None
    }
}

/// The broker the tests use.
pub fn bootstrap() -> String {
    std::env::var("CMMS_TEST_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".to_string())
}

/// A unique, readable id for this test's Kafka names.
pub fn unique(label: &str) -> String {
    format!(
        "t-{label}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// Loads the shipped schemas.
pub fn codec() -> Arc<Codec> {
    Arc::new(Codec::load(&repo().join("schemas")).expect("shipped schemas load"))
}

/// How long a test waits for output it expects.
pub const READ: Duration = Duration::from_secs(60);

/// What was sent to the input, as the output must show it.
pub struct Traffic {
    /// Every valid, unique order id, with the site and trade its packet
    /// must carry.
    pub valid: BTreeMap<String, (String, String)>,
    /// The bytes of every bad record sent, with its dead-letter reason.
    pub bad: Vec<(Vec<u8>, DeadLetterReason)>,
}

/// Checks, with independent read_committed consumers, that every valid
/// order of `traffic` is in exactly one packet (with its site and trade)
/// and the dead-letter topic holds exactly its bad records, once each;
/// returns the packets read.
pub fn check_exactly_once(world: &World, traffic: &Traffic) -> Vec<(String, DispatchBatch)> {
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

    // A killed instance's open transaction holds back read_committed readers
    // of every partition it wrote to until the broker aborts it (up to the
    // transaction timeout and the broker's abort sweep): wait for all the
    // expected letters, then read once more for late duplicates.
    world.read_dead_letters(traffic.bad.len(), READ);
    let letters = world.read_dead_letters(traffic.bad.len() + 1, Duration::from_secs(5));
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
    packets
}

/// The last 40 lines of a router log above debug level, for failure messages.
pub fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.contains(" DEBUG ")).collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// One test's world: its own topics, group, transactional id and temp dir.
pub struct World {
    pub id: String,
    pub dir: tempfile::TempDir,
    pub topology: Arc<Topology>,
    pub codec: Arc<Codec>,
    pub input_partitions: i32,
}

impl World {
    /// Creates the test's topics on the broker (input with `partitions` partitions).
    pub async fn new(label: &str, partitions: i32) -> Self {
        let id = unique(label);
        let dir = tempfile::tempdir().expect("tempdir");
        // The shipped trade map, with every topic name made unique.
        let text = format!(
            r#"
app_id = "{id}"
replication_factor = 1
[input]
name = "{id}.in"
partitions = {partitions}
[roster]
name = "{id}.roster"
partitions = 1
[dead_letter]
name = "{id}.dlq"
partitions = 1
[vendor_desk]
name = "{id}.vendor"
partitions = 1
[fallback]
name = "{id}.fallback"
partitions = 1
[[trades]]
code = "hvac"
topic = "{id}.hvac"
partitions = 2
[[trades]]
code = "plumbing"
topic = "{id}.plumbing"
partitions = 2
[[trades]]
code = "electrical"
topic = "{id}.electrical"
partitions = 1
[[trades]]
code = "elevator"
topic = "{id}.elevator"
partitions = 1
[[trades]]
code = "general"
topic = "{id}.general"
partitions = 1
[[trades]]
code = "non_building"
route = "fallback"
"#
        );
        let path = dir.path().join("topology.toml");
        std::fs::write(&path, text).expect("write topology");
        let topology = Topology::load(&path).expect("test topology is valid");
        let reports = topology::reconcile(&topology, &client(), true)
            .await
            .expect("topics created");
        assert!(
            reports
                .iter()
                .all(|r| r.status == topology::TopicStatus::Created),
            "{reports:?}"
        );
        let world = Self {
            id,
            dir,
            topology: Arc::new(topology),
            codec: codec(),
            input_partitions: partitions,
        };
        // One technician on shift for every trade at the sites the tests
        // use, so valid orders reach their trade topics; the roster tests
        // use a site of their own (SITE-R) to control who is there.
        let mut all = on_shift_now("T-ALL", "SITE-A", "hvac");
        all.sites = ["A", "B", "D", "F", "N", "Q", "X"]
            .iter()
            .map(|s| format!("SITE-{s}"))
            .chain((0..20).map(|i| format!("SITE-{i}")))
            .collect();
        all.trades = ["hvac", "plumbing", "electrical", "elevator", "general"]
            .map(String::from)
            .to_vec();
        world.publish_roster("T-ALL", Some(&all)).await;
        world
    }

    /// Publishes a roster entry (or a removal) to the world's roster topic.
    pub async fn publish_roster(&self, id: &str, entry: Option<&TechnicianRoster>) {
        let producer: FutureProducer = client().create().expect("producer");
        let value = entry.map(|t| self.codec.encode_roster(t).expect("encode"));
        let mut record: FutureRecord<'_, str, Vec<u8>> =
            FutureRecord::to(&self.topology.roster.name).key(id);
        if let Some(v) = &value {
            record = record.payload(v);
        }
        producer
            .send(record, Duration::from_secs(10))
            .await
            .expect("roster record delivered");
    }

    /// Router config text for this world: the given window, state in
    /// `state_dir`, transactional id suffix `instance` (one per process).
    pub fn config_text(
        &self,
        max_orders: usize,
        max_wait_ms: u64,
        instance: &str,
        state_dir: &Path,
    ) -> String {
        format!(
            r#"
[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "{id}-group"
transactional_id = "{id}-{instance}"
transaction_timeout_ms = 30000
[router]
schemas_dir = "{schemas}"
topology = "{topology}"
commit_interval_ms = 100
[window]
max_orders = {max_orders}
max_wait_ms = {max_wait_ms}
[state]
dir = "{state}"
[http]
listen = "off"
"#,
            bootstrap = bootstrap(),
            id = self.id,
            schemas = repo().join("schemas").display(),
            topology = self.dir.path().join("topology.toml").display(),
            state = state_dir.display(),
        )
    }

    /// Router config for this world with the given window (in-process, state
    /// in the world's temp dir).
    pub fn config(&self, max_orders: usize, max_wait_ms: u64) -> RouterConfig {
        let text = self.config_text(
            max_orders,
            max_wait_ms,
            "router",
            &self.dir.path().join("state"),
        );
        RouterConfig::from_toml(&text, "test", Path::new("/"), std::iter::empty())
            .expect("test config is valid")
    }

    /// Starts a router in this process.
    pub fn start(&self, config: RouterConfig) -> RunningRouter {
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let metrics = Metrics::new();
        let health = Arc::new(Health::default());
        let parts = router::Parts {
            topology: self.topology.clone(),
            routing: Arc::new(RoutingConfig::default()),
            codec: self.codec.clone(),
        };
        let handle = tokio::spawn(router::run(
            config,
            parts,
            metrics.clone(),
            health.clone(),
            async move {
                let _ = stop_rx.await;
            },
        ));
        RunningRouter {
            stop: Some(stop_tx),
            handle,
            metrics,
            health,
        }
    }

    /// A producer for the input topic.
    pub fn producer(&self) -> FutureProducer {
        client()
            .set("enable.idempotence", "true")
            .create()
            .expect("producer")
    }

    /// Sends an order keyed by its site; returns (partition, offset).
    pub async fn send_order(
        &self,
        producer: &FutureProducer,
        order: &NormalizedWorkOrder,
    ) -> (i32, i64) {
        let (key, bytes) = self.input_record(order);
        self.send_raw(producer, Some(key.as_bytes()), &bytes).await
    }

    /// The input record of `order`: keyed by its site (by its id when it
    /// has none), valued with its Avro bytes.
    pub fn input_record(&self, order: &NormalizedWorkOrder) -> (String, Vec<u8>) {
        let key = order
            .site_id
            .clone()
            .unwrap_or_else(|| order.order_id.clone());
        (key, self.codec.encode_work_order(order).expect("encode"))
    }

    /// Enqueues every (key, value) record to the input at once, then awaits
    /// every delivery: a burst, in order within each partition.
    pub async fn send_all(&self, producer: &FutureProducer, records: &[(String, Vec<u8>)]) {
        let deliveries: Vec<_> = records
            .iter()
            .map(|(key, value)| {
                let record = FutureRecord::to(&self.topology.input.name)
                    .key(key.as_bytes())
                    .payload(value.as_slice());
                producer
                    .send_result(record)
                    .unwrap_or_else(|(e, _)| panic!("enqueue failed: {e}"))
            })
            .collect();
        for delivery in deliveries {
            delivery
                .await
                .expect("producer alive")
                .unwrap_or_else(|(e, _)| panic!("delivery failed: {e}"));
        }
    }

    /// Sends raw bytes to the input; returns (partition, offset).
    pub async fn send_raw(
        &self,
        producer: &FutureProducer,
        key: Option<&[u8]>,
        value: &[u8],
    ) -> (i32, i64) {
        let mut record = FutureRecord::to(&self.topology.input.name).payload(value);
        if let Some(k) = key {
            record = record.key(k);
        }
        let delivery = producer
            .send(record, Duration::from_secs(10))
            .await
            .expect("delivered");
        (delivery.partition, delivery.offset)
    }

    /// Every trade, vendor and fallback topic.
    pub fn dispatch_topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self
            .topology
            .router_topics()
            .into_iter()
            .map(|t| t.name.clone())
            .filter(|n| {
                n != &self.topology.input.name
                    && n != &self.topology.dead_letter.name
                    && n != &self.topology.roster.name
                    && n != &self.topology.dedup_changelog.name
            })
            .collect();
        topics.sort();
        topics
    }

    /// Reads packets (topic, packet) with read_committed until `want` orders
    /// were seen in total, or `timeout`.
    pub fn read_packets(
        &self,
        want_orders: usize,
        timeout: Duration,
    ) -> Vec<(String, DispatchBatch)> {
        let topics = self.dispatch_topics();
        let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        let mut out = Vec::new();
        let mut orders = 0;
        read_committed(&refs, timeout, |topic, _key, value| {
            let batch = self
                .codec
                .decode_dispatch(value)
                .expect("packets are valid DispatchBatch datums");
            orders += batch.orders.len();
            out.push((topic.to_string(), batch));
            orders >= want_orders
        });
        out
    }

    /// Reads dead letters with read_committed until `want` or `timeout`.
    pub fn read_dead_letters(&self, want: usize, timeout: Duration) -> Vec<DeadLetter> {
        let mut out = Vec::new();
        read_committed(
            &[self.topology.dead_letter.name.as_str()],
            timeout,
            |_, _, value| {
                out.push(
                    self.codec
                        .decode_dead_letter(value)
                        .expect("dead letters are valid DeadLetter datums"),
                );
                out.len() >= want
            },
        );
        out
    }

    /// Offsets the router's group has committed on the input, per partition.
    pub fn committed_offsets(&self) -> BTreeMap<i32, Option<i64>> {
        let consumer: BaseConsumer = client()
            .set("group.id", format!("{}-group", self.id))
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.input_partitions {
            tpl.add_partition(&self.topology.input.name, p);
        }
        let committed = consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .expect("committed offsets");
        committed
            .elements()
            .iter()
            .map(|e| {
                let off = match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                };
                (e.partition(), off)
            })
            .collect()
    }

    /// End offsets (high watermarks) of the input partitions.
    pub fn input_end_offsets(&self) -> BTreeMap<i32, i64> {
        let consumer: BaseConsumer = client().create().expect("consumer");
        (0..self.input_partitions)
            .map(|p| {
                let (_, high) = consumer
                    .fetch_watermarks(&self.topology.input.name, p, Duration::from_secs(10))
                    .expect("watermarks");
                (p, high)
            })
            .collect()
    }
}

/// A technician on shift now (one hour in, eight to go) with a valid EPA608.
pub fn on_shift_now(id: &str, site: &str, trade: &str) -> TechnicianRoster {
    const HOUR: i64 = 3_600_000;
    let now = now_millis();
    let mut t = samples::technician(id, site, trade);
    t.shift_start = Some(now - HOUR);
    t.shift_end = Some(now + 8 * HOUR);
    for c in &mut t.certifications {
        c.expires_at = Some(now + 365 * 24 * HOUR);
    }
    t.updated_at = now;
    t
}

/// Client config pointing at the test broker.
pub fn client() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap());
    c
}

/// Reads `topics` from the beginning with an independent read_committed
/// consumer, calling `on_record(topic, key, value)` until it returns true
/// or `timeout` passes.
pub fn read_committed(
    topics: &[&str],
    timeout: Duration,
    mut on_record: impl FnMut(&str, Option<&[u8]>, &[u8]) -> bool,
) {
    let consumer: BaseConsumer = client()
        .set("group.id", unique("reader"))
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    consumer.subscribe(topics).expect("subscribe");
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let value = m.payload().unwrap_or_default();
                if on_record(m.topic(), m.key(), value) {
                    return;
                }
            }
            Some(Err(e)) => panic!("reader error: {e}"),
            None => {}
        }
    }
}

/// A router running in the test process.
pub struct RunningRouter {
    stop: Option<oneshot::Sender<()>>,
    pub handle: JoinHandle<Result<RunSummary, RouterError>>,
    pub metrics: Metrics,
    pub health: Arc<Health>,
}

impl RunningRouter {
    /// Waits until the router has partitions assigned.
    pub async fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.health.is_ready() {
            assert!(
                Instant::now() < deadline,
                "router not ready after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Asks the router to shut down gracefully and waits for it.
    pub async fn stop(mut self) -> RunSummary {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(60), self.handle)
            .await
            .expect("router stops within 60 s")
            .expect("router task did not panic")
            .expect("router stopped without error")
    }

    /// Whether the loop is still running.
    pub fn is_running(&self) -> bool {
        !self.handle.is_finished()
    }
}

/// The router binary running as its own process, with its log in a file;
/// killed on drop, so a failing assertion leaves no router running.
pub struct RouterProcess {
    child: Child,
    pub log: PathBuf,
}

impl RouterProcess {
    /// Starts `cmms-router run --config <config>`, appending its log (at
    /// `rust_log`) to `log`.
    pub fn spawn(config: &Path, log: &Path, rust_log: &str) -> Self {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("router log file");
        let child = Command::new(env!("CARGO_BIN_EXE_cmms-router"))
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", rust_log)
            .env_remove("CMMS_ROUTER_CONFIG")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("router binary starts");
        Self {
            child,
            log: log.to_path_buf(),
        }
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has not exited yet.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL (std's kill): no flush, no commit, no leaving the group.
    pub fn kill_hard(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("killed router reaped");
    }

    /// SIGTERM, then waits up to 60 s for a clean exit (status 0).
    pub fn stop(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                assert!(status.success(), "router exited with {status}; log:\n{log}");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "router did not stop after SIGTERM; log in {}",
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for RouterProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
