use std::time::Duration;

use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};

/// Builds the response for a request whose lock could not be had.
///
/// `Res` is the response: `http::Response<B>`, where `B` is the inner service's response body.
/// Implemented for [`DefaultRejection`], `GrpcRejection` (feature `tonic`) and every closure
/// `FnMut(&relock::Error) -> http::Response<B>` that is `Clone`. Set it with
/// [`LockLayer::on_reject`](crate::LockLayer::on_reject).
///
/// ```
/// use http::{Response, StatusCode};
/// use relock_tower::{key, LockLayer};
///
/// let layer = LockLayer::new(key::header("x-order-id").prefix("order:")).on_reject(
///     |error: &relock::Error| {
///         let status = if error.is_timeout() {
///             StatusCode::CONFLICT
///         } else {
///             StatusCode::SERVICE_UNAVAILABLE
///         };
///         let mut response = Response::new(String::from("order busy, try again"));
///         *response.status_mut() = status;
///         response
///     },
/// );
/// # drop(layer);
/// ```
pub trait Reject<Res>: Clone {
    /// The response for `error`, the reason the lock could not be had.
    fn reject(&mut self, error: &relock::Error) -> Res;
}

impl<F, Res> Reject<Res> for F
where
    F: FnMut(&relock::Error) -> Res + Clone,
{
    fn reject(&mut self, error: &relock::Error) -> Res {
        self(error)
    }
}

/// The rejection [`LockLayer`](crate::LockLayer) uses unless told otherwise: an HTTP status with
/// a short `text/plain` body of one line, ending with a newline.
///
/// * [`Timeout`](relock::Error::Timeout) → `423 Locked` with `Retry-After`: the holder's
///   remaining lease in whole seconds, rounded up, at least 1.
/// * [`InvalidKey`](relock::Error::InvalidKey) → `400 Bad Request`, naming the reason (not the
///   key).
/// * [`Backend`](relock::Error::Backend), [`Lost`](relock::Error::Lost) and
///   [`NotReplicated`](relock::Error::NotReplicated) → `503 Service Unavailable`: the lock
///   service failed, the lease ended while the inner service ran (its response is discarded),
///   or too few replicas acknowledged the grant.
/// * anything else (no locker configured, …) → `500 Internal Server Error`.
///
/// The body type only needs to be buildable from a `String`, as axum's `Body`,
/// `http_body_util::Full<Bytes>` and `String` are.
#[derive(Debug, Default, Clone, Copy)]
#[non_exhaustive]
pub struct DefaultRejection;

impl DefaultRejection {
    /// The default rejection.
    pub fn new() -> Self {
        Self
    }
}

impl<B: From<String>> Reject<Response<B>> for DefaultRejection {
    fn reject(&mut self, error: &relock::Error) -> Response<B> {
        match error {
            relock::Error::Timeout { holder_ttl, .. } => {
                let mut response = text(
                    StatusCode::LOCKED,
                    "locked: another holder, in this process or another, has this resource locked; \
                     retry later"
                        .to_owned(),
                );
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(retry_after(*holder_ttl)));
                response
            }
            relock::Error::InvalidKey { reason, .. } => text(
                StatusCode::BAD_REQUEST,
                format!("invalid lock key: {reason}"),
            ),
            relock::Error::Backend(_) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "lock service unavailable; retry later".to_owned(),
            ),
            relock::Error::Lost { .. } => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "lock lost before the request finished; retry later".to_owned(),
            ),
            relock::Error::NotReplicated { .. } => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "lock not replicated in time; retry later".to_owned(),
            ),
            _ => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "lock not available".to_owned(),
            ),
        }
    }
}

fn text<B: From<String>>(status: StatusCode, mut body: String) -> Response<B> {
    // A client printing the body (curl) then leaves the terminal's prompt on a line of its own.
    body.push('\n');
    let mut response = Response::new(B::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Whole seconds until the holder's lease ends, rounded up; at least 1, and 1 when unknown.
fn retry_after(holder_ttl: Option<Duration>) -> u64 {
    let Some(ttl) = holder_ttl else {
        return 1;
    };
    let seconds = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    seconds.max(1)
}

/// The rejection [`LimitLayer`](crate::LimitLayer) uses unless told otherwise: as
/// [`DefaultRejection`], except that a request that waited for a permit in vain
/// ([`Timeout`](relock::Error::Timeout)) gets `429 Too Many Requests`, with `Retry-After` from the
/// soonest lease of the permits in use (whole seconds, rounded up, at least 1).
#[derive(Debug, Default, Clone, Copy)]
#[non_exhaustive]
pub struct LimitRejection;

impl LimitRejection {
    /// The default rejection of a [`LimitLayer`](crate::LimitLayer).
    pub fn new() -> Self {
        Self
    }
}

impl<B: From<String>> Reject<Response<B>> for LimitRejection {
    fn reject(&mut self, error: &relock::Error) -> Response<B> {
        match error {
            relock::Error::Timeout { holder_ttl, .. } => {
                let mut response = text(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many requests for this resource in flight; retry later".to_owned(),
                );
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(retry_after(*holder_ttl)));
                response
            }
            other => DefaultRejection.reject(other),
        }
    }
}

/// Fails the service with the [`relock::Error`], boxed, instead of building a response: for
/// services whose requests are not [`http::Request`]s (queue workers, RPC frameworks of your own).
///
/// With it, a [`Lock`](crate::Lock) service's error is [`BoxError`](crate::BoxError); the inner
/// service's errors are boxed alike. Get the lock error back with
/// `error.downcast_ref::<relock::Error>()`. [`hold_until_body_end`] does not apply: responses
/// are passed through untouched and the lock is released when they are ready.
///
/// [`hold_until_body_end`]: crate::LockLayer::hold_until_body_end
#[derive(Debug, Default, Clone, Copy)]
#[non_exhaustive]
pub struct ErrorRejection;

impl ErrorRejection {
    /// The rejection that fails with the lock error.
    pub fn new() -> Self {
        Self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reject(error: relock::Error) -> Response<String> {
        DefaultRejection::new().reject(&error)
    }

    fn timeout(holder_ttl: Option<Duration>) -> relock::Error {
        relock::Error::Timeout {
            key: "order:1".into(),
            waited: Duration::from_millis(10),
            holder_ttl,
        }
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after(Some(Duration::from_millis(2100))), 3);
        assert_eq!(retry_after(Some(Duration::from_secs(2))), 2);
        assert_eq!(retry_after(Some(Duration::from_millis(1))), 1);
    }

    #[test]
    fn retry_after_is_at_least_one_second() {
        assert_eq!(retry_after(Some(Duration::ZERO)), 1);
        assert_eq!(retry_after(None), 1);
    }

    #[test]
    fn timeout_is_423_with_retry_after() {
        let response = reject(timeout(Some(Duration::from_millis(4500))));
        assert_eq!(response.status(), StatusCode::LOCKED);
        assert_eq!(response.headers()[RETRY_AFTER], "5");
        assert_eq!(
            response.headers()[CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
    }

    /// The holder is often another process (another replica of the service, a batch job), so
    /// the body must not claim it is another request.
    #[test]
    fn timeout_body_says_another_holder_has_the_lock() {
        let response = reject(timeout(None));
        assert_eq!(
            response.body(),
            "locked: another holder, in this process or another, has this resource locked; \
             retry later\n"
        );
    }

    /// `LockLayer::lease` documents this answer for a lease out of range.
    #[test]
    fn invalid_lease_is_500() {
        let response = reject(relock::Error::InvalidLease {
            lease: Duration::ZERO,
            min: relock::Locker::MIN_LEASE,
            max: relock::Locker::MAX_LEASE,
        });
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn every_body_is_one_line_ending_with_a_newline() {
        let errors = [
            timeout(None),
            relock::LockKey::new("").unwrap_err(),
            relock::Error::Lost {
                key: "order:1".into(),
            },
            relock::Error::NoLocker,
        ];
        for error in errors {
            let response = reject(error);
            let body = response.body();
            assert!(body.ends_with('\n'), "{body:?}");
            assert_eq!(body.matches('\n').count(), 1, "{body:?}");
        }
    }

    #[test]
    fn invalid_key_is_400_naming_the_reason() {
        let error = relock::LockKey::new("order:{1}").unwrap_err();
        let response = reject(error);
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            response.body(),
            "invalid lock key: key contains `{` or `}`\n"
        );
    }

    #[test]
    fn lost_and_no_locker_map_to_server_errors() {
        let lost = reject(relock::Error::Lost {
            key: "order:1".into(),
        });
        assert_eq!(lost.status(), StatusCode::SERVICE_UNAVAILABLE);
        let no_locker = reject(relock::Error::NoLocker);
        assert_eq!(no_locker.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
