//! Wiring of the storefront: its database, the operator's account, its cookie key, the client
//! of the two APIs (with the local signing key), its pages and operational endpoints.

use crate::config::{Storage, StorefrontSettings, Tuning};
use crate::services::{Database, DatabaseCheck, RunningService};
use anyhow::{Context, bail};
use async_trait::async_trait;
use axum::http::StatusCode;
use metrics_exporter_prometheus::PrometheusHandle;
use std::path::Path;
use std::sync::Arc;
use storefront::application::{AccountStore, Accounts, AdminBootstrap};
use storefront::domain::Role;
use storefront::infrastructure::api::{Service, ShopApi};
use storefront::infrastructure::files::{self, ADMIN_PASSWORD_IN_DATA_DIR, COOKIE_KEY_IN_DATA_DIR};
use storefront::infrastructure::{PgAccountStore, SqliteAccountStore, migrator, sqlite_migrator};
use tokio_util::sync::CancellationToken;
use tower_http::timeout::TimeoutLayer;
use web::ReadinessCheck;
use web::auth::Signer;

/// Names the storefront in logs, spans and metrics.
pub const STOREFRONT: &str = "storefront";

/// What the storefront needs besides its settings.
pub struct StorefrontRuntime {
    /// Where its accounts are (`config::storefront_storage`).
    pub accounts: Storage,
    /// The APIs it calls.
    pub orders_url: String,
    pub inventory_url: String,
    /// Signs the tokens of the people it acts for (the key the services trust).
    pub signer: Signer,
    /// The data directory: its cookie key, the generated admin password.
    pub data_dir: std::path::PathBuf,
    pub tuning: Tuning,
    pub metrics: Option<PrometheusHandle>,
}

/// Creates the storefront's database (`accounts`) if needed and brings its schema up to date.
pub async fn migrate_storefront(accounts: &Storage) -> anyhow::Result<()> {
    let tuning = Tuning { db_pool_size: 2, ..Tuning::default() };
    Database::open(STOREFRONT, accounts, &tuning, migrator, sqlite_migrator).await?.close().await;
    Ok(())
}

pub async fn start_storefront(
    settings: &StorefrontSettings,
    runtime: StorefrontRuntime,
) -> anyhow::Result<RunningService> {
    let database = Database::open(STOREFRONT, &runtime.accounts, &runtime.tuning, migrator, sqlite_migrator).await?;
    let store: Arc<dyn AccountStore> = match &database {
        Database::Postgres(pool) => Arc::new(PgAccountStore::new(pool.clone())),
        Database::Sqlite(db) => Arc::new(SqliteAccountStore::new(db.clone())),
    };
    let accounts = Arc::new(Accounts::new(store));
    bootstrap_admin(&accounts, settings, &runtime.data_dir).await?;

    let key_path = runtime.data_dir.join(COOKIE_KEY_IN_DATA_DIR);
    let key = files::read_or_create(&key_path, || files::random_bytes(64))?;
    if key.len() < 64 {
        bail!("{} must hold at least 64 bytes (remove it and a new one is made)", key_path.display());
    }
    let api = ShopApi::new(&runtime.orders_url, &runtime.inventory_url, Arc::new(runtime.signer));
    let stopping = CancellationToken::new();
    let app = storefront::http::Storefront {
        accounts,
        api: api.clone(),
        cookie_key: storefront::http::CookieKey::from(&key),
        secure_cookies: settings.secure_cookies,
        stopping: stopping.clone(),
    };
    let checks: Vec<Box<dyn ReadinessCheck>> = vec![
        Box::new(DatabaseCheck(database.clone())),
        Box::new(ApiCheck(api.clone(), Service::Orders)),
        Box::new(ApiCheck(api, Service::Inventory)),
    ];
    let router = storefront::http::router(app)
        .merge(web::operations_router(checks, runtime.metrics))
        .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, runtime.tuning.request_timeout))
        .layer(axum::middleware::from_fn_with_state(STOREFRONT, web::trace_request));

    let listener = tokio::net::TcpListener::bind(settings.http_addr)
        .await
        .with_context(|| format!("cannot listen on {} for the storefront", settings.http_addr))?;
    let http_addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let serving = tokio::spawn(
        axum::serve(listener, router).with_graceful_shutdown(shutdown.clone().cancelled_owned()).into_future(),
    );
    tracing::info!(service = STOREFRONT, %http_addr, orders = %runtime.orders_url, inventory = %runtime.inventory_url, "storefront started");
    let stopped = shutdown.clone();
    let done = tokio::spawn(async move {
        stopped.cancelled().await;
        stopping.cancel();
        if let Ok(Err(error)) = serving.await {
            tracing::warn!(service = STOREFRONT, %error, "HTTP server error");
        }
        database.close().await;
        tracing::info!(service = STOREFRONT, "stopped");
    });
    Ok(RunningService::new(STOREFRONT, http_addr, shutdown, done))
}

/// The operator's account: created on first start with the configured password, or one
/// generated into a private file of the data directory (the log names the file, never the
/// password).
async fn bootstrap_admin(accounts: &Accounts, settings: &StorefrontSettings, data_dir: &Path) -> anyhow::Result<()> {
    let generated = data_dir.join(ADMIN_PASSWORD_IN_DATA_DIR);
    let (password, from) = match (&settings.admin_password, &settings.admin_password_file) {
        (Some(password), _) => (password.clone(), "SHOP_ADMIN_PASSWORD".to_owned()),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("SHOP_ADMIN_PASSWORD_FILE: cannot read {}", path.display()))?;
            (text.trim_end_matches(['\r', '\n']).to_owned(), path.display().to_string())
        }
        (None, None) => {
            let bytes = files::read_or_create(&generated, || files::random_password().into_bytes())?;
            let text = String::from_utf8(bytes).with_context(|| format!("{} is not text", generated.display()))?;
            (text.trim_end_matches(['\r', '\n']).to_owned(), generated.display().to_string())
        }
    };
    match accounts.ensure_admin(&settings.admin_email, password).await.context("cannot create the admin account")? {
        AdminBootstrap::Created => {
            tracing::info!(email = %settings.admin_email, password_from = %from, "created the admin account");
        }
        AdminBootstrap::Exists { role: Role::Admin } => {
            tracing::debug!(email = %settings.admin_email, "the admin account exists");
        }
        AdminBootstrap::Exists { role: Role::Customer } => tracing::warn!(
            email = %settings.admin_email,
            "SHOP_ADMIN_EMAIL names a customer's account: it stays a customer, and no admin account is created"
        ),
    }
    Ok(())
}

struct ApiCheck(ShopApi, Service);

#[async_trait]
impl ReadinessCheck for ApiCheck {
    fn name(&self) -> &'static str {
        match self.1 {
            Service::Orders => "order-api",
            Service::Inventory => "inventory-api",
        }
    }

    async fn is_ready(&self) -> bool {
        self.0.is_up(self.1).await
    }
}
