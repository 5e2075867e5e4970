//! An axum server behind `relock_tower::LimitLayer`, recording each request's time in its handler
//! in a separate store: the server process of `tests/tests/limit_processes.rs`.
//!
//! Usage: `limit_server <lock-url> <store-url> <permits> <lease-ms>`. Binds a free port on
//! 127.0.0.1 and prints `LISTENING <port>`. Two routes share one limit, `<permits>` requests in
//! flight per `x-tenant` header (key `tenant:<x-tenant>`, as `key::header` extracts it), with
//! permits leased for `<lease-ms>`:
//!
//! * `POST /patient`: a request over the limit waits up to 20 s for a permit;
//! * `POST /fast`: it waits 50 ms, then gets `429 Too Many Requests` with `Retry-After`.
//!
//! The handler enters the store (a Lua script: `INCR` the tenant's in-flight count, count it
//! per server process too, keep the largest count seen), works for `x-work-ms` milliseconds
//! (default 0), and leaves (`DECR`). A server killed mid-request never leaves: the test takes
//! its count back with the per-process count (`tenant:<t>:by-process`, field `<pid>`).

use std::io::Write;
use std::time::Duration;

use axum::http::HeaderMap;
use axum::routing::post;
use axum::Router;
use relock_tower::{key, LimitLayer};

/// KEYS: in-flight, by-process, most. ARGV: pid. Reply: the in-flight count after entering.
const ENTER: &str = r"
local now = redis.call('INCR', KEYS[1])
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
if now > tonumber(redis.call('GET', KEYS[3]) or '0') then
  redis.call('SET', KEYS[3], now)
end
return now
";

/// KEYS: in-flight, by-process. ARGV: pid. Reply: the in-flight count after leaving.
const LEAVE: &str = r"
redis.call('HINCRBY', KEYS[2], ARGV[1], -1)
return redis.call('DECR', KEYS[1])
";

#[derive(Clone)]
struct Store {
    connection: redis::aio::MultiplexedConnection,
    enter: redis::Script,
    leave: redis::Script,
    pid: String,
}

async fn handler(store: Store, headers: HeaderMap) -> &'static str {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let tenant = header("x-tenant").expect("LimitLayer lets no request without a tenant in");
    let work = header("x-work-ms").map_or(0, |ms| ms.parse().expect("x-work-ms is a number"));
    let keys = [
        format!("tenant:{tenant}:in-flight"),
        format!("tenant:{tenant}:by-process"),
        format!("tenant:{tenant}:most"),
    ];
    let mut connection = store.connection.clone();
    let _: i64 = store
        .enter
        .key(&keys[0])
        .key(&keys[1])
        .key(&keys[2])
        .arg(&store.pid)
        .invoke_async(&mut connection)
        .await
        .expect("enter the store");
    tokio::time::sleep(Duration::from_millis(work)).await;
    let _: i64 = store
        .leave
        .key(&keys[0])
        .key(&keys[1])
        .arg(&store.pid)
        .invoke_async(&mut connection)
        .await
        .expect("leave the store");
    "done"
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [lock_url, store_url, permits, lease_ms] = args.as_slice() else {
        eprintln!("usage: limit_server <lock-url> <store-url> <permits> <lease-ms>");
        std::process::exit(2);
    };
    let permits: u32 = permits.parse().expect("permits is a number");
    let lease = Duration::from_millis(lease_ms.parse().expect("lease-ms is a number"));
    let locker = relock::Locker::connect(lock_url)
        .await
        .expect("connect to the lock server");
    let store = Store {
        connection: redis::Client::open(store_url.as_str())
            .expect("a valid store url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the store"),
        enter: redis::Script::new(ENTER),
        leave: redis::Script::new(LEAVE),
        pid: std::process::id().to_string(),
    };
    let limit = |wait: Duration| {
        LimitLayer::new(key::header("x-tenant").prefix("tenant:"), permits)
            .locker(locker.clone())
            .lease(lease)
            .wait(wait)
    };
    let route = |wait: Duration| {
        let store = store.clone();
        post(move |headers: HeaderMap| handler(store.clone(), headers)).layer(limit(wait))
    };
    let app = Router::new()
        .route("/patient", route(Duration::from_secs(20)))
        .route("/fast", route(Duration::from_millis(50)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a free port");
    let port = listener.local_addr().expect("the bound address").port();
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "LISTENING {port}").expect("write to stdout");
    stdout.flush().expect("flush stdout");
    drop(stdout);
    axum::serve(listener, app).await.expect("serve");
}
