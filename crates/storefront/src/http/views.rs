//! The pages' templates (askama: checked when the crate compiles) and the plain view models
//! they show, built from what the services answered.

use super::session::{Notice, SessionUser};
use crate::infrastructure::api::{Order, OrderLine, OrderSummary, Product, Reservation};
use askama::Template;
use chrono::{DateTime, Utc};

/// What every page shows around its content: the title, who is signed in, the CSRF token of
/// its forms, the message left by the previous action, the current section of the menu.
pub struct Chrome {
    pub title: String,
    pub user: Option<SessionUser>,
    pub csrf: String,
    pub notice: Option<Notice>,
    pub section: &'static str,
}

impl Chrome {
    pub fn is_admin(&self) -> bool {
        self.user.as_ref().is_some_and(|user| user.admin)
    }

    pub fn is_customer(&self) -> bool {
        self.user.as_ref().is_some_and(|user| !user.admin)
    }
}

pub fn when(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

pub fn status_label(status: &str) -> &'static str {
    match status {
        "draft" => "Draft",
        "placed" => "Placed: reserving the stock…",
        "confirmed" => "Confirmed",
        "rejected" => "Rejected",
        "shipped" => "Shipped",
        "cancelled" => "Cancelled",
        _ => "Unknown",
    }
}

#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage<'a> {
    pub title: &'a str,
    pub detail: &'a str,
}

#[derive(Template)]
#[template(path = "catalog.html")]
pub struct CatalogPage {
    pub chrome: Chrome,
    pub products: Vec<Product>,
}

#[derive(Template)]
#[template(path = "account.html")]
pub struct AccountPage {
    pub chrome: Chrome,
    /// Sign up (else sign in).
    pub signup: bool,
    pub email: String,
    pub error: Option<String>,
}

pub struct LineView {
    pub product_id: i64,
    pub name: String,
    pub unit_price: String,
    pub quantity: u32,
    pub total: String,
}

impl From<&OrderLine> for LineView {
    fn from(line: &OrderLine) -> Self {
        Self {
            product_id: line.product_id,
            name: line.product_name.clone(),
            unit_price: line.unit_price.clone(),
            quantity: line.quantity,
            total: line.line_total.clone(),
        }
    }
}

#[derive(Template)]
#[template(path = "cart.html")]
pub struct CartPage {
    pub chrome: Chrome,
    pub lines: Vec<LineView>,
    pub total: String,
}

pub struct SummaryView {
    pub id: String,
    pub short_id: String,
    pub customer: String,
    pub status: String,
    pub label: &'static str,
    pub total: String,
    pub lines: u32,
    pub created: String,
}

impl From<OrderSummary> for SummaryView {
    fn from(order: OrderSummary) -> Self {
        let id = order.id.to_string();
        Self {
            short_id: id[id.len() - 12..].to_owned(),
            id,
            customer: order.customer_id.to_string(),
            label: status_label(&order.status),
            status: order.status,
            total: order.total,
            lines: order.line_count,
            created: when(order.created_at),
        }
    }
}

#[derive(Template)]
#[template(path = "orders.html")]
pub struct OrdersPage {
    pub chrome: Chrome,
    pub orders: Vec<SummaryView>,
    pub next_url: Option<String>,
    pub first_page: bool,
}

/// The part of an order page that follows the order live.
pub struct StatusView {
    pub order_id: String,
    pub status: String,
    pub label: &'static str,
    pub reason: Option<String>,
    pub decided: Option<String>,
    pub csrf: String,
    /// Cancelling is offered (placed or confirmed, to its customer).
    pub can_cancel: bool,
    /// Shipping is offered (confirmed, to an admin).
    pub can_ship: bool,
}

impl StatusView {
    pub fn of(order: &Order, csrf: String, admin: bool) -> Self {
        let status = order.status.clone();
        Self {
            order_id: order.id.to_string(),
            label: status_label(&status),
            reason: order.status_reason.clone(),
            decided: order.decided_at.map(when),
            csrf,
            can_cancel: !admin && matches!(status.as_str(), "placed" | "confirmed"),
            can_ship: admin && status == "confirmed",
            status,
        }
    }

    /// The id's last 12 characters, enough to tell orders apart on a page.
    pub fn short_id(&self) -> &str {
        &self.order_id[self.order_id.len().saturating_sub(12)..]
    }

    /// Whether the page should keep following the order.
    pub fn is_live(&self) -> bool {
        self.status == "placed"
    }
}

#[derive(Template)]
#[template(path = "order_status.html")]
pub struct StatusFragment {
    pub status: StatusView,
}

#[derive(Template)]
#[template(path = "order.html")]
pub struct OrderPage {
    pub chrome: Chrome,
    pub status: StatusView,
    pub lines: Vec<LineView>,
    pub total: String,
    pub created: String,
    pub placed: Option<String>,
}

#[derive(Template)]
#[template(path = "admin/products.html")]
pub struct AdminProductsPage {
    pub chrome: Chrome,
    pub products: Vec<Product>,
}

#[derive(Template)]
#[template(path = "admin/orders.html")]
pub struct AdminOrdersPage {
    pub chrome: Chrome,
    pub statuses: Vec<(&'static str, bool)>,
    pub orders: Vec<SummaryView>,
    pub next_url: Option<String>,
}

pub struct SagaLineView {
    pub product: String,
    pub quantity: u32,
    pub status: String,
    pub reason: Option<String>,
    pub changed: String,
}

pub struct StepView {
    pub at: String,
    /// Milliseconds since the saga started.
    pub offset: String,
    pub subject: String,
    pub status: String,
    pub reason: Option<String>,
}

pub struct SagaView {
    pub state: String,
    pub failure_reason: Option<String>,
    pub started: String,
    pub lines: Vec<SagaLineView>,
    pub steps: Vec<StepView>,
}

impl SagaView {
    /// `name_of`: a product's name, as the order's lines have it.
    pub fn of(saga: Reservation, name_of: impl Fn(i64) -> String) -> Self {
        let started = saga.started_at;
        let lines = saga
            .lines
            .iter()
            .map(|line| SagaLineView {
                product: name_of(line.product_id),
                quantity: line.quantity,
                status: line.status.clone(),
                reason: line.reason.clone(),
                changed: line.changed_at.map(when).unwrap_or_else(|| "not recorded".into()),
            })
            .collect();
        let steps = saga
            .history
            .iter()
            .map(|step| StepView {
                at: when(step.at),
                offset: format!("+{} ms", (step.at - started).num_milliseconds()),
                subject: match step.product_id {
                    Some(product) => format!("line: {}", name_of(product)),
                    None => "saga".into(),
                },
                status: step.state.clone().or_else(|| step.status.clone()).unwrap_or_default(),
                reason: step.reason.clone(),
            })
            .collect();
        Self { state: saga.state, failure_reason: saga.failure_reason, started: when(started), lines, steps }
    }
}

#[derive(Template)]
#[template(path = "admin/order.html")]
pub struct AdminOrderPage {
    pub chrome: Chrome,
    pub status: StatusView,
    pub customer: String,
    pub lines: Vec<LineView>,
    pub total: String,
    pub created: String,
    pub saga: Option<SagaView>,
}

pub struct DeadLetterView {
    pub message_type: String,
    pub message_id: String,
    pub reason: String,
    pub attempts: u32,
    pub failed_at: String,
    pub body: String,
}

pub struct QueueView {
    pub consumer: String,
    pub queue: String,
    pub depth: String,
    pub consumers: String,
    pub dead_letter_count: String,
    pub handled: u64,
    pub rate: String,
    pub dead_letter_rate: String,
    pub letters: Vec<DeadLetterView>,
}

pub struct ServiceView {
    pub name: &'static str,
    pub unsent: String,
    pub scheduled: String,
    pub oldest_age: String,
    pub queues: Vec<QueueView>,
    /// Why the figures are missing, if they are.
    pub problem: Option<String>,
}

#[derive(Template)]
#[template(path = "admin/system.html")]
pub struct SystemPage {
    pub chrome: Chrome,
    pub services: Vec<ServiceView>,
}
