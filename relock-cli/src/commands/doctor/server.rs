//! The checks that read a node's version and configuration: version, eviction, persistence,
//! replica settings against the failover time, and cluster coverage.

use std::collections::HashMap;

use relock::redis::{self, Value};

use super::deployment::{fields, parse_role, Deployment, Kind, Node, Role};
use super::report::Check;

/// The settings the checks read, in one `CONFIG GET`.
const SETTINGS: [&str; 9] = [
    "maxmemory",
    "maxmemory-policy",
    "save",
    "appendonly",
    "appendfsync",
    "min-replicas-to-write",
    "min-replicas-max-lag",
    "cluster-require-full-coverage",
    "cluster-node-timeout",
];

/// What one node told about itself.
#[derive(Debug)]
pub(crate) struct Facts {
    pub(crate) addr: String,
    pub(crate) role: Role,
    /// `HELLO`'s `server` and `version` (every user may send `HELLO`).
    pub(crate) version: Result<(String, String), String>,
    pub(crate) config: Result<HashMap<String, String>, String>,
    /// The replicas a master reports as connected (`ROLE`), if the user may ask.
    pub(crate) replicas: Option<usize>,
    /// The role the node reports itself (`ROLE`), if the user may ask.
    pub(crate) reported: Option<Role>,
}

pub(crate) async fn facts(node: &mut Node) -> Facts {
    let connection = &mut node.connection;
    let hello: Result<Value, _> = redis::cmd("HELLO").query_async(connection).await;
    let version = hello.map_err(|err| err.to_string()).map(|hello| {
        let hello = fields(&hello);
        (
            hello
                .get("server")
                .cloned()
                .unwrap_or_else(|| "redis".to_owned()),
            hello.get("version").cloned().unwrap_or_default(),
        )
    });
    let config: Result<Value, _> = redis::cmd("CONFIG")
        .arg("GET")
        .arg(&SETTINGS[..])
        .query_async(connection)
        .await;
    let config = config
        .map(|config| fields(&config))
        .map_err(|err| err.to_string());
    let role: Result<Value, _> = redis::cmd("ROLE").query_async(connection).await;
    let role = role.ok().map(|role| parse_role(&role));
    let replicas = role
        .as_ref()
        .filter(|(role, _)| *role == Role::Master)
        .map(|(_, replicas)| replicas.len());
    Facts {
        addr: node.addr.clone(),
        role: node.role,
        version,
        config,
        replicas,
        reported: role.map(|(role, _)| role),
    }
}

/// Redis 7.0 or newer on every node: relock's scripts use `SET … NX GET`, and on a cluster
/// sharded pub/sub, both new in 7.0.
pub(crate) fn version(facts: &[Facts]) -> Check {
    const NAME: &str = "version";
    let mut seen: Vec<String> = Vec::new();
    let mut findings = Vec::new();
    for node in facts {
        match &node.version {
            Ok((server, version)) => {
                let text = format!("{server} {version}");
                if !is_at_least_7(version) {
                    findings.push(Check::failure(
                        NAME,
                        format!("{} runs {text}", node.addr),
                        "upgrade to Redis 7.0 or newer: relock's scripts use `SET … NX GET`, \
                         and on a cluster sharded pub/sub, both new in 7.0",
                    ));
                } else if !seen.contains(&text) {
                    seen.push(text);
                }
            }
            Err(err) => findings.push(Check::warning(
                NAME,
                format!("{} did not answer HELLO: {err}", node.addr),
                "check that the server is Redis 7.0 or newer",
            )),
        }
    }
    findings.push(Check::ok(
        NAME,
        format!("{} on {}", seen.join(", "), nodes(facts.len())),
    ));
    Check::worst(NAME, findings)
}

pub(crate) fn is_at_least_7(version: &str) -> bool {
    let major = version
        .split('.')
        .next()
        .and_then(|major| major.parse::<u32>().ok());
    major.is_some_and(|major| major >= 7)
}

fn nodes(n: usize) -> String {
    if n == 1 {
        "1 node".to_owned()
    } else {
        format!("{n} nodes")
    }
}

fn unreadable(name: &'static str, node: &Facts, err: &str, what: &str) -> Check {
    Check::warning(
        name,
        format!("{}: CONFIG GET refused ({err})", node.addr),
        format!("check {what} by hand, or run `relock doctor` as a user that may CONFIG GET"),
    )
}

/// No node may evict keys: with `maxmemory` set, any policy but `noeviction` (the `volatile-*`
/// ones too: every relock key has an expiry) lets a full server drop held locks.
pub(crate) fn eviction(facts: &[Facts]) -> Check {
    const NAME: &str = "eviction";
    let findings = facts
        .iter()
        .map(|node| {
            let config = match &node.config {
                Ok(config) => config,
                Err(err) => return unreadable(NAME, node, err, "maxmemory-policy"),
            };
            let maxmemory = config.get("maxmemory").map(String::as_str).unwrap_or("0");
            let policy = config
                .get("maxmemory-policy")
                .map(String::as_str)
                .unwrap_or("noeviction");
            judge_eviction(&node.addr, node.role, maxmemory, policy)
        })
        .collect();
    Check::worst(NAME, findings)
}

pub(crate) fn judge_eviction(addr: &str, role: Role, maxmemory: &str, policy: &str) -> Check {
    const NAME: &str = "eviction";
    if policy == "noeviction" {
        return Check::ok(
            NAME,
            "maxmemory-policy noeviction: a full server refuses writes, it never drops a lock",
        );
    }
    if maxmemory == "0" {
        return Check::ok(
            NAME,
            format!("no maxmemory (policy {policy} never applies): no lock is evicted"),
        );
    }
    let when = if role == Role::Replica {
        " once promoted"
    } else {
        ""
    };
    Check::failure(
        NAME,
        format!(
            "{addr}: maxmemory {maxmemory} with maxmemory-policy {policy}: when memory fills, \
             the server{when} evicts keys, held locks included, and another owner takes them"
        ),
        "CONFIG SET maxmemory-policy noeviction (and in redis.conf): a full server then \
         refuses new locks instead of dropping held ones",
    )
}

/// What a restart costs (informational): without persistence every lock is gone; fencing
/// tokens keep increasing through the server's clock either way.
pub(crate) fn persistence(facts: &[Facts]) -> Check {
    const NAME: &str = "persistence";
    let findings = facts
        .iter()
        .filter(|node| node.role == Role::Master)
        .map(|node| {
            let Ok(config) = &node.config else {
                return Check::ok(
                    NAME,
                    format!("{}: not readable (CONFIG GET refused)", node.addr),
                );
            };
            let get = |name: &str| config.get(name).map(String::as_str).unwrap_or("");
            Check::ok(
                NAME,
                restart_cost(get("save"), get("appendonly"), get("appendfsync")),
            )
        })
        .collect();
    Check::worst(NAME, findings)
}

pub(crate) fn restart_cost(save: &str, appendonly: &str, appendfsync: &str) -> String {
    const FENCING: &str = "fencing tokens keep increasing through the server's clock";
    if appendonly == "yes" {
        let lost = match appendfsync {
            "always" => "nothing acknowledged".to_owned(),
            "no" => "the last writes the OS had not flushed".to_owned(),
            _ => "up to the last second of grants and releases".to_owned(),
        };
        return format!("AOF (appendfsync {appendfsync}): a restart loses {lost}; {FENCING}");
    }
    if !save.trim().is_empty() {
        return format!(
            "RDB snapshots only (save {save}): a restart goes back to the last snapshot, \
             locks taken since are free and released ones held until their lease ends; {FENCING}"
        );
    }
    format!(
        "none: a restart frees every lock at once (holders learn at their next renewal, \
         lease/3 later); {FENCING}"
    )
}

/// Replica settings against the failover time the deployment shows: an isolated master keeps
/// granting locks until `min-replicas-max-lag` stops it, while a replica may already have been
/// promoted; a master that waits for more replicas than it has refuses every lock.
pub(crate) fn replicas(deployment: &Deployment, facts: &[Facts]) -> Check {
    const NAME: &str = "replicas";
    let findings = facts
        .iter()
        .filter(|node| node.role == Role::Master)
        .map(|node| {
            let config = match &node.config {
                Ok(config) => config,
                Err(err) => return unreadable(NAME, node, err, "min-replicas-to-write"),
            };
            let number = |name: &str| {
                config
                    .get(name)
                    .and_then(|value| value.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            // A cluster replaces a master after its nodes' timeout: this master's setting.
            let failover = match deployment.kind {
                Kind::Cluster => Some(("cluster-node-timeout", number("cluster-node-timeout"))),
                _ => deployment.failover.as_ref().map(|f| (f.setting, f.millis)),
            };
            judge_replicas(
                &node.addr,
                &deployment.kind,
                failover,
                number("min-replicas-to-write"),
                number("min-replicas-max-lag"),
                node.replicas,
            )
        })
        .collect();
    Check::worst(NAME, findings)
}

pub(crate) fn judge_replicas(
    addr: &str,
    kind: &Kind,
    failover: Option<(&str, u64)>,
    to_write: u64,
    max_lag: u64,
    connected: Option<usize>,
) -> Check {
    const NAME: &str = "replicas";
    let lag_ms = max_lag.saturating_mul(1000);
    if let Some(connected) = connected {
        if to_write > connected as u64 {
            return Check::failure(
                NAME,
                format!(
                    "{addr}: min-replicas-to-write {to_write} with {connected} replica(s) \
                     connected: the master refuses every write (NOREPLICAS), no lock can be taken"
                ),
                "connect the replicas, or lower min-replicas-to-write",
            );
        }
    }
    let settings = format!("min-replicas-to-write {to_write}, min-replicas-max-lag {max_lag}");
    match (kind, failover) {
        (Kind::Cluster, Some((setting, millis))) if to_write == 0 => Check::ok(
            NAME,
            format!(
                "{settings}: a master cut off from the cluster's majority stops taking writes \
                 after {setting} {millis} ms, as a replica takes its place"
            ),
        ),
        (_, Some((setting, millis))) if to_write == 0 => Check::warning(
            NAME,
            format!(
                "{addr}: {settings}: a master cut off from its replicas keeps granting locks \
                 while a replica is promoted ({setting} {millis} ms): two owners at once"
            ),
            format!(
                "set min-replicas-to-write 1 and min-replicas-max-lag {} (at most {setting}, \
                 in seconds)",
                suggested_lag(millis)
            ),
        ),
        (_, Some((setting, millis))) if lag_ms > millis => Check::warning(
            NAME,
            format!(
                "{addr}: {settings}: a master cut off from its replicas refuses writes only \
                 after {max_lag} s, later than a replica is promoted ({setting} {millis} ms): \
                 two owners in between"
            ),
            format!(
                "set min-replicas-max-lag {} (at most {setting}, in seconds)",
                suggested_lag(millis)
            ),
        ),
        (_, Some((setting, millis))) => Check::ok(
            NAME,
            format!(
                "{settings}: a cut-off master stops granting within {max_lag} s, before a \
                 replica is promoted ({setting} {millis} ms)"
            ),
        ),
        (_, None) => match connected {
            Some(0) => Check::ok(NAME, format!("{settings}: no replicas, no failover")),
            _ => Check::ok(
                NAME,
                format!(
                    "{settings}; no failover time visible: if something promotes a replica, \
                     set min-replicas-to-write 1 and min-replicas-max-lag below its failover time"
                ),
            ),
        },
    }
}

fn suggested_lag(failover_ms: u64) -> u64 {
    (failover_ms / 2000).max(1)
}

/// On a cluster: `cluster-require-full-coverage yes` (the default) stops every node once one
/// slot has no master, so a master without a replica takes every lock down with it.
pub(crate) fn coverage(deployment: &Deployment, facts: &[Facts]) -> Option<Check> {
    const NAME: &str = "coverage";
    if deployment.kind != Kind::Cluster {
        return None;
    }
    let mut values: Vec<(String, String)> = Vec::new();
    for node in facts.iter().filter(|node| node.role == Role::Master) {
        match &node.config {
            Ok(config) => values.push((
                node.addr.clone(),
                config
                    .get("cluster-require-full-coverage")
                    .cloned()
                    .unwrap_or_else(|| "yes".to_owned()),
            )),
            Err(err) => return Some(unreadable(NAME, node, err, "cluster-require-full-coverage")),
        }
    }
    let (yes, no): (Vec<_>, Vec<_>) = values.iter().partition(|(_, value)| value == "yes");
    Some(judge_coverage(
        yes.iter().map(|(addr, _)| addr.as_str()).collect(),
        no.iter().map(|(addr, _)| addr.as_str()).collect(),
        &deployment.lone_masters,
    ))
}

pub(crate) fn judge_coverage(yes: Vec<&str>, no: Vec<&str>, lone_masters: &[String]) -> Check {
    const NAME: &str = "coverage";
    if !yes.is_empty() && !no.is_empty() {
        return Check::warning(
            NAME,
            format!(
                "cluster-require-full-coverage differs between masters (yes on {}, no on {})",
                yes.join(", "),
                no.join(", ")
            ),
            "set the same value on every node",
        );
    }
    if yes.is_empty() {
        return Check::ok(
            NAME,
            "cluster-require-full-coverage no: when a master is lost, locks on the others \
             keep working",
        );
    }
    if lone_masters.is_empty() {
        return Check::ok(
            NAME,
            "cluster-require-full-coverage yes, every master has a replica to take its slots",
        );
    }
    Check::warning(
        NAME,
        format!(
            "cluster-require-full-coverage yes and {} without a replica: losing one stops \
             every lock in the cluster",
            lone_masters.join(", ")
        ),
        "give every master a replica, or set cluster-require-full-coverage no so that locks \
         on the other masters keep working",
    )
}

#[cfg(test)]
mod tests {
    use super::super::report::Status;
    use super::*;

    #[test]
    fn versions_before_7_fail() {
        assert!(is_at_least_7("7.0.15"));
        assert!(is_at_least_7("8.2.1"));
        assert!(!is_at_least_7("6.2.14"));
        assert!(!is_at_least_7(""));
        let facts = [Facts {
            addr: "10.0.0.1:6379".to_owned(),
            role: Role::Master,
            version: Ok(("redis".to_owned(), "6.2.14".to_owned())),
            config: Ok(HashMap::new()),
            replicas: None,
            reported: None,
        }];
        let check = version(&facts);
        assert_eq!(check.status, Status::Failure);
        assert!(check.found.contains("redis 6.2.14"), "{}", check.found);
    }

    #[test]
    fn only_noeviction_or_no_maxmemory_passes() {
        let judge = |maxmemory, policy| judge_eviction("n", Role::Master, maxmemory, policy).status;
        assert_eq!(judge("0", "allkeys-lru"), Status::Ok);
        assert_eq!(judge("1048576", "noeviction"), Status::Ok);
        assert_eq!(judge("1048576", "volatile-lru"), Status::Failure);
        assert_eq!(judge("1048576", "allkeys-random"), Status::Failure);
    }

    #[test]
    fn max_lag_above_the_failover_time_warns() {
        let sentinel = Some(("down-after-milliseconds", 5000));
        let judge = |to_write, lag| {
            judge_replicas("n", &Kind::Sentinel, sentinel, to_write, lag, Some(1)).status
        };
        assert_eq!(judge(0, 10), Status::Warning);
        assert_eq!(judge(1, 10), Status::Warning);
        assert_eq!(judge(1, 2), Status::Ok);
        assert_eq!(judge(2, 2), Status::Failure);
        let cluster = Some(("cluster-node-timeout", 15000));
        assert_eq!(
            judge_replicas("n", &Kind::Cluster, cluster, 0, 10, Some(0)).status,
            Status::Ok
        );
        assert_eq!(
            judge_replicas("n", &Kind::Single, None, 0, 10, Some(2)).status,
            Status::Ok
        );
    }

    #[test]
    fn full_coverage_with_a_lone_master_warns() {
        let lone = ["10.0.0.1:7000".to_owned()];
        assert_eq!(
            judge_coverage(vec!["a"], vec![], &lone).status,
            Status::Warning
        );
        assert_eq!(judge_coverage(vec!["a"], vec![], &[]).status, Status::Ok);
        assert_eq!(judge_coverage(vec![], vec!["a"], &lone).status, Status::Ok);
        assert_eq!(
            judge_coverage(vec!["a"], vec!["b"], &[]).status,
            Status::Warning
        );
    }

    #[test]
    fn restart_costs() {
        assert!(restart_cost("", "no", "everysec").starts_with("none"));
        assert!(restart_cost("3600 1", "no", "everysec").starts_with("RDB"));
        assert!(restart_cost("", "yes", "everysec").contains("last second"));
    }
}
