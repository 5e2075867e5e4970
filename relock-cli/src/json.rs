//! The JSON that `--json` prints: one object per lock or event, one per line.

use relock::LockInfo;
use serde_json::{json, Map, Value};

use crate::time::rfc3339;

/// A held lock: `key`, `fencing_token`, `ttl_ms`, `host`, `pid`, `acquired_at` (RFC 3339, UTC)
/// and `owner` (the hold's own token); `null` for holder metadata the lock does not carry.
pub(crate) fn lock(info: &LockInfo) -> Map<String, Value> {
    let value = json!({
        "key": info.key,
        "fencing_token": info.fencing_token,
        "ttl_ms": u64::try_from(info.ttl.as_millis()).unwrap_or(u64::MAX),
        "host": info.host,
        "pid": info.pid,
        "acquired_at": info.acquired_at.map(rfc3339),
        "owner": info.owner,
    });
    match value {
        Value::Object(map) => map,
        _ => unreachable!("json! of an object literal is an object"),
    }
}
