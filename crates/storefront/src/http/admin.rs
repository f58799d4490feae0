//! The operators' console: products (create, restock, change the price), orders by status with
//! shipping, each order's saga as a timeline, and the system's state (outbox backlog, queues,
//! dead letters with replay and purge).

use super::session::SessionHandle;
use super::views::{
    AdminOrderPage, AdminOrdersPage, AdminProductsPage, DeadLetterView, LineView, QueueView, SagaView, ServiceView,
    StatusView, SystemPage, when,
};
use super::{Form, Path, Query, Storefront, after, chrome, html, signed_in};
use crate::infrastructure::api::{Acting, ApiError, OrderQuery, Service};
use axum::extract::State;
use axum::response::{Html, Redirect};
use serde::Deserialize;
use uuid::Uuid;

use super::PageError;

type Page = Result<Html<String>, PageError>;

const STATUSES: [&str; 7] = ["all", "draft", "placed", "confirmed", "rejected", "shipped", "cancelled"];
/// Dead letters shown per queue (replay and purge act on all of them).
const LETTERS_SHOWN: usize = 20;
/// Characters of a dead letter's body shown.
const BODY_SHOWN: usize = 400;

/// The signed-in operator, as the services know them.
fn operator(session: &SessionHandle) -> Result<Acting, PageError> {
    let user = signed_in(session)?;
    if !user.admin {
        return Err(PageError::Forbidden("only operators may open the console".into()));
    }
    Ok(Acting::Admin(user.id))
}

pub async fn home(session: SessionHandle) -> Result<Redirect, PageError> {
    operator(&session)?;
    Ok(Redirect::to("/admin/orders"))
}

pub async fn products(State(app): State<Storefront>, session: SessionHandle) -> Page {
    let acting = operator(&session)?;
    let products = app.api.products(&acting).await?;
    html(AdminProductsPage { chrome: chrome(&session, "Products", "admin-products"), products })
}

#[derive(Deserialize)]
pub struct NewProductForm {
    name: String,
    #[serde(default)]
    description: String,
    price: String,
    stock: String,
}

pub async fn create_product(
    State(app): State<Storefront>,
    session: SessionHandle,
    Form(form): Form<NewProductForm>,
) -> Result<Redirect, PageError> {
    let acting = operator(&session)?;
    let Ok(stock) = form.stock.trim().parse::<i64>() else {
        session.warn("stock: enter a whole number of units");
        return Ok(Redirect::to("/admin/products"));
    };
    let created =
        app.api.create_product(&acting, form.name.trim(), form.description.trim(), form.price.trim(), stock).await;
    after(&session, "/admin/products", created, |product| format!("Created {} (id {}).", product.name, product.id))
}

#[derive(Deserialize)]
pub struct RestockForm {
    quantity: String,
}

pub async fn restock(
    State(app): State<Storefront>,
    session: SessionHandle,
    Path(id): Path<i64>,
    Form(form): Form<RestockForm>,
) -> Result<Redirect, PageError> {
    let acting = operator(&session)?;
    let Ok(quantity) = form.quantity.trim().parse::<i64>() else {
        session.warn("quantity: enter a whole number of units");
        return Ok(Redirect::to("/admin/products"));
    };
    let restocked = app.api.restock(&acting, id, quantity).await;
    after(&session, "/admin/products", restocked, |product| {
        format!("Restocked {}: {} in stock, {} available.", product.name, product.stock, product.available)
    })
}

#[derive(Deserialize)]
pub struct PriceForm {
    price: String,
}

pub async fn change_price(
    State(app): State<Storefront>,
    session: SessionHandle,
    Path(id): Path<i64>,
    Form(form): Form<PriceForm>,
) -> Result<Redirect, PageError> {
    let acting = operator(&session)?;
    let changed = app.api.change_price(&acting, id, form.price.trim()).await;
    after(&session, "/admin/products", changed, |product| format!("{} now costs {}.", product.name, product.price))
}

#[derive(Deserialize)]
pub struct OrdersQuery {
    status: Option<String>,
    after: Option<Uuid>,
}

pub async fn orders(State(app): State<Storefront>, session: SessionHandle, Query(query): Query<OrdersQuery>) -> Page {
    let acting = operator(&session)?;
    let chosen = query.status.filter(|status| STATUSES.contains(&status.as_str())).unwrap_or_else(|| "all".into());
    let status = (chosen != "all").then(|| chosen.clone());
    let page = app.api.page_of_orders(&acting, &OrderQuery { status, after: query.after, limit: 25 }).await?;
    html(AdminOrdersPage {
        chrome: chrome(&session, "Orders", "admin-orders"),
        statuses: STATUSES.iter().map(|status| (*status, *status == chosen)).collect(),
        orders: page.orders.into_iter().map(Into::into).collect(),
        next_url: page.next_after.map(|after| format!("/admin/orders?status={chosen}&after={after}")),
    })
}

pub async fn order(State(app): State<Storefront>, session: SessionHandle, Path(id): Path<Uuid>) -> Page {
    let acting = operator(&session)?;
    let order = app.api.order(&acting, id).await?;
    let saga = match app.api.reservation(&acting, id).await {
        Ok(saga) => Some(saga),
        Err(error) if error.is_not_found() => None,
        Err(error) => return Err(error.into()),
    };
    let name_of = |product: i64| {
        order
            .lines
            .iter()
            .find(|line| line.product_id == product)
            .map_or_else(|| format!("product {product}"), |line| line.product_name.clone())
    };
    let saga = saga.map(|saga| SagaView::of(saga, name_of));
    html(AdminOrderPage {
        status: StatusView::of(&order, session.csrf(), true),
        customer: order.customer_id.to_string(),
        lines: order.lines.iter().map(LineView::from).collect(),
        total: order.total.clone(),
        created: when(order.created_at),
        saga,
        chrome: chrome(&session, "Order", "admin-orders"),
    })
}

pub async fn ship(
    State(app): State<Storefront>,
    session: SessionHandle,
    Path(id): Path<Uuid>,
) -> Result<Redirect, PageError> {
    let acting = operator(&session)?;
    let shipped = app.api.order_command(&acting, id, "ship", None).await;
    after(&session, &format!("/admin/orders/{id}"), shipped, |_| "Order shipped.".into())
}

pub async fn system(State(app): State<Storefront>, session: SessionHandle) -> Page {
    let acting = operator(&session)?;
    let mut services = Vec::new();
    for service in Service::ALL {
        services.push(match service_view(&app, &acting, service).await {
            Ok(view) => view,
            Err(error) => {
                tracing::warn!(service = service.name(), error = %error, "the console cannot read a service");
                ServiceView {
                    name: service.name(),
                    unsent: String::new(),
                    scheduled: String::new(),
                    oldest_age: String::new(),
                    queues: Vec::new(),
                    problem: Some(format!("The {} service cannot be read now: {error}", service.name())),
                }
            }
        });
    }
    html(SystemPage { chrome: chrome(&session, "System", "admin-system"), services })
}

async fn service_view(app: &Storefront, acting: &Acting, service: Service) -> Result<ServiceView, ApiError> {
    let outbox = app.api.outbox(acting, service).await?;
    let mut queues = Vec::new();
    for queue in app.api.queues(acting, service).await? {
        let letters = if queue.dead_letters.unwrap_or(0) > 0 {
            app.api.dead_letters(acting, service, &queue.consumer).await?
        } else {
            Vec::new()
        };
        let shown = |count: Option<u32>| count.map_or_else(|| "?".into(), |count| count.to_string());
        queues.push(QueueView {
            depth: shown(queue.depth),
            consumers: shown(queue.consumers),
            dead_letter_count: shown(queue.dead_letters),
            handled: queue.handled,
            rate: format!("{:.1}", queue.handled_per_second),
            dead_letter_rate: format!("{:.2}", queue.dead_lettered_per_second),
            letters: letters
                .into_iter()
                .take(LETTERS_SHOWN)
                .map(|letter| DeadLetterView {
                    message_type: letter.message_type.unwrap_or_else(|| "unknown type".into()),
                    message_id: letter.message_id.unwrap_or_default(),
                    reason: letter.reason,
                    attempts: letter.attempts,
                    failed_at: letter.failed_at.map(when).unwrap_or_default(),
                    body: letter.body.chars().take(BODY_SHOWN).collect(),
                })
                .collect(),
            consumer: queue.consumer,
            queue: queue.queue,
        });
    }
    Ok(ServiceView {
        name: service.name(),
        unsent: outbox.unsent.to_string(),
        scheduled: outbox.scheduled.to_string(),
        oldest_age: outbox.oldest_unsent_age_seconds.map_or_else(|| "none waiting".into(), |age| format!("{age:.1} s")),
        queues,
        problem: None,
    })
}

/// Replays or purges the dead letters of one consumer of one service.
pub async fn dead_letters(
    State(app): State<Storefront>,
    session: SessionHandle,
    Path((service, consumer, action)): Path<(String, String, String)>,
) -> Result<Redirect, PageError> {
    let acting = operator(&session)?;
    let service = Service::parse(&service).ok_or(PageError::NotFound)?;
    let is_name = !consumer.is_empty() && consumer.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !is_name || !matches!(action.as_str(), "replay" | "purge") {
        return Err(PageError::NotFound);
    }
    let moved = app.api.dead_letter_action(&acting, service, &consumer, &action).await;
    let done = if action == "replay" { "Replayed" } else { "Purged" };
    after(&session, "/admin/system", moved, |count| {
        format!("{done} {count} dead letter(s) of {}.{consumer}.", service.name())
    })
}
