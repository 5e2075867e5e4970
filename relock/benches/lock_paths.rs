//! Micro-benchmarks of relock's pure-CPU paths: key validation, re-entry inside a scope, and a
//! fresh acquire + release on the in-memory backend (the runtime's own cost, no network).
//!
//! ```text
//! cargo bench -p relock --bench lock_paths
//! ```

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use relock::{LockKey, Locker};

fn key_validation(c: &mut Criterion) {
    let mut group = c.benchmark_group("LockKey::new");
    group.bench_function("order:42", |b| {
        b.iter(|| LockKey::new(black_box("order:42")))
    });
    let longest = "k".repeat(LockKey::MAX_LEN);
    group.bench_function("512 bytes", |b| {
        b.iter(|| LockKey::new(black_box(longest.as_str())))
    });
    group.bench_function("rejected: brace", |b| {
        b.iter(|| LockKey::new(black_box("order:{42}")))
    });
    group.finish();
}

/// Times `iters` rounds of `body` inside a scope holding `order:42`.
fn in_scope<F, Fut>(
    runtime: &tokio::runtime::Runtime,
    locker: &Locker,
    iters: u64,
    body: F,
) -> Duration
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    runtime
        .block_on(locker.lock("order:42").run(async {
            let start = Instant::now();
            for _ in 0..iters {
                body().await;
            }
            start.elapsed()
        }))
        .expect("the outer lock")
}

fn reentry(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let locker = runtime.block_on(async { Locker::in_memory() });
    let mut group = c.benchmark_group("re-entry in a scope");
    group.bench_function("lock().await", |b| {
        b.iter_custom(|iters| {
            in_scope(&runtime, &locker, iters, || async {
                drop(black_box(locker.lock("order:42").await.expect("re-enter")));
            })
        })
    });
    group.bench_function("nested run()", |b| {
        b.iter_custom(|iters| {
            in_scope(&runtime, &locker, iters, || async {
                locker
                    .lock("order:42")
                    .run(async { black_box(()) })
                    .await
                    .expect("re-enter");
            })
        })
    });
    group.finish();

    let mut group = c.benchmark_group("in memory");
    group.bench_function("lock + release", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let guard = locker.lock("order:7").await.expect("lock");
                    guard.release().await.expect("release");
                }
                start.elapsed()
            })
        })
    });
    group.finish();
}

criterion_group!(benches, key_validation, reentry);
criterion_main!(benches);
