//! Cancelling an acquisition whose request is already on its way to the server, or while it
//! subscribes to release notifications, and bounding that subscribing by the caller's wait.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use relock::Locker;
use relock_tests::{unique_key, until_subscribed, RedisServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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

/// Waiters cancelled at any point of subscribing to the release channel (a timeout, an aborted
/// task: what a client disconnecting under `LockLayer` does) leave no channel subscribed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_waiters_leave_no_subscription() {
    let server = RedisServer::start();
    let holder = server.locker().await;
    let waiter = server.locker().await;
    let keys: Vec<String> = (0..5).map(|_| unique_key("cancelled-waiter")).collect();
    let mut guards = Vec::new();
    for key in &keys {
        guards.push(holder.lock(key).await.unwrap());
    }

    let mut waiters = Vec::new();
    for i in 0..300 {
        let waiter = waiter.clone();
        let key = keys[i % keys.len()].clone();
        let patience = Duration::from_micros(rand::random_range(0..20_000));
        let wait = waiter.lock(key).wait(Duration::from_secs(10));
        if i % 4 == 0 {
            let task = tokio::spawn(async move { drop(wait.await) });
            let abort = task.abort_handle();
            tokio::spawn(async move {
                tokio::time::sleep(patience).await;
                abort.abort();
            });
            waiters.push(task);
        } else {
            waiters.push(tokio::spawn(async move {
                let _ = tokio::time::timeout(patience, wait).await;
            }));
        }
    }
    for waiter in waiters {
        let _ = waiter.await;
    }
    for guard in guards {
        guard.release().await.unwrap();
    }

    let mut admin = server.connection().await;
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let subscribed: Vec<String> = redis::cmd("PUBSUB")
            .arg("CHANNELS")
            .arg("relock:*")
            .query_async(&mut admin)
            .await
            .unwrap();
        if subscribed.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} release channels stay subscribed after every waiter was cancelled: {subscribed:?}",
            subscribed.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Still in service (a miscount would have stopped the subscriber): a new waiter subscribes
    // and is woken by the release.
    let guard = holder.lock(&keys[0]).await.unwrap();
    let next = tokio::spawn({
        let key = keys[0].clone();
        async move { waiter.lock(key).await.unwrap().release().await.unwrap() }
    });
    until_subscribed(&mut admin, &keys[0]).await;
    guard.release().await.unwrap();
    tokio::time::timeout(Duration::from_secs(1), next)
        .await
        .expect("the release wakes the new waiter")
        .unwrap();
}

/// A wait shorter than subscribing takes (here the server never confirms a subscription) ends
/// with a timeout at the caller's deadline, not after the subscriber's connect and confirm timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_wait_is_not_stretched_by_subscribing() {
    let server = RedisServer::start();
    let holder = server.locker().await;
    let key = unique_key("slow-subscribe");
    let guard = holder.lock(&key).await.unwrap();
    let proxy = proxy_holding_back_subscribe(server.port()).await;
    let waiter = Locker::builder()
        .url(format!("redis://127.0.0.1:{proxy}"))
        .build()
        .unwrap();
    // Opens the command connection and loads the script; a try never subscribes.
    assert!(waiter.try_lock(&key).await.unwrap().is_none());

    let start = Instant::now();
    let attempt = waiter.lock(&key).wait(Duration::from_millis(50)).await;
    let waited = start.elapsed();
    assert!(
        matches!(attempt, Err(relock::Error::Timeout { .. })),
        "{attempt:?}"
    );
    assert!(waited < Duration::from_millis(500), "{waited:?}");
    guard.release().await.unwrap();
}

/// A TCP proxy to the server on `port` that forwards everything, except that a connection's
/// requests are held back for good from its first `SUBSCRIBE` on: a server that never confirms a
/// subscription, while plain commands work. Returns the proxy's port.
async fn proxy_holding_back_subscribe(port: u16) -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let proxy = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(forward_until_subscribe(client, port));
        }
    });
    proxy
}

async fn forward_until_subscribe(client: TcpStream, port: u16) {
    let Ok(server) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await else {
        return;
    };
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    tokio::spawn(async move { tokio::io::copy(&mut from_server, &mut to_client).await });
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let read = match from_client.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        let request = &buffer[..read];
        if request.windows(13).any(|w| w == b"\r\nSUBSCRIBE\r\n") {
            std::future::pending::<()>().await;
        }
        if to_server.write_all(request).await.is_err() {
            return;
        }
    }
}
