//! Acquire + release on distinct keys: one task in sequence, and 64 tasks at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::contender::Contender;
use crate::contender::Kind;
use crate::report::{rate, ratio, Goal, Report, Table};
use crate::stats::Latencies;
use crate::stats::{format_duration, median};
use crate::Bench;

/// Pairs per second of one task doing `n` cycles on keys of its own, and each cycle's latency.
/// Stops early (with what it has) when `budget` runs out.
pub(crate) async fn one_task(
    contender: &Contender,
    n: usize,
    budget: Duration,
    tag: &str,
) -> (f64, Latencies) {
    let mut latencies = Latencies::default();
    let start = Instant::now();
    let mut done = 0;
    for i in 0..n {
        let key = format!("bench:seq:{tag}:{i}");
        let began = Instant::now();
        contender.cycle(&key).await;
        latencies.push(began.elapsed());
        done += 1;
        if start.elapsed() > budget {
            break;
        }
    }
    (done as f64 / start.elapsed().as_secs_f64(), latencies)
}

/// What a concurrent run measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Concurrent {
    pub(crate) pairs_per_second: f64,
    /// This process's CPU time per pair (user + system).
    pub(crate) client_cpu: Duration,
    /// The server's CPU time per pair (user + system, `INFO cpu`).
    pub(crate) server_cpu: Duration,
}

/// Pairs per second of `tasks` tasks, each doing up to `n / tasks` cycles on keys of its own,
/// and the CPU time each pair cost this process and the server (whose counters are read
/// through `stats`: one connection per server, summed).
pub(crate) async fn many_tasks(
    contender: Arc<Contender>,
    tasks: usize,
    n: usize,
    budget: Duration,
    tag: &str,
    stats: &mut [redis::aio::MultiplexedConnection],
) -> Concurrent {
    let per_task = n / tasks;
    let server_before = crate::cpu::servers(stats).await;
    let client_before = crate::cpu::process();
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let contender = contender.clone();
            let tag = tag.to_owned();
            tokio::spawn(async move {
                let mut done = 0usize;
                for i in 0..per_task {
                    contender
                        .cycle(&format!("bench:par:{tag}:{task}:{i}"))
                        .await;
                    done += 1;
                    if start.elapsed() > budget {
                        break;
                    }
                }
                done
            })
        })
        .collect();
    let mut done = 0;
    for handle in handles {
        done += handle.await.expect("bench task");
    }
    let elapsed = start.elapsed();
    let client_cpu = crate::cpu::process() - client_before;
    let server_cpu = crate::cpu::servers(stats).await - server_before;
    let pairs = done.max(1) as u32;
    Concurrent {
        pairs_per_second: done as f64 / elapsed.as_secs_f64(),
        client_cpu: client_cpu / pairs,
        server_cpu: server_cpu / pairs,
    }
}

/// Acquire + release on distinct keys, one task and many: rates, latency, CPU per pair.
pub(crate) async fn scenario(bench: &Bench<'_>, report: &mut Report) {
    let Bench {
        server,
        url,
        plan,
        memory,
        ..
    } = bench;
    let Report { tables, goals } = report;
    let kinds = [
        Kind::Raw,
        Kind::RawPool { check: true },
        Kind::RawPool { check: false },
        Kind::Rslock,
        Kind::Relock,
        Kind::RelockPool {
            check: true,
            url: false,
        },
        Kind::RelockPool {
            check: false,
            url: false,
        },
        Kind::RelockMemory,
    ];
    let mut contenders = Vec::new();
    for kind in kinds {
        contenders.push(Arc::new(kind.build(url, memory).await));
    }
    let mut stats = [server.connection().await];
    eprintln!("warming up {} contenders", contenders.len());
    for (index, contender) in contenders.iter().enumerate() {
        let tag = format!("warm:{index}");
        one_task(contender, 200, Duration::from_secs(5), &tag).await;
        many_tasks(
            contender.clone(),
            64,
            640,
            Duration::from_secs(10),
            &tag,
            &mut stats,
        )
        .await;
    }
    bench.flush().await;
    let mut sequential = vec![Vec::new(); kinds.len()];
    let mut concurrent = vec![Vec::new(); kinds.len()];
    let mut client_cpu = vec![Vec::new(); kinds.len()];
    let mut server_cpu = vec![Vec::new(); kinds.len()];
    let mut latencies = vec![Latencies::default(); kinds.len()];
    // One task is latency-bound and sensitive to short bursts of load on the machine, so it
    // alternates in many short rounds; 64 tasks saturate the machine and take fewer, longer ones.
    for round in 0..plan.sequential_rounds {
        if round % 5 == 0 {
            eprintln!("one-task rounds {}/{}", round + 1, plan.sequential_rounds);
        }
        for offset in 0..kinds.len() {
            let index = (round + offset) % kinds.len();
            let (pairs, round_latencies) = one_task(
                &contenders[index],
                plan.sequential_pairs,
                Duration::from_secs(10),
                &format!("{round}:{index}"),
            )
            .await;
            sequential[index].push(pairs);
            latencies[index].extend(&round_latencies);
        }
        bench.flush().await;
    }
    for round in 0..plan.rounds {
        eprintln!("{}-task round {}/{}", plan.tasks, round + 1, plan.rounds);
        for offset in 0..kinds.len() {
            let index = (round + offset) % kinds.len();
            let found = many_tasks(
                contenders[index].clone(),
                plan.tasks,
                plan.concurrent_pairs,
                Duration::from_secs(20),
                &format!("{round}:{index}"),
                &mut stats,
            )
            .await;
            concurrent[index].push(found.pairs_per_second);
            client_cpu[index].push(found.client_cpu.as_secs_f64());
            server_cpu[index].push(found.server_cpu.as_secs_f64());
        }
        bench.flush().await;
    }
    let sequential: Vec<f64> = sequential.iter().map(|v| median(v)).collect();
    let concurrent: Vec<f64> = concurrent.iter().map(|v| median(v)).collect();
    let cpu_time = |seconds: &Vec<f64>| format_duration(Duration::from_secs_f64(median(seconds)));
    let mut table = Table::new(
        format!(
            "Acquire + release on distinct keys (medians of {} alternating rounds of {} pairs with 1 task, {} rounds of {} pairs with {} tasks; ÷ raw = ÷ raw multiplexed)",
            plan.sequential_rounds,
            plan.sequential_pairs,
            plan.rounds,
            plan.concurrent_pairs,
            plan.tasks
        ),
        &[
            "contender",
            "1 task pairs/s",
            "÷ raw",
            "p50",
            "p99",
            &format!("{} tasks pairs/s", plan.tasks),
            "÷ raw",
            "client CPU/pair",
            "server CPU/pair",
        ],
    );
    for (index, kind) in kinds.iter().enumerate() {
        let latency = &mut latencies[index];
        table.row(vec![
            kind.name().to_owned(),
            rate(sequential[index]),
            ratio(sequential[index] / sequential[0]),
            latency.percentile(50.0).map_or("—".into(), format_duration),
            latency.percentile(99.0).map_or("—".into(), format_duration),
            rate(concurrent[index]),
            ratio(concurrent[index] / concurrent[0]),
            cpu_time(&client_cpu[index]),
            if kind.uses_redis() {
                cpu_time(&server_cpu[index])
            } else {
                "—".to_owned()
            },
        ]);
    }
    table.note(format!(
        "CPU/pair: user + system CPU time per acquire + release in the {}-task runs, of this \
         process (getrusage) and of redis-server (INFO cpu); both share the machine's cores.",
        plan.tasks
    ));
    let position = |kind: Kind| kinds.iter().position(|k| *k == kind).expect("a contender");
    let relock = position(Kind::Relock);
    let rslock = position(Kind::Rslock);
    let pool_default = position(Kind::RelockPool {
        check: true,
        url: false,
    });
    let pool_no_check = position(Kind::RelockPool {
        check: false,
        url: false,
    });
    tables.push(table);
    // The goals of the throughput issue (relock with fencing tokens, holder metadata and
    // release announcements kept), judged on this run.
    let seq_ratio = sequential[relock] / sequential[0];
    goals.push(Goal::new(
        "1 task: relock ÷ raw multiplexed",
        "≥ 0.92×",
        ratio(seq_ratio),
        seq_ratio >= 0.92,
    ));
    let par_ratio = concurrent[relock] / concurrent[0];
    let rslock_ratio = concurrent[rslock] / concurrent[0];
    goals.push(Goal::new(
        &format!("{} tasks: relock ÷ raw multiplexed", plan.tasks),
        "≥ 0.80×, ahead of rslock",
        format!("{} (rslock {})", ratio(par_ratio), ratio(rslock_ratio)),
        par_ratio >= 0.8 && par_ratio > rslock_ratio,
    ));
    for (what, cpu, target) in [("server", &server_cpu, 1.3), ("client", &client_cpu, 1.15)] {
        let cpu_ratio = median(&cpu[relock]) / median(&cpu[0]);
        goals.push(Goal::new(
            &format!("{what} CPU per pair: relock ÷ raw multiplexed"),
            &format!("≤ {target:.2}×"),
            format!(
                "{} (rslock {})",
                ratio(cpu_ratio),
                ratio(median(&cpu[rslock]) / median(&cpu[0]))
            ),
            cpu_ratio <= target,
        ));
    }
    for (index, label) in [(pool_default, "default"), (pool_no_check, "no check")] {
        let par = concurrent[index] / concurrent[relock];
        let seq = sequential[index] / sequential[relock];
        goals.push(Goal::new(
            &format!(
                "relock bb8 pool ({label}) ÷ Locker::connect, {} tasks",
                plan.tasks
            ),
            "≥ 0.80×",
            format!("{} (1 task {})", ratio(par), ratio(seq)),
            par >= 0.8,
        ));
    }
}
