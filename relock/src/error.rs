use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

/// Everything that can go wrong while taking, holding or releasing a lock.
///
/// Each variant tells the caller what to do next: retry later ([`Error::Timeout`]), stop
/// writing ([`Error::Lost`]), fix the key ([`Error::InvalidKey`]) or the lease
/// ([`Error::InvalidLease`]), restructure the call
/// ([`Error::WouldDeadlock`], [`Error::UpgradeRefused`]), agree on a semaphore's size
/// ([`Error::PermitsMismatch`]), configure a locker ([`Error::NoLocker`]) or check the server
/// ([`Error::Backend`], [`Error::EvictingServer`]).
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The lock was held by another owner for the whole wait; try again later.
    Timeout {
        /// The key that could not be locked.
        key: String,
        /// How long the caller waited.
        waited: Duration,
        /// The holder's remaining lease when the wait ended, if it was known.
        holder_ttl: Option<Duration>,
    },
    /// The lease ended (expired, or was force-released) before the holder released it.
    ///
    /// Work done under the lock after this point was not protected; the fencing token is what
    /// lets the resource reject such late writes.
    Lost {
        /// The key whose hold was lost.
        key: String,
    },
    /// The key cannot be used as a lock key; nothing was sent to the server.
    InvalidKey {
        /// The rejected key (cut to 64 characters).
        key: String,
        /// Why it was rejected.
        reason: InvalidKeyReason,
    },
    /// The task waits for a lock that it holds itself through a guard taken outside any scope,
    /// so the wait could never end: the same key, or (a read beside a write) the same key in the
    /// other mode: the write lock while it holds a bare read guard, or a read while it holds
    /// the write lock's bare guard.
    ///
    /// Take the outer lock with [`Acquire::run`](crate::Acquire::run) or `#[locked]` so that the
    /// nested call re-enters it.
    ///
    /// Reported when the wait ends, never earlier: two futures joined in one task may legitimately
    /// wait for each other, and a guard is not a future, so nothing shows whether the guard's
    /// owner encloses the waiter (a deadlock) or runs beside it (a sibling that may still let
    /// go). A sibling that holds a bare guard for longer than another waits is therefore reported
    /// the same way. A request that waits without end (`wait(Duration::MAX)`) on a key its own
    /// task holds through a bare guard therefore never ends: give such waits a bound.
    WouldDeadlock {
        /// The key the task was waiting for.
        key: String,
    },
    /// The lease asked for is outside what relock can keep: shorter than
    /// [`Locker::MIN_LEASE`](crate::Locker::MIN_LEASE) (it would end within the drift margin and
    /// a renewal round trip) or longer than [`Locker::MAX_LEASE`](crate::Locker::MAX_LEASE).
    /// Nothing was sent to the server; choose a lease in range.
    InvalidLease {
        /// The lease that was asked for.
        lease: Duration,
        /// The shortest lease accepted.
        min: Duration,
        /// The longest lease accepted.
        max: Duration,
    },
    /// The lock was granted, but fewer replicas than asked for acknowledged the grant within
    /// the timeout (see [`LockerBuilder::replicas`](crate::LockerBuilder::replicas)); the hold
    /// was released again (in the background, retried, if that release failed). A failover now could forget the grant: retry later, or check the
    /// replicas (`INFO replication` on the master).
    NotReplicated {
        /// The key whose grant was not replicated.
        key: String,
        /// How many replicas acknowledged it in time.
        acknowledged: u32,
        /// How many were asked for.
        required: u32,
    },
    /// The exclusive lock was asked for inside a read hold of the same key in the same scope: an
    /// upgrade. It is refused at once, because it could never be granted while this scope's own
    /// read hold stands (and two scopes upgrading at once would wait for each other forever).
    ///
    /// Take the exclusive lock from the start when the code may write, or release the read hold
    /// first (another writer may then come in between: read again under the exclusive lock).
    UpgradeRefused {
        /// The key read-held by the scope.
        key: String,
    },
    /// The key is in use with another number of permits than asked for: two callers of
    /// [`Locker::semaphore`](crate::Locker::semaphore) disagree on its size, or a semaphore's key
    /// is used as a read-write lock (or the other way round). Nothing was taken; make every
    /// caller use one number of permits for the key.
    PermitsMismatch {
        /// The key in use.
        key: String,
        /// The permits asked for (0: a reader of [`Locker::read`](crate::Locker::read)).
        permits: u32,
        /// The permits its current holders use (0: they are readers).
        found: u32,
    },
    /// The Redis server may evict keys, held locks included: `maxmemory` is set and
    /// `maxmemory-policy` is not `noeviction` (the `volatile-*` policies evict relock's keys too:
    /// each has an expiry). An evicted lock is free for another owner at once, while its holder
    /// learns of the loss only at its next renewal. Nothing was locked: set
    /// `maxmemory-policy noeviction` on the server, or accept the risk with
    /// [`LockerBuilder::allow_eviction`](crate::LockerBuilder::allow_eviction).
    ///
    /// Checked by [`Locker::connect`](crate::Locker::connect) and before a locker's first lock,
    /// on every master of a cluster, and on each master found behind Sentinel (which is then not
    /// used for any command).
    EvictingServer {
        /// The server (`host:port`) that may evict.
        server: String,
        /// Its `maxmemory`, in bytes.
        maxmemory: u64,
        /// Its `maxmemory-policy`.
        policy: String,
    },
    /// No locker was given, none is in scope, and no global locker was set with
    /// [`set_global`](crate::set_global).
    NoLocker,
    /// The Redis server could not be reached or answered with an error; check the server.
    Backend(BackendError),
}

/// Why a key was rejected by [`Error::InvalidKey`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidKeyReason {
    /// The key is empty.
    Empty,
    /// The key is longer than [`LockKey::MAX_LEN`](crate::LockKey::MAX_LEN) bytes.
    TooLong {
        /// The key's length in bytes.
        len: usize,
    },
    /// The key contains `{` or `}`, which would change the Redis Cluster hash slot.
    Brace,
    /// The key contains a control character (such as a newline or NUL).
    ControlCharacter,
    /// The request gives the value the key is read from more than once (`?cart=7&cart=8`, two
    /// `x-order-id` headers), so the lock and the code that handles the request could read
    /// different values; the error's `key` names the parameter or header. Reported by
    /// relock-tower's extractors.
    Repeated,
}

impl fmt::Display for InvalidKeyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("key is empty"),
            Self::TooLong { len } => write!(
                f,
                "key is {len} bytes long, the limit is {}",
                crate::LockKey::MAX_LEN
            ),
            Self::Brace => f.write_str("key contains `{` or `}`"),
            Self::ControlCharacter => f.write_str("key contains a control character"),
            Self::Repeated => {
                f.write_str("the request repeats the query parameter or header it is read from")
            }
        }
    }
}

/// A failure of the storage behind a [`Locker`](crate::Locker): the Redis connection or the pool.
#[derive(Debug)]
pub struct BackendError {
    inner: Box<dyn StdError + Send + Sync + 'static>,
}

impl BackendError {
    pub(crate) fn new(err: impl Into<Box<dyn StdError + Send + Sync + 'static>>) -> Self {
        Self { inner: err.into() }
    }

    /// The underlying error, for example a [`redis::RedisError`].
    pub fn get_ref(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.inner
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)
    }
}

impl StdError for BackendError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.inner.source()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout {
                key,
                waited,
                holder_ttl,
            } => {
                write!(f, "lock `{key}` is held elsewhere; gave up after {waited:?}")?;
                if let Some(ttl) = holder_ttl {
                    write!(f, " (holder's lease ends in {ttl:?})")?;
                }
                Ok(())
            }
            Self::Lost { key } => write!(f, "lock `{key}` was lost before it was released"),
            Self::InvalidKey { key, reason } => write!(f, "invalid lock key `{key}`: {reason}"),
            Self::WouldDeadlock { key } => write!(
                f,
                "lock `{key}` is held by this task through an unscoped guard, so waiting for it \
                 would never end; take the outer lock with `run` or `#[locked]` so nested calls re-enter it"
            ),
            Self::InvalidLease { lease, min, max } => write!(
                f,
                "invalid lease {lease:?}: it must be between {min:?} and {max:?}"
            ),
            Self::NotReplicated {
                key,
                acknowledged,
                required,
            } => write!(
                f,
                "lock `{key}` was granted but only {acknowledged} of the {required} replicas asked \
                 for acknowledged it in time; it was released again"
            ),
            Self::UpgradeRefused { key } => write!(
                f,
                "cannot take the exclusive lock on `{key}` inside this scope's read hold of it (an \
                 upgrade could never be granted); take the exclusive lock from the start, or \
                 release the read hold first"
            ),
            Self::PermitsMismatch {
                key,
                permits,
                found,
            } => {
                let side = |n: &u32| match n {
                    0 => "as a read-write lock".to_owned(),
                    n => format!("as a semaphore of {n} permits"),
                };
                write!(
                    f,
                    "`{key}` was asked for {} but its holders use it {}; every caller must agree",
                    side(permits),
                    side(found)
                )
            }
            Self::EvictingServer {
                server,
                maxmemory,
                policy,
            } => write!(
                f,
                "the Redis server at {server} may evict held locks (maxmemory {maxmemory} bytes \
                 with maxmemory-policy {policy}): set `maxmemory-policy noeviction`, or call \
                 `allow_eviction()` on the locker builder to accept losing locks to eviction"
            ),
            Self::NoLocker => f.write_str(
                "no locker: pass one explicitly, run inside a locked scope, or call `relock::set_global`",
            ),
            Self::Backend(_) => f.write_str("lock backend failed"),
        }
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Self::Backend(err) => Some(err.get_ref()),
            _ => None,
        }
    }
}

impl Error {
    pub(crate) fn backend(err: impl Into<Box<dyn StdError + Send + Sync + 'static>>) -> Self {
        Self::Backend(BackendError::new(err))
    }

    /// Returns `true` for [`Error::Timeout`]: the lock was busy and a later attempt may succeed.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout { .. })
    }

    /// Returns `true` for [`Error::Lost`].
    pub fn is_lost(&self) -> bool {
        matches!(self, Self::Lost { .. })
    }

    /// Returns `true` for [`Error::Backend`].
    pub fn is_backend(&self) -> bool {
        matches!(self, Self::Backend(_))
    }
}

impl From<redis::RedisError> for Error {
    fn from(err: redis::RedisError) -> Self {
        match explain(&err) {
            Some(message) => Self::backend(Explained {
                message,
                cause: err,
            }),
            None => Self::backend(err),
        }
    }
}

/// What `err` means for whoever runs relock: the explanation [`Error`] carries, else the error.
pub(crate) fn describe(err: &redis::RedisError) -> String {
    explain(err).unwrap_or_else(|| err.to_string())
}

/// Where the rules relock needs are listed.
const ACL_HINT: &str =
    "every rule relock needs is listed under \"ACL user\" in relock's docs/production.md and \
     given by `relock::acl_rules`";

/// Says what to fix for the errors whose own text leaves the operator guessing: a refused TLS
/// certificate, a missing ACL permission, refused credentials.
fn explain(err: &redis::RedisError) -> Option<String> {
    #[cfg(feature = "tls")]
    if let Some(problem) = crate::tls::certificate_problem(err) {
        return Some(problem);
    }
    if err.kind() == redis::ErrorKind::AuthenticationFailed || err.code() == Some("WRONGPASS") {
        return Some(format!(
            "Redis refused the credentials: wrong user name or password in the URL \
             (`redis://user:password@host`), or the user is disabled ({err})"
        ));
    }
    if err.code() == Some("NOAUTH") {
        return Some(format!(
            "Redis requires a password: give the user and password in the URL \
             (`redis://user:password@host`) ({err})"
        ));
    }
    let text = err.to_string();
    if let Some(explained) = explain_old_server(&text) {
        return Some(explained);
    }
    let command = refused_command(&text).map(str::to_owned).or_else(|| {
        refused_script_line(&text).and_then(|(sha, line)| crate::scripts::command_at(sha, line))
    });
    explain_refusal(&text, command, err.code() == Some("NOPERM"))
}

/// The error of one request of a batch script call that failed on `command` with `message` (the
/// script catches each request's errors, so that one request's cannot fail the others).
pub(crate) fn batched_request_failed(command: &str, message: &str, lock: &str) -> Error {
    let text = format!("{message} (calling {command} in relock's script)");
    if let Some(explained) = explain_old_server(&text) {
        return Error::backend(explained);
    }
    if let Some(explained) = explain_refusal(&text, Some(command.to_lowercase()), false) {
        return Error::backend(explained);
    }
    if message.starts_with("WRONGTYPE") {
        return Error::backend(format!(
            "the Redis key `{lock}` holds a value relock did not write (another application \
             writes under relock's key prefix): {text}"
        ));
    }
    Error::backend(text)
}

/// A server older than Redis 7.0 answers the acquire scripts' `SET … NX … GET` with a syntax
/// error, which alone would leave the operator guessing.
fn explain_old_server(text: &str) -> Option<String> {
    text.contains("syntax error").then(|| {
        format!(
            "relock needs Redis 7.0 or later (its scripts use `SET` with both `NX` and `GET`), \
             and this server refused that as a syntax error: {text}"
        )
    })
}

/// What to grant for an ACL refusal (`noperm`: the error's code says so) whose text is `text`,
/// when the command refused is known.
fn explain_refusal(text: &str, command: Option<String>, noperm: bool) -> Option<String> {
    // Redis 7 answers a command a script calls but the user may not run with a plain error
    // naming the script and its line, not with NOPERM.
    let in_script = text.contains("user executing the script can't");
    if !noperm && !text.contains("NOPERM") && !in_script {
        return None;
    }
    // A refused key or channel is reported with the command that named it: grant the pattern.
    let names_data = text.contains(" key") || text.contains("channel");
    let what = match command {
        Some(command) if !names_data => format!("may not run `{command}`: grant `+{command}`"),
        _ if text.contains("channel") => {
            "may not use relock's release channels: grant `&<prefix>:*`".to_owned()
        }
        _ if text.contains(" key") => {
            "may not access relock's keys: grant `~<prefix>:*`".to_owned()
        }
        _ => "lacks a permission relock needs".to_owned(),
    };
    Some(format!("the Redis ACL user {what} ({ACL_HINT}; {text})"))
}

/// The command a `NOPERM` message names: `... has no permissions to run the 'evalsha' command`.
fn refused_command(text: &str) -> Option<&str> {
    let (_, rest) = text.split_once("to run the '")?;
    let (command, _) = rest.split_once('\'')?;
    Some(command)
}

/// The script SHA1 and line a refusal inside a script names: `... script: <sha>, on
/// @user_script:<line>.`
/// The command (uppercase) that a script's error message names by its line, as Redis reports an
/// error raised inside a script (`… script: <sha>, on @user_script:<line>.`).
pub(crate) fn script_command(text: &str) -> Option<String> {
    refused_script_line(text)
        .and_then(|(sha, line)| crate::scripts::command_at(sha, line))
        .map(|command| command.to_uppercase())
}

fn refused_script_line(text: &str) -> Option<(&str, usize)> {
    let (_, rest) = text.split_once("script: ")?;
    let (sha, rest) = rest.split_once(", on @user_script:")?;
    let line = rest.trim_end_matches('.').trim().parse().ok()?;
    Some((sha, line))
}

/// A Redis error with a message saying what to fix; the original stays its source.
#[derive(Debug)]
struct Explained {
    message: String,
    cause: redis::RedisError,
}

impl fmt::Display for Explained {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl StdError for Explained {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.cause)
    }
}

impl From<bb8::RunError<redis::RedisError>> for Error {
    fn from(err: bb8::RunError<redis::RedisError>) -> Self {
        match err {
            bb8::RunError::User(err) => Self::backend(err),
            bb8::RunError::TimedOut => {
                Self::backend("timed out waiting for a connection from the pool")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_older_than_redis_7_is_named_as_the_cause() {
        // What Redis 6.2 answers `SET k v NX GET`, raised in a script and caught in the batch.
        let raised = redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError),
            "An error was signalled by the server",
            "syntax error script: 0123abcd, on @user_script:29.".to_owned(),
        ));
        let batched = batched_request_failed("SET", "ERR syntax error", "relock:{k}");
        for err in [Error::from(raised), batched] {
            let text = format!("{err}: {}", std::error::Error::source(&err).unwrap());
            assert!(
                text.contains("relock needs Redis 7.0 or later"),
                "a syntax error does not name the server's version as the cause: {text}"
            );
        }
        let other = batched_request_failed("SET", "ERR something else", "relock:{k}");
        assert!(!other.to_string().contains("7.0") && !format!("{other:?}").contains("7.0"));
    }

    #[test]
    fn display_is_lowercase_without_trailing_period() {
        let errors = [
            Error::Timeout {
                key: "k".into(),
                waited: Duration::from_millis(5),
                holder_ttl: Some(Duration::from_secs(1)),
            },
            Error::Lost { key: "k".into() },
            Error::InvalidKey {
                key: String::new(),
                reason: InvalidKeyReason::Empty,
            },
            Error::WouldDeadlock { key: "k".into() },
            Error::InvalidLease {
                lease: Duration::ZERO,
                min: Duration::from_millis(10),
                max: Duration::from_secs(1),
            },
            Error::EvictingServer {
                server: "127.0.0.1:6379".into(),
                maxmemory: 1 << 20,
                policy: "allkeys-lru".into(),
            },
            Error::NoLocker,
            Error::backend("connection refused"),
        ];
        for err in errors {
            let text = err.to_string();
            assert!(text.starts_with(char::is_lowercase), "{text}");
            assert!(!text.ends_with('.'), "{text}");
        }
    }

    #[test]
    fn backend_error_exposes_its_source() {
        let err = Error::backend("connection refused");
        assert_eq!(err.source().unwrap().to_string(), "connection refused");
    }
}
