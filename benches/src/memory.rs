//! Redis memory left behind by locking many distinct keys once each: what each key's fencing
//! counter costs, and how long it stays.
//!
//! `--fence-memory N` locks and releases `N` distinct keys (64 tasks) on a private server and
//! reads `used_memory` and `DBSIZE`:
//!
//! * before: the layout relock had until the clock was mixed into fencing tokens — a counter per
//!   key, `INCR` + `PEXPIRE` 7 days — written with raw commands, as its acquire script did;
//! * relock as it is, right after the run (its counters live for the 10-minute default
//!   retention) and once the retention has passed (measured with a 2-second retention: the
//!   expiry does not depend on its length).

use std::sync::Arc;
use std::time::{Duration, Instant};

use relock::Locker;
use relock_tests::RedisServer;

const TASKS: usize = 64;

/// Runs the measurement and prints a Markdown table. Each layout gets a server of its own.
pub(crate) async fn run(keys: usize) {
    println!("Redis memory after locking {keys} distinct keys once each\n");
    println!(
        "| layout | keys left | used memory above an empty server | per locked key | kept for |"
    );
    println!("|---|---:|---:|---:|---|");

    let (server, mut admin, empty) = fresh().await;
    let started = Instant::now();
    old_layout(&server, keys).await;
    let (left, used) = (dbsize(&mut admin).await, used_memory(&mut admin).await);
    row(
        "before: counter `INCR` + 7-day `PEXPIRE`",
        left,
        used - empty,
        keys,
        "7 days",
    );
    eprintln!(
        "before: written in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    drop(server);

    let (server, mut admin, empty) = fresh().await;
    let started = Instant::now();
    let locker = Locker::connect(&server.url()).await.expect("connect");
    lock_all(&locker, keys, "now").await;
    let (left, used) = (dbsize(&mut admin).await, used_memory(&mut admin).await);
    row(
        "relock, right after",
        left,
        used - empty,
        keys,
        "10 minutes (default retention)",
    );
    eprintln!("relock: locked in {:.1} s", started.elapsed().as_secs_f64());
    drop(server);

    let (server, mut admin, empty) = fresh().await;
    let short = Locker::builder()
        .url(server.url())
        .lease(Duration::from_secs(1))
        .fence_retention(Duration::from_secs(2))
        .build()
        .expect("locker");
    lock_all(&short, keys, "short").await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while dbsize(&mut admin).await > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (left, used) = (dbsize(&mut admin).await, used_memory(&mut admin).await);
    row(
        "relock, once the retention has passed",
        left,
        used.saturating_sub(empty),
        keys,
        "—",
    );
}

async fn fresh() -> (RedisServer, redis::aio::MultiplexedConnection, u64) {
    let server = RedisServer::start();
    let mut admin = server.connection().await;
    let empty = used_memory(&mut admin).await;
    (server, admin, empty)
}

async fn lock_all(locker: &Locker, keys: usize, tag: &str) {
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let locker = locker.clone();
        let tag = Arc::<str>::from(tag);
        tasks.push(tokio::spawn(async move {
            for i in (task..keys).step_by(TASKS) {
                let guard = locker.lock(format!("mem:{tag}:{i}")).await.expect("lock");
                guard.release().await.expect("release");
            }
        }));
    }
    for task in tasks {
        task.await.expect("a task panicked");
    }
}

async fn old_layout(server: &RedisServer, keys: usize) {
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let mut connection = server.connection().await;
        tasks.push(tokio::spawn(async move {
            let mine: Vec<usize> = (task..keys).step_by(TASKS).collect();
            for chunk in mine.chunks(256) {
                let mut pipe = redis::pipe();
                for i in chunk {
                    let counter = format!("relock:{{mem:before:{i}}}:fence");
                    pipe.cmd("INCR").arg(&counter).ignore();
                    pipe.cmd("PEXPIRE")
                        .arg(&counter)
                        .arg(7 * 24 * 3600 * 1000_u64)
                        .ignore();
                }
                pipe.query_async::<()>(&mut connection)
                    .await
                    .expect("pipeline");
            }
        }));
    }
    for task in tasks {
        task.await.expect("a task panicked");
    }
}

fn row(layout: &str, left: u64, used: u64, keys: usize, kept: &str) {
    println!(
        "| {layout} | {left} | {} | {:.0} B | {kept} |",
        mib(used),
        used as f64 / keys as f64
    );
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

async fn dbsize(admin: &mut redis::aio::MultiplexedConnection) -> u64 {
    redis::cmd("DBSIZE")
        .query_async(admin)
        .await
        .expect("DBSIZE")
}

async fn used_memory(admin: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(admin)
        .await
        .expect("INFO memory");
    info.lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|value| value.trim().parse().ok())
        .expect("used_memory in INFO memory")
}
