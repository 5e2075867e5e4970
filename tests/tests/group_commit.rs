//! Group commit on one Redis server: acquisitions and releases that queue up while two script
//! calls are in flight go out as one call of the batch script. These tests put histories through
//! it — many owners hammering few keys, callers cancelled while queued or in flight, the
//! connection killed under a batch, one request of a batch failing — and check that exclusion,
//! fencing, cancellation and wake-ups hold as they do for single calls.
//!
//! The server is paused (SIGSTOP) to make requests queue: the first two are then in flight, the
//! rest wait in the batcher until a call returns.

use std::future::IntoFuture;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use relock::{Error, LockGuard, Locker};
use relock_tests::{command_stats, run_bounded, unique_key, until_subscribed, RedisServer};
use tokio::task::JoinHandle;

/// A hung lock operation fails its test instead of stalling the run.
const LIMIT: Duration = Duration::from_secs(40);
/// Far above how long any request below should take; paused servers stay paused for < 1 s.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long requests are left to reach the batcher after they were spawned.
const SETTLE: Duration = Duration::from_millis(300);

/// `P:{K}` with the default prefix: the lock.
fn lock_name(key: &str) -> String {
    format!("relock:{{{key}}}")
}

/// The hold token a force-release writes into its tombstone: it names no hold.
const NO_HOLD: &str = "00000000000000000000000000000000";

/// What the lock key `P:{K}` holds (see `relock/src/protocol.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stored {
    /// Nothing: never locked, or past its retention.
    Absent,
    /// `<hold token><mark><fencing token> <deadline ms> <holder>`
    Hold { token: String, fence: u64 },
    /// `-<fencing token> <hold token>`: free, the last fencing token kept.
    Tombstone { fence: u64, released: String },
    /// Anything else.
    Other(String),
}

impl Stored {
    fn parse(value: Option<String>) -> Stored {
        let Some(value) = value else {
            return Stored::Absent;
        };
        if let Some((fence, released)) = value
            .strip_prefix('-')
            .and_then(|rest| rest.split_once(' '))
        {
            if let Ok(fence) = fence.parse() {
                return Stored::Tombstone {
                    fence,
                    released: released.to_owned(),
                };
            }
        }
        let fence = value
            .get(33..)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|fence| fence.parse().ok());
        match (value.get(..32), value.as_bytes().get(32), fence) {
            (Some(token), Some(b' ' | b'+'), Some(fence)) => Stored::Hold {
                token: token.to_owned(),
                fence,
            },
            _ => Stored::Other(value),
        }
    }

    /// The last fencing token the key keeps (a hold's or a tombstone's).
    fn fence(&self) -> Option<u64> {
        match self {
            Stored::Hold { fence, .. } | Stored::Tombstone { fence, .. } => Some(*fence),
            Stored::Absent | Stored::Other(_) => None,
        }
    }
}

/// What the lock key of `key` holds.
async fn stored(connection: &mut redis::aio::MultiplexedConnection, key: &str) -> Stored {
    Stored::parse(
        redis::cmd("GET")
            .arg(lock_name(key))
            .query_async(connection)
            .await
            .expect("GET the lock key"),
    )
}

/// Presets the last fencing token of each of `keys` (by index `i`) to `base + i`, ahead of the
/// server's clock, with a tombstone `-<base + i> 000…0` (what a force-release leaves), and
/// returns `base`: a grant of key `i` then has fencing token `base + i + 1` exactly
/// (`max(last token + 1, clock)`). Grants in one call otherwise share the clock's token, so this
/// is what shows a request handed another request's answer.
async fn preset_fences(
    connection: &mut redis::aio::MultiplexedConnection,
    keys: &[String],
    indexes: impl IntoIterator<Item = usize>,
) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as u64;
    let base = now + 3_600_000_000;
    for i in indexes {
        redis::cmd("SET")
            .arg(lock_name(&keys[i]))
            .arg(format!("-{} {NO_HOLD}", base + i as u64))
            .arg("PX")
            .arg(600_000)
            .query_async::<()>(connection)
            .await
            .expect("SET a tombstone");
    }
    base
}

/// The last fencing token the lock key of `key` keeps (a hold's or a tombstone's), if any.
async fn fence(connection: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<u64> {
    stored(connection, key).await.fence()
}

/// Calls of `command` (lowercase) by `INFO commandstats`; commands run inside scripts count too.
async fn calls(server: &RedisServer, command: &str) -> u64 {
    command_stats(&mut server.connection().await)
        .await
        .into_iter()
        .find(|(name, _)| name == command)
        .map_or(0, |(_, calls)| calls)
}

/// A locker whose requests outlast a paused server instead of timing out.
fn patient_locker(server: &RedisServer, lease: Duration) -> Locker {
    Locker::builder()
        .url(server.url())
        .lease(lease)
        .response_timeout(RESPONSE_TIMEOUT)
        .build()
        .expect("build a locker")
}

/// Connects `locker` and loads the batch script, so that paused requests are the script calls.
/// Loads every script the locker uses (a lone request runs its own script, several run the
/// batch script), so that no call of a test is answered `NOSCRIPT` and sent again: four
/// acquisitions at once are two lone calls and one call of the other two.
async fn warm(locker: &Locker) {
    let locks = (0..4).map(|i| locker.lock(unique_key(&format!("warm-{i}"))));
    let guards = futures_util::future::join_all(locks.map(IntoFuture::into_future)).await;
    let releases = guards
        .into_iter()
        .map(|guard| guard.expect("warm-up lock").release());
    for released in futures_util::future::join_all(releases).await {
        released.expect("warm-up release");
    }
}

type LockTask = JoinHandle<Result<LockGuard, Error>>;

/// A hold's fencing token and the task it was granted to.
type Grant = (u64, usize);

/// Spawns an acquisition of `key` on `locker`.
fn spawn_lock(locker: &Locker, key: &str, wait: Duration) -> LockTask {
    let request = locker.lock(key).wait(wait);
    tokio::spawn(async move { request.await })
}

/// With the server paused, spawns acquisitions of `keys`: the first two are sent alone (they are
/// the two calls in flight; the first one, at least, from its caller's future), and the rest
/// queue behind them.
async fn queue_behind_two_calls(locker: &Locker, keys: &[String], wait: Duration) -> Vec<LockTask> {
    let mut tasks = vec![spawn_lock(locker, &keys[0], wait)];
    tokio::time::sleep(Duration::from_millis(50)).await;
    tasks.push(spawn_lock(locker, &keys[1], wait));
    tokio::time::sleep(Duration::from_millis(50)).await;
    tasks.extend(keys[2..].iter().map(|key| spawn_lock(locker, key, wait)));
    tokio::time::sleep(SETTLE).await;
    tasks
}

/// Awaits an aborted task and checks that it was cancelled (it could not have finished: the
/// server is paused).
async fn cancelled(task: LockTask, what: &str) {
    match task.await {
        Err(err) if err.is_cancelled() => {}
        other => panic!(
            "{what}: an acquisition aborted while the server was paused finished instead: \
             {other:?}"
        ),
    }
}

async fn joined(task: LockTask, what: &str) -> Result<LockGuard, Error> {
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap_or_else(|_| {
            panic!("{what}: the acquisition neither succeeded nor failed within 10 s: it hangs")
        })
        .expect("the acquisition task panicked")
}

// ---------------------------------------------------------------------------------------------
// 1. Exclusion under batching
// ---------------------------------------------------------------------------------------------

/// Three lockers (three connections, three batchers), 72 tasks, 4 keys, 3 s of short holds.
///
/// Every hold sets the key's "occupied" flag and appends its fencing token to the key's log, both
/// under the lock: a second holder at once finds the flag set, and the log is in grant order. The
/// default lease (30 s) makes a missed wake-up visible: a waiter nobody wakes sleeps until its
/// 10 s deadline and times out, long after the hammering has ended.
#[test]
fn batched_acquisitions_from_three_lockers_never_overlap_and_fence_in_grant_order() {
    const KEYS: usize = 4;
    const TASKS: usize = 72;
    const HAMMER: Duration = Duration::from_secs(3);
    const WAIT: Duration = Duration::from_secs(10);
    run_bounded(LIMIT, || async {
        let server = RedisServer::start();
        let lockers = [
            server.locker().await,
            server.locker().await,
            server.locker().await,
        ];
        for locker in &lockers {
            warm(locker).await;
        }
        let keys: Arc<Vec<String>> = Arc::new(
            (0..KEYS)
                .map(|i| unique_key(&format!("hammer-{i}")))
                .collect(),
        );
        let occupied: Arc<Vec<AtomicBool>> =
            Arc::new((0..KEYS).map(|_| AtomicBool::new(false)).collect());
        let grants: Arc<Vec<Mutex<Vec<Grant>>>> =
            Arc::new((0..KEYS).map(|_| Mutex::new(Vec::new())).collect());
        let violations = Arc::new(Mutex::new(Vec::<String>::new()));
        let acquired = Arc::new(AtomicUsize::new(0));
        let longest_wait = Arc::new(Mutex::new(Duration::ZERO));
        server.reset_stats().await;

        let stop_at = Instant::now() + HAMMER;
        let mut tasks = Vec::new();
        for task in 0..TASKS {
            let locker = lockers[task % lockers.len()].clone();
            let (keys, occupied, grants, violations, acquired, longest_wait) = (
                keys.clone(),
                occupied.clone(),
                grants.clone(),
                violations.clone(),
                acquired.clone(),
                longest_wait.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let violation = |text: String| violations.lock().unwrap().push(text);
                while Instant::now() < stop_at {
                    let k = rand::random_range(0..KEYS);
                    let asked = Instant::now();
                    let guard = match locker.lock(&keys[k]).wait(WAIT).await {
                        Ok(guard) => guard,
                        Err(err) => {
                            violation(format!(
                                "task {task} (locker {}) asked for key {k} and got {err:?} after \
                                 {:?}: with 1-ms holds, a waiter that fails was never woken by a \
                                 release (or a request was lost in a batch)",
                                task % 3,
                                asked.elapsed()
                            ));
                            continue;
                        }
                    };
                    {
                        let mut longest = longest_wait.lock().unwrap();
                        *longest = (*longest).max(asked.elapsed());
                    }
                    let token = guard.fencing_token();
                    if occupied[k].swap(true, Ordering::SeqCst) {
                        violation(format!(
                            "two holders at once: task {task} (locker {}) was granted key {k} \
                             with fencing token {token} while another task's hold of it was \
                             not yet released",
                            task % 3
                        ));
                    }
                    grants[k].lock().unwrap().push((token, task));
                    if rand::random_range(0..4) == 0 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    } else {
                        tokio::task::yield_now().await;
                    }
                    if !guard.is_held() {
                        violation(format!(
                            "task {task}'s hold of key {k} (token {token}) was lost within a \
                             30 s lease"
                        ));
                    }
                    occupied[k].store(false, Ordering::SeqCst);
                    if let Err(err) = guard.release().await {
                        violation(format!(
                            "task {task}'s release of key {k} (token {token}) failed: {err:?}"
                        ));
                    }
                    acquired.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        for task in tasks {
            task.await.expect("a hammering task panicked");
        }

        // Overlaps first: they are what the other violations follow from.
        let mut violations = violations.lock().unwrap().clone();
        violations.sort_by_key(|violation| !violation.starts_with("two holders"));
        assert!(
            violations.is_empty(),
            "{} violations of exclusion or liveness under group commit; the first ones:\n{}",
            violations.len(),
            violations[..violations.len().min(10)].join("\n")
        );
        for (k, grants) in grants.iter().enumerate() {
            let grants = grants.lock().unwrap();
            for pair in grants.windows(2) {
                let ((before, by), (after, next)) = (pair[0], pair[1]);
                assert!(
                    after > before,
                    "fencing went backwards on key {k}: task {by} was granted token {before}, \
                     then task {next} (the next holder) got {after}"
                );
            }
        }
        let acquired = acquired.load(Ordering::Relaxed) as u64;
        let evalsha = calls(&server, "evalsha").await;
        // Every request, acquisition or release, starts with one `SET … GET` of its lock inside
        // the script (`SET NX PX GET` to take a free key, `SET KEEPTTL GET` to leave a
        // tombstone). Beyond that first write, a hold causes at most two more: its grant's second
        // `SET` over the tombstone (or expired hold) its key had, and the "+" mark written by the
        // first refusal it gives — and every marked hold's release (each returned `Ok`: its
        // lease was live) publishes exactly once, while an unmarked one never does. No release
        // here writes twice: each knows its hold's fencing token and finds its own hold. The
        // requests the calls carried are therefore at least the `SET`s less one per hold and one
        // per `PUBLISH` — and, counted without the scripts, at least one acquisition and one
        // release per hold.
        let sets = calls(&server, "set").await;
        let published = calls(&server, "publish").await;
        let requests = sets.saturating_sub(acquired + published).max(2 * acquired);
        let longest = *longest_wait.lock().unwrap();
        println!(
            "hammer: {acquired} holds on {KEYS} keys by {TASKS} tasks on 3 lockers in {HAMMER:?}; \
             {evalsha} script calls ran {sets} SET and {published} PUBLISH and carried at least \
             {requests} acquire and release requests; longest wait {longest:?}"
        );
        assert!(
            acquired >= 400,
            "only {acquired} holds in {HAMMER:?}: too few for the test to say anything"
        );
        assert!(
            sets >= 2 * acquired,
            "{sets} SET calls counted for {acquired} holds, each of which was granted and \
             released (one write each at least): the count of requests is wrong"
        );
        assert!(
            evalsha < requests,
            "{evalsha} EVALSHA calls for at least {requests} acquire and release requests: no \
             call carried more than one request, so batching was not exercised"
        );
        // Nothing is held, and each key's tombstone keeps the last fencing token granted for it
        // and names the hold it released.
        let mut admin = server.connection().await;
        for (k, key) in keys.iter().enumerate() {
            let last = grants[k].lock().unwrap().last().copied();
            match (stored(&mut admin, key).await, last) {
                (Stored::Tombstone { fence, released }, Some((token, task))) => {
                    assert_eq!(
                        fence, token,
                        "key {k}'s tombstone keeps fencing token {fence}, but its last grant \
                         (to task {task}) had {token}"
                    );
                    assert_ne!(
                        released, NO_HOLD,
                        "key {k}'s tombstone names no hold, as if force-released"
                    );
                }
                (Stored::Absent, None) => {}
                (other, last) => panic!(
                    "`{key}` (key {k}, last grant {last:?}) holds {other:?} after every hold was \
                     released: expected the tombstone of its last hold"
                ),
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------
// 2. Cancellation while queued, and after being sent
// ---------------------------------------------------------------------------------------------

/// 200 acquisitions on distinct keys from one locker, the server paused: two in flight (tasks 0
/// and 1), 198 queued. While paused:
///
/// 1. odd tasks from 3 up are aborted while still queued: their requests must never be sent.
///    Half of them (5, 9, 13, …) ask for keys another locker holds, so that a request that ran
///    at all, even refused, would show: the refusal marks the hold with "+". (Their callers
///    cannot know that the request was never sent: the background release that follows may
///    leave a tombstone of fencing token 0 at a free key, or put a held key's value back.)
/// 2. task 0, whose call is in flight, is aborted: its call's place goes to the queue, which is
///    sent now as one call (with its own acquisition still granted later: an unknown outcome);
/// 3. tasks 2, 6, 10, … are aborted after that call took them: answered to nobody. Half of them
///    (2, 10, 18, …) ask for keys another locker holds: refused, and their background release
///    must leave the other owner's hold alone; the rest are granted, and must be released.
///
/// After resuming, the live tasks get their locks, every grant nobody received is released in
/// the background well before its 30 s lease, and no key ends up with two owners.
#[test]
fn acquisitions_cancelled_in_the_queue_are_skipped_and_cancelled_in_flight_are_released() {
    const N: usize = 200;
    run_bounded(LIMIT, || async {
        let server = RedisServer::start();
        let locker = patient_locker(&server, Duration::from_secs(30));
        let other = server.locker().await;
        warm(&locker).await;
        warm(&other).await;
        let mut admin = server.connection().await;
        let keys: Vec<String> = (0..N).map(|i| unique_key(&format!("queued-{i}"))).collect();
        let skipped: Vec<usize> = (3..N).step_by(2).collect();
        let abandoned: Vec<usize> = std::iter::once(0).chain((6..N).step_by(8)).collect();
        let refused: Vec<usize> = (2..N).step_by(8).collect();
        let live: Vec<usize> = std::iter::once(1).chain((4..N).step_by(4)).collect();
        let skipped_held: Vec<usize> = (5..N).step_by(4).collect();
        let mut foreign = Vec::new();
        for &i in &refused {
            foreign.push((i, other.lock(&keys[i]).await.expect("another owner's hold")));
        }
        let mut blocking = Vec::new();
        for &i in &skipped_held {
            blocking.push((i, other.lock(&keys[i]).await.expect("another owner's hold")));
        }
        let base = preset_fences(&mut admin, &keys, live.iter().chain(&abandoned).copied()).await;

        server.pause();
        let mut tasks: Vec<Option<LockTask>> =
            queue_behind_two_calls(&locker, &keys, Duration::from_secs(10))
                .await
                .into_iter()
                .map(Some)
                .collect();
        for &i in &skipped {
            let task = tasks[i].take().unwrap();
            task.abort();
            cancelled(task, &format!("queued task {i}")).await;
        }
        let task = tasks[0].take().unwrap();
        task.abort();
        cancelled(task, "task 0 (in flight)").await;
        for &i in abandoned.iter().skip(1).chain(&refused) {
            let task = tasks[i].take().unwrap();
            task.abort();
            cancelled(
                task,
                &format!("task {i} (sent in the call that took the queue)"),
            )
            .await;
        }
        let resumed = Instant::now();
        server.resume();

        let mut guards = Vec::new();
        for &i in &live {
            let guard = joined(tasks[i].take().unwrap(), &format!("live task {i}"))
                .await
                .unwrap_or_else(|err| {
                    panic!(
                        "live task {i} queued among cancelled requests failed to get its free \
                         key: {err:?}"
                    )
                });
            guards.push((i, guard));
        }
        println!(
            "cancellation: live tasks all granted {:?} after resuming",
            resumed.elapsed()
        );

        // Each live task got its own request's answer; the abandoned requests ran in the calls
        // that answered the live ones.
        for (i, guard) in &guards {
            assert_eq!(
                guard.fencing_token(),
                base + *i as u64 + 1,
                "live task {i} got fencing token {}, its key's grant was {}: it was handed the \
                 answer of another request of its call",
                guard.fencing_token(),
                base + *i as u64 + 1
            );
        }
        for &i in &abandoned {
            assert_eq!(
                fence(&mut admin, &keys[i]).await,
                Some(base + i as u64 + 1),
                "task {i}'s request was never granted at the server (its key's last fencing \
                 token, preset by a tombstone, did not move): the test did not exercise a grant \
                 answered to nobody"
            );
        }

        // Every grant nobody received is released in the background, long before its lease.
        let mut taken = Vec::new();
        let mut pending: Vec<usize> = abandoned.clone();
        while !pending.is_empty() {
            let mut still = Vec::new();
            for i in pending {
                match other.try_lock(&keys[i]).await.expect("try_lock") {
                    Some(guard) => taken.push((i, guard)),
                    None => still.push(i),
                }
            }
            pending = still;
            assert!(
                pending.is_empty() || resumed.elapsed() < Duration::from_secs(3),
                "keys {pending:?}, acquired by tasks aborted after their request was sent, are \
                 still held {:?} after resuming: the grant nobody received was not released in \
                 the background and stays until its 30 s lease ends",
                resumed.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!(
            "cancellation: {} abandoned grants free again {:?} after resuming",
            abandoned.len(),
            resumed.elapsed()
        );
        for &i in &refused {
            let value: String = redis::cmd("GET")
                .arg(lock_name(&keys[i]))
                .query_async::<Option<String>>(&mut admin)
                .await
                .expect("GET")
                .unwrap_or_else(|| {
                    panic!(
                        "key {i}, held by another locker, is free: task {i}'s request for it was \
                         refused and the task aborted, and its background release (of a token \
                         that never held the key) removed the other owner's hold"
                    )
                });
            assert_eq!(
                value.as_bytes().get(32),
                Some(&b'+'),
                "task {i}'s request for a key another locker holds never ran at the server (the \
                 hold is not marked as having refused someone): the test did not exercise a \
                 refused request answered to nobody"
            );
        }
        // A queued request whose caller went away must be left out of the batch: it is never
        // granted (a free key keeps nothing with a fencing token of its own), and never run at
        // all (a held key is not marked by its refusal).
        for &i in skipped.iter().filter(|i| !skipped_held.contains(i)) {
            match stored(&mut admin, &keys[i]).await {
                Stored::Absent | Stored::Tombstone { fence: 0, .. } => {}
                left => panic!(
                    "task {i} was aborted while its request was still queued, yet its free key \
                     holds {left:?} (a hold, or a tombstone with a fencing token: the request was \
                     sent and granted): a queued request whose caller went away must be left \
                     out of the batch"
                ),
            }
        }
        for (i, guard) in &blocking {
            let value: Option<String> = redis::cmd("GET")
                .arg(lock_name(&keys[*i]))
                .query_async(&mut admin)
                .await
                .expect("GET");
            let value = value.unwrap_or_else(|| {
                panic!(
                    "key {i}, held by another locker, is free: the background release of task \
                     {i}'s request (aborted while queued) removed the other owner's hold"
                )
            });
            assert_eq!(
                value.as_bytes().get(32),
                Some(&b' '),
                "task {i} was aborted while its request was still queued, yet the hold another \
                 locker has of its key is marked as having refused someone ({value}): the \
                 request was sent: a queued request whose caller went away must be left out of \
                 the batch"
            );
            let info = other.inspect(&keys[*i]).await.expect("inspect");
            assert_eq!(
                info.map(|info| info.fencing_token),
                Some(guard.fencing_token()),
                "key {i} was held by another locker; the background release of task {i}'s \
                 request (aborted while queued) touched the other owner's hold"
            );
        }

        // The live holds are the ones the server has, exclusively.
        for (i, guard) in &guards {
            let info = other
                .inspect(&keys[*i])
                .await
                .expect("inspect")
                .unwrap_or_else(|| panic!("live task {i} holds a guard but its key is free"));
            assert_eq!(
                info.fencing_token,
                guard.fencing_token(),
                "live task {i}'s guard has fencing token {} but the server's hold of its key \
                 has {}: the task was handed another request's answer",
                guard.fencing_token(),
                info.fencing_token
            );
            assert!(
                other.try_lock(&keys[*i]).await.expect("try_lock").is_none(),
                "another locker took key of live task {i} while its guard holds it"
            );
        }
        // A late background release of an abandoned grant must not free the new owner's hold,
        // and the background releases of refused requests, and of requests aborted while
        // queued, must not free the holder's.
        tokio::time::sleep(Duration::from_millis(500)).await;
        for (i, guard) in foreign.iter().chain(&blocking) {
            let info = other.inspect(&keys[*i]).await.expect("inspect");
            assert_eq!(
                info.map(|info| info.fencing_token),
                Some(guard.fencing_token()),
                "key {i} was held by another locker; task {i} asked for it and was aborted, and \
                 its background release (of a token that never held the key) removed or \
                 replaced the other owner's hold"
            );
        }
        for (i, guard) in &taken {
            let info = other.inspect(&keys[*i]).await.expect("inspect");
            assert_eq!(
                info.map(|info| info.fencing_token),
                Some(guard.fencing_token()),
                "the second owner's hold of key {i} (taken after task {i}'s abandoned grant was \
                 released) is gone or replaced: a stale release touched a newer hold"
            );
        }
        for (_, guard) in guards
            .into_iter()
            .chain(taken)
            .chain(foreign)
            .chain(blocking)
        {
            guard.release().await.expect("release");
        }
    });
}

// ---------------------------------------------------------------------------------------------
// 3. The connection dropped under a batch
// ---------------------------------------------------------------------------------------------

/// 150 acquisitions on distinct keys through a proxy, the server paused: two calls in flight
/// (tasks 0 and 1), 148 queued. Task 0 is aborted, so its call's place goes to the queue: a
/// call of 128 requests goes out, 20 stay queued. The proxy then swallows the replies and the
/// server resumes: the two single calls and the 128-request call all run — granted — but nobody
/// hears it. `CLIENT KILL TYPE normal` then drops the connection under them.
///
/// Every request must then either fail or succeed (none hangs), every key whose request failed
/// must be free again well within its 2 s lease (released in the background), every key whose
/// request succeeded stays with its guard alone, and the locker keeps working.
#[test]
fn a_connection_killed_under_granted_unanswered_batches_leaks_no_lock() {
    const N: usize = 150;
    const LEASE: Duration = Duration::from_secs(2);
    run_bounded(LIMIT, || async {
        let server = RedisServer::start();
        let proxy = relock_tests::Proxy::start(server.port()).await;
        let locker = Locker::builder()
            .url(proxy.url())
            .lease(LEASE)
            .response_timeout(RESPONSE_TIMEOUT)
            .build()
            .expect("build a locker");
        warm(&locker).await;
        let mut admin = server.connection().await;
        let keys: Vec<String> = (0..N).map(|i| unique_key(&format!("killed-{i}"))).collect();
        let base = preset_fences(&mut admin, &keys, 0..N).await;
        let granted = async |admin: &mut redis::aio::MultiplexedConnection| {
            let mut granted = Vec::new();
            for (i, key) in keys.iter().enumerate() {
                if fence(admin, key).await != Some(base + i as u64) {
                    granted.push(i);
                }
            }
            granted
        };
        server.reset_stats().await;

        server.pause();
        let mut tasks: Vec<Option<LockTask>> =
            queue_behind_two_calls(&locker, &keys, Duration::from_secs(3))
                .await
                .into_iter()
                .map(Some)
                .collect();
        let task = tasks[0].take().unwrap();
        task.abort();
        cancelled(task, "task 0 (in flight)").await;
        proxy.swallow_replies_of_open_connections();
        server.resume();
        let deadline = Instant::now() + Duration::from_secs(3);
        while calls(&server, "evalsha").await < 3 {
            assert!(
                Instant::now() < deadline,
                "the two single calls and the call that took the queue did not all run"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let unanswered = granted(&mut admin).await;
        assert!(
            unanswered.len() >= 100,
            "only {} requests were granted at the server before the kill: the call carrying \
             the queue did not run, so the test exercises no batch answered to nobody",
            unanswered.len()
        );
        let killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("normal")
            .query_async(&mut admin)
            .await
            .expect("CLIENT KILL");
        let killed_at = Instant::now();
        assert!(
            killed >= 1,
            "CLIENT KILL killed no connection of the locker"
        );

        let mut held = Vec::new();
        let mut failed = Vec::new();
        for (i, task) in tasks.into_iter().enumerate().skip(1) {
            match joined(task.unwrap(), &format!("task {i}")).await {
                Ok(guard) => held.push((i, guard)),
                Err(err) => failed.push((i, err)),
            }
        }
        let resolved = killed_at.elapsed();
        let first_error = failed.first().map(|(_, err)| {
            let source = std::error::Error::source(err).map(ToString::to_string);
            format!("{err}: {}", source.unwrap_or_default())
        });
        println!(
            "killed: {} requests granted at the server, answered to nobody; after the kill {} \
             succeeded and {} failed, all resolved within {resolved:?}; first error: \
             {first_error:?}",
            unanswered.len(),
            held.len(),
            failed.len(),
        );
        for (i, guard) in &held {
            assert_eq!(
                guard.fencing_token(),
                base + *i as u64 + 1,
                "task {i} got fencing token {}, its key's grant was {}: it was handed the answer \
                 of another request of its call",
                guard.fencing_token(),
                base + *i as u64 + 1
            );
            assert!(
                !unanswered.contains(i),
                "task {i}'s request was granted but its reply was swallowed and its connection \
                 killed, yet the task got a guard (fencing token {}): a reply it never received",
                guard.fencing_token()
            );
        }
        for &i in &unanswered {
            assert!(
                i == 0 || failed.iter().any(|(j, _)| *j == i),
                "task {i}'s request was granted but never answered, yet it did not fail"
            );
        }

        // Every key whose request failed (or was abandoned) is free again within its lease.
        let other = server.locker().await;
        let mut taken = Vec::new();
        let mut pending: Vec<usize> = std::iter::once(0)
            .chain(failed.iter().map(|(i, _)| *i))
            .collect();
        let mut last_freed = Duration::ZERO;
        while !pending.is_empty() {
            let mut still = Vec::new();
            for i in pending {
                match other.try_lock(&keys[i]).await.expect("try_lock") {
                    Some(guard) => {
                        last_freed = killed_at.elapsed();
                        taken.push((i, guard));
                    }
                    None => still.push(i),
                }
            }
            pending = still;
            // Released in the background once the locker has reconnected, not left to the
            // lease: half the lease is ample, and before the lease ends by itself.
            assert!(
                pending.is_empty() || killed_at.elapsed() < LEASE / 2,
                "keys of failed requests {pending:?} are still held {:?} after the kill: the \
                 grants nobody received were not released in the background (and a hold \
                 nobody has may be kept past its {LEASE:?} lease)",
                killed_at.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!("killed: every failed request's key free {last_freed:?} after the kill");

        // Past the lease of any unanswered grant: the successful holds are still there, and
        // still theirs alone; the new owner's holds were not touched by a late release.
        tokio::time::sleep(
            (LEASE + Duration::from_millis(300)).saturating_sub(killed_at.elapsed()),
        )
        .await;
        for (i, guard) in &held {
            assert!(
                guard.is_held(),
                "task {i}'s hold was lost although the server answered throughout"
            );
            let info = other.inspect(&keys[*i]).await.expect("inspect");
            assert_eq!(
                info.map(|info| info.fencing_token),
                Some(guard.fencing_token()),
                "task {i}'s guard (fencing token {}) is not the hold the server has for its key",
                guard.fencing_token()
            );
            assert!(
                other.try_lock(&keys[*i]).await.expect("try_lock").is_none(),
                "another locker took key {i} while task {i}'s guard holds it"
            );
        }
        for (i, guard) in &taken {
            let info = other.inspect(&keys[*i]).await.expect("inspect");
            assert_eq!(
                info.map(|info| info.fencing_token),
                Some(guard.fencing_token()),
                "the second owner's hold of key {i} is gone: a late background release of the \
                 failed request touched a newer hold"
            );
        }

        // The batcher is not wedged: a new lock and release go through at once.
        let fresh = tokio::time::timeout(Duration::from_secs(2), locker.lock(unique_key("after")))
            .await
            .expect("a new acquisition after the kill hangs: the batcher lost its calls")
            .expect("a new acquisition after the kill");
        fresh.release().await.expect("release after the kill");
        for (_, guard) in held.into_iter().chain(taken) {
            guard.release().await.expect("release");
        }
    });
}

// ---------------------------------------------------------------------------------------------
// 4. One request's error does not fail its batch
// ---------------------------------------------------------------------------------------------

/// A hash sits at `relock:{bad}`. 50 acquisitions of free keys and one of `bad` (in the middle
/// of the queue) go out batched: only `bad` fails, with a backend error naming the Redis key;
/// the others — before and after it in the same call — are granted; the hash is left alone.
#[test]
fn a_foreign_value_at_one_key_fails_only_its_own_request_in_a_batch() {
    const GOOD: usize = 50;
    run_bounded(LIMIT, || async {
        let server = RedisServer::start();
        let locker = patient_locker(&server, Duration::from_secs(30));
        warm(&locker).await;
        let mut admin = server.connection().await;
        let bad = unique_key("bad");
        let bad_name = lock_name(&bad);
        redis::cmd("HSET")
            .arg(&bad_name)
            .arg("owner")
            .arg("another application")
            .arg("since")
            .arg("1700000000")
            .query_async::<()>(&mut admin)
            .await
            .unwrap();
        let hash_before: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(&bad_name)
            .query_async(&mut admin)
            .await
            .unwrap();
        let mut keys: Vec<String> = (0..GOOD)
            .map(|i| unique_key(&format!("good-{i}")))
            .collect();
        let bad_at = GOOD / 2;
        keys.insert(bad_at, bad.clone());
        let base = preset_fences(&mut admin, &keys, (0..keys.len()).filter(|&i| i != bad_at)).await;
        server.reset_stats().await;

        server.pause();
        let tasks = queue_behind_two_calls(&locker, &keys, Duration::ZERO).await;
        server.resume();

        let mut guards = Vec::new();
        for (i, task) in tasks.into_iter().enumerate() {
            let result = joined(task, &format!("request {i}")).await;
            if i == bad_at {
                let err = result.expect_err(
                    "the acquisition of a key holding a hash succeeded: the foreign value was \
                     taken for a lock",
                );
                assert!(
                    matches!(err, Error::Backend(_)),
                    "the request on the hash failed with {err:?}, not a backend error"
                );
                let source = std::error::Error::source(&err)
                    .map(ToString::to_string)
                    .unwrap_or_default();
                println!("foreign value: {err}: {source}");
                assert!(
                    source.contains(&bad_name),
                    "the error of the request on the hash does not name the Redis key \
                     `{bad_name}`: {err}: {source}"
                );
            } else {
                let guard = result.unwrap_or_else(|err| {
                    panic!(
                        "request {i} for a free key failed because another request of its batch \
                         hit a hash: {err:?}"
                    )
                });
                guards.push((i, guard));
            }
        }
        let evalsha = calls(&server, "evalsha").await;
        println!(
            "foreign value: {} requests in {evalsha} script calls",
            keys.len()
        );
        assert!(
            evalsha < keys.len() as u64,
            "{evalsha} script calls for {} requests: the failing request was not batched with \
             others, so the test exercised nothing",
            keys.len()
        );
        for (i, guard) in &guards {
            assert_eq!(
                guard.fencing_token(),
                base + *i as u64 + 1,
                "request {i} got fencing token {}, its key's grant was {}: it was handed the \
                 answer of another request of its call",
                guard.fencing_token(),
                base + *i as u64 + 1
            );
            let info = locker.inspect(&keys[*i]).await.expect("inspect");
            assert_eq!(
                info.map(|info| info.fencing_token),
                Some(guard.fencing_token()),
                "request {i} was answered as granted, but the server's hold of its key differs"
            );
        }
        let kind: String = redis::cmd("TYPE")
            .arg(&bad_name)
            .query_async(&mut admin)
            .await
            .unwrap();
        let hash_after: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(&bad_name)
            .query_async(&mut admin)
            .await
            .unwrap();
        let pttl: i64 = redis::cmd("PTTL")
            .arg(&bad_name)
            .query_async(&mut admin)
            .await
            .unwrap();
        assert_eq!(
            kind, "hash",
            "the foreign hash at `{bad_name}` was replaced"
        );
        assert_eq!(
            hash_after, hash_before,
            "the foreign hash at `{bad_name}` was changed"
        );
        assert_eq!(
            pttl, -1,
            "the foreign hash at `{bad_name}` was given an expiry"
        );
        for (_, guard) in guards {
            guard.release().await.expect("release");
        }
    });
}

/// With the server paused, acquires `odd` in one batch with 20 fresh keys (at the middle of the
/// queue, so that requests run before and after it in its call): `odd`'s result, and the guards
/// of the others, which must all be granted. Fails when no call carried several requests.
async fn batched_among_free_keys(
    server: &RedisServer,
    locker: &Locker,
    odd: &str,
) -> (Result<LockGuard, Error>, Vec<LockGuard>) {
    let mut keys: Vec<String> = (0..20)
        .map(|i| unique_key(&format!("beside-{i}")))
        .collect();
    keys.insert(10, odd.to_owned());
    server.reset_stats().await;
    server.pause();
    let tasks = queue_behind_two_calls(locker, &keys, Duration::ZERO).await;
    server.resume();
    let (mut result, mut guards) = (None, Vec::new());
    for (i, task) in tasks.into_iter().enumerate() {
        let joined = joined(task, &format!("request {i}")).await;
        if i == 10 {
            result = Some(joined);
        } else {
            guards.push(joined.unwrap_or_else(|err| {
                panic!("request {i} for a free key in a batch with `{odd}` failed: {err:?}")
            }));
        }
    }
    assert!(
        calls(server, "evalsha").await < keys.len() as u64,
        "the acquisitions were not batched, so the test exercised nothing"
    );
    (result.expect("the odd key's request"), guards)
}

/// A string that is not relock's at a lock key (another application's, or a value of an
/// incompatible version): an acquisition sent alone and one batched with others are refused like
/// any held lock, and the string is never written to (the refusal's "+" mark is only ever put
/// on relock's own holds), nor given an expiry; the batch's other requests are granted.
#[test]
fn a_foreign_string_at_a_lock_key_is_refused_and_never_written() {
    // Its 33rd byte is a space, where an unmarked hold has the one the mark replaces.
    const FOREIGN: &str = "another application's value, 33+ bytes long";
    run_bounded(LIMIT, || async {
        let server = RedisServer::start();
        let locker = patient_locker(&server, Duration::from_secs(30));
        warm(&locker).await;
        let mut admin = server.connection().await;
        let foreign = unique_key("foreign");
        let foreign_name = lock_name(&foreign);
        redis::cmd("SET")
            .arg(&foreign_name)
            .arg(FOREIGN)
            .query_async::<()>(&mut admin)
            .await
            .unwrap();
        let untouched = |value: Option<String>, pttl: i64, how: &str| {
            assert_eq!(
                value.as_deref(),
                Some(FOREIGN),
                "{how}: the foreign string at `{foreign_name}` was changed"
            );
            assert_eq!(
                pttl, -1,
                "{how}: the foreign string at `{foreign_name}` was given an expiry"
            );
        };
        let read = async |admin: &mut redis::aio::MultiplexedConnection| {
            let value: Option<String> = redis::cmd("GET")
                .arg(&foreign_name)
                .query_async(admin)
                .await
                .unwrap();
            let pttl: i64 = redis::cmd("PTTL")
                .arg(&foreign_name)
                .query_async(admin)
                .await
                .unwrap();
            (value, pttl)
        };

        let alone = locker.lock(&foreign).wait(Duration::ZERO).await;
        assert!(
            alone.is_err(),
            "a lone acquisition took the foreign string for a free lock: {alone:?}"
        );
        let (value, pttl) = read(&mut admin).await;
        untouched(value, pttl, "a lone acquisition");

        let (odd, guards) = batched_among_free_keys(&server, &locker, &foreign).await;
        assert!(
            odd.is_err(),
            "a batched acquisition took the foreign string for a free lock: {odd:?}"
        );
        let (value, pttl) = read(&mut admin).await;
        untouched(value, pttl, "a batched acquisition");
        for guard in guards {
            guard.release().await.expect("release");
        }
    });
}

/// A key of another type at the lock key itself (another application's hash at `P:{K}`; the lock
/// has no other key): an acquisition sent alone (`acquire.lua`) and one batched among free keys
/// (`batch.lua`) each fail with a backend error naming the Redis key, the batch's other requests
/// are granted, and `inspect` and `force_release` fail too — and none of them changes the hash,
/// its fields or its (absent) expiry.
#[test]
fn a_key_of_another_type_at_the_lock_key_fails_only_its_own_requests_and_is_left_alone() {
    run_bounded(LIMIT, || async {
        let server = RedisServer::start();
        let locker = patient_locker(&server, Duration::from_secs(30));
        warm(&locker).await;
        let mut admin = server.connection().await;
        let bad = unique_key("bad-type");
        let bad_name = lock_name(&bad);
        redis::cmd("HSET")
            .arg(&bad_name)
            .arg("owner")
            .arg("another application")
            .query_async::<()>(&mut admin)
            .await
            .unwrap();
        let read = async |admin: &mut redis::aio::MultiplexedConnection| {
            let kind: String = redis::cmd("TYPE")
                .arg(&bad_name)
                .query_async(admin)
                .await
                .unwrap();
            let fields: Vec<(String, String)> = redis::cmd("HGETALL")
                .arg(&bad_name)
                .query_async(admin)
                .await
                .unwrap();
            let pttl: i64 = redis::cmd("PTTL")
                .arg(&bad_name)
                .query_async(admin)
                .await
                .unwrap();
            (kind, fields, pttl)
        };
        let before = read(&mut admin).await;
        assert_eq!(before.0, "hash", "the test's hash was not written");
        let untouched = async |admin: &mut redis::aio::MultiplexedConnection, how: &str| {
            assert_eq!(
                read(admin).await,
                before,
                "{how}: the hash at the lock key `{bad_name}` was changed, replaced or given an \
                 expiry"
            );
        };
        let failed = |result: Result<LockGuard, Error>, how: &str| {
            let err = result.expect_err(&format!(
                "{how}: the acquisition was granted over a hash at the lock key"
            ));
            let source = std::error::Error::source(&err)
                .map(ToString::to_string)
                .unwrap_or_default();
            println!("{how}: {err}: {source}");
            assert!(
                matches!(err, Error::Backend(_)) && source.contains(&bad_name),
                "{how}: the error is not a backend error naming the lock key `{bad_name}`: \
                 {err:?}: {source}"
            );
        };

        failed(locker.lock(&bad).wait(Duration::ZERO).await, "alone");
        untouched(&mut admin, "alone").await;

        let (odd, guards) = batched_among_free_keys(&server, &locker, &bad).await;
        failed(odd, "batched");
        untouched(&mut admin, "batched").await;

        let inspected = locker.inspect(&bad).await;
        assert!(
            inspected.is_err(),
            "inspect read a hash at the lock key as a lock: {inspected:?}"
        );
        let forced = locker.force_release(&bad).await;
        assert!(
            forced.is_err(),
            "force_release of a hash at the lock key did not fail: {forced:?}"
        );
        untouched(&mut admin, "inspect and force_release").await;
        for guard in guards {
            guard.release().await.expect("release");
        }
    });
}

/// A server out of memory (`maxmemory` reached, `noeviction`) refuses writes: an acquisition of
/// a free lock fails with its error, but one of a taken lock is still refused as busy (it needs
/// no write), alone and batched, and the holder's release still works.
#[test]
fn a_server_out_of_memory_still_refuses_a_taken_lock_as_busy() {
    run_bounded(LIMIT, || async {
        let server = RedisServer::start();
        let locker = patient_locker(&server, Duration::from_secs(30));
        warm(&locker).await;
        let holder = server.locker().await;
        let mut admin = server.connection().await;
        let keys: Vec<String> = (0..20).map(|i| unique_key(&format!("oom-{i}"))).collect();
        let mut held = Vec::new();
        for key in &keys[..10] {
            held.push(
                holder
                    .lock(key)
                    .await
                    .expect("lock before the memory runs out"),
            );
        }
        let free = unique_key("oom-free");
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory-policy")
            .arg("noeviction")
            .query_async::<()>(&mut admin)
            .await
            .unwrap();
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg(1)
            .query_async::<()>(&mut admin)
            .await
            .unwrap();

        let busy = |result: Result<LockGuard, Error>, how: &str| match result {
            Err(err) if err.is_timeout() => {}
            other => panic!(
                "{how}: an acquisition of a taken lock on a server out of memory was not refused \
                 as busy: {other:?}"
            ),
        };
        busy(locker.lock(&keys[0]).wait(Duration::ZERO).await, "alone");
        let err = locker
            .lock(&free)
            .wait(Duration::ZERO)
            .await
            .expect_err("a free lock was granted on a server out of memory");
        assert!(
            err.to_string().contains("OOM")
                || std::error::Error::source(&err).is_some_and(|s| s.to_string().contains("OOM")),
            "the acquisition of a free lock on a server out of memory failed without saying so: \
             {err:?}"
        );

        server.reset_stats().await;
        server.pause();
        let tasks = queue_behind_two_calls(&locker, &keys[1..10], Duration::ZERO).await;
        server.resume();
        for (i, task) in tasks.into_iter().enumerate() {
            busy(joined(task, &format!("request {i}")).await, "batched");
        }
        assert!(
            calls(&server, "evalsha").await < 9,
            "the acquisitions were not batched, so the test exercised nothing"
        );

        for guard in held {
            guard
                .release()
                .await
                .expect("a release on a server out of memory (it frees memory)");
        }
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg(0)
            .query_async::<()>(&mut admin)
            .await
            .unwrap();
        let guard = locker
            .lock(&keys[0])
            .await
            .expect("lock once memory is back");
        guard.release().await.expect("release");
    });
}

// ---------------------------------------------------------------------------------------------
// 5. Wake-ups with the "+" mark
// ---------------------------------------------------------------------------------------------

/// Holds nobody waited for are released without a `PUBLISH` (one at a time and batched); a hold
/// that refused a waiter is published exactly once, when it is released.
#[test]
fn only_a_hold_that_refused_someone_publishes_its_release() {
    run_bounded(LIMIT, || async {
        let server = RedisServer::start();
        let holder = server.locker().await;
        let waiter = server.locker().await;
        warm(&holder).await;
        warm(&waiter).await;
        server.reset_stats().await;

        for i in 0..10 {
            let guard = holder
                .lock(unique_key(&format!("alone-{i}")))
                .await
                .unwrap();
            guard.release().await.unwrap();
        }
        let together: Vec<_> = (0..50)
            .map(|i| {
                let holder = holder.clone();
                tokio::spawn(async move {
                    let guard = holder.lock(unique_key(&format!("together-{i}"))).await?;
                    guard.release().await
                })
            })
            .collect();
        for task in together {
            task.await.unwrap().expect("uncontended lock and release");
        }
        let evalsha = calls(&server, "evalsha").await;
        let published = calls(&server, "publish").await;
        println!(
            "publish: {evalsha} script calls for 120 uncontended requests, {published} PUBLISH"
        );
        assert!(
            evalsha > 0,
            "no script call was counted: INFO commandstats is not read"
        );
        assert_eq!(
            published, 0,
            "120 uncontended acquisitions and releases sent {published} PUBLISH: a release that \
             nobody waited for was announced"
        );

        let key = unique_key("contended");
        let guard = holder.lock(&key).await.unwrap();
        let waiting = spawn_lock(&waiter, &key, Duration::from_secs(10));
        until_subscribed(&mut server.connection().await, &key).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        guard.release().await.unwrap();
        let next = joined(waiting, "the waiter")
            .await
            .expect("the waiter gets the released lock");
        next.release().await.unwrap();
        let published = calls(&server, "publish").await;
        assert_eq!(
            published, 1,
            "one hold refused a waiter and was released, the waiter's own hold refused nobody: \
             expected exactly one PUBLISH, got {published}"
        );
    });
}

/// A waiter on another locker, blocked on a hold with a 30 s lease, is woken by the release: it
/// gets the lock within a second of `release()` returning, not at its 10 s deadline. Then the
/// same for 30 keys at once, so that the refusals that mark the holds and the releases that
/// publish them go out batched.
#[test]
fn a_waiter_refused_by_a_hold_is_woken_by_its_release() {
    const KEYS: usize = 30;
    const PROMPT: Duration = Duration::from_secs(1);
    run_bounded(LIMIT, || async {
        let server = RedisServer::start();
        let holder = server.locker().await;
        let waiter = server.locker().await;
        warm(&holder).await;
        warm(&waiter).await;
        let mut admin = server.connection().await;

        let key = unique_key("wake");
        let guard = holder
            .lock(&key)
            .lease(Duration::from_secs(30))
            .await
            .unwrap();
        let waiting = {
            let request = waiter.lock(&key).wait(Duration::from_secs(10));
            tokio::spawn(async move { (request.await, Instant::now()) })
        };
        until_subscribed(&mut admin, &key).await;
        // Past the retry that follows the subscription: the waiter is asleep.
        tokio::time::sleep(Duration::from_millis(300)).await;
        guard.release().await.unwrap();
        let released = Instant::now();
        let (result, resolved) = waiting.await.unwrap();
        let next = result.expect("the waiter gets the lock once it is released");
        let gap = resolved.saturating_duration_since(released);
        println!("wake: one waiter got the lock {gap:?} after the release");
        assert!(
            gap < PROMPT,
            "the waiter got the lock {gap:?} after the release returned: it was not woken by the \
             release (its hold was not marked, or the release not published)"
        );
        next.release().await.unwrap();

        // Many at once: batched refusals and batched releases.
        let keys: Vec<String> = (0..KEYS)
            .map(|i| unique_key(&format!("wake-{i}")))
            .collect();
        let mut guards = Vec::new();
        for key in &keys {
            guards.push(
                holder
                    .lock(key)
                    .lease(Duration::from_secs(30))
                    .await
                    .unwrap(),
            );
        }
        let waiting: Vec<_> = keys
            .iter()
            .map(|key| {
                let request = waiter.lock(key).wait(Duration::from_secs(10));
                tokio::spawn(async move { (request.await, Instant::now()) })
            })
            .collect();
        for key in &keys {
            until_subscribed(&mut admin, key).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let releases: Vec<_> = guards
            .into_iter()
            .map(|guard| tokio::spawn(guard.release()))
            .collect();
        for release in releases {
            release.await.unwrap().expect("release");
        }
        let released = Instant::now();
        let mut slowest = Duration::ZERO;
        for (i, task) in waiting.into_iter().enumerate() {
            let (result, resolved) = task.await.unwrap();
            let next = result.unwrap_or_else(|err| {
                panic!("waiter {i} never got its key after the release: {err:?}")
            });
            let gap = resolved.saturating_duration_since(released);
            slowest = slowest.max(gap);
            assert!(
                gap < PROMPT,
                "waiter {i} got its key {gap:?} after all releases returned: it was not woken by \
                 its release (refusal or release batched with others lost the mark or the \
                 announcement)"
            );
            next.release().await.unwrap();
        }
        println!("wake: {KEYS} waiters all got their keys within {slowest:?} of the releases");
    });
}

/// A hold marked by a refusal reads the same through `inspect` (holder, token, fence), keeps
/// being renewed, and is released by its owner.
#[test]
fn a_marked_hold_inspects_renews_and_releases_like_any_other() {
    run_bounded(LIMIT, || async {
        let server = RedisServer::start();
        let holder = server.locker().await;
        let other = server.locker().await;
        let mut admin = server.connection().await;
        let key = unique_key("marked");
        let lease = Duration::from_millis(900);
        let guard = holder.lock(&key).lease(lease).await.unwrap();
        let unmarked = holder.inspect(&key).await.unwrap().expect("held");

        assert!(
            other.try_lock(&key).await.unwrap().is_none(),
            "another locker took a held key"
        );
        let value: String = redis::cmd("GET")
            .arg(lock_name(&key))
            .query_async(&mut admin)
            .await
            .unwrap();
        assert_eq!(
            value.as_bytes().get(32),
            Some(&b'+'),
            "the refusal did not mark the hold (no '+' after the hold token): {value}"
        );

        let check = |info: Option<relock::LockInfo>, when: &str| {
            let info = info.unwrap_or_else(|| panic!("{when}: the marked hold reads as free"));
            assert_eq!(info.key, key, "{when}: key");
            assert_eq!(
                info.owner, unmarked.owner,
                "{when}: the marked hold's owner token reads differently"
            );
            assert_eq!(info.owner, &value[..32], "{when}: owner is the hold token");
            assert_eq!(
                info.fencing_token,
                guard.fencing_token(),
                "{when}: the marked hold's fencing token reads differently from its guard's"
            );
            assert_eq!(info.pid, Some(std::process::id()), "{when}: holder pid");
            assert_eq!(info.host, unmarked.host, "{when}: holder host");
            assert!(info.host.is_some(), "{when}: holder host missing");
            assert_eq!(
                info.acquired_at, unmarked.acquired_at,
                "{when}: acquisition time"
            );
            assert!(
                info.ttl > Duration::ZERO && info.ttl <= lease,
                "{when}: ttl {:?} outside the {lease:?} lease",
                info.ttl
            );
        };
        check(holder.inspect(&key).await.unwrap(), "marked");

        // Renewed past its lease, still marked, still the same hold.
        tokio::time::sleep(lease + lease / 2).await;
        assert!(guard.is_held(), "the marked hold was not renewed");
        check(
            holder.inspect(&key).await.unwrap(),
            "marked, after renewals",
        );
        let value: String = redis::cmd("GET")
            .arg(lock_name(&key))
            .query_async(&mut admin)
            .await
            .unwrap();
        assert_eq!(
            value.as_bytes().get(32),
            Some(&b'+'),
            "a renewal dropped the mark: {value}"
        );

        server.reset_stats().await;
        guard
            .release()
            .await
            .expect("the owner releases its marked hold");
        assert!(
            holder.inspect(&key).await.unwrap().is_none(),
            "the marked hold is still there after its release"
        );
        assert_eq!(
            calls(&server, "publish").await,
            1,
            "the release of a marked hold was not announced exactly once"
        );
    });
}

/// History (shared holds through the group commit, since f18a0f4): with the server paused, task
/// A asks for one of 2 permits of k (sent alone, from its own future) and task B for another (the
/// second call, sent from a task of its own); B is aborted while its call waits at the server. The
/// server resumes: A is granted, and B's permit, granted to nobody, must be given back long
/// before its 30 s lease ends (by B's own guard in the background, and again after its call
/// returns: its caller is gone), so another locker gets the second permit within seconds and
/// then no third. A permit queued and aborted before it was sent is never granted.
#[test]
fn a_permit_granted_to_a_caller_gone_is_given_back_long_before_its_lease_ends() {
    run_bounded(LIMIT, || async {
        let server = RedisServer::start();
        let locker = patient_locker(&server, Duration::from_secs(30));
        warm(&locker).await;
        let warm_key = unique_key("permit-warm");
        locker
            .semaphore(warm_key.as_str(), 2)
            .try_acquire()
            .await
            .expect("a warm-up permit")
            .expect("a free semaphore")
            .release()
            .await
            .expect("a warm-up release");
        let other = server.locker().await;
        let key = unique_key("permit-gone");
        let spawn = |locker: &Locker| {
            let semaphore = locker.semaphore(key.as_str(), 2);
            tokio::spawn(async move { semaphore.acquire().wait(Duration::from_secs(10)).await })
        };

        server.pause();
        let a = spawn(&locker);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let b = spawn(&locker);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let queued = spawn(&locker);
        tokio::time::sleep(SETTLE).await;
        b.abort();
        queued.abort();
        for task in [b, queued] {
            assert!(
                matches!(task.await, Err(err) if err.is_cancelled()),
                "a permit aborted while the server was paused finished"
            );
        }
        let resumed = Instant::now();
        server.resume();
        let held = tokio::time::timeout(Duration::from_secs(10), a)
            .await
            .expect("A's permit within 10 s")
            .expect("A's task")
            .expect("A's permit");

        let semaphore = other.semaphore(key.as_str(), 2);
        let second = loop {
            if let Some(permit) = semaphore.try_acquire().await.expect("try_acquire") {
                break permit;
            }
            assert!(
                resumed.elapsed() < Duration::from_secs(5),
                "B's permit, granted to nobody, is still held {:?} after the server resumed",
                resumed.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(second.fencing_token() > held.fencing_token());
        // B's permit was granted (its released entry keeps a grant's fencing token, not the 0
        // of a release that found no entry): the test exercised a grant answered to nobody.
        let value: String = redis::cmd("GET")
            .arg(lock_name(&key))
            .query_async(&mut server.connection().await)
            .await
            .expect("GET the lock key");
        let words: Vec<&str> = value.split(' ').skip(4).collect();
        assert!(
            words
                .chunks(3)
                .any(|entry| entry[1].starts_with('-') && entry[2] != "0"),
            "B's permit was never granted: {value}"
        );
        assert!(
            semaphore
                .try_acquire()
                .await
                .expect("try_acquire")
                .is_none(),
            "a third permit of 2: A's, the other locker's, and one more"
        );
        second.release().await.expect("release");
        held.release().await.expect("release");
    });
}
