//! Extractors that answer bad input with a problem naming what is wrong: the field of a JSON
//! body, the query or path parameter, the header. Values that deserialize only when valid
//! (`kernel::Text`, `Quantity`, ...) bring their own rules; these extractors add the name.

use crate::Problem;
use axum::body::Bytes;
use axum::extract::path::ErrorKind;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, RawPathParams, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;
use std::error::Error as _;

/// The most bytes a request body may have: every body of these APIs is small JSON, so anything
/// larger is refused (413) before it is read.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A JSON body, which is always an object. Malformed JSON, another kind of value, a wrong type,
/// a missing field or an invalid value is a 400 problem naming the field; a body that is not
/// declared JSON is 415, one too large 413.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(request.headers()) {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
                "the body must be JSON, sent with Content-Type: application/json",
            ));
        }
        let body = Bytes::from_request(request, state).await.map_err(body_problem)?;
        // serde would also read a struct from an array of its fields; the documents say object.
        if body.trim_ascii_start().first() != Some(&b'{') {
            return Err(Problem::invalid_input("the body must be a JSON object"));
        }
        match axum::Json::<T>::from_bytes(&body) {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_problem(&rejection)),
        }
    }
}

/// `application/json` or `application/<something>+json`, with any parameters.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(content_type) = headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()) else {
        return false;
    };
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence
        .split_once('/')
        .is_some_and(|(kind, subtype)| kind == "application" && (subtype == "json" || subtype.ends_with("+json")))
}

fn body_problem(rejection: BytesRejection) -> Problem {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Payload too large",
            format!("the body is larger than {MAX_BODY_BYTES} bytes"),
        )
    } else {
        Problem::invalid_input(format!("the body could not be read: {}", rejection.body_text()))
    }
}

impl<T: serde::Serialize> axum::response::IntoResponse for Json<T> {
    fn into_response(self) -> axum::response::Response {
        axum::Json(self.0).into_response()
    }
}

fn json_problem(rejection: &JsonRejection) -> Problem {
    match rejection {
        // The cause, without axum's preamble: "name: a product name must not ... at line 1".
        JsonRejection::JsonDataError(error) => {
            Problem::invalid_input(error.source().map_or_else(|| error.body_text(), ToString::to_string))
        }
        JsonRejection::JsonSyntaxError(error) => Problem::invalid_input(format!(
            "the body is not valid JSON: {}",
            error.source().map_or_else(|| error.body_text(), ToString::to_string)
        )),
        other => Problem::invalid_input(other.body_text()),
    }
}

/// Path parameters. A value that does not parse or is invalid is a 400 problem naming the
/// parameter: `id: "xyz" is not a UUID`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Self(value)),
            Err(rejection) => {
                let names = match RawPathParams::from_request_parts(parts, state).await {
                    Ok(raw) => raw.iter().map(|(name, _)| name.to_owned()).collect(),
                    Err(_) => Vec::new(),
                };
                Err(path_problem(rejection, &names))
            }
        }
    }
}

fn path_problem(rejection: PathRejection, names: &[String]) -> Problem {
    let PathRejection::FailedToDeserializePathParams(failed) = rejection else {
        return Problem::internal(format!("path parameters unavailable: {}", rejection.body_text()));
    };
    let only = names.first().filter(|_| names.len() == 1).map_or("path parameter", String::as_str);
    let not_a = |name: &str, value: &str, expected: &str| {
        let expected = match expected {
            "Uuid" => "a UUID",
            "i64" | "u32" | "u64" | "i32" => "a whole number in range",
            other => other,
        };
        Problem::invalid_input(format!("{name}: {value:?} is not {expected}"))
    };
    match failed.into_kind() {
        ErrorKind::ParseErrorAtKey { key, value, expected_type } => not_a(&key, &value, expected_type),
        ErrorKind::ParseErrorAtIndex { index, value, expected_type } => {
            not_a(names.get(index).map_or("path parameter", String::as_str), &value, expected_type)
        }
        ErrorKind::ParseError { value, expected_type } => not_a(only, &value, expected_type),
        ErrorKind::DeserializeError { key, value, message } if message.contains("UUID") => not_a(&key, &value, "Uuid"),
        ErrorKind::DeserializeError { key, message, .. } => Problem::invalid_input(format!("{key}: {message}")),
        ErrorKind::InvalidUtf8InPathParam { key } => {
            Problem::invalid_input(format!("{key}: not valid UTF-8 once percent-decoded"))
        }
        ErrorKind::Message(message) => Problem::invalid_input(format!("{only}: {message}")),
        kind @ (ErrorKind::WrongNumberOfParameters { .. } | ErrorKind::UnsupportedType { .. }) => {
            Problem::internal(format!("a route extracts its path parameters wrongly: {kind}"))
        }
        // `ErrorKind` is non-exhaustive: kinds added later are bad input until said otherwise.
        other => Problem::invalid_input(other.to_string()),
    }
}

/// Query parameters. A value that does not parse or is invalid (an unknown status, a limit out
/// of range) is a 400 problem naming the parameter.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let deserializer = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(deserializer).map(Self).map_err(|error| {
            let field = error.path().to_string();
            let field = if field == "." { "query" } else { &field };
            Problem::invalid_input(format!("{field}: {}", error.inner()))
        })
    }
}

/// The value of the header `name`, if sent, as a `T` (e.g. a `kernel::Text`); a value that is
/// not text or that `T` refuses is a 400 problem naming the header.
pub fn header<T, E>(
    headers: &HeaderMap,
    name: &str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<Option<T>, Problem>
where
    E: std::fmt::Display,
{
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| {
        Problem::invalid_input(format!("{name}: only visible ASCII characters may be sent in a header"))
    })?;
    parse(text).map(Some).map_err(|error| Problem::invalid_input(format!("{name}: {error}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::routing::post;
    use tower::ServiceExt;

    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Line {
        quantity: u32,
    }

    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Page {
        limit: Option<u32>,
    }

    async fn answer(router: Router, request: axum::http::Request<Body>) -> (StatusCode, serde_json::Value) {
        let response = router.oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        (status, serde_json::from_slice(&body).unwrap_or_default())
    }

    fn app() -> Router {
        Router::new()
            .route("/lines", post(|Json(_): Json<Line>| async { "ok" }))
            .route("/pages", axum::routing::get(|Query(_): Query<Page>| async { "ok" }))
            .route("/orders/{id}", axum::routing::get(|Path(_): Path<uuid::Uuid>| async { "ok" }))
            .route(
                "/orders/{id}/items/{product}",
                axum::routing::get(|Path(_): Path<(uuid::Uuid, i64)>| async { "ok" }),
            )
            .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
    }

    fn post_json(body: &str, content_type: Option<&str>) -> axum::http::Request<Body> {
        let mut request = axum::http::Request::post("/lines");
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        request.body(Body::from(body.to_owned())).unwrap()
    }

    fn get(uri: &str) -> axum::http::Request<Body> {
        axum::http::Request::get(uri).body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn a_bad_body_field_is_named() {
        let (status, problem) = answer(app(), post_json(r#"{"quantity": -1}"#, Some("application/json"))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.starts_with("quantity: invalid value: integer `-1`"), "{detail}");
        let (status, problem) = answer(app(), post_json("{oops", Some("application/json"))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(problem["detail"].as_str().unwrap().starts_with("the body is not valid JSON"), "{problem}");
    }

    #[tokio::test]
    async fn a_body_is_an_object() {
        for body in [r#"[1]"#, "1", r#""quantity""#, "null", ""] {
            let (status, problem) = answer(app(), post_json(body, Some("application/json"))).await;
            assert_eq!(
                (status, problem["detail"].as_str()),
                (StatusCode::BAD_REQUEST, Some("the body must be a JSON object")),
                "{body}"
            );
        }
        let (status, _) =
            answer(app(), post_json(r#" {"quantity": 1}"#, Some("application/json; charset=utf-8"))).await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) = answer(app(), post_json(r#"{"quantity": 1}"#, Some("application/problem+json"))).await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn a_body_that_is_not_json_is_415_and_one_too_large_413() {
        let (status, problem) = answer(app(), post_json(r#"{"quantity": 1}"#, Some("text/plain"))).await;
        assert_eq!((status, problem["status"].as_u64()), (StatusCode::UNSUPPORTED_MEDIA_TYPE, Some(415)));
        let (status, _) = answer(app(), post_json(r#"{"quantity": 1}"#, None)).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let huge = format!(r#"{{"quantity": 1, "padding": "{}"}}"#, "x".repeat(MAX_BODY_BYTES));
        let (status, problem) = answer(app(), post_json(&huge, Some("application/json"))).await;
        assert_eq!((status, problem["status"].as_u64()), (StatusCode::PAYLOAD_TOO_LARGE, Some(413)));
    }

    #[tokio::test]
    async fn a_bad_query_parameter_is_named() {
        let (status, problem) = answer(app(), get("/pages?limit=ten")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(problem["detail"], "limit: invalid digit found in string");
        assert_eq!(answer(app(), get("/pages?limit=5&other=%00")).await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn a_bad_path_parameter_is_named() {
        let (status, problem) = answer(app(), get("/orders/xyz")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(problem["detail"], r#"id: "xyz" is not a UUID"#);
        let uuid = uuid::Uuid::now_v7();
        let (_, problem) = answer(app(), get(&format!("/orders/{uuid}/items/99999999999999999999"))).await;
        assert_eq!(problem["detail"], r#"product: "99999999999999999999" is not a whole number in range"#);
        let (status, problem) = answer(app(), get("/orders/%FF")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(problem["detail"], "id: not valid UTF-8 once percent-decoded");
    }

    #[test]
    fn a_header_is_named_when_it_is_not_text_or_refused() {
        let mut headers = HeaderMap::new();
        assert_eq!(header(&headers, "idempotency-key", |text| Ok::<_, String>(text.to_owned())).unwrap(), None);
        headers.insert("idempotency-key", axum::http::HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap());
        let problem = header(&headers, "idempotency-key", |text| Ok::<_, String>(text.to_owned())).unwrap_err();
        assert_eq!(problem.detail, "idempotency-key: only visible ASCII characters may be sent in a header");
        headers.insert("idempotency-key", axum::http::HeaderValue::from_static("a"));
        let problem = header(&headers, "idempotency-key", |_| Err::<(), _>("too short")).unwrap_err();
        assert_eq!(problem.detail, "idempotency-key: too short");
    }
}
