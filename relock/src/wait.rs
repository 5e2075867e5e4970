//! How a waiting acquisition spends its time between attempts.
//!
//! A waiter that holds a [`ReleaseSignal`] sleeps until the release is announced, the holder's
//! lease would end (a crashed holder announces nothing), or its own deadline — no polling. One
//! without (no subscriber connection) retries with bounded exponential backoff and jitter, never
//! past the holder's remaining lease nor its own deadline.
//!
//! The acquisition loop is: try → obtain the signal (subscription confirmed) → try again → sleep
//! with the signal armed *before* each try, so a release between a try and the sleep is never
//! missed.
//!
//! Exclusive and read waiters are all woken by every release. Permit waiters on a subscription
//! are woken one per returned shared hold a release message announces (its payload counts them),
//! the one that has slept longest first, so that a returned permit costs one attempt per
//! `Locker`, not one per waiter; a message that counts nothing (an exclusive hold's release, a
//! force-release) wakes them all. A wake-up is never lost:
//!
//! * it is armed (registered with `enable`) before the attempt it follows, so one that comes
//!   while the attempt is in flight is kept for the sleep after it;
//! * a wake-up received is answered by an attempt sent after it: a refusal answers every one
//!   (whatever was returned has been taken), a grant one (the permit taken is the one it
//!   announced); one left unanswered, or arriving in an armed wake-up that is dropped unused, is
//!   *passed on* to the next permit waiter when the waiter goes (granted, failed, or
//!   cancelled);
//! * the holder's remaining lease still bounds every sleep, and a reconnection of the subscriber
//!   wakes every waiter.

/// How a waiter learns that a lock was released.
#[derive(Debug)]
pub(crate) enum ReleaseSignal {
    /// A confirmed subscription to the lock's release channel.
    Subscribed(Subscription),
    /// The in-memory backend's notification for the key.
    Memory(Arc<Notify>),
}

/// Waits between attempts, with or without a release signal.
#[derive(Debug)]
pub(crate) struct Waiter {
    signal: Option<ReleaseSignal>,
    /// What the waiter sleeps on, and whether its wake-ups come one at a time.
    notify: Option<(Arc<Notify>, bool)>,
    /// One-at-a-time wake-ups received and not yet answered by a refused attempt sent after them:
    /// passed on when the waiter goes.
    held: usize,
    backoff: Backoff,
}

/// A wake-up armed before an attempt, for the sleep after it.
#[derive(Debug)]
pub(crate) struct Armed(Pin<Box<OwnedNotified>>);

impl Waiter {
    /// A waiter for an acquisition of `mode`.
    pub(crate) fn new(signal: Option<ReleaseSignal>, mode: Mode) -> Self {
        let notify = signal.as_ref().map(|signal| match signal {
            ReleaseSignal::Subscribed(subscription) => match mode {
                Mode::Permit { .. } => (subscription.released().one.clone(), true),
                Mode::Exclusive | Mode::Read => (subscription.released().all.clone(), false),
            },
            ReleaseSignal::Memory(notify) => (notify.clone(), false),
        });
        Self {
            signal,
            notify,
            held: 0,
            backoff: Backoff::new(),
        }
    }

    /// Arms the wake-up for the next sleep; call before the attempt it follows. (Releases are
    /// announced with `notify_waiters`, which reaches every `Notified` created before it, polled
    /// or not; a one-at-a-time wake-up reaches only a registered one, so it is registered here.)
    pub(crate) fn arm(&mut self) -> Option<Armed> {
        let (notify, one) = self.notify.as_ref()?;
        let mut armed = Box::pin(notify.clone().notified_owned());
        if *one {
            // A wake-up taken here comes before the attempt, which answers it.
            for _ in 0..3 {
                if !armed.as_mut().enable() {
                    break;
                }
                self.held += 1;
                armed = Box::pin(notify.clone().notified_owned());
            }
        }
        Some(Armed(armed))
    }

    /// An attempt sent after every wake-up this waiter received was refused: they are answered.
    pub(crate) fn refused(&mut self) {
        self.held = 0;
    }

    /// An attempt sent after every wake-up this waiter received was granted: the permit it took
    /// answers one of them; any other is passed on when the waiter goes.
    pub(crate) fn granted(&mut self) {
        self.held = self.held.saturating_sub(1);
    }

    /// Sleeps until `armed` fires, the holder's lease would end, or `deadline`.
    pub(crate) async fn sleep(
        &mut self,
        armed: Option<Armed>,
        holder_ttl: Option<Duration>,
        deadline: Instant,
    ) {
        match armed {
            Some(Armed(armed)) => {
                let until = holder_ttl.map_or(deadline, |ttl| {
                    crate::lease::after(Instant::now(), ttl).min(deadline)
                });
                tokio::select! {
                    () = armed => {
                        if self.notify.as_ref().is_some_and(|(_, one)| *one) {
                            self.held += 1;
                        }
                    }
                    // An armed wake-up dropped unused goes to the next waiter by itself.
                    () = tokio::time::sleep_until(until.into()) => {}
                }
            }
            None => self.backoff.sleep(holder_ttl, deadline).await,
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        // Granted, failed or cancelled with wake-ups no refusal answered: a permit may be free
        // that another waiter of this `Locker` was not woken for.
        if let Some((notify, true)) = &self.notify {
            for _ in 0..self.held {
                notify.notify_one();
            }
        }
        drop(self.signal.take());
    }
}

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;

use crate::lease::Mode;
use crate::subscriber::Subscription;

const FIRST: Duration = Duration::from_millis(2);
const LONGEST: Duration = Duration::from_millis(50);

#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Self { next: FIRST }
    }

    /// How long to sleep before the next attempt.
    pub(crate) fn delay(&mut self, holder_ttl: Option<Duration>, deadline: Instant) -> Duration {
        let jittered = self.next.mul_f64(rand::random_range(0.5..=1.0));
        self.next = (self.next * 2).min(LONGEST);
        let until_deadline = deadline.saturating_duration_since(Instant::now());
        let until_free = holder_ttl.unwrap_or(Duration::MAX);
        jittered.min(until_free).min(until_deadline)
    }

    pub(crate) async fn sleep(&mut self, holder_ttl: Option<Duration>, deadline: Instant) {
        tokio::time::sleep(self.delay(holder_ttl, deadline)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A permit waiter on `notify`, as one on a subscription is.
    fn permit_waiter(notify: &Arc<Notify>) -> Waiter {
        Waiter {
            signal: None,
            notify: Some((notify.clone(), true)),
            held: 0,
            backoff: Backoff::new(),
        }
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    /// Sleeps `waiter` on a fresh task; reports when it wakes, then keeps the waiter (as one
    /// whose next attempt is on its way) until the task is aborted.
    fn sleeping(
        mut waiter: Waiter,
    ) -> (
        tokio::task::JoinHandle<()>,
        tokio::sync::oneshot::Receiver<()>,
    ) {
        let armed = waiter.arm();
        let (woken, wake) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            waiter.sleep(armed, None, far()).await;
            let _ = woken.send(());
            std::future::pending::<()>().await;
            drop(waiter);
        });
        (task, wake)
    }

    async fn woken_soon(wake: &mut tokio::sync::oneshot::Receiver<()>) -> bool {
        tokio::time::timeout(Duration::from_millis(200), wake)
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_release_message_wakes_one_permit_waiter_the_longest_asleep_first() {
        let notify = Arc::new(Notify::new());
        let (first, mut first_woken) = sleeping(permit_waiter(&notify));
        let (second, mut second_woken) = sleeping(permit_waiter(&notify));
        tokio::task::yield_now().await;
        notify.notify_one();
        assert!(woken_soon(&mut first_woken).await);
        assert!(
            !woken_soon(&mut second_woken).await,
            "one message, one wake-up"
        );
        first.abort();
        second.abort();
    }

    #[tokio::test]
    async fn a_waiter_cancelled_after_being_woken_passes_the_wake_up_on() {
        let notify = Arc::new(Notify::new());
        let (first, mut first_woken) = sleeping(permit_waiter(&notify));
        let (second, mut second_woken) = sleeping(permit_waiter(&notify));
        tokio::task::yield_now().await;
        notify.notify_one();
        assert!(woken_soon(&mut first_woken).await);
        // Woken, its attempt not yet answered: cancelled.
        first.abort();
        assert!(
            woken_soon(&mut second_woken).await,
            "the wake-up went with the cancelled waiter"
        );
        second.abort();
    }

    /// How a woken waiter's attempt answers its wake-ups: `wake_ups` wake-ups reach it, then its
    /// attempt is answered (or it goes unanswered); does the next waiter wake when it goes?
    async fn passes_on(wake_ups: usize, answer: Option<fn(&mut Waiter)>) -> bool {
        let notify = Arc::new(Notify::new());
        let mut first = permit_waiter(&notify);
        let armed = first.arm();
        let (second, mut second_woken) = sleeping(permit_waiter(&notify));
        tokio::task::yield_now().await;
        notify.notify_one();
        first.sleep(armed, None, far()).await;
        // Further wake-ups, as the waiter's next arming takes those kept for it.
        first.held += wake_ups - 1;
        if let Some(answer) = answer {
            answer(&mut first);
        }
        drop(first);
        let woken = woken_soon(&mut second_woken).await;
        second.abort();
        woken
    }

    #[tokio::test]
    async fn an_answered_wake_up_is_not_passed_on_and_an_unanswered_one_is() {
        // Refused by an attempt sent after the wake-up: the permit was someone else's.
        assert!(!passes_on(1, Some(Waiter::refused)).await);
        // Granted: the permit taken is the one the wake-up announced.
        assert!(!passes_on(1, Some(Waiter::granted)).await);
        // Failed or cancelled before an answer: the permit may be free.
        assert!(passes_on(1, None).await);
        // Two wake-ups (two returned permits), one grant: the other is passed on.
        assert!(passes_on(2, Some(Waiter::granted)).await);
        assert!(!passes_on(2, Some(Waiter::refused)).await);
    }

    #[tokio::test]
    async fn a_wake_up_during_the_attempt_is_kept_for_the_sleep() {
        let notify = Arc::new(Notify::new());
        let mut waiter = permit_waiter(&notify);
        let armed = waiter.arm();
        notify.notify_one();
        waiter.refused();
        tokio::time::timeout(Duration::from_secs(5), waiter.sleep(armed, None, far()))
            .await
            .expect("woken by the release that came while the attempt was in flight");
    }

    #[tokio::test]
    async fn delays_grow_to_a_ceiling() {
        let far = Instant::now() + Duration::from_secs(60);
        let mut backoff = Backoff::new();
        let delays: Vec<_> = (0..10).map(|_| backoff.delay(None, far)).collect();
        assert!(delays[0] <= FIRST);
        assert!(delays.iter().all(|d| *d <= LONGEST));
        assert!(delays[9] >= LONGEST / 2);
    }

    #[tokio::test]
    async fn never_sleeps_past_the_holder_ttl_or_the_deadline() {
        let mut backoff = Backoff::new();
        for _ in 0..8 {
            backoff.delay(None, Instant::now() + Duration::from_secs(60));
        }
        let ttl = Duration::from_millis(3);
        assert!(backoff.delay(Some(ttl), Instant::now() + Duration::from_secs(60)) <= ttl);
        let soon = Instant::now() + Duration::from_millis(1);
        assert!(backoff.delay(None, soon) <= Duration::from_millis(1));
    }
}
