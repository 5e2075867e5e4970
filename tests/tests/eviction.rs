//! A server that may evict keys is refused: `maxmemory` with any `maxmemory-policy` but
//! `noeviction` fails `Locker::connect` and a built locker's first lock (a direct connection, a
//! bb8 pool, every master of a cluster, each master found behind Sentinel), naming the setting
//! and the fix, unless the builder says `allow_eviction()` — and then an eviction of a held lock
//! is what the holder reports as a loss. An ACL user that may not read the setting is warned
//! about through `tracing` and goes on.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use relock::{Error, Locker};
use relock_tests::{bounded, unique_key, RedisCluster, RedisSentinel, RedisServer};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

/// A hung lock operation fails its test instead of stalling the run.
const TEST_LIMIT: Duration = Duration::from_secs(60);

/// `CONFIG SET maxmemory <maxmemory> maxmemory-policy <policy>` on the server at `port`.
async fn set_memory_policy(server: &RedisServer, maxmemory: &str, policy: &str) {
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(maxmemory)
        .arg("maxmemory-policy")
        .arg(policy)
        .query_async::<()>(&mut server.connection().await)
        .await
        .expect("CONFIG SET maxmemory maxmemory-policy");
}

/// Fails the test unless `err` refuses the server on `port` for `policy`, naming the setting and
/// the fix.
#[track_caller]
fn assert_refused(err: &Error, port: u16, policy: &str) {
    match err {
        Error::EvictingServer {
            server,
            maxmemory,
            policy: refused,
        } => {
            assert_eq!(*server, format!("127.0.0.1:{port}"));
            assert_eq!(refused, policy);
            assert!(*maxmemory > 0);
        }
        other => panic!("expected EvictingServer for port {port}, got {other:?}"),
    }
    let text = err.to_string();
    for part in [
        format!("maxmemory-policy {policy}"),
        "set `maxmemory-policy noeviction`".to_owned(),
        "allow_eviction()".to_owned(),
    ] {
        assert!(text.contains(&part), "`{part}` missing from: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_refuses_a_server_that_may_evict_naming_the_setting_and_the_fix() {
    bounded(TEST_LIMIT, async {
        let server = RedisServer::start();
        // `volatile-*` evicts relock's keys too: each has an expiry.
        for policy in [
            "allkeys-lru",
            "volatile-lru",
            "volatile-ttl",
            "allkeys-random",
        ] {
            set_memory_policy(&server, "100mb", policy).await;
            let err = Locker::connect(&server.url()).await.unwrap_err();
            assert_refused(&err, server.port(), policy);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_lock_of_a_built_locker_is_refused_and_nothing_is_written() {
    bounded(TEST_LIMIT, async {
        let server = RedisServer::start();
        set_memory_policy(&server, "100mb", "allkeys-lfu").await;
        let manager = bb8_redis::RedisConnectionManager::new(server.url()).unwrap();
        let pool = bb8::Pool::builder().build(manager).await.unwrap();
        let direct = Locker::builder().url(server.url()).build().unwrap();
        let pooled = Locker::builder().pool(pool).build().unwrap();
        let key = unique_key("evicting");

        let err = direct.lock(&key).await.unwrap_err();
        assert_refused(&err, server.port(), "allkeys-lfu");
        // A pool does not say where it connects: the error names the pool.
        match pooled.try_lock(&key).await.unwrap_err() {
            Error::EvictingServer { server, policy, .. } => {
                assert_eq!(server, "the bb8 pool's server");
                assert_eq!(policy, "allkeys-lfu");
            }
            other => panic!("expected EvictingServer, got {other:?}"),
        }
        let dbsize: u64 = redis::cmd("DBSIZE")
            .query_async(&mut server.connection().await)
            .await
            .unwrap();
        assert_eq!(dbsize, 0, "a refused lock wrote to the server");

        // The refusal is not remembered: once the operator fixes the setting, locks work.
        set_memory_policy(&server, "100mb", "noeviction").await;
        for locker in [&direct, &pooled] {
            let guard = locker.lock(&key).await.expect("lock once fixed");
            guard.release().await.unwrap();
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_limit_with_noeviction_or_a_policy_without_a_limit_is_accepted() {
    bounded(TEST_LIMIT, async {
        let server = RedisServer::start();
        for (maxmemory, policy) in [("100mb", "noeviction"), ("0", "allkeys-lru")] {
            set_memory_policy(&server, maxmemory, policy).await;
            let locker = Locker::connect(&server.url())
                .await
                .unwrap_or_else(|err| panic!("maxmemory {maxmemory} {policy}: {err}"));
            let guard = locker.lock(unique_key("accepted")).await.unwrap();
            guard.release().await.unwrap();
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_allow_eviction_an_evicted_lock_is_reported_lost_by_its_holder() {
    bounded(TEST_LIMIT, async {
        let server = RedisServer::start();
        let mut connection = server.connection().await;
        let used = relock_tests::info_number(&mut connection, "memory", "used_memory").await;
        set_memory_policy(
            &server,
            &(used + 2 * 1024 * 1024).to_string(),
            "allkeys-lru",
        )
        .await;
        let lease = Duration::from_millis(600);
        let locker = Locker::builder()
            .url(server.url())
            .lease(lease)
            .allow_eviction()
            .build()
            .unwrap();
        let other = Locker::builder()
            .url(server.url())
            .allow_eviction()
            .build()
            .unwrap();
        let key = unique_key("evicted");
        let guard = locker.lock(&key).await.expect("allowed");
        let lock_key = format!("relock:{{{key}}}");

        // An application's cache fills the server: Redis makes room by evicting keys.
        let value = "x".repeat(2048);
        let mut written = 0u64;
        loop {
            let mut pipe = redis::pipe();
            for _ in 0..200 {
                pipe.set(format!("cache:{written}"), &value).ignore();
                written += 1;
            }
            pipe.exists(&lock_key);
            let (exists,): (bool,) = pipe.query_async(&mut connection).await.unwrap();
            if !exists {
                break;
            }
            assert!(
                written < 2_000_000,
                "the lock was not evicted after {written} cache keys"
            );
        }

        // The holder finds out at its next renewal, within a third of the lease.
        tokio::time::timeout(lease, guard.lost())
            .await
            .expect("the evicted hold was not reported lost");
        assert!(!guard.is_held());
        let taken = other.try_lock(&key).await.unwrap();
        assert!(
            taken.is_some(),
            "the evicted lock is free for another owner"
        );
        assert!(matches!(guard.release().await, Err(Error::Lost { .. })));
    })
    .await;
}

/// The warnings a test emitted, as `message` plus its fields.
#[derive(Clone, Default)]
struct Warnings(Arc<Mutex<Vec<String>>>);

struct Text<'a>(&'a mut String);

impl Visit for Text<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={value:?}", field.name()));
    }
}

impl<S: Subscriber> Layer<S> for Warnings {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if *event.metadata().level() == Level::WARN {
            let mut text = String::new();
            event.record(&mut Text(&mut text));
            self.0.lock().unwrap().push(text);
        }
    }
}

/// Runs `test` on a current-thread runtime, collecting its warnings.
fn warned<F: Future<Output = ()>>(test: impl FnOnce() -> F) -> Vec<String> {
    let warnings = Warnings::default();
    let subscriber = tracing_subscriber::registry().with(warnings.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tracing::subscriber::with_default(subscriber, || runtime.block_on(bounded(TEST_LIMIT, test())));
    drop(runtime);
    let seen = warnings.0.lock().unwrap().clone();
    seen
}

#[test]
fn an_acl_user_that_may_not_read_the_setting_connects_with_a_warning() {
    let server = RedisServer::start();
    let warnings = warned(|| async {
        set_memory_policy(&server, "100mb", "allkeys-lru").await;
        // The least-privilege rules: neither INFO nor CONFIG.
        let url = server
            .acl_user("relock", "password", &relock::acl_rules("relock"))
            .await;
        let locker = Locker::connect(&url)
            .await
            .expect("connect as the ACL user");
        let guard = locker.lock(unique_key("acl")).await.expect("lock");
        guard.release().await.unwrap();

        // Given `+info`, the same user reads the setting, and the server is refused.
        let rules = format!("{} +info", relock::acl_rules("relock"));
        let url = server.acl_user("relock", "password", &rules).await;
        let err = Locker::connect(&url).await.unwrap_err();
        assert_refused(&err, server.port(), "allkeys-lru");
    });
    let about_eviction: Vec<&String> = warnings
        .iter()
        .filter(|warning| warning.contains("may evict keys"))
        .collect();
    assert_eq!(about_eviction.len(), 1, "{warnings:#?}");
    let warning = about_eviction[0];
    for part in [
        "+info",
        &format!("127.0.0.1:{}", server.port()),
        "no permissions to run the 'info' command",
        "no permissions to run the 'config|get' command",
    ] {
        assert!(warning.contains(part), "`{part}` missing from: {warning}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_is_refused_when_one_master_may_evict_naming_that_master() {
    bounded(TEST_LIMIT, async {
        let cluster = RedisCluster::start(3, 0);
        let evicting = cluster.master_ports()[1];
        let mut connection = redis::Client::open(format!("redis://127.0.0.1:{evicting}"))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg("100mb")
            .arg("maxmemory-policy")
            .arg("volatile-lfu")
            .query_async::<()>(&mut connection)
            .await
            .unwrap();
        let locker = Locker::builder().cluster(cluster.seeds()).build().unwrap();
        // A key on another master is refused too: the whole cluster is checked.
        let key = (0..)
            .map(|i| unique_key(&format!("cluster-{i}")))
            .find(|key| cluster.master_of(key) != evicting)
            .unwrap();
        let err = locker.lock(&key).await.unwrap_err();
        assert_refused(&err, evicting, "volatile-lfu");

        let allowed = Locker::builder()
            .cluster(cluster.seeds())
            .allow_eviction()
            .build()
            .unwrap();
        let guard = allowed.lock(&key).await.expect("allowed");
        guard.release().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_sentinel_a_new_master_that_may_evict_is_refused_after_a_failover() {
    bounded(TEST_LIMIT, async {
        let mut sentinel = RedisSentinel::start();
        let locker = sentinel.builder().build().unwrap();
        let key = unique_key("sentinel");
        let guard = locker
            .lock(&key)
            .await
            .expect("the first master does not evict");
        guard.release().await.unwrap();

        let replica = query_port_of_replica(&sentinel);
        let mut connection = redis::Client::open(format!("redis://127.0.0.1:{replica}"))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg("100mb")
            .arg("maxmemory-policy")
            .arg("allkeys-lru")
            .query_async::<()>(&mut connection)
            .await
            .unwrap();
        sentinel.graceful_failover();

        // Until the locker learns of the failover, a request may still reach the old master or
        // fail with it; once it finds the new one, it is refused.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match locker.lock(&key).await {
                Err(err @ Error::EvictingServer { .. }) => {
                    assert_refused(&err, replica, "allkeys-lru");
                    break;
                }
                Ok(guard) => drop(guard),
                Err(_) => {}
            }
            assert!(
                Instant::now() < deadline,
                "the new master was not refused within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// The port of the data node of `sentinel` that is not the master.
fn query_port_of_replica(sentinel: &RedisSentinel) -> u16 {
    let master = sentinel.master().port();
    let reply = std::process::Command::new("redis-cli")
        .args(["-p", &master.to_string(), "INFO", "replication"])
        .output()
        .expect("redis-cli");
    let info = String::from_utf8_lossy(&reply.stdout);
    info.lines()
        .find_map(|line| {
            let rest = line.strip_prefix("slave0:")?;
            rest.split(',')
                .find_map(|field| field.strip_prefix("port="))?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no replica in INFO replication: {info}"))
}
