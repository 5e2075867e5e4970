//! The response future of [`Lock`](crate::Lock).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use crate::body::{Held, LockBody};
use crate::reject::{ErrorRejection, Reject};
use crate::BoxError;
use http::Response;
use pin_project_lite::pin_project;

/// The lock (or permit) taken, the inner service called, the lock released: the inner output,
/// and a share of the hold (or the permit) for the response body when asked for.
pub(crate) type Locked<T> =
    Pin<Box<dyn Future<Output = Result<(T, Option<Held>), relock::Error>> + Send>>;

pin_project! {
    /// Response future of [`Lock`](crate::Lock): waits for the lock, then for the inner
    /// service's response. Dropping it releases the lock.
    pub struct ResponseFuture<F: Future, R> {
        #[pin]
        state: State<F>,
        reject: R,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F: Future> {
        // No key: the inner future, untouched.
        Unlocked {
            #[pin]
            future: F,
        },
        // Taking the lock, then running the inner future inside its scope.
        Locked {
            future: Locked<F::Output>,
        },
        // The lock could not even be asked for: no locker, or an invalid key.
        Rejected {
            error: Option<relock::Error>,
        },
    }
}

impl<F: Future, R> ResponseFuture<F, R> {
    pub(crate) fn unlocked(future: F, reject: R) -> Self {
        Self {
            state: State::Unlocked { future },
            reject,
        }
    }

    pub(crate) fn locked(future: Locked<F::Output>, reject: R) -> Self {
        Self {
            state: State::Locked { future },
            reject,
        }
    }

    pub(crate) fn rejected(error: relock::Error, reject: R) -> Self {
        Self {
            state: State::Rejected { error: Some(error) },
            reject,
        }
    }
}

/// What became of a request that had a key.
enum Outcome<T> {
    Done(T),
    Rejected(relock::Error),
}

impl<F: Future> State<F> {
    /// Polls to the end; `guard` is set only for an output produced under the lock.
    fn poll_outcome(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<(Outcome<F::Output>, Option<Held>)> {
        match self.project() {
            StateProj::Unlocked { future } => future.poll(cx).map(|out| (Outcome::Done(out), None)),
            StateProj::Locked { future } => Poll::Ready(match ready!(future.as_mut().poll(cx)) {
                Ok((output, guard)) => (Outcome::Done(output), guard),
                Err(error) => (rejected(error), None),
            }),
            StateProj::Rejected { error } => {
                let error = error
                    .take()
                    .expect("ResponseFuture polled after completion");
                Poll::Ready((rejected(error), None))
            }
        }
    }
}

fn rejected<T>(error: relock::Error) -> Outcome<T> {
    if error.is_timeout() {
        tracing::debug!(%error, "lock not obtained; rejecting the request");
    } else {
        tracing::warn!(%error, "lock not obtained; rejecting the request");
    }
    Outcome::Rejected(error)
}

impl<F, R, B, E> Future for ResponseFuture<F, R>
where
    F: Future<Output = Result<Response<B>, E>>,
    R: Reject<Response<B>>,
{
    type Output = Result<Response<LockBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let (outcome, guard) = ready!(this.state.poll_outcome(cx));
        Poll::Ready(match outcome {
            Outcome::Done(output) => output.map(|res| res.map(|body| LockBody::new(body, guard))),
            Outcome::Rejected(error) => Ok(this
                .reject
                .reject(&error)
                .map(|body| LockBody::new(body, None))),
        })
    }
}

impl<F, T, E> Future for ResponseFuture<F, ErrorRejection>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (outcome, _) = ready!(self.project().state.poll_outcome(cx));
        Poll::Ready(match outcome {
            Outcome::Done(output) => output.map_err(Into::into),
            Outcome::Rejected(error) => Err(error.into()),
        })
    }
}

impl<F: Future, R> fmt::Debug for ResponseFuture<F, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Unlocked { .. } => "unlocked",
            State::Locked { .. } => "locked",
            State::Rejected { .. } => "rejected",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}
