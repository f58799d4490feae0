//! End-to-end: both services driven only through their HTTP APIs, every scenario in both
//! modes: on PostgreSQL and the real RabbitMQ (`postgres::`), and embedded on SQLite files and
//! the embedded broker (`embedded::`); the overload scenarios, whose subject is the HTTP layer
//! (the same in both modes), run on PostgreSQL only. A few reach into a service's database: a
//! stalled product write stands in for a slow warehouse database, a damaged saga row, and the
//! idempotency keys counted.

mod support;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;
use support::{Mode, Options, System, eventually};
use uuid::Uuid;

/// Each scenario once per mode, `postgres::<scenario>` and `embedded::<scenario>`, from
/// `async fn <scenario>(mode: Mode)`.
macro_rules! in_both_modes {
    ($($scenario:ident),* $(,)?) => {
        mod postgres {
            $(#[tokio::test]
            async fn $scenario() {
                super::$scenario(super::Mode::Postgres).await;
            })*
        }
        mod embedded {
            $(#[tokio::test]
            async fn $scenario() {
                super::$scenario(super::Mode::Embedded).await;
            })*
        }
    };
}

in_both_modes!(
    a_several_line_order_is_confirmed_with_the_right_total_and_stock,
    insufficient_stock_rejects_the_order_and_releases_every_partial_reservation,
    an_unknown_product_is_refused_when_added,
    an_order_created_with_its_lines_and_placed_in_one_request_is_confirmed,
    a_client_that_holds_a_placed_order_waits_in_one_request_for_its_decision,
    a_reservation_that_times_out_rejects_the_order_and_releases_late_reservations,
    cancelling_while_stock_is_being_reserved_releases_it,
    cancelling_a_confirmed_order_releases_its_stock,
    shipping_a_confirmed_order_deducts_its_stock,
    a_damaged_saga_row_answers_500_and_its_next_message_is_dead_lettered_at_once,
    fifty_concurrent_orders_for_twenty_units_confirm_exactly_twenty,
    prices_come_from_the_catalog_and_follow_its_changes,
    an_idempotency_key_makes_order_creation_safe_to_retry,
    an_idempotency_key_expires_and_is_then_forgotten,
    orders_are_listed_by_customer_and_status_a_page_at_a_time,
    bad_input_gets_a_problem_with_the_right_status_and_never_a_500,
    every_text_the_rules_accept_is_stored_and_returned_as_sent,
    each_service_reports_health_metrics_and_its_api_document,
    the_saga_records_when_each_line_and_state_changed,
    operators_see_the_outbox_the_queues_and_the_dead_letters_and_replay_or_purge_them,
);

async fn a_several_line_order_is_confirmed_with_the_right_total_and_stock(mode: Mode) {
    let system = System::start_in(mode).await;
    let kettle = system.product("Kettle", "24.90", 5).await;
    let mug = system.product("Mug", "4.50", 10).await;
    let order = system.placed_order(&[(kettle, 2), (mug, 3), (kettle, 1)]).await;

    let confirmed = system.settled(&order).await;
    assert_eq!(confirmed["status"], "confirmed", "{confirmed}");
    assert_eq!(confirmed["total"], "88.20");
    assert_eq!(confirmed["lines"].as_array().unwrap().len(), 2, "the two kettle lines merge");
    let at = |field: &str| chrono::DateTime::parse_from_rfc3339(confirmed[field].as_str().unwrap()).unwrap();
    assert!(at("decidedAt") >= at("placedAt"), "{confirmed}");
    assert_eq!(system.stock_of(kettle).await, (5, 3, 2));
    assert_eq!(system.stock_of(mug).await, (10, 3, 7));
    let reservation = system.reservation_in(&order, "reserved").await;
    assert!(reservation["lines"].as_array().unwrap().iter().all(|line| line["status"] == "reserved"));
    system.stop().await;
}

async fn insufficient_stock_rejects_the_order_and_releases_every_partial_reservation(mode: Mode) {
    let system = System::start_in(mode).await;
    let plenty = system.product("Plenty", "1.00", 100).await;
    let scarce = system.product("Scarce", "1.00", 1).await;
    let order = system.placed_order(&[(plenty, 5), (scarce, 2)]).await;

    let rejected = system.settled(&order).await;
    assert_eq!(rejected["status"], "rejected");
    let reason = rejected["statusReason"].as_str().unwrap();
    assert!(reason.contains(&format!("not enough stock of product {scarce}")), "{reason}");
    let reservation = system.reservation_in(&order, "failed").await;
    eventually(Duration::from_secs(10), "the partial reservation is released", async || {
        system.stock_of(plenty).await == (100, 0, 100)
    })
    .await;
    assert_eq!(system.stock_of(scarce).await, (1, 0, 1));
    assert!(reservation["lines"].as_array().unwrap().iter().all(|l| l["status"] != "reserved"), "{reservation}");
    system.stop().await;
}

async fn an_unknown_product_is_refused_when_added(mode: Mode) {
    let system = System::start_in(mode).await;
    let order = system.new_order().await;
    let (status, problem) = system.add(&order, 424_242, 1).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["detail"], "product 424242 is not in the catalog");
    assert_eq!(system.order(&order).await["lines"], json!([]));
    system.stop().await;
}

async fn an_order_created_with_its_lines_and_placed_in_one_request_is_confirmed(mode: Mode) {
    let system = System::start_in(mode).await;
    let kettle = system.product("Kettle", "24.90", 5).await;
    let mug = system.product("Mug", "4.50", 10).await;
    let create = async |key: &str, body: Value| {
        let response = system
            .http
            .post(system.order_url("/api/orders"))
            .bearer_auth(&system.customer_token)
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
            .await
            .unwrap();
        (response.status(), response.json::<Value>().await.unwrap())
    };
    let line = |product: i64, quantity: u32| json!({ "productId": product, "quantity": quantity });
    let checkout = json!({ "lines": [line(kettle, 2), line(mug, 3), line(kettle, 1)], "place": true });

    let (status, placed) = create("checkout-1", checkout.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{placed}");
    assert_eq!((&placed["status"], &placed["total"]), (&json!("placed"), &json!("88.20")), "{placed}");
    assert_eq!(placed["lines"].as_array().unwrap().len(), 2, "the two kettle lines merge");
    let (status, again) = create("checkout-1", checkout).await;
    assert_eq!((status, &again["id"]), (StatusCode::OK, &placed["id"]), "a repeat is the same order");
    let (status, _) = create("checkout-1", json!({ "lines": [line(kettle, 2)], "place": true })).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "the key was used for other lines");

    let order = placed["id"].as_str().unwrap();
    assert_eq!(system.settled(order).await["status"], "confirmed");
    assert_eq!(system.stock_of(kettle).await, (5, 3, 2));
    assert_eq!(system.stock_of(mug).await, (10, 3, 7));

    // What cannot become a placed order creates nothing.
    let (status, problem) =
        create("checkout-2", json!({ "lines": [line(mug, 1), line(424_242, 1)], "place": true })).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(problem["detail"], "product 424242 is not in the catalog");
    let (status, problem) = create("checkout-3", json!({ "place": true })).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    let too_many: Vec<Value> = (0..101).map(|_| line(mug, 1)).collect();
    let (status, problem) = create("checkout-4", json!({ "lines": too_many })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    assert!(problem["detail"].as_str().unwrap().starts_with("lines: at most 100 lines"), "{problem}");
    let (_, listed) = system.call(Method::GET, &system.order_url("/api/orders"), None).await;
    assert_eq!(listed["orders"].as_array().unwrap().len(), 1, "{listed}");
    system.stop().await;
}

async fn a_client_that_holds_a_placed_order_waits_in_one_request_for_its_decision(mode: Mode) {
    let system = System::start_in(mode).await;
    let kettle = system.product("Kettle", "24.90", 5).await;
    let stall = system.stall_product_writes(kettle).await;
    let order = system.placed_order(&[(kettle, 1)]).await;
    let url = system.order_url(&format!("/api/orders/{order}"));
    let get = |tag: &str, prefer: &str| {
        let request = system.http.get(&url).bearer_auth(&system.customer_token).header("If-None-Match", tag);
        request.header("Prefer", prefer).send()
    };
    let plain = system.http.get(&url).bearer_auth(&system.customer_token).send().await.unwrap();
    let placed = plain.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(plain.json::<Value>().await.unwrap()["status"], "placed");

    // Still placed when the wait is over: 304, with the wait it got.
    let unchanged = get(&placed, "wait=1").await.unwrap();
    assert_eq!(unchanged.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(unchanged.headers()["etag"], placed.as_str());
    assert_eq!(unchanged.headers()["preference-applied"], "wait=1");
    // A tag the client no longer holds current: the order at once.
    let stale = get("W/\"0\"", "wait=20").await.unwrap();
    assert_eq!(
        (stale.status(), stale.json::<Value>().await.unwrap()["status"].clone()),
        (StatusCode::OK, json!("placed"))
    );

    // A wait of 20 s ends with the decision, well before, once the stock can be written.
    let waiting = tokio::time::timeout(Duration::from_secs(10), get(&placed, "wait=20"));
    let (decided, ()) = tokio::join!(waiting, stall.release());
    let decided = decided.expect("the decision ended the wait").unwrap();
    assert_eq!(decided.status(), StatusCode::OK);
    let confirmed = decided.headers()["etag"].to_str().unwrap().to_owned();
    assert_ne!(confirmed, placed);
    assert_eq!(decided.json::<Value>().await.unwrap()["status"], "confirmed");
    system.stop().await;
}

async fn a_reservation_that_times_out_rejects_the_order_and_releases_late_reservations(mode: Mode) {
    let system = System::with_reservation_timeout(mode, Duration::from_millis(800)).await;
    let quick = system.product("Quick", "1.00", 10).await;
    let slow = system.product("Slow", "1.00", 10).await;
    let stall = system.stall_product_writes(slow).await;
    let order = system.placed_order(&[(quick, 1), (slow, 1)]).await;

    let rejected = system.settled(&order).await;
    assert_eq!(rejected["status"], "rejected");
    assert_eq!(rejected["statusReason"], "stock reservation timed out after 800ms");
    stall.release().await;
    // The slow line gets reserved after the saga gave up: it must be handed back.
    eventually(Duration::from_secs(10), "the saga releases every line", async || {
        let (_, reservation) = system.reservation(&order).await;
        reservation["lines"].as_array().unwrap().iter().all(|line| line["status"] == "released")
    })
    .await;
    eventually(Duration::from_secs(10), "stock released", async || {
        system.stock_of(quick).await == (10, 0, 10) && system.stock_of(slow).await == (10, 0, 10)
    })
    .await;
    system.stop().await;
}

async fn cancelling_while_stock_is_being_reserved_releases_it(mode: Mode) {
    let system = System::start_in(mode).await;
    let slow = system.product("Slow", "3.00", 4).await;
    let stall = system.stall_product_writes(slow).await;
    let order = system.placed_order(&[(slow, 2)]).await;
    let (status, cancelled) = system.command(&order, "cancel", Some(json!({ "reason": "changed my mind" }))).await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
    let reservation = system.reservation_in(&order, "failed").await;
    assert_eq!(reservation["failureReason"], "order cancelled");
    stall.release().await;

    eventually(Duration::from_secs(10), "the late reservation released", async || {
        let (_, reservation) = system.reservation(&order).await;
        reservation["lines"][0]["status"] == "released"
    })
    .await;
    eventually(Duration::from_secs(10), "stock released", async || system.stock_of(slow).await == (4, 0, 4)).await;
    assert_eq!(system.order(&order).await["status"], "cancelled", "a late outcome changed a cancelled order");
    system.stop().await;
}

async fn cancelling_a_confirmed_order_releases_its_stock(mode: Mode) {
    let system = System::start_in(mode).await;
    let product = system.product("Lamp", "30.00", 3).await;
    let order = system.placed_order(&[(product, 2)]).await;
    assert_eq!(system.settled(&order).await["status"], "confirmed");
    assert_eq!(system.stock_of(product).await, (3, 2, 1));

    let (status, _) = system.command(&order, "cancel", Some(json!({ "reason": "found it cheaper" }))).await;
    assert_eq!(status, StatusCode::OK);
    system.reservation_in(&order, "released").await;
    eventually(Duration::from_secs(10), "stock released", async || system.stock_of(product).await == (3, 0, 3)).await;
    let order = system.order(&order).await;
    assert_eq!(
        (order["status"].clone(), order["statusReason"].clone()),
        (json!("cancelled"), json!("found it cheaper"))
    );
    system.stop().await;
}

async fn shipping_a_confirmed_order_deducts_its_stock(mode: Mode) {
    let system = System::start_in(mode).await;
    let product = system.product("Chair", "45.00", 6).await;
    let order = system.placed_order(&[(product, 4)]).await;
    assert_eq!(system.settled(&order).await["status"], "confirmed");
    let (status, shipped) = system.ship(&order).await;
    assert_eq!((status, shipped["status"].clone()), (StatusCode::OK, json!("shipped")));
    system.reservation_in(&order, "shipped").await;
    eventually(Duration::from_secs(10), "stock deducted", async || system.stock_of(product).await == (2, 0, 2)).await;
    // Shipped is final.
    let (status, _) = system.command(&order, "cancel", Some(json!({ "reason": "too late" }))).await;
    assert_eq!(status, StatusCode::CONFLICT);
    system.stop().await;
}

async fn a_damaged_saga_row_answers_500_and_its_next_message_is_dead_lettered_at_once(mode: Mode) {
    let system = System::start_in(mode).await;
    let product = system.product("Vase", "12.00", 3).await;
    let order = system.placed_order(&[(product, 1)]).await;
    assert_eq!(system.settled(&order).await["status"], "confirmed");
    system.reservation_in(&order, "reserved").await;
    // A line that names no product: the row no longer restores into a saga.
    system.overwrite_saga_lines(&order, r#"[{"productId": 0, "quantity": 1, "status": "reserved"}]"#).await;

    let url = system.inventory_url(&format!("/api/reservations/{order}"));
    let response = system.http.get(url).bearer_auth(&system.admin).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let problem: Value = response.json().await.unwrap();
    assert_eq!(
        (problem["status"].clone(), problem["type"].clone()),
        (json!(500), json!("https://shop.example/problems/internal"))
    );
    assert_eq!(problem["detail"], "an unexpected error occurred", "the cause stays in the log");

    let (status, _) = system.ship(&order).await;
    assert_eq!(status, StatusCode::OK);
    let mut letters = Vec::new();
    eventually(Duration::from_secs(10), "the saga's order.shipped is dead-lettered", async || {
        letters = system.dead_letters("inventory", "saga").await;
        !letters.is_empty()
    })
    .await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].message_type.as_deref(), Some("order.shipped.v1"));
    assert_eq!(letters[0].attempts, 1, "damaged data is not retried as if the database were away");
    let reason = &letters[0].reason;
    assert!(reason.contains(&format!("stored saga of order {order} cannot be read back")), "{reason}");
    assert!(reason.contains("a product id is a positive integer (got 0)"), "{reason}");
    system.stop().await;
}

async fn fifty_concurrent_orders_for_twenty_units_confirm_exactly_twenty(mode: Mode) {
    let system = System::start_in(mode).await;
    let product = system.product("Limited edition", "99.00", 20).await;
    let line = [(product, 1)];
    let orders: Vec<String> = futures::future::join_all((0..50).map(|_| system.placed_order(&line))).await;
    let settled: Vec<Value> = futures::future::join_all(orders.iter().map(|order| system.settled(order))).await;
    let count = |status: &str| settled.iter().filter(|order| order["status"] == status).count();
    assert_eq!((count("confirmed"), count("rejected")), (20, 30));
    // Rejected orders may still be handing back reservations made before their saga failed.
    eventually(Duration::from_secs(10), "stock settles", async || system.stock_of(product).await == (20, 20, 0)).await;
    system.stop().await;
}

async fn prices_come_from_the_catalog_and_follow_its_changes(mode: Mode) {
    let system = System::start_in(mode).await;
    let product = system.product("Tea", "3.00", 50).await;
    let (status, _) = system
        .call(
            Method::PUT,
            &system.inventory_url(&format!("/api/products/{product}/price")),
            Some(json!({ "price": "3.50" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    eventually(Duration::from_secs(10), "the catalog has the new price", async || {
        let (_, catalog) = system.call(Method::GET, &system.order_url("/api/catalog"), None).await;
        catalog[0]["price"] == "3.50"
    })
    .await;
    let order = system.new_order().await;
    let (_, with_line) = system.add(&order, product, 2).await;
    assert_eq!(
        (with_line["lines"][0]["unitPrice"].clone(), with_line["total"].clone()),
        (json!("3.50"), json!("7.00"))
    );
    system.stop().await;
}

async fn an_idempotency_key_makes_order_creation_safe_to_retry(mode: Mode) {
    let system = System::start_in(mode).await;
    let customer = system.customer;
    let create = |key: &'static str, description: &'static str| {
        system
            .http
            .post(system.order_url("/api/orders"))
            .bearer_auth(&system.customer_token)
            .header("Idempotency-Key", key)
            .json(&json!({ "customerId": customer, "description": description }))
            .send()
    };
    let first = create("checkout-1", "gifts").await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    let again = create("checkout-1", "gifts").await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.json::<Value>().await.unwrap()["id"], first["id"]);
    let misuse = create("checkout-1", "something else").await.unwrap();
    assert_eq!(misuse.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let (_, listed) =
        system.call(Method::GET, &system.order_url(&format!("/api/orders?customerId={customer}")), None).await;
    assert_eq!(listed["orders"].as_array().unwrap().len(), 1);
    system.stop().await;
}

async fn an_idempotency_key_expires_and_is_then_forgotten(mode: Mode) {
    let ttl = Duration::from_secs(5);
    let system = System::with(Options { mode, idempotency_key_ttl: ttl, ..Options::default() }).await;
    let create = || {
        system
            .http
            .post(system.order_url("/api/orders"))
            .bearer_auth(&system.customer_token)
            .header("Idempotency-Key", "checkout-2")
            .json(&json!({ "description": "gifts" }))
            .send()
    };
    let first: Value = create().await.unwrap().json().await.unwrap();
    let again = create().await.unwrap();
    assert_eq!(again.status(), StatusCode::OK, "a repeat within the time to live");
    assert_eq!(again.json::<Value>().await.unwrap()["id"], first["id"]);

    eventually(ttl * 4, "the expired key is deleted", async || system.idempotency_keys().await == 0).await;
    let later = create().await.unwrap();
    assert_eq!(later.status(), StatusCode::CREATED, "an expired key creates a new order");
    assert_ne!(later.json::<Value>().await.unwrap()["id"], first["id"]);
    assert_eq!(system.idempotency_keys().await, 1);
    system.stop().await;
}

/// Overload shedding is the HTTP layer's, the same in both modes; requests are held here by a
/// PostgreSQL row lock, which an embedded system has not.
#[tokio::test]
async fn past_its_limit_of_requests_in_flight_a_service_answers_503_at_once_and_health_stays_open() {
    let system = System::with(Options { max_requests_in_flight: 2, ..Options::default() }).await;
    let product = system.product("Slow", "1.00", 10).await;
    let restock_url = system.inventory_url(&format!("/api/products/{product}/restock"));
    let product_url = system.inventory_url(&format!("/api/products/{product}"));
    // Two restocks wait behind the product's row lock, holding both places.
    let lock = system.stall_product_writes(product).await;
    let restocks: Vec<_> = (0..2)
        .map(|_| {
            let request = system.http.post(&restock_url).bearer_auth(&system.admin).json(&json!({ "quantity": 1 }));
            tokio::spawn(request.send())
        })
        .collect();

    eventually(Duration::from_secs(10), "both restocks wait for the lock", async || {
        system.inventory_lock_waits().await == 2
    })
    .await;

    let refused = system.http.get(&product_url).bearer_auth(&system.admin).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    // Answered while the lock is still held: refused at once, not queued behind the others.
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_eq!(refused.headers()["content-type"], "application/problem+json");
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["type"], "https://shop.example/problems/overloaded", "{problem}");
    for path in ["/health/live", "/health/ready", "/metrics"] {
        let response = system.http.get(system.inventory_url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path} while the API is full");
    }
    let (status, _) = system.call(Method::GET, &system.order_url("/api/catalog"), None).await;
    assert_eq!(status, StatusCode::OK, "the order service has places of its own");

    lock.release().await;
    for restock in restocks {
        assert_eq!(restock.await.unwrap().unwrap().status(), StatusCode::OK);
    }
    assert_eq!(system.stock_of(product).await, (12, 0, 12), "the places are free again");
    system.stop().await;
}

/// The load client against services that take fewer requests than it sends: they refuse the
/// rest at once, the client waits as told and tries again, and every order gets through with
/// every invariant intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_more_load_than_it_takes_a_service_sheds_and_the_load_client_waits_its_turn() {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        load: harness::load::LoadArgs,
    }
    let system = System::with(Options { max_requests_in_flight: 3, ..Options::default() }).await;
    let data_dir = system.data_dir.path().to_str().unwrap();
    let cli = <Cli as clap::Parser>::parse_from([
        "load",
        "--orders",
        "30",
        "--concurrency",
        "12",
        "--products",
        "4",
        "--quiet",
        "--seed",
        "7",
        "--orders-url",
        &system.orders_url,
        "--inventory-url",
        &system.inventory_url,
        "--data-dir",
        data_dir,
    ]);
    let report = harness::load::drive(&cli.load).await.expect("the load run completes");
    harness::load::print_report(&report);
    assert!(report.passed(), "{:#?}", report.violations);
    assert_eq!(report.orders, 30);
    assert!(report.http_shed > 0, "12 customers against 3 places: some requests are refused");
    assert_eq!(report.http_errors, 0, "a refusal is not an error");
    system.stop().await;
}

async fn orders_are_listed_by_customer_and_status_a_page_at_a_time(mode: Mode) {
    let system = System::start_in(mode).await;
    let product = system.product("Pen", "1.00", 100).await;
    let customer = system.customer;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let (_, order) =
            system.call(Method::POST, &system.order_url("/api/orders"), Some(json!({ "customerId": customer }))).await;
        ids.push(order["id"].as_str().unwrap().to_owned());
    }
    system.add(&ids[0], product, 1).await;
    system.command(&ids[0], "place", None).await;
    system.settled(&ids[0]).await;

    let list =
        async |query: String| system.call(Method::GET, &system.order_url(&format!("/api/orders?{query}")), None).await;
    let (_, page) = list(format!("customerId={customer}&limit=2")).await;
    assert_eq!(page["orders"].as_array().unwrap().len(), 2);
    assert_eq!(page["orders"][0]["id"], ids[4].as_str(), "newest first");
    let (_, next) = list(format!("customerId={customer}&limit=2&after={}", page["nextAfter"].as_str().unwrap())).await;
    assert_eq!(next["orders"][0]["id"], ids[2].as_str());
    let (_, confirmed) = list(format!("customerId={customer}&status=confirmed")).await;
    assert_eq!(confirmed["orders"].as_array().unwrap().len(), 1);
    assert_eq!(confirmed["nextAfter"], Value::Null);
    system.stop().await;
}

/// One request of the bad-input table, and the problem it must get.
struct Bad {
    method: Method,
    url: String,
    body: Option<Vec<u8>>,
    content_type: Option<&'static str>,
    headers: Vec<(&'static str, reqwest::header::HeaderValue)>,
    status: StatusCode,
    /// What the problem's detail starts with ("" for any).
    detail: &'static str,
}

fn bad(method: Method, url: String) -> Bad {
    let status = StatusCode::BAD_REQUEST;
    Bad { method, url, body: None, content_type: None, headers: Vec::new(), status, detail: "" }
}

impl Bad {
    fn json(self, body: impl Into<String>) -> Self {
        self.raw(body.into().into_bytes(), Some("application/json"))
    }

    fn raw(self, body: Vec<u8>, content_type: Option<&'static str>) -> Self {
        Self { body: Some(body), content_type, ..self }
    }

    fn header(mut self, name: &'static str, value: &[u8]) -> Self {
        self.headers.push((name, reqwest::header::HeaderValue::from_bytes(value).expect("a sendable header value")));
        self
    }

    fn is(self, status: u16, detail: &'static str) -> Self {
        Self { status: StatusCode::from_u16(status).unwrap(), detail, ..self }
    }
}

async fn bad_input_gets_a_problem_with_the_right_status_and_never_a_500(mode: Mode) {
    let system = System::start_in(mode).await;
    let product = system.product("Cup", "2.00", 10).await;
    let priciest = system.product("Priciest", "99999999999999.99", 10).await;
    let draft = system.new_order().await;
    let empty = system.new_order().await;
    let placed = system.placed_order(&[(product, 1)]).await;
    system.settled(&placed).await;
    let unknown = Uuid::now_v7();
    let customer = system.customer;
    let (o, i) = (system.orders_url.clone(), system.inventory_url.clone());
    let (get, post, put, delete) = (Method::GET, Method::POST, Method::PUT, Method::DELETE);

    let line = |quantity: &str| format!(r#"{{"productId": {product}, "quantity": {quantity}}}"#);
    let new_product = |name: &str, description: &str, price: &str, stock: &str| {
        format!(r#"{{"name": {name}, "description": {description}, "price": {price}, "stock": {stock}}}"#)
    };
    let new_order = |description: &str| format!(r#"{{"customerId": "{customer}", "description": {description}}}"#);
    let orders = format!("{o}/api/orders");
    let products = format!("{i}/api/products");
    let items = format!("{o}/api/orders/{draft}/items");
    let cancel = format!("{o}/api/orders/{draft}/cancel");
    let long = |n: usize| format!("\"{}\"", "x".repeat(n));
    let keyed = |key: &[u8]| bad(Method::POST, orders.clone()).json(new_order("null")).header("idempotency-key", key);
    let cases = vec![
        // malformed JSON, wrong types, missing fields
        bad(post.clone(), orders.clone()).json("{not json").is(400, "the body is not valid JSON"),
        bad(post.clone(), orders.clone()).json(r#"{"customerId": 12}"#).is(400, "customerId: invalid type"),
        bad(post.clone(), orders.clone())
            .json(r#"{"customerId": "not-a-uuid"}"#)
            .is(400, "customerId: UUID parsing failed"),
        bad(post.clone(), orders.clone()).json("{}").is(400, "customerId: required when an admin creates an order"),
        bad(post.clone(), items.clone())
            .json(r#"{"productId": "one", "quantity": 1}"#)
            .is(400, "productId: invalid type"),
        bad(post.clone(), items.clone()).json(r#"{"productId": 1, "quantity": 1.5}"#).is(400, "quantity: invalid type"),
        bad(post.clone(), items.clone()).json(r#"{"productId": 1}"#).is(400, "missing field `quantity`"),
        bad(post.clone(), items.clone()).json(format!("[{product}, 1]")).is(400, "the body must be a JSON object"),
        bad(post.clone(), cancel.clone())
            .json(r#"["an array, not an object"]"#)
            .is(400, "the body must be a JSON object"),
        // text the stores cannot hold or that makes no sense in its field: NUL, control
        // characters, a line break in a one-line name, too long, blank, not UTF-8
        bad(post.clone(), orders.clone())
            .json(new_order(r#""gifts\u0000""#))
            .is(400, "description: a description must not contain U+0000 (character 6)"),
        bad(post.clone(), orders.clone())
            .json(new_order(r#""bell\u0007""#))
            .is(400, "description: a description must not contain U+0007"),
        bad(post.clone(), orders.clone())
            .json(new_order(&long(1001)))
            .is(400, "description: a description is at most 1000 characters (got 1001)"),
        bad(post.clone(), products.clone())
            .json(new_product(r#""Ket\u0000tle""#, "null", r#""2.00""#, "1"))
            .is(400, "name: a product name must not contain U+0000 (character 4)"),
        bad(post.clone(), products.clone())
            .json(new_product(r#""Two\nlines""#, "null", r#""2.00""#, "1"))
            .is(400, "name: a product name must not contain U+000A"),
        bad(post.clone(), products.clone())
            .json(new_product(r#""\u001b[31mRed""#, "null", r#""2.00""#, "1"))
            .is(400, "name: a product name must not contain U+001B"),
        bad(post.clone(), products.clone())
            .json(new_product(r#""Line\u2028break""#, "null", r#""2.00""#, "1"))
            .is(400, "name: a product name must not contain U+2028"),
        bad(post.clone(), products.clone())
            .json(new_product(&long(201), "null", r#""2.00""#, "1"))
            .is(400, "name: a product name is at most 200 characters (got 201)"),
        bad(post.clone(), products.clone())
            .json(new_product(r#""""#, "null", r#""2""#, "1"))
            .is(400, "name: a product name must not be empty"),
        bad(post.clone(), products.clone())
            .json(new_product(r#"" \t ""#, "null", r#""2""#, "1"))
            .is(400, "name: a product name must not contain U+0009"),
        bad(post.clone(), products.clone())
            .json(new_product(r#""Mug""#, r#""\u0000""#, r#""2.00""#, "1"))
            .is(400, "description: a description must not contain U+0000"),
        bad(post.clone(), products.clone())
            .json(new_product(r#""Mug""#, r#""C1\u0085control""#, r#""2.00""#, "1"))
            .is(400, "description: a description must not contain U+0085"),
        bad(post.clone(), products.clone())
            .json(new_product(r#""Mug""#, &long(2001), r#""2.00""#, "1"))
            .is(400, "description: a description is at most 2000 characters (got 2001)"),
        bad(post.clone(), products.clone())
            .json(new_product(r#""\ud800""#, "null", r#""2.00""#, "1"))
            .is(400, "the body is not valid JSON"),
        bad(post.clone(), products.clone())
            .raw(b"{\"name\": \"caf\xe9\", \"price\": \"2\", \"stock\": 1}".to_vec(), Some("application/json"))
            .is(400, "the body is not valid JSON"),
        bad(post.clone(), cancel.clone()).json(r#"{"reason": "  "}"#).is(400, "reason: a reason must not be empty"),
        bad(post.clone(), cancel.clone())
            .json(r#"{"reason": "oops\u0000"}"#)
            .is(400, "reason: a reason must not contain U+0000"),
        bad(post.clone(), cancel.clone())
            .json(r#"{"reason": "del\u007f"}"#)
            .is(400, "reason: a reason must not contain U+007F"),
        bad(post.clone(), cancel.clone())
            .json(format!(r#"{{"reason": {}}}"#, long(501)))
            .is(400, "reason: a reason is at most 500 characters (got 501)"),
        bad(post.clone(), cancel.clone()).json(r#"{"reason": 7}"#).is(400, "reason: invalid type"),
        // headers: the Idempotency-Key is 1 to 255 visible ASCII characters
        keyed(b"").is(400, "Idempotency-Key: an Idempotency-Key must not be empty"),
        keyed(b"has space").is(400, "Idempotency-Key: an Idempotency-Key must not contain U+0020 (character 4)"),
        keyed(b"tab\tkey").is(400, "Idempotency-Key: an Idempotency-Key must not contain U+0009"),
        keyed(&[b'k'; 256]).is(400, "Idempotency-Key: an Idempotency-Key is at most 255 characters (got 256)"),
        keyed(b"caf\xc3\xa9").is(400, "Idempotency-Key: only visible ASCII characters may be sent in a header"),
        keyed(b"\xff\xfe").is(400, "Idempotency-Key: only visible ASCII"),
        // zero, negative and absurd quantities and ids
        bad(post.clone(), items.clone()).json(line("0")).is(400, "quantity: a quantity must be at least 1 (got 0)"),
        bad(post.clone(), items.clone()).json(line("-3")).is(400, "quantity: a quantity must be at least 1 (got -3)"),
        bad(post.clone(), items.clone()).json(line("99999999999")).is(400, "quantity: a quantity is at most 1000000"),
        bad(post.clone(), items.clone()).json(line("1e30")).is(400, "quantity: invalid type"),
        bad(post.clone(), items.clone())
            .json(r#"{"productId": 0, "quantity": 1}"#)
            .is(400, "productId: a product id is a positive integer (got 0)"),
        bad(post.clone(), products.clone())
            .json(new_product(r#""Minus""#, "null", r#""2""#, "-1"))
            .is(400, "stock: must be 0 to 1000000000 (got -1)"),
        bad(post.clone(), products.clone())
            .json(new_product(r#""Heap""#, "null", r#""2""#, "1000000001"))
            .is(400, "stock: must be 0 to 1000000000"),
        bad(post.clone(), format!("{i}/api/products/{product}/restock"))
            .json(r#"{"quantity": 0}"#)
            .is(400, "quantity: a quantity must be at least 1"),
        // prices: exact decimal strings, positive, whole cents, within what the stores hold
        bad(post.clone(), products.clone())
            .json(new_product(r#""Free""#, "null", r#""0""#, "1"))
            .is(400, "a price must be greater than zero"),
        bad(post.clone(), products.clone())
            .json(new_product(r#""Pricey""#, "null", r#""1.999""#, "1"))
            .is(400, "price: an amount of money has at most 2 decimal places"),
        bad(post.clone(), products.clone())
            .json(new_product(r#""Neg""#, "null", r#""-2""#, "1"))
            .is(400, "price: not a decimal amount"),
        bad(post.clone(), products.clone())
            .json(new_product(r#""Num""#, "null", "2.5", "1"))
            .is(400, "price: invalid type"),
        bad(post.clone(), products.clone())
            .json(new_product(r#""Sci""#, "null", r#""1e3""#, "1"))
            .is(400, "price: not a decimal amount"),
        bad(post.clone(), products.clone())
            .json(new_product(r#""Padded""#, "null", r#"" 2""#, "1"))
            .is(400, "price: not a decimal amount"),
        bad(post.clone(), products.clone())
            .json(new_product(r#""Huge""#, "null", r#""100000000000000""#, "1"))
            .is(400, "price: an amount of money is at most 99999999999999.99"),
        bad(put.clone(), format!("{i}/api/products/{product}/price"))
            .json(r#"{"price": "abc"}"#)
            .is(400, "price: not a decimal amount"),
        // query parameters
        bad(get.clone(), format!("{orders}?status=lost")).is(400, "status: unknown variant `lost`"),
        bad(get.clone(), format!("{orders}?status=DRAFT")).is(400, "status: unknown variant `DRAFT`"),
        bad(get.clone(), format!("{orders}?status=%00")).is(400, "status: unknown variant"),
        bad(get.clone(), format!("{orders}?limit=0")).is(400, "limit: must be 1 to 200 (got 0)"),
        bad(get.clone(), format!("{orders}?limit=201")).is(400, "limit: must be 1 to 200 (got 201)"),
        bad(get.clone(), format!("{orders}?limit=ten")).is(400, "limit: invalid digit"),
        bad(get.clone(), format!("{orders}?customerId=bob")).is(400, "customerId: UUID parsing failed"),
        bad(get.clone(), format!("{orders}?after=%FF")).is(400, "after: UUID parsing failed"),
        bad(get.clone(), format!("{products}?limit=501")).is(400, "limit: must be 1 to 500 (got 501)"),
        bad(get.clone(), format!("{products}?after=0")).is(400, "after: a product id is a positive integer (got 0)"),
        // path parameters: non-UUID, non-numeric, out-of-range and unknown ids
        bad(get.clone(), format!("{orders}/12345")).is(400, r#"id: "12345" is not a UUID"#),
        bad(post.clone(), format!("{orders}/xyz/place")).is(400, r#"id: "xyz" is not a UUID"#),
        bad(post.clone(), format!("{orders}/%00/place")).is(400, r#"id: "\0" is not a UUID"#),
        bad(delete.clone(), format!("{orders}/{draft}/items/0"))
            .is(400, "product_id: a product id is a positive integer (got 0)"),
        bad(delete.clone(), format!("{orders}/{draft}/items/x"))
            .is(400, r#"product_id: "x" is not a whole number in range"#),
        bad(get.clone(), format!("{products}/abc")).is(400, r#"id: "abc" is not a whole number in range"#),
        bad(get.clone(), format!("{products}/99999999999999999999"))
            .is(400, "id: \"99999999999999999999\" is not a whole number"),
        bad(get.clone(), format!("{products}/0")).is(400, "id: a product id is a positive integer (got 0)"),
        bad(post.clone(), format!("{products}/-5/restock"))
            .json(r#"{"quantity": 1}"#)
            .is(400, "id: a product id is a positive integer (got -5)"),
        bad(get.clone(), format!("{i}/api/reservations/nope")).is(400, r#"order_id: "nope" is not a UUID"#),
        bad(get.clone(), format!("{orders}/{unknown}")).is(404, "order"),
        bad(post.clone(), format!("{orders}/{unknown}/place")).is(404, "order"),
        bad(delete.clone(), format!("{orders}/{draft}/items/{product}")).is(404, "the order has no line for product"),
        bad(get.clone(), format!("{products}/999999")).is(404, "product 999999"),
        bad(get.clone(), format!("{i}/api/reservations/{unknown}")).is(404, ""),
        bad(post.clone(), format!("{products}/999999/restock")).json(r#"{"quantity": 1}"#).is(404, "product 999999"),
        // bodies that are not JSON, or too large
        bad(post.clone(), orders.clone()).raw(b"{}".to_vec(), None).is(415, "the body must be JSON"),
        bad(post.clone(), orders.clone()).raw(b"{}".to_vec(), Some("text/plain")).is(415, "the body must be JSON"),
        bad(post.clone(), orders.clone()).json(new_order(&long(70_000))).is(413, "the body is larger than 65536 bytes"),
        // transitions the state forbids
        bad(post.clone(), format!("{orders}/{draft}/ship")).is(409, "an order that is draft cannot be shipped"),
        bad(post.clone(), format!("{orders}/{placed}/place")).is(409, ""),
        bad(post.clone(), format!("{orders}/{placed}/items"))
            .json(line("1"))
            .is(409, "lines can only change while the order is a draft"),
        // business rules
        bad(post.clone(), format!("{orders}/{empty}/place")).is(422, "an order needs at least one line"),
        bad(post.clone(), items.clone())
            .json(format!(r#"{{"productId": {priciest}, "quantity": 2}}"#))
            .is(422, "the amount would exceed 99999999999999.99"),
        // unknown routes and methods
        bad(get.clone(), format!("{o}/api/nothing")).is(404, "no route for /api/nothing"),
        bad(Method::PATCH, orders.clone()).is(405, ""),
    ];
    for case in &cases {
        let Bad { method, url, body, content_type, headers, status: expected, detail } = case;
        let mut request = system.http.request(method.clone(), url).bearer_auth(&system.admin);
        if let Some(body) = body {
            request = request.body(body.clone());
        }
        if let Some(content_type) = content_type {
            request = request.header("content-type", *content_type);
        }
        for (name, value) in headers {
            request = request.header(*name, value.clone());
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
        let problem: Value = response.json().await.unwrap_or(Value::Null);
        let what = format!("{method} {url} {headers:?}");
        assert_eq!(status, *expected, "{what}: {problem}");
        assert_eq!(content_type.as_deref(), Some("application/problem+json"), "{what}");
        assert_eq!(problem["status"], expected.as_u16(), "{what}: {problem}");
        let got = problem["detail"].as_str().unwrap_or_default();
        assert!(
            !got.is_empty() && got.starts_with(detail),
            "{what}: the detail should start with {detail:?}: {problem}"
        );
    }
    // Nothing above changed the draft, and no bad text reached a store.
    assert_eq!(system.order(&draft).await["lines"], json!([]));
    let (_, listed) = system.call(Method::GET, &format!("{products}?limit=500"), None).await;
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    system.stop().await;
}

/// Every text field stores and returns what the rules accept: any script, emoji, the widest
/// characters, line breaks where several lines make sense, the longest allowed values.
async fn every_text_the_rules_accept_is_stored_and_returned_as_sent(mode: Mode) {
    let system = System::start_in(mode).await;
    let name = format!("Ωmega 茶碗 🍵 {}", "é".repeat(180));
    let description = format!("two\r\nlines\tand a tab, U+FFFF \u{ffff}, {}", "\u{10ffff}".repeat(1900));
    let body = json!({ "name": format!("  {name}  "), "description": description, "price": "3.50", "stock": 4 });
    let (status, created) = system.call(Method::POST, &system.inventory_url("/api/products"), Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["name"], name.as_str(), "surrounding spaces are trimmed");
    let id = created["id"].as_i64().unwrap();
    let (_, stored) = system.call(Method::GET, &system.inventory_url(&format!("/api/products/{id}")), None).await;
    assert_eq!(
        (stored["name"].as_str(), stored["description"].as_str()),
        (Some(name.as_str()), Some(description.as_str()))
    );

    // The order service's copy of the name, its order lines (JSON in PostgreSQL), its texts.
    eventually(Duration::from_secs(10), "the catalog knows the product", async || {
        let (_, catalog) = system.call(Method::GET, &system.order_url("/api/catalog"), None).await;
        catalog.as_array().is_some_and(|items| items.iter().any(|item| item["productId"] == id))
    })
    .await;
    let order_description = format!("Für Oma\n{}", "😀".repeat(990));
    let body = json!({ "description": order_description });
    let (status, order) =
        system.call_as(&system.customer_token, Method::POST, &system.order_url("/api/orders"), Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    let order = order["id"].as_str().unwrap().to_owned();
    assert_eq!(system.add(&order, id, 1).await.0, StatusCode::OK);
    let reason = format!("Changed my mind\n— {}", "ß".repeat(480));
    let (status, cancelled) = system.command(&order, "cancel", Some(json!({ "reason": reason }))).await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    let stored = system.order(&order).await;
    assert_eq!(stored["description"], order_description.as_str());
    assert_eq!(stored["statusReason"], reason.as_str());
    assert_eq!(stored["lines"][0]["productName"], name.as_str());
    system.stop().await;
}

async fn each_service_reports_health_metrics_and_its_api_document(mode: Mode) {
    let system = System::start_in(mode).await;
    for base in [&system.orders_url, &system.inventory_url] {
        let (status, ready) = system.call(Method::GET, &format!("{base}/health/ready"), None).await;
        assert_eq!((status, ready["status"].clone()), (StatusCode::OK, json!("up")), "{ready}");
        let (status, _) = system.call(Method::GET, &format!("{base}/health/live"), None).await;
        assert_eq!(status, StatusCode::OK);
        let (status, document) = system.call(Method::GET, &format!("{base}/api-docs/openapi.json"), None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(document["paths"].as_object().unwrap().len() >= 5);
        let ui = system.http.get(format!("{base}/docs/")).send().await.unwrap();
        assert_eq!(ui.status(), StatusCode::OK);
        assert!(ui.text().await.unwrap().contains("swagger-ui"));
        let metrics = system.http.get(format!("{base}/metrics")).send().await.unwrap();
        assert_eq!(metrics.status(), StatusCode::OK);
    }
    // A caller's trace context is continued and returned.
    let response = system
        .http
        .get(system.order_url("/health/live"))
        .header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        .send()
        .await
        .unwrap();
    let returned = response.headers()["traceparent"].to_str().unwrap();
    assert!(returned.starts_with("00-0af7651916cd43dd8448eb211c80319c-"), "{returned}");
    system.stop().await;
}

async fn the_saga_records_when_each_line_and_state_changed(mode: Mode) {
    let system = System::start_in(mode).await;
    let kettle = system.product("Kettle", "1.00", 5).await;
    let mug = system.product("Mug", "1.00", 5).await;
    let order = system.placed_order(&[(kettle, 1), (mug, 2)]).await;
    assert_eq!(system.settled(&order).await["status"], "confirmed");
    let saga = system.reservation_in(&order, "reserved").await;

    let history = saga["history"].as_array().unwrap();
    let changes: Vec<(Value, Value, Value)> =
        history.iter().map(|step| (step["state"].clone(), step["productId"].clone(), step["status"].clone())).collect();
    assert_eq!(changes.first(), Some(&(json!("reserving"), Value::Null, Value::Null)), "{saga}");
    assert_eq!(changes.last(), Some(&(json!("reserved"), Value::Null, Value::Null)), "{saga}");
    for product in [kettle, mug] {
        assert!(changes.contains(&(Value::Null, json!(product), json!("reserved"))), "{saga}");
    }
    let at = |value: &Value| chrono::DateTime::parse_from_rfc3339(value.as_str().unwrap()).unwrap();
    let times: Vec<_> = history.iter().map(|step| at(&step["at"])).collect();
    assert!(times.windows(2).all(|pair| pair[0] <= pair[1]), "the history is in order: {saga}");
    assert_eq!(at(&saga["startedAt"]), times[0]);
    for line in saga["lines"].as_array().unwrap() {
        assert!(at(&line["changedAt"]) >= times[0], "{line}");
    }
    system.stop().await;
}

async fn operators_see_the_outbox_the_queues_and_the_dead_letters_and_replay_or_purge_them(mode: Mode) {
    let system = System::start_in(mode).await;
    let kettle = system.product("Kettle", "1.00", 5).await;
    let order = system.placed_order(&[(kettle, 1)]).await;
    assert_eq!(system.settled(&order).await["status"], "confirmed");

    for base in [&system.orders_url, &system.inventory_url] {
        let mut outbox = Value::Null;
        eventually(Duration::from_secs(10), "the outbox is drained", async || {
            outbox = system.call(Method::GET, &format!("{base}/api/admin/outbox"), None).await.1;
            outbox["unsent"] == 0
        })
        .await;
        assert_eq!(outbox["scheduled"], 0, "the timeout was withdrawn: {outbox}");
        assert!(outbox["oldestUnsentAgeSeconds"].is_null(), "{outbox}");
    }
    let (status, queues) = system.call(Method::GET, &system.inventory_url("/api/admin/queues"), None).await;
    assert_eq!(status, StatusCode::OK, "{queues}");
    let saga = queues.as_array().unwrap().iter().find(|queue| queue["consumer"] == "saga").unwrap().clone();
    assert_eq!(
        (saga["depth"].clone(), saga["consumers"].clone(), saga["deadLetters"].clone()),
        (json!(0), json!(1), json!(0))
    );
    assert!(saga["handled"].as_u64().unwrap() >= 2, "order.placed and the stock's answer: {saga}");
    assert!(saga["handledPerSecond"].as_f64().unwrap() > 0.0, "{saga}");

    let poison = messaging::Envelope {
        message_id: Uuid::now_v7(),
        message_type: "inventory.stock-reserved.v1".into(),
        correlation_id: "poison".into(),
        causation_id: None,
        occurred_at: chrono::Utc::now(),
        traceparent: None,
        payload: json!({ "orderId": "not-an-order" }),
    };
    system.publish(poison.clone()).await;
    let letters_url = system.inventory_url("/api/admin/queues/saga/dead-letters");
    let mut letters = Value::Null;
    eventually(Duration::from_secs(10), "the poison is dead-lettered", async || {
        letters = system.call(Method::GET, &letters_url, None).await.1;
        letters.as_array().is_some_and(|letters| letters.len() == 1)
    })
    .await;
    let letter = &letters[0];
    assert_eq!(letter["messageId"], poison.message_id.to_string());
    assert_eq!(letter["messageType"], "inventory.stock-reserved.v1");
    assert!(letter["reason"].as_str().unwrap().contains("does not match its contract"), "{letter}");

    let (status, replayed) = system.call(Method::POST, &format!("{letters_url}/replay"), None).await;
    assert_eq!((status, replayed), (StatusCode::OK, json!({ "count": 1 })));
    eventually(Duration::from_secs(10), "the replayed poison is dead-lettered again", async || {
        system.call(Method::GET, &letters_url, None).await.1.as_array().is_some_and(|letters| letters.len() == 1)
    })
    .await;
    let (status, purged) = system.call(Method::POST, &format!("{letters_url}/purge"), None).await;
    assert_eq!((status, purged), (StatusCode::OK, json!({ "count": 1 })));
    assert_eq!(system.call(Method::GET, &letters_url, None).await.1, json!([]));

    let (status, problem) =
        system.call(Method::GET, &system.inventory_url("/api/admin/queues/nobody/dead-letters"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("saga, stock"), "{problem}");
    system.stop().await;
}
