// `return` and `?` in the body work with the function's own return type.
#[derive(Debug, PartialEq)]
enum AppError {
    Lock(String),
    Parse,
    Negative,
}

impl From<relock::Error> for AppError {
    fn from(err: relock::Error) -> Self {
        AppError::Lock(err.to_string())
    }
}

impl From<std::num::ParseIntError> for AppError {
    fn from(_: std::num::ParseIntError) -> Self {
        AppError::Parse
    }
}

#[relock::locked("parse:{text}")]
async fn parse(text: &str) -> Result<i64, AppError> {
    let n: i64 = text.parse()?;
    if n < 0 {
        return Err(AppError::Negative);
    }
    if n == 0 {
        return Ok(0);
    }
    Ok(n * 2)
}

#[tokio::main(flavor = "current_thread")]
pub(crate) async fn main() {
    relock::set_global(relock::Locker::in_memory());
    assert_eq!(parse("21").await, Ok(42));
    assert_eq!(parse("0").await, Ok(0));
    assert_eq!(parse("-1").await, Err(AppError::Negative));
    assert_eq!(parse("x").await, Err(AppError::Parse));
}
