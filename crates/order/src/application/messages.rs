//! Domain events that leave the service, as integration messages.

use crate::domain::{OrderEvent, OrderStatus};
use contracts::order::{CancelledFrom, OrderCancelled, OrderPlaced, OrderPlacedItem, OrderShipped};
use messaging::{Causation, Envelope};

/// The integration message announcing `event`, if other services care about it.
pub fn integration_message(event: &OrderEvent, causation: &Causation) -> Option<Envelope> {
    match event {
        OrderEvent::Placed { order_id, customer_id, total, lines } => Some(
            causation.envelope(&OrderPlaced {
                order_id: order_id.as_uuid(),
                customer_id: customer_id.as_uuid(),
                total_amount: total.amount(),
                items: lines
                    .iter()
                    .map(|(product_id, quantity)| OrderPlacedItem {
                        product_id: product_id.get(),
                        quantity: quantity.get(),
                    })
                    .collect(),
            }),
        ),
        OrderEvent::Cancelled { order_id, from, reason } => Some(causation.envelope(&OrderCancelled {
            order_id: order_id.as_uuid(),
            reason: reason.to_string(),
            cancelled_from: match from {
                OrderStatus::Draft => CancelledFrom::Draft,
                OrderStatus::Placed => CancelledFrom::Placed,
                _ => CancelledFrom::Confirmed,
            },
        })),
        OrderEvent::Shipped { order_id } => Some(causation.envelope(&OrderShipped { order_id: order_id.as_uuid() })),
        OrderEvent::Created { .. }
        | OrderEvent::LineAdded { .. }
        | OrderEvent::LineRemoved { .. }
        | OrderEvent::Confirmed { .. }
        | OrderEvent::Rejected { .. } => None,
    }
}
