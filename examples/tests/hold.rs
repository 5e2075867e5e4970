//! The `hold` example against a private `redis-server`: it holds the locks for the time asked,
//! where another locker sees them held, then releases them; its argument checks run here too.

use std::time::Duration;

use relock::LockKey;
use relock_tests::{run_bounded, unique_key, RedisServer};

// The example's own code, so that what `cargo run --example hold` does is what is tested.
#[allow(dead_code)]
#[path = "../examples/hold.rs"]
mod hold;

const TEST_LIMIT: Duration = Duration::from_secs(30);

fn args(keys: &[&str], duration: Duration) -> hold::Args {
    hold::Args {
        keys: keys.iter().map(|key| LockKey::new(key).unwrap()).collect(),
        duration,
        duration_text: format!("{duration:?}"),
    }
}

#[test]
fn holds_the_locks_for_the_time_asked_then_releases_them() {
    run_bounded(TEST_LIMIT, || async {
        let server = RedisServer::start();
        let holder = server.locker().await;
        let observer = server.locker().await;
        let first = unique_key("hold");
        let second = unique_key("hold-too");
        let args = args(&[&first, &second], Duration::from_millis(1500));
        let mut out = Vec::new();

        let holding = hold::hold(&holder, &args, std::future::pending(), &mut out);
        let observing = async {
            // Until both holds start, then well inside their time.
            while observer.inspect(&second).await.unwrap().is_none() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            for key in [&first, &second] {
                let info = observer.inspect(key).await.unwrap();
                assert!(info.is_some(), "`{key}` is free while hold holds it");
                assert!(observer.try_lock(key).await.unwrap().is_none());
            }
        };
        let started = std::time::Instant::now();
        let (held, ()) = tokio::join!(holding, observing);
        held.expect("hold fails");
        assert!(started.elapsed() >= Duration::from_millis(1500));
        for key in [&first, &second] {
            assert!(observer.inspect(key).await.unwrap().is_none());
        }

        let out = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 5, "{out}");
        assert!(
            lines[0].starts_with(&format!("holding `{first}` with fencing token ")),
            "{out}"
        );
        assert!(
            lines[1].starts_with(&format!("holding `{second}` with fencing token ")),
            "{out}"
        );
        assert_eq!(lines[2], "for 1.5s; Ctrl-C releases now");
        assert_eq!(lines[3], format!("released `{first}`"));
        assert_eq!(lines[4], format!("released `{second}`"));
    });
}

#[test]
fn stopping_releases_the_lock_before_the_time_is_up() {
    run_bounded(TEST_LIMIT, || async {
        let server = RedisServer::start();
        let holder = server.locker().await;
        let key = unique_key("hold-stop");
        let args = args(&[&key], Duration::from_secs(3600));
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
            &args(&[&key], Duration::from_secs(1)),
            std::future::pending(),
            &mut out,
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains(&key), "{err}");
        assert!(out.is_empty());
    });
}
