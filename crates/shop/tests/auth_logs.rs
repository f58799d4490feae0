//! Tokens never reach the logs: every log line of both services (and of the libraries under
//! them), at TRACE, while requests with good and bad tokens go through. A test binary of its
//! own, because it owns the process's log subscriber.

mod support;

use reqwest::Method;
use serde_json::json;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use support::System;
use web::auth::Role;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_log_line_contains_a_token() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_env_filter("trace")
        .with_writer(move || writer.clone())
        .try_init()
        .expect("this test binary owns the subscriber");

    let system = System::start().await;
    let product = system.product("Kettle", "24.90", 10).await;
    let order = system.placed_order(&[(product, 1)]).await;
    system.settled(&order).await;
    let an_hour = Duration::from_secs(3600);
    let expired = system.signer.sign_issued_at("admin", Role::Admin, SystemTime::now() - 2 * an_hour, an_hour);
    let (rest, signature) = system.admin.rsplit_once('.').unwrap();
    let tampered = format!("{rest}.{}{}", if signature.starts_with('A') { 'B' } else { 'A' }, &signature[1..]);
    for token in [&expired, &tampered, &"not.a.jwt".to_owned()] {
        let (status, _) =
            system.call_as(token, Method::GET, &system.order_url(&format!("/api/orders/{order}")), None).await;
        assert_eq!(status, 401);
    }
    let (status, _) = system
        .call(Method::POST, &system.order_url("/api/orders"), Some(json!({ "customerId": system.customer })))
        .await;
    assert_eq!(status, 201);
    let (customer, tokens) =
        (system.customer, [system.admin.clone(), system.customer_token.clone(), expired, tampered]);
    system.stop().await;

    let logs = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(
        logs.contains("GET") && logs.contains("/api/orders/"),
        "the requests were not logged at all:\n{logs:.2000}"
    );
    assert!(logs.contains(&format!("customer {customer}")), "the caller is not in the request's span");
    for token in &tokens {
        let signature = token.rsplit_once('.').unwrap().1;
        assert!(!logs.contains(signature), "a token's signature is in the logs");
        let claims = token.split('.').nth(1).unwrap();
        assert!(!logs.contains(claims), "a token's claims are in the logs");
    }
}
