//! A hold's lease as this process sees it: the local deadline, loss, and the renewal schedule.
//!
//! The lease is what observers share — the watchdog, tasks of this process waiting for the key —
//! never the hold itself. A hold is released when its last share (guard, scope, re-entrant guard)
//! lets go, and `LockGuard::release` tells "last share" by the hold's reference count, so a
//! transient reference held by an observer would make a release silently skip its work. Dropping
//! a lease has no side effects, so observers may drop theirs anywhere, even under a lock.

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::error::Error;
use crate::key::LockKey;
use crate::token::HoldToken;

/// The shortest lease: a shorter one would be mostly drift margin and renewal round trip.
pub(crate) const MIN_LEASE: Duration = Duration::from_millis(10);
/// The longest lease: far below what Redis's `PX` and this process's clocks can express.
pub(crate) const MAX_LEASE: Duration = Duration::from_secs(30 * 24 * 3600);

/// Checks that `lease` is one relock can keep.
pub(crate) fn check(lease: Duration) -> Result<Duration, Error> {
    if (MIN_LEASE..=MAX_LEASE).contains(&lease) {
        Ok(lease)
    } else {
        Err(Error::InvalidLease {
            lease,
            min: MIN_LEASE,
            max: MAX_LEASE,
        })
    }
}

/// `now + duration`, or a moment centuries away when that is past what `Instant` can hold:
/// a `Duration::MAX` wait means "wait for ever", not a panic.
pub(crate) fn after(now: Instant, duration: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    now.checked_add(duration.min(FAR))
        .or_else(|| now.checked_add(Duration::from_secs(24 * 3600)))
        .unwrap_or(now)
}

/// What kind of hold a lease is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// [`Locker::lock`](crate::Locker::lock): the only holder (the write lock).
    Exclusive,
    /// [`Locker::read`](crate::Locker::read): one of any number of readers.
    Read,
    /// One of a semaphore's `permits`.
    Permit { permits: u32 },
}

impl Mode {
    /// The kind, for spans and metrics: `exclusive`, `read` or `permit`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Exclusive => "exclusive",
            Self::Read => "read",
            Self::Permit { .. } => "permit",
        }
    }
}

#[derive(Debug)]
pub(crate) struct Lease {
    pub(crate) key: LockKey,
    pub(crate) token: HoldToken,
    /// The hold's fencing token.
    pub(crate) fencing_token: u64,
    /// The hold's slot in the locker's [`LocalHolds`](crate::local::LocalHolds).
    pub(crate) slot: u64,
    pub(crate) duration: Duration,
    pub(crate) mode: Mode,
    /// When the grant's reply was read: the hold's start, for its hold time.
    pub(crate) granted: Instant,
    /// What took it, to tell a self-deadlock from a legitimate wait.
    pub(crate) runner: Runner,
    /// Whether the hold is carried by a scope (`run`, `#[locked]`) rather than a bare guard.
    pub(crate) scoped: AtomicBool,
    times: Mutex<Times>,
    lost: AtomicBool,
    /// Known to be gone from the server: released, force-released here, or found missing by a
    /// renewal.
    gone: AtomicBool,
    lost_changed: Notify,
}

#[derive(Debug, Clone, Copy)]
struct Times {
    /// When the lease ends without a renewal, by this process's monotonic clock.
    deadline: Instant,
    /// When the watchdog renews it next.
    renew_at: Instant,
    /// By when the server has expired it for sure, unless a renewal that this process never heard
    /// back from reached the server late.
    free_by: Instant,
    /// When the server last vouched for the hold: the grant's reply, or the last renewal's.
    confirmed: Instant,
}

impl Times {
    fn from_request(sent: Instant, received: Instant, lease: Duration) -> Self {
        Self {
            deadline: local_deadline(sent, lease),
            renew_at: sent + lease / 3,
            free_by: received + lease + drift_margin(lease),
            confirmed: received,
        }
    }
}

/// How far this machine's clock may run apart from the server's over one lease: 1% of it and
/// 2 ms.
fn drift_margin(lease: Duration) -> Duration {
    lease / 100 + Duration::from_millis(2)
}

/// The local deadline: the lease measured from before the request — the server's lease cannot
/// have started earlier — less the drift margin.
fn local_deadline(sent: Instant, lease: Duration) -> Instant {
    sent + lease.saturating_sub(drift_margin(lease))
}

/// Why a hold was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Loss {
    /// The local deadline passed without a successful renewal.
    Expired,
    /// A renewal or the release found the hold gone from the server.
    Gone,
    /// `Locker::force_release` through this locker.
    ForceReleased,
    /// The grant's reply was read too late, or raced a force-release.
    GrantedLate,
}

impl Loss {
    fn as_str(self) -> &'static str {
        match self {
            Self::Expired => "the lease ended without a renewal",
            Self::Gone => "the server no longer had it",
            Self::ForceReleased => "force-released",
            Self::GrantedLate => "the grant arrived after its lease or a force-release",
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

impl Lease {
    /// The lease of a hold requested at `sent` and granted by a reply received at `received`.
    pub(crate) fn new(
        key: LockKey,
        token: HoldToken,
        fencing_token: u64,
        slot: u64,
        duration: Duration,
        sent: Instant,
        received: Instant,
    ) -> Self {
        Self {
            key,
            token,
            fencing_token,
            slot,
            duration,
            mode: Mode::Exclusive,
            granted: received,
            runner: Runner::current(),
            scoped: AtomicBool::new(false),
            times: Mutex::new(Times::from_request(sent, received, duration)),
            lost: AtomicBool::new(false),
            gone: AtomicBool::new(false),
            lost_changed: Notify::new(),
        }
    }

    /// The same lease, for a hold of `mode`.
    pub(crate) fn with_mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
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

    /// By when the server has expired the hold for sure (see [`is_gone`](Self::is_gone)).
    pub(crate) fn free_by(&self) -> Instant {
        self.times().free_by
    }

    /// A renewal requested at `sent` succeeded, by a reply received at `received`.
    pub(crate) fn renewed(&self, sent: Instant, received: Instant) {
        let renewed = Times::from_request(sent, received, self.duration);
        let lost = self.is_lost();
        let mut times = self.times();
        // The hold lives on at the server either way, so it stays in the way that much longer.
        times.free_by = times.free_by.max(renewed.free_by);
        if lost {
            // Too late: the lease may have ended on the server before the renewal reached it.
            return;
        }
        times.deadline = times.deadline.max(renewed.deadline);
        times.renew_at = renewed.renew_at;
        times.confirmed = renewed.confirmed;
    }

    /// Lost once, lost for good: a renewal that arrives after the local deadline cannot vouch
    /// for the time in between.
    pub(crate) fn is_lost(&self) -> bool {
        if self.lost.load(Ordering::Acquire) {
            return true;
        }
        if Instant::now() >= self.deadline() {
            self.lose(Loss::Expired);
            return true;
        }
        false
    }

    /// The hold must not be trusted any more (force-released, or its grant came too late).
    pub(crate) fn mark_lost(&self, cause: Loss) {
        self.lose(cause);
        self.lost_changed.notify_waiters();
    }

    /// The hold is known to be gone from the server while its owner still has it: force-released,
    /// or found missing by a renewal. Implies lost.
    pub(crate) fn mark_gone(&self, cause: Loss) {
        self.gone.store(true, Ordering::Release);
        self.mark_lost(cause);
    }

    /// The owner released the hold and the server freed it: gone, and no loss to report, even if
    /// the deadline passed while the release was on its way.
    pub(crate) fn mark_released(&self) {
        self.gone.store(true, Ordering::Release);
        self.lost.store(true, Ordering::Release);
        self.lost_changed.notify_waiters();
    }

    /// The owner let go of the hold without waiting for the server (it was dropped): a lease
    /// that had already ended unnoticed is reported lost; what happens to it afterwards is not a
    /// loss.
    pub(crate) fn let_go(&self) {
        self.is_lost();
        self.lost.store(true, Ordering::Release);
        self.lost_changed.notify_waiters();
    }

    /// Latches the loss, reporting it the first time.
    fn lose(&self, cause: Loss) {
        if self.lost.swap(true, Ordering::AcqRel) {
            return;
        }
        let since_renewal = self.times().confirmed.elapsed();
        tracing::warn!(
            key = %self.key,
            fencing_token = self.fencing_token,
            kind = self.mode.as_str(),
            cause = cause.as_str(),
            ?since_renewal,
            "relock: lock lost"
        );
        crate::metrics::lost(self.mode);
    }

    /// Whether the server no longer has the hold: known gone, or past the time by which its
    /// lease has ended there for sure. Until then the key's local slot stays occupied, so that
    /// tasks of this process queue locally instead of asking the server in vain.
    pub(crate) fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Acquire) || Instant::now() >= self.free_by()
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

/// Something that watches a lease: a guard, or a share of the lease itself.
pub(crate) trait Watched {
    fn lease(&self) -> &Lease;
}

impl Watched for Arc<Lease> {
    fn lease(&self) -> &Lease {
        self
    }
}

impl Watched for crate::guard::LockGuard {
    fn lease(&self) -> &Lease {
        &self.hold.lease
    }
}

/// Polls `body` to completion unless one of `leases` is lost first: then `body` is dropped
/// without another poll, and the lost lease's key comes back.
///
/// Loss is checked before every poll of the body, by the clock and not only by the wake-up: a
/// process that stalled past its lease (a blocking call, a pause) must not take another step of
/// the body when it wakes.
///
/// `body` comes pinned by the caller: moved in by value, it would be stored twice in this
/// future (as the argument and as the pinned local), and nested `run`s would double the size of
/// their futures at each level.
pub(crate) async fn until_lost<W: Watched, F: Future>(
    leases: &[W],
    mut body: Pin<&mut F>,
) -> Result<F::Output, LockKey> {
    let mut lost = pin!(first_lost(leases));
    std::future::poll_fn(|cx| {
        if let Some(lost) = leases.iter().find(|watched| watched.lease().is_lost()) {
            return Poll::Ready(Err(lost.lease().key.clone()));
        }
        if let Poll::Ready(output) = body.as_mut().poll(cx) {
            return Poll::Ready(Ok(output));
        }
        lost.as_mut().poll(cx).map(Err)
    })
    .await
}

/// Resolves with the key of the first of `leases` to be lost.
async fn first_lost<W: Watched>(leases: &[W]) -> LockKey {
    match leases {
        [] => std::future::pending().await,
        [watched] => {
            watched.lease().lost().await;
            watched.lease().key.clone()
        }
        _ => {
            let mut losts: Vec<_> = leases
                .iter()
                .map(|watched| Box::pin(watched.lease().lost()))
                .collect();
            std::future::poll_fn(|cx| {
                for (watched, lost) in leases.iter().zip(&mut losts) {
                    if lost.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(watched.lease().key.clone());
                    }
                }
                Poll::Pending
            })
            .await
        }
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
    fn leases_out_of_range_are_refused() {
        assert!(check(Duration::ZERO).is_err());
        assert!(check(Duration::from_millis(9)).is_err());
        assert!(check(Duration::MAX).is_err());
        assert_eq!(check(MIN_LEASE).unwrap(), MIN_LEASE);
        assert_eq!(check(MAX_LEASE).unwrap(), MAX_LEASE);
    }

    #[test]
    fn after_never_overflows() {
        let now = Instant::now();
        assert!(after(now, Duration::MAX) > now + Duration::from_secs(3600));
        assert_eq!(
            after(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
    }

    #[test]
    fn loss_latches() {
        let now = Instant::now();
        let lease = Lease::new(
            LockKey::new("k").unwrap(),
            HoldToken::random(),
            1,
            0,
            Duration::from_millis(10),
            now,
            now,
        );
        assert!(!lease.is_lost());
        std::thread::sleep(Duration::from_millis(20));
        assert!(lease.is_lost());
        lease.renewed(Instant::now(), Instant::now());
        assert!(
            lease.is_lost(),
            "a late renewal does not bring a lease back"
        );
        assert!(
            !lease.is_gone(),
            "but the server has the hold for another lease"
        );
    }
}
