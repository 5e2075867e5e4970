//! An order service whose payments run one at a time per order, in every process that shares
//! the Redis server: `LockLayer` locks `order:{id}` for each `POST /orders/{id}/pay`, and the
//! payment code, which locks the same key with `#[relock::locked]`, re-enters that hold.
//!
//! ```text
//! cargo run -p relock-examples --example axum_orders
//! REDIS_URL=redis://127.0.0.1:6379 PORT=3000 cargo run -p relock-examples --example axum_orders
//! ```
//!
//! Then, in another terminal. Each comment is the answer of a fresh run: the status, then the
//! body (`…` stands for what changes from run to run). `tests/axum_orders.rs` sends these
//! requests to the service and checks every answer and metric shown here.
//!
//! ```text
//! curl -i -X POST http://127.0.0.1:3000/orders/42/pay       # 200: order 42 paid under fencing token …
//! curl -i -X POST http://127.0.0.1:3000/orders/42/pay       # 409: order 42 is already paid
//! curl -i http://127.0.0.1:3000/orders/42                   # 200: order 42: paid under fencing token …
//! curl -i -X POST http://127.0.0.1:3000/orders/042/pay      # 409: order 42 is already paid
//! curl -i -X POST http://127.0.0.1:3000/orders/%34%32/pay   # 409: order 42 is already paid
//! curl -i -X POST http://127.0.0.1:3000/orders/abc/pay      # 400: Invalid URL: Cannot parse `abc` to a `u64`
//! # Two payments of one order at once: one waits for the other, then finds it paid.
//! curl -s -X POST http://127.0.0.1:3000/orders/7/pay & curl -s -X POST http://127.0.0.1:3000/orders/7/pay; wait   # 200 and 409
//! ```
//!
//! `042` and `%34%32` reach the handler as the id 42, so they take order 42's lock. `abc` takes
//! no lock at all: the key extractor refuses what the route's `Path<u64>` refuses, so a junk id
//! leaves nothing in Redis.
//!
//! With `REDIS_URL` set, start a second copy on another `PORT` and pay one order through both
//! at once: the lock is shared, so the second payment waits for the first.
//!
//! `GET /metrics` serves relock's metrics (relock's `metrics` feature) in the Prometheus text
//! format, through `metrics-exporter-prometheus`, each labelled with the `kind` of hold
//! (`exclusive`, `read`, `permit`): `relock_acquired_total`,
//! `relock_reentered_total`, `relock_timeouts_total`, `relock_lost_total`,
//! `relock_released_total{mode}`, `relock_renewals_total{result}`, the summaries
//! `relock_wait_seconds{result}`, `relock_hold_seconds` and `relock_acquire_round_trip_seconds`,
//! and the gauge `relock_holds`. After the requests above, among others:
//!
//! ```text
//! curl -s http://127.0.0.1:3000/metrics | grep '^relock_'
//! relock_acquired_total{kind="exclusive"} 6
//! relock_reentered_total{kind="exclusive"} 8
//! relock_released_total{kind="exclusive",mode="explicit"} 6
//! relock_holds{kind="exclusive"} 0
//! relock_wait_seconds_count{kind="exclusive",result="acquired"} 6
//! ```
//!
//! Six payments took a lock (`abc` did not). Each `charge` re-entered the layer's hold, and each
//! of the two that paid re-entered it once more for its fencing token: 6 + 2 = 8.
//!
//! `RELOCK_LAYER=off` serves the payment route without `LockLayer`: `charge` then takes the
//! lock itself through `#[relock::locked]`, from the global locker. BENCHMARKS.md compares the
//! two with `wrk`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use relock::Locker;
use relock_tower::{key, ExtractKey, LockLayer};

/// The orders, as a database would keep them.
#[derive(Clone, Default)]
struct Orders {
    paid: Arc<Mutex<HashMap<u64, Payment>>>,
}

#[derive(Clone, Copy)]
struct Payment {
    /// The fencing token of the lock the payment was made under.
    fencing_token: u64,
}

enum PayError {
    AlreadyPaid(u64),
    Lock(relock::Error),
}

impl From<relock::Error> for PayError {
    fn from(err: relock::Error) -> Self {
        PayError::Lock(err)
    }
}

impl IntoResponse for PayError {
    fn into_response(self) -> Response {
        match self {
            PayError::AlreadyPaid(id) => (
                StatusCode::CONFLICT,
                format!("order {id} is already paid\n"),
            )
                .into_response(),
            PayError::Lock(err) => {
                (StatusCode::SERVICE_UNAVAILABLE, format!("{err}\n")).into_response()
            }
        }
    }
}

/// `POST /orders/{id}/pay`: runs inside the layer's hold on `order:{id}`.
async fn pay(Path(id): Path<u64>, State(orders): State<Orders>) -> Result<String, PayError> {
    let payment = charge(&orders, id).await?;
    Ok(format!(
        "order {id} paid under fencing token {}\n",
        payment.fencing_token
    ))
}

/// Charges an order once. Also callable outside HTTP (a batch job, a queue consumer), where it
/// takes the lock itself; under `LockLayer` it re-enters the request's hold: no wait, no round
/// trip to Redis.
#[relock::locked("order:{id}")]
async fn charge(orders: &Orders, id: u64) -> Result<Payment, PayError> {
    if orders.paid.lock().unwrap().contains_key(&id) {
        return Err(PayError::AlreadyPaid(id));
    }
    // The payment provider is slow; the lock keeps a second payment of this order out meanwhile.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A resource that must reject stale writers checks this token (see relock's docs).
    let guard = Locker::current()?.lock(format!("order:{id}")).await?;
    let payment = Payment {
        fencing_token: guard.fencing_token(),
    };
    orders.paid.lock().unwrap().insert(id, payment);
    Ok(payment)
}

/// `GET /orders/{id}`: reads without a lock.
async fn show(Path(id): Path<u64>, State(orders): State<Orders>) -> String {
    match orders.paid.lock().unwrap().get(&id) {
        Some(payment) => format!(
            "order {id}: paid under fencing token {}\n",
            payment.fencing_token
        ),
        None => format!("order {id}: not paid\n"),
    }
}

/// `GET /metrics`: every metric recorded in this process, in the Prometheus text format.
async fn metrics(State(prometheus): State<PrometheusHandle>) -> String {
    prometheus.render()
}

/// The order service: `POST /orders/{id}/pay`, `GET /orders/{id}` and `GET /metrics`. With
/// `layer`, payments run under `LockLayer`; without, `charge` locks through `#[locked]` alone.
pub(crate) fn app(locker: Locker, prometheus: PrometheusHandle, layer: bool) -> Router {
    // `/orders/42/pay` locks `order:42`. The layer runs before the route's `Path<u64>`, so its key
    // extractor reads the id as that extractor will: percent-decoded, then parsed as a `u64`.
    // `/orders/042/pay` then shares order 42's lock, and `/orders/abc/pay`, which the route
    // rejects with 400, takes no lock at all. A payment that waits longer than 2 s for another
    // one gets `423 Locked` with `Retry-After`.
    let segment = key::path_segment(2);
    let order = move |request: &Request<Body>| {
        let id: u64 = segment.extract(request)?.parse().ok()?;
        Some(format!("order:{id}"))
    };
    let lock = LockLayer::new(order)
        .locker(locker)
        .wait(Duration::from_secs(2))
        .lease(Duration::from_secs(10));
    let pay_route = if layer {
        post(pay).layer(lock)
    } else {
        post(pay)
    };
    Router::new()
        .route("/orders/{id}", get(show))
        .route("/orders/{id}/pay", pay_route)
        .with_state(Orders::default())
        .route("/metrics", get(metrics).with_state(prometheus))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // relock records through the `metrics` facade; this recorder keeps the values for `/metrics`.
    let prometheus = PrometheusBuilder::new().install_recorder()?;
    let upkeep = prometheus.clone();
    tokio::spawn(async move {
        // Histograms are kept as summaries over a sliding window, which must be advanced.
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });

    let locker = match std::env::var("REDIS_URL") {
        Ok(url) => {
            println!("using Redis at {url}");
            Locker::connect(&url).await?
        }
        Err(_) => {
            println!("REDIS_URL is not set: using the in-memory backend (one process)");
            Locker::in_memory()
        }
    };

    // Without the layer, `#[locked]` on `charge` finds no scope and uses the global locker.
    relock::set_global(locker.clone());
    let layer = std::env::var("RELOCK_LAYER").as_deref() != Ok("off");
    if !layer {
        println!("RELOCK_LAYER=off: payments lock through #[locked] alone");
    }
    let app = app(locker, prometheus, layer);

    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port.parse()?,
        Err(_) => 3000,
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let base = format!("http://{}", listener.local_addr()?);
    println!("listening on {base}; try:");
    println!("  curl -i -X POST {base}/orders/42/pay");
    println!("  curl -i {base}/orders/42");
    println!("  curl -s {base}/metrics | grep '^relock_'");
    println!("  curl -s -X POST {base}/orders/7/pay & curl -s -X POST {base}/orders/7/pay; wait");
    axum::serve(listener, app).await?;
    Ok(())
}
