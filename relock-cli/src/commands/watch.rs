//! `relock watch <key>`: acquisitions and releases of one lock as they happen.
//!
//! The lock is read every `--interval`; a change of holder (its hold token or fencing token) is
//! a release followed by an acquisition, as is a change of mode (exclusive, read, permits). Readers
//! and permits come and go while the key stays held: a change in them (how many are in use, the
//! first holder, or the key's fencing token) is reported as `changed`, with the mode and the holds
//! in use. A release, an expiry and a force-release look alike from outside: all
//! three are reported as `released`.

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use relock::{LockInfo, LockMode};
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
    /// Readers or permits joined or left a key that stayed held in the same mode.
    Changed,
    Released,
}

impl Event {
    fn name(self) -> &'static str {
        match self {
            Self::Held => "held",
            Self::Acquired => "acquired",
            Self::Changed => "changed",
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
            (Some(old), Some(held)) if old.mode != held.mode => {
                events.push((Event::Released, old));
                events.push((Event::Acquired, held));
            }
            (Some(old), Some(held))
                if old.owner != held.owner
                    || old.fencing_token != held.fencing_token
                    || old.holds != held.holds =>
            {
                if held.mode == LockMode::Exclusive {
                    events.push((Event::Released, old));
                    events.push((Event::Acquired, held));
                } else {
                    events.push((Event::Changed, held));
                }
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
            fields.push(("mode", crate::mode::name(info.mode).into()));
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
        Event::Held | Event::Acquired | Event::Changed => {
            let mode = crate::mode::describe(info.mode, info.holds);
            // The server keeps a holder's host and pid beside an exclusive hold only.
            let holder = match (&info.host, info.pid) {
                (None, None) => String::new(),
                (host, pid) => format!(
                    " by {} pid {}",
                    host.as_deref().unwrap_or("unknown host"),
                    pid.map_or_else(|| "unknown".to_owned(), |pid| pid.to_string())
                ),
            };
            println!(
                "{at}  {:<8}  {key}  {mode}{holder}, fencing token {token}, ttl {}",
                event.name(),
                human(info.ttl)
            );
        }
    }
}
