//! What the header of `examples/tenant_exports.rs` says is what the service does, on a private
//! `redis-server`, with two copies of the service (each with a `Locker` of its own, as two
//! processes) and shorter exports: three exports of one tenant at once give two `200`s and one
//! `429` with `Retry-After` after the 1 s wait, another tenant's export runs meanwhile, and the
//! limit holds across both copies.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use relock_tests::{run_bounded, RedisServer};
use tower::ServiceExt;

// The example's own code, so that the router tested is the one `cargo run` serves.
#[allow(dead_code)]
#[path = "../examples/tenant_exports.rs"]
mod tenant_exports;

fn export(tenant: &str) -> Request<Body> {
    Request::post("/exports")
        .header("x-tenant", tenant)
        .body(Body::empty())
        .unwrap()
}

#[test]
fn two_exports_per_tenant_run_the_third_gets_429_and_tenants_are_independent() {
    run_bounded(Duration::from_secs(60), || async {
        let server = RedisServer::start();
        let export_time = Duration::from_secs(3);
        let first = tenant_exports::app(server.locker().await, export_time);
        let second = tenant_exports::app(server.locker().await, export_time);
        assert_eq!(tenant_exports::EXPORTS_PER_TENANT, 2);

        let started = Instant::now();
        let mut running = Vec::new();
        for app in [first.clone(), second.clone()] {
            running.push(tokio::spawn(app.oneshot(export("9"))));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let third = second.clone().oneshot(export("9")).await.unwrap();
        assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(third.headers().contains_key("retry-after"));
        assert!(started.elapsed() >= Duration::from_secs(1), "it waited 1 s");

        let other = first.clone().oneshot(export("10")).await.unwrap();
        assert_eq!(
            other.status(),
            StatusCode::OK,
            "tenant 10 has permits of its own"
        );
        for export in running {
            assert_eq!(export.await.unwrap().unwrap().status(), StatusCode::OK);
        }
    });
}
