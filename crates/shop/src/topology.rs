//! The system's consumers, as the operator tools and the test harnesses need to know them.

use messaging::Naming;
use messaging::transport::QueueSpec;

/// Every consumer of the system, as `(service, consumer)`; a test checks that it matches the
/// handlers the services run.
pub const CONSUMERS: &[(&str, &str)] =
    &[("order", "catalog"), ("order", "reservations"), ("inventory", "saga"), ("inventory", "stock")];

/// The queue of every consumer under `naming` (without bindings: for inspection and cleanup).
pub fn consumer_queues(naming: &Naming) -> Vec<QueueSpec> {
    CONSUMERS
        .iter()
        .map(|(service, consumer)| QueueSpec {
            name: naming.queue(service, consumer),
            message_types: Vec::new(),
            prefetch: 1,
        })
        .collect()
}
