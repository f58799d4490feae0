//! `harness chaos`: the guarantees under real faults, Jepsen-style.
//!
//! Runs two instances of each service as OS processes against the real PostgreSQL and RabbitMQ,
//! each reached through a proxy of this process, puts them under order load (the `harness load`
//! customers), and meanwhile, at random moments drawn from a printed seed: kills service
//! processes with SIGKILL and restarts them, restarts RabbitMQ, cuts every database connection
//! (or restarts PostgreSQL), makes the connections to PostgreSQL or RabbitMQ go silent or slow
//! (at the proxy: only the services of this run see it), republishes copies of messages already
//! delivered, and publishes poison messages. Then it waits for the system to go quiet, checks
//! every invariant, through the APIs and in the databases, and reports how long the services
//! took to notice the silent connections.

use crate::load::{Api, LoadArgs, OrderFlow, summarize};
use crate::proxy::{Detection, Episode, Proxy};
use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use messaging::Envelope;
use messaging::transport::rabbitmq::{QueueType, RabbitMq};
use messaging::transport::{DeadLetters, Naming, QueueSpec, Transport};
use serde::Serialize;
use shop::config::{AuthSettings, DataDir};
use sqlx::{Connection as _, PgConnection};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Args)]
pub struct ChaosArgs {
    /// Orders to place while faults happen.
    #[arg(long, default_value_t = 300)]
    pub orders: usize,
    /// Customers placing orders at the same time.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Products (few, so that orders compete for stock).
    #[arg(long, default_value_t = 8)]
    pub products: usize,
    /// Initial stock of each product (default: about three quarters of what the orders ask
    /// for, so that most are confirmed and the last ones compete for what is left).
    #[arg(long)]
    pub stock: Option<u32>,
    /// Mean pause between two faults.
    #[arg(long, default_value = "1500ms", value_parser = humantime::parse_duration)]
    pub fault_interval: Duration,
    /// Keep the load going until at least this many faults happened.
    #[arg(long, default_value_t = 6)]
    pub min_faults: usize,
    /// Seed of every random choice (printed, so that a failing run can be repeated).
    #[arg(long)]
    pub seed: Option<u64>,
    /// The saga's reservation timeout in the services under test.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub reservation_timeout: Duration,
    /// The kinds of faults to inject, comma-separated [default: every kind].
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = FAULTS, hide_default_value = true)]
    pub faults: Vec<Fault>,
    /// Latency the slow-postgres and slow-broker faults add to every chunk, each way.
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    pub slow_latency: Duration,
    /// Queue type of the services under test (`classic` or `quorum`).
    #[arg(long, env = "SHOP_QUEUE_TYPE", default_value = "classic")]
    pub queue_type: QueueType,
    /// Restart PostgreSQL (pg_ctlcluster) instead of cutting the services' connections.
    #[arg(long)]
    pub restart_postgres: bool,
    /// PostgreSQL server (without a database name) where the run's databases are created.
    #[arg(long, env = "SHOP_CHAOS_POSTGRES_URL", default_value = "postgres://postgres@127.0.0.1:5432")]
    pub postgres_url: String,
    #[arg(long, env = "SHOP_AMQP_URL", default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub amqp_url: String,
    /// The `shop` binary to run the services with (default: the one next to this executable).
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// How long the system may take to go quiet after the last fault.
    #[arg(long, default_value = "180s", value_parser = humantime::parse_duration)]
    pub quiescence_timeout: Duration,
    /// Keep the databases and service logs after the run.
    #[arg(long)]
    pub keep: bool,
    /// Also write the summary as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// SIGKILL an order service process (restarted after a moment).
    KillOrderService,
    /// SIGKILL an inventory service process (restarted after a moment).
    KillInventoryService,
    /// Stop and start RabbitMQ (for every client of the broker).
    RestartBroker,
    /// Terminate every database connection of the run (or restart PostgreSQL).
    Database,
    /// The services' PostgreSQL connections go silent for good (no FIN, no RST), and new ones
    /// for a few seconds.
    SilentPostgres,
    /// The services' RabbitMQ connections go silent for good, and new ones for a few seconds.
    SilentBroker,
    /// The services' PostgreSQL connections turn slow for a few seconds.
    SlowPostgres,
    /// The services' RabbitMQ connections turn slow for a few seconds.
    SlowBroker,
    /// Publish copies of messages already delivered.
    Duplicates,
    /// Publish messages no consumer can read.
    Poison,
}

/// Every kind of fault.
pub const FAULTS: [Fault; 10] = [
    Fault::KillOrderService,
    Fault::KillInventoryService,
    Fault::RestartBroker,
    Fault::Database,
    Fault::SilentPostgres,
    Fault::SilentBroker,
    Fault::SlowPostgres,
    Fault::SlowBroker,
    Fault::Duplicates,
    Fault::Poison,
];

impl Fault {
    fn name(self) -> String {
        serde_json::to_value(self).ok().and_then(|name| name.as_str().map(str::to_owned)).unwrap_or_default()
    }
}

#[derive(Debug, Default, Serialize)]
pub struct ChaosReport {
    pub seed: u64,
    pub orders: usize,
    pub statuses: BTreeMap<String, usize>,
    pub load_duration_s: f64,
    pub faults: BTreeMap<String, usize>,
    pub duplicates_injected: usize,
    pub poison_injected: usize,
    pub quiescence_s: f64,
    /// Per kind of silent or slow fault, what the services did about it.
    pub detection: BTreeMap<String, DetectionSummary>,
    pub violations: Vec<String>,
    pub logs: Option<String>,
}

/// How the services dealt with the faults of one kind, measured at the proxy.
#[derive(Debug, Default, Serialize)]
pub struct DetectionSummary {
    pub faults: usize,
    /// Connections open when a fault began (silenced or slowed).
    pub connections: usize,
    /// Silent faults: those the services closed, and how long after the fault began.
    pub abandoned: usize,
    pub abandoned_median_s: Option<f64>,
    pub abandoned_max_s: Option<f64>,
    /// Silent faults: those left open, waiting for an answer that cannot come, or idle.
    pub left_waiting: usize,
    pub left_idle: usize,
    /// Silent faults: connections opened while the fault lasted (each blackholed too).
    pub attempts_during: usize,
    /// Silent faults: the longest wait, after a fault ended, for the first new connection.
    pub reconnected_max_s: Option<f64>,
    /// Slow faults: connections the services gave up while the fault lasted (false alarms).
    pub abandoned_while_slow: usize,
}

impl DetectionSummary {
    fn of(fault: Fault, episodes: &[(Episode, Detection)]) -> Self {
        let mut abandoned: Vec<f64> = Vec::new();
        let mut summary = DetectionSummary { faults: episodes.len(), ..Self::default() };
        for (episode, detection) in episodes {
            summary.connections += detection.open;
            match fault {
                Fault::SlowPostgres | Fault::SlowBroker => {
                    let lasted = episode.duration().as_secs_f64();
                    summary.abandoned_while_slow +=
                        detection.abandoned_after_s.iter().filter(|after| **after <= lasted).count();
                }
                _ => {
                    abandoned.extend(&detection.abandoned_after_s);
                    summary.left_waiting += detection.waiting;
                    summary.left_idle += detection.idle;
                    summary.attempts_during += detection.opened_meanwhile;
                    summary.reconnected_max_s = match (summary.reconnected_max_s, detection.reconnected_after_s) {
                        (Some(longest), Some(this)) => Some(longest.max(this)),
                        (longest, this) => longest.or(this),
                    };
                }
            }
        }
        abandoned.sort_by(f64::total_cmp);
        summary.abandoned = abandoned.len();
        summary.abandoned_median_s = abandoned.get(abandoned.len() / 2).copied();
        summary.abandoned_max_s = abandoned.last().copied();
        summary
    }
}

impl ChaosReport {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

pub async fn run(args: ChaosArgs) -> anyhow::Result<std::process::ExitCode> {
    let report = execute(&args).await?;
    crate::conclude(&report, print_report, report.passed(), args.json.as_deref())
}

/// The proxies between the services under test and the servers.
struct Proxies {
    postgres: Arc<Proxy>,
    broker: Arc<Proxy>,
}

impl Proxies {
    async fn start(args: &ChaosArgs) -> anyhow::Result<Self> {
        let postgres = Proxy::start(server_of(&args.postgres_url, 5432)?).await?;
        let broker = Proxy::start(server_of(&args.amqp_url, 5672)?).await?;
        Ok(Self { postgres: Arc::new(postgres), broker: Arc::new(broker) })
    }
}

/// The address of the server `url` names.
fn server_of(url: &str, default_port: u16) -> anyhow::Result<std::net::SocketAddr> {
    let url = reqwest::Url::parse(url).with_context(|| format!("{} is no URL", messaging::redact_url(url)))?;
    url.socket_addrs(|| Some(default_port))?
        .into_iter()
        .next()
        .with_context(|| format!("{} names no address", messaging::redact_url(url.as_str())))
}

/// `url` with its host and port replaced by `proxy`'s.
fn through(url: &str, proxy: &Proxy) -> anyhow::Result<String> {
    let mut url = reqwest::Url::parse(url)?;
    let addr = proxy.addr();
    url.set_ip_host(addr.ip())
        .map_err(|()| anyhow::anyhow!("cannot set the host of {}", messaging::redact_url(url.as_str())))?;
    url.set_port(Some(addr.port()))
        .map_err(|()| anyhow::anyhow!("cannot set the port of {}", messaging::redact_url(url.as_str())))?;
    Ok(url.to_string())
}

/// The system under test: four service processes, their databases and broker names.
struct Cluster {
    binary: PathBuf,
    logs: PathBuf,
    env: Vec<(String, String)>,
    orders_db: String,
    inventory_db: String,
    postgres_url: String,
    naming: Naming,
    instances: Vec<Instance>,
    proxies: Proxies,
}

struct Instance {
    service: &'static str,
    port: u16,
    child: Option<Child>,
    /// Killed on purpose and due to be restarted by the fault that killed it.
    held_down: bool,
}

impl Instance {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// The `shop` binary built beside this one (`cargo build -p shop -p harness` puts both in one
/// directory).
pub(crate) fn shop_binary() -> anyhow::Result<PathBuf> {
    let binary = std::env::current_exe()?.with_file_name("shop");
    anyhow::ensure!(
        binary.is_file(),
        "no shop binary at {} (build it with `cargo build --release -p shop`, or pass --binary)",
        binary.display()
    );
    Ok(binary)
}

/// Every consumer queue of the system under `naming`, as the services declare them.
pub(crate) fn consumer_queues(naming: &Naming) -> Vec<String> {
    use inventory::application as inventory;
    use order::application as order;
    [(order::SERVICE, order::CONSUMERS), (inventory::SERVICE, inventory::CONSUMERS)]
        .into_iter()
        .flat_map(|(service, consumers)| consumers.iter().map(move |consumer| naming.queue(service, consumer)))
        .collect()
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Cluster {
    fn new(args: &ChaosArgs, run_id: &str, proxies: Proxies) -> anyhow::Result<Self> {
        let binary = match &args.binary {
            Some(binary) => binary.clone(),
            None => shop_binary()?,
        };
        let logs = std::env::temp_dir().join(format!("shop-chaos-{run_id}"));
        std::fs::create_dir_all(&logs)?;
        let orders_db = format!("chaos_{run_id}_orders");
        let inventory_db = format!("chaos_{run_id}_inventory");
        let naming = Naming::new(format!("chaos-{run_id}"));
        let server = args.postgres_url.trim_end_matches('/');
        // The services reach both servers through the proxies; the harness itself does not.
        let proxied_server = through(server, &proxies.postgres)?;
        let proxied_server = proxied_server.trim_end_matches('/');
        let env = vec![
            ("SHOP_ORDERS_DATABASE_URL".into(), format!("{proxied_server}/{orders_db}")),
            ("SHOP_INVENTORY_DATABASE_URL".into(), format!("{proxied_server}/{inventory_db}")),
            ("SHOP_AMQP_URL".into(), through(&args.amqp_url, &proxies.broker)?),
            ("SHOP_QUEUE_PREFIX".into(), naming.prefix().to_owned()),
            ("SHOP_QUEUE_TYPE".into(), args.queue_type.to_string()),
            ("SHOP_RESERVATION_TIMEOUT".into(), humantime::format_duration(args.reservation_timeout).to_string()),
            ("SHOP_DB_POOL_SIZE".into(), "6".into()),
            // The run's own signing key (created by whichever process needs it first).
            ("SHOP_DATA_DIR".into(), logs.display().to_string()),
            ("SHOP_AUTH_ISSUER".into(), shop::config::DEFAULT_ISSUER.into()),
            ("SHOP_AUTH_AUDIENCE".into(), shop::config::DEFAULT_AUDIENCE.into()),
            ("RUST_LOG".into(), "info,sqlx=warn,lapin=error".into()),
        ];
        let mut instances = Vec::new();
        for service in ["order", "order", "inventory", "inventory"] {
            instances.push(Instance { service, port: free_port()?, child: None, held_down: false });
        }
        Ok(Self {
            binary,
            logs,
            env,
            orders_db,
            inventory_db,
            postgres_url: server.to_owned(),
            naming,
            instances,
            proxies,
        })
    }

    /// The proxy a silent or slow fault acts on.
    fn proxy_for(&self, fault: Fault) -> Arc<Proxy> {
        match fault {
            Fault::SilentBroker | Fault::SlowBroker => self.proxies.broker.clone(),
            _ => self.proxies.postgres.clone(),
        }
    }

    fn urls(&self, service: &str) -> Vec<String> {
        self.instances.iter().filter(|i| i.service == service).map(Instance::url).collect()
    }

    fn start(&mut self, index: usize) -> anyhow::Result<()> {
        let instance = &mut self.instances[index];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("{}-{index}.log", instance.service)))?;
        let addr_variable =
            if instance.service == "order" { "SHOP_ORDERS_HTTP_ADDR" } else { "SHOP_INVENTORY_HTTP_ADDR" };
        let child = Command::new(&self.binary)
            .args(["serve", instance.service])
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env(addr_variable, format!("127.0.0.1:{}", instance.port))
            .env_remove("SHOP_AUTH_SIGNING_KEY_FILE")
            .env_remove("SHOP_AUTH_PUBLIC_KEY_FILE")
            .env_remove("SHOP_AUTH_JWKS_URL")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot run {}", self.binary.display()))?;
        instance.child = Some(child);
        instance.held_down = false;
        Ok(())
    }

    /// SIGKILL; the instance stays down until started again.
    async fn kill(&mut self, index: usize) {
        self.instances[index].held_down = true;
        if let Some(mut child) = self.instances[index].child.take() {
            let _ = child.start_kill(); // SIGKILL
            let _ = child.wait().await;
        }
    }

    /// Restarts, like an orchestrator would, every instance that exited on its own (one that
    /// cannot start while the broker or the database is down, say). With `all`, also those
    /// held down by a fault.
    fn revive(&mut self, all: bool) -> anyhow::Result<usize> {
        let mut revived = 0;
        for index in 0..self.instances.len() {
            let running = match &mut self.instances[index].child {
                Some(child) => child.try_wait()?.is_none(),
                None => false,
            };
            if !running && (all || !self.instances[index].held_down) {
                self.start(index)?;
                revived += 1;
            }
        }
        Ok(revived)
    }

    async fn admin(&self) -> anyhow::Result<PgConnection> {
        Ok(PgConnection::connect(&format!("{}/postgres", self.postgres_url)).await?)
    }

    async fn database(&self, name: &str) -> anyhow::Result<PgConnection> {
        Ok(PgConnection::connect(&format!("{}/{name}", self.postgres_url)).await?)
    }

    async fn shutdown(&mut self, keep: bool, amqp_url: &str) {
        for index in 0..self.instances.len() {
            self.kill(index).await;
        }
        if keep {
            return;
        }
        if let Ok(broker) = RabbitMq::connect(amqp_url, self.naming.clone(), "shop-chaos-cleanup").await {
            let queues = consumer_queues(&self.naming).into_iter();
            let specs: Vec<QueueSpec> =
                queues.map(|name| QueueSpec { name, message_types: Vec::new(), prefetch: 1 }).collect();
            let _ = broker.delete_topology(&specs).await;
        }
        if let Ok(mut admin) = self.admin().await {
            for db in [&self.orders_db, &self.inventory_db] {
                let drop = format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)");
                let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&mut admin).await;
            }
        }
        let _ = std::fs::remove_dir_all(&self.logs);
    }
}

pub(crate) async fn wait_ready(urls: &[String], limit: Duration) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + limit;
    for url in urls {
        loop {
            let ready = client.get(format!("{url}/health/ready")).send().await.is_ok_and(|r| r.status().is_success());
            if ready {
                break;
            }
            if Instant::now() >= deadline {
                bail!("{url} is not ready after {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

pub async fn execute(args: &ChaosArgs) -> anyhow::Result<ChaosReport> {
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    let run_id = format!("{:x}", seed % 0xffff_ffff);
    println!("chaos seed {seed} (repeat with --seed {seed})");
    anyhow::ensure!(!args.faults.is_empty(), "--faults names no kind of fault");
    let proxies = Proxies::start(args).await?;
    let cluster = Arc::new(tokio::sync::Mutex::new(Cluster::new(args, &run_id, proxies)?));
    let outcome = chaos(args, seed, cluster.clone()).await;
    let mut cluster = cluster.lock().await;
    let keep = args.keep || !outcome.as_ref().is_ok_and(ChaosReport::passed);
    let logs = cluster.logs.display().to_string();
    cluster.shutdown(keep, &args.amqp_url).await;
    let mut report = outcome?;
    if keep {
        report.logs = Some(logs);
    }
    Ok(report)
}

async fn chaos(args: &ChaosArgs, seed: u64, cluster: Arc<tokio::sync::Mutex<Cluster>>) -> anyhow::Result<ChaosReport> {
    // Inventory first, so that the first orders do not wait for its queues.
    {
        let mut cluster = cluster.lock().await;
        for index in [2, 3, 0, 1] {
            cluster.start(index)?;
        }
    }
    let (order_urls, inventory_urls, naming, data_dir) = {
        let cluster = cluster.lock().await;
        (cluster.urls("order"), cluster.urls("inventory"), cluster.naming.clone(), cluster.logs.clone())
    };
    let supervisor = tokio::spawn(supervise(cluster.clone()));
    wait_ready(&inventory_urls, Duration::from_secs(60)).await?;
    wait_ready(&order_urls, Duration::from_secs(60)).await?;
    let broker = RabbitMq::connect(&args.amqp_url, naming.clone(), "shop-chaos").await?;

    let load = LoadArgs {
        orders_url: order_urls,
        inventory_url: inventory_urls,
        orders: args.orders,
        concurrency: args.concurrency,
        products: args.products,
        stock: args.stock.unwrap_or_else(|| (args.orders * 3).div_ceil(args.products.max(1)) as u32),
        min_lines: 1,
        max_lines: 3,
        max_quantity: 3,
        cancel_ratio: 0.1,
        ship_ratio: 0.3,
        await_outcome: false,
        // Both flows: step by step has the most requests to be cut off half-way, the one
        // request the retry under its key that must find an order already placed.
        flow: OrderFlow::Mixed,
        seed: Some(seed),
        settle_timeout: args.quiescence_timeout,
        json: None,
        quiet: true,
        auth: AuthSettings::default(),
        data: DataDir { data_dir: Some(data_dir) },
    };
    let api = Api::new(&load)?;
    let catalog = api.seed_catalog(&load).await?;

    // Load and faults run together; the load goes on until enough faults happened.
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop_faults = CancellationToken::new();
    let injector = tokio::spawn(inject_faults(
        args.clone(),
        seed,
        cluster.clone(),
        broker.clone(),
        tally.clone(),
        stop_faults.clone(),
    ));
    let started = Instant::now();
    let mut orders = api.place_orders(&load, &catalog, seed).await?;
    let mut round = 1;
    while tally.lock().unwrap().total() < args.min_faults {
        let more = LoadArgs { orders: args.orders.div_ceil(4).max(20), ..load.clone() };
        orders.extend(api.place_orders(&more, &catalog, seed.wrapping_add(round)).await?);
        round += 1;
    }
    let load_duration = started.elapsed();
    stop_faults.cancel();
    injector.await??;
    println!("load done: {} orders in {:.1}s; waiting for quiescence", orders.len(), load_duration.as_secs_f64());

    // Everything runs again, then the system must drain and settle.
    let quiet_since = Instant::now();
    cluster.lock().await.revive(true)?;
    let finals = api.settle(&orders, args.quiescence_timeout).await?;
    let mut violations = wait_for_quiescence(&cluster, &broker, args.quiescence_timeout).await?;
    let quiescence = quiet_since.elapsed();
    violations.extend(api.check_invariants(&catalog, &finals, Duration::from_secs(30)).await?);
    let tally = std::mem::take(&mut *tally.lock().unwrap());
    violations.extend(check_database(&cluster, Duration::from_secs(30)).await?);
    violations.extend(check_dead_letters(&broker, tally.poison).await?);
    let detection = detection(&cluster, &tally).await;

    supervisor.abort();
    let summary = summarize(seed, args.concurrency, load_duration, &finals);
    Ok(ChaosReport {
        seed,
        orders: orders.len(),
        statuses: summary.statuses,
        load_duration_s: load_duration.as_secs_f64(),
        faults: tally.faults.iter().map(|(fault, n)| (fault.name(), *n)).collect(),
        duplicates_injected: tally.duplicates,
        poison_injected: tally.poison,
        quiescence_s: quiescence.as_secs_f64(),
        detection,
        violations,
        logs: None,
    })
}

/// Restarts instances that exited on their own, every half second.
async fn supervise(cluster: Arc<tokio::sync::Mutex<Cluster>>) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Err(error) = cluster.lock().await.revive(false) {
            eprintln!("cannot restart a service: {error:#}");
        }
    }
}

#[derive(Default)]
struct Tally {
    faults: BTreeMap<Fault, usize>,
    duplicates: usize,
    poison: usize,
    /// The silent and slow faults, each with the proxy's view of its connections.
    episodes: Vec<(Fault, Episode)>,
}

/// What the services did about each kind of silent or slow fault, as the proxies saw it by now.
async fn detection(cluster: &tokio::sync::Mutex<Cluster>, tally: &Tally) -> BTreeMap<String, DetectionSummary> {
    let cluster = cluster.lock().await;
    let mut by_kind: BTreeMap<Fault, Vec<(Episode, Detection)>> = BTreeMap::new();
    for (fault, episode) in &tally.episodes {
        let seen = episode.detection(&cluster.proxy_for(*fault));
        by_kind.entry(*fault).or_default().push((episode.clone(), seen));
    }
    by_kind.into_iter().map(|(fault, episodes)| (fault.name(), DetectionSummary::of(fault, &episodes))).collect()
}

impl Tally {
    fn total(&self) -> usize {
        self.faults.values().sum()
    }
}

/// Injects faults at random moments until told to stop. Kinds come in shuffled rounds, so a
/// short run still sees every kind.
async fn inject_faults(
    args: ChaosArgs,
    seed: u64,
    cluster: Arc<tokio::sync::Mutex<Cluster>>,
    broker: RabbitMq,
    tally: Arc<Mutex<Tally>>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x5eed_fa17);
    let mut round: Vec<Fault> = Vec::new();
    let mut restarts = tokio::task::JoinSet::new();
    loop {
        let pause = args.fault_interval.mul_f64(0.5 + rng.f64());
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(pause) => {}
        }
        if round.is_empty() {
            round = args.faults.clone();
            rng.shuffle(&mut round);
        }
        let fault = round.pop().expect("refilled above");
        let at = format!("{fault:?}");
        match fault {
            Fault::KillOrderService | Fault::KillInventoryService => {
                let index = if fault == Fault::KillOrderService { rng.usize(0..2) } else { 2 + rng.usize(0..2) };
                let down_for = Duration::from_millis(rng.u64(200..2_000));
                cluster.lock().await.kill(index).await;
                let cluster = cluster.clone();
                restarts.spawn(async move {
                    tokio::time::sleep(down_for).await;
                    cluster.lock().await.start(index)
                });
            }
            Fault::RestartBroker => {
                let down_for = Duration::from_millis(rng.u64(500..3_000));
                rabbitmqctl("stop_app").await?;
                tokio::time::sleep(down_for).await;
                rabbitmqctl("start_app").await?;
            }
            Fault::Database if args.restart_postgres => restart_postgres().await?,
            Fault::Database => {
                let cluster = cluster.lock().await;
                let mut admin = cluster.admin().await?;
                sqlx::query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname IN ($1, $2) AND pid <> pg_backend_pid()",
                )
                .bind(&cluster.orders_db)
                .bind(&cluster.inventory_db)
                .execute(&mut admin)
                .await?;
            }
            Fault::SilentPostgres | Fault::SilentBroker | Fault::SlowPostgres | Fault::SlowBroker => {
                let proxy = cluster.lock().await.proxy_for(fault);
                let lasting = Duration::from_millis(rng.u64(3_000..10_000));
                let mut episode = match fault {
                    Fault::SlowPostgres | Fault::SlowBroker => proxy.slow_down(args.slow_latency),
                    _ => proxy.silence(),
                };
                tokio::time::sleep(lasting).await;
                proxy.heal(&mut episode);
                tally.lock().unwrap().episodes.push((fault, episode));
            }
            Fault::Duplicates => {
                let copies = republish_delivered(&cluster, &broker, &mut rng).await?;
                tally.lock().unwrap().duplicates += copies;
            }
            Fault::Poison => {
                let count = rng.usize(1..=3);
                let first = tally.lock().unwrap().poison;
                publish_poison(&args.amqp_url, cluster.lock().await.naming.exchange(), first..first + count).await?;
                tally.lock().unwrap().poison += count;
            }
        }
        println!("  fault: {at}");
        *tally.lock().unwrap().faults.entry(fault).or_default() += 1;
    }
    while let Some(restart) = restarts.join_next().await {
        restart??;
    }
    Ok(())
}

async fn rabbitmqctl(command: &'static str) -> anyhow::Result<()> {
    let status = Command::new("rabbitmqctl").args(["-q", command]).stdout(Stdio::null()).status().await?;
    anyhow::ensure!(status.success(), "rabbitmqctl {command} failed");
    Ok(())
}

async fn restart_postgres() -> anyhow::Result<()> {
    let version = std::fs::read_dir("/etc/postgresql")?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .next()
        .context("no cluster under /etc/postgresql")?;
    let status =
        Command::new("pg_ctlcluster").args(["--skip-systemctl-redirect", &version, "main", "restart"]).status().await?;
    anyhow::ensure!(status.success(), "pg_ctlcluster restart failed");
    Ok(())
}

/// Publishes again up to 20 messages that were already delivered: same ids, same bodies.
async fn republish_delivered(
    cluster: &tokio::sync::Mutex<Cluster>,
    broker: &RabbitMq,
    rng: &mut fastrand::Rng,
) -> anyhow::Result<usize> {
    let (orders_db, inventory_db) = {
        let cluster = cluster.lock().await;
        (cluster.orders_db.clone(), cluster.inventory_db.clone())
    };
    let name = if rng.bool() { orders_db } else { inventory_db };
    let mut db = cluster.lock().await.database(&name).await?;
    let query = format!(
        "SELECT {} FROM outbox WHERE sent_at IS NOT NULL ORDER BY random() LIMIT 20",
        messaging::postgres::ENVELOPE_COLUMNS
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(query)).fetch_all(&mut db).await?;
    let copies: Vec<Envelope> =
        rows.iter().map(messaging::postgres::envelope_from_row).collect::<Result<_, sqlx::Error>>()?;
    // The broker may be restarting: try for a few seconds, then give up on these copies.
    for _ in 0..10 {
        if broker.publish(&copies).await.is_ok() {
            return Ok(copies.len());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(0)
}

/// Publishes messages no consumer can read (no envelope), routed to consumer queues, numbered
/// `numbers` so that the check can tell each one from its copies.
async fn publish_poison(amqp_url: &str, exchange: String, numbers: Range<usize>) -> anyhow::Result<()> {
    let connection = Connection::connect(amqp_url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    for n in numbers {
        let routing_key = ["order.placed.v1", "inventory.reserve-stock.v1", "product.created.v1"][n % 3];
        channel
            .basic_publish(
                exchange.clone().into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                format!("{{\"poison\": {n}}}").as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?
            .await?;
    }
    let _ = connection.close(200, "OK".into()).await;
    Ok(())
}

/// Waits until both outboxes are drained and every consumer queue is empty, twice in a row.
async fn wait_for_quiescence(
    cluster: &tokio::sync::Mutex<Cluster>,
    broker: &RabbitMq,
    limit: Duration,
) -> anyhow::Result<Vec<String>> {
    let deadline = Instant::now() + limit;
    let mut quiet_checks = 0;
    let mut last = Vec::new();
    while quiet_checks < 2 {
        last.clear();
        let (orders_db, inventory_db, naming) = {
            let cluster = cluster.lock().await;
            (cluster.orders_db.clone(), cluster.inventory_db.clone(), cluster.naming.clone())
        };
        for name in [&orders_db, &inventory_db] {
            let mut db = cluster.lock().await.database(name).await?;
            let unsent: i64 =
                sqlx::query_scalar("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetch_one(&mut db).await?;
            if unsent > 0 {
                last.push(format!("{name}: {unsent} outbox rows not published"));
            }
        }
        for queue in consumer_queues(&naming) {
            let depth = broker.depth(&queue).await?;
            if depth > 0 {
                last.push(format!("{queue}: {depth} messages not consumed"));
            }
        }
        quiet_checks = if last.is_empty() { quiet_checks + 1 } else { 0 };
        if Instant::now() >= deadline {
            return Ok(last.into_iter().map(|problem| format!("never quiet: {problem}")).collect());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(Vec::new())
}

/// Invariants that only the inventory database can show. Messages acknowledged a moment ago
/// may still be settling, so a failing check is given until `limit` to pass.
async fn check_database(cluster: &tokio::sync::Mutex<Cluster>, limit: Duration) -> anyhow::Result<Vec<String>> {
    let deadline = Instant::now() + limit;
    loop {
        let violations = database_violations(cluster).await?;
        if violations.is_empty() || Instant::now() >= deadline {
            return Ok(violations);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn database_violations(cluster: &tokio::sync::Mutex<Cluster>) -> anyhow::Result<Vec<String>> {
    let name = cluster.lock().await.inventory_db.clone();
    let mut db = cluster.lock().await.database(&name).await?;
    let mut violations = Vec::new();
    let checks = crate::invariants::INVENTORY.map(|check| (check.what, check.postgres));
    for (what, query) in checks {
        let found: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(query)).fetch_all(&mut db).await?;
        for item in found.iter().take(20) {
            violations.push(format!("{what}: {item}"));
        }
    }
    Ok(violations)
}

/// The error queues must hold every poison message injected on purpose and nothing else. A
/// poison message may be there more than once: dead-lettering is at-least-once like any
/// delivery (the acknowledgement of a message already dead-lettered can be lost with its
/// connection, and the copy delivered again is dead-lettered again).
async fn check_dead_letters(broker: &RabbitMq, poison: usize) -> anyhow::Result<Vec<String>> {
    let mut violations = Vec::new();
    let mut found = BTreeSet::new();
    for queue in consumer_queues(broker.naming()) {
        let error_queue = messaging::transport::error_queue_of(&queue);
        for letter in broker.list(&error_queue).await? {
            let number = serde_json::from_str::<serde_json::Value>(&letter.body)
                .ok()
                .and_then(|body| body.get("poison").and_then(serde_json::Value::as_u64));
            if let (None, Some(number)) = (&letter.message_id, number) {
                found.insert(number as usize);
            } else {
                violations.push(format!(
                    "{error_queue}: {} {:?}: {}",
                    letter.message_type.unwrap_or_default(),
                    letter.message_id,
                    letter.reason
                ));
            }
        }
    }
    let missing: Vec<usize> = (0..poison).filter(|number| !found.contains(number)).collect();
    if !missing.is_empty() {
        violations.push(format!("{poison} poison messages injected, not in the error queues: {missing:?}"));
    }
    Ok(violations)
}

pub fn print_report(report: &ChaosReport) {
    println!("seed            {}", report.seed);
    let statuses: Vec<String> = report.statuses.iter().map(|(s, n)| format!("{s} {n}")).collect();
    println!("orders          {} ({}) in {:.1}s of load", report.orders, statuses.join(", "), report.load_duration_s);
    let faults: Vec<String> = report.faults.iter().map(|(f, n)| format!("{f} {n}")).collect();
    println!("faults          {} ({})", report.faults.values().sum::<usize>(), faults.join(", "));
    println!(
        "injected        {} duplicate messages, {} poison messages",
        report.duplicates_injected, report.poison_injected
    );
    println!("quiescence      {:.1}s after the last fault", report.quiescence_s);
    for (kind, seen) in &report.detection {
        let seconds = |value: Option<f64>| value.map_or("-".to_owned(), |s| format!("{s:.1}s"));
        if seen.connections > 0 && seen.abandoned == 0 && seen.attempts_during == 0 {
            println!(
                "{kind:<15} {} faults, {} connections slowed, {} given up while slow",
                seen.faults, seen.connections, seen.abandoned_while_slow
            );
        } else {
            println!(
                "{kind:<15} {} faults, {} of {} connections given up after {} (median), {} (max), \
                 {} left waiting, {} left idle; {} attempts while silent; first new connection {} (max) \
                 after the fault ended",
                seen.faults,
                seen.abandoned,
                seen.connections,
                seconds(seen.abandoned_median_s),
                seconds(seen.abandoned_max_s),
                seen.left_waiting,
                seen.left_idle,
                seen.attempts_during,
                seconds(seen.reconnected_max_s),
            );
        }
    }
    if report.violations.is_empty() {
        println!("violations      none");
    } else {
        println!("VIOLATIONS      {}", report.violations.len());
        for violation in report.violations.iter().take(50) {
            println!("  {violation}");
        }
    }
    if let Some(logs) = &report.logs {
        println!("service logs    {logs}");
    }
}
