//! Reentrant distributed locks on Redis whose ownership follows the async call tree.
//!
//! A lock taken with [`Acquire::run`] (or `#[locked]`) is held by a *scope*: everything the
//! future does — however deeply nested, across `.await`s and `join!`s — sees the hold, so a nested
//! lock on the same key re-enters at once with **no Redis round trip**, while two sibling futures
//! that are not nested exclude each other like any two owners. `tokio::spawn` does not inherit a
//! scope; [`inherit`] carries it across explicitly ([`inherit_checked`] also stops the spawned
//! future once a hold it carries is lost, as `run` stops its body).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), relock::Error> {
//! // `Locker::connect("redis://127.0.0.1:6379").await?` for Redis; in memory here.
//! let locker = relock::Locker::in_memory();
//!
//! async fn charge(locker: &relock::Locker, order: u64) -> Result<u64, relock::Error> {
//!     // Re-enters the caller's hold: no round trip, no deadlock.
//!     let guard = locker.lock(format!("order:{order}")).await?;
//!     Ok(guard.fencing_token())
//! }
//!
//! let token = locker
//!     .lock("order:42")
//!     .run(async { charge(&locker, 42).await })
//!     .await??;
//! let next = locker.lock("order:42").await?;
//! assert!(next.fencing_token() > token, "fencing tokens only go up");
//! # Ok(()) }
//! ```
//!
//! # Adding it
//!
//! relock is not published on crates.io yet (the `relock` there is another project's crate):
//! depend on a clone of its repository, here next to your project in `../relock`, with Tokio's
//! `macros` and `rt-multi-thread` features for `#[tokio::main]`:
//!
//! ```toml
//! [dependencies]
//! relock = { path = "../relock/relock" }  # features: cluster, sentinel, tls, metrics
//! tokio = { version = "1", features = ["macros", "rt-multi-thread"] }
//! ```
//!
//! Beside it in the repository:
//!
//! * **relock-tower** (`relock-tower = { path = "../relock/relock-tower" }`): `LockLayer`, a
//!   tower middleware that takes a lock per request in axum and tonic services.
//! * **relock-cli**, the operator's `relock` command (`cargo install --path relock-cli` in the
//!   clone): which locks are held, by which host and process, for how much longer; watch them
//!   change hands; force-release a stuck one.
//! * `#[locked]` (feature `macros`, on by default), from the relock-macros crate.
//!
//! The repository's README walks from here to a locked axum route and a CLI session; its
//! `docs/` pages cover production Redis (eviction, Sentinel, Cluster, TLS, ACLs, replicas,
//! clocks), the failure contract and the Redis layout.
//!
//! # Waiting, leases and loss
//!
//! * A request for a held lock waits up to its `wait` (default 10 s) and then fails with
//!   [`Error::Timeout`]. Waiters do not poll: each [`Locker`] keeps one pub/sub connection, and a
//!   waiter sleeps until the holder's release is announced, the holder's lease would end (a
//!   crashed holder announces nothing), or its own deadline.
//! * A hold's lease (default 30 s) is renewed by the locker's watchdog every lease/3, all holds
//!   due at once in one pipelined round trip. If the process dies, the lock frees itself when the
//!   lease ends.
//! * A hold knows its *local deadline*: when its lease would end without a renewal, measured from
//!   before the acquire request was sent, less a drift margin (1% of the lease + 2 ms). When a
//!   renewal finds the hold gone, or the deadline passes while the server cannot be reached, the
//!   hold is **lost**: [`LockGuard::lost`] resolves and [`LockGuard::is_held`] turns false, with no
//!   round trip. [`Acquire::run`] then drops the body and returns [`Error::Lost`] (unless
//!   [`OnLost::Continue`] is chosen). Loss is checked by the clock before every poll of the
//!   body, so a process that stalled past its lease between two polls (a pause, an overloaded
//!   runtime) never takes another step of the body when it wakes. A stall *inside* one poll —
//!   a blocking call, then a write before the next `.await` — finishes that poll's steps: only
//!   the fencing token makes such a write rejectable.
//! * A guard dropped without [`LockGuard::release`] — an early return, a panic, a cancelled
//!   future — is released by the locker's background task, so the lock is free again within a
//!   round trip.
//!
//! The background work (renewal, releases of dropped guards, release notifications) runs as
//! tasks on the Tokio runtime where the locker first takes a lock; use a locker within that
//! runtime, as with any Redis connection.
//!
//! # Read-write locks and semaphores
//!
//! [`Locker::read`] takes a *shared* hold with the same builder ([`Acquire`]) and guard
//! ([`LockGuard`]) as [`Locker::lock`], which is the write lock: readers share, the writer
//! excludes them, and once a writer waits new readers queue behind it, so a stream of readers
//! cannot starve it. In a scope, a read inside a read hold or inside the exclusive hold of the
//! same key re-enters without a round trip; the exclusive lock inside a read hold of the same key
//! is an upgrade, refused at once with [`Error::UpgradeRefused`]. A reader's fencing token is the
//! last writer's.
//!
//! [`Locker::semaphore`] gives a [`Semaphore`] of `n` permits per key, fleet-wide; each
//! [`Permit`] has its own token, lease, renewal, loss signal and fencing token, and a crashed
//! holder's permit comes back when its lease ends. Callers that disagree on `n` for one key get
//! [`Error::PermitsMismatch`].
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), relock::Error> {
//! let locker = relock::Locker::in_memory();
//! let config = locker
//!     .read("config:7")
//!     .run(async {
//!         // Nested reads re-enter; `locker.lock("config:7")` here would be an upgrade.
//!         let again = locker.read("config:7").await?;
//!         assert!(again.is_reentrant());
//!         Ok::<_, relock::Error>("the config")
//!     })
//!     .await??;
//! # let _ = config;
//! let exports = locker.semaphore("tenant:9:exports", 4);
//! let permit = exports.acquire().await?;
//! permit.release().await?;
//! # Ok(()) }
//! ```
//!
//! # Observability
//!
//! relock emits [`tracing`](https://docs.rs/tracing) spans and events, free when nothing
//! subscribes: an `acquire` span (target `relock`) for every request that reaches the server,
//! recording its `outcome`, `waited` and `fencing_token`; a `trace` event for a re-entry (no
//! span: re-entry stays allocation-free); `debug` events for releases (`mode` = `explicit` or
//! `background`, `held_for`); a `warn` event when a hold is lost (`cause`, `since_renewal`),
//! when a renewal fails, and when a server's eviction settings cannot be read (`server`,
//! `reason`: see [`LockerBuilder::allow_eviction`]). With the `metrics` feature it records
//! `relock_*` counters, histograms and a gauge through the [`metrics`](https://docs.rs/metrics)
//! facade; docs/observability.md in the repository lists them.
//!
//! # Features
//!
//! | feature | what it adds |
//! |---|---|
//! | `macros` (default) | `#[locked]` |
//! | `cluster` | `LockerBuilder::cluster`: Redis Cluster, group commit and renewals per master, sharded pub/sub |
//! | `sentinel` | `LockerBuilder::sentinel`: the master Redis Sentinel names, followed through failovers |
//! | `tls` | `rediss://` URLs over rustls, `LockerBuilder::tls_root_ca` and `tls_client_auth` |
//! | `metrics` | `relock_*` metrics through the `metrics` facade |
//!
//! [`LockerBuilder::replicas`] (no feature) makes acquisitions wait until replicas acknowledge
//! them; [`acl_rules`] is the least-privilege Redis ACL relock needs.
//!
//! # Failure contract
//!
//! | situation | what the caller sees |
//! |---|---|
//! | lock held elsewhere past `wait` | [`Error::Timeout`], with the holder's remaining lease |
//! | Redis unreachable at acquire | [`Error::Backend`] within the connect/response timeout (2 s) |
//! | Redis unreachable while holding | [`LockGuard::lost`] fires by the local deadline; `run` aborts |
//! | holder process killed | the lock is free again within one lease |
//! | invalid key | [`Error::InvalidKey`] naming the reason; nothing is sent |
//! | guard dropped in a panic or cancellation | released in the background |
//! | release after the lease ended | [`Error::Lost`]; the next holder's lock is untouched, even in the same scope |
//! | process stalled past its lease | `run` returns [`Error::Lost`] without polling the body again (a stall *inside* one poll — a blocking call, then a write before the next `.await` — only the fencing token covers) |
//! | hold lost while a spawned future carries it | [`inherit_checked`] returns [`Error::Lost`] without polling the future again; a future carried by plain [`inherit`] is **not** stopped |
//! | fewer replicas than asked acknowledge a grant | [`Error::NotReplicated`]; the grant is released |
//! | release or acquisition with an unknown outcome (timeout, dropped connection) | [`Error::Backend`]; the hold's token is released in the background, retried until the server answers |
//! | server restarted without persistence, tombstone expired, failover | the next fencing token is still larger than every earlier one |
//! | an acquisition reaches the server after its own release (a delayed request) | refused; nothing is left held |
//! | lease under 10 ms or over 30 days ([`Locker::MIN_LEASE`], [`Locker::MAX_LEASE`]) | [`Error::InvalidLease`], nothing sent; never a lock without expiry (any `wait` works, `Duration::MAX` included) |
//! | server may evict keys (`maxmemory` with a `maxmemory-policy` other than `noeviction`) | [`Error::EvictingServer`] from `connect` and the first lock, naming the setting, unless [`LockerBuilder::allow_eviction`]; checked on every master of a cluster and each master found behind Sentinel |
//! | with `allow_eviction`, a held lock evicted | [`LockGuard::lost`] fires at the next renewal (within lease/3); `run` aborts |
//! | waiting for a lock this task holds through a bare guard | [`Error::WouldDeadlock`] at the deadline |
//! | the exclusive lock inside the scope's read hold of the key (an upgrade) | [`Error::UpgradeRefused`] at once |
//! | two callers disagree on a semaphore's permits (or read a semaphore's key) | [`Error::PermitsMismatch`]; nothing taken |
//! | a reader or permit holder killed | its share is free again within one lease, reclaimed by the next request |
//!
//! # Redis layout
//!
//! For a key `K` and prefix `P` (default `relock`), a lock is **one key**, `P:{K}`, and one
//! channel, `P:{K}:released`, sharing the hash tag `{K}` (one Redis Cluster slot, one Lua script
//! per operation). The key holds either a **hold** — its own random 128-bit token, the fencing
//! token, the lease's **deadline** on the server's clock (checked by every script: a hold past it
//! is free) and holder metadata — or, after a release, a **tombstone** keeping the last fencing
//! token and naming the released hold, so that a retried release recognises its own effect and
//! an acquisition that reaches the server after its own release is refused. The key's expiry is
//! the retention ([`LockerBuilder::fence_retention`], 10 minutes by default, never shorter than a
//! live hold's lease): after it nothing of the lock is left. A value of any other form is never
//! overwritten. `relock/src/scripts/README.md` is the protocol, byte for byte.
//!
//! Readers and permits live in the same key, in a third form (`*`, then the last fencing token,
//! the number of permits, a waiting writer's claim, and each holder's token, deadline and fencing
//! token); the exclusive scripts recognise it only after a free key and a tombstone, so an
//! exclusive acquisition and release cost what they did before shared holds existed. A released
//! reader or permit stays in that list as a *released* entry until its lease would have ended (at
//! most 8 per key, the oldest forgotten first): like a tombstone, it makes a retried release
//! report success and refuses an acquisition that reaches the server after its own release. It
//! is no holder: it takes no permit, no writer waits for it, and `inspect` and `list` do not show
//! it.
//!
//! A refusal marks the hold it met (the space after its token becomes `+`), and on a single
//! server only a marked hold's release is announced: a waiter subscribes after its first refusal
//! and then asks again, so the hold it waits for has always refused it (a waiter whose `Locker` is
//! subscribed already, as another of its waiters waits for the key, arms its wake-up before its
//! first attempt and sleeps after that one refusal). An uncontended lock costs no `PUBLISH`. A
//! release message counts the shared holds it returned (empty for an exclusive hold's release):
//! each `Locker` wakes that many of its permit waiters, and every reader and writer waiter; a
//! refused waiter's mark on a shared key survives the release of its only holder (the key keeps
//! the shared form then, not a tombstone), so the next holder's release is announced too.
//!
//! On a single server (directly, through a pool or behind Sentinel), acquisitions (exclusive holds,
//! readers and permits alike) and releases
//! that arrive while calls are in flight on the locker's connection queue up and go out together
//! as one call of a batch script (group commit), which runs each as its own call would (the
//! releases first, so that a lock released and asked for in the same call is granted), with its
//! own reply and error (the shared requests of one key in one call — many readers, a burst of
//! permits — are decided on its value read once and written once, with the answers one call each
//! would give); an idle locker sends each request at once, alone.
//!
//! Every fresh acquisition writes a token of its own, and release and renewal act on that token
//! only: a late release or renewal of an old hold (lost, force-released, cancelled mid-flight)
//! never touches a newer hold, even one taken in the same scope. Re-entry is decided in this
//! process and never reaches Redis. An acquisition retried with the same token gets the same
//! grant back, so a client-side retry is harmless.
//!
//! # Fencing tokens
//!
//! A fencing token is `max(last token + 1, server time in µs)`: strictly increasing per key, and
//! still increasing when the last token is gone — its tombstone expired after the retention, lost
//! in a restart of a server without persistence, or missing on a replica promoted before it was
//! replicated. Tokens stay below 2^53 (Lua's numbers are doubles, exact up to there): a key whose
//! last token is at that limit refuses further grants with an error rather than hand out a
//! token twice (the clock alone reaches it in the year 2255). The
//! one assumption: the server's clock (after a failover, the new master's clock) does not step
//! back by more than the time between two grants of a key. Keep server clocks synchronised
//! (NTP slews rather than steps small offsets).
//!
//! # What a Redis lock can and cannot promise
//!
//! A Redis lock is for efficiency and coordination. A holder can be paused (GC, swapping, a
//! stalled network) past its lease while another owner takes the lock; no lock service can stop
//! that holder's late write. Where a stale write would corrupt data, pass
//! [`LockGuard::fencing_token`] to the resource and have it reject tokens older than the newest it
//! has seen, on reads as well as writes.
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod acl;
mod acquire;
mod backend;
mod error;
mod guard;
mod info;
mod key;
mod lease;
mod local;
mod locker;
mod metrics;
mod pattern;
mod protocol;
mod scope;
mod scripts;
mod semaphore;
mod subscriber;
mod tls;
mod token;
mod wait;
mod watchdog;

pub use acl::{acl_rules, ACL_CLUSTER_RULES, ACL_LIST_RULES, ACL_REPLICAS_RULES};
pub use acquire::{Acquire, LockFuture, OnLost};
pub use error::{BackendError, Error, InvalidKeyReason};
pub use guard::LockGuard;
pub use info::{LockInfo, LockMode};
pub use key::{IntoLockKey, LockKey};
pub use locker::{global, set_global, Locker, LockerBuilder};
pub use scope::{current_guard, inherit, inherit_checked};
pub use semaphore::{AcquirePermit, Permit, PermitFuture, Semaphore};

/// The connection pool crate, for [`LockerBuilder::pool`].
pub use bb8;
/// bb8's Redis connection manager, for [`LockerBuilder::pool`].
pub use bb8_redis;
/// The Redis client crate relock speaks through.
pub use redis;

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[doc(hidden)]
#[allow(missing_docs, unreachable_pub)]
pub mod __private;

/// Wraps an `async fn` in acquire → body → release; see the `relock-macros` crate docs.
#[cfg(feature = "macros")]
#[cfg_attr(docsrs, doc(cfg(feature = "macros")))]
pub use relock_macros::locked;
