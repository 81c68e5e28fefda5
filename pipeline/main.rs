//! `cmms-router`: the command-line entry point.
//!
//! Subcommands: `run` (the router), `topology apply|check` (hold a cluster
//! to `topology/`), `replay` (real intake traffic from a CSV), and
//! `config check` (validate configuration without touching Kafka). Errors
//! reach the user here with their context; the library below stays typed.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use cmms_router::codec::Codec;
use cmms_router::config::{LogFormat, RouterConfig};
use cmms_router::dispatch::base_client_config;
use cmms_router::replay::{self, Progress, Source};
use cmms_router::router::{self, Health};
use cmms_router::routing::RoutingConfig;
use cmms_router::telemetry::{now_millis, Metrics};
use cmms_router::topology::{self, TopicStatus, Topology};
use cmms_router::watch::{self, Emitted};
use rdkafka::producer::FutureProducer;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "cmms-router",
    version,
    about = "Routes maintenance work orders into per-trade job packets, exactly once"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct ConfigArg {
    /// Router configuration file (TOML); CMMS_ROUTER__SECTION__KEY variables override it.
    #[arg(
        long,
        short,
        env = "CMMS_ROUTER_CONFIG",
        default_value = "config/router.toml"
    )]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the router until SIGINT or SIGTERM.
    Run(ConfigArg),
    /// Create or check the topics declared in the topology file.
    Topology {
        #[command(subcommand)]
        action: TopologyAction,
    },
    /// Produce real maintenance requests from a CSV to the input topic.
    Replay(ReplayArgs),
    /// Print the packets and dead letters on the output topics, as a
    /// downstream connector sees them (read_committed), with per-trade totals.
    Watch(WatchArgs),
    /// Validate configuration, topology and schemas without connecting.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Subcommand)]
enum TopologyAction {
    /// Create missing topics and report the ones that differ.
    Apply(ConfigArg),
    /// Report missing or differing topics; exit 1 if any.
    Check(ConfigArg),
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Load and validate everything, print a summary.
    Check(ConfigArg),
}

#[derive(Args)]
struct WatchArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Stop after this many seconds without a new record; 0 follows forever.
    #[arg(long, default_value_t = 0)]
    idle_exit: u64,
    /// Print only the per-trade totals at the end, not a line per record.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct ReplayArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Which data set the CSV is: nyc311 or nestor.
    #[arg(long)]
    source: Source,
    /// CSV file; defaults to the data set's file in ../shared/data beside the repository.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Records per second; 0 for as fast as possible.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Replay only the first N records.
    #[arg(long)]
    limit: Option<usize>,
    /// Keep the data's original timestamps instead of shifting them to now.
    #[arg(long)]
    keep_times: bool,
    /// Progress display: auto, bar, log or off.
    #[arg(long, default_value = "auto", value_parser = parse_progress)]
    progress: Progress,
}

fn parse_progress(s: &str) -> Result<Progress, String> {
    match s {
        "auto" => Ok(Progress::Auto),
        "bar" => Ok(Progress::Bar),
        "log" => Ok(Progress::Log),
        "off" => Ok(Progress::Off),
        other => Err(format!(
            "{other:?} is not a progress mode: use auto, bar, log or off"
        )),
    }
}

/// Everything `run` and the other commands load at start, validated.
struct Loaded {
    config: RouterConfig,
    topology: Topology,
    routing: RoutingConfig,
    codec: Codec,
}

fn load(path: &Path) -> Result<Loaded> {
    let config = RouterConfig::load(path)?;
    let topology = Topology::load(&config.topology).with_context(|| {
        format!(
            "topology file {} (router.topology)",
            config.topology.display()
        )
    })?;
    let codec = Codec::load(&config.schemas_dir).with_context(|| {
        format!(
            "schemas in {} (router.schemas_dir)",
            config.schemas_dir.display()
        )
    })?;
    let routing = match &config.routing {
        Some(path) => RoutingConfig::load(path)
            .with_context(|| format!("routing file {} (router.routing)", path.display()))?,
        None => RoutingConfig::default(),
    };
    Ok(Loaded {
        config,
        topology,
        routing,
        codec,
    })
}

fn init_logging(format: LogFormat, filter: &str) {
    // RUST_LOG, when set, wins over the config file's filter.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli).await {
        Ok(code) => code,
        Err(e) => {
            // Logging may not be set up yet (bad config), so print directly.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run(arg) => run(&arg.config).await,
        Command::Topology { action } => {
            let (arg, create) = match action {
                TopologyAction::Apply(a) => (a, true),
                TopologyAction::Check(a) => (a, false),
            };
            topology_cmd(&arg.config, create).await
        }
        Command::Replay(args) => replay_cmd(args).await,
        Command::Watch(args) => watch_cmd(args).await,
        Command::Config {
            action: ConfigAction::Check(arg),
        } => {
            let loaded = load(&arg.config)?;
            println!("config ok: {}", arg.config.display());
            println!("  kafka: {:?}", loaded.config.kafka);
            println!("  schemas: {}", loaded.codec.dir().display());
            println!(
                "  input: {} ({} partitions)",
                loaded.topology.input.name, loaded.topology.input.partitions
            );
            println!(
                "  trades: {}",
                loaded
                    .topology
                    .trades
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn run(path: &Path) -> Result<ExitCode> {
    let Loaded {
        config,
        topology,
        routing,
        codec,
    } = load(path)?;
    init_logging(config.log_format, &config.log_filter);
    let metrics = Metrics::new();
    let health = Arc::new(Health::default());
    let http = match config.http_listen {
        Some(addr) => Some(
            cmms_router::http::serve(addr, metrics.clone(), health.clone())
                .await
                .with_context(|| format!("cannot listen on http.listen {addr}"))?,
        ),
        None => None,
    };
    let parts = router::Parts {
        topology: Arc::new(topology),
        routing: Arc::new(routing),
        codec: Arc::new(codec),
    };
    let summary = router::run(config, parts, metrics, health, shutdown_signal()).await;
    if let Some(task) = http {
        task.abort();
    }
    match summary {
        Ok(s) => {
            tracing::info!(
                commits = s.commits,
                aborts = s.aborts,
                "router stopped cleanly"
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            tracing::error!(error = %e, "router stopped on a fatal error");
            Err(e).context("router stopped")
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the router");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown signal received");
}

async fn topology_cmd(path: &Path, create: bool) -> Result<ExitCode> {
    let Loaded {
        config, topology, ..
    } = load(path)?;
    init_logging(config.log_format, "warn");
    let reports =
        topology::reconcile(&topology, &base_client_config(&config.kafka), create).await?;
    let mut problems = 0;
    for r in &reports {
        println!("{r}");
        if matches!(r.status, TopicStatus::Missing | TopicStatus::Differs(_)) {
            problems += 1;
        }
    }
    if problems > 0 {
        println!(
            "{problems} topic(s) missing or different from {}",
            config.topology.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    println!("{} topics as declared", reports.len());
    Ok(ExitCode::SUCCESS)
}

async fn replay_cmd(args: ReplayArgs) -> Result<ExitCode> {
    let Loaded {
        config,
        topology,
        codec,
        ..
    } = load(&args.config.config)?;
    init_logging(config.log_format, &config.log_filter);
    let file = match args.file {
        Some(f) => f,
        // The config sits in <repo>/config; the shared data sets sit beside the repo.
        None => args
            .config
            .config
            .parent()
            .unwrap_or(Path::new("."))
            .join("../../shared/data")
            .join(args.source.default_file()),
    };
    let mut orders = replay::load(args.source, &file)
        .with_context(|| format!("cannot load {}", file.display()))?;
    if let Some(limit) = args.limit {
        orders.truncate(limit);
    }
    if orders.is_empty() {
        bail!("{} holds no records to replay", file.display());
    }
    if !args.keep_times {
        replay::rebase(&mut orders, now_millis());
    }
    let mut client = replay::producer_config(&config.kafka.bootstrap_servers);
    for (k, v) in &config.kafka.client {
        client.set(k, v);
    }
    let producer: FutureProducer = client
        .create()
        .context("cannot create the replay producer")?;
    let report = replay::produce(
        orders,
        &producer,
        &topology.input.name,
        &codec,
        args.rate,
        args.progress,
    )
    .await?;
    println!(
        "replayed {} of {} records from {} to {} in {:.1}s ({:.0}/s)",
        report.produced,
        report.read,
        file.display(),
        topology.input.name,
        report.elapsed.as_secs_f64(),
        report.rate()
    );
    for (trade, n) in &report.per_trade {
        println!("  {trade:<16} {n}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn watch_cmd(args: WatchArgs) -> Result<ExitCode> {
    let Loaded {
        config,
        topology,
        codec,
        ..
    } = load(&args.config.config)?;
    init_logging(config.log_format, "warn");
    let client = base_client_config(&config.kafka);
    let idle = (args.idle_exit > 0).then(|| std::time::Duration::from_secs(args.idle_exit));
    let quiet = args.quiet;
    let totals = tokio::task::spawn_blocking(move || {
        let mut orders: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
        let mut dead: std::collections::BTreeMap<String, u64> = Default::default();
        watch::follow(&client, &topology, &codec, idle, |emitted| {
            match emitted {
                Emitted::Packet(p) => {
                    let entry = orders.entry(p.trade.clone()).or_default();
                    entry.0 += 1;
                    entry.1 += p.orders.len() as u64;
                    if !quiet {
                        let ids: Vec<&str> =
                            p.orders.iter().map(|o| o.order.order_id.as_str()).collect();
                        println!(
                            "{:<14} {:<11} {:<9} site={} orders={} close={:?} batch={} [{}]",
                            p.trade,
                            format!("{:?}", p.destination),
                            format!("{:?}", p.tier),
                            p.site_id,
                            p.orders.len(),
                            p.close_reason,
                            &p.batch_id[..8],
                            ids.join(" ")
                        );
                    }
                }
                Emitted::DeadLetter(d) => {
                    *dead.entry(d.reason.as_str().to_string()).or_default() += 1;
                    if !quiet {
                        println!(
                            "DEAD-LETTER    {:<24} p{}@{} {}",
                            d.reason.as_str(),
                            d.source_partition,
                            d.source_offset,
                            d.detail
                        );
                    }
                }
                Emitted::Foreign { topic, error } => println!("FOREIGN        {topic}: {error}"),
            }
            true
        })
        .map(|()| (orders, dead))
    })
    .await
    .context("watch task failed")??;
    let (orders, dead) = totals;
    println!("--- totals (read_committed) ---");
    for (trade, (packets, n)) in &orders {
        println!("  {trade:<16} {n:>6} orders in {packets:>5} packets");
    }
    for (reason, n) in &dead {
        println!("  dead letters {reason:<24} {n:>6}");
    }
    Ok(ExitCode::SUCCESS)
}
