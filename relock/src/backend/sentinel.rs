//! Redis Sentinel: the master is found through the sentinels, checked with `ROLE`, and found
//! again after a failover.
//!
//! redis-rs's `ConnectionManager` reconnects to a fixed address, so it would stay with a dead (or
//! demoted) master for good. Here the command connection is a plain multiplexed connection to the
//! master the sentinels name; it is dropped when a command on it fails at the connection level
//! (an I/O error, a dropped connection, a response timeout) or with `READONLY` (a demoted master),
//! and the next command resolves the master again.
//!
//! [`Sentinels`] also keeps the master's address as last learned — from a resolution, or from a
//! `+switch-master` announcement on the sentinels' pub/sub, watched by a background task — so that
//! the command connection and the release subscriber leave a master the moment they learn of a
//! newer one, instead of waiting for an error.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSub};
use redis::{AsyncConnectionConfig, ConnectionInfo, IntoConnectionInfo, Role};
use tokio::sync::{oneshot, watch};

use crate::error::Error;

/// The channel on which sentinels announce a new master: `<name> <old ip> <old port> <new ip>
/// <new port>`.
const SWITCH_MASTER: &str = "+switch-master";

/// How long the `+switch-master` watcher waits before trying the next sentinel after a failure.
const WATCH_RETRY: Duration = Duration::from_millis(500);

/// A master's address, as the sentinels name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MasterAddr {
    host: String,
    port: u16,
}

impl fmt::Display for MasterAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// The master the sentinels named, checked to be a master, with a connection to it.
pub(crate) struct Master {
    pub(crate) addr: MasterAddr,
    pub(crate) info: ConnectionInfo,
    pub(crate) connection: MultiplexedConnection,
}

/// The sentinels of one master name, and what they said last.
pub(crate) struct Sentinels {
    nodes: Vec<ConnectionInfo>,
    master_name: String,
    /// `(username, password)` for the master, when they are not the sentinel URL's.
    master_credentials: Option<(String, String)>,
    connect_timeout: Duration,
    response_timeout: Duration,
    /// What `rediss://` connections to the sentinels and the master trust and present.
    tls: crate::tls::TlsSettings,
    /// The master's address as last learned (a resolution that checked its role, or a
    /// `+switch-master`); connections to another address are stale.
    master: watch::Sender<Option<MasterAddr>>,
    /// Counts the changes of `master`: a resolution that started before a newer master was
    /// learned (announced by `+switch-master`, or found by another resolution) must not put back
    /// the one it found.
    learned_changes: AtomicU64,
    watching: AtomicBool,
    /// Dropped with `self`, which stops the `+switch-master` watcher.
    stop: Mutex<Option<oneshot::Receiver<()>>>,
    _stop: oneshot::Sender<()>,
}

impl fmt::Debug for Sentinels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sentinels")
            .field("sentinels", &self.addresses())
            .field("master_name", &self.master_name)
            .field("master", &*self.master.borrow())
            .finish_non_exhaustive()
    }
}

impl Sentinels {
    /// Parses the sentinel URLs. The master is reached with the username, password and database
    /// of the URL of the sentinel that named it, unless `master_credentials` are given.
    pub(crate) fn new(
        urls: &[String],
        master_name: String,
        master_credentials: Option<(String, String)>,
        connect_timeout: Duration,
        response_timeout: Duration,
        tls: crate::tls::TlsSettings,
    ) -> Result<Self, Error> {
        if urls.is_empty() {
            return Err(Error::backend("no sentinel URLs given"));
        }
        if master_name.is_empty() {
            return Err(Error::backend("the sentinel master name is empty"));
        }
        let nodes = urls
            .iter()
            .map(|url| {
                url.as_str().into_connection_info().map_err(|err| {
                    Error::backend(format!("invalid sentinel URL `{}`: {err}", redact(url)))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (stop_tx, stop_rx) = oneshot::channel();
        Ok(Self {
            nodes,
            master_name,
            master_credentials,
            connect_timeout,
            response_timeout,
            tls,
            master: watch::channel(None).0,
            learned_changes: AtomicU64::new(0),
            watching: AtomicBool::new(false),
            stop: Mutex::new(Some(stop_rx)),
            _stop: stop_tx,
        })
    }

    /// The master's address as last learned, if any.
    pub(crate) fn known_master(&self) -> Option<MasterAddr> {
        self.master.borrow().clone()
    }

    /// Changes whenever a newer master address is learned.
    pub(crate) fn master_changes(&self) -> watch::Receiver<Option<MasterAddr>> {
        self.master.subscribe()
    }

    /// Asks every sentinel at once which master it knows and under which configuration epoch,
    /// then connects to the masters named under the highest epoch first and checks with `ROLE`
    /// that it is a master: a sentinel that has not yet seen a failover names the old master
    /// under an older epoch, and the old master may still answer `ROLE` as one until the
    /// sentinels demote it. Every step is bounded by the connect or response timeout.
    pub(crate) async fn connect_master(self: &Arc<Self>) -> Result<Master, Error> {
        self.watch_switches();
        let started = self.learned_changes.load(Ordering::Acquire);
        let answers = futures_util::future::join_all(
            self.nodes
                .iter()
                .map(|node| async move { (node, self.named_by(node).await) }),
        )
        .await;
        let mut failures = Vec::with_capacity(self.nodes.len());
        let mut named: Vec<(u64, MasterAddr, &ConnectionInfo)> = Vec::new();
        for (node, answer) in answers {
            match answer {
                Ok((epoch, addr)) => named.push((epoch, addr, node)),
                Err(reason) => failures.push(format!("{}: {reason}", node.addr())),
            }
        }
        // Highest epoch first; among equals, in the order the sentinels were given.
        named.sort_by_key(|named| std::cmp::Reverse(named.0));
        let mut tried: Vec<MasterAddr> = Vec::new();
        for (epoch, addr, node) in named {
            if tried.contains(&addr) {
                continue;
            }
            tried.push(addr.clone());
            match self.checked_master(node, addr).await {
                Ok(master) => {
                    if self.learned_unless_moved(&master.addr, started) {
                        return Ok(master);
                    }
                    failures.push(format!(
                        "{}: named {} (epoch {epoch}), but a newer master was announced meanwhile",
                        node.addr(),
                        master.addr
                    ));
                    break;
                }
                Err(reason) => failures.push(format!("{}: {reason}", node.addr())),
            }
        }
        Err(Error::backend(format!(
            "no sentinel named a reachable master for `{}` (tried {})",
            self.master_name,
            failures.join("; ")
        )))
    }

    /// A pub/sub connection to the master, for release notifications.
    pub(crate) async fn connect_pubsub(self: &Arc<Self>) -> Result<(MasterAddr, PubSub), Error> {
        let master = self.connect_master().await?;
        let client = self.tls.node_client(master.info)?;
        match tokio::time::timeout(self.connect_timeout, client.get_async_pubsub()).await {
            Ok(pubsub) => Ok((master.addr, pubsub?)),
            Err(_) => Err(Error::backend(format!(
                "the master of `{}` at {} did not accept a connection within {:?}",
                self.master_name, master.addr, self.connect_timeout
            ))),
        }
    }

    fn config(&self) -> AsyncConnectionConfig {
        AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.response_timeout))
    }

    /// `SENTINEL MASTER <name>` on the sentinel `node`: the master's address and the
    /// configuration epoch it was named under.
    async fn named_by(&self, node: &ConnectionInfo) -> Result<(u64, MasterAddr), String> {
        let sentinel = self
            .tls
            .node_client(sentinel_info(node))
            .map_err(|err| err.to_string())?;
        let mut connection = sentinel
            .get_multiplexed_async_connection_with_config(&self.config())
            .await
            .map_err(|err| err.to_string())?;
        let reply: redis::Value = redis::cmd("SENTINEL")
            .arg("MASTER")
            .arg(&self.master_name)
            .query_async(&mut connection)
            .await
            .map_err(|err| {
                if err.to_string().contains("No such master") {
                    format!("does not know a master named `{}`", self.master_name)
                } else {
                    err.to_string()
                }
            })?;
        let fields = master_fields(&reply);
        let field = |name: &str| {
            fields
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.as_str())
        };
        let (Some(host), Some(port)) = (field("ip"), field("port").and_then(|p| p.parse().ok()))
        else {
            return Err(format!(
                "answered SENTINEL MASTER without an address: {reply:?}"
            ));
        };
        let epoch = field("config-epoch")
            .and_then(|epoch| epoch.parse().ok())
            .unwrap_or(0);
        Ok((
            epoch,
            MasterAddr {
                host: host.to_owned(),
                port,
            },
        ))
    }

    /// Connects to `addr`, named by the sentinel `node`, and checks with `ROLE` that it is a
    /// master.
    async fn checked_master(
        &self,
        node: &ConnectionInfo,
        addr: MasterAddr,
    ) -> Result<Master, String> {
        let info = self.master_info(node, &addr);
        let client = self
            .tls
            .node_client(info.clone())
            .map_err(|err| err.to_string())?;
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&self.config())
            .await
            .map_err(|err| format!("names {addr}, which cannot be reached: {err}"))?;
        let role: Role = redis::cmd("ROLE")
            .query_async(&mut connection)
            .await
            .map_err(|err| format!("names {addr}, whose ROLE failed: {err}"))?;
        match role {
            Role::Primary { .. } => Ok(Master {
                addr,
                info,
                connection,
            }),
            _ => Err(format!("names {addr}, which is not a master (yet)")),
        }
    }

    /// How the master at `addr` is reached: like the sentinel `node` that named it (the same
    /// scheme, so a TLS setting carries over), with its credentials and database unless
    /// separate master credentials were given.
    fn master_info(&self, node: &ConnectionInfo, addr: &MasterAddr) -> ConnectionInfo {
        let mut redis = node.redis_settings().clone();
        if let Some((username, password)) = &self.master_credentials {
            redis = redis.set_username(username).set_password(password);
        }
        crate::tls::TlsSettings::at_address(node, addr.host.clone(), addr.port)
            .set_redis_settings(redis)
    }

    /// Records a newer master address (announced by `+switch-master`), waking the connections
    /// that follow it.
    fn learned(&self, addr: &MasterAddr) {
        self.master.send_if_modified(|known| {
            if known.as_ref() == Some(addr) {
                return false;
            }
            tracing::info!(master = %addr, name = %self.master_name, "relock: sentinel master");
            *known = Some(addr.clone());
            self.learned_changes.fetch_add(1, Ordering::AcqRel);
            true
        });
    }

    /// Records the master a resolution that started at change `started` found, unless another
    /// master was learned since (a `+switch-master`, or another resolution): then the one found
    /// may be the old master, still answering `ROLE` as one, and is not used.
    fn learned_unless_moved(&self, addr: &MasterAddr, started: u64) -> bool {
        let mut accepted = true;
        self.master.send_if_modified(|known| {
            if known.as_ref() == Some(addr) {
                return false;
            }
            if self.learned_changes.load(Ordering::Acquire) != started {
                accepted = false;
                return false;
            }
            tracing::info!(master = %addr, name = %self.master_name, "relock: sentinel master");
            *known = Some(addr.clone());
            self.learned_changes.fetch_add(1, Ordering::AcqRel);
            true
        });
        accepted
    }

    /// Starts, once, the task that listens for `+switch-master` on the sentinels.
    fn watch_switches(self: &Arc<Self>) {
        if self.watching.swap(true, Ordering::AcqRel) {
            return;
        }
        let stop = self.stop.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(stop) = stop {
            tokio::spawn(watch_switches(Arc::downgrade(self), stop));
        }
    }

    fn addresses(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|node| node.addr().to_string())
            .collect()
    }

    /// Subscribes to `+switch-master` on the sentinel `node`.
    async fn switch_feed(&self, node: &ConnectionInfo) -> Result<PubSub, String> {
        let client = self
            .tls
            .node_client(sentinel_info(node))
            .map_err(|err| err.to_string())?;
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(SWITCH_MASTER).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match tokio::time::timeout(self.connect_timeout + self.response_timeout, subscribed).await {
            Ok(pubsub) => pubsub.map_err(|err| err.to_string()),
            Err(_) => Err("timed out".to_owned()),
        }
    }

    /// Handles one `+switch-master` announcement.
    fn switched(&self, payload: &str) {
        let mut fields = payload.split(' ');
        if fields.next() != Some(self.master_name.as_str()) {
            return;
        }
        let (Some(host), Some(port)) = (fields.nth(2), fields.next().and_then(|p| p.parse().ok()))
        else {
            return;
        };
        tracing::info!(name = %self.master_name, "relock: the sentinels announced a new master");
        self.learned(&MasterAddr {
            host: host.to_owned(),
            port,
        });
    }
}

/// Listens for `+switch-master` on one sentinel at a time, moving to the next when it fails,
/// until `stop` (the [`Sentinels`] are dropped).
async fn watch_switches(sentinels: Weak<Sentinels>, mut stop: oneshot::Receiver<()>) {
    let mut next = 0;
    loop {
        let (feed, node) = {
            let Some(sentinels) = sentinels.upgrade() else {
                return;
            };
            let node = sentinels.nodes[next % sentinels.nodes.len()].clone();
            next += 1;
            let feed = tokio::select! {
                feed = sentinels.switch_feed(&node) => feed,
                _ = &mut stop => return,
            };
            (feed, node)
        };
        match feed {
            Ok(pubsub) => {
                let mut messages = pubsub.into_on_message();
                loop {
                    let message = tokio::select! {
                        message = messages.next() => message,
                        _ = &mut stop => return,
                    };
                    let Some(message) = message else { break };
                    let Some(sentinels) = sentinels.upgrade() else {
                        return;
                    };
                    if let Ok(payload) = message.get_payload::<String>() {
                        sentinels.switched(&payload);
                    }
                }
                tracing::debug!(sentinel = %node.addr(), "relock: lost the sentinel's +switch-master feed");
            }
            Err(reason) => {
                tracing::debug!(sentinel = %node.addr(), reason, "relock: cannot watch the sentinel for +switch-master");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(WATCH_RETRY) => {}
            _ = &mut stop => return,
        }
    }
}

/// The field-value pairs of a `SENTINEL MASTER` reply (an array of pairs in RESP2, a map in
/// RESP3).
fn master_fields(reply: &redis::Value) -> Vec<(String, String)> {
    let text = |value: &redis::Value| match value {
        redis::Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        redis::Value::SimpleString(text) => Some(text.clone()),
        redis::Value::Int(number) => Some(number.to_string()),
        _ => None,
    };
    match reply {
        redis::Value::Array(items) => items
            .chunks(2)
            .filter_map(|pair| Some((text(pair.first()?)?, text(pair.get(1)?)?)))
            .collect(),
        redis::Value::Map(pairs) => pairs
            .iter()
            .filter_map(|(key, value)| Some((text(key)?, text(value)?)))
            .collect(),
        _ => Vec::new(),
    }
}

/// A sentinel has no databases: its URL's database is the master's, not its own.
fn sentinel_info(node: &ConnectionInfo) -> ConnectionInfo {
    let redis = node.redis_settings().clone().set_db(0);
    node.clone().set_redis_settings(redis)
}

/// `url` without its password, for error messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// The command connection of a sentinel-backed locker: one multiplexed connection to the
/// current master, shared by every task, dropped on a connection-level failure or `READONLY`,
/// and opened again — through the sentinels — by the next command.
pub(crate) struct MasterConnection {
    sentinels: Arc<Sentinels>,
    current: Mutex<Option<Current>>,
    /// One resolution at a time. Holds the failure of the last one, handed to the requests that
    /// queued behind it rather than resolving again one after the other.
    resolving: tokio::sync::Mutex<Option<String>>,
    resolutions: AtomicU64,
    /// Whether a master that may evict keys is used (see `eviction`).
    allow_eviction: bool,
}

#[derive(Clone)]
struct Current {
    /// Which resolution opened it, so that a failure reported late does not drop a newer one.
    id: u64,
    addr: MasterAddr,
    connection: MultiplexedConnection,
}

impl Current {
    /// Whether this connection goes to `known`, the master as last learned (any, before one is).
    fn follows(&self, known: Option<&MasterAddr>) -> bool {
        known.is_none_or(|known| *known == self.addr)
    }
}

impl fmt::Debug for MasterConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterConnection")
            .field("sentinels", &self.sentinels)
            .finish_non_exhaustive()
    }
}

impl MasterConnection {
    pub(crate) fn new(sentinels: Arc<Sentinels>, allow_eviction: bool) -> Self {
        Self {
            sentinels,
            current: Mutex::new(None),
            resolving: tokio::sync::Mutex::new(None),
            resolutions: AtomicU64::new(0),
            allow_eviction,
        }
    }

    /// The sentinels this connection follows.
    pub(crate) fn sentinels(&self) -> &Arc<Sentinels> {
        &self.sentinels
    }

    /// The connection to the current master, and its id for [`failed`](Self::failed).
    pub(crate) async fn get(&self) -> Result<(u64, MultiplexedConnection), Error> {
        if let Some(current) = self.fresh() {
            return Ok(current);
        }
        let seen = self.resolutions.load(Ordering::Acquire);
        let mut last_failure = self.resolving.lock().await;
        if let Some(current) = self.fresh() {
            return Ok(current);
        }
        if self.resolutions.load(Ordering::Acquire) != seen {
            if let Some(reason) = &*last_failure {
                return Err(Error::backend(reason.clone()));
            }
        }
        // Boxed: resolving is rare, and its future (connections to each sentinel and the master)
        // would otherwise enlarge every command's future, even on other backends.
        let resolved = Box::pin(super::eviction::connect_checked_master(
            &self.sentinels,
            self.allow_eviction,
        ))
        .await;
        let id = self.resolutions.fetch_add(1, Ordering::AcqRel) + 1;
        match resolved {
            Ok(master) => {
                *last_failure = None;
                let connection = master.connection.clone();
                *lock(&self.current) = Some(Current {
                    id,
                    addr: master.addr,
                    connection: master.connection,
                });
                Ok((id, connection))
            }
            Err(err) => {
                *last_failure = Some(backend_message(&err));
                Err(err)
            }
        }
    }

    /// The current connection, unless the master has moved since it was opened.
    fn fresh(&self) -> Option<(u64, MultiplexedConnection)> {
        let known = self.sentinels.known_master();
        let mut current = lock(&self.current);
        let stale = current
            .as_ref()
            .is_some_and(|current| !current.follows(known.as_ref()));
        if stale {
            let old = current.take().map(|current| current.addr);
            tracing::debug!(from = ?old, to = ?known, "relock: the sentinel master moved; reconnecting");
            return None;
        }
        current
            .as_ref()
            .map(|current| (current.id, current.connection.clone()))
    }

    /// Whether connection `id` is still the one to the master as last learned: a reply read on a
    /// connection to a master that has been replaced since may have been granted or renewed on
    /// the old master only, so its outcome is unknown.
    pub(crate) fn answered_by_current(&self, id: u64) -> bool {
        let known = self.sentinels.known_master();
        let current = lock(&self.current);
        current
            .as_ref()
            .is_some_and(|current| current.id == id && current.follows(known.as_ref()))
    }

    /// Drops connection `id` after `err`, if the error says it is no longer a usable master.
    pub(crate) fn failed(&self, id: u64, err: &redis::RedisError) {
        if !(err.is_io_error()
            || err.is_connection_dropped()
            || err.is_timeout()
            || err.is_unrecoverable_error()
            || is_readonly(err)
            || is_noreplicas(err))
        {
            return;
        }
        let mut current = lock(&self.current);
        if current.as_ref().is_some_and(|current| current.id == id) {
            tracing::debug!(error = %err, "relock: dropping the connection to the sentinel master");
            *current = None;
        }
    }
}

/// `READONLY`: the node is a replica now, directly or from inside a script.
fn is_readonly(err: &redis::RedisError) -> bool {
    err.code() == Some("READONLY") || err.to_string().contains("READONLY")
}

/// `NOREPLICAS`: a master cut off from its replicas (`min-replicas-to-write`), which the
/// sentinels may have replaced.
fn is_noreplicas(err: &redis::RedisError) -> bool {
    err.code() == Some("NOREPLICAS") || err.to_string().contains("NOREPLICAS")
}

/// The message inside an `Error::Backend`, whose own Display is generic.
fn backend_message(err: &Error) -> String {
    match err {
        Error::Backend(backend) => backend.to_string(),
        other => other.to_string(),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sentinels(urls: &[&str], credentials: Option<(&str, &str)>) -> Sentinels {
        Sentinels::new(
            &urls.iter().map(|url| url.to_string()).collect::<Vec<_>>(),
            "mymaster".to_owned(),
            credentials.map(|(user, pass)| (user.to_owned(), pass.to_owned())),
            Duration::from_secs(1),
            Duration::from_secs(1),
            Default::default(),
        )
        .unwrap()
    }

    fn addr(host: &str, port: u16) -> MasterAddr {
        MasterAddr {
            host: host.to_owned(),
            port,
        }
    }

    #[test]
    fn the_master_takes_the_sentinel_urls_credentials_and_database() {
        let sentinels = sentinels(&["redis://app:secret@10.0.0.1:26379/3"], None);
        let info = sentinels.master_info(&sentinels.nodes[0], &addr("10.0.0.9", 6380));
        assert_eq!(info.addr().to_string(), "10.0.0.9:6380");
        assert_eq!(info.redis_settings().username(), Some("app"));
        assert_eq!(info.redis_settings().password(), Some("secret"));
        assert_eq!(info.redis_settings().db(), 3);
        assert_eq!(sentinel_info(&sentinels.nodes[0]).redis_settings().db(), 0);
    }

    #[test]
    fn separate_master_credentials_win() {
        let sentinels = sentinels(
            &["redis://sentinel:s3@10.0.0.1:26379"],
            Some(("locks", "m4")),
        );
        let info = sentinels.master_info(&sentinels.nodes[0], &addr("10.0.0.9", 6380));
        assert_eq!(info.redis_settings().username(), Some("locks"));
        assert_eq!(info.redis_settings().password(), Some("m4"));
    }

    #[test]
    fn a_switch_of_this_master_is_learned_and_others_are_ignored() {
        let sentinels = sentinels(&["redis://10.0.0.1:26379"], None);
        sentinels.switched("othermaster 10.0.0.2 6379 10.0.0.3 6379");
        assert_eq!(sentinels.known_master(), None);
        sentinels.switched("mymaster 10.0.0.2 6379 10.0.0.3 6380");
        assert_eq!(sentinels.known_master(), Some(addr("10.0.0.3", 6380)));
    }

    #[test]
    fn invalid_input_is_a_backend_error_without_the_password() {
        let no_urls = Sentinels::new(
            &[],
            "m".into(),
            None,
            Duration::ZERO,
            Duration::ZERO,
            Default::default(),
        );
        assert!(no_urls.unwrap_err().is_backend());
        let err = Sentinels::new(
            &["nope://user:hunter2@host".to_owned()],
            "m".into(),
            None,
            Duration::ZERO,
            Duration::ZERO,
            Default::default(),
        )
        .unwrap_err();
        let Error::Backend(err) = err else {
            panic!("{err:?}")
        };
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn readonly_errors_are_recognised() {
        let err = redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly),
            "You can't write against a read only replica.",
        ));
        assert!(is_readonly(&err));
    }
}
