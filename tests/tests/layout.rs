//! The one-key layout against a real `redis-server`: a hold's lease is a deadline in its value, a
//! release leaves a tombstone that keeps the fencing token and names the released hold, the key's
//! expiry is the retention, and a value relock did not write is never overwritten.
//!
//! Each test states the history it guards against: who held what, when.

use std::time::Duration;

use redis::AsyncCommands;
use relock::{Error, Locker};
use relock_tests::{run_bounded, unique_key, Proxy, RedisServer};

const LIMIT: Duration = Duration::from_secs(60);
const ZEROS: &str = "00000000000000000000000000000000";

fn lock_name(key: &str) -> String {
    format!("relock:{{{key}}}")
}

async fn value(connection: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<String> {
    connection
        .get(lock_name(key))
        .await
        .expect("GET the lock key")
}

async fn pttl(connection: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    connection
        .pttl(lock_name(key))
        .await
        .expect("PTTL the lock key")
}

/// The server's clock in microseconds, as the scripts read it.
async fn server_micros(connection: &mut redis::aio::MultiplexedConnection) -> u64 {
    let (seconds, micros): (u64, u64) = redis::cmd("TIME")
        .query_async(connection)
        .await
        .expect("TIME");
    seconds * 1_000_000 + micros
}

/// History: A holds k with a short lease and stops renewing (its process stalled); the lease's
/// deadline passes while the key itself lives on for the retention. B asks: B must get the lock at
/// once — the deadline, not the key's expiry, ends the lease — with a larger fencing token; and
/// A's late release must report the loss and leave B's hold alone.
#[test]
fn a_hold_past_its_deadline_is_taken_by_the_next_acquirer_with_a_larger_token() {
    run_bounded(LIMIT, || async {
        let server = RedisServer::start();
        let mut admin = server.connection().await;
        let key = unique_key("past-deadline");
        // A's hold as its acquisition wrote it, 1 ms before its deadline; the key kept for 10 min.
        let now_ms = server_micros(&mut admin).await / 1000;
        let a_token = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        let a_fence = now_ms * 1000;
        let _: () = redis::cmd("SET")
            .arg(lock_name(&key))
            .arg(format!(
                "{a_token} {a_fence} {} 1 1 stalled-host",
                now_ms + 1
            ))
            .arg("PX")
            .arg(600_000)
            .query_async(&mut admin)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;

        let b = server.locker().await;
        let guard = b
            .try_lock(&key)
            .await
            .expect("ask for the lock")
            .expect("a hold past its deadline is free: B must get the lock at once");
        assert!(
            guard.fencing_token() > a_fence,
            "B's token {} is not above A's {a_fence}",
            guard.fencing_token()
        );
        assert!(
            pttl(&mut admin, &key).await > 30_000,
            "B's grant set no retention"
        );

        // A's release arrives late: it must not touch B's hold.
        let released: i64 =
            redis::Script::new(include_str!("../../relock/src/scripts/release.lua"))
                .key(lock_name(&key))
                .key(format!("{}:released", lock_name(&key)))
                .arg(a_token)
                .arg(a_fence)
                .arg(600_000)
                .invoke_async(&mut admin)
                .await
                .unwrap();
        assert_eq!(released, 0, "A's late release claimed to free the lock");
        assert!(guard.is_held());
        let info = b
            .inspect(&key)
            .await
            .unwrap()
            .expect("B still holds the lock");
        assert_eq!(info.fencing_token, guard.fencing_token());
        guard.release().await.expect("B releases its own hold");
    });
}

/// History: A holds k with a lease of 3 s on a locker whose retention is only 1 s, renewing it.
/// If a grant or a renewal set the key's expiry to the retention alone, the key would vanish at
/// 1 s while A's lease runs, and B would take the lock beside A. The expiry must reach the deadline.
#[test]
fn a_lease_longer_than_the_retention_keeps_the_key_alive_to_its_deadline() {
    run_bounded(LIMIT, || async {
        let server = RedisServer::start();
        let mut admin = server.connection().await;
        let key = unique_key("long-lease");
        let a = Locker::builder()
            .url(server.url())
            .fence_retention(Duration::from_secs(1))
            .lease(Duration::from_secs(3))
            .build()
            .unwrap();
        let b = server.locker().await;
        let guard = a.lock(&key).await.unwrap();
        for _ in 0..6 {
            let ttl = pttl(&mut admin, &key).await;
            assert!(
                ttl > 1_500,
                "the key of a live 3 s lease expires in {ttl} ms"
            );
            assert!(
                b.try_lock(&key).await.unwrap().is_none(),
                "B took the lock while A's renewed lease ran"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(guard.is_held(), "A lost a lease it kept renewing");
        guard.release().await.unwrap();
        assert!(b.try_lock(&key).await.unwrap().is_some());
    });
}

/// History: holds of k are released, force-released, and the server restarts without
/// persistence; tombstones in between. Each grant's fencing token must be larger than every
/// earlier one: the tombstone carries the last token across releases and force-releases (even one
/// far ahead of the clock), and the clock carries it across the restart that loses the tombstone.
#[test]
fn tombstones_keep_fencing_tokens_increasing_across_releases_force_releases_and_a_restart() {
    run_bounded(LIMIT, || async {
        let mut server = RedisServer::start();
        let key = unique_key("tombstones");
        let mut tokens = Vec::new();
        {
            let locker = server.locker().await;
            let mut admin = server.connection().await;
            for round in 0..3 {
                let guard = locker.lock(&key).await.unwrap();
                tokens.push(guard.fencing_token());
                if round == 1 {
                    assert!(locker.force_release(&key).await.unwrap());
                    let err = guard.release().await.unwrap_err();
                    assert!(matches!(err, Error::Lost { .. }), "{err:?}");
                } else {
                    guard.release().await.unwrap();
                }
                let left = value(&mut admin, &key).await.expect("a tombstone stays");
                assert!(
                    left.starts_with(&format!("-{} ", tokens[round])),
                    "after round {round} the key holds `{left}`, not a tombstone with token {}",
                    tokens[round]
                );
            }
            // A tombstone ahead of the clock (a clock that stepped back): the next token follows
            // the tombstone, not the clock.
            let ahead = server_micros(&mut admin).await + 3_600_000_000;
            let _: () = redis::cmd("SET")
                .arg(lock_name(&key))
                .arg(format!("-{ahead} {ZEROS}"))
                .arg("PX")
                .arg(600_000)
                .query_async(&mut admin)
                .await
                .unwrap();
            let guard = locker.lock(&key).await.unwrap();
            assert_eq!(guard.fencing_token(), ahead + 1);
            tokens.push(ahead + 1);
            guard.release().await.unwrap();
        }
        // The restart loses the tombstone; the clock alone numbers the next grant. (The one
        // ahead of the clock is the documented exception: a clock step back that outlived its
        // tombstone.)
        let before_restart = tokens[2];
        server.restart();
        let locker = server.locker().await;
        let guard = locker.lock(&key).await.unwrap();
        assert!(
            guard.fencing_token() > before_restart,
            "after the restart the token {} is not above {before_restart}",
            guard.fencing_token()
        );
        for pair in tokens.windows(2) {
            assert!(
                pair[1] > pair[0],
                "fencing tokens went backwards: {tokens:?}"
            );
        }
        guard.release().await.unwrap();
    });
}

/// A locker whose every command goes through a bb8 pool behind a proxy that can delay the
/// requests of the connections open at a moment (the pool's shared one, warmed up), another
/// locker straight to the server, and an admin connection.
struct Delayed {
    server: RedisServer,
    proxy: Proxy,
    delayed: Locker,
    other: Locker,
    admin: redis::aio::MultiplexedConnection,
}

impl Delayed {
    async fn start() -> Delayed {
        let server = RedisServer::start();
        let proxy = Proxy::start(server.port()).await;
        let manager = relock::bb8_redis::RedisConnectionManager::new(proxy.url()).unwrap();
        let pool = relock::bb8::Pool::builder()
            .max_size(2)
            .build(manager)
            .await
            .unwrap();
        let delayed = Locker::builder()
            .pool(pool)
            .lease(Duration::from_secs(30))
            .build()
            .unwrap();
        // Warm the pool's shared connection and the scripts, on a key of its own.
        delayed
            .lock(unique_key("warm"))
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
        Delayed {
            other: server.locker().await,
            admin: server.connection().await,
            server,
            proxy,
            delayed,
        }
    }
}

/// Waits until `key` holds a tombstone (the background release of an acquisition whose answer
/// never came); fails if none is there `within` after `sent`.
async fn until_tombstone(
    admin: &mut redis::aio::MultiplexedConnection,
    key: &str,
    sent: tokio::time::Instant,
    within: Duration,
) {
    while !value(admin, key)
        .await
        .is_some_and(|left| left.starts_with('-'))
    {
        assert!(sent.elapsed() < within, "no background release");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until nobody holds `key`, as `other` inspects it; fails if it is still held `within`
/// after `sent`. Returns how long after `sent` it was free.
async fn until_free(
    other: &Locker,
    key: &str,
    sent: tokio::time::Instant,
    within: Duration,
) -> Duration {
    loop {
        if other.inspect(key).await.unwrap().is_none() {
            return sent.elapsed();
        }
        assert!(
            sent.elapsed() < within,
            "the lock granted to an acquisition nobody waits for is still held {:?} after \
             it was sent",
            sent.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// History: an acquisition is sent on a pooled connection whose path delays it by 2.5 s; the
/// client gives up after the connection's 500 ms response timeout (outcome unknown) and releases
/// its hold token in the background on a fresh connection, which reaches the server first. When
/// the delayed acquisition arrives, nothing may be granted: a grant then would be a lock nobody
/// releases, held for its whole lease. The tombstone of the released token refuses it.
#[test]
fn an_acquisition_delayed_past_its_own_release_leaves_nothing_held() {
    run_bounded(LIMIT, || async {
        let Delayed {
            server: _server,
            proxy,
            delayed,
            other,
            mut admin,
        } = Delayed::start().await;
        let key = unique_key("delayed-acquisition");

        proxy.delay_requests_of_open_connections(Duration::from_millis(2_500));
        let err = delayed
            .lock(&key)
            .wait(Duration::ZERO)
            .await
            .expect_err("the delayed acquisition's answer cannot come within the timeout");
        assert!(err.is_backend(), "{err:?}");

        // The background release reaches the server on a fresh connection well before the
        // delayed acquisition does; then the acquisition arrives.
        tokio::time::sleep(Duration::from_millis(4_000)).await;
        let left = value(&mut admin, &key).await;
        assert!(
            left.as_deref().is_none_or(|left| left.starts_with('-')),
            "the key holds `{left:?}` after the acquisition arrived behind its own release"
        );
        assert!(
            other.inspect(&key).await.unwrap().is_none(),
            "an acquisition that arrived after its own release holds the lock"
        );
        let guard = other
            .try_lock(&key)
            .await
            .unwrap()
            .expect("nobody may hold the lock after the late acquisition");
        guard.release().await.unwrap();
    });
}

/// History: as above, but between the background release (which leaves a tombstone naming the
/// abandoned hold) and the delayed acquisition's arrival, another owner takes the lock and
/// releases it: the tombstone now names that owner's hold, and the delayed acquisition would be
/// granted when it arrives, to nobody. The locker repeats the release of an acquisition whose
/// outcome was unknown (the repeat names the abandoned hold in the tombstone again, or releases
/// the grant if it slipped through), so the lock must be free within seconds, not held by nobody
/// for its 30 s lease.
#[test]
fn a_delayed_acquisition_granted_after_another_hold_came_and_went_is_released_again() {
    run_bounded(LIMIT, || async {
        let Delayed {
            server: _server,
            proxy,
            delayed,
            other,
            mut admin,
        } = Delayed::start().await;
        let key = unique_key("delayed-behind-another-hold");

        proxy.delay_requests_of_open_connections(Duration::from_millis(3_000));
        let sent = tokio::time::Instant::now();
        let err = delayed.lock(&key).wait(Duration::ZERO).await.unwrap_err();
        assert!(err.is_backend(), "{err:?}");
        // The background release's tombstone, then another owner's hold comes and goes.
        until_tombstone(&mut admin, &key, sent, Duration::from_millis(2_500)).await;
        other.lock(&key).await.unwrap().release().await.unwrap();
        assert!(
            sent.elapsed() < Duration::from_millis(2_800),
            "too slow to finish before the delayed acquisition arrives: {:?}",
            sent.elapsed()
        );
        // The delayed acquisition arrives at 3 s and is granted; it must not last.
        tokio::time::sleep_until(sent + Duration::from_millis(3_200)).await;
        let free = until_free(&other, &key, sent, Duration::from_secs(15)).await;
        println!("free again {free:?} after the delayed acquisition was sent");
        assert!(other.try_lock(&key).await.unwrap().is_some());
    });
}

/// History: as above, but the other owner comes and goes only after the repeated release has
/// found its own tombstone once (it answers "released already", which says nothing about the
/// acquisition still on its way). The repeats must go on until the lease would have ended, so
/// the grant that slips through when the delayed acquisition lands is released within one
/// interval (2 s at most), not held by nobody for its 30 s lease.
#[test]
fn the_repeated_release_goes_on_after_finding_its_own_tombstone() {
    run_bounded(LIMIT, || async {
        let Delayed {
            server: _server,
            proxy,
            delayed,
            other,
            mut admin,
        } = Delayed::start().await;
        let key = unique_key("repeats-go-on");

        proxy.delay_requests_of_open_connections(Duration::from_millis(4_000));
        let sent = tokio::time::Instant::now();
        let err = delayed.lock(&key).wait(Duration::ZERO).await.unwrap_err();
        assert!(err.is_backend(), "{err:?}");
        until_tombstone(&mut admin, &key, sent, Duration::from_millis(3_000)).await;
        // The first repeats find the tombstone their first release wrote.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        other.lock(&key).await.unwrap().release().await.unwrap();
        assert!(
            sent.elapsed() < Duration::from_millis(3_800),
            "too slow to finish before the delayed acquisition arrives: {:?}",
            sent.elapsed()
        );
        tokio::time::sleep_until(sent + Duration::from_millis(4_200)).await;
        let free = until_free(&other, &key, sent, Duration::from_secs(10)).await;
        println!("free again {free:?} after the delayed acquisition was sent");
    });
}

const RELEASE: &str = include_str!("../../relock/src/scripts/release.lua");
const BATCH: &str = include_str!("../../relock/src/scripts/batch.lua");
const ACQUIRE: &str = include_str!("../../relock/src/scripts/acquire.lua");

/// A release of `token` with fencing token `fence` (0: unknown), alone or in a batch call: its
/// answer (1 released, 0 not held, 2 released already).
async fn release_script(
    admin: &mut redis::aio::MultiplexedConnection,
    key: &str,
    token: &str,
    fence: u64,
    batched: bool,
) -> i64 {
    if batched {
        let reply: Vec<redis::Value> = redis::Script::new(BATCH)
            .key(lock_name(key))
            .arg("")
            .arg(0)
            .arg(600_000)
            .arg(1)
            .arg(format!("-{fence} {token}"))
            .invoke_async(admin)
            .await
            .unwrap();
        match reply.first() {
            Some(redis::Value::Int(status)) => *status,
            other => panic!("batch release answered {other:?}"),
        }
    } else {
        redis::Script::new(RELEASE)
            .key(lock_name(key))
            .key(format!("{}:released", lock_name(key)))
            .arg(token)
            .arg(fence)
            .arg(600_000)
            .invoke_async(admin)
            .await
            .unwrap()
    }
}

/// An acquisition of `token` by acquire.lua: `(status, value)`.
async fn acquire_script(
    admin: &mut redis::aio::MultiplexedConnection,
    key: &str,
    token: &str,
) -> (i64, i64) {
    redis::Script::new(ACQUIRE)
        .key(lock_name(key))
        .arg(token)
        .arg(30_000)
        .arg(600_000)
        .arg("1 1 host")
        .invoke_async(admin)
        .await
        .unwrap()
}

/// Histories of the tombstone's name, alone and batched:
///
/// * Z's acquisition is on its way and its release (fencing token unknown) left `-0 Z`; then a
///   stale release of W that knows its fencing token arrives. W's acquisition was answered, so
///   W needs no refusal: it must leave Z's tombstone alone, and Z's late acquisition is refused.
/// * A's lease ended unseen; X's release (fencing token unknown, its acquisition on its way)
///   finds A's expired hold. The lock is free: the tombstone must name X, with A's fencing
///   token, and X's late acquisition is refused.
/// * X's release is retried: it answers "released already" (2), not "released" (1).
#[test]
fn a_release_names_its_hold_only_where_its_acquisition_may_still_come() {
    run_bounded(LIMIT, || async {
        let server = RedisServer::start();
        let mut admin = server.connection().await;
        for batched in [false, true] {
            let (z, w, x) = (
                "1111111111111111111111111111111a",
                "2222222222222222222222222222222b",
                "3333333333333333333333333333333c",
            );
            let key = unique_key(&format!("names-{batched}"));
            assert_eq!(release_script(&mut admin, &key, z, 0, batched).await, 0);
            assert_eq!(release_script(&mut admin, &key, w, 123, batched).await, 0);
            let left = value(&mut admin, &key).await.unwrap();
            assert_eq!(left, format!("-0 {z}"), "batched {batched}");
            assert_eq!(acquire_script(&mut admin, &key, z).await, (2, 0));

            let key = unique_key(&format!("expired-{batched}"));
            let now_ms = server_micros(&mut admin).await / 1000;
            let _: () = redis::cmd("SET")
                .arg(lock_name(&key))
                .arg(format!("{ZEROS} 777 {} 1 1 host", now_ms - 1))
                .arg("PX")
                .arg(600_000)
                .query_async(&mut admin)
                .await
                .unwrap();
            assert_eq!(release_script(&mut admin, &key, x, 0, batched).await, 0);
            let left = value(&mut admin, &key).await.unwrap();
            assert_eq!(left, format!("-777 {x}"), "batched {batched}");
            assert_eq!(acquire_script(&mut admin, &key, x).await, (2, 0));
            assert_eq!(release_script(&mut admin, &key, x, 0, batched).await, 2);
        }
    });
}

/// Histories of a reader's fencing token on a key whose last token is unknown:
///
/// * W holds and releases (token F); the retention ends; a reader's acquisition with an unknown
///   outcome is released in the background first, onto the empty key. The next reader must get
///   a token above F (the clock's), never the `0` the unknown release knew.
/// * A release that knows its token but finds the key gone (its lease ended unseen, the key
///   expired, a later writer came and went and expired too) leaves a tombstone that claims no
///   token: the next reader's token is the clock's, not that older one.
#[test]
fn a_reader_never_takes_a_fencing_token_older_than_the_last_writers() {
    run_bounded(LIMIT, || async {
        let server = RedisServer::start();
        let mut admin = server.connection().await;
        let shared =
            redis::Script::new(include_str!("../../relock/src/scripts/acquire_shared.lua"));
        for known in [0u64, 123] {
            let key = unique_key(&format!("reader-after-unknown-{known}"));
            let (status, writer) =
                acquire_script(&mut admin, &key, "cccccccccccccccccccccccccccccccc").await;
            assert_eq!(status, 1);
            release_script(
                &mut admin,
                &key,
                "cccccccccccccccccccccccccccccccc",
                writer as u64,
                false,
            )
            .await;
            let _: () = redis::cmd("DEL")
                .arg(lock_name(&key))
                .query_async(&mut admin)
                .await
                .unwrap();
            assert_eq!(
                release_script(
                    &mut admin,
                    &key,
                    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                    known,
                    false
                )
                .await,
                0
            );
            let left = value(&mut admin, &key).await.unwrap();
            assert_eq!(left, format!("-0 aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"));
            let (status, reader): (i64, i64) = shared
                .key(lock_name(&key))
                .arg("bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb")
                .arg(30_000)
                .arg(600_000)
                .arg(0)
                .invoke_async(&mut admin)
                .await
                .unwrap();
            assert_eq!(status, 1);
            assert!(
                reader > writer,
                "the reader got {reader} after the writer's {writer}"
            );
        }
    });
}

/// History: another program's string happens to start like relock's shared form. No script may
/// take it for readers or permits: acquisitions are refused (held until it expires), a
/// force-release leaves it alone, and it stays as it was.
#[test]
fn a_foreign_value_that_looks_like_the_shared_form_is_never_overwritten() {
    run_bounded(LIMIT, || async {
        let server = RedisServer::start();
        let mut admin = server.connection().await;
        let locker = server.locker().await;
        // The second one starts with a well-formed entry: the list is checked to its end.
        let entry = format!(" {} 99999999999999 5", "ab".repeat(16));
        for (n, foreign) in [
            "*1 0 0 0 not relock".to_owned(),
            format!("*1 0 0 0{entry} not relock"),
        ]
        .into_iter()
        .enumerate()
        {
            let key = unique_key(&format!("star-foreign-{n}"));
            let _: () = redis::cmd("SET")
                .arg(lock_name(&key))
                .arg(&foreign)
                .query_async(&mut admin)
                .await
                .unwrap();
            assert!(locker.try_lock(&key).await.unwrap().is_none());
            assert!(locker.read(&key).wait(Duration::ZERO).await.is_err());
            assert!(locker.force_release(&key).await.is_err());
            assert!(locker.inspect(&key).await.is_err());
            assert_eq!(value(&mut admin, &key).await.as_deref(), Some(&*foreign));
            assert_eq!(pttl(&mut admin, &key).await, -1);
        }
    });
}

/// History: another program keeps its own string (with or without an expiry) at a key under
/// relock's prefix. Acquisitions, releases of made-up tokens and force-releases must never
/// overwrite it or change its expiry; relock treats the lock as held until the key expires, and
/// `inspect` says what it found.
#[test]
fn a_value_relock_did_not_write_is_never_overwritten() {
    run_bounded(LIMIT, || async {
        let server = RedisServer::start();
        let mut admin = server.connection().await;
        let locker = server.locker().await;
        for (name, expiry) in [
            ("foreign-expiring", Some(60_000u64)),
            ("foreign-forever", None),
        ] {
            let key = unique_key(name);
            let foreign = "a value another program keeps here";
            let mut set = redis::cmd("SET");
            set.arg(lock_name(&key)).arg(foreign);
            if let Some(ms) = expiry {
                set.arg("PX").arg(ms);
            }
            let _: () = set.query_async(&mut admin).await.unwrap();
            let ttl_before = pttl(&mut admin, &key).await;

            assert!(locker.try_lock(&key).await.unwrap().is_none(), "{name}");
            let err = locker
                .lock(&key)
                .wait(Duration::from_millis(200))
                .await
                .unwrap_err();
            assert!(matches!(err, Error::Timeout { .. }), "{name}: {err:?}");
            let inspected = locker.inspect(&key).await.unwrap_err();
            let text = format!("{inspected:?}");
            assert!(text.contains("did not write"), "{name}: {text}");
            assert!(locker.force_release(&key).await.is_err(), "{name}");
            // A release of a hold that never had the key (its token made up).
            let released: i64 =
                redis::Script::new(include_str!("../../relock/src/scripts/release.lua"))
                    .key(lock_name(&key))
                    .key(format!("{}:released", lock_name(&key)))
                    .arg("0123456789abcdef0123456789abcdef")
                    .arg(0)
                    .arg(600_000)
                    .invoke_async(&mut admin)
                    .await
                    .unwrap();
            assert_eq!(released, 0, "{name}");

            assert_eq!(
                value(&mut admin, &key).await.as_deref(),
                Some(foreign),
                "{name}"
            );
            let ttl_after = pttl(&mut admin, &key).await;
            match expiry {
                None => assert_eq!(ttl_after, -1, "{name}: an expiry was added"),
                Some(_) => assert!(
                    ttl_after <= ttl_before && ttl_after > ttl_before - 5_000,
                    "{name}: the expiry moved from {ttl_before} to {ttl_after} ms"
                ),
            }
        }
    });
}

/// History: a key's last fencing token sits just below 2^53 (Lua numbers are doubles: exact up to
/// 2^53). The next grant must get exactly that token + 1; the grant after it would need 2^53,
/// where +1 stops being exact and the same token could be handed out twice — it must be refused
/// with an error naming the limit, and leave the key as it was.
#[test]
fn a_fencing_token_at_the_limit_of_exact_arithmetic_is_refused_not_repeated() {
    run_bounded(LIMIT, || async {
        let server = RedisServer::start();
        let mut admin = server.connection().await;
        let locker = server.locker().await;
        let key = unique_key("fence-limit");
        let _: () = redis::cmd("SET")
            .arg(lock_name(&key))
            .arg(format!("-9007199254740990 {ZEROS}"))
            .arg("PX")
            .arg(600_000)
            .query_async(&mut admin)
            .await
            .unwrap();
        let guard = locker.lock(&key).await.unwrap();
        assert_eq!(guard.fencing_token(), 9_007_199_254_740_991);
        guard.release().await.unwrap();
        let tombstone = value(&mut admin, &key).await.unwrap();
        assert!(tombstone.starts_with("-9007199254740991 "), "{tombstone}");

        let err = locker.lock(&key).await.unwrap_err();
        let text = format!("{err:?}");
        assert!(err.is_backend(), "{text}");
        assert!(text.contains("2^53"), "{text}");
        // Nothing granted: still a tombstone with the last token (the failed request's token is
        // released in the background, as any failed acquisition's, so it may name that one).
        let left = value(&mut admin, &key).await.unwrap();
        assert!(left.starts_with("-9007199254740991 "), "{left}");
        // The same on the group-commit path: one call carrying this key among free ones.
        let free: Vec<String> = (0..8).map(|i| unique_key(&format!("free-{i}"))).collect();
        let (limited, granted) = tokio::join!(locker.lock(&key), async {
            let mut guards = Vec::new();
            for key in &free {
                guards.push(locker.lock(key).await);
            }
            guards
        });
        assert!(limited.unwrap_err().is_backend());
        for guard in granted {
            guard.unwrap().release().await.unwrap();
        }
    });
}

/// Memory per distinct key locked and released: one key, the tombstone, for the retention; then
/// nothing.
#[test]
fn a_released_lock_leaves_one_key_that_expires_with_the_retention() {
    run_bounded(LIMIT, || async {
        let server = RedisServer::start();
        let mut admin = server.connection().await;
        let locker = Locker::builder()
            .url(server.url())
            .fence_retention(Duration::from_millis(300))
            .lease(Duration::from_millis(300))
            .build()
            .unwrap();
        let key = unique_key("retention");
        locker.lock(&key).await.unwrap().release().await.unwrap();
        let keys: Vec<String> = admin.keys("*").await.unwrap();
        assert_eq!(keys, vec![lock_name(&key)], "keys left by one lock");
        tokio::time::sleep(Duration::from_millis(600)).await;
        let keys: Vec<String> = admin.keys("*").await.unwrap();
        assert!(keys.is_empty(), "left after the retention: {keys:?}");
    });
}

/// Runs the script `source` once with `keys` and `args`, as a client of the protocol would.
async fn eval(
    connection: &mut redis::aio::MultiplexedConnection,
    source: &str,
    keys: &[&str],
    args: &[String],
) -> redis::Value {
    let mut command = redis::cmd("EVAL");
    command.arg(source).arg(keys.len());
    for key in keys {
        command.arg(*key);
    }
    for arg in args {
        command.arg(arg);
    }
    command.query_async(connection).await.expect("EVAL")
}

const ACQUIRE_SHARED: &str = include_str!("../../relock/src/scripts/acquire_shared.lua");

/// An exclusive acquisition's `{status, value}` through `acquire.lua`, or through `batch.lua` as
/// a call of one request.
async fn acquire_exclusive(
    connection: &mut redis::aio::MultiplexedConnection,
    key: &str,
    token: &str,
    batch: bool,
) -> (i64, i64) {
    acquire_exclusive_as(connection, key, token, batch, false).await
}

/// [`acquire_exclusive`], as a single attempt (`try`) when `once`.
async fn acquire_exclusive_as(
    connection: &mut redis::aio::MultiplexedConnection,
    key: &str,
    token: &str,
    batch: bool,
    once: bool,
) -> (i64, i64) {
    let lock = lock_name(key);
    let reply = if batch {
        let request = if once {
            format!("{token} 30000 600000 try")
        } else {
            token.to_owned()
        };
        let args = ["1 1 host", "30000", "600000", "0", &request].map(str::to_owned);
        eval(connection, BATCH, &[&lock], &args).await
    } else {
        let mut args = [token, "30000", "600000", "1 1 host"]
            .map(str::to_owned)
            .to_vec();
        if once {
            args.push("try".to_owned());
        }
        eval(connection, ACQUIRE, &[&lock], &args).await
    };
    redis::from_redis_value(reply).expect("two integers")
}

/// History: readers R1 (live) and R2 (its lease ended, its process gone) share k under fencing
/// token F. Writer W asks, through either exclusive script: W is refused with R1's lease left,
/// and (unless it asked for one attempt only) its refusal makes a new reader queue behind it. R1 leaves; W asks again: W takes k with a
/// token above F — the expired R2 does not stand in its way — and its hold is marked, so that the
/// readers queued behind it are woken by its release. A value in the shared form is never
/// mistaken for a foreign one.
#[test]
fn the_exclusive_scripts_wait_for_live_readers_and_take_the_key_from_expired_ones() {
    run_bounded(LIMIT, || async {
        let server = RedisServer::start();
        let mut admin = server.connection().await;
        for batch in [false, true] {
            let key = unique_key(if batch {
                "shared-batch"
            } else {
                "shared-acquire"
            });
            let (r1, r2, w) = (
                "11111111111111111111111111111111",
                "22222222222222222222222222222222",
                "ffffffffffffffffffffffffffffffff",
            );
            let now_ms = server_micros(&mut admin).await / 1000;
            let fence = now_ms * 1000 + 777;
            let _: () = admin
                .pset_ex(
                    lock_name(&key),
                    format!(
                        "*{fence} 0 0 0 {r1} {} {fence} {r2} {} {fence}",
                        now_ms + 5000,
                        now_ms - 1
                    ),
                    600_000,
                )
                .await
                .unwrap();

            // A single attempt (`try_lock`) is refused and claims nothing.
            let before = value(&mut admin, &key).await;
            let (status, _) = acquire_exclusive_as(&mut admin, &key, w, batch, true).await;
            assert_eq!(status, 0, "refused while R1 reads (batch: {batch})");
            assert_eq!(
                value(&mut admin, &key).await,
                before,
                "a try claims nothing"
            );

            let (status, ttl) = acquire_exclusive(&mut admin, &key, w, batch).await;
            assert_eq!(status, 0, "refused while R1 reads (batch: {batch})");
            assert!(ttl > 0 && ttl <= 5000, "R1's lease left, not {ttl}");
            let claimed = value(&mut admin, &key).await.unwrap();
            let claim: u64 = claimed.split(' ').nth(2).unwrap().parse().unwrap();
            assert!(
                claim >= now_ms + 5000,
                "W claims k past R1's lease: {claimed}"
            );
            assert!(claimed.split(' ').nth(3) == Some("1"), "{claimed}");

            let reader = "33333333333333333333333333333333";
            let args = [reader, "30000", "600000", "0"].map(str::to_owned);
            let reply = eval(&mut admin, ACQUIRE_SHARED, &[&lock_name(&key)], &args).await;
            let (status, _): (i64, i64) = redis::from_redis_value(reply).unwrap();
            assert_eq!(status, 0, "a new reader queues behind the waiting writer");

            // R1 releases: its entry becomes a released hold's (no holder: see below), the claim
            // and the fencing token stay.
            let args = [r1.to_owned(), fence.to_string(), "600000".to_owned()];
            let channel = format!("{}:released", lock_name(&key));
            let released: i64 = redis::from_redis_value(
                eval(&mut admin, RELEASE, &[&lock_name(&key), &channel], &args).await,
            )
            .unwrap();
            assert_eq!(released, 1);
            let left = value(&mut admin, &key).await.unwrap();
            // (R2 was dropped by the refused reader's script, the next write that met it.)
            assert!(
                left.contains(&format!(" {r1} -")) && !left.contains(r2),
                "{left}"
            );
            assert!(left.starts_with(&format!("*{fence} 0 {claim} 1")), "{left}");

            // Only R2, whose lease has ended, and the released R1 are listed: W asks again and
            // takes k.
            let _: () = redis::cmd("SET")
                .arg(lock_name(&key))
                .arg(format!("{left} {r2} {} {fence}", now_ms - 1))
                .arg("KEEPTTL")
                .query_async(&mut admin)
                .await
                .unwrap();
            let (status, token) = acquire_exclusive(&mut admin, &key, w, batch).await;
            assert_eq!(status, 1, "only an expired reader is left: W takes k");
            assert!(token as u64 > fence, "{token} is not above {fence}");
            let held = value(&mut admin, &key).await.unwrap();
            assert!(held.starts_with(&format!("{w}+{token} ")), "{held}");
        }
    });
}

/// History: readers A and C read k; B, between them in the list, crashed and its lease ended. A
/// new reader D asks: D is granted the last writer's token, B's entry is dropped by this very
/// request (no sweeper), and A and C stay as they were, in order. A retried request of D's gets
/// the same grant and adds nothing.
#[test]
fn a_shared_grant_drops_expired_holders_and_keeps_the_live_ones() {
    run_bounded(LIMIT, || async {
        let server = RedisServer::start();
        let mut admin = server.connection().await;
        let key = unique_key("shared-prune");
        let (a, b, c, d) = (
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
            "cccccccccccccccccccccccccccccccc",
            "dddddddddddddddddddddddddddddddd",
        );
        let now_ms = server_micros(&mut admin).await / 1000;
        let fence = now_ms * 1000;
        let (live, dead) = (now_ms + 60_000, now_ms - 1);
        let entry_a = format!(" {a} {live} {fence}");
        let entry_c = format!(" {c} {live} {fence}");
        let _: () = admin
            .pset_ex(
                lock_name(&key),
                format!("*{fence} 0 0 0{entry_a} {b} {dead} {fence}{entry_c}"),
                600_000,
            )
            .await
            .unwrap();
        let args = [d, "30000", "600000", "0"].map(str::to_owned);
        for _ in 0..2 {
            let reply = eval(&mut admin, ACQUIRE_SHARED, &[&lock_name(&key)], &args).await;
            let (status, token): (i64, i64) = redis::from_redis_value(reply).unwrap();
            assert_eq!(
                (status, token as u64),
                (1, fence),
                "a reader carries the last token"
            );
        }
        let value = value(&mut admin, &key).await.unwrap();
        let expected = format!("*{fence} 0 0 0{entry_a}{entry_c} {d} ");
        assert!(value.starts_with(&expected), "{value}");
        assert_eq!(value.matches(d).count(), 1, "{value}");
        assert!(!value.contains(b), "{value}");
    });
}

/// A shared acquisition of `token` by acquire_shared.lua (`permits` 0: a reader): `(status,
/// value)`.
async fn acquire_shared_script(
    connection: &mut redis::aio::MultiplexedConnection,
    key: &str,
    token: &str,
    permits: u32,
) -> (i64, i64) {
    let args = [token, "30000", "600000", &permits.to_string()].map(str::to_owned);
    let reply = eval(connection, ACQUIRE_SHARED, &[&lock_name(key)], &args).await;
    redis::from_redis_value(reply).expect("two integers")
}

/// The renewal of `token` by renew.lua: 1 renewed, 0 not held.
async fn renew_script(
    connection: &mut redis::aio::MultiplexedConnection,
    key: &str,
    token: &str,
) -> i64 {
    let args = [token, "30000", "600000"].map(str::to_owned);
    let reply = eval(connection, RENEW, &[&lock_name(key)], &args).await;
    redis::from_redis_value(reply).expect("an integer")
}

const RENEW: &str = include_str!("../../relock/src/scripts/renew.lua");

/// The entries ` <hold token> <deadline> <fencing token>` of a shared value, as
/// `(token, deadline, released)`.
fn shared_entries(value: &str) -> Vec<(String, i64, bool)> {
    let fields: Vec<&str> = value.split(' ').skip(4).collect();
    fields
        .chunks(3)
        .map(|entry| {
            let deadline: i64 = entry[1].parse().unwrap();
            (entry[0].to_owned(), deadline.abs(), deadline < 0)
        })
        .collect()
}

/// History: readers (or permits of two) A and B hold k. A releases, and its release is sent
/// again (the cluster client's retry after a timeout, a repeated background release): the retry
/// must answer "released already" (2), not "not held" (0, which the guard reports as a false
/// loss). A's acquisition, arriving late, is refused {2, 0}, and A cannot renew. A's released
/// entry is not a holder: inspect shows B alone, a new permit C is granted beside B, the writer
/// still waits for B only, and after B's release takes the key. Alone and batched.
#[test]
fn a_retried_release_of_a_shared_hold_answers_released_already() {
    run_bounded(LIMIT, || async {
        let server = RedisServer::start();
        let mut admin = server.connection().await;
        let other = server.locker().await;
        let (a, b, c, w) = (
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1",
            "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb2",
            "ccccccccccccccccccccccccccccccc3",
            "fffffffffffffffffffffffffffffff4",
        );
        for permits in [0, 2] {
            for batched in [false, true] {
                let key = unique_key(&format!("shared-retry-{permits}-{batched}"));
                let (status, fence_a) = acquire_shared_script(&mut admin, &key, a, permits).await;
                assert_eq!(status, 1);
                let (status, fence_b) = acquire_shared_script(&mut admin, &key, b, permits).await;
                assert_eq!(status, 1);
                let how = format!("permits {permits}, batched {batched}");

                let first = release_script(&mut admin, &key, a, fence_a as u64, batched).await;
                assert_eq!(first, 1, "{how}");
                let again = release_script(&mut admin, &key, a, fence_a as u64, batched).await;
                assert_eq!(again, 2, "a retried release of a shared hold ({how})");
                let unknown = release_script(&mut admin, &key, a, 0, batched).await;
                assert_eq!(unknown, 2, "a repeated background release ({how})");
                assert_eq!(
                    acquire_shared_script(&mut admin, &key, a, permits).await,
                    (2, 0),
                    "A's late acquisition ({how})"
                );
                assert_eq!(renew_script(&mut admin, &key, a).await, 0, "{how}");

                let info = other.inspect(&key).await.unwrap().expect("B holds k");
                assert_eq!((info.holds, info.owner.as_str()), (1, b), "{how}");
                if permits > 0 {
                    let (status, _) = acquire_shared_script(&mut admin, &key, c, permits).await;
                    assert_eq!(status, 1, "A's released entry takes no permit ({how})");
                    let (status, _) = acquire_shared_script(&mut admin, &key, w, permits).await;
                    assert_eq!(status, 0, "B and C take both permits ({how})");
                    let fence_c = acquire_shared_script(&mut admin, &key, c, permits).await.1;
                    assert_eq!(
                        release_script(&mut admin, &key, c, fence_c as u64, batched).await,
                        1
                    );
                }
                let (status, ttl) = acquire_exclusive(&mut admin, &key, w, batched).await;
                assert_eq!(status, 0, "the writer waits for B ({how})");
                assert!(ttl > 20_000, "B's lease left, not A's: {ttl} ({how})");
                assert_eq!(
                    release_script(&mut admin, &key, b, fence_b as u64, batched).await,
                    1
                );
                // No holder is left: the value keeps the last fencing token and A's entry.
                assert_eq!(
                    acquire_shared_script(&mut admin, &key, a, permits).await,
                    (2, 0),
                    "A's late acquisition once no holder is left ({how})"
                );
                assert!(other.inspect(&key).await.unwrap().is_none(), "{how}");
                let (status, fence) = acquire_exclusive(&mut admin, &key, w, batched).await;
                assert_eq!(status, 1, "{how}");
                assert!(fence > fence_b, "{how}");
            }
        }
    });
}

/// History: reader B holds k while 40 readers come and go. Their released entries stay until
/// their deadline, but at most 8 of them: the value of a busy key does not grow without bound.
/// The oldest are forgotten first (their retried release then answers 0); the newest are still
/// remembered. A released entry whose deadline has passed is dropped by the next grant.
#[test]
fn released_shared_holds_are_bounded_and_dropped_after_their_deadline() {
    run_bounded(LIMIT, || async {
        let server = RedisServer::start();
        let mut admin = server.connection().await;
        let key = unique_key("shared-bound");
        let b = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
        assert_eq!(acquire_shared_script(&mut admin, &key, b, 0).await.0, 1);
        let tokens: Vec<String> = (0..40).map(|i| format!("{i:032x}")).collect();
        for token in &tokens {
            let (status, fence) = acquire_shared_script(&mut admin, &key, token, 0).await;
            assert_eq!(status, 1);
            assert_eq!(
                release_script(&mut admin, &key, token, fence as u64, false).await,
                1
            );
        }
        let left = value(&mut admin, &key).await.unwrap();
        let entries = shared_entries(&left);
        let released: Vec<&str> = entries
            .iter()
            .filter(|entry| entry.2)
            .map(|entry| entry.0.as_str())
            .collect();
        assert_eq!(released.len(), 8, "{left}");
        assert_eq!(
            released,
            tokens[32..].iter().map(String::as_str).collect::<Vec<_>>()
        );
        assert_eq!(entries.len(), 9, "B and 8 released entries: {left}");
        assert_eq!(
            release_script(&mut admin, &key, &tokens[0], 0, false).await,
            0
        );
        assert_eq!(
            release_script(&mut admin, &key, &tokens[39], 0, false).await,
            2
        );

        // A released entry past its deadline is dropped by the next grant.
        let now_ms = server_micros(&mut admin).await / 1000;
        let gone = "dddddddddddddddddddddddddddddddd";
        let _: () = redis::cmd("SET")
            .arg(lock_name(&key))
            .arg(format!("{left} {gone} -{} 5", now_ms - 1))
            .arg("KEEPTTL")
            .query_async(&mut admin)
            .await
            .unwrap();
        let e = "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee";
        assert_eq!(acquire_shared_script(&mut admin, &key, e, 0).await.0, 1);
        let left = value(&mut admin, &key).await.unwrap();
        assert!(!left.contains(gone), "{left}");
        assert!(left.contains(&tokens[39]), "{left}");
    });
}

/// History: readers (and a permit) hold two keys; the server runs out of memory (`maxmemory`
/// reached, `noeviction`); their releases queue up and go out in one call of the batch script,
/// which, unlike release.lua, has no `allow-oom` flag. A release must still free the hold (a
/// server out of memory must not keep a lock nobody can release), as it does an exclusive one.
#[test]
fn a_batched_release_of_a_shared_hold_works_on_a_server_out_of_memory() {
    run_bounded(LIMIT, || async {
        let server = RedisServer::start();
        let mut admin = server.connection().await;
        let other = server.locker().await;
        let (a, b) = (
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
        );
        let (readers, permits) = (unique_key("oom-readers"), unique_key("oom-permits"));
        let fence_a = acquire_shared_script(&mut admin, &readers, a, 0).await.1;
        let fence_b = acquire_shared_script(&mut admin, &permits, b, 3).await.1;
        let ttl_before = pttl(&mut admin, &readers).await;
        for (name, setting) in [("maxmemory-policy", "noeviction"), ("maxmemory", "1")] {
            let _: () = redis::cmd("CONFIG")
                .arg("SET")
                .arg(name)
                .arg(setting)
                .query_async(&mut admin)
                .await
                .unwrap();
        }
        let failed: redis::RedisResult<()> = admin.set(unique_key("filler"), "x").await;
        assert!(failed.is_err(), "the server is not out of memory");

        let connection = admin.clone();
        let batch = |requests: [String; 2]| {
            let mut admin = connection.clone();
            let (readers, permits) = (readers.clone(), permits.clone());
            async move {
                let args = [
                    "".to_owned(),
                    "0".to_owned(),
                    "600000".to_owned(),
                    "2".to_owned(),
                    requests[0].clone(),
                    requests[1].clone(),
                ];
                let reply = eval(
                    &mut admin,
                    BATCH,
                    &[&lock_name(&readers), &lock_name(&permits)],
                    &args,
                )
                .await;
                let items: Vec<i64> = redis::from_redis_value(reply).expect("integers");
                items
            }
        };
        let released = batch([format!("-{fence_a} {a}"), format!("-{fence_b} {b}")]).await;
        assert_eq!(released, [1, 0, 1, 0], "released on a server out of memory");
        assert!(other.inspect(&readers).await.unwrap().is_none());
        assert!(other.inspect(&permits).await.unwrap().is_none());
        let ttl_after = pttl(&mut admin, &readers).await;
        assert!(
            ttl_after > ttl_before - 10_000 && ttl_after <= ttl_before,
            "the key keeps its expiry: {ttl_before} then {ttl_after}"
        );
        let again = batch([format!("-{fence_a} {a}"), format!("-0 {b}")]).await;
        assert_eq!(again, [2, 0, 2, 0], "retried on a server out of memory");

        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg("0")
            .query_async(&mut admin)
            .await
            .unwrap();
        assert_eq!(
            acquire_shared_script(&mut admin, &readers, a, 0).await,
            (2, 0)
        );
        let guard = other
            .lock(&readers)
            .await
            .expect("the readers' key is free");
        assert!(guard.fencing_token() > fence_a as u64);
    });
}

/// A buggy client of the protocol sends a hold token that is not 32 lowercase hex digits: the
/// acquire scripts (and the batch script's long requests) refuse it with an error naming the
/// rule, and write nothing (such a token in a value would make it one relock cannot parse: held
/// until it expires, never released).
#[test]
fn an_acquisition_with_a_malformed_hold_token_is_refused_and_writes_nothing() {
    run_bounded(LIMIT, || async {
        let server = RedisServer::start();
        let mut admin = server.connection().await;
        let malformed = [
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_owned(),
            "a".repeat(31),
            "a".repeat(33),
            format!("{}g", "a".repeat(31)),
            format!("{} ", "a".repeat(31)),
            format!("0x{}", "a".repeat(30)),
            String::new(),
        ];
        let shared = unique_key("malformed-shared");
        let reader = "b".repeat(32);
        assert_eq!(
            acquire_shared_script(&mut admin, &shared, &reader, 0)
                .await
                .0,
            1
        );
        let before = value(&mut admin, &shared).await;
        for token in &malformed {
            let free = unique_key("malformed-free");
            for (script, last) in [
                (ACQUIRE, "1 1 h"),
                (ACQUIRE_SHARED, "0"),
                (ACQUIRE_SHARED, "2"),
            ] {
                let args = [token.as_str(), "30000", "600000", last];
                for key in [&free, &shared] {
                    let mut command = redis::cmd("EVAL");
                    command
                        .arg(script)
                        .arg(1)
                        .arg(lock_name(key))
                        .arg(&args[..]);
                    let reply: redis::RedisResult<redis::Value> =
                        command.query_async(&mut admin).await;
                    let err = reply.expect_err(&format!("token `{token}` was accepted"));
                    assert!(
                        err.to_string().contains("32 lowercase hex digits"),
                        "token `{token}`: {err}"
                    );
                }
                assert_eq!(value(&mut admin, &free).await, None, "token `{token}`");
                assert_eq!(value(&mut admin, &shared).await, before, "token `{token}`");
            }
            // The batch script's requests with a lease of their own (its fast path, a bare
            // token, checks only the length).
            let request = format!("{token} 30000 600000");
            let args = ["1 1 h", "30000", "600000", "0", &request].map(str::to_owned);
            let reply = eval(&mut admin, BATCH, &[&lock_name(&free)], &args).await;
            let (status, error): (i64, String) = redis::from_redis_value(reply).unwrap();
            assert_eq!(status, -1, "token `{token}` in a batch");
            assert!(error.contains("32 lowercase hex digits"), "{error}");
            assert_eq!(value(&mut admin, &free).await, None, "token `{token}`");
        }
    });
}

/// A shared hold of a delayed-acquisition history: a reader, or one of two permits.
#[derive(Clone, Copy, Debug)]
enum Share {
    Reader,
    Permit,
}

enum SharedHold {
    Read(relock::LockGuard),
    Permit(relock::Permit),
}

impl SharedHold {
    async fn release(self) {
        match self {
            SharedHold::Read(guard) => guard.release().await.expect("release a reader"),
            SharedHold::Permit(permit) => permit.release().await.expect("release a permit"),
        }
    }
}

async fn take_shared(locker: &Locker, key: &str, share: Share) -> Result<SharedHold, Error> {
    match share {
        Share::Reader => locker
            .read(key)
            .wait(Duration::ZERO)
            .await
            .map(SharedHold::Read),
        Share::Permit => locker
            .semaphore(key, 2)
            .acquire()
            .wait(Duration::ZERO)
            .await
            .map(SharedHold::Permit),
    }
}

/// History: k is in the shared form (a reader or a permit came and went), and another owner
/// holds a share of it or not (`with_other`). A shared acquisition is sent on a pooled
/// connection whose path delays it by 2.5 s; the client gives up after its response timeout
/// (outcome unknown) and releases its hold token in the background on a fresh connection, which
/// reaches the server first. When the delayed acquisition arrives it must be refused: a grant
/// then would be a share nobody releases (until the next repeat of the background release, 4 s
/// after the send or later), so k must never show more holders than the other owner.
async fn a_delayed_shared_acquisition_behind_its_own_release(share: Share, with_other: bool) {
    let Delayed {
        server: _server,
        proxy,
        delayed,
        other,
        admin: _admin,
    } = Delayed::start().await;
    let key = unique_key(&format!("delayed-{share:?}-{with_other}"));
    // Loads the shared script on the delayed locker's connection, and leaves k shared.
    take_shared(&delayed, &key, share)
        .await
        .expect("a first share")
        .release()
        .await;
    let held = if with_other {
        Some(
            take_shared(&other, &key, share)
                .await
                .expect("another owner's share"),
        )
    } else {
        None
    };
    let expected = u64::from(with_other);

    proxy.delay_requests_of_open_connections(Duration::from_millis(2_500));
    let sent = tokio::time::Instant::now();
    let err = take_shared(&delayed, &key, share)
        .await
        .err()
        .expect("the delayed acquisition's answer cannot come within the timeout");
    assert!(err.is_backend(), "{err:?}");
    tokio::time::sleep_until(sent + Duration::from_millis(2_000)).await;
    while sent.elapsed() < Duration::from_millis(4_000) {
        let holds = other
            .inspect(&key)
            .await
            .unwrap()
            .map_or(0, |info| info.holds);
        assert_eq!(
            holds,
            expected,
            "{share:?}, another holder: {with_other}: {:?} after it was sent, the acquisition \
             that arrived behind its own release holds a share",
            sent.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    if let Some(held) = held {
        held.release().await;
    }
    assert!(other.inspect(&key).await.unwrap().is_none());
}

#[test]
fn a_reader_delayed_past_its_own_release_is_refused_alone_and_beside_another() {
    run_bounded(LIMIT, || async {
        tokio::join!(
            a_delayed_shared_acquisition_behind_its_own_release(Share::Reader, false),
            a_delayed_shared_acquisition_behind_its_own_release(Share::Reader, true),
        );
    });
}

#[test]
fn a_permit_delayed_past_its_own_release_is_refused_alone_and_beside_another() {
    run_bounded(LIMIT, || async {
        tokio::join!(
            a_delayed_shared_acquisition_behind_its_own_release(Share::Permit, false),
            a_delayed_shared_acquisition_behind_its_own_release(Share::Permit, true),
        );
    });
}

/// History: another owner holds one permit of a semaphore of 2; the other permit is asked for on
/// a pooled connection whose path delays it by 4 s; the client gives up (outcome unknown) and
/// releases its hold token in the background, which adds a released entry naming it (fencing
/// token 0), and repeats that release while the acquisition may still land. Each time the entry
/// is there, the other owner takes and returns the second permit 9 times: the key keeps at most
/// 8 released holds, so the entry is pushed out (and the next repeat puts it back). When the
/// delayed acquisition lands after such a push, nothing refuses it — a permit nobody owns — and
/// the next repeat releases it, within one interval (2 s at most), not after its 30 s lease.
/// Never are there more holders than permits.
#[test]
fn a_delayed_permit_whose_released_entry_was_pushed_out_is_freed_by_the_repeated_release() {
    run_bounded(LIMIT, || async {
        let Delayed {
            server: _server,
            proxy,
            delayed,
            other,
            mut admin,
        } = Delayed::start().await;
        let key = unique_key("pushed-out");
        // Loads the shared script on the delayed locker's connection.
        take_shared(&delayed, &key, Share::Permit)
            .await
            .expect("a first permit")
            .release()
            .await;
        let semaphore = other.semaphore(&key, 2);
        let kept = semaphore.acquire().await.unwrap();
        // Live holders and whether an entry with fencing token 0 (a release of an acquisition
        // whose answer never came) is listed.
        let read = |left: &str| {
            let fields: Vec<&str> = left.split(' ').skip(4).collect();
            let live = fields
                .chunks(3)
                .filter(|entry| !entry[1].starts_with('-'))
                .count();
            (live, fields.chunks(3).any(|entry| entry[2] == "0"))
        };

        proxy.delay_requests_of_open_connections(Duration::from_millis(4_000));
        let sent = tokio::time::Instant::now();
        let err = take_shared(&delayed, &key, Share::Permit)
            .await
            .err()
            .expect("the delayed acquisition's answer cannot come within the timeout");
        assert!(err.is_backend(), "{err:?}");
        let (mut pushes, mut most) = (0, 0);
        let (mut late, mut freed) = (None, None);
        while sent.elapsed() < Duration::from_millis(7_000) && freed.is_none() {
            let left = value(&mut admin, &key).await.unwrap();
            let (live, unknown) = read(&left);
            assert!(live <= 2, "{live} holders of a semaphore of 2: {left}");
            most = most.max(live);
            match (live, late) {
                (2, None) => late = Some(sent.elapsed()),
                (1, Some(_)) => freed = Some(sent.elapsed()),
                _ => {}
            }
            if unknown && sent.elapsed() < Duration::from_millis(3_700) {
                for _ in 0..9 {
                    semaphore.acquire().await.unwrap().release().await.unwrap();
                }
                let left = value(&mut admin, &key).await.unwrap();
                assert!(!read(&left).1, "pushed out by 8 releases: {left}");
                assert_eq!(shared_entries(&left).len(), 9, "{left}");
                pushes += 1;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert!(
            pushes >= 2,
            "the repeated release put the entry back: {pushes} pushes"
        );
        assert_eq!(
            most, 2,
            "the delayed acquisition, its entry pushed out, was granted beside the kept permit"
        );
        let (late, freed) = (late.unwrap(), freed.expect("the late grant is released"));
        assert!(
            freed - late <= Duration::from_millis(2_500),
            "the late grant held from {late:?} to {freed:?}: longer than one repeat interval"
        );
        println!("{pushes} pushes; the late grant held from {late:?} to {freed:?} after the send");
        kept.release().await.unwrap();
        until_free(&other, &key, sent, Duration::from_secs(9)).await;
        let (one, two) = (
            semaphore.try_acquire().await.unwrap(),
            semaphore.try_acquire().await.unwrap(),
        );
        assert!(one.is_some() && two.is_some(), "both permits free again");
    });
}

/// One batch call's `{status, value}` pairs for `requests` (no releases), as the group commit
/// sends it.
async fn batch_call(
    connection: &mut redis::aio::MultiplexedConnection,
    requests: &[(&str, String)],
) -> Vec<redis::Value> {
    let locks: Vec<String> = requests.iter().map(|(key, _)| lock_name(key)).collect();
    let locks: Vec<&str> = locks.iter().map(String::as_str).collect();
    // Marked as the client marks a call with a key more than once.
    let distinct: std::collections::HashSet<&str> = locks.iter().copied().collect();
    let releases = if distinct.len() < locks.len() {
        "0+"
    } else {
        "0"
    };
    let mut args = ["1 1 host", "30000", "600000", releases]
        .map(str::to_owned)
        .to_vec();
    args.extend(requests.iter().map(|(_, request)| request.clone()));
    redis::from_redis_value(eval(connection, BATCH, &locks, &args).await).expect("an array")
}

/// A batch call's answer `at` as `(status, value)`.
fn answer(reply: &[redis::Value], at: usize) -> (i64, i64) {
    match (&reply[2 * at], &reply[2 * at + 1]) {
        (redis::Value::Int(status), redis::Value::Int(value)) => (*status, *value),
        _ => panic!("answer {at} is not two integers: {reply:?}"),
    }
}

/// History: the group commit carries many shared requests for one key in one call (64 readers
/// of a key, a burst of permits). Each must be decided as `acquire_shared.lua` alone decides it,
/// seeing the earlier ones' effects: of 5 requests for 3 permits, 3 are granted with distinct,
/// increasing fencing tokens and 2 refused; a sixth asking for 4 permits is refused as a
/// mismatch; a repeated request of a granted hold gets its grant again; a malformed hold token
/// fails alone. In the next call, a released permit's late acquisition is refused as released
/// already while a waiting one takes its place with a larger token; a reader after a writer's
/// tombstone carries that writer's token.
#[test]
fn shared_requests_in_one_batch_call_are_decided_one_after_another() {
    run_bounded(LIMIT, || async {
        let server = RedisServer::start();
        let mut admin = server.connection().await;
        let (k, r) = (unique_key("batched-permits"), unique_key("batched-reader"));
        let tokens: Vec<String> = (1..=5).map(|i| format!("{i:032x}")).collect();
        let permit = |token: &str, permits: u32| format!("{token} 30000 600000 shared {permits}");
        let _: () = admin
            .pset_ex(lock_name(&r), format!("-777 {ZEROS}"), 600_000)
            .await
            .unwrap();
        let mut requests: Vec<(&str, String)> = tokens
            .iter()
            .map(|token| (k.as_str(), permit(token, 3)))
            .collect();
        requests.push((k.as_str(), permit(&format!("{:032x}", 6), 4)));
        requests.push((k.as_str(), permit(&tokens[0], 3)));
        requests.push((k.as_str(), permit(&"A".repeat(32), 3)));
        requests.push((r.as_str(), permit(&format!("{:032x}", 9), 0)));
        let reply = batch_call(&mut admin, &requests).await;

        let fences: Vec<i64> = (0..3)
            .map(|at| {
                let (status, fence) = answer(&reply, at);
                assert_eq!(status, 1, "permit {at} of 3 granted: {reply:?}");
                fence
            })
            .collect();
        assert!(
            fences.windows(2).all(|pair| pair[0] < pair[1]),
            "{fences:?}"
        );
        for at in 3..5 {
            let (status, ttl) = answer(&reply, at);
            assert!(
                status == 0 && ttl > 0,
                "request {at} refused: all 3 taken: {reply:?}"
            );
        }
        assert_eq!(answer(&reply, 5), (3, 3), "4 permits where 3 are in use");
        assert_eq!(
            answer(&reply, 6),
            (1, fences[0]),
            "a repeated request: the same grant"
        );
        assert_eq!(reply[14], redis::Value::Int(-1), "{reply:?}");
        let failure: String = redis::from_redis_value(reply[15].clone()).unwrap();
        assert!(failure.contains("32 lowercase hex digits"), "{failure}");
        assert_eq!(
            answer(&reply, 8),
            (1, 777),
            "a reader carries the last writer's token"
        );
        let held = value(&mut admin, &k).await.unwrap();
        assert!(held.starts_with("*") && held.contains(" 3 0 1 "), "{held}");
        for (at, token) in tokens.iter().enumerate() {
            assert_eq!(held.contains(token.as_str()), at < 3, "{held}");
        }

        assert_eq!(
            release_script(&mut admin, &k, &tokens[0], fences[0] as u64, true).await,
            1
        );
        let reply = batch_call(
            &mut admin,
            &[
                (k.as_str(), permit(&tokens[0], 3)),
                // The short form: the call's lease and retention.
                (k.as_str(), format!("{}*3", tokens[3])),
                (k.as_str(), format!("{}*3", tokens[4])),
                (k.as_str(), format!("{}*", tokens[4])),
            ],
        )
        .await;
        assert_eq!(answer(&reply, 0), (2, 0), "released already: {reply:?}");
        let (status, fence) = answer(&reply, 1);
        assert!(status == 1 && fence > fences[2], "{reply:?}");
        assert_eq!(answer(&reply, 2).0, 0, "still 3 taken: {reply:?}");
        assert_eq!(
            reply[6],
            redis::Value::Int(-1),
            "no permits given: {reply:?}"
        );
        let entry = held_entry(&value(&mut admin, &k).await.unwrap(), &tokens[3]);
        let now_ms = server_micros(&mut admin).await / 1000;
        assert!(
            (now_ms + 25_000..=now_ms + 30_000).contains(&entry),
            "the call's lease of 30 s: {entry}"
        );

        // A free key taken in a batch call is written as acquire_shared.lua writes it: the
        // clock's token, the deadline of its own lease, and the longer of lease and retention as
        // the key's expiry (here the lease: 700 s against 600 s).
        let free = unique_key("batched-free");
        let token = format!("{:032x}", 7);
        let before = server_micros(&mut admin).await;
        let reply = batch_call(
            &mut admin,
            &[(free.as_str(), format!("{token} 700000 600000 shared 2"))],
        )
        .await;
        let (status, fence) = answer(&reply, 0);
        assert!(status == 1 && fence as u64 >= before, "{reply:?}");
        let left = value(&mut admin, &free).await.unwrap();
        let deadline = fence as u64 / 1000 + 700_000;
        assert!(
            left == format!("*{fence} 2 0 0 {token} {deadline} {fence}")
                || left == format!("*{fence} 2 0 0 {token} {} {fence}", deadline + 1),
            "{left}"
        );
        assert!(
            pttl(&mut admin, &free).await > 650_000,
            "the lease's expiry"
        );
    });
}

/// History: permit P is alone on k (no other holder, no released hold, no writer waiting) and is
/// released, alone or batched: k becomes P's tombstone under the last fencing token — P's retried
/// release answers 2, P's late acquisition is refused, the next permit gets a larger token, a
/// reader of a key whose last writer had token T still reads under T. A release that does not
/// know its fencing token (0) still leaves the last one, never 0 (a token going back). With a
/// writer's claim on the key, or the mark of a refused waiter, the shared form stays, so that the
/// claim or the mark survives.
#[test]
fn a_release_of_the_only_shared_entry_leaves_a_tombstone_under_the_last_token() {
    run_bounded(LIMIT, || async {
        let server = RedisServer::start();
        let mut admin = server.connection().await;
        let (p, q, r) = (
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
            "cccccccccccccccccccccccccccccccc",
        );
        for batched in [false, true] {
            for known in [true, false] {
                let key = unique_key(&format!("sole-{batched}-{known}"));
                let (status, fence) = acquire_shared_script(&mut admin, &key, p, 2).await;
                assert_eq!(status, 1);
                let sent = if known { fence as u64 } else { 0 };
                assert_eq!(release_script(&mut admin, &key, p, sent, batched).await, 1);
                let left = value(&mut admin, &key).await.unwrap();
                assert_eq!(
                    left,
                    format!("-{fence} {p}"),
                    "batched {batched}, known {known}"
                );
                assert!(
                    pttl(&mut admin, &key).await > 500_000,
                    "the grant's expiry is kept"
                );
                assert_eq!(release_script(&mut admin, &key, p, sent, batched).await, 2);
                assert_eq!(acquire_shared_script(&mut admin, &key, p, 2).await, (2, 0));
                let (status, next) = acquire_shared_script(&mut admin, &key, q, 3).await;
                assert!(status == 1 && next > fence, "{status} {next} after {fence}");
            }

            // A reader alone after a writer: its release keeps the writer's token.
            let key = unique_key(&format!("sole-reader-{batched}"));
            let _: () = admin
                .pset_ex(lock_name(&key), format!("-4242 {ZEROS}"), 600_000)
                .await
                .unwrap();
            assert_eq!(
                acquire_shared_script(&mut admin, &key, r, 0).await,
                (1, 4242)
            );
            assert_eq!(release_script(&mut admin, &key, r, 4242, batched).await, 1);
            assert_eq!(value(&mut admin, &key).await.unwrap(), format!("-4242 {r}"));
            assert_eq!(
                acquire_shared_script(&mut admin, &key, q, 0).await,
                (1, 4242)
            );

            // The only permit of 1 refused another (the key is marked): its release is
            // announced, so the refused one wakes; and the key keeps the shared form with the
            // mark (a tombstone would drop it), its entry released, so that the release of the
            // next holder is announced too: the waiters not woken wait for it.
            let key = unique_key(&format!("sole-waited-{batched}"));
            let (_, fence) = acquire_shared_script(&mut admin, &key, p, 1).await;
            assert_eq!(acquire_shared_script(&mut admin, &key, q, 1).await.0, 0);
            let before = publishes(&mut admin).await;
            assert_eq!(
                release_script(&mut admin, &key, p, fence as u64, batched).await,
                1
            );
            let left = value(&mut admin, &key).await.unwrap();
            assert!(
                left.starts_with(&format!("*{fence} 1 0 1 ")) && left.contains(&format!(" {p} -")),
                "batched {batched}: {left}"
            );
            assert_eq!(publishes(&mut admin).await, before + 1, "batched {batched}");
            assert_eq!(
                release_script(&mut admin, &key, p, fence as u64, batched).await,
                2
            );
            let (status, next) = acquire_shared_script(&mut admin, &key, q, 1).await;
            assert!(status == 1 && next > fence, "{status} {next} after {fence}");
            assert_eq!(
                release_script(&mut admin, &key, q, next as u64, batched).await,
                1
            );
            assert_eq!(
                publishes(&mut admin).await,
                before + 2,
                "batched {batched}: the next holder's release is announced"
            );

            // A writer claims the key: the shared form stays, with the claim.
            let key = unique_key(&format!("sole-claimed-{batched}"));
            let (_, fence) = acquire_shared_script(&mut admin, &key, p, 0).await;
            let (status, _) = acquire_exclusive_as(&mut admin, &key, q, false, false).await;
            assert_eq!(status, 0, "the writer waits for the reader");
            assert_eq!(
                release_script(&mut admin, &key, p, fence as u64, batched).await,
                1
            );
            let left = value(&mut admin, &key).await.unwrap();
            assert!(left.starts_with('*') && !left.contains(" 0 1 "), "{left}");
            assert_eq!(
                acquire_shared_script(&mut admin, &key, r, 0).await.0,
                0,
                "{left}"
            );
        }
    });
}

/// The deadline of `token`'s entry in the shared value `value`.
fn held_entry(value: &str, token: &str) -> u64 {
    let (_, rest) = value
        .split_once(&format!(" {token} "))
        .unwrap_or_else(|| panic!("no entry of {token} in {value}"));
    rest.split(' ').next().unwrap().parse().unwrap()
}

/// How many `PUBLISH` commands the server has run.
async fn publishes(connection: &mut redis::aio::MultiplexedConnection) -> u64 {
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(connection)
        .await
        .expect("INFO commandstats");
    stats
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_publish:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |calls| calls.parse().expect("a count"))
}
