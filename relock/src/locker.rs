use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use bb8_redis::RedisConnectionManager;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::mpsc;

use crate::acquire::Acquire;
use crate::backend::eviction::EvictionCheck;
use crate::backend::memory::MemoryBackend;
use crate::backend::redis::{Connection, Dedicated, RedisBackend};
use crate::backend::{Backend, Released, Replicas};
use crate::error::Error;
use crate::guard::LockGuard;
use crate::info::LockInfo;
use crate::key::{IntoLockKey, LockKey};
use crate::lease::Mode;
use crate::local::LocalHolds;
use crate::pattern::KeyPattern;
use crate::scope::Frame;
use crate::semaphore::Semaphore;
use crate::subscriber::{Notifications, Subscriber};
use crate::tls::TlsSettings;
use crate::token::HoldToken;
use crate::wait::ReleaseSignal;
use crate::watchdog::Watchdog;

const DEFAULT_PREFIX: &str = "relock";
const DEFAULT_LEASE: Duration = Duration::from_secs(30);
const DEFAULT_WAIT: Duration = Duration::from_secs(10);
/// The tombstone only has to bridge a server clock that steps back between two grants, and a
/// request delayed past its own release; the clock mixed into every token does the rest.
const DEFAULT_FENCE_RETENTION: Duration = Duration::from_secs(10 * 60);
/// Longer retentions are cut to this.
const MAX_FENCE_RETENTION: Duration = Duration::from_secs(365 * 24 * 3600);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Takes, inspects and force-releases locks; the entry point of relock.
///
/// A `Locker` is cheap to clone (clones share one connection, one set of defaults and one
/// background task) and is meant to be created once and shared, or installed with
/// [`set_global`](crate::set_global).
///
/// # Connections
///
/// [`Locker::connect`] and [`LockerBuilder::url`] use **one multiplexed connection** (redis-rs's
/// `ConnectionManager`, which reconnects on failure) shared by every task: commands from
/// concurrent tasks are pipelined on it, so there is no per-checkout `PING` and no pool to run
/// dry. On this project's benchmark machine (2 cores, loopback Redis 7), 64 tasks locking distinct
/// keys with `SET NX PX` + a Lua release ran 6.1× faster over one multiplexed connection than
/// with a checkout from a default bb8 pool per command, and 3.0× faster than with a pool that
/// skips the checkout `PING` (see `BENCHMARKS.md`). A pool the application already has can be
/// passed with [`LockerBuilder::pool`]: relock checks one multiplexed connection out of it and
/// shares it the same way (0.98× the rate of `connect` in the same run).
///
/// # Examples
///
/// ```no_run
/// # #[tokio::main] async fn main() -> Result<(), relock::Error> {
/// let locker = relock::Locker::connect("redis://127.0.0.1:6379").await?;
/// let guard = locker.lock("order:42").await?;
/// // ... work on order 42 ...
/// guard.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Locker {
    shared: Arc<Shared>,
}

struct Shared {
    backend: Arc<Backend>,
    local: Arc<LocalHolds>,
    watchdog: Arc<Watchdog>,
    config: Config,
    /// Releases of guards dropped without `release()`, for the background task.
    releases: mpsc::UnboundedSender<ReleaseJob>,
    background: Mutex<Option<mpsc::UnboundedReceiver<ReleaseJob>>>,
    started: AtomicBool,
    /// Where the release subscriber's dedicated connection goes, when there is a URL or cluster.
    notifications: Option<Notifications>,
    subscriber: OnceLock<Subscriber>,
    connect_timeout: Duration,
    /// Whether the server may evict keys, checked before the first lock.
    eviction: EvictionCheck,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.watchdog.stop();
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    pub(crate) lease: Duration,
    pub(crate) wait: Duration,
    /// Replicas that must acknowledge each grant, if any.
    pub(crate) replicas: Option<Replicas>,
}

struct ReleaseJob {
    key: LockKey,
    token: HoldToken,
    /// The hold's fencing token, 0 when never learnt (the tombstone then takes the hold's).
    fencing_token: u64,
    /// The key's local slot, freed once the server answers.
    slot: Option<u64>,
    /// When the lease has ended at the server for sure: retrying past it is pointless.
    free_by: Instant,
}

/// A background release that fails is retried after this long at first, doubling up to
/// [`LONGEST_RELEASE_RETRY`].
const FIRST_RELEASE_RETRY: Duration = Duration::from_millis(50);
/// The first repeat of the release of an acquisition whose outcome is unknown and that found
/// nothing to release; each repeat waits twice as long as the one before, up to
/// [`LONGEST_LATE_RELEASE`].
const FIRST_LATE_RELEASE: Duration = Duration::from_millis(250);
/// The longest wait between repeats: how long at most a grant that slipped past its tombstone
/// is held by nobody.
const LONGEST_LATE_RELEASE: Duration = Duration::from_secs(2);
const LONGEST_RELEASE_RETRY: Duration = Duration::from_secs(1);

impl Locker {
    /// The shortest lease a lock can have: 10 ms. A shorter one would be mostly drift margin
    /// and renewal round trip.
    pub const MIN_LEASE: Duration = crate::lease::MIN_LEASE;

    /// The longest lease a lock can have: 30 days. Leases are renewed while the lock is held, so
    /// a long lease only says how long a crashed holder keeps the lock.
    pub const MAX_LEASE: Duration = crate::lease::MAX_LEASE;

    /// Connects to the Redis server at `url` with the default settings, checking that it answers
    /// and that it does not evict keys.
    ///
    /// Fails with [`Error::Backend`] if it does not answer: at once for a closed port, within
    /// the connect timeout (2 s) for a server that does not accept or complete the handshake, and
    /// at the latest after the connect and response timeouts together. Fails with
    /// [`Error::EvictingServer`] if the server has `maxmemory` set with an evicting
    /// `maxmemory-policy` (build with [`LockerBuilder::allow_eviction`] to accept that).
    pub async fn connect(url: &str) -> Result<Locker, Error> {
        let locker = Self::builder().url(url).build()?;
        let limit = locker
            .shared
            .connect_timeout
            .saturating_add(DEFAULT_RESPONSE_TIMEOUT);
        let checked = async {
            locker.ping().await?;
            locker.check_eviction().await
        };
        match tokio::time::timeout(limit, checked).await {
            Ok(answered) => answered?,
            Err(_) => {
                return Err(Error::backend(format!(
                    "the server at {url} did not answer within {limit:?}"
                )))
            }
        }
        Ok(locker)
    }

    /// Starts configuring a locker.
    pub fn builder() -> LockerBuilder {
        LockerBuilder::default()
    }

    /// A locker whose locks live in this process's memory, with the same semantics as Redis
    /// (fencing tokens, lease expiry, re-entry, inspect), for tests, demos and single-process use.
    ///
    /// Every call creates a separate store; clones of the returned locker share it.
    pub fn in_memory() -> Locker {
        Self::builder().build_in_memory()
    }

    fn new(
        backend: Backend,
        config: Config,
        notifications: Option<Notifications>,
        connect_timeout: Duration,
        eviction: EvictionCheck,
    ) -> Locker {
        let (releases, background) = mpsc::unbounded_channel();
        let locker = Locker {
            shared: Arc::new(Shared {
                backend: Arc::new(backend),
                local: Arc::default(),
                watchdog: Arc::default(),
                config,
                releases,
                background: Mutex::new(Some(background)),
                started: AtomicBool::new(false),
                notifications,
                subscriber: OnceLock::new(),
                connect_timeout,
                eviction,
            }),
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            locker.start_background();
        }
        locker
    }

    /// Starts a lock request on `key`; await it for a [`LockGuard`] or call
    /// [`run`](Acquire::run) to run a future under the lock.
    ///
    /// Inside a scope that already holds `key` through this locker, the request completes at once
    /// with a re-entrant guard and sends nothing to the server. The key is validated when the
    /// request is awaited; an invalid one fails with [`Error::InvalidKey`].
    ///
    /// A grant that reaches this process only after its lease has ended (the process stalled
    /// between sending the request and reading the reply), or that races a
    /// [`force_release`](Self::force_release) through this locker, is not handed out: the request
    /// fails with [`Error::Lost`] and the grant is released in the background.
    pub fn lock(&self, key: impl IntoLockKey) -> Acquire {
        Acquire::new(self.clone(), key)
    }

    /// Takes the lock if it is free (or re-enters it if the scope holds it); never waits.
    ///
    /// Returns `Ok(None)` when another owner holds it.
    pub async fn try_lock(&self, key: impl IntoLockKey) -> Result<Option<LockGuard>, Error> {
        Acquire::new(self.clone(), key).try_acquire().await
    }

    /// Asks for a shared hold of `key`, as a reader: await it for a [`LockGuard`], or
    /// [`run`](Acquire::run) a future under it — the same builder and guard as [`lock`](Self::lock).
    ///
    /// Readers share the key; [`lock`](Self::lock) is the write lock and excludes them. Once a
    /// writer waits, new readers queue behind it, so a stream of readers cannot starve it (a
    /// writer that makes a single attempt, [`try_lock`](Self::try_lock), holds nobody up; one
    /// that gives up waiting holds new readers up for at most the current readers' longest lease
    /// left plus a second). In a
    /// scope, a read inside a read hold or inside the exclusive hold of the same key re-enters
    /// (no round trip); the exclusive lock inside a read hold of the same key is an upgrade,
    /// refused at once with [`Error::UpgradeRefused`].
    ///
    /// A reader's [`fencing_token`](LockGuard::fencing_token) is the key's last one — the last
    /// writer's, or (when none is known) the server's clock at the first read, which the next
    /// writer's token exceeds: it is at least the token of every writer before the read and less
    /// than that of every writer after it, so a reader can tag what it read.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), relock::Error> {
    /// let locker = relock::Locker::in_memory();
    /// let a = locker.read("config:7").await?;
    /// let b = locker.read("config:7").await?;
    /// assert_eq!(a.fencing_token(), b.fencing_token());
    /// assert!(locker.try_lock("config:7").await?.is_none(), "readers exclude the writer");
    /// let read_token = a.fencing_token();
    /// a.release().await?;
    /// b.release().await?;
    /// let writer = locker.lock("config:7").await?;
    /// assert!(writer.fencing_token() > read_token);
    /// # Ok(()) }
    /// ```
    pub fn read(&self, key: impl IntoLockKey) -> Acquire {
        Acquire::with_mode(self.clone(), key, Mode::Read)
    }

    /// Takes a read hold if no writer has or waits for the key (or re-enters the scope's hold);
    /// never waits. Returns `Ok(None)` when a writer is in the way.
    pub async fn try_read(&self, key: impl IntoLockKey) -> Result<Option<LockGuard>, Error> {
        Acquire::with_mode(self.clone(), key, Mode::Read)
            .try_acquire()
            .await
    }

    /// A semaphore of `permits` permits on `key`, shared by every process using the same server
    /// and prefix: a cheap handle, nothing is sent until a permit is asked for.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), relock::Error> {
    /// let locker = relock::Locker::in_memory();
    /// let exports = locker.semaphore("tenant:9:exports", 4);
    /// let permit = exports.acquire().await?;
    /// // ... at most 4 exports of tenant 9 run at once, fleet-wide ...
    /// permit.release().await?;
    /// # Ok(()) }
    /// ```
    pub fn semaphore(&self, key: impl IntoLockKey, permits: u32) -> Semaphore {
        Semaphore::new(self.clone(), key, permits)
    }

    /// Reads who holds `key`, for how much longer and under which fencing token; `None` when free.
    pub async fn inspect(&self, key: impl IntoLockKey) -> Result<Option<LockInfo>, Error> {
        let key = key.into_lock_key()?;
        self.shared.backend.inspect(&key).await
    }

    /// Every held lock whose key matches the glob `pattern` (`*`, `?`, `[a-z]`, `[^a]`, `\` to
    /// escape), with what [`inspect`](Self::inspect) reads about it — for operators and
    /// dashboards (`relock list 'order:*'`).
    ///
    /// On Redis the stream walks the keys with `SCAN` (so it never blocks the server) and reads
    /// each batch's holders in one pipelined round trip; a lock taken or released during the walk
    /// may or may not be listed, and none is listed twice. A pattern that is not a valid key
    /// apart from its wildcards (braces, control characters, empty) fails at once with
    /// [`Error::InvalidKey`].
    ///
    /// ```
    /// use futures_util::TryStreamExt;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), relock::Error> {
    /// let locker = relock::Locker::in_memory();
    /// let _a = locker.lock("order:1").await?;
    /// let _b = locker.lock("order:2").await?;
    /// let _c = locker.lock("user:1").await?;
    /// let orders: Vec<relock::LockInfo> = locker.list("order:*").try_collect().await?;
    /// assert_eq!(orders.len(), 2);
    /// assert!(orders.iter().all(|info| info.key.starts_with("order:")));
    /// # Ok(()) }
    /// ```
    pub fn list(
        &self,
        pattern: &str,
    ) -> impl futures_util::Stream<Item = Result<LockInfo, Error>> + Send + 'static {
        let start = ListState {
            locker: self.clone(),
            pattern: KeyPattern::new(pattern),
            cursor: None,
            found: std::collections::VecDeque::new(),
        };
        futures_util::stream::unfold(start, ListState::next)
    }

    /// Frees `key` whoever holds it, and wakes its waiters. For operators clearing a lock whose
    /// holder is stuck: the holder's guard reports the loss. Returns whether a holder was removed.
    pub async fn force_release(&self, key: impl IntoLockKey) -> Result<bool, Error> {
        let key = key.into_lock_key()?;
        let (released, last_token) = self.shared.backend.force_release(&key).await?;
        self.shared.local.force_released(&key, last_token);
        self.shared.watchdog.force_released(&key, last_token);
        Ok(released)
    }

    /// A re-entrant guard on the hold of `key` that the current scope has through this locker,
    /// or `None` when the scope does not hold it (or `key` is invalid). Never makes a round trip.
    ///
    /// Unlike [`current_guard`](crate::current_guard), which gives the scope's innermost hold
    /// whatever its key, this finds the hold on `key` itself, however many holds were taken
    /// inside it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), relock::Error> {
    /// let locker = relock::Locker::in_memory();
    /// locker
    ///     .lock("order:42")
    ///     .run(async {
    ///         let _item = locker.lock("item:7").await?;
    ///         let order = locker.current_guard("order:42").expect("held by the scope");
    ///         assert_eq!(order.key(), "order:42");
    ///         assert!(locker.current_guard("order:43").is_none());
    ///         Ok::<_, relock::Error>(())
    ///     })
    ///     .await??;
    /// # Ok(()) }
    /// ```
    pub fn current_guard(&self, key: impl IntoLockKey) -> Option<LockGuard> {
        let key = key.into_lock_key().ok()?;
        Frame::find(self, &key).map(|hold| LockGuard {
            hold,
            reentrant: true,
        })
    }

    /// The locker that `#[locked]` and `LockLayer` use when none is given: the current scope's,
    /// else the global one, else [`Error::NoLocker`].
    pub fn current() -> Result<Locker, Error> {
        Frame::locker().or_else(global).ok_or(Error::NoLocker)
    }

    /// The lease new locks get unless the request sets one.
    pub fn default_lease(&self) -> Duration {
        self.shared.config.lease
    }

    /// How long new lock requests wait unless they set their own wait.
    pub fn default_wait(&self) -> Duration {
        self.shared.config.wait
    }

    async fn ping(&self) -> Result<(), Error> {
        match &*self.shared.backend {
            Backend::Redis(redis) => redis.ping().await,
            #[cfg(feature = "cluster")]
            Backend::Cluster(cluster) => cluster.ping().await,
            Backend::Memory(_) => Ok(()),
        }
    }

    pub(crate) fn backend(&self) -> &Backend {
        &self.shared.backend
    }

    /// Refuses a server that may evict keys ([`Error::EvictingServer`]); asks it only until it
    /// passes once.
    pub(crate) async fn check_eviction(&self) -> Result<(), Error> {
        self.shared.eviction.ensure(&self.shared.backend).await
    }

    pub(crate) fn local(&self) -> &Arc<LocalHolds> {
        &self.shared.local
    }

    pub(crate) fn config(&self) -> Config {
        self.shared.config
    }

    pub(crate) fn same_as(&self, other: &Locker) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    pub(crate) fn watchdog(&self) -> &Watchdog {
        &self.shared.watchdog
    }

    /// How a waiter learns that `key` was released: a confirmed subscription to its release
    /// channel, the in-memory backend's notification, or `None` (no subscriber connection: the
    /// waiter retries with backoff, never past the holder's lease).
    pub(crate) async fn release_signal(&self, key: &LockKey) -> Option<ReleaseSignal> {
        let channel = match &*self.shared.backend {
            Backend::Memory(memory) => return Some(ReleaseSignal::Memory(memory.released(key))),
            Backend::Redis(redis) => redis.channel(key),
            #[cfg(feature = "cluster")]
            Backend::Cluster(cluster) => cluster.channel(key),
        };
        let Some(source) = &self.shared.notifications else {
            return None;
        };
        let subscriber = self
            .shared
            .subscriber
            .get_or_init(|| Subscriber::start(source.clone(), self.shared.connect_timeout));
        match subscriber.subscribe(channel).await {
            Ok(subscription) => Some(ReleaseSignal::Subscribed(subscription)),
            Err(err) => {
                tracing::debug!(%key, error = %err, "relock: waiting without release notifications");
                None
            }
        }
    }

    /// The release signal of `key` if it costs no round trip to the server: this `Locker`'s
    /// subscriber is subscribed to the key's channel already (another of its waiters waits for
    /// the key). A waiter that has it before its first attempt sleeps after that attempt's
    /// refusal, with no second attempt. `None` at once, with nothing awaited, where no waiter
    /// of this `Locker` waits for the key.
    pub(crate) fn release_signal_at_hand(
        &self,
        key: &LockKey,
    ) -> Option<impl std::future::Future<Output = Option<ReleaseSignal>> + '_> {
        let subscriber = self.shared.subscriber.get()?;
        let channel = subscriber.subscribed(|| match &*self.shared.backend {
            Backend::Redis(redis) => redis.channel(key),
            #[cfg(feature = "cluster")]
            Backend::Cluster(cluster) => cluster.channel(key),
            Backend::Memory(_) => String::new(),
        })?;
        // Answered by the task from what it has; it subscribes again only if the last waiter
        // left meanwhile.
        Some(async move {
            subscriber
                .subscribe(channel)
                .await
                .ok()
                .map(ReleaseSignal::Subscribed)
        })
    }

    /// Starts, once and in the current runtime, the watchdog and the task that performs the
    /// releases of dropped guards.
    pub(crate) fn start_background(&self) {
        if self.shared.started.load(Ordering::Acquire) {
            return;
        }
        let Some(mut jobs) = self
            .shared
            .background
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return;
        };
        self.shared.started.store(true, Ordering::Release);
        let backend = self.shared.backend.clone();
        tokio::spawn(
            self.shared
                .watchdog
                .clone()
                .run(backend.clone(), self.shared.local.clone()),
        );
        if backend.as_memory().is_some() {
            return;
        }
        let local = self.shared.local.clone();
        tokio::spawn(async move {
            while let Some(job) = jobs.recv().await {
                tokio::spawn(release_until_answered(backend.clone(), local.clone(), job));
            }
        });
    }

    /// Releases a hold whose last guard was dropped without `release()`, or whose release or
    /// acquisition had an unknown outcome. The key's slot `slot`, if any, stays occupied until
    /// the server answers (or `free_by` passes).
    pub(crate) fn release_in_background(
        &self,
        key: &LockKey,
        token: &HoldToken,
        fencing_token: u64,
        slot: Option<u64>,
        free_by: Instant,
    ) {
        if let Some(memory) = self.shared.backend.as_memory() {
            memory.release(key, token);
            self.free_slot(key, slot);
            return;
        }
        let job = ReleaseJob {
            key: key.clone(),
            token: token.clone(),
            fencing_token,
            slot,
            free_by,
        };
        if self.shared.releases.send(job).is_err() {
            // The background task's runtime has shut down; the lease frees the lock.
            self.free_slot(key, slot);
        }
    }

    fn free_slot(&self, key: &LockKey, slot: Option<u64>) {
        if let Some(slot) = slot {
            self.shared.local.remove(key, slot);
        }
    }
}

/// Sends a background release until the server answers: a failed attempt may not have reached
/// it, and the lock must not stay held for the rest of its lease by a hold nobody has. Gives up
/// when the lease has ended at the server for sure.
///
/// The release of an acquisition whose outcome is unknown (its fencing token never learnt) that
/// finds nothing to release may have overtaken the acquisition (a delayed request on another
/// connection). Its tombstone refuses that acquisition when it arrives — unless another hold was
/// granted and released in between, and the tombstone names that one. So such a release is sent
/// again every [`FIRST_LATE_RELEASE`] to [`LONGEST_LATE_RELEASE`] until the lease would have
/// ended anyway: each repeat names the hold in the tombstone again wherever the lock is free, and
/// a grant that slipped through is released within one interval, not held by nobody for its
/// whole lease. Only releasing an actual grant ends the repeats early: finding its own tombstone
/// says nothing about an acquisition still on its way.
async fn release_until_answered(backend: Arc<Backend>, local: Arc<LocalHolds>, job: ReleaseJob) {
    let answer = release_once_answered(&backend, &job).await;
    if let Some(slot) = job.slot {
        local.remove(&job.key, slot);
    }
    if job.fencing_token != 0 || matches!(answer, None | Some(Released::Free)) {
        return;
    }
    let mut again = FIRST_LATE_RELEASE;
    while Instant::now() + again < job.free_by {
        tokio::time::sleep(again).await;
        again = again.saturating_mul(2).min(LONGEST_LATE_RELEASE);
        if let Some(Released::Free) = release_once_answered(&backend, &job).await {
            tracing::debug!(
                key = %job.key,
                "relock: an acquisition that arrived after its own release was granted; released it"
            );
            return;
        }
    }
}

/// Sends the release until the server answers it, or until the lease has ended for sure (then
/// `None`).
async fn release_once_answered(backend: &Backend, job: &ReleaseJob) -> Option<Released> {
    let mut retry = FIRST_RELEASE_RETRY;
    loop {
        match backend
            .release(&job.key, &job.token, job.fencing_token)
            .await
        {
            Ok(released) => {
                tracing::debug!(key = %job.key, "relock: released in the background");
                return Some(released);
            }
            Err(err) if Instant::now() + retry < job.free_by => {
                tracing::debug!(
                    key = %job.key,
                    error = %err,
                    retry_in = ?retry,
                    "relock: background release failed; retrying"
                );
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(LONGEST_RELEASE_RETRY);
            }
            Err(err) => {
                tracing::warn!(
                    key = %job.key,
                    error = %err,
                    "relock: background release failed; the lock frees itself when its lease ends"
                );
                tokio::time::sleep_until(job.free_by.into()).await;
                return None;
            }
        }
    }
}

/// Where [`Locker::list`] is in its walk over the keys.
struct ListState {
    locker: Locker,
    /// An invalid pattern is reported as the stream's only item.
    pattern: Result<KeyPattern, Error>,
    /// `None` before the first step; `Some(0)` once the walk is complete.
    cursor: Option<u64>,
    found: std::collections::VecDeque<LockInfo>,
}

impl ListState {
    async fn next(mut self) -> Option<(Result<LockInfo, Error>, Self)> {
        loop {
            if let Some(info) = self.found.pop_front() {
                return Some((Ok(info), self));
            }
            if self.cursor == Some(0) {
                return None;
            }
            let pattern = match &self.pattern {
                Ok(pattern) => pattern.clone(),
                Err(_) => {
                    self.cursor = Some(0);
                    let err = std::mem::replace(&mut self.pattern, Err(Error::NoLocker));
                    return Some((Err(err.expect_err("checked above")), self));
                }
            };
            match self.step(&pattern).await {
                Ok(()) => {}
                Err(err) => {
                    self.cursor = Some(0);
                    return Some((Err(err), self));
                }
            }
        }
    }

    async fn step(&mut self, pattern: &KeyPattern) -> Result<(), Error> {
        match self.locker.backend() {
            Backend::Memory(memory) => {
                self.found.extend(memory.list(pattern));
                self.cursor = Some(0);
            }
            Backend::Redis(redis) => {
                let (next, keys) = redis.scan(pattern, self.cursor.unwrap_or(0)).await?;
                let infos = redis.inspect_many(&keys).await?;
                self.found.extend(infos.into_iter().flatten());
                self.cursor = Some(next);
            }
            #[cfg(feature = "cluster")]
            Backend::Cluster(cluster) => {
                let (next, keys) = cluster.scan(pattern, self.cursor.unwrap_or(0)).await?;
                let infos = cluster.inspect_many(&keys).await?;
                self.found.extend(infos.into_iter().flatten());
                self.cursor = Some(next);
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Locker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Locker")
            .field("backend", &self.shared.backend)
            .field("lease", &self.shared.config.lease)
            .field("wait", &self.shared.config.wait)
            .finish()
    }
}

impl AsRef<Locker> for Locker {
    fn as_ref(&self) -> &Locker {
        self
    }
}

/// Configures a [`Locker`]; created by [`Locker::builder`].
///
/// ```no_run
/// # use std::time::{Duration, Instant};
/// # async fn doc() -> Result<(), Box<dyn std::error::Error>> {
/// let manager = bb8_redis::RedisConnectionManager::new("redis://127.0.0.1:6379")?;
/// let pool = bb8::Pool::builder().build(manager).await?;
/// let locker = relock::Locker::builder()
///     .pool(pool)
///     .prefix("billing-locks")
///     .lease(Duration::from_secs(10))
///     .wait(Duration::from_secs(2))
///     .build()?;
/// # Ok(()) }
/// ```
#[derive(Default)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct LockerBuilder {
    url: Option<String>,
    pool: Option<bb8::Pool<RedisConnectionManager>>,
    #[cfg(feature = "cluster")]
    cluster: Option<Vec<String>>,
    /// Sentinel URLs and the master name.
    #[cfg(feature = "sentinel")]
    sentinel: Option<(Vec<String>, String)>,
    #[cfg(feature = "sentinel")]
    master_credentials: Option<(String, String)>,
    prefix: Option<String>,
    lease: Option<Duration>,
    wait: Option<Duration>,
    fence_retention: Option<Duration>,
    connect_timeout: Option<Duration>,
    response_timeout: Option<Duration>,
    replicas: Option<Replicas>,
    tls: TlsSettings,
    allow_eviction: bool,
}

impl LockerBuilder {
    /// Connects to the Redis server at `url` (`redis://host:port/db`, `redis+unix:///path`)
    /// through one multiplexed, reconnecting connection for commands, plus one dedicated
    /// connection for release notifications.
    ///
    /// An ACL user and its password go in the URL (`redis://user:password@host:port`); both
    /// connections log in with them. `rediss://` connects over TLS (feature `tls`), checking the
    /// server's certificate against the system's CA certificates or
    /// `tls_root_ca`.
    ///
    /// The connections are opened on first use; [`Locker::connect`] opens the first at once.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }

    /// Sends commands through `pool`, a bb8 pool the application already has (its URL,
    /// credentials and database).
    ///
    /// bb8-redis pools hold multiplexed connections, so relock checks one out, shares it between
    /// all its tasks, and checks out a fresh one after a connection failure: a checkout per
    /// command would pay the pool's `PING` every time and queue tasks behind the pool's size.
    ///
    /// bb8 pools do not reveal where they connect, so give the same server's [`url`](Self::url)
    /// as well to have waiters woken by release notifications; without it, a waiter retries with
    /// a short backoff, never sleeping past the holder's remaining lease.
    pub fn pool(mut self, pool: bb8::Pool<RedisConnectionManager>) -> Self {
        self.pool = Some(pool);
        self
    }

    /// Locks on a Redis Cluster reached through any of `seeds` (`redis://host:port` URLs of
    /// some of its nodes; the others are discovered).
    ///
    /// Each lock's keys share the hash tag `{key}`, so every script runs on one slot.
    /// Acquisitions and releases go through a group commit per master: one that finds nothing in
    /// flight to its slot's master goes out at once, on a direct connection to that master; those
    /// that arrive meanwhile go out together as one pipeline of their scripts (at most two in
    /// flight per master). A request the master did not run (`MOVED`, `ASK`, `TRYAGAIN`,
    /// `CLUSTERDOWN`, `NOSCRIPT`), or whose connection failed, is resent alone through one
    /// redis-rs cluster connection shared by every task, which also carries every other command.
    /// The watchdog renews the holds of each master in one pipelined round trip; waiters are woken
    /// by sharded pub/sub (`SSUBSCRIBE`, Redis 7+) on a connection of their own. Connections open
    /// on first use, within the [`connect_timeout`](Self::connect_timeout).
    ///
    /// Seeds may log in as an ACL user (`redis://user:password@host:port`, a user every node
    /// knows) and use TLS (`rediss://`, feature `tls`; `tls_root_ca` then
    /// applies to every node, the discovered ones included).
    ///
    /// ```no_run
    /// # fn doc() -> Result<(), relock::Error> {
    /// let locker = relock::Locker::builder()
    ///     .cluster(["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"])
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "cluster")]
    #[cfg_attr(docsrs, doc(cfg(feature = "cluster")))]
    pub fn cluster(mut self, seeds: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.cluster = Some(seeds.into_iter().map(Into::into).collect());
        self
    }

    /// Trusts the CA certificates in `pem` (one or more PEM `CERTIFICATE` blocks) for
    /// `rediss://` connections, **instead of** the system's: for a server whose certificate a
    /// private CA signed. Applies to every connection the locker opens: commands, release
    /// notifications, and each node of a `cluster`.
    ///
    /// Giving TLS settings with a URL that is not `rediss://` fails at [`build`](Self::build).
    /// Defaults to the system's CA certificates.
    ///
    /// ```no_run
    /// # fn doc() -> Result<(), Box<dyn std::error::Error>> {
    /// let ca = std::fs::read("/etc/redis/tls/ca.crt")?;
    /// let locker = relock::Locker::builder()
    ///     .url("rediss://relock:secret@redis.internal:6380")
    ///     .tls_root_ca(ca)
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls_root_ca(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls.root_ca = Some(pem.into());
        self
    }

    /// Presents the client certificate `cert_pem` (the certificate, then any intermediates),
    /// whose private key is `key_pem`, on `rediss://` connections: for servers that require
    /// mutual TLS (`tls-auth-clients yes`). Applies to every connection, like
    /// [`tls_root_ca`](Self::tls_root_ca). Defaults to no client certificate.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls_client_auth(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls.client_auth = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// Locks on the master that the Redis Sentinels at `sentinels` (`redis://host:26379` URLs)
    /// monitor under `master_name`, following it through failovers.
    ///
    /// The master is found by asking every sentinel at once (`SENTINEL MASTER`) which master it
    /// knows under which configuration epoch, then connecting to the one named under the highest
    /// epoch and checking it with `ROLE` (a sentinel that has not yet seen a failover names the
    /// old master under an older epoch; a master found after a newer one was announced is not
    /// used). Each step is bounded by the
    /// [`connect_timeout`](Self::connect_timeout) or the
    /// [`response_timeout`](Self::response_timeout); when no sentinel names a reachable master,
    /// a command fails with [`Error::Backend`] naming the master name and each sentinel's answer.
    ///
    /// Commands go through one multiplexed connection to the master, shared by every task. A
    /// command that fails at the connection level (the master died, a response timeout) or with
    /// `READONLY` (the master was demoted) returns its error, and the next command finds the
    /// master again; a `+switch-master` announced on the sentinels' pub/sub moves the connection
    /// at once. Waiters are woken by pub/sub on a connection of their own to the master, moved
    /// the same way. Connections open on first use.
    ///
    /// The sentinels are reached with their URLs' credentials; the master with the username,
    /// password and database (`/2`) of the URL of the sentinel that named it, unless
    /// [`master_credentials`](Self::master_credentials) are given.
    ///
    /// ```no_run
    /// # fn doc() -> Result<(), relock::Error> {
    /// let locker = relock::Locker::builder()
    ///     .sentinel(["redis://10.0.0.1:26379", "redis://10.0.0.2:26379"], "mymaster")
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "sentinel")]
    #[cfg_attr(docsrs, doc(cfg(feature = "sentinel")))]
    pub fn sentinel(
        mut self,
        sentinels: impl IntoIterator<Item = impl Into<String>>,
        master_name: impl Into<String>,
    ) -> Self {
        self.sentinel = Some((
            sentinels.into_iter().map(Into::into).collect(),
            master_name.into(),
        ));
        self
    }

    /// The ACL user and password for the master found through [`sentinel`](Self::sentinel), when
    /// they differ from the sentinels' (a server with only `requirepass` has the user
    /// `default`). Defaults to the username and password of the sentinel URL that named the
    /// master.
    #[cfg(feature = "sentinel")]
    #[cfg_attr(docsrs, doc(cfg(feature = "sentinel")))]
    pub fn master_credentials(
        mut self,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.master_credentials = Some((username.into(), password.into()));
        self
    }

    /// The prefix of every Redis key relock writes (`<prefix>:{<key>}`), so that applications
    /// sharing a server keep separate lock spaces. Must not contain `{` or `}`.
    /// Defaults to `"relock"`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// How long a lock stays held if its holder stops renewing it: between
    /// [`Locker::MIN_LEASE`] (10 ms) and [`Locker::MAX_LEASE`] (30 days), else [`build`](Self::build) (and, for
    /// [`build_in_memory`](Self::build_in_memory), every lock request) fails with
    /// [`Error::InvalidLease`]. Defaults to 30 seconds.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = Some(lease);
        self
    }

    /// How long a lock request waits for another owner before [`Error::Timeout`].
    /// Defaults to 10 seconds.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = Some(wait);
        self
    }

    /// How long a lock's Redis key is kept after its last grant or renewal (its retention): after
    /// a release it is the tombstone that keeps the key's last fencing token and names the
    /// released hold (so a retried release recognises itself and a late acquisition of that hold
    /// is refused).
    ///
    /// Fencing tokens mix the server's clock in (`max(last token + 1, server time in µs)`), so a
    /// key whose tombstone is gone still gets a larger token than any before, as long as the
    /// server's clock has not stepped back since. The tombstone only has to bridge such a step and
    /// a delayed request: keeping it longer costs one small Redis key per recently locked key.
    /// Never shorter than the lease in force (a shorter retention is stretched to the lease), at
    /// most a year. Defaults to 10 minutes.
    pub fn fence_retention(mut self, retention: Duration) -> Self {
        self.fence_retention = Some(retention);
        self
    }

    /// Makes every acquisition — exclusive locks, read holds and permits alike — wait until
    /// `count` replicas have acknowledged the grant: the acquire script and `WAIT count timeout` go in one pipeline on a connection of their own to
    /// the master that runs the script — opened from the URL, or with a pool and no URL a
    /// dedicated connection of the pool's manager, outside the pool; on a cluster, one to the
    /// slot's master — so the count is this grant's, and no other command queues behind the
    /// wait. When fewer acknowledge in time, the hold is released and the request fails with
    /// [`Error::NotReplicated`].
    ///
    /// Redis replicates asynchronously: a master that fails right after a grant may be replaced
    /// by a replica that never saw it, and the lock is free again there. Waiting for
    /// acknowledgements closes that window for grants (not for renewals: a promoted replica may
    /// have an older expiry than the holder's, which the holder's next renewal extends). It costs
    /// a replication round trip per attempt, refusals included: while replicas lag, every attempt
    /// — a `try_lock` on a held key too — can take the whole `timeout`, and a request can take
    /// up to the [`response_timeout`](Self::response_timeout) plus `timeout` per attempt.
    /// `count` 0 turns it off (the default); [`Acquire::replicas`](crate::Acquire::replicas) and
    /// [`AcquirePermit::replicas`](crate::AcquirePermit::replicas) set it per request. The in-memory backend has no replicas, so any `count` above 0 fails there.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # fn doc() -> Result<(), relock::Error> {
    /// let locker = relock::Locker::builder()
    ///     .url("redis://127.0.0.1:6379")
    ///     .replicas(1, Duration::from_millis(500))
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn replicas(mut self, count: u32, timeout: Duration) -> Self {
        self.replicas = Some(Replicas { count, timeout });
        self
    }

    /// Uses a server that may evict keys: one with `maxmemory` set and a `maxmemory-policy`
    /// other than `noeviction` (`volatile-*` included, as every relock key has an expiry).
    ///
    /// Such a server deletes keys when it runs out of memory, held locks among them: another
    /// owner can take an evicted lock at once, while its holder learns of the loss only at its
    /// next renewal (up to a third of a lease later; [`LockGuard::lost`](crate::LockGuard::lost)
    /// then resolves and `run` aborts its body). Without this setting, [`Locker::connect`] and
    /// lock requests fail with [`Error::EvictingServer`] on such a server: a single server or
    /// any master of a cluster is checked before the locker's first lock (until it passes; a
    /// refusal is not remembered, so fixing the setting lets the next request through), and a
    /// master found behind Sentinel — after a failover too — is checked when the locker connects
    /// to it, and not used at all (every command fails) while it may evict. A cluster master
    /// that cannot be reached at the check is left unchecked, with a warning. The settings are
    /// read with `INFO memory`, else `CONFIG GET`; when the ACL user may run neither, relock
    /// warns through `tracing` and uses the server.
    ///
    /// Defaults to refusing a server that may evict keys.
    #[must_use = "the builder with the setting is returned; call `build` on it"]
    pub fn allow_eviction(mut self) -> Self {
        self.allow_eviction = true;
        self
    }

    /// How long opening a connection to the server may take (with [`url`](Self::url); with
    /// `sentinel`, to each sentinel and to the master). Defaults to 2 seconds.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// How long the server may take to answer a command (with [`url`](Self::url); with
    /// `sentinel`, also each sentinel's answer) before the command fails with
    /// [`Error::Backend`]. Defaults to 2 seconds.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = Some(timeout);
        self
    }

    /// Builds the locker. Fails with [`Error::Backend`] when neither a URL nor a pool was given,
    /// the URL does not parse (with `sentinel`: a sentinel URL, or no URL or master name at
    /// all), or the prefix is invalid, and with [`Error::InvalidLease`] for a lease out of range.
    /// Opens no connection.
    pub fn build(self) -> Result<Locker, Error> {
        crate::lease::check(self.config().lease)?;
        let prefix = self
            .prefix
            .clone()
            .unwrap_or_else(|| DEFAULT_PREFIX.to_owned());
        if prefix.is_empty() || prefix.contains(['{', '}']) || prefix.contains(char::is_control) {
            return Err(Error::backend(format!(
                "invalid prefix `{prefix}`: it must be non-empty, without braces or control characters"
            )));
        }
        let connect_timeout = self.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        #[cfg(feature = "cluster")]
        if let Some(seeds) = &self.cluster {
            return self.build_cluster(seeds.clone(), prefix, connect_timeout);
        }
        #[cfg(feature = "sentinel")]
        if let Some((sentinels, master_name)) = &self.sentinel {
            let sentinels = Arc::new(crate::backend::sentinel::Sentinels::new(
                sentinels,
                master_name.clone(),
                self.master_credentials.clone(),
                connect_timeout,
                self.response_timeout.unwrap_or(DEFAULT_RESPONSE_TIMEOUT),
                self.tls.clone(),
            )?);
            let connection =
                Connection::Sentinel(Box::new(crate::backend::sentinel::MasterConnection::new(
                    sentinels.clone(),
                    self.allow_eviction,
                )));
            return Ok(Locker::new(
                Backend::Redis(Box::new(RedisBackend::new(
                    connection,
                    prefix,
                    self.retention(),
                    Dedicated::new(
                        None,
                        connect_timeout,
                        self.response_timeout.unwrap_or(DEFAULT_RESPONSE_TIMEOUT),
                    ),
                ))),
                self.config(),
                Some(Notifications::Sentinel(sentinels)),
                connect_timeout,
                // The master connection checks each master it finds.
                EvictionCheck::skipped(),
            ));
        }
        let client = self
            .url
            .as_deref()
            .map(|url| self.tls.client(url))
            .transpose()?;
        let connection = match (&self.pool, &client) {
            (Some(pool), _) => Connection::pool(pool.clone()),
            (None, Some(client)) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(Some(
                        self.response_timeout.unwrap_or(DEFAULT_RESPONSE_TIMEOUT),
                    ))
                    // One attempt per request that finds the connection broken: retries inside
                    // the manager would stretch a dead server's error past the connect timeout.
                    .set_number_of_retries(0);
                Connection::Multiplexed(ConnectionManager::new_lazy_with_config(
                    client.clone(),
                    config,
                )?)
            }
            (None, None) => {
                return Err(Error::backend(
                    "no Redis server configured: call `url` or `pool` on the builder",
                ))
            }
        };
        let dedicated = Dedicated::new(
            client.clone(),
            connect_timeout,
            self.response_timeout.unwrap_or(DEFAULT_RESPONSE_TIMEOUT),
        );
        let server = match &client {
            Some(client) => client.get_connection_info().addr().to_string(),
            None => "the bb8 pool's server".to_owned(),
        };
        let eviction = self.eviction_check(server);
        let backend = RedisBackend::new(connection, prefix, self.retention(), dedicated);
        Ok(Locker::new(
            Backend::Redis(Box::new(backend)),
            self.config(),
            client.map(|client| Notifications::Server(Box::new(client))),
            connect_timeout,
            eviction,
        ))
    }

    #[cfg(feature = "cluster")]
    fn build_cluster(
        &self,
        seeds: Vec<String>,
        prefix: String,
        connect_timeout: Duration,
    ) -> Result<Locker, Error> {
        if seeds.is_empty() {
            return Err(Error::backend("no Redis Cluster seed nodes given"));
        }
        let response_timeout = self.response_timeout.unwrap_or(DEFAULT_RESPONSE_TIMEOUT);
        let client = self
            .tls
            .cluster_builder(&seeds)?
            .connection_timeout(connect_timeout)
            // Per attempt and, by default, for the request with all its retries (redirections,
            // reconnections), so a cluster that is down fails a request within this time.
            .response_timeout(response_timeout)
            .build()?;
        let backend = crate::backend::cluster::ClusterBackend::new(
            client,
            &seeds,
            connect_timeout,
            response_timeout,
            prefix,
            self.retention(),
            self.tls.clone(),
        );
        Ok(Locker::new(
            Backend::Cluster(Box::new(backend)),
            self.config(),
            Some(Notifications::Cluster {
                seeds,
                tls: self.tls.clone(),
            }),
            connect_timeout,
            // Each master is named by its own address.
            self.eviction_check(String::new()),
        ))
    }

    /// Builds a locker over a new in-memory store, ignoring the URL, pool and prefix.
    pub fn build_in_memory(self) -> Locker {
        let backend = MemoryBackend::new(self.retention());
        Locker::new(
            Backend::Memory(Box::new(backend)),
            self.config(),
            None,
            DEFAULT_CONNECT_TIMEOUT,
            EvictionCheck::skipped(),
        )
    }

    fn eviction_check(&self, server: String) -> EvictionCheck {
        if self.allow_eviction {
            EvictionCheck::skipped()
        } else {
            EvictionCheck::new(server)
        }
    }

    fn retention(&self) -> Duration {
        self.fence_retention
            .unwrap_or(DEFAULT_FENCE_RETENTION)
            .min(MAX_FENCE_RETENTION)
    }

    fn config(&self) -> Config {
        Config {
            lease: self.lease.unwrap_or(DEFAULT_LEASE),
            wait: self.wait.unwrap_or(DEFAULT_WAIT),
            replicas: self.replicas.filter(|replicas| replicas.count > 0),
        }
    }
}

impl fmt::Debug for LockerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockerBuilder")
            .field("url", &self.url.is_some())
            .field("pool", &self.pool.is_some())
            .field("prefix", &self.prefix)
            .field("lease", &self.lease)
            .field("wait", &self.wait)
            .field("replicas", &self.replicas)
            .field("tls", &self.tls)
            .field("allow_eviction", &self.allow_eviction)
            .finish_non_exhaustive()
    }
}

static GLOBAL: RwLock<Option<Locker>> = RwLock::new(None);

/// Installs the locker that `#[locked]` and `LockLayer` use when none is given and no scope is in
/// force. Replaces any earlier one.
///
/// ```
/// relock::set_global(relock::Locker::in_memory());
/// assert!(relock::global().is_some());
/// ```
pub fn set_global(locker: Locker) {
    *GLOBAL.write().unwrap_or_else(|p| p.into_inner()) = Some(locker);
}

/// The locker installed with [`set_global`], if any.
pub fn global() -> Option<Locker> {
    GLOBAL.read().unwrap_or_else(|p| p.into_inner()).clone()
}
