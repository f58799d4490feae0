//! Limits that keep a service answering under pressure: past a number of requests in flight it
//! refuses more at once (503 with `Retry-After`) instead of queueing them, and a request that
//! runs too long is answered 503. Both answers are problems.

use crate::Problem;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// How long a client told to come back (`Retry-After`) should wait.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Requests a service handles at once, and the counter of those it turned away.
#[derive(Clone)]
pub struct InFlightLimit {
    service: &'static str,
    max: usize,
    permits: Arc<Semaphore>,
}

impl InFlightLimit {
    pub fn new(service: &'static str, max: usize) -> Self {
        let max = max.max(1);
        Self { service, max, permits: Arc::new(Semaphore::new(max)) }
    }
}

/// Middleware (`axum::middleware::from_fn_with_state(limit, shed_load)`): a request beyond the
/// limit is answered 503 with `Retry-After` at once, without reaching its handler (nor the token
/// check, which costs CPU too).
pub async fn shed_load(State(limit): State<InFlightLimit>, mut request: Request, next: Next) -> Response {
    let Ok(permit) = limit.permits.clone().try_acquire_owned() else {
        metrics::counter!("http_requests_shed_total", "service" => limit.service).increment(1);
        let detail = format!(
            "{} requests are in flight, the most this service takes at once; try again in {} s",
            limit.max,
            RETRY_AFTER.as_secs()
        );
        let problem =
            Problem::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, "overloaded", "Service overloaded", detail);
        return retry_later(problem);
    };
    let place = InFlightPlace(Arc::new(Mutex::new(Some(permit))));
    request.extensions_mut().insert(place.clone());
    next.run(request).await
}

/// A request's place among those in flight (a request extension that [`shed_load`] adds). A
/// request that only waits, for a change to happen say, gives its place up: clients that wait
/// hold neither a database connection nor the room of requests that work.
#[derive(Clone)]
pub struct InFlightPlace(Arc<Mutex<Option<OwnedSemaphorePermit>>>);

impl InFlightPlace {
    pub fn give_up(&self) {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    }
}

/// When [`time_limit`] will abandon the request (a request extension): what waits must end
/// before then.
#[derive(Debug, Clone, Copy)]
pub struct RequestDeadline(pub Instant);

/// Middleware (`axum::middleware::from_fn_with_state(timeout, time_limit)`): a request still
/// running after `timeout` is dropped and answered 503.
pub async fn time_limit(State(timeout): State<Duration>, mut request: Request, next: Next) -> Response {
    let deadline = Instant::now() + timeout;
    request.extensions_mut().insert(RequestDeadline(deadline));
    match tokio::time::timeout_at(deadline, next.run(request)).await {
        Ok(response) => response,
        Err(_) => retry_later(Problem::unavailable(format!(
            "the request took longer than {} s and was abandoned",
            timeout.as_secs_f64()
        ))),
    }
}

fn retry_later(problem: Problem) -> Response {
    let mut response = problem.into_response();
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER.as_secs()));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::http::StatusCode;
    use axum::routing::get;
    use tokio::sync::Notify;
    use tower::ServiceExt;

    fn get_root() -> axum::http::Request<Body> {
        axum::http::Request::get("/").body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn past_the_limit_requests_are_refused_at_once_and_told_when_to_come_back() {
        let (entered, mut handlers_in) = tokio::sync::mpsc::unbounded_channel();
        let release = Arc::new(Notify::new());
        let held = release.clone();
        let handler = move || {
            let (entered, held) = (entered.clone(), held.clone());
            async move {
                let released = held.notified();
                entered.send(()).unwrap();
                released.await;
                "done"
            }
        };
        let app = Router::new()
            .route("/", get(handler))
            .layer(axum::middleware::from_fn_with_state(InFlightLimit::new("test", 2), shed_load));
        let first = tokio::spawn(app.clone().oneshot(get_root()));
        let second = tokio::spawn(app.clone().oneshot(get_root()));
        handlers_in.recv().await.unwrap();
        handlers_in.recv().await.unwrap();

        let refused = app.clone().oneshot(get_root()).await.unwrap();
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.headers()[header::RETRY_AFTER], "1");
        assert_eq!(refused.headers()[header::CONTENT_TYPE], "application/problem+json");
        release.notify_waiters();
        for request in [first, second] {
            assert_eq!(request.await.unwrap().unwrap().status(), StatusCode::OK);
        }
        // The permits came back with the answers.
        let (third, fourth) = (tokio::spawn(app.clone().oneshot(get_root())), tokio::spawn(app.oneshot(get_root())));
        handlers_in.recv().await.unwrap();
        handlers_in.recv().await.unwrap();
        release.notify_waiters();
        for request in [third, fourth] {
            assert_eq!(request.await.unwrap().unwrap().status(), StatusCode::OK);
        }
    }

    #[tokio::test]
    async fn a_request_that_gives_up_its_place_no_longer_counts_among_those_in_flight() {
        let release = Arc::new(Notify::new());
        let (entered, mut waiting) = tokio::sync::mpsc::unbounded_channel();
        let held = release.clone();
        let waits = move |axum::Extension(place): axum::Extension<InFlightPlace>| {
            let (entered, held) = (entered.clone(), held.clone());
            async move {
                let released = held.notified();
                place.give_up();
                entered.send(()).unwrap();
                released.await;
                "changed"
            }
        };
        let app = Router::new()
            .route("/", get(waits))
            .route("/work", get(|| async { "done" }))
            .layer(axum::middleware::from_fn_with_state(InFlightLimit::new("test", 1), shed_load));
        let waiter = tokio::spawn(app.clone().oneshot(get_root()));
        waiting.recv().await.unwrap();

        let work = axum::http::Request::get("/work").body(Body::empty()).unwrap();
        assert_eq!(app.oneshot(work).await.unwrap().status(), StatusCode::OK, "the waiter's place was free");
        release.notify_waiters();
        assert_eq!(waiter.await.unwrap().unwrap().status(), StatusCode::OK);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_runs_too_long_is_answered_503() {
        let app = Router::new()
            .route("/", get(|| async { std::future::pending::<&str>().await }))
            .layer(axum::middleware::from_fn_with_state(Duration::from_secs(30), time_limit));
        let response = app.oneshot(get_root()).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/problem+json");
    }
}
