// Any path whose last segment is `Result` is accepted: aliases with one parameter, full paths,
// `impl Trait` inside, and error types that have `From<relock::Error>`.
use std::fmt::Display;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

mod app {
    pub type Result<T> = std::result::Result<T, super::BoxError>;
}

#[relock::locked("a")]
async fn relock_alias() -> relock::Result<u8> {
    Ok(1)
}

#[relock::locked("b")]
async fn module_alias() -> app::Result<u8> {
    Ok(2)
}

#[relock::locked("c")]
async fn full_path() -> ::core::result::Result<u8, BoxError> {
    Ok(3)
}

#[relock::locked("d")]
async fn std_path() -> std::result::Result<u8, relock::Error> {
    Ok(4)
}

#[relock::locked("e")]
async fn impl_trait_output() -> Result<impl Display, relock::Error> {
    Ok("five")
}

#[relock::locked("f")]
async fn unit_output() -> Result<(), BoxError> {
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
pub(crate) async fn main() {
    relock::set_global(relock::Locker::in_memory());
    assert_eq!(relock_alias().await.unwrap(), 1);
    assert_eq!(module_alias().await.unwrap(), 2);
    assert_eq!(full_path().await.unwrap(), 3);
    assert_eq!(std_path().await.unwrap(), 4);
    assert_eq!(impl_trait_output().await.unwrap().to_string(), "five");
    unit_output().await.unwrap();
}
