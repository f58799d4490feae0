//! Configuration: every setting is a flag with an environment variable fallback. With no
//! database and no broker configured, the system runs embedded (SQLite files and the embedded
//! broker in the data directory); PostgreSQL URLs and a RabbitMQ URL select the production
//! engines ([`Mode`]).

use anyhow::{Context, bail};
use clap::Args;
use messaging::postgres::PoolSettings;
use messaging::transport::rabbitmq::{QueueType, RabbitMqSettings};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use web::auth::{Issuance, JwksSettings, KeySource, LocalKey, Signer, Verifier};

#[derive(Debug, Clone, Args)]
pub struct OrderSettings {
    /// PostgreSQL database of the order service (created if missing) [default: none, the
    /// embedded mode's <data dir>/orders.sqlite].
    #[arg(
        id = "orders_database_url",
        value_name = "URL",
        long = "orders-database-url",
        env = "SHOP_ORDERS_DATABASE_URL"
    )]
    pub database_url: Option<String>,
    /// Address the order API listens on.
    #[arg(
        id = "orders_http_addr",
        value_name = "ADDR",
        long = "orders-http-addr",
        env = "SHOP_ORDERS_HTTP_ADDR",
        default_value = "127.0.0.1:8081"
    )]
    pub http_addr: SocketAddr,
    /// How long an Idempotency-Key holds: after that, a request under it creates a new order,
    /// and the key is deleted (e.g. 24h, 90m).
    #[arg(long, env = "SHOP_IDEMPOTENCY_KEY_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub idempotency_key_ttl: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct InventorySettings {
    /// PostgreSQL database of the inventory service (created if missing) [default: none, the
    /// embedded mode's <data dir>/inventory.sqlite].
    #[arg(
        id = "inventory_database_url",
        value_name = "URL",
        long = "inventory-database-url",
        env = "SHOP_INVENTORY_DATABASE_URL"
    )]
    pub database_url: Option<String>,
    /// Address the inventory API listens on.
    #[arg(
        id = "inventory_http_addr",
        value_name = "ADDR",
        long = "inventory-http-addr",
        env = "SHOP_INVENTORY_HTTP_ADDR",
        default_value = "127.0.0.1:8082"
    )]
    pub http_addr: SocketAddr,
    /// How long a stock reservation may take before the order is rejected (e.g. 10m, 30s).
    #[arg(long, env = "SHOP_RESERVATION_TIMEOUT", default_value = "10m", value_parser = humantime::parse_duration)]
    pub reservation_timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct BrokerSettings {
    /// RabbitMQ URL, e.g. amqp://guest:guest@127.0.0.1:5672/%2f [default: none, the embedded
    /// mode's broker in <data dir>/broker.sqlite].
    #[arg(long, env = "SHOP_AMQP_URL")]
    pub amqp_url: Option<String>,
    /// Prefix of every exchange and queue name, so several systems can share one broker.
    #[arg(long, env = "SHOP_QUEUE_PREFIX", default_value = "shop")]
    pub queue_prefix: String,
    /// `classic` or `quorum` (replicated across a RabbitMQ cluster's nodes) queues. A queue
    /// keeps the type it was created with.
    #[arg(long, env = "SHOP_QUEUE_TYPE", value_name = "TYPE", default_value = "classic")]
    pub queue_type: QueueType,
    /// AMQP heartbeat: a broker connection silent for twice this long is dropped and reopened
    /// (0s takes the broker's, 60s by default).
    #[arg(long, env = "SHOP_AMQP_HEARTBEAT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub amqp_heartbeat: Duration,
}

impl BrokerSettings {
    /// How the RabbitMQ transport is set up.
    pub fn rabbitmq(&self) -> RabbitMqSettings {
        RabbitMqSettings { heartbeat: self.amqp_heartbeat, queue_type: self.queue_type }
    }
}

#[derive(Debug, Clone, Args)]
pub struct Tuning {
    /// Database connections per service.
    // The defaults of these two come from `shop load` at 16 customers on 2 cores: 32 lanes
    // and 8 connections gave 157-171 orders/s and a p99 of 225-278 ms, against 137-152 and
    // 330-410 ms with 16 and 16 (fewer messages wait behind another key in their lane, fewer
    // backends compete for the cores).
    #[arg(long, env = "SHOP_DB_POOL_SIZE", default_value_t = 8)]
    pub db_pool_size: u32,
    /// Messages each consumer handles at once.
    #[arg(long, env = "SHOP_CONSUMER_CONCURRENCY", default_value_t = 32)]
    pub consumer_concurrency: usize,
    /// Unacknowledged messages the broker may push to each consumer.
    #[arg(long, env = "SHOP_PREFETCH", default_value_t = 64)]
    pub prefetch: u16,
    /// Longest wait of the outbox relay between sweeps (it is woken at commit anyway).
    #[arg(long, env = "SHOP_RELAY_SWEEP", default_value = "2s", value_parser = humantime::parse_duration)]
    pub relay_sweep: Duration,
    /// How long a request may run before it is answered with 503.
    #[arg(long, env = "SHOP_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// API requests each service handles at once; beyond them it answers 503 with Retry-After
    /// at once instead of queueing (health and metrics are never refused).
    #[arg(long, env = "SHOP_MAX_REQUESTS_IN_FLIGHT", default_value_t = Tuning::DEFAULT_MAX_REQUESTS_IN_FLIGHT)]
    pub max_requests_in_flight: usize,
    /// How long a consumer's unit of work (one message, or a batch) may run before it is
    /// abandoned and retried.
    #[arg(long, env = "SHOP_HANDLER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub handler_timeout: Duration,
    /// PostgreSQL's statement_timeout and idle_in_transaction_session_timeout for the
    /// services' connections (0s: none).
    #[arg(long, env = "SHOP_DB_STATEMENT_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub db_statement_timeout: Duration,
}

impl Tuning {
    /// Four times the default pool. Measured on the 2-core development machine at 128 load
    /// customers (4x saturation): throughput holds and about 1% of requests are shed; at 32 or
    /// 48 momentary bursts are shed too, and each refusal costs its client a second.
    pub const DEFAULT_MAX_REQUESTS_IN_FLIGHT: usize = 64;

    /// How the services' database pools are set up.
    pub fn pool(&self) -> PoolSettings {
        PoolSettings {
            max_connections: self.db_pool_size,
            statement_timeout: self.db_statement_timeout,
            ..PoolSettings::default()
        }
    }
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            db_pool_size: 8,
            consumer_concurrency: 32,
            prefetch: 64,
            relay_sweep: Duration::from_secs(2),
            request_timeout: Duration::from_secs(30),
            max_requests_in_flight: Self::DEFAULT_MAX_REQUESTS_IN_FLIGHT,
            handler_timeout: Duration::from_secs(10),
            db_statement_timeout: Duration::from_secs(30),
        }
    }
}

/// The storefront's own database: its accounts.
#[derive(Debug, Clone, Args)]
pub struct StorefrontDatabase {
    /// PostgreSQL database of the storefront's accounts (created if missing) [default: none, the
    /// embedded mode's <data dir>/storefront.sqlite].
    #[arg(
        id = "storefront_database_url",
        value_name = "URL",
        long = "storefront-database-url",
        env = "SHOP_STOREFRONT_DATABASE_URL"
    )]
    pub database_url: Option<String>,
}

/// The storefront: where it listens, which APIs it calls, how it serves cookies, and the
/// operator's account it creates on first start.
#[derive(Debug, Clone, Args)]
pub struct StorefrontSettings {
    #[command(flatten)]
    pub database: StorefrontDatabase,
    /// Address the storefront (the shop's web pages) listens on.
    #[arg(
        id = "storefront_http_addr",
        value_name = "ADDR",
        long = "storefront-http-addr",
        env = "SHOP_STOREFRONT_HTTP_ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub http_addr: SocketAddr,
    /// The order API the storefront calls [default: the order service of this process, or
    /// http://127.0.0.1:8081].
    #[arg(long = "storefront-orders-url", env = "SHOP_STOREFRONT_ORDERS_URL", value_name = "URL")]
    pub orders_url: Option<String>,
    /// The inventory API the storefront calls [default: the inventory service of this process,
    /// or http://127.0.0.1:8082].
    #[arg(long = "storefront-inventory-url", env = "SHOP_STOREFRONT_INVENTORY_URL", value_name = "URL")]
    pub inventory_url: Option<String>,
    /// Mark session cookies Secure (and name them __Host-): set it when people reach the
    /// storefront over https.
    #[arg(long = "storefront-secure-cookies", env = "SHOP_STOREFRONT_SECURE_COOKIES")]
    pub secure_cookies: bool,
    /// The operator's account, created on first start if no account has this email.
    #[arg(long = "admin-email", env = "SHOP_ADMIN_EMAIL", default_value = "admin@shop.local")]
    pub admin_email: String,
    /// The operator's password on first start [default: generated, written to
    /// <data dir>/storefront/admin-password].
    #[arg(
        long = "admin-password",
        env = "SHOP_ADMIN_PASSWORD",
        hide_env_values = true,
        conflicts_with = "admin_password_file"
    )]
    pub admin_password: Option<String>,
    /// A file holding the operator's password on first start.
    #[arg(long = "admin-password-file", env = "SHOP_ADMIN_PASSWORD_FILE", value_name = "PATH")]
    pub admin_password_file: Option<PathBuf>,
}

impl StorefrontSettings {
    /// Where an API of this process listens, as a URL the storefront can call.
    pub fn local_url(addr: SocketAddr) -> String {
        let host = if addr.ip().is_unspecified() { "127.0.0.1".to_owned() } else { addr.ip().to_string() };
        match addr {
            SocketAddr::V6(_) if !addr.ip().is_unspecified() => format!("http://[{host}]:{}", addr.port()),
            _ => format!("http://{host}:{}", addr.port()),
        }
    }
}

/// Where the system keeps its own files: the local signing key (`auth/signing-key.pem`) and, in
/// the embedded mode, the services' SQLite files and the embedded broker.
#[derive(Debug, Clone, Default, Args)]
pub struct DataDir {
    /// Directory of the system's own files [default: $XDG_DATA_HOME/shop, or ~/.local/share/shop].
    #[arg(long = "data-dir", env = "SHOP_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

impl DataDir {
    pub fn path(&self) -> anyhow::Result<PathBuf> {
        if let Some(dir) = &self.data_dir {
            return Ok(dir.clone());
        }
        let absolute = |variable: &str| std::env::var_os(variable).map(PathBuf::from).filter(|dir| dir.is_absolute());
        if let Some(data_home) = absolute("XDG_DATA_HOME") {
            return Ok(data_home.join("shop"));
        }
        match absolute("HOME") {
            Some(home) => Ok(home.join(".local/share/shop")),
            None => bail!("no data directory: set SHOP_DATA_DIR (or --data-dir), or HOME"),
        }
    }
}

/// The files of the embedded mode, in the data directory.
pub mod embedded {
    /// The order service's database.
    pub const ORDERS: &str = "orders.sqlite";
    /// The inventory service's database.
    pub const INVENTORY: &str = "inventory.sqlite";
    /// The storefront's accounts.
    pub const STOREFRONT: &str = "storefront.sqlite";
    /// The embedded broker's queues.
    pub const BROKER: &str = "broker.sqlite";
    /// Held by the one process that runs the system on the directory.
    pub const LOCK: &str = "shop.lock";
}

/// The one process running the embedded system on a data directory. Released when dropped (or
/// when the process dies, however it dies).
#[derive(Debug)]
pub struct DataDirLock {
    _file: std::fs::File,
}

impl DataDir {
    /// Takes the data directory for this process, creating it if needed; refuses if another
    /// process runs the system on it. The embedded mode's files hold one system's state: two
    /// processes would each think they own the deliveries in hand.
    pub fn lock(&self) -> anyhow::Result<DataDirLock> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = self.path()?;
        // The system's state: for this user's eyes only.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
        let path = dir.join(embedded::LOCK);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(DataDirLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => bail!(
                "another shop is running on the data directory {} (it holds {}): stop it, or set SHOP_DATA_DIR to \
                 another directory",
                dir.display(),
                path.display()
            ),
            Err(std::fs::TryLockError::Error(error)) => {
                Err(error).with_context(|| format!("cannot lock {}", path.display()))
            }
        }
    }
}

/// Where a service keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// A PostgreSQL database, created if missing.
    Postgres { url: String },
    /// A SQLite file, created if missing (the embedded mode).
    Sqlite { file: PathBuf },
}

/// How the whole system runs, as the database and broker settings say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Nothing configured: each service on a SQLite file in the data directory, the embedded
    /// broker (a SQLite file too) between them, everything in one process.
    Embedded { data_dir: PathBuf },
    /// Both PostgreSQL URLs and RabbitMQ: the production engines.
    Distributed { amqp_url: String },
}

/// Whether the services keep their state in PostgreSQL (both URLs set) or embedded, in SQLite
/// (neither set); one without the other is refused with what to set.
pub fn on_postgres(orders: &OrderSettings, inventory: &InventorySettings) -> anyhow::Result<bool> {
    let both_or_neither = "set both PostgreSQL URLs (and SHOP_AMQP_URL) to run on PostgreSQL and RabbitMQ, or \
                           neither to run embedded (SQLite and the embedded broker in the data directory)";
    match (&orders.database_url, &inventory.database_url) {
        (Some(_), Some(_)) => Ok(true),
        (None, None) => Ok(false),
        (Some(_), None) => {
            bail!("SHOP_ORDERS_DATABASE_URL is set but SHOP_INVENTORY_DATABASE_URL is not: {both_or_neither}")
        }
        (None, Some(_)) => {
            bail!("SHOP_INVENTORY_DATABASE_URL is set but SHOP_ORDERS_DATABASE_URL is not: {both_or_neither}")
        }
    }
}

impl Mode {
    /// The mode of the system in one process (`shop up`): embedded with none of the URLs,
    /// distributed with all three; anything in between is refused with what to set.
    pub fn of_system(
        orders: &OrderSettings,
        inventory: &InventorySettings,
        broker: &BrokerSettings,
        data: &DataDir,
    ) -> anyhow::Result<Self> {
        match (on_postgres(orders, inventory)?, &broker.amqp_url) {
            (false, None) => Ok(Mode::Embedded { data_dir: data.path()? }),
            (true, Some(amqp_url)) => Ok(Mode::Distributed { amqp_url: amqp_url.clone() }),
            (true, None) => bail!(
                "the PostgreSQL URLs are set but SHOP_AMQP_URL is not: set SHOP_AMQP_URL to run on PostgreSQL and \
                 RabbitMQ (the embedded broker is for the embedded mode only), or unset SHOP_ORDERS_DATABASE_URL and \
                 SHOP_INVENTORY_DATABASE_URL to run embedded"
            ),
            (false, Some(_)) => bail!(
                "SHOP_AMQP_URL is set but the database URLs are not: RabbitMQ is for services on PostgreSQL, so set \
                 SHOP_ORDERS_DATABASE_URL and SHOP_INVENTORY_DATABASE_URL too, or unset SHOP_AMQP_URL to run embedded"
            ),
        }
    }
}

/// Where the storefront keeps its accounts: embedded (`embedded_dir` is the data directory), in
/// `<data dir>/storefront.sqlite`; beside services on PostgreSQL or in a process of its own
/// (`shop serve storefront`, whose instances share them), in the PostgreSQL database its URL
/// names. A URL in the embedded mode, or none otherwise, is refused with what to set.
pub fn storefront_storage(storefront: &StorefrontDatabase, embedded_dir: Option<&Path>) -> anyhow::Result<Storage> {
    match (&storefront.database_url, embedded_dir) {
        (None, Some(data_dir)) => Ok(Storage::Sqlite { file: data_dir.join(embedded::STOREFRONT) }),
        (Some(url), None) => Ok(Storage::Postgres { url: url.clone() }),
        (Some(_), Some(_)) => bail!(
            "SHOP_STOREFRONT_DATABASE_URL is set but the services' database URLs are not: the embedded mode keeps \
             the storefront's accounts in the data directory, so unset it, or set SHOP_ORDERS_DATABASE_URL, \
             SHOP_INVENTORY_DATABASE_URL and SHOP_AMQP_URL too to run on PostgreSQL and RabbitMQ"
        ),
        (None, None) => bail!(
            "SHOP_STOREFRONT_DATABASE_URL is not set: beside services on PostgreSQL (and for `shop serve \
             storefront`) the storefront keeps its accounts in a PostgreSQL database of its own, e.g. \
             postgres://postgres@127.0.0.1:5432/shop_storefront; with nothing configured, `shop up` keeps them in \
             the data directory"
        ),
    }
}

/// The RabbitMQ URL of one service in a process of its own (`shop serve`), which is never
/// embedded: its instances share its PostgreSQL database and reach the other service through
/// RabbitMQ. Without either, refused with what to set.
pub fn amqp_url_of_one_service(
    service: &str,
    database_url: Option<&str>,
    broker: &BrokerSettings,
) -> anyhow::Result<String> {
    let variable = if service == "order" { "SHOP_ORDERS_DATABASE_URL" } else { "SHOP_INVENTORY_DATABASE_URL" };
    match (database_url, &broker.amqp_url) {
        (Some(_), Some(amqp_url)) => Ok(amqp_url.clone()),
        (_, None) => bail!(
            "`shop serve {service}` runs the service in a process of its own, and services in separate processes \
             talk through RabbitMQ: set SHOP_AMQP_URL (and {variable}); to run everything in one process with \
             nothing installed, use `shop up`"
        ),
        (None, Some(_)) => bail!(
            "`shop serve {service}` needs the service's PostgreSQL database: set {variable} (SQLite is for the \
             embedded mode, where `shop up` runs both services in one process)"
        ),
    }
}

pub const DEFAULT_ISSUER: &str = "shop";
pub const DEFAULT_AUDIENCE: &str = "shop-api";

/// Which tokens the APIs accept. By default they trust the local development key, which
/// `shop token` signs with; with a public key or a JWKS URL they trust an identity provider
/// instead, and only it.
#[derive(Debug, Clone, Args)]
pub struct AuthSettings {
    /// The `iss` tokens must carry.
    #[arg(long = "auth-issuer", env = "SHOP_AUTH_ISSUER", default_value = DEFAULT_ISSUER)]
    pub issuer: String,
    /// The `aud` tokens must carry.
    #[arg(long = "auth-audience", env = "SHOP_AUTH_AUDIENCE", default_value = DEFAULT_AUDIENCE)]
    pub audience: String,
    /// The local Ed25519 signing key (PKCS#8 PEM) [default: <data dir>/auth/signing-key.pem,
    /// created on first use].
    #[arg(
        long = "auth-signing-key-file",
        env = "SHOP_AUTH_SIGNING_KEY_FILE",
        value_name = "PATH",
        conflicts_with_all = ["public_key_file", "jwks_url"]
    )]
    pub signing_key_file: Option<PathBuf>,
    /// Trust only tokens signed by this PEM public key (Ed25519, RSA or EC), e.g. an identity
    /// provider's.
    #[arg(
        long = "auth-public-key-file",
        env = "SHOP_AUTH_PUBLIC_KEY_FILE",
        value_name = "PATH",
        conflicts_with = "jwks_url"
    )]
    pub public_key_file: Option<PathBuf>,
    /// Trust only tokens signed by a key of this JWKS (an identity provider's), fetched when
    /// needed and cached.
    #[arg(long = "auth-jwks-url", env = "SHOP_AUTH_JWKS_URL", value_name = "URL")]
    pub jwks_url: Option<String>,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            issuer: DEFAULT_ISSUER.into(),
            audience: DEFAULT_AUDIENCE.into(),
            signing_key_file: None,
            public_key_file: None,
            jwks_url: None,
        }
    }
}

impl AuthSettings {
    pub fn issuance(&self) -> Issuance {
        Issuance { issuer: self.issuer.clone(), audience: self.audience.clone() }
    }

    /// What the services check tokens with.
    pub fn verifier(&self, data: &DataDir) -> anyhow::Result<Verifier> {
        let source = match (&self.jwks_url, &self.public_key_file) {
            (Some(url), _) => KeySource::Jwks(JwksSettings::new(url)),
            (None, Some(path)) => KeySource::PublicKeyFile(path.clone()),
            (None, None) => KeySource::Local(self.local_key(data)?),
        };
        Ok(Verifier::new(source, &self.issuance())?)
    }

    /// What `shop token` and `shop load` sign with: the local key, which the services trust
    /// unless an identity provider's keys are configured.
    pub fn signer(&self, data: &DataDir) -> anyhow::Result<Signer> {
        let trusted = match (&self.jwks_url, &self.public_key_file) {
            (Some(url), _) => Some(format!("SHOP_AUTH_JWKS_URL is set ({url})")),
            (None, Some(path)) => Some(format!("SHOP_AUTH_PUBLIC_KEY_FILE is set ({})", path.display())),
            (None, None) => None,
        };
        if let Some(trusted) = trusted {
            bail!(
                "{trusted}: the services trust only the identity provider's keys and would refuse a token signed \
                 with the local key; get a token from the identity provider instead"
            );
        }
        Ok(Signer::new(&self.local_key(data)?, self.issuance()))
    }

    fn local_key(&self, data: &DataDir) -> anyhow::Result<LocalKey> {
        Ok(match &self.signing_key_file {
            Some(path) => LocalKey::load(path).context("SHOP_AUTH_SIGNING_KEY_FILE names no usable key")?,
            None => LocalKey::load_or_create(&data.path()?.join(LocalKey::PATH_IN_DATA_DIR))?,
        })
    }
}
