//! Read-write locks (`Locker::read` beside `Locker::lock`, the write lock), run as the
//! conformance suite runs: each behaviour is one `async fn(&TestBackend)`, turned by the macro at
//! the bottom into one test per backend (in memory, one Redis server, a bb8 pool, a Redis
//! Cluster). "Another owner" is another `Locker` (on Redis, with its own connection).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use relock::{Error, LockMode};
use relock_tests::{unique_key, BackendKind, TestBackend};

/// A hung operation fails its test instead of hanging the run.
const TEST_LIMIT: Duration = Duration::from_secs(60);
/// The wait given to requests expected to succeed: long enough for a busy machine.
const LONG_WAIT: Duration = Duration::from_secs(20);
/// Loose upper bounds on a slow, shared machine.
const SLACK: Duration = Duration::from_secs(3);

/// Returns once a waiter on `key` is asleep (a pool without a URL has no release notifications:
/// its waiters retry with backoff).
async fn until_waiting(b: &TestBackend, key: &str) {
    match b.kind() {
        BackendKind::RedisPool => tokio::time::sleep(Duration::from_millis(200)).await,
        _ => b.until_waiting(key).await,
    }
}

async fn readers_share_and_the_writer_excludes_them(b: &TestBackend) {
    let key = unique_key("rw-share");
    let lockers = b.lockers(3).await;
    let first = lockers[0].read(&key).await.unwrap();
    let second = lockers[1]
        .read(&key)
        .wait(Duration::ZERO)
        .await
        .expect("readers share");
    let third = lockers[2].try_read(&key).await.unwrap().expect("shares");
    assert!(
        !second.is_reentrant(),
        "another owner's read is a hold of its own"
    );
    assert_eq!(first.fencing_token(), second.fencing_token());
    assert_eq!(first.fencing_token(), third.fencing_token());
    // From another task: this one holds a read through lockers[2], so its own wait for the
    // write lock could never end (`Error::WouldDeadlock`).
    let (writer, writer_key) = (lockers[2].clone(), key.clone());
    let waited = tokio::spawn(async move {
        let started = Instant::now();
        let err = writer
            .lock(&writer_key)
            .wait(Duration::from_millis(300))
            .await
            .unwrap_err();
        (err, started.elapsed())
    });
    let (err, waited) = waited.await.unwrap();
    assert!(err.is_timeout(), "{err:?}");
    assert!(waited >= Duration::from_millis(300));
    for reader in [first, second, third] {
        reader.release().await.expect("release");
    }
    let writer = lockers[2]
        .lock(&key)
        .wait(Duration::from_secs(2))
        .await
        .expect("free once the readers are gone");
    assert!(lockers[0].try_read(&key).await.unwrap().is_none());
    assert!(lockers[1].try_lock(&key).await.unwrap().is_none());
    writer.release().await.unwrap();
    lockers[0]
        .try_read(&key)
        .await
        .unwrap()
        .expect("free again")
        .release()
        .await
        .unwrap();
}

async fn a_writer_that_does_not_wait_holds_no_reader_up(b: &TestBackend) {
    let key = unique_key("rw-try");
    let other = b.another_locker().await;
    let reader = b.locker.read(&key).await.unwrap();
    // From another task (in memory, `other` is this locker, whose reader this task holds).
    let (writer, writer_key) = (other.clone(), key.clone());
    tokio::spawn(async move {
        assert!(writer.try_lock(&writer_key).await.unwrap().is_none());
        let err = writer
            .lock(&writer_key)
            .wait(Duration::ZERO)
            .await
            .unwrap_err();
        assert!(err.is_timeout(), "{err:?}");
    })
    .await
    .unwrap();
    // Only a writer that waits makes new readers queue behind it.
    let second = other
        .try_read(&key)
        .await
        .unwrap()
        .expect("a refused try_lock claims nothing");
    reader.release().await.unwrap();
    second.release().await.unwrap();
}

async fn waiting_past_own_bare_guard_of_the_other_kind_reports_would_deadlock(b: &TestBackend) {
    let locker = b.locker.clone();
    let key = unique_key("rw-deadlock");
    tokio::spawn(async move {
        let read = locker.read(&key).await.unwrap();
        let err = locker
            .lock(&key)
            .wait(Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::WouldDeadlock { .. }), "{err:?}");
        read.release().await.unwrap();

        let write = locker.lock(&key).await.unwrap();
        let err = locker
            .read(&key)
            .wait(Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::WouldDeadlock { .. }), "{err:?}");
        write.release().await.unwrap();
    })
    .await
    .unwrap();
}

async fn an_upgrade_inside_run_fails_at_once(b: &TestBackend) {
    let locker = &b.locker;
    let key = unique_key("rw-upgrade");
    locker
        .read(&key)
        .run(async {
            let started = Instant::now();
            match locker.lock(&key).wait(LONG_WAIT).await {
                Err(Error::UpgradeRefused { key: named }) => assert_eq!(named, key),
                other => panic!("expected UpgradeRefused, got {other:?}"),
            }
            assert!(matches!(
                locker.try_lock(&key).await,
                Err(Error::UpgradeRefused { .. })
            ));
            assert!(matches!(
                locker.lock(&key).run(async {}).await,
                Err(Error::UpgradeRefused { .. })
            ));
            assert!(
                started.elapsed() < Duration::from_millis(500),
                "refused at once, not after a wait ({:?})",
                started.elapsed()
            );
            // Another key is not an upgrade.
            let other = locker.lock(unique_key("rw-upgrade-other")).await.unwrap();
            other.release().await.unwrap();
        })
        .await
        .expect("the read hold itself stands");
    let err = Error::UpgradeRefused { key: key.clone() };
    assert!(err.to_string().contains("read hold"), "{err}");
}

async fn a_read_inside_a_read_or_the_exclusive_hold_reenters_without_a_round_trip(b: &TestBackend) {
    let locker = &b.locker;
    let key = unique_key("rw-reenter");
    // Load the scripts and open the connection.
    locker
        .read(unique_key("rw-warm-up"))
        .run(async {})
        .await
        .unwrap();
    for exclusive in [false, true] {
        let outer = if exclusive {
            locker.lock(&key)
        } else {
            locker.read(&key)
        };
        let (before, after) = outer
            .run(async {
                let before = b.commands().await;
                let token = relock::current_guard().unwrap().fencing_token();
                for _ in 0..20 {
                    let guard = locker.read(&key).await.expect("re-enter");
                    assert!(guard.is_reentrant());
                    assert_eq!(guard.fencing_token(), token);
                    guard.release().await.expect("a share");
                }
                for _ in 0..10 {
                    let guard = locker.try_read(&key).await.unwrap().expect("re-enters");
                    assert!(guard.is_reentrant());
                }
                let nested = locker
                    .read(&key)
                    .run(async { locker.read(&key).await.unwrap().fencing_token() })
                    .await
                    .unwrap();
                assert_eq!(nested, token);
                if exclusive {
                    // The write lock inside its own read re-entry is the outer exclusive hold.
                    let again = locker.lock(&key).await.expect("re-enter the write lock");
                    assert!(again.is_reentrant());
                }
                (before, b.commands().await)
            })
            .await
            .unwrap();
        assert_eq!(
            after, before,
            "nested reads on the scope's key sent commands (exclusive outer hold: {exclusive})"
        );
    }
}

async fn a_writer_is_not_starved_by_a_stream_of_readers(b: &TestBackend) {
    const HOLD: Duration = Duration::from_millis(300);
    const READERS: usize = 4;
    let key = unique_key("rw-starve");
    let lockers = b.lockers(3).await;
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for n in 0..READERS {
        let (locker, key, stop, reads) = (
            lockers[1 + n % 2].clone(),
            key.clone(),
            stop.clone(),
            reads.clone(),
        );
        tasks.push(tokio::spawn(async move {
            // Staggered, so that some reader always holds the key.
            tokio::time::sleep(HOLD / READERS as u32 * n as u32).await;
            while !stop.load(Ordering::SeqCst) {
                let guard = locker.read(&key).wait(LONG_WAIT).await.expect("a read");
                reads.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(HOLD).await;
                guard.release().await.expect("release");
            }
        }));
    }
    tokio::time::sleep(HOLD * 3).await;
    let info = lockers[0]
        .inspect(&key)
        .await
        .unwrap()
        .expect("readers hold it");
    assert_eq!(info.mode, LockMode::Read);
    let started = Instant::now();
    let writer = lockers[0]
        .lock(&key)
        .wait(LONG_WAIT)
        .await
        .expect("the writer is not starved");
    let waited = started.elapsed();
    // Within one reader's hold (the readers already in) plus a round trip; loose for a busy
    // machine, and far below the stream's length.
    assert!(
        waited < HOLD + Duration::from_secs(1),
        "the writer waited {waited:?} behind readers holding {HOLD:?} each"
    );
    let during = reads.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        reads.load(Ordering::SeqCst),
        during,
        "no reader gets in while the writer holds the key"
    );
    writer.release().await.unwrap();
    // The readers queued behind the writer are woken by its release.
    tokio::time::sleep(HOLD).await;
    assert!(reads.load(Ordering::SeqCst) > during, "readers resume");
    stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await.expect("reader task");
    }
}

async fn a_reader_is_woken_by_the_writers_release_and_carries_its_token(b: &TestBackend) {
    let key = unique_key("rw-wake");
    let other = b.another_locker().await;
    let writer = other.lock(&key).await.unwrap();
    let written = writer.fencing_token();
    let locker = b.locker.clone();
    let reader_key = key.clone();
    let reader = tokio::spawn(async move {
        let guard = locker.read(&reader_key).wait(LONG_WAIT).await?;
        let at = Instant::now();
        let token = guard.fencing_token();
        guard.release().await?;
        Ok::<_, Error>((at, token))
    });
    until_waiting(b, &key).await;
    let released = Instant::now();
    writer.release().await.unwrap();
    let (granted, token) = reader.await.unwrap().expect("the reader gets in");
    assert!(
        granted - released < SLACK,
        "woken {:?} after the release (the writer's lease is 30 s)",
        granted - released
    );
    assert_eq!(token, written, "a reader carries the last writer's token");
    let next = other.lock(&key).await.unwrap();
    assert!(next.fencing_token() > token);
    next.release().await.unwrap();
}

/// A reader that comes to wait for a key another reader of its `Locker` already waits for has
/// its wake-up armed before its first attempt (the subscription is at hand): one refused attempt,
/// then sleep. The writer's release lets both in together.
async fn a_reader_beside_another_waiting_reader_of_its_locker_sleeps_after_one_attempt(
    b: &TestBackend,
) {
    let key = unique_key("rw-beside");
    let warm_up = b.locker.read(unique_key("rw-warm-up")).await.unwrap();
    warm_up.release().await.unwrap();
    let other = b.another_locker().await;
    let writer = other.lock(&key).await.unwrap();
    let readers = Arc::new(AtomicUsize::new(0));
    let (granted, mut grants) = tokio::sync::mpsc::unbounded_channel();
    let reader = || {
        let (locker, key, granted, readers) = (
            b.locker.clone(),
            key.clone(),
            granted.clone(),
            readers.clone(),
        );
        tokio::spawn(async move {
            let guard = locker.read(&key).wait(LONG_WAIT).await.expect("read");
            readers.fetch_add(1, Ordering::SeqCst);
            granted.send(()).expect("the test listens");
            // Both readers hold the key at once before either leaves.
            while readers.load(Ordering::SeqCst) < 2 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            guard.release().await.expect("released");
        })
    };
    let first = reader();
    until_waiting(b, &key).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut admin = b.admin().expect("a Redis backend");
    b.reset_stats().await;
    let second = reader();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let scripts: u64 = relock_tests::script_calls(&mut admin).await;
    assert_eq!(
        scripts, 1,
        "script calls of a reader that joins another waiting reader of its Locker"
    );
    writer.release().await.unwrap();
    for _ in 0..2 {
        tokio::time::timeout(LONG_WAIT, grants.recv())
            .await
            .expect("every reader is let in before its wait ends")
            .expect("the test listens");
    }
    first.await.unwrap();
    second.await.unwrap();
}

async fn a_read_hold_is_renewed_and_run_aborts_when_it_is_force_released(b: &TestBackend) {
    let key = unique_key("rw-renew");
    let other = b.another_locker().await;
    let lease = Duration::from_millis(300);
    let outcome = b
        .locker
        .read(&key)
        .lease(lease)
        .run(async {
            tokio::time::sleep(lease * 4).await;
            assert!(relock::current_guard().unwrap().is_held(), "renewed");
            // Outside this scope (in memory, `other` is this locker: inside, it would upgrade).
            let (other, key) = (other.clone(), key.clone());
            tokio::spawn(async move {
                assert!(other.try_lock(&key).await.unwrap().is_none());
                assert!(other.force_release(&key).await.unwrap());
            })
            .await
            .unwrap();
            tokio::time::sleep(LONG_WAIT).await;
        })
        .await;
    assert!(matches!(outcome, Err(Error::Lost { .. })), "{outcome:?}");
}

async fn inspect_reports_the_readers(b: &TestBackend) {
    let key = unique_key("rw-inspect");
    let first = b.locker.read(&key).await.unwrap();
    let second = b.another_locker().await.read(&key).await.unwrap();
    let info = b.locker.inspect(&key).await.unwrap().expect("read-held");
    assert_eq!(info.mode, LockMode::Read);
    assert_eq!(info.holds, 2);
    assert_eq!(info.fencing_token, first.fencing_token());
    first.release().await.unwrap();
    second.release().await.unwrap();
    assert!(b.locker.inspect(&key).await.unwrap().is_none());
}

/// Redis backends only: an in-memory store has no second process whose renewals could stop.
async fn a_crashed_readers_hold_ends_with_its_lease(b: &TestBackend) {
    let key = unique_key("rw-crash");
    let lease = Duration::from_millis(600);
    let crashed = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async {
                    let locker = b.another_locker().await;
                    let guard = locker
                        .read(&key)
                        .lease(lease)
                        .await
                        .expect("the doomed read");
                    let token = guard.fencing_token();
                    std::mem::forget(guard);
                    token
                })
            })
            .join()
            .unwrap()
    });
    let started = Instant::now();
    let writer = b
        .locker
        .lock(&key)
        .wait(LONG_WAIT)
        .await
        .expect("free once the reader's lease ends");
    assert!(started.elapsed() < lease + SLACK, "{:?}", started.elapsed());
    assert!(
        writer.fencing_token() > crashed,
        "the fencing token is kept"
    );
    writer.release().await.unwrap();
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

every_backend!(
    readers_share_and_the_writer_excludes_them,
    a_writer_that_does_not_wait_holds_no_reader_up,
    waiting_past_own_bare_guard_of_the_other_kind_reports_would_deadlock,
    an_upgrade_inside_run_fails_at_once,
    a_read_inside_a_read_or_the_exclusive_hold_reenters_without_a_round_trip,
    a_writer_is_not_starved_by_a_stream_of_readers,
    a_reader_is_woken_by_the_writers_release_and_carries_its_token,
    a_read_hold_is_renewed_and_run_aborts_when_it_is_force_released,
    inspect_reports_the_readers,
);

backends!(redis_crash => Redis: a_crashed_readers_hold_ends_with_its_lease);
backends!(redis_wake => Redis:
    a_reader_beside_another_waiting_reader_of_its_locker_sleeps_after_one_attempt,
);
backends!(redis_pool_crash => RedisPool: a_crashed_readers_hold_ends_with_its_lease);

backends!(cluster => Cluster:
    readers_share_and_the_writer_excludes_them,
    a_writer_is_not_starved_by_a_stream_of_readers,
    a_reader_is_woken_by_the_writers_release_and_carries_its_token,
    a_crashed_readers_hold_ends_with_its_lease,
);

// As an ACL user with exactly the rules the README documents.
backends!(redis_acl => RedisAcl:
    readers_share_and_the_writer_excludes_them,
    a_reader_is_woken_by_the_writers_release_and_carries_its_token,
    inspect_reports_the_readers,
);
