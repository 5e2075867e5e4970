#[relock::locked("order:{id}", on_lost = "retry")]
async fn ship(id: u64) -> relock::Result<u64> {
    Ok(id)
}

fn main() {}
