//! Forced handoff: four independent lockers take turns on one key, each holding it for 1 ms.
//!
//! A locker that has released does not ask again until another has taken the key, so every
//! acquisition is a handoff between two owners. Handoff latency is the time from the holder's
//! `release()` call to the next holder's lock resolving; the physical limit of a handoff is
//! two round trips (the release, then the waiter's acquire), so the ideal rate is
//! `1 / (hold + 2·RTT)`, with the hold and the RTT (`PING`) measured in the same run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::contender::Contender;
use crate::contender::Kind;
use crate::plot;
use crate::report::{rate, ratio, Goal, Report, Table};
use crate::stats::Latencies;
use crate::stats::{format_duration, median};
use crate::Bench;

/// How long each holder keeps the lock.
pub(crate) const HOLD: Duration = Duration::from_millis(1);

/// What one handoff run measured.
#[derive(Debug, Default)]
pub(crate) struct Handoff {
    /// Handoffs per second: acquisitions after the first over the time they took.
    pub(crate) rate: f64,
    pub(crate) latencies: Latencies,
    pub(crate) holds: Latencies,
    /// Acquisitions that failed (timed out) and were retried.
    pub(crate) errors: usize,
}

#[derive(Default)]
struct Log {
    /// Who called `release()` last, and when.
    last_release: Option<(usize, Instant)>,
    acquired: Vec<Instant>,
    latencies: Latencies,
    holds: Latencies,
    errors: usize,
}

/// Runs the lockers in `contenders` against each other on `key` for `duration`.
pub(crate) async fn run(contenders: Vec<Arc<Contender>>, key: &str, duration: Duration) -> Handoff {
    let log = Arc::new(Mutex::new(Log::default()));
    let (holder, _) = watch::channel(usize::MAX);
    let holder = Arc::new(holder);
    let end = Instant::now() + duration;
    let tasks: Vec<_> = contenders
        .into_iter()
        .enumerate()
        .map(|(me, contender)| {
            let log = log.clone();
            let holder = holder.clone();
            let key = key.to_owned();
            tokio::spawn(async move {
                let mut turns = holder.subscribe();
                while Instant::now() < end {
                    let held = match contender.acquire(&key).await {
                        Ok(held) => held,
                        Err(_) => {
                            log.lock().unwrap().errors += 1;
                            continue;
                        }
                    };
                    let acquired = Instant::now();
                    {
                        let mut log = log.lock().unwrap();
                        if let Some((previous, released)) = log.last_release.take() {
                            if previous != me {
                                log.latencies.push(acquired - released);
                            }
                        }
                        log.acquired.push(acquired);
                    }
                    holder.send_replace(me);
                    // A blocking-pool sleep holds for 1 ms more exactly than Tokio's
                    // millisecond timer wheel would, without blocking a runtime worker.
                    tokio::task::spawn_blocking(|| std::thread::sleep(HOLD))
                        .await
                        .expect("hold");
                    let releasing = Instant::now();
                    {
                        let mut log = log.lock().unwrap();
                        log.holds.push(releasing - acquired);
                        log.last_release = Some((me, releasing));
                    }
                    contender.release(&key, held).await;
                    if Instant::now() >= end {
                        break;
                    }
                    // Forced handoff: wait for another locker to take the key before asking again.
                    let _ = tokio::time::timeout(
                        end.saturating_duration_since(Instant::now()) + Duration::from_secs(1),
                        turns.wait_for(|holder| *holder != me),
                    )
                    .await;
                }
            })
        })
        .collect();
    let mut stuck = false;
    for task in tasks {
        let abort = task.abort_handle();
        if tokio::time::timeout(duration + Duration::from_secs(15), task)
            .await
            .is_err()
        {
            abort.abort();
            stuck = true;
        }
    }
    assert!(!stuck, "a handoff locker did not finish in time");
    let mut log = std::mem::take(&mut *log.lock().unwrap());
    log.acquired.sort();
    let rate = match (log.acquired.first(), log.acquired.last()) {
        (Some(first), Some(last)) if log.acquired.len() > 1 && last > first => {
            (log.acquired.len() - 1) as f64 / (*last - *first).as_secs_f64()
        }
        _ => 0.0,
    };
    Handoff {
        rate,
        latencies: log.latencies,
        holds: log.holds,
        errors: log.errors,
    }
}

/// The median `PING` round trip over `count` sequential pings.
pub(crate) async fn ping_rtt(
    connection: &mut redis::aio::MultiplexedConnection,
    count: usize,
) -> Duration {
    let mut samples = Latencies::default();
    for _ in 0..count {
        let start = Instant::now();
        redis::cmd("PING")
            .query_async::<()>(connection)
            .await
            .expect("PING");
        samples.push(start.elapsed());
    }
    samples.percentile(50.0).unwrap_or_default()
}

/// The handoff scenario over every contender that can wait; returns the median `PING` round
/// trip it measured.
pub(crate) async fn scenario(bench: &Bench<'_>, report: &mut Report) -> Duration {
    let Bench {
        server,
        url,
        plan,
        memory,
        ..
    } = bench;
    let Report { tables, goals } = report;
    let handoff_kinds = [
        Kind::RawPolling,
        Kind::Rslock,
        Kind::Relock,
        Kind::RelockPool {
            check: true,
            url: true,
        },
        Kind::RelockPool {
            check: true,
            url: false,
        },
        Kind::RelockMemory,
    ];
    let mut lockers: HashMap<usize, Vec<Arc<Contender>>> = HashMap::new();
    for (index, kind) in handoff_kinds.iter().enumerate() {
        let mut four = Vec::new();
        for _ in 0..4 {
            four.push(Arc::new(kind.build(url, memory).await));
        }
        lockers.insert(index, four);
    }
    let mut ping = server.connection().await;
    ping_rtt(&mut ping, 100).await;
    let mut rtts = Vec::new();
    let mut rates = vec![Vec::new(); handoff_kinds.len()];
    let mut handoff_latencies = vec![Latencies::default(); handoff_kinds.len()];
    let mut holds = vec![Latencies::default(); handoff_kinds.len()];
    let mut errors = vec![0usize; handoff_kinds.len()];
    for round in 0..plan.handoff_rounds {
        eprintln!("handoff round {}/{}", round + 1, plan.handoff_rounds);
        rtts.push(ping_rtt(&mut ping, 300).await.as_secs_f64());
        for offset in 0..handoff_kinds.len() {
            let index = (round + offset) % handoff_kinds.len();
            let found = run(
                lockers[&index].clone(),
                &format!("bench:handoff:{round}:{index}"),
                plan.handoff_time,
            )
            .await;
            rates[index].push(found.rate);
            handoff_latencies[index].extend(&found.latencies);
            holds[index].extend(&found.holds);
            errors[index] += found.errors;
        }
        bench.flush().await;
    }
    let rtt = Duration::from_secs_f64(median(&rtts));
    let mut table = Table::new(
        format!(
            "Forced handoff, 4 lockers on one key, {} hold (median rate of {} rounds of {:?}; latency = release() call → next holder's lock)",
            format_duration(HOLD),
            plan.handoff_rounds,
            plan.handoff_time
        ),
        &[
            "contender",
            "handoffs/s",
            "ideal/s",
            "÷ ideal",
            "p50",
            "p99",
            "handoffs",
            "timeouts",
        ],
    );
    let mut relock_handoff = (0.0, None, None);
    let mut reference = Vec::new();
    for (index, kind) in handoff_kinds.iter().enumerate() {
        let hold = holds[index].mean().unwrap_or(HOLD);
        let network = if kind.uses_redis() {
            rtt * 2
        } else {
            Duration::ZERO
        };
        let ideal = 1.0 / (hold + network).as_secs_f64();
        let handoff_rate = median(&rates[index]);
        let latency = &mut handoff_latencies[index];
        let p50 = latency.percentile(50.0);
        let p99 = latency.percentile(99.0);
        table.row(vec![
            kind.name().to_owned(),
            rate(handoff_rate),
            rate(ideal),
            ratio(handoff_rate / ideal),
            p50.map_or("—".into(), format_duration),
            p99.map_or("—".into(), format_duration),
            latency.len().to_string(),
            errors[index].to_string(),
        ]);
        match kind {
            Kind::Relock => relock_handoff = (handoff_rate / ideal, p50, p99),
            Kind::Rslock | Kind::RawPolling => {
                reference.push(format!("{} {}", kind.name(), ratio(handoff_rate / ideal)))
            }
            _ => {}
        }
    }
    let mean_hold = holds
        .iter()
        .filter_map(Latencies::mean)
        .map(|d| d.as_secs_f64())
        .sum::<f64>()
        / holds.len() as f64;
    table.note(format!(
        "ideal = 1 / (measured hold + 2·RTT); RTT = median PING round trip = {}, measured hold ≈ {} \
         (a 1 ms sleep on the blocking pool); in memory: ideal = 1 / hold.",
        format_duration(rtt),
        format_duration(Duration::from_secs_f64(mean_hold))
    ));
    table.note(format!(
        "Plot of the latency distributions: {}",
        bench.svg.display()
    ));
    tables.push(table);
    goals.push(Goal::new(
        "forced handoff: relock ÷ ideal 1/(hold + 2·RTT)",
        "≥ 0.80×",
        format!(
            "{} (p50 {}, p99 {}; {})",
            ratio(relock_handoff.0),
            relock_handoff.1.map_or("—".into(), format_duration),
            relock_handoff.2.map_or("—".into(), format_duration),
            reference.join(", ")
        ),
        relock_handoff.0 >= 0.8,
    ));
    let mut series: Vec<(String, Latencies)> = handoff_kinds
        .iter()
        .zip(handoff_latencies)
        .map(|(kind, latencies)| (kind.name().to_owned(), latencies))
        .collect();
    if let Err(err) = plot::handoff_cdf(
        bench.svg,
        &mut series,
        rtt * 2,
        &format!("{} run, 4 lockers, 1 ms hold", bench.mode),
    ) {
        eprintln!("could not write {}: {err}", bench.svg.display());
    }
    drop(lockers);

    rtt
}

/// Permits of the permit-handoff scenario.
pub(crate) const PERMITS: u32 = 4;
/// Tasks of the permit-handoff scenario, spread evenly over `Plan::permit_lockers` lockers (4
/// unless `--permit-lockers` says): 16 tasks ask for 4 permits, so 12 wait whenever every permit
/// is taken.
const PERMIT_TASKS: usize = 16;

/// Permit handoff: `PERMITS` permits of one semaphore, 16 tasks spread over independent lockers,
/// each taking a permit, holding it for [`HOLD`], returning it. A task that returned a permit asks
/// again only once another task has taken one, so every return hands a permit to a waiter.
/// Returns handoffs per second (acquisitions after the first over the time they took), the
/// holds, and the acquisitions that timed out.
pub(crate) async fn permits(
    lockers: &[relock::Locker],
    key: &str,
    duration: Duration,
) -> (f64, Latencies, usize) {
    let acquired = Arc::new(Mutex::new((Vec::<Instant>::new(), Latencies::default(), 0)));
    let (taken, _) = watch::channel(0u64);
    let taken = Arc::new(taken);
    let end = Instant::now() + duration;
    let mut tasks = Vec::new();
    for locker in lockers {
        for _ in 0..PERMIT_TASKS / lockers.len() {
            let semaphore = locker.semaphore(key, PERMITS);
            let (acquired, taken) = (acquired.clone(), taken.clone());
            tasks.push(tokio::spawn(async move {
                let mut turns = taken.subscribe();
                while Instant::now() < end {
                    let wait =
                        end.saturating_duration_since(Instant::now()) + Duration::from_secs(1);
                    let permit = match semaphore.acquire().wait(wait).await {
                        Ok(permit) => permit,
                        Err(_) => {
                            acquired.lock().unwrap().2 += 1;
                            continue;
                        }
                    };
                    let at = Instant::now();
                    acquired.lock().unwrap().0.push(at);
                    taken.send_modify(|count| *count += 1);
                    tokio::task::spawn_blocking(|| std::thread::sleep(HOLD))
                        .await
                        .expect("hold");
                    acquired.lock().unwrap().1.push(at.elapsed());
                    let seen = *turns.borrow_and_update();
                    permit.release().await.expect("return the permit");
                    if Instant::now() >= end {
                        break;
                    }
                    // Forced handoff: wait until a task has taken a permit since this one was returned.
                    let _ = tokio::time::timeout(
                        end.saturating_duration_since(Instant::now()) + Duration::from_secs(1),
                        turns.wait_for(|count| *count > seen),
                    )
                    .await;
                }
            }));
        }
    }
    for task in tasks {
        tokio::time::timeout(duration + Duration::from_secs(15), task)
            .await
            .expect("a permit task did not finish in time")
            .expect("permit task");
    }
    let (mut at, holds, errors) = std::mem::take(&mut *acquired.lock().unwrap());
    at.sort();
    let rate = match (at.first(), at.last()) {
        (Some(first), Some(last)) if at.len() > 1 && last > first => {
            (at.len() - 1) as f64 / (*last - *first).as_secs_f64()
        }
        _ => 0.0,
    };
    (rate, holds, errors)
}

/// The permit-handoff table and its goal: relock over Redis (and in memory, for reference)
/// against the ideal `PERMITS / (hold + 2·RTT)`, `rtt` measured in the same run.
pub(crate) async fn permit_scenario(bench: &Bench<'_>, rtt: Duration, report: &mut Report) {
    let Bench {
        url, plan, memory, ..
    } = bench;
    let lockers = plan.permit_lockers;
    let mut redis = Vec::new();
    for _ in 0..lockers {
        redis.push(relock::Locker::connect(url).await.expect("connect"));
    }
    let variants: [(&str, Vec<relock::Locker>, bool); 2] = [
        ("relock Locker::connect", redis, true),
        ("relock in memory", vec![memory.clone(); lockers], false),
    ];
    let mut rates = vec![Vec::new(); variants.len()];
    let mut holds = vec![Latencies::default(); variants.len()];
    let mut errors = vec![0usize; variants.len()];
    // Script calls (EVALSHA and EVAL) the server ran during the Redis variant's runs.
    let mut scripts = 0u64;
    let mut stats = bench.server.connection().await;
    for round in 0..plan.handoff_rounds {
        eprintln!("permit handoff round {}/{}", round + 1, plan.handoff_rounds);
        for offset in 0..variants.len() {
            let index = (round + offset) % variants.len();
            let before = relock_tests::script_calls(&mut stats).await;
            let (rate, found, failed) = permits(
                &variants[index].1,
                &format!("bench:permits:{round}:{index}"),
                plan.handoff_time,
            )
            .await;
            if variants[index].2 {
                scripts += relock_tests::script_calls(&mut stats).await - before;
            }
            rates[index].push(rate);
            holds[index].extend(&found);
            errors[index] += failed;
        }
        bench.flush().await;
    }
    let mut table = Table::new(
        format!(
            "Permit handoff, a semaphore of {PERMITS} on one key, {PERMIT_TASKS} tasks over {lockers} lockers, {} hold (median rate of {} rounds of {:?})",
            format_duration(HOLD),
            plan.handoff_rounds,
            plan.handoff_time
        ),
        &[
            "contender",
            "handoffs/s",
            "ideal/s",
            "÷ ideal",
            "handoffs",
            "timeouts",
            "script calls / permit",
        ],
    );
    let mut relock_ratio = 0.0;
    for (index, (name, _, uses_redis)) in variants.iter().enumerate() {
        let hold = holds[index].mean().unwrap_or(HOLD);
        let network = if *uses_redis { rtt * 2 } else { Duration::ZERO };
        let ideal = f64::from(PERMITS) / (hold + network).as_secs_f64();
        let found = median(&rates[index]);
        table.row(vec![
            (*name).to_owned(),
            rate(found),
            rate(ideal),
            ratio(found / ideal),
            holds[index].len().to_string(),
            errors[index].to_string(),
            if *uses_redis {
                per_permit(scripts, holds[index].len())
            } else {
                "—".to_owned()
            },
        ]);
        if *uses_redis {
            relock_ratio = found / ideal;
        }
    }
    table.note(format!(
        "ideal = {PERMITS} / (measured hold + 2·RTT), the forced handoff's ideal for each of the \
         {PERMITS} permits; RTT = median PING round trip = {}; a task that returned a permit asks \
         again only after another task took one, so every return hands a permit to a waiter. \
         script calls / permit = script calls the server ran (INFO commandstats, EVALSHA + EVAL) \
         ÷ permits granted: 2.00 is one acquisition and one release per permit, every refused \
         attempt adds to it (releases that queue up share a call).",
        format_duration(rtt)
    ));
    report.tables.push(table);
    if lockers != 4 {
        // The goal is set for 16 tasks over 4 lockers.
        return;
    }
    report.goals.push(Goal::new(
        "permit handoff: relock ÷ ideal 4/(hold + 2·RTT)",
        "≥ 0.80×",
        ratio(relock_ratio),
        relock_ratio >= 0.8,
    ));
}

/// Script calls per permit granted, with two decimals.
fn per_permit(scripts: u64, granted: usize) -> String {
    if granted == 0 {
        return "—".to_owned();
    }
    format!("{:.2}", scripts as f64 / granted as f64)
}
