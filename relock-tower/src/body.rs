use std::fmt;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use relock::{LockGuard, Permit};

/// What a response body keeps until it ends: a share of a [`Lock`](crate::Lock) request's hold,
/// or a [`Limit`](crate::Limit) request's permit.
#[derive(Debug)]
// Kept only to be dropped: dropping it releases the hold or returns the permit.
#[allow(dead_code)]
pub(crate) enum Held {
    Lock(LockGuard),
    Permit(Permit),
}

pin_project! {
    /// The response body of a [`Lock`](crate::Lock) (or [`Limit`](crate::Limit)) service: the
    /// inner service's body, which keeps the request's lock (or permit) until it ends when
    /// [`LockLayer::hold_until_body_end`](crate::LockLayer::hold_until_body_end) (or
    /// [`LimitLayer::hold_until_body_end`](crate::LimitLayer::hold_until_body_end)) is set.
    ///
    /// The lock or permit is released when the body yields its last frame or an error, or is
    /// dropped (the client went away).
    pub struct LockBody<B> {
        #[pin]
        inner: B,
        held: Option<Held>,
    }
}

impl<B> LockBody<B> {
    pub(crate) fn new(inner: B, held: Option<Held>) -> Self {
        Self { inner, held }
    }

    /// Whether this body still holds the request's lock (or permit).
    pub fn holds_lock(&self) -> bool {
        self.held.is_some()
    }

    /// The inner body; the lock or permit, if this body held it, is released.
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
            // Dropping the last share of the hold (or the permit) releases it in the background.
            this.held.take();
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
            .field("held", &self.held)
            .finish()
    }
}
