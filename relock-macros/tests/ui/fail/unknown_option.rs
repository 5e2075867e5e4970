#[relock::locked("order:{id}", timeout = "2s")]
async fn ship(id: u64) -> relock::Result<u64> {
    Ok(id)
}

fn main() {}
