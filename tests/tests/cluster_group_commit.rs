//! Group commit per master on a Redis Cluster: acquisitions and releases bound for one master
//! that queue while calls to it are in flight go out together, as one pipeline of their scripts
//! on a direct connection to the master. These tests put one master behind a proxy (the master
//! announces the proxy's port, so every client connection to it goes through the proxy), which
//! counts the `EVALSHA`s clients send and can hold requests back or swallow replies, and check:
//! requests go out grouped, each with its own answer; a slot moved while its requests wait is
//! answered on its new master; a master killed with requests in flight leaves no lock held twice,
//! and the unknown outcomes are released in the background.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use relock::{LockGuard, Locker};
use relock_tests::{bounded, command_stats, unique_key, Proxy, RedisCluster};

/// Script calls in flight at once per master (`MAX_CALLS` in relock's `backend/batch.rs`).
const MAX_CALLS: u64 = 2;

/// A connection to the node on `port`, not through any proxy.
async fn node(port: u16) -> MultiplexedConnection {
    redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .expect("a node's URL")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to a node")
}

/// `count` fresh keys whose slots the master on `port` serves, as `CLUSTER SLOTS` and
/// `CLUSTER KEYSLOT` on that master say.
async fn keys_on(port: u16, count: usize, name: &str) -> Vec<String> {
    let mut connection = node(port).await;
    let ranges: Vec<(u16, u16)> = {
        let slots: Vec<redis::Value> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut connection)
            .await
            .expect("CLUSTER SLOTS");
        slots
            .iter()
            .filter_map(|range| {
                let redis::Value::Array(fields) = range else {
                    return None;
                };
                let [redis::Value::Int(first), redis::Value::Int(last), redis::Value::Array(master), ..] =
                    fields.as_slice()
                else {
                    return None;
                };
                (master.get(1) == Some(&redis::Value::Int(i64::from(port))))
                    .then_some((*first as u16, *last as u16))
            })
            .collect()
    };
    assert!(
        !ranges.is_empty(),
        "the master on port {port} serves no slot"
    );
    let mut keys = Vec::new();
    let mut i = 0;
    while keys.len() < count {
        let key = unique_key(&format!("{name}-{i}"));
        i += 1;
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(format!("relock:{{{key}}}"))
            .query_async(&mut connection)
            .await
            .expect("CLUSTER KEYSLOT");
        if ranges
            .iter()
            .any(|&(first, last)| first <= slot && slot <= last)
        {
            keys.push(key);
        }
    }
    keys
}

/// Puts the master on `port` behind a proxy that its clients reach it through.
async fn behind_proxy(cluster: &RedisCluster, port: u16) -> Proxy {
    let proxy = Proxy::start(port).await;
    let proxy_port = proxy.port();
    tokio::task::block_in_place(|| cluster.announce_port(port, proxy_port));
    proxy
}

/// `evalsha` calls on the node on `port` since its stats were reset.
async fn evalsha_calls(port: u16) -> u64 {
    command_stats(&mut node(port).await)
        .await
        .into_iter()
        .find_map(|(name, calls)| (name == "evalsha").then_some(calls))
        .unwrap_or(0)
}

/// Sets the last fencing token of each of `keys` (on the node on `port`) to `base + i`, ahead
/// of the clock, in a tombstone naming no hold: the grant of key `i` is then `base + i + 1`
/// exactly, whichever request of a pipeline it is, so a request handed another's answer shows.
async fn preset_fences(port: u16, keys: &[String]) -> u64 {
    let mut connection = node(port).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as u64;
    let base = now + 3_600_000_000;
    for (i, key) in keys.iter().enumerate() {
        redis::cmd("SET")
            .arg(format!("relock:{{{key}}}"))
            .arg(format!("-{} {}", base + i as u64, "0".repeat(32)))
            .arg("PX")
            .arg(600_000)
            .query_async::<()>(&mut connection)
            .await
            .expect("SET a tombstone");
    }
    base
}

/// Many acquisitions for keys on one master, sent at once while the master's replies are held
/// back: no more than [`MAX_CALLS`] requests are on the wire until a call returns, and yet all of
/// them are answered within a few round trips (they went out together), each with its own
/// grant (the fencing token preset for its key).
/// One slot move at a time: two at once (each a cluster of its own behind a delaying proxy) on a
/// loaded two-core machine stretched a resent request of a moved slot past the response timeout.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_on_one_master_go_out_grouped_each_with_its_own_answer() {
    const KEYS: usize = 40;
    /// How long the proxy holds each request back: one round trip.
    const HOLD: Duration = Duration::from_millis(400);
    let cluster = RedisCluster::start(3, 0);
    bounded(Duration::from_secs(60), async {
        let port = cluster.master_ports()[0];
        let keys = keys_on(port, KEYS + 1, "grouped").await;
        let (warm, keys) = keys.split_first().expect("keys");
        let proxy = behind_proxy(&cluster, port).await;
        let locker = Locker::builder()
            .cluster([proxy.url()])
            .response_timeout(Duration::from_secs(10))
            .build()
            .expect("a cluster locker");
        // Opens the connections to the master (all through the proxy) and loads the scripts.
        locker
            .lock(warm.as_str())
            .await
            .expect("warm-up lock")
            .release()
            .await
            .expect("warm-up release");
        let base = preset_fences(port, keys).await;
        let mut admin = node(port).await;
        redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async::<()>(&mut admin)
            .await
            .expect("CONFIG RESETSTAT");

        proxy.delay_requests_of_open_connections(HOLD);
        let before = proxy.evalsha_sent();
        let started = Instant::now();
        let tasks: Vec<_> = keys
            .iter()
            .map(|key| {
                let (locker, key) = (locker.clone(), key.clone());
                tokio::spawn(async move { locker.lock(key.as_str()).await })
            })
            .collect();
        tokio::time::sleep(HOLD / 2).await;
        let on_the_wire = proxy.evalsha_sent() - before;
        let mut guards: Vec<LockGuard> = Vec::new();
        for task in tasks {
            guards.push(task.await.expect("lock task").expect("lock"));
        }
        let took = started.elapsed();
        println!(
            "{KEYS} acquisitions: {on_the_wire} on the wire after {:?}, all answered in {took:?} (one round trip: {HOLD:?})",
            HOLD / 2
        );
        assert!(
            on_the_wire <= MAX_CALLS,
            "{on_the_wire} acquisitions were sent to one master before any call returned (at most \
             {MAX_CALLS} calls in flight, the rest queued for the next call)"
        );
        // Sent one at a time, MAX_CALLS at once, they would take KEYS / MAX_CALLS = 20 round trips.
        assert!(
            took < HOLD * 8,
            "{KEYS} acquisitions took {took:?}, more than 8 round trips of {HOLD:?}: not grouped"
        );
        for (i, (key, guard)) in keys.iter().zip(&guards).enumerate() {
            assert_eq!(
                guard.fencing_token(),
                base + i as u64 + 1,
                "{key} was answered with another request's grant"
            );
        }
        assert_eq!(
            evalsha_calls(port).await,
            KEYS as u64,
            "each acquisition runs once on the master"
        );
        let other = Locker::builder()
            .cluster(cluster.seeds())
            .build()
            .expect("another locker");
        for key in keys {
            assert!(
                other.try_lock(key.as_str()).await.expect("try_lock").is_none(),
                "{key} is free while its guard holds it"
            );
        }
        let released = futures_util::future::join_all(guards.into_iter().map(LockGuard::release));
        for outcome in released.await {
            outcome.expect("release");
        }
        for key in keys {
            other
                .try_lock(key.as_str())
                .await
                .expect("try_lock")
                .unwrap_or_else(|| panic!("{key} is still held after its release"))
                .release()
                .await
                .expect("release");
        }
    })
    .await;
}

/// Acquisitions queued for one master while some of their slots move to another master (the
/// whole move, as `redis-cli --cluster reshard` makes it, runs while the requests are held back):
/// the moved ones are answered `MOVED` in the master's pipeline and resent, the others answered
/// in it; every acquisition is granted once, on the master that now serves its key, and no key
/// can be taken by another locker while its guard holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moved_while_its_requests_are_queued_answers_each_and_holds_none_twice() {
    let _turn = SERIAL.lock().await;
    const KEYS: usize = 12;
    const MOVED: usize = 4;
    const HOLD: Duration = Duration::from_millis(2500);
    let cluster = RedisCluster::start(3, 0);
    bounded(Duration::from_secs(120), async {
        let ports = cluster.master_ports();
        let (port, target) = (ports[0], ports[1]);
        let keys = keys_on(port, KEYS + 1, "moving").await;
        let (warm, keys) = keys.split_first().expect("keys");
        let proxy = behind_proxy(&cluster, port).await;
        let locker = Locker::builder()
            .cluster([proxy.url()])
            // Generous: a request of a moved slot is resent through the cluster connection, and
            // with the proxy delaying requests a CI run on a loaded machine took past 10 s.
            .response_timeout(Duration::from_secs(30))
            .build()
            .expect("a cluster locker");
        locker
            .lock(warm.as_str())
            .await
            .expect("warm-up lock")
            .release()
            .await
            .expect("warm-up release");
        let mut slots: Vec<u16> = keys[..MOVED]
            .iter()
            .map(|key| cluster.slot_of(key))
            .collect();
        slots.sort_unstable();
        slots.dedup();

        proxy.delay_requests_of_open_connections(HOLD);
        let tasks: Vec<_> = keys
            .iter()
            .map(|key| {
                let (locker, key) = (locker.clone(), key.clone());
                tokio::spawn(async move { locker.lock(key.as_str()).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let moving = Instant::now();
        tokio::task::block_in_place(|| {
            for &slot in &slots {
                cluster.move_slot(slot, target);
            }
        });
        println!(
            "slots {slots:?} moved to port {target} in {:?} while their acquisitions waited",
            moving.elapsed()
        );
        let mut guards = Vec::new();
        for (key, task) in keys.iter().zip(tasks) {
            let guard = task
                .await
                .expect("lock task")
                .unwrap_or_else(|err| panic!("lock {key} while its slot moved: {err:?}"));
            guards.push(guard);
        }
        let other = Locker::builder()
            .cluster(cluster.seeds())
            .build()
            .expect("another locker");
        let mut target_node = node(target).await;
        for (i, (key, guard)) in keys.iter().zip(&guards).enumerate() {
            assert!(guard.is_held(), "{key}: lost right after its grant");
            let info = other
                .inspect(key.as_str())
                .await
                .expect("inspect")
                .unwrap_or_else(|| panic!("{key} is held by its guard but gone from the cluster"));
            assert_eq!(info.fencing_token, guard.fencing_token(), "{key}");
            assert!(
                other
                    .try_lock(key.as_str())
                    .await
                    .expect("try_lock")
                    .is_none(),
                "{key} taken by another locker while its guard holds it"
            );
            if i < MOVED {
                let on_target: bool = redis::cmd("EXISTS")
                    .arg(format!("relock:{{{key}}}"))
                    .query_async(&mut target_node)
                    .await
                    .expect("EXISTS on the target");
                assert!(
                    on_target,
                    "{key}: its hold is not on the master its slot moved to"
                );
            }
        }
        let tokens: HashMap<&String, u64> = keys
            .iter()
            .zip(&guards)
            .map(|(key, guard)| (key, guard.fencing_token()))
            .collect();
        for outcome in
            futures_util::future::join_all(guards.into_iter().map(LockGuard::release)).await
        {
            outcome.expect("release");
        }
        for key in keys {
            let again = other
                .try_lock(key.as_str())
                .await
                .expect("try_lock")
                .unwrap_or_else(|| panic!("{key} is still held after its release"));
            assert!(again.fencing_token() > tokens[key], "{key}: fencing token");
            again.release().await.expect("release");
        }
    })
    .await;
}

/// A master is killed after it ran acquisitions whose replies were lost (and replicated them),
/// with more acquisitions queued behind it: whichever way each acquisition ends (granted on the promoted
/// replica after a resend, or failed), no key is held twice, fencing tokens increase, and every
/// key whose acquisition failed is free again well before its lease would end (its unknown
/// outcome was released in the background).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_with_requests_in_flight_leaves_no_lock_held_nor_any_twice() {
    const KEYS: usize = 12;
    /// Far longer than the test waits for a key whose acquisition failed to be free.
    const LEASE: Duration = Duration::from_secs(30);
    let mut cluster = RedisCluster::start(3, 1);
    bounded(Duration::from_secs(90), async {
        let port = cluster.master_ports()[0];
        let keys = keys_on(port, KEYS + 1, "killed").await;
        let (warm, keys) = keys.split_first().expect("keys");
        let slot = cluster.slot_of(&keys[0]);
        let proxy = behind_proxy(&cluster, port).await;
        // The replica follows its master to the announced port: its replication link goes
        // through the proxy too, and must not be cut off.
        let replica_link = {
            let deadline = Instant::now() + Duration::from_secs(3);
            let mut master = node(port).await;
            loop {
                let replication: String = redis::cmd("INFO")
                    .arg("replication")
                    .query_async(&mut master)
                    .await
                    .expect("INFO replication");
                if replication.contains("connected_slaves:1") && proxy.connections() > 0 {
                    break proxy.connections();
                }
                if Instant::now() > deadline {
                    // Still replicating on its first link, not through the proxy.
                    break 0;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let locker = Locker::builder()
            .cluster([proxy.url()])
            .lease(LEASE)
            .response_timeout(Duration::from_secs(1))
            .build()
            .expect("a cluster locker");
        locker
            .lock(warm.as_str())
            .await
            .expect("warm-up lock")
            .release()
            .await
            .expect("warm-up release");

        // The master runs what reaches it (and replicates it), but the locker hears no answer.
        proxy.swallow_replies_of_connections_from(replica_link);
        let tasks: Vec<_> = keys
            .iter()
            .map(|key| {
                let (locker, key) = (locker.clone(), key.clone());
                tokio::spawn(async move { locker.lock(key.as_str()).await })
            })
            .collect();
        // Let the first calls run (and reach the replica), then kill the master.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let failover =
            tokio::task::block_in_place(|| cluster.kill_master_on(port, slot, proxy.port()));
        println!("failover took {failover:?}");
        let mut outcomes = Vec::new();
        for (key, task) in keys.iter().zip(tasks) {
            let outcome = task.await.expect("lock task");
            println!(
                "{key}: {:?}",
                outcome.as_ref().map(LockGuard::fencing_token)
            );
            outcomes.push(outcome);
        }
        let other = Locker::builder()
            .cluster(cluster.seeds())
            .lease(Duration::from_secs(5))
            .build()
            .expect("another locker");
        let mut failed = 0;
        let settled = Instant::now();
        for (key, outcome) in keys.iter().zip(outcomes) {
            match outcome {
                Ok(guard) => {
                    if guard.is_held() {
                        assert!(
                            other
                                .try_lock(key.as_str())
                                .await
                                .expect("try_lock")
                                .is_none(),
                            "{key} has two holders"
                        );
                    }
                    let token = guard.fencing_token();
                    let _ = guard.release().await;
                    let again = other
                        .lock(key.as_str())
                        .wait(Duration::from_secs(10))
                        .await
                        .unwrap_or_else(|err| panic!("{key} cannot be locked again: {err}"));
                    assert!(again.fencing_token() > token, "{key}: fencing token");
                    again.release().await.expect("release");
                }
                Err(_) => {
                    failed += 1;
                    // Granted or not on the dead master (and maybe on its replica): released in
                    // the background, long before the lease would end.
                    let again = other
                        .lock(key.as_str())
                        .wait(Duration::from_secs(10))
                        .await
                        .unwrap_or_else(|err| {
                            panic!("{key}, whose acquisition failed, is still held: {err}")
                        });
                    again.release().await.expect("release");
                }
            }
        }
        println!(
            "{failed} of {KEYS} acquisitions failed; every key free again within {:?}",
            settled.elapsed()
        );
    })
    .await;
}

/// Permits of two keys on one master, asked for at once while the master's replies are held back
/// (so they go out in its pipelines, shared acquisitions through the group commit since f18a0f4),
/// while one key's slot moves to another master: its permits are answered `MOVED` and resent
/// alone through the cluster connection. Of six requests for three permits per key, exactly three
/// are granted (a resend is no second grant, and a request is not granted twice), with distinct
/// fencing tokens; another locker gets none while they are held, and one after their release,
/// with a larger token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permits_queued_while_their_slot_moves_are_granted_at_most_n() {
    let _turn = SERIAL.lock().await;
    const PERMITS: u32 = 3;
    const ASKS: usize = 6;
    const HOLD: Duration = Duration::from_millis(2500);
    let cluster = RedisCluster::start(3, 0);
    bounded(Duration::from_secs(120), async {
        let ports = cluster.master_ports();
        let (port, target) = (ports[0], ports[1]);
        let keys = keys_on(port, 3, "permits-moving").await;
        let (warm, keys) = keys.split_first().expect("keys");
        assert_ne!(cluster.slot_of(&keys[0]), cluster.slot_of(&keys[1]));
        let proxy = behind_proxy(&cluster, port).await;
        let locker = Locker::builder()
            .cluster([proxy.url()])
            // Generous: a request of a moved slot is resent through the cluster connection, and
            // with the proxy delaying requests a CI run on a loaded machine took past 10 s.
            .response_timeout(Duration::from_secs(30))
            .build()
            .expect("a cluster locker");
        let warmed = locker
            .semaphore(warm.as_str(), PERMITS)
            .try_acquire()
            .await
            .expect("warm-up permit")
            .expect("a free semaphore");
        warmed.release().await.expect("warm-up release");

        proxy.delay_requests_of_open_connections(HOLD);
        let tasks: Vec<(usize, _)> = (0..2)
            .flat_map(|k| std::iter::repeat_n(k, ASKS))
            .map(|k| {
                let semaphore = locker.semaphore(keys[k].as_str(), PERMITS);
                (
                    k,
                    tokio::spawn(async move { semaphore.try_acquire().await }),
                )
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let slot = cluster.slot_of(&keys[1]);
        tokio::task::block_in_place(|| cluster.move_slot(slot, target));
        let mut permits: Vec<Vec<relock::Permit>> = vec![Vec::new(), Vec::new()];
        for (k, task) in tasks {
            if let Some(permit) = task.await.expect("permit task").unwrap_or_else(|err| {
                panic!("a permit of {} while its slot moved: {err:?}", keys[k])
            }) {
                permits[k].push(permit);
            }
        }
        let other = Locker::builder()
            .cluster(cluster.seeds())
            .build()
            .expect("another locker");
        let on_target: bool = redis::cmd("EXISTS")
            .arg(format!("relock:{{{}}}", keys[1]))
            .query_async(&mut node(target).await)
            .await
            .expect("EXISTS on the target");
        assert!(
            on_target,
            "the moved key's permits are not on its new master"
        );
        let mut most = HashMap::new();
        for (k, held) in permits.iter().enumerate() {
            assert_eq!(
                held.len(),
                PERMITS as usize,
                "{}: {} permits of {PERMITS} granted",
                keys[k],
                held.len()
            );
            let mut tokens: Vec<u64> = held.iter().map(relock::Permit::fencing_token).collect();
            tokens.sort_unstable();
            tokens.dedup();
            assert_eq!(tokens.len(), PERMITS as usize, "{}: {tokens:?}", keys[k]);
            assert!(
                other
                    .semaphore(keys[k].as_str(), PERMITS)
                    .try_acquire()
                    .await
                    .expect("try_acquire")
                    .is_none(),
                "{}: a fourth permit beside three held",
                keys[k]
            );
            most.insert(k, tokens[tokens.len() - 1]);
        }
        for held in permits {
            for permit in held {
                permit.release().await.expect("release");
            }
        }
        for (k, key) in keys.iter().enumerate() {
            let again = other
                .semaphore(key.as_str(), PERMITS)
                .try_acquire()
                .await
                .expect("try_acquire")
                .unwrap_or_else(|| panic!("{key}: no permit after every release"));
            assert!(again.fencing_token() > most[&k], "{key}: fencing token");
            again.release().await.expect("release");
        }
    })
    .await;
}
