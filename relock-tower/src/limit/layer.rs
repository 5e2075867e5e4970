use std::any::type_name;
use std::fmt;
use std::time::Duration;

use relock::Locker;
use tower_layer::Layer;

use super::service::Limit;
use crate::reject::LimitRejection;

/// Applies [`Limit`] to a service: at most `permits` requests in flight per key `extract` finds,
/// across every process that shares the lock server.
///
/// Cheap to clone.
///
/// ```
/// use std::time::Duration;
///
/// use axum::{body::Body, http::Request, http::StatusCode, routing::post, Router};
/// use relock_tower::{key, LimitLayer};
/// use tower::ServiceExt;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // `relock::Locker::connect("redis://127.0.0.1:6379").await?` to limit across processes.
/// let locker = relock::Locker::in_memory();
/// let app = Router::new()
///     .route("/exports", post(|| async { "export started" }))
///     .layer(
///         // At most 8 exports in flight per tenant; over that, wait up to 200 ms, then 429.
///         LimitLayer::new(key::header("x-tenant").prefix("tenant:"), 8)
///             .locker(locker)
///             .wait(Duration::from_millis(200)),
///     );
/// let request = Request::post("/exports")
///     .header("x-tenant", "9")
///     .body(Body::empty())?;
/// assert_eq!(app.oneshot(request).await?.status(), StatusCode::OK);
/// # Ok(()) }
/// ```
#[derive(Clone)]
#[must_use = "a layer does nothing until it wraps a service"]
pub struct LimitLayer<X, R = LimitRejection> {
    extract: X,
    reject: R,
    config: Config,
}

/// The settings a layer hands every service it makes.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) permits: u32,
    pub(crate) locker: Option<Locker>,
    pub(crate) wait: Option<Duration>,
    pub(crate) lease: Option<Duration>,
    pub(crate) hold_until_body_end: bool,
}

impl Config {
    /// The configured locker, else the scope's, else the global one.
    pub(crate) fn locker(&self) -> Result<Locker, relock::Error> {
        match &self.locker {
            Some(locker) => Ok(locker.clone()),
            None => Locker::current(),
        }
    }
}

impl<X> LimitLayer<X> {
    /// A layer that lets at most `permits` requests with one key (found by `extract`) run at
    /// once, fleet-wide, and lets requests for which it finds none through without a limit.
    ///
    /// `extract` is an [`ExtractKey`](crate::ExtractKey), as for
    /// [`LockLayer`](crate::LockLayer). Every process must use the same `permits` for a key:
    /// requests that disagree with the key's current holders are rejected with
    /// [`relock::Error::PermitsMismatch`] (`500` by default).
    pub fn new(extract: X, permits: u32) -> Self {
        Self {
            extract,
            reject: LimitRejection,
            config: Config {
                permits,
                locker: None,
                wait: None,
                lease: None,
                hold_until_body_end: false,
            },
        }
    }
}

impl<X, R> LimitLayer<X, R> {
    /// The locker that keeps the permits. Defaults to the one
    /// [`Locker::current`](relock::Locker::current) finds when the request arrives: the
    /// scope's, else the global one set with [`relock::set_global`].
    pub fn locker(mut self, locker: Locker) -> Self {
        self.config.locker = Some(locker);
        self
    }

    /// How long a request over the limit waits for a permit before it is rejected with
    /// [`relock::Error::Timeout`] (`429 Too Many Requests` by default). Defaults to the locker's
    /// wait.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.config.wait = Some(wait);
        self
    }

    /// How long a request's permit stays taken if this process stops renewing it (it crashed).
    /// Defaults to the locker's lease.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.config.lease = Some(lease);
        self
    }

    /// Keeps the permit until the response body has been sent (or dropped), not only until the
    /// response head is ready: for handlers that stream output, whose work goes on while the body
    /// streams and must count against the limit. Off by default.
    ///
    /// The lease is renewed while the body streams, as for any permit, but a lease lost at that
    /// point (Redis unreachable for a whole lease, a force-release) does not cut the body short.
    /// Applies to HTTP responses; with [`ErrorRejection`] the permit is returned when the
    /// response is ready.
    ///
    /// [`ErrorRejection`]: crate::ErrorRejection
    pub fn hold_until_body_end(mut self) -> Self {
        self.config.hold_until_body_end = true;
        self
    }

    /// Sets what a request that got no permit gets: a [`Reject`](crate::Reject), such as a
    /// closure `FnMut(&relock::Error) -> http::Response<B>`, `GrpcLimitRejection` (feature
    /// `tonic`), or [`ErrorRejection`](crate::ErrorRejection). Defaults to
    /// [`LimitRejection`].
    pub fn on_reject<R2>(self, reject: R2) -> LimitLayer<X, R2> {
        LimitLayer {
            extract: self.extract,
            reject,
            config: self.config,
        }
    }
}

impl<S, X: Clone, R: Clone> Layer<S> for LimitLayer<X, R> {
    type Service = Limit<S, X, R>;

    fn layer(&self, inner: S) -> Self::Service {
        Limit::new(
            inner,
            self.extract.clone(),
            self.reject.clone(),
            self.config.clone(),
        )
    }
}

impl<X, R> fmt::Debug for LimitLayer<X, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LimitLayer")
            .field("extract", &format_args!("{}", type_name::<X>()))
            .field("reject", &format_args!("{}", type_name::<R>()))
            .field("config", &self.config)
            .finish()
    }
}
