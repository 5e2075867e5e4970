//! Replica-acknowledged acquisitions (`LockerBuilder::replicas`, `Acquire::replicas`): the acquire
//! script and `WAIT` go in one pipeline on a connection of their own, so a grant that returns is
//! on `n` replicas, and one that fewer acknowledge in time is released and reported as
//! `Error::NotReplicated`, leaving no hold behind — also when the request is cancelled mid-wait.
//! Checked on a master with one replica (stopped with SIGSTOP for the failures, promoted after
//! the master is SIGKILLed for the history that matters) and on a Redis Cluster.

use std::time::{Duration, Instant};

use relock::{Error, Locker};
use relock_tests::{bounded, unique_key, RedisCluster, RedisSentinel, RedisServer};

const LEASE: Duration = Duration::from_secs(10);

fn replicated(server: &RedisServer, timeout: Duration) -> Locker {
    Locker::builder()
        .url(server.url())
        .lease(LEASE)
        .wait(Duration::from_secs(5))
        .replicas(1, timeout)
        .build()
        .expect("a locker")
}

/// Whether the lock `name` holds a hold on the server at `port` (`READONLY` first, for a cluster
/// replica): a value that is not a release's tombstone (`-…`).
fn held(port: u16, name: &str, readonly: bool) -> bool {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("url");
    let mut connection = client.get_connection().expect("connect");
    if readonly {
        redis::cmd("READONLY")
            .query::<()>(&mut connection)
            .expect("READONLY");
    }
    redis::cmd("GET")
        .arg(name)
        .query::<Option<String>>(&mut connection)
        .expect("GET")
        .is_some_and(|value| !value.starts_with('-'))
}

fn lock_name(key: &str) -> String {
    format!("relock:{{{key}}}")
}

fn assert_not_replicated<T: std::fmt::Debug>(result: Result<T, Error>, key: &str) {
    assert_acknowledged_by(result, key, (0, 1));
}

/// `result` is `NotReplicated` for `key`, with `(acknowledged, required)` replicas.
fn assert_acknowledged_by<T: std::fmt::Debug>(
    result: Result<T, Error>,
    key: &str,
    counts: (u32, u32),
) {
    match result {
        Err(Error::NotReplicated {
            key: failed,
            acknowledged,
            required,
        }) => {
            assert_eq!(failed, key);
            assert_eq!((acknowledged, required), counts);
        }
        Err(other) => panic!("{key}: expected NotReplicated, got {other}"),
        Ok(granted) => panic!("{key}: granted ({granted:?}) without the replicas asked for"),
    }
}

/// No holder of `key` is left at the server: `inspect` finds none, and an exclusive `try_lock`
/// (which excludes readers and permits) gets the key.
async fn assert_free(locker: &Locker, key: &str) {
    let info = locker.inspect(key).await.expect("inspect");
    assert!(
        info.is_none(),
        "{key}: still held after NotReplicated: {info:?}"
    );
    let guard = locker
        .try_lock(key)
        .await
        .expect("try_lock")
        .unwrap_or_else(|| panic!("{key}: busy after NotReplicated"));
    guard.release().await.expect("release");
}

/// A reader of `read_key` and a permit of `permit_key`, taken through `locker` (which asks for
/// one replica), are granted with a live replica and are on it (`on_replica`) when they return;
/// with the replica stopped (`stop`, then `resume`), each fails with `NotReplicated` and leaves
/// nothing held, as `plain` sees it.
async fn shared_holds_wait_for_the_replica(
    locker: &Locker,
    plain: &Locker,
    (read_key, permit_key): (&str, &str),
    on_replica: impl Fn(&str) -> bool,
    stop: impl FnOnce(),
    resume: impl FnOnce(),
) {
    let (read_key, permit_key) = (read_key.to_owned(), permit_key.to_owned());
    let reader = locker.read(read_key.as_str()).await.expect("read");
    assert!(
        on_replica(&read_key),
        "{read_key}: the read hold is not on the replica when read returned"
    );
    let permit = locker
        .semaphore(permit_key.as_str(), 2)
        .acquire()
        .await
        .expect("a permit");
    assert!(
        on_replica(&permit_key),
        "{permit_key}: the permit is not on the replica when acquire returned"
    );
    reader.release().await.expect("release the reader");
    permit.release().await.expect("return the permit");

    stop();
    assert_not_replicated(locker.read(read_key.as_str()).await, &read_key);
    assert_free(plain, &read_key).await;
    assert_not_replicated(
        locker
            .try_read(read_key.as_str())
            .await
            .map(|guard| guard.expect("granted or failed, never busy")),
        &read_key,
    );
    assert_free(plain, &read_key).await;
    let semaphore = locker.semaphore(permit_key.as_str(), 2);
    assert_not_replicated(semaphore.acquire().await, &permit_key);
    assert_free(plain, &permit_key).await;
    assert_not_replicated(
        semaphore
            .try_acquire()
            .await
            .map(|permit| permit.expect("granted or failed, never busy")),
        &permit_key,
    );
    assert_free(plain, &permit_key).await;
    // The request's own setting wins: 0 replicas does not wait.
    let permit = semaphore
        .acquire()
        .replicas(0, Duration::ZERO)
        .await
        .expect("a permit that asks for no replica");
    permit.release().await.expect("return the permit");
    resume();
    let reader = locker
        .read(read_key.as_str())
        .await
        .expect("acknowledged once the replica runs again");
    reader.release().await.expect("release the reader");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_grant_is_on_the_replica_when_lock_returns() {
    let master = RedisServer::start();
    let replica = RedisServer::start_replica_of(&master);
    let locker = replicated(&master, Duration::from_secs(2));
    bounded(Duration::from_secs(30), async {
        for i in 0..20 {
            let key = unique_key(&format!("acked-{i}"));
            let guard = locker.lock(key.as_str()).await.expect("lock");
            // `WAIT` answered 1 before `lock` returned: the replica has the grant now, not later.
            assert!(
                held(replica.port(), &lock_name(&key), false),
                "{key} is not on the replica when its lock returned"
            );
            guard.release().await.expect("release");
            // Re-entry inside a scope costs no acknowledgement: it never reaches the server.
            locker
                .lock(key.as_str())
                .run(async {
                    let inner = locker.lock(key.as_str()).await.expect("re-enter");
                    assert!(inner.is_reentrant());
                })
                .await
                .expect("run under an acknowledged grant");
        }
        // A waiter woken by a release gets an acknowledged grant too.
        let key = unique_key("acked-waiter");
        let first = locker.lock(key.as_str()).await.expect("lock");
        let waiter = {
            let locker = locker.clone();
            let key = key.clone();
            tokio::spawn(async move { locker.lock(key.as_str()).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let token = first.fencing_token();
        first.release().await.expect("release");
        let second = waiter.await.expect("join").expect("the waiter's lock");
        assert!(second.fencing_token() > token);
        assert!(held(replica.port(), &lock_name(&key), false));
        second.release().await.expect("release");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_replica_fails_the_acquisition_and_leaves_no_hold() {
    let master = RedisServer::start();
    let replica = RedisServer::start_replica_of(&master);
    let timeout = Duration::from_millis(300);
    let locker = replicated(&master, timeout);
    let plain = master.locker().await;
    bounded(Duration::from_secs(30), async {
        replica.pause();
        let key = unique_key("stalled-replica");
        let started = Instant::now();
        let result = locker.lock(key.as_str()).await;
        let took = started.elapsed();
        assert_not_replicated(result, &key);
        assert!(took >= timeout, "WAIT gave up after {took:?}");
        // Released before the error was returned: nothing is left on the master.
        assert!(
            !held(master.port(), &lock_name(&key), false),
            "{key}: the unreplicated grant is still on the master"
        );
        let taken = plain
            .try_lock(key.as_str())
            .await
            .expect("try_lock")
            .expect("the key is free after NotReplicated");
        taken.release().await.expect("release");

        // The request's own setting wins: 0 replicas does not wait.
        let guard = locker
            .lock(key.as_str())
            .replicas(0, timeout)
            .await
            .expect("a lock that asks for no replica");
        guard.release().await.expect("release");
        // `try_lock` asks for them too.
        assert_not_replicated(
            locker
                .try_lock(key.as_str())
                .await
                .map(|guard| guard.expect("granted or failed, never busy")),
            &key,
        );
        assert!(!held(master.port(), &lock_name(&key), false));

        replica.resume();
        let guard = locker
            .lock(key.as_str())
            .await
            .expect("acknowledged once the replica runs again");
        guard.release().await.expect("release");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_and_permits_wait_for_the_replica_too() {
    let master = RedisServer::start();
    let replica = RedisServer::start_replica_of(&master);
    let locker = replicated(&master, Duration::from_millis(300));
    let plain = master.locker().await;
    bounded(Duration::from_secs(30), async {
        shared_holds_wait_for_the_replica(
            &locker,
            &plain,
            (&unique_key("acked-reader"), &unique_key("acked-permit")),
            |key| held(replica.port(), &lock_name(key), false),
            || replica.pause(),
            || replica.resume(),
        )
        .await;
    })
    .await;
}

/// Behind Sentinel, on the master the sentinels name: a reader and a permit asking for the one
/// replica are granted; asking for two (there is one) fails with `NotReplicated` and leaves
/// nothing held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_readers_and_permits_wait_for_the_replica() {
    let deployment = RedisSentinel::start();
    let locker = deployment
        .builder()
        .lease(LEASE)
        .replicas(1, Duration::from_millis(500))
        .build()
        .expect("a sentinel locker");
    let plain = deployment.builder().lease(LEASE).build().expect("a locker");
    bounded(Duration::from_secs(30), async {
        let key = unique_key("sentinel-acked-shared");
        let reader = locker.read(key.as_str()).await.expect("read");
        reader.release().await.expect("release");
        let permit = locker
            .semaphore(key.as_str(), 3)
            .acquire()
            .await
            .expect("a permit");
        permit.release().await.expect("release");

        let timeout = Duration::from_millis(200);
        assert_acknowledged_by(
            locker.read(key.as_str()).replicas(2, timeout).await,
            &key,
            (1, 2),
        );
        assert_free(&plain, &key).await;
        assert_acknowledged_by(
            locker
                .semaphore(key.as_str(), 3)
                .acquire()
                .replicas(2, timeout)
                .await,
            &key,
            (1, 2),
        );
        assert_free(&plain, &key).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_acquisition_cancelled_mid_wait_leaves_no_hold() {
    let master = RedisServer::start();
    let replica = RedisServer::start_replica_of(&master);
    let locker = replicated(&master, Duration::from_secs(5));
    let plain = master.locker().await;
    bounded(Duration::from_secs(30), async {
        replica.pause();
        for i in 0..5 {
            let key = unique_key(&format!("cancelled-wait-{i}"));
            // Cancelled while `WAIT` blocks on the master: the script ran, the grant is there.
            let cancelled =
                tokio::time::timeout(Duration::from_millis(150), locker.lock(key.as_str())).await;
            assert!(
                cancelled.is_err(),
                "{key}: WAIT returned with the replica stopped"
            );
            // The grant is released in the background, on the shared connection (`WAIT` blocks
            // only its own).
            let deadline = Instant::now() + Duration::from_secs(3);
            while held(master.port(), &lock_name(&key), false) {
                assert!(
                    Instant::now() < deadline,
                    "{key}: the cancelled acquisition's grant is still held after 3 s"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let guard = plain
                .try_lock(key.as_str())
                .await
                .expect("try_lock")
                .expect("free");
            guard.release().await.expect("release");
        }
        replica.resume();
    })
    .await;
}

/// The history acknowledgements exist for: grants, then the master dies at once and its replica
/// is promoted. Every acknowledged grant is on the new master, under the same fencing token, and
/// nobody else can take it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_replica_has_every_acknowledged_grant() {
    let mut master = RedisServer::start();
    let replica = RedisServer::start_replica_of(&master);
    let locker = replicated(&master, Duration::from_secs(2));
    let keys: Vec<String> = (0..30)
        .map(|i| unique_key(&format!("promoted-{i}")))
        .collect();
    let mut tokens = Vec::new();
    for key in &keys {
        let guard = locker.lock(key.as_str()).await.expect("lock");
        tokens.push(guard.fencing_token());
        std::mem::forget(guard);
    }
    master.kill();
    let mut promote = replica.client().get_connection().expect("connect");
    redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query::<()>(&mut promote)
        .expect("promote the replica");
    let other = replica.locker().await;
    for (key, token) in keys.iter().zip(tokens) {
        let info = other
            .inspect(key.as_str())
            .await
            .expect("inspect")
            .unwrap_or_else(|| panic!("{key}: the promoted replica forgot an acknowledged grant"));
        assert_eq!(info.fencing_token, token, "{key}");
        assert!(
            other
                .try_lock(key.as_str())
                .await
                .expect("try_lock")
                .is_none(),
            "{key}: taken again on the promoted replica"
        );
    }
}

#[tokio::test]
async fn the_in_memory_store_has_no_replicas_to_acknowledge() {
    let locker = Locker::builder()
        .replicas(1, Duration::from_millis(10))
        .build_in_memory();
    let key = "in-memory-replicas";
    assert_not_replicated(locker.lock(key).await, key);
    assert_not_replicated(locker.read(key).await, key);
    assert_not_replicated(locker.semaphore(key, 2).acquire().await, key);
    assert!(locker.inspect(key).await.expect("inspect").is_none());
    let guard = locker
        .lock(key)
        .replicas(0, Duration::ZERO)
        .await
        .expect("no replica asked for");
    assert!(guard.is_held());
    let err = Error::NotReplicated {
        key: key.to_owned(),
        acknowledged: 0,
        required: 1,
    };
    assert!(
        err.to_string().contains("only 0 of the 1 replicas"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_grants_are_acknowledged_by_the_slots_replica() {
    let mut cluster = RedisCluster::start(3, 1);
    let locker = Locker::builder()
        .cluster(cluster.seeds())
        .lease(LEASE)
        .replicas(1, Duration::from_millis(500))
        .build()
        .expect("a cluster locker");
    let keys: Vec<String> = (0..12)
        .map(|i| unique_key(&format!("cluster-acked-{i}")))
        .collect();
    bounded(Duration::from_secs(60), async {
        for key in &keys {
            let guard = locker.lock(key.as_str()).await.expect("lock");
            let replica = cluster.replica_of(cluster.master_of(key));
            assert!(
                held(replica, &lock_name(key), true),
                "{key} is not on its slot's replica when its lock returned"
            );
            guard.release().await.expect("release");
        }
        let victim = keys[0].clone();
        let master = cluster.master_of(&victim);
        let replica = cluster.replica_of(master);
        cluster.pause(replica);
        assert_not_replicated(locker.lock(victim.as_str()).await, &victim);
        assert!(
            !held(master, &lock_name(&victim), false),
            "{victim}: the unreplicated grant is still on its master"
        );
        // Keys on the other masters are still acknowledged.
        for key in keys.iter().filter(|key| cluster.master_of(key) != master) {
            let guard = locker.lock(key.as_str()).await.expect("lock elsewhere");
            guard.release().await.expect("release");
        }
        cluster.resume(replica);
        let guard = locker
            .lock(victim.as_str())
            .await
            .expect("acknowledged once the replica runs again");
        guard.release().await.expect("release");

        // Readers and permits too, on a key of the same master (whose replica is stopped).
        let plain = Locker::builder()
            .cluster(cluster.seeds())
            .lease(LEASE)
            .build()
            .expect("a cluster locker");
        let mut on_master = (0..)
            .map(|i| unique_key(&format!("cluster-acked-shared-{i}")))
            .filter(|key| cluster.master_of(key) == master);
        let read_key = on_master.next().expect("a key");
        let permit_key = on_master.next().expect("a key");
        let cluster = std::sync::Mutex::new(&mut cluster);
        shared_holds_wait_for_the_replica(
            &locker,
            &plain,
            (&read_key, &permit_key),
            |key| held(replica, &lock_name(key), true),
            || cluster.lock().expect("cluster").pause(replica),
            || cluster.lock().expect("cluster").resume(replica),
        )
        .await;
    })
    .await;
}

/// Through an application's bb8 pool (no URL), the pipeline goes on a connection checked out of
/// the pool for the acquisition alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_locker_waits_on_a_checked_out_connection() {
    let master = RedisServer::start();
    let replica = RedisServer::start_replica_of(&master);
    let manager =
        relock::bb8_redis::RedisConnectionManager::new(master.url()).expect("a valid url");
    let pool = relock::bb8::Pool::builder()
        .max_size(4)
        .build(manager)
        .await
        .expect("a pool");
    let locker = Locker::builder()
        .pool(pool)
        .lease(LEASE)
        .replicas(1, Duration::from_millis(300))
        .build()
        .expect("a pooled locker");
    bounded(Duration::from_secs(30), async {
        let key = unique_key("pooled-acked");
        let guard = locker.lock(key.as_str()).await.expect("lock");
        assert!(held(replica.port(), &lock_name(&key), false));
        guard.release().await.expect("release");
        replica.pause();
        // Longer than bb8-redis connections' 500 ms response timeout: the wait is bounded by
        // relock, on a connection outside the pool.
        let started = Instant::now();
        assert_not_replicated(
            locker
                .lock(key.as_str())
                .replicas(1, Duration::from_millis(800))
                .await,
            &key,
        );
        assert!(started.elapsed() >= Duration::from_millis(800));
        assert!(!held(master.port(), &lock_name(&key), false));
        replica.resume();
    })
    .await;
}
