//! The `shop` binary as an operator uses it: which mode the settings select and what it says
//! when they make no sense, migrations, dead-letter tools, clear errors.

use messaging::testing::{TestDatabase, amqp_url, server_url, unique_naming};
use std::process::{Command, Output};

/// The settings that select a mode: the tests set what they mean and nothing else.
const MODE_SETTINGS: [&str; 5] = [
    "SHOP_ORDERS_DATABASE_URL",
    "SHOP_INVENTORY_DATABASE_URL",
    "SHOP_AMQP_URL",
    "SHOP_STOREFRONT_DATABASE_URL",
    "SHOP_DATA_DIR",
];

fn command(args: &[&str], env: &[(&str, String)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_shop"));
    for variable in MODE_SETTINGS {
        command.env_remove(variable);
    }
    command.args(args).envs(env.iter().map(|(k, v)| (*k, v.as_str()))).env("RUST_LOG", "warn");
    command
}

fn shop(args: &[&str], env: &[(&str, String)]) -> Output {
    command(args, env).output().expect("shop runs")
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[tokio::test]
async fn migrate_creates_every_database_with_its_schema() {
    let name = || format!("test_{}", uuid::Uuid::now_v7().simple());
    let (orders_name, inventory_name, storefront_name) = (name(), name(), name());
    let url = |name: &str| format!("{}/{name}", server_url());
    let env = [
        ("SHOP_ORDERS_DATABASE_URL", url(&orders_name)),
        ("SHOP_INVENTORY_DATABASE_URL", url(&inventory_name)),
        ("SHOP_STOREFRONT_DATABASE_URL", url(&storefront_name)),
    ];
    let output = shop(&["migrate"], &env);
    assert!(output.status.success(), "{}", text(&output));
    // The databases exist now; from here on TestDatabase drops them when the test ends.
    let adopt = |name: String| async move {
        let url = url(&name);
        let pool = sqlx::PgPool::connect(&url).await.expect("migrate created the database");
        TestDatabase { name, url, pool }
    };
    let (orders, inventory) = (adopt(orders_name).await, adopt(inventory_name).await);
    let storefront = adopt(storefront_name).await;
    let tables = |db: &TestDatabase| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
            )
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    };
    let order_tables = tables(&orders).await;
    for table in ["catalog_products", "idempotency_keys", "inbox", "orders", "outbox"] {
        assert!(order_tables.iter().any(|t| t == table), "{table} missing: {order_tables:?}");
    }
    let inventory_tables = tables(&inventory).await;
    for table in ["inbox", "outbox", "products", "reservation_sagas", "reservations"] {
        assert!(inventory_tables.iter().any(|t| t == table), "{table} missing: {inventory_tables:?}");
    }
    assert!(tables(&storefront).await.iter().any(|t| t == "accounts"), "the storefront's accounts missing");
    // Running it again changes nothing and succeeds.
    assert!(shop(&["migrate"], &env).status.success());
}

#[test]
fn an_unreachable_database_is_reported_with_what_to_fix() {
    let env = [
        ("SHOP_ORDERS_DATABASE_URL", "postgres://postgres:secret@127.0.0.1:1/nowhere".to_owned()),
        ("SHOP_INVENTORY_DATABASE_URL", "postgres://postgres:secret@127.0.0.1:1/elsewhere".to_owned()),
        ("SHOP_STOREFRONT_DATABASE_URL", "postgres://postgres:secret@127.0.0.1:1/accounts".to_owned()),
    ];
    let output = shop(&["migrate"], &env);
    assert!(!output.status.success());
    let message = text(&output);
    assert!(
        message.contains("cannot open the order database at postgres://postgres:***@127.0.0.1:1/nowhere"),
        "{message}"
    );
    assert!(!message.contains("secret"), "the password leaked: {message}");
}

#[test]
fn dead_letter_tools_list_replay_and_purge_and_name_the_queues_they_know() {
    let naming = unique_naming();
    let env = [("SHOP_QUEUE_PREFIX", naming.prefix().to_owned()), ("SHOP_AMQP_URL", amqp_url())];
    let listed = shop(&["dead-letters", "list"], &env);
    assert!(listed.status.success(), "{}", text(&listed));
    assert!(text(&listed).contains("0 dead letter(s)"), "{}", text(&listed));
    let replayed = shop(&["dead-letters", "replay", "--queue", "inventory.saga"], &env);
    assert!(text(&replayed).contains(".inventory.saga.error: replayed 0"), "{}", text(&replayed));
    let purged = shop(&["dead-letters", "purge", "--queue", "order.catalog"], &env);
    assert!(text(&purged).contains(".order.catalog.error: purged 0"), "{}", text(&purged));

    let unknown = shop(&["dead-letters", "list", "--queue", "inventory.nope"], &env);
    assert!(!unknown.status.success());
    assert!(text(&unknown).contains("unknown queue \"inventory.nope\"; one of: order.catalog, order.reservations, inventory.saga, inventory.stock"), "{}", text(&unknown));

    // The tools declare nothing; delete whatever a failed run may have left.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let broker =
            messaging::transport::rabbitmq::RabbitMq::connect(&amqp_url(), naming.clone(), "cli-test").await.unwrap();
        broker.delete_topology(&shop::topology::consumer_queues(&naming)).await.unwrap();
    });
}

#[tokio::test]
async fn a_service_refuses_queues_of_the_other_type_and_says_what_to_do() {
    use messaging::transport::Transport;
    let db = TestDatabase::empty().await;
    let naming = unique_naming();
    let queues = shop::topology::consumer_queues(&naming);
    let classic =
        messaging::transport::rabbitmq::RabbitMq::connect(&amqp_url(), naming.clone(), "cli-test").await.unwrap();
    for queue in &queues {
        classic.declare(queue).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("SHOP_QUEUE_PREFIX", naming.prefix().to_owned()),
        ("SHOP_AMQP_URL", amqp_url()),
        ("SHOP_QUEUE_TYPE", "quorum".to_owned()),
        ("SHOP_ORDERS_DATABASE_URL", db.url.clone()),
        ("SHOP_ORDERS_HTTP_ADDR", "127.0.0.1:0".to_owned()),
        ("SHOP_DATA_DIR", dir.path().display().to_string()),
    ];
    let output = tokio::task::spawn_blocking(move || shop(&["serve", "order"], &env)).await.unwrap();
    assert!(!output.status.success());
    let message = text(&output);
    assert!(message.contains("a queue keeps the type it was created with"), "{message}");
    assert!(message.contains("set SHOP_QUEUE_TYPE to the type the service's queues have"), "{message}");
    assert!(message.contains("inequivalent arg 'x-queue-type'"), "{message}");
    classic.delete_topology(&queues).await.unwrap();
}

#[test]
fn bad_flags_are_refused_with_a_hint() {
    let output = shop(&["up", "--reservation-timeout", "soon"], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output).contains("--reservation-timeout"), "{}", text(&output));
}

/// What the services started with `SHOP_DATA_DIR=dir` would check tokens with.
fn services_verifier(dir: &std::path::Path) -> web::auth::Verifier {
    let data = shop::DataDir { data_dir: Some(dir.to_owned()) };
    shop::AuthSettings::default().verifier(&data).expect("the services load the key")
}

#[tokio::test]
async fn shop_token_signs_with_the_key_the_services_load_from_the_same_data_dir() {
    use std::os::unix::fs::PermissionsExt;
    use web::auth::Caller;
    let dir = tempfile::tempdir().unwrap();
    let env = [("SHOP_DATA_DIR", dir.path().display().to_string())];
    let customer = uuid::Uuid::now_v7();
    let minted = shop(&["token", "--customer", &customer.to_string(), "--ttl", "10m"], &env);
    assert!(minted.status.success(), "{}", text(&minted));
    let token = String::from_utf8(minted.stdout).unwrap();
    let key = dir.path().join("auth/signing-key.pem");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);

    let verifier = services_verifier(dir.path());
    assert_eq!(verifier.verify(token.trim()).await, Ok(Caller::Customer(customer)));
    let admin = shop(&["token", "--admin", "--subject", "ops"], &env);
    let admin = String::from_utf8(admin.stdout).unwrap();
    assert_eq!(verifier.verify(admin.trim()).await, Ok(Caller::Admin { subject: "ops".into() }));
    // Another data dir is another key.
    let elsewhere = tempfile::tempdir().unwrap();
    assert!(services_verifier(elsewhere.path()).verify(token.trim()).await.is_err());
}

#[tokio::test]
async fn processes_starting_at_once_on_a_new_data_dir_share_one_key() {
    let dir = tempfile::tempdir().unwrap();
    let dir_text = dir.path().display().to_string();
    let minting: Vec<_> = (0..6)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_shop"))
                .args(["token", "--admin"])
                .env("SHOP_DATA_DIR", &dir_text)
                .env("RUST_LOG", "warn")
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("shop runs")
        })
        .collect();
    let verifier = services_verifier(dir.path());
    for process in minting {
        let output = process.wait_with_output().unwrap();
        assert!(output.status.success());
        let token = String::from_utf8(output.stdout).unwrap();
        assert!(verifier.verify(token.trim()).await.is_ok(), "a process signed with a key that lost the race");
    }
}

#[test]
fn shop_token_refuses_when_the_services_trust_an_identity_provider() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("SHOP_DATA_DIR", dir.path().display().to_string()),
        ("SHOP_AUTH_JWKS_URL", "https://idp.example/.well-known/jwks.json".to_owned()),
    ];
    let output = shop(&["token", "--admin"], &env);
    assert!(!output.status.success());
    let message = text(&output);
    assert!(message.contains("SHOP_AUTH_JWKS_URL is set") && message.contains("identity provider"), "{message}");
    assert!(output.stdout.is_empty(), "printed a token anyway");
    let usage = shop(&["token"], &[]);
    assert_eq!(usage.status.code(), Some(2));
    assert!(text(&usage).contains("--customer") && text(&usage).contains("--admin"), "{}", text(&usage));
}

#[test]
fn settings_that_make_no_sense_are_refused_with_what_to_set() {
    let dir = tempfile::tempdir().unwrap();
    let data = ("SHOP_DATA_DIR", dir.path().display().to_string());
    let orders = ("SHOP_ORDERS_DATABASE_URL", format!("{}/x_orders", server_url()));
    let inventory = ("SHOP_INVENTORY_DATABASE_URL", format!("{}/x_inventory", server_url()));
    let amqp = ("SHOP_AMQP_URL", amqp_url());
    let storefront = ("SHOP_STOREFRONT_DATABASE_URL", format!("{}/x_storefront", server_url()));
    /// A command, its settings, and what its refusal must say.
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, String)>, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            vec!["up"],
            vec![orders.clone(), data.clone()],
            "SHOP_ORDERS_DATABASE_URL is set but SHOP_INVENTORY_DATABASE_URL is not: set both PostgreSQL URLs",
        ),
        (
            vec!["up"],
            vec![inventory.clone(), amqp.clone()],
            "SHOP_INVENTORY_DATABASE_URL is set but SHOP_ORDERS_DATABASE_URL is not",
        ),
        (
            vec!["up"],
            vec![orders.clone(), inventory.clone()],
            "the PostgreSQL URLs are set but SHOP_AMQP_URL is not: set SHOP_AMQP_URL",
        ),
        (vec!["up"], vec![amqp.clone(), data.clone()], "SHOP_AMQP_URL is set but the database URLs are not"),
        (
            vec!["serve", "order"],
            vec![orders.clone()],
            "services in separate processes talk through RabbitMQ: set SHOP_AMQP_URL",
        ),
        (vec!["serve", "inventory"], vec![data.clone()], "set SHOP_AMQP_URL (and SHOP_INVENTORY_DATABASE_URL)"),
        (
            vec!["serve", "inventory"],
            vec![amqp.clone()],
            "needs the service's PostgreSQL database: set SHOP_INVENTORY_DATABASE_URL",
        ),
        (
            vec!["migrate"],
            vec![inventory.clone()],
            "SHOP_INVENTORY_DATABASE_URL is set but SHOP_ORDERS_DATABASE_URL is not",
        ),
        (
            vec!["up"],
            vec![storefront.clone(), data.clone()],
            "SHOP_STOREFRONT_DATABASE_URL is set but the services' database URLs are not",
        ),
        (
            vec!["up"],
            vec![orders.clone(), inventory.clone(), amqp.clone(), data.clone()],
            "SHOP_STOREFRONT_DATABASE_URL is not set",
        ),
        (vec!["migrate"], vec![orders.clone(), inventory.clone()], "SHOP_STOREFRONT_DATABASE_URL is not set"),
        (vec!["serve", "storefront"], vec![data.clone()], "SHOP_STOREFRONT_DATABASE_URL is not set"),
    ];
    for (args, env, expected) in cases {
        let output = shop(&args, &env);
        assert_eq!(output.status.code(), Some(1), "{args:?} {env:?}: {}", text(&output));
        assert!(text(&output).contains(expected), "{args:?} {env:?}: {}", text(&output));
    }
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none(), "a refused start left files behind");
}

#[test]
fn migrate_without_databases_prepares_the_embedded_files() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("SHOP_DATA_DIR", dir.path().display().to_string())];
    let output = shop(&["migrate"], &env);
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains(&format!("the embedded databases in {} are up to date", dir.path().display())));
    for file in ["orders.sqlite", "inventory.sqlite", "storefront.sqlite"] {
        assert!(dir.path().join(file).is_file(), "{file} missing");
    }
    assert!(shop(&["migrate"], &env).status.success(), "migrating again changes nothing and succeeds");
}

#[tokio::test]
async fn the_embedded_system_runs_once_per_data_dir_and_its_dead_letters_are_at_hand() {
    let dir = tempfile::tempdir().unwrap();
    let port = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (orders_port, inventory_port) = (port(), port());
    let env = [
        ("SHOP_DATA_DIR", dir.path().display().to_string()),
        ("SHOP_ORDERS_HTTP_ADDR", format!("127.0.0.1:{orders_port}")),
        ("SHOP_INVENTORY_HTTP_ADDR", format!("127.0.0.1:{inventory_port}")),
        ("SHOP_STOREFRONT_HTTP_ADDR", "127.0.0.1:0".to_owned()),
    ];
    let no_broker = shop(&["dead-letters", "list"], &env);
    assert!(!no_broker.status.success());
    assert!(text(&no_broker).contains("no embedded broker at"), "{}", text(&no_broker));

    let start =
        || KillOnDrop(command(&["up"], &env).stderr(std::process::Stdio::null()).spawn().expect("shop up runs"));
    let ready = async || {
        messaging::testing::eventually(std::time::Duration::from_secs(30), "shop up is ready", async || {
            let url = format!("http://127.0.0.1:{orders_port}/health/ready");
            reqwest::get(url).await.is_ok_and(|response| response.status().is_success())
        })
        .await;
    };
    let mut first = start();
    ready().await;
    let second = shop(&["up"], &env);
    assert_eq!(second.status.code(), Some(1));
    assert!(text(&second).contains("another shop is running on the data directory"), "{}", text(&second));

    let listed = shop(&["dead-letters", "list", "--queue", "inventory.saga"], &env);
    assert!(listed.status.success(), "{}", text(&listed));
    assert!(text(&listed).contains("0 dead letter(s)"), "{}", text(&listed));
    let replayed = shop(&["dead-letters", "replay"], &env);
    assert!(text(&replayed).contains("shop.order.catalog.error: replayed 0"), "{}", text(&replayed));

    // Killed, it holds the directory no more: the next start takes over.
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let _next = start();
    ready().await;
}

/// Kills the process when the test ends, passed or failed.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
