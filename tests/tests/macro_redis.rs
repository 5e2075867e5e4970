//! `#[locked]` against a real Redis server: the outer call takes the key with a round trip, a
//! nested call on the same key re-enters without sending a single command.
//!
//! Command counts are compared before and after rather than read once: after `reset_stats`,
//! Redis 7 counts the reset itself (as `config|resetstat`).

use relock::{locked, Locker};
use relock_tests::RedisServer;

#[locked("order:{id}", locker = locker)]
async fn ship(locker: &Locker, server: &RedisServer, id: u64) -> relock::Result<u64> {
    server.reset_stats().await;
    let before = server.commands_processed().await;
    let token = pack(id).await?;
    let sent = server.commands_processed().await - before;
    assert_eq!(sent, 0, "the nested call sent {sent} commands to Redis");
    Ok(token)
}

// No `locker` option: the nested call resolves the locker of the scope it runs in.
#[locked("order:{id}")]
async fn pack(id: u64) -> relock::Result<u64> {
    let guard = Locker::current()?.lock(format!("order:{id}")).await?;
    assert!(guard.is_reentrant());
    Ok(guard.fencing_token())
}

#[tokio::test]
async fn nested_locked_call_on_a_held_key_sends_no_command() {
    let server = RedisServer::start();
    let locker = Locker::connect(&server.url()).await.unwrap();
    let token = ship(&locker, &server, 42).await.unwrap();
    let next = locker.lock("order:42").await.unwrap();
    assert!(next.fencing_token() > token);
    next.release().await.unwrap();
    assert!(locker.inspect("order:42").await.unwrap().is_none());
}

#[locked("order:{id}", locker = locker)]
async fn hold(locker: &Locker, server: &RedisServer, id: u64) -> relock::Result<Option<u64>> {
    let mut redis = server.connection().await;
    let exists: bool = redis::cmd("EXISTS")
        .arg(format!("relock:{{order:{id}}}"))
        .query_async(&mut redis)
        .await
        .expect("EXISTS");
    assert!(exists, "the lock is in Redis while the body runs");
    Ok(locker
        .inspect(format!("order:{id}"))
        .await?
        .map(|info| info.holds))
}

#[tokio::test]
async fn locked_call_takes_the_key_in_redis_and_releases_it() {
    let server = RedisServer::start();
    let locker = Locker::connect(&server.url()).await.unwrap();
    server.reset_stats().await;
    let before = server.commands_processed().await;
    assert_eq!(hold(&locker, &server, 7).await.unwrap(), Some(1));
    assert!(server.commands_processed().await > before);
    assert!(locker.inspect("order:7").await.unwrap().is_none());
}

/// An axum handler under `#[locked]`: names bound by extractor patterns (`Path(user_id)`) are
/// placeholders, and the future stays `Send` enough for axum to route to it.
mod axum_handler {
    use axum::body::Body;
    use axum::extract::{Path, State};
    use axum::http::{Request, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::routing::post;
    use axum::Router;
    use tower::ServiceExt;

    #[derive(Clone)]
    struct App {
        name: &'static str,
    }

    struct AppError(relock::Error);

    impl From<relock::Error> for AppError {
        fn from(err: relock::Error) -> Self {
            AppError(err)
        }
    }

    impl IntoResponse for AppError {
        fn into_response(self) -> Response {
            (StatusCode::LOCKED, self.0.to_string()).into_response()
        }
    }

    #[relock::locked("user:{user_id}")]
    async fn handler(Path(user_id): Path<u64>, State(app): State<App>) -> Result<String, AppError> {
        Ok(format!("{user_id} by {}", app.name))
    }

    #[tokio::test]
    async fn a_locked_function_is_an_axum_handler() {
        relock::set_global(relock::Locker::in_memory());
        let app: Router = Router::new()
            .route("/users/{user_id}", post(handler))
            .with_state(App { name: "a" });
        let response = app
            .oneshot(
                Request::post("/users/7")
                    .body(Body::empty())
                    .expect("a request"),
            )
            .await
            .expect("the router answers");
        assert_eq!(response.status(), StatusCode::OK);
    }
}
