#[relock::locked("order:{id:?}")]
async fn debug_format(id: u64) -> relock::Result<u64> {
    Ok(id)
}

#[relock::locked("order:{id + 1}")]
async fn arithmetic(id: u64) -> relock::Result<u64> {
    Ok(id)
}

fn main() {}
