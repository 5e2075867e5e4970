//! Release notifications: one dedicated pub/sub connection per `Locker`, shared by every waiter.
//!
//! Waiters on one key share one subscription (counted; unsubscribed when the last leaves). A
//! release message wakes every exclusive and read waiter of the key ([`Released::all`]), but only
//! as many permit waiters ([`Released::one`]) as it announces returned shared holds (its payload,
//! a count; every permit waiter for an empty one — see `wait.rs` for how a wake-up that was not
//! used is passed on). A `Locker`'s waiters that come while others of it wait for the key find
//! the subscription at hand ([`Subscriber::subscribed`]) and sleep after their first refusal. A
//! single task owns the connection and handles subscribe/unsubscribe requests in order, so an
//! unsubscribe can never overtake a later subscribe to the same channel. The task counts a waiter
//! only by building its [`Subscription`], whose drop un-counts it: one built for a waiter that was
//! cancelled meanwhile is dropped instead of handed over, so the count cannot drift. When the
//! connection drops, every waiter is woken to retry (messages may have been missed), requests fail
//! fast so waiters fall back to TTL-bounded retries, and the task reconnects with backoff and
//! re-subscribes what is still wanted.
//!
//! On Redis Cluster the channels are sharded (`SSUBSCRIBE`), on a cluster connection of their own
//! whose client re-subscribes each channel on the node serving its slot after a reconnection or a
//! topology change. A re-subscription is confirmed by an `ssubscribe` push, which wakes the
//! channel's waiters (a release may have been announced meanwhile); an unrequested `sunsubscribe`
//! (the slot moved) is answered by subscribing again.
//!
//! Behind Redis Sentinel the connection goes to the master the sentinels name, resolved on every
//! (re)connection, and is dropped as soon as a newer master is learned (a `+switch-master`, or a
//! resolution by the command connection).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;

use crate::error::Error;

const FIRST_RETRY: Duration = Duration::from_millis(50);
const LONGEST_RETRY: Duration = Duration::from_secs(2);

/// Handle to the subscriber task of one `Locker`; the task ends when every handle is gone.
#[derive(Debug, Clone)]
pub(crate) struct Subscriber {
    requests: mpsc::UnboundedSender<Request>,
    /// The channels the connection is subscribed to, as the task last left them: a hint, which
    /// [`Subscriber::subscribe`] confirms.
    live: Arc<Live>,
}

/// The channels a subscriber task's connection is subscribed to, readable without asking the
/// task.
#[derive(Debug, Default)]
struct Live {
    /// How many channels are in `channels`, read before taking the lock.
    count: AtomicUsize,
    channels: Mutex<HashSet<String>>,
}

impl Live {
    fn update(&self, change: impl FnOnce(&mut HashSet<String>)) {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        change(&mut channels);
        self.count.store(channels.len(), Ordering::Release);
    }
}

#[derive(Debug)]
enum Request {
    Subscribe {
        channel: String,
        reply: oneshot::Sender<Result<Subscription, Error>>,
    },
    Unsubscribe {
        channel: String,
    },
}

/// A confirmed subscription to one release channel; unsubscribes when dropped.
#[derive(Debug)]
pub(crate) struct Subscription {
    channel: String,
    released: Arc<Released>,
    requests: mpsc::UnboundedSender<Request>,
}

impl Subscription {
    /// The wake-ups of the channel's waiters.
    pub(crate) fn released(&self) -> &Arc<Released> {
        &self.released
    }
}

/// The wake-ups of one channel's waiters in this `Locker`.
#[derive(Debug, Default)]
pub(crate) struct Released {
    /// Every exclusive and read waiter: `notify_waiters` on every release message and every
    /// reconnection (a writer's release lets every reader in).
    pub(crate) all: Arc<Notify>,
    /// Permit waiters: `notify_one` per shared hold a release message returned, which goes to
    /// the waiter that has slept longest; `notify_waiters` on any other message and on a
    /// reconnection.
    pub(crate) one: Arc<Notify>,
}

impl Released {
    /// A release message: every exclusive and read waiter, and as many permit waiters as the
    /// message says shared holds were returned (`"1"`, or the count of one call's releases of
    /// the key); every permit waiter for any other message (an exclusive hold's release, a
    /// force-release: anything may be free).
    fn message(&self, payload: &[u8]) {
        self.all.notify_waiters();
        match returned(payload) {
            Some(returned) => {
                for _ in 0..returned {
                    self.one.notify_one();
                }
            }
            None => self.one.notify_waiters(),
        }
    }

    /// Messages may have been missed: every waiter looks again.
    fn everyone(&self) {
        self.all.notify_waiters();
        self.one.notify_waiters();
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let _ = self.requests.send(Request::Unsubscribe {
            channel: std::mem::take(&mut self.channel),
        });
    }
}

/// The number of shared holds a release message says were returned: a decimal count from 1; a
/// larger count than any `Locker` has waiters for is taken as that many (a `Notify` keeps one
/// wake-up for a waiter to come, no more).
fn returned(payload: &[u8]) -> Option<usize> {
    const MOST: usize = 4096;
    if payload.is_empty() || payload.len() > 9 || !payload.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let count = payload
        .iter()
        .fold(0, |count, digit| count * 10 + usize::from(digit - b'0'));
    (count > 0).then_some(count.min(MOST))
}

/// Where release notifications come from.
#[derive(Debug, Clone)]
pub(crate) enum Notifications {
    /// Plain pub/sub on one server.
    Server(Box<redis::Client>),
    /// Sharded pub/sub on a Redis Cluster, through these seed nodes.
    #[cfg(feature = "cluster")]
    Cluster {
        seeds: Vec<String>,
        tls: crate::tls::TlsSettings,
    },
    /// Plain pub/sub on the master the sentinels name, found again on every (re)connection and
    /// left as soon as a newer master is learned.
    #[cfg(feature = "sentinel")]
    Sentinel(Arc<crate::backend::sentinel::Sentinels>),
}

/// Where the task's connection goes.
enum Source {
    Server(redis::Client),
    #[cfg(feature = "sentinel")]
    Sentinel {
        sentinels: Arc<crate::backend::sentinel::Sentinels>,
        changes: tokio::sync::watch::Receiver<Option<crate::backend::sentinel::MasterAddr>>,
        /// The master the connection is on.
        at: Option<crate::backend::sentinel::MasterAddr>,
    },
}

impl Source {
    /// Resolves when the connection's master is known to be stale (never for one server).
    async fn moved(&mut self) {
        match self {
            Self::Server(_) => std::future::pending().await,
            #[cfg(feature = "sentinel")]
            Self::Sentinel { changes, at, .. } => loop {
                if changes.changed().await.is_err() {
                    return std::future::pending().await;
                }
                let known = changes.borrow_and_update().clone();
                if known.is_some() && known != *at {
                    return;
                }
            },
        }
    }
}

impl Subscriber {
    /// Starts the subscriber task in the current runtime; it connects on first use.
    pub(crate) fn start(source: Notifications, connect_timeout: Duration) -> Self {
        let source = match source {
            Notifications::Server(client) => Source::Server(*client),
            #[cfg(feature = "cluster")]
            Notifications::Cluster { seeds, tls } => {
                return sharded::start(&seeds, &tls, connect_timeout)
            }
            #[cfg(feature = "sentinel")]
            Notifications::Sentinel(sentinels) => Source::Sentinel {
                changes: sentinels.master_changes(),
                sentinels,
                at: None,
            },
        };
        let (requests, inbox) = mpsc::unbounded_channel();
        let live = Arc::new(Live::default());
        let task = Task {
            requests: requests.downgrade(),
            live: live.clone(),
            source,
            connect_timeout,
            channels: HashMap::new(),
            connection: None,
            retry: FIRST_RETRY,
            next_attempt: Instant::now(),
        };
        tokio::spawn(task.run(inbox));
        Self { requests, live }
    }

    /// Whether the connection is, as far as the task last said, subscribed to `channel` (which
    /// `channel` builds only if it is subscribed to anything): a [`Subscriber::subscribe`] of it
    /// would then be answered without a round trip to the server.
    pub(crate) fn subscribed(&self, channel: impl FnOnce() -> String) -> Option<String> {
        let live = &self.live;
        if live.count.load(Ordering::Acquire) == 0 {
            return None;
        }
        let channel = channel();
        live.channels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&channel)
            .then_some(channel)
    }

    /// Subscribes to `channel`; returns once the server has confirmed the subscription (or the
    /// channel was already subscribed), so a release published after this returns is seen.
    ///
    /// Cancel-safe: a subscription made for a caller that has gone is dropped, unsubscribing.
    pub(crate) async fn subscribe(&self, channel: String) -> Result<Subscription, Error> {
        let stopped = || Error::backend("the release subscriber has stopped");
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Subscribe { channel, reply })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

struct Channel {
    waiters: usize,
    released: Arc<Released>,
}

struct Task {
    /// For the subscriptions the task hands out; weak, so that the task ends when every
    /// `Subscriber` (and `Subscription`) is gone.
    requests: mpsc::WeakUnboundedSender<Request>,
    /// The channels of `channels` while `connection` is up, for `Subscriber::subscribed`.
    live: Arc<Live>,
    source: Source,
    connect_timeout: Duration,
    channels: HashMap<String, Channel>,
    connection: Option<(PubSubSink, PubSubStream)>,
    retry: Duration,
    next_attempt: Instant,
}

impl Task {
    async fn run(mut self, mut inbox: mpsc::UnboundedReceiver<Request>) {
        loop {
            let reconnect = self.connection.is_none() && !self.channels.is_empty();
            tokio::select! {
                request = inbox.recv() => match request {
                    Some(request) => self.handle(request).await,
                    None => return,
                },
                message = next_message(&mut self.connection) => match message {
                    Some(message) => {
                        if let Some(channel) = self.channels.get(message.get_channel_name()) {
                            channel.released.message(message.get_payload_bytes());
                        }
                    }
                    None => self.disconnected(),
                },
                () = tokio::time::sleep_until(self.next_attempt), if reconnect => {
                    self.connect().await;
                }
                () = self.source.moved() => {
                    tracing::debug!("relock: the sentinel master moved; moving the release subscriber");
                    self.connection = None;
                    self.live.update(HashSet::clear);
                    self.retry = FIRST_RETRY;
                    self.next_attempt = Instant::now();
                }
            }
        }
    }

    async fn handle(&mut self, request: Request) {
        match request {
            Request::Subscribe { channel, reply } => {
                let Some(requests) = self.requests.upgrade() else {
                    return;
                };
                let subscribed = self.subscribe(&channel).await;
                let answer = subscribed.map(|()| self.join(channel, requests));
                // A waiter cancelled meanwhile gets nothing: `send` hands the subscription back
                // and dropping it queues its unsubscribe. One left unread in the channel when the
                // waiter drops its end is dropped with it, the same way.
                let _ = reply.send(answer);
            }
            Request::Unsubscribe { channel } => {
                let Some(entry) = self.channels.get_mut(&channel) else {
                    return;
                };
                entry.waiters -= 1;
                if entry.waiters > 0 {
                    return;
                }
                self.channels.remove(&channel);
                self.live.update(|live| {
                    live.remove(&channel);
                });
                if let Some((sink, _)) = &mut self.connection {
                    if sink.unsubscribe(&channel).await.is_err() {
                        self.disconnected();
                    }
                }
            }
        }
    }

    /// Counts one more waiter on `channel`, which the connection is subscribed to.
    fn join(&mut self, channel: String, requests: mpsc::UnboundedSender<Request>) -> Subscription {
        let released = match self.channels.get_mut(&channel) {
            Some(entry) => {
                entry.waiters += 1;
                entry.released.clone()
            }
            None => {
                let released = Arc::new(Released::default());
                let entry = Channel {
                    waiters: 1,
                    released: released.clone(),
                };
                self.channels.insert(channel.clone(), entry);
                self.live.update(|live| {
                    live.insert(channel.clone());
                });
                released
            }
        };
        Subscription {
            channel,
            released,
            requests,
        }
    }

    /// Makes sure the connection is subscribed to `channel`, connecting first if it is down.
    async fn subscribe(&mut self, channel: &str) -> Result<(), Error> {
        if self.connection.is_none() {
            if Instant::now() < self.next_attempt {
                return Err(Error::backend(
                    "the release subscriber is reconnecting to the server",
                ));
            }
            self.connect().await;
        }
        let Some((sink, _)) = &mut self.connection else {
            return Err(Error::backend(
                "the release subscriber cannot reach the server",
            ));
        };
        // Connected means every channel with waiters is subscribed (`connect` re-subscribes).
        if self.channels.contains_key(channel) {
            return Ok(());
        }
        let confirmed = tokio::time::timeout(self.connect_timeout, sink.subscribe(channel)).await;
        match confirmed {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => {
                self.disconnected();
                Err(err.into())
            }
            Err(_) => {
                self.disconnected();
                Err(Error::backend(
                    "the server did not confirm a subscription in time",
                ))
            }
        }
    }

    async fn connect(&mut self) {
        let connected = match &mut self.source {
            Source::Server(client) => {
                match tokio::time::timeout(self.connect_timeout, client.get_async_pubsub()).await {
                    Ok(Ok(pubsub)) => Ok(pubsub),
                    Ok(Err(err)) => Err(crate::error::describe(&err)),
                    Err(_) => Err("connect timed out".to_owned()),
                }
            }
            #[cfg(feature = "sentinel")]
            Source::Sentinel { sentinels, at, .. } => match sentinels.connect_pubsub().await {
                Ok((master, pubsub)) => {
                    *at = Some(master);
                    Ok(pubsub)
                }
                Err(Error::Backend(err)) => Err(err.to_string()),
                Err(err) => Err(err.to_string()),
            },
        };
        let mut connection = match connected {
            Ok(pubsub) => pubsub.split(),
            Err(reason) => return self.failed(&reason),
        };
        let wanted: Vec<String> = self.channels.keys().cloned().collect();
        if !wanted.is_empty() {
            let resubscribed =
                tokio::time::timeout(self.connect_timeout, connection.0.subscribe(&wanted)).await;
            if !matches!(resubscribed, Ok(Ok(()))) {
                return self.failed("re-subscribing failed");
            }
        }
        tracing::debug!(
            channels = wanted.len(),
            "relock: release subscriber connected"
        );
        self.connection = Some(connection);
        self.live.update(|live| live.extend(wanted));
        self.retry = FIRST_RETRY;
        // Releases published while disconnected were missed: let every waiter look again.
        self.wake_all();
    }

    fn failed(&mut self, reason: &str) {
        tracing::warn!(
            reason,
            retry_in = ?self.retry,
            "relock: release subscriber cannot connect; waiters retry when the holder's lease ends"
        );
        self.next_attempt = Instant::now() + self.retry;
        self.retry = (self.retry * 2).min(LONGEST_RETRY);
    }

    fn disconnected(&mut self) {
        self.live.update(HashSet::clear);
        if self.connection.take().is_some() {
            tracing::warn!("relock: release subscriber lost its connection; reconnecting");
            self.next_attempt = Instant::now();
        }
        // Behind Sentinel, a dropped connection usually means a dying master: a waiter woken
        // now would only meet it and fail. Waiters are woken once the subscriber is on the new
        // master (a release may have been missed meanwhile), or by their holder's lease.
        if matches!(self.source, Source::Server(_)) {
            self.wake_all();
        }
    }

    fn wake_all(&self) {
        for channel in self.channels.values() {
            channel.released.everyone();
        }
    }
}

async fn next_message(connection: &mut Option<(PubSubSink, PubSubStream)>) -> Option<redis::Msg> {
    match connection {
        Some((_, stream)) => stream.next().await,
        None => std::future::pending().await,
    }
}

#[cfg(feature = "cluster")]
mod sharded {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::time::Duration;

    use redis::cluster_async::ClusterConnection;
    use redis::{PushInfo, PushKind, Value};
    use tokio::sync::mpsc;

    use super::{Channel, Live, Released, Request, Subscriber, Subscription};
    use crate::error::Error;
    use crate::tls::TlsSettings;

    pub(super) fn start(
        seeds: &[String],
        tls: &TlsSettings,
        connect_timeout: Duration,
    ) -> Subscriber {
        let (requests, inbox) = mpsc::unbounded_channel();
        let (pushed, pushes) = mpsc::unbounded_channel();
        // The command connection was built from the same seeds and settings, so an error here
        // has been reported there already.
        let client = tls.cluster_builder(seeds).and_then(|builder| {
            Ok(builder
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(pushed)
                .connection_timeout(connect_timeout)
                .response_timeout(connect_timeout)
                .build()?)
        });
        let live = Arc::new(Live::default());
        let task = Task {
            requests: requests.downgrade(),
            live: live.clone(),
            client,
            connect_timeout,
            channels: HashMap::new(),
            connection: None,
        };
        tokio::spawn(task.run(inbox, pushes));
        Subscriber { requests, live }
    }

    struct Task {
        requests: mpsc::WeakUnboundedSender<Request>,
        /// The channels of `channels` (the client keeps them subscribed), for
        /// `Subscriber::subscribed`.
        live: Arc<Live>,
        client: Result<redis::cluster::ClusterClient, Error>,
        connect_timeout: Duration,
        channels: HashMap<String, Channel>,
        /// Opened on first use; the client reconnects it to each node by itself.
        connection: Option<ClusterConnection>,
    }

    impl Task {
        async fn run(
            mut self,
            mut inbox: mpsc::UnboundedReceiver<Request>,
            mut pushes: mpsc::UnboundedReceiver<PushInfo>,
        ) {
            loop {
                tokio::select! {
                    request = inbox.recv() => match request {
                        Some(request) => self.handle(request).await,
                        None => return,
                    },
                    Some(push) = pushes.recv() => self.pushed(push).await,
                }
            }
        }

        async fn pushed(&mut self, push: PushInfo) {
            let channel = match push.data.first() {
                Some(Value::BulkString(name)) => String::from_utf8_lossy(name).into_owned(),
                _ => String::new(),
            };
            match push.kind {
                PushKind::SMessage => {
                    if let Some(entry) = self.channels.get(&channel) {
                        let payload = match push.data.get(1) {
                            Some(Value::BulkString(payload)) => payload.as_slice(),
                            _ => &[],
                        };
                        entry.released.message(payload);
                    }
                }
                // A (re-)subscription, after which earlier messages may be missing.
                PushKind::SSubscribe => self.wake(&channel),
                PushKind::SUnsubscribe if self.channels.contains_key(&channel) => {
                    tracing::debug!(channel, "relock: sharded channel moved; subscribing again");
                    self.wake(&channel);
                    if let Some(connection) = &mut self.connection {
                        let again = connection.ssubscribe(&channel);
                        if !matches!(
                            tokio::time::timeout(self.connect_timeout, again).await,
                            Ok(Ok(()))
                        ) {
                            tracing::warn!(channel, "relock: re-subscribing a moved channel failed; its waiters retry by the holder's lease");
                        }
                    }
                }
                PushKind::Disconnection => {
                    for entry in self.channels.values() {
                        entry.released.everyone();
                    }
                }
                _ => {}
            }
        }

        /// Every waiter of `channel` looks again.
        fn wake(&self, channel: &str) {
            if let Some(entry) = self.channels.get(channel) {
                entry.released.everyone();
            }
        }

        async fn handle(&mut self, request: Request) {
            match request {
                Request::Subscribe { channel, reply } => {
                    let Some(requests) = self.requests.upgrade() else {
                        return;
                    };
                    let subscribed = self.subscribe(&channel).await;
                    let answer = subscribed.map(|()| self.join(channel, requests));
                    let _ = reply.send(answer);
                }
                Request::Unsubscribe { channel } => {
                    let Some(entry) = self.channels.get_mut(&channel) else {
                        return;
                    };
                    entry.waiters -= 1;
                    if entry.waiters > 0 {
                        return;
                    }
                    self.channels.remove(&channel);
                    self.live.update(|live| {
                        live.remove(&channel);
                    });
                    if let Some(connection) = &mut self.connection {
                        let _ = tokio::time::timeout(
                            self.connect_timeout,
                            connection.sunsubscribe(&channel),
                        )
                        .await;
                    }
                }
            }
        }

        fn join(
            &mut self,
            channel: String,
            requests: mpsc::UnboundedSender<Request>,
        ) -> Subscription {
            let live = &self.live;
            let entry = self.channels.entry(channel.clone()).or_insert_with(|| {
                live.update(|live| {
                    live.insert(channel.clone());
                });
                Channel {
                    waiters: 0,
                    released: Arc::new(Released::default()),
                }
            });
            entry.waiters += 1;
            Subscription {
                channel,
                released: entry.released.clone(),
                requests,
            }
        }

        async fn subscribe(&mut self, channel: &str) -> Result<(), Error> {
            if self.channels.contains_key(channel) {
                return Ok(());
            }
            let limit = self.connect_timeout;
            let connection = self.connect().await?;
            match tokio::time::timeout(limit, connection.ssubscribe(channel)).await {
                Ok(confirmed) => Ok(confirmed?),
                Err(_) => Err(Error::backend(
                    "the cluster did not confirm a subscription in time",
                )),
            }
        }

        async fn connect(&mut self) -> Result<&mut ClusterConnection, Error> {
            if self.connection.is_none() {
                let client = self
                    .client
                    .as_ref()
                    .map_err(|err| Error::backend(err.to_string()))?;
                let connected =
                    tokio::time::timeout(self.connect_timeout, client.get_async_connection()).await;
                self.connection = Some(match connected {
                    Ok(connection) => connection?,
                    Err(_) => {
                        return Err(Error::backend(
                            "the release subscriber cannot reach the cluster",
                        ))
                    }
                });
            }
            Ok(self.connection.as_mut().expect("connected above"))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use super::*;

    fn subscription(requests: &mpsc::UnboundedSender<Request>) -> Subscription {
        Subscription {
            channel: "relock:{k}:released".to_owned(),
            released: Arc::new(Released::default()),
            requests: requests.clone(),
        }
    }

    fn unsubscribed(inbox: &mut mpsc::UnboundedReceiver<Request>) -> bool {
        matches!(
            inbox.try_recv(),
            Ok(Request::Unsubscribe { channel }) if channel == "relock:{k}:released"
        )
    }

    #[test]
    fn a_message_counts_the_shared_holds_it_returned() {
        assert_eq!(returned(b"1"), Some(1));
        assert_eq!(returned(b"12"), Some(12));
        assert_eq!(returned(b"999999999"), Some(4096));
        for payload in [&b""[..], b"0", b"-1", b"1 ", b"x", b"1234567890"] {
            assert_eq!(returned(payload), None, "{payload:?}");
        }
    }

    /// How many of five sleeping permit waiters a message with `payload` wakes.
    async fn permit_waiters_woken(payload: &[u8]) -> usize {
        let released = Released::default();
        let mut sleeping: Vec<_> = (0..5)
            .map(|_| Box::pin(released.one.clone().notified_owned()))
            .collect();
        for waiter in &mut sleeping {
            waiter.as_mut().enable();
        }
        released.message(payload);
        let waker = futures_util::task::noop_waker();
        let mut context = std::task::Context::from_waker(&waker);
        sleeping
            .iter_mut()
            .map(|waiter| waiter.as_mut().poll(&mut context).is_ready())
            .filter(|woken| *woken)
            .count()
    }

    #[tokio::test]
    async fn a_message_wakes_a_permit_waiter_per_returned_hold_and_an_uncounted_one_all() {
        assert_eq!(permit_waiters_woken(b"1").await, 1);
        assert_eq!(permit_waiters_woken(b"2").await, 2);
        assert_eq!(permit_waiters_woken(b"9").await, 5);
        // An exclusive hold's release, a force-release: anything may be free.
        assert_eq!(permit_waiters_woken(b"").await, 5);
    }

    #[test]
    fn a_subscription_for_a_waiter_that_has_gone_unsubscribes() {
        let (requests, mut inbox) = mpsc::unbounded_channel();
        let (reply, answer) = oneshot::channel::<Result<Subscription, Error>>();
        drop(answer);
        let _ = reply.send(Ok(subscription(&requests)));
        assert!(unsubscribed(&mut inbox));
    }

    #[test]
    fn a_subscription_left_unread_unsubscribes_when_the_waiter_goes() {
        let (requests, mut inbox) = mpsc::unbounded_channel();
        let (reply, answer) = oneshot::channel::<Result<Subscription, Error>>();
        reply.send(Ok(subscription(&requests))).unwrap();
        assert!(inbox.try_recv().is_err());
        drop(answer);
        assert!(unsubscribed(&mut inbox));
    }
}
