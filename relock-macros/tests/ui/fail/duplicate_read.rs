#[relock::locked(read, "config:{id}", read)]
async fn show(id: u64) -> relock::Result<u64> {
    Ok(id)
}

fn main() {}
