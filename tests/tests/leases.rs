//! Leases, handoffs and loss: a released lock reaches its next waiter within milliseconds (woken by
//! the release message, not by polling), a renewed lease keeps a lock far past its length, a hold
//! removed behind its holder's back is noticed within a renewal period, and ten thousand holds are
//! renewed in a handful of round trips.
//!
//! Every Redis test has a private server. "Another owner" on Redis is a second `Locker` (its own
//! connection, subscriber and local holds), so it contends through the server as another process
//! would; an in-memory store belongs to one `Locker`, so there it is a clone used from another task.

use std::future::IntoFuture;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use redis::aio::MultiplexedConnection;
use relock::{Error, LockGuard, Locker, OnLost};
use relock_tests::{
    bounded, command_stats, info_number, on_every_backend, release_channel, subscribers,
    unique_key, RedisServer, TestBackend,
};

/// The lease of the loss and renewal tests: renewed every 300 ms.
const LEASE: Duration = Duration::from_millis(900);
/// A hung lock operation fails its test instead of stalling the run.
const TEST_LIMIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// The backends
// ---------------------------------------------------------------------------------------------

/// How a hold disappears behind its holder's back.
#[derive(Debug, Clone, Copy)]
enum Removal {
    /// `force_release` through another locker (in memory: through a clone).
    ForceRelease,
    /// `DEL relock:{<key>}` from a plain client, as an operator with `redis-cli` would.
    Del,
}

/// Removes the hold on `key` behind its holder's back.
async fn remove(b: &TestBackend, key: &str, how: Removal) {
    match how {
        Removal::ForceRelease => assert!(
            b.other.force_release(key).await.expect("force_release"),
            "force_release found no holder"
        ),
        Removal::Del => {
            let mut admin = b.admin().expect("DEL needs a Redis server");
            let deleted: u64 = redis::cmd("DEL")
                .arg(format!("relock:{{{key}}}"))
                .query_async(&mut admin)
                .await
                .expect("DEL");
            assert_eq!(deleted, 1, "the lock hash was not there to delete");
        }
    }
}

on_every_backend! {
    limit: TEST_LIMIT;
    a_waiter_gets_the_lock_within_milliseconds_of_the_release: handoffs_are_fast();
    a_renewed_900ms_lease_keeps_the_lock_through_a_3500ms_hold: a_renewed_lease_outlasts_itself();
    a_release_after_a_renewal_frees_the_lock_at_once: a_release_after_a_renewal_frees_the_lock();
    a_force_release_marks_the_guard_lost_within_a_renewal_period:
        removal_marks_the_guard_lost(Removal::ForceRelease);
    run_aborts_its_body_when_the_lock_is_force_released:
        run_aborts_its_body_on_removal(Removal::ForceRelease);
    run_with_on_lost_continue_finishes_its_body_after_a_force_release:
        run_continues_its_body_after_removal(Removal::ForceRelease);
}

// ---------------------------------------------------------------------------------------------
// Handoff
// ---------------------------------------------------------------------------------------------

/// The holder takes `key` with a 30 s lease, a waiter on the other locker starts waiting (up to
/// 10 s), and the holder releases. Returns the time from the start of `release()` to the waiter's
/// lock resolving.
async fn handoff(b: &TestBackend, key: &str) -> Duration {
    let guard = b
        .locker
        .lock(key)
        .lease(Duration::from_secs(30))
        .await
        .expect("the holder takes the lock");
    let (waiter, waiter_key) = (b.other.clone(), key.to_owned());
    let waiting = tokio::spawn(async move {
        let taken = waiter.lock(&waiter_key).wait(Duration::from_secs(10)).await;
        (taken, Instant::now())
    });
    b.until_waiting(key).await;
    let released_at = Instant::now();
    guard.release().await.expect("the holder releases");
    let (taken, taken_at) = waiting.await.expect("the waiter panicked");
    let taken = taken.expect("the waiter gets the lock once it is released");
    taken.release().await.expect("the waiter releases");
    taken_at - released_at
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

async fn handoffs_are_fast(b: &TestBackend) {
    let key = unique_key("handoff");
    let mut latencies = Vec::new();
    for _ in 0..20 {
        latencies.push(handoff(b, &key).await);
    }
    let median = median(latencies.clone());
    eprintln!("handoff latency over 20 handoffs: median {median:?}, all {latencies:?}");
    // The benchmark reports the real figure; this only catches a waiter that sleeps on.
    assert!(
        median < Duration::from_millis(50),
        "median handoff took {median:?}: {latencies:?}"
    );
}

/// With a 30 s holder lease, a waiter that retried only when the lease would end (or polled on a
/// timer) could not get the lock fast; and while it waits it sends nothing at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_is_woken_by_the_release_message_not_by_polling() {
    bounded(TEST_LIMIT, async {
        let b = TestBackend::redis().await;
        let (server, mut admin) = b.server().zip(b.admin()).expect("a Redis backend");
        let key = unique_key("pubsub-wake");
        let guard = b
            .locker
            .lock(&key)
            .lease(Duration::from_secs(30))
            .await
            .expect("lock");
        let (waiter, waiter_key) = (b.other.clone(), key.clone());
        let waiting = tokio::spawn(async move {
            let taken = waiter.lock(&waiter_key).wait(Duration::from_secs(10)).await;
            (taken, Instant::now())
        });
        b.until_waiting(&key).await;
        assert_eq!(
            subscribers(&mut admin, &release_channel(&key)).await,
            1,
            "the waiter must wait subscribed to the release channel"
        );

        server.reset_stats().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let sent = server.commands_processed().await;
        assert_eq!(
            sent,
            0,
            "the waiter sent {sent} commands in 500 ms of waiting: it polls ({:?})",
            command_stats(&mut admin).await
        );

        let released_at = Instant::now();
        guard.release().await.expect("release");
        let (taken, taken_at) = waiting.await.expect("the waiter panicked");
        let latency = taken_at - released_at;
        eprintln!("handoff with a 30 s holder lease: {latency:?}");
        assert!(
            latency < Duration::from_secs(1),
            "the waiter took {latency:?} to notice the release"
        );
        taken
            .expect("the waiter gets the lock")
            .release()
            .await
            .expect("release");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Renewal
// ---------------------------------------------------------------------------------------------

async fn a_renewed_lease_outlasts_itself(b: &TestBackend) {
    const HOLD: Duration = Duration::from_millis(3500);
    let key = unique_key("renewed");
    let guard = b.locker.lock(&key).lease(LEASE).await.expect("lock");
    let started = Instant::now();
    let mut polls = 0;
    while started.elapsed() < HOLD {
        let (other, other_key) = (b.other.clone(), key.clone());
        let taken = tokio::spawn(async move { other.try_lock(&other_key).await })
            .await
            .expect("try_lock panicked")
            .expect("try_lock");
        assert!(
            taken.is_none(),
            "another owner took the lock {:?} into a hold with a {LEASE:?} lease",
            started.elapsed()
        );
        assert!(
            guard.is_held(),
            "the hold was lost {:?} in",
            started.elapsed()
        );
        let info = b.locker.inspect(&key).await.expect("inspect");
        assert!(
            info.is_some_and(|info| info.ttl > Duration::ZERO),
            "the lock expired {:?} in",
            started.elapsed()
        );
        polls += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(polls >= 20, "only {polls} polls in {HOLD:?}");
    guard
        .release()
        .await
        .expect("release: the lease was renewed throughout");
    assert_free_at_once(
        &b.other,
        &key,
        Duration::from_secs(2),
        "release() returned Ok",
    )
    .await;
}

/// Another owner's `try_lock`, every 20 ms for up to `limit`: how many tries it took to get the
/// lock, and how long; `None` if it never did.
async fn tries_until_free(other: &Locker, key: &str, limit: Duration) -> Option<(u32, Duration)> {
    let started = Instant::now();
    let mut tries = 0;
    while started.elapsed() < limit {
        tries += 1;
        let (other, other_key) = (other.clone(), key.to_owned());
        let taken = tokio::spawn(async move { other.try_lock(&other_key).await })
            .await
            .expect("try_lock panicked")
            .expect("try_lock");
        if let Some(taken) = taken {
            let after = started.elapsed();
            taken.release().await.expect("release");
            return Some((tries, after));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Asserts that another owner gets `key` at its first try.
async fn assert_free_at_once(other: &Locker, key: &str, limit: Duration, what: &str) {
    let free = tries_until_free(other, key, limit).await;
    assert!(
        matches!(free, Some((1, _))),
        "{what}, yet another owner got the lock only after (tries, time) {free:?}"
    );
}

/// `release()` answers only once the lock is free: another owner can take it at once, however
/// many times the watchdog has renewed it.
async fn a_release_after_a_renewal_frees_the_lock(b: &TestBackend) {
    let key = unique_key("released-after-renewal");
    let guard = b
        .locker
        .lock(&key)
        .lease(Duration::from_millis(300))
        .await
        .expect("lock");
    // Renewed at 100 ms (lease/3); released between that renewal and the next.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(guard.is_held());
    guard.release().await.expect("release");
    assert_free_at_once(
        &b.other,
        &key,
        Duration::from_secs(2),
        "release() after a renewal returned Ok",
    )
    .await;
}

/// A release that overlaps the hold's renewal round trip still frees the lock before it answers.
/// `CLIENT PAUSE` holds the renewal on the server, so that the release surely comes while the
/// renewal is in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_during_a_renewal_round_trip_frees_the_lock_before_it_returns() {
    bounded(TEST_LIMIT, async {
        let b = TestBackend::redis().await;
        let mut admin = b.admin().expect("a Redis backend");
        let key = unique_key("released-during-renewal");
        let asked = Instant::now();
        let guard = b.locker.lock(&key).lease(LEASE).await.expect("lock");
        // The renewal is sent lease/3 = 300 ms after the lock was asked for; the server answers
        // it only once the pause ends at about 600 ms.
        tokio::time::sleep_until((asked + Duration::from_millis(200)).into()).await;
        redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(400)
            .arg("ALL")
            .query_async::<()>(&mut admin)
            .await
            .expect("CLIENT PAUSE");
        tokio::time::sleep_until((asked + Duration::from_millis(400)).into()).await;
        guard.release().await.expect("release");
        let returned = asked.elapsed();
        let what = format!(
            "release() during the renewal returned Ok {returned:?} after the lock was asked for, \
             before the server's pause ended"
        );
        assert_free_at_once(&b.other, &key, LEASE * 3, &what).await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Loss: the hold removed behind the holder's back
// ---------------------------------------------------------------------------------------------

/// How long after the removal the holder must notice. The hold is removed 50 ms after it was
/// taken, so the first renewal (lease/3 after taking it) finds it gone about 250 ms later; the
/// local deadline alone would only expire it some 840 ms after the removal, so a loss reported
/// within this bound was found by the renewal.
const NOTICED_WITHIN: Duration = Duration::from_millis(700);
const REMOVE_AFTER: Duration = Duration::from_millis(50);

async fn removal_marks_the_guard_lost(b: &TestBackend, how: Removal) {
    let key = unique_key("removed");
    let guard = b.locker.lock(&key).lease(LEASE).await.expect("lock");
    tokio::time::sleep(REMOVE_AFTER).await;
    remove(b, &key, how).await;
    let removed_at = Instant::now();
    tokio::time::timeout(NOTICED_WITHIN, guard.lost())
        .await
        .unwrap_or_else(|_| {
            panic!("lost() did not resolve within {NOTICED_WITHIN:?} of the {how:?}")
        });
    eprintln!("{how:?} noticed after {:?}", removed_at.elapsed());
    assert!(!guard.is_held(), "is_held() after lost() resolved");
    let released = guard.release().await;
    assert!(
        matches!(released, Err(Error::Lost { .. })),
        "release() of a removed hold returned {released:?}, expected Error::Lost"
    );
}

/// Sets its flag when dropped: shows that `run` dropped the body it was polling.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

async fn run_aborts_its_body_on_removal(b: &TestBackend, how: Removal) {
    let key = unique_key("run-aborted");
    let dropped = Arc::new(AtomicBool::new(false));
    let finished = AtomicBool::new(false);
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let body = {
        let dropped = SetOnDrop(dropped.clone());
        let finished = &finished;
        async move {
            let _dropped = dropped;
            let _ = started_tx.send(());
            tokio::time::sleep(Duration::from_secs(10)).await;
            finished.store(true, Ordering::SeqCst);
        }
    };
    let running = async {
        let result = b.locker.lock(&key).lease(LEASE).run(body).await;
        (result, Instant::now())
    };
    let removing = async {
        started_rx.await.expect("the body started");
        tokio::time::sleep(REMOVE_AFTER).await;
        remove(b, &key, how).await;
        Instant::now()
    };
    let ((result, ended_at), removed_at) = tokio::join!(running, removing);
    let after = ended_at.saturating_duration_since(removed_at);
    eprintln!("run aborted {after:?} after the {how:?}");
    assert!(
        matches!(result, Err(Error::Lost { .. })),
        "run returned {result:?}, expected Error::Lost"
    );
    assert!(dropped.load(Ordering::SeqCst), "run did not drop its body");
    assert!(
        !finished.load(Ordering::SeqCst),
        "the body ran on after the loss"
    );
    assert!(
        after < NOTICED_WITHIN,
        "run aborted {after:?} after the {how:?}"
    );
}

async fn run_continues_its_body_after_removal(b: &TestBackend, how: Removal) {
    let key = unique_key("run-continued");
    // What the body saw through `current_guard()` once the loss was known, set as its last act.
    let held_at_the_end = std::sync::Mutex::new(None);
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let body = async {
        let _ = started_tx.send(());
        let guard = relock::current_guard().expect("run's body has a current guard");
        tokio::time::timeout(Duration::from_secs(5), guard.lost())
            .await
            .expect("the body sees the loss");
        // Past the loss, as a body with more work would be.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let held = relock::current_guard()
            .expect("run's body still has a current guard")
            .is_held();
        *held_at_the_end.lock().unwrap() = Some(held);
    };
    let running = b
        .locker
        .lock(&key)
        .lease(LEASE)
        .on_lost(OnLost::Continue)
        .run(body);
    let removing = async {
        started_rx.await.expect("the body started");
        tokio::time::sleep(REMOVE_AFTER).await;
        remove(b, &key, how).await;
    };
    let (result, ()) = tokio::join!(running, removing);
    assert_eq!(
        *held_at_the_end.lock().unwrap(),
        Some(false),
        "the body did not run to its end, or current_guard().is_held() was still true"
    );
    assert!(
        matches!(result, Err(Error::Lost { .. })),
        "run returned {result:?}, expected Error::Lost: the lease had ended before the release"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_del_of_the_lock_hash_marks_the_guard_lost_within_a_renewal_period() {
    let b = TestBackend::redis().await;
    bounded(TEST_LIMIT, removal_marks_the_guard_lost(&b, Removal::Del)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_aborts_its_body_when_the_lock_hash_is_deleted() {
    let b = TestBackend::redis().await;
    bounded(TEST_LIMIT, run_aborts_its_body_on_removal(&b, Removal::Del)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_on_lost_continue_finishes_its_body_after_the_lock_hash_is_deleted() {
    let b = TestBackend::redis().await;
    bounded(
        TEST_LIMIT,
        run_continues_its_body_after_removal(&b, Removal::Del),
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Ten thousand holds
// ---------------------------------------------------------------------------------------------

const HOLDS: u64 = 10_000;

/// Calls that reached the server close together: one renewal tick's pipeline.
#[derive(Debug)]
struct Burst {
    /// When the count started to rise, from the start of sampling.
    at: Duration,
    calls: u64,
    /// From the last sample before the rise to the last sample that still rose.
    span: Duration,
}

/// Groups sampled call counts into bursts: a burst ends once the count has stood still for
/// `quiet`.
fn bursts(samples: &[(Duration, u64)], quiet: Duration) -> Vec<Burst> {
    let mut bursts: Vec<Burst> = Vec::new();
    let mut last_rise: Option<Duration> = None;
    for pair in samples.windows(2) {
        let [(before, was), (at, now)] = pair else {
            unreachable!("windows(2)")
        };
        if now <= was {
            continue;
        }
        let continues = last_rise.is_some_and(|last| before.saturating_sub(last) < quiet);
        match bursts.last_mut() {
            Some(burst) if continues => {
                burst.calls += now - was;
                burst.span = *at - burst.at;
            }
            _ => bursts.push(Burst {
                at: *before,
                calls: now - was,
                span: *at - *before,
            }),
        }
        last_rise = Some(*at);
    }
    bursts
}

async fn evalsha_calls(admin: &mut MultiplexedConnection) -> u64 {
    command_stats(admin)
        .await
        .into_iter()
        .find_map(|(name, calls)| (name == "evalsha").then_some(calls))
        .unwrap_or(0)
}

/// How the round trips are counted. Each tick's renewals are one pipeline: the server reads the
/// ~1 MB of EVALSHAs in a few dozen socket reads (up to 16 KiB each) and answers them together.
/// A round trip needs at least one read on the server (the request has to arrive), so
/// `total_reads_processed` (INFO stats) bounds the number of round trips from above: renewing
/// each hold in a round trip of its own would need 10 000 reads per tick. `CLIENT LIST` and
/// `INFO commandstats` count commands, which are the same 10 000 per tick either way; `MONITOR`
/// would cost more than what it measures.
///
/// That every hold is renewed once per tick, all together, shows in `INFO commandstats` sampled
/// every 20 ms: the EVALSHA count rises in one step of exactly 10 000 per tick (lease/3 = 1 s),
/// with nothing in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_holds_are_renewed_in_a_handful_of_round_trips() {
    const WINDOW: Duration = Duration::from_millis(2500);
    const SAMPLE_EVERY: Duration = Duration::from_millis(20);
    bounded(TEST_LIMIT, async {
        let server = RedisServer::start();
        let mut admin = server.connection().await;
        let locker = Locker::builder()
            .url(server.url())
            .lease(Duration::from_secs(3))
            .build()
            .expect("build the locker");

        // The first renewal on a fresh server loads the renewal script (NOSCRIPT, load, resend);
        // let a short hold pay for that, so that the window counts renewals only.
        let warm_up = locker
            .lock(unique_key("warm-up"))
            .lease(Duration::from_millis(300))
            .await
            .expect("lock");
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(warm_up.is_held(), "a 300 ms lease was not renewed");
        warm_up.release().await.expect("release");

        let taking = Instant::now();
        let keys: Vec<String> = (0..HOLDS).map(|_| unique_key("many")).collect();
        let guards: Vec<LockGuard> = join_all(
            keys.iter()
                .map(|key| locker.lock(key.as_str()).wait(Duration::ZERO).into_future()),
        )
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("take 10 000 free locks");
        eprintln!("took {HOLDS} locks in {:?}", taking.elapsed());

        // Start the window right after a tick, so that it holds exactly two of them.
        server.reset_stats().await;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = (0, Instant::now());
        loop {
            let calls = evalsha_calls(&mut admin).await;
            if calls != seen.0 {
                seen = (calls, Instant::now());
            } else if calls >= HOLDS && seen.1.elapsed() >= Duration::from_millis(150) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the first renewal tick never completed: {calls} renewals"
            );
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
        eprintln!("first tick: {} renewals", seen.0);

        server.reset_stats().await;
        let reads_before = info_number(&mut admin, "stats", "total_reads_processed").await;
        let started = Instant::now();
        let mut samples = Vec::new();
        while started.elapsed() < WINDOW {
            samples.push((started.elapsed(), evalsha_calls(&mut admin).await));
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
        let reads = info_number(&mut admin, "stats", "total_reads_processed").await - reads_before;
        // The sampler's own INFO calls are one read each.
        let renewal_reads = reads.saturating_sub(samples.len() as u64 + 1);

        let bursts = bursts(&samples, Duration::from_millis(250));
        let total = samples.last().map_or(0, |(_, calls)| *calls);
        eprintln!(
            "{total} renewals in {WINDOW:?}: bursts {bursts:?}; {renewal_reads} server reads \
             besides the sampler's"
        );

        let lost = guards.iter().filter(|guard| !guard.is_held()).count();
        assert_eq!(lost, 0, "{lost} of {HOLDS} holds were lost");
        assert!(
            (2..=3).contains(&bursts.len()),
            "expected a renewal tick about every second, got bursts {bursts:?}"
        );
        for burst in &bursts {
            assert_eq!(
                burst.calls, HOLDS,
                "a tick renewed {} holds, not all {HOLDS} together: {bursts:?}",
                burst.calls
            );
        }
        assert_eq!(
            total,
            HOLDS * bursts.len() as u64,
            "renewals outside the ticks"
        );
        let ticks = bursts.len() as u64;
        assert!(
            renewal_reads <= 500 * ticks,
            "{renewal_reads} server reads for {ticks} ticks: renewals take more than a handful \
             of round trips"
        );

        let released = join_all(guards.into_iter().map(LockGuard::release)).await;
        let failed: Vec<_> = released.into_iter().filter_map(Result::err).collect();
        assert!(
            failed.is_empty(),
            "{} releases failed: {:?}",
            failed.len(),
            failed.first()
        );
    })
    .await;
}
