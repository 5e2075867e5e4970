//! `n` sequential acquire + release cycles of one contender on distinct keys, on a
//! current-thread runtime, for instruction counting under callgrind. Run it at two values of
//! `n`; the difference in instructions divided by the difference in `n` is the cost of one
//! cycle in this process, without the fixed costs of starting up.
//!
//! ```text
//! cargo build --release -p relock-benches --example profile_cycle
//! valgrind --tool=callgrind --callgrind-out-file=relock.%p \
//!     target/release/examples/profile_cycle relock 2000
//! ```
//!
//! Contenders: `raw` (SET NX PX + Lua on a multiplexed connection), `relock`
//! (`Locker::connect`), `relock-pool` (relock over a bb8 pool without checkout pings),
//! `memory` (`Locker::in_memory`). A third argument `mt` runs on Tokio's multi-thread runtime
//! (as the benchmark does), e.g. to count wake-ups with `strace -f -c -e futex`; `mtN` runs `N`
//! tasks at once on it, each doing `n / N` cycles (the benchmark's 64-task load, e.g. to profile
//! the server with `perf record -p <redis-server pid>`). It prints the pairs per second, this
//! process's heap allocations and bytes asked for per pair (a counting global allocator, after
//! 100 warm-up pairs), and the server's `INFO commandstats`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use relock::Locker;
use relock_tests::RedisServer;

/// Counts this process's heap allocations (and the bytes asked for), to report them per pair.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static ALLOCATED: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout` (see `alloc`).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract for `realloc` is passed on as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const RELEASE_LUA: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
    return redis.call('DEL', KEYS[1]) end return 0";

fn main() {
    let which = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "relock".to_owned());
    let n: usize = std::env::args()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000);
    let mode = std::env::args().nth(3).unwrap_or_default();
    let mut runtime = if mode.starts_with("mt") {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let tasks: usize = mode
        .strip_prefix("mt")
        .and_then(|tasks| tasks.parse().ok())
        .unwrap_or(1);
    let runtime = runtime.enable_all().build().expect("runtime");
    runtime.block_on(cycles(&which, n, tasks));
}

async fn cycles(which: &str, n: usize, tasks: usize) {
    let server = RedisServer::start();
    let connection = server.connection().await;
    let release = redis::Script::new(RELEASE_LUA);
    let locker = match which {
        "relock" => Some(Locker::connect(&server.url()).await.expect("connect")),
        "relock-pool" => {
            let manager = bb8_redis::RedisConnectionManager::new(server.url()).expect("url");
            let pool = bb8::Pool::builder()
                .test_on_check_out(false)
                .build(manager)
                .await
                .expect("pool");
            Some(Locker::builder().pool(pool).build().expect("build"))
        }
        "memory" => Some(Locker::in_memory()),
        "raw" => None,
        other => panic!("unknown contender `{other}`: raw, relock, relock-pool or memory"),
    };
    let release = std::sync::Arc::new(release);
    let locker = std::sync::Arc::new(locker);
    // Warm-up (connections, scripts loaded, tables grown), left out of the allocation count.
    for i in 0..100 {
        let mut connection = connection.clone();
        cycle(
            &format!("profile:warm:{i}"),
            &locker,
            &release,
            &mut connection,
        )
        .await;
    }
    let allocations = ALLOCATIONS.load(Ordering::Relaxed);
    let allocated = ALLOCATED.load(Ordering::Relaxed);
    let started = std::time::Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let (locker, release) = (locker.clone(), release.clone());
            let mut connection = connection.clone();
            tokio::spawn(async move {
                for i in 0..n / tasks {
                    cycle(
                        &format!("profile:{task}:{i}"),
                        &locker,
                        &release,
                        &mut connection,
                    )
                    .await;
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.expect("task");
    }
    eprintln!("{:.0} pairs/s", n as f64 / started.elapsed().as_secs_f64());
    // Includes the loop's own key names (one `format!` per pair, as every contender has).
    eprintln!(
        "{:.1} heap allocations and {:.0} bytes asked for per pair (this process)",
        (ALLOCATIONS.load(Ordering::Relaxed) - allocations) as f64 / n as f64,
        (ALLOCATED.load(Ordering::Relaxed) - allocated) as f64 / n as f64
    );
    // What the server spent per command (`usec_per_call`), Lua's inner calls included.
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut server.connection().await)
        .await
        .expect("INFO commandstats");
    eprintln!("{n} cycles of {which}; the server's command statistics:\n{stats}");
}

async fn cycle(
    key: &str,
    locker: &Option<Locker>,
    release: &redis::Script,
    connection: &mut redis::aio::MultiplexedConnection,
) {
    match locker {
        Some(locker) => {
            let guard = locker.lock(key).await.expect("lock");
            guard.release().await.expect("release");
        }
        None => {
            let token = format!("{:032x}", rand::random::<u128>());
            let acquired: Option<String> = redis::cmd("SET")
                .arg(key)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(30_000)
                .query_async(connection)
                .await
                .expect("SET");
            assert!(acquired.is_some());
            let _: i64 = release
                .key(key)
                .arg(&token)
                .invoke_async(connection)
                .await
                .expect("release");
        }
    }
}
