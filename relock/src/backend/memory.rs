//! The in-memory backend: the Redis scripts' semantics (one token per hold, clock-mixed fencing
//! tokens, lease expiry, tombstones that remember the last fencing token and the released hold,
//! inspect) over a map in this process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;

use super::{Attempt, Released, HOLDER};
use crate::info::{LockInfo, LockMode};
use crate::key::LockKey;
use crate::pattern::KeyPattern;
use crate::token::HoldToken;

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
    /// Readers and permits: the Redis layout's "*" form.
    shared: HashMap<LockKey, Shared>,
    writes_since_sweep: usize,
}

/// The shared holders of a key (readers, or a semaphore's permits).
#[derive(Debug)]
struct Shared {
    /// 0 for readers.
    permits: u32,
    /// Until when a writer refused by live holders claims the key: new readers queue behind it.
    writer_until: Option<Instant>,
    holders: Vec<Entry>,
    /// Released holds, oldest first, kept until their lease would have ended (see
    /// `acquire_shared.lua`): a retried release finds its own, and a late acquisition is refused.
    /// Not holders: they take no permit and no writer waits for them.
    released: Vec<(HoldToken, Instant)>,
}

/// At most this many released holds are kept per key; past it, the oldest is forgotten.
const MAX_RELEASED: usize = 8;

impl Shared {
    /// Remembers `token` as released until `until`, forgetting the oldest past [`MAX_RELEASED`].
    fn remember(&mut self, token: HoldToken, until: Instant) {
        if self.released.len() >= MAX_RELEASED {
            self.released.remove(0);
        }
        self.released.push((token, until));
    }
}

/// A refused writer claims the key for the holders' longest lease and this much more, so that
/// it has the time to come back once they are gone.
const WRITER_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Entry {
    token: HoldToken,
    fencing_token: u64,
    expires: Instant,
    since: SystemTime,
}

/// What outlives a hold for the retention: the Redis layout's tombstone (and the fencing token
/// of the live hold beside it).
#[derive(Debug)]
struct Fence {
    last: u64,
    expires: Instant,
    /// The hold released last (none after a force-release): its late acquisition is refused and
    /// its retried release answered as done.
    released: Option<HoldToken>,
}

/// Expired entries are dropped lazily on access, and in a sweep after this many acquisitions, so
/// that memory stays bounded by the live locks however many keys pass through.
const SWEEP_EVERY: usize = 1024;

/// The clock part of a fencing token: microseconds since the Unix epoch, as the Redis script
/// reads the server's `TIME`.
fn clock_micros() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
        })
}

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

    /// The retention of a key's fencing counter: it must outlive the holds it numbers.
    fn retention(&self, lease: Duration) -> Duration {
        self.fence_retention.max(lease)
    }

    #[cfg(test)]
    pub(crate) fn acquire(&self, key: &LockKey, token: &HoldToken, lease: Duration) -> Attempt {
        self.acquire_claiming(key, token, lease, true)
    }

    /// An exclusive hold; `claim`: a refusal by shared holders makes new ones queue behind this
    /// writer (a single attempt claims nothing).
    pub(crate) fn acquire_claiming(
        &self,
        key: &LockKey,
        token: &HoldToken,
        lease: Duration,
        claim: bool,
    ) -> Attempt {
        let now = Instant::now();
        let mut state = self.state();
        state.sweep(now);
        if let Some(entry) = state.live(key, now) {
            if entry.token == *token {
                // A retried request of the same hold: the same grant again.
                return Attempt::Acquired {
                    fencing_token: entry.fencing_token,
                };
            }
            return Attempt::Held {
                ttl: Some(entry.expires - now),
            };
        }
        if let Some(shared) = state.shared.get_mut(key) {
            shared.released.retain(|(_, until)| *until > now);
            if shared
                .released
                .iter()
                .any(|(released, _)| released == token)
            {
                // This hold was released already (a tombstone naming it became a released entry
                // of the shared form): its late acquisition is refused.
                return Attempt::ReleasedAlready;
            }
            shared.holders.retain(|holder| holder.expires > now);
            if let Some(longest) = shared.holders.iter().map(|holder| holder.expires).max() {
                // Live readers or permits: refused, and new readers queue behind this writer.
                if claim {
                    let until = longest + WRITER_GRACE;
                    shared.writer_until =
                        Some(shared.writer_until.map_or(until, |at| at.max(until)));
                }
                return Attempt::Held {
                    ttl: Some(longest - now),
                };
            }
            state.shared.remove(key);
        }
        let expires = now + self.retention(lease);
        let clock = clock_micros();
        let fence = state.fences.entry(key.clone()).or_insert(Fence {
            last: 0,
            expires,
            released: None,
        });
        if fence.expires <= now {
            fence.last = 0;
            fence.released = None;
        }
        if fence.released.as_ref() == Some(token) {
            return Attempt::ReleasedAlready;
        }
        fence.released = None;
        fence.last = clock.max(fence.last + 1);
        fence.expires = expires;
        let fencing_token = fence.last;
        state.locks.insert(
            key.clone(),
            Entry {
                token: token.clone(),
                fencing_token,
                expires: now + lease,
                since: SystemTime::now(),
            },
        );
        Attempt::Acquired { fencing_token }
    }

    /// A shared hold: a reader (`permits` 0) or one of `permits` permits (see
    /// `acquire_shared.lua`).
    pub(crate) fn acquire_shared(
        &self,
        key: &LockKey,
        token: &HoldToken,
        lease: Duration,
        permits: u32,
    ) -> Attempt {
        let now = Instant::now();
        let mut state = self.state();
        state.sweep(now);
        if let Some(entry) = state.live(key, now) {
            return Attempt::Held {
                ttl: Some(entry.expires - now),
            };
        }
        let retention = self.retention(lease);
        let State { fences, shared, .. } = &mut *state;
        let fence = fences.entry(key.clone()).or_insert(Fence {
            last: 0,
            expires: now + retention,
            released: None,
        });
        if fence.expires <= now {
            fence.last = 0;
            fence.released = None;
        }
        if fence.released.as_ref() == Some(token) {
            return Attempt::ReleasedAlready;
        }
        let holders = shared.entry(key.clone()).or_insert(Shared {
            permits,
            writer_until: None,
            holders: Vec::new(),
            released: Vec::new(),
        });
        holders.holders.retain(|holder| holder.expires > now);
        holders.released.retain(|(_, until)| *until > now);
        if holders
            .released
            .iter()
            .any(|(released, _)| released == token)
        {
            return Attempt::ReleasedAlready;
        }
        if let Some(holder) = holders.holders.iter().find(|holder| holder.token == *token) {
            return Attempt::Acquired {
                fencing_token: holder.fencing_token,
            };
        }
        if holders.holders.is_empty() {
            holders.permits = permits;
        } else if holders.permits != permits {
            return Attempt::Mismatch {
                permits: holders.permits,
            };
        }
        if let Some(until) = holders.writer_until.filter(|until| *until > now) {
            return Attempt::Held {
                ttl: Some(until - now),
            };
        }
        if permits > 0 && holders.holders.len() >= permits as usize {
            let soonest = holders.holders.iter().map(|holder| holder.expires).min();
            return Attempt::Held {
                ttl: soonest.map(|soonest| soonest - now),
            };
        }
        let clock = clock_micros();
        if permits > 0 {
            fence.last = clock.max(fence.last + 1);
        } else if fence.last == 0 {
            // A reader carries the last writer's token, or the clock's when none is known.
            fence.last = clock;
        }
        // The hold the tombstone names is still refused once the key is shared.
        if let Some(released) = fence.released.take() {
            holders.remember(released, now + retention);
        }
        fence.expires = fence.expires.max(now + retention);
        let fencing_token = fence.last;
        holders.holders.push(Entry {
            token: token.clone(),
            fencing_token,
            expires: now + lease,
            since: SystemTime::now(),
        });
        Attempt::Acquired { fencing_token }
    }

    pub(crate) fn release(&self, key: &LockKey, token: &HoldToken) -> Released {
        let now = Instant::now();
        let retention = self.fence_retention;
        let mut state = self.state();
        if let Some(shared) = state.shared.get_mut(key) {
            if let Some(at) = shared
                .holders
                .iter()
                .position(|holder| holder.token == *token)
            {
                let holder = shared.holders.swap_remove(at);
                shared.remember(holder.token, holder.expires);
                if let Some(released) = state.released.get(key) {
                    released.notify_waiters();
                }
                return Released::Free;
            }
            if shared
                .released
                .iter()
                .any(|(released, _)| released == token)
            {
                // A retried release: the first one took effect.
                return Released::Again;
            }
            // Its acquisition may still be on its way: named, so that it is refused.
            shared.remember(token.clone(), now + retention);
            return Released::NotHeld;
        }
        let released = match state.live(key, now) {
            Some(entry) if entry.token == *token => {
                state.remove(key);
                Released::Free
            }
            // Another hold's lock: left alone.
            Some(_) => return Released::NotHeld,
            None => match state.fences.get(key) {
                // A retried release: the first one took effect.
                Some(fence) if fence.expires > now && fence.released.as_ref() == Some(token) => {
                    return Released::Again;
                }
                _ => Released::NotHeld,
            },
        };
        // The tombstone names this hold (so that its late acquisition is refused) and keeps the
        // last fencing token, or starts one where nothing was.
        let fence = state.fences.entry(key.clone()).or_insert(Fence {
            last: 0,
            expires: now + retention,
            released: None,
        });
        if fence.expires <= now {
            fence.last = 0;
            fence.expires = now + retention;
        }
        fence.released = Some(token.clone());
        released
    }

    pub(crate) fn renew(&self, key: &LockKey, token: &HoldToken, lease: Duration) -> bool {
        let now = Instant::now();
        let retention = self.retention(lease);
        let mut state = self.state();
        let shared = state.shared.get_mut(key).and_then(|shared| {
            shared
                .holders
                .iter_mut()
                .find(|holder| holder.token == *token && holder.expires > now)
        });
        if let Some(holder) = shared {
            holder.expires = now + lease;
            if let Some(fence) = state.fences.get_mut(key) {
                fence.expires = fence.expires.max(now + retention);
            }
            return true;
        }
        match state.live(key, now).filter(|entry| entry.token == *token) {
            Some(entry) => {
                entry.expires = now + lease;
                if let Some(fence) = state.fences.get_mut(key) {
                    fence.expires = fence.expires.max(now + retention);
                }
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

    pub(crate) fn force_release(&self, key: &LockKey) -> (bool, u64) {
        let now = Instant::now();
        let mut state = self.state();
        let removed = state.live(key, now).is_some() && state.remove(key);
        let last = match state.fences.get_mut(key) {
            Some(fence) if fence.expires > now => {
                // The removed hold's tombstone names no hold; a free lock's stays as it was.
                if removed {
                    fence.released = None;
                }
                fence.last
            }
            _ => 0,
        };
        let shared = state
            .shared
            .remove(key)
            .is_some_and(|shared| shared.holders.iter().any(|holder| holder.expires > now));
        if shared {
            // As for an exclusive hold: the tombstone names no hold.
            if let Some(fence) = state.fences.get_mut(key) {
                fence.released = None;
            }
            if let Some(released) = state.released.get(key) {
                released.notify_waiters();
            }
        }
        (removed || shared, last)
    }

    pub(crate) fn inspect(&self, key: &LockKey) -> Option<LockInfo> {
        let now = Instant::now();
        let mut state = self.state();
        if let Some(shared) = state.shared.get(key) {
            return shared_info(key, shared, state.fences.get(key), now);
        }
        let entry = state.live(key, now)?;
        Some(info(key, entry, now))
    }

    /// Every live lock whose key matches `pattern`.
    pub(crate) fn list(&self, pattern: &KeyPattern) -> Vec<LockInfo> {
        let now = Instant::now();
        let state = self.state();
        let mut found: Vec<LockInfo> = state
            .locks
            .iter()
            .filter(|(key, entry)| entry.expires > now && pattern.matches(key.as_str()))
            .map(|(key, entry)| info(key, entry, now))
            .chain(
                state
                    .shared
                    .iter()
                    .filter(|(key, _)| pattern.matches(key.as_str()))
                    .filter_map(|(key, shared)| {
                        shared_info(key, shared, state.fences.get(key), now)
                    }),
            )
            .collect();
        found.sort_by(|a, b| a.key.cmp(&b.key));
        found
    }
}

fn info(key: &LockKey, entry: &Entry, now: Instant) -> LockInfo {
    LockInfo {
        key: key.as_str().to_owned(),
        owner: entry.token.as_str().to_owned(),
        holds: 1,
        ttl: entry.expires - now,
        fencing_token: entry.fencing_token,
        host: Some(HOLDER.host.clone()),
        pid: Some(HOLDER.pid),
        acquired_at: Some(entry.since),
        mode: LockMode::Exclusive,
    }
}

/// What `inspect` reads about shared holders: `None` when none is live.
fn shared_info(
    key: &LockKey,
    shared: &Shared,
    fence: Option<&Fence>,
    now: Instant,
) -> Option<LockInfo> {
    let mut live = shared.holders.iter().filter(|holder| holder.expires > now);
    let first = live.next()?;
    let longest = live
        .clone()
        .map(|holder| holder.expires)
        .fold(first.expires, Instant::max);
    Some(LockInfo {
        key: key.as_str().to_owned(),
        owner: first.token.as_str().to_owned(),
        holds: 1 + live.count() as u64,
        ttl: longest - now,
        fencing_token: fence.map_or(first.fencing_token, |fence| fence.last),
        host: Some(HOLDER.host.clone()),
        pid: Some(HOLDER.pid),
        acquired_at: Some(first.since),
        mode: if shared.permits == 0 {
            LockMode::Read
        } else {
            LockMode::Permits(shared.permits)
        },
    })
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
        self.shared.retain(|_, shared| {
            shared.holders.iter().any(|holder| holder.expires > now)
                || shared.writer_until.is_some_and(|until| until > now)
                || shared.released.iter().any(|(_, until)| *until > now)
        });
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

    fn token_of(attempt: Attempt) -> u64 {
        match attempt {
            Attempt::Acquired { fencing_token } => fencing_token,
            other => panic!("expected Acquired, got {other:?}"),
        }
    }

    #[test]
    fn second_hold_is_refused_with_the_ttl() {
        let memory = backend();
        let (a, b) = (HoldToken::random(), HoldToken::random());
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
    fn a_retried_acquire_of_the_same_hold_gets_the_same_grant() {
        let memory = backend();
        let a = HoldToken::random();
        let first = memory.acquire(&key("k"), &a, LEASE);
        assert_eq!(memory.acquire(&key("k"), &a, LEASE), first);
        assert_eq!(memory.release(&key("k"), &a), Released::Free);
        // A retried release finds its own tombstone.
        assert_eq!(memory.release(&key("k"), &a), Released::Again);
    }

    #[test]
    fn a_force_release_of_a_free_lock_keeps_the_tombstone_as_it_was() {
        let memory = backend();
        let x = HoldToken::random();
        token_of(memory.acquire(&key("k"), &x, LEASE));
        assert_eq!(memory.release(&key("k"), &x), Released::Free);
        assert!(!memory.force_release(&key("k")).0);
        // As force_release.lua leaves a free lock's tombstone alone: X's retry is answered, its
        // late acquisition refused.
        assert_eq!(memory.release(&key("k"), &x), Released::Again);
        assert_eq!(
            memory.acquire(&key("k"), &x, LEASE),
            Attempt::ReleasedAlready
        );
    }

    #[test]
    fn an_acquisition_after_its_own_release_is_refused_and_leaves_nothing_held() {
        let memory = backend();
        let late = HoldToken::random();
        assert_eq!(memory.release(&key("k"), &late), Released::NotHeld);
        assert_eq!(
            memory.acquire(&key("k"), &late, LEASE),
            Attempt::ReleasedAlready
        );
        assert!(memory.inspect(&key("k")).is_none());
        token_of(memory.acquire(&key("k"), &HoldToken::random(), LEASE));
    }

    #[test]
    fn a_release_of_an_old_hold_leaves_a_newer_one_alone() {
        let memory = backend();
        let (old, new) = (HoldToken::random(), HoldToken::random());
        memory.acquire(&key("k"), &old, LEASE);
        assert!(memory.force_release(&key("k")).0);
        token_of(memory.acquire(&key("k"), &new, LEASE));
        assert_eq!(memory.release(&key("k"), &old), Released::NotHeld);
        assert!(!memory.renew(&key("k"), &old, LEASE));
        assert_eq!(memory.inspect(&key("k")).unwrap().owner, new.as_str());
    }

    #[test]
    fn fencing_tokens_increase_per_key_and_follow_the_clock() {
        let memory = backend();
        let before = clock_micros();
        let mut last = 0;
        for _ in 0..5 {
            let hold = HoldToken::random();
            let fencing_token = token_of(memory.acquire(&key("k"), &hold, LEASE));
            assert!(fencing_token > last);
            assert!(fencing_token >= before);
            last = fencing_token;
            memory.release(&key("k"), &hold);
        }
    }

    #[test]
    fn fencing_tokens_keep_increasing_after_the_counter_expires() {
        let memory = MemoryBackend::new(Duration::from_millis(1));
        let first =
            token_of(memory.acquire(&key("k"), &HoldToken::random(), Duration::from_millis(1)));
        std::thread::sleep(Duration::from_millis(5));
        let second = token_of(memory.acquire(&key("k"), &HoldToken::random(), LEASE));
        assert!(second > first, "{second} after {first}");
    }

    #[test]
    fn an_expired_lease_frees_the_lock_and_release_reports_it() {
        let memory = backend();
        let a = HoldToken::random();
        let first = token_of(memory.acquire(&key("k"), &a, Duration::from_millis(1)));
        std::thread::sleep(Duration::from_millis(5));
        assert!(memory.inspect(&key("k")).is_none());
        assert_eq!(memory.release(&key("k"), &a), Released::NotHeld);
        assert!(token_of(memory.acquire(&key("k"), &HoldToken::random(), LEASE)) > first);
    }

    #[test]
    fn force_release_frees_any_holder() {
        let memory = backend();
        memory.acquire(&key("k"), &HoldToken::random(), LEASE);
        assert!(memory.force_release(&key("k")).0);
        assert!(!memory.force_release(&key("k")).0);
        assert!(memory.inspect(&key("k")).is_none());
    }

    #[test]
    fn an_expired_permit_is_reclaimed_by_the_next_request() {
        let memory = backend();
        let crashed = token_of(memory.acquire_shared(
            &key("k"),
            &HoldToken::random(),
            Duration::from_millis(1),
            1,
        ));
        std::thread::sleep(Duration::from_millis(5));
        let next = token_of(memory.acquire_shared(&key("k"), &HoldToken::random(), LEASE, 1));
        assert!(next > crashed);
        assert!(matches!(
            memory.acquire_shared(&key("k"), &HoldToken::random(), LEASE, 1),
            Attempt::Held { .. }
        ));
    }

    #[test]
    fn a_refused_writer_makes_new_readers_queue_and_takes_the_lock_after_the_readers() {
        let memory = backend();
        let reader = HoldToken::random();
        let read = token_of(memory.acquire_shared(&key("k"), &reader, LEASE, 0));
        let writer = HoldToken::random();
        assert!(matches!(
            memory.acquire(&key("k"), &writer, LEASE),
            Attempt::Held { .. }
        ));
        assert!(matches!(
            memory.acquire_shared(&key("k"), &HoldToken::random(), LEASE, 0),
            Attempt::Held { .. }
        ));
        assert_eq!(memory.release(&key("k"), &reader), Released::Free);
        let written = token_of(memory.acquire(&key("k"), &writer, LEASE));
        assert!(written > read);
        assert_eq!(memory.release(&key("k"), &writer), Released::Free);
        let next = token_of(memory.acquire_shared(&key("k"), &HoldToken::random(), LEASE, 0));
        assert_eq!(next, written, "a reader carries the last writer's token");
    }

    #[test]
    fn a_retried_release_of_a_shared_hold_is_answered_as_done_and_its_late_acquisition_refused() {
        let memory = backend();
        for permits in [0, 2] {
            let k = key(&format!("shared-{permits}"));
            let (a, b) = (HoldToken::random(), HoldToken::random());
            token_of(memory.acquire_shared(&k, &a, LEASE, permits));
            token_of(memory.acquire_shared(&k, &b, LEASE, permits));
            assert_eq!(memory.release(&k, &a), Released::Free);
            assert_eq!(memory.release(&k, &a), Released::Again);
            assert_eq!(
                memory.acquire_shared(&k, &a, LEASE, permits),
                Attempt::ReleasedAlready
            );
            assert!(!memory.renew(&k, &a, LEASE));
            assert_eq!(memory.inspect(&k).unwrap().holds, 1);
            // A release whose acquisition may still come, beside another holder and alone.
            let late = HoldToken::random();
            assert_eq!(memory.release(&k, &late), Released::NotHeld);
            assert_eq!(memory.release(&k, &b), Released::Free);
            for token in [&a, &late] {
                assert_eq!(
                    memory.acquire_shared(&k, token, LEASE, permits),
                    Attempt::ReleasedAlready
                );
            }
            assert!(memory.inspect(&k).is_none());
        }
    }

    #[test]
    fn a_late_writer_whose_tombstone_a_reader_took_over_is_refused() {
        let memory = backend();
        let k = key("late-writer");
        let late = HoldToken::random();
        assert_eq!(memory.release(&k, &late), Released::NotHeld);
        let reader = HoldToken::random();
        token_of(memory.acquire_shared(&k, &reader, LEASE, 0));
        // Beside the live reader, as the scripts answer: released already, and no writer claim.
        assert_eq!(memory.acquire(&k, &late, LEASE), Attempt::ReleasedAlready);
        token_of(memory.acquire_shared(&k, &HoldToken::random(), LEASE, 0));
        assert_eq!(memory.release(&k, &reader), Released::Free);
        assert_eq!(memory.acquire(&k, &late, LEASE), Attempt::ReleasedAlready);
    }

    #[test]
    fn released_shared_holds_are_bounded() {
        let memory = backend();
        let k = key("k");
        let tokens: Vec<HoldToken> = (0..MAX_RELEASED + 8).map(|_| HoldToken::random()).collect();
        for token in &tokens {
            token_of(memory.acquire_shared(&k, token, LEASE, 0));
            assert_eq!(memory.release(&k, token), Released::Free);
        }
        assert_eq!(memory.release(&k, &tokens[0]), Released::NotHeld);
        assert_eq!(memory.release(&k, tokens.last().unwrap()), Released::Again);
        assert_eq!(memory.state().shared[&k].released.len(), MAX_RELEASED);
    }

    #[test]
    fn sweep_bounds_memory_by_live_locks() {
        let memory = MemoryBackend::new(Duration::from_millis(1));
        for n in 0..SWEEP_EVERY * 2 {
            let hold = HoldToken::random();
            memory.acquire(&key(&format!("k{n}")), &hold, Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(5));
        for n in 0..SWEEP_EVERY {
            memory.acquire(&key(&format!("again{n}")), &HoldToken::random(), LEASE);
        }
        let state = memory.state();
        assert!(state.locks.len() <= SWEEP_EVERY, "{}", state.locks.len());
    }
}
