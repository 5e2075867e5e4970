use std::any::type_name;
use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use relock::{IntoLockKey, LockKey, Locker};
use tower_service::Service;
use tracing::field::{debug, Empty};
use tracing::Instrument;

use super::layer::Config;
use crate::body::{Held, LockBody};
use crate::extract::ExtractKey;
use crate::lock::future::{Locked, ResponseFuture};
use crate::reject::{ErrorRejection, LimitRejection, Reject};
use crate::BoxError;

/// Lets at most `permits` requests per key run at once, across every process.
///
/// Made by [`LimitLayer`](crate::LimitLayer). `poll_ready` is the inner service's (a request
/// never holds a permit while waiting for readiness); `call` extracts the key, swaps the ready
/// inner service for a clone, and returns a future that takes one of the key's permits, calls
/// the ready service, and returns the permit when the response is ready (or, with
/// [`LimitLayer::hold_until_body_end`](crate::LimitLayer::hold_until_body_end), when its body
/// ends).
#[derive(Clone)]
pub struct Limit<S, X, R = LimitRejection> {
    inner: S,
    extract: X,
    reject: R,
    config: Config,
}

impl<S, X, R> Limit<S, X, R> {
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

    /// Starts a request: through at once without a key, else into the limit.
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
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        let limited = permit(&self.config, locker, key, ready, request, hold_body);
        ResponseFuture::locked(limited, reject)
    }
}

/// Takes a permit, calls `service`, returns the permit; with `hold_body`, the permit comes out
/// beside a successful response instead, for its body. The call is dropped and the request
/// rejected with [`relock::Error::Lost`] if the permit is lost meanwhile (its lease ended:
/// another request may have taken it), as [`LockLayer`](crate::LockLayer) does by default.
fn permit<S, Req>(
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
    let span = tracing::debug_span!("limit", key = %key, waited = Empty, fencing_token = Empty);
    let started = std::time::Instant::now();
    let mut acquire = locker.semaphore(&key, config.permits).acquire();
    if let Some(wait) = config.wait {
        acquire = acquire.wait(wait);
    }
    if let Some(lease) = config.lease {
        acquire = acquire.lease(lease);
    }
    let fields = span.clone();
    Box::pin(
        async move {
            let permit = acquire.await?;
            fields.record("waited", debug(started.elapsed()));
            fields.record("fencing_token", permit.fencing_token());
            let output = {
                let mut call = pin!(service.call(request));
                let mut lost = pin!(permit.lost());
                std::future::poll_fn(|cx| {
                    // Checked by the clock before every poll, as `run` does.
                    if !permit.is_held() {
                        return Poll::Ready(None);
                    }
                    if let Poll::Ready(output) = call.as_mut().poll(cx) {
                        return Poll::Ready(Some(output));
                    }
                    lost.as_mut().poll(cx).map(|()| None)
                })
                .await
            };
            match output {
                Some(output) if hold_body && output.is_ok() => {
                    Ok((output, Some(Held::Permit(permit))))
                }
                Some(output) => {
                    permit.release().await?;
                    Ok((output, None))
                }
                None => Err(relock::Error::Lost {
                    key: key.to_string(),
                }),
            }
        }
        .instrument(span),
    )
}

impl<S, X, R, ReqBody, ResBody> Service<Request<ReqBody>> for Limit<S, X, R>
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

impl<S, X, Req> Service<Req> for Limit<S, X, ErrorRejection>
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

impl<S: fmt::Debug, X, R> fmt::Debug for Limit<S, X, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limit")
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
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use http::header::RETRY_AFTER;
    use http::StatusCode;
    use tokio::sync::Notify;
    use tower::{ServiceBuilder, ServiceExt};

    use super::*;
    use crate::{key, LimitLayer};

    fn export(tenant: &str) -> Request<String> {
        Request::post("/exports")
            .header("x-tenant", tenant)
            .body(String::new())
            .unwrap()
    }

    fn layer(locker: &Locker, permits: u32) -> LimitLayer<key::Header> {
        LimitLayer::new(key::header("x-tenant").prefix("tenant:"), permits)
            .locker(locker.clone())
            .wait(Duration::from_millis(100))
    }

    /// A service whose calls run until `release` is notified, counting those in flight.
    fn parked(
        inside: Arc<AtomicUsize>,
        most: Arc<AtomicUsize>,
        release: Arc<Notify>,
    ) -> impl Service<
        Request<String>,
        Response = Response<String>,
        Error = Infallible,
        Future = impl Future<Output = Result<Response<String>, Infallible>> + Send,
    > + Clone
           + Send
           + 'static {
        tower::service_fn(move |_: Request<String>| {
            let (inside, most, release) = (inside.clone(), most.clone(), release.clone());
            async move {
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                release.notified().await;
                inside.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, Infallible>(Response::new("done".to_owned()))
            }
        })
    }

    #[tokio::test]
    async fn over_the_limit_a_request_gets_429_with_retry_after() {
        let locker = Locker::in_memory();
        let (inside, most, release) = Default::default();
        let svc = ServiceBuilder::new()
            .layer(layer(&locker, 2))
            .service(parked(
                Arc::clone(&inside),
                Arc::clone(&most),
                Arc::clone(&release),
            ));
        let first = tokio::spawn(svc.clone().oneshot(export("9")));
        let second = tokio::spawn(svc.clone().oneshot(export("9")));
        while inside.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let third = svc.clone().oneshot(export("9")).await.unwrap();
        assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry: u64 = third.headers()[RETRY_AFTER]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(retry >= 1, "{retry}");
        // Another tenant has permits of its own.
        let other = tokio::spawn(svc.clone().oneshot(export("10")));
        while inside.load(Ordering::SeqCst) < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        release.notify_waiters();
        for response in [first, second, other] {
            assert_eq!(response.await.unwrap().unwrap().status(), StatusCode::OK);
        }
        assert_eq!(most.load(Ordering::SeqCst), 3);
        assert!(
            locker.inspect("tenant:9").await.unwrap().is_none(),
            "permits returned"
        );
    }

    #[tokio::test]
    async fn a_waiting_request_gets_a_permit_when_one_is_returned() {
        let locker = Locker::in_memory();
        let (inside, most, release) = Default::default();
        let svc = ServiceBuilder::new()
            .layer(layer(&locker, 1).wait(Duration::from_secs(5)))
            .service(parked(
                Arc::clone(&inside),
                Arc::clone(&most),
                Arc::clone(&release),
            ));
        let first = tokio::spawn(svc.clone().oneshot(export("9")));
        while inside.load(Ordering::SeqCst) < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let second = tokio::spawn(svc.clone().oneshot(export("9")));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(inside.load(Ordering::SeqCst), 1, "the second waits");
        release.notify_waiters();
        assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::OK);
        while inside.load(Ordering::SeqCst) < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        release.notify_waiters();
        assert_eq!(second.await.unwrap().unwrap().status(), StatusCode::OK);
        assert_eq!(most.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_request_without_a_key_is_not_limited() {
        let locker = Locker::in_memory();
        let svc =
            ServiceBuilder::new()
                .layer(layer(&locker, 0))
                .service_fn(|_: Request<String>| async {
                    Ok::<_, Infallible>(Response::new("through".to_owned()))
                });
        let request = Request::post("/exports").body(String::new()).unwrap();
        assert_eq!(
            svc.clone().oneshot(request).await.unwrap().status(),
            StatusCode::OK
        );
        let limited = svc.oneshot(export("9")).await.unwrap();
        assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS, "0 permits");
    }

    #[tokio::test]
    async fn disagreeing_on_permits_is_a_server_error() {
        let locker = Locker::in_memory();
        let held = locker.semaphore("tenant:9", 3).acquire().await.unwrap();
        let svc =
            ServiceBuilder::new()
                .layer(layer(&locker, 2))
                .service_fn(|_: Request<String>| async {
                    Ok::<_, Infallible>(Response::new(String::new()))
                });
        let response = svc.oneshot(export("9")).await.unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        held.release().await.unwrap();
    }
}
