//! Semaphores (`Locker::semaphore`), run as the conformance suite runs: each behaviour is one
//! `async fn(&TestBackend)`, turned by the macro at the bottom into one test per backend
//! (in memory, one Redis server, a bb8 pool, a Redis Cluster). "Another owner" is another
//! `Locker` (on Redis, with its own connection), as another process would be.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use relock::{Error, LockMode};
use relock_tests::{unique_key, BackendKind, TestBackend};

/// A hung operation fails its test instead of hanging the run.
const TEST_LIMIT: Duration = Duration::from_secs(60);
/// The wait given to requests expected to succeed: long enough for a busy machine.
const LONG_WAIT: Duration = Duration::from_secs(20);
/// Loose upper bounds on a slow, shared machine.
const SLACK: Duration = Duration::from_secs(3);

async fn permits_never_exceed_n_under_concurrent_tasks(b: &TestBackend) {
    const PERMITS: u32 = 3;
    let key = unique_key("sem-bound");
    let lockers = b.lockers(3).await;
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let tokens = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for n in 0..12 {
        let semaphore = lockers[n % lockers.len()].semaphore(&key, PERMITS);
        let (inside, most, tokens) = (inside.clone(), most.clone(), tokens.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..4 {
                let permit = semaphore.acquire().wait(LONG_WAIT).await.expect("a permit");
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokens.lock().unwrap().push(permit.fencing_token());
                tokio::time::sleep(Duration::from_millis(15)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                permit.release().await.expect("release");
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let most = most.load(Ordering::SeqCst);
    assert!(
        most <= PERMITS as usize,
        "{most} holders of {PERMITS} permits"
    );
    assert!(most > 1, "permits are shared: at most {most} held at once");
    let mut tokens = tokens.lock().unwrap().clone();
    let count = tokens.len();
    tokens.sort_unstable();
    tokens.dedup();
    assert_eq!(
        tokens.len(),
        count,
        "every permit has a fencing token of its own"
    );
}

async fn try_acquire_answers_none_when_every_permit_is_taken(b: &TestBackend) {
    let key = unique_key("sem-try");
    let semaphore = b.locker.semaphore(&key, 2);
    let other = b.another_locker().await.semaphore(&key, 2);
    let first = semaphore.try_acquire().await.unwrap().expect("first");
    let second = other.try_acquire().await.unwrap().expect("second");
    assert!(second.fencing_token() > first.fencing_token());
    assert!(semaphore.try_acquire().await.unwrap().is_none());
    assert!(other.try_acquire().await.unwrap().is_none());
    let started = Instant::now();
    let err = other
        .acquire()
        .wait(Duration::from_millis(300))
        .await
        .expect_err("all taken");
    assert!(err.is_timeout(), "{err:?}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    first.release().await.unwrap();
    let third = other.try_acquire().await.unwrap().expect("one came back");
    assert!(third.fencing_token() > second.fencing_token());
    second.release().await.unwrap();
    third.release().await.unwrap();
}

async fn a_waiter_is_woken_by_a_release(b: &TestBackend) {
    let key = unique_key("sem-wake");
    let held = b.locker.semaphore(&key, 1).acquire().await.unwrap();
    let other = b.another_locker().await;
    let semaphore = other.semaphore(&key, 1);
    let waiter = tokio::spawn(async move {
        let permit = semaphore.acquire().wait(LONG_WAIT).await?;
        let at = Instant::now();
        permit.release().await?;
        Ok::<_, Error>(at)
    });
    until_waiting(b, &key).await;
    let released = Instant::now();
    held.release().await.unwrap();
    let granted = waiter.await.unwrap().expect("the waiter gets the permit");
    // The holder's lease is 30 s: only the release's announcement wakes the waiter this soon.
    assert!(
        granted - released < SLACK,
        "woken {:?} after the release",
        granted - released
    );
}

/// A writer's release frees every permit with one announcement: the permit waiters of one
/// `Locker`, woken one per announced release, pass the wake-up on when granted, so all of them get
/// in at once rather than when the writer's lease (30 s) would have ended.
async fn a_writers_release_lets_every_permit_waiter_in(b: &TestBackend) {
    const PERMITS: u32 = 3;
    let key = unique_key("sem-writer");
    let writer = b
        .locker
        .lock(&key)
        .lease(Duration::from_secs(30))
        .await
        .unwrap();
    let other = b.another_locker().await;
    let mut waiters = Vec::new();
    for _ in 0..PERMITS {
        let semaphore = other.semaphore(&key, PERMITS);
        waiters.push(tokio::spawn(async move {
            let permit = semaphore.acquire().wait(LONG_WAIT).await?;
            Ok::<_, Error>((permit, Instant::now()))
        }));
    }
    until_waiting(b, &key).await;
    // Every waiter has been refused and sleeps.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let released = Instant::now();
    writer.release().await.unwrap();
    let mut permits = Vec::new();
    for waiter in waiters {
        let (permit, at) = waiter.await.unwrap().expect("every waiter gets a permit");
        assert!(
            at - released < SLACK,
            "a permit waiter got in {:?} after the writer's release",
            at - released
        );
        permits.push(permit);
    }
    for permit in permits {
        permit.release().await.unwrap();
    }
}

/// `n` permits, many waiters across two lockers, some of them cancelled while they wait (woken
/// or not): every other waiter gets in, within a bound far below the holders' 30 s lease, and
/// never more than `n` at once.
async fn every_waiter_gets_in_within_a_bound(b: &TestBackend) {
    const PERMITS: u32 = 2;
    const WAITERS: usize = 24;
    let key = unique_key("sem-fair");
    let lockers = b.lockers(2).await;
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for n in 0..WAITERS {
        let semaphore = lockers[n % 2].semaphore(&key, PERMITS);
        let (inside, most) = (inside.clone(), most.clone());
        tasks.push(tokio::spawn(async move {
            let acquire = semaphore.acquire().wait(LONG_WAIT);
            let permit = if n % 4 == 3 {
                // Cancelled after a while, possibly just after being woken.
                match tokio::time::timeout(Duration::from_millis(20 + 7 * n as u64), acquire).await
                {
                    Ok(permit) => permit.expect("a permit"),
                    Err(_) => return None,
                }
            } else {
                acquire.await.expect("every waiter gets a permit")
            };
            let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(10)).await;
            inside.fetch_sub(1, Ordering::SeqCst);
            permit.release().await.expect("release");
            Some(started.elapsed())
        }));
    }
    let mut got_in = 0;
    for task in tasks {
        if let Some(at) = task.await.expect("waiter") {
            got_in += 1;
            assert!(at < SLACK * 3, "a waiter got in only after {at:?}");
        }
    }
    assert!(got_in >= WAITERS * 3 / 4, "{got_in} of {WAITERS} got in");
    let most = most.load(Ordering::SeqCst);
    assert!(
        most <= PERMITS as usize,
        "{most} holders of {PERMITS} permits"
    );
}

/// A returned permit is announced once, as one returned permit; in a `Locker` where six tasks
/// wait for it, one is woken, not six, and granted it wakes no other.
async fn a_returned_permit_wakes_one_waiter_per_locker(b: &TestBackend) {
    let key = unique_key("sem-one");
    // The server learns the release script first, so that the count below has no `NOSCRIPT`
    // round (EVALSHA refused, then EVAL).
    let warm_up = b.locker.semaphore(unique_key("sem-warm-up"), 1);
    warm_up.acquire().await.unwrap().release().await.unwrap();
    let held = b.locker.semaphore(&key, 1).acquire().await.unwrap();
    let other = b.another_locker().await;
    let (granted, mut grants) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let (semaphore, granted) = (other.semaphore(&key, 1), granted.clone());
        tasks.push(tokio::spawn(async move {
            let permit = semaphore.acquire().wait(LONG_WAIT).await.expect("a permit");
            granted.send(()).expect("the test listens");
            std::future::pending::<()>().await;
            drop(permit);
        }));
    }
    until_waiting(b, &key).await;
    // Every waiter has been refused and sleeps.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut admin = b.admin().expect("a Redis backend");
    b.reset_stats().await;
    held.release().await.unwrap();
    grants.recv().await.expect("a waiter gets the permit");
    // Any other woken waiter has asked by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let scripts: u64 = relock_tests::script_calls(&mut admin).await;
    // The release and the grant: the message counts one returned permit, so one waiter is
    // woken, and its grant answers the wake-up (nothing is passed on).
    assert!(
        scripts <= 2,
        "{scripts} script calls for one returned permit and six waiters"
    );
    for task in tasks {
        task.abort();
    }
}

/// A task that comes to wait for a key that another task of its `Locker` already waits for has
/// its wake-up armed before its first attempt (the subscription is at hand): one refused attempt,
/// then sleep — no second attempt after subscribing. Both are let in, one after the other, well
/// before a holder's lease (30 s) would end: the release of the only permit keeps the mark its
/// refused waiters left, so the first waiter's release is announced to the second.
async fn a_waiter_beside_another_of_its_locker_sleeps_after_one_attempt(b: &TestBackend) {
    let key = unique_key("sem-beside");
    let warm_up = b.locker.semaphore(unique_key("sem-warm-up"), 1);
    warm_up.acquire().await.unwrap().release().await.unwrap();
    let held = b.locker.semaphore(&key, 1).acquire().await.unwrap();
    let other = b.another_locker().await;
    let (granted, mut grants) = tokio::sync::mpsc::unbounded_channel();
    let waiter = |name: &'static str| {
        let (semaphore, granted) = (other.semaphore(&key, 1), granted.clone());
        tokio::spawn(async move {
            let permit = semaphore.acquire().wait(LONG_WAIT).await.expect("a permit");
            granted
                .send((name, Instant::now()))
                .expect("the test listens");
            tokio::time::sleep(Duration::from_millis(50)).await;
            permit.release().await.expect("released");
        })
    };
    let first = waiter("first");
    until_waiting(b, &key).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut admin = b.admin().expect("a Redis backend");
    b.reset_stats().await;
    let second = waiter("second");
    // The second waiter's attempt has been refused and it sleeps by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let scripts: u64 = relock_tests::script_calls(&mut admin).await;
    assert_eq!(
        scripts, 1,
        "script calls of a waiter that joins another waiter of its Locker"
    );
    let released = Instant::now();
    held.release().await.unwrap();
    let mut order = Vec::new();
    for _ in 0..2 {
        let (name, at) = tokio::time::timeout(LONG_WAIT, grants.recv())
            .await
            .expect("every waiter is let in before its wait ends")
            .expect("the test listens");
        assert!(
            at - released < SLACK,
            "{name} got in {:?} after the release",
            at - released
        );
        order.push(name);
    }
    order.sort_unstable();
    assert_eq!(order, ["first", "second"]);
    first.await.unwrap();
    second.await.unwrap();
}

/// Four permits returned at once while the server is paused: the first two releases go out as
/// a call each and the last two queue into a third (a `Locker` has two calls in flight at most),
/// which announces them with one message counting two. Four waiters of another `Locker` are woken
/// — as many as the messages count, not one per message — and get in without waiting for a
/// holder's lease (30 s) to end.
async fn permits_returned_together_wake_as_many_waiters(b: &TestBackend) {
    const PERMITS: u32 = 4;
    let key = unique_key("sem-together");
    let semaphore = b.locker.semaphore(&key, PERMITS);
    let mut held = Vec::new();
    for _ in 0..PERMITS {
        held.push(semaphore.acquire().await.unwrap());
    }
    let server = b.server().expect("a Redis backend");
    let mut pubsub = server.client().get_async_pubsub().await.unwrap();
    pubsub
        .subscribe(relock_tests::release_channel(&key))
        .await
        .unwrap();
    let other = b.another_locker().await;
    let (granted, mut grants) = tokio::sync::mpsc::unbounded_channel();
    let mut waiters = Vec::new();
    for _ in 0..PERMITS {
        let (semaphore, granted) = (other.semaphore(&key, PERMITS), granted.clone());
        waiters.push(tokio::spawn(async move {
            let permit = semaphore.acquire().wait(LONG_WAIT).await.expect("a permit");
            granted.send(Instant::now()).expect("the test listens");
            std::future::pending::<()>().await;
            drop(permit);
        }));
    }
    until_waiting(b, &key).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut admin = b.admin().expect("a Redis backend");
    let _: () = ::redis::cmd("CLIENT")
        .arg(&["PAUSE", "300", "ALL"][..])
        .query_async(&mut admin)
        .await
        .unwrap();
    let released = Instant::now();
    for release in futures_util::future::join_all(held.into_iter().map(|p| p.release())).await {
        release.unwrap();
    }
    for _ in 0..PERMITS {
        let at = tokio::time::timeout(LONG_WAIT, grants.recv())
            .await
            .expect("every waiter gets in before its wait ends")
            .expect("the test listens");
        assert!(
            at - released < SLACK,
            "a waiter got in {:?} after the releases",
            at - released
        );
    }
    let mut stream = pubsub.on_message();
    let mut counts = Vec::new();
    while counts.iter().sum::<u32>() < PERMITS {
        let message = tokio::time::timeout(SLACK, futures_util::StreamExt::next(&mut stream))
            .await
            .expect("the releases are announced")
            .expect("subscribed");
        let payload: String = message.get_payload().unwrap();
        counts.push(payload.parse().expect("a count of returned permits"));
    }
    assert_eq!(counts.iter().sum::<u32>(), PERMITS, "messages {counts:?}");
    assert!(
        counts.len() < PERMITS as usize,
        "some releases share a call and a message: {counts:?}"
    );
    for waiter in waiters {
        waiter.abort();
    }
}

/// Returns once a waiter on `key` is asleep (a pool without a URL has no release notifications:
/// its waiters retry with backoff).
async fn until_waiting(b: &TestBackend, key: &str) {
    match b.kind() {
        BackendKind::RedisPool => tokio::time::sleep(Duration::from_millis(200)).await,
        _ => b.until_waiting(key).await,
    }
}

/// Redis backends only: an in-memory store has no second process whose renewals could stop
/// (the in-memory backend's own tests cover its expiry).
async fn a_crashed_holders_permit_comes_back_when_its_lease_ends(b: &TestBackend) {
    let key = unique_key("sem-crash");
    let lease = Duration::from_millis(600);
    // The holder's runtime (its watchdog and connection) is dropped with the permit never
    // released nor renewed: as if its process had died.
    let crashed = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async {
                    let locker = b.another_locker().await;
                    let permit = locker
                        .semaphore(&key, 1)
                        .acquire()
                        .lease(lease)
                        .await
                        .expect("the doomed permit");
                    let token = permit.fencing_token();
                    std::mem::forget(permit);
                    token
                })
            })
            .join()
            .unwrap()
    });
    let taken = Instant::now();
    let semaphore = b.locker.semaphore(&key, 1);
    assert!(
        semaphore.try_acquire().await.unwrap().is_none(),
        "still held"
    );
    let permit = semaphore
        .acquire()
        .wait(LONG_WAIT)
        .await
        .expect("it came back");
    let waited = taken.elapsed();
    assert!(waited < lease + SLACK, "came back after {waited:?}");
    assert!(permit.fencing_token() > crashed);
    permit.release().await.unwrap();
}

async fn a_dropped_permit_is_returned(b: &TestBackend) {
    let key = unique_key("sem-drop");
    let semaphore = b.locker.semaphore(&key, 1);
    drop(semaphore.acquire().await.unwrap());
    let other = b.another_locker().await.semaphore(&key, 1);
    let permit = other
        .acquire()
        .wait(Duration::from_secs(2))
        .await
        .expect("returned in the background");
    permit.release().await.unwrap();
}

async fn disagreeing_on_permits_fails_with_permits_mismatch(b: &TestBackend) {
    let key = unique_key("sem-mismatch");
    let held = b.locker.semaphore(&key, 2).acquire().await.unwrap();
    let other = b.another_locker().await;
    match other.semaphore(&key, 3).try_acquire().await {
        Err(Error::PermitsMismatch {
            key: named,
            permits: 3,
            found: 2,
        }) => assert_eq!(named, key),
        other => panic!("expected PermitsMismatch, got {other:?}"),
    }
    match other.read(&key).await {
        Err(Error::PermitsMismatch {
            permits: 0,
            found: 2,
            ..
        }) => {}
        other => panic!("expected PermitsMismatch for a reader, got {other:?}"),
    }
    let err = other.semaphore(&key, 3).acquire().await.unwrap_err();
    assert!(err.to_string().contains("semaphore of 2 permits"), "{err}");
    held.release().await.unwrap();
    // Nobody holds it now: the next caller's number stands.
    let permit = other.semaphore(&key, 3).try_acquire().await.unwrap();
    permit.expect("free").release().await.unwrap();
}

async fn permits_are_renewed_while_held(b: &TestBackend) {
    let key = unique_key("sem-renew");
    let permit = b
        .locker
        .semaphore(&key, 1)
        .acquire()
        .lease(Duration::from_secs(1))
        .await
        .unwrap();
    // Three times the lease: renewed at least twice (every third of it), with room for a stall
    // of a loaded machine.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(permit.is_held());
    let other = b.another_locker().await;
    assert!(other
        .semaphore(&key, 1)
        .try_acquire()
        .await
        .unwrap()
        .is_none());
    permit.release().await.expect("still held at release");
}

async fn the_exclusive_lock_waits_for_every_permit(b: &TestBackend) {
    let key = unique_key("sem-exclusive");
    let semaphore = b.locker.semaphore(&key, 2);
    let first = semaphore.acquire().await.unwrap();
    let second = semaphore.acquire().await.unwrap();
    let other = b.another_locker().await;
    assert!(other.try_lock(&key).await.unwrap().is_none());
    first.release().await.unwrap();
    assert!(
        other.try_lock(&key).await.unwrap().is_none(),
        "one permit left"
    );
    second.release().await.unwrap();
    let guard = other.lock(&key).wait(Duration::from_secs(2)).await.unwrap();
    assert!(guard.fencing_token() > 0);
    assert!(semaphore.try_acquire().await.unwrap().is_none());
    guard.release().await.unwrap();
}

async fn inspect_reports_the_permits_in_use(b: &TestBackend) {
    let key = unique_key("sem-inspect");
    let semaphore = b.locker.semaphore(&key, 4);
    let first = semaphore.acquire().await.unwrap();
    let second = semaphore.acquire().await.unwrap();
    let info = b.locker.inspect(&key).await.unwrap().expect("held");
    assert_eq!(info.mode, LockMode::Permits(4));
    assert_eq!(info.holds, 2);
    assert!(info.ttl > Duration::ZERO);
    first.release().await.unwrap();
    second.release().await.unwrap();
    assert!(b.locker.inspect(&key).await.unwrap().is_none());
}

async fn force_release_frees_every_permit(b: &TestBackend) {
    let key = unique_key("sem-force");
    let semaphore = b.locker.semaphore(&key, 1);
    let permit = semaphore
        .acquire()
        .lease(Duration::from_millis(300))
        .await
        .unwrap();
    let other = b.another_locker().await;
    assert!(other.force_release(&key).await.unwrap());
    let next = other.semaphore(&key, 1).try_acquire().await.unwrap();
    let next = next.expect("free after the force-release");
    tokio::time::timeout(SLACK, permit.lost())
        .await
        .expect("the next renewal finds the permit gone");
    assert!(permit.release().await.unwrap_err().is_lost());
    next.release().await.unwrap();
}

async fn force_release_through_the_holders_locker_marks_the_permit_lost_at_once(b: &TestBackend) {
    let key = unique_key("sem-force-own");
    let permit = b.locker.semaphore(&key, 2).acquire().await.unwrap();
    assert!(b.locker.force_release(&key).await.unwrap());
    assert!(!permit.is_held(), "no round trip needed to know");
    assert!(permit.release().await.unwrap_err().is_lost());
}

async fn a_semaphore_of_zero_permits_grants_none(b: &TestBackend) {
    let semaphore = b.locker.semaphore(unique_key("sem-zero"), 0);
    assert!(semaphore.try_acquire().await.unwrap().is_none());
    assert!(semaphore.acquire().await.unwrap_err().is_timeout());
}

async fn an_invalid_key_fails_when_a_permit_is_asked_for(b: &TestBackend) {
    let semaphore = b.locker.semaphore("bad{key}", 2);
    assert!(semaphore.key().is_none());
    assert!(matches!(
        semaphore.acquire().await,
        Err(Error::InvalidKey { .. })
    ));
    assert!(matches!(
        semaphore.try_acquire().await,
        Err(Error::InvalidKey { .. })
    ));
}

macro_rules! backends {
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
        backends!(memory => Memory: $($test),+);
        backends!(redis => Redis: $($test),+);
        backends!(redis_pool => RedisPool: $($test),+);
    };
}

macro_rules! redis_backends {
    ($($test:ident),+ $(,)?) => {
        backends!(redis_crash => Redis: $($test),+);
        backends!(redis_pool_crash => RedisPool: $($test),+);
    };
}

every_backend!(
    permits_never_exceed_n_under_concurrent_tasks,
    try_acquire_answers_none_when_every_permit_is_taken,
    a_waiter_is_woken_by_a_release,
    a_dropped_permit_is_returned,
    disagreeing_on_permits_fails_with_permits_mismatch,
    permits_are_renewed_while_held,
    the_exclusive_lock_waits_for_every_permit,
    inspect_reports_the_permits_in_use,
    force_release_frees_every_permit,
    force_release_through_the_holders_locker_marks_the_permit_lost_at_once,
    a_semaphore_of_zero_permits_grants_none,
    an_invalid_key_fails_when_a_permit_is_asked_for,
    a_writers_release_lets_every_permit_waiter_in,
    every_waiter_gets_in_within_a_bound,
);

backends!(redis_wake => Redis:
    a_returned_permit_wakes_one_waiter_per_locker,
    permits_returned_together_wake_as_many_waiters,
    a_waiter_beside_another_of_its_locker_sleeps_after_one_attempt,
);

redis_backends!(a_crashed_holders_permit_comes_back_when_its_lease_ends);

backends!(cluster => Cluster:
    permits_never_exceed_n_under_concurrent_tasks,
    a_waiter_is_woken_by_a_release,
    a_crashed_holders_permit_comes_back_when_its_lease_ends,
    disagreeing_on_permits_fails_with_permits_mismatch,
    permits_are_renewed_while_held,
    the_exclusive_lock_waits_for_every_permit,
    a_writers_release_lets_every_permit_waiter_in,
    every_waiter_gets_in_within_a_bound,
);

// As an ACL user with exactly the rules the README documents.
backends!(redis_acl => RedisAcl:
    permits_never_exceed_n_under_concurrent_tasks,
    a_waiter_is_woken_by_a_release,
    disagreeing_on_permits_fails_with_permits_mismatch,
    force_release_frees_every_permit,
);
