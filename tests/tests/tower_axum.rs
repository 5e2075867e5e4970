//! `LockLayer` in a real axum server over TCP, against a private Redis server.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{Request, StatusCode};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use relock::Locker;
use relock_tests::RedisServer;
use relock_tower::{key, LockLayer};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, Barrier, Notify};

/// `/orders/{id}/pay` locks `order:{id}`.
fn order_lock(locker: &Locker) -> LockLayer<key::PathSegment> {
    LockLayer::new(key::path_segment(2).prefix("order:")).locker(locker.clone())
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn client() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

struct Answer {
    status: StatusCode,
    retry_after: Option<String>,
    body: String,
}

async fn pay(client: &Client<HttpConnector, Empty<Bytes>>, addr: SocketAddr, id: u64) -> Answer {
    send_post(client, format!("http://{addr}/orders/{id}/pay")).await
}

/// Posts to `uri`, sent exactly as written, and reads the whole answer.
async fn send_post(client: &Client<HttpConnector, Empty<Bytes>>, uri: String) -> Answer {
    let request = Request::post(uri).body(Empty::new()).unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|value| value.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        retry_after,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

/// Polls `inspect` until the key is free, failing after a deadline.
async fn wait_until_free(locker: &Locker, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while locker.inspect(key).await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "`{key}` still held after 5 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// How many handlers run at once, and the most that ever did.
#[derive(Default)]
struct Overlap {
    active: AtomicUsize,
    most: AtomicUsize,
    calls: AtomicUsize,
}

impl Overlap {
    fn enter(&self) {
        let now = self.active.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        self.calls.fetch_add(1, Ordering::SeqCst);
    }

    fn leave(&self) {
        self.active.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_on_one_key_never_overlap() {
    let redis = RedisServer::start();
    let locker = Locker::connect(&redis.url()).await.unwrap();
    let overlap = Arc::new(Overlap::default());
    let app = Router::new()
        .route(
            "/orders/{id}/pay",
            post(|State(overlap): State<Arc<Overlap>>| async move {
                overlap.enter();
                tokio::time::sleep(Duration::from_millis(20)).await;
                overlap.leave();
                "paid"
            }),
        )
        .layer(order_lock(&locker).wait(Duration::from_secs(10)))
        .with_state(overlap.clone());
    let addr = serve(app).await;

    let client = client();
    let answers = futures_util::future::join_all((0..8).map(|_| pay(&client, addr, 1))).await;

    for answer in &answers {
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    }
    assert_eq!(overlap.calls.load(Ordering::SeqCst), 8);
    assert_eq!(overlap.most.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_on_distinct_keys_run_in_parallel() {
    let redis = RedisServer::start();
    let locker = Locker::connect(&redis.url()).await.unwrap();
    let overlap = Arc::new(Overlap::default());
    // Every handler waits for all eight: that only ends if they run at the same time.
    let barrier = Arc::new(Barrier::new(8));
    let app = Router::new()
        .route(
            "/orders/{id}/pay",
            post(
                |State((overlap, barrier)): State<(Arc<Overlap>, Arc<Barrier>)>| async move {
                    overlap.enter();
                    let met = tokio::time::timeout(Duration::from_secs(10), barrier.wait()).await;
                    overlap.leave();
                    if met.is_ok() {
                        "paid"
                    } else {
                        "alone"
                    }
                },
            ),
        )
        .layer(order_lock(&locker).wait(Duration::from_secs(10)))
        .with_state((overlap.clone(), barrier));
    let addr = serve(app).await;

    let client = client();
    let answers = futures_util::future::join_all((0..8).map(|id| pay(&client, addr, id))).await;

    for answer in &answers {
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body, "paid");
    }
    assert_eq!(overlap.most.load(Ordering::SeqCst), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn percent_encoded_id_takes_the_same_lock_as_the_plain_one() {
    type Gates = (Arc<AtomicUsize>, Arc<Notify>, Arc<Notify>);

    let redis = RedisServer::start();
    let locker = Locker::connect(&redis.url()).await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let (started, finish) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let app = Router::new()
        .route(
            "/orders/{id}/pay",
            post(
                |Path(id): Path<String>, State((calls, started, finish)): State<Gates>| async move {
                    // The first request keeps its lock until the test lets it finish.
                    if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                        started.notify_one();
                        finish.notified().await;
                    }
                    format!("paid order {id}")
                },
            ),
        )
        .layer(order_lock(&locker).wait(Duration::from_millis(300)))
        .with_state((calls.clone(), started.clone(), finish.clone()));
    let addr = serve(app).await;
    let client = client();

    let plain = tokio::spawn({
        let client = client.clone();
        async move { send_post(&client, format!("http://{addr}/orders/42/pay")).await }
    });
    tokio::time::timeout(Duration::from_secs(5), started.notified())
        .await
        .expect("the handler starts");

    let encoded = format!("http://{addr}/orders/%34%32/pay");
    let answer = send_post(&client, encoded.clone()).await;
    assert_eq!(answer.status, StatusCode::LOCKED, "{}", answer.body);

    finish.notify_one();
    let answer = plain.await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, "paid order 42");
    // The handler sees one id in both spellings.
    wait_until_free(&locker, "order:42").await;
    let answer = send_post(&client, encoded).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, "paid order 42");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_held_elsewhere_gives_423_with_retry_after() {
    let redis = RedisServer::start();
    let locker = Locker::connect(&redis.url()).await.unwrap();
    // Another process's locker: its own connection and owner.
    let elsewhere = Locker::connect(&redis.url()).await.unwrap();
    let _held = elsewhere
        .lock("order:7")
        .lease(Duration::from_secs(5))
        .await
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route(
            "/orders/{id}/pay",
            post(|State(calls): State<Arc<AtomicUsize>>| async move {
                calls.fetch_add(1, Ordering::SeqCst);
                "paid"
            }),
        )
        .layer(order_lock(&locker).wait(Duration::from_millis(300)))
        .with_state(calls.clone());
    let addr = serve(app).await;

    let started = Instant::now();
    let answer = pay(&client(), addr, 7).await;

    assert_eq!(answer.status, StatusCode::LOCKED);
    assert!(started.elapsed() >= Duration::from_millis(300));
    let retry_after: u64 = answer.retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=5).contains(&retry_after), "Retry-After: {retry_after}");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_lock_on_the_same_key_in_the_handler_does_not_deadlock() {
    async fn charge(locker: &Locker, id: u64) -> Result<bool, relock::Error> {
        let guard = locker.lock(format!("order:{id}")).await?;
        Ok(guard.is_reentrant())
    }

    let redis = RedisServer::start();
    let locker = Locker::connect(&redis.url()).await.unwrap();
    let app = Router::new()
        .route(
            "/orders/{id}/pay",
            post(
                |Path(id): Path<u64>, State(locker): State<Locker>| async move {
                    let reentrant = locker
                        .lock(format!("order:{id}"))
                        .wait(Duration::from_secs(1))
                        .run(charge(&locker, id))
                        .await
                        .and_then(|charged| charged);
                    format!("{reentrant:?}")
                },
            ),
        )
        .layer(order_lock(&locker))
        .with_state(locker.clone());
    let addr = serve(app).await;

    let answer = pay(&client(), addr, 3).await;

    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, "Ok(true)");
    wait_until_free(&locker, "order:3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_disconnects_mid_request_frees_the_lock() {
    let redis = RedisServer::start();
    let locker = Locker::connect(&redis.url()).await.unwrap();
    let started = Arc::new(Notify::new());
    let app = Router::new()
        .route(
            "/orders/{id}/pay",
            post(|State(started): State<Arc<Notify>>| async move {
                started.notify_one();
                std::future::pending::<&'static str>().await
            }),
        )
        .layer(order_lock(&locker))
        .with_state(started.clone());
    let addr = serve(app).await;

    let mut connection = tokio::net::TcpStream::connect(addr).await.unwrap();
    connection
        .write_all(b"POST /orders/9/pay HTTP/1.1\r\nhost: test\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), started.notified())
        .await
        .expect("the handler starts");
    assert!(locker.inspect("order:9").await.unwrap().is_some());

    drop(connection);

    wait_until_free(&locker, "order:9").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_until_body_end_keeps_the_lock_until_the_streamed_body_finishes() {
    type Chunks = Arc<Mutex<Option<mpsc::Receiver<Bytes>>>>;

    let redis = RedisServer::start();
    let locker = Locker::connect(&redis.url()).await.unwrap();
    let (chunks, receiver) = mpsc::channel::<Bytes>(1);
    let receiver: Chunks = Arc::new(Mutex::new(Some(receiver)));
    let app = Router::new()
        .route(
            "/orders/{id}/pay",
            post(|State(receiver): State<Chunks>| async move {
                let receiver = receiver.lock().unwrap().take().expect("one request");
                let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
                    let chunk = receiver.recv().await?;
                    Some((Ok::<_, Infallible>(chunk), receiver))
                });
                Body::from_stream(stream)
            }),
        )
        .layer(order_lock(&locker).hold_until_body_end())
        .with_state(receiver);
    let addr = serve(app).await;

    let request = Request::post(format!("http://{addr}/orders/5/pay"))
        .body(Empty::new())
        .unwrap();
    let response = client().request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    assert!(locker.inspect("order:5").await.unwrap().is_some());

    chunks.send(Bytes::from_static(b"receipt ")).await.unwrap();
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "receipt ");
    assert!(locker.inspect("order:5").await.unwrap().is_some());

    chunks.send(Bytes::from_static(b"done")).await.unwrap();
    drop(chunks);
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "done");

    wait_until_free(&locker, "order:5").await;
}

/// What the checkout handler saw: how many ran, the most that ran at once on cart 7, and the
/// requests it served without holding the lock of the cart it read.
#[derive(Default)]
struct Checkouts {
    cart_7: Overlap,
    unlocked: Mutex<Vec<String>>,
}

/// Reads the cart as axum's `Query<HashMap<..>>` does (the last value wins) and checks that the
/// request holds that cart's lock.
async fn checkout(
    Query(params): Query<HashMap<String, String>>,
    State(seen): State<Arc<Checkouts>>,
) -> String {
    let cart = params.get("cart").cloned().unwrap_or_default();
    let held = relock::Locker::current()
        .ok()
        .and_then(|locker| locker.current_guard(format!("cart:{cart}")))
        .is_some();
    if !held {
        seen.unlocked.lock().unwrap().push(cart.clone());
    }
    if cart == "7" {
        seen.cart_7.enter();
        tokio::time::sleep(Duration::from_millis(20)).await;
        seen.cart_7.leave();
    }
    format!("checked out cart {cart}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_query_parameter_is_refused_and_never_runs_the_handler_unlocked() {
    let redis = RedisServer::start();
    let locker = Locker::connect(&redis.url()).await.unwrap();
    let seen = Arc::new(Checkouts::default());
    let app = Router::new()
        .route("/checkout", post(checkout))
        .layer(
            LockLayer::new(key::query("cart").prefix("cart:"))
                .locker(locker.clone())
                .wait(Duration::from_secs(10)),
        )
        .with_state(seen.clone());
    let addr = serve(app).await;
    let client = client();

    // Each repeated form ends, for the handler, on cart 7 (the last value), while the first
    // value is another cart or none: locked on the first, they would overlap the plain ones.
    let repeated = [
        "?cart=8&cart=7",
        "?cart=&cart=7",
        "?cart&cart=7",
        "?cart=7&cart=7",
    ];
    let queries: Vec<&str> = (0..4)
        .flat_map(|_| std::iter::once("?cart=7").chain(repeated))
        .collect();
    let answers = futures_util::future::join_all(
        queries
            .iter()
            .map(|query| send_post(&client, format!("http://{addr}/checkout{query}"))),
    )
    .await;

    for (query, answer) in queries.iter().zip(&answers) {
        if *query == "?cart=7" {
            assert_eq!(answer.status, StatusCode::OK, "{query}: {}", answer.body);
            assert_eq!(answer.body, "checked out cart 7");
        } else {
            assert_eq!(
                answer.status,
                StatusCode::BAD_REQUEST,
                "{query}: {}",
                answer.body
            );
            assert_eq!(
                answer.body,
                "invalid lock key: the request repeats the query parameter or header it is read \
                 from\n"
            );
        }
    }
    assert_eq!(seen.cart_7.calls.load(Ordering::SeqCst), 4);
    assert_eq!(seen.cart_7.most.load(Ordering::SeqCst), 1);
    assert!(
        seen.unlocked.lock().unwrap().is_empty(),
        "the handler ran without the lock of the cart it read: {:?}",
        seen.unlocked.lock().unwrap()
    );
    for cart in ["cart:7", "cart:8"] {
        wait_until_free(&locker, cart).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_header_is_refused_with_400() {
    let redis = RedisServer::start();
    let locker = Locker::connect(&redis.url()).await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route(
            "/pay",
            post(|State(calls): State<Arc<AtomicUsize>>| async move {
                calls.fetch_add(1, Ordering::SeqCst);
                "paid"
            }),
        )
        .layer(LockLayer::new(key::header("x-order-id").prefix("order:")).locker(locker.clone()))
        .with_state(calls.clone());
    let addr = serve(app).await;
    let client = client();

    let send = |ids: &'static [&'static str]| {
        let client = client.clone();
        async move {
            let mut request = Request::post(format!("http://{addr}/pay"));
            for id in ids {
                request = request.header("x-order-id", *id);
            }
            let response = client
                .request(request.body(Empty::new()).unwrap())
                .await
                .unwrap();
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8(body.to_vec()).unwrap())
        }
    };
    let (once, twice, empty_first, same_twice) = tokio::join!(
        send(&["7"]),
        send(&["8", "7"]),
        send(&["", "7"]),
        send(&["7", "7"])
    );
    assert_eq!(once, (StatusCode::OK, "paid".to_owned()));
    for (status, body) in [twice, empty_first, same_twice] {
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            body.contains("repeats the query parameter or header"),
            "{body}"
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
