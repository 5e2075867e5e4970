// The axum example: names bound by extractor patterns, and a future that is `Send`
// enough to be an axum handler.
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};

#[derive(Clone)]
struct App {
    name: &'static str,
}

#[derive(serde::Serialize)]
struct Out {
    user_id: u64,
    served_by: &'static str,
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
async fn handler(Path(user_id): Path<u64>, State(app): State<App>) -> Result<Json<Out>, AppError> {
    Ok(Json(Out {
        user_id,
        served_by: app.name,
    }))
}

fn main() {
    let _app: Router = Router::new()
        .route("/users/{user_id}", post(handler))
        .with_state(App { name: "a" });
}
