use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// An RFC 7807 problem: what went wrong, for people (`title`, `detail`) and programs
/// (`status`, `type`).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Problem {
    /// A URI reference naming the kind of problem.
    #[serde(rename = "type")]
    #[schema(example = "https://shop.example/problems/invalid-input")]
    pub kind: String,
    #[schema(example = "Invalid input")]
    pub title: String,
    #[schema(example = 400)]
    pub status: u16,
    #[schema(example = "quantity: a quantity must be at least 1 (got 0)")]
    pub detail: String,
}

impl Problem {
    pub fn new(status: StatusCode, kind: &str, title: &str, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("https://shop.example/problems/{kind}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
        }
    }

    /// 400: the request is malformed or a value is invalid.
    pub fn invalid_input(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid-input", "Invalid input", detail)
    }

    /// 403: the caller is known, but its role may not do this.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", detail)
    }

    /// 404: the resource does not exist.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    /// 409: the current state forbids the change, or someone changed it concurrently.
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", "Conflict with the current state", detail)
    }

    /// 422: well-formed, but a business rule refuses it.
    pub fn rule_broken(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "business-rule", "Business rule violated", detail)
    }

    /// 503: a dependency (database, broker) is unreachable; retrying later may work.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Service unavailable", detail)
    }

    /// 500: a defect. The detail is logged, not shown.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(%detail, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error", "an unexpected error occurred")
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, axum::Json(self)).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        response
    }
}

impl From<messaging::SaveError> for Problem {
    /// A store in the way: a conflict the client may retry, a dependency down, or a defect.
    fn from(error: messaging::SaveError) -> Self {
        use messaging::SaveError;
        let detail = error.to_string();
        match error {
            SaveError::Conflict | SaveError::AlreadyConsumed => Problem::conflict(detail),
            SaveError::Unavailable(_) => Problem::unavailable(detail),
            SaveError::Refused(_) => Problem::internal(detail),
        }
    }
}
