// Receivers of every kind, generics with bounds and `where` clauses, lifetimes, and
// `impl Trait` parameters: the signature is re-emitted untouched.
use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;

use relock::Locker;

struct Account<'a> {
    locker: Arc<Locker>,
    id: u64,
    name: &'a str,
    balance: i64,
}

impl<'a> Account<'a> {
    #[relock::locked("account:{self.id}", locker = self.locker)]
    async fn balance(&self) -> relock::Result<i64> {
        Ok(self.balance)
    }

    #[relock::locked("account:{self.id}", locker = self.locker)]
    async fn deposit(&mut self, amount: i64) -> relock::Result<i64> {
        self.balance += amount;
        Ok(self.balance)
    }

    #[relock::locked("account:{self.name}", locker = self.locker.clone())]
    async fn close(self) -> relock::Result<&'a str> {
        Ok(self.name)
    }

    #[relock::locked("account:{self.id}", locker = self.locker)]
    async fn shared(self: Arc<Self>) -> relock::Result<u64> {
        Ok(self.id)
    }

    #[relock::locked("account:{self.id}:{label}", locker = &self.locker)]
    async fn labelled<'b>(&'b self, label: &'b str) -> relock::Result<&'b str> {
        Ok(label)
    }
}

#[relock::locked("item:{item}", locker = locker)]
async fn generic<T: Display + Send, L>(locker: &L, item: T) -> relock::Result<String>
where
    L: AsRef<Locker> + Sync + ?Sized,
{
    Ok(item.to_string())
}

#[relock::locked("job:{name}", locker = locker)]
async fn impl_trait_args(
    locker: &Locker,
    name: impl Display,
    work: impl Future<Output = u32>,
) -> relock::Result<u32> {
    Ok(work.await)
}

#[tokio::main(flavor = "current_thread")]
pub(crate) async fn main() {
    let locker = Arc::new(Locker::in_memory());
    let mut account = Account {
        locker: locker.clone(),
        id: 7,
        name: "seven",
        balance: 1,
    };
    assert_eq!(account.deposit(2).await.unwrap(), 3);
    assert_eq!(account.balance().await.unwrap(), 3);
    assert_eq!(account.labelled("x").await.unwrap(), "x");
    assert_eq!(account.close().await.unwrap(), "seven");
    let shared = Arc::new(Account {
        locker: locker.clone(),
        id: 8,
        name: "eight",
        balance: 0,
    });
    assert_eq!(shared.shared().await.unwrap(), 8);
    assert_eq!(generic(&*locker, 5).await.unwrap(), "5");
    assert_eq!(generic(&locker, "s").await.unwrap(), "s");
    assert_eq!(impl_trait_args(&locker, "n", async { 9 }).await.unwrap(), 9);
}
