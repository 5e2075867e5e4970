// `async fn` in traits, with a default body, and in their impls.
use relock::Locker;

trait Store {
    fn locker(&self) -> &Locker;

    #[relock::locked("store:{key}", locker = self.locker())]
    async fn put(&self, key: &str, value: u32) -> relock::Result<u32> {
        Ok(value)
    }

    async fn get(&self, key: &str) -> relock::Result<u32>;
}

struct Memory {
    locker: Locker,
}

impl Store for Memory {
    fn locker(&self) -> &Locker {
        &self.locker
    }

    #[relock::locked("store:{key}", locker = self.locker)]
    async fn get(&self, key: &str) -> relock::Result<u32> {
        Ok(key.len() as u32)
    }
}

#[tokio::main(flavor = "current_thread")]
pub(crate) async fn main() {
    let store = Memory {
        locker: Locker::in_memory(),
    };
    assert_eq!(store.put("k", 3).await.unwrap(), 3);
    assert_eq!(store.get("abc").await.unwrap(), 3);
}
