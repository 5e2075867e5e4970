//! Ownership scopes: a task-local frame that carries the locker in force and the holds taken by
//! this frame and its ancestors, so nested code re-enters them. Re-entry is decided here, never
//! at the server: every hold there has its own token.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;

use crate::error::Error;
use crate::guard::{Hold, LockGuard};
use crate::key::LockKey;
use crate::lease::{self, Lease};
use crate::locker::Locker;

tokio::task_local! {
    static FRAME: Frame;
}

/// One frame: immutable once built; children extend it by pointing at its list of holds.
#[derive(Clone)]
pub(crate) struct Frame {
    pub(crate) locker: Locker,
    holds: Option<Arc<Node>>,
}

/// A persistent list: children share their ancestors' tail, so opening a frame costs one node.
struct Node {
    hold: Arc<Hold>,
    parent: Option<Arc<Node>>,
}

impl Frame {
    /// The current task's frame, if the code runs inside one.
    pub(crate) fn current() -> Option<Frame> {
        FRAME.try_with(Frame::clone).ok()
    }

    /// The hold on `key` through `locker` that this frame or an ancestor has.
    pub(crate) fn find(locker: &Locker, key: &LockKey) -> Option<Arc<Hold>> {
        FRAME
            .try_with(|frame| {
                let mut node = frame.holds.as_deref();
                while let Some(current) = node {
                    if current.hold.key() == key && current.hold.locker.same_as(locker) {
                        return Some(current.hold.clone());
                    }
                    node = current.parent.as_deref();
                }
                None
            })
            .ok()
            .flatten()
    }

    /// The locker of the current frame.
    pub(crate) fn locker() -> Option<Locker> {
        FRAME.try_with(|frame| frame.locker.clone()).ok()
    }

    /// The innermost hold of the current frame.
    fn innermost() -> Option<Arc<Hold>> {
        FRAME
            .try_with(|frame| frame.holds.as_ref().map(|node| node.hold.clone()))
            .ok()
            .flatten()
    }

    /// A child of the current frame (or a root frame) that adds `holds`.
    pub(crate) fn child(holds: impl IntoIterator<Item = Arc<Hold>>) -> Option<Frame> {
        let mut frame = Frame::current();
        for hold in holds {
            let parent = frame.map(|frame| frame.holds).unwrap_or_default();
            frame = Some(Frame {
                locker: hold.locker.clone(),
                holds: Some(Arc::new(Node { hold, parent })),
            });
        }
        frame
    }

    /// The leases of every hold this frame carries, its ancestors' included.
    fn leases(&self) -> Vec<Arc<Lease>> {
        let mut leases = Vec::new();
        let mut node = self.holds.as_deref();
        while let Some(current) = node {
            leases.push(current.hold.lease.clone());
            node = current.parent.as_deref();
        }
        leases
    }

    /// Polls `fut` inside this frame.
    pub(crate) async fn enter<F: Future>(self, fut: F) -> F::Output {
        FRAME.scope(self, fut).await
    }
}

/// Carries the current scope into a future that will run elsewhere, typically one passed to
/// `tokio::spawn` (which does not inherit task-locals).
///
/// Inside the returned future, locks the scope holds re-enter without a round trip. The holds
/// carried stay held until every future carrying them is done: the scope that took them may
/// finish first, and the last carrier releases them. Outside any scope, the future is returned
/// unchanged.
///
/// **The future is not stopped when a hold it carries is lost.** Unlike the body of
/// [`Acquire::run`](crate::Acquire::run), it runs to completion after the lease has ended (the
/// lock may then have another owner), unless it checks [`current_guard`] or
/// [`LockGuard::is_held`] itself. Use [`inherit_checked`] to have it stopped at its next poll.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), relock::Error> {
/// let locker = relock::Locker::in_memory();
/// let inner = locker.clone();
/// locker
///     .lock("report:7")
///     .run(async move {
///         let task = tokio::spawn(relock::inherit(async move {
///             // The spawned task still sees the hold on report:7: no round trip, no deadlock.
///             let guard = inner.lock("report:7").await?;
///             assert!(guard.is_reentrant());
///             Ok::<_, relock::Error>(())
///         }));
///         task.await.expect("task panicked")
///     })
///     .await??;
/// # Ok(()) }
/// ```
pub fn inherit<F: Future>(fut: F) -> impl Future<Output = F::Output> {
    let frame = Frame::current();
    async move {
        match frame {
            Some(frame) => frame.enter(fut).await,
            None => fut.await,
        }
    }
}

/// [`inherit`], stopping the future once a hold it carries is lost: for work spawned under a
/// lock that must take no step after the lease has ended, as the body of
/// [`Acquire::run`](crate::Acquire::run) does not.
///
/// Before every poll of `fut`, each hold the scope carries — the holds of every enclosing `run`,
/// `#[locked]` and `LockLayer`, whatever their [`OnLost`](crate::OnLost) — is checked by its
/// local deadline and its loss notifications (a renewal that found it gone, a
/// [`force_release`](crate::Locker::force_release) through this locker). Once one is lost, `fut`
/// is dropped without being polled again and the output is [`Error::Lost`] naming the key;
/// otherwise it is `Ok` with `fut`'s output. A loss wakes the future, so a `fut` waiting on
/// something else is stopped at once, not at its next wake-up. As for `run`, steps already taken
/// within one poll are not undone: the fencing token is what lets a resource reject them.
///
/// Outside any scope, `fut` runs unchecked and its output comes back as `Ok`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), relock::Error> {
/// let locker = relock::Locker::in_memory();
/// let task = locker
///     .lock("report:7")
///     .run(async {
///         tokio::spawn(relock::inherit_checked(async {
///             // ... steps that must not outlive the lock on report:7 ...
///             std::future::pending::<()>().await
///         }))
///     })
///     .await?;
/// // The scope is done but the spawned task still carries the hold; an operator clears it.
/// locker.force_release("report:7").await?;
/// let stopped = task.await.expect("task panicked");
/// assert!(matches!(stopped, Err(relock::Error::Lost { key }) if key == "report:7"));
/// # Ok(()) }
/// ```
pub fn inherit_checked<F: Future>(fut: F) -> impl Future<Output = Result<F::Output, Error>> {
    let frame = Frame::current();
    let leases = frame.as_ref().map(Frame::leases).unwrap_or_default();
    async move {
        let body = async move {
            match frame {
                Some(frame) => frame.enter(fut).await,
                None => fut.await,
            }
        };
        lease::until_lost(&leases, pin!(body))
            .await
            .map_err(|key| Error::Lost {
                key: key.to_string(),
            })
    }
}

/// A re-entrant guard on the innermost lock the current scope holds, if any.
///
/// Lets code deep inside [`Acquire::run`](crate::Acquire::run) or `#[locked]` read the fencing
/// token or check [`is_held`](LockGuard::is_held) without being handed the guard — useful with
/// [`OnLost::Continue`](crate::OnLost::Continue), where the body decides what a loss means.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), relock::Error> {
/// let locker = relock::Locker::in_memory();
/// locker
///     .lock("ledger")
///     .run(async {
///         let guard = relock::current_guard().expect("inside run");
///         assert_eq!(guard.key(), "ledger");
///         assert!(guard.is_held());
///     })
///     .await?;
/// assert!(relock::current_guard().is_none());
/// # Ok(()) }
/// ```
pub fn current_guard() -> Option<LockGuard> {
    Frame::innermost().map(|hold| LockGuard {
        hold,
        reentrant: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn inherit_checked_outside_a_scope_runs_the_future_unchecked() {
        assert_eq!(inherit_checked(async { 7 }).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn inherit_checked_stops_on_the_loss_of_an_enclosing_scopes_hold() {
        let locker = Locker::in_memory();
        let (task, step) = locker
            .lock("outer")
            .run(async {
                locker
                    .lock("inner")
                    .run(async {
                        let (step, mut steps) = tokio::sync::mpsc::unbounded_channel::<()>();
                        let task = tokio::spawn(inherit_checked(async move {
                            steps.recv().await;
                            panic!("a step after the outer hold was lost");
                        }));
                        (task, step)
                    })
                    .await
                    .unwrap()
            })
            .await
            .unwrap();
        assert!(locker.force_release("outer").await.unwrap());
        let _ = step.send(());
        let stopped = task.await.unwrap();
        assert!(
            matches!(&stopped, Err(Error::Lost { key }) if key == "outer"),
            "{stopped:?}"
        );
    }
}
