// The first example: a free function with a placeholder over a parameter.
#[derive(Debug)]
struct Receipt;

#[derive(Debug)]
enum AppError {
    Lock(relock::Error),
}

impl From<relock::Error> for AppError {
    fn from(err: relock::Error) -> Self {
        AppError::Lock(err)
    }
}

#[relock::locked("order:{id}")]
async fn ship(id: u64) -> Result<Receipt, AppError> {
    Ok(Receipt)
}

#[relock::locked("static-key")]
pub(crate) async fn without_placeholders() -> Result<(), AppError> {
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
pub(crate) async fn main() {
    relock::set_global(relock::Locker::in_memory());
    ship(42).await.unwrap();
    without_placeholders().await.unwrap();
    if let Err(AppError::Lock(err)) = ship(0).await {
        panic!("{err}");
    }
}
