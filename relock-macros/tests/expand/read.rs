// The read form: shared holds, re-entered by nested reads, and refusing an upgrade.
use relock::{Error, Locker};

#[relock::locked(read, "config:{id}", locker = locker)]
async fn show(locker: &Locker, id: u64) -> relock::Result<u64> {
    // A nested read of the same key re-enters the hold.
    let again = locker.read(format!("config:{id}")).await?;
    assert!(again.is_reentrant());
    Ok(again.fencing_token())
}

#[relock::locked("config:{id}", wait = "1s", read, locker = locker)]
async fn upgrade(locker: &Locker, id: u64) -> relock::Result<()> {
    write(locker, id).await
}

#[relock::locked("config:{id}", locker = locker)]
async fn write(locker: &Locker, id: u64) -> relock::Result<()> {
    let _ = (locker, id);
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
pub(crate) async fn main() {
    let locker = Locker::in_memory();
    let (a, b) = tokio::join!(show(&locker, 7), show(&locker, 7));
    assert_eq!(
        a.unwrap(),
        b.unwrap(),
        "readers share the last writer's token"
    );
    assert!(matches!(
        upgrade(&locker, 7).await,
        Err(Error::UpgradeRefused { .. })
    ));
    write(&locker, 7).await.unwrap();
}
