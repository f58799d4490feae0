//! What application code writes to consume messages: the enum of what a handler reads
//! ([`Inbound`], usually declared with [`inbound!`](crate::inbound)), the [`Handler`] that
//! gets each message decoded, the [`BatchHandler`] that applies several messages about one
//! aggregate in one unit of work, and how a failure asks for a retry or a dead letter
//! ([`HandlerError`]).

use crate::envelope::{DecodeError, Envelope};
use crate::unit_of_work::{BoxError, IsConflict, retry_on_conflict};
use async_trait::async_trait;
use std::error::Error as StdError;
use std::hash::Hash;

/// The messages one handler consumes, as one type. The type names its queue is bound to and
/// the decoding come from one list (see [`inbound!`](crate::inbound)), so they cannot drift
/// apart.
pub trait Inbound: Sized + Send + Sync + 'static {
    /// The message types routed to the handler.
    const TYPES: &'static [&'static str];

    /// Reads an envelope as one of these messages; a type not in [`TYPES`](Self::TYPES) is refused.
    fn decode(envelope: &Envelope) -> Result<Self, DecodeError>;
}

/// Declares an enum of contract messages and implements [`Inbound`] for it: one variant per
/// message type, each holding its [`contracts::Message`].
///
/// ```
/// use contracts::order::{OrderCancelled, OrderShipped};
///
/// messaging::inbound! {
///     /// What a handler reads.
///     #[derive(Debug)]
///     pub enum OrderNews {
///         Cancelled(OrderCancelled),
///         Shipped(OrderShipped),
///     }
/// }
///
/// use messaging::Inbound;
/// assert_eq!(OrderNews::TYPES, ["order.cancelled.v1", "order.shipped.v1"]);
/// ```
#[macro_export]
macro_rules! inbound {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $($(#[$variant_meta:meta])* $variant:ident($message:ty)),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis enum $name {
            $($(#[$variant_meta])* $variant($message)),+
        }

        impl $crate::Inbound for $name {
            const TYPES: &'static [&'static str] = &[$(<$message as $crate::Message>::TYPE),+];

            fn decode(envelope: &$crate::Envelope) -> ::std::result::Result<Self, $crate::DecodeError> {
                $(
                    if envelope.message_type == <$message as $crate::Message>::TYPE {
                        return envelope.decode::<$message>().map(Self::$variant);
                    }
                )+
                Err($crate::DecodeError::UnknownType(envelope.message_type.clone()))
            }
        }
    };
}

/// A decoded message with the envelope it came in (its id, correlation and trace).
#[derive(Debug, Clone, PartialEq)]
pub struct Received<M> {
    /// The envelope, as delivered.
    pub envelope: Envelope,
    /// Its body, decoded.
    pub message: M,
}

impl<M: Inbound> Received<M> {
    /// Decodes `envelope` as one of the messages `M`.
    pub fn decode(envelope: Envelope) -> Result<Self, DecodeError> {
        let message = M::decode(&envelope)?;
        Ok(Self { envelope, message })
    }
}

/// Application code that reacts to messages. It must commit its effects together with the
/// inbox record of the message (see [`crate::Effects::consuming`]) under its [`name`](Self::name).
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// What it consumes; its queue is bound to these types.
    type Message: Inbound;

    /// The consumer name: names its queue and its inbox records.
    fn name(&self) -> &'static str;

    /// Messages with the same key are handled one after another (within a process); others
    /// run concurrently. By default, the correlation id: one order's messages never race each
    /// other for the same saga or aggregate version.
    fn ordering_key(&self, message: &Received<Self::Message>) -> u64 {
        hash(&message.envelope.correlation_id)
    }

    /// Applies one message.
    async fn handle(&self, message: &Received<Self::Message>) -> Result<(), HandlerError>;

    /// Applies several messages with one ordering key in one unit of work (one load, one
    /// commit with every inbox record), if the handler knows how; `None` if it does not. On
    /// `None` or an error the runtime handles the messages one by one, so that a message that
    /// fails is retried or dead-lettered on its own.
    async fn handle_many(&self, _messages: &[&Received<Self::Message>]) -> Option<Result<(), HandlerError>> {
        None
    }
}

/// A handler whose every message is about one aggregate (a product, an order's saga), applied
/// in a unit of work that loads it, applies the messages in turn and commits it with their
/// inbox records. Every `BatchHandler` is a [`Handler`]: messages about one aggregate share an
/// ordering lane, a batch of them is applied in one unit of work, and a conflict with another
/// writer starts the unit of work again from a fresh load.
#[async_trait]
pub trait BatchHandler: Send + Sync + 'static {
    /// What it consumes.
    type Message: Inbound;
    /// Identifies the aggregate a message is about.
    type Key: Hash + Eq + Send + Sync;
    /// Why a unit of work failed; a conflict is retried, the rest is classified by
    /// [`HandlerError`]'s conversion.
    type Error: IsConflict + Into<HandlerError> + Send;

    /// The consumer name (see [`Handler::name`]).
    fn name(&self) -> &'static str;

    /// The aggregate `message` is about.
    fn key(&self, message: &Self::Message) -> Self::Key;

    /// One attempt at one unit of work: loads the aggregate of `key`, applies `messages` (all
    /// about it) in order, and commits it with every message's inbox record. A message already
    /// applied fails the whole unit for a batch (see [`crate::applied`]).
    async fn apply(&self, key: &Self::Key, messages: &[&Received<Self::Message>]) -> Result<(), Self::Error>;
}

#[async_trait]
impl<B: BatchHandler> Handler for B {
    type Message = B::Message;

    fn name(&self) -> &'static str {
        BatchHandler::name(self)
    }

    /// Messages about one aggregate run one after another: they would only conflict on its version.
    fn ordering_key(&self, message: &Received<Self::Message>) -> u64 {
        hash(self.key(&message.message))
    }

    async fn handle(&self, message: &Received<Self::Message>) -> Result<(), HandlerError> {
        let key = self.key(&message.message);
        let single = [message];
        retry_on_conflict(|| self.apply(&key, &single)).await.map_err(Into::into)
    }

    async fn handle_many(&self, messages: &[&Received<Self::Message>]) -> Option<Result<(), HandlerError>> {
        let key = self.key(&messages.first()?.message);
        if messages.iter().any(|message| self.key(&message.message) != key) {
            return None; // different aggregates that share a lane
        }
        Some(retry_on_conflict(|| self.apply(&key, messages)).await.map_err(Into::into))
    }
}

/// A stable hash for ordering keys.
pub fn hash(key: impl Hash) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(key)
}

/// Why a handler did not process a message, with the cause.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Might succeed later (database unreachable, ...): retried with backoff.
    #[error("transient failure")]
    Transient(#[source] BoxError),
    /// Will never succeed (undecodable body, broken rule, corrupt stored data): dead-lettered
    /// at once.
    #[error("permanent failure")]
    Permanent(#[source] BoxError),
}

impl HandlerError {
    /// A failure that retrying cannot mend, caused by `error`.
    pub fn permanent(error: impl Into<BoxError>) -> Self {
        HandlerError::Permanent(error.into())
    }

    /// A failure that may go away, caused by `error`.
    pub fn transient(error: impl Into<BoxError>) -> Self {
        HandlerError::Transient(error.into())
    }

    /// What went wrong.
    pub fn cause(&self) -> &(dyn StdError + Send + Sync + 'static) {
        match self {
            HandlerError::Transient(cause) | HandlerError::Permanent(cause) => cause.as_ref(),
        }
    }
}

/// Whether a failure may go away by itself (a store in the way), so that handling the message
/// again later may succeed. Errors that say so convert into a [`HandlerError`] with `?`.
pub trait IsTransient {
    /// Whether trying again later may succeed.
    fn is_transient(&self) -> bool;
}

impl<E: IsTransient + StdError + Send + Sync + 'static> From<E> for HandlerError {
    fn from(error: E) -> Self {
        if error.is_transient() { HandlerError::transient(error) } else { HandlerError::permanent(error) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Causation, TraceParent};
    use contracts::order::{OrderCancelled, OrderPlaced, OrderShipped};
    use uuid::Uuid;

    crate::inbound! {
        #[derive(Debug, PartialEq)]
        enum Read {
            Shipped(OrderShipped),
            Cancelled(OrderCancelled),
        }
    }

    fn shipped() -> Envelope {
        Causation::root("order-1", TraceParent::new_root()).envelope(&OrderShipped { order_id: Uuid::nil() })
    }

    #[test]
    fn the_type_list_and_the_decoding_come_from_one_declaration() {
        assert_eq!(Read::TYPES, ["order.shipped.v1", "order.cancelled.v1"]);
        assert_eq!(Read::decode(&shipped()).unwrap(), Read::Shipped(OrderShipped { order_id: Uuid::nil() }));
    }

    #[test]
    fn a_type_not_on_the_list_is_refused() {
        let placed = Causation::root("order-1", TraceParent::new_root()).envelope(&OrderPlaced {
            order_id: Uuid::nil(),
            customer_id: Uuid::nil(),
            total_amount: Default::default(),
            items: Vec::new(),
        });
        let refused = Read::decode(&placed).unwrap_err();
        assert!(matches!(&refused, DecodeError::UnknownType(t) if t == "order.placed.v1"), "{refused:?}");
    }

    #[test]
    fn a_body_that_breaks_its_contract_is_refused_with_the_cause() {
        let mut broken = shipped();
        broken.payload = serde_json::json!({ "orderId": 7 });
        let refused = Read::decode(&broken).unwrap_err();
        assert!(matches!(refused, DecodeError::Body { .. }), "{refused:?}");
        assert!(refused.source().is_some());
    }

    #[derive(Debug, thiserror::Error)]
    #[error("store away")]
    struct Flaky(bool);

    impl IsTransient for Flaky {
        fn is_transient(&self) -> bool {
            self.0
        }
    }

    #[test]
    fn errors_that_know_whether_they_are_transient_convert_with_their_cause() {
        assert!(matches!(HandlerError::from(Flaky(true)), HandlerError::Transient(_)));
        let permanent = HandlerError::from(Flaky(false));
        assert!(matches!(permanent, HandlerError::Permanent(_)));
        assert_eq!(permanent.cause().to_string(), "store away");
        assert!(permanent.source().unwrap().downcast_ref::<Flaky>().is_some());
    }
}
