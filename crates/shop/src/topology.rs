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

/// The message types that `service` sends (their names begin with its name) and that a single
/// consumer of the system reads: those the service may hand to that consumer in-process
/// (`messaging::hand_off`) when it runs in the same process (`shop up` runs both services). A
/// type read by two consumers must go through the broker, to each of their queues.
pub fn single_reader(service: &str) -> Vec<String> {
    let reads = reads();
    let readers = |message_type: &str| reads.iter().filter(|(_, _, types)| types.contains(&message_type)).count();
    let prefix = format!("{service}.");
    let mut types: Vec<String> = reads
        .iter()
        .flat_map(|(_, _, types)| types.iter())
        .filter(|message_type| message_type.starts_with(&prefix) && readers(message_type) == 1)
        .map(|message_type| (*message_type).to_owned())
        .collect();
    types.sort();
    types
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_of_the_order_flow_has_a_single_reader() {
        let readers: Vec<_> = reads().iter().map(|(service, consumer, _)| (*service, *consumer)).collect();
        assert_eq!(readers, consumers().collect::<Vec<_>>(), "one entry per consumer, in their order");
        assert_eq!(
            single_reader(order::application::SERVICE),
            ["order.cancelled.v1", "order.placed.v1", "order.shipped.v1"]
        );
        assert_eq!(
            single_reader(inventory::application::SERVICE),
            [
                "inventory.deduct-stock.v1",
                "inventory.release-stock.v1",
                "inventory.reservation-timed-out.v1",
                "inventory.reserve-stock.v1",
                "inventory.stock-reservation-completed.v1",
                "inventory.stock-reservation-failed.v1",
                "inventory.stock-reservation-rejected.v1",
                "inventory.stock-reserved.v1",
            ]
        );
    }
}
