//! End-to-end: both services with their own databases over the real RabbitMQ, driven only
//! through their HTTP APIs (the product-row lock in two tests is the one exception: it stands
//! in for a slow warehouse database).

mod support;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;
use support::{System, eventually};
use uuid::Uuid;

#[tokio::test]
async fn a_several_line_order_is_confirmed_with_the_right_total_and_stock() {
    let system = System::start().await;
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

#[tokio::test]
async fn insufficient_stock_rejects_the_order_and_releases_every_partial_reservation() {
    let system = System::start().await;
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

#[tokio::test]
async fn an_unknown_product_is_refused_when_added() {
    let system = System::start().await;
    let order = system.new_order().await;
    let (status, problem) = system.add(&order, 424_242, 1).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["detail"], "product 424242 is not in the catalog");
    assert_eq!(system.order(&order).await["lines"], json!([]));
    system.stop().await;
}

/// Holds the product's row lock from the test's own connection, so that the stock handler's
/// write waits as it would behind a slow warehouse database.
async fn lock_product(system: &System, product: i64) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut lock = system.inventory_db.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM products WHERE id = $1 FOR UPDATE").bind(product).execute(&mut *lock).await.unwrap();
    lock
}

#[tokio::test]
async fn a_reservation_that_times_out_rejects_the_order_and_releases_late_reservations() {
    let system = System::with_reservation_timeout(Duration::from_millis(800)).await;
    let quick = system.product("Quick", "1.00", 10).await;
    let slow = system.product("Slow", "1.00", 10).await;
    let lock = lock_product(&system, slow).await;
    let order = system.placed_order(&[(quick, 1), (slow, 1)]).await;

    let rejected = system.settled(&order).await;
    assert_eq!(rejected["status"], "rejected");
    assert_eq!(rejected["statusReason"], "stock reservation timed out after 800ms");
    lock.rollback().await.unwrap();
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

#[tokio::test]
async fn cancelling_while_stock_is_being_reserved_releases_it() {
    let system = System::start().await;
    let slow = system.product("Slow", "3.00", 4).await;
    let lock = lock_product(&system, slow).await;
    let order = system.placed_order(&[(slow, 2)]).await;
    let (status, cancelled) = system.command(&order, "cancel", Some(json!({ "reason": "changed my mind" }))).await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
    let reservation = system.reservation_in(&order, "failed").await;
    assert_eq!(reservation["failureReason"], "order cancelled");
    lock.rollback().await.unwrap();

    eventually(Duration::from_secs(10), "the late reservation released", async || {
        let (_, reservation) = system.reservation(&order).await;
        reservation["lines"][0]["status"] == "released"
    })
    .await;
    eventually(Duration::from_secs(10), "stock released", async || system.stock_of(slow).await == (4, 0, 4)).await;
    assert_eq!(system.order(&order).await["status"], "cancelled", "a late outcome changed a cancelled order");
    system.stop().await;
}

#[tokio::test]
async fn cancelling_a_confirmed_order_releases_its_stock() {
    let system = System::start().await;
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

#[tokio::test]
async fn shipping_a_confirmed_order_deducts_its_stock() {
    let system = System::start().await;
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

#[tokio::test]
async fn a_damaged_saga_row_answers_500_and_its_next_message_is_dead_lettered_at_once() {
    let system = System::start().await;
    let product = system.product("Vase", "12.00", 3).await;
    let order = system.placed_order(&[(product, 1)]).await;
    assert_eq!(system.settled(&order).await["status"], "confirmed");
    system.reservation_in(&order, "reserved").await;
    // A line that names no product: the row no longer restores into a saga.
    sqlx::query(
        "UPDATE reservation_sagas SET lines = '[{\"productId\": 0, \"quantity\": 1, \"status\": \"reserved\"}]' \
         WHERE order_id = $1",
    )
    .bind(Uuid::parse_str(&order).unwrap())
    .execute(&system.inventory_db.pool)
    .await
    .unwrap();

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

#[tokio::test]
async fn fifty_concurrent_orders_for_twenty_units_confirm_exactly_twenty() {
    let system = System::start().await;
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

#[tokio::test]
async fn prices_come_from_the_catalog_and_follow_its_changes() {
    let system = System::start().await;
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

#[tokio::test]
async fn an_idempotency_key_makes_order_creation_safe_to_retry() {
    let system = System::start().await;
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

#[tokio::test]
async fn orders_are_listed_by_customer_and_status_a_page_at_a_time() {
    let system = System::start().await;
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

#[tokio::test]
async fn bad_input_gets_a_problem_with_the_right_status_and_never_a_500() {
    let system = System::start().await;
    let product = system.product("Cup", "2.00", 10).await;
    let draft = system.new_order().await;
    let empty = system.new_order().await;
    let placed = system.placed_order(&[(product, 1)]).await;
    system.settled(&placed).await;
    let unknown = Uuid::now_v7();
    let (o, i) = (system.orders_url.clone(), system.inventory_url.clone());

    let line = |quantity: &str| format!(r#"{{"productId": {product}, "quantity": {quantity}}}"#);
    let cases: Vec<(Method, String, Option<String>, StatusCode)> = vec![
        // malformed JSON, wrong types, missing fields
        (Method::POST, format!("{o}/api/orders"), Some("{not json".into()), StatusCode::BAD_REQUEST),
        (Method::POST, format!("{o}/api/orders"), Some(r#"{"customerId": 12}"#.into()), StatusCode::BAD_REQUEST),
        (
            Method::POST,
            format!("{o}/api/orders"),
            Some(r#"{"customerId": "not-a-uuid"}"#.into()),
            StatusCode::BAD_REQUEST,
        ),
        (Method::POST, format!("{o}/api/orders"), Some("{}".into()), StatusCode::BAD_REQUEST),
        (
            Method::POST,
            format!("{o}/api/orders/{draft}/items"),
            Some(r#"{"productId": "one", "quantity": 1}"#.into()),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            format!("{o}/api/orders/{draft}/items"),
            Some(r#"{"productId": 1, "quantity": 1.5}"#.into()),
            StatusCode::BAD_REQUEST,
        ),
        // zero, negative and absurd quantities
        (Method::POST, format!("{o}/api/orders/{draft}/items"), Some(line("0")), StatusCode::BAD_REQUEST),
        (Method::POST, format!("{o}/api/orders/{draft}/items"), Some(line("-3")), StatusCode::BAD_REQUEST),
        (Method::POST, format!("{o}/api/orders/{draft}/items"), Some(line("99999999999")), StatusCode::BAD_REQUEST),
        (
            Method::POST,
            format!("{o}/api/orders/{draft}/items"),
            Some(r#"{"productId": 0, "quantity": 1}"#.into()),
            StatusCode::BAD_REQUEST,
        ),
        // non-UUID and unknown ids
        (Method::GET, format!("{o}/api/orders/12345"), None, StatusCode::BAD_REQUEST),
        (Method::POST, format!("{o}/api/orders/xyz/place"), None, StatusCode::BAD_REQUEST),
        (Method::GET, format!("{o}/api/orders/{unknown}"), None, StatusCode::NOT_FOUND),
        (Method::POST, format!("{o}/api/orders/{unknown}/place"), None, StatusCode::NOT_FOUND),
        (Method::DELETE, format!("{o}/api/orders/{draft}/items/{product}"), None, StatusCode::NOT_FOUND),
        (Method::GET, format!("{i}/api/products/999999"), None, StatusCode::NOT_FOUND),
        (Method::GET, format!("{i}/api/products/abc"), None, StatusCode::BAD_REQUEST),
        (Method::GET, format!("{i}/api/reservations/{unknown}"), None, StatusCode::NOT_FOUND),
        (Method::GET, format!("{i}/api/reservations/nope"), None, StatusCode::BAD_REQUEST),
        // transitions the state forbids
        (Method::POST, format!("{o}/api/orders/{draft}/ship"), None, StatusCode::CONFLICT),
        (Method::POST, format!("{o}/api/orders/{placed}/place"), None, StatusCode::CONFLICT),
        (Method::POST, format!("{o}/api/orders/{placed}/items"), Some(line("1")), StatusCode::CONFLICT),
        // business rules
        (Method::POST, format!("{o}/api/orders/{empty}/place"), None, StatusCode::UNPROCESSABLE_ENTITY),
        // invalid values
        (
            Method::POST,
            format!("{o}/api/orders/{draft}/cancel"),
            Some(r#"{"reason": "  "}"#.into()),
            StatusCode::BAD_REQUEST,
        ),
        (Method::GET, format!("{o}/api/orders?status=lost"), None, StatusCode::BAD_REQUEST),
        (Method::GET, format!("{o}/api/orders?limit=0"), None, StatusCode::BAD_REQUEST),
        (Method::GET, format!("{o}/api/orders?customerId=bob"), None, StatusCode::BAD_REQUEST),
        (
            Method::POST,
            format!("{i}/api/products"),
            Some(r#"{"name": "Free", "price": "0", "stock": 1}"#.into()),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            format!("{i}/api/products"),
            Some(r#"{"name": "Pricey", "price": "1.999", "stock": 1}"#.into()),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            format!("{i}/api/products"),
            Some(r#"{"name": "Neg", "price": "-2", "stock": 1}"#.into()),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            format!("{i}/api/products"),
            Some(r#"{"name": "Num", "price": 2.5, "stock": 1}"#.into()),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            format!("{i}/api/products"),
            Some(r#"{"name": "", "price": "2", "stock": 1}"#.into()),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            format!("{i}/api/products"),
            Some(r#"{"name": "Minus", "price": "2", "stock": -1}"#.into()),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            format!("{i}/api/products/{product}/restock"),
            Some(r#"{"quantity": 0}"#.into()),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            format!("{i}/api/products/{product}/price"),
            Some(r#"{"price": "abc"}"#.into()),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            format!("{i}/api/products/999999/restock"),
            Some(r#"{"quantity": 1}"#.into()),
            StatusCode::NOT_FOUND,
        ),
        // unknown routes and methods
        (Method::GET, format!("{o}/api/nothing"), None, StatusCode::NOT_FOUND),
        (Method::PATCH, format!("{o}/api/orders"), None, StatusCode::METHOD_NOT_ALLOWED),
    ];
    for (method, url, body, expected) in cases {
        let mut request = system.http.request(method.clone(), &url).bearer_auth(&system.admin);
        if let Some(body) = &body {
            request = request.header("content-type", "application/json").body(body.clone());
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
        let problem: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, expected, "{method} {url} {body:?}: {problem}");
        assert_eq!(content_type.as_deref(), Some("application/problem+json"), "{method} {url}");
        assert_eq!(problem["status"], expected.as_u16(), "{method} {url}: {problem}");
        assert!(problem["detail"].as_str().is_some_and(|d| !d.is_empty()), "{method} {url}: {problem}");
    }
    // A body that is not JSON at all, and one without a content type.
    let no_type =
        system.http.post(format!("{o}/api/orders")).bearer_auth(&system.admin).body("{}").send().await.unwrap();
    assert_eq!(no_type.status(), StatusCode::BAD_REQUEST);
    // Nothing above changed the draft.
    assert_eq!(system.order(&draft).await["lines"], json!([]));
    system.stop().await;
}

#[tokio::test]
async fn each_service_reports_health_metrics_and_its_api_document() {
    let system = System::start().await;
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

#[tokio::test]
async fn the_saga_records_when_each_line_and_state_changed() {
    let system = System::start().await;
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

#[tokio::test]
async fn operators_see_the_outbox_the_queues_and_the_dead_letters_and_replay_or_purge_them() {
    let system = System::start().await;
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
