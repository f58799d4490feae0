//! Wiring of the two services: database (PostgreSQL or SQLite), migrations, stores, handlers,
//! consumers, relay and chores under supervision, HTTP with the operators' routes.

use crate::config::{InventorySettings, OrderSettings, Storage, Tuning, embedded};
use crate::server::HttpApp;
use crate::supervision::Supervisor;
use anyhow::{Context, bail};
use async_trait::async_trait;
use futures::future::BoxFuture;
use messaging::postgres::{GroupCommit, PgInbox, PgOutbox, PgOutboxMonitor, Relay};
use messaging::relay::RelayConfig;
use messaging::sqlite::{SqliteInbox, SqliteOutboxMonitor, SqliteRelay};
use messaging::{
    Consumer, ConsumerConfig, HandOff, Handler, Inbox, LocalConsumers, Naming, OutboxMonitor, RetryPolicy, Transport,
    TransportError,
};
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;
use web::ReadinessCheck;
use web::auth::Verifier;

/// A service running in this process. Stop it with [`RunningService::stop`].
pub struct RunningService {
    pub name: &'static str,
    /// Where its HTTP API listens (useful with port 0).
    pub http_addr: SocketAddr,
    shutdown: CancellationToken,
    done: JoinHandle<()>,
}

impl RunningService {
    pub(crate) fn new(
        name: &'static str,
        http_addr: SocketAddr,
        shutdown: CancellationToken,
        done: JoinHandle<()>,
    ) -> Self {
        Self { name, http_addr, shutdown, done }
    }

    /// Graceful stop: stop accepting requests and finish those in flight, stop consuming and
    /// finish the messages in hand, then publish what the outbox still holds.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.done.await;
    }
}

/// What the services of one process share: the broker and its names, the tuning, the metrics,
/// the verifier of the tokens their APIs accept, their consumers' in-process hand-off, and in
/// the embedded mode the data directory.
#[derive(Clone)]
pub struct Runtime {
    pub transport: Arc<dyn Transport>,
    pub naming: Naming,
    pub tuning: Tuning,
    pub metrics: Option<PrometheusHandle>,
    pub verifier: Arc<Verifier>,
    /// The consumers of every service of the process, to which the services' commits hand the
    /// messages they alone read (on PostgreSQL): `shop up` hands the order service's messages
    /// to the inventory service's consumers, and back, without the broker.
    pub local_consumers: Arc<LocalConsumers>,
    /// The embedded mode: where a service without a database URL keeps its SQLite file
    /// (`orders.sqlite`, `inventory.sqlite`). `None`: every service needs its database URL.
    pub embedded_dir: Option<PathBuf>,
}

/// Where a service keeps its state: the PostgreSQL database its URL names or, without one,
/// its SQLite `file` in the embedded data directory.
pub fn storage(url: Option<&str>, embedded_dir: Option<&Path>, file: &str, variable: &str) -> anyhow::Result<Storage> {
    match (url, embedded_dir) {
        (Some(url), _) => Ok(Storage::Postgres { url: url.to_owned() }),
        (None, Some(dir)) => Ok(Storage::Sqlite { file: dir.join(file) }),
        (None, None) => bail!("no database: set {variable}"),
    }
}

/// A service's database, open and migrated.
#[derive(Clone)]
pub enum Database {
    Postgres(PgPool),
    Sqlite(messaging::sqlite::Database),
}

impl Database {
    /// Opens the service's database (creating it if needed) and brings its schema up to date,
    /// with the migrations of its engine.
    pub async fn open(
        service: &str,
        storage: &Storage,
        tuning: &Tuning,
        postgres: fn() -> Migrator,
        sqlite: fn() -> Migrator,
    ) -> anyhow::Result<Self> {
        match storage {
            Storage::Postgres { url } => Ok(Database::Postgres(database(service, url, tuning, postgres()).await?)),
            Storage::Sqlite { file } => {
                let db = messaging::sqlite::Database::open(file, tuning.db_pool_size)
                    .await
                    .with_context(|| format!("cannot open the {service} database {}", file.display()))?;
                db.migrate(&sqlite()).await.with_context(|| format!("cannot migrate the {service} database"))?;
                Ok(Database::Sqlite(db))
            }
        }
    }

    fn inbox(&self) -> Arc<dyn Inbox> {
        match self {
            Database::Postgres(pool) => Arc::new(PgInbox::new(pool.clone())),
            Database::Sqlite(db) => Arc::new(SqliteInbox::new(db.clone())),
        }
    }

    /// The relay of its outbox, publishing what `hand_off` hands it too, to run until `stop`.
    fn relay(
        &self,
        name: &'static str,
        transport: Arc<dyn Transport>,
        config: RelayConfig,
        hand_off: Option<Arc<HandOff>>,
        stop: CancellationToken,
    ) -> BoxFuture<'static, ()> {
        match self {
            Database::Postgres(pool) => {
                let relay = Relay::new(name, pool.clone(), transport, config);
                Box::pin(
                    match hand_off {
                        Some(hand_off) => relay.with_hand_off(hand_off),
                        None => relay,
                    }
                    .run(stop),
                )
            }
            Database::Sqlite(db) => Box::pin(SqliteRelay::new(name, db.clone(), transport, config).run(stop)),
        }
    }

    /// The hand-off of the messages it commits, to the consumers of `local_consumers` (those
    /// they alone read) and to its relay (the others), when its database can hand them off
    /// (PostgreSQL; the embedded broker is a table of the same kind of file, so the embedded mode
    /// keeps its one path).
    fn hand_off(&self, service: &'static str, local_consumers: &Arc<LocalConsumers>) -> Option<Arc<HandOff>> {
        match self {
            Database::Postgres(pool) => {
                let local = crate::topology::single_reader(service);
                let hand_off = HandOff::new(service, local, Arc::new(PgOutbox::from(pool.clone())));
                Some(Arc::new(hand_off.with_consumers(local_consumers.clone())))
            }
            Database::Sqlite(_) => None,
        }
    }

    /// What operators see of its outbox.
    fn outbox_monitor(&self) -> Arc<dyn OutboxMonitor> {
        match self {
            Database::Postgres(pool) => Arc::new(PgOutboxMonitor::new(pool.clone())),
            Database::Sqlite(db) => Arc::new(SqliteOutboxMonitor::new(db.clone())),
        }
    }

    pub async fn close(&self) {
        match self {
            Database::Postgres(pool) => pool.close().await,
            Database::Sqlite(db) => db.close().await,
        }
    }
}

/// The group commit a PostgreSQL database's stores share, handing off through `hand_off`.
fn group_commit(pool: &PgPool, hand_off: Option<Arc<HandOff>>) -> GroupCommit {
    let db = GroupCommit::from(pool.clone());
    match hand_off {
        Some(hand_off) => db.with_hand_off(hand_off),
        None => db,
    }
}

/// What makes one service, as the generic runner needs it.
struct ServiceParts {
    name: &'static str,
    database: Database,
    /// Where its commits hand their messages on, if they do.
    hand_off: Option<Arc<HandOff>>,
    consumers: Vec<Consumer>,
    api: axum::Router,
    openapi: utoipa::openapi::OpenApi,
    http_addr: SocketAddr,
    /// Housekeeping that runs until the service stops.
    chores: Vec<BoxFuture<'static, ()>>,
    /// Run when the service starts stopping, before the HTTP server waits for the requests in
    /// flight: what makes long requests end.
    on_stopping: Option<Box<dyn FnOnce() + Send>>,
}

pub async fn start_order(settings: &OrderSettings, runtime: &Runtime) -> anyhow::Result<RunningService> {
    use order::application::{
        Catalog, CatalogHandler, OrderService, OrderStore, RecentCatalog, ReservationOutcomeHandler, SERVICE,
    };
    use order::infrastructure::{PgCatalog, PgOrderStore, SqliteCatalog, SqliteOrderStore, migrator, sqlite_migrator};

    let url = settings.database_url.as_deref();
    let storage = storage(url, runtime.embedded_dir.as_deref(), embedded::ORDERS, "SHOP_ORDERS_DATABASE_URL")?;
    let database = Database::open(SERVICE, &storage, &runtime.tuning, migrator, sqlite_migrator).await?;
    let hand_off = database.hand_off(SERVICE, &runtime.local_consumers);
    let (orders, catalog): (Arc<dyn OrderStore>, Arc<dyn Catalog>) = match &database {
        Database::Postgres(pool) => {
            let db = group_commit(pool, hand_off.clone());
            (Arc::new(PgOrderStore::new(db.clone())), Arc::new(PgCatalog::new(db)))
        }
        Database::Sqlite(db) => (Arc::new(SqliteOrderStore::new(db.clone())), Arc::new(SqliteCatalog::new(db.clone()))),
    };
    let catalog: Arc<dyn Catalog> = Arc::new(RecentCatalog::new(catalog));
    let service = OrderService::new(orders, catalog.clone());
    let service = Arc::new(service.with_idempotency_key_ttl(settings.idempotency_key_ttl));
    let consumers = Consumers::new(SERVICE, runtime, &database, hand_off.clone());
    // Through the service: a decision saved ends the waits for that order.
    let consumers =
        vec![consumers.of(CatalogHandler::new(catalog)), consumers.of(ReservationOutcomeHandler::new(service.clone()))];
    let chores = vec![forget_expired_idempotency_keys(service.clone(), settings.idempotency_key_ttl)];
    let waits = service.clone();
    let on_stopping: Option<Box<dyn FnOnce() + Send>> = Some(Box::new(move || waits.stop_waiting()));
    let api = order::http::router(service);
    let parts = ServiceParts {
        name: SERVICE,
        database,
        hand_off,
        consumers,
        api,
        openapi: order::http::ApiDoc::openapi(),
        http_addr: settings.http_addr,
        chores,
        on_stopping,
    };
    run(parts, runtime).await
}

pub async fn start_inventory(settings: &InventorySettings, runtime: &Runtime) -> anyhow::Result<RunningService> {
    use inventory::application::{
        ProductService, ProductStore, ReservationSagaHandler, SERVICE, SagaStore, StockHandler,
    };
    use inventory::infrastructure::{
        PgProductStore, PgSagaStore, SqliteProductStore, SqliteSagaStore, migrator, sqlite_migrator,
    };

    let url = settings.database_url.as_deref();
    let storage = storage(url, runtime.embedded_dir.as_deref(), embedded::INVENTORY, "SHOP_INVENTORY_DATABASE_URL")?;
    let database = Database::open(SERVICE, &storage, &runtime.tuning, migrator, sqlite_migrator).await?;
    let hand_off = database.hand_off(SERVICE, &runtime.local_consumers);
    let (products, sagas): (Arc<dyn ProductStore>, Arc<dyn SagaStore>) = match &database {
        Database::Postgres(pool) => {
            let db = group_commit(pool, hand_off.clone());
            (Arc::new(PgProductStore::new(db.clone())), Arc::new(PgSagaStore::new(db)))
        }
        Database::Sqlite(db) => {
            (Arc::new(SqliteProductStore::new(db.clone())), Arc::new(SqliteSagaStore::new(db.clone())))
        }
    };
    let service = Arc::new(ProductService::new(products.clone(), sagas.clone()));
    let consumers = Consumers::new(SERVICE, runtime, &database, hand_off.clone());
    let consumers = vec![
        consumers.of(ReservationSagaHandler::new(sagas, settings.reservation_timeout)),
        consumers.of(StockHandler::new(products)),
    ];
    let api = inventory::http::router(service);
    let openapi = inventory::http::ApiDoc::openapi();
    let http_addr = settings.http_addr;
    let parts = ServiceParts {
        name: SERVICE,
        database,
        hand_off,
        consumers,
        api,
        openapi,
        http_addr,
        chores: Vec::new(),
        on_stopping: None,
    };
    run(parts, runtime).await
}

/// Deletes the idempotency keys that have expired, as the relay deletes sent outbox rows: every
/// minute, or as often as keys expire when they live shorter.
fn forget_expired_idempotency_keys(
    orders: Arc<order::application::OrderService>,
    ttl: Duration,
) -> BoxFuture<'static, ()> {
    let period = ttl.clamp(Duration::from_secs(1), Duration::from_secs(60));
    Box::pin(async move {
        let mut every = tokio::time::interval(period);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            match orders.forget_expired_idempotency_keys().await {
                Ok(0) => {}
                Ok(forgotten) => tracing::debug!(forgotten, "forgot expired idempotency keys"),
                Err(error) => {
                    tracing::warn!(error = %messaging::ErrorChain(&error), "could not forget expired idempotency keys");
                }
            }
        }
    })
}

/// Makes the consumers of one service: queues under the runtime's names, its tuning, the
/// service's inbox.
struct Consumers {
    service: &'static str,
    naming: Naming,
    config: ConsumerConfig,
    inbox: Arc<dyn Inbox>,
    hand_off: Option<Arc<HandOff>>,
}

impl Consumers {
    fn new(service: &'static str, runtime: &Runtime, database: &Database, hand_off: Option<Arc<HandOff>>) -> Self {
        let config = ConsumerConfig {
            concurrency: runtime.tuning.consumer_concurrency,
            prefetch: runtime.tuning.prefetch,
            retry: RetryPolicy::default(),
            handler_timeout: runtime.tuning.handler_timeout,
        };
        Self { service, naming: runtime.naming.clone(), config, inbox: database.inbox(), hand_off }
    }

    fn of<H: Handler>(&self, handler: H) -> Consumer {
        let consumer = Consumer::new(self.service, &self.naming, Arc::new(handler), self.config.clone())
            .with_inbox(self.inbox.clone());
        match &self.hand_off {
            Some(hand_off) => consumer.with_hand_off(hand_off.clone()),
            None => consumer,
        }
    }
}

/// Opens the service's PostgreSQL database (creating it if needed) and brings its schema up to
/// date.
pub async fn database(service: &str, url: &str, tuning: &Tuning, migrator: Migrator) -> anyhow::Result<PgPool> {
    let pool = messaging::postgres::connect_with(url, &tuning.pool())
        .await
        .with_context(|| format!("cannot open the {service} database at {}", messaging::redact_url(url)))?;
    messaging::postgres::migrate(&pool, &migrator)
        .await
        .with_context(|| format!("cannot migrate the {service} database"))?;
    Ok(pool)
}

/// The service's API with the operators' routes (outbox, queues, dead letters) and their docs.
fn with_operators(parts: ServiceParts, transport: Arc<dyn Transport>) -> ServiceParts {
    use web::admin::{AdminApiDoc, ConsumerQueue, Operators};
    let consumers = parts
        .consumers
        .iter()
        .map(|consumer| ConsumerQueue {
            consumer: consumer.name(),
            queue: consumer.queue().name.clone(),
            stats: consumer.stats(),
        })
        .collect();
    let outbox = parts.database.outbox_monitor();
    let operators = Operators { service: parts.name, transport, outbox, consumers };
    let mut openapi = parts.openapi;
    openapi.merge(AdminApiDoc::openapi());
    ServiceParts { api: parts.api.merge(web::admin::router(operators)), openapi, ..parts }
}

async fn run(parts: ServiceParts, runtime: &Runtime) -> anyhow::Result<RunningService> {
    let ServiceParts { name, database, hand_off, consumers, api, openapi, http_addr, chores, on_stopping } =
        with_operators(parts, runtime.transport.clone());
    let Runtime { transport, tuning, metrics, verifier, .. } = runtime.clone();
    let supervisor = Supervisor::new(name);
    let http = HttpApp {
        service: name,
        api,
        verifier,
        openapi,
        checks: vec![
            Box::new(DatabaseCheck(database.clone())),
            Box::new(BrokerCheck(transport.clone())),
            Box::new(supervisor.readiness()),
        ],
        metrics,
        request_timeout: tuning.request_timeout,
        max_requests_in_flight: tuning.max_requests_in_flight,
    };
    // Queues exist before the first request, so nothing this service is sent is unroutable.
    for consumer in &consumers {
        transport.declare(consumer.queue()).await.map_err(|error| declare_error(&consumer.queue().name, error))?;
    }
    let listener = tokio::net::TcpListener::bind(http_addr)
        .await
        .with_context(|| format!("cannot listen on {http_addr} for the {name} API"))?;
    let http_addr = listener.local_addr()?;

    let shutdown = CancellationToken::new();
    let (consumers_stop, relay_stop) = (CancellationToken::new(), CancellationToken::new());
    let consuming: Vec<_> = consumers
        .into_iter()
        .map(|consumer| {
            let task = format!("consumer {}", consumer.name());
            supervisor.spawn(task, consumers_stop.clone(), consumer.run(transport.clone(), consumers_stop.clone()))
        })
        .collect();
    let relay_config = RelayConfig { sweep_interval: tuning.relay_sweep, ..RelayConfig::default() };
    let relay = database.relay(name, transport.clone(), relay_config, hand_off, relay_stop.clone());
    let relaying = supervisor.spawn("relay".into(), relay_stop.clone(), relay);
    let chores: Vec<_> = chores
        .into_iter()
        .map(|chore| {
            let stop = relay_stop.clone();
            supervisor.spawn("chore".into(), relay_stop.clone(), async move {
                stop.run_until_cancelled(chore).await;
            })
        })
        .collect();
    let router = http.into_router();
    let serving = tokio::spawn(
        axum::serve(listener, router).with_graceful_shutdown(shutdown.clone().cancelled_owned()).into_future(),
    );
    tracing::info!(service = name, %http_addr, "service started");

    let stopping = shutdown.clone();
    let done = tokio::spawn(async move {
        stopping.cancelled().await;
        tracing::info!(service = name, "stopping: finishing requests in flight");
        if let Some(on_stopping) = on_stopping {
            on_stopping();
        }
        if let Ok(Err(error)) = serving.await {
            tracing::warn!(service = name, %error, "HTTP server error");
        }
        consumers_stop.cancel();
        for consumer in consuming {
            let _ = consumer.await;
        }
        relay_stop.cancel();
        let _ = relaying.await;
        for chore in chores {
            let _ = chore.await;
        }
        database.close().await;
        tracing::info!(service = name, "stopped");
    });
    Ok(RunningService { name, http_addr, shutdown, done })
}

/// Why `queue` could not be declared, with what to do when it exists as another type.
fn declare_error(queue: &str, error: TransportError) -> anyhow::Error {
    let context = match &error {
        TransportError::Inequivalent { .. } => format!(
            "cannot declare queue {queue}: a queue keeps the type it was created with; set SHOP_QUEUE_TYPE to the \
             type the service's queues have, or drain and delete its queues and their .error queues so that they \
             are created again with this one"
        ),
        TransportError::Unavailable(_)
        | TransportError::TimedOut(_)
        | TransportError::Nacked
        | TransportError::Unroutable { .. } => format!("cannot declare queue {queue}"),
    };
    anyhow::Error::new(error).context(context)
}

pub(crate) struct DatabaseCheck(pub(crate) Database);

#[async_trait]
impl ReadinessCheck for DatabaseCheck {
    fn name(&self) -> &'static str {
        "database"
    }

    async fn is_ready(&self) -> bool {
        match &self.0 {
            Database::Postgres(pool) => sqlx::query("SELECT 1").execute(pool).await.is_ok(),
            Database::Sqlite(db) => sqlx::query("SELECT 1").execute(db.reader()).await.is_ok(),
        }
    }
}

struct BrokerCheck(Arc<dyn Transport>);

#[async_trait]
impl ReadinessCheck for BrokerCheck {
    fn name(&self) -> &'static str {
        "broker"
    }

    async fn is_ready(&self) -> bool {
        self.0.is_ready().await
    }
}
