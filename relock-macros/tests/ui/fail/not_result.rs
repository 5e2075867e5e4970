#[relock::locked("order:{id}")]
async fn ship(id: u64) -> Option<u64> {
    Some(id)
}

fn main() {}
