//! One chaos run: the topology, the store, the workers and their links, the nemesis, and at the
//! end the checker and the report.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::checker::{check, Analysis, StoreState, StoreWrite};
use super::history::{now_micros, read_history, Event, HistoryWriter, Op, Type};
use super::link::{Links, Partition};
use super::store::FencedStore;
use crate::{RedisCluster, RedisSentinel, RedisServer, MASTER_NAME};

/// Where the lock lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// One server; a master fault restarts it without persistence or stops it.
    Single,
    /// A master, a replica and three sentinels; a master fault is a failover.
    Sentinel,
    /// Three masters with a replica each; master faults fail over, and the register's slot moves.
    Cluster,
}

impl Topology {
    /// The topology's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Topology::Single => "single",
            Topology::Sentinel => "sentinel",
            Topology::Cluster => "cluster",
        }
    }

    /// Parses `single`, `sentinel` or `cluster`.
    pub fn parse(name: &str) -> Result<Topology, String> {
        match name {
            "single" => Ok(Topology::Single),
            "sentinel" => Ok(Topology::Sentinel),
            "cluster" => Ok(Topology::Cluster),
            other => Err(format!(
                "a topology is `single`, `sentinel` or `cluster`, not {other:?}"
            )),
        }
    }

    /// The faults the nemesis draws from, with their weights.
    pub fn faults(self) -> &'static [(&'static str, u64)] {
        const WORKER: [(&str, u64); 5] = [
            ("kill-worker", 6),
            ("pause-holder", 6),
            ("partition-stall", 3),
            ("partition-drop", 3),
            ("partition-oneway", 3),
        ];
        match self {
            Topology::Single => &[
                WORKER[0],
                WORKER[1],
                WORKER[2],
                WORKER[3],
                WORKER[4],
                ("restart-master", 2),
                ("pause-master", 2),
            ],
            Topology::Sentinel => &[
                WORKER[0],
                WORKER[1],
                WORKER[2],
                WORKER[3],
                WORKER[4],
                ("failover-kill", 2),
                ("failover-pause", 1),
            ],
            Topology::Cluster => &[
                WORKER[0],
                WORKER[1],
                WORKER[2],
                WORKER[3],
                WORKER[4],
                ("failover-kill", 2),
                ("failover-pause", 1),
                ("move-slot", 2),
            ],
        }
    }
}

/// What a run does.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Where the lock lives.
    pub topology: Topology,
    /// How long the nemesis runs.
    pub duration: Duration,
    /// Draws the schedule: which fault when, and its parameters.
    pub seed: u64,
    /// Where the history, the store's log and the report go (created).
    pub out: PathBuf,
    /// The lease of every hold.
    pub lease: Duration,
    /// How many worker processes.
    pub workers: usize,
    /// Replicas that must acknowledge each grant (0: none).
    pub replicas: u32,
    /// `none`, or the workers' broken mode (`double-grant`), for the checker's self-test.
    pub break_mode: String,
    /// The `chaos_worker` executable.
    pub worker_exe: PathBuf,
    /// The pause between two faults is drawn from this range.
    pub gap: (Duration, Duration),
    /// Only these fault kinds (all of the topology's when empty).
    pub only: Vec<String>,
}

/// splitmix64: a schedule must come out the same from the same seed, on any machine and for any
/// version of a crate.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// A duration between `low` and `high`.
    pub fn between(&mut self, low: Duration, high: Duration) -> Duration {
        let span = high.saturating_sub(low).as_micros() as u64;
        low + Duration::from_micros(self.below(span + 1))
    }

    /// One of `choices`, by weight.
    pub fn pick<'a>(&mut self, choices: &[(&'a str, u64)]) -> &'a str {
        let total: u64 = choices.iter().map(|(_, weight)| weight).sum();
        let mut at = self.below(total);
        for (choice, weight) in choices {
            if at < *weight {
                return choice;
            }
            at -= weight;
        }
        choices.last().expect("a choice").0
    }
}

enum Deployment {
    Single(RedisServer),
    Sentinel(RedisSentinel),
    Cluster(RedisCluster),
}

impl Deployment {
    fn start(topology: Topology) -> Deployment {
        match topology {
            Topology::Single => Deployment::Single(RedisServer::start()),
            Topology::Sentinel => Deployment::Sentinel(RedisSentinel::start()),
            Topology::Cluster => Deployment::Cluster(RedisCluster::start(3, 1)),
        }
    }

    /// Every port a worker reaches, each behind a proxy of its own.
    fn ports(&self) -> Vec<u16> {
        match self {
            Deployment::Single(server) => vec![server.port()],
            Deployment::Sentinel(sentinel) => {
                let mut ports = sentinel.sentinel_ports();
                ports.extend(sentinel.data_ports());
                ports
            }
            Deployment::Cluster(cluster) => cluster.ports(),
        }
    }

    /// A worker's `--lock` through its links.
    fn lock_spec(&self, links: &Links) -> String {
        let url = |port| {
            format!(
                "redis://127.0.0.1:{}",
                links.local_port(port).expect("a proxy for every port")
            )
        };
        match self {
            Deployment::Single(server) => format!("single:{}", url(server.port())),
            Deployment::Sentinel(sentinel) => {
                let urls: Vec<String> = sentinel.sentinel_ports().into_iter().map(url).collect();
                format!("sentinel:{MASTER_NAME}:{}", urls.join(","))
            }
            Deployment::Cluster(cluster) => {
                let urls: Vec<String> = cluster.ports().into_iter().map(url).collect();
                format!("cluster:{}", urls.join(","))
            }
        }
    }
}

struct Worker {
    lane: String,
    child: Child,
    links: Links,
    args: Vec<String>,
    stderr: PathBuf,
}

impl Worker {
    fn spawn(exe: &Path, args: &[String], stderr: &Path) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(stderr)
            .expect("open a worker's stderr log");
        Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start the worker {exe:?}: {err}"))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.pid()).expect("a pid fits pid_t");
        // SAFETY: kill(2) has no memory-safety preconditions; `pid` is our unreaped child.
        unsafe { libc::kill(pid, signal) };
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Follows the history as it grows, to know who holds the lock right now.
struct Tail {
    file: File,
    offset: u64,
    partial: String,
    /// Lane → pid of the workers holding the lock, by their own records.
    holding: BTreeMap<String, u32>,
    grants: u64,
}

impl Tail {
    fn new(path: &Path) -> Tail {
        Tail {
            file: File::open(path).expect("open the history"),
            offset: 0,
            partial: String::new(),
            holding: BTreeMap::new(),
            grants: 0,
        }
    }

    fn update(&mut self) {
        self.file
            .seek(SeekFrom::Start(self.offset))
            .expect("seek the history");
        let mut reader = BufReader::new(&self.file);
        let mut line = String::new();
        while let Ok(read) = reader.read_line(&mut line) {
            if read == 0 {
                break;
            }
            self.offset += read as u64;
            if !line.ends_with('\n') {
                self.partial.push_str(&line);
                line.clear();
                break;
            }
            let whole = std::mem::take(&mut self.partial) + &line;
            line.clear();
            let Ok(event) = serde_json::from_str::<Event>(&whole) else {
                continue;
            };
            match (event.f, event.kind, event.pid) {
                (Op::Acquire, Type::Ok, Some(pid)) => {
                    self.grants += 1;
                    self.holding.insert(event.process, pid);
                }
                (Op::Release, Type::Invoke, _) | (Op::Lost, _, _) => {
                    self.holding.remove(&event.process);
                }
                _ => {}
            }
        }
    }
}

struct Nemesis {
    history: HistoryWriter,
    next_id: u64,
}

impl Nemesis {
    fn invoke(&mut self, kind: &str, target: &str, pid: Option<u32>, detail: String) -> u64 {
        self.next_id += 1;
        let mut event = Event::new(now_micros(), "nemesis", Type::Invoke, Op::Fault);
        event.id = Some(self.next_id);
        event.fault = Some(kind.to_owned());
        event.target = Some(target.to_owned());
        event.pid = pid;
        event.detail = Some(detail);
        self.history.append(&event);
        self.next_id
    }

    fn heal_after(&self, id: u64, kind: &str, took: Duration, detail: String) {
        let mut event = Event::new(now_micros(), "nemesis", Type::Ok, Op::Fault);
        event.id = Some(id);
        event.fault = Some(kind.to_owned());
        event.took = Some(took.as_micros() as u64);
        event.detail = Some(detail);
        self.history.append(&event);
    }

    fn heal(&self, id: u64, kind: &str, detail: Option<String>) {
        let mut event = Event::new(now_micros(), "nemesis", Type::Ok, Op::Fault);
        event.id = Some(id);
        event.fault = Some(kind.to_owned());
        event.detail = detail;
        self.history.append(&event);
    }
}

/// The result of a run: the checker's analysis and where the files went.
#[derive(Debug)]
pub struct RunOutcome {
    /// What the checker found.
    pub analysis: Analysis,
    /// The Markdown report.
    pub report: PathBuf,
    /// The SVG timeline.
    pub timeline: PathBuf,
    /// What went wrong with the run itself (a harness step that failed), in the report too.
    pub notes: Vec<String>,
}

/// Runs the chaos run `config` describes; needs a multi-threaded Tokio runtime (the harness's
/// blocking steps run in `block_in_place`).
pub async fn run(config: &RunConfig) -> Result<RunOutcome, String> {
    std::fs::create_dir_all(&config.out)
        .map_err(|err| format!("cannot create {:?}: {err}", config.out))?;
    let history_path = config.out.join("history.jsonl");
    let _ = std::fs::remove_file(&history_path);
    let history = HistoryWriter::open(&history_path)
        .map_err(|err| format!("cannot create {history_path:?}: {err}"))?;
    let kinds: Vec<(&str, u64)> = config
        .topology
        .faults()
        .iter()
        .copied()
        .filter(|(kind, _)| config.only.is_empty() || config.only.iter().any(|k| k == kind))
        .collect();
    if let Some(unknown) = config
        .only
        .iter()
        .find(|k| !config.topology.faults().iter().any(|(kind, _)| kind == k))
    {
        return Err(format!(
            "{unknown:?} is not a fault of the {} topology; its faults are {:?}",
            config.topology.name(),
            config
                .topology
                .faults()
                .iter()
                .map(|(k, _)| *k)
                .collect::<Vec<_>>()
        ));
    }

    let topology = config.topology;
    let mut deployment = tokio::task::block_in_place(|| Deployment::start(topology));
    let store_server = tokio::task::block_in_place(RedisServer::start);
    let key = "chaos:register";

    let mut workers = Vec::new();
    for lane in 0..config.workers {
        let lane = format!("w{lane}");
        let mut links = Links::new();
        for port in deployment.ports() {
            links.add(port).await;
        }
        let args: Vec<String> = vec![
            "--process".into(),
            lane.clone(),
            "--lock".into(),
            deployment.lock_spec(&links),
            "--store".into(),
            store_server.url(),
            "--key".into(),
            key.into(),
            "--lease-ms".into(),
            config.lease.as_millis().to_string(),
            "--wait-ms".into(),
            (config.lease * 4).as_millis().to_string(),
            "--replicas".into(),
            config.replicas.to_string(),
            "--history".into(),
            history_path.display().to_string(),
            "--seed".into(),
            config.seed.to_string(),
            "--break".into(),
            config.break_mode.clone(),
        ];
        let stderr = config.out.join(format!("{lane}.stderr"));
        let _ = std::fs::remove_file(&stderr);
        let child = Worker::spawn(&config.worker_exe, &args, &stderr);
        workers.push(Worker {
            lane,
            child,
            links,
            args,
            stderr,
        });
    }

    let mut nemesis = Nemesis {
        history,
        next_id: 0,
    };
    let mut tail = Tail::new(&history_path);
    let mut rng = Rng::new(config.seed);
    let lease = config.lease;
    let started = Instant::now();
    // Let every worker connect and take the lock once before the first fault.
    while tail.grants < config.workers as u64 && started.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        tail.update();
    }
    let end = Instant::now() + config.duration;
    let mut notes = Vec::new();
    loop {
        let gap = rng.between(config.gap.0, config.gap.1);
        if Instant::now() + gap >= end {
            break;
        }
        tokio::time::sleep(gap).await;
        tail.update();
        let kind = rng.pick(&kinds);
        let injected = inject(
            kind,
            &mut rng,
            &mut tail,
            &mut nemesis,
            &mut workers,
            &mut deployment,
            config,
            key,
        )
        .await;
        // A worker exits only when killed by the nemesis: any other exit is a crash to report
        // (its stderr is in the run's folder), and its lane goes on with a new process.
        for worker in workers.iter_mut() {
            if let Ok(Some(status)) = worker.child.try_wait() {
                notes.push(format!(
                    "{} (pid {}) exited by itself with {status}; see {}",
                    worker.lane,
                    worker.pid(),
                    worker.stderr.display()
                ));
                worker.child = Worker::spawn(&config.worker_exe, &worker.args, &worker.stderr);
            }
        }
        if let Err(err) = injected {
            notes.push(format!(
                "The nemesis stopped {:.1} s into the run: the harness failed during a {kind} \
                 fault ({err}). The history up to there is checked as usual.",
                (Instant::now() + config.duration - end).as_secs_f64()
            ));
            break;
        }
    }
    // A quiet second, so that every fault's aftermath is in the history.
    tokio::time::sleep(Duration::from_secs(1).max(lease)).await;
    drop(workers);

    let mut store = FencedStore::connect(&store_server.url())
        .await
        .map_err(|err| format!("cannot connect to the store: {err}"))?;
    let state = store.state().await?;
    write_store_log(&config.out, &state, &notes)?;
    finish(config, state, notes)
}

/// Checks a run again from the files it left in `config.out` (`history.jsonl`, `store.jsonl`,
/// `run.json`) and writes its report anew, with this version of the checker and the report.
pub fn recheck(config: &RunConfig) -> Result<RunOutcome, String> {
    let read = |name: &str| {
        let path = config.out.join(name);
        std::fs::read_to_string(&path).map_err(|err| format!("cannot read {path:?}: {err}"))
    };
    let mut log = Vec::new();
    for (number, line) in read("store.jsonl")?.lines().enumerate() {
        let write: serde_json::Value = serde_json::from_str(line)
            .map_err(|err| format!("store.jsonl:{}: {err}", number + 1))?;
        let field = |name: &str| {
            write[name]
                .as_u64()
                .ok_or_else(|| format!("store.jsonl:{}: no number {name}", number + 1))
        };
        log.push(StoreWrite {
            value: field("value")?,
            token: field("token")?,
            process: write["process"].as_str().unwrap_or_default().to_owned(),
            pid: u32::try_from(field("pid")?).map_err(|err| err.to_string())?,
        });
    }
    let run: serde_json::Value =
        serde_json::from_str(&read("run.json")?).map_err(|err| format!("run.json: {err}"))?;
    let number = |name: &str| {
        run[name]
            .as_u64()
            .ok_or_else(|| format!("run.json has no number {name}"))
    };
    let state = StoreState {
        log,
        register: number("register")?,
        rejected_reads: number("rejected_reads")?,
        rejected_writes: number("rejected_writes")?,
    };
    let notes = run["notes"]
        .as_array()
        .map(|notes| {
            notes
                .iter()
                .filter_map(|note| note.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    finish(config, state, notes)
}

fn finish(config: &RunConfig, state: StoreState, notes: Vec<String>) -> Result<RunOutcome, String> {
    let events = read_history(&config.out.join("history.jsonl"))?;
    let analysis = check(&events, state, config.lease.as_micros() as u64);
    let report = config.out.join("report.md");
    let timeline = config.out.join("timeline.svg");
    std::fs::write(&report, super::report::markdown(&analysis, config, &notes))
        .map_err(|err| format!("cannot write {report:?}: {err}"))?;
    std::fs::write(&timeline, super::report::svg(&analysis, None))
        .map_err(|err| format!("cannot write {timeline:?}: {err}"))?;
    for stale in std::fs::read_dir(&config.out)
        .map_err(|err| format!("cannot list {:?}: {err}", config.out))?
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("overlap-"))
    {
        let _ = std::fs::remove_file(stale.path());
    }
    super::report::write_zooms(&analysis, &config.out)?;
    Ok(RunOutcome {
        analysis,
        report,
        timeline,
        notes,
    })
}

/// Saves what the checker needs of the store beside the history: `store.jsonl` (the accepted
/// writes) and `run.json` (the register, the refusals, and the run's notes).
fn write_store_log(out: &Path, state: &StoreState, notes: &[String]) -> Result<(), String> {
    let mut log = String::new();
    for (at, write) in state.log.iter().enumerate() {
        log.push_str(
            &serde_json::json!({
                "index": at + 1,
                "value": write.value,
                "token": write.token,
                "process": write.process,
                "pid": write.pid,
            })
            .to_string(),
        );
        log.push('\n');
    }
    let run = serde_json::json!({
        "register": state.register,
        "rejected_reads": state.rejected_reads,
        "rejected_writes": state.rejected_writes,
        "notes": notes,
    });
    for (name, contents) in [("store.jsonl", log), ("run.json", run.to_string())] {
        let path = out.join(name);
        std::fs::write(&path, contents).map_err(|err| format!("cannot write {path:?}: {err}"))?;
    }
    Ok(())
}

/// A worker to hit: the holder half of the time (when there is one), else any. Draws the same
/// numbers whoever holds, so that the schedule stays the seed's.
fn target(rng: &mut Rng, tail: &Tail, workers: &[Worker]) -> usize {
    let (coin, any) = (rng.below(2), rng.below(workers.len() as u64) as usize);
    let holder = tail.holding.iter().find_map(|(lane, pid)| {
        workers
            .iter()
            .position(|w| &w.lane == lane && w.pid() == *pid)
    });
    match holder {
        Some(index) if coin == 0 => index,
        _ => any,
    }
}

#[allow(clippy::too_many_arguments)]
async fn inject(
    kind: &str,
    rng: &mut Rng,
    tail: &mut Tail,
    nemesis: &mut Nemesis,
    workers: &mut [Worker],
    deployment: &mut Deployment,
    config: &RunConfig,
    key: &str,
) -> Result<(), String> {
    let lease = config.lease;
    let seconds = |d: Duration| format!("{:.2} s", d.as_secs_f64());
    match kind {
        "kill-worker" => {
            let index = target(rng, tail, workers);
            let worker = &mut workers[index];
            let held = tail.holding.get(&worker.lane) == Some(&worker.pid());
            let id = nemesis.invoke(
                kind,
                &worker.lane,
                Some(worker.pid()),
                format!("SIGKILL{}", if held { " (holder)" } else { "" }),
            );
            let _ = worker.child.kill();
            let _ = worker.child.wait();
            tail.holding.remove(&worker.lane);
            worker.child = Worker::spawn(&config.worker_exe, &worker.args, &worker.stderr);
            nemesis.heal(id, kind, Some(format!("restarted as pid {}", worker.pid())));
        }
        "pause-holder" => {
            // Wait a little for a holder, so that the stop lands inside a hold.
            let deadline = Instant::now() + Duration::from_secs(2);
            let index = loop {
                tail.update();
                let holder = tail.holding.iter().find_map(|(lane, pid)| {
                    workers
                        .iter()
                        .position(|w| &w.lane == lane && w.pid() == *pid)
                });
                if let Some(index) = holder {
                    break Some(index);
                }
                if Instant::now() >= deadline {
                    break None;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            };
            let any = rng.below(workers.len() as u64) as usize;
            let (kind, index) = match index {
                Some(index) => ("pause-holder", index),
                None => ("pause-worker", any),
            };
            let stop = lease.mul_f64(1.2 + rng.below(81) as f64 / 100.0);
            let worker = &workers[index];
            let id = nemesis.invoke(
                kind,
                &worker.lane,
                Some(worker.pid()),
                format!("SIGSTOP for {}", seconds(stop)),
            );
            worker.signal(libc::SIGSTOP);
            tokio::time::sleep(stop).await;
            worker.signal(libc::SIGCONT);
            nemesis.heal(id, kind, None);
        }
        "partition-stall" | "partition-drop" | "partition-oneway" => {
            let index = target(rng, tail, workers);
            let partition = match kind {
                "partition-stall" => Partition::Stall,
                "partition-drop" => Partition::Drop,
                _ => Partition::OneWay,
            };
            let length = lease.mul_f64(0.3 + rng.below(171) as f64 / 100.0);
            let worker = &workers[index];
            let held = tail.holding.get(&worker.lane) == Some(&worker.pid());
            let id = nemesis.invoke(
                kind,
                &worker.lane,
                Some(worker.pid()),
                format!(
                    "{:?} for {}{}",
                    partition,
                    seconds(length),
                    if held { " (holder)" } else { "" }
                ),
            );
            worker.links.set(partition);
            tokio::time::sleep(length).await;
            worker.links.set(Partition::None);
            nemesis.heal(id, kind, None);
        }
        "restart-master" => {
            let Deployment::Single(server) = deployment else {
                unreachable!("restart-master is a single-server fault")
            };
            let id = nemesis.invoke(
                kind,
                &server.port().to_string(),
                None,
                "SIGKILL, restart without persistence".into(),
            );
            harness(|| server.restart())?;
            nemesis.heal(id, kind, None);
        }
        "pause-master" => {
            let Deployment::Single(server) = deployment else {
                unreachable!("pause-master is a single-server fault")
            };
            let stop = lease.mul_f64(0.3 + rng.below(121) as f64 / 100.0);
            let id = nemesis.invoke(
                kind,
                &server.port().to_string(),
                None,
                format!("SIGSTOP for {}", seconds(stop)),
            );
            server.pause();
            tokio::time::sleep(stop).await;
            server.resume();
            nemesis.heal(id, kind, None);
        }
        "failover-kill" | "failover-pause" => {
            let pause = kind == "failover-pause";
            let what = if pause { "SIGSTOP" } else { "SIGKILL" };
            let (id, took) = match deployment {
                Deployment::Sentinel(sentinel) => {
                    let port = sentinel.master().port();
                    let id =
                        nemesis.invoke(kind, &port.to_string(), None, format!("{what} the master"));
                    let took = harness(|| {
                        if pause {
                            sentinel.pause_master().1
                        } else {
                            sentinel.kill_master()
                        }
                    })?;
                    (id, took)
                }
                Deployment::Cluster(cluster) => {
                    let port = harness(|| cluster.master_of(key))?;
                    let id = nemesis.invoke(
                        kind,
                        &port.to_string(),
                        None,
                        format!("{what} the register slot's master"),
                    );
                    let took = harness(|| {
                        if pause {
                            cluster.pause_master_of(key).1
                        } else {
                            cluster.kill_master_of(key)
                        }
                    })?;
                    (id, took)
                }
                Deployment::Single(_) => unreachable!("a single server has no failover"),
            };
            // The old master comes back as a replica within the fault: until then, a continued
            // one may still answer the clients connected to it, and the next failover needs it.
            harness(|| match deployment {
                Deployment::Sentinel(sentinel) => sentinel.heal(),
                Deployment::Cluster(cluster) => cluster.heal(),
                Deployment::Single(_) => {}
            })?;
            nemesis.heal_after(id, kind, took, format!("failover took {}", seconds(took)));
        }
        "move-slot" => {
            let Deployment::Cluster(cluster) = deployment else {
                unreachable!("move-slot is a cluster fault")
            };
            let (slot, from, to) = harness(|| {
                let slot = cluster.slot_of(key);
                let from = cluster.master_of_slot(slot);
                let others: Vec<u16> = cluster
                    .master_ports()
                    .into_iter()
                    .filter(|port| *port != from)
                    .collect();
                (slot, from, others[rng.below(others.len() as u64) as usize])
            })?;
            let id = nemesis.invoke(
                kind,
                &from.to_string(),
                None,
                format!("slot {slot} from port {from} to port {to}"),
            );
            harness(|| cluster.move_slot(slot, to))?;
            nemesis.heal(id, kind, None);
        }
        other => unreachable!("no such fault: {other}"),
    }
    Ok(())
}

/// Runs a blocking step of the Redis harness; its panic (a failover that never came, a node that
/// did not sync) becomes an error, so that the run stops its nemesis but still checks and
/// reports what happened until then.
fn harness<T>(step: impl FnOnce() -> T) -> Result<T, String> {
    tokio::task::block_in_place(|| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(step)).map_err(|panic| {
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "a panic without a message".to_owned())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_draws_the_same_schedule_every_time() {
        let draw = |seed| {
            let mut rng = Rng::new(seed);
            (0..20)
                .map(|_| rng.pick(Topology::Cluster.faults()))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        let all = draw(1)
            .into_iter()
            .chain(draw(2))
            .chain(draw(3))
            .collect::<std::collections::BTreeSet<_>>();
        assert!(all.len() >= 6, "{all:?}");
    }

    #[test]
    fn an_unknown_topology_is_named() {
        assert_eq!(Topology::parse("cluster"), Ok(Topology::Cluster));
        assert!(Topology::parse("mesh").unwrap_err().contains("\"mesh\""));
    }
}
