//! `shop load`: simulated customers drive orders through the HTTP APIs of running services,
//! then the run waits for every order to end and checks the system's invariants through the
//! same APIs.
//!
//! Each customer creates an order (with an Idempotency-Key), adds 1..k lines of distinct
//! products, places it, and then may cancel it at once, wait for the outcome and cancel the
//! confirmed order, or ship it. Place-to-decision latency is read from the order's own
//! `placedAt`/`decidedAt`, so polling does not blur it.

use anyhow::{Context, ensure};
use clap::Args;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::{Client, StatusCode};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// Base URL of the order API.
    #[arg(long, env = "SHOP_LOAD_ORDERS_URL", default_value = "http://127.0.0.1:8081")]
    pub orders_url: String,
    /// Base URL of the inventory API.
    #[arg(long, env = "SHOP_LOAD_INVENTORY_URL", default_value = "http://127.0.0.1:8082")]
    pub inventory_url: String,
    /// Orders to place.
    #[arg(long, default_value_t = 1000)]
    pub orders: usize,
    /// Customers placing orders at the same time.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Products to create for the run.
    #[arg(long, default_value_t = 20)]
    pub products: usize,
    /// Initial stock of each product.
    #[arg(long, default_value_t = 1000)]
    pub stock: u32,
    /// Most lines per order (each order gets 1 to this many).
    #[arg(long, default_value_t = 3)]
    pub max_lines: usize,
    /// Most units per line.
    #[arg(long, default_value_t = 3)]
    pub max_quantity: u32,
    /// Share of orders cancelled: half right after placing, half once confirmed.
    #[arg(long, default_value_t = 0.1)]
    pub cancel_ratio: f64,
    /// Share of confirmed orders that are shipped.
    #[arg(long, default_value_t = 0.3)]
    pub ship_ratio: f64,
    /// Seed of the random choices (printed, so a run can be repeated).
    #[arg(long)]
    pub seed: Option<u64>,
    /// How long to wait for every order to end and the stock to settle.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub settle_timeout: Duration,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// No progress bar (for logs and scripts).
    #[arg(long)]
    pub quiet: bool,
}

/// What happened to one order, as the customer saw it.
#[derive(Debug, Clone)]
struct Placed {
    id: String,
    lines: Vec<(i64, u32)>,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub seed: u64,
    pub orders: usize,
    pub concurrency: usize,
    pub duration_s: f64,
    pub orders_per_s: f64,
    pub latency_ms: LatencySummary,
    pub statuses: BTreeMap<String, usize>,
    pub unfinished: usize,
    pub http_errors: usize,
    pub violations: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct LatencySummary {
    pub samples: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.violations.is_empty() && self.unfinished == 0
    }
}

pub async fn run(args: LoadArgs) -> anyhow::Result<std::process::ExitCode> {
    let report = drive(&args).await?;
    print_report(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(if report.passed() { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::FAILURE })
}

struct Api {
    http: Client,
    orders: String,
    inventory: String,
    errors: std::sync::atomic::AtomicUsize,
}

impl Api {
    async fn call(&self, method: reqwest::Method, url: String, body: Option<Value>) -> anyhow::Result<(StatusCode, Value)> {
        let mut request = self.http.request(method, &url).timeout(Duration::from_secs(30));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.with_context(|| format!("{url} unreachable"))?;
        let status = response.status();
        let body = response.json::<Value>().await.unwrap_or(Value::Null);
        if status.is_server_error() {
            self.errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok((status, body))
    }

    async fn expect(&self, method: reqwest::Method, url: String, body: Option<Value>, expected: StatusCode) -> anyhow::Result<Value> {
        let (status, answer) = self.call(method.clone(), url.clone(), body).await?;
        ensure!(status == expected, "{method} {url}: expected {expected}, got {status}: {answer}");
        Ok(answer)
    }

    async fn order(&self, id: &str) -> anyhow::Result<Value> {
        self.expect(reqwest::Method::GET, format!("{}/api/orders/{id}", self.orders), None, StatusCode::OK).await
    }

    async fn product(&self, id: i64) -> anyhow::Result<Value> {
        self.expect(reqwest::Method::GET, format!("{}/api/products/{id}", self.inventory), None, StatusCode::OK).await
    }
}

/// Runs the load and the checks; returns the report (an error only if the run could not happen).
pub async fn drive(args: &LoadArgs) -> anyhow::Result<Report> {
    ensure!(args.orders > 0 && args.concurrency > 0, "--orders and --concurrency must be at least 1");
    ensure!(args.products > 0 && args.max_lines > 0 && args.max_quantity > 0, "--products, --max-lines and --max-quantity must be at least 1");
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    let api = Arc::new(Api {
        http: Client::builder().pool_max_idle_per_host(args.concurrency * 2).build()?,
        orders: args.orders_url.trim_end_matches('/').to_owned(),
        inventory: args.inventory_url.trim_end_matches('/').to_owned(),
        errors: Default::default(),
    });
    eprintln!("seed {seed}: {} orders from {} customers over {} products", args.orders, args.concurrency, args.products);

    let products = seed_catalog(&api, args).await?;
    let progress = progress_bar(args);
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let placed = Arc::new(Mutex::new(Vec::with_capacity(args.orders)));
    let mut customers = tokio::task::JoinSet::new();
    for customer in 0..args.concurrency {
        let (api, args, products, next, placed, progress) =
            (api.clone(), args.clone(), products.clone(), next.clone(), placed.clone(), progress.clone());
        let mut rng = fastrand::Rng::with_seed(seed.wrapping_add(customer as u64));
        customers.spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < args.orders {
                let order = one_order(&api, &args, &products, &mut rng).await?;
                placed.lock().unwrap().push(order);
                progress.inc(1);
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(finished) = customers.join_next().await {
        finished??;
    }
    progress.finish_and_clear();
    let placed = std::mem::take(&mut *placed.lock().unwrap());

    // Every order must end; then the stock figures must settle on what the orders say.
    let finals = wait_for_outcomes(&api, &placed, args.settle_timeout).await?;
    let duration = started.elapsed();
    let mut report = Report { seed, orders: placed.len(), concurrency: args.concurrency, ..Report::default() };
    report.duration_s = duration.as_secs_f64();
    report.orders_per_s = placed.len() as f64 / duration.as_secs_f64();
    let mut latency = Histogram::<u64>::new(3)?;
    for order in finals.values() {
        let status = order["status"].as_str().unwrap_or("?").to_owned();
        if status == "placed" {
            report.unfinished += 1;
        }
        *report.statuses.entry(status).or_default() += 1;
        if let (Some(placed_at), Some(decided_at)) = (timestamp(&order["placedAt"]), timestamp(&order["decidedAt"])) {
            latency.record((decided_at - placed_at).num_microseconds().unwrap_or(0).max(0) as u64)?;
        }
    }
    report.latency_ms = LatencySummary {
        samples: latency.len(),
        p50: latency.value_at_quantile(0.5) as f64 / 1000.0,
        p90: latency.value_at_quantile(0.9) as f64 / 1000.0,
        p99: latency.value_at_quantile(0.99) as f64 / 1000.0,
        max: latency.max() as f64 / 1000.0,
    };
    report.violations = check_invariants(&api, &products, &placed, &finals, args.settle_timeout).await?;
    report.http_errors = api.errors.load(std::sync::atomic::Ordering::Relaxed);
    Ok(report)
}

/// The run's products: id -> initial stock.
async fn seed_catalog(api: &Api, args: &LoadArgs) -> anyhow::Result<Arc<BTreeMap<i64, u32>>> {
    let mut products = BTreeMap::new();
    let run = &Uuid::now_v7().simple().to_string()[20..];
    for n in 0..args.products {
        let body = json!({
            "name": format!("load {run} product {n}"),
            "price": format!("{}.{:02}", 1 + n % 50, (n * 37) % 100),
            "stock": args.stock,
        });
        let product = api
            .expect(reqwest::Method::POST, format!("{}/api/products", api.inventory), Some(body), StatusCode::CREATED)
            .await?;
        products.insert(product["id"].as_i64().context("product without id")?, args.stock);
    }
    // Orders can only use products the order service has heard of.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let catalog = api.expect(reqwest::Method::GET, format!("{}/api/catalog", api.orders), None, StatusCode::OK).await?;
        let known: Vec<i64> = catalog.as_array().into_iter().flatten().filter_map(|item| item["productId"].as_i64()).collect();
        if products.keys().all(|id| known.contains(id)) {
            break;
        }
        ensure!(Instant::now() < deadline, "the order service has not heard of the new products after 30s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Arc::new(products))
}

async fn one_order(api: &Api, args: &LoadArgs, products: &BTreeMap<i64, u32>, rng: &mut fastrand::Rng) -> anyhow::Result<Placed> {
    let ids: Vec<i64> = products.keys().copied().collect();
    let body = json!({ "customerId": Uuid::now_v7(), "description": "load test" });
    let created = api
        .http
        .post(format!("{}/api/orders", api.orders))
        .header("Idempotency-Key", Uuid::now_v7().to_string())
        .json(&body)
        .send()
        .await?;
    ensure!(created.status() == StatusCode::CREATED, "create order: {}", created.status());
    let id = created.json::<Value>().await?["id"].as_str().context("order without id")?.to_owned();

    let line_count = rng.usize(1..=args.max_lines.min(ids.len()));
    let mut chosen = ids.clone();
    rng.shuffle(&mut chosen);
    let mut lines = Vec::with_capacity(line_count);
    for product in chosen.into_iter().take(line_count) {
        let quantity = rng.u32(1..=args.max_quantity);
        let body = json!({ "productId": product, "quantity": quantity });
        api.expect(reqwest::Method::POST, format!("{}/api/orders/{id}/items", api.orders), Some(body), StatusCode::OK).await?;
        lines.push((product, quantity));
    }
    api.expect(reqwest::Method::POST, format!("{}/api/orders/{id}/place", api.orders), None, StatusCode::OK).await?;

    let roll = rng.f64();
    if roll < args.cancel_ratio / 2.0 {
        cancel(api, &id, "changed my mind right away").await?;
    } else if roll < args.cancel_ratio || rng.f64() < args.ship_ratio {
        let cancel_it = roll < args.cancel_ratio;
        let outcome = wait_until_decided(api, &id, Duration::from_secs(60)).await?;
        if outcome["status"] == "confirmed" {
            if cancel_it {
                cancel(api, &id, "found it cheaper").await?;
            } else {
                api.expect(reqwest::Method::POST, format!("{}/api/orders/{id}/ship", api.orders), None, StatusCode::OK).await?;
            }
        }
    }
    Ok(Placed { id, lines })
}

async fn cancel(api: &Api, id: &str, reason: &str) -> anyhow::Result<()> {
    let url = format!("{}/api/orders/{id}/cancel", api.orders);
    let (status, body) = api.call(reqwest::Method::POST, url, Some(json!({ "reason": reason }))).await?;
    // A cancel can race the rejection: an order rejected meanwhile cannot be cancelled.
    ensure!(status == StatusCode::OK || status == StatusCode::CONFLICT, "cancel {id}: {status}: {body}");
    Ok(())
}

async fn wait_until_decided(api: &Api, id: &str, limit: Duration) -> anyhow::Result<Value> {
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_millis(2);
    loop {
        let order = api.order(id).await?;
        if order["status"] != "placed" {
            return Ok(order);
        }
        if Instant::now() >= deadline {
            return Ok(order);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Polls every order until it has left `placed` (or the time is up); returns the last view.
async fn wait_for_outcomes(api: &Arc<Api>, placed: &[Placed], limit: Duration) -> anyhow::Result<HashMap<String, Value>> {
    let deadline = Instant::now() + limit;
    let mut finals = HashMap::with_capacity(placed.len());
    let mut pending: Vec<String> = placed.iter().map(|order| order.id.clone()).collect();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for chunk in pending.chunks(64) {
            let views = futures::future::try_join_all(chunk.iter().map(|id| api.order(id))).await?;
            for (id, view) in chunk.iter().zip(views) {
                if view["status"] == "placed" {
                    still.push(id.clone());
                }
                finals.insert(id.clone(), view);
            }
        }
        pending = still;
        if pending.is_empty() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(finals)
}

/// The invariants of DESIGN.md, read through the APIs once the system is quiet.
async fn check_invariants(
    api: &Arc<Api>,
    products: &BTreeMap<i64, u32>,
    placed: &[Placed],
    finals: &HashMap<String, Value>,
    limit: Duration,
) -> anyhow::Result<Vec<String>> {
    // What the orders say each product should hold and should have shipped.
    let mut expected_reserved: BTreeMap<i64, u64> = products.keys().map(|id| (*id, 0)).collect();
    let mut shipped: BTreeMap<i64, u64> = products.keys().map(|id| (*id, 0)).collect();
    for order in placed {
        let status = finals.get(&order.id).and_then(|view| view["status"].as_str()).unwrap_or("?");
        let bucket = match status {
            "confirmed" => &mut expected_reserved,
            "shipped" => &mut shipped,
            _ => continue,
        };
        for (product, quantity) in &order.lines {
            *bucket.get_mut(product).unwrap() += u64::from(*quantity);
        }
    }
    // Releases of rejected and cancelled orders may still be in flight: wait for quiet.
    let deadline = Instant::now() + limit;
    let mut violations;
    loop {
        violations = Vec::new();
        for (id, initial) in products {
            let product = api.product(*id).await?;
            let field = |name: &str| product[name].as_u64().unwrap_or(u64::MAX);
            let (stock, reserved) = (field("stock"), field("reserved"));
            if reserved > stock {
                violations.push(format!("product {id} oversold: {reserved} reserved of {stock} in stock"));
            }
            if reserved != expected_reserved[id] {
                violations.push(format!(
                    "product {id}: {reserved} reserved, but its confirmed orders hold {}",
                    expected_reserved[id]
                ));
            }
            if u64::from(*initial) != stock + shipped[id] {
                violations.push(format!("product {id}: stock not conserved: {initial} initial != {stock} now + {} shipped", shipped[id]));
            }
        }
        if violations.is_empty() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The saga's record of every order agrees with the order.
    for chunk in placed.chunks(64) {
        let records = futures::future::try_join_all(chunk.iter().map(|order| {
            api.call(reqwest::Method::GET, format!("{}/api/reservations/{}", api.inventory, order.id), None)
        }))
        .await?;
        for (order, (status, record)) in chunk.iter().zip(records) {
            let order_status = finals.get(&order.id).and_then(|view| view["status"].as_str()).unwrap_or("?");
            let saga_state = if status == StatusCode::OK { record["state"].as_str().unwrap_or("?") } else { "none" };
            let agrees = match order_status {
                "confirmed" => saga_state == "reserved",
                "shipped" => saga_state == "shipped",
                "rejected" => saga_state == "failed",
                "cancelled" => matches!(saga_state, "failed" | "released"),
                _ => false,
            };
            if !agrees {
                violations.push(format!("order {} is {order_status} but its reservation is {saga_state}", order.id));
            }
        }
    }
    Ok(violations)
}

fn timestamp(value: &Value) -> Option<chrono::DateTime<chrono::Utc>> {
    value.as_str().and_then(|text| chrono::DateTime::parse_from_rfc3339(text).ok()).map(|at| at.with_timezone(&chrono::Utc))
}

fn progress_bar(args: &LoadArgs) -> ProgressBar {
    if args.quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(args.orders as u64);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} orders placed ({per_sec}, eta {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}

pub fn print_report(report: &Report) {
    println!("orders          {} from {} customers (seed {})", report.orders, report.concurrency, report.seed);
    println!("throughput      {:.1} orders/s over {:.1} s", report.orders_per_s, report.duration_s);
    let l = &report.latency_ms;
    println!(
        "place->decided  p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms  ({} orders)",
        l.p50, l.p90, l.p99, l.max, l.samples
    );
    let statuses: Vec<String> = report.statuses.iter().map(|(status, count)| format!("{status} {count}")).collect();
    println!("final statuses  {}", statuses.join(", "));
    println!("server errors   {}", report.http_errors);
    if report.unfinished > 0 {
        println!("UNFINISHED      {} orders never left placed", report.unfinished);
    }
    if report.violations.is_empty() {
        println!("invariants      ok: nothing oversold, reserved = open reservations, stock conserved, sagas agree");
    } else {
        println!("INVARIANTS VIOLATED ({}):", report.violations.len());
        for violation in report.violations.iter().take(50) {
            println!("  {violation}");
        }
    }
}
