use super::dto::{
    AddItemRequest, CancelRequest, CatalogItemResponse, CreateOrderRequest, ListOrdersQuery, OrderPageResponse,
    OrderPageSize, OrderResponse, OrderStatusName,
};
use crate::application::{Actor, IdempotencyKey, NewOrder, OrderFilter, OrderService};
use crate::domain::{CustomerId, Order, OrderId, ProductId};
use axum::Router;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use std::sync::Arc;
use utoipa::OpenApi;
use uuid::Uuid;
use web::auth::{BearerAuth, Caller};
use web::{Conditional, Json, Path, Problem, Query, RequestTrace, SharedResponses, tagged};

#[derive(Clone)]
struct AppState {
    orders: Arc<OrderService>,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Order service", description = "Customer orders: drafts, lines, placing, cancelling, shipping."),
    paths(create_order, get_order, list_orders, add_item, remove_item, place_order, cancel_order, ship_order, list_catalog),
    // Schemas of parameters (bodies and responses bring theirs).
    components(schemas(Problem, IdempotencyKey, OrderPageSize, OrderStatusName, ProductId)),
    modifiers(&BearerAuth, &SharedResponses),
    tags((name = "orders"), (name = "catalog", description = "The order service's copy of inventory's catalog"))
)]
pub struct ApiDoc;

/// The order API's routes (without operational endpoints, which the composition root adds).
/// They expect to be behind `web::auth::require_token`: every handler acts as its caller.
pub fn router(orders: Arc<OrderService>) -> Router {
    Router::new()
        .route("/api/orders", post(create_order).get(list_orders))
        .route("/api/orders/{id}", get(get_order))
        .route("/api/orders/{id}/items", post(add_item))
        .route("/api/orders/{id}/items/{product_id}", delete(remove_item))
        .route("/api/orders/{id}/place", post(place_order))
        .route("/api/orders/{id}/cancel", post(cancel_order))
        .route("/api/orders/{id}/ship", post(ship_order))
        .route("/api/catalog", get(list_catalog))
        .with_state(AppState { orders })
}

type ApiResult<T> = Result<T, Problem>;

/// The caller, as the application knows it.
impl<S: Send + Sync> FromRequestParts<S> for Actor {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Ok(match Caller::from_request_parts(parts, state).await? {
            Caller::Customer(id) => Actor::Customer(CustomerId::from_uuid(id)),
            Caller::Admin { .. } => Actor::Admin,
        })
    }
}

fn order_id(id: Uuid) -> OrderId {
    OrderId::from_uuid(id)
}

/// The header that makes order creation safe to retry.
const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// Creates an order: a draft, or with `lines` and `place` an order placed in this one request.
///
/// With an `Idempotency-Key` header, repeating the request returns the order created the first
/// time (status 200) instead of creating another, for as long as the key holds (24 hours unless
/// configured otherwise).
#[utoipa::path(
    post, path = "/api/orders", tag = "orders",
    request_body = CreateOrderRequest,
    params(("Idempotency-Key" = Option<IdempotencyKey>, Header, description = "Makes the request safe to retry")),
    responses(
        (status = 201, description = "Created (placed, when `place` was asked)", body = OrderResponse, headers(("ETag" = String, description = "The order's version as a weak tag, `W/\"<version>\"`: the `If-None-Match` of a later GET"))),
        (status = 200, description = "Already created under this Idempotency-Key", body = OrderResponse, headers(("ETag" = String, description = "The order's version as a weak tag, `W/\"<version>\"`: the `If-None-Match` of a later GET"))),
        (status = 400, description = "Invalid input (the detail names the field or header), or an admin named no customer", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A customer named another customer", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Concurrent requests under this Idempotency-Key kept conflicting; retry", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Idempotency-Key reused for another request, an unknown product, more units than a line may hold, or `place` without lines", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn create_order(
    State(state): State<AppState>,
    actor: Actor,
    RequestTrace(trace): RequestTrace,
    headers: HeaderMap,
    Json(request): Json<CreateOrderRequest>,
) -> ApiResult<Response> {
    let key = web::header(&headers, IDEMPOTENCY_KEY, |text| IdempotencyKey::new(text))?;
    let new = NewOrder {
        customer_id: request.customer_id.map(CustomerId::from_uuid),
        description: request.description,
        lines: request.lines.into_iter().map(|line| (line.product_id, line.quantity)).collect(),
        place: request.place,
    };
    let (order, created) = state.orders.create(actor, new, key, trace).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    let location = HeaderValue::from_str(&format!("/api/orders/{}", order.id())).expect("ids are ASCII");
    Ok((status, [(header::LOCATION, location)], Tagged(order)).into_response())
}

/// An order with its lines, tagged with its version (`ETag`).
///
/// A client that holds the order as it is (`If-None-Match` with the tag it was given) may ask
/// to wait for a change with `Prefer: wait=N` (seconds, at most 20): the answer comes when the
/// order changes, or after the wait with 304 Not Modified. One request then follows a placed
/// order to its confirmation or rejection, instead of polling.
#[utoipa::path(
    get, path = "/api/orders/{id}", tag = "orders",
    params(
        ("id" = Uuid, Path, description = "Order id"),
        ("If-None-Match" = Option<String>, Header, description = "The `ETag` of the order the client holds: 304 while the order is still at that version"),
        ("Prefer" = Option<String>, Header, description = "`wait=N`: with `If-None-Match`, hold the answer up to N seconds (at most 20) until the order changes"),
    ),
    responses(
        (status = 200, body = OrderResponse, headers(("ETag" = String, description = "The order's version as a weak tag, `W/\"<version>\"`"), ("Preference-Applied" = Option<String>, description = "`wait=N` when the request could wait up to N seconds (not while the service stops or holds as many waits as it takes)"))),
        (status = 304, description = "The order is still at the version named in `If-None-Match` (after the wait asked for)", headers(("ETag" = String, description = "The order's version as a weak tag, `W/\"<version>\"`"), ("Preference-Applied" = Option<String>, description = "`wait=N` when the request could wait up to N seconds (not while the service stops or holds as many waits as it takes)"))),
        (status = 400, description = "Not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order (or another customer's)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_order(
    State(state): State<AppState>,
    actor: Actor,
    Path(id): Path<Uuid>,
    conditional: Conditional,
) -> ApiResult<Response> {
    let wait = conditional.wait();
    if !wait.is_zero() {
        conditional.start_waiting();
    }
    let held = |order: &Order| conditional.holds(order.version());
    let (order, waited) = state.orders.get_when_changed(actor, order_id(id), wait, held).await?;
    Ok(conditional.respond(order.version(), waited, Json(OrderResponse::from(&order))))
}

/// An order as the API shows it, with its version as `ETag`.
struct Tagged(Order);

impl IntoResponse for Tagged {
    fn into_response(self) -> Response {
        tagged(self.0.version(), Json(OrderResponse::from(&self.0)))
    }
}

/// Orders, newest first, filtered by customer and status, a page at a time. A customer sees
/// its own orders only.
#[utoipa::path(
    get, path = "/api/orders", tag = "orders",
    params(ListOrdersQuery),
    responses(
        (status = 200, body = OrderPageResponse),
        (status = 400, description = "Invalid filter (the detail names the parameter)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A customer named another customer", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_orders(
    State(state): State<AppState>,
    actor: Actor,
    Query(query): Query<ListOrdersQuery>,
) -> ApiResult<Json<OrderPageResponse>> {
    let filter = OrderFilter {
        customer_id: query.customer_id.map(CustomerId::from_uuid),
        status: query.status.map(Into::into),
        after: query.after.map(OrderId::from_uuid),
        limit: query.limit.unwrap_or_default().get(),
    };
    Ok(Json(state.orders.list(actor, filter).await?.into()))
}

/// Adds a catalog product to a draft order; a product already on it gets its quantity raised.
/// The price comes from the catalog, never from the request.
#[utoipa::path(
    post, path = "/api/orders/{id}/items", tag = "orders",
    params(("id" = Uuid, Path, description = "Order id")),
    request_body = AddItemRequest,
    responses(
        (status = 200, body = OrderResponse, headers(("ETag" = String, description = "The order's version as a weak tag, `W/\"<version>\"`: the `If-None-Match` of a later GET"))),
        (status = 400, description = "Invalid quantity or product id, or the id is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order (or another customer's)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The order is no longer a draft, or changed concurrently", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown product, too many lines, or more units than a line may hold", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn add_item(
    State(state): State<AppState>,
    actor: Actor,
    RequestTrace(trace): RequestTrace,
    Path(id): Path<Uuid>,
    Json(request): Json<AddItemRequest>,
) -> ApiResult<Tagged> {
    let order = state.orders.add_item(actor, order_id(id), request.product_id, request.quantity, trace).await?;
    Ok(Tagged(order))
}

/// Removes a product's line from a draft order.
#[utoipa::path(
    delete, path = "/api/orders/{id}/items/{product_id}", tag = "orders",
    params(("id" = Uuid, Path, description = "Order id"), ("product_id" = ProductId, Path, description = "Product id")),
    responses(
        (status = 200, body = OrderResponse, headers(("ETag" = String, description = "The order's version as a weak tag, `W/\"<version>\"`: the `If-None-Match` of a later GET"))),
        (status = 400, description = "The id is not a UUID, or the product id not a positive integer", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order (or another customer's) or line", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The order is no longer a draft, or changed concurrently", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn remove_item(
    State(state): State<AppState>,
    actor: Actor,
    RequestTrace(trace): RequestTrace,
    Path((id, product)): Path<(Uuid, i64)>,
) -> ApiResult<Tagged> {
    let product = ProductId::new(product).map_err(|e| Problem::invalid_input(format!("product_id: {e}")))?;
    let order = state.orders.remove_item(actor, order_id(id), product, trace).await?;
    Ok(Tagged(order))
}

/// Places a draft order: inventory then reserves its stock, and the order becomes confirmed
/// or rejected.
#[utoipa::path(
    post, path = "/api/orders/{id}/place", tag = "orders",
    params(("id" = Uuid, Path, description = "Order id")),
    responses(
        (status = 200, body = OrderResponse, headers(("ETag" = String, description = "The order's version as a weak tag, `W/\"<version>\"`: the `If-None-Match` of a later GET"))),
        (status = 400, description = "Not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order (or another customer's)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not a draft, or changed concurrently", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The order has no lines", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn place_order(
    State(state): State<AppState>,
    actor: Actor,
    RequestTrace(trace): RequestTrace,
    Path(id): Path<Uuid>,
) -> ApiResult<Tagged> {
    Ok(Tagged(state.orders.place(actor, order_id(id), trace).await?))
}

/// Cancels a draft, placed or confirmed order; stock held for it is released.
#[utoipa::path(
    post, path = "/api/orders/{id}/cancel", tag = "orders",
    params(("id" = Uuid, Path, description = "Order id")),
    request_body = CancelRequest,
    responses(
        (status = 200, body = OrderResponse, headers(("ETag" = String, description = "The order's version as a weak tag, `W/\"<version>\"`: the `If-None-Match` of a later GET"))),
        (status = 400, description = "Missing or invalid reason, or the id is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order (or another customer's)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already rejected, shipped or cancelled, or changed concurrently", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn cancel_order(
    State(state): State<AppState>,
    actor: Actor,
    RequestTrace(trace): RequestTrace,
    Path(id): Path<Uuid>,
    Json(request): Json<CancelRequest>,
) -> ApiResult<Tagged> {
    Ok(Tagged(state.orders.cancel(actor, order_id(id), request.reason, trace).await?))
}

/// Ships a confirmed order: its reserved stock leaves the warehouse. Admins only.
#[utoipa::path(
    post, path = "/api/orders/{id}/ship", tag = "orders",
    params(("id" = Uuid, Path, description = "Order id")),
    responses(
        (status = 200, body = OrderResponse, headers(("ETag" = String, description = "The order's version as a weak tag, `W/\"<version>\"`: the `If-None-Match` of a later GET"))),
        (status = 400, description = "Not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not confirmed, or changed concurrently", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn ship_order(
    State(state): State<AppState>,
    actor: Actor,
    RequestTrace(trace): RequestTrace,
    Path(id): Path<Uuid>,
) -> ApiResult<Tagged> {
    Ok(Tagged(state.orders.ship(actor, order_id(id), trace).await?))
}

/// The products orders can be made of, as inventory last announced them.
#[utoipa::path(get, path = "/api/catalog", tag = "catalog", responses((status = 200, body = Vec<CatalogItemResponse>)))]
async fn list_catalog(State(state): State<AppState>) -> ApiResult<Json<Vec<CatalogItemResponse>>> {
    Ok(Json(state.orders.catalog().await?.into_iter().map(Into::into).collect()))
}
