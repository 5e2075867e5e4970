//! The ACL user's permissions, command by command, for what relock sends: `ACL DRYRUN` when
//! the user may run it, else each command tried on a key and a channel of the doctor's own.

use relock::redis::{self, RedisError, Value};

use super::deployment::{Deployment, Kind, Node};
use super::report::Check;
use super::Probe;

const NAME: &str = "acl";

/// A command relock may send, as an ACL rule names it (`evalsha`, `script|load`), and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Need {
    pub(crate) rule: String,
    /// `None`: every lock needs it; else what stops working without it.
    pub(crate) feature: Option<&'static str>,
}

/// The commands the library's documented rules grant (so the two never disagree), with the
/// optional ones and what each is for.
pub(crate) fn needs(prefix: &str, cluster: bool) -> Vec<Need> {
    let rules = |rules: &str, feature: Option<&'static str>| {
        rules
            .split_whitespace()
            .filter_map(|rule| rule.strip_prefix('+'))
            .map(|rule| Need {
                rule: rule.to_owned(),
                feature,
            })
            .collect::<Vec<_>>()
    };
    let mut needs = rules(&relock::acl_rules(prefix), None);
    if cluster {
        needs.extend(rules(relock::ACL_CLUSTER_RULES, None));
    }
    needs.extend(rules(
        relock::ACL_LIST_RULES,
        Some("`relock list` and the lock count below"),
    ));
    needs.extend(rules(
        relock::ACL_REPLICAS_RULES,
        Some("replica-acknowledged acquisitions (`LockerBuilder::replicas`)"),
    ));
    needs.push(Need {
        rule: "config|get".to_owned(),
        feature: Some("the eviction check at connect and this doctor's configuration checks"),
    });
    needs
}

/// A harmless invocation of `rule` on the doctor's key and channel, and whether it may be sent
/// for real (subscriptions change the connection's mode, so they are only dry-run).
fn invocation(rule: &str, probe: &Probe) -> (Vec<String>, bool) {
    let key = probe.acl_key.clone();
    let channel = probe.channel.clone();
    let words = |words: &[&str]| words.iter().map(|word| (*word).to_owned()).collect();
    let zero_sha = "0".repeat(40);
    match rule {
        "evalsha" => (words(&["EVALSHA", &zero_sha, "1", &key]), true),
        "eval" => (words(&["EVAL", "return 0", "1", &key]), true),
        "script|load" => (words(&["SCRIPT", "LOAD", "return 0"]), true),
        "get" | "pttl" | "del" | "exists" | "ttl" => (words(&[rule, &key]), true),
        "set" => (words(&["SET", &key, "relock doctor", "PX", "1000"]), true),
        "pexpire" => (words(&["PEXPIRE", &key, "1000"]), true),
        "publish" | "spublish" => (words(&[rule, &channel, "relock doctor"]), true),
        "subscribe" | "unsubscribe" | "ssubscribe" | "sunsubscribe" => {
            (words(&[rule, &channel]), false)
        }
        "scan" => (words(&["SCAN", "0", "MATCH", &key, "COUNT", "1"]), true),
        "wait" => (words(&["WAIT", "0", "1"]), true),
        "config|get" => (words(&["CONFIG", "GET", "maxmemory-policy"]), true),
        "time" | "ping" | "asking" => (words(&[rule]), true),
        "cluster|slots" => (words(&["CLUSTER", "SLOTS"]), true),
        // A command added to the rules later: dry-run it with the key, never run it blind.
        other => {
            let mut args: Vec<String> = other.split('|').map(str::to_owned).collect();
            args.push(key);
            (args, false)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Allowed,
    Denied(String),
    Unchecked(String),
}

/// The permission check on every master (ACLs are per node).
pub(crate) async fn check(deployment: &mut Deployment, prefix: &str, probe: &Probe) -> Check {
    let needs = needs(prefix, deployment.kind == Kind::Cluster);
    let user = deployment.user.clone();
    let mut findings = Vec::new();
    for node in deployment
        .nodes
        .iter_mut()
        .filter(|node| node.role == super::deployment::Role::Master)
    {
        let (verdicts, how) = verdicts(node, &user, &needs, probe).await;
        findings.push(judge(&node.addr, &user, prefix, &needs, &verdicts, how));
    }
    Check::worst(NAME, findings)
}

async fn verdicts(
    node: &mut Node,
    user: &str,
    needs: &[Need],
    probe: &Probe,
) -> (Vec<Verdict>, &'static str) {
    let connection = &mut node.connection;
    let first = dry_run(connection, user, &invocation("ping", probe).0).await;
    let mut verdicts = Vec::new();
    if first.is_ok() {
        for need in needs {
            let (args, _) = invocation(&need.rule, probe);
            verdicts.push(
                dry_run(connection, user, &args)
                    .await
                    .unwrap_or_else(|err| Verdict::Unchecked(err.to_string())),
            );
        }
        return (verdicts, "ACL DRYRUN");
    }
    for need in needs {
        let (args, runnable) = invocation(&need.rule, probe);
        let verdict = if runnable {
            try_it(connection, &args).await
        } else if need.rule.contains("subscribe") {
            Verdict::Unchecked("the pub/sub check sends them".to_owned())
        } else {
            Verdict::Unchecked("not sent blind".to_owned())
        };
        verdicts.push(verdict);
    }
    // The probed DEL may have run before SET in the rules' order: remove the probe now (a user
    // that may not delete it leaves it to its 1 s expiry).
    let _: Result<Value, _> = redis::cmd("DEL")
        .arg(&probe.acl_key)
        .query_async(connection)
        .await;
    (verdicts, "each command tried")
}

async fn dry_run(
    connection: &mut redis::aio::MultiplexedConnection,
    user: &str,
    args: &[String],
) -> Result<Verdict, RedisError> {
    let reply: Value = redis::cmd("ACL")
        .arg("DRYRUN")
        .arg(user)
        .arg(args)
        .query_async(connection)
        .await?;
    Ok(match reply {
        Value::Okay => Verdict::Allowed,
        Value::SimpleString(text) if text == "OK" => Verdict::Allowed,
        Value::BulkString(reason) => Verdict::Denied(String::from_utf8_lossy(&reason).into()),
        other => Verdict::Unchecked(format!("{other:?}")),
    })
}

async fn try_it(connection: &mut redis::aio::MultiplexedConnection, args: &[String]) -> Verdict {
    let mut command = redis::cmd(&args[0]);
    command.arg(&args[1..]);
    match command.query_async::<Value>(connection).await {
        Ok(_) => Verdict::Allowed,
        Err(err) if err.code() == Some("NOPERM") => Verdict::Denied(err.to_string()),
        Err(err) if err.is_io_error() || err.is_timeout() => Verdict::Unchecked(err.to_string()),
        // NOSCRIPT, MOVED, a cluster command on a lone server: the ACL let it through.
        Err(_) => Verdict::Allowed,
    }
}

fn judge(
    addr: &str,
    user: &str,
    prefix: &str,
    needs: &[Need],
    verdicts: &[Verdict],
    how: &str,
) -> Check {
    let mut missing = Vec::new();
    let mut reasons = Vec::new();
    let mut without: Vec<(&str, Vec<String>)> = Vec::new();
    let mut unchecked: Vec<(String, Vec<String>)> = Vec::new();
    for (need, verdict) in needs.iter().zip(verdicts) {
        match (verdict, need.feature) {
            (Verdict::Allowed, _) => {}
            (Verdict::Denied(reason), None) => {
                // A command the user may run can still be refused for its key or channel.
                let lower = reason.to_ascii_lowercase();
                let rule = if lower.contains("key") {
                    format!("~{}:*", super::glob_escaped(prefix))
                } else if lower.contains("channel") {
                    format!("&{}:*", super::glob_escaped(prefix))
                } else {
                    format!("+{}", need.rule)
                };
                if !missing.contains(&rule) {
                    missing.push(rule);
                }
                if lower.contains("access") && !reasons.contains(reason) {
                    reasons.push(reason.clone());
                }
            }
            (Verdict::Denied(_), Some(feature)) => {
                match without.iter_mut().find(|(known, _)| *known == feature) {
                    Some((_, rules)) => rules.push(format!("+{}", need.rule)),
                    None => without.push((feature, vec![format!("+{}", need.rule)])),
                }
            }
            (Verdict::Unchecked(why), _) => {
                let rule = need.rule.to_uppercase();
                match unchecked.iter_mut().find(|(known, _)| known == why) {
                    Some((_, rules)) => rules.push(rule),
                    None => unchecked.push((why.clone(), vec![rule])),
                }
            }
        }
    }
    if !missing.is_empty() {
        return Check::failure(
            NAME,
            format!(
                "{addr}: user `{user}` lacks what relock needs: {} ({how}{})",
                missing.join(" "),
                reasons
                    .iter()
                    .map(|reason| format!("; {reason}"))
                    .collect::<String>()
            ),
            format!(
                "ACL SETUSER {user} {} (what relock needs: {})",
                missing.join(" "),
                relock::acl_rules(prefix)
            ),
        );
    }
    let required = needs.iter().filter(|need| need.feature.is_none()).count();
    let mut found = format!("user `{user}` may run the {required} commands relock sends ({how})");
    for (why, rules) in unchecked {
        found.push_str(&format!("; not checked here: {} ({why})", rules.join(", ")));
    }
    for (feature, rules) in without {
        found.push_str(&format!(
            "; without {}: {feature} won't work",
            rules.join(" ")
        ));
    }
    Check::ok(NAME, found)
}

#[cfg(test)]
mod tests {
    use super::super::report::Status;
    use super::*;

    #[test]
    fn the_needs_follow_the_library_rules() {
        let needs = needs("relock", true);
        let required: Vec<&str> = needs
            .iter()
            .filter(|need| need.feature.is_none())
            .map(|need| need.rule.as_str())
            .collect();
        assert!(required.contains(&"evalsha"));
        assert!(required.contains(&"ssubscribe"));
        assert!(needs
            .iter()
            .any(|need| need.rule == "scan" && need.feature.is_some()));
        assert!(!super::needs("relock", false)
            .iter()
            .any(|need| need.rule == "spublish"));
    }

    #[test]
    fn a_missing_required_command_fails_and_an_optional_one_is_noted() {
        let needs = vec![
            Need {
                rule: "evalsha".to_owned(),
                feature: None,
            },
            Need {
                rule: "scan".to_owned(),
                feature: Some("listing"),
            },
        ];
        let denied = Verdict::Denied("no evalsha".to_owned());
        let check = judge("n", "u", "relock", &needs, &[denied, Verdict::Allowed], "x");
        assert_eq!(check.status, Status::Failure);
        assert!(check.fix.unwrap().starts_with("ACL SETUSER u +evalsha"));
        let check = judge(
            "n",
            "u",
            "relock",
            &needs,
            &[Verdict::Allowed, Verdict::Denied("no".to_owned())],
            "x",
        );
        assert_eq!(check.status, Status::Ok);
        assert!(
            check.found.contains("without +scan: listing won't work"),
            "{}",
            check.found
        );
    }
}
