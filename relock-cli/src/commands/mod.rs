//! The subcommands, each in its file, and what they share: a locker built from the global
//! options, and a bound on every round trip.

mod doctor;
mod inspect;
mod list;
mod release;
mod watch;

use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use relock::Locker;

use crate::args::{Cli, Command, Global};
use crate::failure::Failure;
use crate::url::redacted;

/// Runs the command line's subcommand to its exit code.
pub(crate) async fn run(cli: Cli) -> Result<ExitCode, Failure> {
    let session = Session::new(&cli.global)?;
    match cli.command {
        Command::Inspect { key } => inspect::run(&session, &key).await,
        Command::List { pattern } => list::run(&session, &pattern).await,
        Command::Watch {
            key,
            duration,
            count,
            interval,
        } => {
            let bounds = watch::Bounds {
                duration,
                count,
                interval,
            };
            watch::run(&session, &key, bounds).await
        }
        Command::Release { key, yes } => release::run(&session, &key, yes).await,
        Command::Doctor => doctor::run(&session, &cli.global).await,
    }
}

/// Applies `--tls-ca-cert`, `--tls-cert` and `--tls-key`.
#[cfg(feature = "tls")]
fn tls(
    mut builder: relock::LockerBuilder,
    global: &Global,
) -> Result<relock::LockerBuilder, Failure> {
    let read = |path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|err| Failure::usage(format!("cannot read {}: {err}", path.display())))
    };
    if let Some(ca) = &global.tls_ca_cert {
        builder = builder.tls_root_ca(read(ca)?);
    }
    if let (Some(cert), Some(key)) = (&global.tls_cert, &global.tls_key) {
        builder = builder.tls_client_auth(read(cert)?, read(key)?);
    }
    Ok(builder)
}

/// A locker on the chosen server, and how to report on it.
#[derive(Debug)]
pub(crate) struct Session {
    locker: Locker,
    url: String,
    /// Whether the server is reached over TLS, for the hint when a handshake goes wrong.
    tls: bool,
    json: bool,
    /// The longest one call may take: connecting, then the answer.
    limit: Duration,
}

impl Session {
    fn new(global: &Global) -> Result<Self, Failure> {
        let (option, urls) = match (&global.cluster[..], &global.sentinel[..]) {
            ([], []) => ("--url", std::slice::from_ref(&global.url)),
            ([], sentinels) => ("--sentinel", sentinels),
            (seeds, _) => ("--cluster", seeds),
        };
        for url in urls {
            crate::url::check(option, url)?;
        }
        let uses_tls = urls.iter().any(|url| crate::url::is_tls(url));
        let builder = match (
            &global.cluster[..],
            &global.sentinel[..],
            &global.master_name,
        ) {
            ([], [], _) => Locker::builder().url(&global.url),
            ([], sentinels, Some(name)) => Locker::builder().sentinel(sentinels.to_vec(), name),
            ([], _, None) => return Err(Failure::usage("--sentinel needs --master-name")),
            (seeds, _, _) => Locker::builder().cluster(seeds.to_vec()),
        };
        #[cfg(feature = "tls")]
        let builder = tls(builder, global)?;
        let locker = builder
            // The operator's tool takes no locks, and must inspect and clear them on any
            // server, one that may evict keys included.
            .allow_eviction()
            .prefix(&global.prefix)
            .connect_timeout(global.timeout)
            .response_timeout(global.timeout)
            .build()
            // Building opens no connection: it fails only on a URL or prefix that can't be used.
            .map_err(|err| match err {
                // Its own Display is only "lock backend failed": the cause says what to fix.
                relock::Error::Backend(err) => Failure::usage(err.to_string()),
                err => Failure::usage(err.to_string()),
            })?;
        let (url, limit) = match (
            &global.cluster[..],
            &global.sentinel[..],
            &global.master_name,
        ) {
            ([], [], _) => (redacted(&global.url), global.timeout.saturating_mul(2)),
            // Each sentinel is asked in turn (connect, answer), then the master (connect, ROLE,
            // the command's answer).
            ([], sentinels, Some(name)) => (
                format!(
                    "{} (sentinel master `{name}`)",
                    sentinels
                        .iter()
                        .map(|sentinel| redacted(sentinel))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                global
                    .timeout
                    .saturating_mul(2 * sentinels.len() as u32 + 3),
            ),
            (seeds, _, _) => (
                seeds
                    .iter()
                    .map(|seed| redacted(seed))
                    .collect::<Vec<_>>()
                    .join(","),
                global.timeout.saturating_mul(2),
            ),
        };
        Ok(Self {
            locker,
            url,
            tls: uses_tls,
            json: global.json,
            limit,
        })
    }

    /// Awaits one call to the server, turning its error — or its silence past the connect and
    /// response timeouts — into a [`Failure`].
    async fn call<T>(
        &self,
        call: impl Future<Output = Result<T, relock::Error>>,
    ) -> Result<T, Failure> {
        match tokio::time::timeout(self.limit, call).await {
            Ok(result) => result.map_err(|err| Failure::from_error(err, &self.url, self.tls)),
            Err(_) => Err(Failure::server(format!(
                "server at {} did not answer within {:?}{}",
                self.url,
                self.limit,
                crate::failure::tls_hint(self.tls, "timed out")
            ))),
        }
    }
}
