//! Enters and leaves a critical section under a read, write or permit hold, forever, recording
//! each step in a fenced store: the worker of `tests/tests/fenced_shared_processes.rs`.
//!
//! Usage: `shared_worker <lock-url> <store-url> <key> <rw|permits:<n>> <lease-ms> [<tasks>]`.
//!
//! The worker runs `tasks` (default 1) tasks on its one-thread runtime, each looping on the key
//! through the process's one `Locker`: with several, requests of one key queue up behind the
//! calls in flight and go out together (relock's group commit, whose script decides the shared
//! requests of a key that a call carries more than once together). A task names itself to the
//! store `<pid>.<task>` (in the store's scripts, its history and its violations): the store
//! tells two tasks of one process apart, and the test finds the process to stop or kill by the
//! part before the dot. A blocking pause stalls every task of the process.
//!
//! Each round takes `key` on the lock server (5 s wait) — in `rw` mode a read hold
//! (`locker.read`, two rounds in three) or the write lock (`locker.lock`), in `permits:<n>` mode
//! one of the `n` permits of `locker.semaphore(key, n)` — and, holding it, asks the store to let
//! it **enter** (with its mode and fencing token), pauses 10–30 ms, and asks the store to let it
//! **leave**. The pause is, at random, an async sleep (a SIGSTOP there ends in relock aborting the
//! body when it is next polled: loss is checked before every poll) or a blocking
//! `std::thread::sleep` (the step after it leaves within the same poll, so only the store can
//! refuse it). The permit's body is polled the way `run` polls a lock's (and `LimitLayer` a
//! permit's): not again once the permit is lost.
//!
//! The store is a `redis-server` not under faults. Its Lua scripts keep its state and refuse
//! what a stale holder would do:
//!
//! * `rw`: the store keeps `w`, the largest fencing token accepted so far, and the mode of the
//!   entry that set it. A writer enters only with a token larger than `w`; a reader only with a
//!   token at least `w` (a reader's token is the key's last one, the last writer's). A writer
//!   leaves only if `w` is still its token and no reader came in after it; a reader only if no
//!   writer came in after it (`w` is still its token, set by a reader). Tokens alone cannot
//!   fence a writer that outlived its lease: the readers granted after it carry its token, so
//!   a step of the stale writer is as large as theirs; what gives it away is that a reader has
//!   shown that token since.
//! * `permits:<n>`: the store keeps the permits inside, each with the store's time of entry. An
//!   entry older than the fence, half the lease, is stale and dropped; an entry is refused while
//!   `n` fresh ones are inside, and leaving is refused to a dropped one. The fence comes before
//!   the lock server can hand a stopped holder's permit to another unless the holder took over
//!   half a lease to enter after its grant, and after a live holder leaves unless it took over
//!   half a lease to: both would need a running process to stall for half a lease.
//!
//! Every accepted or refused step is appended to the store's `history` list, in the store's
//! order. A refusal is harmless when the refused holder's lease had ended (it was stopped past
//! it): its guard says so. If, right after a refusal, the guard still says held (`is_held()`, by
//! the local deadline, which never outlasts the server's lease), two owners believed they held
//! the key at once: the worker appends the refusal to the store's `violations` list. After each
//! round it appends `end <pid>.<task> <outcome>` (`ok`, `stale`, `lost`, `timeout`, `backend`,
//! `other`).

use std::future::Future;
use std::pin::pin;
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::MultiplexedConnection;

/// Every step, in the store's order.
const HISTORY: &str = "store:history";
/// Refusals that the refused worker's guard did not know about.
const VIOLATIONS: &str = "store:violations";
/// `rw`: `w` (the largest token accepted) and `mode` (the mode of the entry that set it).
const STATE: &str = "store:state";
/// The tasks inside, `<pid>.<task> → fencing token`: where the test looks for a process to stop.
const INSIDE: &str = "store:inside";
/// `permits`: the permits inside, `fencing token → "<pid>.<task> <entered ms>"`.
const PERMITS: &str = "store:permits";

/// Tokens are compared as decimal strings (shorter is smaller, else lexicographic): `tostring`
/// of a Lua number this large would print `1.8e+15`.
const OLDER: &str = r"
local function older(token, than)
  if #token ~= #than then return #token < #than end
  return token < than
end
";

/// KEYS: state, inside, history. ARGV: `enter`|`leave`, `read`|`write`, token, pid.
/// Reply: `{"ok", w}` or `{"stale", w}`.
const RW_STEP: &str = r"
local step, mode, token, pid = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local w = redis.call('HGET', KEYS[1], 'w') or '0'
local by = redis.call('HGET', KEYS[1], 'mode') or 'none'
local ok
if step == 'enter' and mode == 'write' then
  ok = older(w, token)
elseif step == 'enter' then
  ok = not older(token, w)
else
  ok = w == token and by == mode
end
if not ok then
  redis.call('RPUSH', KEYS[3], table.concat({'refused', step, mode, token, pid, w, by}, ' '))
  return {'stale', w}
end
if step == 'enter' then
  redis.call('HSET', KEYS[1], 'w', token, 'mode', mode)
  redis.call('HSET', KEYS[2], pid, token)
else
  redis.call('HDEL', KEYS[2], pid)
end
redis.call('RPUSH', KEYS[3], table.concat({step, mode, token, pid}, ' '))
return {'ok', w}
";

/// KEYS: permits, inside, history. ARGV: `enter`|`leave`, token, pid, permits, fence ms.
/// Reply: `{"ok", inside}`, `{"full", inside}` (entry refused), or `{"stale", inside}` (leaving
/// refused: the entry was dropped as stale).
const PERMIT_STEP: &str = r"
local step, token, pid, permits, fence = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  local holder, at = string.match(entries[i + 1], '^(%S+) (%d+)$')
  if now - tonumber(at) > fence then
    redis.call('HDEL', KEYS[1], entries[i])
    redis.call('RPUSH', KEYS[3], table.concat({'fenced', 'permit', entries[i], holder}, ' '))
  end
end
local inside = redis.call('HLEN', KEYS[1])
if step == 'enter' then
  if inside >= permits then
    redis.call('RPUSH', KEYS[3], table.concat({'refused', step, 'permit', token, pid, inside}, ' '))
    return {'full', inside}
  end
  redis.call('HSET', KEYS[1], token, pid .. ' ' .. now)
  redis.call('HSET', KEYS[2], pid, token)
  redis.call('RPUSH', KEYS[3], table.concat({step, 'permit', token, pid}, ' '))
  return {'ok', inside + 1}
end
if redis.call('HDEL', KEYS[1], token) == 0 then
  redis.call('RPUSH', KEYS[3], table.concat({'refused', step, 'permit', token, pid, inside}, ' '))
  return {'stale', inside}
end
redis.call('HDEL', KEYS[2], pid)
redis.call('RPUSH', KEYS[3], table.concat({step, 'permit', token, pid}, ' '))
return {'ok', inside - 1}
";

/// What a round holds.
#[derive(Clone, Copy)]
enum Mode {
    Read,
    Write,
    Permit { permits: u32 },
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Read => "read",
            Mode::Write => "write",
            Mode::Permit { .. } => "permit",
        }
    }
}

/// Why a round's body stopped before leaving the section.
enum BodyError {
    /// The store refused a step: a newer holder had come in.
    Stale,
    Store(redis::RedisError),
}

struct Store {
    connection: MultiplexedConnection,
    rw: redis::Script,
    permit: redis::Script,
    fence: Duration,
    /// The task's name in the store: `<pid>.<task>`.
    pid: String,
}

impl Store {
    /// Asks the store to take the step; `Err(Stale)` when it refuses, after recording a refusal
    /// the worker's own hold did not know about.
    async fn step(
        &mut self,
        step: &str,
        mode: Mode,
        token: u64,
        is_held: impl Fn() -> bool,
    ) -> Result<(), BodyError> {
        let token = token.to_string();
        let invocation = match mode {
            Mode::Read | Mode::Write => {
                let mut invocation = self.rw.prepare_invoke();
                invocation
                    .key(STATE)
                    .key(INSIDE)
                    .key(HISTORY)
                    .arg(step)
                    .arg(mode.name())
                    .arg(&token)
                    .arg(&self.pid);
                invocation
            }
            Mode::Permit { permits } => {
                let mut invocation = self.permit.prepare_invoke();
                invocation
                    .key(PERMITS)
                    .key(INSIDE)
                    .key(HISTORY)
                    .arg(step)
                    .arg(&token)
                    .arg(&self.pid)
                    .arg(permits)
                    .arg(self.fence.as_millis() as u64);
                invocation
            }
        };
        let (status, _): (String, String) = invocation
            .invoke_async(&mut self.connection)
            .await
            .map_err(BodyError::Store)?;
        if status == "ok" {
            return Ok(());
        }
        if is_held() {
            let violation = format!("believed {step} {} {token} {}", mode.name(), self.pid);
            let recorded: Result<(), _> = redis::cmd("RPUSH")
                .arg(VIOLATIONS)
                .arg(&violation)
                .query_async(&mut self.connection)
                .await;
            if let Err(err) = recorded {
                eprintln!(
                    "shared_worker {}: cannot record {violation}: {err}",
                    self.pid
                );
            }
        }
        Err(BodyError::Stale)
    }

    /// Records the round's outcome and that the worker is no longer inside; a failure is only
    /// printed.
    async fn end(&mut self, outcome: &str) {
        let recorded: Result<(), _> = redis::pipe()
            .atomic()
            .hdel(INSIDE, &self.pid)
            .ignore()
            .rpush(HISTORY, format!("end {} {outcome}", self.pid))
            .ignore()
            .query_async(&mut self.connection)
            .await;
        if let Err(err) = recorded {
            eprintln!("shared_worker {}: cannot record {outcome}: {err}", self.pid);
        }
    }
}

/// xorshift64: the modes and pauses need to vary, not to be good random numbers.
struct Jitter(u64);

impl Jitter {
    fn new() -> Jitter {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        Jitter((nanos ^ (u64::from(std::process::id()) << 32)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The section: enter, pause, leave.
async fn section(
    store: &mut Store,
    mode: Mode,
    token: u64,
    is_held: impl Fn() -> bool,
    pause: Duration,
    blocking: bool,
) -> Result<(), BodyError> {
    store.step("enter", mode, token, &is_held).await?;
    if blocking {
        std::thread::sleep(pause);
    } else {
        tokio::time::sleep(pause).await;
    }
    store.step("leave", mode, token, &is_held).await
}

/// Polls `body` while `permit` is held, as `run` polls a lock's body: checked by the clock
/// before every poll, and abandoned when the permit is lost.
async fn holding<F: Future>(permit: &relock::Permit, body: F) -> Option<F::Output> {
    let mut body = pin!(body);
    let mut lost = pin!(permit.lost());
    std::future::poll_fn(|cx| {
        if !permit.is_held() {
            return Poll::Ready(None);
        }
        if let Poll::Ready(output) = body.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        lost.as_mut().poll(cx).map(|()| None)
    })
    .await
}

/// One task's rounds on `key`, forever: `store.pid` names the task.
async fn rounds(
    locker: relock::Locker,
    mut store: Store,
    key: String,
    permits: Option<u32>,
    lease: Duration,
    mut jitter: Jitter,
) {
    let key = key.as_str();
    let wait = Duration::from_secs(5);
    loop {
        let pause = Duration::from_millis(10 + jitter.next() % 21);
        let blocking = jitter.next().is_multiple_of(2);
        let mode = match permits {
            Some(permits) => Mode::Permit { permits },
            None if jitter.next().is_multiple_of(3) => Mode::Write,
            None => Mode::Read,
        };
        let round = match mode {
            Mode::Read | Mode::Write => {
                let request = match mode {
                    Mode::Write => locker.lock(key),
                    _ => locker.read(key),
                };
                request
                    .lease(lease)
                    .wait(wait)
                    .run(async {
                        let guard = locker.current_guard(key).expect("run's body holds its key");
                        let is_held = || guard.is_held();
                        section(
                            &mut store,
                            mode,
                            guard.fencing_token(),
                            is_held,
                            pause,
                            blocking,
                        )
                        .await
                    })
                    .await
            }
            Mode::Permit { permits } => {
                match locker
                    .semaphore(key, permits)
                    .acquire()
                    .lease(lease)
                    .wait(wait)
                    .await
                {
                    Ok(permit) => {
                        let body = section(
                            &mut store,
                            mode,
                            permit.fencing_token(),
                            || permit.is_held(),
                            pause,
                            blocking,
                        );
                        match holding(&permit, body).await {
                            Some(output) => match permit.release().await {
                                Ok(()) => Ok(output),
                                Err(err) => Err(err),
                            },
                            None => Err(relock::Error::Lost {
                                key: key.to_owned(),
                            }),
                        }
                    }
                    Err(err) => Err(err),
                }
            }
        };
        let outcome = match round {
            Ok(Ok(())) => "ok",
            Ok(Err(BodyError::Stale)) => "stale",
            Ok(Err(BodyError::Store(err))) => {
                eprintln!("shared_worker {}: store error: {err}", store.pid);
                "store"
            }
            Err(relock::Error::Timeout { .. }) => "timeout",
            Err(relock::Error::Lost { .. }) => "lost",
            Err(relock::Error::Backend(err)) => {
                eprintln!("shared_worker {}: lock backend error: {err}", store.pid);
                "backend"
            }
            Err(err) => {
                eprintln!("shared_worker {}: unexpected error: {err:?}", store.pid);
                "other"
            }
        };
        store.end(outcome).await;
    }
}

const USAGE: &str =
    "usage: shared_worker <lock-url> <store-url> <key> <rw|permits:<n>> <lease-ms> [<tasks>]";

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (lock_url, store_url, key, mode, lease_ms, tasks) = match args.as_slice() {
        [lock_url, store_url, key, mode, lease_ms] => (lock_url, store_url, key, mode, lease_ms, 1),
        [lock_url, store_url, key, mode, lease_ms, tasks] => (
            lock_url,
            store_url,
            key,
            mode,
            lease_ms,
            tasks
                .parse::<u32>()
                .ok()
                .filter(|&tasks| tasks > 0)
                .unwrap_or_else(|| {
                    eprintln!("shared_worker: tasks is a positive number, not {tasks:?}");
                    std::process::exit(2);
                }),
        ),
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    let permits = match mode.as_str() {
        "rw" => None,
        other => Some(
            other
                .strip_prefix("permits:")
                .and_then(|n| n.parse::<u32>().ok())
                .unwrap_or_else(|| {
                    eprintln!("shared_worker: mode is `rw` or `permits:<n>`, not {other:?}");
                    std::process::exit(2);
                }),
        ),
    };
    let lease = Duration::from_millis(lease_ms.parse().expect("lease-ms is a number"));
    let pid = std::process::id();
    let locker = relock::Locker::connect(lock_url)
        .await
        .expect("connect to the lock server");
    let connection = redis::Client::open(store_url.as_str())
        .expect("a valid store url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to the store");
    let rw = redis::Script::new(&format!("{OLDER}{RW_STEP}"));
    let permit = redis::Script::new(PERMIT_STEP);
    // The tasks share the runtime's one thread, the locker (its group commit) and the store's
    // connection; each names itself `<pid>.<task>` to the store.
    let mut jitter = Jitter::new();
    let mut running = tokio::task::JoinSet::new();
    for task in 0..tasks {
        let store = Store {
            connection: connection.clone(),
            rw: rw.clone(),
            permit: permit.clone(),
            fence: lease / 2,
            pid: format!("{pid}.{task}"),
        };
        let seed = Jitter((jitter.next() ^ u64::from(task)) | 1);
        running.spawn(rounds(
            locker.clone(),
            store,
            key.clone(),
            permits,
            lease,
            seed,
        ));
    }
    while let Some(ended) = running.join_next().await {
        if let Err(err) = ended {
            eprintln!("shared_worker {pid}: a task ended: {err}");
            std::process::exit(1);
        }
    }
}
