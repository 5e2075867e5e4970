//! `relock list <pattern>`: every held lock whose key matches.

use std::pin::pin;
use std::process::ExitCode;

use futures_util::StreamExt;
use relock::LockInfo;

use super::Session;
use crate::failure::Failure;
use crate::time::{human, rfc3339};

pub(super) async fn run(session: &Session, pattern: &str) -> Result<ExitCode, Failure> {
    crate::pattern::check(pattern)?;
    let mut locks = pin!(session.locker.list(pattern));
    let mut found = Vec::new();
    // Each item is at most one SCAN batch and its pipelined reads: bound each, not the walk.
    while let Some(info) = session
        .call(async { locks.next().await.transpose() })
        .await?
    {
        found.push(info);
    }
    // Both outputs in one order, so that a script sees what the table shows.
    found.sort_by(|a, b| a.key.cmp(&b.key));
    if session.json {
        for info in &found {
            println!("{}", crate::json::line(&crate::json::lock(info)));
        }
        return Ok(ExitCode::SUCCESS);
    }
    if found.is_empty() {
        eprintln!("relock: no held lock matches `{pattern}`");
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", table(&found));
    Ok(ExitCode::SUCCESS)
}

fn table(locks: &[LockInfo]) -> String {
    let rows: Vec<[String; 7]> = locks
        .iter()
        .map(|info| {
            [
                info.key.clone(),
                crate::mode::describe(info.mode, info.holds),
                info.fencing_token.to_string(),
                human(info.ttl),
                info.host.clone().unwrap_or_else(|| "-".to_owned()),
                info.pid
                    .map_or_else(|| "-".to_owned(), |pid| pid.to_string()),
                info.acquired_at.map_or_else(|| "-".to_owned(), rfc3339),
            ]
        })
        .collect();
    crate::table::render(
        [
            "KEY",
            "MODE",
            "FENCING TOKEN",
            "TTL",
            "HOST",
            "PID",
            "SINCE",
        ],
        &rows,
    )
}
