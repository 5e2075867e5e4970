//! The `hold` example against a private `redis-server`: it holds the lock for the time asked,
//! where another process sees it held, then releases it; its argument checks run here too.

use std::time::Duration;

use relock::LockKey;
use relock_tests::{run_bounded, unique_key, RedisServer};

// The example's own code, so that what `cargo run --example hold` does is what is tested.
#[allow(dead_code)]
#[path = "../examples/hold.rs"]
mod hold;

const TEST_LIMIT: Duration = Duration::from_secs(30);

fn args(key: &str, duration: Duration) -> hold::Args {
    hold::Args {
        key: LockKey::new(key).unwrap(),
        duration,
    }
}

#[test]
fn holds_the_lock_for_the_time_asked_then_releases_it() {
    run_bounded(TEST_LIMIT, || async {
        let server = RedisServer::start();
        let holder = server.locker().await;
        let observer = server.locker().await;
        let key = unique_key("hold");
        let args = args(&key, Duration::from_millis(1500));
        let mut out = Vec::new();

        let holding = hold::hold(&holder, &args, std::future::pending(), &mut out);
        let observing = async {
            // Until the hold starts, then well inside its time.
            while observer.inspect(&key).await.unwrap().is_none() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            let info = observer.inspect(&key).await.unwrap();
            assert!(info.is_some(), "`{key}` is free while hold holds it");
            assert!(observer.try_lock(&key).await.unwrap().is_none());
        };
        let started = std::time::Instant::now();
        let (held, ()) = tokio::join!(holding, observing);
        held.expect("hold fails");
        assert!(started.elapsed() >= Duration::from_millis(1500));
        assert!(observer.inspect(&key).await.unwrap().is_none());

        let out = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(
            lines[0].starts_with(&format!("holding `{key}` for 1.5s with fencing token ")),
            "{out}"
        );
        assert!(lines[0].ends_with("; Ctrl-C releases it now"), "{out}");
        assert_eq!(lines[1], format!("released `{key}`"));
    });
}

#[test]
fn stopping_releases_the_lock_before_the_time_is_up() {
    run_bounded(TEST_LIMIT, || async {
        let server = RedisServer::start();
        let holder = server.locker().await;
        let key = unique_key("hold-stop");
        let args = args(&key, Duration::from_secs(3600));
        let mut out = Vec::new();

        let stop = tokio::time::sleep(Duration::from_millis(200));
        hold::hold(&holder, &args, stop, &mut out)
            .await
            .expect("hold fails");
        let observer = server.locker().await;
        assert!(observer.inspect(&key).await.unwrap().is_none());
        assert!(String::from_utf8(out)
            .unwrap()
            .ends_with(&format!("released `{key}`\n")));
    });
}

#[test]
fn a_lock_held_elsewhere_past_the_wait_is_an_error() {
    run_bounded(TEST_LIMIT, || async {
        let server = RedisServer::start();
        let key = unique_key("hold-busy");
        let other = server.locker().await;
        let _held = other.lock(&key).await.unwrap();
        let holder = relock::Locker::builder()
            .url(server.url())
            .wait(Duration::from_millis(100))
            .build()
            .unwrap();
        let mut out = Vec::new();
        let err = hold::hold(
            &holder,
            &args(&key, Duration::from_secs(1)),
            std::future::pending(),
            &mut out,
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains(&key), "{err}");
        assert!(out.is_empty());
    });
}
