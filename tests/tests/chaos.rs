//! The chaos run in CI: a short run per topology whose checker verdict is asserted, and the
//! checker's self-test — workers broken on purpose, which it must fail.
//!
//! Each run starts its own topology, store and five `chaos_worker` processes (see
//! `relock_tests::chaos`), so the runs take turns: on a small machine, two at once would starve
//! each other's renewals and failovers. Seeds are chosen so that the first faults of each
//! schedule include the topology's master faults (the schedule is the seed's; only which worker
//! holds the lock when a fault lands depends on the run).

use std::time::Duration;

use relock_tests::bounded;
use relock_tests::chaos::checker::Analysis;
use relock_tests::chaos::run::{run, RunConfig, RunOutcome, Topology};

/// Past a run's duration, its setup (a cluster takes a few seconds) and its failovers' heals.
const TEST_LIMIT: Duration = Duration::from_secs(60);

/// One run at a time: see the module docs.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn config(topology: Topology, seed: u64, duration: Duration, break_mode: &str) -> RunConfig {
    RunConfig {
        topology,
        duration,
        seed,
        // One folder per run kind, overwritten by the next test run (a run clears what it would
        // otherwise leave stale), so that reports do not pile up.
        out: std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("chaos-{}-{break_mode}", topology.name())),
        // Leases and timeouts sized for a loaded two-core machine: a renewal every 500 ms.
        lease: Duration::from_millis(1500),
        workers: 5,
        replicas: 0,
        break_mode: break_mode.to_owned(),
        worker_exe: env!("CARGO_BIN_EXE_chaos_worker").into(),
        gap: (Duration::from_millis(200), Duration::from_millis(900)),
        only: Vec::new(),
    }
}

async fn smoke(config: RunConfig) -> RunOutcome {
    let _turn = SERIAL.lock().await;
    let outcome = bounded(TEST_LIMIT, run(&config))
        .await
        .unwrap_or_else(|err| panic!("the chaos run did not complete: {err}"));
    eprintln!(
        "{} run: report in {}",
        config.topology.name(),
        outcome.report.display()
    );
    outcome
}

fn report(outcome: &RunOutcome) -> String {
    std::fs::read_to_string(&outcome.report).unwrap_or_default()
}

fn kinds(analysis: &Analysis) -> Vec<&str> {
    analysis.faults.iter().map(|f| f.kind.as_str()).collect()
}

/// The checks every smoke run shares: the checker passes it, and the workers made progress,
/// also after the last fault of the service.
fn assert_passes(outcome: &RunOutcome, min_faults: usize, must_include: &[&str]) {
    let analysis = &outcome.analysis;
    assert!(outcome.notes.is_empty(), "{:?}", outcome.notes);
    assert!(
        analysis.valid(),
        "the checker failed the run:\n{}",
        report(outcome)
    );
    assert!(
        analysis.faults.len() >= min_faults,
        "only {} faults ({:?}), expected at least {min_faults}",
        analysis.faults.len(),
        kinds(analysis)
    );
    for kind in must_include {
        assert!(
            kinds(analysis).contains(kind),
            "no {kind} fault in {:?}",
            kinds(analysis)
        );
    }
    assert!(
        analysis.store.log.len() >= 50,
        "only {} accepted writes: the workers made too little progress",
        analysis.store.log.len()
    );
    let last_service_fault = analysis
        .faults
        .iter()
        .filter(|f| f.pid.is_none())
        .map(|f| f.end)
        .max()
        .unwrap_or(0);
    let writes_after = analysis
        .holds
        .iter()
        .filter(|h| h.start > last_service_fault)
        .count();
    assert!(
        writes_after >= 5,
        "only {writes_after} grants after the last fault of the service healed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_server_smoke_run_passes_the_checker() {
    let outcome = smoke(config(Topology::Single, 5, Duration::from_secs(20), "none")).await;
    assert_passes(
        &outcome,
        6,
        &["restart-master", "pause-master", "kill-worker"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_smoke_run_passes_the_checker() {
    let outcome = smoke(config(
        Topology::Sentinel,
        29,
        Duration::from_secs(20),
        "none",
    ))
    .await;
    assert_passes(&outcome, 4, &["failover-pause", "failover-kill"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_smoke_run_passes_the_checker() {
    let outcome = smoke(config(
        Topology::Cluster,
        3,
        Duration::from_secs(20),
        "none",
    ))
    .await;
    assert_passes(&outcome, 3, &["move-slot", "failover-kill"]);
}

/// Workers that go ahead beside the real holder with its token — what a locker granting twice
/// would cause — must fail the run: overlaps no fault explains, and on the store, tokens that do
/// not increase (the fenced store accepts an equal token, as it cannot tell the two apart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checker_fails_a_run_whose_workers_hold_the_lock_twice() {
    let outcome = smoke(config(
        Topology::Single,
        5,
        Duration::from_secs(10),
        "double-grant",
    ))
    .await;
    let analysis = &outcome.analysis;
    assert!(!analysis.valid(), "the checker passed a broken run");
    assert!(
        analysis.unexplained().count() > 0,
        "no unexplained overlap:\n{}",
        report(&outcome)
    );
    assert!(
        analysis
            .safety
            .iter()
            .any(|violation| violation.contains("not above the token")),
        "no repeated token among {:?}",
        analysis.safety
    );
    assert!(report(&outcome).contains("**Verdict: FAIL**"));
}
