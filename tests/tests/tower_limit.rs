//! `LimitLayer` across servers sharing one private Redis server: concurrent clients spread over
//! them never have more than `n` requests of one key inside a handler at once.
//!
//! * Three axum servers over TCP in this process, each with a `Locker` of its own (as three
//!   processes would have).
//! * Three server *processes* (`limit_server`), recording the requests inside their handlers in
//!   a separate store (in-flight count per tenant, the largest seen): with a long wait every
//!   request gets in; with a short one, requests over the limit get `429` with `Retry-After`. A
//!   server SIGKILLed while its requests hold every permit of a tenant releases nothing: its
//!   permits stay taken (`429`) until their lease ends, then come back (within about one lease)
//!   to the other servers.
//! * `hold_until_body_end`: a streaming response keeps its permit until its body ends or is
//!   dropped; without it, the permit comes back with the response head.

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use redis::aio::MultiplexedConnection;
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

/// The permits per tenant of the `limit_server` processes.
const SERVER_PERMITS: u64 = 3;
/// The permits' lease: how long a killed server's permits stay taken.
const SERVER_LEASE: Duration = Duration::from_millis(2000);
/// Loose upper bound on a slow, shared machine.
const SLACK: Duration = Duration::from_secs(3);

/// A `limit_server` process; SIGKILLed and reaped on drop.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(lock: &RedisServer, store: &RedisServer) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_limit_server"))
            .arg(lock.url())
            .arg(store.url())
            .arg(SERVER_PERMITS.to_string())
            .arg(SERVER_LEASE.as_millis().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn limit_server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("read limit_server's stdout");
        let port = line
            .strip_prefix("LISTENING ")
            .and_then(|port| port.trim().parse().ok())
            .unwrap_or_else(|| {
                panic!("limit_server printed {line:?}, expected `LISTENING <port>`")
            });
        Server { child, port }
    }

    fn kill(&mut self) -> u32 {
        self.child.kill().expect("SIGKILL limit_server");
        self.child.wait().expect("reap limit_server");
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// `POST /<route>` on `server` for `tenant`, the handler working `work`: the status and the
/// `Retry-After` header.
async fn export(
    client: &HttpClient,
    port: u16,
    route: &str,
    tenant: &str,
    work: Duration,
) -> (StatusCode, Option<String>) {
    let request = Request::post(format!("http://127.0.0.1:{port}/{route}"))
        .header("x-tenant", tenant)
        .header("x-work-ms", work.as_millis().to_string())
        .body(Empty::new())
        .unwrap();
    let response = client.request(request).await.expect("a response");
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|value| value.to_str().expect("an ASCII Retry-After").to_owned());
    (response.status(), retry_after)
}

async fn number(store: &mut MultiplexedConnection, key: String) -> u64 {
    redis::cmd("GET")
        .arg(key)
        .query_async::<Option<u64>>(store)
        .await
        .expect("GET")
        .unwrap_or(0)
}

/// The tenant's largest in-flight count the store saw.
async fn most(store: &mut MultiplexedConnection, tenant: &str) -> u64 {
    number(store, format!("tenant:{tenant}:most")).await
}

/// Waits (up to 20 s) until `count` requests of `tenant` are inside a handler.
async fn until_inside(store: &mut MultiplexedConnection, tenant: &str, count: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let inside = number(store, format!("tenant:{tenant}:in-flight")).await;
        if inside == count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{inside} requests of tenant {tenant} inside after 20 s, expected {count}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A request over the limit got `429` with a `Retry-After` of a whole number of seconds ≥ 1.
fn assert_turned_away((status, retry_after): (StatusCode, Option<String>), what: &str) {
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{what}");
    let retry_after = retry_after.unwrap_or_else(|| panic!("{what}: 429 without Retry-After"));
    let seconds: u64 = retry_after
        .parse()
        .unwrap_or_else(|_| panic!("{what}: Retry-After {retry_after:?} is not seconds"));
    assert!(seconds >= 1, "{what}: Retry-After {seconds}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_server_processes_share_the_limit_and_a_killed_ones_permits_come_back() {
    bounded(Duration::from_secs(60), async {
        let lock = RedisServer::start();
        let store_server = RedisServer::start();
        let mut store = store_server.connection().await;
        let mut servers: Vec<Server> = (0..3)
            .map(|_| Server::start(&lock, &store_server))
            .collect();
        let ports: Vec<u16> = servers.iter().map(|server| server.port).collect();
        let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();

        // Patient clients of two tenants, spread over the three servers: every request gets in,
        // never more than SERVER_PERMITS of one tenant at once.
        let mut requests = Vec::new();
        for n in 0..60 {
            let (client, port) = (client.clone(), ports[n % ports.len()]);
            let tenant = if n % 2 == 0 { "a" } else { "b" };
            requests.push(tokio::spawn(async move {
                export(&client, port, "patient", tenant, Duration::from_millis(40)).await
            }));
        }
        for request in requests {
            assert_eq!(request.await.unwrap().0, StatusCode::OK);
        }
        for tenant in ["a", "b"] {
            let most = most(&mut store, tenant).await;
            assert!(
                most <= SERVER_PERMITS,
                "{most} requests of tenant {tenant} inside at once"
            );
            assert!(
                most >= 2,
                "tenant {tenant}'s permits were never used concurrently ({most} at most)"
            );
        }

        // Every permit of tenant c held, one request on each server: impatient requests to any
        // server are turned away with 429 and Retry-After, and the holders finish.
        let mut holders = Vec::new();
        for &port in &ports {
            let client = client.clone();
            holders.push(tokio::spawn(async move {
                export(&client, port, "patient", "c", Duration::from_secs(3)).await
            }));
        }
        until_inside(&mut store, "c", SERVER_PERMITS).await;
        // All at once, well within the holders' 3 s.
        let fast = ports
            .iter()
            .chain(&ports)
            .map(|&port| export(&client, port, "fast", "c", Duration::ZERO));
        for turned_away in futures_util::future::join_all(fast).await {
            assert_turned_away(turned_away, "a fast request over the limit");
        }
        for holder in holders {
            assert_eq!(holder.await.unwrap().0, StatusCode::OK);
        }
        assert_eq!(most(&mut store, "c").await, SERVER_PERMITS);

        // Server 0 holds every permit of tenant d when it is SIGKILLed: it releases nothing, so
        // the permits stay taken until their lease ends, then come back to the others.
        let mut doomed = Vec::new();
        for _ in 0..SERVER_PERMITS {
            let (client, port) = (client.clone(), ports[0]);
            doomed.push(tokio::spawn(async move {
                let request = Request::post(format!("http://127.0.0.1:{port}/patient"))
                    .header("x-tenant", "d")
                    .header("x-work-ms", "60000")
                    .body(Empty::new())
                    .unwrap();
                client.request(request).await
            }));
        }
        until_inside(&mut store, "d", SERVER_PERMITS).await;
        let pid = servers[0].kill();
        let killed_at = Instant::now();
        // Its handlers never leave: take their count back.
        let forgotten: u64 = redis::cmd("HGET")
            .arg("tenant:d:by-process")
            .arg(pid)
            .query_async(&mut store)
            .await
            .expect("HGET by-process");
        assert_eq!(forgotten, SERVER_PERMITS);
        redis::cmd("DECRBY")
            .arg("tenant:d:in-flight")
            .arg(forgotten)
            .query_async::<()>(&mut store)
            .await
            .expect("DECRBY in-flight");
        for request in doomed {
            assert!(
                request.await.unwrap().is_err(),
                "a request to the killed server got an answer"
            );
        }
        let turned_away = export(&client, ports[1], "fast", "d", Duration::ZERO).await;
        assert!(
            killed_at.elapsed() < SERVER_LEASE,
            "too slow to see the killed server's permits still taken"
        );
        assert_turned_away(turned_away, "a fast request right after the kill");
        let (status, _) = export(&client, ports[2], "patient", "d", Duration::ZERO).await;
        let back = killed_at.elapsed();
        assert_eq!(status, StatusCode::OK);
        println!("the killed server's permits came back {back:?} after the kill");
        assert!(
            back < SERVER_LEASE + SLACK,
            "the killed server's permits came back {back:?} after the kill (lease {SERVER_LEASE:?})"
        );
        assert!(most(&mut store, "d").await <= SERVER_PERMITS);
        drop(servers);
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

async fn export_streaming(app: &Router) -> Response<Body> {
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
        let response = export_streaming(&app).await;
        assert_eq!(response.status(), StatusCode::OK);
        let chunks = requests.recv().await.unwrap();
        let mut body = response.into_body();
        assert!(in_use(&locker).await, "the permit came back with the head");
        let over = export_streaming(&app).await;
        assert_eq!(over.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(over.headers().contains_key("retry-after"));
        chunks.send(Bytes::from_static(b"part 1")).await.unwrap();
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "part 1");
        assert!(in_use(&locker).await, "the permit came back mid-stream");
        assert_eq!(
            export_streaming(&app).await.status(),
            StatusCode::TOO_MANY_REQUESTS
        );
        drop(chunks);
        assert!(body.frame().await.is_none(), "the body ended");
        until_returned(&locker).await;

        // The body is dropped before it ends (the client went away).
        let response = export_streaming(&app).await;
        assert_eq!(response.status(), StatusCode::OK);
        let _chunks = requests.recv().await.unwrap();
        assert!(in_use(&locker).await);
        assert_eq!(
            export_streaming(&app).await.status(),
            StatusCode::TOO_MANY_REQUESTS
        );
        drop(response);
        until_returned(&locker).await;
        let response = export_streaming(&app).await;
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
        let response = export_streaming(&app).await;
        assert_eq!(response.status(), StatusCode::OK);
        let chunks = requests.recv().await.unwrap();
        // Returned before the response was: no wait needed.
        assert!(!in_use(&locker).await, "the permit is kept by the body");
        let mut body = response.into_body();
        chunks.send(Bytes::from_static(b"part 1")).await.unwrap();
        body.frame().await.unwrap().unwrap();
        // Another request gets the permit while the first body still streams.
        let second = export_streaming(&app).await;
        assert_eq!(second.status(), StatusCode::OK);
        drop(chunks);
        assert!(body.frame().await.is_none());
    })
    .await;
}
