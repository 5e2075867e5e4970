//! Readers, writers and permit holders in processes of their own, SIGKILLed and SIGSTOPped past
//! their leases while they run, recording their critical sections in a fenced store.
//!
//! # The history being checked
//!
//! Two private `redis-server`s: the **lock server**, where relock keeps one key, and the
//! **store**, not under faults. Five `shared_worker` processes loop on the key: in the
//! read-write scenario each round is a read hold (two in three) or the write lock, in the permit
//! scenario one of `n` permits; holding it, the worker asks the store to let it enter (mode,
//! fencing token), pauses 10–30 ms (an async sleep or a blocking one), and asks to leave. The
//! store's Lua scripts (see `shared_worker`) refuse what a stale holder would do:
//!
//! * read-write: a writer enters only with a token larger than every accepted one; a reader only
//!   with a token at least the last accepted writer's; a writer leaves only if no one entered
//!   after it, a reader only if no writer entered after it;
//! * permits: an entry is refused while `n` entries younger than half the lease are inside
//!   (older ones are stale: dropped, and their leaving refused).
//!
//! Meanwhile the test SIGKILLs a random worker every 1.5–2.5 s (and starts a replacement), and a
//! few times SIGSTOPs a worker that the store says is inside, for twice the lease: its lease ends
//! on the lock server, others take its place, and it wakes mid-section believing it holds the
//! key — in an async sleep relock aborts the body before polling it again; in a blocking one its
//! next step reaches the store, which refuses it.
//!
//! # Several tasks per process: requests decided together
//!
//! Two more scenarios run the same workers with eight tasks each on the process's one `Locker`
//! (40 tasks on the key): readers and writers, and 6 permits that the 40 tasks contend for. The
//! requests a process's tasks make while its calls are in flight go out together as one call of
//! relock's group commit, and the batch script decides the shared requests of a key that a call
//! carries more than once together: the key's value parsed once, each request applied to what
//! the ones before it left, the result written once. A task names itself `<pid>.<task>` to the
//! store, which tells two tasks of one process apart; the faults act on the whole process: a
//! stall stops a process one of whose tasks is inside, with its other tasks inside too,
//! mid-request or waiting (on waking, a request that was in flight past the 2 s response timeout
//! fails as an unknown outcome), a kill ends all eight, and a blocking pause of one task stalls
//! its siblings, inside or not. The replays run per task; a kill closes every section of the
//! process.
//!
//! # What must hold
//!
//! * **No refusal a holder believed past.** A refused worker whose guard still says held right
//!   after the refusal (`is_held()`, by a local deadline that never outlasts the server's lease)
//!   proves two owners believed they held the key at once — a writer beside a reader or a
//!   writer, or more than `n` permits. The workers record such refusals; there must be none.
//! * **The accepted history is exclusive** (replayed in the store's order, sections closed by
//!   leaving, a refusal, the round's end or the worker's kill): a section that left with the
//!   store's consent saw no conflicting entry while it was inside (a writer beside anyone; a
//!   reader beside a reader of another token); never more than `n` permits inside.
//! * **Tokens**: accepted writer tokens strictly increase; each reader's token is the latest
//!   accepted writer's (unless a worker was killed since, which may have been a writer granted a
//!   token it never got to show); permit tokens are never repeated.
//! * **Progress and coverage**: enough sections of each kind, readers inside together, permits
//!   used concurrently, and the faults did bite (some round ended stale or lost). With eight
//!   tasks: tasks of one process inside together, and the lock server's slow log (every command
//!   logged, the last 1,024 kept) shows script calls that named the key more than once — a run
//!   prints e.g. `of the lock server's last 313 script calls, 31 named the key more than once, up
//!   to 6 times`.
//!
//! A client or script that lets a writer in beside a live reader, or grants `n + 1` permits,
//! or keeps a stopped holder believing it holds, fails these checks. The one-task scenarios never
//! reach the grouped decisions (their calls name the key once); a batch script whose grouped
//! path grants a seventh permit, or gives a reader a token of its own instead of the last
//! writer's, fails the eight-task ones within a second of history (`believed enter permit …`,
//! `believed leave read …`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::MultiplexedConnection;
use relock_tests::{bounded, unique_key, RedisServer};

const TEST_LIMIT: Duration = Duration::from_secs(60);
const WORKERS: usize = 5;
const LEASE: Duration = Duration::from_millis(1000);
const DURATION: Duration = Duration::from_secs(12);
const KILL_EVERY: (Duration, Duration) = (Duration::from_millis(1500), Duration::from_millis(2500));
const STALLS: usize = 3;
/// The grouped scenarios: tasks per worker, and permits fewer than the tasks that want them.
const TASKS: u32 = 8;
const GROUPED_PERMITS: usize = 6;
/// The lock server's commands kept in its slow log.
const SLOW_LOG: usize = 1024;

const HISTORY: &str = "store:history";
const VIOLATIONS: &str = "store:violations";
const INSIDE: &str = "store:inside";

/// The `shared_worker` processes; SIGKILLed and reaped on drop.
struct Workers {
    children: Vec<Child>,
    args: Vec<String>,
}

impl Workers {
    fn spawn(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_shared_worker"))
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn shared_worker");
        self.children.push(child);
    }

    /// SIGKILLs the worker at `index`, reaps it and starts a replacement; returns the dead pid.
    fn replace(&mut self, index: usize) -> u32 {
        let mut child = self.children.swap_remove(index);
        child.kill().expect("SIGKILL a worker");
        child.wait().expect("reap a worker");
        self.spawn();
        child.id()
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

/// xorshift64 seeded from the clock.
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

/// The process of a task named `<pid>.<task>` in the store (the kills and stalls name it).
fn process(task: &str) -> &str {
    task.split_once('.').map_or(task, |(pid, _)| pid)
}

async fn record(store: &mut MultiplexedConnection, event: String) {
    redis::cmd("RPUSH")
        .arg(HISTORY)
        .arg(event)
        .query_async::<()>(store)
        .await
        .expect("RPUSH to the history");
}

/// SIGSTOPs a live worker one of whose tasks the store says is inside its section (retrying for
/// up to 5 s: one whose task left before the signal landed is continued and another tried),
/// keeps it stopped for `2 × LEASE`, then SIGCONTs it. Returns its pid.
async fn stall_one_inside(store: &mut MultiplexedConnection, workers: &Workers) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let inside: Vec<String> = redis::cmd("HKEYS")
            .arg(INSIDE)
            .query_async(store)
            .await
            .expect("HKEYS inside");
        let live = inside.iter().find_map(|task| {
            let pid: u32 = process(task).parse().expect("a task is named <pid>.<task>");
            workers.has(pid).then_some((task, pid))
        });
        if let Some((task, pid)) = live {
            signal(pid, libc::SIGSTOP);
            let still: bool = redis::cmd("HEXISTS")
                .arg(INSIDE)
                .arg(task)
                .query_async(store)
                .await
                .expect("HEXISTS inside");
            if still {
                record(store, format!("stop {pid}")).await;
                tokio::time::sleep(LEASE * 2).await;
                signal(pid, libc::SIGCONT);
                record(store, format!("cont {pid}")).await;
                return pid;
            }
            signal(pid, libc::SIGCONT);
        }
        assert!(
            Instant::now() < deadline,
            "no live worker was inside its section for 5 s: are the workers running?"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// What the store holds at the end of a scenario, and how the lock server's last script calls
/// carried the key.
struct Outcome {
    history: Vec<String>,
    violations: Vec<String>,
    calls: Calls,
}

/// The lock server's last commands (its slow log, every command logged): the script calls that
/// named the key more than once — group commit calls deciding several requests of the key
/// together — and the most requests of the key one of them carried.
#[derive(Debug, Default)]
struct Calls {
    scripts: usize,
    repeated: usize,
    most: usize,
}

/// Logs every command of the lock server in its slow log (the last `SLOW_LOG` of them kept).
async fn log_commands(lock: &mut MultiplexedConnection) {
    for (name, value) in [
        ("slowlog-max-len", SLOW_LOG.to_string()),
        ("slowlog-log-slower-than", "0".to_owned()),
    ] {
        redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .query_async::<()>(lock)
            .await
            .expect("CONFIG SET the slow log");
    }
}

/// How the script calls in the lock server's slow log carried the key: `EVALSHA <sha> <numkeys>
/// <keys>…` (the log keeps a command's first 31 arguments).
async fn script_calls(lock: &mut MultiplexedConnection) -> Calls {
    type Entry = (i64, i64, i64, Vec<String>);
    let log: Vec<Entry> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(SLOW_LOG)
        .query_async::<Vec<Vec<redis::Value>>>(lock)
        .await
        .expect("SLOWLOG GET")
        .into_iter()
        .map(|entry| redis::from_redis_value(redis::Value::Array(entry[..4].to_vec())))
        .collect::<Result<_, _>>()
        .expect("slow log entries");
    let mut calls = Calls::default();
    for (_, _, _, args) in log {
        let [command, _, keys, rest @ ..] = args.as_slice() else {
            continue;
        };
        if !command.eq_ignore_ascii_case("evalsha") {
            continue;
        }
        calls.scripts += 1;
        let keys: usize = keys.parse().unwrap_or(0);
        let mut per_key: HashMap<&str, usize> = HashMap::new();
        for key in rest.iter().take(keys) {
            *per_key.entry(key.as_str()).or_default() += 1;
        }
        let most = per_key.into_values().max().unwrap_or(0);
        if most > 1 {
            calls.repeated += 1;
            calls.most = calls.most.max(most);
        }
    }
    calls
}

/// Runs `WORKERS` workers of `tasks` tasks each in `mode` (`rw` or `permits:<n>`) for `DURATION`
/// under kills and stalls.
async fn run(mode: &str, tasks: u32) -> Outcome {
    let lock_server = tokio::task::block_in_place(RedisServer::start);
    let store_server = tokio::task::block_in_place(RedisServer::start);
    let key = unique_key("fenced-shared");
    let mut workers = Workers {
        children: Vec::new(),
        args: vec![
            lock_server.url(),
            store_server.url(),
            key,
            mode.to_owned(),
            LEASE.as_millis().to_string(),
            tasks.to_string(),
        ],
    };
    let mut lock = lock_server.connection().await;
    log_commands(&mut lock).await;
    for _ in 0..WORKERS {
        workers.spawn();
    }
    let mut store = store_server.connection().await;
    let mut jitter = Jitter::new();
    let started = Instant::now();
    let end = started + DURATION;
    let stall_every = DURATION / (STALLS as u32 + 1);
    let mut next_stall = started + stall_every;
    let mut next_kill = started + jitter.between(KILL_EVERY);
    let (mut kills, mut stalled) = (0, Vec::new());
    while Instant::now() < end {
        let now = Instant::now();
        if stalled.len() < STALLS && now >= next_stall {
            stalled.push((stall_one_inside(&mut store, &workers).await, Instant::now()));
            next_stall += stall_every;
        } else if now >= next_kill {
            let mut index = jitter.below(workers.children.len() as u64) as usize;
            // A worker just continued gets a second to take its next step before it may die.
            if let Some(&(pid, continued)) = stalled.last() {
                if workers.children[index].id() == pid
                    && continued.elapsed() < Duration::from_secs(1)
                {
                    index = (index + 1) % workers.children.len();
                }
            }
            let pid = workers.replace(index);
            record(&mut store, format!("kill {pid}")).await;
            kills += 1;
            next_kill = now + jitter.between(KILL_EVERY);
        } else {
            let mut wake = next_kill.min(end);
            if stalled.len() < STALLS {
                wake = wake.min(next_stall);
            }
            tokio::time::sleep_until(wake.into()).await;
        }
    }
    let calls = script_calls(&mut lock).await;
    workers.kill_all();
    let list = |name: &'static str| {
        let mut store = store.clone();
        async move {
            redis::cmd("LRANGE")
                .arg(name)
                .arg(0)
                .arg(-1)
                .query_async::<Vec<String>>(&mut store)
                .await
                .expect("LRANGE")
        }
    };
    let outcome = Outcome {
        history: list(HISTORY).await,
        violations: list(VIOLATIONS).await,
        calls,
    };
    let (mut ends, mut refused): (BTreeMap<&str, usize>, BTreeMap<&str, usize>) =
        Default::default();
    for event in &outcome.history {
        match event.split(' ').collect::<Vec<_>>().as_slice() {
            ["end", _, outcome] => *ends.entry(outcome).or_default() += 1,
            ["refused", step, ..] => *refused.entry(step).or_default() += 1,
            _ => {}
        }
    }
    let stalled: Vec<u32> = stalled.iter().map(|&(pid, _)| pid).collect();
    eprintln!(
        "{mode} × {tasks} tasks: {} events in {:?}; {kills} workers killed; stalled {stalled:?}; \
         rounds {ends:?}; the store refused {refused:?}; of the lock server's last {} script \
         calls, {} named the key more than once, up to {} times",
        outcome.history.len(),
        started.elapsed(),
        outcome.calls.scripts,
        outcome.calls.repeated,
        outcome.calls.most
    );
    outcome
}

/// A section in the replay: accepted entry, not yet closed.
struct Open {
    mode: String,
    token: u64,
    at: usize,
    /// The first entry that conflicted with it while it was inside.
    conflict: Option<String>,
}

/// The checks every scenario shares: no refusal a holder believed past, and the faults bit; with
/// several `tasks` per worker, the group commit carried the key more than once in one call.
fn check_common(outcome: &Outcome, tasks: u32) {
    if let Some(first) = outcome.violations.first() {
        // `believed <step> <mode> <token> <pid>.<task>`: the store's refusal of it, and what led
        // there.
        let refusal = first.replacen("believed", "refused", 1);
        let at = outcome
            .history
            .iter()
            .position(|event| event.starts_with(&format!("{refusal} ")))
            .unwrap_or(outcome.history.len() - 1);
        let pid = first.rsplit(' ').next().unwrap_or_default();
        let own: Vec<String> = outcome.history[..=at]
            .iter()
            .enumerate()
            .filter(|(_, event)| event.split(' ').any(|word| word == pid))
            .map(|(i, event)| format!("#{i}: {event}"))
            .collect();
        panic!(
            "the store refused a step of a holder whose guard still said held right after — two \
             owners believed they held the key at once: {} such refusals, the first {first:?}.\n\
             task {pid}'s own history:\n{}\nthe history up to the refusal (who entered and left \
             with which token):\n{}",
            outcome.violations.len(),
            own[own.len().saturating_sub(8)..].join("\n"),
            tail(&outcome.history[..=at])
        );
    }
    let bit = outcome
        .history
        .iter()
        .filter(|event| {
            event.starts_with("end ") && (event.ends_with(" stale") || event.ends_with(" lost"))
        })
        .count();
    assert!(
        bit > 0,
        "no round ended stale or lost: the stalls never caught a holder inside"
    );
    assert!(
        tasks == 1 || outcome.calls.repeated > 0,
        "no script call of the lock server's last {} named the key more than once: the tasks' \
         requests were never decided together",
        outcome.calls.scripts
    );
}

fn tail(history: &[String]) -> String {
    let from = history.len().saturating_sub(40);
    history[from..]
        .iter()
        .enumerate()
        .map(|(at, event)| format!("#{}: {event}", from + at))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The most tasks of one process among `inside` (task names).
fn most_of_one_process<'a>(inside: impl Iterator<Item = &'a str>) -> usize {
    let mut per_process: HashMap<&str, usize> = HashMap::new();
    for task in inside {
        *per_process.entry(process(task)).or_default() += 1;
    }
    per_process.into_values().max().unwrap_or(0)
}

/// Replays the read-write history in the store's order; with several `tasks` per worker, readers
/// of one process must have been inside together.
fn check_read_write(outcome: &Outcome, tasks: u32) {
    check_common(outcome, tasks);
    let history = &outcome.history;
    let context = |at: usize| {
        let from = at.saturating_sub(15);
        history[from..=at]
            .iter()
            .enumerate()
            .map(|(i, event)| format!("#{}: {event}", from + i))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mut open: HashMap<String, Open> = HashMap::new();
    let mut last_writer: Option<u64> = None;
    let mut killed_since_writer = false;
    let (mut reads, mut writes, mut most_readers, mut most_of_one) = (0, 0, 0, 0);
    for (at, event) in history.iter().enumerate() {
        let parts: Vec<&str> = event.split(' ').collect();
        match parts.as_slice() {
            ["enter", mode, token, pid] => {
                let token: u64 = token.parse().expect("a token");
                open.remove(*pid);
                if *mode == "write" {
                    if let Some(last) = last_writer {
                        assert!(
                            token > last,
                            "writer tokens went backwards: {token} after {last}\n{}",
                            context(at)
                        );
                    }
                    last_writer = Some(token);
                    killed_since_writer = false;
                } else if let Some(last) = last_writer {
                    assert!(
                        token == last || (killed_since_writer && token > last),
                        "a reader entered with token {token}, not the latest writer's {last} \
                         (no worker killed since)\n{}",
                        context(at)
                    );
                }
                for (other, section) in open.iter_mut() {
                    let conflicts =
                        *mode == "write" || section.mode == "write" || section.token != token;
                    if conflicts && section.conflict.is_none() {
                        section.conflict = Some(format!("#{at}: {event} (beside task {other})"));
                    }
                }
                open.insert(
                    (*pid).to_owned(),
                    Open {
                        mode: (*mode).to_owned(),
                        token,
                        at,
                        conflict: None,
                    },
                );
                // Readers sharing the key: same token, none overtaken by a writer (a stopped
                // reader's section stays open until it wakes).
                let sharing = || {
                    open.iter().filter(|(_, section)| {
                        section.mode == "read"
                            && section.token == token
                            && section.conflict.is_none()
                    })
                };
                most_readers = most_readers.max(sharing().count());
                most_of_one = most_of_one.max(most_of_one_process(
                    sharing().map(|(task, _)| task.as_str()),
                ));
            }
            ["leave", mode, token, pid] => {
                let section = open.remove(*pid).unwrap_or_else(|| {
                    panic!(
                        "task {pid} left a section it never entered\n{}",
                        context(at)
                    )
                });
                assert_eq!(
                    (section.mode.as_str(), section.token.to_string().as_str()),
                    (*mode, *token),
                    "task {pid} left another section than it entered\n{}",
                    context(at)
                );
                if let Some(conflict) = section.conflict {
                    panic!(
                        "task {pid}'s {mode} section (token {token}, entered at #{}) left with \
                         the store's consent after a conflicting entry {conflict}\n{}",
                        section.at,
                        context(at)
                    );
                }
                if *mode == "write" {
                    writes += 1;
                } else {
                    reads += 1;
                }
            }
            ["refused", _, _, _, pid, ..] | ["end", pid, _] => {
                open.remove(*pid);
            }
            ["kill", pid] => {
                open.retain(|task, _| process(task) != *pid);
                killed_since_writer = true;
            }
            ["stop", _] | ["cont", _] => {}
            _ => panic!("an unknown history entry: {event:?}"),
        }
    }
    eprintln!(
        "read-write: {reads} reads and {writes} writes left with consent; up to {most_readers} \
         readers inside at once, {most_of_one} of one process"
    );
    assert!(
        reads >= 20 && writes >= 8,
        "too little progress: {reads} reads and {writes} writes"
    );
    assert!(
        most_readers >= 2,
        "readers never shared the key (at most {most_readers} inside at once)"
    );
    assert!(
        tasks == 1 || most_of_one >= 2,
        "the readers of one process were never inside together (at most {most_of_one})"
    );
}

/// Replays the permit history in the store's order; with several `tasks` per worker, permits of
/// one process must have been inside together.
fn check_permits(outcome: &Outcome, permits: usize, tasks: u32) {
    check_common(outcome, tasks);
    let history = &outcome.history;
    // fencing token -> pid
    let mut open: HashMap<String, String> = HashMap::new();
    let mut tokens = HashSet::new();
    let (mut sections, mut most, mut most_of_one) = (0, 0, 0);
    for (at, event) in history.iter().enumerate() {
        let parts: Vec<&str> = event.split(' ').collect();
        match parts.as_slice() {
            ["enter", "permit", token, pid] => {
                assert!(
                    tokens.insert((*token).to_owned()),
                    "permit token {token} granted twice (#{at})"
                );
                open.insert((*token).to_owned(), (*pid).to_owned());
                most = most.max(open.len());
                most_of_one =
                    most_of_one.max(most_of_one_process(open.values().map(String::as_str)));
                assert!(
                    open.len() <= permits,
                    "{} permits inside at #{at}: {open:?}\n{}",
                    open.len(),
                    tail(&history[..=at])
                );
            }
            ["leave", "permit", token, _] => {
                open.remove(*token);
                sections += 1;
            }
            ["fenced", "permit", token, _] | ["refused", "leave", "permit", token, _, _] => {
                open.remove(*token);
            }
            ["refused", "enter", "permit", ..] | ["stop", _] | ["cont", _] => {}
            ["end", task, _] => {
                open.retain(|_, holder| holder != task);
            }
            ["kill", pid] => {
                open.retain(|_, holder| process(holder) != *pid);
            }
            _ => panic!("an unknown history entry: {event:?}"),
        }
    }
    eprintln!(
        "permits: {sections} sections left with consent; up to {most} inside at once, \
         {most_of_one} of one process"
    );
    assert!(sections >= 20, "too little progress: {sections} sections");
    assert!(
        most >= 2,
        "the permits were never used concurrently (at most {most} inside)"
    );
    assert!(
        tasks == 1 || most_of_one >= 2,
        "the permits of one process were never inside together (at most {most_of_one})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_and_writers_stay_exclusive_and_fenced_under_kills_and_stalls() {
    bounded(TEST_LIMIT, async {
        let outcome = run("rw", 1).await;
        check_read_write(&outcome, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_more_than_n_permits_inside_under_kills_and_stalls() {
    bounded(TEST_LIMIT, async {
        let outcome = run("permits:3", 1).await;
        check_permits(&outcome, 3, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_and_writers_of_one_process_decided_together_stay_exclusive_and_fenced() {
    bounded(TEST_LIMIT, async {
        let outcome = run("rw", TASKS).await;
        check_read_write(&outcome, TASKS);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permits_of_one_process_decided_together_never_exceed_n() {
    bounded(TEST_LIMIT, async {
        let outcome = run(&format!("permits:{GROUPED_PERMITS}"), TASKS).await;
        check_permits(&outcome, GROUPED_PERMITS, TASKS);
    })
    .await;
}
