//! The least-privilege Redis ACL rules relock needs, kept here so that docs/production.md and the tests
//! that run relock as such a user say the same thing.

/// The Redis ACL rules a user needs to lock, wait, renew, release, inspect and force-release
/// under `prefix` on one server: its keys (`~<prefix>:*`), its release channels (`&<prefix>:*`),
/// and the commands relock sends, including those its Lua scripts call.
///
/// Append [`ACL_LIST_RULES`] for [`Locker::list`](crate::Locker::list) (and `relock list`),
/// [`ACL_CLUSTER_RULES`] on a Redis Cluster, and [`ACL_REPLICAS_RULES`] for
/// [`replicas`](crate::LockerBuilder::replicas). Glob characters in `prefix` are escaped.
///
/// ```
/// assert_eq!(
///     relock::acl_rules("relock"),
///     "~relock:* &relock:* +evalsha +script|load +get +set +pttl +time +pexpire +del \
///      +publish +subscribe +unsubscribe +ping"
/// );
/// // ACL SETUSER relock reset on >password ~relock:* &relock:* +evalsha ...
/// ```
pub fn acl_rules(prefix: &str) -> String {
    let pattern = escape_glob(prefix);
    format!("~{pattern}:* &{pattern}:* {COMMANDS}")
}

/// What relock sends on one server: `EVALSHA` for every operation (and `SCRIPT LOAD` when the
/// server has lost the script), the commands inside the scripts, `SUBSCRIBE`/`UNSUBSCRIBE` for
/// release notifications, and `PING` from [`Locker::connect`](crate::Locker::connect).
const COMMANDS: &str = "+evalsha +script|load +get +set +pttl +time +pexpire +del +publish \
                        +subscribe +unsubscribe +ping";

/// The extra rule [`Locker::list`](crate::Locker::list) (and so `relock list`) needs: `SCAN`,
/// which can read every key's name in the database (not only relock's), so applications that
/// never list locks should not be given it.
pub const ACL_LIST_RULES: &str = "+scan";

/// The extra rules on a Redis Cluster: the topology (`CLUSTER SLOTS`, read by the cluster client
/// and by the watchdog to group renewals by node) and sharded release notifications (`SPUBLISH`
/// in the scripts, `SSUBSCRIBE`/`SUNSUBSCRIBE`).
pub const ACL_CLUSTER_RULES: &str = "+cluster|slots +spublish +ssubscribe +sunsubscribe";

/// The extra rules for [replica-acknowledged acquisitions](crate::LockerBuilder::replicas):
/// `WAIT`, and on a Redis Cluster `ASKING`, sent before the script to the node importing a slot
/// that is being moved.
pub const ACL_REPLICAS_RULES: &str = "+wait +asking";

fn escape_glob(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_characters_in_the_prefix_are_escaped() {
        assert!(acl_rules("a*b").starts_with(r"~a\*b:* &a\*b:* "));
    }
}
