#[relock::locked("order:{id}")]
async fn ship(id: u64) {
    println!("{id}");
}

fn main() {}
