//! Takes one or more locks, holds them for a while (their leases renewed as any live holder's
//! are), then releases them: locks to look at with the `relock` CLI from another terminal.
//!
//! ```text
//! cargo run -p relock-examples --example hold -- order:42 30s
//! REDIS_URL=redis://127.0.0.1:6391 cargo run -p relock-examples --example hold -- order:42 order:7 2m
//! ```
//!
//! It connects to `REDIS_URL`, else to `redis://127.0.0.1:6379` (the CLI's default too), takes
//! the keys in the order given — waiting up to 10 s for each that another owner holds — and
//! prints:
//!
//! ```text
//! holding `order:42` with fencing token 1796163228861428
//! holding `order:7` with fencing token 1796163228862020
//! for 2m; Ctrl-C releases now
//! released `order:42`
//! released `order:7`
//! ```
//!
//! The duration is a whole number followed by `ms`, `s`, `m` or `h`. A bad argument, key or
//! duration exits with status 2; a lock not obtained, lost, or a server not reached, with
//! status 1.

use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::process::ExitCode;
use std::task::Poll;
use std::time::Duration;

use relock::{LockKey, Locker};

const USAGE: &str = "usage: hold <key>... <duration>, e.g. `hold order:42 30s`";

/// What to hold and for how long, from the command line's arguments.
#[derive(Debug, PartialEq)]
pub(crate) struct Args {
    pub(crate) keys: Vec<LockKey>,
    pub(crate) duration: Duration,
    /// The duration as it was written, to say it back.
    pub(crate) duration_text: String,
}

fn parse_args(args: &[String]) -> Result<Args, String> {
    let [keys @ .., duration] = args else {
        return Err(USAGE.to_owned());
    };
    if keys.is_empty() {
        return Err(USAGE.to_owned());
    }
    // Checked here, before connecting, so that a typo is told apart from a server problem.
    let mut valid: Vec<LockKey> = Vec::with_capacity(keys.len());
    for key in keys {
        let key = LockKey::new(key.as_str()).map_err(|err| format!("{err}\n{USAGE}"))?;
        // A second bare guard on a key this task holds would wait for itself.
        if valid.contains(&key) {
            return Err(format!("`{key}` is given twice\n{USAGE}"));
        }
        valid.push(key);
    }
    let duration_text = duration.clone();
    let duration = parse_duration(duration).map_err(|err| format!("{err}\n{USAGE}"))?;
    Ok(Args {
        keys: valid,
        duration,
        duration_text,
    })
}

/// `"250ms"`, `"30s"`, `"2m"`, `"1h"`: the forms `#[relock::locked]` accepts.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || {
        format!(
            "invalid duration `{text}`: expected a whole number followed by `ms`, `s`, `m` or \
             `h`, such as `30s`"
        )
    };
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(invalid)?;
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let millis_per_unit = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(invalid()),
    };
    let millis = number.checked_mul(millis_per_unit).ok_or_else(invalid)?;
    Ok(Duration::from_millis(millis))
}

/// Takes `args.keys` through `locker`, reports them on `out`, and releases them after
/// `args.duration` or as soon as `stop` completes, whichever is first.
pub(crate) async fn hold(
    locker: &Locker,
    args: &Args,
    stop: impl Future<Output = ()>,
    out: &mut impl Write,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut guards = Vec::with_capacity(args.keys.len());
    for key in &args.keys {
        let guard = locker.lock(key.clone()).await?;
        writeln!(
            out,
            "holding `{key}` with fencing token {}",
            guard.fencing_token()
        )?;
        guards.push(guard);
    }
    writeln!(out, "for {}; Ctrl-C releases now", args.duration_text)?;
    out.flush()?;

    let mut losses: Vec<Pin<Box<dyn Future<Output = ()> + '_>>> = guards
        .iter()
        .map(|guard| Box::pin(guard.lost()) as Pin<Box<dyn Future<Output = ()>>>)
        .collect();
    let first_lost = std::future::poll_fn(|cx| {
        for (at, loss) in losses.iter_mut().enumerate() {
            if loss.as_mut().poll(cx).is_ready() {
                return Poll::Ready(at);
            }
        }
        Poll::Pending
    });
    tokio::select! {
        () = tokio::time::sleep(args.duration) => {}
        () = stop => {}
        at = first_lost => {
            return Err(format!("lost `{}` before the time was up", args.keys[at]).into());
        }
    }
    drop(losses);
    for (key, guard) in args.keys.iter().zip(guards) {
        guard.release().await?;
        writeln!(out, "released `{key}`")?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&args) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("hold: {message}");
            return ExitCode::from(2);
        }
    };
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let held = async {
        let locker = Locker::connect(&url).await?;
        let ctrl_c = async {
            // If no handler can be installed, only the duration ends the hold.
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        hold(&locker, &args, ctrl_c, &mut std::io::stdout()).await
    };
    match held.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // relock's backend error says what failed in its source, not its own text.
            let mut message = err.to_string();
            let mut source = err.source();
            while let Some(cause) = source {
                let cause_text = cause.to_string();
                if !message.contains(&cause_text) {
                    message = format!("{message}: {cause_text}");
                }
                source = cause.source();
            }
            eprintln!("hold: {message} (Redis at {url})");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|arg| (*arg).to_owned()).collect()
    }

    #[test]
    fn durations_take_the_units_of_locked() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    }

    #[test]
    fn a_bad_duration_is_named_with_the_forms_accepted() {
        for bad in [
            "",
            "30",
            "s",
            "1.5s",
            "30 s",
            "-1s",
            "30d",
            "99999999999999999999h",
        ] {
            let err = parse_duration(bad).unwrap_err();
            assert!(
                err.starts_with(&format!("invalid duration `{bad}`")),
                "{err}"
            );
            assert!(err.contains("such as `30s`"), "{err}");
        }
    }

    #[test]
    fn args_are_keys_then_a_duration() {
        let args = parse_args(&strings(&["order:42", "30s"])).unwrap();
        assert_eq!(args.keys, [LockKey::new("order:42").unwrap()]);
        assert_eq!(args.duration, Duration::from_secs(30));
        assert_eq!(args.duration_text, "30s");
        let args = parse_args(&strings(&["order:42", "order:7", "2m"])).unwrap();
        let keys: Vec<&str> = args.keys.iter().map(LockKey::as_str).collect();
        assert_eq!(keys, ["order:42", "order:7"]);
    }

    #[test]
    fn wrong_arguments_give_the_usage() {
        for args in [&[][..], &["order:42"]] {
            assert_eq!(parse_args(&strings(args)), Err(USAGE.to_owned()));
        }
        let err = parse_args(&strings(&["order:{42}", "30s"])).unwrap_err();
        assert!(err.contains("`{` or `}`") && err.ends_with(USAGE), "{err}");
        let err = parse_args(&strings(&["order:42", "soon"])).unwrap_err();
        assert!(err.contains("invalid duration `soon`"), "{err}");
        let err = parse_args(&strings(&["order:42", "order:7", "order:42", "30s"])).unwrap_err();
        assert!(err.starts_with("`order:42` is given twice"), "{err}");
    }
}
