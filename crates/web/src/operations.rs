//! Operational endpoints: liveness, readiness (every dependency reachable), Prometheus metrics.

use async_trait::async_trait;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use std::sync::Arc;

/// A dependency the service needs to serve requests.
#[async_trait]
pub trait ReadinessCheck: Send + Sync {
    fn name(&self) -> &'static str;
    async fn is_ready(&self) -> bool;
    /// What `/health/ready` shows for it when it is not ready, in place of `down`.
    fn reason(&self) -> Option<String> {
        None
    }
}

#[derive(Clone)]
struct Operations {
    checks: Arc<Vec<Box<dyn ReadinessCheck>>>,
    metrics: Option<PrometheusHandle>,
}

/// `/health/live`, `/health/ready` and `/metrics` (empty when no recorder is installed).
pub fn operations_router(checks: Vec<Box<dyn ReadinessCheck>>, metrics: Option<PrometheusHandle>) -> Router {
    let state = Operations { checks: Arc::new(checks), metrics };
    Router::new()
        .route("/health/live", get(|| async { axum::Json(json!({ "status": "up" })) }))
        .route("/health/ready", get(ready))
        .route("/metrics", get(render_metrics))
        .with_state(state)
}

async fn ready(State(operations): State<Operations>) -> impl IntoResponse {
    let mut report = serde_json::Map::new();
    let mut all_ready = true;
    for check in operations.checks.iter() {
        let ready = tokio::time::timeout(std::time::Duration::from_secs(3), check.is_ready()).await.unwrap_or(false);
        all_ready &= ready;
        let state = if ready { "up".to_owned() } else { check.reason().unwrap_or_else(|| "down".to_owned()) };
        report.insert(check.name().to_owned(), json!(state));
    }
    let status = if all_ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({ "status": if all_ready { "up" } else { "down" }, "checks": report });
    (status, axum::Json(body))
}

async fn render_metrics(State(operations): State<Operations>) -> impl IntoResponse {
    let body = operations.metrics.as_ref().map(PrometheusHandle::render).unwrap_or_default();
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}
