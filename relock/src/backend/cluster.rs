//! The Redis Cluster backend: the same Lua scripts over one redis-rs `cluster-async` connection.
//!
//! Every script names only keys with the hash tag `{K}`, so each call runs on one slot and the
//! client routes it by its first key. The client retries a request after a redirection (`MOVED`,
//! `ASK`), a connection error or a timeout, so a script may run twice: acquire answers a retried
//! request of the same hold with the same grant, renew only extends a lease it still has, and
//! release leaves a short-lived receipt of the released hold token so that a retry of a release
//! that took effect answers "released" again, not "lost".

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::join_all;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{
    MultipleNodeRoutingInfo, ResponsePolicy, Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr,
};
use redis::{ScriptInvocation, Value};
use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::redis::{
    acquire_invocation, found_keys, key_name, millis, parse_acquire, parse_force_release,
    parse_inspect, parse_release, renew_invocation, scan_glob,
};
use super::{Attempt, Released};
use crate::error::Error;
use crate::info::LockInfo;
use crate::key::LockKey;
use crate::lease::Lease;
use crate::pattern::KeyPattern;
use crate::scripts;

/// How long the cached slot owners, used only to group renewals by node, are trusted.
const SLOT_OWNERS_TTL: Duration = Duration::from_secs(10);

pub(crate) struct ClusterBackend {
    client: ClusterClient,
    connection: OnceCell<ClusterConnection>,
    /// Bounds opening the connection, whatever the number of seed nodes.
    connect_limit: Duration,
    prefix: String,
    fence_retention: Duration,
    /// How long a release receipt is kept: well past the client's last retry of the release.
    receipt_retention: Duration,
    /// The master serving each slot range, for grouping renewals by node.
    owners: Mutex<Option<(Instant, Vec<SlotRange>)>>,
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
        connect_limit: Duration,
        response_timeout: Duration,
        prefix: String,
        fence_retention: Duration,
    ) -> Self {
        Self {
            client,
            connection: OnceCell::new(),
            connect_limit,
            prefix,
            fence_retention,
            receipt_retention: response_timeout
                .saturating_mul(4)
                .max(Duration::from_secs(10)),
            owners: Mutex::new(None),
        }
    }

    /// The shared connection, opened on first use; a failed attempt is retried by the next call.
    async fn conn(&self) -> Result<ClusterConnection, Error> {
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

    fn key_name(&self, key: &LockKey, suffix: &str) -> String {
        key_name(&self.prefix, key, suffix)
    }

    /// `P:{K}:released`: the sharded channel a release of `key` is announced on.
    pub(crate) fn channel(&self, key: &LockKey) -> String {
        self.key_name(key, ":released")
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

    pub(crate) async fn acquire(
        &self,
        key: &LockKey,
        token: &crate::token::HoldToken,
        lease: Duration,
    ) -> Result<Attempt, Error> {
        let invocation = acquire_invocation(&self.prefix, key, token, lease, self.fence_retention);
        parse_acquire(self.invoke(&invocation).await?)
    }

    pub(crate) async fn release(
        &self,
        key: &LockKey,
        token: &crate::token::HoldToken,
    ) -> Result<Released, Error> {
        let mut invocation = scripts::RELEASE.key(self.key_name(key, ""));
        invocation
            .key(self.channel(key))
            .key(self.key_name(key, ":receipt"))
            .arg(token.as_str())
            .arg(millis(self.receipt_retention));
        parse_release(self.invoke(&invocation).await?)
    }

    pub(crate) async fn force_release(&self, key: &LockKey) -> Result<(bool, u64), Error> {
        let mut invocation = scripts::FORCE_RELEASE.key(self.key_name(key, ""));
        invocation
            .key(self.channel(key))
            .key(self.key_name(key, ":fence"))
            .arg("sharded");
        parse_force_release(self.invoke(&invocation).await?)
    }

    pub(crate) async fn inspect(&self, key: &LockKey) -> Result<Option<LockInfo>, Error> {
        let invocation = scripts::INSPECT.key(self.key_name(key, ""));
        parse_inspect(key, self.invoke(&invocation).await?)
    }

    /// Renews `leases` with one pipelined round trip per master, sent concurrently. `None` for a
    /// hold whose node did not answer (the watchdog retries it); `Some(false)` for one whose lock
    /// is gone.
    pub(crate) async fn renew(&self, leases: &[Arc<Lease>]) -> Result<Vec<Option<bool>>, Error> {
        let connection = self.conn().await?;
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
        let groups = self.group_by_master(&connection, &slots, bound).await;
        let rounds = groups.iter().map(|indices| {
            let mut connection = connection.clone();
            let mut pipe = redis::pipe();
            for &at in indices {
                pipe.invoke_script(&renew_invocation(
                    &self.prefix,
                    &leases[at],
                    self.fence_retention,
                ));
            }
            let route = SingleNodeRoutingInfo::SpecificNode(Route::new(
                slots[indices[0]],
                SlotAddr::Master,
            ));
            async move {
                let round = renew_on_node(&mut connection, pipe, route, indices.len());
                tokio::time::timeout(bound, round)
                    .await
                    .unwrap_or_else(|_| Err(Error::backend("a cluster node did not renew in time")))
            }
        });
        let mut outcome = vec![None; leases.len()];
        let mut failed = false;
        for (indices, answers) in groups.iter().zip(join_all(rounds).await) {
            match answers {
                Ok(answers) => {
                    for (&at, answer) in indices.iter().zip(answers) {
                        outcome[at] = answer;
                        failed |= answer.is_none();
                    }
                }
                Err(err) => {
                    tracing::debug!(error = %err, holds = indices.len(), "relock: a cluster node did not renew");
                    failed = true;
                }
            }
        }
        if failed {
            // A node that failed may have lost its slots: group by fresh owners next time.
            *lock(&self.owners) = None;
        }
        Ok(outcome)
    }

    /// Indices into `slots`, grouped by the master that serves them (by slot when the owners
    /// cannot be read).
    async fn group_by_master(
        &self,
        connection: &ClusterConnection,
        slots: &[u16],
        bound: Duration,
    ) -> Vec<Vec<usize>> {
        // Without a fresh map in time, holds are grouped by slot: more round trips, none late.
        let _ = tokio::time::timeout(bound, self.refresh_owners(connection)).await;
        let owners = lock(&self.owners);
        let ranges = owners.as_ref().map(|(_, ranges)| ranges.as_slice());
        let mut groups: HashMap<String, Vec<usize>> = HashMap::new();
        for (at, &slot) in slots.iter().enumerate() {
            let owner = ranges
                .and_then(|ranges| {
                    ranges
                        .iter()
                        .find(|range| range.first <= slot && slot <= range.last)
                })
                .map_or_else(|| format!("slot {slot}"), |range| range.master.clone());
            groups.entry(owner).or_default().push(at);
        }
        groups.into_values().collect()
    }

    async fn refresh_owners(&self, connection: &ClusterConnection) {
        if lock(&self.owners)
            .as_ref()
            .is_some_and(|(read, _)| read.elapsed() < SLOT_OWNERS_TTL)
        {
            return;
        }
        let mut connection = connection.clone();
        let reply = connection
            .route_command(
                redis::cmd("CLUSTER").arg("SLOTS").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary),
            )
            .await;
        if let Ok(reply) = reply {
            *lock(&self.owners) = Some((Instant::now(), parse_slots(&reply)));
        }
    }

    /// The addresses of the masters, as `CLUSTER SLOTS` names them.
    async fn masters(&self) -> Result<Vec<(String, u16)>, Error> {
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
