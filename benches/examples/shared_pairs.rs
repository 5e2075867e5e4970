//! Shared holds against the exclusive pair, on a private `redis-server`: pairs per second of
//! 64 tasks doing acquire + release for a few seconds each, and the ratios issue 20 asks for.
//! The rows take turns for a number of rounds (each row `seconds` long, default 1 s, 15 rounds,
//! each round starting with another row); each ratio is to the exclusive row of its own round,
//! and the medians are printed last.
//!
//! ```text
//! cargo run --release -p relock-benches --example shared_pairs [seconds] [rounds]
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
    // Keys of their own in every run: a key an earlier run released holds its tombstone, which a
    // fresh acquisition does not meet.
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let run = RUNS.fetch_add(1, Ordering::Relaxed);
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
                            let key = format!("bench:shared:x:{run}:{task}:{i}");
                            locker.lock(key).await.unwrap().release().await.unwrap();
                        }
                        Pair::Read => {
                            let guard = locker.read("bench:shared:read").await.unwrap();
                            guard.release().await.unwrap();
                        }
                        Pair::Permit => {
                            let key = format!("bench:shared:p:{run}:{task}:{i}");
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
    let mut args = std::env::args().skip(1);
    let seconds: f64 = args.next().map_or(1.0, |s| s.parse().expect("seconds"));
    let rounds: usize = args.next().map_or(15, |s| s.parse().expect("rounds"));
    let server = RedisServer::start();
    let locker = server.locker().await;
    let time = Duration::from_secs_f64(seconds);
    run(&locker, Pair::Exclusive, Duration::from_millis(500)).await;
    // The rows take turns, round after round, and each ratio is to the exclusive row of its own
    // round: the machine's speed drifts by tens of percent within a minute here, more than the
    // differences measured.
    let mut ratios: [Vec<f64>; 3] = Default::default();
    for round in 1..=rounds {
        // Each round starts with another row, so that no row always follows the same one.
        let mut rates = [0.0; 4];
        for turn in 0..4 {
            let row = (round + turn) % 4;
            let pair = [
                Pair::Exclusive,
                Pair::Read,
                Pair::Permit,
                Pair::PermitOneKey,
            ][row];
            rates[row] = run(&locker, pair, time).await;
        }
        let [exclusive, read, permit, one_key] = rates;
        println!(
            "round {round}: exclusive {exclusive:.0} pairs/s; read, one key {:.2}x; \
             permit, distinct keys {:.2}x; permit, one key of 64 {:.2}x",
            read / exclusive,
            permit / exclusive,
            one_key / exclusive
        );
        for (all, ratio) in ratios.iter_mut().zip([read, permit, one_key]) {
            all.push(ratio / exclusive);
        }
    }
    let median = |all: &mut Vec<f64>| {
        all.sort_by(f64::total_cmp);
        all[all.len() / 2]
    };
    let [read, permit, one_key] = &mut ratios;
    println!("median of {rounds} rounds, each ÷ the exclusive pair (distinct keys) of its round:");
    println!("read, one key:            {:.2}x", median(read));
    println!("permit, distinct keys:    {:.2}x", median(permit));
    println!("permit, one key of 64:    {:.2}x", median(one_key));
}
