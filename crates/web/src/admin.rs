//! The operators' API every service mounts (admins only): its outbox backlog, its consumers'
//! queues with their depth, consumers and rates, and their dead letters with list, replay and
//! purge.
//!
//! Rates come from the consumers' own counters ([`messaging::ConsumerStats`]: messages this
//! process handled per second over the last minute), depth and consumer counts from the broker.

use crate::Problem;
use crate::auth::{Admin, BearerAuth};
use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use messaging::transport::{DeadLetter, DeadLetters, error_queue_of};
use messaging::{ConsumerStats, ErrorChain, OutboxMonitor, Transport, TransportError};
use serde::Serialize;
use std::sync::Arc;
use utoipa::{OpenApi, ToSchema};

/// One consumer of the service, as the console shows it.
#[derive(Clone)]
pub struct ConsumerQueue {
    /// The consumer's name (e.g. `saga`).
    pub consumer: &'static str,
    /// Its queue (e.g. `shop.inventory.saga`); the error queue is beside it.
    pub queue: String,
    /// What it counted as it ran.
    pub stats: Arc<ConsumerStats>,
}

/// What the operators' routes read.
#[derive(Clone)]
pub struct Operators {
    pub service: &'static str,
    pub transport: Arc<dyn Transport>,
    pub outbox: Arc<dyn OutboxMonitor>,
    pub consumers: Vec<ConsumerQueue>,
}

#[derive(OpenApi)]
#[openapi(
    paths(outbox, queues, dead_letters, replay, purge),
    components(schemas(Problem)),
    modifiers(&BearerAuth),
    tags((name = "operations", description = "The service's outbox, queues and dead letters (admins only)"))
)]
pub struct AdminApiDoc;

/// `/api/admin/...`: expects to be behind `require_token`; every route is admin-only.
pub fn router(operators: Operators) -> Router {
    Router::new()
        .route("/api/admin/outbox", get(outbox))
        .route("/api/admin/queues", get(queues))
        .route("/api/admin/queues/{consumer}/dead-letters", get(dead_letters))
        .route("/api/admin/queues/{consumer}/dead-letters/replay", post(replay))
        .route("/api/admin/queues/{consumer}/dead-letters/purge", post(purge))
        .with_state(Arc::new(operators))
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutboxResponse {
    pub service: String,
    /// Messages due and not yet published.
    pub unsent: u64,
    /// Scheduled messages (timeouts) not due yet.
    pub scheduled: u64,
    /// Seconds the oldest due message has waited; absent when nothing waits.
    pub oldest_unsent_age_seconds: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueResponse {
    #[schema(example = "saga")]
    pub consumer: String,
    #[schema(example = "shop.inventory.saga")]
    pub queue: String,
    /// Messages ready in the queue; absent when the broker cannot say.
    pub depth: Option<u32>,
    /// Consumers subscribed, over every process.
    pub consumers: Option<u32>,
    /// Messages in its error queue.
    pub dead_letters: Option<u32>,
    /// Handled by this process since it started.
    pub handled: u64,
    /// Dead-lettered by this process since it started.
    pub dead_lettered: u64,
    /// Handled per second by this process over the last minute.
    pub handled_per_second: f64,
    /// Dead-lettered per second by this process over the last minute.
    pub dead_lettered_per_second: f64,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterResponse {
    pub message_id: Option<String>,
    #[schema(example = "inventory.reserve-stock.v1")]
    pub message_type: Option<String>,
    /// The error and its causes.
    pub reason: String,
    pub attempts: u32,
    pub failed_at: Option<DateTime<Utc>>,
    /// The message body as text.
    pub body: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MovedResponse {
    /// How many dead letters were replayed or purged.
    pub count: usize,
}

type Operations = State<Arc<Operators>>;

#[derive(Debug, Clone, Copy)]
enum Move {
    Replay,
    Purge,
}

fn unavailable(error: TransportError) -> Problem {
    Problem::unavailable("the broker cannot be reached now").with_cause(error)
}

impl Operators {
    fn consumer(&self, name: &str) -> Result<&ConsumerQueue, Problem> {
        self.consumers.iter().find(|queue| queue.consumer == name).ok_or_else(|| {
            let known: Vec<&str> = self.consumers.iter().map(|queue| queue.consumer).collect();
            Problem::not_found(format!("{} has no consumer {name:?}; it has {}", self.service, known.join(", ")))
        })
    }

    /// Replays or purges the dead letters of `consumer`.
    async fn move_dead_letters(
        &self,
        consumer: &str,
        admin: &Admin,
        action: Move,
    ) -> Result<axum::Json<MovedResponse>, Problem> {
        let error_queue = error_queue_of(&self.consumer(consumer)?.queue);
        let tools = self.dead_letter_tools()?;
        let count = match action {
            Move::Replay => tools.replay(&error_queue).await,
            Move::Purge => tools.purge(&error_queue).await,
        }
        .map_err(unavailable)?;
        tracing::info!(queue = %error_queue, count, by = %admin.subject, ?action, "dead letters moved");
        Ok(axum::Json(MovedResponse { count }))
    }

    fn dead_letter_tools(&self) -> Result<&dyn DeadLetters, Problem> {
        self.transport
            .dead_letters()
            .ok_or_else(|| Problem::unavailable("this transport keeps no error queues operators can reach"))
    }
}

/// The outbox's backlog: due messages not yet published and how long the oldest has waited.
#[utoipa::path(
    get, path = "/api/admin/outbox", tag = "operations",
    responses(
        (status = 200, body = OutboxResponse),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database cannot be reached", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn outbox(State(operators): Operations, _: Admin) -> Result<axum::Json<OutboxResponse>, Problem> {
    let backlog = operators.outbox.backlog().await.map_err(|error| {
        tracing::warn!(error = %ErrorChain(error.as_ref()), "cannot read the outbox backlog");
        Problem::unavailable("the outbox cannot be read now")
    })?;
    Ok(axum::Json(OutboxResponse {
        service: operators.service.to_owned(),
        unsent: backlog.unsent,
        scheduled: backlog.scheduled,
        oldest_unsent_age_seconds: backlog.oldest_unsent_age_secs,
    }))
}

/// Every consumer's queue: depth, consumers and dead letters from the broker, rates from this
/// process's own counts.
#[utoipa::path(
    get, path = "/api/admin/queues", tag = "operations",
    responses(
        (status = 200, body = Vec<QueueResponse>),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The broker cannot be reached", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn queues(State(operators): Operations, _: Admin) -> Result<axum::Json<Vec<QueueResponse>>, Problem> {
    let mut answer = Vec::with_capacity(operators.consumers.len());
    for queue in &operators.consumers {
        let stats = operators.transport.queue_stats(&queue.queue).await.map_err(unavailable)?;
        let errors = operators.transport.queue_stats(&error_queue_of(&queue.queue)).await.map_err(unavailable)?;
        let figures = queue.stats.figures();
        answer.push(QueueResponse {
            consumer: queue.consumer.to_owned(),
            queue: queue.queue.clone(),
            depth: stats.map(|stats| stats.depth),
            consumers: stats.map(|stats| stats.consumers),
            dead_letters: errors.map(|errors| errors.depth),
            handled: figures.handled,
            dead_lettered: figures.dead_lettered,
            handled_per_second: figures.handled_per_second,
            dead_lettered_per_second: figures.dead_lettered_per_second,
        });
    }
    Ok(axum::Json(answer))
}

/// The messages a consumer gave up on, with the reason, attempts, time and body.
#[utoipa::path(
    get, path = "/api/admin/queues/{consumer}/dead-letters", tag = "operations",
    params(("consumer" = String, Path, description = "The consumer, e.g. saga")),
    responses(
        (status = 200, body = Vec<DeadLetterResponse>),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such consumer", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The broker cannot be reached", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn dead_letters(
    State(operators): Operations,
    _: Admin,
    crate::Path(consumer): crate::Path<String>,
) -> Result<axum::Json<Vec<DeadLetterResponse>>, Problem> {
    let error_queue = error_queue_of(&operators.consumer(&consumer)?.queue);
    let letters = operators.dead_letter_tools()?.list(&error_queue).await.map_err(unavailable)?;
    Ok(axum::Json(letters.into_iter().map(DeadLetterResponse::from).collect()))
}

/// Sends every dead letter of a consumer back to its queue (once the cause is fixed).
#[utoipa::path(
    post, path = "/api/admin/queues/{consumer}/dead-letters/replay", tag = "operations",
    params(("consumer" = String, Path, description = "The consumer, e.g. saga")),
    responses(
        (status = 200, body = MovedResponse),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such consumer", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The broker cannot be reached", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn replay(
    State(operators): Operations,
    admin: Admin,
    crate::Path(consumer): crate::Path<String>,
) -> Result<axum::Json<MovedResponse>, Problem> {
    operators.move_dead_letters(&consumer, &admin, Move::Replay).await
}

/// Deletes every dead letter of a consumer.
#[utoipa::path(
    post, path = "/api/admin/queues/{consumer}/dead-letters/purge", tag = "operations",
    params(("consumer" = String, Path, description = "The consumer, e.g. saga")),
    responses(
        (status = 200, body = MovedResponse),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such consumer", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The broker cannot be reached", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn purge(
    State(operators): Operations,
    admin: Admin,
    crate::Path(consumer): crate::Path<String>,
) -> Result<axum::Json<MovedResponse>, Problem> {
    operators.move_dead_letters(&consumer, &admin, Move::Purge).await
}

impl From<DeadLetter> for DeadLetterResponse {
    fn from(letter: DeadLetter) -> Self {
        Self {
            message_id: letter.message_id,
            message_type: letter.message_type,
            reason: letter.reason,
            attempts: letter.attempts,
            failed_at: letter.failed_at,
            body: letter.body,
        }
    }
}
