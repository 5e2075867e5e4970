//! The `#[locked]` attribute macro for [relock]: hold a distributed lock for the whole body of an
//! `async fn`.
//!
//! Use it through relock, which re-exports it as `relock::locked` (feature `macros`, on by
//! default); the expansion names `::relock`, so relock must be a direct dependency under that
//! name. See [`locked`] for the keys, options and what the expansion does.
//!
//! [relock]: https://docs.rs/relock
#![forbid(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms, unreachable_pub)]

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::parse::{Parse, ParseStream};
use syn::{token, Attribute, Signature, Token, Visibility};

mod attr;
mod expand;

/// Holds a lock for the whole body of an `async fn`: acquire → body → release.
///
/// ```
/// # #[derive(Debug)] struct Receipt;
/// # #[derive(Debug)] enum AppError { Lock(relock::Error) }
/// # impl From<relock::Error> for AppError {
/// #     fn from(err: relock::Error) -> Self { AppError::Lock(err) }
/// # }
/// #[relock::locked("order:{id}")]
/// async fn ship(id: u64) -> Result<Receipt, AppError> {
///     // Only one caller at a time, in any process sharing the Redis server, gets here for a
///     // given order.
///     Ok(Receipt)
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), AppError> {
/// // `relock::Locker::connect("redis://127.0.0.1:6379").await?` for Redis; in memory here.
/// relock::set_global(relock::Locker::in_memory());
/// ship(42).await?;
/// # Ok(()) }
/// ```
///
/// The lock is held by a *scope*: anything the body calls, however deeply and across
/// `.await`s and `join!`s, that locks the same key (another `#[locked]` function, or
/// [`Locker::lock`]) re-enters it at once, with no round trip to Redis. Calls that are not nested
/// in the body, in this process or another, wait for it.
///
/// # Keys
///
/// The arguments start with one or more key templates. `{…}` placeholders name the function's
/// parameters, including names bound by patterns (`Path(user_id)`, `(a, b)`, `Point { x, y }`,
/// `mut n`, `ref s`) and `self`:
///
/// | placeholder | becomes |
/// |---|---|
/// | `{id}` | `id` |
/// | `{order.id}`, `{order.customer.id}`, `{pair.0}` | the field |
/// | `{order.id()}` | a method call; it takes no arguments |
///
/// Each key is built with [`Display`](std::fmt::Display) (`format!`) from the parameters as
/// the function receives them, before the body runs. Anything else in braces — an unknown name,
/// an empty or unclosed placeholder, arguments to a method — is a compile error pointing at the
/// key. `{{` and `}}` are literal braces, but keys may not contain braces (they would change the
/// Redis Cluster slot), so such a key is rejected at run time with `Error::InvalidKey`, as are
/// empty keys, keys over 512 bytes and keys with control characters.
///
/// With several keys, `#[locked("account:{from}", "account:{to}")]`, all of them are held
/// for the body. They are taken in sorted order, whatever order the attribute lists them in, so
/// two functions naming the same keys in different orders cannot deadlock each other.
///
/// # Options
///
/// After the keys, in any order, each at most once:
///
/// * `read` — take shared read holds ([`Locker::read`]) instead of the
///   exclusive lock: `#[locked(read, "config:{id}")]` runs beside other readers of the key and
///   excludes its writers (plain `#[locked]` functions). Inside it, a `#[locked]` function on the
///   same key is an upgrade and fails at once with `Error::UpgradeRefused`.
/// * `wait = …` — how long to wait for another owner to release a key before failing with
///   `Error::Timeout`. Defaults to the locker's wait (10 s unless configured).
/// * `lease = …` — how long a key stays held if this process stops renewing it (it crashed or
///   lost the server); held keys are renewed in the background. Between 10 ms and 30 days, else
///   the call fails with `Error::InvalidLease`. Defaults to the locker's lease (30 s unless
///   configured).
/// * `locker = <expr>` — the [`Locker`] to use: any expression of type `Locker`, `&Locker` or
///   `Arc<Locker>`, evaluated once per call, before the body runs (`locker = self.locker`,
///   `locker = &state.locker`).
/// * `on_lost = "abort"` (the default) or `"continue"` — whether the body is dropped at its next
///   `.await` when a hold is lost (the lease ran out or the lock was force-released), or runs on.
///   Either way the call returns `Error::Lost`. An expression of type `relock::OnLost` works too.
///
/// `wait` and `lease` take a duration literal — a whole number followed by `ms`, `s`, `m` or `h`:
/// `"250ms"`, `"2s"`, `"1m"`, `"1h"`, checked at compile time — or any expression of type
/// [`Duration`](std::time::Duration): `wait = Duration::from_secs(2)`, `wait = self.wait`.
///
/// # Which locker
///
/// The `locker` option if given; else the locker of the enclosing lock scope (the `#[locked]`
/// function or `Acquire::run` this call is nested in); else the global one installed with
/// `relock::set_global`; else the call fails with `Error::NoLocker`.
///
/// # Return type
///
/// The function must return a `Result`: a type path whose last segment is `Result`, such as
/// `Result<T, E>`, `std::io::Result<T>` or `anyhow::Result<T>` — an alias of
/// `core::result::Result` whatever its name's prefix. Failing to take the lock (`Error::Timeout`,
/// `Error::NoLocker`, a backend error, …) is returned as `Err(E::from(err))`, so the error type
/// needs `From<relock::Error>` (`anyhow::Error` and `Box<dyn Error + Send + Sync>` have it). The
/// body's `return` and `?` keep working as written.
///
/// # What it expands to
///
/// The signature is kept exactly as written — attributes, visibility, generics, `where` clauses,
/// `impl Trait` parameters — so it works on free functions, methods (`&self`, `&mut self`,
/// `self`), and `async fn`s in traits (with a default body) and their impls — native ones:
/// `#[async_trait]` turns methods into plain `fn`s before `#[locked]` sees them. The body
/// becomes:
///
/// ```text
/// let __relock_locked = ::relock::__private::Locked::new([format!("order:{}", id)])
///     /* .locker(&(…)) .wait(…) .lease(…) .on_lost(…) */;
/// match __relock_locked.run(async move { /* the original body */ }).await {
///     Ok(output) => output,                      // the body's own Result
///     Err(err) => Err(From::from(err)),          // the lock could not be taken, or was lost
/// }
/// ```
///
/// `run` resolves the locker, takes the keys, polls the body inside a scope that holds them and
/// releases them when it ends — or in the background if the call is cancelled or panics. The
/// future is `Send` whenever the body's is.
///
/// # Examples
///
/// A method with options and an explicit locker:
///
/// ```
/// use relock::Locker;
///
/// # #[derive(Debug)] enum AppError { Lock(relock::Error) }
/// # impl From<relock::Error> for AppError {
/// #     fn from(err: relock::Error) -> Self { AppError::Lock(err) }
/// # }
/// struct Order {
///     id: u64,
/// }
///
/// struct Payments {
///     locker: Locker,
/// }
///
/// impl Payments {
///     #[relock::locked("order:{order.id}", wait = "2s", lease = "10s", locker = self.locker)]
///     async fn pay(&self, order: &Order) -> Result<(), AppError> {
///         // Re-enters: `pay` already holds "order:42" in this scope.
///         let guard = self.locker.lock(format!("order:{}", order.id)).await?;
///         assert!(guard.is_reentrant());
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), AppError> {
/// let payments = Payments { locker: Locker::in_memory() };
/// payments.pay(&Order { id: 42 }).await?;
/// # Ok(()) }
/// ```
///
/// An axum handler, locking on a name bound by an extractor pattern; the global locker is used:
///
/// ```no_run
/// use axum::extract::{Path, State};
/// use axum::http::StatusCode;
/// use axum::response::{IntoResponse, Response};
/// use axum::routing::post;
/// use axum::{Json, Router};
///
/// #[derive(Clone)]
/// struct App {
///     region: &'static str,
/// }
///
/// #[derive(serde::Serialize)]
/// struct Out {
///     user_id: u64,
///     region: &'static str,
/// }
///
/// struct AppError(relock::Error);
///
/// impl From<relock::Error> for AppError {
///     fn from(err: relock::Error) -> Self {
///         AppError(err)
///     }
/// }
///
/// impl IntoResponse for AppError {
///     fn into_response(self) -> Response {
///         let status = if self.0.is_timeout() {
///             StatusCode::LOCKED
///         } else {
///             StatusCode::SERVICE_UNAVAILABLE
///         };
///         (status, self.0.to_string()).into_response()
///     }
/// }
///
/// #[relock::locked("user:{user_id}")]
/// async fn handler(
///     Path(user_id): Path<u64>,
///     State(app): State<App>,
/// ) -> Result<Json<Out>, AppError> {
///     Ok(Json(Out {
///         user_id,
///         region: app.region,
///     }))
/// }
///
/// # #[tokio::main] async fn main() -> Result<(), relock::Error> {
/// relock::set_global(relock::Locker::connect("redis://127.0.0.1:6379").await?);
/// let app: Router = Router::new()
///     .route("/users/{user_id}", post(handler))
///     .with_state(App { region: "eu" });
/// # drop(app);
/// # Ok(()) }
/// ```
///
/// An `async fn` in a trait, with a default body:
///
/// ```
/// trait Inventory {
///     fn locker(&self) -> &relock::Locker;
///
///     #[relock::locked("sku:{sku}", locker = self.locker())]
///     async fn reserve(&self, sku: &str) -> relock::Result<u32> {
///         Ok(1)
///     }
/// }
/// # struct Shop(relock::Locker);
/// # impl Inventory for Shop { fn locker(&self) -> &relock::Locker { &self.0 } }
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> relock::Result<()> {
/// # assert_eq!(Shop(relock::Locker::in_memory()).reserve("a-1").await?, 1);
/// # Ok(()) }
/// ```
///
/// [`Locker`]: https://docs.rs/relock/latest/relock/struct.Locker.html
/// [`Locker::read`]: https://docs.rs/relock/latest/relock/struct.Locker.html#method.read
/// [`Locker::lock`]: https://docs.rs/relock/latest/relock/struct.Locker.html#method.lock
#[proc_macro_attribute]
pub fn locked(
    args: proc_macro::TokenStream,
    item: proc_macro::TokenStream,
) -> proc_macro::TokenStream {
    let original = TokenStream::from(item.clone());
    let args = syn::parse::<attr::LockedArgs>(args);
    let func = syn::parse::<LockedFn>(item);
    let expanded = match (args, func) {
        (Ok(args), Ok(func)) => expand::gen_function(args, func),
        (Err(mut err), Err(func_err)) => {
            err.combine(func_err);
            Err(err)
        }
        (Err(mut err), Ok(func)) => {
            if let Err(sig_err) = expand::check_signature(&func.sig) {
                err.combine(sig_err);
            }
            Err(err)
        }
        (Ok(_), Err(err)) => Err(err),
    };
    match expanded {
        Ok(tokens) => tokens.into(),
        // Keeping the function as written spares callers a cascade of "not found" errors.
        Err(err) => {
            let mut tokens = err.to_compile_error();
            original.to_tokens(&mut tokens);
            tokens.into()
        }
    }
}

/// A function item, or a trait or impl method with a body, whose body is kept as tokens: a body
/// that does not parse is left for rustc to report.
struct LockedFn {
    attrs: Vec<Attribute>,
    vis: Visibility,
    sig: Signature,
    inner_attrs: Vec<Attribute>,
    brace: token::Brace,
    body: TokenStream,
}

impl Parse for LockedFn {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let attrs = input.call(Attribute::parse_outer)?;
        let vis = input.parse()?;
        let sig = input.parse()?;
        if let Some(semi) = input.parse::<Option<Token![;]>>()? {
            return Err(syn::Error::new(
                semi.span,
                "`#[locked]` needs a function body to wrap",
            ));
        }
        let content;
        let brace = syn::braced!(content in input);
        let inner_attrs = content.call(Attribute::parse_inner)?;
        let body = content.parse()?;
        Ok(LockedFn {
            attrs,
            vis,
            sig,
            inner_attrs,
            brace,
            body,
        })
    }
}
