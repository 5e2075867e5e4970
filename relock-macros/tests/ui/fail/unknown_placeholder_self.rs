// `self` is a placeholder only in methods.
#[relock::locked("order:{self.id}")]
async fn ship(id: u64) -> relock::Result<u64> {
    Ok(id)
}

fn main() {}
