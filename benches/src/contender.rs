//! The ways of taking a lock that the benchmark compares, behind one `acquire`/`release` pair.

use std::time::{Duration, Instant};

use bb8_redis::RedisConnectionManager;
use redis::aio::MultiplexedConnection;
use relock::Locker;

/// The lease every contender asks for: long enough never to end during a measurement.
pub(crate) const LEASE: Duration = Duration::from_secs(30);

/// How long any single acquisition may wait before the benchmark counts it as failed.
const WAIT: Duration = Duration::from_secs(10);

/// The compare-and-delete release of the textbook single-instance Redis lock.
const RELEASE_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// A contender, by what it is built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `SET NX PX` + the Lua release on one multiplexed connection: the physical limit.
    Raw,
    /// The same, polling every millisecond while the key is taken.
    RawPolling,
    /// The same through a bb8-redis pool; `check` is bb8's `test_on_check_out` (on by default).
    RawPool { check: bool },
    /// The `rslock` crate (Redlock over one server) at its defaults.
    Rslock,
    /// `relock::Locker::connect`.
    Relock,
    /// relock over a user's bb8 pool; `url` also gives it the server's URL for release
    /// notifications (without it, waiters retry with backoff).
    RelockPool { check: bool, url: bool },
    /// `relock::Locker::in_memory()`: the cost of the runtime itself.
    RelockMemory,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Raw => "raw SET NX PX + Lua (multiplexed)",
            Kind::RawPolling => "raw SET NX PX, 1 ms polling",
            Kind::RawPool { check: true } => "raw SET NX PX + Lua (bb8 default)",
            Kind::RawPool { check: false } => "raw SET NX PX + Lua (bb8 no check)",
            Kind::Rslock => "rslock 0.10 (defaults)",
            Kind::Relock => "relock Locker::connect",
            Kind::RelockPool {
                check: true,
                url: false,
            } => "relock bb8 pool (default)",
            Kind::RelockPool {
                check: false,
                url: false,
            } => "relock bb8 pool (no check)",
            Kind::RelockPool { check: true, .. } => "relock bb8 pool (default) + url",
            Kind::RelockPool { check: false, .. } => "relock bb8 pool (no check) + url",
            Kind::RelockMemory => "relock in memory",
        }
    }

    /// Whether it talks to Redis (the in-memory locker does not).
    pub(crate) fn uses_redis(self) -> bool {
        self != Kind::RelockMemory
    }

    /// A new, independent instance: its own connections, and for relock its own owner tokens
    /// and subscriber, as another process would have. `memory` is the in-memory store that
    /// in-memory instances share (a second process cannot share memory, so they are clones).
    pub(crate) async fn build(self, url: &str, memory: &Locker) -> Contender {
        match self {
            Kind::Raw | Kind::RawPolling => Contender::Raw {
                connection: redis::Client::open(url)
                    .expect("url")
                    .get_multiplexed_async_connection()
                    .await
                    .expect("connect"),
                release: redis::Script::new(RELEASE_LUA),
                polling: self == Kind::RawPolling,
            },
            Kind::RawPool { check } => Contender::RawPool {
                pool: pool(url, check).await,
                release: redis::Script::new(RELEASE_LUA),
            },
            Kind::Rslock => Contender::Rslock(rslock::LockManager::new(vec![url.to_owned()])),
            Kind::Relock => Contender::Relock(Locker::connect(url).await.expect("connect")),
            Kind::RelockPool {
                check,
                url: with_url,
            } => {
                let mut builder = Locker::builder().pool(pool(url, check).await);
                if with_url {
                    builder = builder.url(url);
                }
                Contender::Relock(builder.build().expect("build"))
            }
            Kind::RelockMemory => Contender::Relock(memory.clone()),
        }
    }
}

/// A raw cluster contender: one `ClusterConnection` over `seeds`, shared by every task.
pub(crate) async fn raw_cluster(seeds: &[String]) -> Contender {
    Contender::RawCluster {
        connection: redis::cluster::ClusterClient::new(seeds.to_vec())
            .expect("seeds")
            .get_async_connection()
            .await
            .expect("connect to the cluster"),
        release: redis::Script::new(RELEASE_LUA),
    }
}

pub(crate) async fn pool(url: &str, check: bool) -> bb8::Pool<RedisConnectionManager> {
    let manager = RedisConnectionManager::new(url).expect("url");
    bb8::Pool::builder()
        .test_on_check_out(check)
        .build(manager)
        .await
        .expect("pool")
}

/// One built contender.
pub(crate) enum Contender {
    Raw {
        connection: MultiplexedConnection,
        release: redis::Script,
        polling: bool,
    },
    RawPool {
        pool: bb8::Pool<RedisConnectionManager>,
        release: redis::Script,
    },
    Rslock(rslock::LockManager),
    Relock(Locker),
    /// `SET NX PX` + the Lua release through one redis-rs cluster connection shared by all
    /// tasks: the baseline on a Redis Cluster (built by `cluster.rs`).
    RawCluster {
        connection: redis::cluster_async::ClusterConnection,
        release: redis::Script,
    },
}

/// What a contender holds between acquire and release.
pub(crate) enum Held {
    Raw(String),
    Rslock(rslock::LockGuard),
    Relock(relock::LockGuard),
}

fn random_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

async fn set_nx(connection: &mut impl redis::aio::ConnectionLike, key: &str, token: &str) -> bool {
    let reply: Option<String> = redis::cmd("SET")
        .arg(key)
        .arg(token)
        .arg("NX")
        .arg("PX")
        .arg(LEASE.as_millis() as u64)
        .query_async(connection)
        .await
        .expect("SET");
    reply.is_some()
}

impl Contender {
    /// Takes the lock on `key`, waiting for it in the contender's own way. Raw contenders that
    /// do not poll assume the key is free (distinct keys) and fail loudly otherwise.
    pub(crate) async fn acquire(&self, key: &str) -> Result<Held, String> {
        match self {
            Contender::Raw {
                connection,
                polling,
                ..
            } => {
                let mut connection = connection.clone();
                let token = random_token();
                let deadline = Instant::now() + WAIT;
                loop {
                    if set_nx(&mut connection, key, &token).await {
                        return Ok(Held::Raw(token));
                    }
                    if !polling {
                        return Err(format!("{key} was not free"));
                    }
                    if Instant::now() >= deadline {
                        return Err(format!("timed out waiting for {key}"));
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            Contender::RawPool { pool, .. } => {
                let token = random_token();
                let mut connection = pool.get().await.map_err(|err| err.to_string())?;
                if set_nx(&mut *connection, key, &token).await {
                    Ok(Held::Raw(token))
                } else {
                    Err(format!("{key} was not free"))
                }
            }
            Contender::RawCluster { connection, .. } => {
                let token = random_token();
                if set_nx(&mut connection.clone(), key, &token).await {
                    Ok(Held::Raw(token))
                } else {
                    Err(format!("{key} was not free"))
                }
            }
            Contender::Rslock(manager) => manager
                .acquire(key.as_bytes(), LEASE)
                .await
                .map(Held::Rslock)
                .map_err(|err| err.to_string()),
            Contender::Relock(locker) => locker
                .lock(key)
                .wait(WAIT)
                .await
                .map(Held::Relock)
                .map_err(|err| err.to_string()),
        }
    }

    /// Releases what `acquire` returned.
    pub(crate) async fn release(&self, key: &str, held: Held) {
        match (self, held) {
            (
                Contender::Raw {
                    connection,
                    release,
                    ..
                },
                Held::Raw(token),
            ) => {
                let _: i64 = release
                    .key(key)
                    .arg(token)
                    .invoke_async(&mut connection.clone())
                    .await
                    .expect("release");
            }
            (Contender::RawPool { pool, release }, Held::Raw(token)) => {
                let _: i64 = release
                    .key(key)
                    .arg(token)
                    .invoke_async(&mut *pool.get().await.expect("pool"))
                    .await
                    .expect("release");
            }
            (
                Contender::RawCluster {
                    connection,
                    release,
                },
                Held::Raw(token),
            ) => {
                let _: i64 = release
                    .key(key)
                    .arg(token)
                    .invoke_async(&mut connection.clone())
                    .await
                    .expect("release");
            }
            (Contender::Rslock(_), Held::Rslock(guard)) => guard.release().await,
            (Contender::Relock(_), Held::Relock(guard)) => guard.release().await.expect("release"),
            _ => unreachable!("a contender releases only what it acquired"),
        }
    }

    /// One acquire + release on a free key.
    pub(crate) async fn cycle(&self, key: &str) {
        let held = self.acquire(key).await.expect("acquire a free key");
        self.release(key, held).await;
    }
}
