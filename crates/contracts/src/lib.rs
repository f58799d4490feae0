//! Integration messages: the only vocabulary the two services share.
//!
//! Every message has a stable, versioned type name (`order.placed.v1`). A breaking change to a
//! shape gets a new type (`.v2`) beside the old one, never an edit in place. Bodies are JSON with
//! camelCase fields; money is an exact decimal written as a string. Readers ignore fields they do
//! not know, so adding an optional field is not a breaking change.
//!
//! Only messages that some consumer handles are defined here: publishing is confirmed only once
//! a message reached a queue, so a type nobody is bound for would never leave the outbox.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use uuid::Uuid;

/// A message that crosses a service boundary.
pub trait Message: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The versioned type name, also used as the routing key.
    const TYPE: &'static str;
}

macro_rules! message {
    ($name:ident, $type_name:literal) => {
        impl Message for $name {
            const TYPE: &'static str = $type_name;
        }
    };
}

/// Messages published by the order service.
pub mod order {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct OrderPlaced {
        pub order_id: Uuid,
        pub customer_id: Uuid,
        #[serde(with = "rust_decimal::serde::str")]
        pub total_amount: Decimal,
        pub items: Vec<OrderPlacedItem>,
    }
    message!(OrderPlaced, "order.placed.v1");

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct OrderPlacedItem {
        pub product_id: i64,
        pub quantity: u32,
    }

    /// The status an order had when it was cancelled: it tells inventory whether stock is held.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub enum CancelledFrom {
        Draft,
        Placed,
        Confirmed,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct OrderCancelled {
        pub order_id: Uuid,
        pub reason: String,
        pub cancelled_from: CancelledFrom,
    }
    message!(OrderCancelled, "order.cancelled.v1");

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct OrderShipped {
        pub order_id: Uuid,
    }
    message!(OrderShipped, "order.shipped.v1");
}

/// Messages published by the inventory service about its catalog.
pub mod product {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct ProductCreated {
        pub product_id: i64,
        pub name: String,
        #[serde(with = "rust_decimal::serde::str")]
        pub price: Decimal,
        pub stock: u32,
        /// The product's version after the change, so that late copies never overwrite newer ones.
        pub version: i64,
    }
    message!(ProductCreated, "product.created.v1");

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct ProductPriceChanged {
        pub product_id: i64,
        pub name: String,
        #[serde(with = "rust_decimal::serde::str")]
        pub price: Decimal,
        pub version: i64,
    }
    message!(ProductPriceChanged, "product.price-changed.v1");
}

/// Messages of the stock reservation: commands and replies inside inventory, outcomes for orders.
pub mod inventory {
    use super::*;

    /// Command to the stock handler: hold `quantity` units of a product for an order.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct ReserveStock {
        pub order_id: Uuid,
        pub product_id: i64,
        pub quantity: u32,
    }
    message!(ReserveStock, "inventory.reserve-stock.v1");

    /// Command to the stock handler: give back whatever an order holds of a product.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct ReleaseStock {
        pub order_id: Uuid,
        pub product_id: i64,
    }
    message!(ReleaseStock, "inventory.release-stock.v1");

    /// Command to the stock handler: the order shipped; take its reserved units out of stock.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct DeductStock {
        pub order_id: Uuid,
        pub product_id: i64,
    }
    message!(DeductStock, "inventory.deduct-stock.v1");

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct StockReserved {
        pub order_id: Uuid,
        pub product_id: i64,
        pub quantity: u32,
    }
    message!(StockReserved, "inventory.stock-reserved.v1");

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct StockReservationRejected {
        pub order_id: Uuid,
        pub product_id: i64,
        pub reason: String,
    }
    message!(StockReservationRejected, "inventory.stock-reservation-rejected.v1");

    /// Scheduled by the saga when it starts; ends the reservation if it arrives first.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct ReservationTimedOut {
        pub order_id: Uuid,
    }
    message!(ReservationTimedOut, "inventory.reservation-timed-out.v1");

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct StockReservationCompleted {
        pub order_id: Uuid,
    }
    message!(StockReservationCompleted, "inventory.stock-reservation-completed.v1");

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct StockReservationFailed {
        pub order_id: Uuid,
        pub reason: String,
    }
    message!(StockReservationFailed, "inventory.stock-reservation-failed.v1");
}

/// One sample of every message type, for round-trip tests of codecs and transports.
pub fn samples() -> Vec<(&'static str, serde_json::Value)> {
    fn sample<M: Message>(message: M) -> (&'static str, serde_json::Value) {
        (M::TYPE, serde_json::to_value(message).expect("contracts serialize"))
    }
    let order_id = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001);
    let customer_id = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0002);
    let price = Decimal::new(1999, 2);
    vec![
        sample(order::OrderPlaced {
            order_id,
            customer_id,
            total_amount: Decimal::new(3998, 2),
            items: vec![order::OrderPlacedItem { product_id: 1, quantity: 2 }],
        }),
        sample(order::OrderCancelled {
            order_id,
            reason: "changed my mind".into(),
            cancelled_from: order::CancelledFrom::Placed,
        }),
        sample(order::OrderShipped { order_id }),
        sample(product::ProductCreated { product_id: 1, name: "Kettle".into(), price, stock: 5, version: 1 }),
        sample(product::ProductPriceChanged { product_id: 1, name: "Kettle".into(), price, version: 2 }),
        sample(inventory::ReserveStock { order_id, product_id: 1, quantity: 2 }),
        sample(inventory::ReleaseStock { order_id, product_id: 1 }),
        sample(inventory::DeductStock { order_id, product_id: 1 }),
        sample(inventory::StockReserved { order_id, product_id: 1, quantity: 2 }),
        sample(inventory::StockReservationRejected { order_id, product_id: 1, reason: "unknown product 1".into() }),
        sample(inventory::ReservationTimedOut { order_id }),
        sample(inventory::StockReservationCompleted { order_id }),
        sample(inventory::StockReservationFailed { order_id, reason: "reservation timed out".into() }),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_camel_case_with_money_as_string() {
        let placed = order::OrderPlaced {
            order_id: Uuid::nil(),
            customer_id: Uuid::nil(),
            total_amount: Decimal::new(1999, 2),
            items: vec![order::OrderPlacedItem { product_id: 7, quantity: 3 }],
        };
        let json = serde_json::to_value(&placed).unwrap();
        assert_eq!(json["totalAmount"], "19.99");
        assert_eq!(json["items"][0]["productId"], 7);
        assert_eq!(serde_json::from_value::<order::OrderPlaced>(json).unwrap(), placed);
    }

    #[test]
    fn type_names_are_unique_and_versioned() {
        let names: Vec<_> = samples().into_iter().map(|(name, _)| name).collect();
        let unique: std::collections::BTreeSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
        assert!(names.iter().all(|name| name.ends_with(".v1")));
    }

    #[test]
    fn readers_tolerate_added_fields_but_not_missing_ones() {
        let added = serde_json::json!({ "orderId": Uuid::nil(), "carrier": "post" });
        assert!(serde_json::from_value::<order::OrderShipped>(added).is_ok());
        let missing = serde_json::json!({ "orderId": Uuid::nil() });
        assert!(serde_json::from_value::<order::OrderCancelled>(missing).is_err());
    }
}
