use std::time::{Duration, SystemTime};

/// What [`Locker::inspect`](crate::Locker::inspect) reads about a held lock.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockInfo {
    /// The holder's owner token (32 hex digits).
    pub owner: String,
    /// How many holds the owner has in the backend. Nesting inside one scope never reaches the
    /// backend, so this is 1 unless the same owner re-entered from elsewhere.
    pub holds: u64,
    /// How long the lease has left.
    pub ttl: Duration,
    /// The fencing token of the current holding.
    pub fencing_token: u64,
    /// The host name of the holder's machine.
    pub host: Option<String>,
    /// The holder's process id.
    pub pid: Option<u32>,
    /// When the lock was taken, by the backend's clock.
    pub acquired_at: Option<SystemTime>,
}
