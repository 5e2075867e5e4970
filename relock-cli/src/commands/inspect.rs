//! `relock inspect <key>`: who holds a lock.

use std::process::ExitCode;

use relock::LockInfo;

use super::Session;
use crate::failure::Failure;
use crate::time::{human, rfc3339};

pub(super) async fn run(session: &Session, key: &str) -> Result<ExitCode, Failure> {
    let Some(info) = session.call(session.locker.inspect(key)).await? else {
        if session.json {
            // A script reading stdout gets an answer either way, not an empty line.
            let fields = vec![("key", key.into()), ("held", false.into())];
            println!("{}", crate::json::line(&fields));
        }
        return Err(Failure::free(format!("lock `{key}` is free")));
    };
    if session.json {
        let mut fields = crate::json::lock(&info);
        fields.push(("held", true.into()));
        println!("{}", crate::json::line(&fields));
    } else {
        print!("{}", describe(&info));
    }
    Ok(ExitCode::SUCCESS)
}

/// One `label  value` line per field, labels padded to one width.
fn describe(info: &LockInfo) -> String {
    let unknown = || "unknown".to_owned();
    let fields = [
        ("key", info.key.clone()),
        ("mode", crate::mode::describe(info.mode, info.holds)),
        ("host", info.host.clone().unwrap_or_else(unknown)),
        ("pid", info.pid.map_or_else(unknown, |pid| pid.to_string())),
        ("since", info.acquired_at.map_or_else(unknown, rfc3339)),
        ("ttl", human(info.ttl)),
        ("fencing token", info.fencing_token.to_string()),
        ("owner", info.owner.clone()),
    ];
    let width = fields
        .iter()
        .map(|(label, _)| label.len())
        .max()
        .unwrap_or(0);
    fields
        .iter()
        .map(|(label, value)| format!("{label:width$}  {value}\n"))
        .collect()
}
