use std::any::type_name;
use std::fmt;
use std::time::Duration;

use relock::{Locker, OnLost};
use tower_layer::Layer;

use super::service::Lock;
use crate::reject::DefaultRejection;

/// Applies [`Lock`] to a service: a relock lock per request, keyed by `extract`.
///
/// Cheap to clone. See the [crate docs](crate) for an example.
#[derive(Clone)]
#[must_use = "a layer does nothing until it wraps a service"]
pub struct LockLayer<X, R = DefaultRejection> {
    extract: X,
    reject: R,
    config: Config,
}

/// The lock settings a layer hands every service it makes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Config {
    pub(crate) locker: Option<Locker>,
    pub(crate) wait: Option<Duration>,
    pub(crate) lease: Option<Duration>,
    pub(crate) on_lost: OnLost,
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

impl<X> LockLayer<X> {
    /// A layer that locks the key `extract` finds in each request, and lets requests for which
    /// it finds none through without a lock.
    ///
    /// `extract` is an [`ExtractKey`](crate::ExtractKey): one of the extractors in
    /// [`key`](crate::key), or a closure `Fn(&Request) -> Option<K>` where `K` is a lock key
    /// such as `String`.
    pub fn new(extract: X) -> Self {
        Self {
            extract,
            reject: DefaultRejection,
            config: Config::default(),
        }
    }
}

impl<X, R> LockLayer<X, R> {
    /// The locker that takes the locks. Defaults to the one
    /// [`Locker::current`](relock::Locker::current) finds when the request arrives: the
    /// scope's, else the global one set with [`relock::set_global`]; with neither, requests are
    /// rejected with [`relock::Error::NoLocker`] (`500` by default).
    pub fn locker(mut self, locker: Locker) -> Self {
        self.config.locker = Some(locker);
        self
    }

    /// How long a request waits for a lock held elsewhere before it is rejected with
    /// [`relock::Error::Timeout`] (`423 Locked` by default). Defaults to the locker's wait.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.config.wait = Some(wait);
        self
    }

    /// How long a request's lock stays held if this process stops renewing it: between 10 ms and
    /// 30 days ([`relock::Locker::MIN_LEASE`], [`relock::Locker::MAX_LEASE`]), else every request
    /// is rejected with [`relock::Error::InvalidLease`] (`500` by default). Defaults to the
    /// locker's lease.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.config.lease = Some(lease);
        self
    }

    /// What happens when the lease is lost while the inner service runs. Defaults to
    /// [`OnLost::Abort`]: the inner future is dropped and the request rejected with
    /// [`relock::Error::Lost`].
    pub fn on_lost(mut self, on_lost: OnLost) -> Self {
        self.config.on_lost = on_lost;
        self
    }

    /// Keeps the lock until the response body has been sent (or dropped), not only until the
    /// response head is ready: for handlers that stream output which must not interleave with
    /// another request's work on the same key. Off by default.
    ///
    /// The lease is renewed while the body streams, as for any hold, but a lease lost at that
    /// point (Redis unreachable for a whole lease, a force-release) does not cut the body short.
    /// Applies to HTTP responses; with [`ErrorRejection`] the lock is released when the response
    /// is ready.
    ///
    /// [`ErrorRejection`]: crate::ErrorRejection
    pub fn hold_until_body_end(mut self) -> Self {
        self.config.hold_until_body_end = true;
        self
    }

    /// Sets what a request whose lock could not be had gets: a [`Reject`](crate::Reject), such
    /// as a closure `FnMut(&relock::Error) -> http::Response<B>`,
    /// `GrpcRejection` (feature `tonic`) for tonic, or [`ErrorRejection`] for services
    /// that do not speak HTTP. Defaults to [`DefaultRejection`].
    ///
    /// [`ErrorRejection`]: crate::ErrorRejection
    pub fn on_reject<R2>(self, reject: R2) -> LockLayer<X, R2> {
        LockLayer {
            extract: self.extract,
            reject,
            config: self.config,
        }
    }
}

impl<S, X: Clone, R: Clone> Layer<S> for LockLayer<X, R> {
    type Service = Lock<S, X, R>;

    fn layer(&self, inner: S) -> Self::Service {
        Lock::new(
            inner,
            self.extract.clone(),
            self.reject.clone(),
            self.config.clone(),
        )
    }
}

impl<X, R> fmt::Debug for LockLayer<X, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockLayer")
            .field("extract", &format_args!("{}", type_name::<X>()))
            .field("reject", &format_args!("{}", type_name::<R>()))
            .field("config", &self.config)
            .finish()
    }
}
