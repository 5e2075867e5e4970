use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tracing::field::{self, Empty};
use tracing::Instrument;

use crate::backend::{Attempt, Grant, Replicas};
use crate::error::Error;
use crate::guard::{Hold, LockGuard};
use crate::key::{IntoLockKey, LockKey};
use crate::lease::{self, Lease, Loss, Mode, Runner};
use crate::local::{Busy, Enter, Gate};
use crate::locker::Locker;
use crate::metrics;
use crate::scope::Frame;
use crate::token::HoldToken;
use crate::wait::Waiter;

/// What [`Acquire::run`] does when the hold is lost while the body is still running.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnLost {
    /// Drop the body at its next `.await` and return [`Error::Lost`]. The default.
    #[default]
    Abort,
    /// Let the body finish; it can watch [`LockGuard::is_held`] itself. `run` still returns
    /// [`Error::Lost`] if the lease had ended by the time the lock was released.
    Continue,
}

/// A lock request being configured: await it for a [`LockGuard`], or [`run`](Acquire::run) a
/// future under it.
///
/// Created by [`Locker::lock`] (the exclusive lock) and [`Locker::read`] (a shared read hold).
///
/// ```
/// # use std::time::Duration;
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), relock::Error> {
/// let locker = relock::Locker::in_memory();
/// let guard = locker
///     .lock("order:42")
///     .wait(Duration::from_secs(2))
///     .lease(Duration::from_secs(5))
///     .await?;
/// # drop(guard);
/// # Ok(()) }
/// ```
#[must_use = "a lock request does nothing until it is awaited or run"]
pub struct Acquire {
    locker: Locker,
    key: Result<LockKey, Error>,
    wait: Option<Duration>,
    lease: Option<Duration>,
    replicas: Option<Replicas>,
    on_lost: OnLost,
    mode: Mode,
}

impl Acquire {
    pub(crate) fn new(locker: Locker, key: impl IntoLockKey) -> Self {
        Self::with_mode(locker, key, Mode::Exclusive)
    }

    pub(crate) fn with_mode(locker: Locker, key: impl IntoLockKey, mode: Mode) -> Self {
        Self {
            locker,
            key: key.into_lock_key(),
            wait: None,
            lease: None,
            replicas: None,
            on_lost: OnLost::Abort,
            mode,
        }
    }

    /// How long to wait for another owner to release the lock before giving up with
    /// [`Error::Timeout`]. `Duration::ZERO` makes one attempt. Defaults to the locker's wait.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = Some(wait);
        self
    }

    /// How long the lock stays held if this process stops renewing it (it crashed, or lost the
    /// server): between [`Locker::MIN_LEASE`](crate::Locker::MIN_LEASE) (10 ms) and
    /// [`Locker::MAX_LEASE`](crate::Locker::MAX_LEASE) (30 days), else the request fails with
    /// [`Error::InvalidLease`] without reaching the server. Defaults to the locker's lease.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = Some(lease);
        self
    }

    /// Waits until `count` replicas acknowledged the grant, for at most `timeout`, else releases
    /// it and fails with [`Error::NotReplicated`]; `count` 0 does not wait. Defaults to the
    /// locker's [`replicas`](crate::LockerBuilder::replicas). A re-entered hold was acknowledged
    /// (or not) when it was first taken: this applies to fresh acquisitions only, read holds
    /// included.
    pub fn replicas(mut self, count: u32, timeout: Duration) -> Self {
        self.replicas = Some(Replicas { count, timeout });
        self
    }

    /// What [`run`](Acquire::run) does when the hold is lost mid-body. Defaults to
    /// [`OnLost::Abort`].
    pub fn on_lost(mut self, on_lost: OnLost) -> Self {
        self.on_lost = on_lost;
        self
    }

    /// Acquires the lock, runs `fut` inside a scope that holds it, then releases it.
    ///
    /// Code inside `fut` — however deeply nested, across `.await`s and `join!`s — that locks the
    /// same key re-enters at once, without a round trip. The future may borrow from the caller.
    /// If `fut` panics or the returned future is dropped, the lock is released in the background.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), relock::Error> {
    /// let locker = relock::Locker::in_memory();
    /// let total = locker
    ///     .lock("order:42")
    ///     .run(async {
    ///         // A nested lock on the same key re-enters instead of deadlocking.
    ///         let inner = locker.lock("order:42").await?;
    ///         assert!(inner.is_reentrant());
    ///         Ok::<_, relock::Error>(40 + 2)
    ///     })
    ///     .await??;
    /// assert_eq!(total, 42);
    /// # Ok(()) }
    /// ```
    pub fn run<F: Future>(self, fut: F) -> impl Future<Output = Result<F::Output, Error>> {
        let on_lost = self.on_lost;
        async move {
            let guard = self.await?;
            run_holding(vec![guard], on_lost, fut).await
        }
    }

    /// Checks the key and the scope; `Err` carries the request on to the backend.
    // The request moves once, into the boxed state of the backend path: boxing it here would
    // allocate on the re-entrant path, which allocates nothing.
    #[allow(clippy::result_large_err)]
    fn start(self) -> Result<Result<Option<LockGuard>, Error>, Acquire> {
        let key = match self.key {
            Ok(ref key) => key,
            Err(err) => return Ok(Err(err)),
        };
        // Permits are counted at the server, never re-entered.
        let held = match self.mode {
            Mode::Permit { .. } => None,
            Mode::Exclusive | Mode::Read => Frame::find(&self.locker, key),
        };
        match held {
            // An upgrade: this scope's own read hold would refuse it for ever.
            Some(hold) if self.mode == Mode::Exclusive && hold.lease.mode == Mode::Read => {
                Ok(Err(Error::UpgradeRefused {
                    key: key.to_string(),
                }))
            }
            Some(hold) if hold.lease.is_lost() => Ok(Err(Error::Lost {
                key: key.to_string(),
            })),
            Some(hold) => {
                tracing::trace!(
                    target: "relock",
                    key = %key,
                    fencing_token = hold.lease.fencing_token,
                    reentrant = true,
                    "relock: re-entered"
                );
                metrics::reentered(self.mode);
                Ok(Ok(Some(LockGuard {
                    hold,
                    reentrant: true,
                })))
            }
            None => Err(self),
        }
    }

    pub(crate) async fn try_acquire(self) -> Result<Option<LockGuard>, Error> {
        match self.start() {
            Ok(done) => done,
            Err(request) => request.acquire(true).await,
        }
    }

    /// Asks the backend, waiting up to the request's wait, inside an `acquire` span that records
    /// the outcome.
    async fn acquire(self, try_only: bool) -> Result<Option<LockGuard>, Error> {
        let Acquire {
            locker,
            key,
            wait,
            lease,
            replicas,
            mode,
            ..
        } = self;
        let key = key?;
        let lease = lease.unwrap_or(locker.config().lease);
        let replicas = replicas
            .or(locker.config().replicas)
            .filter(|replicas| replicas.count > 0);
        let wait = if try_only {
            Duration::ZERO
        } else {
            wait.unwrap_or(locker.config().wait)
        };
        let span = tracing::debug_span!(
            target: "relock",
            "acquire",
            key = %key,
            kind = mode.as_str(),
            ?wait,
            ?lease,
            reentrant = false,
            outcome = Empty,
            waited = Empty,
            fencing_token = Empty,
        );
        let started = Instant::now();
        let request = Request {
            wait,
            lease,
            replicas,
            try_only,
            mode,
        };
        let result = acquire_from_backend(locker, key, request, started)
            .instrument(span.clone())
            .await;
        let outcome = Outcome::of(&result);
        if !span.is_disabled() {
            span.record("outcome", outcome.as_str());
            span.record("waited", field::debug(started.elapsed()));
            if let Ok(Some(guard)) = &result {
                span.record("fencing_token", guard.fencing_token());
            }
        }
        metrics::acquisition(mode, outcome, started);
        result
    }
}

/// How a lock request that reached the backend ended: the `outcome` of its `acquire` span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Acquired,
    /// `try_lock` found the lock held.
    Busy,
    Timeout,
    Lost,
    WouldDeadlock,
    InvalidLease,
    NotReplicated,
    Error,
}

impl Outcome {
    fn of(result: &Result<Option<LockGuard>, Error>) -> Self {
        match result {
            Ok(Some(_)) => Self::Acquired,
            Ok(None) => Self::Busy,
            Err(Error::Timeout { .. }) => Self::Timeout,
            Err(Error::Lost { .. }) => Self::Lost,
            Err(Error::WouldDeadlock { .. }) => Self::WouldDeadlock,
            Err(Error::InvalidLease { .. }) => Self::InvalidLease,
            Err(Error::NotReplicated { .. }) => Self::NotReplicated,
            Err(_) => Self::Error,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Acquired => "acquired",
            Self::Busy => "busy",
            Self::Timeout => "timeout",
            Self::Lost => "lost",
            Self::WouldDeadlock => "would_deadlock",
            Self::InvalidLease => "invalid_lease",
            Self::NotReplicated => "not_replicated",
            Self::Error => "error",
        }
    }
}

/// What a lock request that reaches the backend asks for.
struct Request {
    wait: Duration,
    lease: Duration,
    replicas: Option<Replicas>,
    try_only: bool,
    mode: Mode,
}

/// The backend path of a lock request: takes the key's local slot, then asks the server until it
/// grants the lock or the deadline passes.
async fn acquire_from_backend(
    locker: Locker,
    key: LockKey,
    request: Request,
    started: Instant,
) -> Result<Option<LockGuard>, Error> {
    let Request {
        wait,
        lease,
        replicas,
        try_only,
        mode,
    } = request;
    let lease = lease::check(lease)?;
    locker.check_eviction().await?;
    let deadline = lease::after(started, wait);
    if mode == (Mode::Permit { permits: 0 }) {
        // No permit can ever be had (and 0 means readers to the server).
        if try_only {
            return Ok(None);
        }
        return Err(Error::Timeout {
            key: key.to_string(),
            waited: started.elapsed(),
            holder_ttl: None,
        });
    }
    // This hold's own identity at the server, for every attempt of this request: a retried
    // attempt that the server already granted gets the same grant back.
    let token = HoldToken::random();
    // A writer that will wait makes readers that come after it queue behind it; a single
    // attempt does not hold them up.
    let claim = !wait.is_zero();

    // Shared holds take no local slot: several may hold the key at once, and the server counts
    // them.
    let mut gate = if mode == Mode::Exclusive {
        Some(loop {
            match locker.local().enter(&key) {
                Enter::Entered(gate) => break gate,
                Enter::Busy(busy) => {
                    if try_only {
                        return Ok(None);
                    }
                    wait_for_slot(busy, &key, started, deadline).await?;
                }
            }
        })
    } else {
        None
    };

    locker.start_background();
    // Where other waiters of this `Locker` wait for the key, the wake-up is armed before the
    // first attempt, so that its refusal is followed by sleep, not by a second attempt.
    let mut waiter: Option<Waiter> = None;
    if !try_only {
        if let Some(signal) = locker.release_signal_at_hand(&key) {
            if let Ok(Some(signal)) = tokio::time::timeout_at(deadline.into(), signal).await {
                waiter = Some(Waiter::new(Some(signal), mode));
            }
        }
    }
    loop {
        let armed = waiter.as_mut().and_then(Waiter::arm);
        let sent = Instant::now();
        let in_flight = InFlight {
            locker: &locker,
            key: &key,
            token: &token,
            free_by: lease::after(sent, lease.saturating_mul(2)),
            gate,
        };
        // Until the reply is in hand the outcome is unknown: a cancelled request or a failed
        // one (a response timeout, a connection dropped after sending) may still be granted,
        // so dropping `in_flight` releases the token in the background.
        let grant = match mode {
            Mode::Exclusive => Grant::Exclusive { claim },
            Mode::Read => Grant::Shared { permits: 0 },
            Mode::Permit { permits } => Grant::Shared { permits },
        };
        let attempt = match (grant, replicas) {
            (Grant::Exclusive { claim }, None) => {
                locker.backend().acquire(&key, &token, lease, claim).await?
            }
            (Grant::Shared { permits }, None) => {
                locker
                    .backend()
                    .acquire_shared(&key, &token, lease, permits)
                    .await?
            }
            (grant, Some(replicas)) => {
                let (attempt, acknowledged) = locker
                    .backend()
                    .acquire_acknowledged(&key, &token, lease, replicas, grant)
                    .await?;
                if let (Attempt::Acquired { fencing_token }, true) =
                    (attempt, acknowledged < replicas.count)
                {
                    // Granted, but a failover could forget it: give it back. Until the release
                    // is answered, `in_flight` still releases in the background if this future
                    // is dropped or the release fails.
                    if locker
                        .backend()
                        .release(&key, &token, fencing_token)
                        .await
                        .is_ok()
                    {
                        drop(in_flight.answered());
                    }
                    return Err(Error::NotReplicated {
                        key: key.to_string(),
                        acknowledged,
                        required: replicas.count,
                    });
                }
                attempt
            }
        };
        gate = in_flight.answered();
        metrics::acquire_round_trip(mode, sent);
        match attempt {
            Attempt::Acquired { fencing_token } => {
                if let Some(waiter) = &mut waiter {
                    waiter.granted();
                }
                let slot = gate
                    .as_ref()
                    .map_or_else(|| locker.local().fresh_id(), Gate::id);
                let lease =
                    Lease::new(key, token, fencing_token, slot, lease, sent, Instant::now())
                        .with_mode(mode);
                let hold = Arc::new(Hold::new(locker, lease));
                // Force-released here while the request was in flight (the grant may predate
                // the release), or the reply was read only after the lease had ended (the
                // process stalled): another owner may hold the key by now. Dropping the hold
                // releases it in the background.
                let committed = gate.is_none_or(|gate| gate.commit(&hold.lease));
                if !committed || hold.lease.is_lost() {
                    hold.lease.mark_lost(Loss::GrantedLate);
                    return Err(Error::Lost {
                        key: hold.key().to_string(),
                    });
                }
                hold.locker.watchdog().register(&hold.lease);
                return Ok(Some(LockGuard {
                    hold,
                    reentrant: false,
                }));
            }
            Attempt::Mismatch { permits: found } => {
                return Err(Error::PermitsMismatch {
                    key: key.to_string(),
                    permits: match mode {
                        Mode::Permit { permits } => permits,
                        Mode::Read | Mode::Exclusive => 0,
                    },
                    found,
                });
            }
            Attempt::ReleasedAlready => {
                // Only an acquisition whose outcome was unknown is released before it is
                // answered, and its caller has gone: nobody should be reading this.
                return Err(Error::backend(
                    "the acquisition reached the server after its own release; nothing is held",
                ));
            }
            Attempt::Held { ttl } => {
                if try_only {
                    return Ok(None);
                }
                if let Some(waiter) = &mut waiter {
                    waiter.refused();
                }
                let timeout = || {
                    // Shared and exclusive holds of one key exclude each other at the server,
                    // not in the local slots: a bare guard of this task in the way is found
                    // among the holds the watchdog renews.
                    if locker
                        .watchdog()
                        .held_unscoped_by(&key, Runner::current(), |held| {
                            matches!(
                                (mode, held),
                                (Mode::Exclusive, Mode::Read | Mode::Permit { .. })
                                    | (Mode::Read, Mode::Exclusive)
                            )
                        })
                    {
                        return Error::WouldDeadlock {
                            key: key.to_string(),
                        };
                    }
                    Error::Timeout {
                        key: key.to_string(),
                        waited: started.elapsed(),
                        holder_ttl: ttl,
                    }
                };
                if Instant::now() >= deadline {
                    return Err(timeout());
                }
                match &mut waiter {
                    // First refusal: subscribe, then try again at once. Subscribing may have
                    // to connect; the caller's deadline bounds it.
                    None => {
                        let signal = locker.release_signal(&key);
                        match tokio::time::timeout_at(deadline.into(), signal).await {
                            Ok(signal) => waiter = Some(Waiter::new(signal, mode)),
                            Err(_) => return Err(timeout()),
                        }
                    }
                    Some(waiter) => waiter.sleep(armed, ttl, deadline).await,
                }
            }
        }
    }
}

/// An acquisition request on its way to the server, with the key's local slot. Until the reply
/// is in hand the server may grant the lock to this hold's token without anyone knowing: if this
/// is dropped first (the future was cancelled, or the request failed with an unknown outcome), the
/// token is released in the background.
///
/// The slot is freed at once in that case: no hold was ever known here, and every hold has its
/// own token at the server, so a new request of this process is refused there until the
/// background release lands, and then woken by it.
struct InFlight<'a> {
    locker: &'a Locker,
    key: &'a LockKey,
    token: &'a HoldToken,
    /// When a grant the reply never told of has ended at the server for sure.
    free_by: Instant,
    gate: Option<Gate>,
}

impl InFlight<'_> {
    /// The server answered: the outcome is known.
    fn answered(mut self) -> Option<Gate> {
        let gate = self.gate.take();
        std::mem::forget(self);
        gate
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        drop(self.gate.take());
        self.locker
            .release_in_background(self.key, self.token, 0, None, self.free_by);
    }
}

/// Waits until the slot is freed, its holder's hold is gone from the server, or the caller's
/// deadline passes.
async fn wait_for_slot(
    busy: Busy,
    key: &LockKey,
    started: Instant,
    deadline: Instant,
) -> Result<(), Error> {
    let holder_free_by = busy.holder.as_ref().map(|lease| lease.free_by());
    let wake = holder_free_by.map_or(deadline, |end| end.min(deadline));
    tokio::select! {
        () = busy.freed => return Ok(()),
        () = tokio::time::sleep_until(wake.into()) => {}
    }
    if Instant::now() < deadline {
        return Ok(());
    }
    let timeout = |holder_ttl| Error::Timeout {
        key: key.to_string(),
        waited: started.elapsed(),
        holder_ttl,
    };
    let Some(holder) = busy.holder else {
        return Err(timeout(None));
    };
    if holder.runner == Runner::current() && !holder.is_scoped() {
        return Err(Error::WouldDeadlock {
            key: key.to_string(),
        });
    }
    Err(timeout(Some(
        holder.deadline().saturating_duration_since(Instant::now()),
    )))
}

/// Runs `fut` in a child scope that holds `guards`, then releases them in reverse order.
pub(crate) async fn run_holding<F: Future>(
    guards: Vec<LockGuard>,
    on_lost: OnLost,
    fut: F,
) -> Result<F::Output, Error> {
    let fresh: Vec<Arc<Hold>> = guards
        .iter()
        .filter(|guard| !guard.reentrant)
        .map(|guard| guard.hold.clone())
        .collect();
    for hold in &fresh {
        hold.lease.set_scoped();
    }
    let body = async move {
        match Frame::child(fresh) {
            Some(frame) => frame.enter(fut).await,
            None => fut.await,
        }
    };
    let output = match on_lost {
        OnLost::Continue => body.await,
        OnLost::Abort => match lease::until_lost(&guards, pin!(body)).await {
            Ok(output) => output,
            Err(key) => {
                return Err(Error::Lost {
                    key: key.to_string(),
                })
            }
        },
    };
    let mut result = Ok(output);
    for guard in guards.into_iter().rev() {
        if let Err(err) = guard.release().await {
            if result.is_ok() {
                result = Err(err);
            }
        }
    }
    result
}

impl IntoFuture for Acquire {
    type Output = Result<LockGuard, Error>;
    type IntoFuture = LockFuture;

    fn into_future(self) -> LockFuture {
        LockFuture {
            state: State::Start(Some(self)),
        }
    }
}

/// The future of an awaited [`Acquire`]: resolves to the [`LockGuard`].
///
/// A re-entrant acquisition or an invalid key completes on the first poll without allocating;
/// only a request that must reach the backend boxes its state.
#[must_use = "futures do nothing unless polled"]
pub struct LockFuture {
    state: State,
}

enum State {
    Start(Option<Acquire>),
    Waiting(Pin<Box<dyn Future<Output = Result<Option<LockGuard>, Error>> + Send>>),
}

impl Future for LockFuture {
    type Output = Result<LockGuard, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let State::Start(request) = &mut self.state {
            let request = request.take().expect("LockFuture polled after completion");
            match request.start() {
                Ok(done) => return Poll::Ready(done.map(|guard| guard.expect("waiting lock"))),
                Err(request) => self.state = State::Waiting(Box::pin(request.acquire(false))),
            }
        }
        let State::Waiting(waiting) = &mut self.state else {
            unreachable!("the start state is left above");
        };
        waiting
            .as_mut()
            .poll(cx)
            .map(|result| result.map(|guard| guard.expect("a waiting lock yields a guard")))
    }
}

impl fmt::Debug for Acquire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acquire")
            .field("key", &self.key.as_ref().map(LockKey::as_str).ok())
            .field("wait", &self.wait)
            .field("lease", &self.lease)
            .field("replicas", &self.replicas)
            .field("on_lost", &self.on_lost)
            .field("kind", &self.mode.as_str())
            .finish()
    }
}

impl fmt::Debug for LockFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockFuture").finish_non_exhaustive()
    }
}
