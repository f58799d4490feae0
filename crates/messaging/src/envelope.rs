//! The envelope every message travels in, and the causal context that new messages inherit.

use chrono::{DateTime, Utc};
use contracts::Message;
use serde_json::Value;
use std::fmt;
use uuid::Uuid;

/// A message with the metadata that lets it be routed, deduplicated and traced.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// Unique per message (UUIDv7); the inbox deduplicates on it.
    pub message_id: Uuid,
    /// Versioned type name, e.g. `order.placed.v1`; also the routing key.
    pub message_type: String,
    /// Groups every message of one business flow: the order id.
    pub correlation_id: String,
    /// The message (or request) whose handling produced this one.
    pub causation_id: Option<Uuid>,
    /// When the fact it reports happened (or the command was issued).
    pub occurred_at: DateTime<Utc>,
    /// W3C trace context, so one order can be followed across both services.
    pub traceparent: Option<String>,
    /// The JSON body.
    pub payload: Value,
}

/// Why an envelope does not hold the message a reader expects.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The envelope holds another type than the one asked for.
    #[error("expected a {expected} message, got {actual}")]
    WrongType {
        /// The type asked for.
        expected: &'static str,
        /// The type the envelope holds.
        actual: String,
    },
    /// The envelope's type is none of those a consumer reads (see [`crate::Inbound`]).
    #[error("no handler for {0}")]
    UnknownType(String),
    /// The type is right, the body is not.
    #[error("body of {message_type} does not match its contract")]
    Body {
        /// The envelope's type.
        message_type: String,
        /// What the JSON reader found wrong.
        #[source]
        source: serde_json::Error,
    },
}

/// Why a delivery's envelope could not be read at all (a missing id, a body that is not JSON):
/// such a message can only be dead-lettered.
#[derive(Debug, thiserror::Error)]
pub enum UnreadableEnvelope {
    /// A required part of the envelope is absent.
    #[error("no {0}")]
    Missing(&'static str),
    /// An id that must be a UUID is not one.
    #[error("{field} {value} is not a UUID")]
    NotAUuid {
        /// Which id.
        field: &'static str,
        /// What it held instead.
        value: String,
        /// What the UUID parser found wrong.
        #[source]
        source: uuid::Error,
    },
    /// The body does not parse as JSON.
    #[error("body is not JSON")]
    NotJson(#[source] serde_json::Error),
}

impl Envelope {
    /// Reads the body as the contract type `M`.
    pub fn decode<M: Message>(&self) -> Result<M, DecodeError> {
        if self.message_type != M::TYPE {
            return Err(DecodeError::WrongType { expected: M::TYPE, actual: self.message_type.clone() });
        }
        M::deserialize(&self.payload)
            .map_err(|source| DecodeError::Body { message_type: self.message_type.clone(), source })
    }

    /// The span this message names as its parent, if it carries a valid `traceparent`.
    pub fn trace_context(&self) -> Option<TraceParent> {
        self.traceparent.as_deref().and_then(|header| TraceParent::parse(header).ok())
    }
}

/// The causal context of a unit of work: what new messages are correlated with and caused by.
///
/// An HTTP request starts a context ([`Causation::root`]) in the request's span; handling a
/// message continues the context of that message ([`Causation::from_message`]), whose
/// `traceparent` the consumer has set to the span handling it.
#[derive(Debug, Clone, PartialEq)]
pub struct Causation {
    /// The business flow new messages belong to.
    pub correlation_id: String,
    /// The message being handled, if any.
    pub causation_id: Option<Uuid>,
    /// The span doing the work: the parent named by the messages it causes.
    pub trace: TraceParent,
}

impl Causation {
    /// A new flow, e.g. started by an HTTP request that carries `trace`.
    pub fn root(correlation_id: impl Into<String>, trace: TraceParent) -> Self {
        Self { correlation_id: correlation_id.into(), causation_id: None, trace }
    }

    /// The context of handling `message`: same flow, caused by it, in its trace.
    pub fn from_message(message: &Envelope) -> Self {
        let trace = message.trace_context().unwrap_or_else(TraceParent::new_root);
        Self { correlation_id: message.correlation_id.clone(), causation_id: Some(message.message_id), trace }
    }

    /// Wraps a contract message into a new envelope in this context.
    pub fn envelope<M: Message>(&self, message: &M) -> Envelope {
        Envelope {
            message_id: Uuid::now_v7(),
            message_type: M::TYPE.to_owned(),
            correlation_id: self.correlation_id.clone(),
            causation_id: self.causation_id,
            occurred_at: Utc::now(),
            traceparent: Some(self.trace.to_string()),
            payload: serde_json::to_value(message).expect("contract messages always serialize"),
        }
    }
}

/// A W3C `traceparent` (version 00): trace id, parent span id, sampled flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace, shared by every span of one journey.
    pub trace_id: u128,
    /// The parent span.
    pub span_id: u64,
}

/// A `traceparent` header that does not follow the W3C format (it holds the header).
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("not a W3C traceparent (expected 00-<32 hex>-<16 hex>-<2 hex>): {0:?}")]
pub struct InvalidTraceParent(pub String);

impl TraceParent {
    /// A new trace with a random id.
    pub fn new_root() -> Self {
        Self { trace_id: fastrand::u128(1..), span_id: fastrand::u64(1..) }
    }

    /// A new span in the same trace.
    pub fn child(&self) -> Self {
        Self { trace_id: self.trace_id, span_id: fastrand::u64(1..) }
    }

    /// Reads a `traceparent` header.
    pub fn parse(header: &str) -> Result<Self, InvalidTraceParent> {
        let invalid = || InvalidTraceParent(header.to_owned());
        let mut parts = header.trim().split('-');
        let (Some(version), Some(trace), Some(span), Some(flags), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid());
        };
        let is_hex = |part: &str, len: usize| {
            part.len() == len && part.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if version != "00" || !is_hex(trace, 32) || !is_hex(span, 16) || !is_hex(flags, 2) {
            return Err(invalid());
        }
        let trace_id = u128::from_str_radix(trace, 16).map_err(|_| invalid())?;
        let span_id = u64::from_str_radix(span, 16).map_err(|_| invalid())?;
        if trace_id == 0 || span_id == 0 {
            return Err(invalid());
        }
        Ok(Self { trace_id, span_id })
    }

    /// The trace id as written in logs.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "00-{:032x}-{:016x}-01", self.trace_id, self.span_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use contracts::order::OrderShipped;

    #[test]
    fn traceparent_round_trips_and_children_keep_the_trace() {
        let root = TraceParent::new_root();
        let parsed = TraceParent::parse(&root.to_string()).unwrap();
        assert_eq!(parsed, root);
        let child = root.child();
        assert_eq!(child.trace_id, root.trace_id);
        assert_ne!(child.span_id, root.span_id);
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        for bad in [
            "",
            "00-abc-def-01",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        ] {
            assert!(TraceParent::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn messages_caused_by_a_message_inherit_its_correlation_and_trace() {
        let root = Causation::root("order-1", TraceParent::new_root());
        let first = root.envelope(&OrderShipped { order_id: Uuid::nil() });
        let next = Causation::from_message(&first).envelope(&OrderShipped { order_id: Uuid::nil() });
        assert_eq!(next.correlation_id, "order-1");
        assert_eq!(next.causation_id, Some(first.message_id));
        let trace = |e: &Envelope| TraceParent::parse(e.traceparent.as_deref().unwrap()).unwrap().trace_id;
        assert_eq!(trace(&next), trace(&first));
        assert_eq!(next.decode::<OrderShipped>().unwrap().order_id, Uuid::nil());
        assert!(matches!(next.decode::<contracts::order::OrderPlaced>(), Err(DecodeError::WrongType { .. })));
    }
}
