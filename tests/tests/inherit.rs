//! Futures carried into spawned tasks: `relock::inherit_checked` stops one at its next poll once a
//! hold it carries is lost, as `run` stops its body, against a private Redis server.

// The run bodies hand out the spawned task's handle: the run ends, the task carries its scope on.
#![allow(clippy::async_yields_async)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use relock::{Error, Locker};
use relock_tests::{bounded, unique_key, RedisServer};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A hung lock operation fails its test instead of stalling the run.
const TEST_LIMIT: Duration = Duration::from_secs(30);

/// A spawned task, carrying the scope of a `run` on `key`, that takes one step per message on
/// `go`: the steps it took are counted in `steps`, and the first is taken before this returns.
async fn spawn_stepper(
    locker: &Locker,
    key: &str,
    steps: Arc<AtomicUsize>,
) -> (JoinHandle<Result<(), Error>>, mpsc::UnboundedSender<()>) {
    let (go, mut next) = mpsc::unbounded_channel::<()>();
    let (stepped, mut first) = mpsc::unbounded_channel::<()>();
    let task = locker
        .lock(key)
        .run(async {
            tokio::spawn(relock::inherit_checked(async move {
                while next.recv().await.is_some() {
                    steps.fetch_add(1, Ordering::SeqCst);
                    let _ = stepped.send(());
                }
            }))
        })
        .await
        .expect("run");
    go.send(()).expect("the task is running");
    first.recv().await.expect("the task took its first step");
    (task, go)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_future_carried_by_inherit_checked_takes_no_step_after_a_force_release() {
    bounded(TEST_LIMIT, async {
        let server = RedisServer::start();
        let locker = server.locker().await;
        let key = unique_key("inherit-force");
        let steps = Arc::new(AtomicUsize::new(0));
        let (task, go) = spawn_stepper(&locker, &key, steps.clone()).await;
        // The run is over, but the spawned task still carries the hold.
        assert!(locker.inspect(&key).await.unwrap().is_some());

        assert!(locker.force_release(&key).await.expect("force_release"));
        // Woken to take a step on a hold that is gone: it must not.
        let _ = go.send(());
        let stopped = task.await.expect("the task panicked");
        assert!(
            matches!(&stopped, Err(Error::Lost { key: lost }) if *lost == key),
            "{stopped:?}"
        );
        assert_eq!(steps.load(Ordering::SeqCst), 1, "a step after the loss");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_future_carried_by_inherit_checked_stops_when_a_renewal_finds_the_hold_gone() {
    bounded(TEST_LIMIT, async {
        let server = RedisServer::start();
        let lease = Duration::from_millis(600);
        let locker = Locker::builder()
            .url(server.url())
            .lease(lease)
            .build()
            .expect("build");
        let other = server.locker().await;
        let key = unique_key("inherit-renewal");
        let steps = Arc::new(AtomicUsize::new(0));
        let (mut task, go) = spawn_stepper(&locker, &key, steps.clone()).await;

        // Another process clears the lock: only the holder's next renewal (every lease/3) can
        // tell, and the task, waiting for its next message, is stopped then without one.
        assert!(other.force_release(&key).await.expect("force_release"));
        let stopped = tokio::time::timeout(lease * 2, &mut task)
            .await
            .expect("the task was not stopped within two leases")
            .expect("the task panicked");
        assert!(
            matches!(&stopped, Err(Error::Lost { key: lost }) if *lost == key),
            "{stopped:?}"
        );
        assert!(go.send(()).is_err(), "the stopped future kept its receiver");
        assert_eq!(steps.load(Ordering::SeqCst), 1, "a step after the loss");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_future_carried_by_inherit_checked_ends_normally_while_the_hold_lasts() {
    bounded(TEST_LIMIT, async {
        let server = RedisServer::start();
        let locker = server.locker().await;
        let key = unique_key("inherit-done");
        let inner = locker.clone();
        let task = locker
            .lock(&key)
            .run(async {
                tokio::spawn(relock::inherit_checked({
                    let key = key.clone();
                    async move {
                        let guard = inner.lock(&key).await?;
                        assert!(guard.is_reentrant());
                        Ok::<_, Error>(guard.fencing_token())
                    }
                }))
            })
            .await
            .expect("run");
        let token = task
            .await
            .expect("the task panicked")
            .expect("the hold was not lost")
            .expect("re-entered");
        assert!(token > 0);
        // The last carrier is done: the lock is free again.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while locker.inspect(&key).await.unwrap().is_some() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "still held by nobody"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}
