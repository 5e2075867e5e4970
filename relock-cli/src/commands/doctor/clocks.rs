//! The nodes' clocks, against this host and against each other, and the round trip to each.
//!
//! A lease is a deadline on the clock of the node that holds the key: a replica promoted with a
//! clock ahead ends every lease it takes over early by the difference, one behind stretches
//! them; fencing tokens mix in the same clock. This host's clock only matters for the times
//! `inspect` shows.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use relock::redis;

use super::deployment::Node;
use super::report::Check;

/// How far one node's clock is from this host's: measured against the middle of the round trip,
/// give or take half of it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Offset {
    pub(crate) addr: String,
    /// Server minus host, in milliseconds.
    pub(crate) millis: f64,
    pub(crate) error_millis: f64,
}

/// A difference between clocks below this is not worth a word.
const CLOSE: f64 = 1000.0;

/// Reads each node's `TIME`; the nodes that don't answer are named.
pub(crate) async fn offsets(nodes: &mut [Node]) -> (Vec<Offset>, Vec<String>) {
    let mut offsets = Vec::new();
    let mut failed = Vec::new();
    for node in nodes.iter_mut() {
        let before = now_millis();
        let time: Result<(String, String), _> =
            redis::cmd("TIME").query_async(&mut node.connection).await;
        let after = now_millis();
        match time {
            Ok((seconds, micros)) => {
                let server = seconds.parse::<f64>().unwrap_or(0.0) * 1000.0
                    + micros.parse::<f64>().unwrap_or(0.0) / 1000.0;
                offsets.push(Offset {
                    addr: node.addr.clone(),
                    millis: server - (before + after) / 2.0,
                    error_millis: (after - before) / 2.0,
                });
            }
            Err(err) => failed.push(format!("{}: TIME failed ({err})", node.addr)),
        }
    }
    (offsets, failed)
}

fn now_millis() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
        * 1000.0
}

/// Nodes apart by less than a second pass; by more, a warning, and by a third of the default
/// lease or more (the renewal margin), a failure: a failover between them can end a lease
/// before its holder renews it.
pub(crate) fn judge(offsets: &[Offset], failed: &[String], lease: Duration) -> Check {
    const NAME: &str = "clocks";
    if !failed.is_empty() {
        return Check::warning(
            NAME,
            failed.join("; "),
            "give the user +time (relock's scripts read the server's clock)",
        );
    }
    let Some(host) = offsets
        .iter()
        .max_by(|a, b| a.millis.abs().total_cmp(&b.millis.abs()))
    else {
        return Check::ok(NAME, "no node to compare");
    };
    let ahead = offsets.iter().max_by(|a, b| a.millis.total_cmp(&b.millis));
    let behind = offsets.iter().min_by(|a, b| a.millis.total_cmp(&b.millis));
    let spread = match (ahead, behind) {
        (Some(ahead), Some(behind)) => ahead.millis - behind.millis,
        _ => 0.0,
    };
    let margin = lease.as_secs_f64() * 1000.0 / 3.0;
    let host_text = format!(
        "this host's clock is within {} of every node's",
        millis(host.millis.abs() + host.error_millis)
    );
    if let (Some(ahead), Some(behind)) = (ahead, behind) {
        if spread >= CLOSE {
            let found = format!(
                "{}'s clock is {} ahead of {}'s: a lease moved between them (a failover, a slot \
                 migration) ends up to that much early",
                ahead.addr,
                millis(spread),
                behind.addr
            );
            let fix = "synchronise every Redis host with NTP, slewing rather than stepping";
            return if spread >= margin {
                Check::failure(NAME, found, fix)
            } else {
                Check::warning(NAME, found, fix)
            };
        }
    }
    if host.millis.abs() - host.error_millis >= CLOSE {
        return Check::warning(
            NAME,
            format!(
                "{}'s clock is {} {} this host's: the times `relock inspect` shows are off by as \
                 much (leases are not affected)",
                host.addr,
                millis(host.millis.abs()),
                if host.millis > 0.0 {
                    "ahead of"
                } else {
                    "behind"
                }
            ),
            "synchronise this host and the Redis hosts with NTP",
        );
    }
    let nodes = if offsets.len() > 1 {
        format!(
            "the {} nodes agree within {}; ",
            offsets.len(),
            millis(spread + host.error_millis * 2.0)
        )
    } else {
        String::new()
    };
    Check::ok(NAME, format!("{nodes}{host_text}"))
}

fn millis(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else {
        format!("{} ms", ms.ceil())
    }
}

/// The median of a few `PING`s to each node, and the slowest node.
pub(crate) async fn round_trip(nodes: &mut [Node]) -> Check {
    const NAME: &str = "round trip";
    const PINGS: usize = 5;
    let mut slowest: Option<(String, Duration)> = None;
    let mut failed = Vec::new();
    for node in nodes.iter_mut() {
        let mut times = Vec::with_capacity(PINGS);
        for _ in 0..PINGS {
            let started = Instant::now();
            let pong: Result<String, _> =
                redis::cmd("PING").query_async(&mut node.connection).await;
            match pong {
                Ok(_) => times.push(started.elapsed()),
                Err(err) => {
                    failed.push(format!("{}: PING failed ({err})", node.addr));
                    break;
                }
            }
        }
        times.sort();
        if let Some(median) = times.get(times.len() / 2) {
            if slowest.as_ref().is_none_or(|(_, slow)| median > slow) {
                slowest = Some((node.addr.clone(), *median));
            }
        }
    }
    if !failed.is_empty() {
        return Check::failure(
            NAME,
            failed.join("; "),
            "give the user +ping, and check the network to these nodes",
        );
    }
    let Some((addr, median)) = slowest else {
        return Check::ok(NAME, "no node to reach");
    };
    judge_round_trip(&addr, median, nodes.len())
}

/// Slower than 100 ms warns: every acquisition and release waits at least one round trip, and
/// a renewal that takes long eats into the lease it renews.
pub(crate) fn judge_round_trip(addr: &str, median: Duration, nodes: usize) -> Check {
    const NAME: &str = "round trip";
    let shown = format!("{:.2} ms", median.as_secs_f64() * 1000.0);
    if median > Duration::from_millis(100) {
        return Check::warning(
            NAME,
            format!("{shown} to {addr} (median of 5 PINGs): every lock and release waits that long at least"),
            "run the applications near their Redis (same region or zone)",
        );
    }
    let scope = if nodes > 1 {
        format!("{shown} to the slowest of {nodes} nodes ({addr})")
    } else {
        format!("{shown} to {addr}")
    };
    Check::ok(NAME, format!("{scope}, median of 5 PINGs"))
}

#[cfg(test)]
mod tests {
    use super::super::report::Status;
    use super::*;

    fn offset(addr: &str, millis: f64) -> Offset {
        Offset {
            addr: addr.to_owned(),
            millis,
            error_millis: 0.2,
        }
    }

    const LEASE: Duration = Duration::from_secs(30);

    #[test]
    fn clocks_close_together_pass() {
        let check = judge(&[offset("a", 3.0), offset("b", -2.0)], &[], LEASE);
        assert_eq!(check.status, Status::Ok, "{check:?}");
    }

    #[test]
    fn nodes_apart_by_seconds_warn_and_by_a_third_of_the_lease_fail() {
        let check = judge(&[offset("a", 1500.0), offset("b", 0.0)], &[], LEASE);
        assert_eq!(check.status, Status::Warning);
        assert!(
            check.found.contains("a's clock is 1.5 s ahead of b's"),
            "{}",
            check.found
        );
        let check = judge(&[offset("a", 0.0), offset("b", -12_000.0)], &[], LEASE);
        assert_eq!(check.status, Status::Failure);
    }

    #[test]
    fn a_host_clock_off_alone_warns() {
        let check = judge(&[offset("a", 5000.0), offset("b", 5100.0)], &[], LEASE);
        assert_eq!(check.status, Status::Warning);
        assert!(
            check.found.contains("ahead of this host's"),
            "{}",
            check.found
        );
    }

    #[test]
    fn a_slow_round_trip_warns() {
        assert_eq!(
            judge_round_trip("a", Duration::from_millis(150), 1).status,
            Status::Warning
        );
        assert_eq!(
            judge_round_trip("a", Duration::from_micros(300), 3).status,
            Status::Ok
        );
    }
}
