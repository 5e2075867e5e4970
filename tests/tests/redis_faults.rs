//! What a caller sees when the Redis server is not there, never answers, or comes back: an
//! `Error::Backend` within the connect/response timeouts, never a hang, and a working locker again
//! once the server is back.

use std::future::{Future, IntoFuture};
use std::io::Read;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use relock::{Error, Locker};
use relock_tests::run_bounded;
use relock_tests::{free_port, unique_key, RedisServer};

/// The locker's default connect (and response) timeout: `Locker::connect` "fails with
/// `Error::Backend` within the connect timeout (2 s)", and the failure contract promises the same
/// for an acquisition while Redis is unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Added to documented bounds on a slow, shared machine.
const SLACK: Duration = Duration::from_secs(1);
/// An operation still pending after this hangs.
const BOUND: Duration = Duration::from_secs(15);
/// A test still running after this hangs, in relock or in its background tasks.
const TEST_LIMIT: Duration = Duration::from_secs(60);

/// Awaits `operation`, failing the test unless it fails with `Error::Backend` within the connect
/// timeout (and a hang after [`BOUND`] is reported as one).
async fn assert_backend_error<T: std::fmt::Debug>(
    what: &str,
    operation: impl Future<Output = Result<T, Error>>,
) {
    let started = Instant::now();
    let result = tokio::time::timeout(BOUND, operation)
        .await
        .unwrap_or_else(|_| panic!("{what} hung for {BOUND:?} instead of failing"));
    let elapsed = started.elapsed();
    assert!(
        matches!(result, Err(Error::Backend(_))),
        "{what}: expected Error::Backend, got {result:?}"
    );
    assert!(
        elapsed < CONNECT_TIMEOUT + SLACK,
        "{what} failed with a backend error only after {elapsed:?}, beyond the {CONNECT_TIMEOUT:?} \
         connect timeout"
    );
}

fn closed_port_url() -> String {
    format!("redis://127.0.0.1:{}", free_port())
}

/// A TCP server that accepts connections and never answers, like a hung Redis.
fn silent_server() -> String {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let port = listener.local_addr().expect("local address").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut sink = [0u8; 1024];
                while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
            });
        }
    });
    format!("redis://127.0.0.1:{port}")
}

#[test]
fn connect_to_a_closed_port_fails_with_a_backend_error() {
    run_bounded(TEST_LIMIT, || async {
        assert_backend_error("Locker::connect", Locker::connect(&closed_port_url())).await;
    });
}

#[test]
fn every_operation_on_a_closed_port_fails_with_a_backend_error() {
    run_bounded(TEST_LIMIT, || async {
        let locker = Locker::builder()
            .url(closed_port_url())
            .build()
            .expect("building is lazy and needs no server");
        let key = unique_key("closed");
        assert_backend_error("lock", locker.lock(&key).into_future()).await;
        assert_backend_error("try_lock", locker.try_lock(&key)).await;
        let ran = AtomicBool::new(false);
        assert_backend_error(
            "run",
            locker
                .lock(&key)
                .run(async { ran.store(true, Ordering::SeqCst) }),
        )
        .await;
        assert!(
            !ran.load(Ordering::SeqCst),
            "run ran its body without the lock"
        );
        assert_backend_error("inspect", locker.inspect(&key)).await;
        assert_backend_error("force_release", locker.force_release(&key)).await;
    });
}

#[test]
fn connect_to_a_server_that_never_answers_fails_with_a_backend_error() {
    run_bounded(TEST_LIMIT, || async {
        assert_backend_error("Locker::connect", Locker::connect(&silent_server())).await;
    });
}

#[test]
fn lock_on_a_server_that_never_answers_fails_with_a_backend_error() {
    run_bounded(TEST_LIMIT, || async {
        let locker = Locker::builder()
            .url(silent_server())
            .build()
            .expect("building is lazy and needs no server");
        let key = unique_key("silent");
        assert_backend_error("lock", locker.lock(&key).into_future()).await;
        assert_backend_error("try_lock", locker.try_lock(&key)).await;
    });
}

#[test]
fn a_killed_server_fails_requests_and_a_restarted_one_serves_them_again() {
    run_bounded(TEST_LIMIT, || async {
        let mut server = RedisServer::start();
        let locker = Locker::connect(&server.url()).await.expect("connect");
        let key = unique_key("restart");
        let guard = locker.lock(&key).await.expect("lock");
        guard.release().await.expect("release");

        server.kill();
        assert_backend_error(
            "lock while the server is down",
            locker.lock(&key).into_future(),
        )
        .await;

        server.restart();
        let deadline = Instant::now() + BOUND;
        let guard = loop {
            match locker.lock(&key).await {
                Ok(guard) => break guard,
                Err(err) if err.is_backend() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(err) => panic!("the locker did not recover after the restart: {err}"),
            }
        };
        assert!(guard.is_held());
        guard.release().await.expect("release after the restart");
    });
}

#[test]
fn a_hold_is_lost_by_its_local_deadline_when_the_server_dies() {
    run_bounded(TEST_LIMIT, || async {
        let lease = Duration::from_millis(600);
        let mut server = RedisServer::start();
        let locker = Locker::connect(&server.url()).await.expect("connect");
        let guard = locker
            .lock(unique_key("server-dies"))
            .lease(lease)
            .await
            .expect("lock");
        let taken = Instant::now();
        server.kill();
        tokio::time::timeout(lease + BOUND, guard.lost())
            .await
            .expect("lost() never resolved although the server is gone");
        let elapsed = taken.elapsed();
        assert!(
            elapsed < lease + Duration::from_secs(5),
            "lost() resolved {elapsed:?} after the lock was taken, lease {lease:?}"
        );
        assert!(!guard.is_held());
        let released = tokio::time::timeout(BOUND, guard.release())
            .await
            .expect("release hung with the server gone");
        assert!(released.is_err(), "release of a lost hold returned Ok");
    });
}

#[test]
fn run_aborts_its_body_when_the_server_dies() {
    run_bounded(TEST_LIMIT, || async {
        let lease = Duration::from_millis(600);
        let mut server = RedisServer::start();
        let locker = Locker::connect(&server.url()).await.expect("connect");
        let finished = AtomicBool::new(false);
        let (entered_tx, entered_rx) = tokio::sync::oneshot::channel();
        let started = Instant::now();
        let (result, ()) = tokio::join!(
            tokio::time::timeout(
                BOUND,
                locker
                    .lock(unique_key("server-dies-run"))
                    .lease(lease)
                    .run(async {
                        let _ = entered_tx.send(());
                        tokio::time::sleep(BOUND).await;
                        finished.store(true, Ordering::SeqCst);
                    }),
            ),
            async {
                entered_rx.await.expect("the body started");
                server.kill();
            },
        );
        let result = result.expect("run was not aborted when its hold was lost");
        assert!(
            matches!(result, Err(Error::Lost { .. })),
            "expected Error::Lost, got {result:?}"
        );
        assert!(!finished.load(Ordering::SeqCst));
        assert!(started.elapsed() < lease + Duration::from_secs(5));
    });
}
