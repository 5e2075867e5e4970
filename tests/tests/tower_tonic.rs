//! `LockLayer` with `GrpcRejection` in a real tonic server over TCP, against a private Redis
//! server. The service and client are written by hand (no `protoc`), as tonic-build would.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::PathAndQuery;
use relock::Locker;
use relock_tests::RedisServer;
use relock_tower::{key, GrpcRejection, LockLayer};
use tonic::server::NamedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::{Code, Status};
use tonic_prost::ProstCodec;

#[derive(Clone, PartialEq, prost::Message)]
struct PayRequest {
    #[prost(uint64, tag = "1")]
    order_id: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PayReply {
    #[prost(uint64, tag = "1")]
    fencing_token: u64,
    #[prost(bool, tag = "2")]
    reentrant: bool,
}

/// The `orders.Orders` service: `Pay` re-locks the order the layer already holds.
#[derive(Clone)]
struct Orders {
    locker: Locker,
}

impl NamedService for Orders {
    const NAME: &'static str = "orders.Orders";
}

async fn pay(
    locker: Locker,
    request: tonic::Request<PayRequest>,
) -> Result<tonic::Response<PayReply>, Status> {
    let id = request.into_inner().order_id;
    let guard = locker
        .lock(format!("order:{id}"))
        .wait(Duration::from_secs(1))
        .await
        .map_err(|err| Status::internal(err.to_string()))?;
    Ok(tonic::Response::new(PayReply {
        fencing_token: guard.fencing_token(),
        reentrant: guard.is_reentrant(),
    }))
}

impl tower::Service<http::Request<tonic::body::Body>> for Orders {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let locker = self.locker.clone();
        Box::pin(async move {
            if request.uri().path() != "/orders.Orders/Pay" {
                return Ok(Status::unimplemented("no such method").into_http());
            }
            let method = tower::service_fn(move |req| pay(locker.clone(), req));
            let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
            Ok(grpc.unary(method, request).await)
        })
    }
}

async fn serve(locker: &Locker, wait: Duration) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let layer = LockLayer::new(key::metadata("x-order-id").prefix("order:"))
        .locker(locker.clone())
        .wait(wait)
        .on_reject(GrpcRejection::new());
    let router = Server::builder().layer(layer).add_service(Orders {
        locker: locker.clone(),
    });
    tokio::spawn(async move {
        router
            .serve_with_incoming(TcpIncoming::from(listener))
            .await
            .unwrap()
    });
    addr
}

async fn call_pay(addr: SocketAddr, order_header: &str, order_id: u64) -> Result<PayReply, Status> {
    call_pay_with(addr, &[order_header], order_id).await
}

/// `Pay` with one `x-order-id` entry per element of `order_headers`.
async fn call_pay_with(
    addr: SocketAddr,
    order_headers: &[&str],
    order_id: u64,
) -> Result<PayReply, Status> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(PayRequest { order_id });
    for header in order_headers {
        request
            .metadata_mut()
            .append("x-order-id", header.parse().unwrap());
    }
    let path = PathAndQuery::from_static("/orders.Orders/Pay");
    let reply = grpc.unary(request, path, ProstCodec::default()).await?;
    Ok(reply.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn free_lock_lets_the_call_through_and_its_nested_lock_reenters() {
    let redis = RedisServer::start();
    let locker = Locker::connect(&redis.url()).await.unwrap();
    let addr = serve(&locker, Duration::from_secs(1)).await;

    let reply = call_pay(addr, "11", 11).await.unwrap();

    assert!(reply.reentrant);
    assert!(reply.fencing_token >= 1);
    assert!(locker.inspect("order:11").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_held_elsewhere_gives_aborted_after_the_wait() {
    let redis = RedisServer::start();
    let locker = Locker::connect(&redis.url()).await.unwrap();
    let elsewhere = Locker::connect(&redis.url()).await.unwrap();
    let _held = elsewhere
        .lock("order:12")
        .lease(Duration::from_secs(5))
        .await
        .unwrap();
    let addr = serve(&locker, Duration::from_millis(200)).await;

    let status = call_pay(addr, "12", 12).await.unwrap_err();

    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert!(status.message().starts_with("locked"), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_key_gives_invalid_argument() {
    let redis = RedisServer::start();
    let locker = Locker::connect(&redis.url()).await.unwrap();
    let addr = serve(&locker, Duration::from_secs(1)).await;

    let status = call_pay(addr, "{13}", 13).await.unwrap_err();

    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_key_metadata_gives_invalid_argument_and_never_runs_the_call() {
    let redis = RedisServer::start();
    let locker = Locker::connect(&redis.url()).await.unwrap();
    let addr = serve(&locker, Duration::from_secs(1)).await;

    for headers in [&["14", "15"][..], &["", "14"], &["14", "14"]] {
        let status = call_pay_with(addr, headers, 14).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{headers:?}: {status:?}"
        );
        assert!(
            status
                .message()
                .contains("repeats the query parameter or header"),
            "{status:?}"
        );
    }
    // Given once, the same id goes through.
    assert!(call_pay_with(addr, &["14"], 14).await.unwrap().reentrant);
}
