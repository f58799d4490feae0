//! Reliable messaging between services:
//!
//! - [`Envelope`] and [`Causation`]: the metadata every message carries.
//! - [`Effects`]: what a unit of work commits beside its aggregate (outbox rows, scheduled-message
//!   cancellations, the inbox record), committed atomically by [`postgres::GroupCommit`] (units
//!   of work that overlap share a transaction) or [`sqlite::commit`].
//! - [`relay::Relay`]: publishes committed outbox rows through a [`Transport`]; one loop over the
//!   [`relay::OutboxStore`] port, which [`postgres::PgOutbox`] and [`sqlite::SqliteOutbox`]
//!   implement.
//! - [`Inbound`], [`Handler`] and [`BatchHandler`]: what application code implements to consume
//!   messages; [`Consumer`] runs one with retries and dead letters.
//! - [`hand_off`]: a message whose one consumer runs in this process goes to it straight after
//!   the commit, with the relay and the broker as the fallback.
//! - [`transport`]: the port and its RabbitMQ, SQLite (embedded broker) and in-memory adapters.
//! - [`trace`]: spans that continue the trace a message or request carries.
//! - [`Backoff`]: how every retry loop waits.
//! - [`stats`] and [`outbox`]: what operators see of consumers and outboxes.
#![warn(missing_docs)]

pub mod backoff;
pub mod consumer;
pub mod envelope;
pub mod hand_off;
pub mod handler;
pub mod outbox;
pub mod postgres;
pub mod relay;
pub mod remembered;
mod sql;
pub mod sqlite;
pub mod stats;
pub mod trace;
pub mod transport;
pub mod unit_of_work;

#[cfg(feature = "testing")]
pub mod testing;

pub use backoff::{Backoff, Jitter};
pub use consumer::{Abandoned, Consumer, ConsumerConfig, RetryPolicy, panic_message};
pub use contracts::Message;
pub use envelope::{Causation, DecodeError, Envelope, TraceParent, UnreadableEnvelope};
pub use hand_off::{HandOff, LocalConsumers};
pub use handler::{BatchHandler, Handler, HandlerError, Inbound, IsTransient, Received, hash};
pub use outbox::{OutboxBacklog, OutboxMonitor};
pub use remembered::{Remembered, Worked};
pub use stats::{ConsumerFigures, ConsumerStats};
pub use transport::{Naming, Transport, TransportError};
pub use unit_of_work::{
    BoxError, Consumed, Effects, Inbox, IsConflict, LoadError, Outgoing, SaveError, applied, retry_on_conflict,
};

use std::error::Error as StdError;
use std::fmt;

/// An error with its causes, written `error: cause: cause of the cause`, for logs and for the
/// reasons of dead letters.
pub struct ErrorChain<'a>(pub &'a (dyn StdError + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(error) = cause {
            write!(f, ": {error}")?;
            cause = error.source();
        }
        Ok(())
    }
}

/// A connection URL without its password, for logs and error messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let user = url[scheme + 3..at].split(':').next().unwrap_or_default();
            format!("{}://{user}:***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(super::redact_url("amqp://guest:secret@host:5672/%2f"), "amqp://guest:***@host:5672/%2f");
        assert_eq!(super::redact_url("postgres://postgres@127.0.0.1/shop"), "postgres://postgres:***@127.0.0.1/shop");
        assert_eq!(super::redact_url("amqp://host"), "amqp://host");
    }

    #[test]
    fn an_error_chain_names_every_cause() {
        let error = crate::LoadError::corrupt("order 7", "unknown status \"lost\"");
        assert_eq!(
            super::ErrorChain(&error).to_string(),
            "stored order 7 cannot be read back: unknown status \"lost\""
        );
    }
}
