//! The command line, as clap reads it.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Inspect, list, watch and force-release relock's distributed locks on Redis.
///
/// Exit codes: 0 done (for `inspect`: the lock is held; for `doctor`: every check passed); 1 the
/// lock is free, or nothing was released; 2 a usage error, an invalid key or pattern; 3 the
/// server can't be reached or refused; 4 `doctor` found warnings; 5 `doctor` found failures.
#[derive(Debug, Parser)]
#[command(name = "relock", version)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Options every subcommand takes.
#[derive(Debug, Args)]
pub(crate) struct Global {
    /// The Redis server (`redis://[user:password@]host:port/db`; `rediss://` for TLS).
    #[arg(
        long,
        global = true,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub(crate) url: String,

    /// A Redis Cluster instead of one server: seed nodes, comma-separated
    /// (`redis://10.0.0.1:6379,redis://10.0.0.2:6379`); `list` then scans every master.
    #[arg(long, global = true, env = "REDIS_CLUSTER", value_delimiter = ',')]
    pub(crate) cluster: Vec<String>,

    /// With a `rediss://` URL: trust the CA certificate(s) in this PEM file instead of the
    /// system's (a server whose certificate a private CA signed).
    #[cfg(feature = "tls")]
    #[arg(long, global = true, env = "REDIS_TLS_CA_CERT", value_name = "FILE")]
    pub(crate) tls_ca_cert: Option<std::path::PathBuf>,

    /// With a `rediss://` URL: present this client certificate (PEM), for servers that require
    /// one; needs `--tls-key`.
    #[cfg(feature = "tls")]
    #[arg(
        long,
        global = true,
        env = "REDIS_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub(crate) tls_cert: Option<std::path::PathBuf>,

    /// The private key (PEM) of `--tls-cert`.
    #[cfg(feature = "tls")]
    #[arg(
        long,
        global = true,
        env = "REDIS_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub(crate) tls_key: Option<std::path::PathBuf>,

    /// Redis Sentinel instead of one server: the sentinels, comma-separated
    /// (`redis://10.0.0.1:26379,redis://10.0.0.2:26379`), with `--master-name`.
    #[arg(
        long,
        global = true,
        env = "REDIS_SENTINEL",
        value_delimiter = ',',
        conflicts_with = "cluster",
        requires = "master_name"
    )]
    pub(crate) sentinel: Vec<String>,

    /// The name the sentinels monitor the master under (with `--sentinel`).
    #[arg(long, global = true, env = "REDIS_SENTINEL_MASTER")]
    pub(crate) master_name: Option<String>,

    /// The prefix of relock's Redis keys, as the applications set it (`<prefix>:{<key>}`).
    #[arg(long, global = true, default_value = "relock")]
    pub(crate) prefix: String,

    /// How long connecting, and then each answer, may take before giving up (e.g. `500ms`, `2s`).
    #[arg(long, global = true, default_value = "2s", value_parser = crate::time::parse_duration)]
    pub(crate) timeout: Duration,

    /// Prints JSON, one object per lock, event or check, one per line.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Shows who holds a lock: host, pid, since when, remaining lease, fencing token. Exits 1 when
    /// the lock is free.
    Inspect {
        /// The lock's key, as the application locks it (e.g. `order:42`).
        key: String,
    },
    /// Lists every held lock whose key matches a glob pattern (`*`, `?`, `[a-z]`, `[^a]`, `\`).
    List {
        /// The pattern, quoted against the shell (e.g. 'order:*').
        #[arg(default_value = "*")]
        pattern: String,
    },
    /// Prints a line for each acquisition and release of a lock as it happens, until Ctrl-C.
    Watch {
        /// The lock's key.
        key: String,
        /// Stops after this long (e.g. `30s`, `5m`).
        #[arg(long = "for", value_name = "DURATION", value_parser = crate::time::parse_duration)]
        duration: Option<Duration>,
        /// Stops after this many acquisitions and releases.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        count: Option<u64>,
        /// How often the lock is read: a hold shorter than this may go unseen.
        #[arg(long, default_value = "50ms", value_parser = crate::time::parse_duration)]
        interval: Duration,
    },
    /// Frees a lock whoever holds it; the holder's guard reports the loss. Asks first unless
    /// `--yes`. Exits 1 when the lock was already free or the answer was no.
    Release {
        /// The lock's key.
        key: String,
        /// Releases without asking.
        #[arg(short, long)]
        yes: bool,
    },
    /// Checks the deployment against everything relock assumes (version, eviction, persistence,
    /// replica settings, cluster coverage, ACL permissions, clocks, round trip, pub/sub, the
    /// locks kept, a lock taken and released), one line per check with what to change. Exits 0 when every check
    /// passes, 4 on warnings, 5 on failures.
    Doctor,
}
