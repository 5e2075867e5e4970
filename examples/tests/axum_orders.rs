//! What the header of `examples/axum_orders.rs` says is what the service does: its requests are
//! read from the header and sent, in order, to the example's own router on a private
//! `redis-server`, and every status, body and metric the header shows is checked.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use metrics_exporter_prometheus::PrometheusBuilder;
use relock::Locker;
use relock_tests::{run_bounded, RedisServer};
use tower::ServiceExt;

// The example's own code, so that the router tested is the one `cargo run` serves.
#[allow(dead_code)]
#[path = "../examples/axum_orders.rs"]
mod axum_orders;

const SOURCE: &str = include_str!("../examples/axum_orders.rs");
const TEST_LIMIT: Duration = Duration::from_secs(60);

/// One `curl` of the header.
#[derive(Debug)]
struct Curl {
    method: Method,
    path: String,
}

/// A line of requests sent at once (`curl … & curl …; wait`), with the answers its comment gives.
#[derive(Debug)]
struct Step {
    line: String,
    curls: Vec<Curl>,
    statuses: Vec<StatusCode>,
    /// The body after `: `, for a single request; `…` stands for anything that follows.
    body: Option<String>,
}

/// The header's text: its `//!` lines without the marker.
fn header() -> Vec<&'static str> {
    SOURCE
        .lines()
        .take_while(|line| line.starts_with("//!"))
        .map(|line| line.trim_start_matches("//!").trim_start())
        .collect()
}

fn parse_curl(command: &str) -> Curl {
    let words: Vec<&str> = command.split_whitespace().collect();
    assert_eq!(words.first(), Some(&"curl"), "not a curl: {command}");
    let method = match words.iter().position(|word| *word == "-X") {
        Some(at) => words[at + 1].parse().expect("a method after -X"),
        None => Method::GET,
    };
    let url = words
        .iter()
        .find(|word| word.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {command}"));
    let path = url.trim_start_matches("http://127.0.0.1:3000").to_owned();
    assert!(
        path.starts_with('/'),
        "the header's URLs are on port 3000: {url}"
    );
    Curl { method, path }
}

/// The header's request lines with their expected answers.
fn steps() -> Vec<Step> {
    let mut steps = Vec::new();
    for line in header() {
        let Some((commands, comment)) = line.split_once("# ") else {
            continue;
        };
        if !commands.starts_with("curl") {
            continue;
        }
        let curls: Vec<Curl> = commands
            .split(['&', ';'])
            .map(str::trim)
            .filter(|command| command.starts_with("curl"))
            .map(parse_curl)
            .collect();
        let (statuses, body) = match comment.split_once(": ") {
            Some((statuses, body)) => (statuses, Some(body.to_owned())),
            None => (comment, None),
        };
        let statuses: Vec<StatusCode> = statuses
            .split(" and ")
            .map(|status| status.trim().parse().expect("a status in the comment"))
            .collect();
        assert_eq!(
            statuses.len(),
            curls.len(),
            "one status per request: {line}"
        );
        steps.push(Step {
            line: line.to_owned(),
            curls,
            statuses,
            body,
        });
    }
    steps
}

/// The metric lines the header shows after `grep '^relock_'`.
fn metric_claims() -> Vec<&'static str> {
    header()
        .into_iter()
        .skip_while(|line| !line.contains("grep '^relock_'"))
        .skip(1)
        .take_while(|line| line.starts_with("relock_"))
        .collect()
}

async fn send(app: &Router, curl: &Curl) -> (StatusCode, String) {
    let request = Request::builder()
        .method(curl.method.clone())
        .uri(&curl.path)
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

fn matches(expected: &str, body: &str) -> bool {
    let body = body.trim_end();
    match expected.split_once('…') {
        Some((prefix, rest)) => rest.is_empty() && body.starts_with(prefix),
        None => body == expected,
    }
}

async fn redis_keys(server: &RedisServer, pattern: &str) -> Vec<String> {
    let mut connection = server.connection().await;
    redis::cmd("KEYS")
        .arg(pattern)
        .query_async(&mut connection)
        .await
        .unwrap()
}

#[test]
fn the_example_answers_as_its_header_says() {
    let steps = steps();
    assert!(steps.len() >= 7, "the header's requests: {steps:#?}");
    let claims = metric_claims();
    assert!(claims.len() >= 4, "the header's metrics: {claims:#?}");

    run_bounded(TEST_LIMIT, move || async move {
        let server = RedisServer::start();
        let prometheus = PrometheusBuilder::new().install_recorder().unwrap();
        let locker = Locker::connect(&server.url()).await.unwrap();
        relock::set_global(locker.clone());
        let app = axum_orders::app(locker, prometheus.clone(), true);

        for step in &steps {
            let answers =
                futures_util::future::join_all(step.curls.iter().map(|curl| send(&app, curl)))
                    .await;
            let mut statuses: Vec<StatusCode> = answers.iter().map(|(status, _)| *status).collect();
            let mut expected = step.statuses.clone();
            statuses.sort();
            expected.sort();
            assert_eq!(statuses, expected, "{}\n{answers:?}", step.line);
            if let Some(body) = &step.body {
                let (_, actual) = &answers[0];
                assert!(matches(body, actual), "{}\nbody: {actual:?}", step.line);
            }
        }

        let rendered = prometheus.render();
        for claim in &claims {
            assert!(
                rendered.lines().any(|line| line == *claim),
                "the header shows `{claim}`; /metrics gave:\n{rendered}"
            );
        }

        // A junk id took no lock, so nothing of it is in Redis; order 42's lock is.
        assert_eq!(redis_keys(&server, "*abc*").await, Vec::<String>::new());
        assert_eq!(
            redis_keys(&server, "*order:042*").await,
            Vec::<String>::new()
        );
        assert_ne!(
            redis_keys(&server, "*order:42*").await,
            Vec::<String>::new()
        );

        // Two copies of the service on one Redis server share the lock: a payment through
        // each, at once, takes two 500 ms payments one after the other.
        let copy = |locker: Locker| axum_orders::app(locker, prometheus.clone(), true);
        let first = copy(Locker::connect(&server.url()).await.unwrap());
        let second = copy(Locker::connect(&server.url()).await.unwrap());
        let pay = Curl {
            method: Method::POST,
            path: "/orders/9/pay".to_owned(),
        };
        let started = Instant::now();
        let (a, b) = tokio::join!(send(&first, &pay), send(&second, &pay));
        assert_eq!((a.0, b.0), (StatusCode::OK, StatusCode::OK), "{a:?} {b:?}");
        assert!(
            started.elapsed() >= Duration::from_millis(1000),
            "the copies paid at once: {:?}",
            started.elapsed()
        );
    });
}
