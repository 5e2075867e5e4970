//! Exclusion and fencing across processes that are killed and stalled: a counter in a separate
//! store, incremented under one relock key by several `fenced_worker` processes.
//!
//! # The history being checked
//!
//! Two private `redis-server`s: the **lock server**, where relock keeps the key, and the
//! **store**, which holds the counter. Each worker loops on
//! `lock(key).lease(L).run({ t = token; v = read(t); sleep 10–30 ms; write(t, v + 1) })`, and
//! every write the store accepts is appended to its `written` list (and `"<value> <token> <pid>"`
//! to `history`). Meanwhile the test SIGKILLs a random worker every ~1.75 s and starts a
//! replacement, and (fenced test) a few times finds the current holder with `inspect`, SIGSTOPs
//! it for 2 × L — its lease runs out on the server, another worker takes the key with a larger
//! token, reads and writes — and then SIGCONTs it, so that it wakes up mid-body believing it still
//! holds the lock. Where it wakes decides who catches it: in an async sleep, relock checks the
//! loss before polling the body again and aborts it (`Error::Lost`); in a blocking step (the
//! worker picks one of the two pauses at random each round), the write leaves within the same
//! poll, and only the store's token check can reject it.
//!
//! If every accepted write was made by the only holder of the key, with the value that holder
//! read, the `written` list is exactly `1, 2, …, n`. Two holders overlapping on the store show up
//! as a value written twice (both read `v`, both wrote `v + 1`), so the tests assert that no value
//! is written twice, that the list is `1..=n` and ends at the counter's value, that the tokens of
//! successive writes strictly increase (every hold has a token of its own, larger than every
//! earlier one, whatever process took it), and that some progress was made.
//!
//! # Why both modes
//!
//! * `unfenced`: plain `GET` / `SET`; only the lock protects the counter. Killed holders never
//!   write again, so the lock alone must be enough here: a duplicate means relock let two live
//!   processes hold the key at once (a lock freed early, a lease not renewed, a release or renewal
//!   that hit another process's hold).
//! * `fenced`: a stalled holder may wake with a write already past the point where relock can stop
//!   it (relock aborts the body before polling it again, but cannot recall a request in flight).
//!   The store checks the token on **read and write** — an older token than the newest it has seen
//!   is rejected, and a read records its token — so correctness rests on the fencing tokens alone
//!   being strictly increasing per key across processes. The test prints how many stale reads and
//!   writes the store rejected. (Run with the unfenced store, the same stalls do produce values
//!   written twice — a stale writer sets the counter back — so these checks can fail.)
//!
//! # On a Redis Cluster
//!
//! `fenced_counter_on_a_cluster_survives_kills` keeps the lock on a 3-master, 1-replica cluster
//! (the workers get the seed nodes, comma-separated, as their lock URL) and the store on its own
//! server; besides the worker kills, the master serving the key is SIGKILLed mid-run and one of its
//! replicas promoted. The same checks hold, and the workers must keep making progress afterwards.

use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use relock::Locker;
use relock_tests::{bounded, unique_key, RedisCluster, RedisServer};

/// Past the ~25 s of the longer scenario, its setup and its checks.
const TEST_LIMIT: Duration = Duration::from_secs(60);
/// How many writes a scenario must at least see.
const MIN_WRITES: usize = 20;

/// One run: `workers` processes contend for `duration` while the test kills (and stalls) them.
struct Scenario {
    mode: &'static str,
    workers: usize,
    lease: Duration,
    duration: Duration,
    /// A worker is killed (and replaced) every `kill_every.0 ..= kill_every.1`.
    kill_every: (Duration, Duration),
    /// How many times the holder is SIGSTOPped for `2 × lease`, evenly spread over `duration`.
    stalls: usize,
    /// Where the lock lives: one server, or a Redis Cluster whose master serving the key is
    /// SIGKILLed `failover_at` into the run (one of its replicas takes over).
    lock: LockTarget,
}

#[derive(Clone, Copy)]
enum LockTarget {
    Server,
    Cluster {
        masters: usize,
        replicas: usize,
        failover_at: Option<Duration>,
    },
}

/// The lock server (or cluster) of a scenario; killed on drop.
enum LockService {
    Server(RedisServer),
    Cluster(RedisCluster),
}

impl LockService {
    fn start(target: LockTarget) -> LockService {
        match target {
            LockTarget::Server => LockService::Server(RedisServer::start()),
            LockTarget::Cluster {
                masters, replicas, ..
            } => LockService::Cluster(RedisCluster::start(masters, replicas)),
        }
    }

    /// The worker's `<lock-url>`: the server's URL, or the cluster's seed nodes joined by commas.
    fn url(&self) -> String {
        match self {
            LockService::Server(server) => server.url(),
            LockService::Cluster(cluster) => cluster.seeds().join(","),
        }
    }

    async fn locker(&self) -> Locker {
        match self {
            LockService::Server(server) => server.locker().await,
            LockService::Cluster(cluster) => Locker::builder()
                .cluster(cluster.seeds())
                .build()
                .expect("a cluster locker"),
        }
    }
}

/// The `fenced_worker` processes; SIGKILLed and reaped on drop, so a failing test (or a stalled
/// worker) leaves nothing behind.
struct Workers {
    children: Vec<Child>,
    /// The workers killed so far: one of them may hold the key until its lease runs out.
    killed: Vec<u32>,
    args: [String; 5],
}

impl Workers {
    fn spawn(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_fenced_worker"))
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn fenced_worker");
        self.children.push(child);
    }

    /// SIGKILLs the worker at `index`, reaps it and starts a replacement.
    fn replace(&mut self, index: usize) {
        let mut child = self.children.swap_remove(index);
        self.killed.push(child.id());
        child.kill().expect("SIGKILL a worker");
        child.wait().expect("reap a worker");
        self.spawn();
    }

    fn has(&self, pid: u32) -> bool {
        self.children.iter().any(|child| child.id() == pid)
    }

    fn kill_all(&mut self) {
        for mut child in self.children.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.kill_all();
    }
}

fn signal(pid: u32, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("a pid fits pid_t");
    // SAFETY: kill(2) has no memory-safety preconditions; `pid` is a child we have not reaped.
    let sent = unsafe { libc::kill(pid, signal) };
    assert_eq!(
        sent,
        0,
        "kill({pid}, {signal}): {}",
        std::io::Error::last_os_error()
    );
}

/// xorshift64 seeded from the clock: which worker dies and when only needs to vary.
struct Jitter(u64);

impl Jitter {
    fn new() -> Jitter {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        Jitter(nanos | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }

    fn between(&mut self, (low, high): (Duration, Duration)) -> Duration {
        let span = (high - low).as_millis() as u64;
        low + Duration::from_millis(self.below(span + 1))
    }
}

/// One stall: what the holder was when it was stopped, and who held the key when it woke.
struct Stall {
    pid: u32,
    /// The stopped worker's own hold when it was stopped (its fencing token), if it still had one.
    token_when_stopped: Option<u64>,
    /// The holder when the worker was continued, `(pid, token)`.
    holder_when_continued: Option<(Option<u32>, u64)>,
}

/// Finds the live worker holding `key` (retrying until one does, for up to 5 s), SIGSTOPs it for
/// `2 × lease`, checks that its hold ended on the server meanwhile, and SIGCONTs it.
async fn stall_the_holder(locker: &Locker, key: &str, workers: &Workers, lease: Duration) -> Stall {
    let deadline = Instant::now() + Duration::from_secs(5);
    let pid = loop {
        let info = locker.inspect(key).await.expect("inspect the key");
        match info.and_then(|info| info.pid) {
            Some(pid) if workers.has(pid) => break pid,
            Some(pid) if !workers.killed.contains(&pid) => {
                panic!("{key} is held by pid {pid}, which is none of the workers")
            }
            // Free, or still held by a killed worker until its lease runs out.
            _ => {
                assert!(
                    Instant::now() < deadline,
                    "no worker held {key} for 5 s: are the workers running?"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    };
    signal(pid, libc::SIGSTOP);
    // The holder may have released between `inspect` and the signal: look again, now that it
    // cannot move.
    let token_when_stopped = locker
        .inspect(key)
        .await
        .expect("inspect the key")
        .filter(|info| info.pid == Some(pid))
        .map(|info| info.fencing_token);
    tokio::time::sleep(lease * 2).await;
    let holder_when_continued = locker
        .inspect(key)
        .await
        .expect("inspect the key")
        .map(|info| (info.pid, info.fencing_token));
    signal(pid, libc::SIGCONT);
    if let (Some(token), Some((holder, now))) = (token_when_stopped, holder_when_continued) {
        assert_ne!(
            token,
            now,
            "pid {pid}'s hold (fencing token {token}) outlived a {:?} stop with a {lease:?} \
             lease: still held by {holder:?} on the server",
            lease * 2
        );
    }
    Stall {
        pid,
        token_when_stopped,
        holder_when_continued,
    }
}

/// What the store holds at the end of a scenario.
struct Outcome {
    written: Vec<u64>,
    /// `(value, token, pid)` of every accepted write, in order.
    history: Vec<(u64, u64, u32)>,
    value: u64,
    stats: BTreeMap<String, u64>,
    /// When a master was failed over: how many writes had been made before it, and how long the
    /// failover took.
    failover: Option<(usize, Duration)>,
}

async fn run(scenario: Scenario) -> Outcome {
    let mut lock_service = tokio::task::block_in_place(|| LockService::start(scenario.lock));
    let store = RedisServer::start();
    let key = unique_key("fenced-counter");
    let locker = lock_service.locker().await;
    let mut workers = Workers {
        children: Vec::new(),
        killed: Vec::new(),
        args: [
            lock_service.url(),
            store.url(),
            key.clone(),
            scenario.mode.to_owned(),
            scenario.lease.as_millis().to_string(),
        ],
    };
    for _ in 0..scenario.workers {
        workers.spawn();
    }

    let mut jitter = Jitter::new();
    let started = Instant::now();
    let end = started + scenario.duration;
    let stall_every = scenario.duration / (scenario.stalls as u32 + 1);
    let mut next_stall = started + stall_every;
    let mut next_kill = started + jitter.between(scenario.kill_every);
    let (mut kills, mut stalls) = (0, Vec::new());
    let mut next_failover = match scenario.lock {
        LockTarget::Cluster {
            failover_at: Some(at),
            ..
        } => Some(started + at),
        _ => None,
    };
    let mut failover = None;
    let mut store_connection = store.connection().await;
    while Instant::now() < end {
        let now = Instant::now();
        if next_failover.is_some_and(|at| now >= at) {
            next_failover = None;
            let LockService::Cluster(cluster) = &mut lock_service else {
                unreachable!("only a cluster fails over")
            };
            let before: usize = redis::cmd("LLEN")
                .arg("store:written")
                .query_async(&mut store_connection)
                .await
                .expect("LLEN written");
            let took = tokio::task::block_in_place(|| cluster.kill_master_of(&key));
            eprintln!(
                "the master serving {key} was killed after {before} writes; failover took {took:?}"
            );
            failover = Some((before, took));
        } else if stalls.len() < scenario.stalls && now >= next_stall {
            stalls.push(stall_the_holder(&locker, &key, &workers, scenario.lease).await);
            next_stall += stall_every;
        } else if now >= next_kill {
            let index = jitter.below(workers.children.len() as u64) as usize;
            workers.replace(index);
            kills += 1;
            next_kill = now + jitter.between(scenario.kill_every);
        } else {
            let mut wake = next_kill.min(end);
            if stalls.len() < scenario.stalls {
                wake = wake.min(next_stall);
            }
            if let Some(at) = next_failover {
                wake = wake.min(at);
            }
            tokio::time::sleep_until(wake.into()).await;
        }
    }
    workers.kill_all();
    let elapsed = started.elapsed();

    let mut connection = store.connection().await;
    let written: Vec<String> = redis::cmd("LRANGE")
        .arg("store:written")
        .arg(0)
        .arg(-1)
        .query_async(&mut connection)
        .await
        .expect("LRANGE written");
    let history: Vec<String> = redis::cmd("LRANGE")
        .arg("store:history")
        .arg(0)
        .arg(-1)
        .query_async(&mut connection)
        .await
        .expect("LRANGE history");
    let value: Option<u64> = redis::cmd("GET")
        .arg("store:value")
        .query_async(&mut connection)
        .await
        .expect("GET value");
    let stats: HashMap<String, u64> = redis::cmd("HGETALL")
        .arg("store:stats")
        .query_async(&mut connection)
        .await
        .expect("HGETALL stats");

    let outcome = Outcome {
        written: written
            .iter()
            .map(|value| value.parse().expect("a written value is a number"))
            .collect(),
        history: history
            .iter()
            .map(|entry| {
                let parts: Vec<&str> = entry.split(' ').collect();
                match parts.as_slice() {
                    [value, token, pid] => (
                        value.parse().expect("value"),
                        token.parse().expect("token"),
                        pid.parse().expect("pid"),
                    ),
                    _ => panic!("a history entry is not `<value> <token> <pid>`: {entry:?}"),
                }
            })
            .collect(),
        value: value.unwrap_or(0),
        stats: stats.into_iter().collect(),
        failover,
    };

    let writers: std::collections::BTreeSet<u32> =
        outcome.history.iter().map(|&(_, _, pid)| pid).collect();
    eprintln!(
        "{} mode: {} writes by {} processes in {elapsed:?}; {kills} workers killed; stats {:?}",
        scenario.mode,
        outcome.written.len(),
        writers.len(),
        outcome.stats
    );
    for stall in &stalls {
        eprintln!(
            "  stalled pid {} for {:?}: its hold when stopped {:?}, holder when continued {:?}",
            stall.pid,
            scenario.lease * 2,
            stall.token_when_stopped,
            stall.holder_when_continued
        );
    }
    outcome
}

/// The checks both modes share: no value written twice, the list is `1..=n` and ends at the
/// counter, the tokens of successive writes strictly increase, and at least `MIN_WRITES` writes.
fn check(outcome: &Outcome) {
    let mut times: BTreeMap<u64, usize> = BTreeMap::new();
    for &value in &outcome.written {
        *times.entry(value).or_default() += 1;
    }
    let twice: Vec<u64> = times
        .iter()
        .filter(|&(_, &n)| n > 1)
        .map(|(&value, _)| value)
        .collect();
    if !twice.is_empty() {
        let writes: Vec<_> = outcome
            .history
            .iter()
            .enumerate()
            .filter(|(_, (value, _, _))| twice.contains(value))
            .take(20)
            .map(|(at, (value, token, pid))| {
                format!("#{at}: value {value} token {token} pid {pid}")
            })
            .collect();
        panic!(
            "{} values written more than once (two holders overlapped on the store): {:?}\n\
             their writes (position in the history, value, fencing token, writer pid):\n{}",
            twice.len(),
            &twice[..twice.len().min(20)],
            writes.join("\n")
        );
    }
    let expected: Vec<u64> = (1..=outcome.written.len() as u64).collect();
    assert_eq!(
        outcome.written, expected,
        "the written values are not 1..=n: an update was lost or reordered"
    );
    assert_eq!(
        outcome.value,
        outcome.written.len() as u64,
        "the counter disagrees with its writes"
    );
    for pair in outcome.history.windows(2) {
        let ((v1, t1, p1), (v2, t2, p2)) = (pair[0], pair[1]);
        assert!(
            t2 > t1,
            "fencing tokens went backwards or repeated: value {v1} written with token {t1} by \
             pid {p1}, then value {v2} with token {t2} by pid {p2}"
        );
    }
    assert!(
        outcome.written.len() >= MIN_WRITES,
        "only {} writes: the workers made too little progress",
        outcome.written.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_counter_survives_kills_and_stalls() {
    bounded(TEST_LIMIT, async {
        let outcome = run(Scenario {
            mode: "fenced",
            workers: 4,
            lease: Duration::from_millis(600),
            duration: Duration::from_secs(25),
            kill_every: (Duration::from_millis(1500), Duration::from_millis(2000)),
            stalls: 6,
            lock: LockTarget::Server,
        })
        .await;
        check(&outcome);
        let rejected = |what: &str| outcome.stats.get(what).copied().unwrap_or(0);
        eprintln!(
            "fenced mode: the store rejected {} stale reads and {} stale writes",
            rejected("rejected_reads"),
            rejected("rejected_writes")
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfenced_counter_survives_kills() {
    bounded(TEST_LIMIT, async {
        let outcome = run(Scenario {
            mode: "unfenced",
            workers: 4,
            lease: Duration::from_millis(600),
            duration: Duration::from_secs(15),
            kill_every: (Duration::from_millis(1500), Duration::from_millis(2000)),
            stalls: 0,
            lock: LockTarget::Server,
        })
        .await;
        check(&outcome);
    })
    .await;
}

/// The fenced counter with the lock on a Redis Cluster (3 masters, 1 replica each; the store stays
/// a standalone server): workers are SIGKILLed as above, and the master serving the key is
/// SIGKILLed mid-run so that its replica takes over. Holds on the dead master end (their lease is
/// shorter than the failover) and the key is taken again on the promoted replica, under larger
/// fencing tokens: no value is written twice, and the workers make progress after the failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_counter_on_a_cluster_survives_kills() {
    bounded(TEST_LIMIT, async {
        let outcome = run(Scenario {
            mode: "fenced",
            workers: 4,
            lease: Duration::from_millis(1000),
            duration: Duration::from_secs(18),
            kill_every: (Duration::from_millis(1500), Duration::from_millis(2000)),
            stalls: 0,
            lock: LockTarget::Cluster {
                masters: 3,
                replicas: 1,
                failover_at: Some(Duration::from_secs(7)),
            },
        })
        .await;
        check(&outcome);
        let (before, took) = outcome
            .failover
            .expect("the lock key's master was failed over");
        let after = outcome.written.len() - before;
        let rejected = |what: &str| outcome.stats.get(what).copied().unwrap_or(0);
        eprintln!(
            "cluster: {before} writes before the failover ({took:?}), {after} after; the store \
             rejected {} stale reads and {} stale writes",
            rejected("rejected_reads"),
            rejected("rejected_writes")
        );
        assert!(
            after >= MIN_WRITES / 2,
            "only {after} writes after the failover: the workers made too little progress on the \
             promoted replica"
        );
    })
    .await;
}
