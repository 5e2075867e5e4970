//! How many relock locks and tombstones the server keeps under the prefix, and any value of a
//! form relock does not write (treated as held until its key expires).

use relock::redis::{self, Value};

use super::deployment::{Deployment, Role};
use super::report::Check;

const NAME: &str = "locks";
/// Keys per `SCAN` step, and so per pipelined batch of `GET`s.
const BATCH: usize = 500;

/// What a value under `P:{K}` is. The layout's one source of truth is the library's protocol
/// module; this reads it from outside, for counting only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `<hold token><space or +><fencing token> <deadline ms> <holder metadata>`.
    Hold,
    /// `-<fencing token> <hold token>`: a released lock whose last fencing token is kept.
    Tombstone,
    /// Anything else (another program's key, an older layout, not a string).
    Unknown,
}

/// Classifies one value of a lock key.
pub(crate) fn classify(value: Option<&[u8]>) -> Kind {
    let Some(value) = value else {
        return Kind::Unknown;
    };
    let digits = |text: &[u8]| !text.is_empty() && text.iter().all(u8::is_ascii_digit);
    if let Some(rest) = value.strip_prefix(b"-") {
        let mut parts = rest.splitn(2, |&b| b == b' ');
        let fencing = parts.next().unwrap_or_default();
        let token = parts.next().unwrap_or_default();
        return if digits(fencing) && is_token(token) {
            Kind::Tombstone
        } else {
            Kind::Unknown
        };
    }
    if value.len() < 34 || !is_token(&value[..32]) || !matches!(value[32], b' ' | b'+') {
        return Kind::Unknown;
    }
    let mut parts = value[33..].splitn(3, |&b| b == b' ');
    let (fencing, deadline) = (parts.next().unwrap_or_default(), parts.next());
    if digits(fencing) && deadline.is_some_and(digits) {
        Kind::Hold
    } else {
        Kind::Unknown
    }
}

fn is_token(text: &[u8]) -> bool {
    text.len() == 32 && text.iter().all(u8::is_ascii_hexdigit)
}

/// `SCAN` pattern for every lock key under `prefix` (`P:{…}`), its glob characters escaped.
pub(crate) fn pattern(prefix: &str) -> String {
    format!("{}:{{*}}", super::glob_escaped(prefix))
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) holds: u64,
    pub(crate) tombstones: u64,
    pub(crate) unknown: u64,
}

pub(crate) async fn check(deployment: &mut Deployment, prefix: &str) -> Check {
    let pattern = pattern(prefix);
    let mut counts = Counts::default();
    let mut examples = Vec::new();
    for node in deployment
        .nodes
        .iter_mut()
        .filter(|node| node.role == Role::Master)
    {
        let mut cursor = 0_u64;
        loop {
            let step: Result<(u64, Vec<String>), _> = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(BATCH)
                .query_async(&mut node.connection)
                .await;
            let (next, keys) = match step {
                Ok(step) => step,
                Err(err) => {
                    return Check::warning(
                        NAME,
                        format!("{}: SCAN refused ({err}): locks not counted", node.addr),
                        "give the user +scan to count them (as `relock list` needs)",
                    )
                }
            };
            if !keys.is_empty() {
                let mut pipe = redis::pipe();
                pipe.ignore_errors();
                for key in &keys {
                    pipe.cmd("GET").arg(key);
                }
                let values: Vec<Value> = match pipe.query_async(&mut node.connection).await {
                    Ok(values) => values,
                    Err(err) => {
                        return Check::warning(
                            NAME,
                            format!("{}: GET failed ({err}): locks not counted", node.addr),
                            "run again; if it persists, check the user's +get",
                        )
                    }
                };
                for (key, value) in keys.iter().zip(&values) {
                    let kind = match value {
                        // Gone between SCAN and GET: expired or released, nothing to count.
                        Value::Nil => continue,
                        Value::BulkString(bytes) => classify(Some(bytes)),
                        _ => classify(None),
                    };
                    match kind {
                        Kind::Hold => counts.holds += 1,
                        Kind::Tombstone => counts.tombstones += 1,
                        Kind::Unknown => {
                            counts.unknown += 1;
                            if examples.len() < 3 {
                                examples.push(key.clone());
                            }
                        }
                    }
                }
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
    }
    judge(prefix, counts, &examples)
}

pub(crate) fn judge(prefix: &str, counts: Counts, examples: &[String]) -> Check {
    let found = format!(
        "under `{prefix}:{{…}}`: {} held, {} released (tombstones kept for their fencing token)",
        counts.holds, counts.tombstones
    );
    if counts.unknown == 0 {
        return Check::ok(NAME, found);
    }
    Check::warning(
        NAME,
        format!(
            "{found}, and {} value(s) relock did not write (e.g. {}): each blocks its lock \
             until the key expires",
            counts.unknown,
            examples.join(", ")
        ),
        format!(
            "find what writes them (`relock inspect <key>` names one); another application \
             should use another prefix than `{prefix}`"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn holds_tombstones_and_the_rest() {
        let hold = format!("{TOKEN} 1796163228861428 1796163258861 4242 1700000000000 vm");
        assert_eq!(classify(Some(hold.as_bytes())), Kind::Hold);
        let marked = format!("{TOKEN}+1796163228861428 1796163258861 meta");
        assert_eq!(classify(Some(marked.as_bytes())), Kind::Hold);
        let tombstone = format!("-1796163228861428 {TOKEN}");
        assert_eq!(classify(Some(tombstone.as_bytes())), Kind::Tombstone);
        for other in ["", "hello", "-12 short", "12", &format!("{TOKEN} x 1")] {
            assert_eq!(classify(Some(other.as_bytes())), Kind::Unknown, "{other}");
        }
        assert_eq!(classify(None), Kind::Unknown);
    }

    #[test]
    fn the_pattern_matches_lock_keys_only_and_escapes_the_prefix() {
        assert_eq!(pattern("relock"), "relock:{*}");
        assert_eq!(pattern("a*b"), "a\\*b:{*}");
    }
}
