//! Tower middleware that takes a [relock] lock per request, keyed by something in the request.
//!
//! [`LockLayer`] extracts a key from each request — a header, a path segment, a query parameter,
//! gRPC metadata (see [`key`]) or anything a closure computes — waits for the lock on that key,
//! calls the inner service inside a relock *scope* that holds it, and releases it when the
//! response is ready (or, with [`LockLayer::hold_until_body_end`], when the response body has
//! been sent). Requests on one key run one at a time across every process that shares the Redis
//! server; requests on different keys run in parallel; requests without a key pass straight
//! through.
//!
//! Because the inner service runs inside the lock's scope, a handler that locks the same key
//! again — with `#[relock::locked]`, [`Acquire::run`](relock::Acquire::run) or a plain
//! `locker.lock(key)` — re-enters the request's hold at once, without a round trip to Redis,
//! instead of deadlocking. Inside the handler, [`Locker::current`](relock::Locker::current) is
//! the layer's locker.
//!
//! ```
//! use std::time::Duration;
//!
//! use axum::{body::Body, extract::Path, http::Request, http::StatusCode, routing::post, Router};
//! use relock_tower::{key, LockLayer};
//! use tower::ServiceExt;
//!
//! async fn pay(Path(id): Path<u64>) -> Result<String, StatusCode> {
//!     let locker = relock::Locker::current().map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
//!     // Re-enters the hold the layer took for this request: no wait, no round trip.
//!     let guard = locker
//!         .lock(format!("order:{id}"))
//!         .await
//!         .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
//!     assert!(guard.is_reentrant());
//!     Ok(format!("paid order {id} under fencing token {}", guard.fencing_token()))
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // `relock::Locker::connect("redis://127.0.0.1:6379").await?` to share locks between processes.
//! let locker = relock::Locker::in_memory();
//!
//! let app = Router::new().route("/orders/{id}/pay", post(pay)).layer(
//!     // In `/orders/42/pay`, segment 2 is `42`: the lock is `order:42`.
//!     LockLayer::new(key::path_segment(2).prefix("order:"))
//!         .locker(locker)
//!         .wait(Duration::from_secs(2)),
//! );
//!
//! // `axum::serve(listener, app).await?` serves it; here one request is sent in process.
//! let request = Request::post("/orders/42/pay").body(Body::empty())?;
//! let response = app.oneshot(request).await?;
//! assert_eq!(response.status(), StatusCode::OK);
//! # Ok(()) }
//! ```
//!
//! # The layer runs before the handler's extractors
//!
//! The lock is taken before the request reaches the route's extractors (axum's `Path`, `Query`,
//! `Json`), so the key extractor sees requests the handler will refuse. With
//! `key::path_segment(2)` on a route that reads `Path<u64>`, `/orders/abc/pay` locks `order:abc`
//! — writing a key to Redis — before axum answers `400`, and `/orders/042/pay` locks `order:042`
//! while its handler works on order 42, beside a request for `/orders/42/pay` that holds
//! `order:42`. Make the key extractor read the value as the handler will, and refuse what it
//! refuses: `None` lets the request through without a lock, to be rejected by the route.
//!
//! ```
//! use axum::{body::Body, http::Request};
//! use relock_tower::{key, ExtractKey, LockLayer};
//!
//! // For `/orders/{id}/pay` with `Path<u64>`.
//! let segment = key::path_segment(2);
//! let order = move |request: &Request<Body>| {
//!     let id: u64 = segment.extract(request)?.parse().ok()?;
//!     Some(format!("order:{id}"))
//! };
//!
//! let post = |path: &str| Request::post(path).body(Body::empty()).unwrap();
//! assert_eq!(order(&post("/orders/042/pay")), Some("order:42".to_owned()));
//! assert_eq!(order(&post("/orders/%34%32/pay")), Some("order:42".to_owned()));
//! assert_eq!(order(&post("/orders/abc/pay")), None);
//!
//! let layer = LockLayer::new(order);
//! # drop(layer);
//! ```
//!
//! # When the lock cannot be had
//!
//! A lock that could not be taken becomes a response, not a service error, so an axum router
//! keeps its `Infallible` error. [`DefaultRejection`] answers with a short `text/plain` body:
//!
//! | [`relock::Error`] | HTTP | gRPC (`GrpcRejection`, feature `tonic`) |
//! |---|---|---|
//! | `Timeout`: held elsewhere for the whole wait | `423 Locked`, `Retry-After` from the holder's lease | `ABORTED` |
//! | `InvalidKey`: the extractor built an unusable key | `400 Bad Request` | `INVALID_ARGUMENT` |
//! | `Backend`: Redis unreachable or failing | `503 Service Unavailable` | `UNAVAILABLE` |
//! | `Lost`: the lease ended while the service ran | `503 Service Unavailable` | `UNAVAILABLE` |
//! | `NotReplicated`: too few replicas acknowledged the grant | `503 Service Unavailable` | `UNAVAILABLE` |
//! | anything else (no locker configured, …) | `500 Internal Server Error` | `INTERNAL` |
//!
//! A lost lock is a failure of the lock service, not a conflict the client caused, and the
//! inner service's response is discarded (its work may be incomplete), so it is reported like
//! a backend failure; clients may retry as they would after any `503`. Another mapping is a
//! closure away: see [`LockLayer::on_reject`].
//!
//! # Services that do not speak HTTP
//!
//! The layer is generic over the request type. For a service whose requests are not
//! [`http::Request`]s, choose [`ErrorRejection`]: the service then fails with the
//! [`relock::Error`] boxed in its [`BoxError`], and inner errors are boxed alike.
//!
//! ```
//! use relock_tower::{ErrorRejection, LockLayer};
//! use tower::{service_fn, BoxError, ServiceBuilder, ServiceExt};
//!
//! struct Job {
//!     account: u64,
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let worker = ServiceBuilder::new()
//!     .layer(
//!         LockLayer::new(|job: &Job| Some(format!("account:{}", job.account)))
//!             .locker(relock::Locker::in_memory())
//!             .on_reject(ErrorRejection::new()),
//!     )
//!     .service_fn(|job: Job| async move { Ok::<_, BoxError>(job.account * 2) });
//!
//! assert_eq!(worker.oneshot(Job { account: 21 }).await?, 42);
//! # Ok(()) }
//! ```
//!
//! # A concurrency limit per key
//!
//! [`LimitLayer`] lets at most `n` requests per key run at once across every process that shares
//! the lock server — a distributed, keyed `ConcurrencyLimit` — with the same extractors: each
//! request takes one of the key's permits (a [`relock::Semaphore`]), and over the limit it waits
//! up to [`LimitLayer::wait`], then gets `429 Too Many Requests` with `Retry-After`
//! ([`LimitRejection`]; gRPC `RESOURCE_EXHAUSTED` with `GrpcLimitRejection`, feature `tonic`).
//! A process that dies holding permits gives them back when their leases end. A request's permit
//! comes back when its response is ready, or, with [`LimitLayer::hold_until_body_end`], when the
//! response body has been sent (or dropped), for handlers that stream.
//!
//! ```
//! use std::time::Duration;
//!
//! use relock_tower::{key, LimitLayer};
//!
//! // At most 8 exports in flight per tenant, fleet-wide.
//! let layer = LimitLayer::new(key::header("x-tenant").prefix("tenant:"), 8)
//!     .wait(Duration::from_millis(200));
//! # drop(layer);
//! ```
//!
//! # Cancellation and release
//!
//! The lock is taken inside the response future, never in `poll_ready`, and the hold lives in
//! that future: a request dropped while waiting or running (a client that disconnects, a
//! timeout layer further out) gives the lock up at once. An inner service that fails releases
//! it too.
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
mod extract;
#[cfg(feature = "tonic")]
mod grpc;
pub mod key;
mod limit;
mod lock;
mod reject;

pub use body::LockBody;
pub use extract::ExtractKey;
#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
pub use grpc::{GrpcLimitRejection, GrpcRejection};
pub use limit::{Limit, LimitLayer};
pub use lock::{future, Lock, LockLayer};
pub use reject::{DefaultRejection, ErrorRejection, LimitRejection, Reject};

/// A boxed error, as [`tower::BoxError`](https://docs.rs/tower/latest/tower/type.BoxError.html):
/// the error of a [`Lock`] service that uses [`ErrorRejection`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
