use chrono::{DateTime, Utc};
use kernel::{Chars, CustomerId, Money, MoneyError, OrderId, ProductId, Quantity, QuantityError, Text, TextKind};
use std::fmt;

/// Where an order is in its life. Allowed moves:
/// `Draft -> Placed -> Confirmed | Rejected`, `Confirmed -> Shipped`,
/// `Draft | Placed | Confirmed -> Cancelled`. Nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderStatus {
    Draft,
    Placed,
    Confirmed,
    Rejected,
    Shipped,
    Cancelled,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 6] = [
        OrderStatus::Draft,
        OrderStatus::Placed,
        OrderStatus::Confirmed,
        OrderStatus::Rejected,
        OrderStatus::Shipped,
        OrderStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Draft => "draft",
            OrderStatus::Placed => "placed",
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::Rejected => "rejected",
            OrderStatus::Shipped => "shipped",
            OrderStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str().eq_ignore_ascii_case(text))
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The status together with what only some statuses have (the reason of an end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderState {
    Draft,
    Placed,
    Confirmed,
    Rejected { reason: Reason },
    Shipped,
    Cancelled { reason: Reason },
}

impl OrderState {
    pub fn status(&self) -> OrderStatus {
        match self {
            OrderState::Draft => OrderStatus::Draft,
            OrderState::Placed => OrderStatus::Placed,
            OrderState::Confirmed => OrderStatus::Confirmed,
            OrderState::Rejected { .. } => OrderStatus::Rejected,
            OrderState::Shipped => OrderStatus::Shipped,
            OrderState::Cancelled { .. } => OrderStatus::Cancelled,
        }
    }

    pub fn reason(&self) -> Option<&Reason> {
        match self {
            OrderState::Rejected { reason } | OrderState::Cancelled { reason } => Some(reason),
            _ => None,
        }
    }
}

/// Why an order was cancelled or rejected: text of several lines, not blank, bounded.
pub type Reason = Text<ReasonText>;

pub struct ReasonText;

impl TextKind for ReasonText {
    const WHAT: &'static str = "a reason";
    const SCHEMA_NAME: &'static str = "Reason";
    const MAX_CHARS: usize = 500;
    const CHARS: Chars = Chars::Lines;
}

/// What the customer calls an order: text of several lines, bounded; blank means none.
pub type OrderDescription = Text<OrderDescriptionText>;

pub struct OrderDescriptionText;

impl TextKind for OrderDescriptionText {
    const WHAT: &'static str = "a description";
    const SCHEMA_NAME: &'static str = "OrderDescription";
    const MAX_CHARS: usize = 1000;
    const CHARS: Chars = Chars::Lines;
    const MAY_BE_EMPTY: bool = true;
}

/// A product as the order service knows it: its own copy of the inventory catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogItem {
    pub product_id: ProductId,
    pub name: String,
    pub price: Money,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderLine {
    pub product_id: ProductId,
    pub product_name: String,
    pub unit_price: Money,
    pub quantity: Quantity,
}

impl OrderLine {
    pub fn total(&self) -> Result<Money, MoneyError> {
        self.unit_price.times(self.quantity)
    }
}

/// When an order reached the milestones of its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeline {
    pub created_at: DateTime<Utc>,
    pub placed_at: Option<DateTime<Utc>>,
    /// When inventory's answer confirmed or rejected it.
    pub decided_at: Option<DateTime<Utc>>,
}

/// What happened to an order; the application turns some of these into integration messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderEvent {
    Created { order_id: OrderId, customer_id: CustomerId },
    LineAdded { order_id: OrderId, product_id: ProductId, quantity: Quantity },
    LineRemoved { order_id: OrderId, product_id: ProductId },
    Placed { order_id: OrderId, customer_id: CustomerId, total: Money, lines: Vec<(ProductId, Quantity)> },
    Cancelled { order_id: OrderId, from: OrderStatus, reason: Reason },
    Confirmed { order_id: OrderId },
    Rejected { order_id: OrderId, reason: Reason },
    Shipped { order_id: OrderId },
}

/// A rule of the order that a command would break.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    #[error("lines can only change while the order is a draft; it is {0}")]
    NotADraft(OrderStatus),
    #[error("an order needs at least one line before it can be placed")]
    EmptyOrder,
    #[error("the order has no line for product {0}")]
    NoSuchLine(ProductId),
    #[error("an order that is {from} cannot be {action}")]
    TransitionRefused { from: OrderStatus, action: &'static str },
    #[error("an order has at most {max} lines", max = Order::MAX_LINES)]
    TooManyLines,
    #[error(transparent)]
    Quantity(#[from] QuantityError),
    #[error(transparent)]
    Money(#[from] MoneyError),
}

/// The `Order` aggregate: a customer's order, its lines and its life cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    id: OrderId,
    customer_id: CustomerId,
    description: Option<String>,
    state: OrderState,
    lines: Vec<OrderLine>,
    total: Money,
    timeline: Timeline,
    /// The version this copy was loaded at (0 for a new order); stores save against it.
    version: i64,
    events: Vec<OrderEvent>,
}

impl Order {
    pub const MAX_LINES: usize = 100;

    pub fn create(
        id: OrderId,
        customer_id: CustomerId,
        description: Option<OrderDescription>,
        now: DateTime<Utc>,
    ) -> Self {
        let description = description.filter(|text| !text.is_empty()).map(OrderDescription::into_string);
        Self {
            id,
            customer_id,
            description,
            state: OrderState::Draft,
            lines: Vec::new(),
            total: Money::ZERO,
            timeline: Timeline { created_at: now, placed_at: None, decided_at: None },
            version: 0,
            events: vec![OrderEvent::Created { order_id: id, customer_id }],
        }
    }

    /// Rebuilds an order from storage.
    #[allow(clippy::too_many_arguments)]
    pub fn restore(
        id: OrderId,
        customer_id: CustomerId,
        description: Option<String>,
        state: OrderState,
        lines: Vec<OrderLine>,
        timeline: Timeline,
        version: i64,
    ) -> Result<Self, OrderError> {
        let total = total_of(&lines)?;
        Ok(Self { id, customer_id, description, state, lines, total, timeline, version, events: Vec::new() })
    }

    /// Adds `quantity` of a catalog product; a product already on the order gets one line with
    /// the quantities merged, priced at the catalog's current price.
    pub fn add_line(&mut self, item: &CatalogItem, quantity: Quantity) -> Result<(), OrderError> {
        self.ensure_draft()?;
        match self.lines.iter().position(|line| line.product_id == item.product_id) {
            Some(index) => {
                let line = &mut self.lines[index];
                line.quantity = line.quantity.checked_add(quantity)?;
                line.unit_price = item.price;
                line.product_name.clone_from(&item.name);
            }
            None if self.lines.len() >= Self::MAX_LINES => return Err(OrderError::TooManyLines),
            None => self.lines.push(OrderLine {
                product_id: item.product_id,
                product_name: item.name.clone(),
                unit_price: item.price,
                quantity,
            }),
        }
        self.total = total_of(&self.lines)?;
        self.events.push(OrderEvent::LineAdded { order_id: self.id, product_id: item.product_id, quantity });
        Ok(())
    }

    pub fn remove_line(&mut self, product_id: ProductId) -> Result<(), OrderError> {
        self.ensure_draft()?;
        let index = self
            .lines
            .iter()
            .position(|line| line.product_id == product_id)
            .ok_or(OrderError::NoSuchLine(product_id))?;
        self.lines.remove(index);
        self.total = total_of(&self.lines)?;
        self.events.push(OrderEvent::LineRemoved { order_id: self.id, product_id });
        Ok(())
    }

    pub fn place(&mut self, now: DateTime<Utc>) -> Result<(), OrderError> {
        self.ensure_draft_for("placed")?;
        if self.lines.is_empty() {
            return Err(OrderError::EmptyOrder);
        }
        self.state = OrderState::Placed;
        self.timeline.placed_at = Some(now);
        self.events.push(OrderEvent::Placed {
            order_id: self.id,
            customer_id: self.customer_id,
            total: self.total,
            lines: self.lines.iter().map(|line| (line.product_id, line.quantity)).collect(),
        });
        Ok(())
    }

    pub fn cancel(&mut self, reason: Reason) -> Result<(), OrderError> {
        let from = self.status();
        if !matches!(from, OrderStatus::Draft | OrderStatus::Placed | OrderStatus::Confirmed) {
            return Err(OrderError::TransitionRefused { from, action: "cancelled" });
        }
        self.state = OrderState::Cancelled { reason: reason.clone() };
        self.events.push(OrderEvent::Cancelled { order_id: self.id, from, reason });
        Ok(())
    }

    /// Inventory reserved every line.
    pub fn confirm(&mut self, now: DateTime<Utc>) -> Result<(), OrderError> {
        self.ensure_status(OrderStatus::Placed, "confirmed")?;
        self.state = OrderState::Confirmed;
        self.timeline.decided_at = Some(now);
        self.events.push(OrderEvent::Confirmed { order_id: self.id });
        Ok(())
    }

    /// Inventory could not reserve every line.
    pub fn reject(&mut self, reason: Reason, now: DateTime<Utc>) -> Result<(), OrderError> {
        self.ensure_status(OrderStatus::Placed, "rejected")?;
        self.state = OrderState::Rejected { reason: reason.clone() };
        self.timeline.decided_at = Some(now);
        self.events.push(OrderEvent::Rejected { order_id: self.id, reason });
        Ok(())
    }

    pub fn ship(&mut self) -> Result<(), OrderError> {
        self.ensure_status(OrderStatus::Confirmed, "shipped")?;
        self.state = OrderState::Shipped;
        self.events.push(OrderEvent::Shipped { order_id: self.id });
        Ok(())
    }

    /// Notes that a store saved this copy: it is now one version further.
    pub fn record_saved(&mut self) {
        self.version += 1;
    }

    /// The events raised since the order was created or loaded, leaving none behind.
    pub fn take_events(&mut self) -> Vec<OrderEvent> {
        std::mem::take(&mut self.events)
    }

    fn ensure_draft(&self) -> Result<(), OrderError> {
        match self.status() {
            OrderStatus::Draft => Ok(()),
            other => Err(OrderError::NotADraft(other)),
        }
    }

    fn ensure_draft_for(&self, action: &'static str) -> Result<(), OrderError> {
        self.ensure_status(OrderStatus::Draft, action)
    }

    fn ensure_status(&self, required: OrderStatus, action: &'static str) -> Result<(), OrderError> {
        let from = self.status();
        if from == required { Ok(()) } else { Err(OrderError::TransitionRefused { from, action }) }
    }

    pub fn id(&self) -> OrderId {
        self.id
    }
    pub fn customer_id(&self) -> CustomerId {
        self.customer_id
    }
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }
    pub fn status(&self) -> OrderStatus {
        self.state.status()
    }
    pub fn state(&self) -> &OrderState {
        &self.state
    }
    pub fn lines(&self) -> &[OrderLine] {
        &self.lines
    }
    pub fn total(&self) -> Money {
        self.total
    }
    pub fn timeline(&self) -> Timeline {
        self.timeline
    }
    pub fn version(&self) -> i64 {
        self.version
    }
}

fn total_of(lines: &[OrderLine]) -> Result<Money, MoneyError> {
    lines.iter().try_fold(Money::ZERO, |sum, line| sum.checked_add(line.total()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernel::TextError;

    fn item(id: i64, price: &str) -> CatalogItem {
        CatalogItem {
            product_id: ProductId::new(id).unwrap(),
            name: format!("product {id}"),
            price: price.parse().unwrap(),
        }
    }

    fn qty(units: i64) -> Quantity {
        Quantity::new(units).unwrap()
    }

    fn reason(text: &str) -> Reason {
        Reason::new(text).unwrap()
    }

    fn draft() -> Order {
        let mut order =
            Order::create(OrderId::generate(), CustomerId::from_uuid(uuid::Uuid::now_v7()), None, Utc::now());
        order.take_events();
        order
    }

    fn order_in(status: OrderStatus) -> Order {
        let mut order = draft();
        order.add_line(&item(1, "2.50"), qty(2)).unwrap();
        if status != OrderStatus::Draft {
            order.place(Utc::now()).unwrap();
        }
        match status {
            OrderStatus::Draft | OrderStatus::Placed => {}
            OrderStatus::Confirmed => order.confirm(Utc::now()).unwrap(),
            OrderStatus::Rejected => order.reject(reason("no stock"), Utc::now()).unwrap(),
            OrderStatus::Shipped => {
                order.confirm(Utc::now()).unwrap();
                order.ship().unwrap();
            }
            OrderStatus::Cancelled => order.cancel(reason("changed my mind")).unwrap(),
        }
        order.take_events();
        order
    }

    /// Every command, applied to an order in `from`; `Ok` if the order allowed it.
    fn attempt(from: OrderStatus, command: &str) -> Result<OrderStatus, OrderError> {
        let mut order = order_in(from);
        match command {
            "place" => order.place(Utc::now()),
            "cancel" => order.cancel(reason("because")),
            "confirm" => order.confirm(Utc::now()),
            "reject" => order.reject(reason("because"), Utc::now()),
            "ship" => order.ship(),
            _ => unreachable!(),
        }
        .map(|()| order.status())
    }

    #[test]
    fn a_new_order_is_an_empty_draft() {
        let customer = CustomerId::from_uuid(uuid::Uuid::now_v7());
        let description = OrderDescription::new("  gifts  ").ok();
        let mut order = Order::create(OrderId::generate(), customer, description, Utc::now());
        assert_eq!(order.status(), OrderStatus::Draft);
        assert_eq!(order.total(), Money::ZERO);
        assert_eq!(order.description(), Some("gifts"));
        assert_eq!(order.take_events(), vec![OrderEvent::Created { order_id: order.id(), customer_id: customer }]);
    }

    #[test]
    fn a_blank_description_is_none() {
        let customer = CustomerId::from_uuid(uuid::Uuid::now_v7());
        let blank = Order::create(OrderId::generate(), customer, OrderDescription::new("   ").ok(), Utc::now());
        assert_eq!(blank.description(), None);
        assert!(OrderDescription::new("x".repeat(1001)).is_err());
    }

    #[test]
    fn the_total_is_recomputed_exactly_from_the_lines() {
        let mut order = draft();
        order.add_line(&item(1, "0.10"), qty(3)).unwrap();
        order.add_line(&item(2, "19.99"), qty(1)).unwrap();
        assert_eq!(order.total().to_string(), "20.29");
        order.remove_line(ProductId::new(1).unwrap()).unwrap();
        assert_eq!(order.total().to_string(), "19.99");
    }

    #[test]
    fn adding_a_product_twice_merges_the_line_at_the_current_price() {
        let mut order = draft();
        order.add_line(&item(1, "2.00"), qty(2)).unwrap();
        order.add_line(&item(1, "3.00"), qty(1)).unwrap();
        assert_eq!(order.lines().len(), 1);
        assert_eq!(order.lines()[0].quantity, qty(3));
        assert_eq!(order.total().to_string(), "9.00");
    }

    #[test]
    fn merging_past_the_largest_quantity_is_refused_and_changes_nothing() {
        let mut order = draft();
        order.add_line(&item(1, "1.00"), qty(Quantity::MAX as i64)).unwrap();
        let before = order.clone();
        assert!(matches!(order.add_line(&item(1, "1.00"), qty(1)), Err(OrderError::Quantity(_))));
        assert_eq!(order.lines(), before.lines());
    }

    #[test]
    fn removing_a_product_not_on_the_order_is_refused() {
        let mut order = draft();
        assert_eq!(
            order.remove_line(ProductId::new(9).unwrap()),
            Err(OrderError::NoSuchLine(ProductId::new(9).unwrap()))
        );
    }

    #[test]
    fn lines_only_change_on_a_draft() {
        for status in OrderStatus::ALL.into_iter().filter(|s| *s != OrderStatus::Draft) {
            let mut order = order_in(status);
            assert_eq!(order.add_line(&item(5, "1.00"), qty(1)), Err(OrderError::NotADraft(status)));
            assert_eq!(order.remove_line(ProductId::new(1).unwrap()), Err(OrderError::NotADraft(status)));
        }
    }

    #[test]
    fn an_empty_order_cannot_be_placed() {
        assert_eq!(draft().place(Utc::now()), Err(OrderError::EmptyOrder));
    }

    #[test]
    fn placing_raises_the_lines_and_total() {
        let mut order = draft();
        order.add_line(&item(1, "2.50"), qty(2)).unwrap();
        order.add_line(&item(2, "1.00"), qty(1)).unwrap();
        order.take_events();
        order.place(Utc::now()).unwrap();
        assert_eq!(
            order.take_events(),
            vec![OrderEvent::Placed {
                order_id: order.id(),
                customer_id: order.customer_id(),
                total: "6.00".parse().unwrap(),
                lines: vec![(ProductId::new(1).unwrap(), qty(2)), (ProductId::new(2).unwrap(), qty(1))],
            }]
        );
    }

    #[test]
    fn exactly_the_transitions_of_the_diagram_are_allowed() {
        use OrderStatus::*;
        let allowed = [
            (Draft, "place", Placed),
            (Draft, "cancel", Cancelled),
            (Placed, "cancel", Cancelled),
            (Placed, "confirm", Confirmed),
            (Placed, "reject", Rejected),
            (Confirmed, "cancel", Cancelled),
            (Confirmed, "ship", Shipped),
        ];
        for from in OrderStatus::ALL {
            for command in ["place", "cancel", "confirm", "reject", "ship"] {
                let expected = allowed.iter().find(|(f, c, _)| *f == from && *c == command).map(|(_, _, to)| *to);
                match (attempt(from, command), expected) {
                    (Ok(to), Some(expected)) => assert_eq!(to, expected, "{command} from {from}"),
                    (Err(OrderError::TransitionRefused { from: refused_from, .. }), None) => {
                        assert_eq!(refused_from, from);
                    }
                    (outcome, expected) => panic!("{command} from {from}: got {outcome:?}, expected {expected:?}"),
                }
            }
        }
    }

    #[test]
    fn a_refused_transition_names_the_rule() {
        let error = order_in(OrderStatus::Shipped).cancel(reason("late")).unwrap_err();
        assert_eq!(error.to_string(), "an order that is shipped cannot be cancelled");
    }

    #[test]
    fn cancelling_records_the_status_it_left_and_the_reason() {
        let mut order = order_in(OrderStatus::Confirmed);
        order.cancel(reason("  found it cheaper  ")).unwrap();
        assert_eq!(order.state().reason().map(Reason::as_str), Some("found it cheaper"));
        assert_eq!(
            order.take_events(),
            vec![OrderEvent::Cancelled {
                order_id: order.id(),
                from: OrderStatus::Confirmed,
                reason: reason("found it cheaper")
            }]
        );
    }

    #[test]
    fn the_timeline_records_placing_and_the_decision() {
        let mut order = draft();
        order.add_line(&item(1, "1.00"), qty(1)).unwrap();
        let (placed, decided) = (Utc::now(), Utc::now() + chrono::Duration::milliseconds(12));
        order.place(placed).unwrap();
        order.confirm(decided).unwrap();
        assert_eq!((order.timeline().placed_at, order.timeline().decided_at), (Some(placed), Some(decided)));
    }

    #[test]
    fn rejection_keeps_its_reason() {
        let mut order = order_in(OrderStatus::Placed);
        order.reject(reason("insufficient stock for product 1"), Utc::now()).unwrap();
        assert_eq!(order.state(), &OrderState::Rejected { reason: reason("insufficient stock for product 1") });
    }

    #[test]
    fn reasons_must_say_something_short() {
        assert_eq!(Reason::new("  "), Err(TextError::Empty { what: "a reason" }));
        assert_eq!(Reason::new("x".repeat(501)), Err(TextError::TooLong { what: "a reason", max: 500, got: 501 }));
        assert_eq!(Reason::new("line one\nline two").unwrap().as_str(), "line one\nline two");
    }

    #[test]
    fn statuses_parse_from_their_names() {
        for status in OrderStatus::ALL {
            assert_eq!(OrderStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(OrderStatus::parse("CONFIRMED"), Some(OrderStatus::Confirmed));
        assert_eq!(OrderStatus::parse("lost"), None);
    }
}
