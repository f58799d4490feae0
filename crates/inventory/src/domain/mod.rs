//! The inventory domain: the `Product` aggregate with its stock and reservations. Pure Rust, no I/O.

mod product;

pub use kernel::{Money, MoneyError, OrderId, ProductId, Quantity, QuantityError};
pub use product::{
    Product, ProductDescription, ProductDescriptionText, ProductError, ProductEvent, ProductName, ProductNameText,
};
