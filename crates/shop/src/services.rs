//! Wiring of the two services: database (PostgreSQL or SQLite), migrations, stores, handlers,
//! consumers, relay, HTTP.

use crate::config::{InventorySettings, OrderSettings, Storage, Tuning, embedded};
use crate::server::HttpApp;
use anyhow::{Context, bail};
use async_trait::async_trait;
use messaging::postgres::{PgInbox, Relay};
use messaging::relay::RelayConfig;
use messaging::sqlite::{SqliteInbox, SqliteRelay};
use messaging::{Consumer, ConsumerConfig, Handler, Inbox, Naming, RetryPolicy, Transport};
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
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
    /// Graceful stop: stop accepting requests and finish those in flight, stop consuming and
    /// finish the messages in hand, then publish what the outbox still holds.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.done.await;
    }
}

/// What the services of one process share: the broker and its names, the tuning, the metrics,
/// the verifier of the tokens their APIs accept, and in the embedded mode the data directory.
#[derive(Clone)]
pub struct Runtime {
    pub transport: Arc<dyn Transport>,
    pub naming: Naming,
    pub tuning: Tuning,
    pub metrics: Option<PrometheusHandle>,
    pub verifier: Arc<Verifier>,
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

    /// Runs the relay of its outbox until `stop`.
    fn relay(
        &self,
        name: &'static str,
        transport: Arc<dyn Transport>,
        config: RelayConfig,
        stop: CancellationToken,
    ) -> JoinHandle<()> {
        match self {
            Database::Postgres(pool) => tokio::spawn(Relay::new(name, pool.clone(), transport, config).run(stop)),
            Database::Sqlite(db) => tokio::spawn(SqliteRelay::new(name, db.clone(), transport, config).run(stop)),
        }
    }

    pub async fn close(&self) {
        match self {
            Database::Postgres(pool) => pool.close().await,
            Database::Sqlite(db) => db.close().await,
        }
    }
}

/// What makes one service, as the generic runner needs it.
struct ServiceParts {
    name: &'static str,
    database: Database,
    consumers: Vec<Consumer>,
    api: axum::Router,
    openapi: utoipa::openapi::OpenApi,
    http_addr: SocketAddr,
}

pub async fn start_order(settings: &OrderSettings, runtime: &Runtime) -> anyhow::Result<RunningService> {
    use order::application::{Catalog, CatalogHandler, OrderService, OrderStore, ReservationOutcomeHandler, SERVICE};
    use order::infrastructure::{PgCatalog, PgOrderStore, SqliteCatalog, SqliteOrderStore, migrator, sqlite_migrator};

    let url = settings.database_url.as_deref();
    let storage = storage(url, runtime.embedded_dir.as_deref(), embedded::ORDERS, "SHOP_ORDERS_DATABASE_URL")?;
    let database = Database::open(SERVICE, &storage, &runtime.tuning, migrator, sqlite_migrator).await?;
    let (orders, catalog): (Arc<dyn OrderStore>, Arc<dyn Catalog>) = match &database {
        Database::Postgres(pool) => (Arc::new(PgOrderStore::new(pool.clone())), Arc::new(PgCatalog::new(pool.clone()))),
        Database::Sqlite(db) => (Arc::new(SqliteOrderStore::new(db.clone())), Arc::new(SqliteCatalog::new(db.clone()))),
    };
    let service = Arc::new(OrderService::new(orders.clone(), catalog.clone()));
    let consumers = Consumers::new(SERVICE, runtime, &database);
    let consumers =
        vec![consumers.of(CatalogHandler::new(catalog)), consumers.of(ReservationOutcomeHandler::new(orders))];
    let api = order::http::router(service);
    let parts = ServiceParts {
        name: SERVICE,
        database,
        consumers,
        api,
        openapi: order::http::ApiDoc::openapi(),
        http_addr: settings.http_addr,
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
    let (products, sagas): (Arc<dyn ProductStore>, Arc<dyn SagaStore>) = match &database {
        Database::Postgres(pool) => {
            (Arc::new(PgProductStore::new(pool.clone())), Arc::new(PgSagaStore::new(pool.clone())))
        }
        Database::Sqlite(db) => {
            (Arc::new(SqliteProductStore::new(db.clone())), Arc::new(SqliteSagaStore::new(db.clone())))
        }
    };
    let service = Arc::new(ProductService::new(products.clone(), sagas.clone()));
    let consumers = Consumers::new(SERVICE, runtime, &database);
    let consumers = vec![
        consumers.of(ReservationSagaHandler::new(sagas, settings.reservation_timeout)),
        consumers.of(StockHandler::new(products)),
    ];
    let api = inventory::http::router(service);
    let openapi = inventory::http::ApiDoc::openapi();
    run(ServiceParts { name: SERVICE, database, consumers, api, openapi, http_addr: settings.http_addr }, runtime).await
}

/// Makes the consumers of one service: queues under the runtime's names, its tuning, the
/// service's inbox.
struct Consumers {
    service: &'static str,
    naming: Naming,
    config: ConsumerConfig,
    inbox: Arc<dyn Inbox>,
}

impl Consumers {
    fn new(service: &'static str, runtime: &Runtime, database: &Database) -> Self {
        let config = ConsumerConfig {
            concurrency: runtime.tuning.consumer_concurrency,
            prefetch: runtime.tuning.prefetch,
            retry: RetryPolicy::default(),
        };
        Self { service, naming: runtime.naming.clone(), config, inbox: database.inbox() }
    }

    fn of<H: Handler>(&self, handler: H) -> Consumer {
        Consumer::new(self.service, &self.naming, Arc::new(handler), self.config.clone()).with_inbox(self.inbox.clone())
    }
}

/// Opens the service's PostgreSQL database (creating it if needed) and brings its schema up to
/// date.
pub async fn database(service: &str, url: &str, tuning: &Tuning, migrator: Migrator) -> anyhow::Result<PgPool> {
    let pool = messaging::postgres::connect(url, tuning.db_pool_size)
        .await
        .with_context(|| format!("cannot open the {service} database at {}", messaging::redact_url(url)))?;
    migrator.run(&pool).await.with_context(|| format!("cannot migrate the {service} database"))?;
    Ok(pool)
}

async fn run(parts: ServiceParts, runtime: &Runtime) -> anyhow::Result<RunningService> {
    let ServiceParts { name, database, consumers, api, openapi, http_addr } = parts;
    let Runtime { transport, tuning, metrics, verifier, .. } = runtime.clone();
    let http = HttpApp {
        service: name,
        api,
        verifier,
        openapi,
        checks: vec![Box::new(DatabaseCheck(database.clone())), Box::new(BrokerCheck(transport.clone()))],
        metrics,
        request_timeout: tuning.request_timeout,
    };
    // Queues exist before the first request, so nothing this service is sent is unroutable.
    for consumer in &consumers {
        transport
            .declare(consumer.queue())
            .await
            .with_context(|| format!("cannot declare queue {}", consumer.queue().name))?;
    }
    let listener = tokio::net::TcpListener::bind(http_addr)
        .await
        .with_context(|| format!("cannot listen on {http_addr} for the {name} API"))?;
    let http_addr = listener.local_addr()?;

    let shutdown = CancellationToken::new();
    let (consumers_stop, relay_stop) = (CancellationToken::new(), CancellationToken::new());
    let consuming: Vec<_> = consumers
        .into_iter()
        .map(|consumer| tokio::spawn(consumer.run(transport.clone(), consumers_stop.clone())))
        .collect();
    let relay_config = RelayConfig { sweep_interval: tuning.relay_sweep, ..RelayConfig::default() };
    let relaying = database.relay(name, transport.clone(), relay_config, relay_stop.clone());
    let router = http.into_router();
    let serving = tokio::spawn(
        axum::serve(listener, router).with_graceful_shutdown(shutdown.clone().cancelled_owned()).into_future(),
    );
    tracing::info!(service = name, %http_addr, "service started");

    let stopping = shutdown.clone();
    let done = tokio::spawn(async move {
        stopping.cancelled().await;
        tracing::info!(service = name, "stopping: finishing requests in flight");
        if let Ok(Err(error)) = serving.await {
            tracing::warn!(service = name, %error, "HTTP server error");
        }
        consumers_stop.cancel();
        for consumer in consuming {
            let _ = consumer.await;
        }
        relay_stop.cancel();
        let _ = relaying.await;
        database.close().await;
        tracing::info!(service = name, "stopped");
    });
    Ok(RunningService { name, http_addr, shutdown, done })
}

struct DatabaseCheck(Database);

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
