//! Takes a lock and holds it until the process is killed: the holder in the process-kill tests.
//!
//! Usage: `hold_lock <redis-url> <key> <lease-ms> [lock|read|permits:<n>]`. Takes the exclusive
//! lock (the default), a read hold, or one of `n` permits of a semaphore; prints
//! `HELD <fencing token>` once taken (its watchdog then renews the lease like any live holder's),
//! then `LOST` if the hold is ever lost (a SIGSTOP past its lease), and never exits by itself.

use std::io::Write;
use std::time::Duration;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (url, key, lease_ms, mode) = match args.as_slice() {
        [url, key, lease_ms] => (url, key, lease_ms, "lock"),
        [url, key, lease_ms, mode] => (url, key, lease_ms, mode.as_str()),
        _ => {
            eprintln!("usage: hold_lock <redis-url> <key> <lease-ms> [lock|read|permits:<n>]");
            std::process::exit(2);
        }
    };
    let lease = Duration::from_millis(lease_ms.parse().expect("lease-ms is a number"));
    let locker = relock::Locker::builder()
        .url(url.as_str())
        .lease(lease)
        .build()
        .expect("build the locker");
    let key = key.as_str();
    let (token, lost): (
        u64,
        std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>,
    ) = match mode {
        "lock" | "read" => {
            let guard = if mode == "lock" {
                locker.lock(key).await
            } else {
                locker.read(key).await
            }
            .expect("take the lock");
            (
                guard.fencing_token(),
                Box::pin(async move { guard.lost().await }),
            )
        }
        permits => {
            let permits = permits
                .strip_prefix("permits:")
                .and_then(|n| n.parse().ok())
                .expect("a mode: lock, read or permits:<n>");
            let permit = locker
                .semaphore(key, permits)
                .acquire()
                .await
                .expect("take a permit");
            (
                permit.fencing_token(),
                Box::pin(async move { permit.lost().await }),
            )
        }
    };
    say(&format!("HELD {token}"));
    lost.await;
    say("LOST");
    std::future::pending::<()>().await;
}

fn say(line: &str) {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}").expect("write to stdout");
    stdout.flush().expect("flush stdout");
}
