//! Exclusion and fencing under the histories that used to break them: a late release of a lost
//! hold, a stalled process waking past its lease, last fencing tokens that vanish or fall behind,
//! durations at the edges.
//!
//! Each test is a history — who held what, when — ending in the question the contract answers:
//! can two owners both believe they hold the key, and did a fencing token go backwards?

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use relock::{Error, Locker};
use relock_tests::{on_every_backend, unique_key, Proxy, RedisServer, TestBackend};

const LIMIT: Duration = Duration::from_secs(30);
/// Short enough that the watchdog notices a vanished hold within a fraction of a second.
const SHORT_LEASE: Duration = Duration::from_millis(300);
/// For holds that must last through a test on a loaded machine.
const STEADY_LEASE: Duration = Duration::from_secs(5);

/// How the first hold disappears behind its owner's back.
#[derive(Debug, Clone, Copy)]
enum Removal {
    /// An operator, through another locker (another process): noticed by the next renewal.
    Operator,
    /// `force_release` through the holder's own locker: noticed at once.
    OwnLocker,
}

/// How the lost hold's owner lets go of it afterwards.
#[derive(Debug, Clone, Copy)]
enum LetGo {
    Release,
    Drop,
}

/// Waits until `other` (another owner) can take `key`, then gives it back; `false` if it could
/// not within `wait`.
async fn free_for_another_owner(other: &Locker, key: &str) -> bool {
    let (other, key) = (other.clone(), key.to_owned());
    tokio::spawn(async move {
        match other.try_lock(&key).await.expect("try_lock") {
            Some(guard) => {
                guard.release().await.expect("release");
                true
            }
            None => false,
        }
    })
    .await
    .expect("the probe panicked")
}

/// Inside one scope: a hold on `k` is removed, the scope locks `k` again, and the first hold's
/// late release (explicit or dropped) must not delete the second. Before holds had tokens of
/// their own, the late release deleted the new hold and another owner took `k` while the new
/// guard still said `is_held()`.
async fn a_late_release_of_a_lost_hold_spares_a_newer_hold_in_the_same_scope(
    b: &TestBackend,
    removal: Removal,
    let_go: LetGo,
) {
    let locker = &b.locker;
    let (outer, key) = (unique_key("scope"), unique_key("relocked"));
    locker
        .lock(&outer)
        .run(async {
            let first = locker.lock(&key).lease(SHORT_LEASE).await.expect("lock");
            match removal {
                Removal::Operator => {
                    assert!(b.other.force_release(&key).await.expect("force_release"));
                }
                Removal::OwnLocker => {
                    assert!(locker.force_release(&key).await.expect("force_release"));
                }
            }
            tokio::time::timeout(Duration::from_secs(2), first.lost())
                .await
                .expect("the loss is noticed");
            // The new hold's lease is long: on a loaded machine a renewal of a short one can come
            // late, and the new guard would (rightly) report a loss this test is not about.
            let second = locker
                .lock(&key)
                .wait(Duration::from_secs(5))
                .lease(STEADY_LEASE)
                .await
                .expect("the scope takes the key again");
            assert!(!second.is_reentrant(), "a lost hold is never re-entered");
            assert!(second.fencing_token() > first.fencing_token());
            match let_go {
                LetGo::Release => assert!(first.release().await.unwrap_err().is_lost()),
                LetGo::Drop => drop(first),
            }
            // Give a background release every chance to do damage.
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(second.is_held());
            assert!(
                !free_for_another_owner(&b.other, &key).await,
                "another owner took the key while the new guard holds it"
            );
            second.release().await.expect("the new hold is intact");
        })
        .await
        .expect("outer run");
}

/// A `run` whose hold is force-released returns `Lost` while its enclosing scope goes on; the same
/// scope then runs on the key again and must hold it alone to the end.
async fn run_again_after_a_lost_run_in_the_same_scope_holds_the_key_alone(b: &TestBackend) {
    let locker = &b.locker;
    let (outer, key) = (unique_key("scope"), unique_key("rerun"));
    locker
        .lock(&outer)
        .run(async {
            let lost = locker
                .lock(&key)
                .lease(SHORT_LEASE)
                .run(async {
                    b.other.force_release(&key).await.expect("force_release");
                    std::future::pending::<()>().await;
                })
                .await;
            assert!(matches!(lost, Err(Error::Lost { .. })), "{lost:?}");
            locker
                .lock(&key)
                .lease(STEADY_LEASE)
                .run(async {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    assert!(
                        !free_for_another_owner(&b.other, &key).await,
                        "another owner took the key inside the second run"
                    );
                })
                .await
                .expect("the second run holds the key to its end");
        })
        .await
        .expect("outer run");
}

/// A current-thread runtime stalled past the lease by a blocking call: when it wakes, the body of
/// `run` must not take another step — another owner may hold the key by then.
fn a_stalled_runtime_never_takes_another_step_past_the_lease(memory: bool) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = (!memory).then(RedisServer::start);
    runtime.block_on(async {
        let locker = match &server {
            Some(server) => server.locker().await,
            None => Locker::in_memory(),
        };
        let key = unique_key("stalled");
        let steps: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let lease = Duration::from_millis(200);
        let stall = tokio::spawn(async {
            tokio::time::sleep(Duration::from_millis(60)).await;
            // A blocking call in another task: nothing on this runtime runs for 500 ms.
            std::thread::sleep(Duration::from_millis(500));
        });
        let before = Instant::now();
        let recorded = steps.clone();
        let outcome = locker
            .lock(&key)
            .lease(lease)
            .run(async move {
                loop {
                    recorded.lock().unwrap().push(Instant::now());
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await;
        stall.await.unwrap();
        assert!(matches!(outcome, Err(Error::Lost { .. })), "{outcome:?}");
        let late: Vec<_> = steps
            .lock()
            .unwrap()
            .iter()
            .map(|at| at.duration_since(before))
            .filter(|since| *since >= lease)
            .collect();
        assert!(
            late.is_empty(),
            "the body stepped after the lease: {late:?}"
        );
    });
}

#[test]
fn a_stalled_runtime_never_takes_another_step_past_the_lease_on_redis() {
    a_stalled_runtime_never_takes_another_step_past_the_lease(false);
}

#[test]
fn a_stalled_runtime_never_takes_another_step_past_the_lease_in_memory() {
    a_stalled_runtime_never_takes_another_step_past_the_lease(true);
}

/// Durations at the edges never panic and never leave a lock without an expiry.
async fn extreme_durations_are_refused_or_honoured(b: &TestBackend) {
    let key = unique_key("durations");
    for lease in [Duration::ZERO, Duration::from_millis(1), Duration::MAX] {
        match b.locker.lock(&key).lease(lease).await {
            Err(Error::InvalidLease { lease: got, .. }) => assert_eq!(got, lease),
            other => panic!("lease {lease:?}: expected InvalidLease, got {other:?}"),
        }
        assert!(
            b.locker.inspect(&key).await.unwrap().is_none(),
            "nothing was written"
        );
    }
    let guard = b
        .locker
        .lock(&key)
        .wait(Duration::MAX)
        .lease(Locker::MAX_LEASE)
        .await
        .expect("the longest lease and an endless wait");
    let info = b.locker.inspect(&key).await.unwrap().expect("held");
    assert!(info.ttl > Duration::from_secs(3600), "{:?}", info.ttl);
    // An endless wait ends when the holder lets go.
    let other = b.other.clone();
    let waiter_key = key.clone();
    let waiter = tokio::spawn(async move {
        let guard = other.lock(&waiter_key).wait(Duration::MAX).await?;
        guard.release().await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    guard.release().await.unwrap();
    waiter.await.unwrap().expect("the waiter got the lock");
    let run = b
        .locker
        .lock(&key)
        .wait(Duration::MAX)
        .run(async { 7 })
        .await;
    assert_eq!(run.unwrap(), 7);
}

#[tokio::test]
async fn a_builder_refuses_a_lease_out_of_range() {
    for lease in [Duration::ZERO, Duration::MAX] {
        let built = Locker::builder()
            .url("redis://127.0.0.1:1")
            .lease(lease)
            .build();
        assert!(
            matches!(built, Err(Error::InvalidLease { .. })),
            "{built:?}"
        );
    }
    let memory = Locker::builder().lease(Duration::MAX).build_in_memory();
    assert!(matches!(
        memory.lock("k").await,
        Err(Error::InvalidLease { .. })
    ));
}

on_every_backend! {
    limit: LIMIT;
    late_explicit_release_after_an_operator_force_release:
        a_late_release_of_a_lost_hold_spares_a_newer_hold_in_the_same_scope(Removal::Operator, LetGo::Release);
    late_dropped_guard_after_an_operator_force_release:
        a_late_release_of_a_lost_hold_spares_a_newer_hold_in_the_same_scope(Removal::Operator, LetGo::Drop);
    late_explicit_release_after_a_force_release_here:
        a_late_release_of_a_lost_hold_spares_a_newer_hold_in_the_same_scope(Removal::OwnLocker, LetGo::Release);
    late_dropped_guard_after_a_force_release_here:
        a_late_release_of_a_lost_hold_spares_a_newer_hold_in_the_same_scope(Removal::OwnLocker, LetGo::Drop);
    a_second_run_after_a_lost_one_holds_alone: run_again_after_a_lost_run_in_the_same_scope_holds_the_key_alone;
    durations_at_the_edges: extreme_durations_are_refused_or_honoured;
}

// ---------------------------------------------------------------------------------------------
// Redis only: last fencing tokens that vanish or fall behind, requests whose outcome is unknown
// ---------------------------------------------------------------------------------------------

async fn take_and_release(locker: &Locker, key: &str) -> u64 {
    let guard = locker.lock(key).await.expect("lock");
    let token = guard.fencing_token();
    guard.release().await.expect("release");
    token
}

/// A server restarted without persistence has forgotten every key (tombstones and their last
/// fencing tokens): the next token is still larger than every earlier one (it used to start
/// again at 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_keep_increasing_across_a_restart_without_persistence() {
    let mut server = RedisServer::start();
    let key = unique_key("restart");
    let mut last = 0;
    {
        let locker = server.locker().await;
        for _ in 0..5 {
            let token = take_and_release(&locker, &key).await;
            assert!(token > last);
            last = token;
        }
    }
    server.restart();
    let locker = server.locker().await;
    let after = take_and_release(&locker, &key).await;
    assert!(after > last, "{after} after a restart, {last} before");
}

/// The lock key `P:{K}`: a hold, or the tombstone `-<fencing token> <hold token>` of the last
/// one, kept for the retention.
fn lock_name(key: &str) -> String {
    format!("relock:{{{key}}}")
}

/// The hold token a force-release writes into its tombstone: it names no hold.
const NO_HOLD: &str = "00000000000000000000000000000000";

async fn set_lock_value(admin: &mut redis::aio::MultiplexedConnection, key: &str, value: &str) {
    redis::cmd("SET")
        .arg(lock_name(key))
        .arg(value)
        .arg("PX")
        .arg(600_000)
        .query_async::<()>(admin)
        .await
        .unwrap();
}

/// A key whose last fencing token is gone (the tombstone expired, or was never replicated) or
/// behind (a replica promoted before the last grants reached it: a tombstone or an expired hold
/// with an older token): the next token is still larger. A last token ahead of the clock (the
/// clock stepped back since), in a tombstone or in an expired hold, is followed: the next token
/// is exactly one more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_keep_increasing_when_the_tombstone_is_lost_or_behind() {
    let server = RedisServer::start();
    let locker = server.locker().await;
    let mut admin = server.connection().await;
    let key = unique_key("lost-tombstone");
    let stale = "5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e";
    let mut last = take_and_release(&locker, &key).await;
    for (damage, value) in [
        ("the tombstone deleted", None),
        ("a tombstone behind", Some(format!("-1 {NO_HOLD}"))),
        (
            "an expired hold behind",
            Some(format!("{stale} 1 1 4242 1 stale-host")),
        ),
    ] {
        match value {
            None => redis::cmd("DEL")
                .arg(lock_name(&key))
                .query_async::<()>(&mut admin)
                .await
                .unwrap(),
            Some(value) => set_lock_value(&mut admin, &key, &value).await,
        }
        let token = take_and_release(&locker, &key).await;
        assert!(token > last, "{token} after {damage}, {last} before");
        last = token;
    }
    // A tombstone ahead of the clock (the clock stepped back since): its token wins.
    let ahead = last + 1_000_000_000_000;
    set_lock_value(&mut admin, &key, &format!("-{ahead} {NO_HOLD}")).await;
    // The script's `SET NX` finds the tombstone and the grant is written by a second `SET`, with
    // the tombstone's token + 1: the hold must read back with the token its grant reported, or
    // inspect and a retried request's answer (the same grant again) would give another one.
    let guard = locker.lock(&key).await.unwrap();
    assert_eq!(
        guard.fencing_token(),
        ahead + 1,
        "the grant after a tombstone ahead of the clock"
    );
    let info = locker
        .inspect(&key)
        .await
        .unwrap()
        .expect("the lock is held");
    assert_eq!(
        info.fencing_token,
        ahead + 1,
        "the hold reads back with another token than its grant's"
    );
    guard.release().await.unwrap();
    let value: Option<String> = redis::cmd("GET")
        .arg(lock_name(&key))
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(
        value,
        Some(format!("-{} {}", ahead + 1, info.owner)),
        "the release's tombstone does not keep the hold's fencing token and name the hold"
    );
    assert_eq!(take_and_release(&locker, &key).await, ahead + 2);
    // An expired hold ahead of the clock: its token wins too.
    let further = ahead + 1_000_000;
    set_lock_value(
        &mut admin,
        &key,
        &format!("{stale} {further} 1 4242 1 stale-host"),
    )
    .await;
    assert_eq!(
        take_and_release(&locker, &key).await,
        further + 1,
        "the grant after an expired hold ahead of the clock"
    );
}

/// A hold renewed for far longer than the retention (100 ms, stretched to its 1 s lease) keeps
/// its key at least as long as its remaining lease: grants and renewals set the key's expiry to
/// the retention stretched to the lease, so the key (with the hold and its fencing token) never
/// expires under a live lease. Once the key is gone, the next token is still larger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_keep_the_lock_key_for_at_least_the_remaining_lease() {
    /// `TIME` in a script and the key's expiry are read from two clock readings at most a
    /// millisecond apart, each rounded down to a millisecond.
    const ROUNDING_MS: i64 = 5;
    let server = RedisServer::start();
    let lease = Duration::from_secs(1);
    let locker = Locker::builder()
        .url(server.url())
        .lease(lease)
        .fence_retention(Duration::from_millis(100))
        .build()
        .unwrap();
    let mut admin = server.connection().await;
    let key = unique_key("retention");
    // The key's expiry, its value and the server's clock, read at one instant.
    let read = redis::Script::new(
        "return {redis.call('PTTL', KEYS[1]), redis.call('GET', KEYS[1]), redis.call('TIME')}",
    );
    let guard = locker.lock(&key).await.unwrap();
    let held_until = Instant::now() + 3 * lease;
    let mut samples = 0;
    while Instant::now() < held_until {
        let (pttl, value, (seconds, micros)): (i64, Option<String>, (u64, u64)) = read
            .key(lock_name(&key))
            .invoke_async(&mut admin)
            .await
            .unwrap();
        let value = value.unwrap_or_else(|| {
            panic!(
                "the key of a live hold expired (held: {}, PTTL {pttl})",
                guard.is_held()
            )
        });
        let deadline: i64 = value
            .get(33..)
            .and_then(|rest| rest.split(' ').nth(1))
            .and_then(|deadline| deadline.parse().ok())
            .unwrap_or_else(|| panic!("not a hold: {value}"));
        let left = deadline - (seconds * 1000 + micros / 1000) as i64;
        assert!(
            left > 0 || !guard.is_held(),
            "the guard holds a hold {left} ms past its deadline"
        );
        assert!(
            pttl >= left - ROUNDING_MS,
            "the key of a hold with {left} ms of its lease left expires in {pttl} ms: the \
             retention (100 ms) was not stretched to the lease"
        );
        samples += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        guard.is_held(),
        "the hold was lost while renewed ({samples} samples)"
    );
    let token = guard.fencing_token();
    guard.release().await.unwrap();
    // The tombstone keeps the expiry of the last renewal: gone within a lease.
    let gone_by = Instant::now() + lease + Duration::from_secs(2);
    loop {
        let exists: bool = redis::cmd("EXISTS")
            .arg(lock_name(&key))
            .query_async(&mut admin)
            .await
            .unwrap();
        if !exists {
            break;
        }
        assert!(
            Instant::now() < gone_by,
            "the tombstone outlived the lease-long retention by seconds"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        take_and_release(&locker, &key).await > token,
        "the fencing token went backwards once the key was gone"
    );
}

/// An acquisition whose reply does not come in time may still be granted by the server; it is
/// released in the background instead of holding the key for its whole lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquisition_that_times_out_is_released_in_the_background() {
    let server = RedisServer::start();
    let locker = Locker::builder()
        .url(server.url())
        .response_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let other = server.locker().await;
    let key = unique_key("timed-out");
    take_and_release(&locker, &key).await; // connected, script loaded
    let mut admin = server.connection().await;
    redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(800)
        .arg("ALL")
        .query_async::<()>(&mut admin)
        .await
        .unwrap();
    let attempt = locker.lock(&key).lease(Duration::from_secs(30)).await;
    assert!(matches!(attempt, Err(Error::Backend(_))), "{attempt:?}");
    let start = Instant::now();
    let guard = other
        .lock(&key)
        .wait(Duration::from_secs(10))
        .await
        .expect("the possibly granted hold is released, not left for its 30 s lease");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    guard.release().await.unwrap();
}

/// A release that cannot reach the server is not taken as done: it is retried in the background
/// until the server answers, so the key is free again soon after the line comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_fails_is_retried_in_the_background() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port()).await;
    let locker = Locker::builder()
        .url(proxy.url())
        .response_timeout(Duration::from_millis(200))
        .connect_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let other = server.locker().await;
    let key = unique_key("failed-release");
    let guard = locker
        .lock(&key)
        .lease(Duration::from_secs(30))
        .await
        .unwrap();
    proxy.cut();
    let released = guard.release().await;
    assert!(matches!(released, Err(Error::Backend(_))), "{released:?}");
    // Until the server has answered, this process still counts the key as taken (and answers
    // without asking the server).
    assert!(matches!(locker.try_lock(&key).await, Ok(None)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.restore();
    let start = Instant::now();
    let guard = other
        .lock(&key)
        .wait(Duration::from_secs(10))
        .await
        .expect("the release is retried, not dropped");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    guard.release().await.unwrap();
    let again = locker
        .lock(&key)
        .wait(Duration::from_secs(5))
        .await
        .expect("the slot is free once the release landed");
    again.release().await.unwrap();
}

/// Inside one scope: an acquisition cancelled while its request is queued at the server, then a
/// retry — and the cancelled request's release cannot reach the server at first (the line is cut
/// just after the request went out, and restored once the pause is over). The retry must hold the
/// key alone, and once it lets go nothing of the cancelled request may keep the key: its
/// background release is retried until the server answers (it used to be tried once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_cancelled_acquisition_in_the_same_scope_holds_alone() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port()).await;
    let locker = Locker::builder()
        .url(proxy.url())
        .response_timeout(Duration::from_millis(200))
        .connect_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let other = server.locker().await;
    let (outer, key) = (unique_key("scope"), unique_key("cancelled"));
    take_and_release(&locker, &key).await;
    let mut admin = server.connection().await;
    locker
        .lock(&outer)
        .run(async {
            redis::cmd("CLIENT")
                .arg("PAUSE")
                .arg(300)
                .arg("ALL")
                .query_async::<()>(&mut admin)
                .await
                .unwrap();
            let paused = Instant::now();
            let cancelled = tokio::time::timeout(Duration::from_millis(50), async {
                // The request goes out (and waits at the server); then the line is cut, so the
                // cancelled request's release cannot follow it.
                tokio::join!(
                    std::future::IntoFuture::into_future(locker.lock(&key)),
                    async {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        proxy.cut();
                    }
                )
                .0
            })
            .await;
            assert!(cancelled.is_err(), "the acquisition should still be queued");
            // The pause ends (the server runs the queued request), then the line comes back.
            tokio::time::sleep_until((paused + Duration::from_millis(500)).into()).await;
            proxy.restore();
            let mut attempts = 0;
            let retry = loop {
                attempts += 1;
                match locker.lock(&key).wait(Duration::from_secs(10)).await {
                    Err(Error::Backend(_)) if attempts < 20 => {
                        // The connection the proxy closed is being re-established.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    other => break other.expect("the retry gets the key"),
                }
            };
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert!(retry.is_held());
            assert!(
                !free_for_another_owner(&other, &key).await,
                "another owner took the key from the retry"
            );
            retry.release().await.expect("the retry's hold is intact");
            let start = Instant::now();
            let guard =
                other.lock(&key).wait(Duration::from_secs(10)).await.expect(
                    "the cancelled request's grant is released, not left for its 30 s lease",
                );
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{:?}",
                start.elapsed()
            );
            guard.release().await.unwrap();
        })
        .await
        .expect("outer run");
}

/// A task of this process waits at the server for a key another process holds; an operator
/// force-releases the key through this process's locker (what `force_release` is for). The waiter
/// is woken and granted the key *after* the release, yet gets `Error::Lost`: the slot's `forced`
/// flag, set while the waiter held the slot with no lease, is never cleared between attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_gets_the_key_after_a_force_release_through_its_own_locker() {
    let b = TestBackend::redis().await;
    let key = unique_key("forced-waiter");
    let stuck = b.other.lock(&key).await.unwrap();
    let (locker, k) = (b.locker.clone(), key.clone());
    let waiter = tokio::spawn(async move { locker.lock(&k).wait(Duration::from_secs(10)).await });
    b.until_waiting(&key).await;
    assert!(b.locker.force_release(&key).await.unwrap());
    let got = waiter.await.unwrap();
    assert!(
        got.is_ok(),
        "the waiter was granted after the release but got {got:?}"
    );
    drop(stuck);
}

/// The reply to an acquisition is processed after the lease ended (a stall between the server's
/// grant and the reply being read): another owner takes the key meanwhile, and `lock()` still
/// returns `Ok(guard)` — a guard that is "proof that the caller holds a lock".
#[test]
fn a_grant_read_after_the_lease_ended_is_not_returned_as_a_guard() {
    let server = RedisServer::start();
    let url = server.url();
    let key = unique_key("late-reply");
    let other_holds = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let other = {
        let (url, key, other_holds) = (url.clone(), key.clone(), other_holds.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let other = Locker::connect(&url).await.unwrap();
                ready_tx.send(()).unwrap();
                // Wait until the first owner's grant is there (the key is new: nothing else writes
                // it), then take the key when its lease ends.
                let mut admin = redis::Client::open(url.as_str())
                    .unwrap()
                    .get_multiplexed_async_connection()
                    .await
                    .unwrap();
                let name = format!("relock:{{{key}}}");
                loop {
                    let n: i64 = redis::cmd("EXISTS")
                        .arg(&name)
                        .query_async(&mut admin)
                        .await
                        .unwrap();
                    if n == 1 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let guard = other.lock(&key).wait(Duration::from_secs(2)).await.unwrap();
                other_holds.store(true, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1500)).await;
                other_holds.store(false, Ordering::SeqCst);
                guard.release().await.ok();
            });
        })
    };
    ready_rx.recv().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let locker = Locker::connect(&url).await.unwrap();
        let sync = redis::Client::open(url.as_str()).unwrap();
        let mut sync = sync.get_connection().unwrap();
        let name = format!("relock:{{{key}}}");
        // Stalls this runtime (a blocking call, a pause) once the server has granted the key.
        let stall = tokio::spawn(async move {
            loop {
                tokio::task::yield_now().await;
                let n: i64 = redis::cmd("EXISTS").arg(&name).query(&mut sync).unwrap();
                if n == 1 {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(400));
        });
        let got = locker.lock(&key).lease(Duration::from_millis(50)).await;
        stall.await.unwrap();
        let other_held = other_holds.load(Ordering::SeqCst);
        match got {
            Ok(guard) => panic!(
                "lock() returned Ok(guard) (is_held = {}) while another owner holds = {other_held}",
                guard.is_held()
            ),
            Err(err) => assert!(matches!(err, Error::Lost { .. }), "{err:?}"),
        }
    });
    other.join().unwrap();
}

/// The cluster client may run an acquire script twice (a `MOVED`, `ASK` or timeout after the
/// script ran): the second run of the same hold's request must answer the same grant, with the
/// same fencing token, and write nothing; it must not answer "busy" (the holder would release a
/// hold it has), nor a new token. Checked on the scripts themselves, run the way relock sends
/// them: the lone `acquire.lua` and the batch script, with a tombstone ahead of the clock at the
/// key (the script's `SET NX … GET` finds it, and the grant is a second `SET` with the
/// tombstone's token + 1), after a refusal marked the hold, and on a server out of memory (where
/// the script's `SET` is refused and the lock is read instead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquisition_run_twice_answers_the_same_grant() {
    let acquire = redis::Script::new(include_str!("../../relock/src/scripts/acquire.lua"));
    let batch = redis::Script::new(include_str!("../../relock/src/scripts/batch.lua"));
    let server = RedisServer::start();
    let mut admin = server.connection().await;
    let holder = "4242 1764000000000 testhost";
    let alone = async |admin: &mut redis::aio::MultiplexedConnection, lock: &str, token: &str| {
        acquire
            .key(lock)
            .arg(token)
            .arg(30_000)
            .arg(600_000)
            .arg(holder)
            .invoke_async::<(i64, u64)>(admin)
            .await
            .expect("acquire.lua")
    };
    let batched = async |admin: &mut redis::aio::MultiplexedConnection, lock: &str, token: &str| {
        // No releases; the one acquisition beside another on a fresh key (whose answer, a
        // grant or, out of memory, an error, is not looked at).
        let other = unique_key("beside");
        let (status, fence, _, _): (i64, u64, i64, redis::Value) = batch
            .key(lock)
            .key(format!("relock:{{{other}}}"))
            .arg(holder)
            .arg(30_000)
            .arg(600_000)
            .arg(0)
            .arg(token)
            .arg(format!("{:032x}", 7u128))
            .invoke_async(admin)
            .await
            .expect("batch.lua");
        (status, fence)
    };
    let ahead = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
        + 3_600_000_000;
    for (n, how) in ["alone", "batched"].into_iter().enumerate() {
        let key = unique_key(how);
        let lock = format!("relock:{{{key}}}");
        redis::cmd("SET")
            .arg(&lock)
            .arg(format!("-{ahead} {NO_HOLD}"))
            .arg("PX")
            .arg(600_000)
            .query_async::<()>(&mut admin)
            .await
            .unwrap();
        let token = format!("{:032x}", 0xabc0 + n as u128);
        let run = async |admin: &mut redis::aio::MultiplexedConnection| match how {
            "alone" => alone(admin, &lock, &token).await,
            _ => batched(admin, &lock, &token).await,
        };
        let first = run(&mut admin).await;
        assert_eq!(first, (1, ahead + 1), "{how}: the first run's grant");
        let value = async |admin: &mut redis::aio::MultiplexedConnection| {
            redis::cmd("GET")
                .arg(&lock)
                .query_async::<String>(admin)
                .await
                .unwrap()
        };
        let written = value(&mut admin).await;
        assert_eq!(
            run(&mut admin).await,
            first,
            "{how}: a second run answered another grant"
        );
        assert_eq!(
            value(&mut admin).await,
            written,
            "{how}: a second run rewrote the hold"
        );
        // A refusal marks the hold; its own retry still gets the same grant.
        let refused = alone(&mut admin, &lock, &format!("{:032x}", 0xdef)).await;
        assert_eq!(refused.0, 0, "{how}: another hold was not refused");
        assert_eq!(run(&mut admin).await, first, "{how}: a retry after a mark");
        // Out of memory: the script's first write is refused; the retry reads the lock instead.
        for (setting, value) in [("maxmemory-policy", "noeviction"), ("maxmemory", "1")] {
            redis::cmd("CONFIG")
                .arg("SET")
                .arg(setting)
                .arg(value)
                .query_async::<()>(&mut admin)
                .await
                .unwrap();
        }
        let out_of_memory = run(&mut admin).await;
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg(0)
            .query_async::<()>(&mut admin)
            .await
            .unwrap();
        assert_eq!(
            out_of_memory, first,
            "{how}: a retry on a server out of memory"
        );
    }
}
