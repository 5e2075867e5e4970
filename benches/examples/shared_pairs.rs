//! Shared holds against the exclusive pair, on a private `redis-server`: pairs per second of
//! 64 tasks doing acquire + release for a few seconds each, and the ratios issue 20 asks for.
//!
//! ```text
//! cargo run --release -p relock-benches --example shared_pairs [seconds]
//! ```
//!
//! * `exclusive, distinct keys`: `lock(k_i)` + `release`, each task on keys of its own (the
//!   reference pair);
//! * `read, one key`: `read(k)` + `release`, every task on one key;
//! * `permit, distinct keys`: `semaphore(k_i, 4)` + `acquire` + `release`, keys of its own;
//! * `permit, one key of 64`: `semaphore(k, 64)`, every task on one key (never full).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use relock::Locker;
use relock_tests::RedisServer;

const TASKS: usize = 64;

#[derive(Clone, Copy)]
enum Pair {
    Exclusive,
    Read,
    Permit,
    PermitOneKey,
}

async fn run(locker: &Locker, pair: Pair, time: Duration) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + time;
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let (locker, done) = (locker.clone(), done.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while Instant::now() < deadline {
                    i += 1;
                    match pair {
                        Pair::Exclusive => {
                            let key = format!("bench:shared:x:{task}:{i}");
                            locker.lock(key).await.unwrap().release().await.unwrap();
                        }
                        Pair::Read => {
                            let guard = locker.read("bench:shared:read").await.unwrap();
                            guard.release().await.unwrap();
                        }
                        Pair::Permit => {
                            let key = format!("bench:shared:p:{task}:{i}");
                            let permit = locker.semaphore(key, 4).acquire().await.unwrap();
                            permit.release().await.unwrap();
                        }
                        Pair::PermitOneKey => {
                            let semaphore = locker.semaphore("bench:shared:permits", 64);
                            semaphore.acquire().await.unwrap().release().await.unwrap();
                        }
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let seconds: u64 = std::env::args()
        .nth(1)
        .map_or(3, |s| s.parse().expect("seconds"));
    let server = RedisServer::start();
    let locker = server.locker().await;
    let time = Duration::from_secs(seconds);
    run(&locker, Pair::Exclusive, Duration::from_millis(500)).await;
    let exclusive = run(&locker, Pair::Exclusive, time).await;
    let read = run(&locker, Pair::Read, time).await;
    let permit = run(&locker, Pair::Permit, time).await;
    let one_key = run(&locker, Pair::PermitOneKey, time).await;
    println!("exclusive, distinct keys: {exclusive:>9.0} pairs/s");
    println!(
        "read, one key:            {read:>9.0} pairs/s  ({:.2}x the exclusive pair)",
        read / exclusive
    );
    println!(
        "permit, distinct keys:    {permit:>9.0} pairs/s  ({:.2}x)",
        permit / exclusive
    );
    println!(
        "permit, one key of 64:    {one_key:>9.0} pairs/s  ({:.2}x)",
        one_key / exclusive
    );
}
