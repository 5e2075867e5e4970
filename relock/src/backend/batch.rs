//! Group commit: the acquisitions and releases bound for one Redis server go out as one script
//! call when they queue up.
//!
//! A request that finds no call in flight is sent at once, alone, from its caller's future: an
//! idle process adds no latency. Requests arriving while calls are in flight queue up; with one
//! call in flight, the queue goes out at once as a second call, and with [`MAX_CALLS`] in flight
//! it waits until one returns, then goes out (up to [`MAX_BATCH`] requests), each such call from
//! a task of its own. A call of several requests is one run of the `batch` script, which runs
//! them one after another: the releases first, then the acquisitions, each in the order they
//! queued (a call of one request runs that request's own script). Each request keeps its own
//! reply, its own errors and its own cancellation:
//!
//! * the script runs each request exactly as a call of its own would (same reads, same writes,
//!   same fencing counter, same release announcement), so two requests for one key in one call
//!   see each other's effects as two calls would. The requests of a call were all in flight at
//!   once, so running the releases first is an order they could have run in, and the one that
//!   grants a lock released and asked for in the same call;
//! * a request whose caller went away before it was sent is left out (its outcome is then known:
//!   nothing happened); one whose caller goes away after it was sent is the same unknown outcome
//!   as a cancelled call, handled the same way by the caller's guards (an acquisition is released
//!   in the background, a release is retried). Calls sent from tasks of their own are not ordered
//!   among themselves, so that background release may run before the grant it undoes: an
//!   acquisition that finds its caller gone when its call returns (granted, or its call failed)
//!   is released again, after it;
//! * a call that fails (the connection dropped, the server refused the script) fails every
//!   request it carried, with the same error: each is an unknown outcome, as above.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use redis::Value;
use tokio::sync::oneshot;

use super::redis::{as_string, holder_metadata, lock, Connection, Failure};
use crate::error::Error;
use crate::scripts;
use crate::token::HoldToken;

/// The most requests one script call carries: a call blocks the server while it runs, and a
/// bigger one would delay every other client's commands for longer.
pub(crate) const MAX_BATCH: usize = 128;

/// Script calls in flight at once on the connection: two keep client and server both busy (one
/// call's replies are being handled while the next runs).
pub(crate) const MAX_CALLS: usize = 2;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A new hold: the lease and the fencing counter's retention, in milliseconds.
    Acquire {
        lease_ms: u64,
        retention_ms: u64,
    },
    Release,
}

/// One acquisition or release of the lock `P:{K}`.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) kind: Kind,
    /// `P:{K}`
    pub(crate) lock: String,
    pub(crate) token: HoldToken,
}

/// A request's own part of the script's reply: its status and value (see `batch.lua`).
pub(crate) type Answer = Result<(i64, Value), Error>;

struct Queued {
    request: Request,
    /// `None` for a release nobody waits for (of a grant whose caller is gone).
    answer: Option<oneshot::Sender<Answer>>,
}

/// The queue of one connection.
#[derive(Default)]
pub(crate) struct Batcher {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Script calls in flight (or about to be sent).
    calls: usize,
    queue: Vec<Queued>,
}

impl State {
    /// The next call's requests: the oldest queued ones whose callers still wait for them.
    fn next_batch(&mut self) -> Vec<Queued> {
        self.queue.retain(|queued| {
            queued
                .answer
                .as_ref()
                .is_none_or(|answer| !answer.is_closed())
        });
        let take = self.queue.len().min(MAX_BATCH);
        self.queue.drain(..take).collect()
    }
}

impl Batcher {
    /// Sends `request` at once, alone, when no call is in flight (an idle process adds no
    /// latency); with one in flight, sends what is queued and `request` as a second call from a
    /// task of its own; with [`MAX_CALLS`] in flight, queues it for the next call. Resolves with
    /// its answer.
    ///
    /// Only the first case runs the call in the caller's future, so at most one call depends on
    /// its caller polling it: a caller that keeps its future without polling it (a `select!`
    /// over `&mut fut`) delays its own call's hand-off, never the queue, which the other call
    /// keeps draining.
    pub(crate) async fn submit(
        self: &Arc<Self>,
        connection: &Arc<Connection>,
        request: Request,
    ) -> Answer {
        let next = {
            let mut state = lock(&self.state);
            if state.calls == 0 {
                state.calls = 1;
                Err(request)
            } else {
                let (sender, answer) = oneshot::channel();
                state.queue.push(Queued {
                    request,
                    answer: Some(sender),
                });
                if state.calls < MAX_CALLS {
                    state.calls += 1;
                    Ok((answer, Some(state.next_batch())))
                } else {
                    Ok((answer, None))
                }
            }
        };
        match next {
            Ok((answer, batch)) => {
                if let Some(batch) = batch {
                    self.spawn_flush(connection, batch);
                }
                answer.await.unwrap_or_else(|_| {
                    Err(Error::backend(
                        "the script call carrying this request was dropped (its runtime shut \
                         down); its outcome is unknown",
                    ))
                })
            }
            Err(request) => {
                // Dropped when the call returns, or when this future is dropped mid-call: either
                // way the requests queued meanwhile go out next.
                let _slot = Slot {
                    batcher: self.clone(),
                    connection: connection.clone(),
                };
                match call(connection, &[&request]).await {
                    Ok(mut answers) => answers.pop().expect("one answer per request"),
                    Err(failure) => Err(failure.into()),
                }
            }
        }
    }

    /// Sends `batch` as one call from a task of its own, holding one of the [`MAX_CALLS`]
    /// places (taken by the caller).
    fn spawn_flush(self: &Arc<Self>, connection: &Arc<Connection>, batch: Vec<Queued>) {
        let slot = Slot {
            batcher: self.clone(),
            connection: connection.clone(),
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(flush(slot, batch))),
            Err(_) => {
                // No runtime to send from (this one is being torn down): nothing was sent, so
                // each caller learns that nothing happened. Dropping `slot` does the same for
                // the rest of the queue.
                for queued in batch {
                    if let Some(answer) = queued.answer {
                        let _ = answer.send(Err(Error::backend(
                            "no Tokio runtime is left to send this request from; it was not sent",
                        )));
                    }
                }
            }
        }
    }
}

/// One of the [`MAX_CALLS`] calls in flight. Dropped (the call returned, or its future was
/// dropped), it sends what queued meanwhile as the next call, from a task of its own, or frees
/// its place when nothing did.
struct Slot {
    batcher: Arc<Batcher>,
    connection: Arc<Connection>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let batch = {
            let mut state = lock(&self.batcher.state);
            let batch = state.next_batch();
            if batch.is_empty() {
                state.calls -= 1;
                return;
            }
            batch
        };
        self.batcher.spawn_flush(&self.connection, batch);
    }
}

/// Sends `batch` as one call and answers each request.
async fn flush(slot: Slot, mut batch: Vec<Queued>) {
    // The batch script takes the releases first (see `batch.lua`); answers come in this order.
    batch.sort_by_key(|queued| matches!(queued.request.kind, Kind::Acquire { .. }));
    let requests: Vec<&Request> = batch.iter().map(|queued| &queued.request).collect();
    let result = call(&slot.connection, &requests).await;
    drop(requests);
    let mut orphans = Vec::new();
    // A grant whose caller went away after it was sent: its guard released the token in the
    // background already, but that release may have run first (calls sent from tasks of their
    // own are not ordered), so it is released again, after the grant. A call that failed may
    // have run all the same (the connection dropped after sending), so each of its
    // acquisitions whose caller is gone is released again too.
    let mut orphan = |request: Request| {
        orphans.push(Queued {
            request: Request {
                kind: Kind::Release,
                ..request
            },
            answer: None,
        });
    };
    match result {
        Ok(answers) => {
            for (queued, answer) in batch.into_iter().zip(answers) {
                let granted = matches!(
                    (&queued.request.kind, &answer),
                    (Kind::Acquire { .. }, Ok((1, _)))
                );
                let delivered = match queued.answer {
                    Some(sender) => sender.send(answer).is_ok(),
                    None => true,
                };
                if granted && !delivered {
                    orphan(queued.request);
                }
            }
        }
        Err(failure) => {
            for queued in batch {
                let delivered = match queued.answer {
                    Some(sender) => sender.send(Err(failure.to_error())).is_ok(),
                    None => true,
                };
                if matches!(queued.request.kind, Kind::Acquire { .. }) && !delivered {
                    orphan(queued.request);
                }
            }
        }
    }
    if !orphans.is_empty() {
        lock(&slot.batcher.state).queue.extend(orphans);
    }
    drop(slot);
}

/// One call for `requests`, loading its script first if the server lacks it (a `NOSCRIPT`
/// reply ran nothing, so sending again is safe): each request's answer. A lone request runs the
/// single-request script (`acquire.lua` or `release.lua`), which costs the server about a fifth
/// less than the batch script's loop around the same calls.
async fn call(connection: &Connection, requests: &[&Request]) -> Result<Vec<Answer>, Failure> {
    if let [request] = requests {
        let (script, command) = single(request);
        return match send_script(connection, script, &command).await {
            Ok(reply) => Ok(vec![single_answer(request, reply)]),
            // The request's own failure (a foreign value at its key), as the batch script
            // reports one: not the connection's.
            Err(Failure::Redis(err)) if err.code() == Some("WRONGTYPE") => {
                let command = match request.kind {
                    Kind::Acquire { .. } => "SET",
                    Kind::Release => "GET",
                };
                Ok(vec![Err(crate::error::batched_request_failed(
                    command,
                    &err.to_string(),
                    &request.lock,
                ))])
            }
            Err(failure) => Err(failure),
        };
    }
    let reply = send_script(connection, &scripts::BATCH, &command(requests)).await?;
    answers(reply, requests)
}

/// Sends `command`, a call of `script`; loads the script and sends again on `NOSCRIPT`.
async fn send_script(
    connection: &Connection,
    script: &redis::Script,
    command: &redis::Cmd,
) -> Result<Value, Failure> {
    let send = async || {
        connection
            .send(async |connection| command.query_async::<Value>(connection).await)
            .await
    };
    match send().await {
        Err(Failure::Redis(err))
            if err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
        {
            connection
                .send(async |connection| script.load_async(connection).await)
                .await?;
            send().await
        }
        reply => reply,
    }
}

/// The single-request script's call for `request` (see `acquire.lua` and `release.lua`).
fn single(request: &Request) -> (&'static redis::Script, redis::Cmd) {
    let lock = &request.lock;
    let (script, second_key): (&'static redis::Script, _) = match request.kind {
        Kind::Acquire { .. } => (&scripts::ACQUIRE, ":fence"),
        Kind::Release => (&scripts::RELEASE, ":released"),
    };
    let mut command = redis::Cmd::with_capacity(9, 192 + 2 * lock.len());
    command
        .arg("EVALSHA")
        .arg(script.get_hash())
        .arg(2)
        .arg(lock);
    suffixed(&mut command, lock, second_key);
    command.arg(request.token.as_str());
    if let Kind::Acquire {
        lease_ms,
        retention_ms,
    } = request.kind
    {
        command
            .arg(lease_ms)
            .arg(retention_ms)
            .arg(holder_metadata());
    }
    (script, command)
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
fn single_answer(request: &Request, reply: Value) -> Answer {
    match (request.kind, reply) {
        (Kind::Acquire { .. }, Value::Array(items)) => match items.as_slice() {
            [Value::Int(status), Value::Int(value)] => Ok((*status, Value::Int(*value))),
            _ => Err(Error::backend(format!(
                "unexpected reply from the acquire script: {items:?}"
            ))),
        },
        (Kind::Release, Value::Int(released)) => Ok((released, Value::Int(0))),
        (kind, reply) => Err(Error::backend(format!(
            "unexpected reply to {kind:?} from its script: {reply:?}"
        ))),
    }
}

/// `EVALSHA batch` for `requests`, the releases first: their locks, the holder metadata, the
/// lease and retention of the first acquisition (which most share), the number of releases,
/// then each request's argument.
fn command(requests: &[&Request]) -> redis::Cmd {
    let releases = requests
        .iter()
        .take_while(|request| request.kind == Kind::Release)
        .count();
    debug_assert!(
        requests[releases..]
            .iter()
            .all(|request| request.kind != Kind::Release),
        "the releases come first"
    );
    let shared = requests.get(releases).map(|request| request.kind);
    let (lease_ms, retention_ms) = match shared {
        Some(Kind::Acquire {
            lease_ms,
            retention_ms,
        }) => (lease_ms, retention_ms),
        _ => (0, 0),
    };
    // Sized up front: the buffers would otherwise grow a few times per call.
    let names: usize = requests.iter().map(|request| request.lock.len()).sum();
    let mut command =
        redis::Cmd::with_capacity(7 + 2 * requests.len(), 128 + names + 48 * requests.len());
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
    command
        .arg(holder)
        .arg(lease_ms)
        .arg(retention_ms)
        .arg(releases);
    let mut text = String::new();
    for request in requests {
        let token = request.token.as_str();
        match request.kind {
            Kind::Acquire {
                lease_ms,
                retention_ms,
            } if Some(request.kind) != shared => {
                text.clear();
                let _ = write!(text, "{token} {lease_ms} {retention_ms}");
                command.arg(&text);
            }
            Kind::Acquire { .. } | Kind::Release => {
                command.arg(token);
            }
        }
    }
    command
}

/// Splits the script's reply into each request's status and value.
fn answers(reply: Value, requests: &[&Request]) -> Result<Vec<Answer>, Failure> {
    let unexpected = |reply: &Value| {
        Failure::Unexpected(format!(
            "unexpected reply from the batch script for {} requests: {reply:?}",
            requests.len()
        ))
    };
    let Value::Array(items) = reply else {
        return Err(unexpected(&reply));
    };
    if items.len() != 2 * requests.len() {
        return Err(unexpected(&Value::Array(items)));
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
    Ok(answers)
}
