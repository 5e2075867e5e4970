struct Order;

impl Order {
    fn part(&self, n: u32) -> u32 {
        n
    }
}

#[relock::locked("order:{order.part(1)}")]
async fn ship(order: &Order) -> relock::Result<u32> {
    Ok(order.part(1))
}

fn main() {}
