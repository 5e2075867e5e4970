//! The Redis backend: the Lua scripts over a multiplexed connection or a user's bb8 pool.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bb8_redis::RedisConnectionManager;
use redis::aio::ConnectionManager;
use redis::{ScriptInvocation, Value};

use super::{Attempt, Released, HOLDER};
use crate::error::Error;
use crate::info::LockInfo;
use crate::key::LockKey;
use crate::lease::Lease;
use crate::owner::Owner;
use crate::scripts;

/// How commands reach the server.
#[derive(Clone)]
pub(crate) enum Connection {
    /// One multiplexed connection shared by every task, reconnecting on failure.
    Multiplexed(ConnectionManager),
    /// A pool the application already has; one checkout per command.
    Pool(bb8::Pool<RedisConnectionManager>),
}

pub(crate) struct RedisBackend {
    connection: Connection,
    prefix: String,
    fence_retention: Duration,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let connection = match self.connection {
            Connection::Multiplexed(_) => "multiplexed",
            Connection::Pool(_) => "bb8 pool",
        };
        f.debug_struct("RedisBackend")
            .field("connection", &connection)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl RedisBackend {
    pub(crate) fn new(connection: Connection, prefix: String, fence_retention: Duration) -> Self {
        Self {
            connection,
            prefix,
            fence_retention,
        }
    }

    /// `P:{K}`: the lock's hash.
    pub(crate) fn hash_key(&self, key: &LockKey) -> String {
        self.key_name(key, "")
    }

    /// `P:{K}<suffix>`, built without the formatting machinery: it runs twice per lock.
    fn key_name(&self, key: &LockKey, suffix: &str) -> String {
        let key = key.as_str();
        let mut name = String::with_capacity(self.prefix.len() + key.len() + suffix.len() + 3);
        name.push_str(&self.prefix);
        name.push_str(":{");
        name.push_str(key);
        name.push('}');
        name.push_str(suffix);
        name
    }

    async fn invoke(&self, invocation: &ScriptInvocation<'_>) -> Result<Value, Error> {
        match &self.connection {
            Connection::Multiplexed(connection) => {
                Ok(invocation.invoke_async(&mut connection.clone()).await?)
            }
            Connection::Pool(pool) => {
                let mut connection = pool.get().await?;
                Ok(invocation.invoke_async(&mut *connection).await?)
            }
        }
    }

    /// Checks that the server answers; `Locker::connect` calls this so that a wrong URL fails there.
    pub(crate) async fn ping(&self) -> Result<(), Error> {
        let ping = redis::cmd("PING");
        match &self.connection {
            Connection::Multiplexed(connection) => {
                ping.query_async::<()>(&mut connection.clone()).await?;
            }
            Connection::Pool(pool) => {
                ping.query_async::<()>(&mut *pool.get().await?).await?;
            }
        }
        Ok(())
    }

    pub(crate) async fn acquire(
        &self,
        key: &LockKey,
        owner: &Owner,
        lease: Duration,
    ) -> Result<Attempt, Error> {
        let mut invocation = scripts::ACQUIRE.key(self.hash_key(key));
        invocation
            .key(self.key_name(key, ":fence"))
            .arg(owner.as_str())
            .arg(millis(lease))
            .arg(millis(self.fence_retention))
            .arg(holder_metadata());
        parse_acquire(self.invoke(&invocation).await?)
    }

    pub(crate) async fn release(&self, key: &LockKey, owner: &Owner) -> Result<Released, Error> {
        let mut invocation = scripts::RELEASE.key(self.hash_key(key));
        invocation.arg(owner.as_str()).arg(self.channel(key));
        parse_release(self.invoke(&invocation).await?)
    }

    pub(crate) async fn renew(&self, renewals: &[Arc<Lease>]) -> Result<Vec<bool>, Error> {
        let hashes: Vec<String> = renewals
            .iter()
            .map(|renewal| self.hash_key(&renewal.key))
            .collect();
        let mut pipe = redis::pipe();
        for (renewal, hash) in renewals.iter().zip(&hashes) {
            let mut invocation = scripts::RENEW.key(hash);
            invocation
                .arg(renewal.owner.as_str())
                .arg(millis(renewal.duration));
            pipe.invoke_script(&invocation);
        }
        let replies = match self.query_pipe(&pipe).await {
            Err(err)
                if err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                // The server lost its script cache (a restart, SCRIPT FLUSH): load and resend.
                self.load_script(&scripts::RENEW).await?;
                self.query_pipe(&pipe).await?
            }
            replies => replies?,
        };
        if replies.len() != renewals.len() {
            return Err(Error::backend(format!(
                "renewal pipeline answered {} of {} holds",
                replies.len(),
                renewals.len()
            )));
        }
        Ok(replies.into_iter().map(|renewed| renewed == 1).collect())
    }

    async fn query_pipe(&self, pipe: &redis::Pipeline) -> redis::RedisResult<Vec<i64>> {
        match &self.connection {
            Connection::Multiplexed(connection) => pipe.query_async(&mut connection.clone()).await,
            Connection::Pool(pool) => match pool.get().await {
                Ok(mut connection) => pipe.query_async(&mut *connection).await,
                Err(bb8::RunError::User(err)) => Err(err),
                Err(bb8::RunError::TimedOut) => Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "timed out waiting for a connection from the pool",
                ))),
            },
        }
    }

    async fn load_script(&self, script: &redis::Script) -> Result<(), Error> {
        match &self.connection {
            Connection::Multiplexed(connection) => {
                script.load_async(&mut connection.clone()).await?;
            }
            Connection::Pool(pool) => {
                script.load_async(&mut *pool.get().await?).await?;
            }
        }
        Ok(())
    }

    /// `P:{K}:released`: the channel a release of `key` is announced on.
    pub(crate) fn channel(&self, key: &LockKey) -> String {
        self.key_name(key, ":released")
    }

    pub(crate) async fn force_release(&self, key: &LockKey) -> Result<bool, Error> {
        let mut invocation = scripts::FORCE_RELEASE.key(self.hash_key(key));
        invocation.arg(self.channel(key));
        Ok(as_int(&self.invoke(&invocation).await?)? == 1)
    }

    pub(crate) async fn inspect(&self, key: &LockKey) -> Result<Option<LockInfo>, Error> {
        let invocation = scripts::INSPECT.key(self.hash_key(key));
        parse_inspect(self.invoke(&invocation).await?)
    }
}

/// `"<pid> <now in ms> <host>"`: who takes a lock, for `inspect`.
fn holder_metadata() -> String {
    let since = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    format!("{} {since} {}", HOLDER.pid, HOLDER.host)
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
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

fn unexpected(script: &str, value: &Value) -> Error {
    Error::backend(format!(
        "unexpected reply from the {script} script: {value:?}"
    ))
}

fn as_int(value: &Value) -> Result<i64, Error> {
    match value {
        Value::Int(n) => Ok(*n),
        other => Err(unexpected("lock", other)),
    }
}

fn as_string(value: &Value) -> Option<String> {
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

fn parse_acquire(value: Value) -> Result<Attempt, Error> {
    if let Value::Array(items) = &value {
        match items.as_slice() {
            [Value::Int(1), Value::Int(token), Value::Int(_holds)] if *token > 0 => {
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

fn parse_release(value: Value) -> Result<Released, Error> {
    match value {
        Value::Int(0) => Ok(Released::Free),
        Value::Int(-1) => Ok(Released::NotHeld),
        Value::Int(n) if n > 0 => Ok(Released::Remaining(n as u64)),
        other => Err(unexpected("release", &other)),
    }
}

fn parse_inspect(value: Value) -> Result<Option<LockInfo>, Error> {
    let Value::Array(items) = &value else {
        return Err(unexpected("inspect", &value));
    };
    let Some((pttl, fields)) = items.split_first() else {
        return Ok(None);
    };
    let Value::Int(pttl) = pttl else {
        return Err(unexpected("inspect", &value));
    };
    let mut info = LockInfo {
        owner: String::new(),
        holds: 0,
        ttl: ttl_from_pttl(*pttl).unwrap_or_default(),
        fencing_token: 0,
        host: None,
        pid: None,
        acquired_at: None,
    };
    for pair in fields.chunks(2) {
        let [field, text] = pair else {
            return Err(unexpected("inspect", &value));
        };
        let (Some(field), Some(text)) = (as_string(field), as_string(text)) else {
            return Err(unexpected("inspect", &value));
        };
        match field.as_str() {
            "_fence" => info.fencing_token = text.parse().unwrap_or_default(),
            "_holder" => parse_holder(&text, &mut info),
            _ if !field.starts_with('_') => {
                info.holds = text.parse().unwrap_or_default();
                info.owner = field;
            }
            _ => {}
        }
    }
    if info.owner.is_empty() {
        return Err(unexpected("inspect", &value));
    }
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
        let reply = Value::Array(vec![Value::Int(1), Value::Int(7), Value::Int(1)]);
        assert_eq!(
            parse_acquire(reply).unwrap(),
            Attempt::Acquired { fencing_token: 7 }
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
            Value::Array(vec![Value::Int(1), Value::Int(0), Value::Int(1)]),
            Value::Array(vec![Value::Int(2), Value::Int(1)]),
        ] {
            assert!(parse_acquire(reply).unwrap_err().is_backend());
        }
    }

    #[test]
    fn release_replies() {
        assert_eq!(parse_release(Value::Int(0)).unwrap(), Released::Free);
        assert_eq!(parse_release(Value::Int(-1)).unwrap(), Released::NotHeld);
        assert_eq!(
            parse_release(Value::Int(2)).unwrap(),
            Released::Remaining(2)
        );
        assert!(parse_release(Value::Nil).is_err());
    }

    #[test]
    fn inspect_reply_free() {
        assert_eq!(parse_inspect(Value::Array(vec![])).unwrap(), None);
    }

    #[test]
    fn inspect_reply_held() {
        let owner = "0123456789abcdef0123456789abcdef";
        let reply = Value::Array(vec![
            Value::Int(2500),
            bulk(owner),
            bulk("1"),
            bulk("_fence"),
            bulk("42"),
            bulk("_holder"),
            bulk("77 1700000000123 box"),
        ]);
        let info = parse_inspect(reply).unwrap().unwrap();
        assert_eq!(info.owner, owner);
        assert_eq!(info.holds, 1);
        assert_eq!(info.ttl, Duration::from_millis(2500));
        assert_eq!(info.fencing_token, 42);
        assert_eq!(info.host.as_deref(), Some("box"));
        assert_eq!(info.pid, Some(77));
        assert_eq!(
            info.acquired_at,
            Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123))
        );
    }

    #[test]
    fn inspect_reply_without_owner_is_an_error() {
        let reply = Value::Array(vec![Value::Int(10), bulk("_fence"), bulk("1")]);
        assert!(parse_inspect(reply).is_err());
    }

    #[test]
    fn holder_metadata_round_trips() {
        let mut info = parse_inspect(Value::Array(vec![
            Value::Int(1),
            bulk("0123456789abcdef0123456789abcdef"),
            bulk("1"),
        ]))
        .unwrap()
        .unwrap();
        parse_holder(&holder_metadata(), &mut info);
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
            connection: Connection::Pool(dummy_pool()),
            prefix: "app".into(),
            fence_retention: Duration::from_secs(1),
        };
        let key = LockKey::new("order:42").unwrap();
        assert_eq!(backend.hash_key(&key), "app:{order:42}");
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
