use std::fmt;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use relock::LockGuard;

pin_project! {
    /// The response body of a [`Lock`](crate::Lock) (or [`Limit`](crate::Limit)) service: the
    /// inner service's body, which
    /// keeps the request's lock until it ends when
    /// [`LockLayer::hold_until_body_end`](crate::LockLayer::hold_until_body_end) is set.
    ///
    /// The lock is released when the body yields its last frame or an error, or is dropped
    /// (the client went away).
    pub struct LockBody<B> {
        #[pin]
        inner: B,
        guard: Option<LockGuard>,
    }
}

impl<B> LockBody<B> {
    pub(crate) fn new(inner: B, guard: Option<LockGuard>) -> Self {
        Self { inner, guard }
    }

    /// Whether this body still holds the request's lock.
    pub fn holds_lock(&self) -> bool {
        self.guard.is_some()
    }

    /// The inner body; the lock, if this body held it, is released.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: Body> Body for LockBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if !matches!(frame, Some(Ok(_))) {
            // Dropping the last share of the hold releases the lock in the background.
            this.guard.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: fmt::Debug> fmt::Debug for LockBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockBody")
            .field("inner", &self.inner)
            .field("guard", &self.guard)
            .finish()
    }
}
