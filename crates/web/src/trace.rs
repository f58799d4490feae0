//! Trace context of HTTP requests: a span per request, named by its route, that continues the
//! caller's `traceparent` (or starts a trace); the request's trace for the commands it runs; the
//! `traceparent` echoed on the response; a latency metric per response.

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use messaging::TraceParent;
use std::convert::Infallible;
use tracing::Instrument;
use tracing::field::Empty;

/// The trace this request belongs to (its span's context); commands pass it on to the messages
/// they cause.
#[derive(Debug, Clone, Copy)]
pub struct RequestTrace(pub TraceParent);

impl<S: Send + Sync> FromRequestParts<S> for RequestTrace {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let outside_trace_request =
            || RequestTrace(caller(&parts.headers).map_or_else(TraceParent::new_root, |c| c.child()));
        Ok(parts.extensions.get::<RequestTrace>().copied().unwrap_or_else(outside_trace_request))
    }
}

/// The caller's span, from a valid `traceparent` header.
fn caller(headers: &HeaderMap) -> Option<TraceParent> {
    headers.get("traceparent").and_then(|value| value.to_str().ok()).and_then(|value| TraceParent::parse(value).ok())
}

/// Middleware for every route of a service (add it with `Router::layer`, so that the matched
/// route is known): the request's span, named `{method} {route}` (the route template, so that
/// one operation has one name), continuing the caller's trace; its trace as [`RequestTrace`];
/// the status in the span, the latency in `http_request_duration_seconds`, and the trace in the
/// response's `traceparent`, so that clients can find the request in the logs and traces.
pub async fn trace_request(State(service): State<&'static str>, mut request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let route = request.extensions().get::<MatchedPath>().map(|path| path.as_str().to_owned());
    let name = match &route {
        Some(route) => format!("{method} {route}"),
        None => method.to_string(),
    };
    let span = tracing::info_span!(
        parent: None,
        "request",
        otel.name = name,
        otel.kind = "server",
        otel.status_code = Empty,
        service,
        http.request.method = %method,
        http.route = route,
        url.path = %request.uri().path(),
        http.response.status_code = Empty,
        trace_id = Empty,
        caller = Empty,
    );
    let trace = messaging::trace::continue_trace(&span, caller(request.headers()));
    span.record("trace_id", trace.trace_id_hex());
    request.extensions_mut().insert(RequestTrace(trace));

    let started = std::time::Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    let latency = started.elapsed();
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    metrics::histogram!("http_request_duration_seconds", "service" => service, "status" => status.as_str().to_owned())
        .record(latency.as_secs_f64());
    if status.is_server_error() {
        span.record("otel.status_code", "error");
        tracing::warn!(parent: &span, status = status.as_u16(), ?latency, "request failed");
    } else {
        tracing::debug!(parent: &span, status = status.as_u16(), ?latency, "request done");
    }
    if let Ok(value) = HeaderValue::from_str(&trace.to_string()) {
        response.headers_mut().insert("traceparent", value);
    }
    response
}
