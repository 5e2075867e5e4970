//! Locker resolution without a global: the enclosing scope's locker, else `Error::NoLocker`.
//! No test in this binary may call `relock::set_global`.

use relock::{locked, Locker};

#[locked("order:{id}")]
async fn ship(id: u64) -> relock::Result<Option<u64>> {
    let locker = Locker::current()?;
    Ok(locker
        .inspect(format!("order:{id}"))
        .await?
        .map(|info| info.fencing_token))
}

#[tokio::test]
async fn without_any_locker_the_call_fails_with_no_locker() {
    match ship(1).await {
        Err(relock::Error::NoLocker) => {}
        other => panic!("expected NoLocker, got {other:?}"),
    }
}

#[tokio::test]
async fn nested_call_uses_the_enclosing_scopes_locker() {
    let locker = Locker::in_memory();
    let token = locker.lock("batch").run(ship(2)).await.unwrap().unwrap();
    assert!(
        token.is_some(),
        "order:2 was held through the scope's locker"
    );
    assert!(locker.inspect("order:2").await.unwrap().is_none());
}

#[locked("batch:{batch}", locker = locker)]
async fn batch(locker: &Locker, batch: u64, orders: &[u64]) -> relock::Result<Vec<Option<u64>>> {
    let mut tokens = Vec::new();
    for &order in orders {
        tokens.push(ship(order).await?);
    }
    Ok(tokens)
}

#[tokio::test]
async fn locked_calls_nested_in_a_locked_call_use_its_locker() {
    let locker = Locker::in_memory();
    let tokens = batch(&locker, 1, &[10, 11]).await.unwrap();
    assert!(tokens.iter().all(Option::is_some), "{tokens:?}");
}
