use super::dto::{
    ChangePriceRequest, CreateProductRequest, ListProductsQuery, ProductPageSize, ProductResponse, ReservationResponse,
    RestockRequest,
};
use crate::application::{NewProduct, ProductService};
use crate::domain::{OrderId, Product, ProductId};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use std::sync::Arc;
use utoipa::OpenApi;
use uuid::Uuid;
use web::auth::{Admin, BearerAuth};
use web::{Json, Path, Problem, Query, RequestTrace, SharedResponses};

#[derive(OpenApi)]
#[openapi(
    info(title = "Inventory service", description = "Products, their stock, and the stock reservations of orders."),
    paths(list_products, get_product, create_product, restock, change_price, get_reservation),
    // Schemas of parameters (bodies and responses bring theirs).
    components(schemas(Problem, ProductId, ProductPageSize)),
    modifiers(&BearerAuth, &SharedResponses),
    tags((name = "products"), (name = "reservations", description = "The ReserveStocks saga's record of each order"))
)]
pub struct ApiDoc;

/// The inventory API's routes (without operational endpoints, which the composition root adds).
/// They expect to be behind `web::auth::require_token`: anyone signed in reads products; only
/// admins change them or read reservations.
pub fn router(products: Arc<ProductService>) -> Router {
    Router::new()
        .route("/api/products", get(list_products).post(create_product))
        .route("/api/products/{id}", get(get_product))
        .route("/api/products/{id}/restock", post(restock))
        .route("/api/products/{id}/price", put(change_price))
        .route("/api/reservations/{order_id}", get(get_reservation))
        .with_state(products)
}

type ApiResult<T> = Result<T, Problem>;

/// Products by id, a page at a time.
#[utoipa::path(
    get, path = "/api/products", tag = "products",
    params(ListProductsQuery),
    responses(
        (status = 200, body = Vec<ProductResponse>),
        (status = 400, description = "Invalid paging (the detail names the parameter)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_products(
    State(products): State<Arc<ProductService>>,
    Query(query): Query<ListProductsQuery>,
) -> ApiResult<Json<Vec<ProductResponse>>> {
    let limit = query.limit.unwrap_or_default().get();
    Ok(Json(products.list(query.after, limit).await?.into_iter().map(Into::into).collect()))
}

/// A product with its stock, reserved and available units.
#[utoipa::path(
    get, path = "/api/products/{id}", tag = "products",
    params(("id" = ProductId, Path, description = "Product id")),
    responses(
        (status = 200, body = ProductResponse),
        (status = 400, description = "Not a positive integer", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such product", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_product(
    State(products): State<Arc<ProductService>>,
    Path(id): Path<ProductId>,
) -> ApiResult<Json<ProductResponse>> {
    Ok(Json(ProductResponse::from(&products.get(id).await?)))
}

/// Adds a product to the catalog with its initial stock; the order service learns of it.
/// Admins only.
#[utoipa::path(
    post, path = "/api/products", tag = "products",
    request_body = CreateProductRequest,
    responses(
        (status = 201, body = ProductResponse),
        (status = 400, description = "Invalid name, description, price or stock (the detail names the field)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Changed concurrently", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn create_product(
    State(products): State<Arc<ProductService>>,
    _: Admin,
    RequestTrace(trace): RequestTrace,
    Json(request): Json<CreateProductRequest>,
) -> ApiResult<Response> {
    let stock = u32::try_from(request.stock).ok().filter(|stock| *stock <= Product::MAX_STOCK).ok_or_else(|| {
        Problem::invalid_input(format!("stock: must be 0 to {} (got {})", Product::MAX_STOCK, request.stock))
    })?;
    let new = NewProduct { name: request.name, description: request.description, price: request.price, stock };
    let product = products.create(new, trace).await?;
    let location = HeaderValue::from_str(&format!("/api/products/{}", product.id())).expect("ids are ASCII");
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(ProductResponse::from(&product))).into_response())
}

/// Adds units to a product's stock. Admins only.
#[utoipa::path(
    post, path = "/api/products/{id}/restock", tag = "products",
    params(("id" = ProductId, Path, description = "Product id")),
    request_body = RestockRequest,
    responses(
        (status = 200, body = ProductResponse),
        (status = 400, description = "Quantity not positive, or the id not a positive integer", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such product", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Changed concurrently", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The stock would exceed the most a product may hold", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn restock(
    State(products): State<Arc<ProductService>>,
    _: Admin,
    RequestTrace(trace): RequestTrace,
    Path(id): Path<ProductId>,
    Json(request): Json<RestockRequest>,
) -> ApiResult<Json<ProductResponse>> {
    Ok(Json(ProductResponse::from(&products.restock(id, request.quantity, trace).await?)))
}

/// Sets a product's price; the order service's catalog follows. Admins only.
#[utoipa::path(
    put, path = "/api/products/{id}/price", tag = "products",
    params(("id" = ProductId, Path, description = "Product id")),
    request_body = ChangePriceRequest,
    responses(
        (status = 200, body = ProductResponse),
        (status = 400, description = "Invalid price, or the id not a positive integer", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such product", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Changed concurrently", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn change_price(
    State(products): State<Arc<ProductService>>,
    _: Admin,
    RequestTrace(trace): RequestTrace,
    Path(id): Path<ProductId>,
    Json(request): Json<ChangePriceRequest>,
) -> ApiResult<Json<ProductResponse>> {
    Ok(Json(ProductResponse::from(&products.change_price(id, request.price, trace).await?)))
}

/// The ReserveStocks saga's record for an order: its state and each line's reservation.
/// Admins only.
#[utoipa::path(
    get, path = "/api/reservations/{order_id}", tag = "reservations",
    params(("order_id" = Uuid, Path, description = "Order id")),
    responses(
        (status = 200, body = ReservationResponse),
        (status = 400, description = "Not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Inventory has not heard of this order", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_reservation(
    State(products): State<Arc<ProductService>>,
    _: Admin,
    Path(order_id): Path<Uuid>,
) -> ApiResult<Json<ReservationResponse>> {
    Ok(Json(products.reservation(OrderId::from_uuid(order_id)).await?.into()))
}
