//! relock against the physical limit (raw Redis round trips) and its own bb8-pool path, in one
//! run: every contender runs in the same process against one private `redis-server`, in
//! alternating rounds so that machine drift cancels out, and the headline is a ratio to the raw
//! baseline measured in the same run.
//!
//! ```text
//! cargo run --release -p relock-benches            # full run
//! cargo run --release -p relock-benches -- --quick # under a minute
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bb8_redis::RedisConnectionManager;
use redis::aio::MultiplexedConnection;
use relock::Locker;
use relock_tests::RedisServer;

type BoxFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// One way of taking and releasing a lock on a key.
trait Contender: Send + Sync {
    fn name(&self) -> &str;
    fn lock_unlock<'a>(&'a self, key: &'a str) -> BoxFuture<'a>;
}

const RELEASE_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// The physical limit: `SET NX PX` then a compare-and-delete script, on one connection.
struct RawMultiplexed {
    connection: MultiplexedConnection,
    release: redis::Script,
}

impl Contender for RawMultiplexed {
    fn name(&self) -> &str {
        "raw SET NX PX + Lua (multiplexed)"
    }

    fn lock_unlock<'a>(&'a self, key: &'a str) -> BoxFuture<'a> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let token = format!("{:032x}", rand::random::<u128>());
            raw_cycle(&mut connection, &self.release, key, &token).await;
        })
    }
}

/// The same through a bb8 pool: a checkout per command.
struct RawPool {
    name: &'static str,
    pool: bb8::Pool<RedisConnectionManager>,
    release: redis::Script,
}

impl Contender for RawPool {
    fn name(&self) -> &str {
        self.name
    }

    fn lock_unlock<'a>(&'a self, key: &'a str) -> BoxFuture<'a> {
        Box::pin(async move {
            let token = format!("{:032x}", rand::random::<u128>());
            let acquired: Option<String> = redis::cmd("SET")
                .arg(key)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(30_000)
                .query_async(&mut *self.pool.get().await.expect("pool"))
                .await
                .expect("SET");
            assert!(acquired.is_some(), "distinct keys are always free");
            let _: i64 = self
                .release
                .key(key)
                .arg(&token)
                .invoke_async(&mut *self.pool.get().await.expect("pool"))
                .await
                .expect("release");
        })
    }
}

async fn raw_cycle(
    connection: &mut MultiplexedConnection,
    release: &redis::Script,
    key: &str,
    token: &str,
) {
    let acquired: Option<String> = redis::cmd("SET")
        .arg(key)
        .arg(token)
        .arg("NX")
        .arg("PX")
        .arg(30_000)
        .query_async(connection)
        .await
        .expect("SET");
    assert!(acquired.is_some(), "distinct keys are always free");
    let _: i64 = release
        .key(key)
        .arg(token)
        .invoke_async(connection)
        .await
        .expect("release");
}

struct Relock {
    name: &'static str,
    locker: Locker,
}

impl Contender for Relock {
    fn name(&self) -> &str {
        self.name
    }

    fn lock_unlock<'a>(&'a self, key: &'a str) -> BoxFuture<'a> {
        Box::pin(async move {
            let guard = self.locker.lock(key).await.expect("lock");
            guard.release().await.expect("release");
        })
    }
}

/// Pairs per second, one task doing `n` lock+unlock cycles on distinct keys.
async fn sequential(contender: &dyn Contender, n: usize, round: usize) -> f64 {
    let start = Instant::now();
    for i in 0..n {
        contender
            .lock_unlock(&format!("bench:seq:{round}:{i}"))
            .await;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Pairs per second, `tasks` tasks each doing `n / tasks` cycles on keys of their own.
async fn concurrent(contender: Arc<dyn Contender>, tasks: usize, n: usize, round: usize) -> f64 {
    let per_task = n / tasks;
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let contender = contender.clone();
            tokio::spawn(async move {
                for i in 0..per_task {
                    contender
                        .lock_unlock(&format!("bench:par:{round}:{task}:{i}"))
                        .await;
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.expect("bench task");
    }
    (per_task * tasks) as f64 / start.elapsed().as_secs_f64()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

async fn pool(server: &RedisServer, test_on_check_out: bool) -> bb8::Pool<RedisConnectionManager> {
    let manager = RedisConnectionManager::new(server.url()).expect("url");
    bb8::Pool::builder()
        .test_on_check_out(test_on_check_out)
        .build(manager)
        .await
        .expect("pool")
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|arg| arg == "--quick");
    let (rounds, n) = if quick { (3, 2_000) } else { (7, 10_000) };
    let server = RedisServer::start();
    let client = server.client();
    let connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");

    let contenders: Vec<Arc<dyn Contender>> = vec![
        Arc::new(RawMultiplexed {
            connection: connection.clone(),
            release: redis::Script::new(RELEASE_LUA),
        }),
        Arc::new(RawPool {
            name: "raw SET NX PX + Lua (bb8 default)",
            pool: pool(&server, true).await,
            release: redis::Script::new(RELEASE_LUA),
        }),
        Arc::new(RawPool {
            name: "raw SET NX PX + Lua (bb8 no check)",
            pool: pool(&server, false).await,
            release: redis::Script::new(RELEASE_LUA),
        }),
        Arc::new(Relock {
            name: "relock Locker::connect",
            locker: Locker::connect(&server.url()).await.expect("connect"),
        }),
        Arc::new(Relock {
            name: "relock bb8 pool (default)",
            locker: Locker::builder()
                .pool(pool(&server, true).await)
                .build()
                .expect("build"),
        }),
        Arc::new(Relock {
            name: "relock bb8 pool (no check)",
            locker: Locker::builder()
                .pool(pool(&server, false).await)
                .build()
                .expect("build"),
        }),
        Arc::new(Relock {
            name: "relock in memory",
            locker: Locker::in_memory(),
        }),
    ];

    // Warm up: connections, script caches, allocator.
    for contender in &contenders {
        sequential(&**contender, 200, 1_000_000).await;
        concurrent(contender.clone(), 64, 640, 1_000_000).await;
    }

    let mut seq = vec![Vec::new(); contenders.len()];
    let mut par = vec![Vec::new(); contenders.len()];
    for round in 0..rounds {
        for (i, contender) in contenders.iter().enumerate() {
            seq[i].push(sequential(&**contender, n / 4, round).await);
            par[i].push(concurrent(contender.clone(), 64, n, round).await);
        }
        redis::cmd("FLUSHALL")
            .query_async::<()>(&mut connection.clone())
            .await
            .expect("FLUSHALL");
    }

    let seq: Vec<f64> = seq.iter_mut().map(|v| median(v)).collect();
    let par: Vec<f64> = par.iter_mut().map(|v| median(v)).collect();
    println!(
        "acquire+release on distinct keys, loopback redis-server, median of {rounds} alternating rounds"
    );
    println!(
        "{:<38} {:>12} {:>8} {:>14} {:>8}",
        "contender", "seq pairs/s", "÷ raw", "64-task pairs/s", "÷ raw"
    );
    for (i, contender) in contenders.iter().enumerate() {
        println!(
            "{:<38} {:>12.0} {:>8.2} {:>14.0} {:>8.2}",
            contender.name(),
            seq[i],
            seq[i] / seq[0],
            par[i],
            par[i] / par[0]
        );
    }
    let connect = 3;
    println!(
        "bb8-pool path ÷ multiplexed path (64 tasks): default {:.2}, no check {:.2}",
        par[4] / par[connect],
        par[5] / par[connect]
    );
}
