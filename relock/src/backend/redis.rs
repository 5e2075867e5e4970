//! The Redis backend: the Lua scripts over a multiplexed connection or a user's bb8 pool.

use std::error::Error as _;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bb8_redis::RedisConnectionManager;
use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::RedisFuture;
use redis::{ScriptInvocation, Value};

use super::batch::Batcher;
use super::{Attempt, Grant, Released, Replicas};
use crate::error::Error;
use crate::info::LockInfo;
use crate::key::LockKey;
use crate::lease::Lease;
use crate::pattern::KeyPattern;
use crate::protocol::{self, Kind, Request};
use crate::scripts;
use crate::token::HoldToken;

/// How commands reach the server.
pub(crate) enum Connection {
    /// One multiplexed connection shared by every task, reconnecting on failure.
    Multiplexed(ConnectionManager),
    /// A pool the application already has. bb8-redis pools hold multiplexed connections, so one
    /// checked out is shared by every task (a clone shares the socket), and a fresh one is checked
    /// out after it fails: a checkout per command would pay the pool's `PING` each time and queue
    /// tasks behind its size.
    Pool {
        pool: bb8::Pool<RedisConnectionManager>,
        shared: Mutex<Option<MultiplexedConnection>>,
    },
    /// The master the sentinels name, found again after a failover.
    #[cfg(feature = "sentinel")]
    Sentinel(Box<super::sentinel::MasterConnection>),
}

impl Connection {
    pub(crate) fn pool(pool: bb8::Pool<RedisConnectionManager>) -> Self {
        Self::Pool {
            pool,
            shared: Mutex::new(None),
        }
    }

    /// The connection for the next command.
    async fn conn(&self) -> Result<Conn, Error> {
        match self {
            Connection::Multiplexed(manager) => Ok(Conn::Manager(manager.clone())),
            Connection::Pool { pool, shared } => {
                if let Some(connection) = lock(shared).clone() {
                    return Ok(Conn::Direct(connection, 0));
                }
                let checked_out: MultiplexedConnection = (*pool.get().await?).clone();
                *lock(shared) = Some(checked_out.clone());
                Ok(Conn::Direct(checked_out, 0))
            }
            #[cfg(feature = "sentinel")]
            Connection::Sentinel(master) => {
                let (id, connection) = master.get().await?;
                Ok(Conn::Direct(connection, id))
            }
        }
    }

    /// Sends `command` on the shared connection; a connection-level failure makes the next
    /// command check out a fresh connection from the pool, or resolve the sentinel master again
    /// (as does `READONLY`: a demoted master); the manager reconnects by itself.
    pub(super) async fn send<T>(
        &self,
        command: impl AsyncFnOnce(&mut Conn) -> redis::RedisResult<T>,
    ) -> Result<T, Failure> {
        let mut connection = self.conn().await.map_err(Failure::Connect)?;
        let result = command(&mut connection).await;
        if let Err(err) = &result {
            match (self, &connection) {
                (Connection::Pool { shared, .. }, _)
                    if err.is_io_error() || err.is_connection_dropped() || err.is_timeout() =>
                {
                    lock(shared).take();
                }
                #[cfg(feature = "sentinel")]
                (Connection::Sentinel(master), Conn::Direct(_, id)) => master.failed(*id, err),
                _ => {}
            }
        }
        #[cfg(feature = "sentinel")]
        if let (Ok(_), Connection::Sentinel(master), Conn::Direct(_, id)) =
            (&result, self, &connection)
        {
            if !master.answered_by_current(*id) {
                // Granted, renewed or released on a master the sentinels have replaced: not on
                // the new one. The caller treats it as an unknown outcome (an acquisition is
                // released in the background, a renewal is retried, a release too).
                return Err(Failure::Replaced);
            }
        }
        result.map_err(Failure::Redis)
    }
}

/// Why a command sent on the shared connection failed.
#[derive(Debug)]
pub(super) enum Failure {
    /// No connection could be had (a pool checkout, or the sentinels' master).
    Connect(Error),
    /// The server, or the connection to it, failed.
    Redis(redis::RedisError),
    /// Behind Sentinel, answered by a master that has been replaced meanwhile.
    Replaced,
    /// The server answered something relock did not expect.
    Unexpected(String),
}

impl Failure {
    /// The error for one of several requests that one failed call carried.
    pub(super) fn to_error(&self) -> Error {
        match self {
            Self::Connect(err) => match err.source() {
                Some(source) => Error::backend(source.to_string()),
                None => Error::backend(err.to_string()),
            },
            Self::Redis(err) => err.clone().into(),
            Self::Replaced => Self::Replaced.into(),
            Self::Unexpected(message) => Error::backend(message.clone()),
        }
    }
}

impl From<Failure> for Error {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Connect(err) => err,
            Failure::Redis(err) => err.into(),
            // Granted, renewed or released on a master the sentinels have replaced: not on the
            // new one. The caller treats it as an unknown outcome (an acquisition is released
            // in the background, a renewal is retried, a release too).
            Failure::Replaced => Error::backend(
                "the sentinel master changed while the command was in flight; its outcome is unknown",
            ),
            Failure::Unexpected(message) => Error::backend(message),
        }
    }
}

/// The connection one command is sent on.
pub(super) enum Conn {
    Manager(ConnectionManager),
    /// Checked out of a pool, or opened to the master the sentinels named (with the id of that
    /// connection, to drop it if it fails).
    Direct(
        MultiplexedConnection,
        #[cfg_attr(not(feature = "sentinel"), allow(dead_code))] u64,
    ),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Manager(connection) => connection.req_packed_command(cmd),
            Self::Direct(connection, _) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Manager(connection) => connection.req_packed_commands(cmd, offset, count),
            Self::Direct(connection, _) => connection.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Manager(connection) => connection.get_db(),
            Self::Direct(connection, _) => connection.get_db(),
        }
    }
}

pub(crate) struct RedisBackend {
    connection: Arc<Connection>,
    /// Acquisitions and releases queued while script calls are in flight (group commit).
    batcher: Arc<Batcher<Connection>>,
    prefix: String,
    retention: Duration,
    dedicated: Dedicated,
}

/// Idle dedicated connections kept for the next acquisition that waits for replicas.
const MAX_IDLE_DEDICATED: usize = 16;

/// Connections of their own for the acquisitions that wait for replicas: `WAIT` blocks the
/// connection it is sent on, so every command sent on the shared connection would queue behind
/// it. Each is used by one acquisition at a time, and kept for the next.
pub(crate) struct Dedicated {
    /// Opens them; without it (a pool and no URL), they are checked out of the pool.
    client: Option<redis::Client>,
    /// With the address of the master each was opened to, behind Sentinel (where the master
    /// moves: a connection to an older master is not used again).
    idle: Mutex<Vec<(Option<String>, MultiplexedConnection)>>,
    connect_timeout: Duration,
    response_timeout: Duration,
}

impl Dedicated {
    pub(crate) fn new(
        client: Option<redis::Client>,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Self {
        Self {
            client,
            idle: Mutex::new(Vec::new()),
            connect_timeout,
            response_timeout,
        }
    }
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let connection = match *self.connection {
            Connection::Multiplexed(_) => "multiplexed",
            Connection::Pool { .. } => "bb8 pool",
            #[cfg(feature = "sentinel")]
            Connection::Sentinel(_) => "sentinel",
        };
        f.debug_struct("RedisBackend")
            .field("connection", &connection)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl RedisBackend {
    pub(crate) fn new(
        connection: Connection,
        prefix: String,
        retention: Duration,
        dedicated: Dedicated,
    ) -> Self {
        Self {
            connection: Arc::new(connection),
            batcher: Arc::new(Batcher::new(protocol::millis(retention))),
            prefix,
            retention,
            dedicated,
        }
    }

    /// `P:{K}`: the lock.
    pub(crate) fn lock_key(&self, key: &LockKey) -> String {
        protocol::lock_key(&self.prefix, key)
    }

    /// Sends `command` on the shared connection (see [`Connection::send`]).
    pub(super) async fn send<T>(
        &self,
        command: impl AsyncFnOnce(&mut Conn) -> redis::RedisResult<T>,
    ) -> Result<T, Error> {
        Ok(self.connection.send(command).await?)
    }

    async fn invoke(&self, invocation: &ScriptInvocation<'_>) -> Result<Value, Error> {
        self.send(async |connection| invocation.invoke_async(connection).await)
            .await
    }

    /// Checks that the server answers; `Locker::connect` calls this so that a wrong URL fails there.
    pub(crate) async fn ping(&self) -> Result<(), Error> {
        self.send(async |connection| redis::cmd("PING").query_async::<()>(connection).await)
            .await
    }

    pub(crate) async fn acquire(
        &self,
        key: &LockKey,
        token: &HoldToken,
        lease: Duration,
        claim: bool,
    ) -> Result<Attempt, Error> {
        let request = Request {
            kind: Kind::Acquire {
                lease_ms: protocol::millis(lease),
                retention_ms: protocol::millis(self.retention.max(lease)),
                claim,
            },
            lock: self.lock_key(key),
            token: token.clone(),
        };
        protocol::attempt_answer(
            "acquire",
            self.batcher.submit(&self.connection, request).await?,
        )
    }

    /// A shared hold (see `acquire_shared.lua`): a reader (`permits` 0) or one of `permits`
    /// permits, through the group commit with the exclusive acquisitions and the releases.
    pub(crate) async fn acquire_shared(
        &self,
        key: &LockKey,
        token: &HoldToken,
        lease: Duration,
        permits: u32,
    ) -> Result<Attempt, Error> {
        let request = Request {
            kind: Kind::AcquireShared {
                lease_ms: protocol::millis(lease),
                retention_ms: protocol::millis(self.retention.max(lease)),
                permits,
            },
            lock: self.lock_key(key),
            token: token.clone(),
        };
        protocol::attempt_answer(
            "acquire_shared",
            self.batcher.submit(&self.connection, request).await?,
        )
    }

    /// The acquire script (exclusive or shared, as `grant` says) and `WAIT` in one pipeline on a
    /// dedicated connection, so that the replicas' acknowledgement counts this grant's write and
    /// nothing queues behind the wait.
    pub(crate) async fn acquire_acknowledged(
        &self,
        key: &LockKey,
        token: &HoldToken,
        lease: Duration,
        replicas: Replicas,
        grant: Grant,
    ) -> Result<(Attempt, u32), Error> {
        let invocation = grant.invocation(&self.prefix, key, token, lease, self.retention);
        let pipe = protocol::acknowledged_pipeline(&invocation, replicas, false);
        let limit = self
            .dedicated
            .response_timeout
            .saturating_add(replicas.timeout);
        let current = self.current_master();
        let idle = {
            let mut idle = lock(&self.dedicated.idle);
            idle.retain(|(master, _)| *master == current);
            idle.pop()
        };
        let (master, mut connection) = match idle {
            Some(idle) => idle,
            None => self.open_dedicated().await?,
        };
        let sent =
            protocol::send_acknowledged(&mut connection, &invocation, &pipe, false, limit).await;
        if sent.is_ok() && master.is_some() && self.current_master() != master {
            // Behind Sentinel, answered by a master that has been replaced meanwhile.
            return Err(Error::backend(
                "the sentinel master changed while the acquisition was in flight; its outcome is unknown",
            ));
        }
        match sent {
            Ok(replies) => {
                let mut idle = lock(&self.dedicated.idle);
                if idle.len() < MAX_IDLE_DEDICATED {
                    idle.push((master, connection));
                }
                drop(idle);
                protocol::parse_acknowledged(replies)
            }
            Err(err) => {
                // The connection may have a reply outstanding, and after a restart the idle ones
                // are dead too: none is used again.
                lock(&self.dedicated.idle).clear();
                Err(err)
            }
        }
    }

    /// Behind Sentinel, the master's address as last learned.
    fn current_master(&self) -> Option<String> {
        match &*self.connection {
            #[cfg(feature = "sentinel")]
            Connection::Sentinel(master) => master
                .sentinels()
                .known_master()
                .map(|addr| addr.to_string()),
            _ => None,
        }
    }

    /// A new connection for acquisitions that wait for replicas: opened from the URL, or (a pool
    /// and no URL) a dedicated connection of the pool's manager, outside the pool, so that no
    /// other command — the application's, or relock's own — is sent on it.
    async fn open_dedicated(&self) -> Result<(Option<String>, MultiplexedConnection), Error> {
        let dedicated = &self.dedicated;
        let opening = async {
            match (&dedicated.client, &*self.connection) {
                (Some(client), _) => {
                    let config = redis::AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(dedicated.connect_timeout))
                        .set_response_timeout(None);
                    Ok((
                        None,
                        client
                            .get_multiplexed_async_connection_with_config(&config)
                            .await?,
                    ))
                }
                (None, Connection::Pool { pool, .. }) => {
                    let mut connection = pool.dedicated_connection().await?;
                    // Bounded by the caller instead: the pool's default would cut `WAIT` short.
                    connection.set_response_timeout(Duration::from_secs(24 * 3600));
                    Ok((None, connection))
                }
                #[cfg(feature = "sentinel")]
                (None, Connection::Sentinel(master)) => {
                    // A connection of its own to the master the sentinels name now (its role
                    // checked), not the shared one.
                    let mut found = master.sentinels().connect_master().await?;
                    found
                        .connection
                        .set_response_timeout(Duration::from_secs(24 * 3600));
                    Ok((Some(found.addr.to_string()), found.connection))
                }
                (None, Connection::Multiplexed(_)) => {
                    Err(Error::backend("no connection for replica acknowledgements"))
                }
            }
        };
        #[cfg(feature = "sentinel")]
        if matches!(*self.connection, Connection::Sentinel(_)) {
            // Each step through the sentinels is bounded on its own.
            return opening.await;
        }
        tokio::time::timeout(dedicated.connect_timeout, opening)
            .await
            .map_err(|_| {
                Error::backend(format!(
                    "the server did not accept a connection within {:?}",
                    dedicated.connect_timeout
                ))
            })?
    }

    pub(crate) async fn release(
        &self,
        key: &LockKey,
        token: &HoldToken,
        fencing_token: u64,
    ) -> Result<Released, Error> {
        let request = Request {
            kind: Kind::Release { fencing_token },
            lock: self.lock_key(key),
            token: token.clone(),
        };
        match self.batcher.submit(&self.connection, request).await? {
            (1, _) => Ok(Released::Free),
            (0, _) => Ok(Released::NotHeld),
            (2, _) => Ok(Released::Again),
            (status, value) => Err(protocol::unexpected(
                "release",
                &Value::Array(vec![Value::Int(status), value]),
            )),
        }
    }

    pub(crate) async fn renew(&self, renewals: &[Arc<Lease>]) -> Result<Vec<bool>, Error> {
        let mut pipe = redis::pipe();
        for renewal in renewals {
            pipe.invoke_script(&protocol::renew_invocation(
                &self.prefix,
                renewal,
                self.retention,
            ));
        }
        let replies: Vec<i64> = self.query_scripts(&pipe, &scripts::RENEW).await?;
        if replies.len() != renewals.len() {
            return Err(Error::backend(format!(
                "renewal pipeline answered {} of {} holds",
                replies.len(),
                renewals.len()
            )));
        }
        Ok(replies.into_iter().map(|renewed| renewed == 1).collect())
    }

    /// Sends a pipeline of `script` invocations; if the server lost its script cache (a restart,
    /// `SCRIPT FLUSH`), loads the script and sends it again.
    async fn query_scripts<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
        script: &redis::Script,
    ) -> Result<T, Error> {
        let query = async |connection: &mut Conn| pipe.query_async::<T>(connection).await;
        match self.send(query).await {
            Err(Error::Backend(err)) if is_noscript(&err) => {
                self.send(async |connection| script.load_async(connection).await)
                    .await?;
                self.send(query).await
            }
            replies => replies,
        }
    }

    /// One `SCAN` step over the locks whose keys match `pattern`: the next cursor (0 when done)
    /// and the keys found.
    pub(crate) async fn scan(
        &self,
        pattern: &KeyPattern,
        cursor: u64,
    ) -> Result<(u64, Vec<LockKey>), Error> {
        let glob = protocol::scan_glob(&self.prefix, pattern);
        let (next, names): (u64, Vec<String>) = self
            .send(async |connection| {
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&glob)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(connection)
                    .await
            })
            .await?;
        Ok((next, protocol::found_keys(&self.prefix, pattern, &names)))
    }

    /// Inspects `keys` in one pipelined round trip.
    pub(crate) async fn inspect_many(
        &self,
        keys: &[LockKey],
    ) -> Result<Vec<Option<LockInfo>>, Error> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.invoke_script(&protocol::inspect_invocation(&self.prefix, key));
        }
        let replies: Vec<Value> = self.query_scripts(&pipe, &scripts::INSPECT).await?;
        keys.iter()
            .zip(replies)
            .map(|(key, reply)| protocol::parse_inspect(&self.prefix, key, reply))
            .collect()
    }

    /// `P:{K}:released`: the channel a release of `key` is announced on.
    pub(crate) fn channel(&self, key: &LockKey) -> String {
        protocol::channel(&self.prefix, key)
    }

    /// Removes whatever hold `key` has; returns whether there was one, and the last fencing
    /// token handed out before the removal.
    pub(crate) async fn force_release(&self, key: &LockKey) -> Result<(bool, u64), Error> {
        let invocation = protocol::force_release_invocation(&self.prefix, key, false);
        protocol::parse_force_release(self.invoke(&invocation).await?)
    }

    pub(crate) async fn inspect(&self, key: &LockKey) -> Result<Option<LockInfo>, Error> {
        let invocation = protocol::inspect_invocation(&self.prefix, key);
        protocol::parse_inspect(&self.prefix, key, self.invoke(&invocation).await?)
    }
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(super) fn is_noscript(err: &crate::error::BackendError) -> bool {
    err.get_ref()
        .downcast_ref::<redis::RedisError>()
        .is_some_and(|err| err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript))
}
