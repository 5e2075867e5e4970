// Every option, as a literal and as an expression, and every kind of locker expression.
use std::sync::Arc;
use std::time::Duration;

use relock::{Locker, OnLost};

struct Config {
    locker: Locker,
    wait: Duration,
}

impl Config {
    #[relock::locked("k", wait = self.wait, lease = Duration::from_secs(5), locker = self.locker)]
    async fn expressions(&self) -> relock::Result<()> {
        Ok(())
    }
}

#[relock::locked("k", wait = "250ms", lease = "2s", locker = locker, on_lost = "abort")]
async fn literals(locker: Locker) -> relock::Result<()> {
    Ok(())
}

#[relock::locked("k", on_lost = "continue", wait = "1m", lease = "1h", locker = locker)]
async fn options_after_key_in_any_order(locker: Arc<Locker>) -> relock::Result<()> {
    Ok(())
}

#[relock::locked(locker = locker, "k", on_lost = OnLost::Continue, wait = "0s",)]
async fn keys_anywhere_and_trailing_comma(locker: &Arc<Locker>) -> relock::Result<()> {
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
pub(crate) async fn main() {
    let locker = Locker::in_memory();
    Config {
        locker: locker.clone(),
        wait: Duration::from_millis(10),
    }
    .expressions()
    .await
    .unwrap();
    literals(locker.clone()).await.unwrap();
    let shared = Arc::new(locker);
    options_after_key_in_any_order(shared.clone())
        .await
        .unwrap();
    keys_anywhere_and_trailing_comma(&shared).await.unwrap();
}
