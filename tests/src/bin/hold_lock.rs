//! Takes a lock and holds it until the process is killed: the holder in the process-kill tests.
//!
//! Usage: `hold_lock <redis-url> <key> <lease-ms>`. Prints `HELD <fencing token>` once the lock is
//! taken (its watchdog then renews the lease like any live holder's), and never exits by itself.

use std::io::Write;
use std::time::Duration;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, key, lease_ms] = args.as_slice() else {
        eprintln!("usage: hold_lock <redis-url> <key> <lease-ms>");
        std::process::exit(2);
    };
    let lease = Duration::from_millis(lease_ms.parse().expect("lease-ms is a number"));
    let locker = relock::Locker::builder()
        .url(url.as_str())
        .lease(lease)
        .build()
        .expect("build the locker");
    let guard = locker.lock(key.as_str()).await.expect("take the lock");
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "HELD {}", guard.fencing_token()).expect("write to stdout");
    stdout.flush().expect("flush stdout");
    drop(stdout);
    std::future::pending::<()>().await;
}
