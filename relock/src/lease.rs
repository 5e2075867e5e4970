//! A hold's lease as this process sees it: the local deadline, loss, and the renewal schedule.
//!
//! The lease is what observers share — the watchdog, tasks of this process waiting for the key —
//! never the hold itself. A hold is released when its last share (guard, scope, re-entrant guard)
//! lets go, and `LockGuard::release` tells "last share" by the hold's reference count, so a
//! transient reference held by an observer would make a release silently skip its work. Dropping
//! a lease has no side effects, so observers may drop theirs anywhere, even under a lock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::key::LockKey;
use crate::owner::Owner;

#[derive(Debug)]
pub(crate) struct Lease {
    pub(crate) key: LockKey,
    pub(crate) owner: Owner,
    /// The hold's slot in the locker's [`LocalHolds`](crate::local::LocalHolds).
    pub(crate) slot: u64,
    pub(crate) duration: Duration,
    /// What took it, to tell a self-deadlock from a legitimate wait.
    pub(crate) runner: Runner,
    /// Whether the hold is carried by a scope (`run`, `#[locked]`) rather than a bare guard.
    pub(crate) scoped: AtomicBool,
    times: Mutex<Times>,
    lost: AtomicBool,
    lost_changed: Notify,
}

#[derive(Debug, Clone, Copy)]
struct Times {
    /// When the lease ends without a renewal, by this process's monotonic clock.
    deadline: Instant,
    /// When the watchdog renews it next.
    renew_at: Instant,
}

impl Times {
    fn from_request(sent: Instant, lease: Duration) -> Self {
        Self {
            deadline: local_deadline(sent, lease),
            renew_at: sent + lease / 3,
        }
    }
}

/// The local deadline: the lease measured from before the request — the server's lease cannot
/// have started earlier — less 1% of it and 2 ms for the difference between this machine's clock
/// rate and the server's.
fn local_deadline(sent: Instant, lease: Duration) -> Instant {
    let margin = lease / 100 + Duration::from_millis(2);
    sent + lease.saturating_sub(margin)
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

impl Lease {
    /// The lease of a hold requested at `sent`.
    pub(crate) fn new(
        key: LockKey,
        owner: Owner,
        slot: u64,
        duration: Duration,
        sent: Instant,
    ) -> Self {
        Self {
            key,
            owner,
            slot,
            duration,
            runner: Runner::current(),
            scoped: AtomicBool::new(false),
            times: Mutex::new(Times::from_request(sent, duration)),
            lost: AtomicBool::new(false),
            lost_changed: Notify::new(),
        }
    }

    fn times(&self) -> std::sync::MutexGuard<'_, Times> {
        self.times.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When the lease ends unless it is renewed first.
    pub(crate) fn deadline(&self) -> Instant {
        self.times().deadline
    }

    /// When the watchdog should renew it.
    pub(crate) fn renew_at(&self) -> Instant {
        self.times().renew_at
    }

    /// A renewal requested at `sent` succeeded.
    pub(crate) fn renewed(&self, sent: Instant) {
        if self.is_lost() {
            // Too late: the lease may have ended on the server before the renewal reached it.
            return;
        }
        let renewed = Times::from_request(sent, self.duration);
        let mut times = self.times();
        times.deadline = times.deadline.max(renewed.deadline);
        times.renew_at = renewed.renew_at;
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

    /// The lease is known to be gone (force-released, or a renewal found it missing).
    pub(crate) fn mark_lost(&self) {
        self.lost.store(true, Ordering::Release);
        self.lost_changed.notify_waiters();
    }

    /// Resolves when the lease is lost, by [`mark_lost`](Self::mark_lost) or by its deadline.
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

    pub(crate) fn is_scoped(&self) -> bool {
        self.scoped.load(Ordering::Acquire)
    }

    pub(crate) fn set_scoped(&self) {
        self.scoped.store(true, Ordering::Release);
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

    #[test]
    fn loss_latches() {
        let lease = Lease::new(
            LockKey::new("k").unwrap(),
            Owner::random(),
            0,
            Duration::from_millis(10),
            Instant::now(),
        );
        assert!(!lease.is_lost());
        std::thread::sleep(Duration::from_millis(20));
        assert!(lease.is_lost());
        lease.renewed(Instant::now());
        assert!(
            lease.is_lost(),
            "a late renewal does not bring a lease back"
        );
    }
}
