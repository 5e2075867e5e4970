//! What relock keeps in Redis, and how it asks for it: the one module that knows the layout.
//!
//! A lock is **one key**, `P:{K}` (prefix `P`, user key `K` in a hash tag, so that the key and its
//! channel `P:{K}:released` share one Redis Cluster slot). Its value is one of:
//!
//! * a **hold**: `<hold token><mark><fencing token> <deadline ms> <pid> <since ms> <host>` — the
//!   hold token is 32 hex digits, new for every fresh acquisition; the mark is a space, or `+`
//!   once the hold has refused someone (its release is then published); the deadline is the end
//!   of the lease on the server's clock (`TIME`), checked by every script: a hold past it is free;
//! * a **tombstone**: `-<fencing token> <hold token>`, written by a release in place of the hold
//!   (by a force-release with 32 zeros for the hold token): the lock is free, the last fencing
//!   token survives, and the released hold is named, so that a retried release recognises its
//!   own effect and an acquisition of that hold arriving after its release is refused.
//!
//! * **shared holders** (readers of a read-write lock, or a semaphore's permits):
//!   `*<fencing token> <permits> <writer until ms> <waited>` followed by
//!   ` <hold token> <deadline ms> <fencing token>` per holder — `*` is neither a hex digit nor
//!   `-`, so the exclusive scripts tell it apart (only on their slow paths: a free key and a
//!   tombstone are recognised before it is looked for). `permits` is 0 for readers; a writer
//!   refused by live holders records how long it claims the key (`writer until`), and new
//!   readers queue behind it; `waited` is 1 once anyone was refused (releases then publish).
//!   Holders past their deadline are dropped by the next script that writes the value. A
//!   release turns its holder's entry into a released hold's, ` <hold token> -<deadline ms>
//!   <fencing token>` (at most 8 are kept, until their deadline): not a holder, but what a
//!   retried release and a late acquisition of that hold find, as a tombstone. An exclusive
//!   acquisition takes the key once no holder is live, keeping the fencing token.
//!   A reader's fencing token is the key's last one (the last writer's); a permit's is fresh.
//!
//! The key's expiry is the **retention**: set by every grant and renewal to at least the lease,
//! kept by a release. After it nothing of the lock is left. A value of any other form is never
//! overwritten (it is treated as held until its key expires). The scripts in `src/scripts/`
//! (one per operation, each with a header stating its KEYS, ARGV and reply) and
//! `src/scripts/README.md` are the protocol; this module builds their calls and reads their
//! replies for every Redis transport (one server, its group commit, a cluster, Sentinel), which
//! only carry them.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use redis::aio::ConnectionLike;
use redis::{ScriptInvocation, Value};

#[cfg(any(feature = "cluster", test))]
use crate::backend::Released;
use crate::backend::{Attempt, Replicas, HOLDER};
use crate::error::Error;
use crate::info::{LockInfo, LockMode};
use crate::key::LockKey;
use crate::lease::Lease;
use crate::pattern::KeyPattern;
use crate::scripts;
use crate::token::HoldToken;

/// `P:{K}`: the lock's key.
pub(crate) fn lock_key(prefix: &str, key: &LockKey) -> String {
    key_name(prefix, key, "")
}

/// `P:{K}:released`: the channel a release of `key` is announced on.
pub(crate) fn channel(prefix: &str, key: &LockKey) -> String {
    key_name(prefix, key, ":released")
}

/// `P:{K}<suffix>`, built without the formatting machinery: it runs for every request.
fn key_name(prefix: &str, key: &LockKey, suffix: &str) -> String {
    let key = key.as_str();
    let mut name = String::with_capacity(prefix.len() + key.len() + suffix.len() + 3);
    name.push_str(prefix);
    name.push_str(":{");
    name.push_str(key);
    name.push('}');
    name.push_str(suffix);
    name
}

/// What a lock's key holds, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stored<'a> {
    Hold {
        token: &'a str,
        /// The hold has refused someone: its release is published.
        refused: bool,
        fencing_token: u64,
        /// The end of the lease, in milliseconds on the server's clock.
        deadline_ms: u64,
        /// `<pid> <since ms> <host>`
        holder: &'a str,
    },
    Tombstone {
        fencing_token: u64,
        /// The released hold's token (32 zeros after a force-release).
        released: &'a str,
    },
    /// Shared holders: readers (`permits` 0) or a semaphore's permits.
    Shared {
        fencing_token: u64,
        permits: u32,
        /// ` <hold token> <deadline ms> <fencing token>` per holder (and, in a stored value but
        /// never in an inspect reply, ` <hold token> -<deadline ms> <fencing token>` per released
        /// hold).
        holders: &'a str,
    },
    /// Not relock's: never overwritten.
    Unknown,
}

impl<'a> Stored<'a> {
    /// Parses a value of the lock's key.
    pub(crate) fn parse(value: &'a str) -> Self {
        if let Some(rest) = value.strip_prefix('-') {
            return match rest.split_once(' ') {
                Some((fence, released)) if is_token(released) => match fence.parse() {
                    Ok(fencing_token) if is_digits(fence) => Self::Tombstone {
                        fencing_token,
                        released,
                    },
                    _ => Self::Unknown,
                },
                _ => Self::Unknown,
            };
        }
        if let Some(rest) = value.strip_prefix('*') {
            return Self::parse_shared(rest).unwrap_or(Self::Unknown);
        }
        let Some((token, rest)) = value.split_at_checked(32) else {
            return Self::Unknown;
        };
        let refused = match rest.as_bytes().first() {
            Some(b' ') => false,
            Some(b'+') => true,
            _ => return Self::Unknown,
        };
        let mut parts = rest[1..].splitn(3, ' ');
        let (Some(fence), Some(deadline)) = (parts.next(), parts.next()) else {
            return Self::Unknown;
        };
        match (is_token(token), fence.parse(), deadline.parse()) {
            (true, Ok(fencing_token), Ok(deadline_ms)) if is_digits(fence) => Self::Hold {
                token,
                refused,
                fencing_token,
                deadline_ms,
                holder: parts.next().unwrap_or_default(),
            },
            _ => Self::Unknown,
        }
    }
}

impl<'a> Stored<'a> {
    fn parse_shared(rest: &'a str) -> Option<Self> {
        let mut parts = rest.splitn(4, ' ');
        let (fence, permits, writer, tail) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if !is_digits(fence) || !is_digits(permits) || !is_digits(writer) {
            return None;
        }
        let (waited, holders) = tail.split_at_checked(1)?;
        if !matches!(waited, "0" | "1") {
            return None;
        }
        Some(Self::Shared {
            fencing_token: fence.parse().ok()?,
            permits: permits.parse().ok()?,
            holders,
        })
    }
}

/// The hold tokens in a shared value's list of holders, as an inspect reply has it (live holders
/// only).
pub(crate) fn shared_holders(holders: &str) -> impl Iterator<Item = &str> {
    holders.split(' ').skip(1).step_by(3)
}

fn is_token(text: &str) -> bool {
    text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_digits(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

/// The acquire script's call for a new hold of `key` (the same on one server and on a cluster).
/// The key is kept for the retention, at least as long as the lease.
/// `claim`: a refusal by shared holders records this caller as a waiting writer (see
/// [`Kind::Acquire`]).
pub(crate) fn acquire_invocation(
    prefix: &str,
    key: &LockKey,
    token: &HoldToken,
    lease: Duration,
    retention: Duration,
    claim: bool,
) -> ScriptInvocation<'static> {
    let mut invocation = scripts::ACQUIRE.key(lock_key(prefix, key));
    invocation
        .arg(token.as_str())
        .arg(millis(lease))
        .arg(millis(retention.max(lease)))
        .arg(holder_metadata());
    if !claim {
        invocation.arg("try");
    }
    invocation
}

/// The shared-acquire script's call for a new shared hold of `key`: a reader (`permits` 0) or
/// one of `permits` permits.
pub(crate) fn acquire_shared_invocation(
    prefix: &str,
    key: &LockKey,
    token: &HoldToken,
    lease: Duration,
    retention: Duration,
    permits: u32,
) -> ScriptInvocation<'static> {
    let mut invocation = scripts::ACQUIRE_SHARED.key(lock_key(prefix, key));
    invocation
        .arg(token.as_str())
        .arg(millis(lease))
        .arg(millis(retention.max(lease)))
        .arg(permits);
    invocation
}

/// The release script's call for the hold `token` of `key`, whose fencing token is `fence` (0
/// when unknown). `sharded`: announce on the sharded channel (Redis Cluster). (One server sends
/// releases through [`single`] and [`batch_command`].)
#[cfg(feature = "cluster")]
pub(crate) fn release_invocation(
    prefix: &str,
    key: &LockKey,
    token: &HoldToken,
    fence: u64,
    retention: Duration,
    sharded: bool,
) -> ScriptInvocation<'static> {
    let mut invocation = scripts::RELEASE.key(lock_key(prefix, key));
    invocation
        .key(channel(prefix, key))
        .arg(token.as_str())
        .arg(fence)
        .arg(millis(retention));
    if sharded {
        invocation.arg("sharded");
    }
    invocation
}

/// The renew script's call for `lease`'s hold: a new deadline, and the key kept for the
/// retention (at least the lease).
pub(crate) fn renew_invocation(
    prefix: &str,
    lease: &Lease,
    retention: Duration,
) -> ScriptInvocation<'static> {
    let mut invocation = scripts::RENEW.key(lock_key(prefix, &lease.key));
    invocation
        .arg(lease.token.as_str())
        .arg(millis(lease.duration))
        .arg(millis(retention.max(lease.duration)));
    invocation
}

/// The force-release script's call; `sharded`: announce on the sharded channel.
pub(crate) fn force_release_invocation(
    prefix: &str,
    key: &LockKey,
    sharded: bool,
) -> ScriptInvocation<'static> {
    let mut invocation = scripts::FORCE_RELEASE.key(lock_key(prefix, key));
    invocation.key(channel(prefix, key));
    if sharded {
        invocation.arg("sharded");
    }
    invocation
}

/// The inspect script's call.
pub(crate) fn inspect_invocation(prefix: &str, key: &LockKey) -> ScriptInvocation<'static> {
    scripts::INSPECT.key(lock_key(prefix, key))
}

/// `EVALSHA acquire` then `WAIT count timeout`, as one pipeline; after `ASKING` when `asking`
/// (a cluster node importing the slot runs the script only right after it).
pub(crate) fn acknowledged_pipeline(
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
/// script of `invocation` there if the server lacks it (a `NOSCRIPT` reply ran nothing, so sending
/// again is safe): the script's reply and `WAIT`'s.
pub(crate) async fn send_acknowledged(
    connection: &mut impl ConnectionLike,
    invocation: &ScriptInvocation<'_>,
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
    tokio::time::timeout(limit, invocation.load_async(connection))
        .await
        .map_err(|_| late())??;
    Ok(
        tokio::time::timeout(limit, connection.req_packed_commands(pipe, offset, 2))
            .await
            .map_err(|_| late())??,
    )
}

/// The acquire script's answer and `WAIT`'s count of acknowledging replicas.
pub(crate) fn parse_acknowledged(replies: Vec<Value>) -> Result<(Attempt, u32), Error> {
    let [attempt, acknowledged]: [Value; 2] = replies
        .try_into()
        .map_err(|replies: Vec<Value>| unexpected("acquire and WAIT", &Value::Array(replies)))?;
    let attempt = parse_acquire(attempt.extract_error()?)?;
    match acknowledged.extract_error()? {
        Value::Int(count) => Ok((attempt, u32::try_from(count).unwrap_or(0))),
        other => Err(unexpected("WAIT", &other)),
    }
}

/// What a group-commit request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A new hold: the lease and the key's retention, in milliseconds. `claim`: the caller will
    /// wait, so a refusal by readers or permits records it as a waiting writer that new ones
    /// queue behind; a single attempt (`try_lock`, a zero wait) claims nothing.
    Acquire {
        lease_ms: u64,
        retention_ms: u64,
        claim: bool,
    },
    /// A new shared hold (see `acquire_shared.lua`): a reader (`permits` 0) or one of `permits`
    /// permits, with the lease and the key's retention in milliseconds.
    AcquireShared {
        lease_ms: u64,
        retention_ms: u64,
        permits: u32,
    },
    /// The release of a hold with this fencing token (0 when unknown).
    Release { fencing_token: u64 },
}

impl Kind {
    pub(crate) fn is_release(self) -> bool {
        matches!(self, Self::Release { .. })
    }

    /// An acquisition of either kind: a grant that may need releasing again.
    pub(crate) fn is_acquire(self) -> bool {
        !self.is_release()
    }
}

/// One acquisition or release of the lock `P:{K}`, for the batch script.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) kind: Kind,
    /// `P:{K}`
    pub(crate) lock: String,
    pub(crate) token: HoldToken,
}

/// A request's own part of a script's reply: its status and value (see `batch.lua`).
pub(crate) type Answer = Result<(i64, Value), Error>;

/// The single-request script's call for `request` (see `acquire.lua` and `release.lua`): a call
/// of one request runs it, which costs the server less than the batch script's loop.
/// `retention_ms` is the tombstone's expiry where a release finds nothing.
pub(crate) fn single(request: &Request, retention_ms: u64) -> (&'static redis::Script, redis::Cmd) {
    let lock = &request.lock;
    let mut command = redis::Cmd::with_capacity(9, 192 + 2 * lock.len());
    match request.kind {
        Kind::Acquire {
            lease_ms,
            retention_ms,
            claim,
        } => {
            command
                .arg("EVALSHA")
                .arg(scripts::ACQUIRE.get_hash())
                .arg(1)
                .arg(lock)
                .arg(request.token.as_str())
                .arg(lease_ms)
                .arg(retention_ms)
                .arg(holder_metadata());
            if !claim {
                command.arg("try");
            }
            (&scripts::ACQUIRE, command)
        }
        Kind::AcquireShared {
            lease_ms,
            retention_ms,
            permits,
        } => {
            command
                .arg("EVALSHA")
                .arg(scripts::ACQUIRE_SHARED.get_hash())
                .arg(1)
                .arg(lock)
                .arg(request.token.as_str())
                .arg(lease_ms)
                .arg(retention_ms)
                .arg(permits);
            (&scripts::ACQUIRE_SHARED, command)
        }
        Kind::Release { fencing_token } => {
            command
                .arg("EVALSHA")
                .arg(scripts::RELEASE.get_hash())
                .arg(2)
                .arg(lock);
            suffixed(&mut command, lock, ":released");
            command
                .arg(request.token.as_str())
                .arg(fencing_token)
                .arg(retention_ms);
            (&scripts::RELEASE, command)
        }
    }
}

/// Adds the argument `lock` + `suffix` to `command`, written in place: a `format!` per request
/// cost about as much as the rest of building the command.
fn suffixed(command: &mut redis::Cmd, lock: &str, suffix: &str) {
    use redis::RedisWrite as _;
    use std::io::Write as _;
    let mut arg = command.writer_for_next_arg();
    // Writing into the command's own buffer cannot fail.
    let _ = arg.write_all(lock.as_bytes());
    let _ = arg.write_all(suffix.as_bytes());
}

/// The single-request script's reply as the batch script's status and value.
pub(crate) fn single_answer(request: &Request, reply: Value) -> Answer {
    match (request.kind, reply) {
        (Kind::Acquire { .. } | Kind::AcquireShared { .. }, Value::Array(items)) => {
            match items.as_slice() {
                [Value::Int(status), Value::Int(value)] => Ok((*status, Value::Int(*value))),
                _ => Err(Error::backend(format!(
                    "unexpected reply from the acquire script: {items:?}"
                ))),
            }
        }
        (Kind::Release { .. }, Value::Int(released)) => Ok((released, Value::Int(0))),
        (kind, reply) => Err(Error::backend(format!(
            "unexpected reply to {kind:?} from its script: {reply:?}"
        ))),
    }
}

/// `EVALSHA batch` for `requests`, the releases first: their locks, the holder metadata, the
/// lease and retention of the first acquisition (which most share; the locker's retention when
/// there is none), the number of releases, then each request's argument.
pub(crate) fn batch_command(requests: &[&Request], retention_ms: u64) -> redis::Cmd {
    let releases = requests
        .iter()
        .take_while(|request| request.kind.is_release())
        .count();
    debug_assert!(
        requests[releases..]
            .iter()
            .all(|request| !request.kind.is_release()),
        "the releases come first"
    );
    // The first acquisition's lease and retention, which most share, are the call's own.
    let shared = requests.get(releases).map(|request| request.kind);
    let (lease_ms, retention_ms) = match shared {
        Some(
            Kind::Acquire {
                lease_ms,
                retention_ms,
                ..
            }
            | Kind::AcquireShared {
                lease_ms,
                retention_ms,
                ..
            },
        ) => (lease_ms, retention_ms),
        _ => (0, retention_ms),
    };
    // Sized up front: the buffers would otherwise grow a few times per call.
    let names: usize = requests.iter().map(|request| request.lock.len()).sum();
    let mut command =
        redis::Cmd::with_capacity(7 + 2 * requests.len(), 128 + names + 56 * requests.len());
    command
        .arg("EVALSHA")
        .arg(scripts::BATCH.get_hash())
        .arg(requests.len());
    for request in requests {
        command.arg(&request.lock);
    }
    // Written beside each grant: a call of releases only has no use for it.
    let holder = if shared.is_some() {
        holder_metadata()
    } else {
        String::new()
    };
    // "+" after the number of releases: a key with more than one request in the call, whose
    // shared requests the script then decides together (it reads and writes such a key once).
    let repeated = requests.len() > 1 && {
        let mut seen = std::collections::HashSet::with_capacity(requests.len());
        !requests
            .iter()
            .all(|request| seen.insert(request.lock.as_str()))
    };
    let releases = if repeated {
        format!("{releases}+")
    } else {
        releases.to_string()
    };
    command
        .arg(holder)
        .arg(lease_ms)
        .arg(retention_ms)
        .arg(releases);
    let mut text = String::new();
    for request in requests {
        let token = request.token.as_str();
        match request.kind {
            Kind::Release { fencing_token } => {
                text.clear();
                let _ = write!(text, "-{fencing_token} {token}");
                command.arg(&text);
            }
            Kind::Acquire {
                lease_ms,
                retention_ms,
                claim,
            } if Some(request.kind) != shared || !claim => {
                text.clear();
                let _ = write!(text, "{token} {lease_ms} {retention_ms}");
                if !claim {
                    text.push_str(" try");
                }
                command.arg(&text);
            }
            Kind::Acquire { .. } => {
                command.arg(token);
            }
            Kind::AcquireShared {
                lease_ms: lease,
                retention_ms: retention,
                permits,
            } => {
                text.clear();
                if (lease, retention) == (lease_ms, retention_ms) {
                    // The call's lease and retention: the short form.
                    let _ = write!(text, "{token}*{permits}");
                } else {
                    let _ = write!(text, "{token} {lease} {retention} shared {permits}");
                }
                command.arg(&text);
            }
        }
    }
    command
}

/// Splits the batch script's reply into each request's status and value; `None` if the reply
/// does not have two items per request.
pub(crate) fn batch_answers(reply: Value, requests: &[&Request]) -> Option<Vec<Answer>> {
    let Value::Array(items) = reply else {
        return None;
    };
    if items.len() != 2 * requests.len() {
        return None;
    }
    let mut items = items.into_iter();
    let mut answers = Vec::with_capacity(requests.len());
    for request in requests {
        let (Some(status), Some(value)) = (items.next(), items.next()) else {
            unreachable!("two items per request, checked above");
        };
        answers.push(match (status, value) {
            (Value::Int(-1), failed) => {
                let failed = as_string(&failed).unwrap_or_else(|| format!("{failed:?}"));
                let (command, message) = failed.split_once(' ').unwrap_or(("", &failed));
                Err(crate::error::batched_request_failed(
                    command,
                    message,
                    &request.lock,
                ))
            }
            (Value::Int(status), value) => Ok((status, value)),
            (status, value) => Err(Error::backend(format!(
                "unexpected reply from the batch script: {status:?}, {value:?}"
            ))),
        });
    }
    Some(answers)
}

/// An acquisition's status and value (from the batch script, or `acquire.lua`'s pair).
pub(crate) fn attempt_from(status: i64, value: &Value) -> Option<Attempt> {
    match (status, value) {
        (1, Value::Int(token)) if *token > 0 => Some(Attempt::Acquired {
            fencing_token: *token as u64,
        }),
        (0, Value::Int(ttl)) => Some(Attempt::Held {
            ttl: u64::try_from(*ttl).ok().map(Duration::from_millis),
        }),
        (2, _) => Some(Attempt::ReleasedAlready),
        (3, Value::Int(permits)) => u32::try_from(*permits)
            .ok()
            .map(|permits| Attempt::Mismatch { permits }),
        _ => None,
    }
}

/// A group-commit acquisition's status and value (exclusive or shared) as an [`Attempt`]; `what`
/// names the script in the error for an answer of another shape.
pub(crate) fn attempt_answer(what: &str, (status, value): (i64, Value)) -> Result<Attempt, Error> {
    attempt_from(status, &value)
        .ok_or_else(|| unexpected(what, &Value::Array(vec![Value::Int(status), value])))
}

/// Parses `acquire.lua`'s reply.
pub(crate) fn parse_acquire(value: Value) -> Result<Attempt, Error> {
    if let Value::Array(items) = &value {
        if let [Value::Int(status), answer] = items.as_slice() {
            if let Some(attempt) = attempt_from(*status, answer) {
                return Ok(attempt);
            }
        }
    }
    Err(unexpected("acquire", &value))
}

/// Parses `release.lua`'s reply.
#[cfg(any(feature = "cluster", test))]
pub(crate) fn parse_release(value: Value) -> Result<Released, Error> {
    match value {
        Value::Int(1) => Ok(Released::Free),
        Value::Int(0) => Ok(Released::NotHeld),
        Value::Int(2) => Ok(Released::Again),
        other => Err(unexpected("release", &other)),
    }
}

/// Parses the force-release script's `{removed, last fencing token}`.
pub(crate) fn parse_force_release(reply: Value) -> Result<(bool, u64), Error> {
    if let Value::Array(items) = &reply {
        if let [Value::Int(removed), Value::Int(last)] = items.as_slice() {
            if *last >= 0 {
                return Ok((*removed == 1, *last as u64));
            }
        }
    }
    Err(unexpected("force-release", &reply))
}

/// Parses the inspect script's reply: `{}` free, `{ttl ms, hold}` held, `{-1, value, pttl}` a
/// value relock did not write (an error naming it).
pub(crate) fn parse_inspect(
    prefix: &str,
    key: &LockKey,
    value: Value,
) -> Result<Option<LockInfo>, Error> {
    let Value::Array(items) = &value else {
        return Err(unexpected("inspect", &value));
    };
    let (ttl, text) = match items.as_slice() {
        [] => return Ok(None),
        [Value::Int(-1), text, Value::Int(pttl)] => {
            let text = as_string(text).unwrap_or_else(|| format!("{text:?}"));
            let shown: String = text.chars().take(64).collect();
            let expires = match *pttl {
                -1 => "never expires".to_owned(),
                ms => format!("expires in {:?}", Duration::from_millis(ms.max(0) as u64)),
            };
            return Err(Error::backend(format!(
                "the Redis key `{}` holds a value relock did not write (`{shown}`); relock treats \
                 the lock as held until the key {expires}",
                lock_key(prefix, key)
            )));
        }
        [Value::Int(ttl), text] if *ttl > 0 => (*ttl as u64, as_string(text)),
        _ => return Err(unexpected("inspect", &value)),
    };
    let text = text.ok_or_else(|| unexpected("inspect", &value))?;
    if let Stored::Shared {
        fencing_token,
        permits,
        holders,
    } = Stored::parse(&text)
    {
        let mut tokens = shared_holders(holders);
        return Ok(Some(LockInfo {
            key: key.as_str().to_owned(),
            owner: tokens.next().unwrap_or_default().to_owned(),
            holds: 1 + tokens.count() as u64,
            ttl: Duration::from_millis(ttl),
            fencing_token,
            host: None,
            pid: None,
            acquired_at: None,
            mode: if permits == 0 {
                LockMode::Read
            } else {
                LockMode::Permits(permits)
            },
        }));
    }
    let Stored::Hold {
        token,
        fencing_token,
        holder,
        ..
    } = Stored::parse(&text)
    else {
        return Err(unexpected("inspect", &value));
    };
    let mut info = LockInfo {
        key: key.as_str().to_owned(),
        owner: token.to_owned(),
        holds: 1,
        ttl: Duration::from_millis(ttl),
        fencing_token,
        host: None,
        pid: None,
        acquired_at: None,
        mode: LockMode::Exclusive,
    };
    parse_holder(holder, &mut info);
    Ok(Some(info))
}

/// The `SCAN MATCH` glob of the locks whose keys match `pattern`.
pub(crate) fn scan_glob(prefix: &str, pattern: &KeyPattern) -> String {
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
pub(crate) fn found_keys(prefix: &str, pattern: &KeyPattern, names: &[String]) -> Vec<LockKey> {
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

/// `"<pid> <now in ms> <host>"`: who takes a lock, for `inspect`. Built by hand: it runs on
/// every acquisition.
pub(crate) fn holder_metadata() -> String {
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
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

pub(crate) fn unexpected(script: &str, value: &Value) -> Error {
    Error::backend(format!(
        "unexpected reply from the {script} script: {value:?}"
    ))
}

pub(crate) fn as_string(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(text) => Some(text.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    fn test_key() -> LockKey {
        LockKey::new("order:42").unwrap()
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
    fn acquire_reply_released_already() {
        let reply = Value::Array(vec![Value::Int(2), Value::Int(0)]);
        assert_eq!(parse_acquire(reply).unwrap(), Attempt::ReleasedAlready);
    }

    #[test]
    fn acquire_reply_malformed_is_a_backend_error() {
        for reply in [
            Value::Nil,
            Value::Int(1),
            Value::Array(vec![Value::Int(1), Value::Int(0)]),
            Value::Array(vec![Value::Int(1), Value::Int(5), Value::Int(1)]),
            Value::Array(vec![Value::Int(4), Value::Int(1)]),
            Value::Array(vec![Value::Int(3), Value::Int(-1)]),
        ] {
            assert!(parse_acquire(reply).unwrap_err().is_backend());
        }
    }

    #[test]
    fn acquire_reply_mismatch_names_the_permits_in_use() {
        let reply = Value::Array(vec![Value::Int(3), Value::Int(4)]);
        assert_eq!(
            parse_acquire(reply).unwrap(),
            Attempt::Mismatch { permits: 4 }
        );
    }

    #[test]
    fn shared_values_parse_with_their_holders() {
        let other = "fedcba9876543210fedcba9876543210";
        let value = format!(
            "*1764000000000042 4 0 1 {TOKEN} 1764000030000 1764000000000041 {other} 1764000031000 1764000000000042"
        );
        let Stored::Shared {
            fencing_token,
            permits,
            holders,
        } = Stored::parse(&value)
        else {
            panic!("not shared: {value}");
        };
        assert_eq!(fencing_token, 1_764_000_000_000_042);
        assert_eq!(permits, 4);
        assert_eq!(shared_holders(holders).collect::<Vec<_>>(), [TOKEN, other]);
        assert!(matches!(
            Stored::parse("*1 0 0 0"),
            Stored::Shared { permits: 0, .. }
        ));
        for text in ["*", "*1 0 0", "*1 0 0 2", "*x 0 0 0", "*1 -1 0 0"] {
            assert_eq!(Stored::parse(text), Stored::Unknown, "{text}");
        }
    }

    #[test]
    fn inspect_reply_for_readers() {
        let value = format!("*1764000000000042 0 0 0 {TOKEN} 1764000030000 1764000000000042");
        let reply = Value::Array(vec![Value::Int(900), bulk(&value)]);
        let info = parse_inspect("relock", &test_key(), reply)
            .unwrap()
            .unwrap();
        assert_eq!(info.mode, LockMode::Read);
        assert_eq!(info.holds, 1);
        assert_eq!(info.owner, TOKEN);
        assert_eq!(info.fencing_token, 1_764_000_000_000_042);
        assert_eq!(info.ttl, Duration::from_millis(900));
    }

    #[test]
    fn release_replies() {
        assert_eq!(parse_release(Value::Int(1)).unwrap(), Released::Free);
        assert_eq!(parse_release(Value::Int(0)).unwrap(), Released::NotHeld);
        assert_eq!(parse_release(Value::Int(2)).unwrap(), Released::Again);
        assert!(parse_release(Value::Int(3)).is_err());
        assert!(parse_release(Value::Nil).is_err());
    }

    #[test]
    fn values_parse_into_holds_tombstones_and_unknowns() {
        let hold = format!("{TOKEN}+1764000000000042 1764000030000 77 1700000000123 box");
        assert_eq!(
            Stored::parse(&hold),
            Stored::Hold {
                token: TOKEN,
                refused: true,
                fencing_token: 1_764_000_000_000_042,
                deadline_ms: 1_764_000_030_000,
                holder: "77 1700000000123 box",
            }
        );
        let tombstone = format!("-1764000000000042 {TOKEN}");
        assert_eq!(
            Stored::parse(&tombstone),
            Stored::Tombstone {
                fencing_token: 1_764_000_000_000_042,
                released: TOKEN,
            }
        );
        for text in [
            "",
            "-",
            "-12",
            "-x1 0123456789abcdef0123456789abcdef",
            "-+1 0123456789abcdef0123456789abcdef",
            "short 5",
            &format!("{TOKEN} notanumber 5"),
            &format!("{TOKEN}x1764000000000042 5 77 1 box"),
            &format!("{TOKEN} 1764000000000042"),
            "0123456789abcdef0123456789abcdeg 1 2",
        ] {
            assert_eq!(Stored::parse(text), Stored::Unknown, "{text}");
        }
    }

    #[test]
    fn inspect_reply_free() {
        assert_eq!(
            parse_inspect("relock", &test_key(), Value::Array(vec![])).unwrap(),
            None
        );
    }

    #[test]
    fn inspect_reply_held() {
        let reply = Value::Array(vec![
            Value::Int(2500),
            bulk(&format!(
                "{TOKEN} 1764000000000042 1764000002500 77 1700000000123 box"
            )),
        ]);
        let info = parse_inspect("relock", &test_key(), reply)
            .unwrap()
            .unwrap();
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
    fn inspect_names_a_value_relock_did_not_write() {
        let reply = Value::Array(vec![Value::Int(-1), bulk("someone else's"), Value::Int(-1)]);
        let err = parse_inspect("relock", &test_key(), reply).unwrap_err();
        let text = std::error::Error::source(&err).unwrap().to_string();
        assert!(text.contains("relock:{order:42}"), "{text}");
        assert!(text.contains("someone else's"), "{text}");
        assert!(text.contains("never expires"), "{text}");
    }

    #[test]
    fn holder_metadata_round_trips() {
        let text = format!("{TOKEN} 1 2 {}", holder_metadata());
        let reply = Value::Array(vec![Value::Int(1), bulk(&text)]);
        let info = parse_inspect("relock", &test_key(), reply)
            .unwrap()
            .unwrap();
        assert_eq!(info.pid, Some(std::process::id()));
        assert_eq!(info.host.as_deref(), Some(HOLDER.host.as_str()));
        let age = SystemTime::now()
            .duration_since(info.acquired_at.unwrap())
            .unwrap();
        assert!(age < Duration::from_secs(5));
    }

    #[test]
    fn key_names_share_the_hash_tag() {
        let key = LockKey::new("order:42").unwrap();
        assert_eq!(lock_key("app", &key), "app:{order:42}");
        assert_eq!(channel("app", &key), "app:{order:42}:released");
    }

    #[test]
    fn lease_is_sent_in_whole_milliseconds_never_zero() {
        assert_eq!(millis(Duration::from_micros(10)), 1);
        assert_eq!(millis(Duration::from_secs(30)), 30_000);
    }

    /// A command's arguments, as bytes.
    fn arguments(command: &redis::Cmd) -> Vec<Vec<u8>> {
        command
            .args_iter()
            .map(|arg| match arg {
                redis::Arg::Simple(bytes) => bytes.to_vec(),
                _ => Vec::new(),
            })
            .collect()
    }

    #[test]
    fn a_batched_release_carries_the_tombstone_it_writes() {
        let token = HoldToken::random();
        let release = Request {
            kind: Kind::Release { fencing_token: 42 },
            lock: "relock:{k}".into(),
            token: token.clone(),
        };
        let args = arguments(&batch_command(&[&release], 600_000));
        assert_eq!(
            args.last().unwrap(),
            format!("-42 {}", token.as_str()).as_bytes()
        );
        // No acquisition: no lease, the locker's retention (a tombstone written where nothing was).
        assert_eq!(args[5], b"0");
        assert_eq!(args[6], b"600000");
        // One release, no key twice: no "+".
        assert_eq!(args[7], b"1");
    }

    /// A call with a key more than once is marked "+" after its number of releases (the script
    /// then decides that key's shared requests together); a call of distinct keys is not.
    #[test]
    fn a_batch_with_a_key_twice_is_marked() {
        let request = |kind: Kind, lock: &str| Request {
            kind,
            lock: lock.into(),
            token: HoldToken::random(),
        };
        let shared = Kind::AcquireShared {
            lease_ms: 30_000,
            retention_ms: 600_000,
            permits: 0,
        };
        let release = Kind::Release { fencing_token: 7 };
        let marks = |requests: &[&Request]| {
            let args = arguments(&batch_command(requests, 600_000));
            String::from_utf8(args[6 + requests.len()].clone()).unwrap()
        };
        let (a, b) = (
            request(release, "relock:{a}"),
            request(shared, "relock:{a}"),
        );
        let c = request(shared, "relock:{c}");
        assert_eq!(marks(&[&a, &b]), "1+");
        assert_eq!(marks(&[&a, &c]), "1");
        assert_eq!(marks(&[&b, &c]), "0");
        assert_eq!(marks(&[&b]), "0");
    }
}
