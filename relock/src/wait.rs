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

/// How a waiter learns that a lock was released.
#[derive(Debug)]
pub(crate) enum ReleaseSignal {
    /// A confirmed subscription to the lock's release channel.
    Subscribed(Subscription),
    /// The in-memory backend's notification for the key.
    Memory(Arc<Notify>),
}

impl ReleaseSignal {
    fn notify(&self) -> &Arc<Notify> {
        match self {
            Self::Subscribed(subscription) => subscription.released(),
            Self::Memory(notify) => notify,
        }
    }
}

/// Waits between attempts, with or without a release signal.
#[derive(Debug)]
pub(crate) struct Waiter {
    signal: Option<ReleaseSignal>,
    backoff: Backoff,
}

impl Waiter {
    pub(crate) fn new(signal: Option<ReleaseSignal>) -> Self {
        Self {
            signal,
            backoff: Backoff::new(),
        }
    }

    /// Arms the wake-up for the next sleep; call before the attempt it follows. (Releases are
    /// announced with `notify_waiters`, which reaches every `Notified` created before it, polled
    /// or not.)
    pub(crate) fn arm(&self) -> Option<OwnedNotified> {
        let signal = self.signal.as_ref()?;
        Some(signal.notify().clone().notified_owned())
    }

    /// Sleeps until `armed` fires, the holder's lease would end, or `deadline`.
    pub(crate) async fn sleep(
        &mut self,
        armed: Option<OwnedNotified>,
        holder_ttl: Option<Duration>,
        deadline: Instant,
    ) {
        match armed {
            Some(armed) => {
                let until = holder_ttl.map_or(deadline, |ttl| {
                    crate::lease::after(Instant::now(), ttl).min(deadline)
                });
                tokio::select! {
                    () = armed => {}
                    () = tokio::time::sleep_until(until.into()) => {}
                }
            }
            None => self.backoff.sleep(holder_ttl, deadline).await,
        }
    }
}

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;

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
