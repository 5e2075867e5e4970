//! The backends a test body runs against: a private Redis server (through one multiplexed
//! connection per locker, or through a bb8 pool) and the in-memory store.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use relock::bb8_redis::RedisConnectionManager;
use relock::Locker;

use crate::{RedisCluster, RedisServer};

/// Which store a [`TestBackend`] locks in, and how its lockers reach it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// `Locker::connect`: a private Redis server, one multiplexed connection per locker.
    Redis,
    /// `Locker::builder().pool(..)`: a private Redis server, every command through a bb8 pool.
    RedisPool,
    /// `Locker::in_memory()`.
    Memory,
    /// `Locker::builder().cluster(..)`: a private Redis Cluster of 3 masters, one cluster
    /// connection (and one sharded subscriber) per locker.
    Cluster,
    /// `Locker::builder().url("rediss://..").tls_root_ca(..)`: a private Redis server reached
    /// over TLS (its certificate issued by a CA of the test's own), commands and release
    /// notifications alike.
    RedisTls,
    /// `Locker::connect("redis://relock:<password>@..")`: a private Redis server reached as an
    /// ACL user with exactly the rules docs/production.md documents ([`relock::acl_rules`] and
    /// [`relock::ACL_LIST_RULES`]).
    RedisAcl,
}

/// The ACL user [`BackendKind::RedisAcl`] lockers log in as.
pub const ACL_USER: &str = "relock";
/// Its password.
pub const ACL_PASSWORD: &str = "relock-test-password";

/// The rules [`BackendKind::RedisAcl`]'s user gets: what docs/production.md documents for an
/// application that also lists locks.
pub fn acl_user_rules() -> String {
    format!("{} {}", relock::acl_rules("relock"), relock::ACL_LIST_RULES)
}

/// One backend under test: the holder's locker, another owner's, and for Redis the private server
/// behind them with a plain connection for assertions and fault injection.
///
/// "Another owner" on Redis is a second `Locker` (its own connection or pool, subscriber and local
/// holds), so it contends through the server as another process would; an in-memory store belongs
/// to one `Locker::in_memory()` call, so there it is a clone used from another task.
#[derive(Debug)]
pub struct TestBackend {
    /// The holder's locker.
    pub locker: Locker,
    /// Another owner's locker on the same store (see the type's documentation).
    pub other: Locker,
    kind: BackendKind,
    server: Option<RedisServer>,
    admin: Option<MultiplexedConnection>,
    cluster: Option<RedisCluster>,
}

impl TestBackend {
    /// A backend of `kind`: [`memory`](Self::memory), [`redis`](Self::redis) or
    /// [`redis_pool`](Self::redis_pool).
    pub async fn start(kind: BackendKind) -> TestBackend {
        match kind {
            BackendKind::Memory => TestBackend::memory(),
            BackendKind::Cluster => TestBackend::on_cluster(RedisCluster::start(3, 0)),
            BackendKind::Redis
            | BackendKind::RedisPool
            | BackendKind::RedisTls
            | BackendKind::RedisAcl => {
                let server = match kind {
                    BackendKind::RedisTls => {
                        RedisServer::start_tls(&crate::TestCa::new("relock test CA"))
                    }
                    _ => RedisServer::start(),
                };
                if kind == BackendKind::RedisAcl {
                    server
                        .acl_user(ACL_USER, ACL_PASSWORD, &acl_user_rules())
                        .await;
                }
                let admin = server.connection().await;
                let locker = redis_locker(kind, &server).await;
                let other = redis_locker(kind, &server).await;
                TestBackend {
                    locker,
                    other,
                    kind,
                    server: Some(server),
                    admin: Some(admin),
                    cluster: None,
                }
            }
        }
    }

    /// A private Redis server, and two lockers on it that each have a connection of their own
    /// (`Locker::connect`).
    pub async fn redis() -> TestBackend {
        TestBackend::start(BackendKind::Redis).await
    }

    /// A private Redis server, and two lockers on it that each send every command through a bb8
    /// pool of their own (at most 4 connections).
    pub async fn redis_pool() -> TestBackend {
        TestBackend::start(BackendKind::RedisPool).await
    }

    /// A fresh in-memory store; [`other`](Self::other) is a clone of [`locker`](Self::locker).
    pub fn memory() -> TestBackend {
        let locker = Locker::in_memory();
        TestBackend {
            other: locker.clone(),
            locker,
            kind: BackendKind::Memory,
            server: None,
            admin: None,
            cluster: None,
        }
    }

    /// A private Redis Cluster of 3 masters without replicas, and two lockers on it.
    pub async fn cluster() -> TestBackend {
        TestBackend::start(BackendKind::Cluster).await
    }

    /// Two lockers on `cluster`, each with a cluster connection of its own.
    pub fn on_cluster(cluster: RedisCluster) -> TestBackend {
        TestBackend {
            locker: cluster_locker(&cluster),
            other: cluster_locker(&cluster),
            kind: BackendKind::Cluster,
            server: None,
            admin: None,
            cluster: Some(cluster),
        }
    }

    /// The private Redis Cluster; `None` for the other backends.
    pub fn redis_cluster(&self) -> Option<&RedisCluster> {
        self.cluster.as_ref()
    }

    /// Which backend this is.
    pub fn kind(&self) -> BackendKind {
        self.kind
    }

    /// The private Redis server; `None` for the in-memory backend.
    pub fn server(&self) -> Option<&RedisServer> {
        self.server.as_ref()
    }

    /// A clone of the plain connection to the Redis server, opened before the lockers, for
    /// assertions and fault injection (`DEL`, `PUBSUB`, `CLIENT PAUSE`); `None` for the in-memory
    /// backend.
    pub fn admin(&self) -> Option<MultiplexedConnection> {
        self.admin.clone()
    }

    /// Returns once a waiter on `key` is asleep: on Redis, once its subscription to the release
    /// channel is confirmed ([`until_subscribed`](crate::until_subscribed); it retries once more
    /// right after, then sleeps); in memory, after a moment (it sleeps on the local slot at once).
    pub async fn until_waiting(&self, key: &str) {
        if let Some(mut admin) = self.admin() {
            crate::until_subscribed(&mut admin, key).await;
        }
        if let Some(cluster) = &self.cluster {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while cluster.shard_subscribers(&crate::release_channel(key)) == 0 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the waiter never subscribed to the release channel"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    /// Yet another locker on the same store. On Redis it has its own connection (or pool) and its
    /// own local state, so it contends through the server like another process would; in-memory
    /// stores are per `Locker::in_memory()` call, so there it is a clone.
    pub async fn another_locker(&self) -> Locker {
        match (&self.server, &self.cluster) {
            (Some(server), _) => redis_locker(self.kind, server).await,
            (None, Some(cluster)) => cluster_locker(cluster),
            (None, None) => self.locker.clone(),
        }
    }

    /// `n` lockers: [`locker`](Self::locker) first, then
    /// [`another_locker`](Self::another_locker)s.
    pub async fn lockers(&self, n: usize) -> Vec<Locker> {
        let mut lockers = vec![self.locker.clone()];
        while lockers.len() < n {
            lockers.push(self.another_locker().await);
        }
        lockers
    }

    /// Commands the Redis server has executed so far
    /// ([`RedisServer::commands_processed`]); `None` for the in-memory backend.
    pub async fn commands(&self) -> Option<u64> {
        match (&self.server, &self.cluster) {
            (Some(server), _) => Some(server.commands_processed().await),
            (None, Some(cluster)) => Some(cluster.commands_processed().await),
            (None, None) => None,
        }
    }

    /// Resets the Redis server's command counts ([`RedisServer::reset_stats`]); nothing for the
    /// in-memory backend.
    pub async fn reset_stats(&self) {
        if let Some(server) = &self.server {
            server.reset_stats().await;
        }
        if let Some(cluster) = &self.cluster {
            cluster.reset_stats().await;
        }
    }
}

async fn redis_locker(kind: BackendKind, server: &RedisServer) -> Locker {
    match kind {
        BackendKind::Redis => server.locker().await,
        BackendKind::RedisPool => {
            let manager = RedisConnectionManager::new(server.url()).expect("a valid url");
            let pool = relock::bb8::Pool::builder()
                .max_size(4)
                .build(manager)
                .await
                .expect("build a bb8 pool");
            Locker::builder()
                .pool(pool)
                .build()
                .expect("build a locker over the pool")
        }
        BackendKind::RedisTls => {
            let locker = Locker::builder()
                .url(server.tls_url())
                .tls_root_ca(server.tls_ca_pem())
                .build()
                .expect("build a locker over TLS");
            // Connected before the test starts, as `Locker::connect` is for the other kinds: a
            // first request with a short lease must not pay for the handshake.
            locker
                .inspect("warm-up")
                .await
                .expect("reach the server over TLS");
            locker
        }
        BackendKind::RedisAcl => {
            let url = format!(
                "redis://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:{}",
                server.port()
            );
            Locker::connect(&url)
                .await
                .expect("connect as the ACL user")
        }
        BackendKind::Memory | BackendKind::Cluster => {
            unreachable!("the in-memory and cluster backends have no single server")
        }
    }
}

fn cluster_locker(cluster: &RedisCluster) -> Locker {
    Locker::builder()
        .cluster(cluster.seeds())
        .build()
        .expect("build a locker on the test cluster")
}

/// Turns each `name: behaviour;` or `name: behaviour(args);` into two tests, `name::on_redis`
/// ([`TestBackend::redis`]) and `name::in_memory` ([`TestBackend::memory`]), each on a two-worker
/// multi-thread runtime, calling `behaviour(&backend, args..)` under [`bounded`](crate::bounded)
/// with the limit given first:
///
/// ```text
/// relock_tests::on_every_backend! {
///     limit: TEST_LIMIT;
///     dropping_a_guard_frees_the_lock: dropping_frees_the_lock;
///     a_force_release_marks_the_guard_lost: removal_marks_the_guard_lost(Removal::ForceRelease);
/// }
/// ```
///
/// The generated modules `use super::*`, so the behaviours, the limit and the arguments are named
/// as at the call site.
#[macro_export]
macro_rules! on_every_backend {
    (limit: $limit:expr; $($name:ident: $behaviour:ident $(($($arg:expr),* $(,)?))?;)*) => {$(
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_redis() {
                let backend = $crate::TestBackend::redis().await;
                $crate::bounded($limit, $behaviour(&backend $($(, $arg)*)?)).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn in_memory() {
                let backend = $crate::TestBackend::memory();
                $crate::bounded($limit, $behaviour(&backend $($(, $arg)*)?)).await;
            }
        }
    )*};
}
