//! `relock doctor`: checks a deployment against everything relock assumes, one line per check
//! (✓ fine, ⚠ a risk or a cost worth knowing, ✗ breaks locks or keeps relock from working),
//! what was found and what to change.
//!
//! The checks, in order: `connection` (every node of the deployment reached, as the library
//! finds them), `version` (Redis 7.0 or newer), `eviction` (no evicting `maxmemory-policy`
//! with `maxmemory` set), `persistence` (informational: what a restart costs), `replicas`
//! (`min-replicas-to-write`/`min-replicas-max-lag` against the failover time the sentinels or
//! the cluster announce), `coverage` (on a cluster: `cluster-require-full-coverage`), `acl` (the
//! user's permissions, command by command), `clocks` (each node's `TIME` against this host and
//! the others), `round trip`, `pub/sub` (a release notification delivered), `locks` (holds,
//! tombstones and unknown values under the prefix) and `lock` (a lock taken and released
//! through the library, on a key of the doctor's own: `relock-doctor-<random hex>`).
//!
//! Exit codes: 0 every check passed, 4 warnings only, 5 at least one failure; 3 when the
//! deployment cannot be reached at all, 2 for a usage error.

mod acl;
mod clocks;
mod deployment;
mod locks;
mod pubsub;
mod report;
mod server;

use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::Session;
use crate::args::Global;
use crate::failure::Failure;
use deployment::{Deployment, Kind, Role};
use report::Check;

/// The doctor's own key and channel under the prefix, unique to this run, so that no
/// application's lock or waiter is touched.
#[derive(Debug, Clone)]
pub(crate) struct Probe {
    /// The user key (`relock-doctor-<hex>`).
    pub(crate) lock: String,
    /// The key the ACL check reads and writes, `P:{relock-doctor-<hex>-acl}`: apart from the
    /// lock's, so that a probe the user may write but not delete never blocks the lock check.
    pub(crate) acl_key: String,
    /// Its release channel, `P:{relock-doctor-<hex>}:released`.
    pub(crate) channel: String,
}

impl Probe {
    fn new(prefix: &str) -> Probe {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        hasher.write_u128(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        let lock = format!("relock-doctor-{:016x}", hasher.finish());
        let acl_key = format!("{prefix}:{{{lock}-acl}}");
        let channel = format!("{prefix}:{{{lock}}}:released");
        Probe {
            lock,
            acl_key,
            channel,
        }
    }
}

/// `prefix` with the characters a Redis glob (`SCAN MATCH`, an ACL key pattern) reads as
/// special escaped.
pub(crate) fn glob_escaped(prefix: &str) -> String {
    let mut escaped = String::with_capacity(prefix.len());
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

pub(super) async fn run(session: &Session, global: &Global) -> Result<ExitCode, Failure> {
    let mut deployment = Deployment::discover(global).await?;
    let probe = Probe::new(&global.prefix);
    let mut facts = Vec::new();
    for node in deployment.nodes.iter_mut() {
        facts.push(server::facts(node).await);
    }
    let mut checks = vec![connection(&deployment, &facts)];
    checks.push(server::version(&facts));
    checks.push(server::eviction(&facts));
    checks.push(server::persistence(&facts));
    checks.push(server::replicas(&deployment, &facts));
    checks.extend(server::coverage(&deployment, &facts));
    checks.push(acl::check(&mut deployment, &global.prefix, &probe).await);
    let (offsets, failed) = clocks::offsets(&mut deployment.nodes).await;
    checks.push(clocks::judge(
        &offsets,
        &failed,
        session.locker.default_lease(),
    ));
    checks.push(clocks::round_trip(&mut deployment.nodes).await);
    checks.push(pubsub::check(&mut deployment, &probe).await);
    // Counted before the doctor's own lock leaves its trace (a tombstone) behind.
    checks.push(locks::check(&mut deployment, &global.prefix).await);
    checks.push(lock(session, &probe).await);
    Ok(report::print(&checks, session.json))
}

/// Which nodes were reached, over what, as whom; and whether the nodes relock writes to are
/// masters.
fn connection(deployment: &Deployment, facts: &[server::Facts]) -> Check {
    const NAME: &str = "connection";
    let masters = deployment.masters().count();
    let replicas = deployment.nodes.len() - masters;
    let what = match deployment.kind {
        Kind::Single if replicas == 0 => "1 server".to_owned(),
        Kind::Single => format!("1 server and {replicas} replica(s) it reports"),
        Kind::Cluster => format!("a cluster of {masters} master(s) and {replicas} replica(s)"),
        Kind::Sentinel => format!(
            "master {} and {replicas} replica(s), named by {} sentinel(s)",
            deployment
                .masters()
                .next()
                .map(|node| node.addr.as_str())
                .unwrap_or("?"),
            deployment
                .sentinels
                .iter()
                .filter(|answer| answer.master.is_ok())
                .count()
        ),
    };
    let found = format!(
        "{what}, as user `{}`{}",
        deployment.user,
        if deployment.tls { ", over TLS" } else { "" }
    );
    let read_only: Vec<&str> = facts
        .iter()
        .filter(|node| node.role == Role::Master && node.reported == Some(Role::Replica))
        .map(|node| node.addr.as_str())
        .collect();
    if !read_only.is_empty() {
        return Check::failure(
            NAME,
            format!(
                "{found}; {} answers ROLE as a replica: every lock fails there (READONLY)",
                read_only.join(", ")
            ),
            match deployment.kind {
                Kind::Single => "point --url at the master",
                _ => "wait for the failover to settle, then run again",
            },
        );
    }
    if !deployment.unreachable.is_empty() {
        let down: Vec<String> = deployment
            .unreachable
            .iter()
            .map(|(addr, why)| format!("{addr} ({why})"))
            .collect();
        return Check::failure(
            NAME,
            format!("{found}; not reached: {}", down.join(", ")),
            "every node must be reachable from the applications: check the network, the \
             node's address as the deployment announces it, and the credentials",
        );
    }
    let silent: Vec<String> = deployment
        .sentinels
        .iter()
        .filter_map(|answer| {
            let why = answer.master.as_ref().err()?;
            Some(format!("sentinel {} ({why})", answer.addr))
        })
        .collect();
    if !silent.is_empty() {
        return Check::warning(
            NAME,
            format!("{found}; no answer from {}", silent.join(", ")),
            "every sentinel in --sentinel should answer: applications ask them in turn",
        );
    }
    let mut named: Vec<&str> = deployment
        .sentinels
        .iter()
        .filter_map(|answer| answer.master.as_deref().ok())
        .collect();
    named.sort_unstable();
    named.dedup();
    if named.len() > 1 {
        let answers: Vec<String> = deployment
            .sentinels
            .iter()
            .filter_map(|answer| {
                let master = answer.master.as_ref().ok()?;
                Some(format!("sentinel {} names {master}", answer.addr))
            })
            .collect();
        return Check::warning(
            NAME,
            format!("{found}; the sentinels disagree: {}", answers.join(", ")),
            "wait for the failover to settle; if it lasts, check the sentinels' quorum and network",
        );
    }
    Check::ok(NAME, found)
}

/// A lock taken and released through the library, as an application takes one: the scripts,
/// the user's permissions inside them, and the server's acceptance of writes, end to end.
async fn lock(session: &Session, probe: &Probe) -> Check {
    const NAME: &str = "lock";
    let started = Instant::now();
    let taken = session
        .call(session.locker.try_lock(probe.lock.as_str()))
        .await;
    let guard = match taken {
        Ok(Some(guard)) => guard,
        Ok(None) => {
            return Check::failure(
                NAME,
                format!("`{}` was refused: something else holds it", probe.lock),
                "run again (the doctor's key is new every run)",
            )
        }
        Err(failure) => {
            return Check::failure(
                NAME,
                format!("taking `{}` failed: {failure}", probe.lock),
                "fix what the lines above report; this is the error an application gets",
            )
        }
    };
    let token = guard.fencing_token();
    match session.call(guard.release()).await {
        Ok(()) => Check::ok(
            NAME,
            format!(
                "`{}` taken (fencing token {token}) and released in {:.1} ms",
                probe.lock,
                started.elapsed().as_secs_f64() * 1000.0
            ),
        ),
        Err(failure) => Check::failure(
            NAME,
            format!("`{}` taken, but releasing it failed: {failure}", probe.lock),
            "fix what the lines above report; this is the error an application gets",
        ),
    }
}
