//! Every metric relock records, through the `metrics` facade: one function per event, so call
//! sites need no `cfg`. Without the `metrics` feature each function is empty and inlined away.
//!
//! Labels are `&'static str` literals, so that recording allocates nothing; the lock key is
//! never a label (it is unbounded).

#![cfg_attr(not(feature = "metrics"), allow(unused_variables))]

use std::time::Instant;

use crate::acquire::Outcome;

/// How a hold was released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReleaseMode {
    /// By `LockGuard::release` (or the end of `run`), waiting for the server.
    Explicit,
    /// Dropped without a release: the locker's background task releases it.
    Background,
}

impl ReleaseMode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Explicit => "explicit",
            Self::Background => "background",
        }
    }
}

/// What a renewal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Renewal {
    /// The lease was extended.
    Ok,
    /// The server could not be reached; the renewal is retried.
    Failed,
    /// The hold was gone from the server.
    Gone,
}

/// A lock request that reached the backend, started at `started`, ended with `outcome`.
///
/// Durations are taken from `Instant`s here, so that without the feature no clock is read.
#[inline]
pub(crate) fn acquisition(outcome: Outcome, started: Instant) {
    #[cfg(feature = "metrics")]
    {
        let waited = started.elapsed().as_secs_f64();
        match outcome {
            Outcome::Acquired => {
                ::metrics::counter!("relock_acquired_total").increment(1);
                ::metrics::histogram!("relock_wait_seconds", "result" => "acquired").record(waited);
            }
            Outcome::Busy => {
                ::metrics::histogram!("relock_wait_seconds", "result" => "busy").record(waited)
            }
            Outcome::Timeout => {
                ::metrics::counter!("relock_timeouts_total").increment(1);
                ::metrics::histogram!("relock_wait_seconds", "result" => "timeout").record(waited);
            }
            Outcome::Lost => {
                ::metrics::histogram!("relock_wait_seconds", "result" => "lost").record(waited)
            }
            Outcome::WouldDeadlock => {
                ::metrics::histogram!("relock_wait_seconds", "result" => "would_deadlock")
                    .record(waited)
            }
            Outcome::InvalidLease => {
                ::metrics::histogram!("relock_wait_seconds", "result" => "invalid_lease")
                    .record(waited)
            }
            Outcome::NotReplicated => {
                ::metrics::histogram!("relock_wait_seconds", "result" => "not_replicated")
                    .record(waited)
            }
            Outcome::Error => {
                ::metrics::histogram!("relock_wait_seconds", "result" => "error").record(waited)
            }
        }
    }
}

/// A lock request re-entered a hold its scope already had.
#[inline]
pub(crate) fn reentered() {
    #[cfg(feature = "metrics")]
    ::metrics::counter!("relock_reentered_total").increment(1);
}

/// The server answered one acquisition attempt, sent at `sent`.
#[inline]
pub(crate) fn acquire_round_trip(sent: Instant) {
    #[cfg(feature = "metrics")]
    ::metrics::histogram!("relock_acquire_round_trip_seconds").record(sent.elapsed().as_secs_f64());
}

/// A hold came into being in this process (the server granted it).
#[inline]
pub(crate) fn hold_started() {
    #[cfg(feature = "metrics")]
    ::metrics::gauge!("relock_holds").increment(1.0);
}

/// A hold granted at `granted` let go.
#[inline]
pub(crate) fn released(mode: ReleaseMode, granted: Instant) {
    #[cfg(feature = "metrics")]
    {
        match mode {
            ReleaseMode::Explicit => {
                ::metrics::counter!("relock_released_total", "mode" => "explicit").increment(1)
            }
            ReleaseMode::Background => {
                ::metrics::counter!("relock_released_total", "mode" => "background").increment(1)
            }
        }
        ::metrics::histogram!("relock_hold_seconds").record(granted.elapsed().as_secs_f64());
        ::metrics::gauge!("relock_holds").decrement(1.0);
    }
}

/// A hold was lost while its owner still had it.
#[inline]
pub(crate) fn lost() {
    #[cfg(feature = "metrics")]
    ::metrics::counter!("relock_lost_total").increment(1);
}

/// `count` renewals ended with `result`.
#[inline]
pub(crate) fn renewals(result: Renewal, count: usize) {
    #[cfg(feature = "metrics")]
    {
        let count = count as u64;
        match result {
            Renewal::Ok => {
                ::metrics::counter!("relock_renewals_total", "result" => "ok").increment(count)
            }
            Renewal::Failed => {
                ::metrics::counter!("relock_renewals_total", "result" => "failed").increment(count)
            }
            Renewal::Gone => {
                ::metrics::counter!("relock_renewals_total", "result" => "gone").increment(count)
            }
        }
    }
}
