//! The OpenAPI documents are the truth: every route has its operation and every operation its
//! route, and Schemathesis, reading each service's own document, finds nothing wrong with what
//! the running services answer (every check but `positive_data_acceptance`, bounded in time,
//! from a fixed seed).
//!
//! Schemathesis comes from PyPI into the repository's `.venv` (`.ci/run` installs it).

mod support;

use regex::Regex;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;
use support::System;
use uuid::Uuid;

/// The version `.ci/run` installs.
const SCHEMATHESIS_VERSION: &str = "4.32.5";
const SEED: &str = "20261127";
/// Seconds of testing per service; both services are tested at once.
const MAX_TIME_S: &str = "30";

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// `.venv/bin/schemathesis`, at the version CI pins; the test fails (never passes quietly)
/// without it.
fn schemathesis() -> PathBuf {
    let path = repository().join(".venv/bin/schemathesis");
    let install = format!(
        "run .ci/run, or at the repository root: python3 -m venv .venv && .venv/bin/pip install \
         schemathesis=={SCHEMATHESIS_VERSION}"
    );
    let version = std::process::Command::new(&path).arg("--version").output();
    match version {
        Ok(output) if String::from_utf8_lossy(&output.stdout).contains(SCHEMATHESIS_VERSION) => path,
        Ok(output) => panic!(
            "{} is not Schemathesis {SCHEMATHESIS_VERSION} ({}): {install}",
            path.display(),
            String::from_utf8_lossy(&output.stdout).trim()
        ),
        Err(error) => panic!("{} cannot run ({error}): {install}", path.display()),
    }
}

/// Runs Schemathesis against one service's document, as the holder of `token`.
async fn run_schemathesis(binary: &Path, base_url: &str, token: &str, work: &Path) -> Output {
    tokio::process::Command::new(binary)
        .args(["--config-file", "schemathesis.toml", "--no-color", "run"])
        .arg(format!("{base_url}/api-docs/openapi.json"))
        .args(["--checks", "all", "--exclude-checks", "positive_data_acceptance"])
        .args(["--seed", SEED, "--max-time", MAX_TIME_S, "--request-timeout", "10"])
        .args(["--generation-database", "none"])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .current_dir(work)
        .env("NO_COLOR", "1")
        .kill_on_drop(true)
        .output()
        .await
        .expect("schemathesis runs")
}

#[tokio::test]
async fn schemathesis_finds_nothing_wrong_with_either_service() {
    let binary = schemathesis();
    // Its own directory and an empty configuration: no stray schemathesis.toml applies, and
    // nothing is written into the repository.
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("schemathesis.toml"), "").unwrap();
    let system = System::start().await;
    // Ids that exist: products, and an order of the customer's.
    system.product("Kettle", "24.90", 50).await;
    system.product("Mug", "4.50", 50).await;
    system.new_order().await;

    // The order service as a customer (its main user; shipping answers 403), the inventory
    // service as an admin (who alone changes it).
    let (orders, inventory) = tokio::join!(
        run_schemathesis(&binary, &system.orders_url, &system.customer_token, work.path()),
        run_schemathesis(&binary, &system.inventory_url, &system.admin, work.path()),
    );
    system.stop().await;
    let mut failed = Vec::new();
    for (service, output) in [("order", orders), ("inventory", inventory)] {
        let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        println!("===== Schemathesis against the {service} service =====\n{report}");
        if !output.status.success() {
            failed.push(format!("the {service} service ({}):\n{report}", output.status));
        }
    }
    assert!(failed.is_empty(), "Schemathesis found problems with {}", failed.join("\n\n"));
}

/// Every `(METHOD, path)` a document declares.
fn documented(document: &Value) -> BTreeSet<(String, String)> {
    let mut operations = BTreeSet::new();
    for (path, item) in document["paths"].as_object().expect("a document with paths") {
        for method in item.as_object().unwrap().keys() {
            operations.insert((method.to_uppercase(), path.clone()));
        }
    }
    operations
}

/// Every `(METHOD, path)` the service's HTTP sources route: `.route("/path", get(a).post(b))`,
/// with the operators' routes every service mounts (`web::admin`).
fn routed(service: &str) -> BTreeSet<(String, String)> {
    let route = Regex::new(r#"\.route\(\s*"([^"]+)"\s*,((?s:.*?))(?:\.route\(|\.with_state\(|;)"#).unwrap();
    let method = Regex::new(r"(?:^|[\s.(])(get|post|put|delete|patch)\(").unwrap();
    let crates = repository().join("crates");
    let http = std::fs::read_dir(crates.join(service).join("src/http")).unwrap().map(|entry| entry.unwrap().path());
    let mut routes = BTreeSet::new();
    for file in http.chain([crates.join("web/src/admin.rs")]) {
        let source = std::fs::read_to_string(file).unwrap();
        let mut rest = source.as_str();
        while let Some(found) = route.captures(rest) {
            let path = found[1].to_owned();
            for name in method.captures_iter(&found[2]) {
                routes.insert((name[1].to_uppercase(), path.clone()));
            }
            rest = &rest[found.get(2).unwrap().end()..];
        }
    }
    routes
}

/// A path of the document with each parameter filled in.
fn concrete(path: &str) -> String {
    let parameter = Regex::new(r"\{([^}]+)\}").unwrap();
    parameter
        .replace_all(path, |name: &regex::Captures<'_>| match &name[1] {
            "id" if path.starts_with("/api/products") => "1".to_owned(),
            "product_id" => "1".to_owned(),
            _ => Uuid::now_v7().to_string(),
        })
        .into_owned()
}

#[tokio::test]
async fn every_route_has_its_operation_in_the_document_and_every_operation_its_route() {
    let system = System::start().await;
    for (service, base) in [("order", &system.orders_url), ("inventory", &system.inventory_url)] {
        let (status, document) = system.call(Method::GET, &format!("{base}/api-docs/openapi.json"), None).await;
        assert_eq!(status, StatusCode::OK);
        let documented = documented(&document);
        let routed = routed(service);
        assert!(!routed.is_empty(), "no routes found in the {service} sources");
        assert_eq!(documented, routed, "the {service} document and its routes differ");

        // And the running service agrees: a documented operation reaches a handler (whatever
        // it answers, not "no route" or 405); any other method on its path is 405.
        let paths: BTreeSet<&String> = documented.iter().map(|(_, path)| path).collect();
        for path in paths {
            let url = format!("{base}{}", concrete(path));
            for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
                let (status, answer) = system.call(Method::from_bytes(method.as_bytes()).unwrap(), &url, None).await;
                let no_route = answer["detail"].as_str().is_some_and(|detail| detail.starts_with("no route"));
                if documented.contains(&(method.to_owned(), path.clone())) {
                    assert!(status != StatusCode::METHOD_NOT_ALLOWED && !no_route, "{method} {url}: {status} {answer}");
                } else {
                    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {url} is not documented: {answer}");
                }
            }
        }
    }
    system.stop().await;
}

/// The documents state the limits the services enforce, from the same constants.
#[tokio::test]
async fn the_documents_state_the_limits_the_services_enforce() {
    use utoipa::OpenApi;
    let orders = serde_json::to_value(order::http::ApiDoc::openapi()).unwrap();
    let inventory = serde_json::to_value(inventory::http::ApiDoc::openapi()).unwrap();
    let schema = |document: &Value, name: &str| document["components"]["schemas"][name].clone();

    let name = schema(&inventory, "ProductName");
    assert_eq!((name["minLength"].as_u64(), name["maxLength"].as_u64()), (Some(1), Some(200)), "{name}");
    assert!(name["pattern"].as_str().unwrap().contains(r"\u0000-\u001F"), "{name}");
    assert_eq!(schema(&inventory, "ProductDescription")["maxLength"], 2000);
    assert_eq!(schema(&orders, "Reason")["maxLength"], 500);
    assert_eq!(schema(&orders, "OrderDescription")["minLength"], 0);
    let key = schema(&orders, "IdempotencyKey");
    assert_eq!((key["maxLength"].as_u64(), key["pattern"].as_str()), (Some(255), Some("^[!-~]*$")), "{key}");
    let quantity = schema(&orders, "Quantity");
    assert_eq!(
        (quantity["minimum"].as_u64(), quantity["maximum"].as_u64()),
        (Some(1), Some(u64::from(kernel::Quantity::MAX)))
    );
    assert_eq!(schema(&inventory, "ProductId")["minimum"], 1);
    let lines = &schema(&orders, "CreateOrderRequest")["properties"]["lines"];
    assert_eq!(lines["maxItems"].as_u64(), Some(order::domain::Order::MAX_LINES as u64), "{lines}");
    let stock = &schema(&inventory, "CreateProductRequest")["properties"]["stock"];
    assert_eq!(stock["maximum"].as_u64(), Some(u64::from(inventory::domain::Product::MAX_STOCK)), "{stock}");
    let statuses = schema(&orders, "OrderStatusName")["enum"].clone();
    assert_eq!(statuses, serde_json::json!(["draft", "placed", "confirmed", "rejected", "shipped", "cancelled"]));

    // Every reference resolves; every operation declares 401 and 503, those with a body 413
    // and 415.
    let reference = Regex::new(r##""\$ref":"#/components/schemas/([^"]+)""##).unwrap();
    for document in [&orders, &inventory] {
        let text = document.to_string();
        for reference in reference.captures_iter(&text) {
            assert!(document["components"]["schemas"][&reference[1]].is_object(), "{} is not defined", &reference[1]);
        }
        for (path, item) in document["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                let responses = operation["responses"].as_object().unwrap();
                for status in ["401", "503"] {
                    assert!(responses.contains_key(status), "{method} {path} does not declare {status}");
                }
                if operation.get("requestBody").is_some() {
                    for status in ["400", "413", "415"] {
                        assert!(responses.contains_key(status), "{method} {path} does not declare {status}");
                    }
                }
            }
        }
    }
}
