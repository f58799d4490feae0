//! Trace context of HTTP requests: the incoming `traceparent` (or a new trace), a span per
//! request with its trace id, and the `traceparent` echoed on the response.

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Response};
use messaging::TraceParent;
use std::convert::Infallible;
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::trace::{MakeSpan, OnResponse, TraceLayer};

/// The trace this request belongs to; commands pass it on to the messages they cause.
#[derive(Debug, Clone, Copy)]
pub struct RequestTrace(pub TraceParent);

impl<S: Send + Sync> FromRequestParts<S> for RequestTrace {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts.extensions.get::<RequestTrace>().copied().unwrap_or_else(|| RequestTrace(trace_of(parts))))
    }
}

fn trace_of(parts: &Parts) -> TraceParent {
    parts
        .headers
        .get("traceparent")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| TraceParent::parse(value).ok())
        .map(|parent| parent.child())
        .unwrap_or_else(TraceParent::new_root)
}

#[derive(Clone)]
pub struct RequestSpan {
    service: &'static str,
}

impl<B> MakeSpan<B> for RequestSpan {
    fn make_span(&mut self, request: &Request<B>) -> tracing::Span {
        let trace = request.extensions().get::<RequestTrace>().map(|t| t.0.trace_id_hex()).unwrap_or_default();
        tracing::info_span!(
            "request",
            service = self.service,
            method = %request.method(),
            path = %request.uri().path(),
            trace_id = %trace,
            caller = tracing::field::Empty,
        )
    }
}

#[derive(Clone)]
pub struct RecordResponse {
    service: &'static str,
}

impl<B> OnResponse<B> for RecordResponse {
    fn on_response(self, response: &Response<B>, latency: std::time::Duration, _: &tracing::Span) {
        let status = response.status();
        metrics::histogram!("http_request_duration_seconds", "service" => self.service, "status" => status.as_str().to_owned())
            .record(latency.as_secs_f64());
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), ?latency, "request failed");
        } else {
            tracing::debug!(status = status.as_u16(), ?latency, "request done");
        }
    }
}

pub type HttpTraceLayer = TraceLayer<
    SharedClassifier<ServerErrorsAsFailures>,
    RequestSpan,
    tower_http::trace::DefaultOnRequest,
    RecordResponse,
>;

/// A span per request (with its trace id) and a latency metric per response.
pub fn trace_layer(service: &'static str) -> HttpTraceLayer {
    TraceLayer::new_for_http().make_span_with(RequestSpan { service }).on_response(RecordResponse { service })
}

/// Middleware: fixes the request's trace context before anything reads it, and returns it in
/// the response's `traceparent` header so clients can find the request in the logs.
pub async fn propagate_trace(mut request: Request, next: axum::middleware::Next) -> axum::response::Response {
    let (mut parts, body) = request.into_parts();
    let trace = RequestTrace(trace_of(&parts));
    parts.extensions.insert(trace);
    request = Request::from_parts(parts, body);
    let mut response = next.run(request).await;
    if let Ok(value) = HeaderValue::from_str(&trace.0.to_string()) {
        response.headers_mut().insert("traceparent", value);
    }
    response
}
