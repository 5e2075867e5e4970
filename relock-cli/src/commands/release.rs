//! `relock release <key>`: a force-release, after a confirmation unless `--yes`.

use std::process::ExitCode;

use tokio::io::{AsyncBufReadExt, BufReader};

use super::Session;
use crate::failure::Failure;

pub(super) async fn run(session: &Session, key: &str, yes: bool) -> Result<ExitCode, Failure> {
    let not_released = |message: String| {
        if session.json {
            // A script reading stdout gets an answer either way, not an empty line.
            let fields = vec![("key", key.into()), ("released", false.into())];
            println!("{}", crate::json::line(&fields));
        }
        Failure::free(message)
    };
    let Some(holder) = session.call(session.locker.inspect(key)).await? else {
        return Err(not_released(format!("lock `{key}` is already free")));
    };
    let host = holder.host.as_deref().unwrap_or("unknown host");
    let pid = holder
        .pid
        .map_or_else(|| "unknown".to_owned(), |pid| pid.to_string());
    let token = holder.fencing_token;
    if !yes {
        // The question goes to stderr, so that stdout stays what `--json` promises.
        eprint!(
            "force-release `{key}`, held by {host} pid {pid} with fencing token {token}? \
             Its holder will lose it. [y/N] "
        );
        if !confirmed().await {
            return Err(not_released(format!("lock `{key}` was not released")));
        }
        // The answer may have taken a while: never remove a holder the operator was not shown.
        let now = session.call(session.locker.inspect(key)).await?;
        if now.as_ref().map(|info| &info.owner) != Some(&holder.owner) {
            return Err(not_released(format!(
                "lock `{key}` changed hands while asking; not released, run again"
            )));
        }
    }
    if !session.call(session.locker.force_release(key)).await? {
        return Err(not_released(format!("lock `{key}` is already free")));
    }
    if session.json {
        let mut fields = crate::json::lock(&holder);
        fields.push(("released", true.into()));
        println!("{}", crate::json::line(&fields));
    } else {
        println!("released `{key}` (was held by {host} pid {pid}, fencing token {token})");
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads one answer line from stdin: `y` or `yes`, in any case, confirms; anything else, or the
/// end of input, declines.
async fn confirmed() -> bool {
    let mut answer = String::new();
    match BufReader::new(tokio::io::stdin())
        .read_line(&mut answer)
        .await
    {
        Ok(_) => matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes"),
        Err(_) => false,
    }
}
