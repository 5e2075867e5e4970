// Keys are built with `Display`; rustc points at the key.
struct Order {
    id: u64,
}

#[relock::locked("order:{order}")]
async fn ship(order: Order) -> relock::Result<u64> {
    Ok(order.id)
}

fn main() {}
