//! Refusing a server that may evict keys.
//!
//! With `maxmemory` set and any `maxmemory-policy` but `noeviction`, Redis deletes keys to make
//! room — held locks included, under the `volatile-*` policies too, since every relock key has an
//! expiry. Another owner can then take an evicted lock at once, while its holder learns of the
//! loss only at its next renewal, up to a third of a lease later. So a locker reads each server's
//! settings before the first lock it takes there, and refuses one that may evict unless the
//! builder said [`allow_eviction`](crate::LockerBuilder::allow_eviction).
//!
//! The settings are read with `INFO memory`, which managed services that disable `CONFIG`
//! (where evicting defaults are common) still answer, then with `CONFIG GET maxmemory*`. A server
//! that answers neither (an ACL user without `+info`, the commands renamed away) is used with a
//! warning: refusing it would make relock unusable there, and the setting is most often right.

use std::collections::HashMap;
#[cfg(feature = "sentinel")]
use std::sync::Arc;

use redis::aio::ConnectionLike;
use redis::{Cmd, RedisError, RedisResult, Value};
use tokio::sync::OnceCell;

use super::redis::RedisBackend;
use super::Backend;
use crate::error::Error;

/// A server's memory limit and eviction policy.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Settings {
    /// Bytes; 0 is no limit.
    maxmemory: u64,
    policy: String,
}

impl Settings {
    fn evicts(&self) -> bool {
        self.maxmemory > 0 && self.policy != "noeviction"
    }
}

/// What a server said about its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reading {
    Read(Settings),
    /// Neither command was allowed or known: the servers' answers.
    Unreadable(String),
}

/// The check a locker makes once, before its first lock is granted: of its single server (a
/// direct connection or a pool), or of every master of its cluster. Behind Sentinel, the master
/// connection checks each master it finds instead ([`connect_checked_master`]), as the master
/// changes with failovers.
#[derive(Debug)]
pub(crate) struct EvictionCheck {
    /// How the refusal names a single server: its address, when the locker knows it.
    server: String,
    /// Set once the check passed; a refusal or a failure to ask is not kept, so that the next
    /// lock request asks again (the operator may have fixed the setting meanwhile).
    passed: OnceCell<()>,
}

impl EvictionCheck {
    /// A check of the server (or cluster) named `server` in errors.
    pub(crate) fn new(server: impl Into<String>) -> Self {
        Self {
            server: server.into(),
            passed: OnceCell::new(),
        }
    }

    /// Nothing to check before the first lock: eviction is allowed, the locks live in memory, or
    /// the connection checks each server itself (Sentinel).
    pub(crate) fn skipped() -> Self {
        Self {
            server: String::new(),
            passed: OnceCell::new_with(Some(())),
        }
    }

    /// Checks `backend`'s server(s) unless that was done; one check at a time, the others wait
    /// for its outcome.
    pub(crate) async fn ensure(&self, backend: &Backend) -> Result<(), Error> {
        if self.passed.initialized() {
            return Ok(());
        }
        // Boxed: the check runs once, and its future (a round trip, or one per cluster master)
        // would otherwise enlarge every acquisition's future.
        Box::pin(self.passed.get_or_try_init(|| async {
            match backend {
                Backend::Redis(redis) => redis.check_eviction(&self.server).await,
                #[cfg(feature = "cluster")]
                Backend::Cluster(cluster) => cluster.check_eviction().await,
                Backend::Memory(_) => Ok(()),
            }
        }))
        .await?;
        Ok(())
    }
}

impl RedisBackend {
    /// Refuses the server behind the shared connection if it may evict keys.
    async fn check_eviction(&self, server: &str) -> Result<(), Error> {
        let reading = self
            .send(async |connection| {
                let info = query(connection, info_memory()).await;
                read(info, async |command| query(connection, command).await).await
            })
            .await?;
        judge(server, reading)
    }
}

#[cfg(feature = "cluster")]
impl super::cluster::ClusterBackend {
    /// Refuses the cluster if any of its masters may evict keys, naming the first that does.
    ///
    /// A master that cannot be asked (down, or failing over) is left unchecked with a warning
    /// rather than failing every lock: locks on its slots fail anyway, and the others must not
    /// wait for it.
    async fn check_eviction(&self) -> Result<(), Error> {
        use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};

        let masters = self.masters().await?;
        let connection = self.conn().await?;
        let readings = futures_util::future::join_all(masters.into_iter().map(|(host, port)| {
            let mut connection = connection.clone();
            async move {
                let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port,
                });
                let info = connection.route_command(info_memory(), route.clone()).await;
                let reading = read(info, async |command| {
                    connection.route_command(command, route).await
                })
                .await;
                (format!("{host}:{port}"), reading)
            }
        }))
        .await;
        for (master, reading) in readings {
            match reading {
                Ok(reading) => judge(&master, reading)?,
                Err(err) => tracing::warn!(
                    %master,
                    error = %err,
                    "relock: cannot ask a Redis Cluster master whether it may evict keys; it is \
                     left unchecked"
                ),
            }
        }
        Ok(())
    }
}

/// Connects to the master the sentinels name (see `Sentinels::connect_master`), refusing it if it
/// may evict keys, unless `allowed`: called for each master the command connection finds, so a
/// failover to a master that evicts is refused too.
#[cfg(feature = "sentinel")]
pub(crate) async fn connect_checked_master(
    sentinels: &Arc<super::sentinel::Sentinels>,
    allowed: bool,
) -> Result<super::sentinel::Master, Error> {
    let mut master = sentinels.connect_master().await?;
    if !allowed {
        let connection = &mut master.connection;
        let info = query(connection, info_memory()).await;
        let reading = read(info, async |command| query(connection, command).await).await?;
        judge(&master.addr.to_string(), reading)?;
    }
    Ok(master)
}

fn info_memory() -> Cmd {
    redis::cmd("INFO").arg("memory").clone()
}

async fn query(connection: &mut impl ConnectionLike, command: Cmd) -> RedisResult<Value> {
    command.query_async(connection).await
}

/// Reads a server's settings from its answer to `INFO memory`, else with `CONFIG GET` sent
/// through `send`. A refusal of a command (ACL, unknown command) is an answer; a failure of the
/// connection is the error.
async fn read(
    info: RedisResult<Value>,
    send: impl AsyncFnOnce(Cmd) -> RedisResult<Value>,
) -> RedisResult<Reading> {
    let info_refused = match info {
        Ok(value) => {
            let text: String = redis::from_redis_value(value).map_err(RedisError::from)?;
            match parse_info(&text) {
                Some(settings) => return Ok(Reading::Read(settings)),
                None => "INFO memory has no maxmemory or maxmemory_policy field".to_owned(),
            }
        }
        Err(err) if is_refusal(&err) => err.to_string(),
        Err(err) => return Err(err),
    };
    let config = send(redis::cmd("CONFIG").arg("GET").arg("maxmemory*").clone()).await;
    match config {
        Ok(value) => {
            let fields: HashMap<String, String> =
                redis::from_redis_value(value).map_err(RedisError::from)?;
            Ok(match parse_config(&fields) {
                Some(settings) => Reading::Read(settings),
                None => Reading::Unreadable(format!(
                    "{info_refused}; CONFIG GET answered without maxmemory or maxmemory-policy"
                )),
            })
        }
        Err(err) if is_refusal(&err) => Ok(Reading::Unreadable(format!("{info_refused}; {err}"))),
        Err(err) => Err(err),
    }
}

/// Whether the server refused the command itself (an ACL user without it, a command renamed or
/// disabled), rather than failed.
fn is_refusal(err: &RedisError) -> bool {
    let text = err.to_string();
    err.code() == Some("NOPERM")
        || text.contains("NOPERM")
        || text.contains("unknown command")
        || text.contains("unknown subcommand")
}

/// `maxmemory:<bytes>` and `maxmemory_policy:<policy>` lines of `INFO memory`.
fn parse_info(text: &str) -> Option<Settings> {
    let field = |name: &str| {
        text.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key == name).then(|| value.trim().to_owned())
        })
    };
    Some(Settings {
        maxmemory: field("maxmemory")?.parse().ok()?,
        policy: field("maxmemory_policy")?,
    })
}

/// The `maxmemory` and `maxmemory-policy` of `CONFIG GET maxmemory*`.
fn parse_config(fields: &HashMap<String, String>) -> Option<Settings> {
    Some(Settings {
        maxmemory: fields.get("maxmemory")?.trim().parse().ok()?,
        policy: fields.get("maxmemory-policy")?.trim().to_owned(),
    })
}

/// Refuses `server` if its settings may evict keys; warns, and lets it be used, if they could
/// not be read.
fn judge(server: &str, reading: Reading) -> Result<(), Error> {
    match reading {
        Reading::Read(settings) if settings.evicts() => Err(Error::EvictingServer {
            server: server.to_owned(),
            maxmemory: settings.maxmemory,
            policy: settings.policy,
        }),
        Reading::Read(_) => Ok(()),
        Reading::Unreadable(reason) => {
            tracing::warn!(
                server,
                %reason,
                "relock: cannot read whether the Redis server may evict keys (grant the ACL user \
                 `+info`); a server with `maxmemory` and an evicting `maxmemory-policy` can delete \
                 held locks"
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(maxmemory: u64, policy: &str) -> Settings {
        Settings {
            maxmemory,
            policy: policy.to_owned(),
        }
    }

    #[test]
    fn every_policy_but_noeviction_evicts_under_a_memory_limit() {
        for policy in [
            "allkeys-lru",
            "allkeys-lfu",
            "allkeys-random",
            "volatile-lru",
            "volatile-lfu",
            "volatile-random",
            "volatile-ttl",
        ] {
            assert!(settings(1 << 20, policy).evicts(), "{policy}");
            assert!(!settings(0, policy).evicts(), "{policy} without maxmemory");
        }
        assert!(!settings(1 << 20, "noeviction").evicts());
    }

    #[test]
    fn info_memory_gives_the_limit_and_the_policy() {
        let text = "# Memory\r\nused_memory:1000\r\nmaxmemory:1048576\r\nmaxmemory_human:1.00M\r\n\
                    maxmemory_policy:volatile-lru\r\n";
        assert_eq!(parse_info(text), Some(settings(1048576, "volatile-lru")));
        assert_eq!(parse_info("# Memory\r\nused_memory:1000\r\n"), None);
    }

    #[test]
    fn config_get_gives_the_limit_and_the_policy() {
        let fields: HashMap<String, String> = [
            ("maxmemory", "0"),
            ("maxmemory-policy", "noeviction"),
            ("maxmemory-samples", "5"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(parse_config(&fields), Some(settings(0, "noeviction")));
    }

    #[test]
    fn an_evicting_server_is_refused_naming_the_setting_and_the_fix() {
        let err = judge(
            "10.0.0.1:6379",
            Reading::Read(settings(1 << 20, "allkeys-lru")),
        )
        .unwrap_err();
        let text = err.to_string();
        for part in [
            "10.0.0.1:6379",
            "maxmemory-policy allkeys-lru",
            "`maxmemory-policy noeviction`",
            "allow_eviction()",
        ] {
            assert!(text.contains(part), "{part} missing from: {text}");
        }
        assert!(judge("s", Reading::Read(settings(1 << 20, "noeviction"))).is_ok());
        assert!(judge("s", Reading::Unreadable("NOPERM".into())).is_ok());
    }

    #[tokio::test]
    async fn a_refused_info_falls_back_to_config_get() {
        let refused = || {
            Err(RedisError::from((
                redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm),
                "NOPERM",
                "User relock has no permissions to run the 'info' command".to_owned(),
            )))
        };
        let config = Value::Array(
            ["maxmemory", "5", "maxmemory-policy", "allkeys-lru"]
                .map(|s| Value::BulkString(s.into()))
                .to_vec(),
        );
        let reading = read(refused(), async |_| Ok(config)).await.unwrap();
        assert_eq!(reading, Reading::Read(settings(5, "allkeys-lru")));
        let reading = read(refused(), async |_| refused()).await.unwrap();
        assert!(matches!(reading, Reading::Unreadable(_)), "{reading:?}");
        let dropped = RedisError::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(read(Err(dropped), async |_| refused()).await.is_err());
    }
}
