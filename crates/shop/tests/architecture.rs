//! Checks that keep the architecture visible: the domain does no I/O, the application talks to
//! ports rather than drivers, and every integration message has a consumer.

use std::path::{Path, PathBuf};

fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(sources(&path));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
    files
}

/// Every `use` of a forbidden crate or module in the layer's sources, as "file: line".
fn violations(layer: &str, forbidden: &[&str]) -> Vec<String> {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut found = Vec::new();
    for service in ["order", "inventory", "storefront"] {
        for file in sources(&crates.join(service).join("src").join(layer)) {
            let text = std::fs::read_to_string(&file).unwrap();
            for line in text.lines() {
                let code = line.trim();
                let uses = |name: &str| {
                    code.starts_with(&format!("use {name}"))
                        || code.contains(&format!(" {name}::"))
                        || code.contains(&format!("({name}::"))
                        || code.contains(&format!("<{name}::"))
                        || code.starts_with(&format!("{name}::"))
                };
                if forbidden.iter().any(|name| uses(name)) {
                    found.push(format!("{}: {code}", file.display()));
                }
            }
        }
    }
    found
}

#[test]
fn the_domain_does_no_io_and_knows_no_messages() {
    let forbidden = [
        "sqlx",
        "axum",
        "lapin",
        "tokio",
        "reqwest",
        "std::fs",
        "std::net",
        "messaging",
        "contracts",
        "web",
        "tracing",
    ];
    let found = violations("domain", &forbidden);
    assert!(found.is_empty(), "domain code must stay pure:\n{}", found.join("\n"));
}

#[test]
fn the_application_talks_to_ports_not_to_drivers() {
    let forbidden =
        ["sqlx", "axum", "lapin", "reqwest", "web", "messaging::postgres", "messaging::sqlite", "messaging::transport"];
    let found = violations("application", &forbidden);
    assert!(found.is_empty(), "application code must use ports:\n{}", found.join("\n"));
}

#[tokio::test]
async fn every_integration_message_has_a_consumer_and_every_consumer_is_known() {
    use messaging::{Consumer, ConsumerConfig, Handler, Naming};
    use std::sync::Arc;
    use std::time::Duration;

    fn consumer<H: Handler>(service: &'static str, handler: H) -> (&'static str, Consumer) {
        (service, Consumer::new(service, &Naming::new("shop"), Arc::new(handler), ConsumerConfig::default()))
    }

    // Handlers only need their stores to handle messages; a pool that never connects will do.
    let pool = sqlx::PgPool::connect_lazy("postgres://nobody@127.0.0.1:1/none").unwrap();
    let orders = Arc::new(order::infrastructure::PgOrderStore::new(pool.clone()));
    let catalog = Arc::new(order::infrastructure::PgCatalog::new(pool.clone()));
    let products = Arc::new(inventory::infrastructure::PgProductStore::new(pool.clone()));
    let sagas = Arc::new(inventory::infrastructure::PgSagaStore::new(pool));
    let service = Arc::new(order::application::OrderService::new(orders, catalog.clone()));
    let consumers = [
        consumer("order", order::application::CatalogHandler::new(catalog)),
        consumer("order", order::application::ReservationOutcomeHandler::new(service)),
        consumer("inventory", inventory::application::ReservationSagaHandler::new(sagas, Duration::from_secs(1))),
        consumer("inventory", inventory::application::StockHandler::new(products)),
    ];
    let consumed: Vec<&str> =
        consumers.iter().flat_map(|(_, consumer)| &consumer.queue().message_types).map(String::as_str).collect();
    for (message_type, _) in contracts::samples() {
        assert!(consumed.contains(&message_type), "{message_type} has no consumer: it would never leave the outbox");
    }
    let named: Vec<(&str, &str)> = consumers.iter().map(|(service, consumer)| (*service, consumer.name())).collect();
    let declared: Vec<(&str, &str)> = shop::topology::consumers().collect();
    assert_eq!(named, declared, "each service must declare every consumer it runs (the dead-letter tools use them)");
}
