//! The fenced store: a register on a Redis server of its own (never under faults) that checks
//! fencing tokens, and keeps a log of every write it accepted — the ground truth the checker
//! compares the workers' records with.
//!
//! Reads and writes are Lua scripts that compare the token with the highest the store has seen:
//! an older one is refused (counted in `chaos:stats`), and a read records its token, so a holder
//! that stalled between its read and its write is shut out once the next holder has read. Tokens
//! are compared as decimal strings (shorter is smaller), never as Lua numbers, which are doubles.

use redis::aio::MultiplexedConnection;

use super::checker::{StoreState, StoreWrite};

/// The register.
pub const REGISTER: &str = "chaos:register";
/// The highest fencing token the store has seen.
pub const MAX_TOKEN: &str = "chaos:max_token";
/// `"<value> <token> <process> <pid>"` for every accepted write, in order.
pub const LOG: &str = "chaos:log";
/// Counts of refused reads and writes.
pub const STATS: &str = "chaos:stats";

const OLDER: &str = r"
local function older(token, max)
  if #token ~= #max then return #token < #max end
  return token < max
end
local token = ARGV[1]
if not string.match(token, '^%d+$') then return redis.error_reply('token is not a decimal') end
local max = redis.call('GET', KEYS[2])
";

/// KEYS: register, max_token, stats. ARGV: token. Reply: `{"ok", value}` or `{"stale", max}`.
const READ: &str = r"
if max and older(token, max) then
  redis.call('HINCRBY', KEYS[3], 'rejected_reads', 1)
  return {'stale', max}
end
redis.call('SET', KEYS[2], token)
return {'ok', redis.call('GET', KEYS[1]) or '0'}
";

/// KEYS: register, max_token, stats, log. ARGV: token, value, process, pid. Reply: `{"ok", value}`
/// or `{"stale", max}`.
const WRITE: &str = r"
if max and older(token, max) then
  redis.call('HINCRBY', KEYS[3], 'rejected_writes', 1)
  return {'stale', max}
end
redis.call('SET', KEYS[2], token)
redis.call('SET', KEYS[1], ARGV[2])
redis.call('RPUSH', KEYS[4], ARGV[2] .. ' ' .. token .. ' ' .. ARGV[3] .. ' ' .. ARGV[4])
return {'ok', ARGV[2]}
";

/// A worker's connection to the fenced store.
#[derive(Debug, Clone)]
pub struct FencedStore {
    connection: MultiplexedConnection,
    read: redis::Script,
    write: redis::Script,
}

/// A read or write the store refused: a newer token (this one) had already touched it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stale(pub u64);

impl FencedStore {
    /// Connects to the store at `url`.
    pub async fn connect(url: &str) -> redis::RedisResult<FencedStore> {
        let connection = redis::Client::open(url)?
            .get_multiplexed_async_connection()
            .await?;
        Ok(FencedStore {
            connection,
            read: redis::Script::new(&format!("{OLDER}{READ}")),
            write: redis::Script::new(&format!("{OLDER}{WRITE}")),
        })
    }

    /// Reads the register with `token`.
    pub async fn read(&mut self, token: u64) -> redis::RedisResult<Result<u64, Stale>> {
        let (status, value): (String, String) = self
            .read
            .key(REGISTER)
            .key(MAX_TOKEN)
            .key(STATS)
            .arg(token.to_string())
            .invoke_async(&mut self.connection)
            .await?;
        Ok(answer(&status, &value))
    }

    /// Writes `value` with `token`, logged as `process`'s (`pid`).
    pub async fn write(
        &mut self,
        token: u64,
        value: u64,
        process: &str,
        pid: u32,
    ) -> redis::RedisResult<Result<u64, Stale>> {
        let (status, value): (String, String) = self
            .write
            .key(REGISTER)
            .key(MAX_TOKEN)
            .key(STATS)
            .key(LOG)
            .arg(token.to_string())
            .arg(value.to_string())
            .arg(process)
            .arg(pid.to_string())
            .invoke_async(&mut self.connection)
            .await?;
        Ok(answer(&status, &value))
    }

    /// Everything the store holds, for the checker.
    pub async fn state(&mut self) -> Result<StoreState, String> {
        let log: Vec<String> = redis::cmd("LRANGE")
            .arg(LOG)
            .arg(0)
            .arg(-1)
            .query_async(&mut self.connection)
            .await
            .map_err(|err| format!("LRANGE {LOG}: {err}"))?;
        let register: Option<u64> = redis::cmd("GET")
            .arg(REGISTER)
            .query_async(&mut self.connection)
            .await
            .map_err(|err| format!("GET {REGISTER}: {err}"))?;
        let (rejected_reads, rejected_writes): (Option<u64>, Option<u64>) = redis::cmd("HMGET")
            .arg(STATS)
            .arg("rejected_reads")
            .arg("rejected_writes")
            .query_async(&mut self.connection)
            .await
            .map_err(|err| format!("HMGET {STATS}: {err}"))?;
        Ok(StoreState {
            log: log
                .iter()
                .map(|entry| parse_entry(entry))
                .collect::<Result<_, _>>()?,
            register: register.unwrap_or(0),
            rejected_reads: rejected_reads.unwrap_or(0),
            rejected_writes: rejected_writes.unwrap_or(0),
        })
    }
}

fn answer(status: &str, value: &str) -> Result<u64, Stale> {
    let number = value
        .parse()
        .unwrap_or_else(|_| panic!("the store answered a non-number: {value:?}"));
    if status == "ok" {
        Ok(number)
    } else {
        Err(Stale(number))
    }
}

/// Parses a log entry, `"<value> <token> <process> <pid>"`.
pub fn parse_entry(entry: &str) -> Result<StoreWrite, String> {
    let bad = || format!("a store log entry is not `<value> <token> <process> <pid>`: {entry:?}");
    let mut parts = entry.split(' ');
    let (Some(value), Some(token), Some(process), Some(pid), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(bad());
    };
    Ok(StoreWrite {
        value: value.parse().map_err(|_| bad())?,
        token: token.parse().map_err(|_| bad())?,
        process: process.to_owned(),
        pid: pid.parse().map_err(|_| bad())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_entry_parses_and_a_malformed_one_is_named() {
        assert_eq!(
            parse_entry("7 1733000000000001 w2 4242").unwrap(),
            StoreWrite {
                value: 7,
                token: 1_733_000_000_000_001,
                process: "w2".into(),
                pid: 4242
            }
        );
        for bad in ["7 1 w2", "7 1 w2 4242 extra", "x 1 w2 4242"] {
            assert!(parse_entry(bad).unwrap_err().contains(bad), "{bad}");
        }
    }
}
