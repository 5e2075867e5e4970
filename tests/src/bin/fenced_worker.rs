//! Increments a counter kept in a separate store, under a relock lock, forever: the worker of the
//! multi-process exclusion and fencing tests (`tests/tests/fenced_processes.rs`).
//!
//! Usage: `fenced_worker <lock-url> <store-url> <key> <fenced|unfenced> <lease-ms>`. A
//! `<lock-url>` with commas lists the seed nodes of a Redis Cluster
//! (`redis://127.0.0.1:7000,redis://127.0.0.1:7001,...`): the worker then locks through the cluster
//! backend.
//!
//! Each round takes `key` on the lock server (`run`, 5 s wait), reads the counter from the store
//! with the hold's fencing token, pauses 10–30 ms (so that a SIGSTOP can land mid-body) and writes
//! the value read plus one. The pause is, at random, either
//!
//! * an async sleep: a SIGSTOP landing there ends in relock aborting the body (`Error::Lost`) when
//!   it is next polled, since loss is checked before every poll; or
//! * a blocking `std::thread::sleep`, a step relock cannot interrupt (CPU-bound work, a GC pause):
//!   a SIGSTOP landing there wakes into the write within the same poll, so a stale write reaches
//!   the store, where only the fencing token can stop it.
//!
//! Every accepted write also appends the value to the store's `written` list and
//! `"<value> <token> <pid>"` to its `history` list, so the test can replay who wrote what. Modes:
//!
//! * `fenced`: reads and writes are Lua scripts that check the token against the highest one the
//!   store has seen (`max_token`): an older token is rejected (and counted in the store's `stats`
//!   hash as `rejected_reads` / `rejected_writes`); a read raises `max_token` to its token, so a
//!   holder that stalled before its write is shut out as soon as the next holder has read.
//! * `unfenced`: a plain `GET`, then `SET` + `RPUSH` in one `MULTI`: only the lock protects it.
//!
//! Outcomes of each round (`ok`, `stale`, `timeout`, `lost`, `backend`, `other`) are counted in
//! the store's `stats` hash, since a worker is usually SIGKILLed rather than asked to exit.
//! Unexpected errors are also printed to stderr.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::MultiplexedConnection;

/// The counter.
const VALUE: &str = "store:value";
/// The highest fencing token the store has seen (fenced mode), as the decimal string it was sent.
const MAX_TOKEN: &str = "store:max_token";
/// Every value written, in order.
const WRITTEN: &str = "store:written";
/// `"<value> <token> <pid>"` for every write, in order.
const HISTORY: &str = "store:history";
/// Counters: rejections (by the scripts) and round outcomes (by the workers).
const STATS: &str = "store:stats";

/// Tokens are compared as decimal strings (shorter is smaller, else lexicographic), never as Lua
/// numbers: a token of ~1.8e15 would survive a double, but `tostring` would print `1.8e+15`, and
/// a u64 past 2^53 would not survive at all.
const OLDER: &str = r"
local function older(token, max)
  if #token ~= #max then return #token < #max end
  return token < max
end
";

/// KEYS: value, max_token, stats. ARGV: token. Reply: `{"ok", value}` (value `"0"` when unset), or
/// `{"stale", max_token}` when a newer token has already touched the store.
const FENCED_READ: &str = r"
local token = ARGV[1]
if not string.match(token, '^%d+$') then return redis.error_reply('token is not a decimal') end
local max = redis.call('GET', KEYS[2])
if max and older(token, max) then
  redis.call('HINCRBY', KEYS[3], 'rejected_reads', 1)
  return {'stale', max}
end
redis.call('SET', KEYS[2], token)
return {'ok', redis.call('GET', KEYS[1]) or '0'}
";

/// KEYS: value, max_token, written, history, stats. ARGV: token, value, pid. Reply: `{"ok", value}`
/// or `{"stale", max_token}`.
const FENCED_WRITE: &str = r"
local token = ARGV[1]
if not string.match(token, '^%d+$') then return redis.error_reply('token is not a decimal') end
local max = redis.call('GET', KEYS[2])
if max and older(token, max) then
  redis.call('HINCRBY', KEYS[5], 'rejected_writes', 1)
  return {'stale', max}
end
redis.call('SET', KEYS[2], token)
redis.call('SET', KEYS[1], ARGV[2])
redis.call('RPUSH', KEYS[3], ARGV[2])
redis.call('RPUSH', KEYS[4], ARGV[2] .. ' ' .. token .. ' ' .. ARGV[3])
return {'ok', ARGV[2]}
";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Fenced,
    Unfenced,
}

/// Why a round's body did not complete its write.
enum BodyError {
    /// The store rejected the read or the write: a newer token had touched it.
    Stale,
    /// The store failed.
    Store(redis::RedisError),
}

struct Store {
    connection: MultiplexedConnection,
    mode: Mode,
    read: redis::Script,
    write: redis::Script,
    pid: String,
}

impl Store {
    async fn read(&mut self, token: u64) -> Result<u64, BodyError> {
        let value: Option<String> = match self.mode {
            Mode::Fenced => {
                let (status, value): (String, String) = self
                    .read
                    .key(VALUE)
                    .key(MAX_TOKEN)
                    .key(STATS)
                    .arg(token.to_string())
                    .invoke_async(&mut self.connection)
                    .await
                    .map_err(BodyError::Store)?;
                if status != "ok" {
                    return Err(BodyError::Stale);
                }
                Some(value)
            }
            Mode::Unfenced => redis::cmd("GET")
                .arg(VALUE)
                .query_async(&mut self.connection)
                .await
                .map_err(BodyError::Store)?,
        };
        Ok(value.map_or(0, |value| {
            value
                .parse()
                .unwrap_or_else(|_| panic!("the store holds a non-number: {value:?}"))
        }))
    }

    async fn write(&mut self, token: u64, value: u64) -> Result<(), BodyError> {
        let value = value.to_string();
        match self.mode {
            Mode::Fenced => {
                let (status, _): (String, String) = self
                    .write
                    .key(VALUE)
                    .key(MAX_TOKEN)
                    .key(WRITTEN)
                    .key(HISTORY)
                    .key(STATS)
                    .arg(token.to_string())
                    .arg(&value)
                    .arg(&self.pid)
                    .invoke_async(&mut self.connection)
                    .await
                    .map_err(BodyError::Store)?;
                if status != "ok" {
                    return Err(BodyError::Stale);
                }
            }
            Mode::Unfenced => {
                redis::pipe()
                    .atomic()
                    .set(VALUE, &value)
                    .ignore()
                    .rpush(WRITTEN, &value)
                    .ignore()
                    .rpush(HISTORY, format!("{value} {token} {}", self.pid))
                    .ignore()
                    .query_async::<()>(&mut self.connection)
                    .await
                    .map_err(BodyError::Store)?;
            }
        }
        Ok(())
    }

    /// Counts a round's outcome; a failure to count is only printed.
    async fn count(&mut self, outcome: &str) {
        let counted: Result<(), _> = redis::cmd("HINCRBY")
            .arg(STATS)
            .arg(outcome)
            .arg(1)
            .query_async(&mut self.connection)
            .await;
        if let Err(err) = counted {
            eprintln!("fenced_worker {}: cannot count {outcome}: {err}", self.pid);
        }
    }
}

/// xorshift64: the body's sleeps need to vary, not to be good random numbers.
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

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [lock_url, store_url, key, mode, lease_ms] = args.as_slice() else {
        eprintln!("usage: fenced_worker <lock-url> <store-url> <key> <fenced|unfenced> <lease-ms>");
        std::process::exit(2);
    };
    let mode = match mode.as_str() {
        "fenced" => Mode::Fenced,
        "unfenced" => Mode::Unfenced,
        other => {
            eprintln!("fenced_worker: mode is `fenced` or `unfenced`, not {other:?}");
            std::process::exit(2);
        }
    };
    let lease = Duration::from_millis(lease_ms.parse().expect("lease-ms is a number"));
    let pid = std::process::id().to_string();

    let locker = if lock_url.contains(',') {
        // A Redis Cluster, through these seed nodes; the connection opens on first use.
        relock::Locker::builder()
            .cluster(lock_url.split(','))
            .build()
            .expect("a cluster locker")
    } else {
        relock::Locker::connect(lock_url)
            .await
            .expect("connect to the lock server")
    };
    let connection = redis::Client::open(store_url.as_str())
        .expect("a valid store url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to the store");
    let mut store = Store {
        connection,
        mode,
        read: redis::Script::new(&format!("{OLDER}{FENCED_READ}")),
        write: redis::Script::new(&format!("{OLDER}{FENCED_WRITE}")),
        pid: pid.clone(),
    };
    let mut jitter = Jitter::new();

    loop {
        let pause = Duration::from_millis(10 + jitter.next() % 21);
        let blocking = jitter.next().is_multiple_of(2);
        let round = locker
            .lock(key.as_str())
            .lease(lease)
            .wait(Duration::from_secs(5))
            .run(async {
                let token = locker
                    .current_guard(key.as_str())
                    .expect("run's body holds its key")
                    .fencing_token();
                let value = store.read(token).await?;
                if blocking {
                    std::thread::sleep(pause);
                } else {
                    tokio::time::sleep(pause).await;
                }
                store.write(token, value + 1).await
            })
            .await;
        let outcome = match round {
            Ok(Ok(())) => "ok",
            Ok(Err(BodyError::Stale)) => "stale",
            Ok(Err(BodyError::Store(err))) => {
                eprintln!("fenced_worker {pid}: store error: {err}");
                "store"
            }
            Err(relock::Error::Timeout { .. }) => "timeout",
            Err(relock::Error::Lost { .. }) => "lost",
            Err(relock::Error::Backend(err)) => {
                eprintln!("fenced_worker {pid}: lock backend error: {err}");
                "backend"
            }
            Err(err) => {
                eprintln!("fenced_worker {pid}: unexpected error: {err:?}");
                "other"
            }
        };
        store.count(outcome).await;
    }
}
