//! relock against the physical limit (raw Redis round trips) and a peer crate (`rslock`), in
//! one run: every contender runs in this process against one private `redis-server`, in
//! alternating rounds so that machine drift cancels out, and the headline is a ratio to a
//! baseline measured in the same run.
//!
//! ```text
//! cargo run --release -p relock-benches                  # full run, a few minutes
//! cargo run --release -p relock-benches -- --quick       # under a minute
//! cargo run --release -p relock-benches -- --markdown    # tables as Markdown (BENCHMARKS.md)
//! ```
//!
//! Every run also writes the handoff latency CDF to `benches/handoff.svg` (`--svg PATH` to
//! change it).
//!
//! `--cluster` (with `--quick` and `--markdown` as above) runs the Redis Cluster scenarios
//! instead, on a private 3-master cluster (see `cluster.rs`): a separate mode, so that the
//! default run's time does not grow.
//!
//! `--fence-memory N` measures the Redis memory that locking `N` distinct keys leaves behind (see
//! `memory.rs`).
//!
//! `--serve none|memory|redis [--port 3000] [--seconds 60]` serves the HTTP scenario's app (a
//! trivial `POST /orders/{id}/pay`, without or with `LockLayer`) for an outside load tool such
//! as `wrk -s benches/wrk/pay.lua`; `redis` starts a private `redis-server` for it.

mod cluster;
mod contender;
mod cpu;
mod handoff;
mod memory;
mod plot;
mod reentry;
mod renewal;
mod report;
mod stats;
mod throughput;
mod tower;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use relock::Locker;
use relock_tests::RedisServer;

use crate::report::Report;

/// The scale of a run.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// Rounds of the 64-task runs.
    pub(crate) rounds: usize,
    /// Rounds of the one-task runs, each of `sequential_pairs` pairs per contender.
    pub(crate) sequential_rounds: usize,
    pub(crate) sequential_pairs: usize,
    pub(crate) concurrent_pairs: usize,
    pub(crate) tasks: usize,
    pub(crate) reentries: u32,
    pub(crate) handoff_rounds: usize,
    pub(crate) handoff_time: Duration,
    /// Independent lockers the permit handoff's 16 tasks are spread over (`--permit-lockers`).
    pub(crate) permit_lockers: usize,
    pub(crate) renewal_holds: usize,
    pub(crate) renewal_lease: Duration,
    pub(crate) http_rounds: usize,
    pub(crate) http_time: Duration,
    pub(crate) http_connections: usize,
    /// The whole run is abandoned (and the server killed) past this.
    pub(crate) limit: Duration,
}

impl Plan {
    fn quick() -> Self {
        Self {
            rounds: 3,
            sequential_rounds: 6,
            sequential_pairs: 500,
            concurrent_pairs: 4_000,
            tasks: 64,
            reentries: 200_000,
            handoff_rounds: 2,
            handoff_time: Duration::from_secs(1),
            permit_lockers: 4,
            renewal_holds: 10_000,
            renewal_lease: Duration::from_millis(1_500),
            http_rounds: 2,
            http_time: Duration::from_secs(1),
            http_connections: 32,
            limit: Duration::from_secs(180),
        }
    }

    fn full() -> Self {
        Self {
            rounds: 9,
            sequential_rounds: 30,
            sequential_pairs: 800,
            concurrent_pairs: 10_000,
            tasks: 64,
            reentries: 1_000_000,
            handoff_rounds: 4,
            handoff_time: Duration::from_secs(3),
            permit_lockers: 4,
            renewal_holds: 10_000,
            renewal_lease: Duration::from_secs(3),
            http_rounds: 5,
            http_time: Duration::from_secs(2),
            http_connections: 32,
            limit: Duration::from_secs(900),
        }
    }
}

struct Options {
    quick: bool,
    markdown: bool,
    cluster: bool,
    svg: PathBuf,
    serve: Option<Serve>,
    fence_memory: Option<usize>,
    /// Runs only these scenarios (`--only throughput,handoff`); all when empty.
    only: Vec<String>,
    /// Lockers of the permit handoff (1, 2, 4, 8 or 16; 4 when not given).
    permit_lockers: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    None,
    Memory,
    Redis,
}

struct Serve {
    backend: Backend,
    port: u16,
    seconds: u64,
}

const USAGE: &str = "usage: relock-benches [--quick] [--markdown] [--svg PATH] [--only SCENARIOS]
                      [--permit-lockers 1|2|4|8|16]
       relock-benches --cluster [--quick] [--markdown]
       relock-benches --serve none|memory|redis [--port 3000] [--seconds 60]
       relock-benches --fence-memory 1000000";

/// The scenarios of a default run, as `--only` names them.
const SCENARIOS: [&str; 5] = ["throughput", "reentry", "handoff", "renewal", "tower"];

fn options() -> Result<Options, String> {
    let mut options = Options {
        quick: false,
        markdown: false,
        cluster: false,
        svg: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("handoff.svg"),
        serve: None,
        fence_memory: None,
        only: Vec::new(),
        permit_lockers: None,
    };
    let (mut port, mut seconds) = (3000, 60);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--quick" => options.quick = true,
            "--markdown" => options.markdown = true,
            "--cluster" => options.cluster = true,
            "--svg" => options.svg = value("--svg")?.into(),
            "--only" => {
                for scenario in value("--only")?.split(',') {
                    if !SCENARIOS.contains(&scenario) {
                        return Err(format!(
                            "--only takes a comma-separated list of {}, not `{scenario}`",
                            SCENARIOS.join(", ")
                        ));
                    }
                    options.only.push(scenario.to_owned());
                }
            }
            "--serve" => {
                let backend = match value("--serve")?.as_str() {
                    "none" => Backend::None,
                    "memory" => Backend::Memory,
                    "redis" => Backend::Redis,
                    other => {
                        return Err(format!(
                            "--serve takes none, memory or redis, not `{other}`"
                        ))
                    }
                };
                options.serve = Some(Serve {
                    backend,
                    port,
                    seconds,
                });
            }
            "--permit-lockers" => {
                let lockers = value("--permit-lockers")?.parse().unwrap_or(0);
                if ![1, 2, 4, 8, 16].contains(&lockers) {
                    return Err(
                        "--permit-lockers takes 1, 2, 4, 8 or 16 (16 tasks share them)".into(),
                    );
                }
                options.permit_lockers = Some(lockers);
            }
            "--fence-memory" => {
                options.fence_memory = Some(
                    value("--fence-memory")?
                        .parse()
                        .map_err(|_| "--fence-memory takes a number of keys")?,
                )
            }
            "--port" => {
                port = value("--port")?
                    .parse()
                    .map_err(|_| "--port takes a number")?
            }
            "--seconds" => {
                seconds = value("--seconds")?
                    .parse()
                    .map_err(|_| "--seconds takes a number")?
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    if let Some(serve) = &mut options.serve {
        serve.port = port;
        serve.seconds = seconds;
    }
    Ok(options)
}

fn main() -> ExitCode {
    let options = match options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(serve) = &options.serve {
        return serve_for_load_tool(serve);
    }
    if let Some(keys) = options.fence_memory {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(memory::run(keys));
        return ExitCode::SUCCESS;
    }
    let mut plan = if options.quick {
        Plan::quick()
    } else {
        Plan::full()
    };
    if let Some(lockers) = options.permit_lockers {
        plan.permit_lockers = lockers;
    }
    if options.cluster {
        return cluster::run(&plan, options.quick, options.markdown);
    }
    // Started outside the runtime so that it is dropped (and the server killed) on every way
    // out of `main`: success, panic, Ctrl-C, or the time limit.
    let server = RedisServer::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let finished = runtime.block_on(async {
        tokio::select! {
            outcome = tokio::time::timeout(plan.limit, run(&server, &plan, &options)) => match outcome {
                Ok(()) => Ok(()),
                Err(_) => Err(format!("the benchmark did not finish within {:?}", plan.limit)),
            },
            _ = tokio::signal::ctrl_c() => Err("interrupted".to_owned()),
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    drop(server);
    match finished {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("relock-benches: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Serves the HTTP scenario's app on 127.0.0.1:`port` until Ctrl-C or `seconds` pass.
fn serve_for_load_tool(serve: &Serve) -> ExitCode {
    let server = (serve.backend == Backend::Redis).then(RedisServer::start);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let locker = match (&server, serve.backend) {
            (Some(server), _) => Some(Locker::connect(&server.url()).await.expect("connect")),
            (None, Backend::Memory) => Some(Locker::in_memory()),
            (None, _) => None,
        };
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", serve.port))
            .await
            .expect("bind the port");
        println!(
            "serving POST /orders/{{id}}/pay on http://127.0.0.1:{} ({:?} backend) for {} s",
            serve.port, serve.backend, serve.seconds
        );
        let seconds = Duration::from_secs(serve.seconds);
        let served = axum::serve(listener, tower::app(locker)).with_graceful_shutdown(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                () = tokio::time::sleep(seconds) => {}
            }
        });
        // Clients still connected after the shutdown signal get 5 s before the server goes.
        let bounded = tokio::time::timeout(seconds + Duration::from_secs(5), served);
        if let Ok(Err(err)) = bounded.await {
            eprintln!("relock-benches: {err}");
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    drop(server);
    ExitCode::SUCCESS
}

pub(crate) fn machine() -> Vec<String> {
    let command = |program: &str, args: &[&str]| {
        std::process::Command::new(program)
            .args(args)
            .output()
            .ok()
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
            .filter(|out| !out.is_empty())
            .unwrap_or_else(|| "unknown".to_owned())
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    vec![
        format!("cores: {cores} ({cpu})"),
        format!("redis: {}", command("redis-server", &["--version"])),
        format!("rustc: {}", command("rustc", &["--version"])),
    ]
}

pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|load| {
            load.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// What every scenario needs: the server, the scale of the run, and where its plot goes.
pub(crate) struct Bench<'a> {
    pub(crate) server: &'a RedisServer,
    pub(crate) url: String,
    pub(crate) plan: &'a Plan,
    /// The in-memory store that in-memory contenders share.
    pub(crate) memory: Locker,
    pub(crate) svg: &'a Path,
    /// `quick` or `full`.
    pub(crate) mode: &'static str,
}

impl Bench<'_> {
    /// Empties the server between rounds.
    pub(crate) async fn flush(&self) {
        redis::cmd("FLUSHALL")
            .query_async::<()>(&mut self.server.connection().await)
            .await
            .expect("FLUSHALL");
    }
}

async fn run(server: &RedisServer, plan: &Plan, options: &Options) {
    let started = Instant::now();
    let load_before = load_average();
    let mode = if options.quick { "quick" } else { "full" };
    let mut header = vec![format!(
        "relock-benches ({mode} run): loopback redis-server on port {}",
        server.port()
    )];
    header.extend(machine());
    for line in &header {
        eprintln!("{line}");
    }
    let bench = Bench {
        server,
        url: server.url(),
        plan,
        memory: Locker::in_memory(),
        svg: &options.svg,
        mode,
    };
    let mut report = Report::default();
    let runs =
        |scenario: &str| options.only.is_empty() || options.only.iter().any(|s| s == scenario);
    if runs("throughput") {
        throughput::scenario(&bench, &mut report).await;
    }
    if runs("reentry") {
        reentry::scenario(&bench, &mut report).await;
    }
    if runs("handoff") || runs("renewal") {
        // The renewal scenario judges its bursts against the round trip the handoff measures.
        let rtt = handoff::scenario(&bench, &mut report).await;
        if runs("handoff") {
            handoff::permit_scenario(&bench, rtt, &mut report).await;
        }
        if runs("renewal") {
            renewal::scenario(&bench, rtt, &mut report).await;
        }
    }
    if runs("tower") {
        tower::scenario(&bench, &mut report).await;
    }

    header.push(format!(
        "load average (1, 5, 15 min) before: {load_before}, after: {}; run took {:.0} s",
        load_average(),
        started.elapsed().as_secs_f64()
    ));
    print!("{}", report.render(&header, options.markdown));
}
