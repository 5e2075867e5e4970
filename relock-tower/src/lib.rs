//! Tower middleware for relock.
