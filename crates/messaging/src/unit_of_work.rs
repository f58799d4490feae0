//! What a handler hands its store to commit atomically beside the aggregate: the messages it
//! produced (the outbox side), the scheduled messages it cancels, and the message it consumed
//! (the inbox side). No I/O here; the adapters are [`crate::postgres`] and [`crate::sqlite`].

use crate::backoff::{Backoff, Jitter};
use crate::envelope::Envelope;
use crate::handler::IsTransient;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::error::Error as StdError;
use std::time::Duration;
use uuid::Uuid;

/// Any error, boxed: the cause a typed error carries when its type does not matter to callers.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// A message to send once the transaction commits, possibly not before a given time.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// The message.
    pub envelope: Envelope,
    /// Not published before this time; `None`: as soon as committed.
    pub deliver_after: Option<DateTime<Utc>>,
}

/// The message being handled, recorded so that a second copy is skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Consumed<'a> {
    /// The consumer that applied it (its handler's name).
    pub consumer: &'a str,
    /// The message's id.
    pub message_id: Uuid,
}

/// Everything a unit of work commits besides the aggregate itself.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Effects<'a> {
    /// Messages to send.
    pub outgoing: Vec<Outgoing>,
    /// Ids of scheduled messages to withdraw (if not sent yet).
    pub cancelled: Vec<Uuid>,
    /// The messages this unit of work applies (usually one; several when a handler takes a
    /// batch of messages about the same aggregate).
    pub consumed: Vec<Consumed<'a>>,
}

impl<'a> Effects<'a> {
    /// No effects yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Effects of handling `message_id` as `consumer`.
    pub fn consuming(consumer: &'a str, message_id: Uuid) -> Self {
        let mut effects = Self::default();
        effects.consume(consumer, message_id);
        effects
    }

    /// Records one more message as applied by this unit of work.
    pub fn consume(&mut self, consumer: &'a str, message_id: Uuid) -> &mut Self {
        self.consumed.push(Consumed { consumer, message_id });
        self
    }

    /// Whether committing these effects would change nothing.
    pub fn is_empty(&self) -> bool {
        self.outgoing.is_empty() && self.cancelled.is_empty() && self.consumed.is_empty()
    }

    /// Sends `envelope` once the unit of work commits.
    pub fn send(&mut self, envelope: Envelope) -> &mut Self {
        self.outgoing.push(Outgoing { envelope, deliver_after: None });
        self
    }

    /// Sends `envelope` once the unit of work commits, not before `deliver_after`.
    pub fn schedule(&mut self, envelope: Envelope, deliver_after: DateTime<Utc>) -> &mut Self {
        self.outgoing.push(Outgoing { envelope, deliver_after: Some(deliver_after) });
        self
    }

    /// Withdraws a scheduled message, if it was not sent yet. One this unit of work scheduled
    /// itself is simply never written.
    pub fn cancel_scheduled(&mut self, message_id: Uuid) -> &mut Self {
        let scheduled = self.outgoing.len();
        self.outgoing.retain(|outgoing| outgoing.envelope.message_id != message_id);
        if self.outgoing.len() == scheduled {
            self.cancelled.push(message_id);
        }
        self
    }
}

/// Why an atomic save did not happen. Nothing of it was written in any case.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    /// Someone else saved the aggregate since it was loaded: load again and retry.
    #[error("changed concurrently by someone else; try again")]
    Conflict,
    /// The consumed message (one of them, for a batch) was already applied: acknowledge it
    /// and move on.
    #[error("message already consumed")]
    AlreadyConsumed,
    /// The database could not be reached or gave up (connection, timeout, deadlock).
    #[error("database unavailable")]
    Unavailable(#[source] BoxError),
    /// The database refused the write (a constraint); retrying will not help.
    #[error("database refused the write")]
    Refused(#[source] BoxError),
}

impl IsTransient for SaveError {
    /// Trying again later may succeed (the store was in the way), unless the write was refused.
    fn is_transient(&self) -> bool {
        match self {
            SaveError::Conflict | SaveError::AlreadyConsumed | SaveError::Unavailable(_) => true,
            SaveError::Refused(_) => false,
        }
    }
}

/// Why a store could not read what it was asked for.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The database could not be reached or gave up: reading again later may work.
    #[error("database unavailable")]
    Unavailable(#[source] BoxError),
    /// What is stored does not restore into a valid value (a damaged row, or a defect of the code
    /// that wrote it): reading it again fails the same way.
    #[error("stored {what} cannot be read back")]
    Corrupt {
        /// What was being read, e.g. `order 0190…`.
        what: String,
        /// Why it does not restore.
        #[source]
        source: BoxError,
    },
}

impl LoadError {
    /// The database was in the way.
    pub fn unavailable(error: impl Into<BoxError>) -> Self {
        LoadError::Unavailable(error.into())
    }

    /// The stored `what` does not restore, because of `error`.
    pub fn corrupt(what: impl Into<String>, error: impl Into<BoxError>) -> Self {
        LoadError::Corrupt { what: what.into(), source: error.into() }
    }
}

impl IsTransient for LoadError {
    /// Only an unreachable database may answer better later; corrupt data stays corrupt.
    fn is_transient(&self) -> bool {
        match self {
            LoadError::Unavailable(_) => true,
            LoadError::Corrupt { .. } => false,
        }
    }
}

/// A message handler's view of a save: a message that was already applied is a success (its
/// copy is acknowledged and skipped). Not so for a batch: `AlreadyConsumed` then says that some
/// message of it was applied before and that nothing of the batch was committed, so the
/// messages must be applied one by one.
pub fn applied(effects: &Effects<'_>, outcome: Result<(), SaveError>) -> Result<(), SaveError> {
    match outcome {
        Err(SaveError::AlreadyConsumed) if effects.consumed.len() <= 1 => Ok(()),
        other => other,
    }
}

/// Whether an error means "load again and retry": an optimistic-concurrency conflict.
pub trait IsConflict {
    /// Whether this is a conflict with a concurrent writer.
    fn is_conflict(&self) -> bool;
}

impl IsConflict for SaveError {
    fn is_conflict(&self) -> bool {
        matches!(self, SaveError::Conflict)
    }
}

/// Runs `attempt` again while it fails with a conflict, with a short randomized pause so that
/// contenders spread out. Conflicts mean another writer made progress, so the budget is generous.
pub async fn retry_on_conflict<T, E, F, Fut>(mut attempt: F) -> Result<T, E>
where
    E: IsConflict,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    const MAX_ATTEMPTS: u32 = 50;
    const BACKOFF: Backoff =
        Backoff::new(Duration::from_millis(4), Duration::from_millis(128)).with_jitter(Jitter::Full);
    let mut tries = 1;
    loop {
        match attempt().await {
            Err(error) if error.is_conflict() && tries < MAX_ATTEMPTS => {
                metrics::counter!("concurrency_conflicts_total").increment(1);
                tokio::time::sleep(BACKOFF.pause(tries)).await;
                tries += 1;
            }
            outcome => return outcome,
        }
    }
}

/// Read side of the inbox: lets the consumer runtime skip a copy it has already applied.
#[async_trait]
pub trait Inbox: Send + Sync {
    /// Whether `consumer` applied the message `message_id` already.
    async fn contains(&self, consumer: &str, message_id: Uuid) -> Result<bool, BoxError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Conflict;
    impl IsConflict for Conflict {
        fn is_conflict(&self) -> bool {
            true
        }
    }

    #[test]
    fn a_message_scheduled_and_withdrawn_by_one_unit_of_work_is_never_written() {
        let envelope = crate::Causation::root("order-1", crate::TraceParent::new_root())
            .envelope(&contracts::order::OrderShipped { order_id: Uuid::nil() });
        let mut effects = Effects::new();
        effects.schedule(envelope.clone(), Utc::now()).cancel_scheduled(envelope.message_id);
        assert!(effects.outgoing.is_empty() && effects.cancelled.is_empty(), "{effects:?}");
        let earlier = Uuid::now_v7();
        effects.cancel_scheduled(earlier);
        assert_eq!(effects.cancelled, [earlier], "one scheduled by an earlier unit of work is withdrawn");
    }

    #[tokio::test]
    async fn conflicts_are_retried_until_success() {
        let calls = std::cell::Cell::new(0);
        let result = retry_on_conflict(|| async {
            calls.set(calls.get() + 1);
            if calls.get() < 3 { Err(Conflict) } else { Ok(calls.get()) }
        })
        .await;
        assert_eq!(result.unwrap(), 3);
    }

    #[tokio::test]
    async fn other_errors_are_returned_at_once() {
        let calls = std::cell::Cell::new(0);
        let result: Result<(), SaveError> = retry_on_conflict(|| async {
            calls.set(calls.get() + 1);
            Err(SaveError::AlreadyConsumed)
        })
        .await;
        assert!(matches!(result, Err(SaveError::AlreadyConsumed)));
        assert_eq!(calls.get(), 1);
    }
}
