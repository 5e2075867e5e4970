//! relock in one screen: exclusive sections, re-entry, fencing tokens, timeouts.
//!
//! Runs against a Redis Cluster when `REDIS_CLUSTER` is set (comma-separated seed nodes), against
//! one Redis server when `REDIS_URL` is, otherwise in memory:
//!
//! ```text
//! cargo run -p relock-examples --example quickstart
//! REDIS_URL=redis://127.0.0.1:6379 cargo run -p relock-examples --example quickstart
//! REDIS_CLUSTER=redis://127.0.0.1:7000,redis://127.0.0.1:7001 cargo run -p relock-examples --example quickstart
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use relock::{Error, Locker};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let locker = match (std::env::var("REDIS_CLUSTER"), std::env::var("REDIS_URL")) {
        (Ok(seeds), _) => {
            println!("using the Redis Cluster with seed nodes {seeds}");
            Locker::builder()
                .cluster(seeds.split(',').map(str::trim).filter(|s| !s.is_empty()))
                .build()?
        }
        (_, Ok(url)) => {
            println!("using Redis at {url}");
            Locker::connect(&url).await?
        }
        _ => {
            println!("neither REDIS_CLUSTER nor REDIS_URL is set: using the in-memory backend");
            Locker::in_memory()
        }
    };
    let order = format!("order:{}", std::process::id());

    // 1. A guard: held until released (or dropped).
    let guard = locker.lock(&order).await?;
    println!(
        "took `{}` with fencing token {}",
        guard.key(),
        guard.fencing_token()
    );
    if let Some(info) = locker.inspect(&order).await? {
        println!(
            "inspect: owner {}…, lease ends in {:?}, held on {} by pid {}",
            &info.owner[..8],
            info.ttl,
            info.host.as_deref().unwrap_or("?"),
            info.pid.unwrap_or_default()
        );
    }

    // 2. Another owner cannot take it; a bounded wait ends in Error::Timeout.
    let other = locker.clone();
    let key = order.clone();
    let attempt = tokio::spawn(async move {
        other
            .lock(key)
            .wait(Duration::from_millis(200))
            .await
            .map(|_| ())
    })
    .await
    .expect("task panicked");
    println!(
        "a second owner waiting 200 ms gets: {}",
        attempt.unwrap_err()
    );
    guard.release().await?;
    println!("released `{order}`");

    // 3. run(): the body holds the lock, and nested locks on the same key re-enter for free.
    let total = locker
        .lock(&order)
        .run(async {
            let nested = locker.lock(&order).await?;
            println!(
                "nested lock on `{}`: re-entrant = {}, same fencing token {}",
                nested.key(),
                nested.is_reentrant(),
                nested.fencing_token()
            );
            Ok::<_, Error>(42)
        })
        .await??;
    println!("run() returned {total}");

    // 4. Eight tasks increment a counter with a deliberately racy read-modify-write.
    let counter = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (locker, counter, key) = (locker.clone(), counter.clone(), order.clone());
            tokio::spawn(async move {
                for _ in 0..25 {
                    locker
                        .lock(&key)
                        .run(async {
                            let seen = counter.load(Ordering::SeqCst);
                            tokio::task::yield_now().await;
                            counter.store(seen + 1, Ordering::SeqCst);
                        })
                        .await?;
                }
                Ok::<_, Error>(())
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task panicked")?;
    }
    println!(
        "8 tasks × 25 locked increments = {} (no lost update)",
        counter.load(Ordering::SeqCst)
    );

    // 5. Bad keys never reach the server.
    match locker.lock("order:{42}").await {
        Err(err @ Error::InvalidKey { .. }) => println!("rejected: {err}"),
        other => println!("unexpected: {other:?}"),
    }
    Ok(())
}
