// `{{` and `}}` are literal braces. They compile, but relock rejects keys with braces when the
// lock is taken, since a brace would change the Redis Cluster slot.
#[relock::locked("set:{{{id}}}")]
async fn braces(id: u32) -> relock::Result<u32> {
    Ok(id)
}

#[tokio::main(flavor = "current_thread")]
pub(crate) async fn main() {
    relock::set_global(relock::Locker::in_memory());
    match braces(1).await {
        Err(relock::Error::InvalidKey { key, .. }) => assert_eq!(key, "set:{1}"),
        other => panic!("expected InvalidKey, got {other:?}"),
    }
}
