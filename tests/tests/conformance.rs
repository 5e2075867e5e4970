//! The conformance suite: every behaviour of relock's contract, run against a private Redis server
//! (`redis::*`), against the in-memory backend (`memory::*`), and, for the core behaviours, through
//! a bb8 pool the application hands in (`redis_pool::*`), over TLS (`redis_tls::*`) and as an ACL
//! user with the documented least-privilege rules (`redis_acl::*`).
//!
//! Each behaviour is one `async fn(&TestBackend)` below; the macros at the bottom turn it into one
//! test per backend, each on a two-worker multi-thread runtime of its own that fails the test
//! (instead of hanging the run) if the body or the runtime's shutdown never finishes. "Another
//! owner" is always code in another task (or, on Redis, another `Locker` with its own connection),
//! so that the same body means the same thing on every backend.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use relock::{Error, InvalidKeyReason, LockGuard, Locker};
use relock_tests::{unique_key, BackendKind, RedisServer, TestBackend};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The wait given to requests that are expected to time out.
const WAIT: Duration = Duration::from_millis(300);
/// The wait given to requests that are expected to succeed: long enough for a busy machine.
const LONG_WAIT: Duration = Duration::from_secs(20);
/// Added to lower bounds to make upper bounds: the suite runs on slow, shared machines, so
/// "no earlier than" is strict and "no later than" is loose.
const SLACK: Duration = Duration::from_secs(5);
/// How long a dropped guard's background release may take on Redis before the test fails.
const BACKGROUND_RELEASE: Duration = Duration::from_millis(500);
/// A hung lock operation (or background task) fails its test instead of hanging the run.
const TEST_LIMIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// The backends
// ---------------------------------------------------------------------------------------------

/// How long a guard dropped without `release` may keep the lock: the in-memory backend
/// releases inside `drop`, Redis through the locker's background task.
fn background_release(b: &TestBackend) -> Duration {
    match b.kind() {
        BackendKind::Memory => Duration::ZERO,
        BackendKind::Redis
        | BackendKind::RedisPool
        | BackendKind::Cluster
        | BackendKind::RedisTls
        | BackendKind::RedisAcl => BACKGROUND_RELEASE,
    }
}

/// A value read and written with an `.await` in between, so two unexcluded writers lose updates.
#[derive(Clone)]
enum Counter {
    Redis {
        connection: ::redis::aio::MultiplexedConnection,
        key: String,
    },
    Local(Arc<AtomicU64>),
}

impl Counter {
    /// A counter that loses updates unless its users exclude each other: a Redis string on the
    /// test's server, or an in-process value.
    async fn new(b: &TestBackend, name: &str) -> Counter {
        match b.server() {
            Some(server) => Counter::Redis {
                connection: server.connection().await,
                key: format!("counter:{name}"),
            },
            None => Counter::Local(Arc::default()),
        }
    }

    async fn get(&mut self) -> u64 {
        match self {
            Counter::Redis { connection, key } => ::redis::cmd("GET")
                .arg(&*key)
                .query_async::<Option<u64>>(connection)
                .await
                .expect("GET the counter")
                .unwrap_or(0),
            Counter::Local(value) => {
                let read = value.load(Ordering::SeqCst);
                tokio::task::yield_now().await;
                read
            }
        }
    }

    async fn set(&mut self, value: u64) {
        match self {
            Counter::Redis { connection, key } => ::redis::cmd("SET")
                .arg(&*key)
                .arg(value)
                .query_async::<()>(connection)
                .await
                .expect("SET the counter"),
            Counter::Local(stored) => {
                tokio::task::yield_now().await;
                stored.store(value, Ordering::SeqCst);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A lock held through `run` by another task until [`HeldElsewhere::release`].
struct HeldElsewhere {
    token: u64,
    release: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl HeldElsewhere {
    async fn release(self) {
        let _ = self.release.send(());
        self.task.await.expect("the holder task panicked");
    }
}

async fn hold_elsewhere(locker: &Locker, key: &str) -> HeldElsewhere {
    let (locker, key) = (locker.clone(), key.to_owned());
    let (held_tx, held_rx) = oneshot::channel();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let inner = locker.clone();
        let inner_key = key.clone();
        locker
            .lock(&key)
            .wait(LONG_WAIT)
            .run(async move {
                let guard = inner
                    .lock(&inner_key)
                    .await
                    .expect("re-enter the held lock");
                let _ = held_tx.send(guard.fencing_token());
                drop(guard);
                let _ = release_rx.await;
            })
            .await
            .expect("the holder's run failed");
    });
    let token = held_rx
        .await
        .expect("the holder task failed before taking the lock");
    HeldElsewhere {
        token,
        release: release_tx,
        task,
    }
}

/// `try_lock` by a fresh owner in another task (no scope inherited).
async fn try_lock_elsewhere(locker: &Locker, key: &str) -> Option<LockGuard> {
    let (locker, key) = (locker.clone(), key.to_owned());
    tokio::spawn(async move { locker.try_lock(&key).await.expect("try_lock") })
        .await
        .expect("the try_lock task panicked")
}

/// `lock` by a fresh owner in another task (no scope inherited).
async fn lock_elsewhere(locker: &Locker, key: &str, wait: Duration) -> Result<LockGuard, Error> {
    let (locker, key) = (locker.clone(), key.to_owned());
    tokio::spawn(async move { locker.lock(&key).wait(wait).await })
        .await
        .expect("the lock task panicked")
}

/// Polls `inspect` until the key is free; `within` zero checks once.
async fn wait_until_free(locker: &Locker, key: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if locker.inspect(key).await.expect("inspect").is_none() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn assert_strictly_increasing(tokens: &[u64]) {
    for pair in tokens.windows(2) {
        assert!(
            pair[0] < pair[1],
            "fencing tokens must strictly increase, got {tokens:?}"
        );
    }
}

fn assert_timeout<T: Debug>(result: Result<T, Error>, wait: Duration, what: &str) {
    match result {
        Err(Error::Timeout { waited, .. }) => {
            assert!(
                waited >= wait,
                "{what}: Timeout reports waited {waited:?} < {wait:?}"
            )
        }
        other => panic!("{what}: expected Error::Timeout, got {other:?}"),
    }
}

fn assert_lost<T: Debug>(result: Result<T, Error>, what: &str) {
    assert!(
        matches!(result, Err(Error::Lost { .. })),
        "{what}: expected Error::Lost, got {result:?}"
    );
}

fn assert_elapsed_between(elapsed: Duration, at_least: Duration, what: &str) {
    assert!(
        elapsed >= at_least,
        "{what}: took {elapsed:?}, earlier than {at_least:?}"
    );
    assert!(
        elapsed < at_least + SLACK,
        "{what}: took {elapsed:?}, far longer than {at_least:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Exclusion and fencing
// ---------------------------------------------------------------------------------------------

async fn concurrent_lockers_never_lose_an_update(b: &TestBackend) {
    const WORKERS: usize = 8;
    const ROUNDS: u64 = 10;
    let key = unique_key("exclusion");
    let counter = Counter::new(b, &key).await;
    let inside = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for locker in b.lockers(WORKERS).await {
        let (key, mut counter, inside) = (key.clone(), counter.clone(), inside.clone());
        workers.push(tokio::spawn(async move {
            for round in 0..ROUNDS {
                let request = locker.lock(&key).wait(LONG_WAIT);
                if round % 2 == 0 {
                    request
                        .run(increment(&mut counter, &inside))
                        .await
                        .expect("run");
                } else {
                    let guard = request.await.expect("lock");
                    increment(&mut counter, &inside).await;
                    guard.release().await.expect("release");
                }
            }
        }));
    }
    for worker in workers {
        worker.await.expect("a worker panicked");
    }
    assert_eq!(counter.clone().get().await, WORKERS as u64 * ROUNDS);
}

async fn increment(counter: &mut Counter, inside: &AtomicUsize) {
    assert_eq!(
        inside.fetch_add(1, Ordering::SeqCst),
        0,
        "two owners were inside the lock at once"
    );
    let value = counter.get().await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    counter.set(value + 1).await;
    inside.fetch_sub(1, Ordering::SeqCst);
}

async fn fencing_tokens_strictly_increase_across_owners_and_lockers(b: &TestBackend) {
    let key = unique_key("fencing");
    let lockers = b.lockers(3).await;
    let clock_before = micros_since_epoch();
    let mut tokens = Vec::new();
    for round in 0..3 {
        for locker in &lockers {
            let token = if round == 1 {
                locker
                    .lock(&key)
                    .run(async { locker.lock(&key).await.expect("re-enter").fencing_token() })
                    .await
                    .expect("run")
            } else {
                let guard = locker.lock(&key).await.expect("lock");
                let token = guard.fencing_token();
                guard.release().await.expect("release");
                token
            };
            tokens.push(token);
        }
    }
    assert_strictly_increasing(&tokens);
    assert!(
        tokens[0] >= clock_before,
        "the clock is mixed into every token: {} < {clock_before}",
        tokens[0]
    );
}

fn micros_since_epoch() -> u64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is past 1970");
    u64::try_from(since.as_micros()).expect("fits")
}

async fn concurrent_acquisitions_get_increasing_fencing_tokens(b: &TestBackend) {
    let key = unique_key("fencing-concurrent");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for locker in b.lockers(4).await {
        let (key, seen) = (key.clone(), seen.clone());
        workers.push(tokio::spawn(async move {
            for _ in 0..5 {
                let guard = locker.lock(&key).wait(LONG_WAIT).await.expect("lock");
                seen.lock().unwrap().push(guard.fencing_token());
                tokio::task::yield_now().await;
                guard.release().await.expect("release");
            }
        }));
    }
    for worker in workers {
        worker.await.expect("a worker panicked");
    }
    let tokens = seen.lock().unwrap().clone();
    assert_eq!(tokens.len(), 20);
    assert_strictly_increasing(&tokens);
}

async fn reentrant_guard_carries_the_outer_fencing_token(b: &TestBackend) {
    let locker = &b.locker;
    let key = unique_key("fencing-reentrant");
    let mut earlier = 0;
    for _ in 0..2 {
        let guard = locker.lock(&key).await.expect("lock");
        earlier = guard.fencing_token();
        guard.release().await.expect("release");
    }
    locker
        .lock(&key)
        .run(async {
            let held = locker.inspect(&key).await.expect("inspect").expect("held");
            assert!(held.fencing_token > earlier);
            let nested = locker.lock(&key).await.expect("re-enter");
            assert!(nested.is_reentrant());
            assert_eq!(nested.fencing_token(), held.fencing_token);
            let tried = locker
                .try_lock(&key)
                .await
                .expect("try_lock")
                .expect("try_lock re-enters the scope's hold");
            assert!(tried.is_reentrant());
            assert_eq!(tried.fencing_token(), held.fencing_token);
            let deeper = locker
                .lock(&key)
                .run(async { locker.lock(&key).await.expect("re-enter").fencing_token() })
                .await
                .expect("nested run");
            assert_eq!(deeper, held.fencing_token);
            let info = locker.inspect(&key).await.expect("inspect").expect("held");
            assert_eq!(
                info.holds, 1,
                "nesting in one scope never reaches the backend"
            );
            assert_eq!(info.fencing_token, held.fencing_token);
        })
        .await
        .expect("run");
}

// ---------------------------------------------------------------------------------------------
// try_lock and waiting
// ---------------------------------------------------------------------------------------------

async fn try_lock_takes_a_free_lock(b: &TestBackend) {
    let locker = &b.locker;
    let key = unique_key("try-free");
    for _ in 0..2 {
        let guard = locker
            .try_lock(&key)
            .await
            .expect("try_lock")
            .expect("a free lock is taken");
        assert!(!guard.is_reentrant());
        assert!(guard.is_held());
        let info = locker.inspect(&key).await.expect("inspect").expect("held");
        assert_eq!(info.fencing_token, guard.fencing_token());
        guard.release().await.expect("release");
    }
}

async fn try_lock_never_waits_for_a_lock_held_by_another_owner(b: &TestBackend) {
    let locker = &b.locker;
    // Held through this very locker (another task) and through another locker.
    for holder_locker in [locker.clone(), b.another_locker().await] {
        let key = unique_key("try-held");
        let holder = hold_elsewhere(&holder_locker, &key).await;
        let started = Instant::now();
        for _ in 0..10 {
            let attempt = locker.try_lock(&key).await.expect("try_lock");
            assert!(
                attempt.is_none(),
                "try_lock took a lock held by another owner"
            );
        }
        let elapsed = started.elapsed();
        assert!(
            elapsed < Duration::from_secs(2),
            "10 try_locks on a held lock took {elapsed:?}: try_lock must never wait"
        );
        holder.release().await;
        let guard = locker
            .try_lock(&key)
            .await
            .expect("try_lock")
            .expect("free again after the holder released");
        guard.release().await.expect("release");
    }
}

async fn waiting_past_the_wait_fails_with_timeout(b: &TestBackend) {
    let locker = &b.locker;
    for holder_locker in [locker.clone(), b.another_locker().await] {
        let key = unique_key("timeout");
        let holder = hold_elsewhere(&holder_locker, &key).await;

        let started = Instant::now();
        let result = locker.lock(&key).wait(WAIT).await;
        assert_elapsed_between(started.elapsed(), WAIT, "lock on a held key");
        assert_timeout(result, WAIT, "lock on a held key");

        let ran = AtomicBool::new(false);
        let started = Instant::now();
        let result = locker
            .lock(&key)
            .wait(WAIT)
            .run(async { ran.store(true, Ordering::SeqCst) })
            .await;
        assert_elapsed_between(started.elapsed(), WAIT, "run on a held key");
        assert_timeout(result, WAIT, "run on a held key");
        assert!(
            !ran.load(Ordering::SeqCst),
            "run ran its body without the lock"
        );

        holder.release().await;
    }
}

async fn a_waiter_gets_the_lock_when_the_holder_releases(b: &TestBackend) {
    let key = unique_key("handover");
    let holder = hold_elsewhere(&b.another_locker().await, &key).await;
    let (locker, waiter_key) = (b.locker.clone(), key.clone());
    let waiter = tokio::spawn(async move {
        let guard = locker.lock(&waiter_key).wait(LONG_WAIT).await;
        (Instant::now(), guard)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let released = Instant::now();
    let holder_token = holder.token;
    holder.release().await;
    let (acquired, guard) = waiter.await.expect("the waiter panicked");
    let guard = guard.expect("the waiter gets the lock once it is released");
    // The release began after the waiter had waited 200 ms (a check on the waiter's own start
    // would fail on a loaded machine, where the task may first run well after its spawn).
    assert!(
        acquired >= released,
        "the waiter got the lock while it was held"
    );
    assert!(
        acquired - released < Duration::from_secs(2),
        "the waiter took {:?} to notice the release",
        acquired - released
    );
    assert!(guard.fencing_token() > holder_token);
    guard.release().await.expect("release");
}

// ---------------------------------------------------------------------------------------------
// Re-entry inside a scope, exclusion between siblings
// ---------------------------------------------------------------------------------------------

async fn nested_lock_on_same_key_makes_no_round_trip(b: &TestBackend) {
    let locker = &b.locker;
    let key = unique_key("nested");

    // Load the scripts and open the connections (on a cluster, one per master, opened on first
    // use: warm up on the very keys measured), then measure what one plain `run` costs.
    let baseline_key = unique_key("nested-baseline");
    for warm_up in [&baseline_key, &key] {
        locker
            .lock(warm_up.as_str())
            .run(async {})
            .await
            .expect("warm-up run");
    }
    b.reset_stats().await;
    let before = b.commands().await;
    locker
        .lock(baseline_key.as_str())
        .run(async {})
        .await
        .expect("baseline run");
    let baseline = b.commands().await.zip(before).map(|(a, b)| a - b);
    if b.server().is_some() {
        assert!(
            baseline.is_some_and(|n| n > 0),
            "commands_processed does not see relock's commands"
        );
    }

    let start = b.commands().await;
    let (inside_before, inside_after) = locker
        .lock(&key)
        .run(async {
            let inside_before = b.commands().await;
            let outer = locker.lock(&key).await.expect("re-enter");
            assert!(outer.is_reentrant());
            let token = outer.fencing_token();
            for _ in 0..50 {
                let guard = locker.lock(&key).await.expect("re-enter");
                assert!(guard.is_reentrant());
                assert_eq!(guard.fencing_token(), token);
                guard.release().await.expect("releasing a share");
            }
            for _ in 0..10 {
                let guard = locker.try_lock(&key).await.expect("try_lock");
                let guard = guard.expect("try_lock re-enters the scope's hold");
                assert!(guard.is_reentrant());
                assert_eq!(guard.fencing_token(), token);
            }
            for _ in 0..10 {
                let nested = locker
                    .lock(&key)
                    .run(async {
                        let guard = locker.lock(&key).await.expect("re-enter");
                        assert!(guard.is_reentrant());
                        guard.fencing_token()
                    })
                    .await
                    .expect("nested run");
                assert_eq!(nested, token);
            }
            let ((), (), nested) = tokio::join!(
                reenter_deeply(locker, &key, 8, token),
                reenter_deeply(locker, &key, 8, token),
                locker
                    .lock(&key)
                    .run(reenter_deeply(locker, &key, 8, token)),
            );
            nested.expect("nested run across join!");
            drop(outer);
            let inside_after = b.commands().await;
            (inside_before, inside_after)
        })
        .await
        .expect("run");
    let total = b.commands().await.zip(start).map(|(a, b)| a - b);
    assert_eq!(
        inside_after, inside_before,
        "nested locks on the scope's key sent commands to the server"
    );
    assert_eq!(
        total, baseline,
        "a run with nested re-entry must cost exactly what a plain run costs"
    );
}

/// Re-enters `key` `depth` calls deep, each level awaiting the next.
fn reenter_deeply<'a>(
    locker: &'a Locker,
    key: &'a str,
    depth: usize,
    token: u64,
) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
    Box::pin(async move {
        let guard = locker.lock(key).await.expect("re-enter");
        assert!(guard.is_reentrant());
        assert_eq!(guard.fencing_token(), token);
        tokio::task::yield_now().await;
        if depth > 0 {
            reenter_deeply(locker, key, depth - 1, token).await;
        }
        drop(guard);
    })
}

/// Every fresh hold has its own token at the server, even one taken inside a scope: a late
/// release of one can never touch another.
async fn nested_lock_on_another_key_is_a_hold_with_its_own_token(b: &TestBackend) {
    let locker = &b.locker;
    let (outer, inner) = (unique_key("token-outer"), unique_key("token-inner"));
    let token_of = |key: String| async move {
        locker
            .inspect(&key)
            .await
            .expect("inspect")
            .expect("held")
            .owner
    };
    locker
        .lock(&outer)
        .run(async {
            let guard = locker.lock(&inner).await.expect("lock another key");
            assert!(!guard.is_reentrant(), "another key is a fresh hold");
            let first = token_of(inner.clone()).await;
            assert_ne!(first, token_of(outer.clone()).await);
            guard.release().await.expect("release");
            let again = locker.lock(&inner).await.expect("lock it again");
            assert_ne!(
                token_of(inner.clone()).await,
                first,
                "a second hold of the same key in the same scope has a token of its own"
            );
            again.release().await.expect("release");
        })
        .await
        .expect("run");
}

/// Holds `key` through `run` across an await, failing if another sibling is inside too.
async fn exclusive_section(locker: &Locker, key: &str, inside: &AtomicBool, done: &AtomicUsize) {
    locker
        .lock(key)
        .wait(LONG_WAIT)
        .run(async {
            assert!(!inside.swap(true, Ordering::SeqCst), "siblings overlapped");
            tokio::time::sleep(Duration::from_millis(50)).await;
            inside.store(false, Ordering::SeqCst);
            done.fetch_add(1, Ordering::SeqCst);
        })
        .await
        .expect("sibling run");
}

async fn sibling_runs_exclude_each_other(b: &TestBackend) {
    let locker = &b.locker;
    let key = unique_key("siblings");
    let (inside, done) = (AtomicBool::new(false), AtomicUsize::new(0));
    tokio::join!(
        exclusive_section(locker, &key, &inside, &done),
        exclusive_section(locker, &key, &inside, &done),
        exclusive_section(locker, &key, &inside, &done),
    );
    assert_eq!(done.load(Ordering::SeqCst), 3);
}

async fn sibling_runs_inside_one_scope_exclude_each_other(b: &TestBackend) {
    let locker = &b.locker;
    let (outer, key) = (unique_key("siblings-outer"), unique_key("siblings"));
    let (inside, done) = (AtomicBool::new(false), AtomicUsize::new(0));
    locker
        .lock(&outer)
        .run(async {
            tokio::join!(
                exclusive_section(locker, &key, &inside, &done),
                exclusive_section(locker, &key, &inside, &done),
                exclusive_section(locker, &key, &inside, &done),
            );
        })
        .await
        .expect("outer run");
    assert_eq!(done.load(Ordering::SeqCst), 3);
}

// ---------------------------------------------------------------------------------------------
// Spawned tasks: inherit
// ---------------------------------------------------------------------------------------------

async fn inherit_keeps_the_hold_alive_until_the_spawned_task_ends(b: &TestBackend) {
    let locker = b.locker.clone();
    let other = b.another_locker().await;
    let key = unique_key("inherit");
    let (finish_tx, finish_rx) = oneshot::channel::<()>();
    let (token, spawned) = locker
        .lock(&key)
        .run(async {
            let token = locker.lock(&key).await.expect("re-enter").fencing_token();
            let before = b.commands().await;
            let (entered_tx, entered_rx) = oneshot::channel();
            let (inner, inner_key) = (locker.clone(), key.clone());
            let spawned = tokio::spawn(relock::inherit(async move {
                let guard = inner
                    .lock(&inner_key)
                    .await
                    .expect("re-enter in the spawned task");
                let _ = entered_tx.send((guard.is_reentrant(), guard.fencing_token()));
                let _ = finish_rx.await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                drop(guard);
            }));
            let (reentrant, inner_token) = entered_rx.await.expect("the spawned task failed");
            assert!(
                reentrant,
                "the spawned task must re-enter the inherited hold"
            );
            assert_eq!(inner_token, token);
            assert_eq!(
                b.commands().await,
                before,
                "re-entering an inherited hold sent commands to the server"
            );
            (token, spawned)
        })
        .await
        .expect("run");

    assert!(!spawned.is_finished());
    let info = other.inspect(&key).await.expect("inspect");
    assert_eq!(
        info.map(|info| info.fencing_token),
        Some(token),
        "the hold ended with the scope although a spawned task still carries it"
    );
    assert!(
        try_lock_elsewhere(&other, &key).await.is_none(),
        "another owner took a lock still carried by a spawned task"
    );

    finish_tx.send(()).expect("the spawned task is waiting");
    spawned.await.expect("the spawned task panicked");
    assert!(
        wait_until_free(&other, &key, Duration::from_secs(2)).await,
        "the lock outlived the last task carrying it"
    );
    let guard = try_lock_elsewhere(&other, &key)
        .await
        .expect("free once the last carrier is done");
    guard.release().await.expect("release");
}

async fn a_spawned_task_without_inherit_does_not_see_the_hold(b: &TestBackend) {
    let locker = b.locker.clone();
    let key = unique_key("no-inherit");
    locker
        .lock(&key)
        .run(async {
            let (inner, inner_key) = (locker.clone(), key.clone());
            tokio::spawn(async move {
                let tried = inner.try_lock(&inner_key).await.expect("try_lock");
                assert!(tried.is_none(), "a spawned task re-entered without inherit");
                let started = Instant::now();
                let result = inner.lock(&inner_key).wait(WAIT).await;
                assert_elapsed_between(started.elapsed(), WAIT, "lock in a spawned task");
                assert_timeout(result, WAIT, "lock in a spawned task");
            })
            .await
            .expect("the spawned task panicked");
        })
        .await
        .expect("run");
}

// ---------------------------------------------------------------------------------------------
// Keys, inspect, force_release
// ---------------------------------------------------------------------------------------------

fn invalid_keys() -> Vec<(String, InvalidKeyReason)> {
    vec![
        (String::new(), InvalidKeyReason::Empty),
        ("x".repeat(513), InvalidKeyReason::TooLong { len: 513 }),
        ("{".to_owned(), InvalidKeyReason::Brace),
        ("}".to_owned(), InvalidKeyReason::Brace),
        ("\n".to_owned(), InvalidKeyReason::ControlCharacter),
        ("\0".to_owned(), InvalidKeyReason::ControlCharacter),
    ]
}

fn assert_invalid_key<T: Debug>(result: Result<T, Error>, expected: InvalidKeyReason, what: &str) {
    match result {
        Err(Error::InvalidKey { reason, .. }) => assert_eq!(reason, expected, "{what}"),
        other => panic!("{what}: expected Error::InvalidKey, got {other:?}"),
    }
}

async fn invalid_keys_are_rejected_without_reaching_the_server(b: &TestBackend) {
    let locker = &b.locker;
    let before = b.commands().await;
    for (key, reason) in invalid_keys() {
        let shown = format!("{:?}", key.chars().take(8).collect::<String>());
        assert_invalid_key(locker.lock(&key).await, reason, &format!("lock({shown})"));
        assert_invalid_key(
            locker.try_lock(&key).await,
            reason,
            &format!("try_lock({shown})"),
        );
        let ran = AtomicBool::new(false);
        assert_invalid_key(
            locker
                .lock(&key)
                .run(async { ran.store(true, Ordering::SeqCst) })
                .await,
            reason,
            &format!("run({shown})"),
        );
        assert!(
            !ran.load(Ordering::SeqCst),
            "run ran its body for an invalid key"
        );
        assert_invalid_key(
            locker.inspect(&key).await,
            reason,
            &format!("inspect({shown})"),
        );
        assert_invalid_key(
            locker.force_release(&key).await,
            reason,
            &format!("force_release({shown})"),
        );
    }
    assert_eq!(
        b.commands().await,
        before,
        "an invalid key reached the server"
    );
}

async fn inspect_reports_the_holder(b: &TestBackend) {
    let locker = &b.locker;
    let key = unique_key("inspect");
    let lease = Duration::from_secs(20);
    let guard = locker.lock(&key).lease(lease).await.expect("lock");
    for reader in [locker.clone(), b.another_locker().await] {
        let info = reader.inspect(&key).await.expect("inspect").expect("held");
        assert_eq!(info.owner.len(), 32, "owner {:?}", info.owner);
        assert!(
            info.owner.bytes().all(|c| c.is_ascii_hexdigit()),
            "owner {:?}",
            info.owner
        );
        assert_eq!(info.holds, 1);
        assert!(info.ttl <= lease, "ttl {:?} > lease {lease:?}", info.ttl);
        assert!(info.ttl > lease - SLACK, "ttl {:?} of {lease:?}", info.ttl);
        assert_eq!(info.fencing_token, guard.fencing_token());
        assert_eq!(info.pid, Some(std::process::id()));
        assert!(
            info.host.as_deref().is_some_and(|host| !host.is_empty()),
            "host {:?}",
            info.host
        );
        let acquired_at = info.acquired_at.expect("acquired_at");
        let now = SystemTime::now();
        let skew = now
            .duration_since(acquired_at)
            .unwrap_or_else(|early| early.duration());
        assert!(skew < SLACK, "acquired_at is {skew:?} away from now");
    }
    guard.release().await.expect("release");
    assert!(locker.inspect(&key).await.expect("inspect").is_none());
}

async fn list_streams_every_held_lock_matching_the_pattern(b: &TestBackend) {
    use futures_util::TryStreamExt;

    let locker = &b.locker;
    let stem = unique_key("list");
    // More than one SCAN batch's worth on Redis, all but a few outside the pattern.
    let mut guards = Vec::new();
    for n in 0..1500 {
        guards.push(
            locker
                .lock(format!("{stem}:other:{n}"))
                .await
                .expect("lock"),
        );
    }
    let wanted: Vec<String> = (0..3).map(|n| format!("{stem}:order:{n}")).collect();
    for key in &wanted {
        guards.push(locker.lock(key).await.expect("lock"));
    }
    let released = format!("{stem}:order:released");
    locker
        .lock(&released)
        .await
        .expect("lock")
        .release()
        .await
        .expect("release");
    for reader in [locker.clone(), b.another_locker().await] {
        let mut found: Vec<relock::LockInfo> = reader
            .list(&format!("{stem}:order:*"))
            .try_collect()
            .await
            .expect("list");
        found.sort_by(|a, b| a.key.cmp(&b.key));
        let keys: Vec<&str> = found.iter().map(|info| info.key.as_str()).collect();
        assert_eq!(keys, wanted, "exactly the held locks that match");
        for info in &found {
            let inspected = reader
                .inspect(&info.key)
                .await
                .expect("inspect")
                .expect("held");
            assert_eq!(info.fencing_token, inspected.fencing_token);
            assert_eq!(info.owner, inspected.owner);
        }
        let single: Vec<relock::LockInfo> = reader
            .list(&format!("{stem}:order:[1]"))
            .try_collect()
            .await
            .expect("list");
        assert_eq!(single.len(), 1);
        assert_eq!(single[0].key, wanted[1]);
    }
    let invalid: Result<Vec<relock::LockInfo>, Error> =
        locker.list("order:{*}").try_collect().await;
    assert!(
        matches!(invalid, Err(Error::InvalidKey { .. })),
        "{invalid:?}"
    );
    for guard in guards {
        guard.release().await.expect("release");
    }
}

async fn force_release_frees_the_lock_for_another_locker(b: &TestBackend) {
    let locker = &b.locker;
    let other = b.another_locker().await;
    let key = unique_key("force");
    let guard = locker.lock(&key).await.expect("lock");
    assert!(other.force_release(&key).await.expect("force_release"));
    assert!(other.inspect(&key).await.expect("inspect").is_none());
    let taken = try_lock_elsewhere(&other, &key)
        .await
        .expect("free after force_release");
    assert!(taken.fencing_token() > guard.fencing_token());
    assert_lost(guard.release().await, "release after force_release");
    let info = other.inspect(&key).await.expect("inspect");
    assert_eq!(
        info.map(|info| info.fencing_token),
        Some(taken.fencing_token()),
        "the force-released holder's release touched the new holder's lock"
    );
    taken.release().await.expect("release");
}

async fn force_release_through_the_holders_locker_marks_the_guard_lost(b: &TestBackend) {
    let locker = &b.locker;
    let key = unique_key("force-own");
    let guard = locker.lock(&key).await.expect("lock");
    assert!(guard.is_held());
    assert!(locker.force_release(&key).await.expect("force_release"));
    assert!(
        !guard.is_held(),
        "the holder's guard still reports the lock held"
    );
    tokio::time::timeout(Duration::from_secs(1), guard.lost())
        .await
        .expect("lost() must resolve once the lock is force-released");
    let taken = try_lock_elsewhere(locker, &key)
        .await
        .expect("free after force_release");
    assert_lost(guard.release().await, "release after force_release");
    assert!(
        locker.inspect(&key).await.expect("inspect").is_some(),
        "the force-released holder's release freed the new holder's lock"
    );
    taken.release().await.expect("release");
}

async fn force_release_of_a_free_key_returns_false(b: &TestBackend) {
    let locker = &b.locker;
    let key = unique_key("force-free");
    assert!(!locker.force_release(&key).await.expect("force_release"));
    let guard = locker.lock(&key).await.expect("lock");
    guard.release().await.expect("release");
    assert!(!locker.force_release(&key).await.expect("force_release"));
}

async fn run_aborts_the_body_when_the_lock_is_force_released(b: &TestBackend) {
    let locker = &b.locker;
    let key = unique_key("force-run");
    let finished = AtomicBool::new(false);
    let (entered_tx, entered_rx) = oneshot::channel();
    let started = Instant::now();
    let (result, ()) = tokio::join!(
        locker.lock(&key).run(async {
            let _ = entered_tx.send(());
            tokio::time::sleep(Duration::from_secs(10)).await;
            finished.store(true, Ordering::SeqCst);
        }),
        async {
            entered_rx.await.expect("the body started");
            assert!(locker.force_release(&key).await.expect("force_release"));
        },
    );
    assert_lost(result, "run whose lock was force-released");
    assert!(!finished.load(Ordering::SeqCst));
    assert!(started.elapsed() < SLACK, "the body was not aborted");
}

// ---------------------------------------------------------------------------------------------
// Release, drop, expiry, panics and cancellation
// ---------------------------------------------------------------------------------------------

async fn release_frees_the_lock_for_another_locker_at_once(b: &TestBackend) {
    let locker = &b.locker;
    let other = b.another_locker().await;
    let key = unique_key("release");
    let guard = locker.lock(&key).await.expect("lock");
    assert!(try_lock_elsewhere(&other, &key).await.is_none());
    guard.release().await.expect("release");
    assert!(locker.inspect(&key).await.expect("inspect").is_none());
    let taken = try_lock_elsewhere(&other, &key)
        .await
        .expect("free right after release");
    taken.release().await.expect("release");
}

async fn dropping_a_guard_frees_the_lock(b: &TestBackend) {
    let locker = &b.locker;
    let other = b.another_locker().await;
    let key = unique_key("drop");
    let guard = locker.lock(&key).await.expect("lock");
    drop(guard);
    assert!(
        wait_until_free(locker, &key, background_release(b)).await,
        "a dropped guard still held the lock after {:?}",
        background_release(b)
    );
    let taken = try_lock_elsewhere(&other, &key)
        .await
        .expect("free after the guard was dropped");
    taken.release().await.expect("release");
}

async fn releasing_a_reentrant_guard_keeps_the_outer_hold(b: &TestBackend) {
    let locker = &b.locker;
    let other = b.another_locker().await;
    let key = unique_key("release-share");
    locker
        .lock(&key)
        .run(async {
            let nested = locker.lock(&key).await.expect("re-enter");
            assert!(nested.is_reentrant());
            nested.release().await.expect("releasing a share");
            drop(locker.lock(&key).await.expect("re-enter"));
            tokio::time::sleep(background_release(b)).await;
            assert!(
                locker.inspect(&key).await.expect("inspect").is_some(),
                "releasing a re-entrant guard freed the outer hold"
            );
            assert!(
                try_lock_elsewhere(&other, &key).await.is_none(),
                "another owner took the lock while the outer hold was still in force"
            );
        })
        .await
        .expect("run");
    assert!(
        locker.inspect(&key).await.expect("inspect").is_none(),
        "run returned without releasing"
    );
}

async fn a_short_lease_is_renewed_while_its_holder_runs(b: &TestBackend) {
    let locker = &b.locker;
    let other = b.another_locker().await;
    let key = unique_key("renewed");
    // Long enough that a loaded machine's stalls stay well inside one renewal period (lease/3).
    let lease = Duration::from_secs(1);
    let guard = locker.lock(&key).lease(lease).await.expect("lock");
    tokio::time::sleep(lease * 3).await;
    assert!(
        guard.is_held(),
        "the watchdog let a running holder's lease end"
    );
    let info = other.inspect(&key).await.expect("inspect").expect("held");
    assert_eq!(info.fencing_token, guard.fencing_token());
    assert!(info.ttl <= lease, "ttl {:?} > lease {lease:?}", info.ttl);
    assert!(try_lock_elsewhere(&other, &key).await.is_none());
    guard.release().await.expect("release of a renewed lease");
}

/// What the holder that froze saw once it ran again.
#[derive(Debug)]
struct AfterFreeze {
    held: bool,
    lost_resolved: bool,
    released: Result<(), Error>,
}

async fn release_after_the_lease_expired_reports_lost_and_spares_the_next_owner(b: &TestBackend) {
    const LEASE: Duration = Duration::from_millis(200);
    let key = unique_key("expired");
    // The holder runs on a runtime of its own whose only thread then blocks, as in a GC pause or
    // a stopped VM: nothing of that locker runs, so nothing renews the lease.
    let url = b.server().map(RedisServer::url);
    let (taken_tx, taken_rx) = oneshot::channel::<(Locker, u64)>();
    let (resume_tx, resume_rx) = std::sync::mpsc::channel::<()>();
    let holder_key = key.clone();
    let holder = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("the holder's runtime");
        runtime.block_on(async move {
            let locker = match url {
                Some(url) => Locker::connect(&url).await.expect("connect"),
                None => Locker::in_memory(),
            };
            let guard = locker.lock(&holder_key).lease(LEASE).await.expect("lock");
            let _ = taken_tx.send((locker.clone(), guard.fencing_token()));
            std::thread::sleep(LEASE * 2);
            let held = guard.is_held();
            let _ = resume_rx.recv();
            let lost_resolved = tokio::time::timeout(Duration::from_secs(1), guard.lost())
                .await
                .is_ok();
            let released = guard.release().await;
            AfterFreeze {
                held,
                lost_resolved,
                released,
            }
        })
    });
    let (holder_locker, first_token) = taken_rx.await.expect("the holder took the lock");
    // In-memory stores are per locker, so there the next owner must use the holder's store.
    let other = match b.kind() {
        BackendKind::Memory => holder_locker,
        BackendKind::Redis
        | BackendKind::RedisPool
        | BackendKind::Cluster
        | BackendKind::RedisTls
        | BackendKind::RedisAcl => b.another_locker().await,
    };

    let started = Instant::now();
    let second = lock_elsewhere(&other, &key, SLACK)
        .await
        .expect("another owner takes the lock once the frozen holder's lease ended");
    assert!(
        started.elapsed() < LEASE + SLACK,
        "the next owner waited {:?}",
        started.elapsed()
    );
    assert!(second.fencing_token() > first_token);

    let _ = resume_tx.send(());
    let after = tokio::task::spawn_blocking(move || holder.join())
        .await
        .expect("join the holder thread")
        .expect("the holder thread panicked");
    assert!(!after.held, "is_held after the lease ended: {after:?}");
    assert!(after.lost_resolved, "lost() did not resolve: {after:?}");
    assert_lost(after.released, "release after the lease ended");

    let info = other.inspect(&key).await.expect("inspect");
    assert_eq!(
        info.map(|info| info.fencing_token),
        Some(second.fencing_token()),
        "the expired holder's release touched the next owner's lock"
    );
    assert!(try_lock_elsewhere(&other, &key).await.is_none());
    assert!(second.is_held());
    second
        .release()
        .await
        .expect("the next owner releases normally");
}

async fn a_waiter_does_not_poll_while_the_lock_is_held(b: &TestBackend) {
    let key = unique_key("no-polling");
    let holder = hold_elsewhere(&b.another_locker().await, &key).await;
    let (locker, waiter_key) = (b.locker.clone(), key.clone());
    let before = b.commands().await;
    let waiter = tokio::spawn(async move { locker.lock(&waiter_key).wait(LONG_WAIT).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = b.commands().await.zip(before).map(|(a, b)| a - b);
    holder.release().await;
    let guard = waiter
        .await
        .expect("the waiter panicked")
        .expect("the waiter gets the lock once it is released");
    guard.release().await.expect("release");
    // Try (the script's TIME, SET NX GET and PTTL; the first refusal also marks the hold as
    // waited for, so that its release is announced), subscribe, try again, then sleep until the
    // release is announced (10 commands; 11 with the ACL user's connection set-up); a backoff
    // loop would have sent dozens of attempts in that second.
    if let Some(during) = during {
        assert!(
            during <= 11,
            "a waiter sent {during} commands in 1 s while the lock was held: it polls"
        );
    }
}

async fn a_panicking_body_releases_the_lock(b: &TestBackend) {
    let locker = b.locker.clone();
    let other = b.another_locker().await;
    let key = unique_key("panic");
    let (inner, inner_key) = (locker.clone(), key.clone());
    let task = tokio::spawn(async move {
        inner
            .lock(&inner_key)
            .run(async { panic!("the body panics on purpose") })
            .await
    });
    let err = task.await.expect_err("the task must panic");
    assert!(err.is_panic());
    assert!(
        wait_until_free(&locker, &key, background_release(b)).await,
        "a panicking body left the lock held"
    );
    let taken = try_lock_elsewhere(&other, &key)
        .await
        .expect("free after the panic");
    taken.release().await.expect("release");
}

async fn an_aborted_task_inside_run_releases_the_lock(b: &TestBackend) {
    let locker = b.locker.clone();
    let other = b.another_locker().await;
    let key = unique_key("abort");
    let (entered_tx, entered_rx) = oneshot::channel();
    let (inner, inner_key) = (locker.clone(), key.clone());
    let task = tokio::spawn(async move {
        inner
            .lock(&inner_key)
            .run(async {
                let _ = entered_tx.send(());
                std::future::pending::<()>().await;
            })
            .await
    });
    entered_rx.await.expect("the body started");
    assert!(locker.inspect(&key).await.expect("inspect").is_some());
    task.abort();
    let err = task.await.expect_err("the task was aborted");
    assert!(err.is_cancelled());
    assert!(
        wait_until_free(&locker, &key, background_release(b)).await,
        "an aborted task left the lock held"
    );
    let taken = try_lock_elsewhere(&other, &key)
        .await
        .expect("free after the abort");
    taken.release().await.expect("release");
}

async fn release_frees_the_lock_at_once_while_renewals_run(b: &TestBackend) {
    const TASKS: usize = 6;
    const ROUNDS: usize = 25;
    let lease = Duration::from_millis(150);
    let mut workers = Vec::new();
    for task in 0..TASKS {
        let locker = b.locker.clone();
        workers.push(tokio::spawn(async move {
            let mut still_held = 0;
            for round in 0..ROUNDS {
                let key = unique_key("renewing");
                let guard = locker.lock(&key).lease(lease).await.expect("lock");
                // Renewals fall due from lease/6 on; staggered hold times make releases land
                // while the watchdog scans and renews.
                let hold = 25 + (task * 7 + round * 13) % 30;
                tokio::time::sleep(Duration::from_millis(hold as u64)).await;
                match guard.release().await {
                    Ok(()) => {
                        if locker.inspect(&key).await.expect("inspect").is_some() {
                            still_held += 1;
                        }
                    }
                    // A starved watchdog may let a 150 ms lease end on a busy machine.
                    Err(err) if err.is_lost() => {}
                    Err(err) => panic!("release failed: {err:?}"),
                }
            }
            still_held
        }));
    }
    let mut still_held = 0;
    for worker in workers {
        still_held += worker.await.expect("a worker panicked");
    }
    assert_eq!(
        still_held,
        0,
        "release() returned Ok while the lock was still held ({still_held} of {} releases)",
        TASKS * ROUNDS
    );
}

async fn many_short_holds_racing_the_watchdog_never_wedge_the_locker(b: &TestBackend) {
    const TASKS: usize = 4;
    let rounds = match b.kind() {
        BackendKind::Memory => 3000,
        BackendKind::Redis
        | BackendKind::RedisPool
        | BackendKind::Cluster
        | BackendKind::RedisTls
        | BackendKind::RedisAcl => 600,
    };
    let mut workers = Vec::new();
    for task in 0..TASKS {
        let locker = b.locker.clone();
        workers.push(tokio::spawn(async move {
            for round in 0..rounds {
                let key = format!("wedge:{task}:{}", round % 8);
                let guard = locker.lock(&key).await.expect("lock");
                if round % 2 == 0 {
                    guard.release().await.expect("release");
                } else {
                    drop(guard);
                }
            }
        }));
    }
    for worker in workers {
        worker.await.expect("a worker panicked");
    }
}

// ---------------------------------------------------------------------------------------------
// Deadlocks on unscoped guards
// ---------------------------------------------------------------------------------------------

async fn assert_waiting_on_own_guard_would_deadlock(locker: &Locker, key: &str) {
    let guard = locker.lock(key).await.expect("lock");
    let started = Instant::now();
    let result = locker.lock(key).wait(WAIT).await;
    assert!(
        matches!(result, Err(Error::WouldDeadlock { .. })),
        "waiting on this task's own unscoped guard returned {result:?}, expected WouldDeadlock"
    );
    assert!(started.elapsed() < WAIT + SLACK);
    guard.release().await.expect("release");
}

/// In the test's own body, as in a user's `#[tokio::main]`.
async fn waiting_on_own_unscoped_guard_reports_would_deadlock(b: &TestBackend) {
    assert_waiting_on_own_guard_would_deadlock(&b.locker, &unique_key("deadlock")).await;
}

async fn waiting_on_own_unscoped_guard_in_a_spawned_task_reports_would_deadlock(b: &TestBackend) {
    let locker = b.locker.clone();
    tokio::spawn(async move {
        assert_waiting_on_own_guard_would_deadlock(&locker, &unique_key("deadlock-task")).await;
    })
    .await
    .expect("the task panicked");
}

async fn joined_siblings_with_unscoped_guards_wait_for_each_other(b: &TestBackend) {
    let locker = b.locker.clone();
    let key = unique_key("unscoped-siblings");
    tokio::spawn(async move {
        let (first, second) = tokio::join!(
            async {
                let guard = locker.lock(&key).await?;
                tokio::time::sleep(Duration::from_millis(150)).await;
                guard.release().await
            },
            async {
                tokio::time::sleep(Duration::from_millis(30)).await;
                let guard = locker.lock(&key).wait(Duration::from_secs(5)).await?;
                guard.release().await
            },
        );
        first.expect("the first sibling");
        second.expect("the second sibling waits for the first, legitimately");
    })
    .await
    .expect("the task panicked");
}

// ---------------------------------------------------------------------------------------------
// One test per behaviour and backend
// ---------------------------------------------------------------------------------------------

macro_rules! conformance {
    ($module:ident => $kind:ident: $($test:ident),+ $(,)?) => {
        mod $module {
            $(
                #[test]
                fn $test() {
                    relock_tests::run_bounded(super::TEST_LIMIT, || async {
                        let backend = relock_tests::TestBackend::start(
                            relock_tests::BackendKind::$kind,
                        )
                        .await;
                        super::$test(&backend).await;
                    });
                }
            )+
        }
    };
}

macro_rules! every_backend {
    ($($test:ident),+ $(,)?) => {
        conformance!(redis => Redis: $($test),+);
        conformance!(memory => Memory: $($test),+);
    };
}

every_backend!(
    concurrent_lockers_never_lose_an_update,
    fencing_tokens_strictly_increase_across_owners_and_lockers,
    concurrent_acquisitions_get_increasing_fencing_tokens,
    reentrant_guard_carries_the_outer_fencing_token,
    try_lock_takes_a_free_lock,
    try_lock_never_waits_for_a_lock_held_by_another_owner,
    waiting_past_the_wait_fails_with_timeout,
    a_waiter_gets_the_lock_when_the_holder_releases,
    nested_lock_on_same_key_makes_no_round_trip,
    nested_lock_on_another_key_is_a_hold_with_its_own_token,
    sibling_runs_exclude_each_other,
    sibling_runs_inside_one_scope_exclude_each_other,
    inherit_keeps_the_hold_alive_until_the_spawned_task_ends,
    a_spawned_task_without_inherit_does_not_see_the_hold,
    invalid_keys_are_rejected_without_reaching_the_server,
    inspect_reports_the_holder,
    list_streams_every_held_lock_matching_the_pattern,
    force_release_frees_the_lock_for_another_locker,
    force_release_through_the_holders_locker_marks_the_guard_lost,
    force_release_of_a_free_key_returns_false,
    run_aborts_the_body_when_the_lock_is_force_released,
    release_frees_the_lock_for_another_locker_at_once,
    dropping_a_guard_frees_the_lock,
    releasing_a_reentrant_guard_keeps_the_outer_hold,
    a_short_lease_is_renewed_while_its_holder_runs,
    release_after_the_lease_expired_reports_lost_and_spares_the_next_owner,
    a_waiter_does_not_poll_while_the_lock_is_held,
    release_frees_the_lock_at_once_while_renewals_run,
    many_short_holds_racing_the_watchdog_never_wedge_the_locker,
    a_panicking_body_releases_the_lock,
    an_aborted_task_inside_run_releases_the_lock,
    waiting_on_own_unscoped_guard_reports_would_deadlock,
    waiting_on_own_unscoped_guard_in_a_spawned_task_reports_would_deadlock,
    joined_siblings_with_unscoped_guards_wait_for_each_other,
);

conformance!(redis_pool => RedisPool:
    concurrent_lockers_never_lose_an_update,
    fencing_tokens_strictly_increase_across_owners_and_lockers,
    try_lock_takes_a_free_lock,
    try_lock_never_waits_for_a_lock_held_by_another_owner,
    waiting_past_the_wait_fails_with_timeout,
    a_waiter_gets_the_lock_when_the_holder_releases,
    nested_lock_on_same_key_makes_no_round_trip,
    invalid_keys_are_rejected_without_reaching_the_server,
    release_frees_the_lock_for_another_locker_at_once,
    dropping_a_guard_frees_the_lock,
    a_short_lease_is_renewed_while_its_holder_runs,
    release_frees_the_lock_at_once_while_renewals_run,
    a_panicking_body_releases_the_lock,
);

conformance!(cluster => Cluster:
    concurrent_lockers_never_lose_an_update,
    fencing_tokens_strictly_increase_across_owners_and_lockers,
    try_lock_takes_a_free_lock,
    try_lock_never_waits_for_a_lock_held_by_another_owner,
    waiting_past_the_wait_fails_with_timeout,
    a_waiter_gets_the_lock_when_the_holder_releases,
    nested_lock_on_same_key_makes_no_round_trip,
    inspect_reports_the_holder,
    list_streams_every_held_lock_matching_the_pattern,
    force_release_frees_the_lock_for_another_locker,
    release_frees_the_lock_for_another_locker_at_once,
    dropping_a_guard_frees_the_lock,
    a_short_lease_is_renewed_while_its_holder_runs,
    release_after_the_lease_expired_reports_lost_and_spares_the_next_owner,
    release_frees_the_lock_at_once_while_renewals_run,
    a_panicking_body_releases_the_lock,
);

// Over TLS: commands and release notifications alike (tests/tests/tls.rs has the certificate
// failures).
conformance!(redis_tls => RedisTls:
    concurrent_lockers_never_lose_an_update,
    fencing_tokens_strictly_increase_across_owners_and_lockers,
    try_lock_takes_a_free_lock,
    try_lock_never_waits_for_a_lock_held_by_another_owner,
    waiting_past_the_wait_fails_with_timeout,
    a_waiter_gets_the_lock_when_the_holder_releases,
    a_waiter_does_not_poll_while_the_lock_is_held,
    inspect_reports_the_holder,
    force_release_frees_the_lock_for_another_locker,
    release_frees_the_lock_for_another_locker_at_once,
    dropping_a_guard_frees_the_lock,
    a_short_lease_is_renewed_while_its_holder_runs,
    release_frees_the_lock_at_once_while_renewals_run,
);

// As an ACL user with exactly the rules docs/production.md documents (tests/tests/acl.rs has the
// refusals).
conformance!(redis_acl => RedisAcl:
    concurrent_lockers_never_lose_an_update,
    fencing_tokens_strictly_increase_across_owners_and_lockers,
    try_lock_takes_a_free_lock,
    try_lock_never_waits_for_a_lock_held_by_another_owner,
    waiting_past_the_wait_fails_with_timeout,
    a_waiter_gets_the_lock_when_the_holder_releases,
    a_waiter_does_not_poll_while_the_lock_is_held,
    nested_lock_on_same_key_makes_no_round_trip,
    inspect_reports_the_holder,
    list_streams_every_held_lock_matching_the_pattern,
    force_release_frees_the_lock_for_another_locker,
    force_release_through_the_holders_locker_marks_the_guard_lost,
    force_release_of_a_free_key_returns_false,
    run_aborts_the_body_when_the_lock_is_force_released,
    release_frees_the_lock_for_another_locker_at_once,
    dropping_a_guard_frees_the_lock,
    releasing_a_reentrant_guard_keeps_the_outer_hold,
    a_short_lease_is_renewed_while_its_holder_runs,
    release_frees_the_lock_at_once_while_renewals_run,
    many_short_holds_racing_the_watchdog_never_wedge_the_locker,
    a_panicking_body_releases_the_lock,
);
