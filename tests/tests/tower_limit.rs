//! `LimitLayer` in three axum servers over TCP, each with a `Locker` of its own (as three
//! processes would have), against one private Redis server: concurrent clients spread over the
//! servers never have more than `n` requests of one key inside a handler at once.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{Request, StatusCode};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use relock_tests::{bounded, RedisServer};
use relock_tower::{key, LimitLayer};

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
