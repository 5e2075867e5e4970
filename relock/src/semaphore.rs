//! Semaphores: at most `n` holders of a key at once, across every process that shares the
//! server. Each permit is a hold of its own — token, lease, renewal, loss — kept in the lock's key
//! beside the others (see `protocol.rs`).

use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::acquire::{Acquire, LockFuture};
use crate::error::{Error, InvalidKeyReason};
use crate::guard::LockGuard;
use crate::key::{IntoLockKey, LockKey};
use crate::lease::Mode;
use crate::locker::Locker;

/// A semaphore of `permits` permits on one key, fleet-wide: a cheap handle (clone it, or make
/// another with [`Locker::semaphore`]); nothing is sent to the server until a permit is asked for.
///
/// Every caller must use the same number of permits for a key: a request that disagrees with the
/// key's current holders fails with [`Error::PermitsMismatch`] rather than silently changing the
/// limit. A permit whose holder crashed comes back when its lease ends: the next request that
/// meets it reclaims it (there is no sweeper). The exclusive lock on the same key
/// ([`Locker::lock`]) waits until every permit is returned, and permits asked for after it queue
/// behind it.
///
/// ```
/// # use std::time::Duration;
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), relock::Error> {
/// let locker = relock::Locker::in_memory();
/// let exports = locker.semaphore("tenant:9:exports", 2);
/// let first = exports.acquire().await?;
/// let second = exports.acquire().wait(Duration::from_secs(2)).await?;
/// assert!(exports.try_acquire().await?.is_none(), "both permits are taken");
/// first.release().await?;
/// let third = exports.try_acquire().await?.expect("one came back");
/// assert!(third.fencing_token() > second.fencing_token());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Semaphore {
    locker: Locker,
    key: Result<LockKey, (String, InvalidKeyReason)>,
    permits: u32,
}

impl Semaphore {
    pub(crate) fn new(locker: Locker, key: impl IntoLockKey, permits: u32) -> Self {
        let key = key.into_lock_key().map_err(|err| match err {
            Error::InvalidKey { key, reason } => (key, reason),
            other => (other.to_string(), InvalidKeyReason::Empty),
        });
        Self {
            locker,
            key,
            permits,
        }
    }

    /// The key, as given.
    pub fn key(&self) -> Option<&str> {
        self.key.as_ref().ok().map(LockKey::as_str)
    }

    /// How many permits the semaphore has.
    pub fn permits(&self) -> u32 {
        self.permits
    }

    fn request(&self) -> Acquire {
        let key = match &self.key {
            Ok(key) => Ok(key.clone()),
            Err((key, reason)) => Err(Error::InvalidKey {
                key: key.clone(),
                reason: *reason,
            }),
        };
        Acquire::with_mode(
            self.locker.clone(),
            KeyOrError(key),
            Mode::Permit {
                permits: self.permits,
            },
        )
    }

    /// Asks for a permit: await the returned request for a [`Permit`], waiting up to its
    /// [`wait`](AcquirePermit::wait) for one to come back.
    ///
    /// A semaphore of 0 permits never grants one: the request fails with [`Error::Timeout`] at
    /// once, without a round trip.
    pub fn acquire(&self) -> AcquirePermit {
        AcquirePermit {
            request: self.request(),
        }
    }

    /// Takes a permit if one is free; never waits. `Ok(None)` when all are taken (always, for a
    /// semaphore of 0 permits).
    pub async fn try_acquire(&self) -> Result<Option<Permit>, Error> {
        Ok(self
            .request()
            .try_acquire()
            .await?
            .map(|guard| Permit { guard }))
    }
}

/// A key already checked (or the error checking it gave), for [`Acquire::with_mode`].
struct KeyOrError(Result<LockKey, Error>);

impl IntoLockKey for KeyOrError {
    fn into_lock_key(self) -> Result<LockKey, Error> {
        self.0
    }
}

/// A permit request being configured: await it for a [`Permit`].
///
/// Created by [`Semaphore::acquire`].
#[must_use = "a permit request does nothing until it is awaited"]
pub struct AcquirePermit {
    request: Acquire,
}

impl AcquirePermit {
    /// How long to wait for a permit to come back before giving up with [`Error::Timeout`].
    /// `Duration::ZERO` makes one attempt. Defaults to the locker's wait.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.request = self.request.wait(wait);
        self
    }

    /// How long the permit stays taken if this process stops renewing it (it crashed, or lost
    /// the server). Defaults to the locker's lease.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.request = self.request.lease(lease);
        self
    }

    /// Waits until `count` replicas acknowledged the permit's grant, for at most `timeout`, else
    /// returns the permit and fails with [`Error::NotReplicated`]; `count` 0 does not wait.
    /// Defaults to the locker's [`replicas`](crate::LockerBuilder::replicas), as for
    /// [`Acquire::replicas`].
    pub fn replicas(mut self, count: u32, timeout: Duration) -> Self {
        self.request = self.request.replicas(count, timeout);
        self
    }
}

impl IntoFuture for AcquirePermit {
    type Output = Result<Permit, Error>;
    type IntoFuture = PermitFuture;

    fn into_future(self) -> PermitFuture {
        PermitFuture {
            inner: self.request.into_future(),
        }
    }
}

/// The future of an awaited [`AcquirePermit`]: resolves to the [`Permit`].
#[must_use = "futures do nothing unless polled"]
pub struct PermitFuture {
    inner: LockFuture,
}

impl Future for PermitFuture {
    type Output = Result<Permit, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.inner)
            .poll(cx)
            .map(|result| result.map(|guard| Permit { guard }))
    }
}

/// One of a semaphore's permits; returned when dropped.
///
/// Like a [`LockGuard`]: its own token at the server, a lease renewed by the locker's watchdog,
/// a loss signal, and a fencing token — fresh for every permit, strictly increasing per key.
/// Prefer [`release`](Permit::release), which reports a lease that had already ended as
/// [`Error::Lost`]; a dropped permit is returned in the background.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), relock::Error> {
/// let locker = relock::Locker::in_memory();
/// let permit = locker.semaphore("tenant:9:exports", 4).acquire().await?;
/// assert_eq!(permit.key(), "tenant:9:exports");
/// assert!(permit.is_held());
/// permit.release().await?;
/// # Ok(()) }
/// ```
#[must_use = "the permit is returned as soon as it is dropped"]
pub struct Permit {
    guard: LockGuard,
}

impl Permit {
    /// The semaphore's key.
    pub fn key(&self) -> &str {
        self.guard.key()
    }

    /// This permit's fencing token: larger than that of every permit (and exclusive hold) of the
    /// key granted before it.
    pub fn fencing_token(&self) -> u64 {
        self.guard.fencing_token()
    }

    /// Whether the lease is still in force, by the local deadline; never makes a round trip.
    pub fn is_held(&self) -> bool {
        self.guard.is_held()
    }

    /// The lease this permit was taken with.
    pub fn lease(&self) -> Duration {
        self.guard.lease()
    }

    /// Resolves when the permit is lost: its local deadline passed without a renewal, or the
    /// server no longer had it.
    pub async fn lost(&self) {
        self.guard.lost().await
    }

    /// Returns the permit, waking a waiter. [`Error::Lost`] if its lease had already ended.
    pub async fn release(self) -> Result<(), Error> {
        self.guard.release().await
    }
}

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Semaphore")
            .field("key", &self.key())
            .field("permits", &self.permits)
            .finish()
    }
}

impl fmt::Debug for AcquirePermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcquirePermit")
            .field("request", &self.request)
            .finish()
    }
}

impl fmt::Debug for PermitFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PermitFuture").finish_non_exhaustive()
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("key", &self.key())
            .field("fencing_token", &self.fencing_token())
            .field("held", &self.is_held())
            .finish()
    }
}
