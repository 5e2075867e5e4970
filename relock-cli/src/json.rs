//! The JSON that `--json` prints: one object per lock or event, one per line, its fields in the
//! documented order.

use relock::LockInfo;
use serde_json::Value;

use crate::time::rfc3339;

/// The fields of one JSON object, in the order they are printed.
pub(crate) type Fields = Vec<(&'static str, Value)>;

/// A held lock: `key`, `fencing_token`, `ttl_ms`, `host`, `pid`, `acquired_at` (RFC 3339, UTC)
/// and `owner` (the hold's own token); `null` for holder metadata the lock does not carry. Then
/// `mode` (`exclusive`, `read` or `permits`), `holds` (the readers or permits in use; 1 for an
/// exclusive lock) and `permits` (the semaphore's size; `null` unless `mode` is `permits`).
pub(crate) fn lock(info: &LockInfo) -> Fields {
    vec![
        ("key", info.key.clone().into()),
        ("fencing_token", info.fencing_token.into()),
        (
            "ttl_ms",
            u64::try_from(info.ttl.as_millis())
                .unwrap_or(u64::MAX)
                .into(),
        ),
        ("host", info.host.clone().into()),
        ("pid", info.pid.into()),
        ("acquired_at", info.acquired_at.map(rfc3339).into()),
        ("owner", info.owner.clone().into()),
        ("mode", crate::mode::name(info.mode).into()),
        ("holds", info.holds.into()),
        ("permits", crate::mode::permits(info.mode).into()),
    ]
}

/// `fields` as one line of JSON, without the newline.
pub(crate) fn line(fields: &[(&'static str, Value)]) -> String {
    let members: Vec<String> = fields
        .iter()
        .map(|(name, value)| format!("{}:{value}", Value::from(*name)))
        .collect();
    format!("{{{}}}", members.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_keeps_the_fields_in_order() {
        let fields = vec![
            ("key", Value::from("order:42")),
            ("fencing_token", Value::from(7_u64)),
            ("host", Value::Null),
        ];
        assert_eq!(
            line(&fields),
            r#"{"key":"order:42","fencing_token":7,"host":null}"#
        );
    }

    #[test]
    fn a_line_escapes_strings() {
        let fields = vec![("key", Value::from("a\"b\\c\u{e9}"))];
        let parsed: Value = serde_json::from_str(&line(&fields)).unwrap();
        assert_eq!(parsed["key"], "a\"b\\c\u{e9}");
    }
}
