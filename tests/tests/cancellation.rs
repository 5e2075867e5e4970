//! Cancelling an acquisition whose request is already on its way to the server.

use std::time::{Duration, Instant};

use relock::Locker;
use relock_tests::{unique_key, RedisServer};

/// The server runs a queued acquire script after the caller gave up on it; the lock must not stay
/// held by an owner nobody knows until its lease ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquisition_cancelled_in_flight_does_not_leave_the_lock_held() {
    let server = RedisServer::start();
    let locker = Locker::connect(&server.url()).await.unwrap();
    let other = Locker::connect(&server.url()).await.unwrap();
    let key = unique_key("in-flight");
    // Warm the script cache so the paused request is the acquire itself.
    locker.lock(&key).await.unwrap().release().await.unwrap();

    let mut admin = server.connection().await;
    redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(300)
        .arg("ALL")
        .query_async::<()>(&mut admin)
        .await
        .unwrap();
    let cancelled = tokio::time::timeout(
        Duration::from_millis(50),
        locker.lock(&key).lease(Duration::from_secs(30)),
    )
    .await;
    assert!(cancelled.is_err(), "the acquire should still be queued");

    let start = Instant::now();
    let guard = other
        .lock(&key)
        .wait(Duration::from_secs(5))
        .await
        .expect("the orphaned acquisition is released, not left for its 30 s lease");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    guard.release().await.unwrap();
}

/// The same for a request cancelled while waiting for another holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_acquisition_dropped_leaves_nothing_behind() {
    let server = RedisServer::start();
    let holder = Locker::connect(&server.url()).await.unwrap();
    let waiter = Locker::connect(&server.url()).await.unwrap();
    let key = unique_key("dropped-waiter");
    let guard = holder.lock(&key).await.unwrap();
    let attempt = tokio::time::timeout(Duration::from_millis(200), waiter.lock(&key)).await;
    assert!(attempt.is_err());
    guard.release().await.unwrap();
    // The waiter's locker can take it at once: no local slot or subscription was left behind.
    let again = waiter
        .lock(&key)
        .wait(Duration::from_secs(1))
        .await
        .unwrap();
    assert!(holder.inspect(&key).await.unwrap().is_some());
    again.release().await.unwrap();
    assert!(holder.inspect(&key).await.unwrap().is_none());
}
