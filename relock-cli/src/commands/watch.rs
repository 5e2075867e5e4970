//! `relock watch <key>`: acquisitions and releases of one lock as they happen.
//!
//! The lock is read every `--interval`; a change of holder (its hold token or fencing token) is
//! a release followed by an acquisition. A release, an expiry and a force-release look alike from
//! outside: all three are reported as `released`.

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use relock::LockInfo;
use tokio::time::{Instant, MissedTickBehavior};

use super::Session;
use crate::failure::Failure;
use crate::time::{human, rfc3339};

/// When to stop watching, besides Ctrl-C.
#[derive(Debug)]
pub(crate) struct Bounds {
    pub(crate) duration: Option<Duration>,
    pub(crate) count: Option<u64>,
    pub(crate) interval: Duration,
}

/// What happened to the lock between two reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// The lock was already held when watching began (not counted by `--count`).
    Held,
    Acquired,
    Released,
}

impl Event {
    fn name(self) -> &'static str {
        match self {
            Self::Held => "held",
            Self::Acquired => "acquired",
            Self::Released => "released",
        }
    }
}

pub(super) async fn run(session: &Session, key: &str, bounds: Bounds) -> Result<ExitCode, Failure> {
    let deadline = bounds.duration.map(|duration| Instant::now() + duration);
    let mut ticks = tokio::time::interval(bounds.interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);

    let mut seen: Option<LockInfo> = None;
    let mut reported = 0;
    let mut first = true;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = &mut interrupted => return Ok(ExitCode::SUCCESS),
            () = sleep_until(deadline) => return Ok(ExitCode::SUCCESS),
        }
        let now = session.call(session.locker.inspect(key)).await?;
        let mut events = Vec::new();
        match (&seen, &now) {
            (None, Some(held)) if first => events.push((Event::Held, held)),
            (None, Some(held)) => events.push((Event::Acquired, held)),
            (Some(old), None) => events.push((Event::Released, old)),
            (Some(old), Some(held))
                if old.owner != held.owner || old.fencing_token != held.fencing_token =>
            {
                events.push((Event::Released, old));
                events.push((Event::Acquired, held));
            }
            _ => {}
        }
        if first {
            // On stderr, so that stdout has events only; tells a reader that watching has begun.
            let state = if now.is_some() { "held" } else { "free" };
            eprintln!("relock: watching `{key}` ({state} now); Ctrl-C stops");
            first = false;
        }
        for (event, info) in events {
            print_event(session.json, event, info);
            if event != Event::Held {
                reported += 1;
                if bounds.count.is_some_and(|count| reported >= count) {
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
        seen = now;
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn print_event(json: bool, event: Event, info: &LockInfo) {
    let at = rfc3339(SystemTime::now());
    if json {
        let mut fields = vec![("event", event.name().into()), ("at", at.into())];
        if event == Event::Released {
            fields.push(("key", info.key.clone().into()));
            fields.push(("fencing_token", info.fencing_token.into()));
            fields.push(("owner", info.owner.clone().into()));
        } else {
            fields.extend(crate::json::lock(info));
        }
        println!("{}", crate::json::line(&fields));
        return;
    }
    let key = &info.key;
    let token = info.fencing_token;
    match event {
        Event::Released => println!("{at}  released  {key}  fencing token {token}"),
        Event::Held | Event::Acquired => {
            let host = info.host.as_deref().unwrap_or("unknown host");
            let pid = info
                .pid
                .map_or_else(|| "unknown".to_owned(), |pid| pid.to_string());
            println!(
                "{at}  {:<8}  {key}  by {host} pid {pid}, fencing token {token}, ttl {}",
                event.name(),
                human(info.ttl)
            );
        }
    }
}
