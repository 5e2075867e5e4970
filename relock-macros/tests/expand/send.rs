// The future of a `#[locked]` function is `Send` when its body's is, so it can be spawned.
use std::sync::Arc;

struct Order {
    id: u64,
}

#[relock::locked("order:{order.id}")]
async fn borrowing(order: &Order) -> relock::Result<u64> {
    tokio::task::yield_now().await;
    Ok(order.id)
}

#[relock::locked("order:{order.id}")]
async fn owning(order: Arc<Order>) -> relock::Result<u64> {
    tokio::task::yield_now().await;
    Ok(order.id)
}

fn assert_send<T: Send>(value: T) -> T {
    value
}

#[tokio::main(flavor = "current_thread")]
pub(crate) async fn main() {
    relock::set_global(relock::Locker::in_memory());
    let order = Order { id: 1 };
    assert_eq!(assert_send(borrowing(&order)).await.unwrap(), 1);
    let spawned = tokio::spawn(owning(Arc::new(Order { id: 2 })));
    assert_eq!(spawned.await.unwrap().unwrap(), 2);
}
