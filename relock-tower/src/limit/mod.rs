//! At most `n` requests in flight per key, across every process of a service: a distributed,
//! keyed [`ConcurrencyLimit`](https://docs.rs/tower/latest/tower/limit/struct.ConcurrencyLimit.html).
//!
//! [`LimitLayer`] wraps a service in [`Limit`]: each request's key is extracted, one of the key's
//! `n` permits ([`relock::Semaphore`]) taken inside the response future, the inner service
//! called, and the permit returned when the response is ready. Over the limit a request waits up
//! to [`LimitLayer::wait`], then gets `429 Too Many Requests` with `Retry-After`
//! ([`LimitRejection`](crate::LimitRejection); gRPC `RESOURCE_EXHAUSTED` with
//! `GrpcLimitRejection`, feature `tonic`).

mod layer;
mod service;

pub use self::layer::LimitLayer;
pub use self::service::Limit;
