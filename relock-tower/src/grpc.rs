use http::Response;
use tonic::{Code, Status};

use crate::reject::Reject;

/// Rejects gRPC requests with a gRPC status, for tonic servers.
///
/// The response is a proper gRPC "trailers-only" answer: HTTP `200`,
/// `content-type: application/grpc`, and the status in the `grpc-status` and `grpc-message`
/// headers, which tonic clients turn into a [`Status`].
///
/// * [`Timeout`](relock::Error::Timeout) → `ABORTED`
/// * [`InvalidKey`](relock::Error::InvalidKey) → `INVALID_ARGUMENT`
/// * [`Backend`](relock::Error::Backend), [`Lost`](relock::Error::Lost) and
///   [`NotReplicated`](relock::Error::NotReplicated) → `UNAVAILABLE`
/// * anything else → `INTERNAL`
///
/// ```
/// use relock_tower::{key, GrpcRejection, LockLayer};
///
/// let layer = LockLayer::new(key::metadata("x-order-id").prefix("order:"))
///     .on_reject(GrpcRejection::new());
/// // tonic::transport::Server::builder().layer(layer).add_service(..)
/// # drop(layer);
/// ```
#[derive(Debug, Default, Clone, Copy)]
#[non_exhaustive]
pub struct GrpcRejection;

impl GrpcRejection {
    /// The gRPC rejection.
    pub fn new() -> Self {
        Self
    }

    /// The status a request gets for `error`.
    pub fn status(&self, error: &relock::Error) -> Status {
        match error {
            relock::Error::Timeout { .. } => Status::new(
                Code::Aborted,
                "locked: another holder, in this process or another, has this resource locked; \
                 retry later",
            ),
            relock::Error::InvalidKey { reason, .. } => {
                Status::new(Code::InvalidArgument, format!("invalid lock key: {reason}"))
            }
            relock::Error::Backend(_) => {
                Status::new(Code::Unavailable, "lock service unavailable; retry later")
            }
            relock::Error::Lost { .. } => Status::new(
                Code::Unavailable,
                "lock lost before the request finished; retry later",
            ),
            relock::Error::NotReplicated { .. } => Status::new(
                Code::Unavailable,
                "lock not replicated in time; retry later",
            ),
            _ => Status::new(Code::Internal, "lock not available"),
        }
    }
}

impl<B: Default> Reject<Response<B>> for GrpcRejection {
    fn reject(&mut self, error: &relock::Error) -> Response<B> {
        self.status(error).into_http()
    }
}

/// Rejects gRPC requests over a [`LimitLayer`](crate::LimitLayer)'s limit with
/// `RESOURCE_EXHAUSTED`; other failures as [`GrpcRejection`].
///
/// ```
/// use relock_tower::{key, GrpcLimitRejection, LimitLayer};
///
/// let layer = LimitLayer::new(key::metadata("x-tenant").prefix("tenant:"), 8)
///     .on_reject(GrpcLimitRejection::new());
/// // tonic::transport::Server::builder().layer(layer).add_service(..)
/// # drop(layer);
/// ```
#[derive(Debug, Default, Clone, Copy)]
#[non_exhaustive]
pub struct GrpcLimitRejection;

impl GrpcLimitRejection {
    /// The gRPC rejection of a limit.
    pub fn new() -> Self {
        Self
    }

    /// The status a request gets for `error`.
    pub fn status(&self, error: &relock::Error) -> Status {
        match error {
            relock::Error::Timeout { .. } => Status::new(
                Code::ResourceExhausted,
                "too many requests for this resource in flight; retry later",
            ),
            other => GrpcRejection.status(other),
        }
    }
}

impl<B: Default> Reject<Response<B>> for GrpcLimitRejection {
    fn reject(&mut self, error: &relock::Error) -> Response<B> {
        self.status(error).into_http()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn reject(error: relock::Error) -> Response<String> {
        GrpcRejection::new().reject(&error)
    }

    #[test]
    fn timeout_is_aborted_in_a_trailers_only_response() {
        let response = reject(relock::Error::Timeout {
            key: "order:1".into(),
            waited: Duration::from_millis(10),
            holder_ttl: None,
        });
        assert_eq!(response.status(), http::StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "application/grpc");
        assert_eq!(response.headers()["grpc-status"], "10");
        assert!(response.headers().contains_key("grpc-message"));
    }

    #[test]
    fn over_the_limit_is_resource_exhausted() {
        let response: Response<String> =
            GrpcLimitRejection::new().reject(&relock::Error::Timeout {
                key: "tenant:9".into(),
                waited: Duration::from_millis(10),
                holder_ttl: None,
            });
        assert_eq!(response.headers()["grpc-status"], "8");
    }

    #[test]
    fn invalid_key_is_invalid_argument() {
        let response = reject(relock::LockKey::new("").unwrap_err());
        assert_eq!(response.headers()["grpc-status"], "3");
    }

    #[test]
    fn lost_lock_is_unavailable() {
        let response = reject(relock::Error::Lost {
            key: "order:1".into(),
        });
        assert_eq!(response.headers()["grpc-status"], "14");
    }
}
