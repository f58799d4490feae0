//! What operators see of an outbox: how much waits to be published, and for how long.

use crate::unit_of_work::BoxError;
use async_trait::async_trait;

/// The unsent rows of one outbox.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutboxBacklog {
    /// Messages due and not published yet: the relay's backlog.
    pub unsent: u64,
    /// Scheduled messages not due yet (the saga's timeouts); not a backlog.
    pub scheduled: u64,
    /// How long the oldest due message has waited, in seconds (none when nothing is due).
    pub oldest_unsent_age_secs: Option<f64>,
}

/// Reads an outbox's backlog (a port: each store adapter has its own).
#[async_trait]
pub trait OutboxMonitor: Send + Sync {
    /// The backlog now.
    async fn backlog(&self) -> Result<OutboxBacklog, BoxError>;
}
