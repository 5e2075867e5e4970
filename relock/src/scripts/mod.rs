//! The Lua scripts, one per operation; each file's header states its KEYS, ARGV and reply.
//!
//! User input reaches a script only through KEYS and ARGV, and every key a script touches shares
//! the `{K}` hash tag, so each call runs on one Redis Cluster slot.

use std::sync::LazyLock;

use redis::Script;

const SOURCES: [&str; 7] = [
    include_str!("acquire.lua"),
    include_str!("release.lua"),
    include_str!("renew.lua"),
    include_str!("force_release.lua"),
    include_str!("inspect.lua"),
    include_str!("batch.lua"),
    include_str!("acquire_shared.lua"),
];

pub(crate) static ACQUIRE: LazyLock<Script> = LazyLock::new(|| Script::new(SOURCES[0]));
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(SOURCES[1]));
pub(crate) static RENEW: LazyLock<Script> = LazyLock::new(|| Script::new(SOURCES[2]));
pub(crate) static FORCE_RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(SOURCES[3]));
pub(crate) static INSPECT: LazyLock<Script> = LazyLock::new(|| Script::new(SOURCES[4]));
pub(crate) static BATCH: LazyLock<Script> = LazyLock::new(|| Script::new(SOURCES[5]));
pub(crate) static ACQUIRE_SHARED: LazyLock<Script> = LazyLock::new(|| Script::new(SOURCES[6]));

/// The command (lowercase) that line `line` (1-based) of the script whose SHA1 is `sha` calls:
/// Redis names only the script and the line when the ACL refuses a command a script calls.
pub(crate) fn command_at(sha: &str, line: usize) -> Option<String> {
    let scripts = [
        &ACQUIRE,
        &RELEASE,
        &RENEW,
        &FORCE_RELEASE,
        &INSPECT,
        &BATCH,
        &ACQUIRE_SHARED,
    ];
    let at = scripts.iter().position(|script| script.get_hash() == sha)?;
    let text = SOURCES[at].lines().nth(line.checked_sub(1)?)?;
    // `redis.call('X'` or `redis.pcall('X'`.
    let (_, call) = text.split_once("call('")?;
    let (command, _) = call.split_once('\'')?;
    Some(command.to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_script_line_names_the_command_it_calls() {
        let line = 1 + SOURCES[1]
            .lines()
            .position(|line| line.contains("'PUBLISH'"))
            .unwrap();
        assert_eq!(
            command_at(RELEASE.get_hash(), line).as_deref(),
            Some("publish")
        );
        assert_eq!(command_at("unknown", line), None);
    }

    #[test]
    fn the_batch_script_runs_acquire_shared_lua_byte_for_byte() {
        // A shared request in a batch must be decided exactly as `acquire_shared.lua` alone
        // decides it: the batch script carries that script's function unchanged.
        let shared = SOURCES[6];
        let from = shared.find("local function acquire_shared(").unwrap();
        let to = from + shared[from..].find("\nend\n").unwrap() + 5;
        assert!(
            SOURCES[5].contains(&shared[from..to]),
            "batch.lua's acquire_shared differs from acquire_shared.lua's: copy the function \
             into it again"
        );
    }
}
