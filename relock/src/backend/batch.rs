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
//!   acquisition that finds its caller gone when its call returns (granted, answered with an
//!   error, or its call failed) is released again, after it;
//! * a call that fails (the connection dropped, the server refused the script) fails every
//!   request it carried, with the same error: each is an unknown outcome, as above.
//!
//! The queue does not know how a call reaches Redis: a [`Carrier`] sends it. On one server that is
//! the shared [`Connection`] (the batch script, or a lone request's own script); on a Redis
//! Cluster, a direct connection to one master, with one queue per master (see `cluster.rs`).

use std::future::Future;
use std::sync::{Arc, Mutex};

use redis::Value;
use tokio::sync::oneshot;

use super::redis::{lock, Connection, Failure};
use crate::error::Error;
use crate::protocol::{self, Answer, Kind, Request};
use crate::scripts;

/// The most requests one script call carries: a call blocks the server while it runs, and a
/// bigger one would delay every other client's commands for longer.
pub(crate) const MAX_BATCH: usize = 128;

/// Script calls in flight at once on the connection: two keep client and server both busy (one
/// call's replies are being handled while the next runs).
pub(crate) const MAX_CALLS: usize = 2;

/// How one call of requests reaches Redis.
pub(super) trait Carrier: Send + Sync + 'static {
    /// One call for `requests` (the releases first): each request's answer, in order. `Err` when
    /// the call as a whole failed: every request's outcome is then unknown. An answer that is an
    /// error may be an unknown outcome too (a cluster request resent after its node connection
    /// dropped, whose resend failed as well): an acquisition answered with an error whose caller
    /// has gone is released again.
    fn call<'a>(
        &'a self,
        requests: &'a [&'a Request],
        retention_ms: u64,
    ) -> impl Future<Output = Result<Vec<Answer>, Failure>> + Send + 'a;
}

impl Carrier for Connection {
    fn call<'a>(
        &'a self,
        requests: &'a [&'a Request],
        retention_ms: u64,
    ) -> impl Future<Output = Result<Vec<Answer>, Failure>> + Send + 'a {
        call(self, requests, retention_ms)
    }
}

struct Queued {
    request: Request,
    /// `None` for a release nobody waits for (of a grant whose caller is gone).
    answer: Option<oneshot::Sender<Answer>>,
}

/// The queue of one connection (one server's, or one cluster master's), sent by the carrier `C`.
pub(super) struct Batcher<C> {
    state: Mutex<State>,
    /// The locker's retention in milliseconds: the expiry of a tombstone that a release writes
    /// where it finds nothing (its acquisition may still be on its way).
    retention_ms: u64,
    carrier: std::marker::PhantomData<fn(&C)>,
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

impl<C: Carrier> Batcher<C> {
    pub(crate) fn new(retention_ms: u64) -> Self {
        Self {
            state: Mutex::default(),
            retention_ms,
            carrier: std::marker::PhantomData,
        }
    }

    /// Sends `request` at once, alone, when no call is in flight (an idle process adds no
    /// latency); with one in flight, sends what is queued and `request` as a second call from a
    /// task of its own; with [`MAX_CALLS`] in flight, queues it for the next call. Resolves with
    /// its answer.
    ///
    /// Only the first case runs the call in the caller's future, so at most one call depends on
    /// its caller polling it: a caller that keeps its future without polling it (a `select!`
    /// over `&mut fut`) delays its own call's hand-off, never the queue, which the other call
    /// keeps draining.
    pub(crate) async fn submit(self: &Arc<Self>, connection: &Arc<C>, request: Request) -> Answer {
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
                match connection.call(&[&request], self.retention_ms).await {
                    Ok(mut answers) => answers.pop().expect("one answer per request"),
                    Err(failure) => Err(failure.into()),
                }
            }
        }
    }

    /// Sends `batch` as one call from a task of its own, holding one of the [`MAX_CALLS`]
    /// places (taken by the caller).
    fn spawn_flush(self: &Arc<Self>, connection: &Arc<C>, batch: Vec<Queued>) {
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
struct Slot<C: Carrier> {
    batcher: Arc<Batcher<C>>,
    connection: Arc<C>,
}

impl<C: Carrier> Drop for Slot<C> {
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
async fn flush<C: Carrier>(slot: Slot<C>, mut batch: Vec<Queued>) {
    // The batch script takes the releases first (see `batch.lua`); answers come in this order.
    batch.sort_by_key(|queued| !queued.request.kind.is_release());
    let requests: Vec<&Request> = batch.iter().map(|queued| &queued.request).collect();
    let result = slot
        .connection
        .call(&requests, slot.batcher.retention_ms)
        .await;
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
                kind: Kind::Release { fencing_token: 0 },
                ..request
            },
            answer: None,
        });
    };
    match result {
        Ok(answers) => {
            for (queued, answer) in batch.into_iter().zip(answers) {
                // Granted, or answered with an error that may hide a grant (see `Carrier`).
                let granted = queued.request.kind.is_acquire()
                    && !matches!(answer, Ok((status, _)) if status != 1);
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
                if queued.request.kind.is_acquire() && !delivered {
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
async fn call(
    connection: &Connection,
    requests: &[&Request],
    retention_ms: u64,
) -> Result<Vec<Answer>, Failure> {
    if let [request] = requests {
        let (script, command) = protocol::single(request, retention_ms);
        return match send_script(connection, script, &command).await {
            Ok(reply) => Ok(vec![protocol::single_answer(request, reply)]),
            // The request's own failure (a foreign value at its key, the fencing token's limit),
            // as the batch script reports one: not the connection's.
            Err(Failure::Redis(err)) if is_request_failure(&err) => {
                Ok(vec![Err(request_failure(&err, request))])
            }
            Err(failure) => Err(failure),
        };
    }
    let reply = send_script(
        connection,
        &scripts::BATCH,
        &protocol::batch_command(requests, retention_ms),
    )
    .await?;
    protocol::batch_answers(reply, requests).ok_or_else(|| {
        Failure::Unexpected(format!(
            "unexpected reply from the batch script for {} requests",
            requests.len()
        ))
    })
}

/// An error a script raised for its own request (a key of another type, the fencing token's
/// limit), not one of the connection or the server as a whole.
pub(super) fn is_request_failure(err: &redis::RedisError) -> bool {
    err.code() == Some("WRONGTYPE") || err.to_string().contains("relock: ")
}

/// `err`, raised by `request`'s own script, as the batch script reports such a failure.
pub(super) fn request_failure(err: &redis::RedisError, request: &Request) -> Error {
    let message = match (err.code(), err.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        _ => err.to_string(),
    };
    let command = crate::error::script_command(&message).unwrap_or_default();
    crate::error::batched_request_failed(&command, &message, &request.lock)
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
