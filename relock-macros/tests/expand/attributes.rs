// Outer and inner attributes, doc comments and visibility are kept.
#![deny(warnings)]

pub mod api {
    /// Documented, public, inlined: all kept.
    #[inline]
    #[must_use = "the result says whether the lock was taken"]
    #[relock::locked("doc:{id}")]
    pub async fn documented(id: u32) -> relock::Result<u32> {
        #![allow(clippy::let_and_return)]
        let out = id;
        out.checked_add(0).ok_or(relock::Error::NoLocker)
    }
}

#[tokio::main(flavor = "current_thread")]
pub(crate) async fn main() {
    relock::set_global(relock::Locker::in_memory());
    assert_eq!(api::documented(3).await.unwrap(), 3);
}
