//! Redis Sentinel: locks through the master the sentinels name, and what a failover does — each
//! hold is either still held on the promoted replica (renewals continue) or reported lost by its
//! guard, never held twice; the locker that lived through the failover locks again within the
//! failover time + 2 s, under larger fencing tokens; a waiter is woken by a release announced on
//! the new master; readers and permit holders survive or learn their loss the same way, and no
//! writer or extra permit is granted beside them.

use std::time::{Duration, Instant};

use relock::{Error, Locker};
use relock_tests::{
    bounded, release_channel, subscribers, unique_key, until_subscribed, RedisSentinel,
};

/// Longer than the failover (about 2–3 s with `down-after-milliseconds 1000`) plus a renewal
/// period, so that holds the replica received survive it.
const LEASE: Duration = Duration::from_secs(6);
const KEYS: usize = 16;
const TEST_LIMIT: Duration = Duration::from_secs(60);

fn sentinel_locker(deployment: &RedisSentinel, lease: Duration) -> Locker {
    deployment
        .builder()
        .lease(lease)
        .wait(Duration::from_secs(15))
        .build()
        .expect("a sentinel locker")
}

async fn master_connection(deployment: &RedisSentinel) -> redis::aio::MultiplexedConnection {
    let master = deployment.master().port();
    redis::Client::open(format!("redis://127.0.0.1:{master}"))
        .expect("a valid url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to the master")
}

/// `WAIT 1`: the replica has every write the master made so far.
async fn until_replicated(deployment: &RedisSentinel) {
    let acked: u64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query_async(&mut master_connection(deployment).await)
        .await
        .expect("WAIT");
    assert_eq!(acked, 1, "the replica acknowledged the writes");
}

fn backend_message(outcome: Result<Option<relock::LockGuard>, Error>) -> String {
    match outcome {
        Err(Error::Backend(err)) => err.to_string(),
        other => panic!("expected Error::Backend, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_are_taken_released_and_waited_for_through_the_sentinels() {
    let deployment = RedisSentinel::start();
    bounded(TEST_LIMIT, async {
        let locker = sentinel_locker(&deployment, LEASE);
        let other = sentinel_locker(&deployment, LEASE);
        let key = unique_key("sentinel-basics");
        let guard = locker.lock(key.as_str()).await.expect("lock");
        assert!(guard.is_held());
        assert!(other
            .try_lock(key.as_str())
            .await
            .expect("try_lock")
            .is_none());
        let info = other
            .inspect(key.as_str())
            .await
            .expect("inspect")
            .expect("held");
        assert_eq!(info.fencing_token, guard.fencing_token());

        let waiting = {
            let (other, key) = (other.clone(), key.clone());
            tokio::spawn(async move { other.lock(key.as_str()).await })
        };
        until_subscribed(&mut master_connection(&deployment).await, &key).await;
        let before = guard.fencing_token();
        let released = Instant::now();
        guard.release().await.expect("release");
        let next = waiting
            .await
            .expect("the waiter")
            .expect("the waiter's lock");
        // Woken by the release message, not by the holder's lease (6 s).
        assert!(
            released.elapsed() < Duration::from_secs(3),
            "{:?}",
            released.elapsed()
        );
        assert!(next.fencing_token() > before);
        next.release().await.expect("release");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_name_the_sentinels_do_not_know_fails_with_backend_naming_it() {
    let deployment = RedisSentinel::start();
    let locker = Locker::builder()
        .sentinel(deployment.sentinel_urls(), "no-such-master")
        .connect_timeout(Duration::from_millis(500))
        .response_timeout(Duration::from_millis(500))
        .build()
        .expect("building opens no connection");
    let started = Instant::now();
    let message = backend_message(locker.try_lock("unknown-master").await);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(message.contains("no-such-master"), "{message}");
    for url in deployment.sentinel_urls() {
        let address = url.trim_start_matches("redis://");
        assert!(message.contains(address), "{message} names {address}");
    }
}

/// Sentinels that cannot be reached — a closed port, and one that accepts connections and never
/// answers — fail a lock with `Error::Backend` within the connect and response timeouts, with a
/// message naming the master and each sentinel tried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_sentinels_fail_with_backend_within_the_timeouts() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_port = silent.local_addr().expect("address").port();
    let closed_port = relock_tests::free_port();
    let locker = Locker::builder()
        .sentinel(
            [
                format!("redis://127.0.0.1:{closed_port}"),
                format!("redis://127.0.0.1:{silent_port}"),
            ],
            "mymaster",
        )
        .connect_timeout(Duration::from_millis(500))
        .response_timeout(Duration::from_millis(500))
        .build()
        .expect("building opens no connection");
    let started = Instant::now();
    let message = backend_message(locker.try_lock("unreachable").await);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(message.contains("mymaster"), "{message}");
    assert!(message.contains(&closed_port.to_string()), "{message}");
    assert!(message.contains(&silent_port.to_string()), "{message}");
    // Waiting locks fail the same way, not by running out their wait.
    let started = Instant::now();
    let waited = locker
        .lock("unreachable")
        .wait(Duration::from_secs(20))
        .await;
    assert!(matches!(waited, Err(Error::Backend(_))), "{waited:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_failover_never_leaves_two_holders_and_fencing_tokens_keep_increasing() {
    let mut deployment = RedisSentinel::start();
    let holder = sentinel_locker(&deployment, LEASE);
    let keys: Vec<String> = (0..KEYS)
        .map(|i| unique_key(&format!("sentinel-failover-{i}")))
        .collect();
    let mut guards = Vec::new();
    for key in &keys {
        guards.push(
            holder
                .lock(key.as_str())
                .await
                .expect("lock before the failover"),
        );
    }
    let before: Vec<u64> = guards.iter().map(|guard| guard.fencing_token()).collect();
    // Replication is asynchronous; give it the moment it usually has (no WAIT: a grant the
    // replica missed must be reported lost, and that is checked below too).
    tokio::time::sleep(Duration::from_millis(200)).await;

    let failover = tokio::task::block_in_place(|| deployment.kill_master());
    println!("failover took {failover:?}");
    // The locker that lived through the failover locks again within 2 s of it.
    let again = Instant::now();
    let probe = unique_key("sentinel-failover-probe");
    loop {
        match holder.try_lock(probe.as_str()).await {
            Ok(Some(guard)) => {
                guard.release().await.expect("release the probe");
                break;
            }
            outcome => assert!(
                again.elapsed() < Duration::from_secs(2),
                "no lock {:?} after the failover: {outcome:?}",
                again.elapsed()
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "the holder's locker locked again {:?} after the failover",
        again.elapsed()
    );
    // Every hold gets a renewal attempt against the new master.
    tokio::time::sleep(LEASE / 3 + Duration::from_secs(1)).await;

    let other = sentinel_locker(&deployment, LEASE);
    let mut kept = 0;
    for (key, guard) in keys.iter().zip(&guards) {
        if !guard.is_held() {
            continue;
        }
        kept += 1;
        let info = other
            .inspect(key.as_str())
            .await
            .expect("inspect after the failover")
            .unwrap_or_else(|| panic!("{key} is held by its guard but gone from the new master"));
        assert_eq!(info.fencing_token, guard.fencing_token(), "{key}");
        let second = other.try_lock(key.as_str()).await.expect("try_lock");
        assert!(second.is_none(), "{key} has two holders");
    }
    println!("{kept} of {KEYS} holds survived the failover");
    // A failover shorter than half the lease leaves time for the renewals: most holds the
    // replica had received must be kept (on a loaded machine one may miss its deadline).
    if failover < LEASE / 2 {
        assert!(
            kept * 2 >= KEYS,
            "only {kept} of {KEYS} holds survived a {failover:?} failover"
        );
    }

    for guard in guards {
        let _ = guard.release().await;
    }
    for (key, before) in keys.iter().zip(before) {
        let guard = holder
            .lock(key.as_str())
            .wait(LEASE + Duration::from_secs(2))
            .await
            .unwrap_or_else(|err| panic!("{key} cannot be locked again: {err}"));
        assert!(
            guard.fencing_token() > before,
            "{key}: fencing token went backwards"
        );
        guard.release().await.expect("release after the failover");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_is_woken_by_a_release_on_the_new_master() {
    // Renewed every 5 s: at the release, the holder's lease has several seconds left, so a
    // waiter woken quickly was woken by the release message.
    let lease = Duration::from_secs(15);
    let mut deployment = RedisSentinel::start();
    let holder = sentinel_locker(&deployment, lease);
    let waiter = sentinel_locker(&deployment, lease);
    let key = unique_key("sentinel-waiter");
    let guard = holder.lock(key.as_str()).await.expect("lock");
    until_replicated(&deployment).await;
    let waiting = {
        let (waiter, key) = (waiter.clone(), key.clone());
        tokio::spawn(async move {
            let guard = waiter
                .lock(key.as_str())
                .wait(Duration::from_secs(40))
                .await;
            (guard, Instant::now())
        })
    };
    until_subscribed(&mut master_connection(&deployment).await, &key).await;

    let failover = tokio::task::block_in_place(|| deployment.kill_master());
    println!("failover took {failover:?}");
    // The waiter's subscriber moves to the new master, and the waiter keeps waiting.
    let mut new_master = master_connection(&deployment).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while subscribers(&mut new_master, &release_channel(&key)).await == 0 {
        if waiting.is_finished() {
            panic!("the waiter gave up in the failover: {:?}", waiting.await);
        }
        assert!(
            Instant::now() < deadline,
            "the waiter's subscriber never moved to the new master"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The holder's first command may still meet the dead master's connection and fail.
    let deadline = Instant::now() + Duration::from_secs(5);
    while holder.inspect(key.as_str()).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the holder's locker never reached the new master"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(guard.is_held(), "the replicated hold survived the failover");
    let before = guard.fencing_token();
    let released = Instant::now();
    guard.release().await.expect("release on the new master");
    let (next, acquired) = bounded(Duration::from_secs(30), waiting)
        .await
        .expect("the waiter's task");
    let next = next.expect("the waiter's lock");
    let woken_after = acquired.saturating_duration_since(released);
    println!("the waiter got the lock {woken_after:?} after the release");
    assert!(
        woken_after < Duration::from_millis(2500),
        "the waiter took {woken_after:?}: not woken by the release message"
    );
    assert!(next.fencing_token() > before);
    next.release().await.expect("release");
}

/// Replica-acknowledged acquisitions through Sentinel: acknowledged by the replica before the
/// failover; after it, the dedicated connection is on the new master (which has no replica left:
/// the only one was promoted), so the acquisition fails with `NotReplicated` — not with an error
/// from a connection to the dead master — and leaves nothing held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_acquisitions_follow_the_master_through_a_failover() {
    let mut deployment = RedisSentinel::start();
    let locker = deployment
        .builder()
        .lease(LEASE)
        .replicas(1, Duration::from_millis(300))
        .build()
        .expect("a sentinel locker");
    bounded(TEST_LIMIT, async {
        let key = unique_key("sentinel-acked");
        let guard = locker.lock(key.as_str()).await.expect("acknowledged lock");
        guard.release().await.expect("release");

        let failover = tokio::task::block_in_place(|| deployment.kill_master());
        println!("failover took {failover:?}");
        let deadline = Instant::now() + Duration::from_secs(2);
        let outcome = loop {
            match locker.lock(key.as_str()).await {
                // The command connection still on the dead master: the next finds the new one.
                Err(Error::Backend(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                outcome => break outcome,
            }
        };
        match outcome {
            Err(Error::NotReplicated {
                acknowledged: 0,
                required: 1,
                ..
            }) => {}
            other => panic!("expected NotReplicated on the replica-less new master, got {other:?}"),
        }
        let plain = sentinel_locker(&deployment, LEASE);
        let guard = plain
            .try_lock(key.as_str())
            .await
            .expect("try_lock")
            .expect("nothing left held by the unreplicated grant");
        guard.release().await.expect("release");
        let guard = locker
            .lock(key.as_str())
            .replicas(0, Duration::ZERO)
            .await
            .expect("no replica asked for");
        guard.release().await.expect("release");
    })
    .await;
}

/// A graceful failover (`SENTINEL FAILOVER`): the old master stays up, and answers `ROLE` as a
/// master until the sentinels reconfigure it. History checked: whenever a second locker (asking
/// the sentinels in the other order) is granted a key, the first locker's guard for it no longer
/// says held — a renewal that only reached the old master must not keep it believing so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_failover_never_leaves_two_holders() {
    let mut deployment = RedisSentinel::start();
    let lease = Duration::from_secs(3);
    let holder = sentinel_locker(&deployment, lease);
    let other = Locker::builder()
        .sentinel(
            deployment.sentinel_urls_reversed(),
            relock_tests::MASTER_NAME,
        )
        .lease(lease)
        .build()
        .expect("a sentinel locker");
    bounded(TEST_LIMIT, async {
        let keys: Vec<String> = (0..8).map(|i| unique_key(&format!("graceful-{i}"))).collect();
        let mut guards = Vec::new();
        for key in &keys {
            guards.push(holder.lock(key.as_str()).await.expect("lock"));
        }
        // `other` knows the old master too before the failover.
        assert!(other.try_lock("graceful-warm-up").await.expect("try_lock").is_some());
        until_replicated(&deployment).await;
        let failover = tokio::task::block_in_place(|| deployment.graceful_failover());
        println!("graceful failover: the replica answered ROLE master after {failover:?}");

        let mut taken = vec![false; keys.len()];
        let until = Instant::now() + lease * 3;
        while Instant::now() < until {
            for (at, key) in keys.iter().enumerate() {
                if taken[at] {
                    continue;
                }
                if let Ok(Some(second)) = other.try_lock(key.as_str()).await {
                    assert!(
                        !guards[at].is_held(),
                        "{key}: granted to a second locker (token {}) while its first guard \
                         (token {}) still says held",
                        second.fencing_token(),
                        guards[at].fencing_token()
                    );
                    assert!(second.fencing_token() > guards[at].fencing_token());
                    taken[at] = true;
                    std::mem::forget(second);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let kept = guards.iter().filter(|guard| guard.is_held()).count();
        let moved = taken.iter().filter(|taken| **taken).count();
        println!("after the graceful failover: {kept} holds kept, {moved} keys taken by the other locker");
        for (guard, taken) in guards.iter().zip(&taken) {
            assert!(
                guard.is_held() != *taken,
                "{}: held by its first guard: {}, taken by the other locker: {taken}",
                guard.key(),
                guard.is_held()
            );
        }
    })
    .await;
}

/// A reader and permit holders through Sentinel across a master failover (the master SIGKILLed
/// after the replica acknowledged every grant). The contract: a hold on the dead master is
/// either still there on the promoted replica, renewals continuing, or reported lost by its
/// guard — never two holders, never more than `n` permits — and fencing tokens keep increasing.
///
/// * A reader and both permits of a semaphore of two, with a 6 s lease (longer than the
///   failover plus a renewal period): they survive the failover (asserted when it took less
///   than half the lease, as for exclusive holds above); the new master lists them, and while
///   they are held a writer is refused beside the reader and a third permit is refused.
/// * A reader and a permit with a 500 ms lease (shorter than `down-after-milliseconds`, so no
///   renewal can reach a master before their local deadline): their guards report the loss,
///   and a writer and a new permit take their place on the new master under larger tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_and_permits_survive_a_failover_or_learn_their_loss_never_beside_a_writer() {
    let mut deployment = RedisSentinel::start();
    let long = sentinel_locker(&deployment, LEASE);
    let short = sentinel_locker(&deployment, Duration::from_millis(500));
    let other = sentinel_locker(&deployment, LEASE);
    bounded(TEST_LIMIT, async {
        let (read_key, permit_key) = (unique_key("sentinel-read"), unique_key("sentinel-permits"));
        let (short_read_key, short_permit_key) = (
            unique_key("sentinel-short-read"),
            unique_key("sentinel-short-permit"),
        );
        let writer = other.lock(read_key.as_str()).await.expect("a first writer");
        let written = writer.fencing_token();
        writer.release().await.expect("release the first writer");
        let reader = long.read(read_key.as_str()).await.expect("read");
        assert_eq!(
            reader.fencing_token(),
            written,
            "a reader's token is the last writer's"
        );
        let semaphore = long.semaphore(permit_key.as_str(), 2);
        let permits = [
            semaphore.acquire().await.expect("a permit"),
            semaphore.acquire().await.expect("a second permit"),
        ];
        let short_reader = short.read(short_read_key.as_str()).await.expect("read");
        let short_permit = short
            .semaphore(short_permit_key.as_str(), 1)
            .acquire()
            .await
            .expect("a permit");
        until_replicated(&deployment).await;

        let failover = tokio::task::block_in_place(|| deployment.kill_master());
        println!("failover took {failover:?}");

        // The short holds could not be renewed anywhere before their local deadline.
        tokio::time::timeout(Duration::from_secs(1), short_reader.lost())
            .await
            .unwrap_or_else(|_| {
                panic!("the 500 ms reader kept its hold in a {failover:?} failover")
            });
        tokio::time::timeout(Duration::from_secs(1), short_permit.lost())
            .await
            .unwrap_or_else(|_| {
                panic!("the 500 ms permit kept its hold in a {failover:?} failover")
            });
        assert!(!short_reader.is_held() && !short_permit.is_held());
        let wait = Duration::from_secs(10);
        let writer = other
            .lock(short_read_key.as_str())
            .wait(wait)
            .await
            .expect("a writer in the lost reader's place");
        assert!(writer.fencing_token() > short_reader.fencing_token());
        let permit = other
            .semaphore(short_permit_key.as_str(), 1)
            .acquire()
            .wait(wait)
            .await
            .expect("a permit in the lost one's place");
        assert!(permit.fencing_token() > short_permit.fencing_token());
        writer.release().await.expect("release");
        permit.release().await.expect("release");

        // Every long hold gets a renewal attempt against the new master; watch them for two
        // more renewal periods: while a hold is held, nobody may take its place.
        tokio::time::sleep(LEASE / 3 + Duration::from_secs(1)).await;
        if failover < LEASE / 2 {
            assert!(
                reader.is_held(),
                "the acknowledged reader did not survive a {failover:?} failover"
            );
            for permit in &permits {
                assert!(
                    permit.is_held(),
                    "an acknowledged permit did not survive a {failover:?} failover"
                );
            }
        }
        let watched = Instant::now();
        while watched.elapsed() < LEASE * 2 / 3 {
            // Each check reads the guard after the server: a hold that still says held then
            // was held (by its own account) when the server answered.
            let info = other.inspect(read_key.as_str()).await.expect("inspect");
            if reader.is_held() {
                let info = info.expect("a reader that says held is on the new master");
                assert_eq!((info.mode, info.holds), (relock::LockMode::Read, 1));
            }
            let writer = other.try_lock(read_key.as_str()).await.expect("try_lock");
            assert!(
                writer.is_none() || !reader.is_held(),
                "a writer was granted {read_key} beside a reader that still says held"
            );
            drop(writer);
            let third = other
                .semaphore(permit_key.as_str(), 2)
                .try_acquire()
                .await
                .expect("try_acquire");
            let held = permits.iter().filter(|permit| permit.is_held()).count();
            assert!(
                third.is_none() || held < 2,
                "a third permit was granted beside two of two that still say held"
            );
            drop(third);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!(
            "after the failover: reader held {}, permits held {}",
            reader.is_held(),
            permits.iter().filter(|permit| permit.is_held()).count()
        );

        let (read_token, permit_tokens) = (
            reader.fencing_token(),
            permits.iter().map(|permit| permit.fencing_token()).max(),
        );
        let _ = reader.release().await;
        for permit in permits {
            let _ = permit.release().await;
        }
        let writer = other
            .lock(read_key.as_str())
            .wait(LEASE + Duration::from_secs(2))
            .await
            .expect("the writer after the reader");
        assert!(
            writer.fencing_token() > read_token,
            "fencing token went backwards"
        );
        writer.release().await.expect("release");
        let permit = other
            .semaphore(permit_key.as_str(), 2)
            .acquire()
            .wait(LEASE + Duration::from_secs(2))
            .await
            .expect("a permit after the failover");
        assert!(
            Some(permit.fencing_token()) > permit_tokens,
            "fencing token went backwards"
        );
        permit.release().await.expect("release");
    })
    .await;
}
