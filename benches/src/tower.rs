//! `LockLayer` (and `LimitLayer`) in front of a trivial axum handler, served over real TCP on
//! 127.0.0.1 and loaded by an in-process HTTP/1.1 client with a fixed number of keep-alive
//! connections.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::report::{rate, ratio, Goal, Report, Table};
use crate::stats::median;
use crate::Bench;
use axum::response::IntoResponse as _;
use axum::routing::post;
use axum::Router;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use relock::Locker;
use relock_tower::{key, LimitLayer, LockLayer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// The app: `POST /orders/{id}/pay` answering `paid`, with or without a lock on `order:{id}`.
pub(crate) fn app(locker: Option<Locker>) -> Router {
    let route = post(|| async { "paid\n" });
    let route = match locker {
        // In `/orders/42/pay`, path segment 2 is `42`: the request locks `order:42`.
        Some(locker) => {
            route.layer(LockLayer::new(key::path_segment(2).prefix("order:")).locker(locker))
        }
        None => route,
    };
    Router::new().route("/orders/{id}/pay", route)
}

/// Permits per order of the `LimitLayer` variant (each request has a fresh id: never full).
const LIMIT_PERMITS: u32 = 8;

/// The app behind `LimitLayer` instead: at most [`LIMIT_PERMITS`] requests per `limit:{id}`.
pub(crate) fn limit_app(locker: Locker) -> Router {
    let route = post(|| async { "paid\n" }).layer(
        LimitLayer::new(key::path_segment(2).prefix("limit:"), LIMIT_PERMITS).locker(locker),
    );
    Router::new().route("/orders/{id}/pay", route)
}

/// The same app behind a hand-written lock middleware, what a service without relock writes:
/// `SET order:{id} <random token> NX PX 30000` before the handler, `423` if taken, and the
/// compare-and-delete script after it, on one multiplexed connection.
pub(crate) fn raw_lock_app(connection: redis::aio::MultiplexedConnection) -> Router {
    let route = post(|| async { "paid\n" }).layer(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            let mut connection = connection.clone();
            async move {
                let id = request
                    .uri()
                    .path()
                    .split('/')
                    .nth(2)
                    .unwrap_or_default()
                    .to_owned();
                let key = format!("raw-order:{id}");
                let token = format!("{:032x}", rand::random::<u128>());
                let taken: Option<String> = redis::cmd("SET")
                    .arg(&key)
                    .arg(&token)
                    .arg("NX")
                    .arg("PX")
                    .arg(30_000)
                    .query_async(&mut connection)
                    .await
                    .expect("SET NX PX");
                if taken.is_none() {
                    return http::StatusCode::LOCKED.into_response();
                }
                let response = next.run(request).await;
                let _: i64 = RAW_RELEASE
                    .key(&key)
                    .arg(&token)
                    .invoke_async(&mut connection)
                    .await
                    .expect("compare-and-delete");
                response
            }
        },
    ));
    Router::new().route("/orders/{id}/pay", route)
}

static RAW_RELEASE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
    )
});

/// A server running `app` on an ephemeral port until the returned sender is dropped or fired.
pub(crate) async fn serve(
    app: Router,
) -> (SocketAddr, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
            .expect("serve");
    });
    (addr, stop, task)
}

/// Requests per second answered `200` over `connections` keep-alive connections for
/// `duration`, each request on a fresh order id; requests answered otherwise are counted apart.
pub(crate) async fn load(addr: SocketAddr, connections: usize, duration: Duration) -> (f64, u64) {
    let start = Instant::now();
    let end = start + duration;
    let clients: Vec<_> = (0..connections)
        .map(|_| {
            tokio::spawn(async move {
                let stream = TcpStream::connect(addr).await.expect("connect");
                stream.set_nodelay(true).expect("nodelay");
                let (mut sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .expect("handshake");
                let driver = tokio::spawn(connection);
                let (mut ok, mut other) = (0u64, 0u64);
                while Instant::now() < end {
                    let request =
                        http::Request::post(format!("/orders/{}/pay", rand::random::<u64>()))
                            .header(http::header::HOST, "127.0.0.1")
                            .body(Empty::<Bytes>::new())
                            .expect("request");
                    sender.ready().await.expect("connection ready");
                    let response = sender.send_request(request).await.expect("response");
                    let status = response.status();
                    let _ = response.into_body().collect().await.expect("body");
                    if status == http::StatusCode::OK {
                        ok += 1;
                    } else {
                        other += 1;
                    }
                }
                drop(sender);
                let _ = driver.await;
                (ok, other)
            })
        })
        .collect();
    let (mut ok, mut other) = (0, 0);
    for client in clients {
        let (o, x) = tokio::time::timeout(duration + Duration::from_secs(15), client)
            .await
            .expect("a load connection did not finish in time")
            .expect("load task");
        ok += o;
        other += x;
    }
    (ok as f64 / start.elapsed().as_secs_f64(), other)
}

/// `LockLayer` against no layer over real TCP, in alternating rounds.
pub(crate) async fn scenario(bench: &Bench<'_>, report: &mut Report) {
    let Bench { url, plan, .. } = bench;
    let redis_locker = Locker::connect(url).await.expect("connect");
    let raw = redis::Client::open(url.as_str())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let limit_locker = Locker::connect(url).await.expect("connect");
    let variants: [(&str, Router); 5] = [
        ("no layer", app(None)),
        (
            "LockLayer, relock in memory",
            app(Some(Locker::in_memory())),
        ),
        (
            "hand-written SET NX PX + compare-and-delete middleware",
            raw_lock_app(raw),
        ),
        ("LockLayer, relock Locker::connect", app(Some(redis_locker))),
        (
            "LimitLayer (8 per id), relock Locker::connect",
            limit_app(limit_locker),
        ),
    ];
    // The rows the `LimitLayer` goal compares.
    let (lock_row, limit_row) = (3, 4);
    let mut servers = Vec::new();
    for (_, app) in &variants {
        servers.push(serve(app.clone()).await);
    }
    let mut requests = vec![Vec::new(); variants.len()];
    let mut rejected = vec![0u64; variants.len()];
    for round in 0..plan.http_rounds {
        eprintln!("http round {}/{}", round + 1, plan.http_rounds);
        for offset in 0..variants.len() {
            let index = (round + offset) % variants.len();
            let (per_second, other) =
                load(servers[index].0, plan.http_connections, plan.http_time).await;
            requests[index].push(per_second);
            rejected[index] += other;
        }
    }
    for (_, stop, task) in servers {
        let _ = stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    let requests: Vec<f64> = requests.iter().map(|v| median(v)).collect();
    let mut table = Table::new(
        format!(
            "POST /orders/{{id}}/pay, trivial axum handler, {} keep-alive connections over 127.0.0.1, a fresh id per request (median of {} rounds of {:?})",
            plan.http_connections, plan.http_rounds, plan.http_time
        ),
        &[
            "server",
            "requests/s",
            "÷ no layer",
            "÷ hand-written",
            "÷ LockLayer Redis",
            "non-200",
        ],
    );
    for (index, (name, _)) in variants.iter().enumerate() {
        table.row(vec![
            (*name).to_owned(),
            rate(requests[index]),
            ratio(requests[index] / requests[0]),
            ratio(requests[index] / requests[2]),
            ratio(requests[index] / requests[lock_row]),
            rejected[index].to_string(),
        ]);
    }
    let limit_ratio = requests[limit_row] / requests[lock_row];
    report.goals.push(Goal::new(
        "LimitLayer ÷ LockLayer, both over Redis, trivial handler",
        "≥ 0.90×",
        ratio(limit_ratio),
        limit_ratio >= 0.9,
    ));
    table.note("The load generator (hyper client) shares the machine's cores with the server and redis-server.");
    report.tables.push(table);
}
