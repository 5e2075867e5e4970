#[relock::locked(reader, "config:{id}")]
async fn show(id: u64) -> relock::Result<u64> {
    Ok(id)
}

fn main() {}
