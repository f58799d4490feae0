//! A running service whose consumer stops: `/health/ready` answers 503 naming it, and
//! `/metrics` counts it, on PostgreSQL and embedded (SQLite). The transport is the in-memory
//! one, except that the stream of one queue ends, as no real broker's does; everything else
//! (database, relay, HTTP, the supervisor) is the service's own.

use async_trait::async_trait;
use messaging::testing::{TestDatabase, eventually};
use messaging::transport::memory::MemoryTransport;
use messaging::transport::{Deliveries, QueueSpec, Transport, TransportError};
use messaging::{Envelope, Naming};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::Value;
use shop::{OrderSettings, Runtime, Tuning};
use std::sync::Arc;
use std::time::Duration;
use web::auth::{Issuance, KeySource, LocalKey, Verifier};

/// The in-memory transport, but the deliveries of `ending` end at once.
struct EndingStream {
    inner: MemoryTransport,
    ending: String,
}

#[async_trait]
impl Transport for EndingStream {
    async fn publish(&self, messages: &[Envelope]) -> Result<(), TransportError> {
        self.inner.publish(messages).await
    }

    async fn declare(&self, queue: &QueueSpec) -> Result<(), TransportError> {
        self.inner.declare(queue).await
    }

    async fn consume(&self, queue: &QueueSpec) -> Result<Deliveries, TransportError> {
        if queue.name == self.ending {
            return Ok(Box::pin(futures::stream::empty()));
        }
        self.inner.consume(queue).await
    }

    async fn is_ready(&self) -> bool {
        true
    }
}

#[tokio::test]
async fn a_consumer_that_stops_turns_readiness_to_503_naming_it_and_is_counted_in_both_modes() {
    // One process has one metrics recorder: the second run counts the second stop.
    let metrics = shop::telemetry::init_metrics().unwrap();
    let db = TestDatabase::empty().await;
    a_consumer_stops(Some(db.url.clone()), None, &metrics, 1).await;
    let dir = tempfile::tempdir().unwrap();
    a_consumer_stops(None, Some(dir.path().to_owned()), &metrics, 2).await;
}

/// The order service on the PostgreSQL database `database_url`, or embedded in `embedded_dir`,
/// with a consumer that stops: the `stops`th counted.
async fn a_consumer_stops(
    database_url: Option<String>,
    embedded_dir: Option<std::path::PathBuf>,
    metrics: &PrometheusHandle,
    stops: u32,
) {
    let naming = Naming::new("supervision");
    let ending = naming.queue(order::application::SERVICE, "catalog");
    let issuance = Issuance { issuer: "shop".into(), audience: "shop-api".into() };
    let runtime = Runtime {
        transport: Arc::new(EndingStream { inner: MemoryTransport::new(), ending }),
        naming,
        tuning: Tuning { db_pool_size: 4, ..Tuning::default() },
        metrics: Some(metrics.clone()),
        verifier: Arc::new(Verifier::new(KeySource::Local(LocalKey::generate()), &issuance).unwrap()),
        local_consumers: Arc::default(),
        embedded_dir,
    };
    let settings = OrderSettings {
        database_url,
        http_addr: "127.0.0.1:0".parse().unwrap(),
        idempotency_key_ttl: Duration::from_secs(3600),
    };
    let service = shop::start_order(&settings, &runtime).await.expect("the order service starts");
    let base = format!("http://{}", service.http_addr);
    let http = reqwest::Client::new();

    let mut answer = (reqwest::StatusCode::OK, Value::Null);
    eventually(Duration::from_secs(10), "readiness answers 503", async || {
        let response = http.get(format!("{base}/health/ready")).send().await.unwrap();
        answer = (response.status(), response.json().await.unwrap());
        answer.0 == reqwest::StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    let checks = &answer.1["checks"];
    assert_eq!(checks["tasks"], "stopped: consumer catalog", "{}", answer.1);
    assert_eq!((checks["database"].as_str(), checks["broker"].as_str()), (Some("up"), Some("up")));

    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    let stopped: Vec<&str> =
        metrics.lines().filter(|line| line.starts_with("background_tasks_stopped_total")).collect();
    let catalog = format!(r#"background_tasks_stopped_total{{service="order",task="consumer catalog"}} {stops}"#);
    assert!(stopped.contains(&catalog.as_str()), "{stopped:#?}");
    assert!(stopped.contains(&r#"background_tasks_stopped_total{service="order",task="relay"} 0"#), "{stopped:#?}");
    service.stop().await;
}
