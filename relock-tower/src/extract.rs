use relock::IntoLockKey;

/// Finds the lock key of a request; `None` lets the request through without a lock.
///
/// Implemented for the extractors in [`key`](crate::key) and for every closure
/// `Fn(&Request) -> Option<K>` where `K` is a lock key (`String`, `&'static str`,
/// [`LockKey`](relock::LockKey), …). The key is validated when the lock is taken; one that is not
/// usable (empty, too long, braces, control characters) rejects the request with
/// [`relock::Error::InvalidKey`] (`400 Bad Request` by default).
///
/// ```
/// use relock_tower::LockLayer;
///
/// let layer = LockLayer::new(|request: &http::Request<String>| {
///     let tenant = request.headers().get("x-tenant")?.to_str().ok()?;
///     Some(format!("tenant:{tenant}:billing"))
/// });
/// # drop(layer);
/// ```
pub trait ExtractKey<Request> {
    /// The key type.
    type Key: IntoLockKey;

    /// The key to lock for `request`, or `None` for no lock.
    fn extract(&self, request: &Request) -> Option<Self::Key>;
}

impl<F, Request, K> ExtractKey<Request> for F
where
    F: Fn(&Request) -> Option<K>,
    K: IntoLockKey,
{
    type Key = K;

    fn extract(&self, request: &Request) -> Option<K> {
        self(request)
    }
}
