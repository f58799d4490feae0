//! Whole journeys through the storefront in a real browser: headless Chromium driven over
//! WebDriver (chromedriver) with fantoccini, against both services and the storefront running
//! in this process over the real PostgreSQL and RabbitMQ. (The pages are the same in the
//! embedded mode; only the account store differs, and its contract runs on both.)
//!
//! With `SHOP_SCREENSHOTS=docs` the journeys also save screenshots of the main pages to
//! `docs/screenshots/` (the README shows them).

mod support;

use fantoccini::{Client, ClientBuilder, Locator};
use messaging::testing::TestDatabase;
use serde_json::{Value, json};
use shop::{RunningService, StorefrontDatabase, StorefrontRuntime, StorefrontSettings};
use std::path::PathBuf;
use std::time::Duration;
use support::System;
use web::auth::Signer;

const ADMIN_EMAIL: &str = "ops@shop.test";
const ADMIN_PASSWORD: &str = "operator password";
/// How long a page may take to show what a step waits for.
const WAIT: Duration = Duration::from_secs(20);

struct Storefront {
    url: String,
    running: RunningService,
    _database: TestDatabase,
    _data_dir: tempfile::TempDir,
}

async fn start_storefront(system: &System) -> Storefront {
    let database = TestDatabase::empty().await;
    let data_dir = tempfile::tempdir().unwrap();
    let settings = StorefrontSettings {
        database: StorefrontDatabase { database_url: Some(database.url.clone()) },
        http_addr: "127.0.0.1:0".parse().unwrap(),
        orders_url: None,
        inventory_url: None,
        secure_cookies: false,
        admin_email: ADMIN_EMAIL.into(),
        admin_password: Some(ADMIN_PASSWORD.into()),
        admin_password_file: None,
    };
    let runtime = StorefrontRuntime {
        accounts: shop::Storage::Postgres { url: database.url.clone() },
        orders_url: system.orders_url.clone(),
        inventory_url: system.inventory_url.clone(),
        signer: Signer::new(&system.key, support::issuance()),
        data_dir: data_dir.path().to_owned(),
        tuning: shop::Tuning { db_pool_size: 4, ..shop::Tuning::default() },
        metrics: None,
    };
    let running = shop::start_storefront(&settings, runtime).await.expect("the storefront starts");
    Storefront { url: format!("http://{}", running.http_addr), running, _database: database, _data_dir: data_dir }
}

/// Chromium driven by a chromedriver of its own (killed when this is dropped).
struct Browser {
    client: Client,
    base: String,
    screenshots: Option<PathBuf>,
    _driver: tokio::process::Child,
    _profile: tempfile::TempDir,
}

fn installed(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

impl Browser {
    async fn start(base: &str) -> Self {
        assert!(
            installed("chromium") && installed("chromedriver"),
            "the browser tests need Debian's chromium and chromium-driver: run .ci/run, which installs them"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = tokio::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let driver_url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        support::eventually(Duration::from_secs(20), "chromedriver answers", async || {
            http.get(format!("{driver_url}/status")).send().await.is_ok()
        })
        .await;
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,900",
            &format!("--user-data-dir={}", profile.path().display()),
        ];
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("goog:chromeOptions".into(), json!({ "args": args, "binary": "/usr/bin/chromium" }));
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&driver_url)
            .await
            .expect("a browser session");
        let screenshots = (std::env::var("SHOP_SCREENSHOTS").as_deref() == Ok("docs"))
            .then(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/screenshots"));
        Self { client, base: base.to_owned(), screenshots, _driver: driver, _profile: profile }
    }

    async fn open(&self, path: &str) {
        self.client.goto(&format!("{}{path}", self.base)).await.expect("the page opens");
        self.check_labels().await;
    }

    /// Waits until an element matching the XPath is on the page.
    async fn wait_for(&self, xpath: &str) -> fantoccini::elements::Element {
        match self.client.wait().at_most(WAIT).for_element(Locator::XPath(xpath)).await {
            Ok(element) => element,
            Err(error) => {
                let source = self.client.source().await.unwrap_or_default();
                panic!("waited in vain for {xpath}: {error}\n--- page ---\n{source}");
            }
        }
    }

    /// Waits for the message an action leaves on the next page.
    async fn notice(&self, text: &str) {
        self.wait_for(&format!("//p[contains(@class, 'notice') and contains(., {text:?})]")).await;
        self.check_labels().await;
    }

    async fn fill(&self, css: &str, text: &str) {
        let field = self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}"));
        field.clear().await.unwrap();
        field.send_keys(text).await.unwrap();
    }

    async fn click(&self, xpath: &str) {
        self.wait_for(xpath).await.click().await.unwrap_or_else(|e| panic!("click {xpath}: {e}"));
    }

    async fn text(&self, css: &str) -> String {
        self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}")).text().await.unwrap()
    }

    async fn script(&self, script: &str) -> Value {
        self.client.execute(script, Vec::new()).await.expect("the script runs")
    }

    /// Reloads `path` until the XPath matches (for what changes without the page following it).
    async fn reload_until(&self, path: &str, xpath: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            self.open(path).await;
            if self.client.find(Locator::XPath(xpath)).await.is_ok() {
                return;
            }
            let source = self.client.source().await.unwrap_or_default();
            assert!(tokio::time::Instant::now() < deadline, "{path} never showed {xpath}\n{source}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every visible input, select and textarea of the page has a label.
    async fn check_labels(&self) {
        let unlabelled = self
            .script(
                "return [...document.querySelectorAll('input:not([type=hidden]), select, textarea')] \
                 .filter(field => !(field.labels && field.labels.length)).map(field => field.outerHTML);",
            )
            .await;
        assert_eq!(unlabelled, json!([]), "inputs without a label");
    }

    /// The whole page at `width` pixels (saved only with `SHOP_SCREENSHOTS=docs`).
    async fn screenshot_at(&self, name: &str, width: u32) {
        let Some(dir) = &self.screenshots else { return };
        std::fs::create_dir_all(dir).unwrap();
        self.client.set_window_size(width, 900).await.unwrap();
        let height = self.script("return document.documentElement.scrollHeight;").await.as_u64().unwrap_or(900);
        // The window's frame takes some height of its own: add it, so the page fits.
        self.client.set_window_size(width, u32::try_from(height).unwrap_or(900).clamp(400, 4000) + 140).await.unwrap();
        let png = self.client.screenshot().await.expect("a screenshot");
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
        self.client.set_window_size(1280, 900).await.unwrap();
    }

    async fn screenshot(&self, name: &str) {
        self.screenshot_at(name, 1280).await;
    }

    async fn sign_up(&self, email: &str) {
        self.open("/signup").await;
        self.fill("#email", email).await;
        self.fill("#password", "a long enough password").await;
        self.click("//form[@action='/signup']//button").await;
        self.notice("Welcome!").await;
    }

    async fn sign_out(&self) {
        self.click("//form[@action='/signout']//button").await;
        self.notice("Signed out.").await;
    }

    async fn add_to_cart(&self, product: i64, name: &str, quantity: u32) {
        self.open("/").await;
        self.fill(&format!("#quantity-{product}"), &quantity.to_string()).await;
        self.click(&format!("//li[@id='product-{product}']//button")).await;
        self.notice(&format!("Added {quantity} × {name} to your cart.")).await;
    }

    /// Places the cart; returns the order's id (from the page it lands on).
    async fn checkout(&self) -> String {
        self.open("/cart").await;
        self.click("//button[normalize-space()='Place the order']").await;
        self.notice("Your order is placed.").await;
        let url = self.client.current_url().await.unwrap();
        url.path().trim_start_matches("/orders/").to_owned()
    }

    async fn order_status_is(&self, label: &str) {
        self.wait_for(&format!("//span[@id='order-status' and normalize-space()={label:?}]")).await;
    }
}

#[tokio::test]
async fn customers_shop_and_operators_run_the_shop_in_a_browser() {
    let started = std::time::Instant::now();
    let system = System::start().await;
    let kettle = system.product("Kettle", "24.90", 5).await;
    let mug = system.product("Mug", "4.50", 10).await;
    let lamp = system.product("Lamp", "30.00", 1).await;
    let storefront = start_storefront(&system).await;
    let browser = Browser::start(&storefront.url).await;

    // 1. A customer signs up, puts two products in the cart, checks out, and the order page
    //    turns confirmed by itself.
    browser.sign_up("alice@example.com").await;
    browser.screenshot("catalog").await;
    browser.screenshot_at("catalog-narrow", 390).await;
    browser.add_to_cart(kettle, "Kettle", 1).await;
    browser.add_to_cart(mug, "Mug", 2).await;
    browser.open("/cart").await;
    assert_eq!(browser.text("#cart-total").await, "33.90");
    browser.screenshot("cart").await;
    // The mug's reservation waits (and the order stays placed) until the stall is released.
    let stall = system.stall_product_writes(mug).await;
    let confirmed_order = browser.checkout().await;
    browser.order_status_is("Placed: reserving the stock…").await;
    browser.script("window.sameDocument = true;").await;
    stall.release().await;
    browser.order_status_is("Confirmed").await;
    assert_eq!(browser.script("return window.sameDocument === true;").await, json!(true), "the page was reloaded");
    browser.screenshot("order-confirmed").await;

    // 2. An order beyond the stock is rejected, with the reason.
    browser.add_to_cart(lamp, "Lamp", 3).await;
    let rejected_order = browser.checkout().await;
    browser.order_status_is("Rejected").await;
    let reason = browser.text("#order-reason").await;
    assert!(reason.contains(&format!("not enough stock of product {lamp}")), "{reason}");
    browser.screenshot("order-rejected").await;
    browser.open("/orders").await;
    for order in [&confirmed_order, &rejected_order] {
        browser.wait_for(&format!("//a[@href='/orders/{order}']")).await;
    }
    browser.sign_out().await;

    // Another customer cannot see Alice's order.
    browser.sign_up("bob@example.com").await;
    browser.open(&format!("/orders/{confirmed_order}")).await;
    browser.wait_for("//h1[normalize-space()='Not found']").await;
    browser.open("/").await;
    browser.sign_out().await;

    // 3. The operator restocks, ships the confirmed order, and replays a dead letter.
    browser.open("/signin").await;
    browser.fill("#email", ADMIN_EMAIL).await;
    browser.fill("#password", ADMIN_PASSWORD).await;
    browser.click("//form[@action='/signin']//button").await;
    browser.notice(&format!("Signed in as {ADMIN_EMAIL}.")).await;

    browser.open("/admin/products").await;
    browser.fill(&format!("#restock-{lamp}"), "5").await;
    browser.click(&format!("//tr[@id='product-{lamp}']//button[starts-with(., 'Restock')]")).await;
    browser.notice("Restocked Lamp: 6 in stock, 6 available.").await;
    assert_eq!(browser.text(&format!("#product-{lamp} .stock")).await, "6");
    assert_eq!(system.stock_of(lamp).await, (6, 0, 6));
    browser.screenshot("admin-products").await;

    browser.open("/admin/orders?status=confirmed").await;
    browser.click(&format!("//tr[@id='order-{confirmed_order}']//button")).await;
    browser.notice("Order shipped.").await;
    browser.order_status_is("Shipped").await;
    let saga_page = format!("/admin/orders/{confirmed_order}");
    browser.reload_until(&saga_page, "//span[@id='saga-state' and normalize-space()='shipped']").await;
    let timeline = browser.text("#saga-timeline").await;
    for step in
        ["saga → reserving", "line: Kettle → reserved", "line: Mug → reserved", "saga → reserved", "saga → shipped"]
    {
        assert!(timeline.contains(step), "the timeline lacks {step:?}:\n{timeline}");
    }
    browser.screenshot("admin-order-saga").await;
    assert_eq!(system.stock_of(kettle).await, (4, 0, 4));

    let poison = messaging::Envelope {
        message_id: uuid::Uuid::now_v7(),
        message_type: "inventory.stock-reserved.v1".into(),
        correlation_id: "poison".into(),
        causation_id: None,
        occurred_at: chrono::Utc::now(),
        traceparent: None,
        payload: json!({ "orderId": "not-an-order", "productId": 1, "quantity": 1 }),
    };
    system.publish(poison).await;
    browser.reload_until("/admin/system", "//td[@id='dead-inventory-saga' and normalize-space()='1']").await;
    let letter = browser.text(".letter .reason").await;
    assert!(letter.contains("does not match its contract"), "{letter}");
    browser.screenshot("admin-system").await;
    browser.click("//button[normalize-space()='Replay dead letters of inventory.saga']").await;
    browser.notice("Replayed 1 dead letter(s) of inventory.saga.").await;
    // Still poison: the saga's consumer gives up on it again, and it is back with its reason.
    browser.reload_until("/admin/system", "//td[@id='dead-inventory-saga' and normalize-space()='1']").await;

    browser.client.clone().close().await.unwrap();
    storefront.running.stop().await;
    system.stop().await;
    eprintln!("browser journeys took {:.1?}", started.elapsed());
}
