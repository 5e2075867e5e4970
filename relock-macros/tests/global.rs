//! Locker resolution through the global locker. The global is process-wide, so this binary has
//! its own file, and its tests take turns.

use relock::{locked, Locker};
use tokio::sync::Mutex;

/// Serializes the tests: each installs its own global locker.
static GLOBAL: Mutex<()> = Mutex::const_new(());

#[derive(Debug)]
struct Receipt {
    fencing_token: u64,
}

#[locked("order:{id}")]
async fn ship(id: u64) -> relock::Result<Receipt> {
    let info = Locker::current()?.inspect(format!("order:{id}")).await?;
    Ok(Receipt {
        fencing_token: info.expect("held while the body runs").fencing_token,
    })
}

#[locked("order:{id}", locker = locker)]
async fn ship_with(locker: &Locker, id: u64) -> relock::Result<Receipt> {
    ship(id).await
}

#[tokio::test]
async fn without_a_locker_option_the_global_is_used() {
    let _turn = GLOBAL.lock().await;
    let global = Locker::in_memory();
    relock::set_global(global.clone());
    let first = ship(1).await.unwrap().fencing_token;
    assert!(ship(1).await.unwrap().fencing_token > first);
    assert!(global.inspect("order:1").await.unwrap().is_none());
}

#[tokio::test]
async fn an_explicit_locker_wins_over_the_global() {
    let _turn = GLOBAL.lock().await;
    let global = Locker::in_memory();
    relock::set_global(global.clone());
    let explicit = Locker::in_memory();
    // While the global holds order:2, `ship_with` still runs at once: it locks through
    // `explicit`, and the nested `ship` resolves the scope's locker, `explicit`, too (its body
    // finds order:2 held there).
    let blocker = global.lock("order:2").await.unwrap();
    let first = ship_with(&explicit, 2).await.unwrap().fencing_token;
    assert!(ship_with(&explicit, 2).await.unwrap().fencing_token > first);
    blocker.release().await.unwrap();
    assert!(explicit.inspect("order:2").await.unwrap().is_none());
    ship(2).await.expect("the global on its own");
}
