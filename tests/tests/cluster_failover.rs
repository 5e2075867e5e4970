//! A Redis Cluster master dies (SIGKILL) or stalls past the lease (SIGSTOP) while a locker holds
//! keys on every master: each hold is either still held on the promoted replica (renewals
//! continue) or reported lost by its guard, never held twice; the holds on the healthy masters
//! keep being renewed; the keys can be locked again, under larger fencing tokens.

use std::time::{Duration, Instant};

use relock::Locker;
use relock_tests::{unique_key, RedisCluster};

/// A failover with `--cluster-node-timeout 1000` takes 2.1–2.8 s here, and while the dead master
/// is flagged `FAIL` and its replica not yet promoted, every node answers `CLUSTERDOWN` (full
/// coverage is required by default): no hold can be renewed anywhere during that window. A lease
/// of twice the failover time lets the holds on the healthy masters outlive it; with 3 s, a CI
/// machine lost them all when the window covered a whole lease after the last renewal. Holds on
/// the dead master may end while nobody can renew them; their renewals may not hold up the
/// others' (each round is bounded by a quarter of the lease and sent on a direct connection to
/// each master).
const LEASE: Duration = Duration::from_secs(6);
const KEYS: usize = 24;

fn locker(cluster: &RedisCluster) -> Locker {
    Locker::builder()
        .cluster(cluster.seeds())
        .lease(LEASE)
        .wait(Duration::from_secs(15))
        .build()
        .expect("a cluster locker")
}

/// How the master of the first key fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// SIGKILL: its connections are refused at once.
    Kill,
    /// SIGSTOP until its replica took over, then SIGCONT: its connections stay open and
    /// unanswered, and the redis-rs cluster client stops every request while it rebuilds its slot
    /// map around the stalled node (renewals through it would end every hold).
    Pause,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_failover_never_leaves_two_holders_and_fencing_tokens_keep_increasing() {
    failover_history(Fault::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_stalled_past_the_lease_never_leaves_two_holders_nor_ends_the_others_holds() {
    failover_history(Fault::Pause).await;
}

async fn failover_history(fault: Fault) {
    let mut cluster = RedisCluster::start(3, 1);
    let holder = locker(&cluster);
    let keys: Vec<String> = (0..KEYS)
        .map(|i| unique_key(&format!("failover-{i}")))
        .collect();
    let masters: std::collections::HashSet<u16> =
        keys.iter().map(|key| cluster.master_of(key)).collect();
    assert_eq!(masters.len(), 3, "the keys are spread over every master");
    let mut guards = Vec::new();
    for key in &keys {
        guards.push(holder.lock(key).await.expect("lock before the failover"));
    }
    let before: Vec<u64> = guards.iter().map(|guard| guard.fencing_token()).collect();
    // Let the replicas receive the grants (replication is asynchronous).
    tokio::time::sleep(Duration::from_millis(300)).await;

    let victim = keys[0].clone();
    let on_victim: Vec<bool> = keys
        .iter()
        .map(|key| cluster.master_of(key) == cluster.master_of(&victim))
        .collect();
    let (failover, paused) = tokio::task::block_in_place(|| match fault {
        Fault::Kill => (cluster.kill_master_of(&victim), None),
        Fault::Pause => {
            let (port, failover) = cluster.pause_master_of(&victim);
            (failover, Some(port))
        }
    });
    println!("{fault:?}: failover took {failover:?}");
    // Every hold gets a renewal attempt against the new topology.
    tokio::time::sleep(LEASE / 3 + Duration::from_secs(1)).await;

    let other = locker(&cluster);
    let (mut kept, mut healthy, mut healthy_kept) = (0, 0, 0);
    for ((key, guard), moved) in keys.iter().zip(&guards).zip(&on_victim) {
        if !moved {
            healthy += 1;
            healthy_kept += usize::from(guard.is_held());
        }
        if guard.is_held() {
            kept += 1;
            let info = other
                .inspect(key.as_str())
                .await
                .expect("inspect after the failover")
                .unwrap_or_else(|| panic!("{key} is held by its guard but gone from the cluster"));
            assert_eq!(info.fencing_token, guard.fencing_token(), "{key}");
            let second = other.try_lock(key.as_str()).await.expect("try_lock");
            assert!(
                second.is_none(),
                "{key} has two holders (on the failed master: {moved})"
            );
        }
    }
    println!(
        "{fault:?}: {kept} of {KEYS} holds survived the failover; {healthy_kept} of the {healthy} on healthy masters"
    );
    // On a loaded machine a renewal may still miss a deadline now and then; a round that waited
    // for the dead master would lose them all.
    assert!(
        healthy_kept * 2 >= healthy,
        "{healthy_kept} of {healthy} holds on healthy masters survived another master's failover"
    );

    if let Some(port) = paused {
        // The stalled master wakes up demoted: whatever it still has must not count.
        cluster.resume(port);
        tokio::time::sleep(Duration::from_millis(500)).await;
        for (key, guard) in keys.iter().zip(&guards) {
            if guard.is_held() {
                let second = other.try_lock(key.as_str()).await.expect("try_lock");
                assert!(second.is_none(), "{key} has two holders after the resume");
            }
        }
    }
    for guard in guards {
        let _ = guard.release().await;
    }
    let relock_started = Instant::now();
    for (key, before) in keys.iter().zip(before) {
        let guard = other
            .lock(key.as_str())
            .wait(failover + Duration::from_secs(5))
            .await
            .unwrap_or_else(|err| panic!("{key} cannot be locked again: {err}"));
        assert!(
            guard.fencing_token() > before,
            "{key}: fencing token went backwards"
        );
        guard.release().await.expect("release after the failover");
    }
    println!(
        "every key locked again within {:?} after the failover",
        relock_started.elapsed()
    );
}

/// A cluster that cannot be reached — a closed port, or a node that accepts connections and never
/// answers — fails with `Error::Backend` within the connect and response timeouts, never a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_that_cannot_be_reached_fails_with_backend_within_the_timeouts() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_port = silent.local_addr().expect("address").port();
    let closed_port = relock_tests::free_port();
    for port in [closed_port, silent_port] {
        let locker = Locker::builder()
            .cluster([format!("redis://127.0.0.1:{port}")])
            .connect_timeout(Duration::from_millis(500))
            .response_timeout(Duration::from_millis(500))
            .build()
            .expect("building opens no connection");
        let started = Instant::now();
        let outcome = locker.lock("unreachable").await;
        let took = started.elapsed();
        assert!(
            matches!(outcome, Err(relock::Error::Backend(_))),
            "port {port}: {outcome:?}"
        );
        assert!(took < Duration::from_secs(3), "port {port}: took {took:?}");
    }
    drop(silent);
}
