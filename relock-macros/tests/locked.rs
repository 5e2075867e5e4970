//! What `#[locked]` functions do at run time, against the in-memory locker. Every function here
//! names its locker explicitly; resolution through the scope and the global is tested in
//! `no_locker.rs` and `global.rs`, each a test binary of its own, since the global is
//! process-wide.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use relock::{locked, Locker};

#[derive(Debug)]
enum AppError {
    Lock(relock::Error),
    Domain(&'static str),
}

impl From<relock::Error> for AppError {
    fn from(err: relock::Error) -> Self {
        AppError::Lock(err)
    }
}

/// The fencing token of `key` if it is held through `locker` right now.
async fn held(locker: &Locker, key: String) -> Result<Option<u64>, relock::Error> {
    Ok(locker.inspect(key).await?.map(|info| info.fencing_token))
}

#[locked("order:{id}", locker = locker)]
async fn ship(locker: &Locker, id: u64) -> Result<Option<u64>, AppError> {
    Ok(held(locker, format!("order:{id}")).await?)
}

#[tokio::test]
async fn free_function_holds_its_key_for_the_body_and_releases_it() {
    let locker = Locker::in_memory();
    let first = ship(&locker, 7).await.unwrap().expect("held in the body");
    assert_eq!(held(&locker, "order:7".into()).await.unwrap(), None);
    let second = ship(&locker, 7).await.unwrap().expect("held in the body");
    assert!(second > first);
}

struct Order {
    id: u64,
}

struct Payments {
    locker: Locker,
    wait: Duration,
}

impl Payments {
    #[locked("order:{order.id}", wait = "2s", lease = "10s", locker = self.locker)]
    async fn pay(&self, order: &Order) -> Result<Duration, AppError> {
        let info = self.locker.inspect(format!("order:{}", order.id)).await?;
        Ok(info.expect("held while the body runs").ttl)
    }

    #[locked("order:{order.id}", wait = self.wait, locker = self.locker)]
    async fn refund(&self, order: &Order) -> Result<u64, AppError> {
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(order.id)
    }
}

#[tokio::test]
async fn method_takes_its_locker_and_lease_from_the_options() {
    let payments = Payments {
        locker: Locker::in_memory(),
        wait: Duration::from_secs(1),
    };
    let ttl = payments.pay(&Order { id: 1 }).await.unwrap();
    assert!(
        ttl <= Duration::from_secs(10) && ttl > Duration::from_secs(8),
        "{ttl:?}"
    );
}

struct Counter {
    locker: Arc<Locker>,
    name: String,
    count: u32,
}

impl Counter {
    #[locked("counter:{self.name}", locker = self.locker)]
    async fn bump(&mut self) -> Result<u32, AppError> {
        tokio::task::yield_now().await;
        self.count += 1;
        Ok(self.count)
    }
}

#[tokio::test]
async fn mut_self_method_mutates_under_the_lock() {
    let mut counter = Counter {
        locker: Arc::new(Locker::in_memory()),
        name: "hits".into(),
        count: 0,
    };
    assert_eq!(counter.bump().await.unwrap(), 1);
    assert_eq!(counter.bump().await.unwrap(), 2);
    assert_eq!(counter.count, 2);
}

#[locked("item:{item}", locker = locker)]
async fn describe<T, L>(locker: &L, item: T) -> Result<String, AppError>
where
    T: std::fmt::Display + Send,
    L: AsRef<Locker> + Sync,
{
    let held = held(locker.as_ref(), format!("item:{item}")).await?;
    Ok(format!("{item} held={}", held.is_some()))
}

#[tokio::test]
async fn generic_function_formats_its_key_from_a_generic_parameter() {
    let locker = Arc::new(Locker::in_memory());
    assert_eq!(describe(&locker, 5).await.unwrap(), "5 held=true");
    assert_eq!(describe(&*locker, "x").await.unwrap(), "x held=true");
}

#[locked("job:{name}", locker = locker)]
async fn run_job(
    locker: &Locker,
    name: impl std::fmt::Display,
    job: impl std::future::Future<Output = u32>,
) -> Result<u32, AppError> {
    Ok(job.await)
}

#[tokio::test]
async fn impl_trait_parameters_are_kept() {
    let locker = Locker::in_memory();
    let job = async {
        tokio::task::yield_now().await;
        42
    };
    assert_eq!(run_job(&locker, "nightly", job).await.unwrap(), 42);
}

trait Store {
    fn locker(&self) -> &Locker;

    #[locked("store:{key}", locker = self.locker())]
    async fn put(&self, key: &str) -> Result<Option<u64>, AppError> {
        Ok(held(self.locker(), format!("store:{key}")).await?)
    }

    async fn get(&self, key: &str) -> Result<Option<u64>, AppError>;
}

struct MemoryStore {
    locker: Locker,
}

impl Store for MemoryStore {
    fn locker(&self) -> &Locker {
        &self.locker
    }

    #[locked("store:{key}", locker = self.locker)]
    async fn get(&self, key: &str) -> Result<Option<u64>, AppError> {
        Ok(held(&self.locker, format!("store:{key}")).await?)
    }
}

#[tokio::test]
async fn async_fn_in_trait_locks_in_default_body_and_impl() {
    let store = MemoryStore {
        locker: Locker::in_memory(),
    };
    let put = store
        .put("a")
        .await
        .unwrap()
        .expect("held in the default body");
    let get = store.get("a").await.unwrap().expect("held in the impl");
    assert!(get > put);
}

struct Path<T>(T);

struct Point {
    x: i32,
    y: i32,
}

// Clippy flags `ref` in the parameters of any `async fn`, with or without `#[locked]`.
#[allow(clippy::toplevel_ref_arg)]
#[locked("p:{user_id}:{x}:{y2}:{first}:{s.len()}", locker = locker)]
async fn patterns(
    locker: &Locker,
    Path(user_id): Path<u64>,
    Point { x, y: y2 }: Point,
    (first, second): (u8, u8),
    mut n: u32,
    ref s: String,
) -> Result<String, AppError> {
    n += 1;
    let key = format!("p:{user_id}:{x}:{y2}:{first}:{}", s.len());
    let held = held(locker, key).await?.is_some();
    Ok(format!(
        "{user_id} {x} {y2} {first} {second} {n} {s} {held}"
    ))
}

#[tokio::test]
async fn names_bound_by_patterns_build_the_key_and_reach_the_body() {
    let locker = Locker::in_memory();
    let out = patterns(
        &locker,
        Path(1),
        Point { x: 2, y: 3 },
        (4, 5),
        6,
        "abc".into(),
    )
    .await
    .unwrap();
    assert_eq!(out, "1 2 3 4 5 7 abc true");
}

#[locked("account:{from}", "account:{to}", locker = locker, wait = "10s")]
async fn transfer(
    locker: Locker,
    from: u32,
    to: u32,
    inside: Arc<AtomicBool>,
) -> Result<(), AppError> {
    for key in [format!("account:{from}"), format!("account:{to}")] {
        assert!(held(&locker, key).await?.is_some());
    }
    assert!(!inside.swap(true, Ordering::SeqCst), "bodies overlapped");
    tokio::time::sleep(Duration::from_millis(2)).await;
    inside.store(false, Ordering::SeqCst);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiple_keys_in_opposite_orders_do_not_deadlock() {
    let locker = Locker::in_memory();
    let inside = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        tasks.push(tokio::spawn(transfer(locker.clone(), 1, 2, inside.clone())));
        tasks.push(tokio::spawn(transfer(locker.clone(), 2, 1, inside.clone())));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
}

#[locked("account:{id}", locker = locker)]
async fn outer(locker: &Locker, id: u64) -> Result<(u64, u64, u64), AppError> {
    let outer_token = relock::current_guard()
        .expect("inside the outer call")
        .fencing_token();
    let (holds, token) = inner(locker, id).await?;
    Ok((holds, token, outer_token))
}

// `wait = "0s"`: were this not a re-entry, the outer hold would make it fail at once.
#[locked("account:{id}", locker = locker, wait = "0s")]
async fn inner(locker: &Locker, id: u64) -> Result<(u64, u64), AppError> {
    let info = locker.inspect(format!("account:{id}")).await?;
    let info = info.expect("held by the outer call");
    Ok((info.holds, info.fencing_token))
}

#[tokio::test]
async fn nested_locked_call_on_a_held_key_reenters() {
    let locker = Locker::in_memory();
    // One hold in the backend, one fencing token: the inner call never reached the backend.
    let (holds, token, outer_token) = outer(&locker, 3).await.unwrap();
    assert_eq!(holds, 1);
    assert_eq!(token, outer_token);
    assert_eq!(held(&locker, "account:3".into()).await.unwrap(), None);
}

#[locked("busy", locker = locker, wait = Duration::from_millis(50))]
async fn busy(locker: &Locker, hold_for: Duration) -> Result<(), AppError> {
    tokio::time::sleep(hold_for).await;
    Ok(())
}

#[tokio::test]
async fn wait_timeout_becomes_the_functions_own_error() {
    let locker = Locker::in_memory();
    let (first, second) = tokio::join!(busy(&locker, Duration::from_millis(500)), async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        busy(&locker, Duration::ZERO).await
    });
    first.unwrap();
    match second {
        Err(AppError::Lock(err)) => assert!(err.is_timeout(), "{err:?}"),
        other => panic!("expected a timeout, got {other:?}"),
    }
}

#[tokio::test]
async fn wait_given_as_an_expression_is_used() {
    let payments = Payments {
        locker: Locker::in_memory(),
        wait: Duration::from_millis(20),
    };
    let order = Order { id: 9 };
    let (first, second) = tokio::join!(payments.refund(&order), async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        payments.refund(&order).await
    });
    assert_eq!(first.unwrap(), 9);
    assert!(matches!(second, Err(AppError::Lock(ref err)) if err.is_timeout()));
}

#[locked("parse:{text}", locker = locker)]
async fn parse_positive(locker: &Locker, text: &str) -> Result<u32, AppError> {
    let n: i64 = text.parse().map_err(|_| AppError::Domain("not a number"))?;
    if n <= 0 {
        return Err(AppError::Domain("not positive"));
    }
    Ok(n as u32)
}

#[tokio::test]
async fn return_and_question_mark_leave_with_the_functions_own_type() {
    let locker = Locker::in_memory();
    assert_eq!(parse_positive(&locker, "5").await.unwrap(), 5);
    assert!(matches!(
        parse_positive(&locker, "x").await,
        Err(AppError::Domain("not a number"))
    ));
    assert!(matches!(
        parse_positive(&locker, "-1").await,
        Err(AppError::Domain("not positive"))
    ));
    assert_eq!(held(&locker, "parse:-1".into()).await.unwrap(), None);
}

static AFTER_LOSS: AtomicUsize = AtomicUsize::new(0);

#[locked("lost:{name}", locker = locker)]
async fn aborted_on_loss(locker: &Locker, name: &str) -> Result<(), AppError> {
    locker.force_release(format!("lost:{name}")).await?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    AFTER_LOSS.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[locked("lost:{name}", locker = locker, on_lost = "continue")]
async fn continued_after_loss(locker: &Locker, name: &str) -> Result<(), AppError> {
    locker.force_release(format!("lost:{name}")).await?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    AFTER_LOSS.fetch_add(100, Ordering::SeqCst);
    Ok(())
}

#[tokio::test]
async fn on_lost_chooses_between_aborting_and_finishing_the_body() {
    let locker = Locker::in_memory();
    let aborted = aborted_on_loss(&locker, "a").await;
    assert!(matches!(aborted, Err(AppError::Lock(ref err)) if err.is_lost()));
    assert_eq!(AFTER_LOSS.load(Ordering::SeqCst), 0, "the body ran on");

    let continued = continued_after_loss(&locker, "b").await;
    assert!(matches!(continued, Err(AppError::Lock(ref err)) if err.is_lost()));
    assert_eq!(AFTER_LOSS.load(Ordering::SeqCst), 100, "the body stopped");
}

#[tokio::test]
async fn future_is_send_when_the_body_is() {
    fn assert_send<T: Send>(future: T) -> T {
        future
    }
    let locker = Locker::in_memory();
    let order = Order { id: 4 };
    let payments = Payments {
        locker: locker.clone(),
        wait: Duration::from_secs(1),
    };
    assert_send(ship(&locker, 4)).await.unwrap();
    assert_send(payments.pay(&order)).await.unwrap();
    let inside = Arc::new(AtomicBool::new(false));
    let spawned = tokio::spawn(transfer(locker, 5, 6, inside));
    spawned.await.unwrap().unwrap();
}
