//! The Redis backend: the Lua scripts over a multiplexed connection or a user's bb8 pool.

use std::error::Error as _;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bb8_redis::RedisConnectionManager;
use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::RedisFuture;
use redis::{ScriptInvocation, Value};

use super::batch::{Batcher, Kind, Request};
use super::{Attempt, Released, Replicas, HOLDER};
use crate::error::Error;
use crate::info::LockInfo;
use crate::key::LockKey;
use crate::lease::Lease;
use crate::pattern::KeyPattern;
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
    batcher: Arc<Batcher>,
    prefix: String,
    fence_retention: Duration,
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
        fence_retention: Duration,
        dedicated: Dedicated,
    ) -> Self {
        Self {
            connection: Arc::new(connection),
            batcher: Arc::default(),
            prefix,
            fence_retention,
            dedicated,
        }
    }

    /// `P:{K}`: the lock.
    pub(crate) fn lock_key(&self, key: &LockKey) -> String {
        self.key_name(key, "")
    }

    fn key_name(&self, key: &LockKey, suffix: &str) -> String {
        key_name(&self.prefix, key, suffix)
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
    ) -> Result<Attempt, Error> {
        let request = Request {
            kind: Kind::Acquire {
                lease_ms: millis(lease),
                retention_ms: millis(self.fence_retention.max(lease)),
            },
            lock: self.lock_key(key),
            token: token.clone(),
        };
        match self.batcher.submit(&self.connection, request).await? {
            (1, Value::Int(token)) if token > 0 => Ok(Attempt::Acquired {
                fencing_token: token as u64,
            }),
            (0, Value::Int(pttl)) => Ok(Attempt::Held {
                ttl: ttl_from_pttl(pttl),
            }),
            (status, value) => Err(unexpected(
                "acquire",
                &Value::Array(vec![Value::Int(status), value]),
            )),
        }
    }

    /// The acquire script and `WAIT` in one pipeline on a dedicated connection, so that the
    /// replicas' acknowledgement counts this grant's write and nothing queues behind the wait.
    pub(crate) async fn acquire_acknowledged(
        &self,
        key: &LockKey,
        token: &HoldToken,
        lease: Duration,
        replicas: Replicas,
    ) -> Result<(Attempt, u32), Error> {
        let invocation = acquire_invocation(&self.prefix, key, token, lease, self.fence_retention);
        let pipe = acknowledged_pipeline(&invocation, replicas, false);
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
        let sent = send_acknowledged(&mut connection, &pipe, false, limit).await;
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
                parse_acknowledged(replies)
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
    ) -> Result<Released, Error> {
        let request = Request {
            kind: Kind::Release,
            lock: self.lock_key(key),
            token: token.clone(),
        };
        match self.batcher.submit(&self.connection, request).await? {
            (1, _) => Ok(Released::Free),
            (0, _) => Ok(Released::NotHeld),
            (status, value) => Err(unexpected(
                "release",
                &Value::Array(vec![Value::Int(status), value]),
            )),
        }
    }

    pub(crate) async fn renew(&self, renewals: &[Arc<Lease>]) -> Result<Vec<bool>, Error> {
        let mut pipe = redis::pipe();
        for renewal in renewals {
            pipe.invoke_script(&renew_invocation(
                &self.prefix,
                renewal,
                self.fence_retention,
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
        let glob = scan_glob(&self.prefix, pattern);
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
        Ok((next, found_keys(&self.prefix, pattern, &names)))
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
            pipe.invoke_script(&scripts::INSPECT.key(self.lock_key(key)));
        }
        let replies: Vec<Value> = self.query_scripts(&pipe, &scripts::INSPECT).await?;
        keys.iter()
            .zip(replies)
            .map(|(key, reply)| parse_inspect(key, reply))
            .collect()
    }

    /// `P:{K}:released`: the channel a release of `key` is announced on.
    pub(crate) fn channel(&self, key: &LockKey) -> String {
        self.key_name(key, ":released")
    }

    /// Removes whatever hold `key` has; returns whether there was one, and the last fencing
    /// token handed out before the removal.
    pub(crate) async fn force_release(&self, key: &LockKey) -> Result<(bool, u64), Error> {
        let mut invocation = scripts::FORCE_RELEASE.key(self.lock_key(key));
        invocation
            .key(self.channel(key))
            .key(self.key_name(key, ":fence"));
        parse_force_release(self.invoke(&invocation).await?)
    }

    pub(crate) async fn inspect(&self, key: &LockKey) -> Result<Option<LockInfo>, Error> {
        let invocation = scripts::INSPECT.key(self.lock_key(key));
        parse_inspect(key, self.invoke(&invocation).await?)
    }
}

/// The acquire script's invocation for a new hold of `key` (the same on one server and on a
/// cluster). The fencing counter is kept at least as long as the lease.
pub(super) fn acquire_invocation(
    prefix: &str,
    key: &LockKey,
    token: &HoldToken,
    lease: Duration,
    fence_retention: Duration,
) -> ScriptInvocation<'static> {
    let mut invocation = scripts::ACQUIRE.key(key_name(prefix, key, ""));
    invocation
        .key(key_name(prefix, key, ":fence"))
        .arg(token.as_str())
        .arg(millis(lease))
        .arg(millis(fence_retention.max(lease)))
        .arg(holder_metadata());
    invocation
}

/// `EVALSHA acquire` then `WAIT count timeout`, as one pipeline; after `ASKING` when `asking`
/// (a cluster node importing the slot runs the script only right after it).
pub(super) fn acknowledged_pipeline(
    invocation: &ScriptInvocation<'_>,
    replicas: Replicas,
    asking: bool,
) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    if asking {
        pipe.cmd("ASKING");
    }
    pipe.invoke_script(invocation);
    pipe.cmd("WAIT")
        .arg(replicas.count)
        .arg(millis(replicas.timeout).max(1));
    pipe
}

/// Sends [`acknowledged_pipeline`] on `connection`, each send bounded by `limit`, loading the
/// acquire script there if the server lacks it (a `NOSCRIPT` reply ran nothing, so sending again
/// is safe): the script's reply and `WAIT`'s.
pub(super) async fn send_acknowledged(
    connection: &mut impl ConnectionLike,
    pipe: &redis::Pipeline,
    asking: bool,
    limit: Duration,
) -> Result<Vec<Value>, Error> {
    let offset = usize::from(asking);
    let late = || {
        Error::backend(format!(
            "the server did not answer an acquisition waiting for replicas within {limit:?}"
        ))
    };
    let replies = tokio::time::timeout(limit, connection.req_packed_commands(pipe, offset, 2))
        .await
        .map_err(|_| late())??;
    let noscript = matches!(
        replies.first(),
        Some(Value::ServerError(err)) if err.kind() == Some(redis::ServerErrorKind::NoScript)
    );
    if !noscript {
        return Ok(replies);
    }
    tokio::time::timeout(
        limit,
        scripts::ACQUIRE.prepare_invoke().load_async(connection),
    )
    .await
    .map_err(|_| late())??;
    Ok(
        tokio::time::timeout(limit, connection.req_packed_commands(pipe, offset, 2))
            .await
            .map_err(|_| late())??,
    )
}

/// The acquire script's answer and `WAIT`'s count of acknowledging replicas.
pub(super) fn parse_acknowledged(replies: Vec<Value>) -> Result<(Attempt, u32), Error> {
    let [attempt, acknowledged]: [Value; 2] = replies
        .try_into()
        .map_err(|replies: Vec<Value>| unexpected("acquire and WAIT", &Value::Array(replies)))?;
    let attempt = parse_acquire(attempt.extract_error()?)?;
    match acknowledged.extract_error()? {
        Value::Int(count) => Ok((attempt, u32::try_from(count).unwrap_or(0))),
        other => Err(unexpected("WAIT", &other)),
    }
}

/// The renew script's invocation for `lease`'s hold, which also keeps its fencing counter alive.
pub(super) fn renew_invocation(
    prefix: &str,
    lease: &Lease,
    fence_retention: Duration,
) -> ScriptInvocation<'static> {
    let mut invocation = scripts::RENEW.key(key_name(prefix, &lease.key, ""));
    invocation
        .key(key_name(prefix, &lease.key, ":fence"))
        .arg(lease.token.as_str())
        .arg(millis(lease.duration))
        .arg(millis(fence_retention.max(lease.duration)));
    invocation
}

/// `P:{K}<suffix>`, built without the formatting machinery: it runs twice per lock.
pub(super) fn key_name(prefix: &str, key: &LockKey, suffix: &str) -> String {
    let key = key.as_str();
    let mut name = String::with_capacity(prefix.len() + key.len() + suffix.len() + 3);
    name.push_str(prefix);
    name.push_str(":{");
    name.push_str(key);
    name.push('}');
    name.push_str(suffix);
    name
}

/// The `SCAN MATCH` glob of the locks whose keys match `pattern`.
pub(super) fn scan_glob(prefix: &str, pattern: &KeyPattern) -> String {
    let mut glob = String::with_capacity(prefix.len() + pattern.as_str().len() + 8);
    for c in prefix.chars().chain([':', '{']) {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            glob.push('\\');
        }
        glob.push(c);
    }
    glob.push_str(pattern.as_str());
    glob.push('}');
    glob
}

/// The lock keys among the Redis key `names` a scan with [`scan_glob`] found.
pub(super) fn found_keys(prefix: &str, pattern: &KeyPattern, names: &[String]) -> Vec<LockKey> {
    names
        .iter()
        .filter_map(|name| {
            name.strip_prefix(prefix)?
                .strip_prefix(":{")?
                .strip_suffix('}')
        })
        .filter(|key| pattern.matches(key))
        .filter_map(|key| LockKey::new(key).ok())
        .collect()
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

/// `"<pid> <now in ms> <host>"`: who takes a lock, for `inspect`. Built by hand: it runs on
/// every acquisition.
pub(super) fn holder_metadata() -> String {
    static PID: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| HOLDER.pid.to_string());
    let since = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let mut digits = [0u8; 39];
    let mut at = digits.len();
    let mut rest = since;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    let since = std::str::from_utf8(&digits[at..]).expect("ASCII digits");
    let mut text = String::with_capacity(PID.len() + since.len() + HOLDER.host.len() + 2);
    text.push_str(&PID);
    text.push(' ');
    text.push_str(since);
    text.push(' ');
    text.push_str(&HOLDER.host);
    text
}

/// Parses what [`holder_metadata`] wrote.
fn parse_holder(text: &str, info: &mut LockInfo) {
    let mut parts = text.splitn(3, ' ');
    info.pid = parts.next().and_then(|pid| pid.parse().ok());
    info.acquired_at = parts
        .next()
        .and_then(|ms| ms.parse().ok())
        .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms));
    info.host = parts.next().map(str::to_owned);
}

/// Lease and retention go to Redis in whole milliseconds, at least one (PEXPIRE 0 deletes).
pub(super) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

pub(super) fn unexpected(script: &str, value: &Value) -> Error {
    Error::backend(format!(
        "unexpected reply from the {script} script: {value:?}"
    ))
}

pub(super) fn as_string(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(text) => Some(text.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A PTTL reply: -1 (no expiry) and -2 (gone) have no remaining time to report.
fn ttl_from_pttl(pttl: i64) -> Option<Duration> {
    u64::try_from(pttl).ok().map(Duration::from_millis)
}

pub(super) fn parse_acquire(value: Value) -> Result<Attempt, Error> {
    if let Value::Array(items) = &value {
        match items.as_slice() {
            [Value::Int(1), Value::Int(token)] if *token > 0 => {
                return Ok(Attempt::Acquired {
                    fencing_token: *token as u64,
                });
            }
            [Value::Int(0), Value::Int(pttl)] => {
                return Ok(Attempt::Held {
                    ttl: ttl_from_pttl(*pttl),
                });
            }
            _ => {}
        }
    }
    Err(unexpected("acquire", &value))
}

/// Parses the force-release script's `{removed, last fencing token}`.
pub(super) fn parse_force_release(reply: Value) -> Result<(bool, u64), Error> {
    if let Value::Array(items) = &reply {
        if let [Value::Int(removed), Value::Int(last)] = items.as_slice() {
            if *last >= 0 {
                return Ok((*removed == 1, *last as u64));
            }
        }
    }
    Err(unexpected("force-release", &reply))
}

#[cfg(any(feature = "cluster", test))]
pub(super) fn parse_release(value: Value) -> Result<Released, Error> {
    match value {
        Value::Int(1) => Ok(Released::Free),
        Value::Int(0) => Ok(Released::NotHeld),
        other => Err(unexpected("release", &other)),
    }
}

/// Parses the inspect script's `{pttl, "<hold token> <fencing token> <pid> <since ms> <host>"}`.
pub(super) fn parse_inspect(key: &LockKey, value: Value) -> Result<Option<LockInfo>, Error> {
    let Value::Array(items) = &value else {
        return Err(unexpected("inspect", &value));
    };
    let (pttl, text) = match items.as_slice() {
        [] => return Ok(None),
        [Value::Int(pttl), text] => (*pttl, as_string(text)),
        _ => return Err(unexpected("inspect", &value)),
    };
    let text = text.ok_or_else(|| unexpected("inspect", &value))?;
    // "<hold token> <fencing token> <pid> <since ms> <host>", with "+" after the token once the
    // hold has refused someone.
    let (owner, rest) = match text.split_at_checked(32) {
        Some((owner, rest)) if rest.starts_with([' ', '+']) => (owner, &rest[1..]),
        _ => return Err(unexpected("inspect", &value)),
    };
    let mut parts = rest.splitn(2, ' ');
    let Some(fencing_token) = parts.next().and_then(|fence| fence.parse().ok()) else {
        return Err(unexpected("inspect", &value));
    };
    let mut info = LockInfo {
        key: key.as_str().to_owned(),
        owner: owner.to_owned(),
        holds: 1,
        ttl: ttl_from_pttl(pttl).unwrap_or_default(),
        fencing_token,
        host: None,
        pid: None,
        acquired_at: None,
    };
    parse_holder(parts.next().unwrap_or_default(), &mut info);
    Ok(Some(info))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn acquire_reply_acquired() {
        let reply = Value::Array(vec![Value::Int(1), Value::Int(1_764_000_000_000_007)]);
        assert_eq!(
            parse_acquire(reply).unwrap(),
            Attempt::Acquired {
                fencing_token: 1_764_000_000_000_007
            }
        );
    }

    #[test]
    fn acquire_reply_held_carries_the_ttl() {
        let reply = Value::Array(vec![Value::Int(0), Value::Int(1500)]);
        assert_eq!(
            parse_acquire(reply).unwrap(),
            Attempt::Held {
                ttl: Some(Duration::from_millis(1500))
            }
        );
        let no_expiry = Value::Array(vec![Value::Int(0), Value::Int(-1)]);
        assert_eq!(
            parse_acquire(no_expiry).unwrap(),
            Attempt::Held { ttl: None }
        );
    }

    #[test]
    fn acquire_reply_malformed_is_a_backend_error() {
        for reply in [
            Value::Nil,
            Value::Int(1),
            Value::Array(vec![Value::Int(1), Value::Int(0)]),
            Value::Array(vec![Value::Int(1), Value::Int(5), Value::Int(1)]),
            Value::Array(vec![Value::Int(2), Value::Int(1)]),
        ] {
            assert!(parse_acquire(reply).unwrap_err().is_backend());
        }
    }

    #[test]
    fn release_replies() {
        assert_eq!(parse_release(Value::Int(1)).unwrap(), Released::Free);
        assert_eq!(parse_release(Value::Int(0)).unwrap(), Released::NotHeld);
        assert!(parse_release(Value::Int(2)).is_err());
        assert!(parse_release(Value::Nil).is_err());
    }

    #[test]
    fn inspect_reply_free() {
        assert_eq!(
            parse_inspect(&test_key(), Value::Array(vec![])).unwrap(),
            None
        );
    }

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    fn test_key() -> LockKey {
        LockKey::new("order:42").unwrap()
    }

    #[test]
    fn inspect_reply_held() {
        let reply = Value::Array(vec![
            Value::Int(2500),
            bulk(&format!("{TOKEN} 1764000000000042 77 1700000000123 box")),
        ]);
        let info = parse_inspect(&test_key(), reply).unwrap().unwrap();
        assert_eq!(info.key, "order:42");
        assert_eq!(info.owner, TOKEN);
        assert_eq!(info.holds, 1);
        assert_eq!(info.ttl, Duration::from_millis(2500));
        assert_eq!(info.fencing_token, 1_764_000_000_000_042);
        assert_eq!(info.host.as_deref(), Some("box"));
        assert_eq!(info.pid, Some(77));
        assert_eq!(
            info.acquired_at,
            Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123))
        );
    }

    #[test]
    fn inspect_reads_a_hold_that_has_refused_someone() {
        let reply = Value::Array(vec![
            Value::Int(900),
            bulk(&format!("{TOKEN}+1764000000000042 77 1700000000123 box")),
        ]);
        let info = parse_inspect(&test_key(), reply).unwrap().unwrap();
        assert_eq!(info.owner, TOKEN);
        assert_eq!(info.fencing_token, 1_764_000_000_000_042);
        assert_eq!(info.pid, Some(77));
        assert_eq!(info.host.as_deref(), Some("box"));
    }

    #[test]
    fn inspect_reply_without_a_hold_token_or_fence_is_an_error() {
        for text in [
            "",
            "short 5",
            &format!("{TOKEN} notanumber"),
            &format!("{TOKEN}x1764000000000042 77 1 box"),
        ] {
            let reply = Value::Array(vec![Value::Int(10), bulk(text)]);
            assert!(parse_inspect(&test_key(), reply).is_err(), "{text}");
        }
    }

    #[test]
    fn holder_metadata_round_trips() {
        let text = format!("{TOKEN} 1 {}", holder_metadata());
        let info = parse_inspect(&test_key(), Value::Array(vec![Value::Int(1), bulk(&text)]))
            .unwrap()
            .unwrap();
        assert_eq!(info.pid, Some(std::process::id()));
        assert_eq!(info.host.as_deref(), Some(HOLDER.host.as_str()));
        let age = SystemTime::now()
            .duration_since(info.acquired_at.unwrap())
            .unwrap();
        assert!(age < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn key_names_share_the_hash_tag() {
        let backend = RedisBackend {
            connection: Arc::new(Connection::pool(dummy_pool())),
            batcher: Arc::default(),
            prefix: "app".into(),
            fence_retention: Duration::from_secs(1),
            dedicated: Dedicated::new(None, Duration::from_secs(1), Duration::from_secs(1)),
        };
        let key = LockKey::new("order:42").unwrap();
        assert_eq!(backend.lock_key(&key), "app:{order:42}");
        assert_eq!(backend.key_name(&key, ":fence"), "app:{order:42}:fence");
        assert_eq!(backend.channel(&key), "app:{order:42}:released");
    }

    fn dummy_pool() -> bb8::Pool<RedisConnectionManager> {
        let manager = RedisConnectionManager::new("redis://127.0.0.1:1").unwrap();
        bb8::Pool::builder().build_unchecked(manager)
    }

    #[test]
    fn lease_is_sent_in_whole_milliseconds_never_zero() {
        assert_eq!(millis(Duration::from_micros(10)), 1);
        assert_eq!(millis(Duration::from_secs(30)), 30_000);
    }
}
