//! Reads that may wait for a change (`If-None-Match`, RFC 9110, with `Prefer: wait`, RFC 7240):
//! a client that holds a resource's current representation asks to be answered once it
//! changes, or with 304 Not Modified when the wait is over. It follows the resource with one
//! request per change instead of polling. What cannot be read of either header is ignored, as
//! RFC 7240 asks of preferences: the request is then answered at once, never refused.

use crate::limits::{InFlightPlace, RequestDeadline};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use headers::{ETag, HeaderMapExt, IfNoneMatch};
use std::convert::Infallible;
use std::time::Duration;
use tokio::time::Instant;

/// The longest a request waits for a change, whatever it asks.
pub const MAX_WAIT: Duration = Duration::from_secs(20);

/// Kept between the end of a wait and the request's deadline, for the answer.
const ANSWER_MARGIN: Duration = Duration::from_millis(500);

/// The version of a resource as a weak entity tag (`W/"7"`): what its `ETag` says, and what a
/// client that holds it sends back in `If-None-Match`. Weak: two representations of one version
/// may differ in bytes (a field added by an upgrade) but never in meaning.
pub fn version_tag(version: i64) -> String {
    format!("W/\"{version}\"")
}

fn etag(version: i64) -> ETag {
    version_tag(version).parse().expect("a quoted number is an entity tag")
}

/// `body`, tagged (`ETag`) with the version of the resource it shows.
pub fn tagged(version: i64, body: impl IntoResponse) -> Response {
    let mut response = body.into_response();
    response.headers_mut().typed_insert(etag(version));
    response
}

/// What a GET says of the representation it may hold (an extractor; it never rejects).
#[derive(Clone, Default)]
pub struct Conditional {
    held: Option<IfNoneMatch>,
    wait: Duration,
    place: Option<InFlightPlace>,
}

impl Conditional {
    /// Whether the client already holds the representation of `version`.
    pub fn holds(&self, version: i64) -> bool {
        self.held.as_ref().is_some_and(|held| !held.precondition_passes(&etag(version)))
    }

    /// How long the client may be kept waiting for a change: what it asked, within
    /// [`MAX_WAIT`] and the request's deadline; zero unless it holds a representation.
    pub fn wait(&self) -> Duration {
        self.wait
    }

    /// Gives up the request's place among those in flight, before it waits.
    pub fn start_waiting(&self) {
        if let Some(place) = &self.place {
            place.give_up();
        }
    }

    /// 304 when the client holds `version`, `body` otherwise, tagged with it; with
    /// `Preference-Applied` when the request `waited` (could wait) for it.
    pub fn respond(&self, version: i64, waited: bool, body: impl IntoResponse) -> Response {
        let wait = if waited { self.wait } else { Duration::ZERO };
        let mut response = tagged(
            version,
            if self.holds(version) { StatusCode::NOT_MODIFIED.into_response() } else { body.into_response() },
        );
        if !wait.is_zero() {
            let applied = HeaderValue::from_str(&format!("wait={}", wait.as_secs())).expect("ASCII");
            response.headers_mut().insert("preference-applied", applied);
        }
        response
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Conditional {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let held = parts.headers.typed_get::<IfNoneMatch>();
        let room = parts.extensions.get::<RequestDeadline>().map_or(MAX_WAIT, |deadline| {
            deadline.0.saturating_duration_since(Instant::now()).saturating_sub(ANSWER_MARGIN)
        });
        let wait = match (&held, asked_wait(&parts.headers)) {
            (Some(_), Some(asked)) => asked.min(MAX_WAIT).min(room),
            _ => Duration::ZERO,
        };
        Ok(Self { held, wait, place: parts.extensions.get::<InFlightPlace>().cloned() })
    }
}

/// `Prefer: wait=N` (seconds), among other preferences and their parameters.
fn asked_wait(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .find_map(|preference| {
            let (name, value) = preference.split(';').next()?.split_once('=')?;
            if !name.trim().eq_ignore_ascii_case("wait") {
                return None;
            }
            value.trim().trim_matches('"').parse::<u64>().ok().map(Duration::from_secs)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conditional(headers: &[(&'static str, &'static str)]) -> Conditional {
        let mut request = axum::http::Request::get("/");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let (mut parts, ()) = request.body(()).unwrap().into_parts();
        let extracting = std::pin::pin!(Conditional::from_request_parts(&mut parts, &()));
        let std::task::Poll::Ready(Ok(conditional)) =
            extracting.poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
        else {
            unreachable!("reading headers does not wait")
        };
        conditional
    }

    #[test]
    fn a_client_holds_a_version_it_names_weakly_or_strongly() {
        let held = conditional(&[("if-none-match", "W/\"3\"")]);
        assert!(held.holds(3));
        assert!(!held.holds(4));
        assert!(conditional(&[("if-none-match", "\"2\", W/\"3\"")]).holds(3));
        assert!(conditional(&[("if-none-match", "*")]).holds(9));
        assert!(!conditional(&[]).holds(3));
        assert!(!conditional(&[("if-none-match", "3")]).holds(3), "unquoted: not a tag, ignored");
    }

    #[test]
    fn the_wait_is_what_was_asked_within_the_bounds_and_only_with_a_tag_held() {
        let tag = ("if-none-match", "W/\"1\"");
        assert_eq!(conditional(&[tag, ("prefer", "wait=5")]).wait(), Duration::from_secs(5));
        assert_eq!(conditional(&[tag, ("prefer", "respond-async, Wait = 7;x=y")]).wait(), Duration::from_secs(7));
        assert_eq!(conditional(&[tag, ("prefer", "wait=\"3\"")]).wait(), Duration::from_secs(3));
        assert_eq!(conditional(&[tag, ("prefer", "wait=3600")]).wait(), MAX_WAIT);
        assert_eq!(conditional(&[("prefer", "wait=5")]).wait(), Duration::ZERO, "nothing held, nothing to wait for");
        for unread in ["wait=soon", "wait=-1", "wait", "handling=lenient"] {
            assert_eq!(conditional(&[tag, ("prefer", unread)]).wait(), Duration::ZERO, "{unread}");
        }
    }

    #[test]
    fn the_answer_is_304_when_the_client_holds_the_tag_and_says_it_waited() {
        let waited = conditional(&[("if-none-match", "W/\"1\""), ("prefer", "wait=2")]);
        let response = waited.respond(1, true, "body");
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(response.headers()["etag"], "W/\"1\"");
        assert_eq!(response.headers()["preference-applied"], "wait=2");
        let response = waited.respond(2, true, "body");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["etag"], "W/\"2\"");
        let refused = waited.respond(1, false, "body");
        assert_eq!(refused.status(), StatusCode::NOT_MODIFIED);
        assert!(!refused.headers().contains_key("preference-applied"), "it could not wait");
        let plain = conditional(&[]).respond(2, false, "body");
        assert_eq!(plain.status(), StatusCode::OK);
        assert!(!plain.headers().contains_key("preference-applied"));
    }
}
