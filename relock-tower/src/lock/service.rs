use std::any::type_name;
use std::fmt;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Request, Response};
use relock::{IntoLockKey, LockKey, Locker};
use tower_service::Service;
use tracing::field::{debug, Empty};
use tracing::Instrument;

use super::future::{Locked, ResponseFuture};
use super::layer::Config;
use crate::body::{Held, LockBody};
use crate::extract::ExtractKey;
use crate::reject::{DefaultRejection, ErrorRejection, Reject};
use crate::BoxError;

/// Takes a relock lock per request and calls the inner service inside a scope that holds it.
///
/// Made by [`LockLayer`](crate::LockLayer); see the [crate docs](crate).
///
/// `poll_ready` is the inner service's. `call` extracts the key, swaps the ready inner service
/// for a clone, and returns a future that takes the lock, calls the ready service inside the
/// lock's scope, and releases the lock. Nothing of the request reaches the inner service before
/// the lock is held.
#[derive(Clone)]
pub struct Lock<S, X, R = DefaultRejection> {
    inner: S,
    extract: X,
    reject: R,
    config: Config,
}

impl<S, X, R> Lock<S, X, R> {
    pub(crate) fn new(inner: S, extract: X, reject: R, config: Config) -> Self {
        Self {
            inner,
            extract,
            reject,
            config,
        }
    }

    /// A reference to the inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// A mutable reference to the inner service.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Starts a request: through at once without a key, else into the lock.
    fn start<Req>(&mut self, request: Req, hold_body: bool) -> ResponseFuture<S::Future, R>
    where
        S: Service<Req> + Clone + Send + 'static,
        S::Future: Send,
        S::Response: Send + 'static,
        S::Error: Send + 'static,
        X: ExtractKey<Req>,
        R: Clone,
        Req: Send + 'static,
    {
        let reject = self.reject.clone();
        let Some(key) = self.extract.extract(&request) else {
            return ResponseFuture::unlocked(self.inner.call(request), reject);
        };
        let (locker, key) = match (self.config.locker(), key.into_lock_key()) {
            (Ok(locker), Ok(key)) => (locker, key),
            (Err(error), _) | (_, Err(error)) => return ResponseFuture::rejected(error, reject),
        };
        // The ready service goes into the future; `self` keeps a clone, which the caller
        // readies with `poll_ready` before the next call.
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        let locked = lock(&self.config, locker, key, ready, request, hold_body);
        ResponseFuture::locked(locked, reject)
    }
}

/// Takes the lock, calls `service` inside the lock's scope, releases the lock; with
/// `hold_body`, a share of the hold comes out beside a successful response, for its body.
fn lock<S, Req>(
    config: &Config,
    locker: Locker,
    key: LockKey,
    mut service: S,
    request: Req,
    hold_body: bool,
) -> Locked<Result<S::Response, S::Error>>
where
    S: Service<Req> + Send + 'static,
    S::Future: Send,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    Req: Send + 'static,
{
    let span = tracing::debug_span!("lock", key = %key, waited = Empty, fencing_token = Empty);
    let started = Instant::now();
    let mut acquire = locker.lock(&key).on_lost(config.on_lost);
    if let Some(wait) = config.wait {
        acquire = acquire.wait(wait);
    }
    if let Some(lease) = config.lease {
        acquire = acquire.lease(lease);
    }
    let fields = span.clone();
    let body = async move {
        // A share of the hold on the request's key: for its fencing token, and kept for the
        // response body if asked, since the lock stays held until its last share is dropped.
        // Looked up by key, not as the scope's innermost hold: when `run` re-enters a hold of
        // an enclosing scope, holds on other keys may have been taken inside it.
        let guard = locker
            .current_guard(key)
            .expect("run polls its body in a scope that holds the key");
        fields.record("waited", debug(started.elapsed()));
        fields.record("fencing_token", guard.fencing_token());
        let output = service.call(request).await;
        let guard = (hold_body && output.is_ok()).then_some(Held::Lock(guard));
        (output, guard)
    };
    Box::pin(async move { acquire.run(body).await }.instrument(span))
}

impl<S, X, R, ReqBody, ResBody> Service<Request<ReqBody>> for Lock<S, X, R>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send + 'static,
    X: ExtractKey<Request<ReqBody>>,
    R: Reject<Response<ResBody>>,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<LockBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let hold_body = self.config.hold_until_body_end;
        self.start(request, hold_body)
    }
}

impl<S, X, Req> Service<Req> for Lock<S, X, ErrorRejection>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
    X: ExtractKey<Req>,
    Req: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, ErrorRejection>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        self.start(request, false)
    }
}

impl<S: fmt::Debug, X, R> fmt::Debug for Lock<S, X, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lock")
            .field("inner", &self.inner)
            .field("extract", &format_args!("{}", type_name::<X>()))
            .field("reject", &format_args!("{}", type_name::<R>()))
            .field("config", &self.config)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::pin::{pin, Pin};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use bytes::Bytes;
    use http::header::RETRY_AFTER;
    use http::StatusCode;
    use http_body::Frame;
    use http_body_util::BodyExt;
    use relock::LockGuard;
    use tokio::sync::{mpsc, Notify};
    use tower::{ServiceBuilder, ServiceExt};

    use super::*;
    use crate::{key, LockLayer};

    const KEY: &str = "order:42";

    fn pay_request() -> Request<String> {
        Request::post("/orders/42/pay")
            .header("x-order-id", "42")
            .body(String::new())
            .unwrap()
    }

    fn layer(locker: &Locker) -> LockLayer<key::Header> {
        LockLayer::new(key::header("x-order-id").prefix("order:")).locker(locker.clone())
    }

    async fn body_text<B>(response: Response<B>) -> String
    where
        B: http_body::Body,
        B::Error: fmt::Debug,
    {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    /// Takes `key` in another task, so that waiting for it is an ordinary wait, not a
    /// self-deadlock.
    async fn hold_elsewhere(locker: &Locker, key: &str, lease: Duration) -> LockGuard {
        let (locker, key) = (locker.clone(), key.to_owned());
        tokio::spawn(async move { locker.lock(key).lease(lease).await })
            .await
            .unwrap()
            .unwrap()
    }

    fn ok(text: impl Into<String>) -> Result<Response<String>, Infallible> {
        Ok(Response::new(text.into()))
    }

    #[tokio::test]
    async fn request_without_a_key_passes_through_unlocked() {
        let locker = Locker::in_memory();
        let inner = locker.clone();
        let svc =
            ServiceBuilder::new()
                .layer(layer(&locker))
                .service_fn(move |_: Request<String>| {
                    let locker = inner.clone();
                    async move {
                        let guard = locker.try_lock(KEY).await.unwrap().unwrap();
                        assert!(!guard.is_reentrant(), "no scope holds the key");
                        ok("through")
                    }
                });
        let request = Request::post("/orders/42/pay").body(String::new()).unwrap();
        let response = svc.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(body_text(response).await, "through");
    }

    #[tokio::test]
    async fn inner_service_runs_holding_the_lock_and_releases_it_after() {
        let locker = Locker::in_memory();
        let inner = locker.clone();
        let svc =
            ServiceBuilder::new()
                .layer(layer(&locker))
                .service_fn(move |_: Request<String>| {
                    let locker = inner.clone();
                    async move {
                        let info = locker.inspect(KEY).await.unwrap();
                        ok(format!("held: {}", info.is_some()))
                    }
                });
        let response = svc.oneshot(pay_request()).await.unwrap();
        assert_eq!(body_text(response).await, "held: true");
        assert!(locker.inspect(KEY).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn nested_lock_on_the_same_key_reenters() {
        let locker = Locker::in_memory();
        let svc =
            ServiceBuilder::new()
                .layer(layer(&locker))
                .service_fn(|_: Request<String>| async {
                    // The scope's locker is the layer's.
                    let locker = Locker::current().unwrap();
                    let guard = locker.lock(KEY).wait(Duration::ZERO).await.unwrap();
                    ok(format!("reentrant: {}", guard.is_reentrant()))
                });
        let response = svc.oneshot(pay_request()).await.unwrap();
        assert_eq!(body_text(response).await, "reentrant: true");
    }

    #[tokio::test]
    async fn dropping_the_response_future_releases_the_lock() {
        let locker = Locker::in_memory();
        let started = Arc::new(Notify::new());
        let inner = started.clone();
        let svc =
            ServiceBuilder::new()
                .layer(layer(&locker))
                .service_fn(move |_: Request<String>| {
                    let started = inner.clone();
                    async move {
                        started.notify_one();
                        std::future::pending::<Result<Response<String>, Infallible>>().await
                    }
                });
        {
            let mut response = pin!(svc.oneshot(pay_request()));
            tokio::select! {
                _ = &mut response => panic!("the inner service never answers"),
                () = started.notified() => {}
            }
            assert!(locker.inspect(KEY).await.unwrap().is_some());
        }
        assert!(locker.inspect(KEY).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn failing_inner_service_releases_the_lock() {
        let locker = Locker::in_memory();
        let svc = ServiceBuilder::new()
            .layer(layer(&locker))
            .service_fn(|_: Request<String>| async { Err::<Response<String>, _>("inner failure") });
        let error = svc.oneshot(pay_request()).await.unwrap_err();
        assert_eq!(error, "inner failure");
        assert!(locker.inspect(KEY).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn lock_held_elsewhere_becomes_423_with_retry_after() {
        let locker = Locker::in_memory();
        let _held = hold_elsewhere(&locker, KEY, Duration::from_millis(2500)).await;
        let svc = ServiceBuilder::new()
            .layer(layer(&locker).wait(Duration::from_millis(50)))
            .service_fn(|_: Request<String>| async { ok("never") });
        let response = svc.oneshot(pay_request()).await.unwrap();
        assert_eq!(response.status(), StatusCode::LOCKED);
        // 2.5 s of lease, less the wait and the drift margin, rounded up.
        assert_eq!(response.headers()[RETRY_AFTER], "3");
        assert!(body_text(response).await.starts_with("locked"));
    }

    #[tokio::test]
    async fn invalid_key_becomes_400_without_calling_the_service() {
        let locker = Locker::in_memory();
        let svc = ServiceBuilder::new()
            .layer(layer(&locker))
            .service_fn(|_: Request<String>| async { ok("never") });
        let request = Request::post("/")
            .header("x-order-id", "{42}")
            .body(String::new())
            .unwrap();
        let response = svc.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            body_text(response).await,
            "invalid lock key: key contains `{` or `}`\n"
        );
    }

    #[tokio::test]
    async fn missing_locker_becomes_500() {
        let svc = ServiceBuilder::new()
            .layer(LockLayer::new(key::header("x-order-id")))
            .service_fn(|_: Request<String>| async { ok("never") });
        let response = svc.oneshot(pay_request()).await.unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[tokio::test]
    async fn custom_rejection_builds_the_response() {
        let locker = Locker::in_memory();
        let _held = hold_elsewhere(&locker, KEY, Duration::from_secs(5)).await;
        let reject = |error: &relock::Error| {
            let mut response = Response::new(format!("busy: {}", error.is_timeout()));
            *response.status_mut() = StatusCode::CONFLICT;
            response
        };
        let svc = ServiceBuilder::new()
            .layer(layer(&locker).wait(Duration::ZERO).on_reject(reject))
            .service_fn(|_: Request<String>| async { ok("never") });
        let response = svc.oneshot(pay_request()).await.unwrap();
        assert_eq!(response.status(), StatusCode::CONFLICT);
        assert_eq!(body_text(response).await, "busy: true");
    }

    #[tokio::test]
    async fn lock_lost_while_the_service_runs_becomes_503() {
        let locker = Locker::in_memory();
        let inner = locker.clone();
        let svc =
            ServiceBuilder::new()
                .layer(layer(&locker))
                .service_fn(move |_: Request<String>| {
                    let locker = inner.clone();
                    async move {
                        assert!(locker.force_release(KEY).await.unwrap());
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        ok("too late")
                    }
                });
        let response = svc.oneshot(pay_request()).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    /// A response body fed chunk by chunk through a channel.
    struct ChannelBody(mpsc::Receiver<Bytes>);

    impl http_body::Body for ChannelBody {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            self.0
                .poll_recv(cx)
                .map(|chunk| chunk.map(|chunk| Ok(Frame::data(chunk))))
        }
    }

    /// A service answering with a [`ChannelBody`], and the sender that feeds it.
    fn streaming(
        layer: LockLayer<key::Header>,
    ) -> (
        impl Service<Request<String>, Response = Response<LockBody<ChannelBody>>, Error = Infallible>,
        mpsc::Sender<Bytes>,
    ) {
        let (chunks, receiver) = mpsc::channel(1);
        let receiver = Arc::new(Mutex::new(Some(receiver)));
        let reject = |error: &relock::Error| -> Response<ChannelBody> { panic!("{error}") };
        let svc = ServiceBuilder::new()
            .layer(layer.on_reject(reject))
            .service_fn(move |_: Request<String>| {
                let receiver = receiver.lock().unwrap().take().expect("one request");
                async move { Ok(Response::new(ChannelBody(receiver))) }
            });
        (svc, chunks)
    }

    #[tokio::test]
    async fn lock_is_released_with_the_response_head_by_default() {
        let locker = Locker::in_memory();
        let (svc, _chunks) = streaming(layer(&locker));
        let response = svc.oneshot(pay_request()).await.unwrap();
        assert!(!response.body().holds_lock());
        assert!(locker.inspect(KEY).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn hold_until_body_end_keeps_the_lock_until_the_body_ends() {
        let locker = Locker::in_memory();
        let (svc, chunks) = streaming(layer(&locker).hold_until_body_end());
        let mut body = svc.oneshot(pay_request()).await.unwrap().into_body();
        assert!(body.holds_lock());
        assert!(locker.inspect(KEY).await.unwrap().is_some());

        chunks.send(Bytes::from_static(b"part 1")).await.unwrap();
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "part 1");
        assert!(locker.inspect(KEY).await.unwrap().is_some());

        drop(chunks);
        assert!(body.frame().await.is_none());
        assert!(!body.holds_lock());
        assert!(locker.inspect(KEY).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn hold_until_body_end_releases_when_the_body_is_dropped() {
        let locker = Locker::in_memory();
        let (svc, _chunks) = streaming(layer(&locker).hold_until_body_end());
        let response = svc.oneshot(pay_request()).await.unwrap();
        assert!(locker.inspect(KEY).await.unwrap().is_some());
        drop(response);
        assert!(locker.inspect(KEY).await.unwrap().is_none());
    }

    /// Whether another task could take `key` now; a lock it takes is released at once.
    async fn free_elsewhere(locker: &Locker, key: &str) -> bool {
        let (locker, key) = (locker.clone(), key.to_owned());
        let guard = tokio::spawn(async move { locker.try_lock(key).await })
            .await
            .unwrap()
            .unwrap();
        guard.is_some()
    }

    #[tokio::test]
    async fn body_keeps_the_requests_own_hold_when_an_enclosing_scope_holds_another_key() {
        let locker = Locker::in_memory();
        let (svc, _chunks) = streaming(layer(&locker).hold_until_body_end());
        // The request re-enters the enclosing hold on its key, under an innermost hold on
        // another key.
        let response = locker
            .lock(KEY)
            .run(locker.lock("audit").run(svc.oneshot(pay_request())))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let body = response.into_body();
        assert!(body.holds_lock());
        assert!(
            free_elsewhere(&locker, "audit").await,
            "the body keeps `audit`"
        );
        assert!(
            !free_elsewhere(&locker, KEY).await,
            "the body lets {KEY} go"
        );
        drop(body);
        assert!(free_elsewhere(&locker, KEY).await);
    }

    struct Job {
        account: u64,
    }

    fn worker(
        locker: &Locker,
    ) -> impl Service<Job, Response = u64, Error = BoxError, Future: Send> {
        let layer = LockLayer::new(|job: &Job| Some(format!("account:{}", job.account)))
            .locker(locker.clone())
            .wait(Duration::from_millis(20))
            .on_reject(ErrorRejection::new());
        ServiceBuilder::new()
            .layer(layer)
            .service_fn(|job: Job| async move {
                match job.account {
                    0 => Err("no account 0"),
                    account => Ok(account * 2),
                }
            })
    }

    #[tokio::test]
    async fn error_rejection_serves_requests_that_are_not_http() {
        let locker = Locker::in_memory();
        assert_eq!(
            worker(&locker).oneshot(Job { account: 21 }).await.unwrap(),
            42
        );
        let error = worker(&locker)
            .oneshot(Job { account: 0 })
            .await
            .unwrap_err();
        assert_eq!(error.to_string(), "no account 0");
    }

    #[tokio::test]
    async fn error_rejection_fails_with_the_lock_error() {
        let locker = Locker::in_memory();
        let _held = hold_elsewhere(&locker, "account:7", Duration::from_secs(5)).await;
        let error = worker(&locker)
            .oneshot(Job { account: 7 })
            .await
            .unwrap_err();
        let error = error.downcast_ref::<relock::Error>().unwrap();
        assert!(error.is_timeout(), "{error:?}");
    }

    #[cfg(feature = "tonic")]
    #[tokio::test]
    async fn grpc_rejection_answers_aborted() {
        let locker = Locker::in_memory();
        let _held = hold_elsewhere(&locker, KEY, Duration::from_secs(5)).await;
        let layer = LockLayer::new(key::metadata("x-order-id").prefix("order:"))
            .locker(locker.clone())
            .wait(Duration::from_millis(20))
            .on_reject(crate::GrpcRejection::new());
        let svc = ServiceBuilder::new()
            .layer(layer)
            .service_fn(|_: Request<String>| async { ok("never") });
        let response = svc.oneshot(pay_request()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["grpc-status"], "10");
    }

    #[test]
    fn layer_and_service_debug_name_their_parts() {
        let layer = layer(&Locker::in_memory()).wait(Duration::from_secs(1));
        let text = format!("{layer:?}");
        assert!(text.contains("relock_tower::key::Header"), "{text}");
        assert!(text.contains("DefaultRejection"), "{text}");
        let svc = tower_layer::Layer::layer(&layer, "inner");
        assert!(format!("{svc:?}").contains("\"inner\""));
        assert_eq!(*svc.get_ref(), "inner");
    }
}
