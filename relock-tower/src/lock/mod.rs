//! Take a lock per request, keyed by something in the request.
//!
//! [`LockLayer`] wraps a service in [`Lock`]: each request's key is extracted, its lock taken
//! inside the [`ResponseFuture`](future::ResponseFuture), the inner service called inside a
//! relock scope that holds the lock, and the lock released when the response is ready, or when
//! its body ends with [`LockLayer::hold_until_body_end`].

pub mod future;
mod layer;
mod service;

pub use self::layer::LockLayer;
pub use self::service::Lock;
