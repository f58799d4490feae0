//! The system's consumers, as each service declares them, and what they read: for the operator
//! tools, the tests and the in-process hand-off.

use messaging::transport::QueueSpec;
use messaging::{Inbound, Naming};

/// Every consumer of the system, as `(service, consumer)`, in the services' own order.
pub fn consumers() -> impl Iterator<Item = (&'static str, &'static str)> + Clone {
    let of = |service: &'static str, consumers: &'static [&'static str]| {
        consumers.iter().map(move |consumer| (service, *consumer))
    };
    of(order::application::SERVICE, order::application::CONSUMERS)
        .chain(of(inventory::application::SERVICE, inventory::application::CONSUMERS))
}

/// The queue of every consumer under `naming` (without bindings: for inspection and cleanup).
pub fn consumer_queues(naming: &Naming) -> Vec<QueueSpec> {
    consumers()
        .map(|(service, consumer)| QueueSpec {
            name: naming.queue(service, consumer),
            message_types: Vec::new(),
            prefetch: 1,
        })
        .collect()
}

/// The message types each consumer of the system reads, as `(service, consumer, types)`.
fn reads() -> [(&'static str, &'static str, &'static [&'static str]); 4] {
    use inventory::application::{ReservationSagaHandler, SagaMessage, StockCommand, StockHandler};
    use order::application::{CatalogHandler, ProductNews, ReservationOutcome, ReservationOutcomeHandler};
    let (order, inventory) = (order::application::SERVICE, inventory::application::SERVICE);
    [
        (order, CatalogHandler::NAME, ProductNews::TYPES),
        (order, ReservationOutcomeHandler::NAME, ReservationOutcome::TYPES),
        (inventory, ReservationSagaHandler::NAME, SagaMessage::TYPES),
        (inventory, StockHandler::NAME, StockCommand::TYPES),
    ]
}

/// The message types that `service` sends (their names begin with its name) and that one
/// consumer of `service` reads and no other consumer of the system: those the service hands to
/// that consumer in-process (`messaging::hand_off`). A type read elsewhere too must go through
/// the broker.
pub fn kept_within(service: &str) -> Vec<String> {
    let reads = reads();
    let readers = |message_type: &str| reads.iter().filter(|(_, _, types)| types.contains(&message_type)).count();
    let prefix = format!("{service}.");
    reads
        .iter()
        .filter(|(reader, _, _)| *reader == service)
        .flat_map(|(_, _, types)| types.iter())
        .filter(|message_type| message_type.starts_with(&prefix) && readers(message_type) == 1)
        .map(|message_type| (*message_type).to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inventory_keeps_its_stock_commands_and_answers_to_itself_and_order_keeps_nothing() {
        let readers: Vec<_> = reads().iter().map(|(service, consumer, _)| (*service, *consumer)).collect();
        assert_eq!(readers, consumers().collect::<Vec<_>>(), "one entry per consumer, in their order");
        assert!(kept_within(order::application::SERVICE).is_empty(), "order reads only what inventory sends");
        let mut inventory = kept_within(inventory::application::SERVICE);
        inventory.sort();
        assert_eq!(
            inventory,
            [
                "inventory.deduct-stock.v1",
                "inventory.release-stock.v1",
                "inventory.reservation-timed-out.v1",
                "inventory.reserve-stock.v1",
                "inventory.stock-reservation-rejected.v1",
                "inventory.stock-reserved.v1",
            ]
        );
    }
}
