//! What a page shows when it cannot show what was asked: a page of its own with the right
//! status; the cause of a 500 or 503 goes to the log only.

use super::views::ErrorPage;
use crate::application::AppError;
use crate::infrastructure::api::ApiError;
use askama::Template;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug)]
pub enum PageError {
    NotFound,
    /// A form or query that cannot be read (not one a page of the storefront sends).
    BadRequest(String),
    /// Signed in, but not allowed (or the form did not pass the CSRF check): the reason shown.
    Forbidden(String),
    /// Not signed in: to the sign-in page.
    SignInRequired,
    /// A service or the database is down; trying later may work.
    Unavailable(BoxError),
    Internal(BoxError),
}

impl PageError {
    pub fn internal(cause: impl Into<BoxError>) -> Self {
        PageError::Internal(cause.into())
    }
}

impl From<ApiError> for PageError {
    fn from(error: ApiError) -> Self {
        match error {
            error if error.is_not_found() => PageError::NotFound,
            ApiError::Refused { status: StatusCode::FORBIDDEN, detail, .. } => PageError::Forbidden(detail),
            ApiError::Refused { .. } => PageError::internal(error),
            ApiError::Unavailable { .. } => PageError::Unavailable(error.into()),
        }
    }
}

impl From<AppError> for PageError {
    fn from(error: AppError) -> Self {
        match error {
            AppError::Store(_) => PageError::Unavailable(error.into()),
            AppError::Invalid(_) | AppError::EmailTaken | AppError::WrongCredentials | AppError::Hashing(_) => {
                PageError::internal(error)
            }
        }
    }
}

impl From<axum::extract::rejection::FormRejection> for PageError {
    fn from(rejection: axum::extract::rejection::FormRejection) -> Self {
        PageError::BadRequest(rejection.body_text())
    }
}

impl From<axum::extract::rejection::PathRejection> for PageError {
    fn from(_: axum::extract::rejection::PathRejection) -> Self {
        PageError::NotFound
    }
}

impl From<axum::extract::rejection::QueryRejection> for PageError {
    fn from(rejection: axum::extract::rejection::QueryRejection) -> Self {
        PageError::BadRequest(rejection.body_text())
    }
}

impl From<askama::Error> for PageError {
    fn from(error: askama::Error) -> Self {
        PageError::internal(error)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, title, detail) = match self {
            PageError::NotFound => {
                (StatusCode::NOT_FOUND, "Not found", "There is nothing here, or it is not yours to see.".to_owned())
            }
            PageError::BadRequest(reason) => (StatusCode::BAD_REQUEST, "Bad request", reason),
            PageError::Forbidden(reason) => (StatusCode::FORBIDDEN, "Not allowed", reason),
            PageError::SignInRequired => return Redirect::to("/signin").into_response(),
            PageError::Unavailable(cause) => {
                tracing::warn!(cause = %messaging::ErrorChain(cause.as_ref()), "page unavailable");
                let detail = "Part of the shop cannot be reached right now. Try again in a moment.".to_owned();
                (StatusCode::SERVICE_UNAVAILABLE, "Unavailable", detail)
            }
            PageError::Internal(cause) => {
                tracing::error!(cause = %messaging::ErrorChain(cause.as_ref()), "page failed");
                let detail = "Something went wrong on our side. It has been logged.".to_owned();
                (StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong", detail)
            }
        };
        let page = ErrorPage { title, detail: &detail };
        match page.render() {
            Ok(html) => (status, Html(html)).into_response(),
            Err(_) => (status, detail).into_response(),
        }
    }
}
