//! Who may do what, route by route: every API endpoint of both running services called with no
//! token, an expired one, a tampered one, one for another audience, and as another customer, as
//! the customer who owns the order, and as an admin.

mod support;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::{Duration, SystemTime};
use support::{System, TOKEN_TTL, issuance};
use uuid::Uuid;
use web::auth::{Issuance, Role, Signer};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Caller {
    NoToken,
    Expired,
    Tampered,
    WrongAudience,
    OtherCustomer,
    Owner,
    Admin,
}

const CALLERS: [Caller; 7] = [
    Caller::NoToken,
    Caller::Expired,
    Caller::Tampered,
    Caller::WrongAudience,
    Caller::OtherCustomer,
    Caller::Owner,
    Caller::Admin,
];

/// What a case needs to exist before it is called (fresh for every caller).
#[derive(Debug, Clone, Copy)]
enum Needs {
    Nothing,
    /// The owner's draft with one line of the product.
    Draft,
    /// The owner's confirmed order.
    Confirmed,
}

struct Case {
    method: Method,
    /// `{o}`/`{i}`: the service's base URL; `{order}`, `{product}`, `{owner}`: the fixture's.
    url: &'static str,
    body: Option<&'static str>,
    needs: Needs,
    /// Status for another customer, the owner, an admin; a bad token always gets 401.
    expected: [u16; 3],
}

fn case(method: Method, url: &'static str, body: Option<&'static str>, needs: Needs, expected: [u16; 3]) -> Case {
    Case { method, url, body, needs, expected }
}

fn cases() -> Vec<Case> {
    use Method as M;
    use Needs::{Confirmed, Draft, Nothing};
    vec![
        case(M::POST, "{o}/api/orders", Some(r#"{"customerId": "{owner}"}"#), Nothing, [403, 201, 201]),
        case(M::GET, "{o}/api/orders?customerId={owner}", None, Nothing, [403, 200, 200]),
        case(M::GET, "{o}/api/orders/{order}", None, Draft, [404, 200, 200]),
        case(
            M::POST,
            "{o}/api/orders/{order}/items",
            Some(r#"{"productId": {product}, "quantity": 1}"#),
            Draft,
            [404, 200, 200],
        ),
        case(M::DELETE, "{o}/api/orders/{order}/items/{product}", None, Draft, [404, 200, 200]),
        case(M::POST, "{o}/api/orders/{order}/place", None, Draft, [404, 200, 200]),
        case(M::POST, "{o}/api/orders/{order}/cancel", Some(r#"{"reason": "no"}"#), Draft, [404, 200, 200]),
        case(M::POST, "{o}/api/orders/{order}/ship", None, Confirmed, [403, 403, 200]),
        case(M::GET, "{o}/api/catalog", None, Nothing, [200, 200, 200]),
        case(M::GET, "{i}/api/products", None, Nothing, [200, 200, 200]),
        case(M::GET, "{i}/api/products/{product}", None, Nothing, [200, 200, 200]),
        case(
            M::POST,
            "{i}/api/products",
            Some(r#"{"name": "Lamp", "price": "9.00", "stock": 1}"#),
            Nothing,
            [403, 403, 201],
        ),
        case(M::POST, "{i}/api/products/{product}/restock", Some(r#"{"quantity": 1}"#), Nothing, [403, 403, 200]),
        case(M::PUT, "{i}/api/products/{product}/price", Some(r#"{"price": "2.50"}"#), Nothing, [403, 403, 200]),
        case(M::GET, "{i}/api/reservations/{order}", None, Confirmed, [403, 403, 200]),
        case(M::GET, "{o}/api/admin/outbox", None, Nothing, [403, 403, 200]),
        case(M::GET, "{i}/api/admin/queues", None, Nothing, [403, 403, 200]),
        case(M::GET, "{i}/api/admin/queues/saga/dead-letters", None, Nothing, [403, 403, 200]),
        case(M::POST, "{o}/api/admin/queues/catalog/dead-letters/replay", None, Nothing, [403, 403, 200]),
        case(M::POST, "{o}/api/admin/queues/reservations/dead-letters/purge", None, Nothing, [403, 403, 200]),
    ]
}

struct Tokens {
    owner: Uuid,
    by_caller: Vec<(Caller, String)>,
}

impl Tokens {
    /// The bad tokens are an admin's, who could otherwise do everything: a refusal is the
    /// token's fault, never the role's.
    fn new(system: &System) -> Self {
        let owner = Uuid::now_v7();
        let signer = &system.signer;
        let an_hour = Duration::from_secs(3600);
        let expired = signer.sign_issued_at("admin", Role::Admin, SystemTime::now() - 2 * an_hour, an_hour);
        let (rest, signature) = system.admin.rsplit_once('.').unwrap();
        let flipped = if signature.starts_with('A') { 'B' } else { 'A' };
        let tampered = format!("{rest}.{flipped}{}", &signature[1..]);
        let elsewhere = Issuance { audience: "another-api".into(), ..issuance() };
        let wrong_audience = Signer::new(&system.key, elsewhere).sign("admin", Role::Admin, TOKEN_TTL);
        let by_caller = vec![
            (Caller::NoToken, String::new()),
            (Caller::Expired, expired),
            (Caller::Tampered, tampered),
            (Caller::WrongAudience, wrong_audience),
            (Caller::OtherCustomer, system.token_of(Uuid::now_v7())),
            (Caller::Owner, system.token_of(owner)),
            (Caller::Admin, system.admin.clone()),
        ];
        Self { owner, by_caller }
    }

    fn of(&self, caller: Caller) -> &str {
        &self.by_caller.iter().find(|(c, _)| *c == caller).unwrap().1
    }
}

/// An order of the owner's, as the case needs it.
async fn fixture(system: &System, tokens: &Tokens, needs: Needs, product: i64) -> String {
    let owner = tokens.of(Caller::Owner);
    let (status, order) = system.call_as(owner, Method::POST, &system.order_url("/api/orders"), Some(json!({}))).await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    assert_eq!(order["customerId"], tokens.owner.to_string(), "the token decides whose order it is");
    let id = order["id"].as_str().unwrap().to_owned();
    if let Needs::Draft | Needs::Confirmed = needs {
        let line = json!({ "productId": product, "quantity": 1 });
        let (status, body) = system
            .call_as(owner, Method::POST, &system.order_url(&format!("/api/orders/{id}/items")), Some(line))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    if let Needs::Confirmed = needs {
        let (status, body) =
            system.call_as(owner, Method::POST, &system.order_url(&format!("/api/orders/{id}/place")), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(system.settled(&id).await["status"], "confirmed");
    }
    id
}

#[tokio::test]
async fn every_endpoint_answers_each_caller_as_its_role_allows() {
    let system = System::start().await;
    let tokens = Tokens::new(&system);
    let product = system.product("Kettle", "24.90", 1000).await;
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in cases() {
        for caller in CALLERS {
            let order = fixture(&system, &tokens, case.needs, product).await;
            let fill = |text: &str| {
                text.replace("{o}", &system.orders_url)
                    .replace("{i}", &system.inventory_url)
                    .replace("{order}", &order)
                    .replace("{product}", &product.to_string())
                    .replace("{owner}", &tokens.owner.to_string())
            };
            let url = fill(case.url);
            let mut request = system.http.request(case.method.clone(), &url);
            if caller != Caller::NoToken {
                request = request.bearer_auth(tokens.of(caller));
            }
            if let Some(body) = case.body {
                request = request.header("content-type", "application/json").body(fill(body));
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let challenge = response.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned());
            let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
            let answer: Value = response.json().await.unwrap_or(Value::Null);
            let (expected, refused_because) = match caller {
                Caller::NoToken => (401, Some("needs a bearer token")),
                Caller::Expired => (401, Some("expired")),
                Caller::Tampered => (401, Some("signature")),
                Caller::WrongAudience => (401, Some("audience")),
                Caller::OtherCustomer => (case.expected[0], None),
                Caller::Owner => (case.expected[1], None),
                Caller::Admin => (case.expected[2], None),
            };
            checked += 1;
            let what = format!("{} {} as {caller:?}", case.method, case.url);
            if status != expected {
                failures.push(format!("{what}: expected {expected}, got {status}: {answer}"));
                continue;
            }
            if status >= 400 && content_type.as_deref() != Some("application/problem+json") {
                failures.push(format!("{what}: {status} without problem+json ({content_type:?})"));
            }
            if let Some(reason) = refused_because {
                let detail = answer["detail"].as_str().unwrap_or_default();
                if !detail.contains(reason) || !challenge.as_deref().is_some_and(|c| c.starts_with("Bearer")) {
                    failures.push(format!(
                        "{what}: 401 should say {reason:?} with a Bearer challenge: {answer} {challenge:?}"
                    ));
                }
            }
        }
    }
    assert_eq!(checked, cases().len() * CALLERS.len());
    assert!(failures.is_empty(), "{} of {checked} calls answered wrongly:\n{}", failures.len(), failures.join("\n"));
    system.stop().await;
}

#[tokio::test]
async fn a_customer_lists_only_its_own_orders() {
    let system = System::start().await;
    let mine = system.new_order().await;
    let stranger = Uuid::now_v7();
    let theirs = {
        let token = system.token_of(stranger);
        let (_, order) = system.call_as(&token, Method::POST, &system.order_url("/api/orders"), Some(json!({}))).await;
        order["id"].as_str().unwrap().to_owned()
    };
    let ids = |page: &Value| -> Vec<String> {
        page["orders"].as_array().unwrap().iter().map(|o| o["id"].as_str().unwrap().to_owned()).collect()
    };
    let (status, page) =
        system.call_as(&system.customer_token, Method::GET, &system.order_url("/api/orders"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&page), vec![mine.clone()], "a customer's list showed someone else's order");
    let (status, page) = system.call(Method::GET, &system.order_url("/api/orders"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(ids(&page).contains(&mine) && ids(&page).contains(&theirs), "an admin sees every order");
    // An admin creates orders for a named customer, and must name one.
    let (status, order) =
        system.call(Method::POST, &system.order_url("/api/orders"), Some(json!({ "customerId": stranger }))).await;
    assert_eq!((status, order["customerId"].clone()), (StatusCode::CREATED, json!(stranger)));
    let (status, problem) = system.call(Method::POST, &system.order_url("/api/orders"), Some(json!({}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(problem["detail"].as_str().unwrap().contains("customerId"), "{problem}");
    system.stop().await;
}

#[tokio::test]
async fn health_metrics_and_docs_stay_open_and_the_documents_declare_the_scheme() {
    let system = System::start().await;
    for base in [&system.orders_url, &system.inventory_url] {
        for path in ["/health/live", "/health/ready", "/metrics", "/docs/", "/api-docs/openapi.json"] {
            let response = system.http.get(format!("{base}{path}")).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{base}{path} needs no token");
        }
        let document: Value =
            system.http.get(format!("{base}/api-docs/openapi.json")).send().await.unwrap().json().await.unwrap();
        let scheme = &document["components"]["securitySchemes"]["bearerAuth"];
        assert_eq!((scheme["type"].as_str(), scheme["scheme"].as_str()), (Some("http"), Some("bearer")), "{scheme}");
        let mut operations = 0;
        for (path, item) in document["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                operations += 1;
                assert_eq!(operation["security"], json!([{ "bearerAuth": [] }]), "{method} {path}");
                assert!(operation["responses"]["401"].is_object(), "{method} {path} does not declare 401");
            }
        }
        assert!(operations >= 6, "{operations} operations");
    }
    // The admin-only operations say so.
    let document: Value = system
        .http
        .get(format!("{}/api-docs/openapi.json", system.inventory_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(document["paths"]["/api/products"]["post"]["responses"]["403"].is_object());
    assert!(document["paths"]["/api/products"]["get"]["responses"]["403"].is_null());
    system.stop().await;
}
