//! How a waiting acquisition spends its time between attempts.
//!
//! This is the only place that decides when to try again: bounded exponential backoff with jitter,
//! never past the holder's remaining lease (the lock is free then at the latest) nor past the
//! caller's own deadline.

use std::time::Duration;

use std::time::Instant;

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
