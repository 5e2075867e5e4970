// Every problem is reported in one compile, each at its own token.
#[relock::locked("order:{idd}", "user:{}")]
fn ship(id: u64) -> Option<u64> {
    Some(id)
}

fn main() {}
