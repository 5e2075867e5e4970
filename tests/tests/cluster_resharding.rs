//! Resharding a Redis Cluster under held and awaited locks, with the migration protocol
//! `redis-cli --cluster reshard` uses (`CLUSTER SETSLOT .. IMPORTING` / `MIGRATING`, `MIGRATE` of
//! every key in the slot, `CLUSTER SETSLOT .. NODE` on every master):
//!
//! * a hold whose slot moves is either still held — renewed on its new master, where another
//!   locker sees its fencing token and cannot take it — or reported lost by its guard, never held
//!   twice; its waiter only gets the lock once the hold is released or lost;
//! * a waiter whose key moved is woken by the release on the new master (sharded pub/sub is
//!   dropped by the old master when the slot moves, and re-subscribed), well before the released
//!   hold's lease would have run out;
//! * locks taken and released while a slot is half moved (`ASK` redirections, `TRYAGAIN` while a
//!   script's keys are not all on one side) work once the move completes, and their fencing
//!   tokens keep increasing.

use std::sync::Arc;
use std::time::Duration;

use relock::{LockGuard, Locker};
use relock_tests::{bounded, unique_key, RedisCluster};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Short, so that renewals must keep working during the move (the watchdog renews every third).
const SHORT_LEASE: Duration = Duration::from_secs(3);
/// Far longer than the test waits for a wake-up: a waiter that gets the lock within
/// [`WAKE_WITHIN`] of the release was woken by the release, not by the lease running out.
const LONG_LEASE: Duration = Duration::from_secs(20);
const WAKE_WITHIN: Duration = Duration::from_secs(3);
/// How long each half-moved state lasts: more than a renewal period of the short lease.
const MIGRATION_STEP: Duration = Duration::from_millis(1500);

fn locker(cluster: &RedisCluster) -> Locker {
    Locker::builder()
        .cluster(cluster.seeds())
        .lease(SHORT_LEASE)
        .wait(Duration::from_secs(60))
        .build()
        .expect("a cluster locker")
}

/// A master other than the one serving `slot`.
fn other_master(cluster: &RedisCluster, slot: u16) -> u16 {
    let from = cluster.master_of_slot(slot);
    cluster
        .master_ports()
        .into_iter()
        .find(|port| *port != from)
        .expect("a second master")
}

/// A held key and its waiter.
struct Contended {
    key: String,
    guard: Arc<LockGuard>,
    token: u64,
    /// When the guard reported the hold lost, if it did.
    lost_at: JoinHandle<Instant>,
    /// The waiter's lock: its guard and when it got it.
    waiter: JoinHandle<(LockGuard, Instant)>,
}

impl Contended {
    async fn start(holder: &Locker, waiter: &Locker, key: String, lease: Duration) -> Contended {
        let guard = Arc::new(
            holder
                .lock(key.as_str())
                .lease(lease)
                .await
                .expect("lock before the move"),
        );
        let token = guard.fencing_token();
        let lost_at = tokio::spawn({
            let guard = guard.clone();
            async move {
                guard.lost().await;
                Instant::now()
            }
        });
        let waiter = tokio::spawn({
            let waiter = waiter.clone();
            let key = key.clone();
            async move {
                let guard = waiter
                    .lock(key.as_str())
                    .await
                    .unwrap_or_else(|err| panic!("the waiter on {key} failed: {err}"));
                (guard, Instant::now())
            }
        });
        Contended {
            key,
            guard,
            token,
            lost_at,
            waiter,
        }
    }

    /// While the guard believes it holds the key: the key is on the cluster under its token and
    /// another locker cannot take it; the waiter is still waiting. Returns whether it was held.
    async fn check(&self, other: &Locker, when: &str) -> bool {
        let key = &self.key;
        if !self.guard.is_held() {
            println!("{key}: reported lost by its guard {when}");
            return false;
        }
        let info = other
            .inspect(key.as_str())
            .await
            .unwrap_or_else(|err| panic!("inspect {key} {when}: {err}"));
        let second = other
            .try_lock(key.as_str())
            .await
            .unwrap_or_else(|err| panic!("try_lock {key} {when}: {err}"));
        // The hold may have been lost between the checks; only a hold still believed held after
        // both is a second holder.
        if self.guard.is_held() {
            let info = info.unwrap_or_else(|| {
                panic!("{key} is held by its guard {when} but is gone from the cluster")
            });
            assert_eq!(
                info.fencing_token, self.token,
                "{key} {when}: the cluster shows another hold than its guard's"
            );
            assert!(
                second.is_none(),
                "{key} {when}: another locker took it while its guard still holds it"
            );
            assert!(
                !self.waiter.is_finished(),
                "{key} {when}: the waiter got it while its guard still holds it"
            );
            true
        } else {
            println!("{key}: reported lost by its guard {when}");
            false
        }
    }

    /// Releases the hold (if still held) and waits for the waiter; asserts that the waiter got
    /// the lock only after the hold was released or reported lost, and (when released) within
    /// [`WAKE_WITHIN`]. Returns how long the waiter took after the release.
    async fn release(self) -> Option<Duration> {
        let key = self.key;
        self.lost_at.abort();
        let lost_at = match self.lost_at.await {
            Ok(at) => Some(at),
            Err(err) if err.is_cancelled() => None,
            Err(err) => panic!("{key}: the loss watcher failed: {err}"),
        };
        let guard = Arc::into_inner(self.guard).expect("the only handle on the guard");
        let released_at = Instant::now();
        let released = guard.release().await;
        match (&released, lost_at) {
            (Ok(()), None) => {}
            (Err(relock::Error::Lost { .. }), _) | (Ok(()), Some(_)) => {
                println!("{key}: the hold had been lost before its release: {released:?}");
            }
            (Err(err), _) => panic!("release {key}: {err}"),
        }
        let (waiter_guard, got_at) =
            tokio::time::timeout(LONG_LEASE + Duration::from_secs(10), self.waiter)
                .await
                .unwrap_or_else(|_| panic!("the waiter on {key} never got it"))
                .unwrap_or_else(|err| panic!("the waiter on {key} failed: {err}"));
        let ended = lost_at.map_or(released_at, |lost| lost.min(released_at));
        assert!(
            got_at >= ended,
            "{key}: the waiter got the lock {:?} before the holder released or lost it",
            ended - got_at
        );
        assert!(
            waiter_guard.fencing_token() > self.token,
            "{key}: the waiter's fencing token {} is not larger than the holder's {}",
            waiter_guard.fencing_token(),
            self.token
        );
        waiter_guard.release().await.expect("the waiter releases");
        let woke = got_at - released_at;
        if released.is_ok() {
            assert!(
                woke <= WAKE_WITHIN,
                "{key}: the waiter got the lock {woke:?} after its release (the holder's lease \
                 would have run out by itself)"
            );
            Some(woke)
        } else {
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_held_and_awaited_slots_keeps_one_holder_and_wakes_the_waiters() {
    let cluster = RedisCluster::start(3, 0);
    bounded(Duration::from_secs(90), async {
        let holder = locker(&cluster);
        let waiter = locker(&cluster);
        let other = locker(&cluster);
        let (key_a, key_b) = loop {
            let (a, b) = (unique_key("reshard-a"), unique_key("reshard-b"));
            if cluster.slot_of(&a) != cluster.slot_of(&b) {
                break (a, b);
            }
        };
        // A: renewed by the watchdog through the move. B: a lease the waiter must not wait out.
        let a = Contended::start(&holder, &waiter, key_a, SHORT_LEASE).await;
        let b = Contended::start(&holder, &waiter, key_b, LONG_LEASE).await;
        // Both waiters are subscribed and waiting.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!a.waiter.is_finished() && !b.waiter.is_finished());

        let moves: Vec<_> = [&a, &b]
            .iter()
            .map(|held| {
                let slot = cluster.slot_of(&held.key);
                let to = other_master(&cluster, slot);
                println!(
                    "{}: slot {slot} moves from port {} to port {to}",
                    held.key,
                    cluster.master_of_slot(slot)
                );
                tokio::task::block_in_place(|| cluster.begin_slot_move(slot, to))
            })
            .collect();
        // MIGRATING / IMPORTING, the keys still on the source: renewals run there.
        tokio::time::sleep(MIGRATION_STEP).await;
        a.check(&other, "with its slot migrating").await;
        b.check(&other, "with its slot migrating").await;
        for slot_move in &moves {
            let keys = tokio::task::block_in_place(|| cluster.migrate_keys(slot_move));
            println!("slot {}: migrated {keys:?}", slot_move.slot);
        }
        // Keys on the target, slot still migrating: the source answers ASK.
        tokio::time::sleep(MIGRATION_STEP).await;
        a.check(&other, "with its keys migrated (ASK)").await;
        b.check(&other, "with its keys migrated (ASK)").await;
        for slot_move in moves {
            tokio::task::block_in_place(|| cluster.finish_slot_move(slot_move));
        }
        // The move is done: renewals (and the waiters' subscriptions) follow the new owner.
        tokio::time::sleep(SHORT_LEASE).await;
        let a_held = a.check(&other, "after the move").await;
        let b_held = b.check(&other, "after the move").await;
        println!("after the move: A held {a_held}, B held {b_held}");

        let woke_a = a.release().await;
        let woke_b = b.release().await;
        println!("waiters got the lock after the release: A {woke_a:?}, B {woke_b:?}");
    })
    .await;
}

/// Moves `slots` as `redis-cli --cluster reshard` does, in a blocking task, pausing
/// `half_moved` with the slots migrating and their keys still on the source; returns once the
/// slots are migrating, with the task finishing the move.
async fn reshard(
    cluster: &Arc<RedisCluster>,
    slots: Vec<u16>,
    half_moved: Duration,
) -> JoinHandle<()> {
    let cluster = cluster.clone();
    let (migrating, begun) = tokio::sync::oneshot::channel();
    let task = tokio::task::spawn_blocking(move || {
        let moves: Vec<_> = slots
            .iter()
            .map(|&slot| cluster.begin_slot_move(slot, other_master(&cluster, slot)))
            .collect();
        let _ = migrating.send(());
        std::thread::sleep(half_moved);
        for slot_move in moves {
            cluster.migrate_keys(&slot_move);
            cluster.finish_slot_move(slot_move);
        }
    });
    begun.await.expect("the slots are migrating");
    task
}

/// Locks and releases sent while their slot is half moved. Redis answers a script naming a key
/// that is missing from a migrating slot with `ASK` (all missing: ask the target) or `TRYAGAIN`
/// (some missing; and, for several keys, always on the importing target) — acquire names the
/// lock key `P:{K}` alone (a hold or a tombstone, or nothing), release the lock key and its
/// channel `P:{K}:released` (a name that is never a key, so always missing) — and the cluster
/// client retries until the slot has moved. A move as `redis-cli --cluster reshard` makes it (a
/// few hundred milliseconds here) is absorbed: the calls succeed, fencing tokens keep increasing
/// (the last one travels with the key, in its tombstone), nothing is held twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_and_releases_during_a_slot_move_work() {
    let cluster = Arc::new(RedisCluster::start(3, 0));
    bounded(Duration::from_secs(60), async {
        let first = locker(&cluster);
        let second = locker(&cluster);

        // C was locked and released before the move: its key, a tombstone with its last fencing
        // token, is on the source (acquired there until it is migrated). D is new: nothing on
        // either side (acquired on the target, after `ASK`).
        let key_c = unique_key("half-moved-c");
        let key_d = unique_key("half-moved-d");
        let before = first.lock(key_c.as_str()).await.expect("lock C");
        let token_before = before.fencing_token();
        before.release().await.expect("release C");
        // C's tombstone is pushed ahead of the clock (as a clock that stepped back would leave
        // it): C's next grant must follow it exactly, on whichever side of the move it runs.
        let ahead = token_before + 3_600_000_000;
        {
            let source = tokio::task::block_in_place(|| cluster.master_of(&key_c));
            let mut node = redis::Client::open(format!("redis://127.0.0.1:{source}/"))
                .expect("the source's URL")
                .get_multiplexed_async_connection()
                .await
                .expect("connect to C's master");
            let lock_c = format!("relock:{{{key_c}}}");
            let tombstone: Option<String> = redis::cmd("GET")
                .arg(&lock_c)
                .query_async(&mut node)
                .await
                .expect("GET C's lock key");
            let tombstone = tombstone.unwrap_or_else(|| panic!("C's released key is gone"));
            let released = tombstone
                .strip_prefix(&format!("-{token_before} "))
                .unwrap_or_else(|| {
                    panic!(
                        "C's released key holds `{tombstone}`, not a tombstone with its fencing \
                         token {token_before}"
                    )
                });
            redis::cmd("SET")
                .arg(&lock_c)
                .arg(format!("-{ahead} {released}"))
                .arg("KEEPTTL")
                .query_async::<()>(&mut node)
                .await
                .expect("SET C's tombstone");
        }
        let slots = |cluster: &RedisCluster| {
            let mut slots = vec![cluster.slot_of(&key_c), cluster.slot_of(&key_d)];
            slots.dedup();
            slots
        };

        // Locks sent while the slots are half moved.
        let moving = reshard(&cluster, slots(&cluster), Duration::from_millis(300)).await;
        let started = Instant::now();
        let (c, d) = tokio::join!(
            first.lock(key_c.as_str()).wait(Duration::from_secs(10)),
            first.lock(key_d.as_str()).wait(Duration::from_secs(10)),
        );
        let took = started.elapsed();
        moving.await.expect("the slot move");
        let c = c.expect("lock C while its slot moves");
        let d = d.expect("lock D while its slot moves");
        println!("C and D locked during their slots' move in {took:?}");
        assert_eq!(
            c.fencing_token(),
            ahead + 1,
            "C's grant during the move did not follow the last fencing token of its tombstone \
             ({ahead}, ahead of the clock): fencing tokens could go backwards across a move"
        );
        for (key, guard) in [(&key_c, &c), (&key_d, &d)] {
            assert!(
                second
                    .try_lock(key.as_str())
                    .await
                    .expect("try_lock")
                    .is_none(),
                "{key}, locked while its slot moved, taken twice"
            );
            let info = second
                .inspect(key.as_str())
                .await
                .expect("inspect")
                .unwrap_or_else(|| panic!("{key} is gone"));
            assert_eq!(info.fencing_token, guard.fencing_token(), "{key}");
        }

        // Renewals while the slots move again, then releases sent while they are half moved,
        // with a waiter on D.
        let waiter = tokio::spawn({
            let second = second.clone();
            let key_d = key_d.clone();
            async move { second.lock(key_d.as_str()).await }
        });
        tokio::task::block_in_place(|| {
            for slot in slots(&cluster) {
                cluster.move_slot(slot, other_master(&cluster, slot));
            }
        });
        tokio::time::sleep(SHORT_LEASE).await;
        assert!(
            c.is_held() && d.is_held(),
            "a hold lost after its slot moved"
        );
        assert!(!waiter.is_finished(), "D's waiter got D while it is held");
        let (c_token, d_token) = (c.fencing_token(), d.fencing_token());
        let moving = reshard(&cluster, slots(&cluster), Duration::from_millis(300)).await;
        let released = Instant::now();
        let (c_released, d_released) = tokio::join!(c.release(), d.release());
        println!(
            "C and D released during their slots' move in {:?}",
            released.elapsed()
        );
        moving.await.expect("the slot move");
        c_released.expect("release C while its slot moves");
        d_released.expect("release D while its slot moves");
        let d_again = tokio::time::timeout(WAKE_WITHIN, waiter)
            .await
            .expect("D's waiter woken by the release")
            .expect("the waiter task")
            .expect("D's waiter gets it");
        println!(
            "D's waiter got it {:?} after the release",
            released.elapsed()
        );
        assert!(d_again.fencing_token() > d_token, "D's fencing token");
        d_again.release().await.expect("release D");
        let c_again = second
            .try_lock(key_c.as_str())
            .await
            .expect("try_lock C")
            .expect("C is free after its release");
        assert!(c_again.fencing_token() > c_token, "C's fencing token");
        c_again.release().await.expect("release C");
    })
    .await;
}
