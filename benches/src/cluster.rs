//! `--cluster`: relock on a private 3-master Redis Cluster (no replicas), a mode of its own so
//! that the default run does not grow. Acquire + release on distinct keys against the raw
//! baseline on the same redis-rs cluster client, in alternating rounds; then the watchdog's
//! renewal of many holds, master by master: renewals per tick (`INFO commandstats`), commands
//! per tick (`total_commands_processed`), and every renewal's server-side time and connection
//! (`MONITOR` on each master).

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use relock::{LockGuard, Locker};
use relock_tests::RedisCluster;

use crate::contender::{raw_cluster, Contender};
use crate::renewal::{bursts, monitor, release_all, Burst};
use crate::report::{rate, ratio, Goal, Report, Table};
use crate::stats::{format_duration, median, Latencies};
use crate::throughput::{many_tasks, one_task};
use crate::Plan;

/// Masters in the benchmark's cluster.
const MASTERS: usize = 3;

/// Starts the cluster, measures, prints the report; the cluster is killed on every way out.
pub(crate) fn run(plan: &Plan, quick: bool, markdown: bool) -> ExitCode {
    let cluster = RedisCluster::start(MASTERS, 0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mode = if quick { "quick" } else { "full" };
    let finished = runtime.block_on(async {
        tokio::select! {
            outcome = tokio::time::timeout(plan.limit, measure(&cluster, plan, mode, markdown)) => match outcome {
                Ok(()) => Ok(()),
                Err(_) => Err(format!("the benchmark did not finish within {:?}", plan.limit)),
            },
            _ = tokio::signal::ctrl_c() => Err("interrupted".to_owned()),
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    drop(cluster);
    match finished {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("relock-benches: {message}");
            ExitCode::FAILURE
        }
    }
}

/// One master, reached directly (never through the cluster client) for its counters.
struct Master {
    port: u16,
    client: redis::Client,
    connection: MultiplexedConnection,
}

async fn masters(cluster: &RedisCluster) -> Vec<Master> {
    let mut masters = Vec::new();
    for port in cluster.master_ports() {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("url");
        let connection = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to a master");
        masters.push(Master {
            port,
            client,
            connection,
        });
    }
    masters
}

async fn flush(masters: &mut [Master]) {
    for master in masters {
        redis::cmd("FLUSHALL")
            .query_async::<()>(&mut master.connection)
            .await
            .expect("FLUSHALL");
    }
}

/// A numeric field of `INFO <section>`.
async fn info_field(connection: &mut MultiplexedConnection, section: &str, field: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query_async(connection)
        .await
        .expect("INFO");
    info.lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            (name == field).then(|| value.trim().parse().ok()).flatten()
        })
        .unwrap_or(0)
}

async fn evalsha_calls(connection: &mut MultiplexedConnection) -> u64 {
    relock_tests::command_stats(connection)
        .await
        .into_iter()
        .find_map(|(name, calls)| (name == "evalsha").then_some(calls))
        .unwrap_or(0)
}

/// The median of 200 `PING` round trips.
async fn ping_rtt(connection: &mut MultiplexedConnection) -> Duration {
    let mut samples = Vec::new();
    for _ in 0..200 {
        let began = Instant::now();
        redis::cmd("PING")
            .query_async::<String>(connection)
            .await
            .expect("PING");
        samples.push(began.elapsed().as_secs_f64());
    }
    Duration::from_secs_f64(median(&samples))
}

async fn measure(cluster: &RedisCluster, plan: &Plan, mode: &str, markdown: bool) {
    let started = Instant::now();
    let load_before = crate::load_average();
    let mut masters = masters(cluster).await;
    let seeds = cluster.seeds();
    let mut header = vec![format!(
        "relock-benches --cluster ({mode} run): a Redis Cluster of {} masters, no replicas, on loopback ports {}",
        masters.len(),
        masters
            .iter()
            .map(|m| m.port.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )];
    header.extend(crate::machine());
    for line in &header {
        eprintln!("{line}");
    }
    let mut report = Report::default();
    throughput(&seeds, &mut masters, plan, &mut report).await;
    renewal(&seeds, &mut masters, plan, &mut report).await;
    header.push(format!(
        "load average (1, 5, 15 min) before: {load_before}, after: {}; run took {:.0} s",
        crate::load_average(),
        started.elapsed().as_secs_f64()
    ));
    print!("{}", report.render(&header, markdown));
}

/// Acquire + release on distinct keys, relock against the raw baseline on the same cluster.
async fn throughput(seeds: &[String], masters: &mut [Master], plan: &Plan, report: &mut Report) {
    let names = [
        "raw SET NX PX + Lua (ClusterConnection)",
        "relock Locker::builder().cluster(seeds)",
    ];
    let contenders: Vec<Arc<Contender>> = vec![
        Arc::new(raw_cluster(seeds).await),
        Arc::new(Contender::Relock(
            Locker::builder()
                .cluster(seeds.iter().cloned())
                .build()
                .expect("build a cluster locker"),
        )),
    ];
    let mut stats: Vec<MultiplexedConnection> =
        masters.iter().map(|m| m.connection.clone()).collect();
    eprintln!("warming up {} contenders", contenders.len());
    for (index, contender) in contenders.iter().enumerate() {
        let tag = format!("warm:{index}");
        one_task(contender, 200, Duration::from_secs(5), &tag).await;
        many_tasks(
            contender.clone(),
            plan.tasks,
            640,
            Duration::from_secs(10),
            &tag,
            &mut stats,
        )
        .await;
    }
    flush(masters).await;
    let count = contenders.len();
    let mut sequential = vec![Vec::new(); count];
    let mut concurrent = vec![Vec::new(); count];
    let mut client_cpu = vec![Vec::new(); count];
    let mut server_cpu = vec![Vec::new(); count];
    let mut latencies = vec![Latencies::default(); count];
    for round in 0..plan.sequential_rounds {
        if round % 5 == 0 {
            eprintln!("one-task rounds {}/{}", round + 1, plan.sequential_rounds);
        }
        for offset in 0..count {
            let index = (round + offset) % count;
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
        flush(masters).await;
    }
    for round in 0..plan.rounds {
        eprintln!("{}-task round {}/{}", plan.tasks, round + 1, plan.rounds);
        for offset in 0..count {
            let index = (round + offset) % count;
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
        flush(masters).await;
    }
    let sequential: Vec<f64> = sequential.iter().map(|v| median(v)).collect();
    let concurrent: Vec<f64> = concurrent.iter().map(|v| median(v)).collect();
    let cpu_time = |seconds: &Vec<f64>| format_duration(Duration::from_secs_f64(median(seconds)));
    let mut table = Table::new(
        format!(
            "Redis Cluster ({} masters): acquire + release on distinct keys (medians of {} alternating rounds of {} pairs with 1 task, {} rounds of {} pairs with {} tasks; ÷ raw = ÷ raw on the ClusterConnection)",
            masters.len(),
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
    for (index, name) in names.iter().enumerate() {
        let latency = &mut latencies[index];
        table.row(vec![
            (*name).to_owned(),
            rate(sequential[index]),
            ratio(sequential[index] / sequential[0]),
            latency.percentile(50.0).map_or("—".into(), format_duration),
            latency.percentile(99.0).map_or("—".into(), format_duration),
            rate(concurrent[index]),
            ratio(concurrent[index] / concurrent[0]),
            cpu_time(&client_cpu[index]),
            cpu_time(&server_cpu[index]),
        ]);
    }
    table.note(format!(
        "Keys are distinct and spread over every slot. Server CPU/pair sums the {} masters' INFO cpu; \
         client and servers share the machine's cores.",
        masters.len()
    ));
    report.tables.push(table);
}

/// What one master saw of the renewals.
struct MasterRenewals {
    port: u16,
    holds: usize,
    evalsha: u64,
    commands: u64,
    connected_clients: u64,
    rtt: Duration,
    /// The span of the bench's own single pipeline of as many renewal-shaped scripts.
    reference: Duration,
    bursts: Vec<Burst>,
}

/// Renewal of `plan.renewal_holds` holds spread over the masters, master by master.
async fn renewal(seeds: &[String], masters: &mut [Master], plan: &Plan, report: &mut Report) {
    let holds = plan.renewal_holds;
    let lease = plan.renewal_lease;
    let period = lease / 3;
    eprintln!("renewal of {holds} holds on the cluster (lease {lease:?})");
    flush(masters).await;
    let locker = Locker::builder()
        .cluster(seeds.iter().cloned())
        .lease(lease)
        .build()
        .expect("build a cluster locker");
    let guards = Arc::new(Mutex::new(Vec::with_capacity(holds)));
    let tasks = 64;
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let locker = locker.clone();
            let guards = guards.clone();
            tokio::spawn(async move {
                for i in (task..holds).step_by(tasks) {
                    let guard = locker.lock(format!("bench:renew:{i}")).await.expect("lock");
                    guards.lock().unwrap().push(guard);
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.expect("lock task");
    }
    let guards: Vec<LockGuard> = std::mem::take(&mut *guards.lock().unwrap());
    tokio::time::sleep(period * 2 + period / 4).await;

    // Holds per master: each hold's hash is `relock:{bench:renew:<i>}`, the only key ending in `}`.
    let mut found = Vec::new();
    for master in masters.iter_mut() {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("relock:{bench:renew:*}")
            .query_async(&mut master.connection)
            .await
            .expect("KEYS");
        let rtt = ping_rtt(&mut master.connection).await;
        // The same number of renewal-shaped scripts in one pipeline of the bench's own, on keys
        // this master serves (each hold's hash tag): what one round trip per tick looks like here.
        let reference = crate::renewal::reference_span(
            master.client.clone(),
            keys.iter().map(|key| format!("{key}:reference")).collect(),
        )
        .await;
        found.push(MasterRenewals {
            reference,
            port: master.port,
            holds: keys.len(),
            evalsha: 0,
            commands: 0,
            connected_clients: 0,
            rtt,
            bursts: Vec::new(),
        });
    }

    // Counters over three periods.
    let window = period * 3;
    let mut before = Vec::new();
    let mut server_before = Duration::ZERO;
    for master in masters.iter_mut() {
        let evalsha = evalsha_calls(&mut master.connection).await;
        let commands =
            info_field(&mut master.connection, "stats", "total_commands_processed").await;
        server_before += crate::cpu::server(&mut master.connection).await;
        before.push((evalsha, commands));
    }
    let cpu_before = crate::cpu::process();
    tokio::time::sleep(window).await;
    let cpu = crate::cpu::process() - cpu_before;
    let mut server_cpu = Duration::ZERO;
    for ((master, seen), (evalsha, commands)) in masters.iter_mut().zip(&mut found).zip(before) {
        seen.evalsha = evalsha_calls(&mut master.connection).await - evalsha;
        seen.commands = info_field(&mut master.connection, "stats", "total_commands_processed")
            .await
            - commands;
        server_cpu += crate::cpu::server(&mut master.connection).await;
        seen.connected_clients =
            info_field(&mut master.connection, "clients", "connected_clients").await;
    }
    let server_cpu = server_cpu - server_before;
    let ticks = window.as_secs_f64() / period.as_secs_f64();

    // MONITOR on every master at once, over 3.5 periods.
    let watched = period * 3 + period / 2;
    let watches: Vec<_> = masters
        .iter()
        .map(|master| tokio::spawn(monitor(master.client.clone(), watched, None)))
        .collect();
    let mut all = Vec::new();
    let mut whole_window = (0, u64::MAX);
    for (watch, seen) in watches.into_iter().zip(&mut found) {
        let (renewals, window) = watch.await.expect("monitor task");
        whole_window = (whole_window.0.max(window.0), whole_window.1.min(window.1));
        all.extend(
            renewals
                .iter()
                .map(|(at, addr)| (*at, format!("{}/{addr}", seen.port))),
        );
        seen.bursts = bursts(renewals, period / 4, window);
    }
    let ticks_seen = bursts(all, period / 4, whole_window);
    let lost = guards.iter().filter(|guard| !guard.is_held()).count();
    release_all(guards).await;
    flush(masters).await;

    let mut table = Table::new(
        format!(
            "Redis Cluster ({} masters): lease renewal of {holds} held locks through one cluster locker (lease {lease:?}: a tick every {period:?})",
            masters.len()
        ),
        &[
            "master",
            "holds",
            "EVALSHA per tick",
            "commands per tick",
            "ticks under MONITOR (renewals / connections / server-clock span)",
            "sequential bound (holds × RTT)",
            "the bench's own single pipeline",
            "client connections",
        ],
    )
    .text(&[4]);
    let mut every_tick_one_round_trip = ticks_seen.iter().any(|tick| !tick.cut);
    let mut widest_master = Duration::ZERO;
    for seen in &found {
        let bound = seen.rtt * seen.holds as u32;
        let judged: Vec<&Burst> = seen.bursts.iter().filter(|b| !b.cut).collect();
        // One round trip: every renewal of the tick from one connection, in about the time one
        // pipeline of as many scripts takes on this master (or in under half the time of as many
        // sequential round trips).
        every_tick_one_round_trip &= !judged.is_empty()
            && judged.iter().all(|b| {
                b.renewals == seen.holds
                    && b.connections == 1
                    && (b.span * 2 <= bound
                        || b.span <= seen.reference * 2 + Duration::from_millis(5))
            });
        widest_master = judged
            .iter()
            .map(|b| b.span)
            .fold(widest_master, Duration::max);
        table.row(vec![
            format!("127.0.0.1:{}", seen.port),
            seen.holds.to_string(),
            format!("{:.0}", seen.evalsha as f64 / ticks),
            format!("{:.0}", seen.commands as f64 / ticks),
            seen.bursts
                .iter()
                .map(|b| {
                    format!(
                        "{} / {} / {}{}",
                        b.renewals,
                        b.connections,
                        format_duration(b.span),
                        if b.cut { " (cut)" } else { "" }
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
            format!(
                "{} ({} RTT)",
                format_duration(bound),
                format_duration(seen.rtt)
            ),
            format_duration(seen.reference),
            seen.connected_clients.to_string(),
        ]);
    }
    let whole_ticks: Vec<&Burst> = ticks_seen.iter().filter(|b| !b.cut).collect();
    let widest_tick = whole_ticks
        .iter()
        .map(|b| b.span)
        .fold(Duration::ZERO, Duration::max);
    table.note(format!(
        "Per tick over {} periods of INFO counters: EVALSHA calls (cmdstat_evalsha) and every command \
         (total_commands_processed, which also counts the commands each renewal script runs inside \
         Redis and the benchmark's own INFO reads).",
        ticks
    ));
    table.note(format!(
        "Whole ticks (first renewal on any master to the last, one server clock): {}; \
         this process's CPU per tick {}, the masters' {}; holds lost by the end: {lost}.",
        if whole_ticks.is_empty() {
            "none uncut".to_owned()
        } else {
            whole_ticks
                .iter()
                .map(|b| {
                    format!(
                        "{} renewals from {} connections within {}",
                        b.renewals,
                        b.connections,
                        format_duration(b.span)
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        },
        format_duration(cpu.div_f64(ticks)),
        format_duration(server_cpu.div_f64(ticks))
    ));
    table.note(
        "client connections: INFO clients on each master after the window, the benchmark's own \
         counter connection included. A round trip cannot be seen from the server: one per master \
         per tick is inferred from every renewal of a tick coming from one connection in one \
         burst, within twice the span (+5 ms) of one pipeline of as many renewal-shaped scripts \
         that the bench sends itself to that master, or in less than half the time as many \
         sequential round trips would take.",
    );
    report.tables.push(table);
    report.goals.push(Goal::new(
        "cluster renewal: round trips per node per tick",
        "1",
        format!(
            "{} (each master's renewals from 1 connection within {}; a whole tick within {})",
            if every_tick_one_round_trip {
                "1"
            } else {
                "more than 1"
            },
            format_duration(widest_master),
            format_duration(widest_tick)
        ),
        every_tick_one_round_trip && lost == 0,
    ));
}
