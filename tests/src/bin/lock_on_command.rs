//! Takes and releases one lock when told to on stdin: the Rust side of the cross-language tests
//! (`python/tests/test_cross_language.py`), which time how fast a release in one language wakes a
//! waiter in the other.
//!
//! Usage: `lock_on_command <redis-url>`, then one command per line:
//!
//! * `lock <key> <wait-ms> <lease-ms>` → `HELD <fencing token> <unix ns>` once the lock is taken
//!   (the time it was granted), `TIMEOUT <unix ns>`, or `ERROR <message>`;
//! * `release` → `RELEASED <unix ns before> <unix ns after>` (the release's request and reply), or
//!   `ERROR <message>`.
//!
//! Exits at the end of stdin (a guard still held is then dropped, and released).

use std::io::{BufRead, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn unix_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

fn say(line: &str) {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}").expect("write to stdout");
    stdout.flush().expect("flush stdout");
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url] = args.as_slice() else {
        eprintln!("usage: lock_on_command <redis-url>");
        std::process::exit(2);
    };
    let locker = relock::Locker::connect(url.as_str())
        .await
        .expect("connect to the lock server");
    let (lines, mut commands) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut guard: Option<relock::LockGuard> = None;
    while let Some(line) = commands.recv().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["lock", key, wait_ms, lease_ms] => {
                let (Ok(wait), Ok(lease)) = (wait_ms.parse(), lease_ms.parse()) else {
                    say("ERROR wait-ms and lease-ms are numbers");
                    continue;
                };
                let taken = locker
                    .lock(key.to_string())
                    .wait(Duration::from_millis(wait))
                    .lease(Duration::from_millis(lease))
                    .await;
                match taken {
                    Ok(taken) => {
                        say(&format!("HELD {} {}", taken.fencing_token(), unix_ns()));
                        guard = Some(taken);
                    }
                    Err(relock::Error::Timeout { .. }) => say(&format!("TIMEOUT {}", unix_ns())),
                    Err(err) => say(&format!("ERROR {err}")),
                }
            }
            ["release"] => match guard.take() {
                Some(held) => {
                    let before = unix_ns();
                    match held.release().await {
                        Ok(()) => say(&format!("RELEASED {before} {}", unix_ns())),
                        Err(err) => say(&format!("ERROR {err}")),
                    }
                }
                None => say("ERROR nothing is held"),
            },
            _ => say(&format!("ERROR unknown command {line:?}")),
        }
    }
}
