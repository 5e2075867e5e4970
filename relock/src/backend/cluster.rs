//! The Redis Cluster backend: the same Lua scripts, carried to each master.
//!
//! Every script names only keys with the hash tag `{K}`, so each call runs on one slot.
//!
//! **Acquisitions and releases** go through a group commit per master (the queue of
//! [`batch`](super::batch), with its rules): the slot's master is found in the slot owners as
//! last read (`CLUSTER SLOTS`, read again every [`SLOT_OWNERS_TTL`] and whenever a node answered
//! for a slot it does not serve), and the request joins that master's queue. A request that finds
//! no call in flight to its master goes out at once; those that queue meanwhile go out together,
//! as one pipeline of their own scripts (`acquire.lua`, `release.lua`: a batch script cannot span
//! slots, and the batch script announces releases on the unsharded channel) written on a direct
//! connection to the master, with at most [`MAX_CALLS`](super::batch::MAX_CALLS) pipelines in
//! flight per master. Each request keeps its own reply, error and cancellation:
//!
//! * a request answered `MOVED`, `ASK`, `TRYAGAIN`, `CLUSTERDOWN`, `NOSCRIPT` (or `READONLY`,
//!   `LOADING`, `MASTERDOWN`) was not run: it is resent alone through the redis-rs cluster
//!   connection, which follows redirections and retries, and the slot owners are read again;
//! * a pipeline whose node connection could not be had (nothing was written), or dropped (it may
//!   have run, in part or in whole), is resent request by request through the cluster connection.
//!   That is safe because each request is idempotent per hold token: an acquisition that ran
//!   already finds its own hold and answers the same grant; one whose hold has ended since was
//!   never known to anyone, and the resend is a fresh attempt under the same token (refused while
//!   another holds the key, else granted with a later fencing token); a resent release finds its
//!   own tombstone and answers "released already". The caller's lease is counted from the first
//!   send, before any of these, so it never outlives the server's;
//! * a pipeline that got no answer within the response timeout (a stalled node) fails its
//!   requests as unknown outcomes: their callers release acquisitions in the background, and an
//!   acquisition whose caller has gone is released again after its call returns.
//!
//! Requests whose slot has no known master (the owners could not be read) go through the cluster
//! connection, one call each. The cluster client retries a request after a redirection, a
//! connection error or a timeout, so a script may run twice: acquire answers a retried request of
//! the same hold with the same grant, renew only extends a lease it still has, and a retried
//! release finds the tombstone naming its hold and answers "released" again, not "lost".

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::join_all;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{
    MultipleNodeRoutingInfo, ResponsePolicy, Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr,
};
use redis::{ConnectionAddr, ConnectionInfo, ScriptInvocation, Value};
use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::batch::{is_request_failure, request_failure, Batcher, Carrier};
use super::redis::Failure;
use super::{Attempt, Grant, Released, Replicas};
use crate::error::Error;
use crate::info::LockInfo;
use crate::key::LockKey;
use crate::lease::Lease;
use crate::pattern::KeyPattern;
use crate::protocol::{
    self, acknowledged_pipeline, acquire_invocation, found_keys, parse_acknowledged, parse_acquire,
    parse_force_release, parse_inspect, parse_release, renew_invocation, scan_glob,
    send_acknowledged, Answer, Kind, Request,
};
use crate::scripts;

/// Idle connections kept per node for acquisitions that wait for replicas.
const MAX_IDLE_WAITING: usize = 16;

/// How long the cached slot owners, which route acquisitions, releases and renewals to their
/// master, are trusted.
const SLOT_OWNERS_TTL: Duration = Duration::from_secs(10);

pub(crate) struct ClusterBackend {
    shared: Arc<Shared>,
    /// The group commit of each master, by `host:port`.
    queues: Mutex<HashMap<String, Queue>>,
}

/// One master's group commit.
struct Queue {
    batcher: Arc<Batcher<MasterLink>>,
    link: Arc<MasterLink>,
}

/// Carries one master's calls: a pipeline on the direct connection to it.
pub(super) struct MasterLink {
    shared: Arc<Shared>,
    /// `host:port`
    master: String,
}

impl Carrier for MasterLink {
    fn call<'a>(
        &'a self,
        requests: &'a [&'a Request],
        retention_ms: u64,
    ) -> impl Future<Output = Result<Vec<Answer>, Failure>> + Send + 'a {
        self.shared
            .call_master(&self.master, requests, retention_ms)
    }
}

impl Deref for ClusterBackend {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.shared
    }
}

/// What the cluster backend and its masters' queues share.
pub(crate) struct Shared {
    client: ClusterClient,
    connection: OnceCell<ClusterConnection>,
    /// Bounds opening the connection, whatever the number of seed nodes.
    connect_limit: Duration,
    prefix: String,
    retention: Duration,
    /// The master serving each slot range, for routing requests and renewals to their node.
    owners: Mutex<Option<Owners>>,
    /// Held while the owners are read, so that concurrent requests read them once.
    reading_owners: tokio::sync::Mutex<()>,
    /// The first seed's settings (credentials, TLS, protocol): a direct connection to a node
    /// copies them with the node's address.
    node_template: Option<ConnectionInfo>,
    /// The seeds' addresses (`host:port`), asked for the slot owners when no known node answers.
    seeds: Vec<String>,
    node_config: redis::AsyncConnectionConfig,
    /// Direct connections to masters, by `host:port`, for the group commit and the renewal
    /// rounds: the cluster connection stops every request while it rebuilds its slot map (a dead
    /// node's failover), so requests sent through it would wait for the dead node, and the holds
    /// on healthy masters would end with it.
    nodes: Mutex<HashMap<String, MultiplexedConnection>>,
    /// Idle connections for acquisitions that wait for replicas (`WAIT` blocks its connection),
    /// by node.
    waiting: Mutex<HashMap<String, Vec<MultiplexedConnection>>>,
    response_timeout: Duration,
    /// What direct connections to nodes trust and present, as the cluster client's.
    tls: crate::tls::TlsSettings,
}

/// The slot owners as last read.
struct Owners {
    read: Instant,
    /// False once a request or a renewal found a node gone or a slot moved: read them again
    /// (meanwhile the stale map still routes).
    fresh: bool,
    ranges: Vec<SlotRange>,
}

struct SlotRange {
    first: u16,
    last: u16,
    master: String,
}

impl fmt::Debug for ClusterBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterBackend")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl ClusterBackend {
    pub(crate) fn new(
        client: ClusterClient,
        seeds: &[String],
        connect_timeout: Duration,
        response_timeout: Duration,
        prefix: String,
        retention: Duration,
        tls: crate::tls::TlsSettings,
    ) -> Self {
        let infos: Vec<ConnectionInfo> = seeds
            .iter()
            .filter_map(|seed| redis::IntoConnectionInfo::into_connection_info(seed.as_str()).ok())
            .collect();
        let seeds = infos.iter().filter_map(address).collect();
        let shared = Shared {
            node_template: infos.into_iter().next(),
            seeds,
            node_config: redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(connect_timeout))
                .set_response_timeout(Some(response_timeout)),
            nodes: Mutex::new(HashMap::new()),
            waiting: Mutex::new(HashMap::new()),
            response_timeout,
            tls,
            client,
            connection: OnceCell::new(),
            // Opening the cluster connection reads the topology from a seed and connects to every
            // master: bound the whole, not one socket.
            connect_limit: connect_timeout.saturating_add(response_timeout),
            prefix,
            retention,
            owners: Mutex::new(None),
            reading_owners: tokio::sync::Mutex::new(()),
        };
        Self {
            shared: Arc::new(shared),
            queues: Mutex::new(HashMap::new()),
        }
    }

    /// An exclusive hold of `key`, through its master's group commit.
    pub(crate) async fn acquire(
        &self,
        key: &LockKey,
        token: &crate::token::HoldToken,
        lease: Duration,
        claim: bool,
    ) -> Result<Attempt, Error> {
        let Some((batcher, link)) = self.queue_of(key).await else {
            // No master known for the slot: one call through the cluster connection.
            let invocation =
                acquire_invocation(&self.prefix, key, token, lease, self.retention, claim);
            return parse_acquire(self.invoke(&invocation).await?);
        };
        let request = Request {
            kind: Kind::Acquire {
                lease_ms: protocol::millis(lease),
                retention_ms: protocol::millis(self.retention.max(lease)),
                claim,
            },
            lock: protocol::lock_key(&self.prefix, key),
            token: token.clone(),
        };
        protocol::attempt_answer("acquire", batcher.submit(&link, request).await?)
    }

    /// Releases the hold `token` of `key`, through its master's group commit.
    pub(crate) async fn release(
        &self,
        key: &LockKey,
        token: &crate::token::HoldToken,
        fencing_token: u64,
    ) -> Result<Released, Error> {
        let Some((batcher, link)) = self.queue_of(key).await else {
            let invocation = protocol::release_invocation(
                &self.prefix,
                key,
                token,
                fencing_token,
                self.retention,
                true,
            );
            return parse_release(self.invoke(&invocation).await?);
        };
        let request = Request {
            kind: Kind::Release { fencing_token },
            lock: protocol::lock_key(&self.prefix, key),
            token: token.clone(),
        };
        match batcher.submit(&link, request).await? {
            (1, _) => Ok(Released::Free),
            (0, _) => Ok(Released::NotHeld),
            (2, _) => Ok(Released::Again),
            (status, value) => Err(protocol::unexpected(
                "release",
                &Value::Array(vec![Value::Int(status), value]),
            )),
        }
    }

    /// A shared hold: `acquire_shared.lua` on the key's slot, through its master's group commit.
    pub(crate) async fn acquire_shared(
        &self,
        key: &LockKey,
        token: &crate::token::HoldToken,
        lease: Duration,
        permits: u32,
    ) -> Result<Attempt, Error> {
        let Some((batcher, link)) = self.queue_of(key).await else {
            // No master known for the slot: one call through the cluster connection.
            let invocation = protocol::acquire_shared_invocation(
                &self.prefix,
                key,
                token,
                lease,
                self.retention,
                permits,
            );
            return parse_acquire(self.invoke(&invocation).await?);
        };
        let request = Request {
            kind: Kind::AcquireShared {
                lease_ms: protocol::millis(lease),
                retention_ms: protocol::millis(self.retention.max(lease)),
                permits,
            },
            lock: protocol::lock_key(&self.prefix, key),
            token: token.clone(),
        };
        protocol::attempt_answer("acquire_shared", batcher.submit(&link, request).await?)
    }

    /// The queue of the master serving `key`'s slot, as the slot owners last read say (read
    /// first if they never were); `None` when no master is known for it.
    async fn queue_of(&self, key: &LockKey) -> Option<(Arc<Batcher<MasterLink>>, Arc<MasterLink>)> {
        self.shared.route().await;
        let master = self.shared.master_of_slot(slot(key.as_str().as_bytes()))?;
        let mut queues = lock(&self.queues);
        let queue = queues.entry(master).or_insert_with_key(|master| Queue {
            batcher: Arc::new(Batcher::new(protocol::millis(self.shared.retention))),
            link: Arc::new(MasterLink {
                shared: self.shared.clone(),
                master: master.clone(),
            }),
        });
        Some((queue.batcher.clone(), queue.link.clone()))
    }
}

impl Shared {
    /// The shared connection, opened on first use; a failed attempt is retried by the next call.
    pub(super) async fn conn(&self) -> Result<ClusterConnection, Error> {
        let connect = async {
            match tokio::time::timeout(self.connect_limit, self.client.get_async_connection()).await
            {
                Ok(connected) => Ok(connected?),
                Err(_) => Err(Error::backend(format!(
                    "the Redis Cluster did not accept a connection within {:?}",
                    self.connect_limit
                ))),
            }
        };
        self.connection.get_or_try_init(|| connect).await.cloned()
    }

    /// `P:{K}:released`: the sharded channel a release of `key` is announced on.
    pub(crate) fn channel(&self, key: &LockKey) -> String {
        protocol::channel(&self.prefix, key)
    }

    async fn invoke(&self, invocation: &ScriptInvocation<'_>) -> Result<Value, Error> {
        let mut connection = self.conn().await?;
        Ok(invocation.invoke_async(&mut connection).await?)
    }

    /// Checks that the cluster answers (every master).
    pub(crate) async fn ping(&self) -> Result<(), Error> {
        let mut connection = self.conn().await?;
        let routing = RoutingInfo::MultiNode((
            MultipleNodeRoutingInfo::AllMasters,
            Some(ResponsePolicy::AllSucceeded),
        ));
        connection
            .route_command(redis::cmd("PING"), routing)
            .await?;
        Ok(())
    }

    pub(crate) async fn force_release(&self, key: &LockKey) -> Result<(bool, u64), Error> {
        let invocation = protocol::force_release_invocation(&self.prefix, key, true);
        parse_force_release(self.invoke(&invocation).await?)
    }

    pub(crate) async fn inspect(&self, key: &LockKey) -> Result<Option<LockInfo>, Error> {
        let invocation = protocol::inspect_invocation(&self.prefix, key);
        parse_inspect(&self.prefix, key, self.invoke(&invocation).await?)
    }

    /// Renews `leases` with one pipelined round trip per master, sent concurrently on a direct
    /// connection to each master. `None` for a hold whose node did not answer (the watchdog
    /// retries it); `Some(false)` for one whose lock is gone.
    pub(crate) async fn renew(&self, leases: &[Arc<Lease>]) -> Result<Vec<Option<bool>>, Error> {
        let slots: Vec<u16> = leases
            .iter()
            .map(|lease| slot(lease.key.as_str().as_bytes()))
            .collect();
        // A master that died answers nothing until the response timeout; the holds on the other
        // masters must not wait that long for their renewal, or short leases all end during a
        // failover. Each step of the round is bounded by a quarter of the shortest lease.
        let bound = leases
            .iter()
            .map(|lease| lease.duration / 4)
            .min()
            .unwrap_or(Duration::from_secs(1));
        let round_end = Instant::now() + bound * 2;
        let _ = tokio::time::timeout(bound, self.refresh_owners(bound)).await;
        let groups = self.group_by_master(&slots);
        let rounds = groups.iter().map(|(master, indices)| {
            let mut pipe = redis::pipe();
            for &at in indices {
                pipe.invoke_script(&renew_invocation(&self.prefix, &leases[at], self.retention));
            }
            let route = SingleNodeRoutingInfo::SpecificNode(Route::new(
                slots[indices[0]],
                SlotAddr::Master,
            ));
            async move {
                let round = async {
                    match master {
                        Some(master) => {
                            self.renew_on_master(master, pipe, indices.len(), bound)
                                .await
                        }
                        None => {
                            let mut connection = self.conn().await?;
                            renew_on_node(&mut connection, pipe, route, indices.len()).await
                        }
                    }
                };
                tokio::time::timeout(bound, round)
                    .await
                    .unwrap_or_else(|_| Err(Error::backend("a cluster node did not renew in time")))
            }
        });
        let mut outcome = vec![None; leases.len()];
        let mut failed = false;
        // Holds whose master answered with an error (`ASK` during a slot migration, `MOVED` after
        // one) go once more through the cluster connection, which follows redirections, within
        // what is left of the round's bound.
        let mut redirected = Vec::new();
        for ((master, indices), answers) in groups.iter().zip(join_all(rounds).await) {
            match answers {
                Ok(answers) => {
                    for (&at, answer) in indices.iter().zip(answers) {
                        outcome[at] = answer;
                        failed |= answer.is_none();
                        if answer.is_none() && master.is_some() {
                            redirected.push(at);
                        }
                    }
                }
                Err(err) => {
                    tracing::debug!(error = %err, holds = indices.len(), "relock: a cluster node did not renew");
                    if let Some(master) = master {
                        lock(&self.nodes).remove(master);
                    }
                    failed = true;
                }
            }
        }
        if !redirected.is_empty() {
            let retries = redirected.iter().map(|&at| {
                let invocation = renew_invocation(&self.prefix, &leases[at], self.retention);
                async move {
                    let mut connection = self.conn().await.ok()?;
                    let renewed: i64 = invocation.invoke_async(&mut connection).await.ok()?;
                    Some(renewed == 1)
                }
            });
            if let Ok(answers) = tokio::time::timeout_at(round_end, join_all(retries)).await {
                for (at, answer) in redirected.into_iter().zip(answers) {
                    outcome[at] = answer;
                }
            }
        }
        if failed {
            // A node that failed may have lost its slots: read the owners again next round.
            if let Some(owners) = lock(&self.owners).as_mut() {
                owners.fresh = false;
            }
        }
        Ok(outcome)
    }

    /// Indices into `slots`, grouped by the master that serves them (`None`, one group per slot,
    /// for slots whose owner is not known: those go through the cluster connection).
    fn group_by_master(&self, slots: &[u16]) -> Vec<(Option<String>, Vec<usize>)> {
        let mut groups: HashMap<(Option<String>, Option<u16>), Vec<usize>> = HashMap::new();
        for (at, &slot) in slots.iter().enumerate() {
            let owner = self.master_of_slot(slot);
            let by_slot = owner.is_none().then_some(slot);
            groups.entry((owner, by_slot)).or_default().push(at);
        }
        groups
            .into_iter()
            .map(|((owner, _), indices)| (owner, indices))
            .collect()
    }

    /// The master serving `slot` in the slot owners as last read.
    fn master_of_slot(&self, slot: u16) -> Option<String> {
        lock(&self.owners).as_ref().and_then(|owners| {
            owners
                .ranges
                .iter()
                .find(|range| range.first <= slot && slot <= range.last)
                .map(|range| range.master.clone())
        })
    }

    /// Reads the slot owners again when they are old or a renewal found them wrong: from the
    /// first node (a known master, a seed, or through the cluster connection) that answers
    /// within `bound`.
    async fn refresh_owners(&self, bound: Duration) {
        let candidates: Vec<String> = {
            let owners = lock(&self.owners);
            if let Some(owners) = owners.as_ref() {
                if owners.fresh && owners.read.elapsed() < SLOT_OWNERS_TTL {
                    return;
                }
            }
            let mut candidates: Vec<String> = owners
                .iter()
                .flat_map(|owners| owners.ranges.iter().map(|range| range.master.clone()))
                .chain(self.seeds.iter().cloned())
                .collect();
            candidates.sort();
            candidates.dedup();
            candidates
        };
        let slots_command = redis::cmd("CLUSTER").arg("SLOTS").clone();
        let mut asks: Vec<futures_util::future::BoxFuture<'_, Result<Value, Error>>> = candidates
            .into_iter()
            .map(|node| {
                let command = slots_command.clone();
                Box::pin(async move {
                    let mut connection = self.node(&node, bound).await?;
                    let reply = connection.req_packed_command(&command).await;
                    if reply.is_err() {
                        lock(&self.nodes).remove(&node);
                    }
                    Ok(reply?)
                }) as futures_util::future::BoxFuture<'_, Result<Value, Error>>
            })
            .collect();
        asks.push(Box::pin(async move {
            let mut connection = self.conn().await?;
            Ok(connection
                .route_command(
                    slots_command,
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary),
                )
                .await?)
        }));
        let mut pending = asks;
        while !pending.is_empty() {
            let (reply, _, rest) = futures_util::future::select_all(pending).await;
            pending = rest;
            if let Ok(reply) = reply {
                let ranges = parse_slots(&reply);
                if !ranges.is_empty() {
                    *lock(&self.owners) = Some(Owners {
                        read: Instant::now(),
                        fresh: true,
                        ranges,
                    });
                    return;
                }
            }
        }
    }

    /// A direct connection to the node at `address` (`host:port`), opened within `bound`.
    async fn node(&self, address: &str, bound: Duration) -> Result<MultiplexedConnection, Error> {
        if let Some(connection) = lock(&self.nodes).get(address) {
            return Ok(connection.clone());
        }
        let connection = self.open_node(address, bound, &self.node_config).await?;
        lock(&self.nodes).insert(address.to_owned(), connection.clone());
        Ok(connection)
    }

    /// Opens a new connection to the node at `address`, within `bound`.
    async fn open_node(
        &self,
        address: &str,
        bound: Duration,
        config: &redis::AsyncConnectionConfig,
    ) -> Result<MultiplexedConnection, Error> {
        let template = self
            .node_template
            .clone()
            .ok_or_else(|| Error::backend("no usable Redis Cluster seed URL"))?;
        let (host, port) = address
            .rsplit_once(':')
            .and_then(|(host, port)| Some((host.to_owned(), port.parse::<u16>().ok()?)))
            .ok_or_else(|| Error::backend(format!("a cluster node's address `{address}`")))?;
        let client = self
            .tls
            .node_client(crate::tls::TlsSettings::at_address(&template, host, port))?;
        let connection = tokio::time::timeout(
            bound,
            client.get_multiplexed_async_connection_with_config(config),
        )
        .await
        .map_err(|_| {
            Error::backend(format!(
                "cluster node {address} did not accept a connection"
            ))
        })??;
        Ok(connection)
    }

    /// The acquire script (exclusive or shared, as `grant` says) and `WAIT` in one pipeline on a
    /// dedicated connection to the master of `key`'s slot (found from the slot owners, following
    /// `MOVED` and `ASK`), so that the replicas' count is this grant's and no other command
    /// queues behind the wait.
    pub(crate) async fn acquire_acknowledged(
        &self,
        key: &LockKey,
        token: &crate::token::HoldToken,
        lease: Duration,
        replicas: Replicas,
        grant: Grant,
    ) -> Result<(Attempt, u32), Error> {
        let invocation = grant.invocation(&self.prefix, key, token, lease, self.retention);
        let limit = self.response_timeout.saturating_add(replicas.timeout);
        let slot = slot(key.as_str().as_bytes());
        let mut target: Option<(String, bool)> = None;
        for _ in 0..5 {
            let (node, asking) = match target.take() {
                Some(target) => target,
                None => {
                    let _ = tokio::time::timeout(
                        self.response_timeout,
                        self.refresh_owners(self.response_timeout),
                    )
                    .await;
                    let owner = self.master_of_slot(slot).ok_or_else(|| {
                        Error::backend(format!("no known master serves slot {slot}"))
                    })?;
                    (owner, false)
                }
            };
            let idle = lock(&self.waiting).get_mut(&node).and_then(Vec::pop);
            let mut connection = match idle {
                Some(connection) => connection,
                None => {
                    let config = self.node_config.clone().set_response_timeout(None);
                    let opened = self.open_node(&node, self.response_timeout, &config).await;
                    if opened.is_err() {
                        if let Some(owners) = lock(&self.owners).as_mut() {
                            owners.fresh = false;
                        }
                    }
                    opened?
                }
            };
            let pipe = acknowledged_pipeline(&invocation, replicas, asking);
            let sent = send_acknowledged(&mut connection, &invocation, &pipe, asking, limit).await;
            let replies = match sent {
                Ok(replies) => replies,
                Err(err) => {
                    // The node may be gone (a failover): read the owners again, and use none of
                    // its idle connections (this one may have a reply outstanding).
                    lock(&self.waiting).remove(&node);
                    if let Some(owners) = lock(&self.owners).as_mut() {
                        owners.fresh = false;
                    }
                    return Err(err);
                }
            };
            {
                let mut waiting = lock(&self.waiting);
                let idle = waiting.entry(node.clone()).or_default();
                if idle.len() < MAX_IDLE_WAITING {
                    idle.push(connection);
                }
            }
            match replies.first() {
                Some(Value::ServerError(err)) if matches!(err.code(), "MOVED" | "ASK") => {
                    // Nothing ran: the slot is served elsewhere.
                    let address = err
                        .details()
                        .and_then(|details| details.split_whitespace().nth(1))
                        .ok_or_else(|| {
                            Error::backend(format!("a redirection without a node: {err:?}"))
                        })?
                        .to_owned();
                    if err.code() == "MOVED" {
                        if let Some(owners) = lock(&self.owners).as_mut() {
                            owners.fresh = false;
                        }
                    }
                    target = Some((address, err.code() == "ASK"));
                }
                Some(Value::ServerError(err)) if err.code() == "TRYAGAIN" => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                _ => return parse_acknowledged(replies),
            }
        }
        Err(Error::backend(format!(
            "slot {slot} kept moving while an acquisition waited for replicas"
        )))
    }

    /// Sends one master's renewal pipeline on the direct connection to it. A hold whose slot the
    /// node no longer serves (`MOVED`, `ASK`, `CLUSTERDOWN`, ...) gets `None`, and the owners are
    /// read again before the next round.
    async fn renew_on_master(
        &self,
        master: &str,
        pipe: redis::Pipeline,
        count: usize,
        bound: Duration,
    ) -> Result<Vec<Option<bool>>, Error> {
        let mut connection = self.node(master, bound).await?;
        let mut answers = connection.req_packed_commands(&pipe, 0, count).await?;
        if answers.iter().any(is_noscript_value) {
            scripts::RENEW
                .prepare_invoke()
                .load_async(&mut connection)
                .await?;
            answers = connection.req_packed_commands(&pipe, 0, count).await?;
        }
        let answers = renewal_answers(answers, count)?;
        if answers.iter().any(Option::is_none) {
            if let Some(owners) = lock(&self.owners).as_mut() {
                owners.fresh = false;
            }
        }
        Ok(answers)
    }

    /// The addresses of the masters, as `CLUSTER SLOTS` names them.
    pub(super) async fn masters(&self) -> Result<Vec<(String, u16)>, Error> {
        let mut connection = self.conn().await?;
        let reply = connection
            .route_command(
                redis::cmd("CLUSTER").arg("SLOTS").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary),
            )
            .await?;
        let mut masters: Vec<(String, u16)> = parse_slots(&reply)
            .into_iter()
            .filter_map(|range| {
                let (host, port) = range.master.rsplit_once(':')?;
                Some((host.to_owned(), port.parse().ok()?))
            })
            .collect();
        masters.sort();
        masters.dedup();
        Ok(masters)
    }

    /// One `SCAN` step over every master: `cursor` numbers the master (high 32 bits) and that
    /// master's own cursor (low 32 bits); the next cursor is 0 when every master is done.
    pub(crate) async fn scan(
        &self,
        pattern: &KeyPattern,
        cursor: u64,
    ) -> Result<(u64, Vec<LockKey>), Error> {
        let masters = self.masters().await?;
        let index = (cursor >> 32) as usize;
        let Some((host, port)) = masters.get(index) else {
            return Ok((0, Vec::new()));
        };
        let mut connection = self.conn().await?;
        let reply = connection
            .route_command(
                redis::cmd("SCAN")
                    .arg(cursor & u64::from(u32::MAX))
                    .arg("MATCH")
                    .arg(scan_glob(&self.prefix, pattern))
                    .arg("COUNT")
                    .arg(1000)
                    .clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port: *port,
                }),
            )
            .await?;
        let (next, names): (u64, Vec<String>) =
            redis::from_redis_value(reply).map_err(redis::RedisError::from)?;
        let next = if next != 0 {
            // A node's cursor fits in 32 bits for any keyspace it can hold in memory.
            ((index as u64) << 32) | next
        } else if index + 1 < masters.len() {
            (index as u64 + 1) << 32
        } else {
            0
        };
        Ok((next, found_keys(&self.prefix, pattern, &names)))
    }

    /// Inspects `keys`, one call each, sent concurrently.
    pub(crate) async fn inspect_many(
        &self,
        keys: &[LockKey],
    ) -> Result<Vec<Option<LockInfo>>, Error> {
        join_all(keys.iter().map(|key| self.inspect(key)))
            .await
            .into_iter()
            .collect()
    }

    /// Before a request is routed: reads the slot owners if they never were (within the response
    /// timeout; concurrent requests wait for one reading), or starts reading them again in the
    /// background if they are old or found wrong (the request is routed by the stale map
    /// meanwhile: a node that no longer serves the slot redirects it, and it is resent).
    async fn route(self: &Arc<Self>) {
        let fresh = lock(&self.owners)
            .as_ref()
            .map(|owners| owners.fresh && owners.read.elapsed() < SLOT_OWNERS_TTL);
        match fresh {
            Some(true) => {}
            Some(false) => self.read_owners_in_background(),
            None => {
                let _reading = self.reading_owners.lock().await;
                let _ = tokio::time::timeout(
                    self.response_timeout,
                    self.refresh_owners(self.response_timeout),
                )
                .await;
            }
        }
    }

    /// Reads the slot owners again from a task of its own, unless a reading is under way.
    fn read_owners_in_background(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let shared = self.clone();
        drop(runtime.spawn(async move {
            let Ok(_reading) = shared.reading_owners.try_lock() else {
                return;
            };
            let bound = shared.response_timeout;
            let _ = tokio::time::timeout(bound, shared.refresh_owners(bound)).await;
        }));
    }

    /// The slot owners are wrong somewhere (a node answered for a slot it does not serve, or is
    /// gone): read them again.
    fn owners_wrong(self: &Arc<Self>) {
        if let Some(owners) = lock(&self.owners).as_mut() {
            owners.fresh = false;
        }
        self.read_owners_in_background();
    }

    /// One call of `requests` to `master`: one pipeline of their scripts on the direct connection
    /// to it, each request answered on its own (see the module's documentation for what is
    /// resent through the cluster connection, and when a failure is an unknown outcome).
    async fn call_master(
        self: &Arc<Self>,
        master: &str,
        requests: &[&Request],
        retention_ms: u64,
    ) -> Result<Vec<Answer>, Failure> {
        let count = requests.len();
        let mut pipe = redis::pipe();
        for request in requests {
            pipe.add_command(cluster_command(request, retention_ms).1);
        }
        let mut connection = match self.node(master, self.response_timeout).await {
            Ok(connection) => connection,
            Err(err) => {
                // Nothing was written.
                tracing::debug!(error = %err, master, requests = count, "relock: no connection to a cluster master; resending through the cluster connection");
                self.node_failed(master);
                return Ok(self.resend_all(requests, retention_ms).await);
            }
        };
        let replies = match connection.req_packed_commands(&pipe, 0, count).await {
            Ok(replies) if replies.len() == count => replies,
            Ok(replies) => {
                self.node_failed(master);
                return Err(Failure::Unexpected(format!(
                    "cluster master {master} answered {} of {count} requests",
                    replies.len()
                )));
            }
            Err(err) if err.is_timeout() => {
                // A stalled node: the requests may still run there. Unknown outcomes.
                self.node_failed(master);
                return Err(Failure::Redis(err));
            }
            Err(err) => {
                // Written or not, in part or in whole: each request is idempotent per hold token
                // (see the module's documentation), so each is resent.
                tracing::debug!(error = %err, master, requests = count, "relock: a cluster master's connection failed; resending through the cluster connection");
                self.node_failed(master);
                return Ok(self.resend_all(requests, retention_ms).await);
            }
        };
        let mut answers = Vec::with_capacity(count);
        let mut resend = Vec::new();
        let (mut moved, mut noscript) = (false, Vec::new());
        for (at, (request, reply)) in requests.iter().zip(replies).enumerate() {
            match reply {
                Value::ServerError(err) if not_run(err.code()) => {
                    if err.kind() == Some(redis::ServerErrorKind::NoScript) {
                        noscript.push(cluster_command(request, retention_ms).0);
                    } else {
                        moved = true;
                    }
                    resend.push(at);
                    answers.push(Ok((0, Value::Nil)));
                }
                Value::ServerError(err) => {
                    let err = redis::RedisError::from(err);
                    answers.push(Err(if is_request_failure(&err) {
                        request_failure(&err, request)
                    } else {
                        err.into()
                    }));
                }
                reply => answers.push(protocol::single_answer(request, reply)),
            }
        }
        if resend.is_empty() {
            return Ok(answers);
        }
        if moved {
            self.owners_wrong();
        }
        // The master lost its scripts (a restart, a promoted replica): load them there once,
        // rather than once per resent request.
        noscript.sort_by_key(|script| script.get_hash());
        noscript.dedup_by_key(|script| script.get_hash());
        for script in noscript {
            let _ = script.prepare_invoke().load_async(&mut connection).await;
        }
        let resent = join_all(
            resend
                .iter()
                .map(|&at| self.resend(requests[at], retention_ms)),
        )
        .await;
        for (at, answer) in resend.into_iter().zip(resent) {
            answers[at] = answer;
        }
        Ok(answers)
    }

    /// The direct connection to `master` failed: open a new one next time, and read the owners
    /// again (the master may be gone).
    fn node_failed(self: &Arc<Self>, master: &str) {
        lock(&self.nodes).remove(master);
        self.owners_wrong();
    }

    /// Each of `requests` resent alone through the cluster connection.
    async fn resend_all(&self, requests: &[&Request], retention_ms: u64) -> Vec<Answer> {
        join_all(
            requests
                .iter()
                .map(|request| self.resend(request, retention_ms)),
        )
        .await
    }

    /// `request` alone through the cluster connection, which follows redirections and retries;
    /// loads its script if the node lacks it (`NOSCRIPT` ran nothing).
    async fn resend(&self, request: &Request, retention_ms: u64) -> Answer {
        let (script, command) = cluster_command(request, retention_ms);
        let mut connection = self.conn().await?;
        let mut reply = command.query_async::<Value>(&mut connection).await;
        if matches!(&reply, Err(err) if err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript))
        {
            script.prepare_invoke().load_async(&mut connection).await?;
            reply = command.query_async::<Value>(&mut connection).await;
        }
        match reply {
            Ok(reply) => protocol::single_answer(request, reply),
            Err(err) if is_request_failure(&err) => Err(request_failure(&err, request)),
            Err(err) => Err(err.into()),
        }
    }
}

/// A request's own script and its call on a cluster: as on one server, with releases announced
/// on the sharded channel.
fn cluster_command(request: &Request, retention_ms: u64) -> (&'static redis::Script, redis::Cmd) {
    let (script, mut command) = protocol::single(request, retention_ms);
    if request.kind.is_release() {
        command.arg("sharded");
    }
    (script, command)
}

/// A node's refusal of a request it did not run, which the cluster connection knows how to get
/// past: a redirection (`MOVED`, `ASK`), a slot half moved (`TRYAGAIN`), a cluster without full
/// coverage (`CLUSTERDOWN`), a node without the script (`NOSCRIPT`), a replica or a node that is
/// not ready (`READONLY`, `LOADING`, `MASTERDOWN`).
fn not_run(code: &str) -> bool {
    matches!(
        code,
        "MOVED"
            | "ASK"
            | "TRYAGAIN"
            | "CLUSTERDOWN"
            | "NOSCRIPT"
            | "READONLY"
            | "LOADING"
            | "MASTERDOWN"
    )
}

/// Sends one node's renewal pipeline, loading the script on every node if the node lost it.
async fn renew_on_node(
    connection: &mut ClusterConnection,
    pipe: redis::Pipeline,
    route: SingleNodeRoutingInfo,
    count: usize,
) -> Result<Vec<Option<bool>>, Error> {
    let mut answers = connection
        .route_pipeline(pipe.clone(), 0, count, route.clone())
        .await?;
    if answers.iter().any(is_noscript_value) {
        scripts::RENEW
            .prepare_invoke()
            .load_async(connection)
            .await?;
        answers = connection.route_pipeline(pipe, 0, count, route).await?;
    }
    renewal_answers(answers, count)
}

/// One answer per hold of a renewal pipeline: renewed, gone, or not answered (an error such as
/// `MOVED` from a node that no longer serves the slot).
fn renewal_answers(answers: Vec<Value>, count: usize) -> Result<Vec<Option<bool>>, Error> {
    if answers.len() != count {
        return Err(Error::backend(format!(
            "renewal pipeline answered {} of {count} holds",
            answers.len()
        )));
    }
    Ok(answers
        .into_iter()
        .map(|answer| match answer {
            Value::Int(1) => Some(true),
            Value::Int(0) => Some(false),
            _ => None,
        })
        .collect())
}

/// `host:port` of a seed URL.
fn address(info: &ConnectionInfo) -> Option<String> {
    match info.addr() {
        ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
            Some(format!("{host}:{port}"))
        }
        _ => None,
    }
}

fn is_noscript_value(value: &Value) -> bool {
    matches!(value, Value::ServerError(err) if err.kind() == Some(redis::ServerErrorKind::NoScript))
}

/// `CLUSTER SLOTS`: `[[first, last, [host, port, id, ..], replicas..], ..]`.
fn parse_slots(reply: &Value) -> Vec<SlotRange> {
    let Value::Array(ranges) = reply else {
        return Vec::new();
    };
    ranges
        .iter()
        .filter_map(|range| {
            let Value::Array(fields) = range else {
                return None;
            };
            let [Value::Int(first), Value::Int(last), Value::Array(master), ..] = fields.as_slice()
            else {
                return None;
            };
            let host = match master.first()? {
                Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok()?,
                Value::SimpleString(text) => text.clone(),
                _ => return None,
            };
            let Value::Int(port) = master.get(1)? else {
                return None;
            };
            Some(SlotRange {
                first: u16::try_from(*first).ok()?,
                last: u16::try_from(*last).ok()?,
                master: format!("{host}:{port}"),
            })
        })
        .collect()
}

/// The cluster slot of a lock's keys, whose hash tag is the user key: CRC16 (XMODEM) mod 16384.
fn slot(tag: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in tag {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_the_servers() {
        // `CLUSTER KEYSLOT foo` and `CLUSTER KEYSLOT somekey` on a real cluster.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"somekey"), 11058);
    }

    #[test]
    fn cluster_slots_reply_names_each_ranges_master() {
        let node = |host: &str, port| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let reply = Value::Array(vec![Value::Array(vec![
            Value::Int(0),
            Value::Int(5460),
            node("127.0.0.1", 7000),
            node("127.0.0.1", 7003),
        ])]);
        let ranges = parse_slots(&reply);
        assert_eq!(ranges.len(), 1);
        assert_eq!((ranges[0].first, ranges[0].last), (0, 5460));
        assert_eq!(ranges[0].master, "127.0.0.1:7000");
    }
}
