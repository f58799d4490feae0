//! Wiring of the two services: database, migrations, stores, handlers, consumers, relay, HTTP.

use crate::config::{InventorySettings, OrderSettings, Tuning};
use crate::server::HttpApp;
use crate::supervision::Supervisor;
use anyhow::Context;
use async_trait::async_trait;
use futures::future::BoxFuture;
use messaging::postgres::{PgInbox, Relay, RelayConfig};
use messaging::{Consumer, ConsumerConfig, Handler, Naming, RetryPolicy, Transport, TransportError};
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;
use std::net::SocketAddr;
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
/// and the verifier of the tokens their APIs accept.
#[derive(Clone)]
pub struct Runtime {
    pub transport: Arc<dyn Transport>,
    pub naming: Naming,
    pub tuning: Tuning,
    pub metrics: Option<PrometheusHandle>,
    pub verifier: Arc<Verifier>,
}

/// What makes one service, as the generic runner needs it.
struct ServiceParts {
    name: &'static str,
    pool: PgPool,
    consumers: Vec<Consumer>,
    api: axum::Router,
    openapi: utoipa::openapi::OpenApi,
    http_addr: SocketAddr,
    /// Housekeeping that runs until the service stops.
    chores: Vec<BoxFuture<'static, ()>>,
}

pub async fn start_order(settings: &OrderSettings, runtime: &Runtime) -> anyhow::Result<RunningService> {
    use order::application::{CatalogHandler, OrderService, ReservationOutcomeHandler, SERVICE};
    use order::infrastructure::{PgCatalog, PgOrderStore, migrator};

    let pool = database(SERVICE, &settings.database_url, &runtime.tuning, migrator()).await?;
    let orders = Arc::new(PgOrderStore::new(pool.clone()));
    let catalog = Arc::new(PgCatalog::new(pool.clone()));
    let service = OrderService::new(orders.clone(), catalog.clone());
    let service = Arc::new(service.with_idempotency_key_ttl(settings.idempotency_key_ttl));
    let consumers = Consumers::new(SERVICE, runtime, &pool);
    let consumers =
        vec![consumers.of(CatalogHandler::new(catalog)), consumers.of(ReservationOutcomeHandler::new(orders))];
    let chores = vec![forget_expired_idempotency_keys(service.clone(), settings.idempotency_key_ttl)];
    let api = order::http::router(service);
    let parts = ServiceParts {
        name: SERVICE,
        pool,
        consumers,
        api,
        openapi: order::http::ApiDoc::openapi(),
        http_addr: settings.http_addr,
        chores,
    };
    run(parts, runtime).await
}

pub async fn start_inventory(settings: &InventorySettings, runtime: &Runtime) -> anyhow::Result<RunningService> {
    use inventory::application::{ProductService, ReservationSagaHandler, SERVICE, StockHandler};
    use inventory::infrastructure::{PgProductStore, PgSagaStore, migrator};

    let pool = database(SERVICE, &settings.database_url, &runtime.tuning, migrator()).await?;
    let products = Arc::new(PgProductStore::new(pool.clone()));
    let sagas = Arc::new(PgSagaStore::new(pool.clone()));
    let service = Arc::new(ProductService::new(products.clone(), sagas.clone()));
    let consumers = Consumers::new(SERVICE, runtime, &pool);
    let consumers = vec![
        consumers.of(ReservationSagaHandler::new(sagas, settings.reservation_timeout)),
        consumers.of(StockHandler::new(products)),
    ];
    let api = inventory::http::router(service);
    let openapi = inventory::http::ApiDoc::openapi();
    let http_addr = settings.http_addr;
    run(ServiceParts { name: SERVICE, pool, consumers, api, openapi, http_addr, chores: Vec::new() }, runtime).await
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
    inbox: Arc<PgInbox>,
}

impl Consumers {
    fn new(service: &'static str, runtime: &Runtime, pool: &PgPool) -> Self {
        let config = ConsumerConfig {
            concurrency: runtime.tuning.consumer_concurrency,
            prefetch: runtime.tuning.prefetch,
            retry: RetryPolicy::default(),
            handler_timeout: runtime.tuning.handler_timeout,
        };
        Self { service, naming: runtime.naming.clone(), config, inbox: Arc::new(PgInbox::new(pool.clone())) }
    }

    fn of<H: Handler>(&self, handler: H) -> Consumer {
        Consumer::new(self.service, &self.naming, Arc::new(handler), self.config.clone()).with_inbox(self.inbox.clone())
    }
}

/// Opens the service's database (creating it if needed) and brings its schema up to date.
pub async fn database(
    service: &str,
    url: &str,
    tuning: &Tuning,
    migrator: sqlx::migrate::Migrator,
) -> anyhow::Result<PgPool> {
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
    let outbox = Arc::new(messaging::postgres::PgOutboxMonitor::new(parts.pool.clone()));
    let operators = Operators { service: parts.name, transport, outbox, consumers };
    let mut openapi = parts.openapi;
    openapi.merge(AdminApiDoc::openapi());
    ServiceParts { api: parts.api.merge(web::admin::router(operators)), openapi, ..parts }
}

async fn run(parts: ServiceParts, runtime: &Runtime) -> anyhow::Result<RunningService> {
    let ServiceParts { name, pool, consumers, api, openapi, http_addr, chores } =
        with_operators(parts, runtime.transport.clone());
    let Runtime { transport, tuning, metrics, verifier, .. } = runtime.clone();
    let supervisor = Supervisor::new(name);
    let http = HttpApp {
        service: name,
        api,
        verifier,
        openapi,
        checks: vec![
            Box::new(DatabaseCheck(pool.clone())),
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
    let relay = Relay::new(name, pool.clone(), transport.clone(), relay_config);
    let relaying = supervisor.spawn("relay".into(), relay_stop.clone(), relay.run(relay_stop.clone()));
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
        pool.close().await;
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

pub(crate) struct DatabaseCheck(pub(crate) PgPool);

#[async_trait]
impl ReadinessCheck for DatabaseCheck {
    fn name(&self) -> &'static str {
        "database"
    }

    async fn is_ready(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.0).await.is_ok()
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
