//! `harness load`: simulated customers drive orders through the HTTP APIs of running services,
//! then the run waits for every order to end and checks the system's invariants through the
//! same APIs.
//!
//! Each customer places an order of 1..k lines of distinct products, in one request that
//! creates it with its lines and places it (with an Idempotency-Key), or with `--flow
//! step-by-step` as a draft, a request per line and the place (`--flow mixed`: either, at
//! random); it then may cancel it at once, wait for the outcome and cancel the confirmed order,
//! or ship it. Place-to-decision latency is read from the order's own `placedAt`/`decidedAt`,
//! so polling does not blur it.
//!
//! Each simulated customer has its own token (signed with the local key, as `shop token`
//! does); products, shipping and the checks use an admin token.
//!
//! The customers tolerate failures the way a careful client would: they spread requests over
//! every instance given, retry what failed in transit (and check before repeating anything that
//! is not idempotent), so the same code drives the fault-injection runs of `harness chaos`. A
//! service that sheds load (503 with `Retry-After`) is honoured: the customer waits that long
//! (with some jitter) and tries again; those refusals are counted, not treated as failures.

use anyhow::{Context, bail, ensure};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use messaging::Backoff;
use reqwest::{Client, Method, StatusCode};
use serde::Serialize;
use serde_json::{Value, json};
use shop::config::{AuthSettings, DataDir};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use uuid::Uuid;
use web::auth::{Role, Signer};

/// How a customer places an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OrderFlow {
    /// Created with its lines and placed in one request.
    OneRequest,
    /// Created as a draft, then a request per line, then the place: 2 + lines requests.
    StepByStep,
    /// Either, at random for each order.
    Mixed,
}

#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// Base URL of the order API; several, comma-separated, spread the load over instances.
    #[arg(long, env = "SHOP_LOAD_ORDERS_URL", default_value = "http://127.0.0.1:8081", value_delimiter = ',')]
    pub orders_url: Vec<String>,
    /// Base URL of the inventory API; several, comma-separated, spread the load over instances.
    #[arg(long, env = "SHOP_LOAD_INVENTORY_URL", default_value = "http://127.0.0.1:8082", value_delimiter = ',')]
    pub inventory_url: Vec<String>,
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
    /// Fewest lines per order.
    #[arg(long, default_value_t = 1)]
    pub min_lines: usize,
    /// Most lines per order.
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
    /// Each customer waits for the outcome of an order before starting the next, so that at
    /// most `--concurrency` orders are in flight (`--concurrency 1`: one order at a time).
    #[arg(long)]
    pub await_outcome: bool,
    /// How each order is placed.
    #[arg(long, value_enum, default_value_t = OrderFlow::OneRequest)]
    pub flow: OrderFlow,
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
    /// The services' token settings: the run signs its tokens with the same local key.
    #[command(flatten)]
    pub auth: AuthSettings,
    #[command(flatten)]
    pub data: DataDir,
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
    /// Requests sent, retries and refusals included.
    pub http_requests: usize,
    /// Requests a service refused because it had too many in flight (503 with Retry-After);
    /// each was sent again after the wait it asked for.
    pub http_shed: usize,
    /// Answers 5xx (other than shed load) or no answer at all (each was retried).
    pub http_errors: usize,
    /// Latency of the requests a service accepted (answered, shed ones excluded).
    pub http_latency_ms: LatencySummary,
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
    crate::conclude(&report, print_report, report.passed(), args.json.as_deref())
}

/// Runs the load and the checks; returns the report (an error only if the run could not happen).
pub async fn drive(args: &LoadArgs) -> anyhow::Result<Report> {
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    let api = Api::new(args)?;
    eprintln!(
        "seed {seed}: {} orders from {} customers over {} products",
        args.orders, args.concurrency, args.products
    );
    let catalog = api.seed_catalog(args).await?;
    let started = Instant::now();
    let orders = api.place_orders(args, &catalog, seed).await?;
    let finals = api.settle(&orders, args.settle_timeout).await?;
    let mut report = summarize(seed, args.concurrency, started.elapsed(), &finals);
    report.violations = api.check_invariants(&catalog, &finals, args.settle_timeout).await?;
    api.http_figures(&mut report);
    Ok(report)
}

/// The products of a run: id -> initial stock.
pub type Catalog = BTreeMap<i64, u32>;

/// The services' HTTP APIs, with the retries of a careful client.
pub struct Api {
    http: Client,
    signer: Signer,
    admin: String,
    orders: Vec<String>,
    inventory: Vec<String>,
    next: AtomicUsize,
    requests: AtomicUsize,
    shed: AtomicUsize,
    errors: AtomicUsize,
    /// Microseconds per accepted request.
    latency: std::sync::Mutex<Histogram<u64>>,
}

/// Why an attempt brought no usable answer.
enum NoAnswer {
    /// No connection, a timeout or a 5xx: the request may or may not have been applied.
    Failed,
    /// The service refused it unread (a 503 problem of type `overloaded`) and asked to be called
    /// again after this long.
    Shed(Duration),
}

struct Request {
    method: Method,
    path: String,
    body: Option<Value>,
    headers: Vec<(&'static str, String)>,
    token: String,
}

/// A request that asks to wait for a change: its time is the wait, not the service's.
const PREFER: &str = "Prefer";

#[derive(Clone, Copy)]
enum Service {
    Orders,
    Inventory,
}

/// How long a request that gets no answer is tried again before the run gives up: longer than
/// a service takes to notice a database or broker gone silent and reconnect (up to about two
/// minutes on a loaded 2-core machine during `harness chaos`).
const FAILURE_PATIENCE: Duration = Duration::from_secs(180);

/// The pause after each request that got no answer.
const RETRY_BACKOFF: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(3));

/// How long a request refused for overload is tried again: refusals do not use up attempts,
/// since a system under more load than it takes refuses many.
const SHED_PATIENCE: Duration = Duration::from_secs(600);

/// Long enough for any run.
const TOKEN_TTL: Duration = Duration::from_secs(12 * 3600);

impl Api {
    pub fn new(args: &LoadArgs) -> anyhow::Result<Arc<Self>> {
        ensure!(args.orders > 0 && args.concurrency > 0, "--orders and --concurrency must be at least 1");
        ensure!(
            args.products > 0 && args.min_lines > 0 && args.max_quantity > 0,
            "--products, --min-lines and --max-quantity must be at least 1"
        );
        ensure!(args.min_lines <= args.max_lines, "--min-lines cannot exceed --max-lines");
        ensure!(args.max_lines <= args.products, "--max-lines cannot exceed --products (lines are distinct products)");
        let trim =
            |urls: &[String]| urls.iter().map(|url| url.trim().trim_end_matches('/').to_owned()).collect::<Vec<_>>();
        let (orders, inventory) = (trim(&args.orders_url), trim(&args.inventory_url));
        ensure!(!orders.is_empty() && !inventory.is_empty(), "give at least one URL per service");
        let signer = args.auth.signer(&args.data)?;
        let admin = signer.sign("shop-load", Role::Admin, TOKEN_TTL);
        Ok(Arc::new(Self {
            signer,
            admin,
            http: Client::builder()
                .pool_max_idle_per_host(args.concurrency * 2)
                .timeout(Duration::from_secs(30))
                .build()?,
            orders,
            inventory,
            next: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            shed: AtomicUsize::new(0),
            errors: AtomicUsize::new(0),
            latency: std::sync::Mutex::new(Histogram::new(3).expect("valid histogram")),
        }))
    }

    /// Requests answered 5xx or not at all so far (shed ones aside).
    pub fn errors(&self) -> usize {
        self.errors.load(Ordering::Relaxed)
    }

    /// Requests sent, shed and failed, and the latency of those accepted, into `report`.
    pub fn http_figures(&self, report: &mut Report) {
        report.http_requests = self.requests.load(Ordering::Relaxed);
        report.http_shed = self.shed.load(Ordering::Relaxed);
        report.http_errors = self.errors();
        report.http_latency_ms = LatencySummary::of(&self.latency.lock().expect("latency lock"), 1000.0);
    }

    /// One attempt on the next instance, or why it brought no usable answer.
    async fn attempt(&self, service: Service, request: &Request) -> Result<(StatusCode, Value), NoAnswer> {
        let Request { method, path, body, headers, token } = request;
        let instances = match service {
            Service::Orders => &self.orders,
            Service::Inventory => &self.inventory,
        };
        let base = &instances[self.next.fetch_add(1, Ordering::Relaxed) % instances.len()];
        let mut request = self.http.request(method.clone(), format!("{base}{path}")).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(body);
        }
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let timed = !headers.iter().any(|(name, _)| *name == PREFER);
        self.requests.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let response = request.send().await;
        let elapsed = started.elapsed();
        match response {
            Ok(response) if response.status() == StatusCode::SERVICE_UNAVAILABLE => {
                let wait = retry_after(&response);
                let problem = response.json::<Value>().await.unwrap_or(Value::Null);
                if problem["type"].as_str().is_some_and(|kind| kind.ends_with("/overloaded")) {
                    self.shed.fetch_add(1, Ordering::Relaxed);
                    Err(NoAnswer::Shed(wait))
                } else {
                    self.errors.fetch_add(1, Ordering::Relaxed);
                    Err(NoAnswer::Failed)
                }
            }
            Ok(response) if !response.status().is_server_error() => {
                if timed {
                    let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX).max(1);
                    self.latency.lock().expect("latency lock").record(micros).expect("latency within range");
                }
                let status = response.status();
                Ok((status, response.json::<Value>().await.unwrap_or(Value::Null)))
            }
            _ => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                Err(NoAnswer::Failed)
            }
        }
    }

    /// A request that is safe to repeat, repeated until it gets an answer; as the admin.
    async fn call(
        &self,
        service: Service,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        self.call_as(&self.admin, service, method, path, body).await
    }

    async fn call_as(
        &self,
        token: &str,
        service: Service,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let request = Request { method, path: path.to_owned(), body, headers: Vec::new(), token: token.to_owned() };
        self.send(service, &request).await
    }

    async fn send(&self, service: Service, request: &Request) -> anyhow::Result<(StatusCode, Value)> {
        let patience = Instant::now() + SHED_PATIENCE;
        let give_up = Instant::now() + FAILURE_PATIENCE;
        let mut failures = 0;
        while Instant::now() < give_up {
            match self.attempt(service, request).await {
                Ok(answer) => return Ok(answer),
                Err(NoAnswer::Shed(wait)) if Instant::now() < patience => tokio::time::sleep(wait).await,
                Err(NoAnswer::Shed(_) | NoAnswer::Failed) => {
                    failures += 1;
                    tokio::time::sleep(RETRY_BACKOFF.pause(failures)).await;
                }
            }
        }
        bail!("{} {}: no answer after {failures} attempts in {FAILURE_PATIENCE:?}", request.method, request.path)
    }

    async fn expect(
        &self,
        service: Service,
        method: Method,
        path: &str,
        body: Option<Value>,
        expected: StatusCode,
    ) -> anyhow::Result<Value> {
        let (status, answer) = self.call(service, method.clone(), path, body).await?;
        ensure!(status == expected, "{method} {path}: expected {expected}, got {status}: {answer}");
        Ok(answer)
    }

    pub async fn order(&self, id: &str) -> anyhow::Result<Value> {
        self.expect(Service::Orders, Method::GET, &format!("/api/orders/{id}"), None, StatusCode::OK).await
    }

    pub async fn product(&self, id: i64) -> anyhow::Result<Value> {
        self.expect(Service::Inventory, Method::GET, &format!("/api/products/{id}"), None, StatusCode::OK).await
    }

    /// Creates the run's products and waits until the order service's catalog has them.
    pub async fn seed_catalog(&self, args: &LoadArgs) -> anyhow::Result<Catalog> {
        let mut products = Catalog::new();
        let run = &Uuid::now_v7().simple().to_string()[20..];
        for n in 0..args.products {
            let body = json!({
                "name": format!("load {run} product {n}"),
                "price": format!("{}.{:02}", 1 + n % 50, (n * 37) % 100),
                "stock": args.stock,
            });
            let product =
                self.expect(Service::Inventory, Method::POST, "/api/products", Some(body), StatusCode::CREATED).await?;
            products.insert(product["id"].as_i64().context("product without id")?, args.stock);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let catalog = self.expect(Service::Orders, Method::GET, "/api/catalog", None, StatusCode::OK).await?;
            let known: Vec<i64> =
                catalog.as_array().into_iter().flatten().filter_map(|item| item["productId"].as_i64()).collect();
            if products.keys().all(|id| known.contains(id)) {
                return Ok(products);
            }
            ensure!(Instant::now() < deadline, "the order service has not heard of the new products after 60s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every customer's orders; returns their ids.
    pub async fn place_orders(
        self: &Arc<Self>,
        args: &LoadArgs,
        catalog: &Catalog,
        seed: u64,
    ) -> anyhow::Result<Vec<String>> {
        let progress = progress_bar(args);
        let next = Arc::new(AtomicUsize::new(0));
        let products: Arc<Vec<i64>> = Arc::new(catalog.keys().copied().collect());
        let mut customers = tokio::task::JoinSet::new();
        for customer in 0..args.concurrency {
            let (api, args, products, next, progress) =
                (self.clone(), args.clone(), products.clone(), next.clone(), progress.clone());
            let mut rng = fastrand::Rng::with_seed(seed.wrapping_add(customer as u64));
            let token = api.signer.sign(&Uuid::now_v7().to_string(), Role::Customer, TOKEN_TTL);
            customers.spawn(async move {
                let mut placed = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < args.orders {
                    placed.push(api.one_order(&args, &products, &token, &mut rng).await?);
                    progress.inc(1);
                }
                Ok::<_, anyhow::Error>(placed)
            });
        }
        let mut orders = Vec::with_capacity(args.orders);
        while let Some(finished) = customers.join_next().await {
            orders.extend(finished??);
        }
        progress.finish_and_clear();
        Ok(orders)
    }

    async fn one_order(
        &self,
        args: &LoadArgs,
        products: &[i64],
        customer: &str,
        rng: &mut fastrand::Rng,
    ) -> anyhow::Result<String> {
        let mut chosen = products.to_vec();
        rng.shuffle(&mut chosen);
        let count = rng.usize(args.min_lines..=args.max_lines);
        let lines: Vec<(i64, u32)> =
            chosen.into_iter().take(count).map(|product| (product, rng.u32(1..=args.max_quantity))).collect();
        let step_by_step = match args.flow {
            OrderFlow::OneRequest => false,
            OrderFlow::StepByStep => true,
            OrderFlow::Mixed => rng.bool(),
        };
        let body = if step_by_step {
            json!({ "description": "load test" })
        } else {
            let lines: Vec<Value> =
                lines.iter().map(|(product, quantity)| json!({ "productId": product, "quantity": quantity })).collect();
            json!({ "description": "load test", "lines": lines, "place": true })
        };
        // The key makes the create safe to repeat after an attempt without an answer.
        let create = Request {
            method: Method::POST,
            path: "/api/orders".into(),
            body: Some(body),
            headers: vec![("Idempotency-Key", Uuid::now_v7().to_string())],
            token: customer.to_owned(),
        };
        let (status, created) = self.send(Service::Orders, &create).await?;
        ensure!(status == StatusCode::CREATED || status == StatusCode::OK, "create order: {status}: {created}");
        let id = created["id"].as_str().context("order without id")?.to_owned();
        let mut placed = created;
        if step_by_step {
            for (product, quantity) in lines {
                self.add_line(customer, &id, product, quantity).await?;
            }
            placed = self.transition(customer, &id, "place", None).await?;
        }

        // What this customer does after placing: cancel at once, cancel once confirmed, ship
        // once confirmed, or nothing.
        let roll = rng.f64();
        let ship = rng.f64() < args.ship_ratio;
        if roll < args.cancel_ratio / 2.0 {
            self.transition(customer, &id, "cancel", Some(json!({ "reason": "changed my mind right away" }))).await?;
        } else if roll < args.cancel_ratio || ship || args.await_outcome {
            let outcome = self.wait_until_decided(&id, placed, Duration::from_secs(60)).await?;
            if outcome["status"] == "confirmed" {
                if roll < args.cancel_ratio {
                    self.transition(customer, &id, "cancel", Some(json!({ "reason": "found it cheaper" }))).await?;
                } else if ship {
                    self.transition(&self.admin, &id, "ship", None).await?;
                }
            }
        }
        Ok(id)
    }

    /// Adds a line once: after an attempt without an answer, it looks before trying again.
    async fn add_line(&self, customer: &str, order: &str, product: i64, quantity: u32) -> anyhow::Result<()> {
        let add = Request {
            method: Method::POST,
            path: format!("/api/orders/{order}/items"),
            body: Some(json!({ "productId": product, "quantity": quantity })),
            headers: Vec::new(),
            token: customer.to_owned(),
        };
        let patience = Instant::now() + SHED_PATIENCE;
        let give_up = Instant::now() + FAILURE_PATIENCE;
        let mut failures = 0;
        let mut maybe_applied = false;
        while Instant::now() < give_up {
            if maybe_applied {
                let current = self.order(order).await?;
                let lines = current["lines"].as_array().cloned().unwrap_or_default();
                if lines.iter().any(|line| line["productId"] == product) {
                    return Ok(());
                }
            }
            match self.attempt(Service::Orders, &add).await {
                Ok((StatusCode::OK, _)) => return Ok(()),
                Ok((status, answer)) => bail!("add product {product} to {order}: {status}: {answer}"),
                // Refused unread: nothing to check before trying again.
                Err(NoAnswer::Shed(wait)) if Instant::now() < patience => tokio::time::sleep(wait).await,
                Err(NoAnswer::Shed(_) | NoAnswer::Failed) => {
                    maybe_applied = true;
                    failures += 1;
                    tokio::time::sleep(RETRY_BACKOFF.pause(failures)).await;
                }
            }
        }
        bail!("add product {product} to {order}: no answer after {failures} attempts in {FAILURE_PATIENCE:?}")
    }

    /// Place, cancel or ship; returns the answer. A 409 after a retry is the first attempt's
    /// success showing; a 409 for a cancel or ship means the order ended otherwise meanwhile
    /// (rejected, say).
    async fn transition(&self, token: &str, order: &str, action: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let path = format!("/api/orders/{order}/{action}");
        let (status, answer) = self.call_as(token, Service::Orders, Method::POST, &path, body).await?;
        ensure!(status == StatusCode::OK || status == StatusCode::CONFLICT, "{action} {order}: {status}: {answer}");
        Ok(answer)
    }

    /// Follows the order from `known` (the last view of it, if it is one) until it is decided:
    /// each request waits for the next change (`If-None-Match` with `Prefer: wait`).
    async fn wait_until_decided(&self, id: &str, known: Value, limit: Duration) -> anyhow::Result<Value> {
        let deadline = Instant::now() + limit;
        let mut order = if known["id"] == id { known } else { self.order(id).await? };
        while order["status"] == "placed" && Instant::now() < deadline {
            let version = order["version"].as_i64().context("order without version")?;
            let follow = Request {
                method: Method::GET,
                path: format!("/api/orders/{id}"),
                body: None,
                headers: vec![("If-None-Match", web::version_tag(version)), (PREFER, "wait=10".into())],
                token: self.admin.clone(),
            };
            let asked = Instant::now();
            match self.send(Service::Orders, &follow).await? {
                (StatusCode::OK, changed) => order = changed,
                // Unchanged sooner than asked: the service did not wait (at its limit of waits).
                (StatusCode::NOT_MODIFIED, _) if asked.elapsed() < Duration::from_secs(1) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                (StatusCode::NOT_MODIFIED, _) => {}
                (status, answer) => bail!("GET /api/orders/{id}: {status}: {answer}"),
            }
        }
        Ok(order)
    }

    /// Polls every order until it has left `placed` (or the time is up); returns the last view.
    pub async fn settle(&self, orders: &[String], limit: Duration) -> anyhow::Result<HashMap<String, Value>> {
        let deadline = Instant::now() + limit;
        let mut finals = HashMap::with_capacity(orders.len());
        let mut pending = orders.to_vec();
        while !pending.is_empty() {
            let mut still = Vec::new();
            for chunk in pending.chunks(64) {
                let views = futures::future::try_join_all(chunk.iter().map(|id| self.order(id))).await?;
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

    /// The system's invariants, read through the APIs once the system is quiet. `finals`
    /// are the orders' last views: their lines are what was really ordered.
    pub async fn check_invariants(
        &self,
        catalog: &Catalog,
        finals: &HashMap<String, Value>,
        limit: Duration,
    ) -> anyhow::Result<Vec<String>> {
        let mut expected_reserved: BTreeMap<i64, u64> = catalog.keys().map(|id| (*id, 0)).collect();
        let mut shipped: BTreeMap<i64, u64> = catalog.keys().map(|id| (*id, 0)).collect();
        let mut violations = Vec::new();
        for (id, order) in finals {
            let bucket = match order["status"].as_str().unwrap_or("?") {
                "confirmed" => &mut expected_reserved,
                "shipped" => &mut shipped,
                "rejected" | "cancelled" => continue,
                other => {
                    violations.push(format!("order {id} never ended: it is {other}"));
                    continue;
                }
            };
            for line in order["lines"].as_array().into_iter().flatten() {
                let (product, quantity) =
                    (line["productId"].as_i64().unwrap_or(0), line["quantity"].as_u64().unwrap_or(0));
                *bucket.entry(product).or_default() += quantity;
            }
        }
        // Releases of rejected and cancelled orders may still be in flight: wait for quiet.
        let deadline = Instant::now() + limit;
        let mut stock_violations;
        loop {
            stock_violations = Vec::new();
            for (id, initial) in catalog {
                let product = self.product(*id).await?;
                let field = |name: &str| product[name].as_u64().unwrap_or(u64::MAX);
                let (stock, reserved) = (field("stock"), field("reserved"));
                if reserved > stock {
                    stock_violations.push(format!("product {id} oversold: {reserved} reserved of {stock} in stock"));
                }
                if reserved != expected_reserved[id] {
                    stock_violations.push(format!(
                        "product {id}: {reserved} reserved, but its confirmed orders hold {}",
                        expected_reserved[id]
                    ));
                }
                if u64::from(*initial) != stock + shipped[id] {
                    stock_violations.push(format!(
                        "product {id}: stock not conserved: {initial} initial != {stock} now + {} shipped",
                        shipped[id]
                    ));
                }
            }
            if stock_violations.is_empty() || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        violations.extend(stock_violations);
        // The saga's record of every order agrees with the order.
        let ids: Vec<&String> = finals.keys().collect();
        for chunk in ids.chunks(64) {
            let records = futures::future::try_join_all(chunk.iter().map(|id| async move {
                self.call(Service::Inventory, Method::GET, &format!("/api/reservations/{id}"), None).await
            }))
            .await?;
            for (id, (status, record)) in chunk.iter().zip(records) {
                let order_status = finals[*id]["status"].as_str().unwrap_or("?");
                let saga_state =
                    if status == StatusCode::OK { record["state"].as_str().unwrap_or("?") } else { "none" };
                let agrees = match order_status {
                    "confirmed" => saga_state == "reserved",
                    "shipped" => saga_state == "shipped",
                    "rejected" => saga_state == "failed",
                    "cancelled" => matches!(saga_state, "failed" | "released"),
                    _ => true, // reported above
                };
                if !agrees {
                    violations.push(format!("order {id} is {order_status} but its reservation is {saga_state}"));
                }
            }
        }
        Ok(violations)
    }
}

/// The wait a response asks for (`Retry-After` in seconds, at most a minute; 1 s if unreadable),
/// plus up to half of it again, so that refused clients do not all return at once.
fn retry_after(response: &reqwest::Response) -> Duration {
    let seconds = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok())
        .unwrap_or(1)
        .min(60);
    let wait = Duration::from_secs(seconds);
    wait + wait.mul_f64(fastrand::f64() / 2.0)
}

/// Throughput, latency and final statuses of a set of orders.
pub fn summarize(seed: u64, concurrency: usize, duration: Duration, finals: &HashMap<String, Value>) -> Report {
    let mut report = Report { seed, orders: finals.len(), concurrency, ..Report::default() };
    report.duration_s = duration.as_secs_f64();
    report.orders_per_s = finals.len() as f64 / duration.as_secs_f64();
    let mut latency = Histogram::<u64>::new(3).expect("valid histogram");
    for order in finals.values() {
        let status = order["status"].as_str().unwrap_or("?").to_owned();
        if status == "placed" {
            report.unfinished += 1;
        }
        *report.statuses.entry(status).or_default() += 1;
        if let (Some(placed_at), Some(decided_at)) = (timestamp(&order["placedAt"]), timestamp(&order["decidedAt"])) {
            let micros = (decided_at - placed_at).num_microseconds().unwrap_or(0).max(0) as u64;
            latency.record(micros).expect("latency within range");
        }
    }
    report.latency_ms = LatencySummary::of(&latency, 1000.0);
    report
}

impl LatencySummary {
    /// Quantiles of `histogram`, divided by `per_ms` (its units per millisecond).
    fn of(histogram: &Histogram<u64>, per_ms: f64) -> Self {
        Self {
            samples: histogram.len(),
            p50: histogram.value_at_quantile(0.5) as f64 / per_ms,
            p90: histogram.value_at_quantile(0.9) as f64 / per_ms,
            p99: histogram.value_at_quantile(0.99) as f64 / per_ms,
            max: histogram.max() as f64 / per_ms,
        }
    }
}

fn timestamp(value: &Value) -> Option<chrono::DateTime<chrono::Utc>> {
    value
        .as_str()
        .and_then(|text| chrono::DateTime::parse_from_rfc3339(text).ok())
        .map(|at| at.with_timezone(&chrono::Utc))
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
    let shed_share =
        if report.http_requests == 0 { 0.0 } else { report.http_shed as f64 / report.http_requests as f64 };
    println!(
        "http            {} requests, {} shed ({:.1}%, each retried after its Retry-After), {} errors (5xx or no answer, each retried)",
        report.http_requests,
        report.http_shed,
        shed_share * 100.0,
        report.http_errors
    );
    let h = &report.http_latency_ms;
    println!(
        "accepted        p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms  ({} requests answered)",
        h.p50, h.p90, h.p99, h.max, h.samples
    );
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
