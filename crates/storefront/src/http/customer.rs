//! Customers' pages: the catalog, signing up and in, the cart (a draft order), checkout, the
//! order history and each order's page, which follows the order live.

use super::session::{SessionHandle, SessionUser};
use super::views::{AccountPage, CartPage, CatalogPage, LineView, OrderPage, OrdersPage, StatusFragment, StatusView};
use super::{Form, Path, Query, Storefront, acting, after, chrome, html, signed_in};
use crate::application::AppError;
use crate::infrastructure::api::{Acting, ApiError, Order, OrderQuery};
use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use futures::Stream;
use serde::Deserialize;
use serde_json::json;
use std::convert::Infallible;
use std::time::Duration;
use uuid::Uuid;

use super::PageError;

type Page = Result<Html<String>, PageError>;

/// How long each of a live order page's requests to the order service waits for the order to
/// change (the service answers as soon as it does).
const FOLLOW_WAIT: Duration = Duration::from_secs(15);
/// The pause after a request for news that came back unchanged without waiting.
const FOLLOW_AGAIN_EARLY: Duration = Duration::from_millis(250);
/// The pause after a request for news that failed.
const FOLLOW_AGAIN_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// How long one stream follows an order (the browser then reconnects if the page is still open).
const FOLLOW_FOR: Duration = Duration::from_secs(300);
/// Orders per page of the history.
const ORDERS_PER_PAGE: u32 = 10;
/// The most units one line may ask for from the storefront.
const MAX_QUANTITY: i64 = 10_000;

/// The signed-in customer, or why not: operators do not shop.
fn customer(session: &SessionHandle) -> Result<Uuid, PageError> {
    match signed_in(session)? {
        SessionUser { admin: false, id, .. } => Ok(id),
        SessionUser { admin: true, .. } => {
            Err(PageError::Forbidden("operators do not shop: sign in with a customer account".into()))
        }
    }
}

pub async fn catalog(State(app): State<Storefront>, session: SessionHandle) -> Page {
    let products = app.api.products(&acting(&session)).await?;
    html(CatalogPage { chrome: chrome(&session, "Catalog", "catalog"), products })
}

#[derive(Deserialize)]
pub struct Credentials {
    email: String,
    password: String,
}

fn account_page(session: &SessionHandle, signup: bool, email: String, error: Option<String>) -> Page {
    let title = if signup { "Sign up" } else { "Sign in" };
    html(AccountPage { chrome: chrome(session, title, "account"), signup, email, error })
}

pub async fn sign_up_form(session: SessionHandle) -> Result<Response, PageError> {
    if session.user().is_some() {
        return Ok(Redirect::to("/").into_response());
    }
    Ok(account_page(&session, true, String::new(), None)?.into_response())
}

pub async fn sign_in_form(session: SessionHandle) -> Result<Response, PageError> {
    if session.user().is_some() {
        return Ok(Redirect::to("/").into_response());
    }
    Ok(account_page(&session, false, String::new(), None)?.into_response())
}

pub async fn sign_up(
    State(app): State<Storefront>,
    session: SessionHandle,
    Form(form): Form<Credentials>,
) -> Result<Response, PageError> {
    match app.accounts.sign_up(&form.email, form.password).await {
        Ok(account) => {
            session.sign_in(SessionUser { id: account.id, email: account.email.to_string(), admin: false });
            session.notify("Welcome! Your account is ready.");
            Ok(Redirect::to("/").into_response())
        }
        Err(error @ (AppError::Invalid(_) | AppError::EmailTaken)) => {
            let page = account_page(&session, true, form.email, Some(error.to_string()))?;
            Ok((StatusCode::UNPROCESSABLE_ENTITY, page).into_response())
        }
        Err(error) => Err(error.into()),
    }
}

pub async fn sign_in(
    State(app): State<Storefront>,
    session: SessionHandle,
    Form(form): Form<Credentials>,
) -> Result<Response, PageError> {
    match app.accounts.sign_in(&form.email, form.password).await {
        Ok(account) => {
            let admin = account.role == crate::domain::Role::Admin;
            session.sign_in(SessionUser { id: account.id, email: account.email.to_string(), admin });
            session.notify(format!("Signed in as {}.", account.email));
            Ok(Redirect::to(if admin { "/admin/orders" } else { "/" }).into_response())
        }
        Err(error @ AppError::WrongCredentials) => {
            let page = account_page(&session, false, form.email, Some(error.to_string()))?;
            Ok((StatusCode::UNAUTHORIZED, page).into_response())
        }
        Err(error) => Err(error.into()),
    }
}

pub async fn sign_out(session: SessionHandle) -> Redirect {
    session.sign_out();
    session.notify("Signed out.");
    Redirect::to("/")
}

pub async fn cart(State(app): State<Storefront>, session: SessionHandle) -> Page {
    let id = customer(&session)?;
    let cart = app.api.cart(&Acting::Customer(id)).await?;
    let (lines, total) = match &cart {
        Some(order) => (order.lines.iter().map(LineView::from).collect(), order.total.clone()),
        None => (Vec::new(), "0.00".into()),
    };
    html(CartPage { chrome: chrome(&session, "Cart", "cart"), lines, total })
}

#[derive(Deserialize)]
pub struct AddForm {
    product_id: String,
    quantity: String,
}

#[derive(Deserialize)]
pub struct QuantityForm {
    quantity: String,
}

/// A quantity typed in a form, or what is wrong with it.
fn quantity(text: &str) -> Result<i64, String> {
    match text.trim().parse::<i64>() {
        Ok(quantity) if (1..=MAX_QUANTITY).contains(&quantity) => Ok(quantity),
        _ => Err(format!("Enter a quantity from 1 to {MAX_QUANTITY}.")),
    }
}

pub async fn add_to_cart(
    State(app): State<Storefront>,
    session: SessionHandle,
    Form(form): Form<AddForm>,
) -> Result<Redirect, PageError> {
    let acting = Acting::Customer(customer(&session)?);
    let product: i64 =
        form.product_id.trim().parse().map_err(|_| PageError::BadRequest("product_id: not a number".into()))?;
    let quantity = match quantity(&form.quantity) {
        Ok(quantity) => quantity,
        Err(problem) => {
            session.warn(problem);
            return Ok(Redirect::to("/"));
        }
    };
    let added = async {
        match app.api.cart(&acting).await? {
            Some(cart) => app.api.add_item(&acting, cart.id, product, quantity).await,
            None => app.api.create_order_with(&acting, product, quantity).await,
        }
    }
    .await;
    after(&session, "/", added, |order| {
        let name = order.lines.iter().find(|line| line.product_id == product).map(|line| line.product_name.clone());
        format!("Added {quantity} × {} to your cart.", name.unwrap_or_else(|| format!("product {product}")))
    })
}

pub async fn change_quantity(
    State(app): State<Storefront>,
    session: SessionHandle,
    Path(product): Path<i64>,
    Form(form): Form<QuantityForm>,
) -> Result<Redirect, PageError> {
    let acting = Acting::Customer(customer(&session)?);
    let wanted = match quantity(&form.quantity) {
        Ok(quantity) => quantity,
        Err(problem) => {
            session.warn(problem);
            return Ok(Redirect::to("/cart"));
        }
    };
    let changed = async {
        let cart = app
            .api
            .cart(&acting)
            .await?
            .ok_or_else(|| ApiError::Refused { status: StatusCode::CONFLICT, detail: "Your cart is empty.".into() })?;
        let current =
            cart.lines.iter().find(|line| line.product_id == product).map_or(0, |line| i64::from(line.quantity));
        match wanted.cmp(&current) {
            std::cmp::Ordering::Equal => Ok(cart),
            // One call: the quantities merge.
            std::cmp::Ordering::Greater => app.api.add_item(&acting, cart.id, product, wanted - current).await,
            std::cmp::Ordering::Less => {
                app.api.remove_item(&acting, cart.id, product).await?;
                app.api.add_item(&acting, cart.id, product, wanted).await
            }
        }
    }
    .await;
    after(&session, "/cart", changed, |_| "Quantity updated.".into())
}

pub async fn remove_from_cart(
    State(app): State<Storefront>,
    session: SessionHandle,
    Path(product): Path<i64>,
) -> Result<Redirect, PageError> {
    let acting = Acting::Customer(customer(&session)?);
    let removed = async {
        match app.api.cart(&acting).await? {
            Some(cart) => app.api.remove_item(&acting, cart.id, product).await.map(Some),
            None => Ok(None),
        }
    }
    .await;
    after(&session, "/cart", removed, |_| "Removed from your cart.".into())
}

pub async fn checkout(State(app): State<Storefront>, session: SessionHandle) -> Result<Redirect, PageError> {
    let acting = Acting::Customer(customer(&session)?);
    let Some(cart) = app.api.cart(&acting).await? else {
        session.warn("Your cart is empty.");
        return Ok(Redirect::to("/cart"));
    };
    match app.api.order_command(&acting, cart.id, "place", None).await {
        Ok(order) => {
            session.notify("Your order is placed.");
            Ok(Redirect::to(&format!("/orders/{}", order.id)))
        }
        Err(ApiError::Refused { detail, .. }) => {
            session.warn(detail);
            Ok(Redirect::to("/cart"))
        }
        Err(error) => Err(error.into()),
    }
}

#[derive(Deserialize)]
pub struct PageQuery {
    after: Option<Uuid>,
}

pub async fn orders(State(app): State<Storefront>, session: SessionHandle, Query(query): Query<PageQuery>) -> Page {
    let acting = Acting::Customer(customer(&session)?);
    let page = app
        .api
        .page_of_orders(&acting, &OrderQuery { status: None, after: query.after, limit: ORDERS_PER_PAGE })
        .await?;
    html(OrdersPage {
        chrome: chrome(&session, "My orders", "orders"),
        orders: page.orders.into_iter().map(Into::into).collect(),
        next_url: page.next_after.map(|after| format!("/orders?after={after}")),
        first_page: query.after.is_none(),
    })
}

pub async fn order(
    State(app): State<Storefront>,
    session: SessionHandle,
    Path(id): Path<Uuid>,
) -> Result<Response, PageError> {
    if signed_in(&session)?.admin {
        return Ok(Redirect::to(&format!("/admin/orders/{id}")).into_response());
    }
    let acting = Acting::Customer(customer(&session)?);
    let order = app.api.order(&acting, id).await?;
    let page = OrderPage {
        status: StatusView::of(&order, session.csrf(), false),
        lines: order.lines.iter().map(LineView::from).collect(),
        total: order.total.clone(),
        created: super::views::when(order.created_at),
        placed: order.placed_at.map(super::views::when),
        chrome: chrome(&session, "Order", "orders"),
    };
    Ok(html(page)?.into_response())
}

/// Server-sent events for an order page: the status part of the page (`event: status`) each
/// time the order changes, and `event: end` once it no longer waits for the stock. The
/// storefront follows the order with requests that the order service answers when the order
/// changes.
pub async fn order_events(
    State(app): State<Storefront>,
    session: SessionHandle,
    Path(id): Path<Uuid>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, PageError> {
    let acting = Acting::Customer(customer(&session)?);
    let first = app.api.order(&acting, id).await?;
    let csrf = session.csrf();
    let deadline = tokio::time::Instant::now() + FOLLOW_FOR;
    let follow = Follow { app, acting, id, csrf, first: Some(first), last_version: None, ending: false, ended: false };
    let events = futures::stream::unfold(follow, move |mut follow| async move {
        let event = follow.next(deadline).await?;
        Some((Ok(event), follow))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

struct Follow {
    app: Storefront,
    acting: Acting,
    id: Uuid,
    csrf: String,
    first: Option<Order>,
    last_version: Option<i64>,
    /// The order no longer waits: the next event is `end`.
    ending: bool,
    ended: bool,
}

impl Follow {
    /// The next event, or `None` when the stream is over.
    async fn next(&mut self, deadline: tokio::time::Instant) -> Option<Event> {
        if self.ended {
            return None;
        }
        if self.ending {
            self.ended = true;
            return Some(Event::default().event("end").data("done"));
        }
        loop {
            let order = match self.first.take() {
                Some(order) => order,
                None => match self.news(deadline).await? {
                    Some(order) => order,
                    None => continue,
                },
            };
            if self.last_version == Some(order.version) {
                continue;
            }
            self.last_version = Some(order.version);
            let status = StatusView::of(&order, self.csrf.clone(), false);
            // Once it no longer waits, one more event tells the page to stop listening (the
            // browser would otherwise reconnect).
            self.ending = !status.is_live();
            let fragment = StatusFragment { status }.render().unwrap_or_default();
            let event = Event::default().event("status").data(fragment);
            return Some(event);
        }
    }

    /// The order once it is no longer at the version last sent; `Some(None)` when there is no
    /// news yet, `None` when the stream is over.
    async fn news(&self, deadline: tokio::time::Instant) -> Option<Option<Order>> {
        let version = self.last_version?;
        let wait = FOLLOW_WAIT.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        if wait < Duration::from_secs(1) {
            return None;
        }
        let asked = tokio::time::Instant::now();
        let news = tokio::select! {
            _ = self.app.stopping.cancelled() => return None,
            news = self.app.api.order_after(&self.acting, self.id, version, wait) => news,
        };
        let pause = match news {
            Ok(Some(order)) if order.version != version => return Some(Some(order)),
            // The wait ran out: ask again at once.
            Ok(_) if asked.elapsed() >= wait => return Some(None),
            // Unchanged sooner than asked: the service did not wait (at its limit of waits, say).
            Ok(_) => FOLLOW_AGAIN_EARLY,
            Err(error) => {
                tracing::debug!(order = %self.id, error = %error, "cannot follow the order now");
                FOLLOW_AGAIN_AFTER_FAILURE
            }
        };
        tokio::select! {
            _ = self.app.stopping.cancelled() => None,
            _ = tokio::time::sleep(pause) => Some(None),
        }
    }
}

#[derive(Deserialize)]
pub struct CancelForm {
    reason: Option<String>,
}

pub async fn cancel(
    State(app): State<Storefront>,
    session: SessionHandle,
    Path(id): Path<Uuid>,
    Form(form): Form<CancelForm>,
) -> Result<Redirect, PageError> {
    let acting = Acting::Customer(customer(&session)?);
    let reason =
        form.reason.filter(|reason| !reason.trim().is_empty()).unwrap_or_else(|| "cancelled by the customer".into());
    let cancelled = app.api.order_command(&acting, id, "cancel", Some(json!({ "reason": reason }))).await;
    after(&session, &format!("/orders/{id}"), cancelled, |_| "Your order is cancelled.".into())
}
