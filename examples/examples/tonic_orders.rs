//! The order service of `axum_orders` over gRPC: `LockLayer` locks `order:{id}` for each
//! `orders.Orders/Pay` call, keyed by the `x-order-id` metadata the client sends, and answers
//! `ABORTED` when the order stays locked past the wait.
//!
//! The messages, service and client are written by hand, as `tonic-build` would generate them,
//! so no `protoc` is needed. The equivalent `.proto`:
//!
//! ```text
//! syntax = "proto3";
//! package orders;
//! service Orders { rpc Pay(PayRequest) returns (PayReply); }
//! message PayRequest { uint64 order_id = 1; }
//! message PayReply { uint64 fencing_token = 1; }
//! ```
//!
//! ```text
//! cargo run -p relock-examples --example tonic_orders                  # the server
//! cargo run -p relock-examples --example tonic_orders -- pay 42        # a client call
//! REDIS_URL=redis://127.0.0.1:6379 PORT=50051 cargo run -p relock-examples --example tonic_orders
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::PathAndQuery;
use relock::Locker;
use relock_tower::{key, GrpcRejection, LockLayer};
use tonic::server::NamedService;
use tonic::transport::{Channel, Server};
use tonic::{Code, Status};
use tonic_prost::ProstCodec;

/// `orders.PayRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PayRequest {
    #[prost(uint64, tag = "1")]
    pub order_id: u64,
}

/// `orders.PayReply`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PayReply {
    #[prost(uint64, tag = "1")]
    pub fencing_token: u64,
}

const PAY: &str = "/orders.Orders/Pay";

/// The server side of `orders.Orders`.
#[derive(Clone, Default)]
struct Orders {
    paid: Arc<Mutex<HashMap<u64, u64>>>,
}

impl Orders {
    async fn pay(&self, request: tonic::Request<PayRequest>) -> Result<PayReply, Status> {
        let id = request.into_inner().order_id;
        let fencing_token = charge(self, id).await.map_err(|err| match err {
            PayError::AlreadyPaid => Status::already_exists(format!("order {id} is already paid")),
            PayError::Lock(err) => Status::unavailable(err.to_string()),
        })?;
        Ok(PayReply { fencing_token })
    }
}

enum PayError {
    AlreadyPaid,
    Lock(relock::Error),
}

impl From<relock::Error> for PayError {
    fn from(err: relock::Error) -> Self {
        PayError::Lock(err)
    }
}

/// Charges an order once; under `LockLayer` it re-enters the call's hold on `order:{id}`.
#[relock::locked("order:{id}")]
async fn charge(orders: &Orders, id: u64) -> Result<u64, PayError> {
    if orders.paid.lock().unwrap().contains_key(&id) {
        return Err(PayError::AlreadyPaid);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let guard = Locker::current()?.lock(format!("order:{id}")).await?;
    orders
        .paid
        .lock()
        .unwrap()
        .insert(id, guard.fencing_token());
    Ok(guard.fencing_token())
}

impl NamedService for Orders {
    const NAME: &'static str = "orders.Orders";
}

impl tower::Service<http::Request<tonic::body::Body>> for Orders {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let orders = self.clone();
        Box::pin(async move {
            if request.uri().path() != PAY {
                return Ok(Status::unimplemented("no such method").into_http());
            }
            let method = tower::service_fn(move |request| {
                let orders = orders.clone();
                async move { orders.pay(request).await.map(tonic::Response::new) }
            });
            let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
            Ok(grpc.unary(method, request).await)
        })
    }
}

/// The client side of `orders.Orders`.
struct OrdersClient {
    grpc: tonic::client::Grpc<Channel>,
}

impl OrdersClient {
    async fn connect(url: String) -> Result<Self, tonic::transport::Error> {
        let channel = Channel::from_shared(url)
            .expect("a valid URL")
            .connect()
            .await?;
        Ok(Self {
            grpc: tonic::client::Grpc::new(channel),
        })
    }

    async fn pay(&mut self, order_id: u64) -> Result<PayReply, Status> {
        self.grpc
            .ready()
            .await
            .map_err(|err| Status::unavailable(err.to_string()))?;
        let mut request = tonic::Request::new(PayRequest { order_id });
        // The key the server's `LockLayer` locks on.
        request
            .metadata_mut()
            .insert("x-order-id", order_id.to_string().parse().expect("digits"));
        let path = PathAndQuery::from_static(PAY);
        let reply = self
            .grpc
            .unary(request, path, ProstCodec::default())
            .await?;
        Ok(reply.into_inner())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port.parse()?,
        Err(_) => 50051,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [command, id] = args.as_slice() {
        if command == "pay" {
            let mut client = OrdersClient::connect(format!("http://127.0.0.1:{port}")).await?;
            match client.pay(id.parse()?).await {
                Ok(reply) => println!("paid under fencing token {}", reply.fencing_token),
                Err(status) if status.code() == Code::Aborted => {
                    println!("the order is busy, retry later: {}", status.message())
                }
                Err(status) => println!("{:?}: {}", status.code(), status.message()),
            }
            return Ok(());
        }
    }

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
    let lock = LockLayer::new(key::metadata("x-order-id").prefix("order:"))
        .locker(locker)
        .wait(Duration::from_secs(2))
        .lease(Duration::from_secs(10))
        .on_reject(GrpcRejection::new());

    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    println!("serving orders.Orders on {addr}; try:");
    println!("  cargo run -p relock-examples --example tonic_orders -- pay 42");
    println!("  (twice at once, with `&`: the second waits for the first, then finds it paid)");
    Server::builder()
        .layer(lock)
        .add_service(Orders::default())
        .serve(addr)
        .await?;
    Ok(())
}
