#[relock::locked("order:{id}", 42)]
async fn ship(id: u64) -> relock::Result<u64> {
    Ok(id)
}

fn main() {}
