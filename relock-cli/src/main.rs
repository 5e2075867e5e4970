//! `relock`, the operator's tool for [relock] locks: who holds a lock, since when, on which host
//! and for how much longer; every held lock matching a pattern; acquisitions and releases as they
//! happen; and a force-release for a lock whose holder is stuck.
//!
//! ```text
//! relock inspect order:42          # holder host, pid, since, ttl, fencing token
//! relock list 'order:*'            # every held lock matching, as a table
//! relock watch order:42            # live: acquisitions and releases as they happen
//! relock release order:42          # force-release; asks unless --yes
//! relock doctor                     # checks the deployment against what relock assumes
//! ```
//!
//! Global options: `--url` (or `REDIS_URL`, default `redis://127.0.0.1:6379`; `rediss://` for
//! TLS, `redis://user:password@host` for an ACL user), `--prefix` (default `relock`),
//! `--timeout` (connect and response timeout, default 2 s), `--json` (one JSON object per lock
//! or event, one per line), and with TLS `--tls-ca-cert` (a private CA's PEM) and
//! `--tls-cert`/`--tls-key` (a client certificate).
//!
//! Exit codes: 0 done (for `inspect`: the lock is held; for `doctor`: every check passed); 1 the
//! lock is free (`inspect`), or nothing was released (`release`: the lock was already free, or
//! the answer was no); 2 a usage error, an invalid key or pattern; 3 the server can't be reached
//! or refused; 4 `doctor` found warnings and no failure; 5 `doctor` found a failure. Every
//! failure prints one line on stderr.
//!
//! Everything goes through the [relock] library — the same scripts and key layout as the
//! applications that take the locks.

#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]

mod args;
mod commands;
mod failure;
mod json;
mod mode;
mod pattern;
mod table;
mod time;
mod url;

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;

use crate::args::Cli;
use crate::failure::Failure;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err)
            if !err.use_stderr()
                || err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            // --help and --version (stdout, exit 0), or the help for a bare `relock` (exit 2).
            err.exit()
        }
        Err(err) => return Failure::usage(usage_error(&err)).report(),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return Failure::usage(format!("cannot start the runtime: {err}")).report(),
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => code,
        Err(failure) => failure.report(),
    }
}

/// clap's usage error as one line: its message with the offending arguments, without the usage
/// block that follows, and a pointer to `--help`.
fn usage_error(err: &clap::Error) -> String {
    let rendered = err.render().to_string();
    let message = rendered
        .split("\n\n")
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ");
    format!("{message}; see `relock --help`")
}
