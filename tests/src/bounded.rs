//! Time limits on test bodies: a hung lock operation (or background task) fails its test instead
//! of stalling the run.

use std::future::Future;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

/// Awaits `test`, and fails the test when it has not finished within `limit`.
///
/// This runs inside the test's runtime, so it cannot catch a worker thread blocked for good;
/// [`run_bounded`] can.
pub async fn bounded<F: Future>(limit: Duration, test: F) -> F::Output {
    tokio::time::timeout(limit, test)
        .await
        .unwrap_or_else(|_| panic!("the test did not finish within {limit:?}"))
}

/// Runs `test` on a runtime of its own — multi-threaded, two workers, as
/// `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]` builds — and fails the test when
/// the body, or the runtime's shutdown, has not finished within `limit`.
///
/// A timeout inside the runtime cannot catch a worker thread blocked for good (a deadlocked
/// mutex in a background task): the test would hang instead of failing.
pub fn run_bounded<F, Fut>(limit: Duration, test: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let name = std::thread::current().name().unwrap_or("test").to_owned();
    let (done_tx, done_rx) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("build the test's runtime");
            runtime.block_on(test());
            drop(runtime);
            let _ = done_tx.send(());
        })
        .expect("spawn the test's thread");
    match done_rx.recv_timeout(limit) {
        Ok(()) => thread.join().expect("the test's thread"),
        Err(RecvTimeoutError::Disconnected) => {
            if let Err(panic) = thread.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(RecvTimeoutError::Timeout) => panic!(
            "{name} did not finish within {limit:?}: a lock operation, or one of relock's \
             background tasks, hangs (the body or the runtime's shutdown never completed)"
        ),
    }
}
