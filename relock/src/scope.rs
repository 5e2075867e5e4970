//! Ownership scopes: a task-local frame that carries the locker in force and the holds taken by
//! this frame and its ancestors, so nested code re-enters them. Re-entry is decided here, never
//! at the server: every hold there has its own token.

use std::future::Future;
use std::sync::Arc;

use crate::guard::{Hold, LockGuard};
use crate::key::LockKey;
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

    /// Polls `fut` inside this frame.
    pub(crate) async fn enter<F: Future>(self, fut: F) -> F::Output {
        FRAME.scope(self, fut).await
    }
}

/// Carries the current scope into a future that will run elsewhere, typically one passed to
/// `tokio::spawn` (which does not inherit task-locals).
///
/// Inside the returned future, locks the scope holds re-enter without a round trip. The holds carried stay held until every future carrying them
/// is done: the scope that took them may finish first, and the last carrier releases them.
/// Outside any scope, the future is returned unchanged.
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
