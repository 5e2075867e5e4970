// Several keys, with placeholders over different parameters.
#[relock::locked("account:{from}", "account:{to}", "transfers")]
async fn transfer(from: u32, to: u32, amount: u64) -> relock::Result<u64> {
    Ok(amount)
}

#[tokio::main(flavor = "current_thread")]
pub(crate) async fn main() {
    relock::set_global(relock::Locker::in_memory());
    assert_eq!(transfer(1, 2, 3).await.unwrap(), 3);
}
