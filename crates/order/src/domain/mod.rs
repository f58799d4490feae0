//! The order domain: the `Order` aggregate, its rules and its events. Pure Rust, no I/O.

mod order;

pub use kernel::{CustomerId, Money, MoneyError, OrderId, ProductId, Quantity, QuantityError};
pub use order::{
    CatalogItem, Order, OrderDescription, OrderDescriptionText, OrderError, OrderEvent, OrderLine, OrderState,
    OrderStatus, Reason, ReasonText, Timeline,
};
