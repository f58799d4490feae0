//! `shop`: run the order and inventory services, migrate their databases, inspect dead letters.
//! Load and fault injection live in the separate `harness` binary.

use anyhow::Context;
use clap::{Parser, Subcommand};
use messaging::transport::rabbitmq::RabbitMq;
use messaging::transport::sqlite::SqliteTransport;
use messaging::{Naming, Transport};
use shop::config::{DataDirLock, amqp_url_of_one_service, embedded, storefront_storage};
use shop::telemetry::{LogFormat, SpanExport, init_metrics};
use shop::{
    AuthSettings, BrokerSettings, DataDir, InventorySettings, Mode, OrderSettings, RunningService, Runtime, Tuning,
};
use shop::{StorefrontDatabase, StorefrontRuntime, StorefrontSettings};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use web::auth::{Role, Verifier};

#[derive(Parser)]
#[command(
    name = "shop",
    version,
    about = "An event-driven shop: order and inventory services, embedded (nothing to install) or over PostgreSQL and \
             RabbitMQ"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, env = "SHOP_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[expect(clippy::large_enum_variant, reason = "parsed once at start; boxing would only obscure the flags")]
enum Command {
    /// Run both services in this process, each with its own database and HTTP listener,
    /// talking only through the broker. With no database and broker URL set, embedded: SQLite
    /// files and the embedded broker in the data directory.
    Up {
        #[command(flatten)]
        orders: OrderSettings,
        #[command(flatten)]
        inventory: InventorySettings,
        #[command(flatten)]
        broker: BrokerSettings,
        #[command(flatten)]
        tuning: Tuning,
        #[command(flatten)]
        auth: AuthSettings,
        #[command(flatten)]
        data: DataDir,
        #[command(flatten)]
        storefront: StorefrontSettings,
    },
    /// Run one service.
    Serve {
        #[command(subcommand)]
        service: Service,
    },
    /// Create the databases if needed and bring their schemas up to date, then exit (the SQLite
    /// files of the data directory when no database URL is set).
    Migrate {
        #[command(flatten)]
        orders: OrderSettings,
        #[command(flatten)]
        inventory: InventorySettings,
        #[command(flatten)]
        data: DataDir,
        #[command(flatten)]
        storefront: StorefrontDatabase,
    },
    /// List, replay or purge the messages that consumers could not process (in RabbitMQ, or
    /// without SHOP_AMQP_URL in the embedded broker of the data directory).
    DeadLetters {
        #[command(subcommand)]
        action: shop::dead_letters::Action,
        #[command(flatten)]
        broker: BrokerSettings,
        #[command(flatten)]
        data: DataDir,
    },
    /// Print a token signed with the local key, which the services trust when started with the
    /// same settings (e.g. `curl -H "Authorization: Bearer $(shop token --admin)" ...`).
    Token(TokenArgs),
}

#[derive(Subcommand)]
enum Service {
    /// The order service.
    Order {
        #[command(flatten)]
        settings: OrderSettings,
        #[command(flatten)]
        broker: BrokerSettings,
        #[command(flatten)]
        tuning: Tuning,
        #[command(flatten)]
        auth: AuthSettings,
        #[command(flatten)]
        data: DataDir,
    },
    /// The inventory service.
    Inventory {
        #[command(flatten)]
        settings: InventorySettings,
        #[command(flatten)]
        broker: BrokerSettings,
        #[command(flatten)]
        tuning: Tuning,
        #[command(flatten)]
        auth: AuthSettings,
        #[command(flatten)]
        data: DataDir,
    },
    /// The storefront: the shop's web pages for customers and operators, in front of the two
    /// APIs (at SHOP_STOREFRONT_ORDERS_URL and SHOP_STOREFRONT_INVENTORY_URL).
    Storefront {
        #[command(flatten)]
        settings: StorefrontSettings,
        #[command(flatten)]
        tuning: Tuning,
        #[command(flatten)]
        auth: AuthSettings,
        #[command(flatten)]
        data: DataDir,
    },
}

#[derive(clap::Args)]
struct TokenArgs {
    #[command(flatten)]
    holder: TokenHolder,
    /// The `sub` of an admin token: who the admin is.
    #[arg(long, default_value = "admin", requires = "admin")]
    subject: String,
    /// How long the token is valid (e.g. 15m, 1h, 7d).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    #[command(flatten)]
    auth: AuthSettings,
    #[command(flatten)]
    data: DataDir,
}

#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct TokenHolder {
    /// A customer's token: it acts on that customer's orders only.
    #[arg(long, value_name = "UUID")]
    customer: Option<uuid::Uuid>,
    /// An admin's token: it may do everything.
    #[arg(long)]
    admin: bool,
}

/// mimalloc rather than the system's allocator: at 16 customers glibc's malloc and free were
/// 9 % of the service's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let telemetry = match shop::telemetry::init(cli.log_format, SpanExport::from_env()) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("error: {error:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let code = match run(cli.command).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    };
    telemetry.shutdown().await;
    code
}

async fn run(command: Command) -> anyhow::Result<std::process::ExitCode> {
    match command {
        Command::Up { orders, inventory, broker, tuning, auth, data, storefront } => {
            let mode = Mode::of_system(&orders, &inventory, &broker, &data)?;
            let embedded_dir = match &mode {
                Mode::Embedded { data_dir } => Some(data_dir.as_path()),
                Mode::Distributed { .. } => None,
            };
            let accounts = storefront_storage(&storefront.database, embedded_dir)?;
            let metrics = Some(init_metrics()?);
            let verifier = verifier(&auth, &data)?;
            let signer = storefront_signer(&auth, &data)?;
            let naming = Naming::new(&broker.queue_prefix);
            let (transport, embedded_dir, _lock): (Arc<dyn Transport>, _, _) = match mode {
                Mode::Embedded { data_dir } => {
                    let (broker, lock) = embedded_broker(&data, &data_dir).await?;
                    (Arc::new(broker), Some(data_dir), Some(lock))
                }
                Mode::Distributed { amqp_url } => {
                    tracing::info!("on PostgreSQL and RabbitMQ ({})", messaging::redact_url(&amqp_url));
                    (Arc::new(rabbitmq(&amqp_url, &broker, "shop").await?), None, None)
                }
            };
            let local_consumers = Arc::default();
            let runtime = Runtime { transport, naming, tuning, metrics, verifier, local_consumers, embedded_dir };
            let inventory = shop::start_inventory(&inventory, &runtime).await?;
            let orders = shop::start_order(&orders, &runtime).await?;
            let storefront_runtime = StorefrontRuntime {
                accounts,
                orders_url: storefront
                    .orders_url
                    .clone()
                    .unwrap_or_else(|| StorefrontSettings::local_url(orders.http_addr)),
                inventory_url: storefront
                    .inventory_url
                    .clone()
                    .unwrap_or_else(|| StorefrontSettings::local_url(inventory.http_addr)),
                signer,
                data_dir: data.path()?,
                tuning: runtime.tuning.clone(),
                metrics: runtime.metrics.clone(),
            };
            let storefront = shop::start_storefront(&storefront, storefront_runtime).await?;
            print_ready(&[&orders, &inventory]);
            print_storefront(&storefront);
            run_until_signal(vec![storefront, orders, inventory]).await
        }
        Command::Serve { service: Service::Storefront { settings, tuning, auth, data } } => {
            let metrics = Some(init_metrics()?);
            let runtime = StorefrontRuntime {
                accounts: storefront_storage(&settings.database, None)?,
                orders_url: settings.orders_url.clone().unwrap_or_else(|| "http://127.0.0.1:8081".into()),
                inventory_url: settings.inventory_url.clone().unwrap_or_else(|| "http://127.0.0.1:8082".into()),
                signer: storefront_signer(&auth, &data)?,
                data_dir: data.path()?,
                tuning,
                metrics,
            };
            let running = shop::start_storefront(&settings, runtime).await?;
            print_storefront(&running);
            run_until_signal(vec![running]).await
        }
        Command::Serve { service } => {
            let metrics = Some(init_metrics()?);
            let runtime = |broker: &BrokerSettings, transport: RabbitMq, tuning: Tuning, verifier| Runtime {
                transport: Arc::new(transport),
                naming: Naming::new(&broker.queue_prefix),
                tuning,
                metrics,
                verifier,
                local_consumers: Arc::default(),
                embedded_dir: None,
            };
            let running = match service {
                Service::Order { settings, broker, tuning, auth, data } => {
                    let amqp_url = amqp_url_of_one_service("order", settings.database_url.as_deref(), &broker)?;
                    let verifier = verifier(&auth, &data)?;
                    let transport = rabbitmq(&amqp_url, &broker, "shop-order").await?;
                    shop::start_order(&settings, &runtime(&broker, transport, tuning, verifier)).await?
                }
                Service::Inventory { settings, broker, tuning, auth, data } => {
                    let amqp_url = amqp_url_of_one_service("inventory", settings.database_url.as_deref(), &broker)?;
                    let verifier = verifier(&auth, &data)?;
                    let transport = rabbitmq(&amqp_url, &broker, "shop-inventory").await?;
                    shop::start_inventory(&settings, &runtime(&broker, transport, tuning, verifier)).await?
                }
                Service::Storefront { .. } => unreachable!("matched above"),
            };
            print_ready(&[&running]);
            run_until_signal(vec![running]).await
        }
        Command::Migrate { orders, inventory, data, storefront } => {
            if shop::config::on_postgres(&orders, &inventory)? {
                let accounts = storefront_storage(&storefront, None)?;
                shop::migrate(&orders, &inventory, None).await?;
                shop::migrate_storefront(&accounts).await?;
                println!("databases are up to date");
            } else {
                let data_dir = data.path()?;
                let accounts = storefront_storage(&storefront, Some(&data_dir))?;
                shop::migrate(&orders, &inventory, Some(&data_dir)).await?;
                shop::migrate_storefront(&accounts).await?;
                println!(
                    "the embedded databases in {} are up to date ({}, {}, {})",
                    data_dir.display(),
                    embedded::ORDERS,
                    embedded::INVENTORY,
                    embedded::STOREFRONT
                );
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::DeadLetters { action, broker, data } => {
            let naming = Naming::new(&broker.queue_prefix);
            match &broker.amqp_url {
                Some(amqp_url) => {
                    let transport = rabbitmq(amqp_url, &broker, "shop-dead-letters").await?;
                    shop::dead_letters::run(action, &transport, &naming).await?;
                }
                None => {
                    let file = data.path()?.join(embedded::BROKER);
                    anyhow::ensure!(
                        file.is_file(),
                        "no embedded broker at {} (`shop up` creates it when it first runs embedded): set \
                         SHOP_DATA_DIR to the data directory `shop up` printed, or SHOP_AMQP_URL for RabbitMQ",
                        file.display()
                    );
                    eprintln!("dead letters of the embedded broker {}", file.display());
                    let transport = SqliteTransport::open(&file)
                        .await
                        .with_context(|| format!("cannot open the embedded broker {}", file.display()))?;
                    shop::dead_letters::run(action, &transport, &naming).await?;
                }
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Token(args) => {
            anyhow::ensure!(!args.ttl.is_zero(), "--ttl must be longer than 0s");
            let signer = args.auth.signer(&args.data)?;
            let token = match args.holder.customer {
                Some(customer) => signer.sign(&customer.to_string(), Role::Customer, args.ttl),
                None => signer.sign(&args.subject, Role::Admin, args.ttl),
            };
            println!("{token}");
            Ok(std::process::ExitCode::SUCCESS)
        }
    }
}

/// What the storefront signs its users' tokens with: the local key, or nothing when the
/// services trust only an identity provider.
fn storefront_signer(auth: &AuthSettings, data: &DataDir) -> anyhow::Result<web::auth::Signer> {
    auth.signer(data).context(
        "the storefront cannot start: it signs the tokens of the people it serves with the local key, which \
         the services do not trust with this configuration",
    )
}

fn print_storefront(storefront: &RunningService) {
    tracing::info!(
        "storefront on http://{} (operators: sign in with SHOP_ADMIN_EMAIL, admin@shop.local by default)",
        storefront.http_addr
    );
}

fn verifier(auth: &AuthSettings, data: &DataDir) -> anyhow::Result<Arc<Verifier>> {
    let verifier = auth.verifier(data)?;
    tracing::info!("the APIs accept tokens signed by {}", verifier.describe());
    Ok(Arc::new(verifier))
}

async fn rabbitmq(amqp_url: &str, broker: &BrokerSettings, connection_name: &str) -> anyhow::Result<RabbitMq> {
    let naming = Naming::new(&broker.queue_prefix);
    RabbitMq::connect_with(amqp_url, naming, connection_name, broker.rabbitmq()).await.with_context(|| {
        format!("cannot reach RabbitMQ at {} (is it running? see SHOP_AMQP_URL)", messaging::redact_url(amqp_url))
    })
}

/// The embedded mode's broker, for the one process that runs the system on `data_dir`: takes
/// the directory's lock, opens the broker's file and hands back the deliveries that a killed
/// predecessor held.
async fn embedded_broker(data: &DataDir, data_dir: &Path) -> anyhow::Result<(SqliteTransport, DataDirLock)> {
    let lock = data.lock()?;
    let file = data_dir.join(embedded::BROKER);
    let broker = SqliteTransport::open(&file)
        .await
        .with_context(|| format!("cannot open the embedded broker {}", file.display()))?;
    let requeued = broker.requeue_unsettled().await?;
    tracing::info!(
        "embedded mode: the system's state is in {} ({} and {}: the services' databases, {}: the messages between \
         them, {}: the storefront's accounts, auth/: the local signing key); set SHOP_ORDERS_DATABASE_URL, \
         SHOP_INVENTORY_DATABASE_URL and SHOP_AMQP_URL to run on PostgreSQL and RabbitMQ",
        data_dir.display(),
        embedded::ORDERS,
        embedded::INVENTORY,
        embedded::BROKER,
        embedded::STOREFRONT,
    );
    if requeued > 0 {
        tracing::info!(
            "{requeued} message(s) that were being handled when the system last stopped will be handled again"
        );
    }
    Ok((broker, lock))
}

fn print_ready(services: &[&RunningService]) {
    for service in services {
        tracing::info!(
            "{} API on http://{} (docs: http://{}/docs)",
            service.name,
            service.http_addr,
            service.http_addr
        );
    }
}

/// Runs until SIGINT or SIGTERM, then stops every service gracefully.
async fn run_until_signal(services: Vec<RunningService>) -> anyhow::Result<std::process::ExitCode> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = terminate.recv() => tracing::info!("SIGTERM received"),
    }
    futures::future::join_all(services.into_iter().map(RunningService::stop)).await;
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
