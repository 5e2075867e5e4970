//! Lease renewal: one task per `Locker` renews every live hold every lease/3, all holds due in a
//! tick in one pipelined round trip, whatever their number.
//!
//! Holds register (their leases: the watchdog never keeps a hold alive) when taken, and leave
//! the moment they are released or dropped. A renewal that
//! finds a hold gone marks it lost; a renewal that cannot reach the server changes nothing, so
//! the hold's local deadline passes and it is lost by time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::backend::Backend;
use crate::lease::{Lease, Loss};
use crate::local::LocalHolds;
use crate::metrics::{self, ByKind, Renewal};

/// The holds a watchdog renews.
#[derive(Debug, Default)]
pub(crate) struct Watchdog {
    holds: Mutex<Holds>,
    /// A hold was added (it may be due before the current sleep ends), or the locker is gone.
    changed: Notify,
    stopped: AtomicBool,
}

#[derive(Debug, Default)]
struct Holds {
    by_slot: HashMap<u64, Arc<Lease>>,
    /// When the task wakes next on its own; `None` until it first runs.
    wake_at: Option<Instant>,
}

/// With no holds to renew, the task still wakes this often, so that taking a lock with a usual
/// lease (due in seconds) never has to wake it: a hold falling due before the task's next
/// wake-up is the only one that does.
const IDLE: Duration = Duration::from_secs(1);

/// A failed renewal is retried after this long (or sooner, for short leases).
const RETRY: Duration = Duration::from_millis(250);

impl Watchdog {
    fn holds(&self) -> std::sync::MutexGuard<'_, Holds> {
        self.holds.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a hold's lease; wakes the task only if it falls due before the task's next wake-up,
    /// so that taking a lock does not cost the watchdog a scan.
    pub(crate) fn register(&self, lease: &Arc<Lease>) {
        let due = lease.renew_at();
        let mut holds = self.holds();
        holds.by_slot.insert(lease.slot, lease.clone());
        if holds.wake_at.is_none_or(|wake_at| due < wake_at) {
            holds.wake_at = Some(due);
            drop(holds);
            self.changed.notify_one();
        }
    }

    pub(crate) fn unregister(&self, slot: u64) {
        self.holds().by_slot.remove(&slot);
    }

    /// Whether the hold is still held by its owner here: one released while its renewal was in
    /// flight is gone from the server by its own release, not lost.
    fn is_registered(&self, lease: &Arc<Lease>) -> bool {
        self.holds().by_slot.contains_key(&lease.slot)
    }

    /// Whether `runner` holds `key` through a bare guard (not carried by a scope) whose mode
    /// `conflicts`: then a wait of that runner for the key could never end.
    pub(crate) fn held_unscoped_by(
        &self,
        key: &crate::key::LockKey,
        runner: crate::lease::Runner,
        conflicts: impl Fn(crate::lease::Mode) -> bool,
    ) -> bool {
        self.holds().by_slot.values().any(|lease| {
            lease.key == *key
                && lease.runner == runner
                && !lease.is_scoped()
                && !lease.is_lost()
                && conflicts(lease.mode)
        })
    }

    /// `key` was force-released through this locker after fencing token `last` was handed out:
    /// its shared holds here (readers, permits: they take no local slot) with a token no larger
    /// are gone. A reader granted after the release carries `last` too, and is taken for gone
    /// with them: a loss reported too early, never one missed.
    pub(crate) fn force_released(&self, key: &crate::key::LockKey, last: u64) {
        let gone: Vec<Arc<Lease>> = self
            .holds()
            .by_slot
            .values()
            .filter(|lease| {
                lease.key == *key
                    && lease.mode != crate::lease::Mode::Exclusive
                    && lease.fencing_token <= last
            })
            .cloned()
            .collect();
        for lease in gone {
            lease.mark_gone(Loss::ForceReleased);
        }
    }

    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.changed.notify_one();
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.holds().by_slot.len()
    }

    /// The leases due by `now` (with the coalescing window), and when the next one falls due.
    fn due(&self, now: Instant) -> (Vec<Arc<Lease>>, Option<Instant>) {
        let mut due = Vec::new();
        let mut next: Option<Instant> = None;
        self.holds().by_slot.retain(|_, lease| {
            if lease.is_lost() {
                return false;
            }
            let renew_at = lease.renew_at();
            // Renewing up to lease/6 early lets holds taken at nearby moments share a round trip.
            if renew_at <= now + lease.duration / 6 {
                due.push(lease.clone());
            } else {
                next = Some(next.map_or(renew_at, |next| next.min(renew_at)));
            }
            true
        });
        (due, next)
    }

    /// Renews until the locker is dropped.
    pub(crate) async fn run(self: Arc<Self>, backend: Arc<Backend>, local: Arc<LocalHolds>) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.stopped.load(Ordering::Acquire) {
                return;
            }
            let (due, next) = self.due(Instant::now());
            let mut next = next;
            if !due.is_empty() {
                let sent = Instant::now();
                match backend.renew(&due).await {
                    Ok(renewed) => {
                        let received = Instant::now();
                        let (mut ok, mut gone) = (ByKind::default(), ByKind::default());
                        let mut unanswered = Vec::new();
                        for (lease, still_held) in due.iter().zip(renewed) {
                            match still_held {
                                Some(true) => {
                                    ok.add(lease.mode);
                                    lease.renewed(sent, received);
                                }
                                Some(false) if self.is_registered(lease) => {
                                    gone.add(lease.mode);
                                    lease.mark_gone(Loss::Gone);
                                    local.remove(&lease.key, lease.slot);
                                }
                                Some(false) => {}
                                None => unanswered.push(lease.clone()),
                            }
                        }
                        metrics::renewals(Renewal::Ok, ok);
                        metrics::renewals(Renewal::Gone, gone);
                        if unanswered.is_empty() {
                            let (_, after) = self.due(Instant::now());
                            next = after;
                        } else {
                            // Holds on a node that did not answer are still due: retry them
                            // soon, as after a failed round, rather than at once.
                            tracing::warn!(
                                holds = unanswered.len(),
                                "relock: lease renewal failed on a node; retrying"
                            );
                            metrics::renewals(Renewal::Failed, ByKind::of(&unanswered));
                            next = Some(retry_at(&unanswered, next));
                        }
                    }
                    Err(err) => {
                        tracing::warn!(
                            error = %err,
                            holds = due.len(),
                            "relock: lease renewal failed; retrying"
                        );
                        metrics::renewals(Renewal::Failed, ByKind::of(&due));
                        next = Some(retry_at(&due, next));
                    }
                }
            }
            let wake_at = next.unwrap_or_else(|| Instant::now() + IDLE);
            self.holds().wake_at = Some(wake_at);
            tokio::select! {
                () = changed => {}
                () = tokio::time::sleep_until(wake_at.into()) => {}
            }
        }
    }
}

/// When to retry renewing `failed` (a tenth of their shortest lease, at most [`RETRY`] away), or
/// `next` if that is sooner.
fn retry_at(failed: &[Arc<Lease>], next: Option<Instant>) -> Instant {
    let retry = failed
        .iter()
        .map(|lease| lease.duration / 10)
        .min()
        .unwrap_or(RETRY);
    let at = Instant::now() + retry.min(RETRY);
    next.map_or(at, |next| next.min(at))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::Locker;

    #[tokio::test]
    async fn holds_leave_the_watchdog_when_released_or_dropped() {
        let locker = Locker::in_memory();
        let guard = locker.lock("a").await.unwrap();
        let dropped = locker.lock("b").await.unwrap();
        assert_eq!(locker.watchdog().len(), 2);
        guard.release().await.unwrap();
        drop(dropped);
        assert_eq!(locker.watchdog().len(), 0);
    }

    #[tokio::test]
    async fn a_short_lease_is_renewed_while_held() {
        let locker = Locker::in_memory();
        let guard = locker
            .lock("renewed")
            .lease(Duration::from_millis(150))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(guard.is_held());
        let info = locker
            .inspect("renewed")
            .await
            .unwrap()
            .expect("still held");
        assert!(info.ttl > Duration::ZERO);
        guard.release().await.unwrap();
    }

    #[tokio::test]
    async fn a_release_after_a_renewal_frees_the_lock_at_once() {
        let locker = Locker::in_memory();
        let guard = locker
            .lock("released")
            .lease(Duration::from_millis(150))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        guard.release().await.unwrap();
        assert!(locker.inspect("released").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_renewal_that_finds_the_hold_gone_marks_it_lost() {
        let locker = Locker::in_memory();
        let guard = locker
            .lock("gone")
            .lease(Duration::from_millis(300))
            .await
            .unwrap();
        // Remove it behind the locker's back, as `DEL` from redis-cli would.
        let other = locker.clone();
        other
            .backend()
            .as_memory()
            .unwrap()
            .force_release(&"gone".parse().unwrap());
        tokio::time::timeout(Duration::from_secs(1), guard.lost())
            .await
            .expect("the next renewal notices");
        assert!(!guard.is_held());
    }
}
