//! Support for the code `#[locked]` expands to. Not public API: no stability promise.

use std::future::Future;
use std::time::{Duration, Instant};

pub use std::format;
pub use std::string::String;

use crate::acquire::run_holding;
use crate::{Error, IntoLockKey, LockKey, Locker, OnLost};

/// The lock request of one `#[locked]` call: one or more keys, options, and a locker resolved
/// explicitly, else from the scope, else from the global.
#[derive(Debug)]
#[must_use]
pub struct Locked {
    keys: Vec<String>,
    locker: Option<Locker>,
    wait: Option<Duration>,
    lease: Option<Duration>,
    on_lost: OnLost,
    read: bool,
}

impl Locked {
    pub fn new<I: IntoIterator<Item = String>>(keys: I) -> Self {
        Self {
            keys: keys.into_iter().collect(),
            locker: None,
            wait: None,
            lease: None,
            on_lost: OnLost::Abort,
            read: false,
        }
    }

    /// `read`: shared holds ([`Locker::read`]) instead of the exclusive lock.
    pub fn read(mut self) -> Self {
        self.read = true;
        self
    }

    /// `locker = <expr>`: the macro passes `&(<expr>)`, so `Locker`, `&Locker` and `Arc<Locker>`
    /// all work.
    pub fn locker<L: AsRef<Locker> + ?Sized>(mut self, locker: &L) -> Self {
        self.locker = Some(locker.as_ref().clone());
        self
    }

    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = Some(wait);
        self
    }

    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = Some(lease);
        self
    }

    pub fn on_lost(mut self, on_lost: OnLost) -> Self {
        self.on_lost = on_lost;
        self
    }

    /// Takes every key in sorted order (so two functions naming the same keys in different orders
    /// cannot deadlock each other), runs `fut` in a scope holding them all, releases them.
    pub async fn run<F: Future>(self, fut: F) -> Result<F::Output, Error> {
        let locker = match self.locker {
            Some(locker) => locker,
            None => Locker::current()?,
        };
        let mut keys = self
            .keys
            .into_iter()
            .map(IntoLockKey::into_lock_key)
            .collect::<Result<Vec<LockKey>, Error>>()?;
        keys.sort();
        keys.dedup();
        let deadline =
            crate::lease::after(Instant::now(), self.wait.unwrap_or(locker.default_wait()));
        let mut guards = Vec::with_capacity(keys.len());
        for key in keys {
            let request = if self.read {
                locker.read(key)
            } else {
                locker.lock(key)
            };
            let mut request = request.wait(deadline.saturating_duration_since(Instant::now()));
            if let Some(lease) = self.lease {
                request = request.lease(lease);
            }
            guards.push(request.await?);
        }
        run_holding(guards, self.on_lost, fut).await
    }
}
