use std::time::{Duration, SystemTime};

/// What [`Locker::inspect`](crate::Locker::inspect) reads about a held lock.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockInfo {
    /// The lock's key, as it was locked (without prefix or hash tag).
    pub key: String,
    /// The current hold's own token (32 hex digits): every fresh acquisition has a new one.
    pub owner: String,
    /// How many holds the backend has for the key: always 1, since re-entry is decided in the
    /// holder's process and never reaches the backend.
    pub holds: u64,
    /// How long the lease has left.
    pub ttl: Duration,
    /// The fencing token of the current hold.
    pub fencing_token: u64,
    /// The host name of the holder's machine.
    pub host: Option<String>,
    /// The holder's process id.
    pub pid: Option<u32>,
    /// When the lock was taken, by the backend's clock.
    pub acquired_at: Option<SystemTime>,
}
