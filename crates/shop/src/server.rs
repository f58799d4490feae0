//! The HTTP side of a service: its API with the shared middleware, the OpenAPI document and
//! its browsable UI, and the operational endpoints.

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;
use std::time::Duration;
use tower_http::catch_panic::CatchPanicLayer;
use utoipa_swagger_ui::SwaggerUi;
use web::auth::Verifier;
use web::{InFlightLimit, Problem, ReadinessCheck};

pub struct HttpApp {
    pub service: &'static str,
    pub api: Router,
    /// Checks the bearer token of every API request (not of the docs, health or metrics).
    pub verifier: Arc<Verifier>,
    pub openapi: utoipa::openapi::OpenApi,
    pub checks: Vec<Box<dyn ReadinessCheck>>,
    pub metrics: Option<PrometheusHandle>,
    pub request_timeout: Duration,
    /// API requests handled at once; more are answered 503 at once.
    pub max_requests_in_flight: usize,
}

impl HttpApp {
    /// The full router: API (behind the load limit, then the token check), `/docs` (Swagger UI,
    /// served from the binary), `/api-docs/openapi.json`, `/health/*`, `/metrics`; unknown
    /// routes and methods answer with problems.
    pub fn into_router(self) -> Router {
        let in_flight = InFlightLimit::new(self.service, self.max_requests_in_flight);
        let api = web::auth::require_token(self.api, self.verifier)
            .layer(DefaultBodyLimit::max(web::MAX_BODY_BYTES))
            .layer(from_fn_with_state(in_flight, web::shed_load));
        Router::new()
            .merge(api)
            .merge(SwaggerUi::new("/docs").url("/api-docs/openapi.json", self.openapi))
            .merge(web::operations_router(self.checks, self.metrics))
            .fallback(web::not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(from_fn_with_state(self.request_timeout, web::time_limit))
            .layer(CatchPanicLayer::custom(|_| {
                axum::response::IntoResponse::into_response(Problem::internal("a request handler panicked"))
            }))
            .layer(from_fn_with_state(self.service, web::trace_request))
    }
}

async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        "this route does not accept that method",
    )
}
