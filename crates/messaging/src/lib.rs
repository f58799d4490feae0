//! Reliable messaging between services, as described in DESIGN.md:
//!
//! - [`Envelope`] and [`Causation`]: the metadata every message carries.
//! - [`Effects`]: what a unit of work commits beside its aggregate (outbox rows, scheduled-message
//!   cancellations, the inbox record), committed atomically by [`postgres::commit`].
//! - [`postgres::Relay`]: publishes committed outbox rows through a [`Transport`].
//! - [`consumer`]: the runtime that feeds deliveries to handlers with retries and dead letters.
//! - [`transport`]: the port and its RabbitMQ and in-memory adapters.
//! - [`trace`]: spans that continue the trace a message or request carries.

pub mod consumer;
pub mod envelope;
pub mod postgres;
pub mod trace;
pub mod transport;
pub mod unit_of_work;

#[cfg(feature = "testing")]
pub mod testing;

pub use consumer::{Consumer, ConsumerConfig, Handler, HandlerError, RetryPolicy};
pub use envelope::{Causation, DecodeError, Envelope, TraceParent};
pub use transport::{Naming, Transport, TransportError};
pub use unit_of_work::{
    BoxError, Consumed, Effects, Inbox, IsConflict, Outgoing, SaveError, applied, retry_on_conflict,
};

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
}
