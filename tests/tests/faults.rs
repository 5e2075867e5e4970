//! Faults: the server dies under a holder or is down at acquire, a holder process is killed, a
//! holder task is cancelled, panics or drops its guard, and a task waits for a lock it holds
//! itself.
//!
//! Every Redis test has a private server (several kill and restart it). "Another owner" on Redis
//! is a second `Locker`, so it contends through the server as another process would; an in-memory
//! store belongs to one `Locker`, so there it is a clone used from another task.

use std::future::{Future, IntoFuture};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use relock::{Error, Locker};
use relock_tests::{
    bounded, command_stats, on_every_backend, release_channel, subscribers, unique_key,
    until_subscribed, RedisServer, TestBackend,
};

/// How soon a lock given up by a cancelled, panicking or dropping holder must be free again.
const FREED_WITHIN: Duration = Duration::from_millis(500);
/// The wait of requests expected to fail with `WouldDeadlock`.
const DEADLOCK_WAIT: Duration = Duration::from_millis(300);
/// Far above the locker's 2 s connect and response timeouts.
const BACKEND_ERROR_WITHIN: Duration = Duration::from_secs(6);
/// A hung lock operation fails its test instead of stalling the run.
const TEST_LIMIT: Duration = Duration::from_secs(60);

on_every_backend! {
    limit: TEST_LIMIT;
    cancelling_a_task_inside_run_frees_the_lock_within_500ms: cancelling_frees_the_lock;
    a_panic_inside_run_propagates_and_frees_the_lock_within_500ms: a_panic_frees_the_lock;
    a_guard_dropped_without_release_frees_the_lock_within_500ms: dropping_frees_the_lock;
    waiting_on_own_unscoped_guard_in_the_root_future_reports_would_deadlock:
        own_guard_in_the_root_future;
    waiting_on_own_unscoped_guard_in_a_spawned_task_reports_would_deadlock:
        own_guard_in_a_spawned_task;
    joined_siblings_waiting_for_each_other_never_report_would_deadlock:
        joined_siblings_wait_for_each_other;
    a_joined_sibling_outwaited_by_a_bare_guard_waits_its_whole_deadline:
        a_joined_sibling_waits_its_whole_deadline;
    nested_locks_inside_run_re_enter_instead_of_reporting_would_deadlock:
        nested_locks_inside_run_re_enter;
}

// ---------------------------------------------------------------------------------------------
// The server dies
// ---------------------------------------------------------------------------------------------

/// Retries `attempt` while it fails with `Error::Backend`, for up to 5 s: the time a reconnecting
/// locker may take after the server came back.
async fn once_the_server_is_back<T, F, Fut>(what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(Error::Backend(err)) if Instant::now() < deadline => {
                eprintln!("{what}: not yet: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("{what} failed 5 s after the server came back: {err:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_loses_the_hold_by_its_local_deadline() {
    const LEASE: Duration = Duration::from_secs(1);
    bounded(TEST_LIMIT, async {
        let mut server = RedisServer::start();
        let locker = server.locker().await;
        let key = unique_key("server-killed");
        let guard = locker.lock(&key).lease(LEASE).await.expect("lock");
        let acquired = Instant::now();
        server.kill();

        // Not before the lease could have ended: renewals fail, but that proves nothing lost yet.
        tokio::time::sleep_until((acquired + LEASE.mul_f64(0.9)).into()).await;
        assert!(
            guard.is_held(),
            "the hold was given up {:?} into a {LEASE:?} lease",
            acquired.elapsed()
        );
        tokio::time::timeout(Duration::from_secs(5), guard.lost())
            .await
            .expect("lost() resolves once the local deadline passes");
        let after = acquired.elapsed();
        eprintln!("lost {after:?} after acquiring, with the server dead");
        assert!(
            after >= LEASE.mul_f64(0.9),
            "lost only {after:?} after acquiring a {LEASE:?} lease"
        );
        assert!(
            after <= Duration::from_millis(1500),
            "lost {after:?} after acquiring a {LEASE:?} lease: past the local deadline"
        );
        assert!(!guard.is_held());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_server_restart_the_same_locker_takes_locks_again() {
    bounded(TEST_LIMIT, async {
        let mut server = RedisServer::start();
        let locker = server.locker().await;
        let key = unique_key("restarted");
        let wiped = locker
            .lock(&key)
            .lease(Duration::from_secs(1))
            .await
            .expect("lock");
        server.restart();

        let other_key = unique_key("after-restart");
        let guard = once_the_server_is_back("lock after the restart", || {
            locker.lock(&other_key).wait(Duration::ZERO).into_future()
        })
        .await;
        assert!(guard.is_held());
        guard.release().await.expect("release after the restart");

        // The restart emptied the server: the old hold is lost, its release says so, and its
        // key can be taken again through the same locker.
        tokio::time::timeout(Duration::from_secs(3), wiped.lost())
            .await
            .expect("the wiped hold is noticed as lost");
        let released = wiped.release().await;
        assert!(
            matches!(released, Err(Error::Lost { .. })),
            "release of a hold the restart wiped returned {released:?}, expected Error::Lost"
        );
        let again = locker
            .lock(&key)
            .wait(Duration::from_secs(2))
            .await
            .expect("the wiped key can be taken again");
        again.release().await.expect("release");
    })
    .await;
}

/// One handoff on Redis, checking that the waiter sleeps subscribed and silent: the holder takes
/// `key` with a 30 s lease, the waiter waits (up to 10 s), and the holder releases. Returns the
/// time from the start of `release()` to the waiter's lock resolving.
async fn handoff(server: &RedisServer, holder: &Locker, waiter: &Locker, key: &str) -> Duration {
    let mut admin = server.connection().await;
    let guard = holder
        .lock(key)
        .lease(Duration::from_secs(30))
        .await
        .expect("the holder takes the lock");
    let (waiter, waiter_key) = (waiter.clone(), key.to_owned());
    let waiting = tokio::spawn(async move {
        let taken = waiter.lock(&waiter_key).wait(Duration::from_secs(10)).await;
        (taken, Instant::now())
    });
    until_subscribed(&mut admin, key).await;
    // Past the retry that follows the confirmed subscription, the waiter sends nothing.
    tokio::time::sleep(Duration::from_millis(20)).await;
    server.reset_stats().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let polled: Vec<_> = command_stats(&mut admin)
        .await
        .into_iter()
        .filter(|(name, _)| name.starts_with("eval"))
        .collect();
    assert!(polled.is_empty(), "the waiter polls: {polled:?}");

    let released_at = Instant::now();
    guard.release().await.expect("the holder releases");
    let (taken, taken_at) = waiting.await.expect("the waiter panicked");
    let taken = taken.expect("the waiter gets the lock once it is released");
    taken.release().await.expect("the waiter releases");
    taken_at - released_at
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_server_restart_waiters_are_woken_by_release_messages_again() {
    bounded(TEST_LIMIT, async {
        let mut server = RedisServer::start();
        let holder = server.locker().await;
        let waiter = server.locker().await;
        let key = unique_key("handoff-restart");
        // The waiter's subscriber connection exists when the server dies.
        let before = handoff(&server, &holder, &waiter, &key).await;
        server.restart();

        // A probe that fails while the server comes back has an unknown outcome: its release is
        // repeated in the background until twice its lease has passed (see `Locker`'s background
        // releases). Short probe leases keep those repeats out of the handoffs' silence checks.
        const PROBE_LEASE: Duration = Duration::from_millis(300);
        for locker in [&holder, &waiter] {
            let probe = unique_key("probe");
            let guard = once_the_server_is_back("lock after the restart", || {
                locker
                    .lock(&probe)
                    .wait(Duration::ZERO)
                    .lease(PROBE_LEASE)
                    .into_future()
            })
            .await;
            guard.release().await.expect("release");
        }
        tokio::time::sleep(PROBE_LEASE * 3).await;
        let mut after = Vec::new();
        for _ in 0..5 {
            after.push(handoff(&server, &holder, &waiter, &key).await);
        }
        after.sort();
        let median = after[after.len() / 2];
        eprintln!("handoff before the restart {before:?}, after: {after:?}");
        assert!(
            median < Duration::from_millis(50),
            "handoffs after the restart took {after:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquiring_while_the_server_is_down_fails_with_a_backend_error_within_6s() {
    bounded(TEST_LIMIT, async {
        let mut server = RedisServer::start();
        let locker = server.locker().await;
        let key = unique_key("server-down");
        locker
            .lock(&key)
            .await
            .expect("lock")
            .release()
            .await
            .expect("release");
        server.kill();

        async fn backend_error<T: std::fmt::Debug>(
            what: &str,
            request: impl Future<Output = Result<T, Error>>,
        ) {
            let started = Instant::now();
            let result = tokio::time::timeout(Duration::from_secs(20), request)
                .await
                .unwrap_or_else(|_| panic!("{what} hung while the server was down"));
            let took = started.elapsed();
            eprintln!("{what} with the server down: {took:?}");
            assert!(
                matches!(result, Err(Error::Backend(_))),
                "{what} with the server down returned {result:?}, expected Error::Backend"
            );
            assert!(
                took < BACKEND_ERROR_WITHIN,
                "{what} took {took:?} to fail with the server down"
            );
        }
        backend_error(
            "lock",
            locker
                .lock(&key)
                .wait(Duration::from_secs(10))
                .into_future(),
        )
        .await;
        backend_error("try_lock", locker.try_lock(&key)).await;
        let mut ran = false;
        backend_error("run", locker.lock(&key).run(async { ran = true })).await;
        assert!(!ran, "run ran its body without the lock");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_fails_with_a_backend_error_when_the_server_dies_mid_wait() {
    bounded(TEST_LIMIT, async {
        let mut server = RedisServer::start();
        let holder = server.locker().await;
        let waiter = server.locker().await;
        let mut admin = server.connection().await;
        let key = unique_key("dies-mid-wait");
        let guard = holder
            .lock(&key)
            .lease(Duration::from_secs(30))
            .await
            .expect("lock");
        let waiter_key = key.clone();
        let waiting =
            tokio::spawn(
                async move { waiter.lock(&waiter_key).wait(Duration::from_secs(20)).await },
            );
        while subscribers(&mut admin, &release_channel(&key)).await == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        server.kill();
        let killed_at = Instant::now();

        let result = tokio::time::timeout(Duration::from_secs(25), waiting)
            .await
            .expect("the waiter hung after the server died")
            .expect("the waiter panicked");
        let took = killed_at.elapsed();
        eprintln!("waiter failed {took:?} after the server died: {result:?}");
        assert!(
            matches!(result, Err(Error::Backend(_))),
            "a waiter whose server died returned {result:?}, expected Error::Backend"
        );
        assert!(
            took < BACKEND_ERROR_WITHIN,
            "the waiter took {took:?} to notice that the server died"
        );
        drop(guard);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// The holder process is killed
// ---------------------------------------------------------------------------------------------

/// The `hold_lock` process; killed when dropped, so a failing test leaves no holder behind.
struct Holder(Child);

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_held_by_a_killed_process_frees_when_its_lease_ends_and_not_before() {
    const LEASE: Duration = Duration::from_secs(2);
    bounded(TEST_LIMIT, async {
        let server = RedisServer::start();
        let locker = server.locker().await;
        let key = unique_key("killed-process");
        let mut holder = Holder(
            Command::new(env!("CARGO_BIN_EXE_hold_lock"))
                .arg(server.url())
                .arg(&key)
                .arg(LEASE.as_millis().to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn hold_lock"),
        );
        let stdout = holder.0.stdout.take().expect("piped stdout");
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        });
        let line = tokio::time::timeout(Duration::from_secs(20), line)
            .await
            .expect("hold_lock took the lock within 20 s")
            .expect("the reader thread panicked")
            .expect("read hold_lock's stdout");
        let token: u64 = line
            .strip_prefix("HELD ")
            .and_then(|token| token.trim().parse().ok())
            .unwrap_or_else(|| panic!("hold_lock printed {line:?}, expected `HELD <token>`"));
        let pid = holder.0.id();

        // A live holder renews: the lock outlives its first lease.
        tokio::time::sleep(LEASE + Duration::from_millis(300)).await;
        let inspected_at = Instant::now();
        let info = locker
            .inspect(&key)
            .await
            .expect("inspect")
            .expect("the live holder still holds the lock past its first lease");
        assert_eq!(info.pid, Some(pid), "held by another process: {info:?}");
        assert_eq!(info.fencing_token, token);
        let ttl = info.ttl;

        holder.0.kill().expect("SIGKILL hold_lock");
        holder.0.wait().expect("reap hold_lock");
        let killed_at = Instant::now();

        // Nothing runs in a killed process: no background release frees the lock early.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let still = locker.inspect(&key).await.expect("inspect");
        assert_eq!(
            still.as_ref().map(|info| (&info.owner, info.fencing_token)),
            Some((&info.owner, token)),
            "the killed process's lock was released early: {still:?}"
        );

        let guard = locker
            .lock(&key)
            .wait(LEASE + Duration::from_secs(5))
            .await
            .expect("another owner takes the lock once the killed holder's lease ends");
        let taken_at = Instant::now();
        let after_kill = taken_at - killed_at;
        let free_from = inspected_at + ttl;
        eprintln!(
            "ttl {ttl:?} at the kill; taken {after_kill:?} after the kill, {:?} after the ttl \
             ran out",
            taken_at.saturating_duration_since(free_from)
        );
        assert!(
            taken_at + Duration::from_millis(20) >= free_from,
            "taken {:?} before the killed holder's lease ran out",
            free_from - taken_at
        );
        assert!(
            after_kill <= LEASE + Duration::from_secs(1),
            "taken only {after_kill:?} after the kill, with a {LEASE:?} lease"
        );
        assert!(guard.fencing_token() > token);
        guard.release().await.expect("release");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// The holder task is cancelled, panics, or drops its guard
// ---------------------------------------------------------------------------------------------

/// Another owner takes `key` with a wait of [`FREED_WITHIN`].
async fn assert_free_within_500ms(b: &TestBackend, key: &str, after: &str) {
    let (other, other_key) = (b.other.clone(), key.to_owned());
    let started = Instant::now();
    let taken = tokio::spawn(async move { other.lock(&other_key).wait(FREED_WITHIN).await })
        .await
        .expect("the other owner panicked");
    let guard = taken.unwrap_or_else(|err| {
        panic!("another owner could not take the lock within {FREED_WITHIN:?} {after}: {err}")
    });
    eprintln!("free {:?} {after}", started.elapsed());
    guard.release().await.expect("release");
}

async fn cancelling_frees_the_lock(b: &TestBackend) {
    let key = unique_key("cancelled");
    let (entered_tx, entered_rx) = tokio::sync::oneshot::channel();
    let (locker, task_key) = (b.locker.clone(), key.clone());
    let task = tokio::spawn(async move {
        locker
            .lock(&task_key)
            .run(async {
                let _ = entered_tx.send(());
                std::future::pending::<()>().await;
            })
            .await
    });
    entered_rx.await.expect("the body started");
    task.abort();
    let err = task.await.expect_err("the task was aborted");
    assert!(err.is_cancelled(), "{err:?}");
    assert_free_within_500ms(b, &key, "after the cancellation").await;
}

async fn a_panic_frees_the_lock(b: &TestBackend) {
    const MESSAGE: &str = "the body panics on purpose";
    let key = unique_key("panicked");
    let (locker, task_key) = (b.locker.clone(), key.clone());
    let task = tokio::spawn(async move {
        locker
            .lock(&task_key)
            .run(async {
                tokio::task::yield_now().await;
                panic!("{MESSAGE}");
            })
            .await
    });
    let err = task.await.expect_err("the panic propagates out of run");
    assert!(err.is_panic(), "{err:?}");
    let payload = err.into_panic();
    let message = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied());
    assert_eq!(message, Some(MESSAGE), "the panic's payload changed");
    assert_free_within_500ms(b, &key, "after the panic").await;
}

async fn dropping_frees_the_lock(b: &TestBackend) {
    let key = unique_key("dropped");
    let guard = b.locker.lock(&key).await.expect("lock");
    drop(guard);
    assert_free_within_500ms(b, &key, "after the drop").await;
}

// ---------------------------------------------------------------------------------------------
// A task waits for a lock it holds itself
// ---------------------------------------------------------------------------------------------

async fn assert_own_guard_would_deadlock(locker: &Locker, key: &str) {
    let guard = locker.lock(key).await.expect("lock");
    let started = Instant::now();
    let result = locker.lock(key).wait(DEADLOCK_WAIT).await;
    assert!(
        matches!(result, Err(Error::WouldDeadlock { .. })),
        "waiting on this task's own unscoped guard returned {result:?}, expected WouldDeadlock"
    );
    assert!(
        started.elapsed() < DEADLOCK_WAIT + Duration::from_secs(2),
        "WouldDeadlock took {:?}",
        started.elapsed()
    );
    assert!(guard.is_held());
    guard.release().await.expect("release");
}

/// In the test's own body, as in a user's `#[tokio::main]`: a future driven by `block_on`.
async fn own_guard_in_the_root_future(b: &TestBackend) {
    assert_own_guard_would_deadlock(&b.locker, &unique_key("deadlock-root")).await;
}

async fn own_guard_in_a_spawned_task(b: &TestBackend) {
    let locker = b.locker.clone();
    tokio::spawn(async move {
        assert_own_guard_would_deadlock(&locker, &unique_key("deadlock-task")).await;
    })
    .await
    .expect("the task panicked");
}

async fn joined_siblings_wait_for_each_other(b: &TestBackend) {
    let key = unique_key("siblings");
    let locker = &b.locker;
    let (first, second) = tokio::join!(
        async {
            let guard = locker.lock(&key).await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
            guard.release().await
        },
        async {
            // Once the first holds it, so that the wait is on a guard of this very task.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let guard = locker.lock(&key).wait(Duration::from_secs(2)).await?;
            guard.release().await
        },
    );
    first.expect("the first sibling");
    second.expect("the second sibling gets the lock once the first releases it");
}

/// A sibling's wait is a legitimate one, so it is never cut short: it lasts its whole `wait`.
/// When it ends while the other sibling still holds a bare guard, the two futures cannot be told
/// apart from a self-deadlock inside the task (a guard is not a future: nothing shows whether its
/// owner encloses the waiter or runs beside it), and the error is the one the contract gives for
/// that case, `WouldDeadlock`, at the deadline.
async fn a_joined_sibling_waits_its_whole_deadline(b: &TestBackend) {
    let key = unique_key("sibling-timeout");
    let locker = &b.locker;
    let (first, second) = tokio::join!(
        async {
            let guard = locker.lock(&key).await?;
            tokio::time::sleep(DEADLOCK_WAIT * 2).await;
            guard.release().await
        },
        async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let start = Instant::now();
            let result = locker.lock(&key).wait(DEADLOCK_WAIT).await.map(drop);
            (result, start.elapsed())
        },
    );
    first.expect("the first sibling");
    let (second, waited) = second;
    assert!(
        matches!(second, Err(Error::WouldDeadlock { .. })),
        "expected WouldDeadlock at the deadline, got {second:?}"
    );
    assert!(
        waited >= DEADLOCK_WAIT,
        "a sibling's wait was cut short after {waited:?} (wait {DEADLOCK_WAIT:?})"
    );
}

async fn nested_locks_inside_run_re_enter(b: &TestBackend) {
    let key = unique_key("nested");
    let locker = &b.locker;
    let nested = locker
        .lock(&key)
        .run(async {
            let inner = locker.lock(&key).wait(DEADLOCK_WAIT).await?;
            assert!(inner.is_reentrant());
            let deeper = locker
                .lock(&key)
                .wait(DEADLOCK_WAIT)
                .run(async {
                    let deepest = locker.lock(&key).wait(DEADLOCK_WAIT).await?;
                    assert!(deepest.is_reentrant());
                    deepest.release().await
                })
                .await;
            inner.release().await?;
            deeper?
        })
        .await;
    nested
        .expect("the outer run")
        .expect("nested locks re-enter the scope's hold");
}
