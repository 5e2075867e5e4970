//! The holds this `Locker` has in this process, one slot per key.
//!
//! Tasks of one process that contend for a key queue here instead of at the server: one task at a
//! time asks the backend, a release hands over with a local wake-up, `try_lock` on a key held here
//! answers without a round trip, and siblings that share a scope's owner token still exclude each
//! other (the server alone would let the same owner re-enter).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;

use crate::key::LockKey;
use crate::lease::Lease;

#[derive(Debug, Default)]
pub(crate) struct LocalHolds {
    slots: Mutex<HashMap<LockKey, Slot>>,
    next_id: AtomicU64,
}

#[derive(Debug)]
struct Slot {
    id: u64,
    /// Created by the first task that waits: an uncontended lock allocates none.
    freed: Option<Arc<Notify>>,
    /// `None` while the slot's task is still asking the backend.
    lease: Option<Arc<Lease>>,
}

impl Slot {
    fn wake_waiters(&self) {
        if let Some(freed) = &self.freed {
            freed.notify_waiters();
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.wake_waiters();
    }
}

/// The result of [`LocalHolds::enter`].
pub(crate) enum Enter {
    /// The caller has the key's slot and may ask the backend.
    Entered(Gate),
    /// Another task of this process holds or is taking the key.
    Busy(Busy),
}

/// What a task waiting for a slot needs: a wake-up when it is freed, and the holder's lease
/// (never the hold: see [`Lease`]).
pub(crate) struct Busy {
    pub(crate) freed: OwnedNotified,
    pub(crate) holder: Option<Arc<Lease>>,
}

impl LocalHolds {
    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<LockKey, Slot>> {
        self.slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes the key's slot, unless another task has it. A slot whose hold was lost is taken
    /// over, as the backend would let another owner take the lock.
    pub(crate) fn enter(self: &Arc<Self>, key: &LockKey) -> Enter {
        let mut slots = self.slots();
        if let Some(slot) = slots.get_mut(key) {
            if !slot.lease.as_ref().is_some_and(|lease| lease.is_lost()) {
                let freed = slot.freed.get_or_insert_default().clone().notified_owned();
                let holder = slot.lease.clone();
                return Enter::Busy(Busy { freed, holder });
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        slots.insert(
            key.clone(),
            Slot {
                id,
                freed: None,
                lease: None,
            },
        );
        Enter::Entered(Gate {
            local: self.clone(),
            key: key.clone(),
            id,
            committed: false,
        })
    }

    /// Frees the slot `id` took; a slot that was taken over since is left alone.
    pub(crate) fn remove(&self, key: &LockKey, id: u64) {
        let mut slots = self.slots();
        if slots.get(key).is_some_and(|slot| slot.id == id) {
            let slot = slots.remove(key);
            // Wake the waiters after unlocking: they go straight for the map.
            drop(slots);
            drop(slot);
        }
    }

    /// Empties the key's slot whoever has it, returning its lease (for `force_release`).
    pub(crate) fn evict(&self, key: &LockKey) -> Option<Arc<Lease>> {
        let slot = self.slots().remove(key)?;
        slot.lease.clone()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.slots().len()
    }
}

/// A slot taken by [`LocalHolds::enter`]; freed on drop unless committed to a hold.
pub(crate) struct Gate {
    local: Arc<LocalHolds>,
    key: LockKey,
    id: u64,
    committed: bool,
}

impl Gate {
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// The backend granted the lock: the slot now belongs to `hold`, which frees it on release.
    /// Tasks already waiting are woken to look again, now that the holder's deadline is known.
    pub(crate) fn commit(mut self, lease: &Arc<Lease>) {
        if let Some(slot) = self.local.slots().get_mut(&self.key) {
            if slot.id == self.id {
                slot.lease = Some(lease.clone());
                slot.wake_waiters();
            }
        }
        self.committed = true;
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if !self.committed {
            self.local.remove(&self.key, self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> LockKey {
        LockKey::new(name).unwrap()
    }

    #[tokio::test]
    async fn a_second_task_finds_the_slot_busy_until_the_gate_drops() {
        let local = Arc::new(LocalHolds::default());
        let Enter::Entered(gate) = local.enter(&key("k")) else {
            panic!("first enter must succeed");
        };
        let Enter::Busy(busy) = local.enter(&key("k")) else {
            panic!("second enter must find the slot busy");
        };
        assert!(busy.holder.is_none());
        let waiter = tokio::spawn(busy.freed);
        drop(gate);
        waiter.await.unwrap();
        assert_eq!(local.len(), 0);
        assert!(matches!(local.enter(&key("k")), Enter::Entered(_)));
    }

    #[test]
    fn remove_ignores_a_slot_taken_over_since() {
        let local = Arc::new(LocalHolds::default());
        let Enter::Entered(first) = local.enter(&key("k")) else {
            panic!()
        };
        let first_id = first.id();
        std::mem::forget(first);
        local.evict(&key("k"));
        let Enter::Entered(_second) = local.enter(&key("k")) else {
            panic!()
        };
        local.remove(&key("k"), first_id);
        assert_eq!(local.len(), 1);
    }

    #[test]
    fn distinct_keys_do_not_contend() {
        let local = Arc::new(LocalHolds::default());
        let _a = local.enter(&key("a"));
        assert!(matches!(local.enter(&key("b")), Enter::Entered(_)));
    }
}
