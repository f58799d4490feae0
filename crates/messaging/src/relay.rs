//! The relay: moves committed outbox rows to the transport. One loop for every database: it
//! works on an [`OutboxStore`], which PostgreSQL (`crate::postgres::PgOutbox`) and SQLite
//! (`crate::sqlite::SqliteOutbox`) implement.
//!
//! It claims due rows (so that relays sharing an outbox never publish a row twice), publishes
//! them, waits for the transport's confirms and only then stamps them sent. A crash or a failed
//! publish leaves the rows unsent and they are published again later: at-least-once, with
//! duplicates absorbed by the consumers' inboxes.
//!
//! It sleeps until its store reports a commit, the next scheduled row falls due, or the periodic
//! sweep that catches lost notifications comes round. With a hand-off
//! ([`Relay::with_hand_off`]), the messages this process commits come to it straight from the
//! commit instead: it publishes them without claiming them, and the hand-off stamps their rows
//! once the broker has confirmed them.
//!
//! Nothing it waits for may take forever: a batch (claim, publish, confirms, stamp), each query
//! and each cleanup statement have a deadline, so that a database connection that went silent
//! is abandoned instead of stalling publication.

use crate::ErrorChain;
use crate::backoff::Backoff;
use crate::envelope::Envelope;
use crate::hand_off::{HandOff, RelayFeed};
use crate::transport::Transport;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A database's outbox (and its inbox's housekeeping), as the relay needs it.
#[async_trait]
pub trait OutboxStore: Send + Sync + 'static {
    /// What holds claimed rows until they are stamped sent (a transaction with their row locks,
    /// say). Dropping it releases them unsent.
    type Claim: Send + 'static;

    /// Claims up to `limit` unsent rows that are due, oldest first. No other relay of the same
    /// outbox gets them until the claim is stamped or dropped.
    async fn claim_due(&self, limit: i64) -> Result<Claimed<Self::Claim>, RelayError>;

    /// Stamps the claimed rows sent (or makes the stamp the claim made final).
    async fn mark_sent(&self, claim: Self::Claim) -> Result<(), RelayError>;

    /// When the earliest unsent row falls due, if there is one.
    async fn next_due(&self) -> Result<Option<DateTime<Utc>>, RelayError>;

    /// Deletes up to `limit` outbox rows sent before `sent_before`; returns how many.
    async fn delete_sent(&self, sent_before: DateTime<Utc>, limit: i64) -> Result<u64, RelayError>;

    /// Deletes up to `limit` inbox records older than `consumed_before`; returns how many.
    async fn delete_consumed(&self, consumed_before: DateTime<Utc>, limit: i64) -> Result<u64, RelayError>;

    /// Starts watching for commits that add outbox rows.
    async fn watch(&self) -> Box<dyn CommitWatch>;
}

/// Rows claimed by one relay: their envelopes, and the claim to stamp them with.
pub struct Claimed<C> {
    /// The messages, oldest first.
    pub envelopes: Vec<Envelope>,
    /// Hand it to [`OutboxStore::mark_sent`] once they are published.
    pub claim: C,
}

/// Wakes a relay when rows may have been committed.
#[async_trait]
pub trait CommitWatch: Send {
    /// Resolves when outbox rows may have been committed since the last call (or when
    /// notifications may have been missed, so that the relay looks anyway), with what is
    /// known of them. Cancel-safe.
    async fn committed(&mut self) -> Committed;
}

/// What commits tell a relay of the rows they wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// Whether they may have written rows due now (false: every row they wrote is scheduled for
    /// later, so there is nothing to claim yet).
    pub due_now: bool,
    /// What they tell of the rows they scheduled for later.
    pub scheduled: Scheduled,
}

impl Committed {
    /// Commits the relay knows nothing about: it claims, and asks when the next row falls due.
    pub const UNKNOWN: Committed = Committed { due_now: true, scheduled: Scheduled::Unknown };

    /// What two reports (of commits heard together) tell.
    pub fn and(self, other: Committed) -> Committed {
        Committed { due_now: self.due_now || other.due_now, scheduled: self.scheduled.and(other.scheduled) }
    }
}

/// What commits tell a relay of the rows they scheduled for later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheduled {
    /// Nothing: the relay asks the store when the next row falls due.
    Unknown,
    /// The earliest time a row they wrote falls due, if any of them is not due yet.
    Earliest(Option<DateTime<Utc>>),
}

impl Scheduled {
    /// What two reports (of commits heard together) tell.
    pub fn and(self, other: Scheduled) -> Scheduled {
        match (self, other) {
            (Scheduled::Earliest(a), Scheduled::Earliest(b)) => Scheduled::Earliest(match (a, b) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }),
            _ => Scheduled::Unknown,
        }
    }
}

/// The next batch handed over to `feed` (never, without a feed).
async fn next_handed(feed: &mut Option<RelayFeed>, limit: i64) -> Vec<Envelope> {
    match feed {
        Some(feed) => feed.next_batch(limit as usize).await,
        None => std::future::pending().await,
    }
}

/// Pauses after failed publishes: a broker that is down must not be hammered by new commits.
const PUBLISH_BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

/// How a relay claims, publishes and cleans up.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Most rows claimed and published in one transaction.
    pub batch_size: i64,
    /// Batches in flight at once: one claims the next rows while another awaits its confirms.
    pub workers: usize,
    /// Longest sleep without a notification: bounds the delay of a lost notification.
    pub sweep_interval: Duration,
    /// How long sent rows are kept (for inspection) before deletion.
    pub sent_retention: Duration,
    /// How long inbox records are kept; must exceed the longest time a copy can arrive late.
    pub inbox_retention: Duration,
    /// How often sent outbox rows and old inbox records are deleted.
    pub cleanup_interval: Duration,
    /// Longest a batch (claim, publish, confirms, stamp) or any other query may take before it
    /// is abandoned (its rows stay unsent); longer than the transport's wait for confirms.
    pub deadline: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 200,
            workers: 4,
            sweep_interval: Duration::from_secs(2),
            sent_retention: Duration::from_secs(3600),
            inbox_retention: Duration::from_secs(7 * 24 * 3600),
            cleanup_interval: Duration::from_secs(60),
            deadline: Duration::from_secs(20),
        }
    }
}

/// Publishes one database's outbox (several relays may share it).
pub struct Relay<S> {
    store: S,
    transport: Arc<dyn Transport>,
    config: RelayConfig,
    /// Labels this relay's metrics and logs (the service name).
    name: &'static str,
    /// Where this process's commits hand it their messages.
    hand_off: Option<Arc<HandOff>>,
}

/// Why a batch was not published. Its rows stay unsent and are claimed again later.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The outbox could not be read or stamped.
    #[error("outbox query failed")]
    Database(#[from] sqlx::Error),
    /// The transport did not confirm the batch.
    #[error("publish failed")]
    Transport(#[from] crate::transport::TransportError),
    /// A row does not hold a valid envelope.
    #[error("outbox row {0} holds an unreadable envelope")]
    Corrupt(Uuid, #[source] sqlx::Error),
    /// A publishing task panicked or was cancelled.
    #[error("relay task crashed")]
    Crashed(#[source] tokio::task::JoinError),
    /// The batch took longer than [`RelayConfig::deadline`].
    #[error("the batch did not finish within {0:?}")]
    TimedOut(Duration),
}

impl<S: OutboxStore> Relay<S> {
    /// A relay labelled `name` (in logs and metrics) of the outbox `store` (or what makes one,
    /// such as a PostgreSQL pool).
    pub fn new(name: &'static str, store: impl Into<S>, transport: Arc<dyn Transport>, config: RelayConfig) -> Self {
        Self { store: store.into(), transport, config, name, hand_off: None }
    }

    /// The same relay, also publishing what `hand_off` hands it straight from the commits of
    /// this process (see [`crate::hand_off`]).
    pub fn with_hand_off(mut self, hand_off: Arc<HandOff>) -> Self {
        self.hand_off = Some(hand_off);
        self
    }

    /// Runs until `shutdown`, then publishes what is due one last time and returns.
    ///
    /// Batches are pipelined: a commit notification starts a new batch even while earlier ones
    /// wait for their confirms (up to `workers` at once), so one slow confirm does not delay
    /// the messages committed after it.
    pub async fn run(self, shutdown: CancellationToken) {
        let relay = Arc::new(self);
        let workers = relay.config.workers.max(1);
        let mut commits = relay.store.watch().await;
        let mut handed = relay.hand_off.as_ref().map(HandOff::subscribe_relay);
        let mut in_flight: JoinSet<Result<usize, RelayError>> = JoinSet::new();
        // Publishing what was handed over, up to `workers` batches at once.
        let mut handing: JoinSet<Result<usize, RelayError>> = JoinSet::new();
        // Batches worth starting: rows may be due.
        let mut wanted = 1usize;
        let mut failures = 0u32;
        let mut resume_at: Option<Instant> = None;
        let mut next_cleanup = Instant::now();
        // When the earliest row scheduled for later falls due, as far as known (unknown: ask the
        // store). Commits report what they schedule, so that a busy relay need not ask after
        // each batch.
        let mut scheduled = Scheduled::Unknown;
        loop {
            if Instant::now() >= next_cleanup {
                relay.clean_up().await;
                next_cleanup = Instant::now() + relay.config.cleanup_interval;
            }
            let backing_off = resume_at.is_some_and(|at| Instant::now() < at);
            if !backing_off && wanted > 0 && in_flight.len() < workers {
                wanted -= 1;
                let relay = relay.clone();
                in_flight.spawn(async move { relay.publish_batch().await });
                continue;
            }
            let pause = match resume_at {
                Some(at) if backing_off => at - Instant::now(),
                _ if in_flight.is_empty() => {
                    let next_due = match scheduled {
                        Scheduled::Earliest(known) => known,
                        Scheduled::Unknown => relay.next_due().await,
                    };
                    scheduled = Scheduled::Earliest(next_due);
                    relay.sleep_until_due(next_due)
                }
                _ => relay.config.sweep_interval,
            };
            let mut failed = |error: RelayError| {
                failures += 1;
                let pause = PUBLISH_BACKOFF.pause(failures);
                tracing::warn!(relay = relay.name, error = %ErrorChain(&error), retry_in = ?pause, "relay could not publish");
                resume_at = Some(Instant::now() + pause);
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                    match done.unwrap_or_else(|crash| Err(RelayError::Crashed(crash))) {
                        Ok(published) => {
                            failures = 0;
                            resume_at = None;
                            // A full batch means more are probably due: drain with every worker.
                            if published == relay.config.batch_size as usize {
                                wanted = workers;
                            }
                        }
                        Err(error) => {
                            failed(error);
                            wanted = 1;
                        }
                    }
                }
                Some(done) = handing.join_next(), if !handing.is_empty() => {
                    if let Err(error) = done.unwrap_or_else(|crash| Err(RelayError::Crashed(crash))) {
                        failed(error);
                        wanted = 1; // its messages were given back: a claim after the pause takes them
                    }
                }
                envelopes = next_handed(&mut handed, relay.config.batch_size), if handing.len() < workers => {
                    let relay = relay.clone();
                    handing.spawn(async move { relay.publish_handed(envelopes, backing_off).await });
                }
                heard = commits.committed(), if !backing_off => {
                    if heard.due_now {
                        wanted = wanted.max(1);
                    }
                    scheduled = scheduled.and(heard.scheduled);
                }
                _ = tokio::time::sleep(pause) => {
                    wanted = wanted.max(1);
                    scheduled = Scheduled::Unknown; // a row fell due, or the sweep: look again
                }
            }
        }
        // What was handed over and not taken yet is published now, not at the end of its lease.
        if let Some(left) = handed.map(RelayFeed::close).filter(|left| !left.is_empty()) {
            handing.spawn({
                let relay = relay.clone();
                async move { relay.publish_handed(left, false).await }
            });
        }
        while in_flight.join_next().await.is_some() {}
        while handing.join_next().await.is_some() {}
        // In a service its consumers stop first: what the hand-off owes them is known by now.
        if let Some(hand_off) = &relay.hand_off {
            hand_off.flush().await;
        }
        if let Err(error) = relay.publish_all_due().await {
            tracing::warn!(relay = relay.name, error = %ErrorChain(&error), "relay stopped with messages left to publish");
        }
        tracing::info!(relay = relay.name, "relay stopped");
    }

    /// Publishes batches until nothing due is left; a backlog is drained `workers` batches at a time.
    pub async fn publish_all_due(&self) -> Result<(), RelayError> {
        if self.publish_batch().await? < self.config.batch_size as usize {
            return Ok(());
        }
        let worker = || async {
            while self.publish_batch().await? == self.config.batch_size as usize {}
            Ok::<_, RelayError>(())
        };
        futures::future::try_join_all((0..self.config.workers.max(1)).map(|_| worker())).await?;
        Ok(())
    }

    /// Claims, publishes and stamps one batch of due rows, within the deadline; returns how many.
    pub async fn publish_batch(&self) -> Result<usize, RelayError> {
        tokio::time::timeout(self.config.deadline, self.claim_and_publish())
            .await
            .unwrap_or(Err(RelayError::TimedOut(self.config.deadline)))
    }

    async fn claim_and_publish(&self) -> Result<usize, RelayError> {
        let Claimed { mut envelopes, claim } = self.store.claim_due(self.config.batch_size).await?;
        if envelopes.is_empty() {
            return Ok(0);
        }
        let claimed = Instant::now();
        let spans = self.publish(&mut envelopes).await?;
        let confirmed = Instant::now();
        self.store.mark_sent(claim).await?;
        drop(spans);
        self.record_published(&envelopes);
        tracing::debug!(
            relay = self.name,
            count = envelopes.len(),
            publish = ?(confirmed - claimed),
            mark = ?confirmed.elapsed(),
            "published"
        );
        Ok(envelopes.len())
    }

    /// Publishes messages handed over at their commit, within the deadline, and has the hand-off
    /// stamp them; gives them back to the claiming path if they cannot be published (at once,
    /// while the relay pauses after failures).
    async fn publish_handed(&self, mut envelopes: Vec<Envelope>, backing_off: bool) -> Result<usize, RelayError> {
        let Some(hand_off) = &self.hand_off else { return Ok(0) };
        let ids: Vec<Uuid> = envelopes.iter().map(|envelope| envelope.message_id).collect();
        let outcome = if backing_off {
            Ok(0)
        } else {
            let published = tokio::time::timeout(self.config.deadline, self.publish(&mut envelopes)).await;
            match published.unwrap_or(Err(RelayError::TimedOut(self.config.deadline))) {
                Ok(_spans) => {
                    hand_off.settled(ids);
                    self.record_published(&envelopes);
                    tracing::debug!(relay = self.name, count = envelopes.len(), "published as handed over");
                    return Ok(envelopes.len());
                }
                Err(error) => Err(error),
            }
        };
        if let Err(error) = hand_off.give_back(&ids).await {
            tracing::warn!(relay = self.name, error = %ErrorChain(&error), count = ids.len(), "could not give handed-over messages back; the relays publish them when their lease ends");
        }
        outcome
    }

    /// Publishes `envelopes` and waits for the transport's confirms; returns their producer
    /// spans, to be closed once they are stamped.
    async fn publish(&self, envelopes: &mut [Envelope]) -> Result<Vec<tracing::Span>, RelayError> {
        let spans: Vec<tracing::Span> =
            envelopes.iter_mut().map(|envelope| crate::trace::producer_span("publish", self.name, envelope)).collect();
        if let Err(error) = self.transport.publish(envelopes).await {
            for span in &spans {
                span.record("otel.status_code", "error");
            }
            return Err(error.into());
        }
        Ok(spans)
    }

    fn record_published(&self, envelopes: &[Envelope]) {
        let now = Utc::now();
        for envelope in envelopes {
            let lag = (now - envelope.occurred_at).to_std().unwrap_or_default();
            metrics::histogram!("outbox_publish_lag_seconds", "service" => self.name).record(lag.as_secs_f64());
        }
        metrics::counter!("outbox_published_total", "service" => self.name).increment(envelopes.len() as u64);
    }

    /// When the earliest unsent row falls due, as the store says (`None` if it cannot say).
    async fn next_due(&self) -> Option<DateTime<Utc>> {
        tokio::time::timeout(self.config.deadline, self.store.next_due()).await.ok()?.ok()?
    }

    /// How long to sleep before the next scheduled row is due (or the sweep interval).
    fn sleep_until_due(&self, next_due: Option<DateTime<Utc>>) -> Duration {
        // A due row we could not claim is being published by another relay: let it be.
        let until_due = next_due.and_then(|due| (due - Utc::now()).to_std().ok());
        until_due.unwrap_or(self.config.sweep_interval).min(self.config.sweep_interval)
    }

    /// Deletes sent outbox rows and inbox records past their retention, a bounded batch per
    /// statement, so that a large backlog (after a long stop) is worked off within the deadline.
    async fn clean_up(&self) {
        let sent_before = Utc::now() - self.config.sent_retention;
        let consumed_before = Utc::now() - self.config.inbox_retention;
        self.delete_in_batches("outbox", |limit| self.store.delete_sent(sent_before, limit)).await;
        self.delete_in_batches("inbox", |limit| self.store.delete_consumed(consumed_before, limit)).await;
    }

    /// Runs `delete` (which deletes at most `limit` rows of `table`) until it deletes fewer.
    async fn delete_in_batches<F>(&self, table: &str, delete: impl Fn(i64) -> F)
    where
        F: Future<Output = Result<u64, RelayError>>,
    {
        const BATCH: i64 = 10_000;
        let mut deleted = 0;
        loop {
            match tokio::time::timeout(self.config.deadline, delete(BATCH)).await {
                Ok(Ok(done)) => {
                    deleted += done;
                    if done < BATCH as u64 {
                        break;
                    }
                }
                Ok(Err(error)) => {
                    tracing::warn!(relay = self.name, table, error = %ErrorChain(&error), "cleanup failed");
                    break;
                }
                Err(_) => {
                    tracing::warn!(relay = self.name, table, "cleanup did not finish in time");
                    break;
                }
            }
        }
        if deleted > 0 {
            tracing::debug!(relay = self.name, table, deleted, "cleaned up old rows");
        }
    }
}
