#[relock::locked]
async fn bare(id: u64) -> relock::Result<u64> {
    Ok(id)
}

#[relock::locked(wait = "1s")]
async fn options_only(id: u64) -> relock::Result<u64> {
    Ok(id)
}

fn main() {}
