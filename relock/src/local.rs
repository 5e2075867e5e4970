//! The holds this `Locker` has in this process, one slot per key.
//!
//! Tasks of one process that contend for a key queue here instead of at the server: one task at a
//! time asks the backend, a release hands over with a local wake-up, `try_lock` on a key held here
//! answers without a round trip.
//!
//! A slot stays occupied until its hold is known to be gone from the server (its release was
//! acknowledged, a renewal found it missing, it was force-released here, or its lease has ended
//! there for sure): the server alone decides who holds a key, and every hold has its own token,
//! so the slot is never what keeps two holds apart — it only keeps this process from asking the
//! server in vain.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;

use crate::key::LockKey;
use crate::lease::{Lease, Loss};

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
    /// Force-released through this locker while its acquisition was in flight, when the last
    /// fencing token handed out before that release was this: a grant with a token no larger
    /// reached the server before the release, and is gone.
    forced: Option<u64>,
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

    /// Takes the key's slot, unless another task has it. A slot whose hold is gone from the
    /// server is taken over.
    pub(crate) fn enter(self: &Arc<Self>, key: &LockKey) -> Enter {
        let mut slots = self.slots();
        if let Some(slot) = slots.get_mut(key) {
            if !slot.lease.as_ref().is_some_and(|lease| lease.is_gone()) {
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
                forced: None,
            },
        );
        Enter::Entered(Gate {
            local: self.clone(),
            key: key.clone(),
            id,
            committed: false,
        })
    }

    /// An id no slot has: shared holds (readers, permits) take no slot, since several of them
    /// may hold a key at once, but the watchdog knows every hold by an id.
    pub(crate) fn fresh_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
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

    /// The key was force-released on the server, after fencing token `last` was handed out: a
    /// hold here with a token no larger is gone (and its slot freed); an acquisition in flight
    /// learns it in [`Gate::commit`].
    pub(crate) fn force_released(&self, key: &LockKey, last: u64) {
        let mut slots = self.slots();
        let Some(slot) = slots.get_mut(key) else {
            return;
        };
        let Some(lease) = slot.lease.clone() else {
            slot.forced = Some(slot.forced.map_or(last, |forced| forced.max(last)));
            return;
        };
        if lease.fencing_token > last {
            // Granted after the release: it stands.
            return;
        }
        lease.mark_gone(Loss::ForceReleased);
        let slot = slots.remove(key);
        drop(slots);
        drop(slot);
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

    /// The backend granted the lock: the slot now belongs to the hold, which frees it once the
    /// hold is gone from the server. Tasks already waiting are woken to look again, now that the
    /// holder's deadline is known.
    ///
    /// Returns `false` when the key was force-released here after this grant (its fencing token
    /// is no larger than the last one handed out before the release): the hold is gone.
    pub(crate) fn commit(mut self, lease: &Arc<Lease>) -> bool {
        self.committed = true;
        let mut slots = self.local.slots();
        match slots.get_mut(&self.key) {
            Some(slot) if slot.id == self.id => {
                slot.lease = Some(lease.clone());
                slot.wake_waiters();
                slot.forced.is_none_or(|last| lease.fencing_token > last)
            }
            _ => false,
        }
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
    use std::time::{Duration, Instant};

    use super::*;
    use crate::token::HoldToken;

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

    fn lease(slot: u64, duration: Duration) -> Arc<Lease> {
        lease_with_token(slot, duration, 10)
    }

    fn lease_with_token(slot: u64, duration: Duration, fencing_token: u64) -> Arc<Lease> {
        let now = Instant::now();
        Arc::new(Lease::new(
            key("k"),
            HoldToken::random(),
            fencing_token,
            slot,
            duration,
            now,
            now,
        ))
    }

    #[test]
    fn remove_ignores_a_slot_taken_over_since() {
        let local = Arc::new(LocalHolds::default());
        let Enter::Entered(first) = local.enter(&key("k")) else {
            panic!()
        };
        let first_id = first.id();
        assert!(first.commit(&lease(first_id, Duration::from_secs(30))));
        local.force_released(&key("k"), 10);
        let Enter::Entered(_second) = local.enter(&key("k")) else {
            panic!()
        };
        local.remove(&key("k"), first_id);
        assert_eq!(local.len(), 1);
    }

    #[test]
    fn a_lost_hold_keeps_its_slot_until_it_is_gone_from_the_server() {
        let local = Arc::new(LocalHolds::default());
        let Enter::Entered(gate) = local.enter(&key("k")) else {
            panic!()
        };
        let held = lease(gate.id(), Duration::from_millis(50));
        assert!(gate.commit(&held));
        held.mark_lost(Loss::Expired);
        assert!(matches!(local.enter(&key("k")), Enter::Busy(_)));
        held.mark_gone(Loss::Gone);
        assert!(matches!(local.enter(&key("k")), Enter::Entered(_)));
    }

    #[test]
    fn a_slot_is_free_once_the_lease_has_ended_on_the_server_for_sure() {
        let local = Arc::new(LocalHolds::default());
        let Enter::Entered(gate) = local.enter(&key("k")) else {
            panic!()
        };
        let held = lease(gate.id(), Duration::from_millis(10));
        assert!(gate.commit(&held));
        std::thread::sleep(Duration::from_millis(5));
        assert!(matches!(local.enter(&key("k")), Enter::Busy(_)));
        std::thread::sleep(Duration::from_millis(30));
        assert!(matches!(local.enter(&key("k")), Enter::Entered(_)));
    }

    #[test]
    fn a_grant_that_predates_a_force_release_in_flight_is_not_trusted() {
        let local = Arc::new(LocalHolds::default());
        let Enter::Entered(gate) = local.enter(&key("k")) else {
            panic!()
        };
        local.force_released(&key("k"), 10);
        assert!(matches!(local.enter(&key("k")), Enter::Busy(_)));
        let id = gate.id();
        assert!(!gate.commit(&lease_with_token(id, Duration::from_secs(30), 10)));
    }

    #[test]
    fn a_grant_that_follows_a_force_release_in_flight_stands() {
        let local = Arc::new(LocalHolds::default());
        let Enter::Entered(gate) = local.enter(&key("k")) else {
            panic!()
        };
        local.force_released(&key("k"), 10);
        let id = gate.id();
        assert!(gate.commit(&lease_with_token(id, Duration::from_secs(30), 11)));
    }

    #[test]
    fn a_force_release_spares_a_hold_granted_after_it() {
        let local = Arc::new(LocalHolds::default());
        let Enter::Entered(gate) = local.enter(&key("k")) else {
            panic!()
        };
        let held = lease_with_token(gate.id(), Duration::from_secs(30), 11);
        assert!(gate.commit(&held));
        local.force_released(&key("k"), 10);
        assert!(!held.is_lost());
        local.force_released(&key("k"), 11);
        assert!(held.is_lost());
    }

    #[test]
    fn distinct_keys_do_not_contend() {
        let local = Arc::new(LocalHolds::default());
        let _a = local.enter(&key("a"));
        assert!(matches!(local.enter(&key("b")), Enter::Entered(_)));
    }
}
