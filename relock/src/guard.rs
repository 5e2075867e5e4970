use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::Released;
use crate::error::Error;
use crate::key::LockKey;
use crate::lease::{Lease, Loss};
use crate::locker::Locker;
use crate::metrics::{self, ReleaseMode};

/// One holding of a lock — one fresh acquisition, with its own token at the server — shared by
/// its guard, the scopes it is carried into, and any re-entrant guards. The last of them to let go
/// releases it; if that happens in `drop` (panic, cancellation, early return), or the release
/// cannot reach the server, the release goes to the locker's background task, which retries it
/// until the server answers or the lease has ended there for sure.
///
/// Only shares may hold a `Hold`: observers hold its [`Lease`].
pub(crate) struct Hold {
    pub(crate) locker: Locker,
    pub(crate) lease: Arc<Lease>,
    released: bool,
}

impl Hold {
    pub(crate) fn new(locker: Locker, lease: Lease) -> Self {
        metrics::hold_started(lease.mode);
        Self {
            locker,
            lease: Arc::new(lease),
            released: false,
        }
    }

    pub(crate) fn key(&self) -> &LockKey {
        &self.lease.key
    }

    /// Releases the hold at the server. A failed request (its outcome unknown) is not taken as
    /// done: dropping the unreleased hold hands it to the background task.
    async fn release(mut self) -> Result<(), Error> {
        self.locker.watchdog().unregister(self.lease.slot);
        let was_lost = self.lease.is_lost();
        let released = self
            .locker
            .backend()
            .release(&self.lease.key, &self.lease.token, self.lease.fencing_token)
            .await?;
        self.released = true;
        if released == Released::NotHeld {
            self.lease.mark_gone(Loss::Gone);
        }
        // The server does not read its clock on a release: a hold whose deadline passed unseen is
        // released as any other. The local deadline ends before the server's, so a lease that had
        // ended by the time the answer came shows here.
        match released {
            Released::Free | Released::Again if !was_lost && !self.lease.is_lost() => Ok(()),
            Released::Free | Released::Again | Released::NotHeld => Err(Error::Lost {
                key: self.lease.key.to_string(),
            }),
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let lease = &self.lease;
        let mode = if self.released {
            ReleaseMode::Explicit
        } else {
            ReleaseMode::Background
        };
        tracing::debug!(
            key = %lease.key,
            fencing_token = self.lease.fencing_token,
            kind = lease.mode.as_str(),
            mode = mode.as_str(),
            held_for = ?lease.granted.elapsed(),
            "relock: released"
        );
        metrics::released(mode, lease.mode, lease.granted);
        if self.released {
            lease.mark_released();
            self.locker.local().remove(&lease.key, lease.slot);
        } else {
            lease.let_go();
            self.locker.watchdog().unregister(lease.slot);
            self.locker.release_in_background(
                &lease.key,
                &lease.token,
                lease.fencing_token,
                Some(lease.slot),
                lease.free_by(),
            );
        }
    }
}

impl fmt::Debug for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hold")
            .field("key", &self.lease.key)
            .field("token", &self.lease.token)
            .field("fencing_token", &self.lease.fencing_token)
            .field("lost", &self.lease.is_lost())
            .finish_non_exhaustive()
    }
}

/// Proof that the caller holds a lock; releases it when dropped.
///
/// Prefer [`release`](LockGuard::release), which waits for the server and reports a lease that
/// had already ended as [`Error::Lost`]. Dropping the guard instead (an early return, a panic, a
/// cancelled future) hands the release to the [`Locker`]'s background task, so the lock is free
/// again within a round trip.
///
/// A guard obtained while the same scope already held the key is *re-entrant*: it shares the
/// outer hold, and releasing it only gives up its share.
///
/// The same guard stands for a read hold ([`Locker::read`](crate::Locker::read)): its fencing
/// token is then the last writer's, shared by every reader of that time. That writer's hold has
/// ended (released, or its lease ran out while it stalled), so a resource that checks readers
/// refuses a write carrying a token that a read has already shown, as well as smaller ones.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), relock::Error> {
/// let locker = relock::Locker::in_memory();
/// let guard = locker.lock("order:42").await?;
/// assert!(guard.is_held());
/// assert_eq!(guard.key(), "order:42");
/// println!("write with fencing token {}", guard.fencing_token());
/// guard.release().await?;
/// # Ok(()) }
/// ```
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockGuard {
    pub(crate) hold: Arc<Hold>,
    pub(crate) reentrant: bool,
}

impl LockGuard {
    /// The key this guard holds.
    pub fn key(&self) -> &str {
        self.hold.key().as_str()
    }

    /// The fencing token: strictly increasing per key for every fresh acquisition, across owners
    /// and processes, and never going backwards — not when the counter expires, not after a
    /// restart of the server without persistence, not after a failover — as long as the server's
    /// clock does not step back (see the crate docs). Pass it to the resource you write to, so
    /// that it can reject a write from a holder whose lease has ended (a smaller token than one it
    /// has already seen). A re-entrant guard carries the outer hold's token.
    ///
    /// Tokens are large (the server's clock in microseconds is mixed in) and not consecutive.
    pub fn fencing_token(&self) -> u64 {
        self.hold.lease.fencing_token
    }

    /// Whether the lease is still in force, by the local deadline; never makes a round trip.
    pub fn is_held(&self) -> bool {
        !self.hold.lease.is_lost()
    }

    /// Whether this guard re-entered a hold that its scope already had.
    pub fn is_reentrant(&self) -> bool {
        self.reentrant
    }

    /// The lease this hold was taken with.
    pub fn lease(&self) -> Duration {
        self.hold.lease.duration
    }

    /// Resolves when the hold is lost: its local deadline passed without a renewal, or it was
    /// force-released through this locker. Resolves at once if it already is.
    pub async fn lost(&self) {
        self.hold.lease.lost().await
    }

    /// Releases the lock, or only this guard's share when others (re-entrant guards, scopes
    /// carried by [`inherit`](crate::inherit)) still hold it; the last share releases.
    ///
    /// Returns [`Error::Lost`] when the lease had already ended; another hold is never touched,
    /// not even a newer hold of the same key in the same scope. When the server cannot be reached
    /// the error is [`Error::Backend`], and the release is retried in the background until the
    /// server answers or the lease has ended there.
    pub async fn release(self) -> Result<(), Error> {
        let lost = self.hold.lease.is_lost();
        let key = self.hold.key().clone();
        match Arc::into_inner(self.hold) {
            Some(hold) => hold.release().await,
            None if lost => Err(Error::Lost {
                key: key.to_string(),
            }),
            None => Ok(()),
        }
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("key", self.hold.key())
            .field("fencing_token", &self.hold.lease.fencing_token)
            .field("reentrant", &self.reentrant)
            .field("held", &self.is_held())
            .finish()
    }
}
