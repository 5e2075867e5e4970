use std::time::{Duration, SystemTime};

/// What [`Locker::inspect`](crate::Locker::inspect) reads about a held lock.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockInfo {
    /// The lock's key, as it was locked (without prefix or hash tag).
    pub key: String,
    /// The current hold's own token (32 hex digits): every fresh acquisition has a new one. For
    /// shared holds, the first holder's.
    pub owner: String,
    /// How many holds the backend has for the key: 1 for an exclusive lock (re-entry is decided
    /// in the holder's process and never reaches the backend); the live readers or permits in
    /// use for shared holds.
    pub holds: u64,
    /// How long the lease has left.
    pub ttl: Duration,
    /// The fencing token of the current hold; for shared holds, the key's last one.
    pub fencing_token: u64,
    /// The host name of the holder's machine.
    pub host: Option<String>,
    /// The holder's process id.
    pub pid: Option<u32>,
    /// When the lock was taken, by the backend's clock.
    pub acquired_at: Option<SystemTime>,
    /// Who holds it: an exclusive hold, readers, or a semaphore's permits.
    pub mode: LockMode,
}

/// How a lock is held, in [`LockInfo::mode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LockMode {
    /// One exclusive hold: [`Locker::lock`](crate::Locker::lock), the write lock.
    Exclusive,
    /// Readers: [`Locker::read`](crate::Locker::read).
    Read,
    /// Permits of a semaphore of this many: [`Locker::semaphore`](crate::Locker::semaphore).
    Permits(u32),
}
