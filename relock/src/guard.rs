use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::backend::Released;
use crate::error::Error;
use crate::key::LockKey;
use crate::locker::Locker;
use crate::owner::Owner;

/// One holding of a lock by one owner, shared by its guard, the scopes it is carried into, and
/// any re-entrant guards. The last of them to let go releases it; if that happens in `drop` (panic,
/// cancellation, early return) the release goes to the locker's background task.
pub(crate) struct Hold {
    pub(crate) locker: Locker,
    pub(crate) key: LockKey,
    pub(crate) owner: Owner,
    pub(crate) fencing_token: u64,
    /// This hold's slot in the locker's [`LocalHolds`](crate::local::LocalHolds).
    pub(crate) slot: u64,
    /// What took it, to tell a self-deadlock from a legitimate wait.
    pub(crate) runner: Runner,
    /// Whether the hold is carried by a scope (`run`, `#[locked]`) rather than a bare guard.
    pub(crate) scoped: AtomicBool,
    pub(crate) lease: Duration,
    lease_state: Mutex<LeaseState>,
    lost: AtomicBool,
    lost_changed: Notify,
    released: bool,
}

impl Hold {
    /// A hold whose lease was requested at `sent`: the server's lease cannot have started earlier,
    /// so measuring from `sent`, less a margin for clock drift, never overstates it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        locker: Locker,
        key: LockKey,
        owner: Owner,
        fencing_token: u64,
        slot: u64,
        lease: Duration,
        sent: Instant,
    ) -> Self {
        Self {
            locker,
            key,
            owner,
            fencing_token,
            slot,
            runner: Runner::current(),
            scoped: AtomicBool::new(false),
            lease,
            lease_state: Mutex::new(LeaseState::from_request(sent, lease)),
            lost: AtomicBool::new(false),
            lost_changed: Notify::new(),
            released: false,
        }
    }

    fn lease_state(&self) -> std::sync::MutexGuard<'_, LeaseState> {
        self.lease_state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When the lease ends unless it is renewed first.
    pub(crate) fn deadline(&self) -> Instant {
        self.lease_state().deadline
    }

    /// When the watchdog should renew it.
    pub(crate) fn renew_at(&self) -> Instant {
        self.lease_state().renew_at
    }

    /// A renewal requested at `sent` succeeded.
    pub(crate) fn renewed(&self, sent: Instant) {
        if self.is_lost() {
            // Too late: the lease may have ended on the server before the renewal reached it.
            return;
        }
        let renewed = LeaseState::from_request(sent, self.lease);
        let mut state = self.lease_state();
        state.deadline = state.deadline.max(renewed.deadline);
        state.renew_at = renewed.renew_at;
    }

    /// Lost once, lost for good: a renewal that arrives after the local deadline cannot vouch
    /// for the time in between.
    pub(crate) fn is_lost(&self) -> bool {
        if self.lost.load(Ordering::Acquire) {
            return true;
        }
        if Instant::now() >= self.deadline() {
            self.lost.store(true, Ordering::Release);
            return true;
        }
        false
    }

    /// The lease is known to be gone (force-released here, or a renewal found it missing): wake
    /// whoever watches `lost()`, and free the local slot for the tasks of this process waiting
    /// for the key.
    pub(crate) fn mark_lost(&self) {
        self.lost.store(true, Ordering::Release);
        self.lost_changed.notify_waiters();
        self.locker.local().remove(&self.key, self.slot);
    }

    pub(crate) async fn lost(&self) {
        loop {
            let changed = self.lost_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.is_lost() {
                return;
            }
            tokio::select! {
                () = changed => {}
                () = tokio::time::sleep_until(self.deadline().into()) => {}
            }
        }
    }

    async fn release(mut self) -> Result<(), Error> {
        self.locker.watchdog().unregister(self.slot);
        let was_lost = self.is_lost();
        let released = self.locker.backend().release(&self.key, &self.owner).await;
        self.released = true;
        match released? {
            Released::Free | Released::Remaining(_) if !was_lost => Ok(()),
            _ => Err(Error::Lost {
                key: self.key.to_string(),
            }),
        }
    }
}

/// What is running the current code: a tokio task, or (for the future passed to `block_on`,
/// which has no task id) the thread that blocks on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Runner {
    Task(tokio::task::Id),
    Thread(std::thread::ThreadId),
}

impl Runner {
    pub(crate) fn current() -> Self {
        tokio::task::try_id()
            .map(Runner::Task)
            .unwrap_or_else(|| Runner::Thread(std::thread::current().id()))
    }
}

/// A hold's lease as this process sees it.
#[derive(Debug, Clone, Copy)]
struct LeaseState {
    /// When the lease ends without a renewal, by this process's monotonic clock.
    deadline: Instant,
    /// When the watchdog renews it next.
    renew_at: Instant,
}

impl LeaseState {
    fn from_request(sent: Instant, lease: Duration) -> Self {
        Self {
            deadline: local_deadline(sent, lease),
            renew_at: sent + lease / 3,
        }
    }
}

/// The local deadline: the lease measured from before the request, less 1% of it and 2 ms for
/// the difference between this machine's clock rate and the server's.
fn local_deadline(sent: Instant, lease: Duration) -> Instant {
    let margin = lease / 100 + Duration::from_millis(2);
    sent + lease.saturating_sub(margin)
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.locker.watchdog().unregister(self.slot);
        if !self.released {
            self.locker
                .release_in_background(&self.key, &self.owner, self.slot);
        } else {
            self.locker.local().remove(&self.key, self.slot);
        }
    }
}

impl fmt::Debug for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hold")
            .field("key", &self.key)
            .field("owner", &self.owner)
            .field("fencing_token", &self.fencing_token)
            .field("lost", &self.is_lost())
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
        self.hold.key.as_str()
    }

    /// The fencing token: strictly increasing per key for every fresh acquisition, across owners
    /// and processes. Pass it to the resource you write to, so that it can reject a write from a
    /// holder whose lease has ended (a smaller token than one it has already seen). A re-entrant
    /// guard carries the outer hold's token.
    pub fn fencing_token(&self) -> u64 {
        self.hold.fencing_token
    }

    /// Whether the lease is still in force, by the local deadline; never makes a round trip.
    pub fn is_held(&self) -> bool {
        !self.hold.is_lost()
    }

    /// Whether this guard re-entered a hold that its scope already had.
    pub fn is_reentrant(&self) -> bool {
        self.reentrant
    }

    /// The lease this hold was taken with.
    pub fn lease(&self) -> Duration {
        self.hold.lease
    }

    /// Resolves when the hold is lost: its local deadline passed without a renewal, or it was
    /// force-released through this locker. Resolves at once if it already is.
    pub async fn lost(&self) {
        self.hold.lost().await
    }

    /// Releases the lock, or only this guard's share when others (re-entrant guards, scopes
    /// carried by [`inherit`](crate::inherit)) still hold it; the last share releases.
    ///
    /// Returns [`Error::Lost`] when the lease had already ended; another owner's hold is never
    /// touched.
    pub async fn release(self) -> Result<(), Error> {
        let lost = self.hold.is_lost();
        let key = self.hold.key.to_string();
        match Arc::into_inner(self.hold) {
            Some(hold) => hold.release().await,
            None if lost => Err(Error::Lost { key }),
            None => Ok(()),
        }
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("key", &self.hold.key)
            .field("fencing_token", &self.hold.fencing_token)
            .field("reentrant", &self.reentrant)
            .field("held", &self.is_held())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_deadline_keeps_a_drift_margin() {
        let sent = Instant::now();
        let deadline = local_deadline(sent, Duration::from_secs(30));
        assert_eq!(deadline - sent, Duration::from_millis(30_000 - 300 - 2));
        assert_eq!(local_deadline(sent, Duration::from_millis(1)), sent);
    }
}
