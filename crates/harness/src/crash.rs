//! `harness crash`: the embedded mode killed mid-burst.
//!
//! Runs `shop up` with nothing configured (SQLite files and the embedded broker in a data
//! directory of the run's own), puts order load on it (the `harness load` customers, who retry
//! what failed in transit), and meanwhile kills the process with SIGKILL at random moments from
//! a printed seed and starts it again on the same data directory. Then it waits until every
//! order has ended and checks every invariant: through the APIs (nothing lost, nothing
//! oversold, reserved units equal what confirmed orders hold, stock conserved, sagas agree with
//! orders) and in the files (reservations agree with products and sagas, both outboxes drained,
//! the broker's queues empty, no dead letter).

use crate::chaos::{consumer_queues, free_port, shop_binary, wait_ready};
use crate::invariants;
use crate::load::{Api, LoadArgs, OrderFlow, summarize};
use anyhow::Context;
use clap::Args;
use messaging::Naming;
use messaging::sqlite::Database;
use serde::Serialize;
use shop::config::{AuthSettings, DataDir, embedded};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

#[derive(Debug, Clone, Args)]
pub struct CrashArgs {
    /// Orders to place while the system is killed and restarted.
    #[arg(long, default_value_t = 300)]
    pub orders: usize,
    /// Customers placing orders at the same time.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Products (few, so that orders compete for stock).
    #[arg(long, default_value_t = 8)]
    pub products: usize,
    /// SIGKILLs of the system during the load (the load goes on until there were that many).
    #[arg(long, default_value_t = 4)]
    pub kills: usize,
    /// Mean time between a restart and the next kill.
    #[arg(long, default_value = "1500ms", value_parser = humantime::parse_duration)]
    pub kill_interval: Duration,
    /// Seed of every random choice (printed, so that a failing run can be repeated).
    #[arg(long)]
    pub seed: Option<u64>,
    /// The saga's reservation timeout in the system under test.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub reservation_timeout: Duration,
    /// The `shop` binary to run (default: the one next to this executable).
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// How long the system may take to settle after the last restart.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub settle_timeout: Duration,
    /// Keep the data directory and the log after the run.
    #[arg(long)]
    pub keep: bool,
    /// Also write the summary as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Default, Serialize)]
pub struct CrashReport {
    pub seed: u64,
    pub orders: usize,
    pub statuses: BTreeMap<String, usize>,
    pub kills: usize,
    pub load_duration_s: f64,
    /// From each SIGKILL until the restarted system answered ready.
    pub recovery_s: Vec<f64>,
    /// From the end of the load until every order had ended and the files were quiet.
    pub settle_s: f64,
    /// Deliveries the broker held in hand when the process was killed, handed back at restarts.
    pub handed_back: u64,
    pub violations: Vec<String>,
    /// The data directory and log, when kept.
    pub kept: Option<String>,
}

impl CrashReport {
    pub fn passed(&self) -> bool {
        self.violations.is_empty() && self.kills > 0
    }
}

pub async fn run(args: CrashArgs) -> anyhow::Result<std::process::ExitCode> {
    let report = execute(&args).await?;
    crate::conclude(&report, print_report, report.passed(), args.json.as_deref())
}

/// `shop up` in the embedded mode on one data directory, started again after each kill.
struct System {
    binary: PathBuf,
    dir: PathBuf,
    ports: (u16, u16),
    reservation_timeout: Duration,
    child: Option<Child>,
}

impl System {
    fn urls(&self) -> (String, String) {
        (format!("http://127.0.0.1:{}", self.ports.0), format!("http://127.0.0.1:{}", self.ports.1))
    }

    async fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("shop.log"))?;
        let mut command = Command::new(&self.binary);
        command.arg("up");
        // Nothing configured but the data directory: the embedded mode.
        for variable in [
            "SHOP_ORDERS_DATABASE_URL",
            "SHOP_INVENTORY_DATABASE_URL",
            "SHOP_AMQP_URL",
            "SHOP_STOREFRONT_DATABASE_URL",
            "SHOP_AUTH_SIGNING_KEY_FILE",
            "SHOP_AUTH_PUBLIC_KEY_FILE",
            "SHOP_AUTH_JWKS_URL",
            "SHOP_AUTH_ISSUER",
            "SHOP_AUTH_AUDIENCE",
            "SHOP_QUEUE_PREFIX",
        ] {
            command.env_remove(variable);
        }
        let child = command
            .env("SHOP_DATA_DIR", &self.dir)
            .env("SHOP_ORDERS_HTTP_ADDR", format!("127.0.0.1:{}", self.ports.0))
            .env("SHOP_INVENTORY_HTTP_ADDR", format!("127.0.0.1:{}", self.ports.1))
            // The storefront runs too; no port of the machine's own.
            .env("SHOP_STOREFRONT_HTTP_ADDR", "127.0.0.1:0")
            .env("SHOP_RESERVATION_TIMEOUT", humantime::format_duration(self.reservation_timeout).to_string())
            .env("RUST_LOG", "info,sqlx=warn")
            .env("SHOP_LOG_FORMAT", "text")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot run {}", self.binary.display()))?;
        self.child = Some(child);
        let (orders, inventory) = self.urls();
        wait_ready(&[orders, inventory], Duration::from_secs(60)).await
    }

    /// SIGKILL, and the process is gone.
    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// SIGTERM: the graceful stop, so that the files are left closed.
    async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status().await;
            }
            if tokio::time::timeout(Duration::from_secs(30), child.wait()).await.is_err() {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
        }
    }
}

pub async fn execute(args: &CrashArgs) -> anyhow::Result<CrashReport> {
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    println!("crash seed {seed} (repeat with --seed {seed})");
    let dir = std::env::temp_dir().join(format!("shop-crash-{:x}", seed % 0xffff_ffff));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let binary = match &args.binary {
        Some(binary) => binary.clone(),
        None => shop_binary()?,
    };
    let mut system = System {
        binary,
        dir: dir.clone(),
        ports: (free_port()?, free_port()?),
        reservation_timeout: args.reservation_timeout,
        child: None,
    };
    let outcome = crash(args, seed, &mut system).await;
    system.stop().await;
    let mut report = outcome?;
    if args.keep || !report.passed() {
        report.kept = Some(dir.display().to_string());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(report)
}

async fn crash(args: &CrashArgs, seed: u64, system: &mut System) -> anyhow::Result<CrashReport> {
    system.start().await?;
    let (orders_url, inventory_url) = system.urls();
    let load = LoadArgs {
        orders_url: vec![orders_url],
        inventory_url: vec![inventory_url],
        orders: args.orders,
        concurrency: args.concurrency,
        products: args.products,
        stock: (args.orders * 3).div_ceil(args.products.max(1)) as u32,
        min_lines: 1,
        max_lines: 3,
        max_quantity: 3,
        cancel_ratio: 0.1,
        ship_ratio: 0.3,
        await_outcome: false,
        // Both flows: a kill may land between the placing commit and its answer, which the retry
        // under the same Idempotency-Key must find, or between a draft's steps.
        flow: OrderFlow::Mixed,
        seed: Some(seed),
        settle_timeout: args.settle_timeout,
        json: None,
        quiet: true,
        auth: AuthSettings::default(),
        data: DataDir { data_dir: Some(system.dir.clone()) },
    };
    let api = Api::new(&load)?;
    let catalog = Arc::new(api.seed_catalog(&load).await?);

    // The load runs in rounds while the system is killed and restarted; it goes on until
    // every kill happened in the middle of a round.
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x0c4a_54ed);
    let started = Instant::now();
    let mut orders = Vec::new();
    let mut recovery_s = Vec::new();
    let mut round = 0u64;
    while recovery_s.len() < args.kills {
        let this_round = if round == 0 {
            load.clone()
        } else {
            LoadArgs { orders: args.orders.div_ceil(4).max(20), ..load.clone() }
        };
        let (api, catalog) = (api.clone(), catalog.clone());
        let round_seed = seed.wrapping_add(round);
        let mut placing = tokio::spawn(async move { api.place_orders(&this_round, &catalog, round_seed).await });
        loop {
            let pause = args.kill_interval.mul_f64(0.5 + rng.f64());
            tokio::select! {
                placed = &mut placing => {
                    orders.extend(placed??);
                    break;
                }
                _ = tokio::time::sleep(pause), if recovery_s.len() < args.kills => {
                    let killed = Instant::now();
                    system.kill().await;
                    println!("  SIGKILL {} after {:.1}s of load", recovery_s.len() + 1, started.elapsed().as_secs_f64());
                    system.start().await?;
                    recovery_s.push(killed.elapsed().as_secs_f64());
                }
            }
        }
        round += 1;
    }
    let load_duration = started.elapsed();
    println!(
        "load done: {} orders in {:.1}s; waiting until every order has ended",
        orders.len(),
        load_duration.as_secs_f64()
    );

    let settling = Instant::now();
    let finals = api.settle(&orders, args.settle_timeout).await?;
    let mut violations = api.check_invariants(&catalog, &finals, Duration::from_secs(30)).await?;
    // The system is back within a second of each kill: a reservation that timed out waited
    // for a message that was lost or stuck.
    for (id, order) in &finals {
        if order["statusReason"].as_str().is_some_and(|reason| reason.contains("timed out")) {
            violations.push(format!("order {id} was rejected by its reservation timeout: a message was lost or stuck"));
        }
    }
    violations.extend(check_files(&system.dir, args.settle_timeout).await?);
    let summary = summarize(seed, args.concurrency, load_duration, &finals);
    Ok(CrashReport {
        seed,
        orders: orders.len(),
        statuses: summary.statuses,
        kills: recovery_s.len(),
        load_duration_s: load_duration.as_secs_f64(),
        recovery_s,
        settle_s: settling.elapsed().as_secs_f64(),
        handed_back: handed_back(&system.dir.join("shop.log")),
        violations,
        kept: None,
    })
}

/// How many deliveries the restarts handed back, as `shop up` logged them.
fn handed_back(log: &Path) -> u64 {
    let log = std::fs::read_to_string(log).unwrap_or_default();
    log.lines()
        .filter(|line| line.contains("will be handled again"))
        .filter_map(|line| {
            line.split(" message(s) that were being handled").next()?.rsplit(' ').next()?.parse::<u64>().ok()
        })
        .sum()
}

/// What only the files show, given until `limit` to hold (acknowledged messages may still be
/// settling): the inventory's invariants, both outboxes drained, the broker's queues empty and
/// no dead letter.
async fn check_files(dir: &Path, limit: Duration) -> anyhow::Result<Vec<String>> {
    let deadline = Instant::now() + limit;
    let open = async |file: &str| {
        Database::open(&dir.join(file), 1).await.with_context(|| format!("cannot open {}", dir.join(file).display()))
    };
    let (orders, inventory, broker) =
        (open(embedded::ORDERS).await?, open(embedded::INVENTORY).await?, open(embedded::BROKER).await?);
    loop {
        let violations = file_violations(&orders, &inventory, &broker).await?;
        if violations.is_empty() || Instant::now() >= deadline {
            for db in [orders, inventory, broker] {
                db.close().await;
            }
            return Ok(violations);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn file_violations(orders: &Database, inventory: &Database, broker: &Database) -> anyhow::Result<Vec<String>> {
    let mut violations = Vec::new();
    for check in invariants::INVENTORY {
        let found: Vec<String> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(check.sqlite)).fetch_all(inventory.reader()).await?;
        violations.extend(found.iter().take(20).map(|item| format!("{}: {item}", check.what)));
    }
    for (name, db) in [(embedded::ORDERS, orders), (embedded::INVENTORY, inventory)] {
        let unsent: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetch_one(db.reader()).await?;
        if unsent > 0 {
            violations.push(format!("{name}: {unsent} outbox rows not published"));
        }
    }
    for queue in consumer_queues(&Naming::new("shop")) {
        let error_queue = messaging::transport::error_queue_of(&queue);
        for (queue, what) in [(queue, "messages not consumed"), (error_queue, "dead letters")] {
            let count: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE queue = ?")
                .bind(&queue)
                .fetch_one(broker.reader())
                .await?;
            if count > 0 {
                violations.push(format!("{queue}: {count} {what}"));
            }
        }
    }
    Ok(violations)
}

pub fn print_report(report: &CrashReport) {
    println!("seed            {}", report.seed);
    let statuses: Vec<String> = report.statuses.iter().map(|(s, n)| format!("{s} {n}")).collect();
    println!("orders          {} ({}) in {:.1}s of load", report.orders, statuses.join(", "), report.load_duration_s);
    let recoveries: Vec<String> = report.recovery_s.iter().map(|s| format!("{s:.1}s")).collect();
    println!("SIGKILLs        {} (killed to ready again: {})", report.kills, recoveries.join(", "));
    println!(
        "handed back     {} deliveries held in hand at a kill, delivered again after the restart",
        report.handed_back
    );
    println!("settled         {:.1}s after the load", report.settle_s);
    if report.violations.is_empty() {
        println!("violations      none");
    } else {
        println!("VIOLATIONS      {}", report.violations.len());
        for violation in report.violations.iter().take(50) {
            println!("  {violation}");
        }
    }
    if let Some(kept) = &report.kept {
        println!("data and log    {kept}");
    }
}
