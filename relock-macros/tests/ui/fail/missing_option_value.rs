#[relock::locked("order:{id}", wait)]
async fn ship(id: u64) -> relock::Result<u64> {
    Ok(id)
}

fn main() {}
