//! Lease renewal of many held locks: how many renewals each watchdog tick sends, in how many
//! bursts and over how long (server-side timestamps from `MONITOR`), and what a tick costs this
//! process in CPU time.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::report::{Goal, Report, Table};
use crate::stats::format_duration;
use crate::Bench;
use futures_util::StreamExt;
use relock::{LockGuard, Locker};
use relock_tests::RedisServer;

/// A renewal-shaped script (`GET`, `TIME`, then a `SET … PX` of a hold-sized value, as
/// `renew.lua` does) on keys of the benchmark's own, sent by it as one pipeline: what one round
/// trip carrying N renewals looks like.
const REFERENCE_LUA: &str = r#"
local value = redis.call('GET', KEYS[1])
local time = redis.call('TIME')
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. time[1] .. time[2], 'PX', ARGV[2])
return 1
"#;

/// What the renewal scenario measured.
#[derive(Debug, Clone)]
pub(crate) struct Renewal {
    pub(crate) holds: usize,
    pub(crate) lease: Duration,
    /// Renewals counted by `INFO commandstats` over `window`, divided by the number of holds.
    pub(crate) ticks: f64,
    pub(crate) window: Duration,
    /// This process's user + system CPU time over `window`, per tick.
    pub(crate) cpu_per_tick: Duration,
    /// redis-server's user + system CPU time over `window`, per tick.
    pub(crate) server_cpu_per_tick: Duration,
    /// The ticks seen under `MONITOR`, each a burst of renewals.
    pub(crate) bursts: Vec<Burst>,
    /// The server-side span of the benchmark's own pipeline of as many renewal-shaped scripts.
    pub(crate) reference_span: Duration,
    /// Holds that were no longer held at the end.
    pub(crate) lost: usize,
}

/// One tick as the server saw it.
#[derive(Debug, Clone)]
pub(crate) struct Burst {
    pub(crate) renewals: usize,
    /// From the first renewal to the last, by the server's clock.
    pub(crate) span: Duration,
    /// How many client connections the renewals came from.
    pub(crate) connections: usize,
    /// Whether it began or ended so close to the edge of the watch that part of it may lie
    /// outside; such a burst is shown but not judged.
    pub(crate) cut: bool,
}

impl Renewal {
    /// Whether every tick renewed every hold from one connection in one burst no longer than
    /// twice the span of the benchmark's own single pipelined round trip (plus 5 ms of slack).
    pub(crate) fn one_round_trip_per_tick(&self) -> bool {
        self.bursts.iter().any(|burst| !burst.cut)
            && self.bursts.iter().filter(|burst| !burst.cut).all(|burst| {
                burst.renewals == self.holds
                    && burst.connections == 1
                    && burst.span <= self.reference_span * 2 + Duration::from_millis(5)
            })
    }
}

async fn evalsha_calls(connection: &mut redis::aio::MultiplexedConnection) -> u64 {
    relock_tests::command_stats(connection)
        .await
        .into_iter()
        .find_map(|(name, calls)| (name == "evalsha").then_some(calls))
        .unwrap_or(0)
}

/// `addr=` of the connection's `CLIENT INFO`.
async fn client_addr(connection: &mut redis::aio::MultiplexedConnection) -> String {
    let info: String = redis::cmd("CLIENT")
        .arg("INFO")
        .query_async(connection)
        .await
        .expect("CLIENT INFO");
    info.split_whitespace()
        .find_map(|field| field.strip_prefix("addr="))
        .unwrap_or_default()
        .to_owned()
}

/// One `MONITOR` line as (server time in µs, client address) when it is a client's `evalsha`.
fn parse_monitor_line(line: &str) -> Option<(u64, String)> {
    let (stamp, rest) = line.split_once(' ')?;
    let (seconds, micros) = stamp.split_once('.')?;
    let at = seconds.parse::<u64>().ok()? * 1_000_000 + micros.parse::<u64>().ok()?;
    let rest = rest.strip_prefix('[')?;
    let (client, command) = rest.split_once("] ")?;
    let addr = client.split_whitespace().nth(1)?;
    if addr == "lua" || !command.to_ascii_lowercase().starts_with("\"evalsha\"") {
        return None;
    }
    Some((at, addr.to_owned()))
}

/// Groups timestamped renewals into bursts separated by more than `gap`; a burst within `gap`
/// of an edge of the watched `window` (µs since the epoch) is marked cut.
pub(crate) fn bursts(
    mut renewals: Vec<(u64, String)>,
    gap: Duration,
    window: (u64, u64),
) -> Vec<Burst> {
    renewals.sort_by_key(|(at, _)| *at);
    let gap = gap.as_micros() as u64;
    let mut bursts = Vec::new();
    let mut current: Vec<(u64, String)> = Vec::new();
    let close = |current: &mut Vec<(u64, String)>, bursts: &mut Vec<Burst>| {
        if let (Some(first), Some(last)) = (current.first(), current.last()) {
            bursts.push(Burst {
                renewals: current.len(),
                span: Duration::from_micros(last.0 - first.0),
                connections: current.iter().map(|(_, a)| a).collect::<HashSet<_>>().len(),
                cut: first.0 < window.0 + gap || last.0 + gap > window.1,
            });
        }
        current.clear();
    };
    for renewal in renewals {
        if current.last().is_some_and(|(at, _)| renewal.0 - at > gap) {
            close(&mut current, &mut bursts);
        }
        current.push(renewal);
    }
    close(&mut current, &mut bursts);
    bursts
}

fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_micros() as u64)
}

/// Records, for `duration`, the server-side time and client of every `evalsha` (of the client
/// at `only`, when given).
pub(crate) async fn monitor(
    client: redis::Client,
    duration: Duration,
    only: Option<String>,
) -> (Vec<(u64, String)>, (u64, u64)) {
    let monitor = client.get_async_monitor().await.expect("MONITOR");
    let mut stream = monitor.into_on_message::<String>();
    let mut seen = Vec::new();
    let started = now_micros();
    let end = tokio::time::Instant::now() + duration;
    loop {
        match tokio::time::timeout_at(end, stream.next()).await {
            Ok(Some(line)) => seen.extend(
                parse_monitor_line(&line)
                    .filter(|(_, addr)| only.as_ref().is_none_or(|only| only == addr)),
            ),
            Ok(None) | Err(_) => return (seen, (started, now_micros())),
        }
    }
}

/// Takes `holds` locks with a short `lease`, lets the watchdog settle, then measures.
pub(crate) async fn measure(server: &RedisServer, holds: usize, lease: Duration) -> Renewal {
    let period = lease / 3;
    let locker = Locker::builder()
        .url(server.url())
        .lease(lease)
        .build()
        .expect("build");
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
    // The holds were taken over a spread of time; after a tick or two they fall due together.
    tokio::time::sleep(period * 2 + period / 4).await;

    let mut connection = server.connection().await;
    let window = period * 3;
    let calls_before = evalsha_calls(&mut connection).await;
    let server_before = crate::cpu::server(&mut connection).await;
    let cpu_before = crate::cpu::process();
    tokio::time::sleep(window).await;
    let cpu = crate::cpu::process() - cpu_before;
    let calls = evalsha_calls(&mut connection).await - calls_before;
    let server_cpu_used = crate::cpu::server(&mut connection).await - server_before;
    let ticks = calls as f64 / holds as f64;
    let per_tick = |total: Duration| {
        if ticks > 0.0 {
            total.div_f64(ticks)
        } else {
            Duration::ZERO
        }
    };

    let watched = period * 3 + period / 2;
    let monitored = tokio::spawn(monitor(server.client(), watched, None));
    let (relock_renewals, watched) = monitored.await.expect("monitor task");
    let bursts = bursts(relock_renewals, period / 4, watched);

    let keys = (0..holds)
        .map(|i| format!("bench:renew:{i}:reference"))
        .collect();
    let reference_span = reference_span(server.client(), keys).await;
    let lost = guards.iter().filter(|guard| !guard.is_held()).count();
    release_all(guards).await;
    Renewal {
        holds,
        lease,
        ticks,
        window,
        cpu_per_tick: per_tick(cpu),
        server_cpu_per_tick: per_tick(server_cpu_used),
        bursts,
        reference_span,
        lost,
    }
}

/// The server-side span of one pipeline of renewal-shaped scripts on `keys`, sent to the server
/// of `client` (on a cluster, keys that master serves).
pub(crate) async fn reference_span(client: redis::Client, keys: Vec<String>) -> Duration {
    // The whole pipeline is one response: give it more than redis-rs's default response timeout
    // (MONITOR, watching, slows the server down).
    let config =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
    let mut connection = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("connect to the benchmark's server");
    let script = redis::Script::new(REFERENCE_LUA);
    script
        .prepare_invoke()
        .load_async(&mut connection)
        .await
        .expect("SCRIPT LOAD");
    let addr = client_addr(&mut connection).await;
    let mut pipe = redis::pipe();
    for key in keys {
        let mut invocation = script.key(key);
        invocation
            .arg("0123456789abcdef0123456789abcdef 1765000000000000 1765000003000 4242 1765000000000 bench")
            .arg(1_000);
        pipe.invoke_script(&invocation);
    }
    let watching = tokio::spawn(monitor(
        client.clone(),
        Duration::from_millis(1_000),
        Some(addr),
    ));
    // Let MONITOR start before the pipeline goes out.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _: Vec<i64> = pipe.query_async(&mut connection).await.expect("pipeline");
    let (seen, _) = watching.await.expect("monitor task");
    let bursts = bursts(seen, Duration::from_secs(1), (0, u64::MAX));
    bursts.first().map_or(Duration::ZERO, |burst| burst.span)
}

pub(crate) async fn release_all(guards: Vec<LockGuard>) {
    let mut handles = Vec::new();
    let mut guards = guards.into_iter().peekable();
    while guards.peek().is_some() {
        let batch: Vec<LockGuard> = guards.by_ref().take(256).collect();
        handles.push(tokio::spawn(async move {
            for guard in batch {
                let _ = guard.release().await;
            }
        }));
    }
    for handle in handles {
        handle.await.expect("release task");
    }
}

/// The renewal scenario, judged against `rtt` (a `PING` round trip measured in the same run).
pub(crate) async fn scenario(bench: &Bench<'_>, rtt: Duration, report: &mut Report) {
    let Bench { server, plan, .. } = bench;
    let Report { tables, goals } = report;
    eprintln!(
        "renewal of {} holds (lease {:?})",
        plan.renewal_holds, plan.renewal_lease
    );
    let found = measure(server, plan.renewal_holds, plan.renewal_lease).await;
    let mut table = Table::new(
        format!(
            "Lease renewal of {} held locks through Locker::connect (lease {:?}: a tick every {:?})",
            found.holds,
            found.lease,
            found.lease / 3
        ),
        &["measure", "value"],
    )
    .text(&[1]);
    let expected_ticks = found.window.as_secs_f64() / (found.lease / 3).as_secs_f64();
    let widest = found
        .bursts
        .iter()
        .filter(|b| !b.cut)
        .map(|b| b.span)
        .max()
        .unwrap_or_default();
    table.row(vec![
        "ticks in the CPU window (renewals ÷ holds)".to_owned(),
        format!("{:.2} (period suggests {expected_ticks:.2})", found.ticks),
    ]);
    for (tick, burst) in found.bursts.iter().enumerate() {
        table.row(vec![
            format!("tick {} under MONITOR", tick + 1),
            format!(
                "{} renewals from {} connection(s) within {} (server clock){}",
                burst.renewals,
                burst.connections,
                format_duration(burst.span),
                if burst.cut { ", cut by the watch" } else { "" }
            ),
        ]);
    }
    for (measure, value) in [
        (
            format!(
                "the bench's own single pipeline of {} such scripts",
                found.holds
            ),
            format!(
                "within {} (server clock)",
                format_duration(found.reference_span)
            ),
        ),
        (
            format!("{} sequential round trips would take at least", found.holds),
            format_duration(rtt * found.holds as u32),
        ),
        (
            "CPU time per tick, this process (user + sys)".to_owned(),
            format_duration(found.cpu_per_tick),
        ),
        (
            "CPU time per tick, redis-server (user + sys)".to_owned(),
            format_duration(found.server_cpu_per_tick),
        ),
        ("holds lost by the end".to_owned(), found.lost.to_string()),
    ] {
        table.row(vec![measure, value]);
    }
    tables.push(table);
    goals.push(Goal::new(
        "renewal: round trips per tick per node",
        "1",
        format!(
            "{} (every tick: {} renewals from 1 connection within {}; one pipeline: {})",
            if found.one_round_trip_per_tick() {
                "1"
            } else {
                "more than 1"
            },
            found.holds,
            format_duration(widest),
            format_duration(found.reference_span)
        ),
        found.one_round_trip_per_tick() && found.lost == 0,
    ));
    bench.flush().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitor_lines_of_client_evalsha_only() {
        let line = r#"1700000000.123456 [0 127.0.0.1:5555] "evalsha" "abc" "1" "k""#;
        assert_eq!(
            parse_monitor_line(line),
            Some((1_700_000_000_123_456, "127.0.0.1:5555".to_owned()))
        );
        assert_eq!(
            parse_monitor_line(r#"1700000000.123456 [0 lua] "hexists" "k" "o""#),
            None
        );
        assert_eq!(
            parse_monitor_line(r#"1700000000.123456 [0 127.0.0.1:5555] "ping""#),
            None
        );
    }

    #[test]
    fn bursts_split_on_gaps() {
        let at = |us: u64| (us, "a".to_owned());
        let found = bursts(
            vec![at(0), at(10), at(1_000_000), at(1_000_030)],
            Duration::from_millis(100),
            (0, 2_000_000),
        );
        assert_eq!(found.len(), 2);
        assert!(found[0].cut, "it began at the start of the watch");
        assert!(!found[1].cut);
        assert_eq!(found[0].renewals, 2);
        assert_eq!(found[1].span, Duration::from_micros(30));
    }
}
