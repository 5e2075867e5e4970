// The lock's error is converted into the function's error type; rustc points at the return type
// when that conversion does not exist.
#[derive(Debug)]
struct AppError;

#[relock::locked("order:{id}")]
async fn ship(id: u64) -> Result<u64, AppError> {
    Ok(id)
}

fn main() {}
