#[relock::locked("order:{id}", wait = "2 seconds")]
async fn ship(id: u64) -> relock::Result<u64> {
    Ok(id)
}

fn main() {}
