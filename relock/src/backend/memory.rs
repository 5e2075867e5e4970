//! The in-memory backend: the Redis scripts' semantics (fencing, lease expiry, owner re-entry,
//! inspect) over a map in this process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;

use super::{Attempt, Released, HOLDER};
use crate::info::LockInfo;
use crate::key::LockKey;
use crate::owner::Owner;

#[derive(Debug)]
pub(crate) struct MemoryBackend {
    state: Mutex<State>,
    fence_retention: Duration,
}

#[derive(Debug, Default)]
struct State {
    locks: HashMap<LockKey, Entry>,
    /// Wakes the waiters of a key when it is released, force-released, or found expired.
    released: HashMap<LockKey, Arc<Notify>>,
    fences: HashMap<LockKey, Fence>,
    writes_since_sweep: usize,
}

#[derive(Debug)]
struct Entry {
    owner: Owner,
    holds: u64,
    fencing_token: u64,
    expires: Instant,
    since: SystemTime,
}

#[derive(Debug)]
struct Fence {
    last: u64,
    expires: Instant,
}

/// Expired entries are dropped lazily on access, and in a sweep after this many acquisitions, so
/// that memory stays bounded by the live locks however many keys pass through.
const SWEEP_EVERY: usize = 1024;

impl MemoryBackend {
    pub(crate) fn new(fence_retention: Duration) -> Self {
        Self {
            state: Mutex::default(),
            fence_retention,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Every critical section leaves the maps consistent, so a panic elsewhere cannot poison them.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn acquire(&self, key: &LockKey, owner: &Owner, lease: Duration) -> Attempt {
        let now = Instant::now();
        let mut state = self.state();
        state.sweep(now);
        if let Some(entry) = state.live(key, now) {
            if entry.owner != *owner {
                return Attempt::Held {
                    ttl: Some(entry.expires - now),
                };
            }
            entry.holds += 1;
            entry.expires = now + lease;
            return Attempt::Acquired {
                fencing_token: entry.fencing_token,
            };
        }
        let expires = now + self.fence_retention;
        let fence = state
            .fences
            .entry(key.clone())
            .or_insert(Fence { last: 0, expires });
        if fence.expires <= now {
            fence.last = 0;
        }
        fence.last += 1;
        fence.expires = expires;
        let fencing_token = fence.last;
        state.locks.insert(
            key.clone(),
            Entry {
                owner: owner.clone(),
                holds: 1,
                fencing_token,
                expires: now + lease,
                since: SystemTime::now(),
            },
        );
        Attempt::Acquired { fencing_token }
    }

    pub(crate) fn release(&self, key: &LockKey, owner: &Owner) -> Released {
        let now = Instant::now();
        let mut state = self.state();
        let Some(entry) = state.live(key, now).filter(|entry| entry.owner == *owner) else {
            return Released::NotHeld;
        };
        entry.holds -= 1;
        if entry.holds > 0 {
            return Released::Remaining(entry.holds);
        }
        state.remove(key);
        Released::Free
    }

    pub(crate) fn renew(&self, key: &LockKey, owner: &Owner, lease: Duration) -> bool {
        let now = Instant::now();
        let mut state = self.state();
        match state.live(key, now).filter(|entry| entry.owner == *owner) {
            Some(entry) => {
                entry.expires = now + lease;
                true
            }
            None => false,
        }
    }

    /// The notification a release of `key` triggers; shared by all waiters on the key.
    pub(crate) fn released(&self, key: &LockKey) -> Arc<Notify> {
        self.state()
            .released
            .entry(key.clone())
            .or_default()
            .clone()
    }

    pub(crate) fn force_release(&self, key: &LockKey) -> bool {
        let now = Instant::now();
        let mut state = self.state();
        state.live(key, now).is_some() && state.remove(key)
    }

    pub(crate) fn inspect(&self, key: &LockKey) -> Option<LockInfo> {
        let now = Instant::now();
        let mut state = self.state();
        let entry = state.live(key, now)?;
        Some(LockInfo {
            owner: entry.owner.as_str().to_owned(),
            holds: entry.holds,
            ttl: entry.expires - now,
            fencing_token: entry.fencing_token,
            host: Some(HOLDER.host.clone()),
            pid: Some(HOLDER.pid),
            acquired_at: Some(entry.since),
        })
    }
}

impl State {
    /// The entry for `key` unless its lease has ended (then it is removed, as Redis expires it).
    fn live(&mut self, key: &LockKey, now: Instant) -> Option<&mut Entry> {
        if self
            .locks
            .get(key)
            .is_some_and(|entry| entry.expires <= now)
        {
            self.remove(key);
        }
        self.locks.get_mut(key)
    }

    fn remove(&mut self, key: &LockKey) -> bool {
        let removed = self.locks.remove(key).is_some();
        if let Some(released) = self.released.get(key) {
            released.notify_waiters();
        }
        removed
    }

    fn sweep(&mut self, now: Instant) {
        self.writes_since_sweep += 1;
        if self.writes_since_sweep < SWEEP_EVERY {
            return;
        }
        self.writes_since_sweep = 0;
        self.locks.retain(|_, entry| entry.expires > now);
        self.fences.retain(|_, fence| fence.expires > now);
        self.released
            .retain(|_, released| Arc::strong_count(released) > 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(30);

    fn key(name: &str) -> LockKey {
        LockKey::new(name).unwrap()
    }

    fn backend() -> MemoryBackend {
        MemoryBackend::new(Duration::from_secs(3600))
    }

    #[test]
    fn second_owner_is_refused_with_the_ttl() {
        let memory = backend();
        let (a, b) = (Owner::random(), Owner::random());
        assert!(matches!(
            memory.acquire(&key("k"), &a, LEASE),
            Attempt::Acquired { .. }
        ));
        let Attempt::Held { ttl: Some(ttl) } = memory.acquire(&key("k"), &b, LEASE) else {
            panic!("expected Held");
        };
        assert!(ttl <= LEASE && ttl > LEASE / 2);
    }

    #[test]
    fn same_owner_re_enters_with_the_same_token() {
        let memory = backend();
        let a = Owner::random();
        let first = memory.acquire(&key("k"), &a, LEASE);
        assert_eq!(memory.acquire(&key("k"), &a, LEASE), first);
        assert_eq!(memory.release(&key("k"), &a), Released::Remaining(1));
        assert_eq!(memory.release(&key("k"), &a), Released::Free);
        assert_eq!(memory.release(&key("k"), &a), Released::NotHeld);
    }

    #[test]
    fn fencing_tokens_increase_per_key() {
        let memory = backend();
        let mut last = 0;
        for _ in 0..5 {
            let owner = Owner::random();
            let Attempt::Acquired { fencing_token } = memory.acquire(&key("k"), &owner, LEASE)
            else {
                panic!("expected Acquired");
            };
            assert!(fencing_token > last);
            last = fencing_token;
            memory.release(&key("k"), &owner);
        }
        let other = memory.acquire(&key("other"), &Owner::random(), LEASE);
        assert_eq!(other, Attempt::Acquired { fencing_token: 1 });
    }

    #[test]
    fn an_expired_lease_frees_the_lock_and_release_reports_it() {
        let memory = backend();
        let a = Owner::random();
        memory.acquire(&key("k"), &a, Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(5));
        assert!(memory.inspect(&key("k")).is_none());
        assert_eq!(memory.release(&key("k"), &a), Released::NotHeld);
        assert!(matches!(
            memory.acquire(&key("k"), &Owner::random(), LEASE),
            Attempt::Acquired { fencing_token: 2 }
        ));
    }

    #[test]
    fn force_release_frees_any_holder() {
        let memory = backend();
        memory.acquire(&key("k"), &Owner::random(), LEASE);
        assert!(memory.force_release(&key("k")));
        assert!(!memory.force_release(&key("k")));
        assert!(memory.inspect(&key("k")).is_none());
    }

    #[test]
    fn sweep_bounds_memory_by_live_locks() {
        let memory = MemoryBackend::new(Duration::from_millis(1));
        for n in 0..SWEEP_EVERY * 2 {
            let owner = Owner::random();
            memory.acquire(&key(&format!("k{n}")), &owner, Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(5));
        for n in 0..SWEEP_EVERY {
            memory.acquire(&key(&format!("again{n}")), &Owner::random(), LEASE);
        }
        let state = memory.state();
        assert!(state.locks.len() <= SWEEP_EVERY, "{}", state.locks.len());
    }
}
