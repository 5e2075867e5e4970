//! Every metric relock records, through the `metrics` facade: one function per event, so call
//! sites need no `cfg`. Without the `metrics` feature each function is empty and inlined away.
//!
//! Labels are `&'static str` literals, so that recording allocates nothing; the lock key is
//! never a label (it is unbounded). Every metric about an acquisition or a hold has a `kind`
//! label: `exclusive`, `read` or `permit`.

#![cfg_attr(not(feature = "metrics"), allow(unused_variables, unused_macros))]

use std::sync::Arc;
use std::time::Instant;

use crate::acquire::Outcome;
use crate::lease::{Lease, Mode};

/// Records `$macro!($name, labels…)$call` with a `kind` label for `$mode`, every label a literal
/// (so that the metric's key is a static).
macro_rules! kinded {
    ($mode:expr, $macro:ident!($name:literal $(, $key:literal => $value:literal)*) $($call:tt)*) => {
        match $mode {
            Mode::Exclusive => {
                ::metrics::$macro!($name, "kind" => "exclusive" $(, $key => $value)*)$($call)*
            }
            Mode::Read => ::metrics::$macro!($name, "kind" => "read" $(, $key => $value)*)$($call)*,
            Mode::Permit { .. } => {
                ::metrics::$macro!($name, "kind" => "permit" $(, $key => $value)*)$($call)*
            }
        }
    };
}

/// How many holds of each kind, for [`renewals`].
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ByKind {
    exclusive: usize,
    read: usize,
    permit: usize,
}

impl ByKind {
    pub(crate) fn add(&mut self, mode: Mode) {
        match mode {
            Mode::Exclusive => self.exclusive += 1,
            Mode::Read => self.read += 1,
            Mode::Permit { .. } => self.permit += 1,
        }
    }

    pub(crate) fn of(leases: &[Arc<Lease>]) -> Self {
        let mut counts = Self::default();
        for lease in leases {
            counts.add(lease.mode);
        }
        counts
    }
}

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

/// A lock request of `mode` that reached the backend, started at `started`, ended with
/// `outcome`.
///
/// Durations are taken from `Instant`s here, so that without the feature no clock is read.
#[inline]
pub(crate) fn acquisition(mode: Mode, outcome: Outcome, started: Instant) {
    #[cfg(feature = "metrics")]
    {
        let waited = started.elapsed().as_secs_f64();
        match outcome {
            Outcome::Acquired => {
                kinded!(mode, counter!("relock_acquired_total").increment(1));
                kinded!(
                    mode,
                    histogram!("relock_wait_seconds", "result" => "acquired").record(waited)
                );
            }
            Outcome::Busy => {
                kinded!(
                    mode,
                    histogram!("relock_wait_seconds", "result" => "busy").record(waited)
                );
            }
            Outcome::Timeout => {
                kinded!(mode, counter!("relock_timeouts_total").increment(1));
                kinded!(
                    mode,
                    histogram!("relock_wait_seconds", "result" => "timeout").record(waited)
                );
            }
            Outcome::Lost => {
                kinded!(
                    mode,
                    histogram!("relock_wait_seconds", "result" => "lost").record(waited)
                );
            }
            Outcome::WouldDeadlock => {
                kinded!(
                    mode,
                    histogram!("relock_wait_seconds", "result" => "would_deadlock").record(waited)
                );
            }
            Outcome::InvalidLease => {
                kinded!(
                    mode,
                    histogram!("relock_wait_seconds", "result" => "invalid_lease").record(waited)
                );
            }
            Outcome::NotReplicated => {
                kinded!(
                    mode,
                    histogram!("relock_wait_seconds", "result" => "not_replicated").record(waited)
                );
            }
            Outcome::Error => {
                kinded!(
                    mode,
                    histogram!("relock_wait_seconds", "result" => "error").record(waited)
                );
            }
        }
    }
}

/// A lock request of `mode` re-entered a hold its scope already had.
#[inline]
pub(crate) fn reentered(mode: Mode) {
    #[cfg(feature = "metrics")]
    kinded!(mode, counter!("relock_reentered_total").increment(1));
}

/// The server answered one acquisition attempt of `mode`, sent at `sent`.
#[inline]
pub(crate) fn acquire_round_trip(mode: Mode, sent: Instant) {
    #[cfg(feature = "metrics")]
    kinded!(
        mode,
        histogram!("relock_acquire_round_trip_seconds").record(sent.elapsed().as_secs_f64())
    );
}

/// A hold of `mode` came into being in this process (the server granted it).
#[inline]
pub(crate) fn hold_started(mode: Mode) {
    #[cfg(feature = "metrics")]
    kinded!(mode, gauge!("relock_holds").increment(1.0));
}

/// A hold of `mode` granted at `granted` let go.
#[inline]
pub(crate) fn released(how: ReleaseMode, mode: Mode, granted: Instant) {
    #[cfg(feature = "metrics")]
    {
        match how {
            ReleaseMode::Explicit => {
                kinded!(
                    mode,
                    counter!("relock_released_total", "mode" => "explicit").increment(1)
                );
            }
            ReleaseMode::Background => {
                kinded!(
                    mode,
                    counter!("relock_released_total", "mode" => "background").increment(1)
                );
            }
        }
        kinded!(
            mode,
            histogram!("relock_hold_seconds").record(granted.elapsed().as_secs_f64())
        );
        kinded!(mode, gauge!("relock_holds").decrement(1.0));
    }
}

/// A hold of `mode` was lost while its owner still had it.
#[inline]
pub(crate) fn lost(mode: Mode) {
    #[cfg(feature = "metrics")]
    kinded!(mode, counter!("relock_lost_total").increment(1));
}

/// Renewals of `holds` (so many of each kind) ended with `result`.
#[inline]
pub(crate) fn renewals(result: Renewal, holds: ByKind) {
    #[cfg(feature = "metrics")]
    {
        let kinds = [
            (Mode::Exclusive, holds.exclusive),
            (Mode::Read, holds.read),
            (Mode::Permit { permits: 0 }, holds.permit),
        ];
        for (mode, count) in kinds {
            let count = count as u64;
            if count == 0 {
                continue;
            }
            match result {
                Renewal::Ok => {
                    kinded!(
                        mode,
                        counter!("relock_renewals_total", "result" => "ok").increment(count)
                    );
                }
                Renewal::Failed => {
                    kinded!(
                        mode,
                        counter!("relock_renewals_total", "result" => "failed").increment(count)
                    );
                }
                Renewal::Gone => {
                    kinded!(
                        mode,
                        counter!("relock_renewals_total", "result" => "gone").increment(count)
                    );
                }
            }
        }
    }
}
