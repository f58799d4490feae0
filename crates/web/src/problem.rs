use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use messaging::{BoxError, ErrorChain, LoadError, SaveError};
use serde::Serialize;
use std::sync::Arc;
use utoipa::ToSchema;

/// An RFC 7807 problem: what went wrong, for people (`title`, `detail`) and programs
/// (`status`, `type`). Its cause, if any, is logged when the response is written, never sent.
#[derive(Debug, Clone, Serialize, ToSchema)]
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
    #[serde(skip)]
    #[schema(ignore)]
    cause: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl Problem {
    pub fn new(status: StatusCode, kind: &str, title: &str, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("https://shop.example/problems/{kind}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            cause: None,
        }
    }

    /// The same problem, with the error behind it (for the log, not the client).
    pub fn with_cause(mut self, cause: impl Into<BoxError>) -> Self {
        self.cause = Some(Arc::from(cause.into()));
        self
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

    /// 500: a defect or damaged data. The cause is logged with the response, not shown.
    pub fn internal(cause: impl Into<BoxError>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error", "an unexpected error occurred")
            .with_cause(cause)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if let Some(cause) = &self.cause {
            let cause = ErrorChain(cause.as_ref());
            // A defect is an error; a dependency that is down is the operators' to watch.
            if status == StatusCode::INTERNAL_SERVER_ERROR {
                tracing::error!(status = self.status, %cause, "{}", self.title);
            } else {
                tracing::warn!(status = self.status, %cause, "{}", self.title);
            }
        }
        let mut response = (status, axum::Json(self)).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        response
    }
}

impl From<SaveError> for Problem {
    /// A store in the way: a conflict the client may retry, a dependency down, or a defect.
    fn from(error: SaveError) -> Self {
        let detail = error.to_string();
        match error {
            SaveError::Conflict | SaveError::AlreadyConsumed => Problem::conflict(detail),
            SaveError::Unavailable(_) => Problem::unavailable(detail).with_cause(error),
            SaveError::Refused(_) => Problem::internal(error),
        }
    }
}

impl From<LoadError> for Problem {
    /// A store that could not be read (503, try again) or holds what cannot be read back (500).
    fn from(error: LoadError) -> Self {
        match error {
            LoadError::Unavailable(_) => Problem::unavailable(error.to_string()).with_cause(error),
            LoadError::Corrupt { .. } => Problem::internal(error),
        }
    }
}
