//! How a lock is held, in words: the `mode` of `inspect`, `list` and their JSON.

use relock::LockMode;

/// `exclusive`, `read` or `permits`.
pub(crate) fn name(mode: LockMode) -> &'static str {
    match mode {
        LockMode::Read => "read",
        LockMode::Permits(_) => "permits",
        _ => "exclusive",
    }
}

/// The semaphore's size, for a semaphore.
pub(crate) fn permits(mode: LockMode) -> Option<u32> {
    match mode {
        LockMode::Permits(permits) => Some(permits),
        _ => None,
    }
}

/// `exclusive`, `read by 2` or `3 of 4 permits`: the mode and the holds in use.
pub(crate) fn describe(mode: LockMode, holds: u64) -> String {
    match mode {
        LockMode::Read => format!("read by {holds}"),
        LockMode::Permits(permits) => format!("{holds} of {permits} permits"),
        _ => "exclusive".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_read_as_words() {
        assert_eq!(describe(LockMode::Exclusive, 1), "exclusive");
        assert_eq!(describe(LockMode::Read, 2), "read by 2");
        assert_eq!(describe(LockMode::Permits(4), 3), "3 of 4 permits");
        assert_eq!(name(LockMode::Permits(4)), "permits");
        assert_eq!(permits(LockMode::Read), None);
    }
}
