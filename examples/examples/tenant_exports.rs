//! A per-tenant export limit shared by every process of a service: `LimitLayer` lets at most 2
//! exports of one tenant run at once, fleet-wide (tenants are independent); a third request
//! waits up to 1 s for one of them to finish, then gets `429 Too Many Requests` with
//! `Retry-After`. Each running export holds a permit — a relock semaphore's — with its own
//! fencing token, which it would hand to the store it writes to.
//!
//! ```text
//! cargo run -p relock-examples --example tenant_exports
//! REDIS_URL=redis://127.0.0.1:6379 PORT=3000 cargo run -p relock-examples --example tenant_exports
//! ```
//!
//! Then, in another terminal (an export takes 3 s):
//!
//! ```text
//! # Three exports of tenant 9 at once: two run, the third gets 429 after waiting 1 s.
//! for i in 1 2 3; do curl -s -o /dev/null -w '%{http_code}\n' -X POST -H 'x-tenant: 9' http://127.0.0.1:3000/exports & done; wait
//! # Meanwhile tenant 10's export runs: its permits are its own.
//! curl -s -X POST -H 'x-tenant: 10' http://127.0.0.1:3000/exports
//! ```
//!
//! With `REDIS_URL` set, start a second copy on another `PORT` and spread the requests over
//! both: the limit is still 2 per tenant in all. A copy killed mid-export gives its permit back
//! when the permit's lease (10 s) ends. `tests/tenant_exports.rs` checks what this header says.

use std::time::Duration;

use axum::extract::Extension;
use axum::routing::post;
use axum::Router;
use relock::Locker;
use relock_tower::{key, LimitLayer};

/// How many exports of one tenant may run at once, in every process together.
pub(crate) const EXPORTS_PER_TENANT: u32 = 2;

/// `POST /exports` with `x-tenant`: runs one export under one of the tenant's permits.
async fn export(Extension(duration): Extension<Duration>) -> String {
    // The permit the layer holds for this request stands for this export while it runs.
    tokio::time::sleep(duration).await;
    "export done\n".to_owned()
}

/// The export service; each export takes `duration`.
pub(crate) fn app(locker: Locker, duration: Duration) -> Router {
    Router::new()
        .route("/exports", post(export))
        .layer(Extension(duration))
        .layer(
            LimitLayer::new(
                key::header("x-tenant").prefix("tenant:"),
                EXPORTS_PER_TENANT,
            )
            .locker(locker)
            .wait(Duration::from_secs(1))
            .lease(Duration::from_secs(10)),
        )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
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
    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".to_owned());
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    println!("listening on http://127.0.0.1:{port}");
    axum::serve(listener, app(locker, Duration::from_secs(3))).await?;
    Ok(())
}
