#[relock::locked("order:{id}", wait = "1s", lease = "5s", wait = "2s")]
async fn ship(id: u64) -> relock::Result<u64> {
    Ok(id)
}

fn main() {}
