trait Store {
    #[relock::locked("store:{key}")]
    async fn get(&self, key: &str) -> relock::Result<u32>;
}

fn main() {}
