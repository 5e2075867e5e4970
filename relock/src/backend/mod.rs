//! Where locks live: a Redis server (through a multiplexed connection, a bb8 pool or the master
//! the sentinels name), a Redis Cluster, or this process's memory. All speak the same small
//! protocol of attempts and releases.

use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::info::LockInfo;
use crate::key::LockKey;
use crate::lease::Lease;
use crate::protocol;
use crate::token::HoldToken;

pub(crate) mod batch;
#[cfg(feature = "cluster")]
pub(crate) mod cluster;
pub(crate) mod eviction;
pub(crate) mod memory;
pub(crate) mod redis;
#[cfg(feature = "sentinel")]
pub(crate) mod sentinel;

/// The answer to one acquisition attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// The hold has the lock now, under this fencing token.
    Acquired { fencing_token: u64 },
    /// Another hold has it; its lease has this much left, when the backend knows.
    Held { ttl: Option<Duration> },
    /// Refused: this hold token was released already (the acquisition reached the server after
    /// its own release, sent when its outcome was unknown). Nothing is held.
    ReleasedAlready,
    /// Refused: the key's live shared holders use this many permits (0: they are readers),
    /// not the number asked for. Nothing was written.
    Mismatch { permits: u32 },
}

/// What an acquisition asks for, when the backend builds its script call itself (an acquisition
/// that waits for replicas).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Grant {
    /// An exclusive hold; `claim` as for [`Backend::acquire`].
    Exclusive { claim: bool },
    /// A shared hold: a reader (`permits` 0) or one of `permits` permits.
    Shared { permits: u32 },
}

impl Grant {
    /// The script call that asks for this grant (the same on one server and on a cluster).
    pub(crate) fn invocation(
        self,
        prefix: &str,
        key: &LockKey,
        token: &HoldToken,
        lease: Duration,
        retention: Duration,
    ) -> ::redis::ScriptInvocation<'static> {
        match self {
            Self::Exclusive { claim } => {
                protocol::acquire_invocation(prefix, key, token, lease, retention, claim)
            }
            Self::Shared { permits } => {
                protocol::acquire_shared_invocation(prefix, key, token, lease, retention, permits)
            }
        }
    }
}

/// How many replicas must acknowledge a grant, and how long the master waits for them (`WAIT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Replicas {
    pub(crate) count: u32,
    pub(crate) timeout: Duration,
}

/// The answer to a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Released {
    /// The hold had the lock, and the lock is free now.
    Free,
    /// The hold did not have the lock any more: its lease had ended, or it was force-released.
    NotHeld,
    /// The hold's release had taken effect already (a retried release: the tombstone names it).
    Again,
}

/// A lock's storage.
#[derive(Debug)]
pub(crate) enum Backend {
    Redis(Box<redis::RedisBackend>),
    #[cfg(feature = "cluster")]
    Cluster(Box<cluster::ClusterBackend>),
    Memory(Box<memory::MemoryBackend>),
}

impl Backend {
    /// An exclusive hold of `key`. `claim`: the caller will wait, so a refusal by readers or
    /// permits makes new ones queue behind it (a single attempt claims nothing).
    pub(crate) async fn acquire(
        &self,
        key: &LockKey,
        token: &HoldToken,
        lease: Duration,
        claim: bool,
    ) -> Result<Attempt, Error> {
        match self {
            Self::Redis(redis) => redis.acquire(key, token, lease, claim).await,
            #[cfg(feature = "cluster")]
            // Boxed: the cluster's group commit makes a large future, and this one is awaited
            // in every backend's lock path (deeply nested `run`s overflowed a debug build's stack).
            Self::Cluster(cluster) => Box::pin(cluster.acquire(key, token, lease, claim)).await,
            Self::Memory(memory) => Ok(memory.acquire_claiming(key, token, lease, claim)),
        }
    }

    /// A shared hold of `key`: a reader (`permits` 0) or one of `permits` permits.
    pub(crate) async fn acquire_shared(
        &self,
        key: &LockKey,
        token: &HoldToken,
        lease: Duration,
        permits: u32,
    ) -> Result<Attempt, Error> {
        match self {
            Self::Redis(redis) => redis.acquire_shared(key, token, lease, permits).await,
            #[cfg(feature = "cluster")]
            Self::Cluster(cluster) => cluster.acquire_shared(key, token, lease, permits).await,
            Self::Memory(memory) => Ok(memory.acquire_shared(key, token, lease, permits)),
        }
    }

    /// [`acquire`](Self::acquire) or [`acquire_shared`](Self::acquire_shared), as `grant` says,
    /// then `WAIT` for `replicas` on the same node connection, in one pipeline: the attempt, and
    /// how many replicas acknowledged the writes so far (the grant, when there was one). The
    /// in-memory store has no replicas: it acknowledges none.
    pub(crate) async fn acquire_acknowledged(
        &self,
        key: &LockKey,
        token: &HoldToken,
        lease: Duration,
        replicas: Replicas,
        grant: Grant,
    ) -> Result<(Attempt, u32), Error> {
        match self {
            Self::Redis(redis) => {
                redis
                    .acquire_acknowledged(key, token, lease, replicas, grant)
                    .await
            }
            #[cfg(feature = "cluster")]
            Self::Cluster(cluster) => {
                cluster
                    .acquire_acknowledged(key, token, lease, replicas, grant)
                    .await
            }
            Self::Memory(memory) => {
                let attempt = match grant {
                    Grant::Exclusive { claim } => memory.acquire_claiming(key, token, lease, claim),
                    Grant::Shared { permits } => memory.acquire_shared(key, token, lease, permits),
                };
                Ok((attempt, 0))
            }
        }
    }

    /// Releases the hold `token` of `key`, whose fencing token is `fencing_token` (0 when the
    /// caller never learnt it: an acquisition whose outcome is unknown).
    pub(crate) async fn release(
        &self,
        key: &LockKey,
        token: &HoldToken,
        fencing_token: u64,
    ) -> Result<Released, Error> {
        match self {
            Self::Redis(redis) => redis.release(key, token, fencing_token).await,
            #[cfg(feature = "cluster")]
            // Boxed, as in `acquire`.
            Self::Cluster(cluster) => Box::pin(cluster.release(key, token, fencing_token)).await,
            Self::Memory(memory) => Ok(memory.release(key, token)),
        }
    }

    /// Extends the leases of `leases`, in one round trip per node: `Some(false)` for a hold that
    /// no longer has its lock, `None` for one whose node did not answer (a cluster node down).
    pub(crate) async fn renew(&self, leases: &[Arc<Lease>]) -> Result<Vec<Option<bool>>, Error> {
        match self {
            Self::Redis(redis) => Ok(redis.renew(leases).await?.into_iter().map(Some).collect()),
            #[cfg(feature = "cluster")]
            Self::Cluster(cluster) => cluster.renew(leases).await,
            Self::Memory(memory) => Ok(leases
                .iter()
                .map(|lease| Some(memory.renew(&lease.key, &lease.token, lease.duration)))
                .collect()),
        }
    }

    pub(crate) async fn inspect(&self, key: &LockKey) -> Result<Option<LockInfo>, Error> {
        match self {
            Self::Redis(redis) => redis.inspect(key).await,
            #[cfg(feature = "cluster")]
            Self::Cluster(cluster) => cluster.inspect(key).await,
            Self::Memory(memory) => Ok(memory.inspect(key)),
        }
    }

    /// Removes whatever hold `key` has: whether there was one, and the last fencing token handed
    /// out before the removal (a grant with a larger one came after it).
    pub(crate) async fn force_release(&self, key: &LockKey) -> Result<(bool, u64), Error> {
        match self {
            Self::Redis(redis) => redis.force_release(key).await,
            #[cfg(feature = "cluster")]
            Self::Cluster(cluster) => cluster.force_release(key).await,
            Self::Memory(memory) => Ok(memory.force_release(key)),
        }
    }

    /// The in-memory backend can release without waiting, which lets a dropped guard free its
    /// lock before `drop` returns.
    pub(crate) fn as_memory(&self) -> Option<&memory::MemoryBackend> {
        match self {
            Self::Memory(memory) => Some(memory),
            _ => None,
        }
    }
}

/// Host name and process id written beside each hold, so `inspect` can say who holds a lock.
pub(crate) struct Holder {
    pub(crate) host: String,
    pub(crate) pid: u32,
}

pub(crate) static HOLDER: std::sync::LazyLock<Holder> = std::sync::LazyLock::new(|| Holder {
    host: host_name(),
    pid: std::process::id(),
});

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .unwrap_or_else(|| "unknown".to_owned())
}
