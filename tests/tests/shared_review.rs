//! An exclusion review of the shared form's released holds (` <token> -<deadline> <fence>`),
//! batch.lua's out-of-memory release of a shared hold, and reads and permits that wait for
//! replicas.
//!
//! Each test is a history — who held what, when — run on the scripts themselves against a real
//! server (as relock sends them), or through the `Locker` API on every backend, ending in the
//! contract's questions: a writer beside a live reader? more than `n` permits? a fencing token
//! that went back? a value rewritten that is not relock's form?

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use relock::Error;
use relock_tests::{on_every_backend, unique_key, RedisServer, TestBackend};

const LIMIT: Duration = Duration::from_secs(60);
const LEASE: u64 = 30_000;
const RETENTION: u64 = 60_000;
const HOLDER: &str = "4242 1764000000000 testhost";

fn script(name: &str) -> redis::Script {
    redis::Script::new(match name {
        "acquire" => include_str!("../../relock/src/scripts/acquire.lua"),
        "acquire_shared" => include_str!("../../relock/src/scripts/acquire_shared.lua"),
        "release" => include_str!("../../relock/src/scripts/release.lua"),
        "renew" => include_str!("../../relock/src/scripts/renew.lua"),
        "batch" => include_str!("../../relock/src/scripts/batch.lua"),
        _ => unreachable!(),
    })
}

fn token(n: u128) -> String {
    format!("{n:032x}")
}

/// One lock key on a test server, driven through the scripts.
struct Lock {
    conn: MultiplexedConnection,
    lock: String,
}

impl Lock {
    async fn new(server: &RedisServer, name: &str) -> Lock {
        Lock {
            conn: server.connection().await,
            lock: format!("relock:{{{}}}", unique_key(name)),
        }
    }

    async fn shared(&mut self, token: &str, permits: u32) -> (i64, i64) {
        script("acquire_shared")
            .key(&self.lock)
            .arg(token)
            .arg(LEASE)
            .arg(RETENTION)
            .arg(permits)
            .invoke_async(&mut self.conn)
            .await
            .expect("acquire_shared.lua")
    }

    async fn exclusive(&mut self, token: &str, try_only: bool) -> (i64, i64) {
        let acquire = script("acquire");
        let mut invocation = acquire.key(&self.lock);
        invocation.arg(token).arg(LEASE).arg(RETENTION).arg(HOLDER);
        if try_only {
            invocation.arg("try");
        }
        invocation
            .invoke_async(&mut self.conn)
            .await
            .expect("acquire.lua")
    }

    /// An exclusive acquisition by batch.lua, as a call of one request.
    async fn exclusive_batched(&mut self, token: &str) -> (i64, i64) {
        script("batch")
            .key(&self.lock)
            .arg(HOLDER)
            .arg(LEASE)
            .arg(RETENTION)
            .arg(0)
            .arg(token)
            .invoke_async(&mut self.conn)
            .await
            .expect("batch.lua")
    }

    /// A release by release.lua alone (`batched` false) or batch.lua.
    async fn release(&mut self, token: &str, fence: i64, batched: bool) -> i64 {
        if batched {
            let (status, _): (i64, redis::Value) = script("batch")
                .key(&self.lock)
                .arg(HOLDER)
                .arg(LEASE)
                .arg(RETENTION)
                .arg(1)
                .arg(format!("-{fence} {token}"))
                .invoke_async(&mut self.conn)
                .await
                .expect("batch.lua");
            status
        } else {
            script("release")
                .key(&self.lock)
                .key(format!("{}:released", self.lock))
                .arg(token)
                .arg(fence)
                .arg(RETENTION)
                .invoke_async(&mut self.conn)
                .await
                .expect("release.lua")
        }
    }

    async fn renew(&mut self, token: &str) -> i64 {
        script("renew")
            .key(&self.lock)
            .arg(token)
            .arg(LEASE)
            .arg(RETENTION)
            .invoke_async(&mut self.conn)
            .await
            .expect("renew.lua")
    }

    async fn value(&mut self) -> Option<String> {
        redis::cmd("GET")
            .arg(&self.lock)
            .query_async(&mut self.conn)
            .await
            .unwrap()
    }

    async fn pttl(&mut self) -> i64 {
        redis::cmd("PTTL")
            .arg(&self.lock)
            .query_async(&mut self.conn)
            .await
            .unwrap()
    }

    /// The key's shared value, checked to be relock's form: its header and its entries.
    async fn shared_form(&mut self) -> (String, Vec<(String, i64, u64)>) {
        let value = self.value().await.expect("a shared value");
        let mut words = value.split(' ');
        let header: Vec<&str> = words.by_ref().take(4).collect();
        assert!(value.starts_with('*'), "not the shared form: {value}");
        assert_eq!(header.len(), 4, "{value}");
        let rest: Vec<&str> = words.collect();
        assert_eq!(rest.len() % 3, 0, "entries of three words: {value}");
        let entries: Vec<(String, i64, u64)> = rest
            .chunks(3)
            .map(|entry| {
                assert!(
                    entry[0].len() == 32 && entry[0].bytes().all(|b| b.is_ascii_hexdigit()),
                    "{value}"
                );
                (
                    entry[0].to_owned(),
                    entry[1].parse().expect("a deadline"),
                    entry[2].parse().expect("a fencing token"),
                )
            })
            .collect();
        assert!(
            entries.iter().filter(|entry| entry.1 < 0).count() <= 8,
            "at most 8 released holds: {value}"
        );
        (header.join(" "), entries)
    }
}

async fn config(conn: &mut MultiplexedConnection, setting: &str, value: &str) {
    redis::cmd("CONFIG")
        .arg("SET")
        .arg(setting)
        .arg(value)
        .query_async::<()>(conn)
        .await
        .unwrap();
}

/// A live reader, then 40 readers that come and go (and 5 releases of acquisitions never seen,
/// fencing token 0): the list of released holds fills up to 8 and drops its oldest. Through it
/// all the writer is refused while the first reader lives, every retried release of a kept
/// entry answers 2, every late acquisition of one is refused, the live reader still renews, and
/// the writer that gets in after the last reader has a larger fencing token. Run with releases
/// by release.lua and by batch.lua.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_list_of_released_readers_never_lets_a_writer_beside_a_live_one() {
    let server = RedisServer::start();
    for batched in [false, true] {
        let mut lock = Lock::new(&server, "full-readers").await;
        let live = token(0xa11e);
        let (granted, read) = lock.shared(&live, 0).await;
        assert_eq!(granted, 1);
        let mut readers = Vec::new();
        for n in 0..40u128 {
            let reader = token(0x1000 + n);
            let (granted, fence) = lock.shared(&reader, 0).await;
            assert_eq!(granted, 1, "reader {n}");
            assert_eq!(fence, read, "a reader carries the key's last token");
            if n % 8 == 0 {
                // A release whose acquisition's answer never came, beside live readers.
                let unseen = token(0x2000 + n);
                assert_eq!(lock.release(&unseen, 0, batched).await, 0);
                assert_eq!(lock.shared(&unseen, 0).await, (2, 0), "its late grant");
            }
            assert_eq!(lock.release(&reader, fence, batched).await, 1, "reader {n}");
            assert_eq!(lock.release(&reader, fence, batched).await, 2, "a retry");
            assert_eq!(lock.shared(&reader, 0).await, (2, 0), "a late grant");
            assert_eq!(lock.renew(&reader).await, 0, "a released hold renews");
            let (_, entries) = lock.shared_form().await;
            let holders: Vec<_> = entries.iter().filter(|entry| entry.1 > 0).collect();
            assert_eq!(holders.len(), 1, "only the live reader holds");
            assert_eq!(holders[0].0, live);
            readers.push((reader, fence));
            let (refused, ttl) = lock.exclusive(&token(0xeeee), true).await;
            assert_eq!(
                refused, 0,
                "a writer beside a live reader (after reader {n})"
            );
            assert!(ttl > 0);
        }
        let (_, entries) = lock.shared_form().await;
        assert_eq!(entries.iter().filter(|entry| entry.1 < 0).count(), 8);
        assert_eq!(lock.renew(&live).await, 1, "the live reader renews");
        // The oldest released readers were dropped: a retry answers 0 (documented).
        assert_eq!(lock.release(&readers[0].0, readers[0].1, batched).await, 0);
        let last = readers.last().unwrap();
        assert_eq!(lock.release(&last.0, last.1, batched).await, 2);
        // A writer that waits claims the key; the live reader's release lets it in.
        let writer = token(0xeeef);
        assert_eq!(lock.exclusive(&writer, false).await.0, 0);
        assert_eq!(
            lock.shared(&token(0x3000), 0).await.0,
            0,
            "queued behind it"
        );
        assert_eq!(lock.release(&live, read, batched).await, 1);
        let (granted, written) = lock.exclusive(&writer, false).await;
        assert_eq!(granted, 1, "the writer after the last reader");
        assert!(written > read, "{written} after the readers' {read}");
        assert_eq!(
            lock.shared(&live, 0).await.0,
            0,
            "a reader beside the writer"
        );
    }
}

/// Two permits, one of them held throughout, the other taken and given back 40 times (and its
/// retried acquisitions answered with the same grant, not a second permit): never a third holder
/// beside two live ones, each permit's fencing token larger than the last, and a full list of
/// released holds takes no permit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn released_permits_take_no_permit_and_never_make_room_for_a_third() {
    let server = RedisServer::start();
    for batched in [false, true] {
        let mut lock = Lock::new(&server, "full-permits").await;
        let (granted, mut last) = lock.shared(&token(0xa11e), 2).await;
        assert_eq!(granted, 1);
        for n in 0..40u128 {
            let permit = token(0x1000 + n);
            let (granted, fence) = lock.shared(&permit, 2).await;
            assert_eq!(granted, 1, "permit {n}");
            assert!(fence > last, "permit {n}: {fence} after {last}");
            last = fence;
            assert_eq!(lock.shared(&permit, 2).await, (1, fence), "a retried grant");
            let (refused, _) = lock.shared(&token(0x5000 + n), 2).await;
            assert_eq!(refused, 0, "a third permit beside two (round {n})");
            assert_eq!(lock.release(&permit, fence, batched).await, 1);
            assert_eq!(lock.shared(&permit, 2).await, (2, 0), "a late grant");
            lock.shared_form().await;
        }
        // The full list takes no permit: one is free.
        let (granted, fence) = lock.shared(&token(0x6000), 2).await;
        assert_eq!(granted, 1);
        assert!(fence > last);
        assert_eq!(lock.shared(&token(0x6001), 2).await.0, 0, "a third permit");
    }
}

/// A tombstone of an exclusive hold `W` whose acquisition's answer never came (fencing token 0)
/// meets a reader: the tombstone becomes a released hold's entry. `W`'s late exclusive
/// acquisition is then refused as released already while the reader lives (never a writer beside
/// it), and a writer that gets in after the reader has a larger fencing token. (After the reader
/// has gone: `a_late_writer_whose_tombstone_a_reader_took_over_is_refused`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tombstone_turned_released_hold_never_lets_its_writer_beside_a_reader() {
    let server = RedisServer::start();
    let mut lock = Lock::new(&server, "tombstone-shared").await;
    let first = token(0xf1);
    let (_, written) = lock.exclusive(&first, false).await;
    assert_eq!(lock.release(&first, written, false).await, 1);
    let late = token(0xbad);
    assert_eq!(
        lock.release(&late, 0, false).await,
        0,
        "names the late writer"
    );
    let reader = token(0x7ead);
    let (granted, read) = lock.shared(&reader, 0).await;
    assert_eq!((granted, read), (1, written), "the last writer's token");
    let (_, entries) = lock.shared_form().await;
    assert!(entries.iter().any(|entry| entry.0 == late && entry.1 < 0));
    assert_eq!(
        lock.shared(&late, 0).await,
        (2, 0),
        "its shared form is refused"
    );
    assert_eq!(
        lock.exclusive(&late, true).await,
        (2, 0),
        "the late writer is refused as released already (never beside a live reader)"
    );
    assert_eq!(lock.release(&reader, read, true).await, 1);
    let next = token(0x2e);
    let (granted, fence) = lock.exclusive(&next, false).await;
    assert_eq!(granted, 1);
    assert!(fence > read);
}

/// batch.lua releases shared holds on a server out of memory (`maxmemory` 1, `noeviction`: every
/// write that may grow memory is refused until the call has written): the released reader's
/// entry is rewritten after a `DEL`, with the key's expiry, beside the other live reader and the
/// last fencing token; a retry answers 2, a release of an acquisition never seen writes nothing,
/// and the writer stays out until the last reader's release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_out_of_memory_release_keeps_the_other_readers_and_the_fencing_token() {
    let server = RedisServer::start();
    let mut admin = server.connection().await;
    for permits in [0, 3] {
        let mut lock = Lock::new(&server, "oom-shared").await;
        let writer = token(0xeeee);
        let (_, written) = lock.exclusive(&writer, false).await;
        assert_eq!(lock.release(&writer, written, false).await, 1);
        let (a, b) = (token(0xa), token(0xb));
        let (_, fence_a) = lock.shared(&a, permits).await;
        let (_, fence_b) = lock.shared(&b, permits).await;
        // A waiting writer's claim, to be kept too.
        if permits == 0 {
            assert_eq!(lock.exclusive(&token(0xc1a1), false).await.0, 0);
        }
        let (header, _) = lock.shared_form().await;
        let before = lock.pttl().await;
        config(&mut admin, "maxmemory-policy", "noeviction").await;
        config(&mut admin, "maxmemory", "1").await;
        let released = lock.release(&a, fence_a, true).await;
        let again = lock.release(&a, fence_a, true).await;
        let unseen_value = lock.value().await;
        let unseen = lock.release(&token(0xd), 0, true).await;
        let after_unseen = lock.value().await;
        let writer_refused = lock.exclusive(&token(0xe), true).await.0;
        let (header_after, entries) = lock.shared_form().await;
        let after = lock.pttl().await;
        let released_b = lock.release(&b, fence_b, true).await;
        let (_, entries_b) = lock.shared_form().await;
        let ttl_b = lock.pttl().await;
        config(&mut admin, "maxmemory", "0").await;
        assert_eq!(released, 1, "permits {permits}");
        assert_eq!(again, 2);
        assert_eq!(unseen, 0);
        assert_eq!(after_unseen, unseen_value, "a release never seen wrote");
        assert_eq!(writer_refused, 0, "a writer beside a live reader");
        assert_eq!(
            header_after, header,
            "the header (fencing token, claim) is kept"
        );
        let live: Vec<_> = entries.iter().filter(|entry| entry.1 > 0).collect();
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].0, b);
        assert!(entries.iter().any(|entry| entry.0 == a && entry.1 < 0));
        assert!(
            after > 0 && after <= before,
            "expiry kept: {after} of {before}"
        );
        assert!(before - after < 5_000, "expiry kept: {after} of {before}");
        assert_eq!(released_b, 1);
        assert!(entries_b.iter().all(|entry| entry.1 < 0));
        assert!(ttl_b > 0, "the key keeps an expiry");
        let next = token(0x2e);
        let (granted, fence) = lock.exclusive(&next, false).await;
        assert_eq!(granted, 1, "permits {permits}");
        assert!(fence > fence_a.max(fence_b).max(written));
    }
}

/// The same histories through the `Locker` API, on Redis and in memory: readers come and go past
/// the bound of released holds beside a live one, the writer stays out until it goes, and its
/// fencing token is larger than the readers'.
async fn many_released_readers_beside_a_live_one(b: &TestBackend) {
    let key = unique_key("api-readers");
    let lockers = b.lockers(2).await;
    let live = lockers[0].read(&key).await.unwrap();
    for _ in 0..40 {
        let reader = lockers[1].try_read(&key).await.unwrap().expect("shares");
        assert_eq!(reader.fencing_token(), live.fencing_token());
        reader.release().await.unwrap();
        assert!(
            lockers[1].try_lock(&key).await.unwrap().is_none(),
            "a writer beside a live reader"
        );
    }
    let info = lockers[1].inspect(&key).await.unwrap().expect("held");
    assert_eq!(info.holds, 1, "released holds are not holders");
    let read = live.fencing_token();
    live.release().await.unwrap();
    let writer = lockers[1].try_lock(&key).await.unwrap().expect("free");
    assert!(writer.fencing_token() > read);
    writer.release().await.unwrap();
}

async fn many_released_permits_beside_a_live_one(b: &TestBackend) {
    let key = unique_key("api-permits");
    let lockers = b.lockers(2).await;
    let held = lockers[0].semaphore(&key, 2).acquire().await.unwrap();
    let mut last = held.fencing_token();
    for _ in 0..40 {
        let permit = lockers[1]
            .semaphore(&key, 2)
            .try_acquire()
            .await
            .unwrap()
            .expect("a free permit");
        assert!(permit.fencing_token() > last);
        last = permit.fencing_token();
        assert!(
            lockers[0]
                .semaphore(&key, 2)
                .try_acquire()
                .await
                .unwrap()
                .is_none(),
            "a third permit"
        );
        permit.release().await.unwrap();
    }
    held.release().await.unwrap();
}

/// A read or permit whose grant too few replicas acknowledged fails `NotReplicated`, is never
/// the caller's, and is given back at once: a writer gets in without waiting for its lease.
async fn a_shared_hold_not_replicated_is_given_back(b: &TestBackend) {
    let key = unique_key("not-replicated");
    let lockers = b.lockers(2).await;
    let failed = lockers[0]
        .read(&key)
        .lease(Duration::from_secs(30))
        .replicas(1, Duration::from_millis(50))
        .await;
    assert!(
        matches!(failed, Err(Error::NotReplicated { .. })),
        "{failed:?}"
    );
    assert!(lockers[0].current_guard(&key).is_none());
    let writer = lockers[1]
        .lock(&key)
        .wait(Duration::from_secs(5))
        .await
        .expect("given back, not held for its lease");
    writer.release().await.unwrap();
    let failed = lockers[0]
        .semaphore(&key, 1)
        .acquire()
        .lease(Duration::from_secs(30))
        .replicas(1, Duration::from_millis(50))
        .await;
    assert!(
        matches!(failed, Err(Error::NotReplicated { .. })),
        "{failed:?}"
    );
    let permit = lockers[1]
        .semaphore(&key, 1)
        .acquire()
        .wait(Duration::from_secs(5))
        .await
        .expect("the one permit given back");
    permit.release().await.unwrap();
    // A read re-entered inside a read hold waits for nothing: it was acknowledged (or not) when
    // first taken.
    let locker = lockers[0].clone();
    let (outer, inner) = lockers[0]
        .read(&key)
        .run(async {
            let outer = relock::current_guard().unwrap().fencing_token();
            let inner = locker
                .read(&key)
                .replicas(1, Duration::from_millis(50))
                .await
                .expect("a re-entered read");
            assert!(inner.is_reentrant());
            (outer, inner.fencing_token())
        })
        .await
        .unwrap();
    assert_eq!(inner, outer);
    // A fresh read beside this locker's own bare read hold is not re-entered: it fails alone
    // and leaves the first hold as it was.
    let bare = lockers[0].read(&key).await.unwrap();
    let fresh = lockers[0]
        .read(&key)
        .replicas(1, Duration::from_millis(50))
        .await;
    assert!(
        matches!(fresh, Err(Error::NotReplicated { .. })),
        "{fresh:?}"
    );
    assert!(bare.is_held());
    assert_eq!(lockers[1].inspect(&key).await.unwrap().unwrap().holds, 1);
    assert!(lockers[1].try_lock(&key).await.unwrap().is_none());
    bare.release().await.unwrap();
}

on_every_backend! {
    limit: LIMIT;
    api_released_readers: many_released_readers_beside_a_live_one;
    api_released_permits: many_released_permits_beside_a_live_one;
    api_not_replicated: a_shared_hold_not_replicated_is_given_back;
}

/// `LimitLayer::hold_until_body_end`, one permit: a body that fails mid-stream gives the permit
/// back with its error; a body read to its end gives it back though the body value lives on; an
/// empty body never polled gives it back when dropped; a handler whose inner service fails gives
/// it back with the error. Never a second request inside while a body still streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_until_body_end_returns_the_permit_on_every_way_out() {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::post;
    use axum::Router;
    use bytes::Bytes;
    use http_body_util::BodyExt;
    use relock_tower::{key, LimitLayer};
    use tokio::sync::mpsc;
    use tower::ServiceExt;

    let server = RedisServer::start();
    let locker = server.locker().await;
    let (senders, mut requests) = mpsc::unbounded_channel();
    let layer = LimitLayer::new(key::header("x-tenant").prefix("tenant:"), 1)
        .locker(locker.clone())
        .wait(Duration::ZERO)
        .hold_until_body_end();
    let app = Router::new()
        .route(
            "/stream",
            post(move || {
                let (chunks, receiver) = mpsc::channel::<Result<Bytes, std::io::Error>>(1);
                senders.send(chunks).expect("the test listens");
                let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
                    let chunk = receiver.recv().await?;
                    Some((chunk, receiver))
                });
                async move { Body::from_stream(stream) }
            }),
        )
        .route("/empty", post(|| async { Body::empty() }))
        .layer(layer);
    let call = |path: &'static str| {
        let app = app.clone();
        async move {
            let request = Request::post(path)
                .header("x-tenant", "9")
                .body(Body::empty())
                .unwrap();
            app.oneshot(request).await.unwrap()
        }
    };
    let in_use = || {
        let locker = locker.clone();
        async move { locker.inspect("tenant:9").await.unwrap().is_some() }
    };
    let until_returned = || async {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while in_use().await {
            assert!(std::time::Instant::now() < deadline, "permit kept");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    // A body that fails mid-stream.
    let response = call("/stream").await;
    assert_eq!(response.status(), StatusCode::OK);
    let chunks = requests.recv().await.unwrap();
    let mut body = response.into_body();
    chunks.send(Ok(Bytes::from_static(b"part"))).await.unwrap();
    body.frame().await.unwrap().unwrap();
    assert_eq!(
        call("/stream").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert!(in_use().await, "returned while the body streams");
    chunks
        .send(Err(std::io::Error::other("broken")))
        .await
        .unwrap();
    assert!(body.frame().await.unwrap().is_err());
    until_returned().await;
    drop(body);
    // A body read to its end, its value kept.
    let response = call("/stream").await;
    assert_eq!(response.status(), StatusCode::OK);
    let chunks = requests.recv().await.unwrap();
    let mut body = response.into_body();
    drop(chunks);
    assert!(body.frame().await.is_none());
    until_returned().await;
    // An empty body, never polled, dropped.
    let response = call("/empty").await;
    assert_eq!(response.status(), StatusCode::OK);
    drop(response);
    until_returned().await;
    drop(body);
    assert_eq!(call("/empty").await.status(), StatusCode::OK);
    until_returned().await;
}

/// History: hold W's exclusive acquisition got no answer, so its release (fencing token 0) left
/// the tombstone `-F W`; reader R came, and the tombstone became R's value's released entry
/// naming W; R left. W's late acquisition then arrives, through acquire.lua or batch.lua: it must
/// be refused as released already (`{2, 0}`), not granted a hold nobody owns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_writer_whose_tombstone_a_reader_took_over_is_refused() {
    let server = RedisServer::start();
    for batched in [false, true] {
        let mut lock = Lock::new(&server, "late-writer").await;
        let late = token(0xbad);
        assert_eq!(lock.release(&late, 0, batched).await, 0);
        let reader = token(0x7ead);
        let (status, read) = lock.shared(&reader, 0).await;
        assert_eq!(status, 1);
        assert_eq!(lock.release(&reader, read, batched).await, 1);
        let answer = if batched {
            lock.exclusive_batched(&late).await
        } else {
            lock.exclusive(&late, false).await
        };
        assert_eq!(
            answer,
            (2, 0),
            "batched {batched}: the late writer was granted a hold nobody owns ({:?})",
            lock.value().await
        );
    }
}

/// History: reader A holds with a lease and retention of 300 ms; the release of X, whose
/// acquisition was never answered (fencing token 0), finds no entry and names X in a released
/// entry until TIME + retention (60 s). The key must live as long as that entry: X's late
/// acquisition 500 ms later is still refused, alone and batched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_entry_for_an_unseen_acquisition_outlives_the_last_grants_expiry() {
    let server = RedisServer::start();
    for batched in [false, true] {
        let mut lock = Lock::new(&server, "outlived").await;
        let a = token(0xa);
        let (status, _): (i64, i64) = script("acquire_shared")
            .key(&lock.lock)
            .arg(&a)
            .arg(300)
            .arg(300)
            .arg(0)
            .invoke_async(&mut lock.conn)
            .await
            .unwrap();
        assert_eq!(status, 1);
        let late = token(0xbad);
        assert_eq!(lock.release(&late, 0, batched).await, 0);
        assert!(
            lock.pttl().await > 30_000,
            "batched {batched}: the key expires before the released entry ({} ms)",
            lock.pttl().await
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            lock.shared(&late, 0).await,
            (2, 0),
            "batched {batched}: the late acquisition was granted after the key expired"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Shared requests in the group commit (batch.lua runs acquire_shared.lua's function with the
// call's one clock reading; a free key is taken with one `SET … NX … GET`).
// ---------------------------------------------------------------------------------------------

/// One call of batch.lua as the group commit sends it: `releases` (`(lock, "-<fence> <token>")`)
/// first, then `acquisitions` (`(lock, request)`); the call's own lease is `LEASE`.
async fn batch(
    conn: &mut MultiplexedConnection,
    releases: &[(&str, String)],
    acquisitions: &[(&str, String)],
) -> Vec<redis::Value> {
    let batch = script("batch");
    let mut invocation = batch.prepare_invoke();
    for (lock, _) in releases.iter().chain(acquisitions) {
        invocation.key(*lock);
    }
    // As the client marks a call with a key more than once: its shared requests are decided
    // together.
    let locks: std::collections::HashSet<&str> = releases
        .iter()
        .chain(acquisitions)
        .map(|(lock, _)| *lock)
        .collect();
    let repeated = locks.len() < releases.len() + acquisitions.len();
    invocation
        .arg(HOLDER)
        .arg(LEASE)
        .arg(RETENTION)
        .arg(format!(
            "{}{}",
            releases.len(),
            if repeated { "+" } else { "" }
        ));
    for (_, request) in releases.iter().chain(acquisitions) {
        invocation.arg(request);
    }
    invocation
        .invoke_async(conn)
        .await
        .expect("batch.lua answers an array")
}

/// A batch call's answer `at` as `(status, value)`, both integers.
fn pair(reply: &[redis::Value], at: usize) -> (i64, i64) {
    match (&reply[2 * at], &reply[2 * at + 1]) {
        (redis::Value::Int(status), redis::Value::Int(value)) => (*status, *value),
        _ => panic!("answer {at} is not two integers: {reply:?}"),
    }
}

/// A batch call's answer `at` as a failure: `-1, "<command> <error>"`.
fn failure(reply: &[redis::Value], at: usize) -> String {
    assert_eq!(reply[2 * at], redis::Value::Int(-1), "{reply:?}");
    redis::from_redis_value(reply[2 * at + 1].clone()).expect("a failure's text")
}

/// A shared request of batch.lua: a reader (`permits` 0) or one of `permits` permits.
fn shared_request(token: &str, permits: u32) -> String {
    format!("{token} {LEASE} {RETENTION} shared {permits}")
}

/// An exclusive request of batch.lua with a lease of its own (a waiting writer: it claims).
fn exclusive_request(token: &str) -> String {
    format!("{token} {LEASE} {RETENTION}")
}

/// The server's clock in microseconds.
async fn micros(conn: &mut MultiplexedConnection) -> u64 {
    let (seconds, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await.unwrap();
    seconds * 1_000_000 + micros
}

/// Writes `value` at the lock key, kept for the retention.
async fn preset(lock: &mut Lock, value: &str) {
    redis::cmd("SET")
        .arg(&lock.lock)
        .arg(value)
        .arg("PX")
        .arg(RETENTION)
        .query_async::<()>(&mut lock.conn)
        .await
        .unwrap();
}

/// History: the key's last fencing token B is an hour ahead of the server's clock (a force-
/// release's tombstone, `-B 000…0`), so every grant's token is `last + 1` exactly and the clock
/// the call shares cannot hide a token handed out twice or going back. One call carries three
/// permits of 3, a waiting writer X and a reader for the key: the permits get B+1, B+2, B+3 in
/// order, X is refused beside them (no writer beside a permit in the same call) and the reader is
/// refused as another kind of holder. The next call releases the three permits and carries X and
/// a fourth permit: X gets B+4 (after every permit's, though its fast path numbers a free key
/// with the call's clock), the permit is refused beside X. The call after releases X and carries
/// two readers: both carry X's token B+4, and a permit beside them is a mismatch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permits_and_a_writer_of_one_key_in_batch_calls_fence_in_grant_order() {
    let server = RedisServer::start();
    let mut lock = Lock::new(&server, "batched-fences").await;
    let base = micros(&mut lock.conn).await + 3_600_000_000;
    let zeros = token(0);
    preset(&mut lock, &format!("-{base} {zeros}")).await;
    let key = lock.lock.clone();
    let permits: Vec<String> = (1..=4).map(|n| token(0xbe00 + n)).collect();
    let (writer, reader) = (token(0x3717e5), token(0x7ead));

    let mut first: Vec<(&str, String)> = permits[..3]
        .iter()
        .map(|permit| (key.as_str(), shared_request(permit, 3)))
        .collect();
    first.push((key.as_str(), exclusive_request(&writer)));
    first.push((key.as_str(), shared_request(&reader, 0)));
    let reply = batch(&mut lock.conn, &[], &first).await;
    for n in 0..3 {
        assert_eq!(
            pair(&reply, n),
            (1, (base + 1 + n as u64) as i64),
            "permit {n}: {reply:?}"
        );
    }
    let (status, ttl) = pair(&reply, 3);
    assert!(
        status == 0 && ttl > 0,
        "a writer beside three permits granted in the same call: {reply:?}"
    );
    assert_eq!(
        pair(&reply, 4),
        (3, 3),
        "a reader beside permits: {reply:?}"
    );
    let (header, entries) = lock.shared_form().await;
    assert!(header.starts_with(&format!("*{} 3 ", base + 3)), "{header}");
    assert!(!header.ends_with(" 0 0"), "the writer's claim: {header}");
    assert_eq!(entries.iter().filter(|entry| entry.1 > 0).count(), 3);

    let releases: Vec<(&str, String)> = permits[..3]
        .iter()
        .enumerate()
        .map(|(n, permit)| (key.as_str(), format!("-{} {permit}", base + 1 + n as u64)))
        .collect();
    let second = [
        (key.as_str(), exclusive_request(&writer)),
        (key.as_str(), shared_request(&permits[3], 3)),
    ];
    let reply = batch(&mut lock.conn, &releases, &second).await;
    for n in 0..3 {
        assert_eq!(pair(&reply, n), (1, 0), "release {n}: {reply:?}");
    }
    assert_eq!(
        pair(&reply, 3),
        (1, (base + 4) as i64),
        "the writer after three permits of one call: {reply:?}"
    );
    let (status, ttl) = pair(&reply, 4);
    assert!(
        status == 0 && ttl > 0,
        "a permit beside the writer: {reply:?}"
    );

    let readers = [token(0x7ead1), token(0x7ead2)];
    let third = [
        (key.as_str(), shared_request(&readers[0], 0)),
        (key.as_str(), shared_request(&readers[1], 0)),
        (key.as_str(), shared_request(&permits[3], 3)),
    ];
    let reply = batch(
        &mut lock.conn,
        &[(key.as_str(), format!("-{} {writer}", base + 4))],
        &third,
    )
    .await;
    assert_eq!(pair(&reply, 0), (1, 0), "{reply:?}");
    assert_eq!(pair(&reply, 1), (1, (base + 4) as i64), "a reader after X");
    assert_eq!(pair(&reply, 2), (1, (base + 4) as i64), "a reader after X");
    assert_eq!(pair(&reply, 3), (3, 0), "a permit beside readers");
    let (_, entries) = lock.shared_form().await;
    assert!(
        entries.iter().any(|entry| entry.0 == writer && entry.1 < 0),
        "X's tombstone is kept as a released hold: {entries:?}"
    );
}

/// History: one call carries a writer X (the call's own lease: the bare-token fast path) for a
/// free key, then a reader and a permit of it: X is granted with the call's clock, the reader and
/// the permit are refused with X's lease left, and X's hold is marked (its release will
/// publish). Another call carries a reader R of a free key, then a waiting writer W, then a
/// second reader: R is granted, W is refused beside R and claims the key, and the second reader
/// queues behind W's claim (a stream of readers in one call cannot starve the writer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_and_shared_holds_of_one_key_in_one_call_exclude_each_other() {
    let server = RedisServer::start();
    let mut lock = Lock::new(&server, "batched-mixed").await;
    let key = lock.lock.clone();
    let (writer, reader, permit) = (token(0x3717e5), token(0x7ead), token(0xbe01));
    let before = micros(&mut lock.conn).await;
    let reply = batch(
        &mut lock.conn,
        &[],
        &[
            (key.as_str(), writer.clone()),
            (key.as_str(), shared_request(&reader, 0)),
            (key.as_str(), shared_request(&permit, 2)),
        ],
    )
    .await;
    let (status, fence) = pair(&reply, 0);
    assert!(status == 1 && fence as u64 >= before, "{reply:?}");
    for at in [1, 2] {
        let (status, ttl) = pair(&reply, at);
        assert!(
            status == 0 && ttl > 0 && ttl <= LEASE as i64,
            "a shared hold beside the writer granted in the same call: {reply:?}"
        );
    }
    let held = lock.value().await.unwrap();
    assert!(held.starts_with(&format!("{writer}+{fence} ")), "{held}");

    let mut lock = Lock::new(&server, "batched-mixed").await;
    let key = lock.lock.clone();
    let second = token(0x7ead2);
    let reply = batch(
        &mut lock.conn,
        &[],
        &[
            (key.as_str(), shared_request(&reader, 0)),
            (key.as_str(), exclusive_request(&writer)),
            (key.as_str(), shared_request(&second, 0)),
        ],
    )
    .await;
    assert_eq!(pair(&reply, 0).0, 1, "{reply:?}");
    let (status, ttl) = pair(&reply, 1);
    assert!(
        status == 0 && ttl > 0,
        "a writer beside a reader granted in the same call: {reply:?}"
    );
    let (status, claim) = pair(&reply, 2);
    assert!(
        status == 0 && claim > LEASE as i64,
        "a reader after the writer's claim in the same call: {reply:?}"
    );
    let (_, entries) = lock.shared_form().await;
    assert_eq!(entries.len(), 1, "{entries:?}");
}

/// A shared request of `token` at `lock`'s key, by acquire_shared.lua alone or batched: its
/// answer, or the error it failed with.
async fn ask_shared(
    lock: &mut Lock,
    token: &str,
    batched: bool,
    permits: u32,
) -> Result<(i64, i64), String> {
    if batched {
        let key = lock.lock.clone();
        let reply = batch(
            &mut lock.conn,
            &[],
            &[(key.as_str(), shared_request(token, permits))],
        )
        .await;
        match &reply[0] {
            redis::Value::Int(-1) => Err(failure(&reply, 0)),
            _ => Ok(pair(&reply, 0)),
        }
    } else {
        script("acquire_shared")
            .key(&lock.lock)
            .arg(token)
            .arg(LEASE)
            .arg(RETENTION)
            .arg(permits)
            .invoke_async::<(i64, i64)>(&mut lock.conn)
            .await
            .map_err(|err| err.to_string())
    }
}

/// History: the one-write fast path (`SET … NX … GET`) of a shared acquisition, alone and
/// batched, meets what is not a free key: a value relock did not write (refused with its PTTL,
/// left as it was), a key of another type (the request fails alone, the key is left as it was),
/// a tombstone (taken, its fencing token continued and the hold it names kept as a released
/// hold; the hold it names refused as released already), and a server out of memory: a free key
/// is not taken (the write's error, nothing written), a retried request of a live permit gets its
/// grant again, a new permit's write is refused with the value left as it was, and a full
/// semaphore refuses as busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_one_write_fast_path_takes_only_a_free_key() {
    let server = RedisServer::start();
    let mut admin = server.connection().await;
    for batched in [false, true] {
        let mut lock = Lock::new(&server, "fast-path").await;
        let key = lock.lock.clone();
        let asker = token(0xa5c);
        // A value relock did not write.
        preset(&mut lock, "not relock's").await;
        let (status, ttl) = ask_shared(&mut lock, &asker, batched, 0).await.unwrap();
        assert!(status == 0 && ttl > 0 && ttl <= RETENTION as i64, "{ttl}");
        assert_eq!(lock.value().await.as_deref(), Some("not relock's"));

        // A key of another type.
        let _: () = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut admin)
            .await
            .unwrap();
        let _: () = redis::cmd("RPUSH")
            .arg(&key)
            .arg("item")
            .query_async(&mut admin)
            .await
            .unwrap();
        let err = ask_shared(&mut lock, &asker, batched, 2).await.unwrap_err();
        assert!(err.contains("WRONGTYPE"), "batched {batched}: {err}");
        let items: Vec<String> = redis::cmd("LRANGE")
            .arg(&key)
            .arg(0)
            .arg(-1)
            .query_async(&mut admin)
            .await
            .unwrap();
        assert_eq!(items, ["item"]);
        let _: () = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut admin)
            .await
            .unwrap();

        // A tombstone, ahead of the clock: the permit continues its token; the hold it names
        // is kept as released, and refused.
        let base = micros(&mut admin).await + 3_600_000_000;
        let gone = token(0x90e);
        preset(&mut lock, &format!("-{base} {gone}")).await;
        let now_ms = micros(&mut admin).await / 1000;
        assert_eq!(
            ask_shared(&mut lock, &asker, batched, 2).await.unwrap(),
            (1, (base + 1) as i64)
        );
        let (header, entries) = lock.shared_form().await;
        assert!(header.starts_with(&format!("*{} 2 ", base + 1)), "{header}");
        let kept = entries.iter().find(|entry| entry.0 == gone).expect("kept");
        assert!(
            kept.1 < 0 && -kept.1 >= (now_ms + RETENTION) as i64 && kept.2 == base,
            "{entries:?}"
        );
        assert!(lock.pttl().await > (RETENTION - 5_000) as i64);
        assert_eq!(lock.shared(&gone, 2).await, (2, 0));
        // Its own tombstone refuses it, and is left as it was.
        preset(&mut lock, &format!("-{base} {asker}")).await;
        assert_eq!(
            ask_shared(&mut lock, &asker, batched, 0).await.unwrap(),
            (2, 0)
        );
        assert_eq!(lock.value().await, Some(format!("-{base} {asker}")));
        let _: () = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut admin)
            .await
            .unwrap();

        // Out of memory.
        let live = token(0x11fe);
        let (granted, live_fence) = lock.shared(&live, 1).await;
        assert_eq!(granted, 1);
        let free = Lock::new(&server, "fast-path-free").await;
        let held_value = lock.value().await;
        config(&mut admin, "maxmemory-policy", "noeviction").await;
        config(&mut admin, "maxmemory", "1").await;
        let on_free = {
            let mut free = free;
            let answer = ask_shared(&mut free, &asker, batched, 0).await;
            (answer, free.value().await)
        };
        let retried = lock.shared(&live, 1).await;
        let full = ask_shared(&mut lock, &asker, batched, 1).await;
        let refused_write = ask_shared(&mut lock, &asker, batched, 0).await;
        let after = lock.value().await;
        config(&mut admin, "maxmemory", "0").await;
        let (answer, written) = on_free;
        assert!(
            matches!(&answer, Err(err) if err.contains("OOM")),
            "batched {batched}: a free key out of memory: {answer:?}"
        );
        assert_eq!(written, None, "batched {batched}: a free key was written");
        assert_eq!(
            retried,
            (1, live_fence),
            "a retried request: the same grant"
        );
        let (status, ttl) = full.unwrap();
        assert!(status == 0 && ttl > 0, "a full semaphore refuses as busy");
        assert_eq!(refused_write, Ok((3, 1)), "a reader beside a permit");
        assert_eq!(
            after, held_value,
            "batched {batched}: the value was changed"
        );
    }
}

/// History: released holds come before a live holder in the list (the released ones moved to
/// the end before it was granted), then more releases, batched, pass the bound of 8: the oldest
/// released entry, in the middle of the value, is dropped, the live holder's entry is left whole
/// (it still renews, and keeps the writer out), the newest 8 are kept in order, a retried
/// release of a kept one answers 2 and of the dropped one 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bound_of_released_holds_drops_the_oldest_even_before_a_live_holder() {
    let server = RedisServer::start();
    let mut lock = Lock::new(&server, "bound-middle").await;
    let tokens: Vec<String> = (0..40u128).map(|n| token(0x1000 + n)).collect();
    let mut fences = Vec::new();
    for token in &tokens {
        let (status, fence) = lock.shared(token, 0).await;
        assert_eq!(status, 1);
        fences.push(fence);
    }
    // Two released first, then the live one, then the rest released one by one.
    for n in 0..2 {
        assert_eq!(lock.release(&tokens[n], fences[n], true).await, 1);
    }
    let live = token(0xa11e);
    assert_eq!(lock.shared(&live, 0).await.0, 1);
    for n in 2..40 {
        assert_eq!(lock.release(&tokens[n], fences[n], true).await, 1, "{n}");
    }
    let (_, entries) = lock.shared_form().await;
    let released: Vec<&str> = entries
        .iter()
        .filter(|entry| entry.1 < 0)
        .map(|entry| entry.0.as_str())
        .collect();
    assert_eq!(
        released,
        tokens[32..].iter().map(String::as_str).collect::<Vec<_>>()
    );
    let alive: Vec<_> = entries.iter().filter(|entry| entry.1 > 0).collect();
    assert_eq!(alive.len(), 1, "{entries:?}");
    assert_eq!(alive[0].0, live);
    assert_eq!(lock.renew(&live).await, 1);
    assert_eq!(lock.exclusive(&token(0xeeee), true).await.0, 0);
    assert_eq!(lock.release(&tokens[32], fences[32], true).await, 2);
    assert_eq!(lock.release(&tokens[31], fences[31], true).await, 0);
    assert_eq!(lock.release(&tokens[0], fences[0], true).await, 0);
}
