//! Nested re-entry: a lock on a key the scope already holds, timed and its Redis commands
//! counted with `INFO commandstats`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use crate::report::{Goal, Report, Table};
use crate::Bench;
use relock::Locker;
use relock_tests::RedisServer;

/// What one re-entry measurement found.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reentry {
    /// Per `locker.lock(key).await` (and dropping the re-entrant guard).
    pub(crate) lock: Duration,
    /// Per nested `locker.lock(key).run(async {})`: how `#[locked]` and `LockLayer` re-enter.
    pub(crate) run: Duration,
    /// Commands the server executed while the nested locks were taken.
    pub(crate) commands: u64,
}

/// `n` re-entries of each kind inside `run` on one key of `locker`.
pub(crate) async fn measure(locker: &Locker, server: &RedisServer, n: u32, tag: &str) -> Reentry {
    let key = format!("bench:reentry:{tag}");
    locker
        .lock(key.as_str())
        .run(async {
            for _ in 0..1_000 {
                drop(black_box(
                    locker.lock(key.as_str()).await.expect("re-enter"),
                ));
            }
            let before = server.commands_processed().await;
            let start = Instant::now();
            for _ in 0..n {
                let guard = locker.lock(key.as_str()).await.expect("re-enter");
                assert!(guard.is_reentrant());
                drop(black_box(guard));
            }
            let lock = start.elapsed() / n;
            let runs = n / 4;
            let start = Instant::now();
            for _ in 0..runs {
                locker
                    .lock(key.as_str())
                    .run(async { black_box(()) })
                    .await
                    .expect("re-enter with run");
            }
            let run = start.elapsed() / runs;
            let commands = server.commands_processed().await - before;
            Reentry {
                lock,
                run,
                commands,
            }
        })
        .await
        .expect("the outer lock")
}

/// Re-entry through a Redis locker and an in-memory one.
pub(crate) async fn scenario(bench: &Bench<'_>, report: &mut Report) {
    let Bench {
        server,
        url,
        plan,
        memory,
        ..
    } = bench;
    let Report { tables, goals } = report;
    eprintln!("re-entry");
    let connect = Locker::connect(url).await.expect("connect");
    let mut table = Table::new(
        "Nested re-entry on a held key, inside run() (Redis commands counted by INFO commandstats)",
        &["backend", "lock().await", "nested run()", "Redis commands"],
    );
    let mut redis_reentry = None;
    for (name, locker) in [
        ("relock Locker::connect", &connect),
        ("relock in memory", memory),
    ] {
        let found = measure(locker, server, plan.reentries, name).await;
        table.row(vec![
            name.to_owned(),
            format!("{} ns", found.lock.as_nanos()),
            format!("{} ns", found.run.as_nanos()),
            found.commands.to_string(),
        ]);
        redis_reentry.get_or_insert(found);
    }
    table.note(format!(
        "{} re-entries of each kind; a re-entrant guard is dropped right after it is taken.",
        plan.reentries
    ));
    tables.push(table);
    let found = redis_reentry.expect("measured");
    goals.push(Goal::new(
        "re-entry (Redis locker): time per lock().await, commands",
        "≤ 1 µs, 0",
        format!(
            "{} ns, {} (nested run() {} ns)",
            found.lock.as_nanos(),
            found.commands,
            found.run.as_nanos()
        ),
        found.lock <= Duration::from_micros(1) && found.commands == 0,
    ));
    bench.flush().await;
}
