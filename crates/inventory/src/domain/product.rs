use kernel::{Chars, Money, OrderId, ProductId, Quantity, Text, TextKind};
use std::collections::{BTreeMap, BTreeSet};

/// A product's name: one line, not blank, bounded.
pub type ProductName = Text<ProductNameText>;

pub struct ProductNameText;

impl TextKind for ProductNameText {
    const WHAT: &'static str = "a product name";
    const SCHEMA_NAME: &'static str = "ProductName";
    const MAX_CHARS: usize = 200;
    const CHARS: Chars = Chars::Line;
}

/// What a product is, for the catalog: text of several lines, bounded, possibly empty.
pub type ProductDescription = Text<ProductDescriptionText>;

pub struct ProductDescriptionText;

impl TextKind for ProductDescriptionText {
    const WHAT: &'static str = "a description";
    const SCHEMA_NAME: &'static str = "ProductDescription";
    const MAX_CHARS: usize = 2000;
    const CHARS: Chars = Chars::Lines;
    const MAY_BE_EMPTY: bool = true;
}

/// What happened to a product. Reservation events also tell the store which reservation rows
/// to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProductEvent {
    Created { product_id: ProductId, name: ProductName, price: Money, stock: u32 },
    Restocked { product_id: ProductId, quantity: Quantity, stock: u32 },
    PriceChanged { product_id: ProductId, name: ProductName, price: Money },
    StockReserved { product_id: ProductId, order_id: OrderId, quantity: Quantity },
    StockReleased { product_id: ProductId, order_id: OrderId, quantity: Quantity },
    StockDeducted { product_id: ProductId, order_id: OrderId, quantity: Quantity },
}

/// A rule of the product that a command would break.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProductError {
    #[error("a price must be greater than zero")]
    PriceNotPositive,
    #[error("stock would exceed {max} units", max = Product::MAX_STOCK)]
    StockTooLarge,
    #[error("not enough stock of product {product_id}: {requested} requested, {available} available")]
    InsufficientStock { product_id: ProductId, requested: u32, available: u32 },
    #[error("order {order_id} already holds a reservation of product {product_id}")]
    AlreadyReserved { product_id: ProductId, order_id: OrderId },
    #[error("order {order_id} holds no reservation of product {product_id} to deduct")]
    NoReservation { product_id: ProductId, order_id: OrderId },
    /// A defect: the product was loaded without the reservation of this order.
    #[error("product {product_id} was loaded without the reservations of order {order_id}")]
    NotInHand { product_id: ProductId, order_id: OrderId },
}

/// The `Product` aggregate: a catalog item with its stock and the units held for orders.
///
/// Invariants: the reserved units (the sum of the reservations) never exceed the stock; each
/// order holds at most one reservation; stock never goes below zero (it is unsigned, and only
/// a deduction of reserved units lowers it).
///
/// A popular product holds a reservation for every confirmed order not yet shipped, and a
/// command concerns one or a few orders: a product is restored with its reserved total and the
/// reservations of the orders in hand only. `reserve`, `release` and `deduct` refuse any other
/// order ([`ProductError::NotInHand`]) rather than take it for one that holds nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    id: ProductId,
    name: ProductName,
    description: String,
    price: Money,
    stock: u32,
    /// Units held for orders: the sum of every reservation, restored or not.
    reserved: u32,
    /// The reservations of the orders in hand.
    reservations: BTreeMap<OrderId, Quantity>,
    /// The orders whose reservations were restored; `None` for a new product, which holds none.
    in_hand: Option<BTreeSet<OrderId>>,
    version: i64,
    events: Vec<ProductEvent>,
}

impl Product {
    pub const MAX_STOCK: u32 = 1_000_000_000;

    pub fn create(
        id: ProductId,
        name: ProductName,
        description: Option<ProductDescription>,
        price: Money,
        stock: u32,
    ) -> Result<Self, ProductError> {
        if price.is_zero() {
            return Err(ProductError::PriceNotPositive);
        }
        if stock > Self::MAX_STOCK {
            return Err(ProductError::StockTooLarge);
        }
        let created = ProductEvent::Created { product_id: id, name: name.clone(), price, stock };
        Ok(Self {
            id,
            name,
            description: description.map(ProductDescription::into_string).unwrap_or_default(),
            price,
            stock,
            reserved: 0,
            reservations: BTreeMap::new(),
            in_hand: None,
            version: 0,
            events: vec![created],
        })
    }

    /// Rebuilds a product from storage: `reserved` units in all (at most `stock`), of which
    /// `reservations` are every reservation of the orders `in_hand` (and of no other order).
    #[expect(clippy::too_many_arguments, reason = "a product's stored state, field by field")]
    pub fn restore(
        id: ProductId,
        name: ProductName,
        description: String,
        price: Money,
        stock: u32,
        reserved: u32,
        reservations: BTreeMap<OrderId, Quantity>,
        in_hand: BTreeSet<OrderId>,
        version: i64,
    ) -> Self {
        let in_hand = Some(in_hand);
        Self { id, name, description, price, stock, reserved, reservations, in_hand, version, events: Vec::new() }
    }

    /// This product as a load with `orders` in hand would restore it if none of those orders
    /// held a reservation of it, taken on trust. Only for reserving: the store inserts each new
    /// reservation, and the insert of one that exists fails the save, so a save in which each
    /// of `orders` was reserved proves the trust was right.
    pub fn assuming_nothing_held_by(&self, orders: impl IntoIterator<Item = OrderId>) -> Product {
        Self {
            name: self.name.clone(),
            description: self.description.clone(),
            reservations: BTreeMap::new(),
            in_hand: Some(orders.into_iter().collect()),
            events: Vec::new(),
            ..*self
        }
    }

    pub fn restock(&mut self, quantity: Quantity) -> Result<(), ProductError> {
        let stock = self.stock.checked_add(quantity.get()).filter(|s| *s <= Self::MAX_STOCK);
        self.stock = stock.ok_or(ProductError::StockTooLarge)?;
        self.events.push(ProductEvent::Restocked { product_id: self.id, quantity, stock: self.stock });
        Ok(())
    }

    /// Sets a new price; setting the current price again changes nothing and raises nothing.
    pub fn change_price(&mut self, price: Money) -> Result<(), ProductError> {
        if price.is_zero() {
            return Err(ProductError::PriceNotPositive);
        }
        if price != self.price {
            self.price = price;
            self.events.push(ProductEvent::PriceChanged { product_id: self.id, name: self.name.clone(), price });
        }
        Ok(())
    }

    /// Holds `quantity` units for an order, if that many are available and the order holds none yet.
    pub fn reserve(&mut self, order_id: OrderId, quantity: Quantity) -> Result<(), ProductError> {
        if self.held_by(order_id)?.is_some() {
            return Err(ProductError::AlreadyReserved { product_id: self.id, order_id });
        }
        let available = self.available();
        if quantity.get() > available {
            return Err(ProductError::InsufficientStock { product_id: self.id, requested: quantity.get(), available });
        }
        self.reservations.insert(order_id, quantity);
        self.reserved += quantity.get();
        self.events.push(ProductEvent::StockReserved { product_id: self.id, order_id, quantity });
        Ok(())
    }

    /// Gives back what an order holds; returns the units released (none if it held nothing,
    /// which makes releasing safe to repeat).
    pub fn release(&mut self, order_id: OrderId) -> Result<Option<Quantity>, ProductError> {
        self.held_by(order_id)?;
        let Some(quantity) = self.reservations.remove(&order_id) else {
            return Ok(None);
        };
        self.reserved -= quantity.get();
        self.events.push(ProductEvent::StockReleased { product_id: self.id, order_id, quantity });
        Ok(Some(quantity))
    }

    /// Takes an order's reserved units out of stock (the order shipped).
    pub fn deduct(&mut self, order_id: OrderId) -> Result<Quantity, ProductError> {
        self.held_by(order_id)?;
        let quantity =
            self.reservations.remove(&order_id).ok_or(ProductError::NoReservation { product_id: self.id, order_id })?;
        // Reserved units never exceed stock, so this cannot underflow.
        self.stock -= quantity.get();
        self.reserved -= quantity.get();
        self.events.push(ProductEvent::StockDeducted { product_id: self.id, order_id, quantity });
        Ok(quantity)
    }

    /// What `order_id` holds, if its reservations are in hand.
    fn held_by(&self, order_id: OrderId) -> Result<Option<Quantity>, ProductError> {
        match &self.in_hand {
            Some(in_hand) if !in_hand.contains(&order_id) => {
                Err(ProductError::NotInHand { product_id: self.id, order_id })
            }
            _ => Ok(self.reservations.get(&order_id).copied()),
        }
    }

    /// Notes that a store saved this copy: it is now one version further.
    pub fn record_saved(&mut self) {
        self.version += 1;
    }

    pub fn take_events(&mut self) -> Vec<ProductEvent> {
        std::mem::take(&mut self.events)
    }

    pub fn id(&self) -> ProductId {
        self.id
    }
    pub fn name(&self) -> &ProductName {
        &self.name
    }
    pub fn description(&self) -> &str {
        &self.description
    }
    pub fn price(&self) -> Money {
        self.price
    }
    pub fn stock(&self) -> u32 {
        self.stock
    }
    /// Units held for orders.
    pub fn reserved(&self) -> u32 {
        self.reserved
    }
    /// Units that can still be reserved.
    pub fn available(&self) -> u32 {
        self.stock - self.reserved
    }
    /// The reservations of the orders in hand (see [`Product::restore`]).
    pub fn reservations(&self) -> &BTreeMap<OrderId, Quantity> {
        &self.reservations
    }
    pub fn reservation_of(&self, order_id: OrderId) -> Option<Quantity> {
        self.reservations.get(&order_id).copied()
    }
    pub fn version(&self) -> i64 {
        self.version
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernel::TextError;

    fn qty(units: i64) -> Quantity {
        Quantity::new(units).unwrap()
    }

    fn product(stock: u32) -> Product {
        let mut product = Product::create(
            ProductId::new(1).unwrap(),
            ProductName::new("Kettle").unwrap(),
            ProductDescription::new("Boils water").ok(),
            "24.90".parse().unwrap(),
            stock,
        )
        .unwrap();
        product.take_events();
        product
    }

    fn assert_invariants(product: &Product) {
        assert!(product.reserved() <= product.stock(), "reserved {} > stock {}", product.reserved(), product.stock());
    }

    #[test]
    fn a_restored_product_acts_only_for_the_orders_in_hand() {
        let (held, other) = (OrderId::generate(), OrderId::generate());
        let name = ProductName::new("Kettle").unwrap();
        let price = Money::new("24.90".parse().unwrap()).unwrap();
        let reservations = BTreeMap::from([(held, qty(2))]);
        let in_hand = BTreeSet::from([held]);
        let mut product =
            Product::restore(ProductId::new(1).unwrap(), name, String::new(), price, 10, 5, reservations, in_hand, 3);
        assert_eq!((product.reserved(), product.available()), (5, 5), "3 units held by orders not in hand");

        let not_in_hand = |result: Result<_, ProductError>| matches!(result, Err(ProductError::NotInHand { order_id, .. }) if order_id == other);
        assert!(not_in_hand(product.reserve(other, qty(1)).map(|()| 0)));
        assert!(not_in_hand(product.release(other).map(|_| 0)));
        assert!(not_in_hand(product.deduct(other).map(|_| 0)));
        assert_eq!(product.deduct(held), Ok(qty(2)));
        assert_eq!((product.stock(), product.reserved()), (8, 3));
    }

    #[test]
    fn a_product_needs_a_name_and_a_positive_price() {
        assert_eq!(ProductName::new("  "), Err(TextError::Empty { what: "a product name" }));
        assert_eq!(
            ProductName::new("x".repeat(201)),
            Err(TextError::TooLong { what: "a product name", max: 200, got: 201 })
        );
        assert!(ProductName::new("Ket\u{0}tle").is_err(), "no store holds a NUL");
        assert!(ProductName::new("Two\nlines").is_err());
        assert!(ProductDescription::new("Two\nlines").is_ok());
        let zero = Product::create(ProductId::new(1).unwrap(), ProductName::new("Free").unwrap(), None, Money::ZERO, 1);
        assert_eq!(zero, Err(ProductError::PriceNotPositive));
    }

    #[test]
    fn stock_may_start_at_zero_but_not_beyond_the_maximum() {
        assert_eq!(product(0).available(), 0);
        let huge = Product::create(
            ProductId::new(1).unwrap(),
            ProductName::new("Sand").unwrap(),
            None,
            "1".parse().unwrap(),
            Product::MAX_STOCK + 1,
        );
        assert_eq!(huge, Err(ProductError::StockTooLarge));
    }

    #[test]
    fn restocking_adds_units() {
        let mut product = product(2);
        product.restock(qty(5)).unwrap();
        assert_eq!(product.stock(), 7);
        assert_eq!(
            product.take_events(),
            vec![ProductEvent::Restocked { product_id: product.id(), quantity: qty(5), stock: 7 }]
        );
    }

    #[test]
    fn restocking_past_the_maximum_is_refused() {
        let mut product = product(Product::MAX_STOCK);
        assert_eq!(product.restock(qty(1)), Err(ProductError::StockTooLarge));
        assert_eq!(product.stock(), Product::MAX_STOCK);
    }

    #[test]
    fn changing_the_price_raises_an_event_only_when_it_changes() {
        let mut product = product(1);
        product.change_price("24.90".parse().unwrap()).unwrap();
        assert!(product.take_events().is_empty());
        product.change_price("19.90".parse().unwrap()).unwrap();
        assert_eq!(product.price().to_string(), "19.90");
        assert_eq!(product.take_events().len(), 1);
        assert_eq!(product.change_price(Money::ZERO), Err(ProductError::PriceNotPositive));
    }

    #[test]
    fn reserving_holds_units_until_the_stock_is_spoken_for() {
        let mut product = product(5);
        let (a, b, c) = (OrderId::generate(), OrderId::generate(), OrderId::generate());
        product.reserve(a, qty(3)).unwrap();
        product.reserve(b, qty(2)).unwrap();
        assert_eq!((product.reserved(), product.available()), (5, 0));
        assert_eq!(
            product.reserve(c, qty(1)),
            Err(ProductError::InsufficientStock { product_id: product.id(), requested: 1, available: 0 })
        );
        assert_invariants(&product);
    }

    #[test]
    fn an_order_holds_at_most_one_reservation_per_product() {
        let mut product = product(5);
        let order = OrderId::generate();
        product.reserve(order, qty(1)).unwrap();
        assert_eq!(
            product.reserve(order, qty(1)),
            Err(ProductError::AlreadyReserved { product_id: product.id(), order_id: order })
        );
        assert_eq!(product.reserved(), 1);
    }

    #[test]
    fn releasing_gives_units_back_and_is_safe_to_repeat() {
        let mut product = product(5);
        let order = OrderId::generate();
        product.reserve(order, qty(4)).unwrap();
        product.take_events();
        assert_eq!(product.release(order), Ok(Some(qty(4))));
        assert_eq!(product.release(order), Ok(None));
        assert_eq!((product.stock(), product.reserved()), (5, 0));
        assert_eq!(product.take_events().len(), 1, "a release of nothing raised an event");
    }

    #[test]
    fn deducting_takes_exactly_the_reserved_units_out_of_stock() {
        let mut product = product(5);
        let (shipped, other) = (OrderId::generate(), OrderId::generate());
        product.reserve(shipped, qty(3)).unwrap();
        product.reserve(other, qty(1)).unwrap();
        assert_eq!(product.deduct(shipped), Ok(qty(3)));
        assert_eq!((product.stock(), product.reserved(), product.available()), (2, 1, 1));
        assert_invariants(&product);
    }

    #[test]
    fn deducting_without_a_reservation_is_refused() {
        let mut product = product(5);
        let order = OrderId::generate();
        assert_eq!(
            product.deduct(order),
            Err(ProductError::NoReservation { product_id: product.id(), order_id: order })
        );
        assert_eq!(product.stock(), 5);
    }

    #[test]
    fn any_sequence_of_operations_keeps_the_invariants() {
        let mut rng = fastrand::Rng::with_seed(7);
        let orders: Vec<OrderId> = (0..6).map(|_| OrderId::generate()).collect();
        let mut product = product(10);
        for _ in 0..5_000 {
            let order = orders[rng.usize(..orders.len())];
            let _ = match rng.u8(..4) {
                0 => product.reserve(order, qty(rng.i64(1..5))),
                1 => {
                    product.release(order).unwrap();
                    Ok(())
                }
                2 => product.deduct(order).map(drop),
                _ => product.restock(qty(rng.i64(1..3))),
            };
            assert_invariants(&product);
        }
    }
}
