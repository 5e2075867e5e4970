#[relock::locked("order:{id}", lease = "1d")]
async fn ship(id: u64) -> relock::Result<u64> {
    Ok(id)
}

fn main() {}
