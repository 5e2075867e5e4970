//! `LimitLayer` in three axum servers over TCP, each with a `Locker` of its own (as three
//! processes would have), against one private Redis server: concurrent clients spread over the
//! servers never have more than `n` requests of one key inside a handler at once. And
//! `hold_until_body_end`: a streaming response keeps its permit until its body ends or is
//! dropped; without it, the permit comes back with the response head.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use relock::{LockMode, Locker};
use relock_tests::{bounded, RedisServer};
use relock_tower::{key, LimitLayer};
use tokio::sync::mpsc;
use tower::ServiceExt;

const PERMITS: usize = 3;

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_never_let_more_than_n_requests_of_one_key_in() {
    bounded(Duration::from_secs(60), async {
        let server = RedisServer::start();
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut addrs = Vec::new();
        for _ in 0..3 {
            let locker = server.locker().await;
            let (inside, most) = (inside.clone(), most.clone());
            let app = Router::new()
                .route(
                    "/exports",
                    post(move || {
                        let (inside, most) = (inside.clone(), most.clone());
                        async move {
                            let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            inside.fetch_sub(1, Ordering::SeqCst);
                            "exported"
                        }
                    }),
                )
                .layer(
                    LimitLayer::new(key::header("x-tenant").prefix("tenant:"), PERMITS as u32)
                        .locker(locker)
                        .wait(Duration::from_secs(20)),
                );
            addrs.push(serve(app).await);
        }
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let mut requests = Vec::new();
        for n in 0..48 {
            let (client, addr) = (client.clone(), addrs[n % addrs.len()]);
            requests.push(tokio::spawn(async move {
                let request = Request::post(format!("http://{addr}/exports"))
                    .header("x-tenant", "9")
                    .body(Empty::new())
                    .unwrap();
                client.request(request).await.unwrap().status()
            }));
        }
        for request in requests {
            assert_eq!(request.await.unwrap(), StatusCode::OK);
        }
        let most = most.load(Ordering::SeqCst);
        assert!(
            most <= PERMITS,
            "{most} requests of one tenant inside at once"
        );
        assert!(
            most > 1,
            "the permits are used concurrently ({most} at most)"
        );

        // With no wait, a request over the limit is turned away with 429 and Retry-After.
        let locker = server.locker().await;
        let semaphore = locker.semaphore("tenant:10", PERMITS as u32);
        let mut permits = Vec::new();
        for _ in 0..PERMITS {
            permits.push(semaphore.acquire().await.unwrap());
        }
        let app = Router::new()
            .route("/exports", post(|| async { "exported" }))
            .layer(
                LimitLayer::new(key::header("x-tenant").prefix("tenant:"), PERMITS as u32)
                    .locker(locker.clone())
                    .wait(Duration::ZERO),
            );
        let addr = serve(app).await;
        let request = Request::post(format!("http://{addr}/exports"))
            .header("x-tenant", "10")
            .body(Empty::new())
            .unwrap();
        let response = client.request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(response.headers().contains_key("retry-after"));
        for permit in permits {
            permit.release().await.unwrap();
        }
    })
    .await;
}

/// An app whose one route streams a body from a channel: each request's sender comes out of the
/// returned receiver, and the body ends when it is dropped. One permit per tenant, no wait.
fn streaming(
    locker: &Locker,
    hold_until_body_end: bool,
) -> (Router, mpsc::UnboundedReceiver<mpsc::Sender<Bytes>>) {
    let (senders, requests) = mpsc::unbounded_channel();
    let mut layer = LimitLayer::new(key::header("x-tenant").prefix("tenant:"), 1)
        .locker(locker.clone())
        .wait(Duration::ZERO);
    if hold_until_body_end {
        layer = layer.hold_until_body_end();
    }
    let app = Router::new()
        .route(
            "/exports",
            post(move || {
                let (chunks, receiver) = mpsc::channel::<Bytes>(1);
                senders.send(chunks).expect("the test listens");
                let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
                    let chunk = receiver.recv().await?;
                    Some((Ok::<_, Infallible>(chunk), receiver))
                });
                async move { Body::from_stream(stream) }
            }),
        )
        .layer(layer);
    (app, requests)
}

async fn export(app: &Router) -> Response<Body> {
    let request = Request::post("/exports")
        .header("x-tenant", "9")
        .body(Body::empty())
        .unwrap();
    app.clone().oneshot(request).await.unwrap()
}

/// Whether tenant 9's permit is taken, as the server says.
async fn in_use(locker: &Locker) -> bool {
    match locker.inspect("tenant:9").await.unwrap() {
        Some(info) => {
            assert_eq!(info.mode, LockMode::Permits(1));
            true
        }
        None => false,
    }
}

/// Waits (up to 5 s) for tenant 9's permit to come back: a body that ends or is dropped returns
/// it in the background.
async fn until_returned(locker: &Locker) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while in_use(locker).await {
        assert!(
            Instant::now() < deadline,
            "the permit is still taken after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_until_body_end_keeps_the_permit_while_the_body_streams() {
    bounded(Duration::from_secs(30), async {
        let server = RedisServer::start();
        let locker = server.locker().await;
        let (app, mut requests) = streaming(&locker, true);

        // The body ends: the permit is kept until then.
        let response = export(&app).await;
        assert_eq!(response.status(), StatusCode::OK);
        let chunks = requests.recv().await.unwrap();
        let mut body = response.into_body();
        assert!(in_use(&locker).await, "the permit came back with the head");
        let over = export(&app).await;
        assert_eq!(over.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(over.headers().contains_key("retry-after"));
        chunks.send(Bytes::from_static(b"part 1")).await.unwrap();
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "part 1");
        assert!(in_use(&locker).await, "the permit came back mid-stream");
        assert_eq!(export(&app).await.status(), StatusCode::TOO_MANY_REQUESTS);
        drop(chunks);
        assert!(body.frame().await.is_none(), "the body ended");
        until_returned(&locker).await;

        // The body is dropped before it ends (the client went away).
        let response = export(&app).await;
        assert_eq!(response.status(), StatusCode::OK);
        let _chunks = requests.recv().await.unwrap();
        assert!(in_use(&locker).await);
        assert_eq!(export(&app).await.status(), StatusCode::TOO_MANY_REQUESTS);
        drop(response);
        until_returned(&locker).await;
        let response = export(&app).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "the permit is free again"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_hold_until_body_end_the_permit_comes_back_with_the_head() {
    bounded(Duration::from_secs(30), async {
        let server = RedisServer::start();
        let locker = server.locker().await;
        let (app, mut requests) = streaming(&locker, false);
        let response = export(&app).await;
        assert_eq!(response.status(), StatusCode::OK);
        let chunks = requests.recv().await.unwrap();
        // Returned before the response was: no wait needed.
        assert!(!in_use(&locker).await, "the permit is kept by the body");
        let mut body = response.into_body();
        chunks.send(Bytes::from_static(b"part 1")).await.unwrap();
        body.frame().await.unwrap().unwrap();
        // Another request gets the permit while the first body still streams.
        let second = export(&app).await;
        assert_eq!(second.status(), StatusCode::OK);
        drop(chunks);
        assert!(body.frame().await.is_none());
    })
    .await;
}
