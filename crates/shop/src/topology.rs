//! The system's consumers, as each service declares them, for the operator tools and the tests.

use messaging::Naming;
use messaging::transport::QueueSpec;

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
