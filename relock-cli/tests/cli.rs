//! The `relock` binary against a private `redis-server`: every subcommand, `--json` parsed back,
//! and the exit codes.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use relock_tests::RedisServer;
use serde_json::Value;

const RELOCK: &str = env!("CARGO_BIN_EXE_relock");

/// `relock --url <server> <args>`, with `stdin` as its input, run off the runtime's thread.
async fn relock(url: &str, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(RELOCK)
        .arg("--url")
        .arg(url)
        .args(args)
        .env_remove("REDIS_URL")
        .env_remove("REDIS_CLUSTER")
        .env_remove("REDIS_SENTINEL")
        .env_remove("REDIS_SENTINEL_MASTER")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run relock");
    let input = stdin.to_owned();
    let mut pipe = child.stdin.take().expect("stdin is piped");
    tokio::task::spawn_blocking(move || {
        // The command may exit without reading (a free lock): a broken pipe is fine.
        let _ = pipe.write_all(input.as_bytes());
        drop(pipe);
        child.wait_with_output().expect("wait for relock")
    })
    .await
    .expect("join the child")
}

fn code(output: &Output) -> i32 {
    output.status.code().expect("exited, not killed")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("utf-8 stdout")
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).expect("utf-8 stderr")
}

/// Asserts the exit code, showing both streams when it differs.
fn assert_code(output: &Output, expected: i32) {
    assert_eq!(
        code(output),
        expected,
        "stdout: {}\nstderr: {}",
        stdout(output),
        stderr(output)
    );
}

fn one_line(text: &str) {
    assert_eq!(text.trim_end().lines().count(), 1, "not one line: {text:?}");
}

fn json_lines(output: &Output) -> Vec<Value> {
    stdout(output)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}")))
        .collect()
}

fn is_rfc3339_utc(text: &str) -> bool {
    let bytes = text.as_bytes();
    text.len() == 24
        && text.ends_with('Z')
        && [4, 7].iter().all(|&i| bytes[i] == b'-')
        && bytes[10] == b'T'
        && [13, 16].iter().all(|&i| bytes[i] == b':')
        && bytes[19] == b'.'
}

#[tokio::test]
async fn inspect_shows_the_holder_and_exits_0() {
    let server = RedisServer::start();
    let locker = server.locker().await;
    let guard = locker.lock("order:42").await.unwrap();

    let out = relock(&server.url(), &["inspect", "order:42"], "").await;
    assert_code(&out, 0);
    let text = stdout(&out);
    assert!(text.contains("order:42"), "{text}");
    assert!(
        text.contains(&format!("pid            {}", std::process::id())),
        "{text}"
    );
    assert!(
        text.contains(&format!("fencing token  {}", guard.fencing_token())),
        "{text}"
    );
    assert!(text.contains("since "), "{text}");
    assert!(text.contains("ttl "), "{text}");
}

#[tokio::test]
async fn inspect_json_is_one_object_with_the_documented_fields() {
    let server = RedisServer::start();
    let locker = server.locker().await;
    let guard = locker.lock("order:42").await.unwrap();

    let out = relock(&server.url(), &["--json", "inspect", "order:42"], "").await;
    assert_code(&out, 0);
    let objects = json_lines(&out);
    assert_eq!(objects.len(), 1);
    let lock = &objects[0];
    assert_eq!(lock["key"], "order:42");
    assert_eq!(lock["fencing_token"], guard.fencing_token());
    assert_eq!(lock["pid"], std::process::id());
    assert!(lock["host"].is_string(), "{lock}");
    let ttl = lock["ttl_ms"].as_u64().expect("ttl_ms is a number");
    assert!(ttl > 20_000 && ttl <= 30_000, "{ttl}");
    let since = lock["acquired_at"]
        .as_str()
        .expect("acquired_at is a string");
    assert!(is_rfc3339_utc(since), "{since}");
}

#[tokio::test]
async fn inspect_of_a_free_lock_exits_1() {
    let server = RedisServer::start();
    let out = relock(&server.url(), &["inspect", "order:42"], "").await;
    assert_code(&out, 1);
    assert!(stdout(&out).is_empty());
    one_line(&stderr(&out));
    assert!(stderr(&out).contains("free"), "{}", stderr(&out));
}

#[tokio::test]
async fn inspect_json_of_a_free_lock_prints_held_false_and_exits_1() {
    let server = RedisServer::start();
    let out = relock(&server.url(), &["--json", "inspect", "order:42"], "").await;
    assert_code(&out, 1);
    let objects = json_lines(&out);
    assert_eq!(
        objects,
        [serde_json::json!({"key": "order:42", "held": false})]
    );
    one_line(&stderr(&out));

    let locker = server.locker().await;
    let _guard = locker.lock("order:42").await.unwrap();
    let out = relock(&server.url(), &["--json", "inspect", "order:42"], "").await;
    assert_code(&out, 0);
    assert_eq!(json_lines(&out)[0]["held"], true);
}

#[tokio::test]
async fn list_shows_matching_locks_as_a_table() {
    let server = RedisServer::start();
    let locker = server.locker().await;
    let _a = locker.lock("order:1").await.unwrap();
    let _b = locker.lock("order:2").await.unwrap();
    let _c = locker.lock("user:1").await.unwrap();

    let out = relock(&server.url(), &["list", "order:*"], "").await;
    assert_code(&out, 0);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("KEY"), "{text}");
    assert!(lines[0].contains("FENCING TOKEN"), "{text}");
    assert!(lines[1].starts_with("order:1 "), "{text}");
    assert!(lines[2].starts_with("order:2 "), "{text}");
    assert!(!text.contains("user:1"), "{text}");
}

#[tokio::test]
async fn inspect_and_list_show_readers_and_permits() {
    let server = RedisServer::start();
    let locker = server.locker().await;
    let _r1 = locker.read("config:7").await.unwrap();
    let _r2 = locker.read("config:7").await.unwrap();
    let exports = locker.semaphore("exports:9", 4);
    let _p1 = exports.acquire().await.unwrap();
    let _p2 = exports.acquire().await.unwrap();
    let _p3 = exports.acquire().await.unwrap();
    let _w = locker.lock("order:1").await.unwrap();

    let out = relock(&server.url(), &["inspect", "config:7"], "").await;
    assert_code(&out, 0);
    assert!(stdout(&out).contains("read by 2"), "{}", stdout(&out));

    let out = relock(&server.url(), &["--json", "inspect", "exports:9"], "").await;
    assert_code(&out, 0);
    let lock = &json_lines(&out)[0];
    assert_eq!(lock["mode"], "permits");
    assert_eq!(lock["holds"], 3);
    assert_eq!(lock["permits"], 4);

    let out = relock(&server.url(), &["list", "*"], "").await;
    assert_code(&out, 0);
    let text = stdout(&out);
    assert!(text.lines().next().unwrap().contains("MODE"), "{text}");
    let row = |key: &str| {
        text.lines()
            .find(|line| line.starts_with(key))
            .unwrap()
            .to_owned()
    };
    assert!(row("config:7").contains("read by 2"), "{text}");
    assert!(row("exports:9").contains("3 of 4 permits"), "{text}");
    assert!(row("order:1").contains("exclusive"), "{text}");
}

#[tokio::test]
async fn list_json_is_one_object_per_line() {
    let server = RedisServer::start();
    let locker = server.locker().await;
    let a = locker.lock("order:1").await.unwrap();
    let b = locker.lock("order:2").await.unwrap();
    let _c = locker.lock("user:1").await.unwrap();

    let out = relock(&server.url(), &["--json", "list", "order:*"], "").await;
    assert_code(&out, 0);
    let mut objects = json_lines(&out);
    objects.sort_by_key(|lock| lock["key"].as_str().unwrap().to_owned());
    assert_eq!(objects.len(), 2, "{}", stdout(&out));
    for (lock, guard) in objects.iter().zip([&a, &b]) {
        assert_eq!(lock["key"], guard.key());
        assert_eq!(lock["fencing_token"], guard.fencing_token());
        assert_eq!(lock["pid"], std::process::id());
        assert!(lock["ttl_ms"].as_u64().unwrap() > 0);
        assert!(is_rfc3339_utc(lock["acquired_at"].as_str().unwrap()));
    }
}

#[tokio::test]
async fn list_json_is_sorted_like_the_table() {
    let server = RedisServer::start();
    let locker = server.locker().await;
    let keys = [
        "order:7", "order:42", "order:10", "order:1", "order:b", "order:A",
    ];
    let mut guards = Vec::new();
    for key in keys {
        guards.push(locker.lock(key).await.unwrap());
    }
    let mut sorted: Vec<&str> = keys.to_vec();
    sorted.sort();

    let out = relock(&server.url(), &["--json", "list", "order:*"], "").await;
    assert_code(&out, 0);
    let listed: Vec<String> = json_lines(&out)
        .iter()
        .map(|lock| lock["key"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, sorted);
    let out = relock(&server.url(), &["list", "order:*"], "").await;
    assert_code(&out, 0);
    let rows: Vec<String> = stdout(&out)
        .lines()
        .skip(1)
        .map(|row| row.split_whitespace().next().unwrap().to_owned())
        .collect();
    assert_eq!(rows, sorted);
}

#[tokio::test]
async fn list_with_no_match_prints_nothing_and_exits_0() {
    let server = RedisServer::start();
    let out = relock(&server.url(), &["list", "order:*"], "").await;
    assert_code(&out, 0);
    assert!(stdout(&out).is_empty());
}

#[tokio::test]
async fn release_with_yes_removes_the_holder() {
    let server = RedisServer::start();
    let locker = server.locker().await;
    let guard = locker.lock("order:42").await.unwrap();

    let out = relock(&server.url(), &["release", "--yes", "order:42"], "").await;
    assert_code(&out, 0);
    assert!(
        stdout(&out).contains("released `order:42`"),
        "{}",
        stdout(&out)
    );
    assert!(locker.inspect("order:42").await.unwrap().is_none());
    assert!(guard.release().await.unwrap_err().is_lost());
}

#[tokio::test]
async fn release_of_a_free_lock_exits_1() {
    let server = RedisServer::start();
    let out = relock(&server.url(), &["release", "--yes", "order:42"], "").await;
    assert_code(&out, 1);
    one_line(&stderr(&out));
    assert!(stdout(&out).is_empty());
}

#[tokio::test]
async fn release_json_of_a_free_or_kept_lock_prints_released_false_and_exits_1() {
    let server = RedisServer::start();
    let out = relock(
        &server.url(),
        &["--json", "release", "--yes", "order:42"],
        "",
    )
    .await;
    assert_code(&out, 1);
    let expected = serde_json::json!({"key": "order:42", "released": false});
    assert_eq!(json_lines(&out), std::slice::from_ref(&expected));
    one_line(&stderr(&out));

    let locker = server.locker().await;
    let guard = locker.lock("order:42").await.unwrap();
    let out = relock(&server.url(), &["--json", "release", "order:42"], "n\n").await;
    assert_code(&out, 1);
    assert_eq!(json_lines(&out), [expected]);
    assert!(guard.is_held());
}

#[tokio::test]
async fn release_asks_and_y_releases() {
    let server = RedisServer::start();
    let locker = server.locker().await;
    let _guard = locker.lock("order:42").await.unwrap();

    let out = relock(&server.url(), &["release", "order:42"], "y\n").await;
    assert_code(&out, 0);
    assert!(stderr(&out).contains("[y/N]"), "{}", stderr(&out));
    assert!(locker.inspect("order:42").await.unwrap().is_none());
}

#[tokio::test]
async fn release_asks_and_n_keeps_the_lock() {
    let server = RedisServer::start();
    let locker = server.locker().await;
    let guard = locker.lock("order:42").await.unwrap();

    for answer in ["n\n", "\n", ""] {
        let out = relock(&server.url(), &["release", "order:42"], answer).await;
        assert_code(&out, 1);
        assert!(stderr(&out).contains("not released"), "{}", stderr(&out));
        assert!(stdout(&out).is_empty());
    }
    let info = locker
        .inspect("order:42")
        .await
        .unwrap()
        .expect("still held");
    assert_eq!(info.fencing_token, guard.fencing_token());
}

#[tokio::test]
async fn release_json_reports_the_removed_holder() {
    let server = RedisServer::start();
    let locker = server.locker().await;
    let guard = locker.lock("order:42").await.unwrap();

    let out = relock(&server.url(), &["--json", "release", "-y", "order:42"], "").await;
    assert_code(&out, 0);
    let objects = json_lines(&out);
    assert_eq!(objects.len(), 1);
    assert_eq!(objects[0]["released"], true);
    assert_eq!(objects[0]["fencing_token"], guard.fencing_token());
}

/// Starts `relock watch` and waits until it has read the lock once (its stderr note).
fn start_watch(url: &str, args: &[&str]) -> std::process::Child {
    let mut child = Command::new(RELOCK)
        .arg("--url")
        .arg(url)
        .args(["watch", "order:42", "--for", "20s", "--interval", "20ms"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run relock watch");
    let mut note = String::new();
    BufReader::new(child.stderr.as_mut().unwrap())
        .read_line(&mut note)
        .unwrap();
    assert!(note.contains("watching `order:42`"), "{note}");
    child
}

async fn finish(child: std::process::Child) -> Output {
    tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn watch_reports_an_acquisition_and_a_release_as_they_happen() {
    let server = RedisServer::start();
    let locker = server.locker().await;
    let child = start_watch(&server.url(), &["--count", "2"]);
    let started = Instant::now();

    let guard = locker.lock("order:42").await.unwrap();
    let token = guard.fencing_token();
    tokio::time::sleep(Duration::from_millis(300)).await;
    guard.release().await.unwrap();

    let out = finish(child).await;
    assert_code(&out, 0);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "--count 2 stops it"
    );
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].contains("acquired"), "{text}");
    assert!(
        lines[0].contains(&format!("pid {}", std::process::id())),
        "{text}"
    );
    assert!(
        lines[0].contains(&format!("fencing token {token}")),
        "{text}"
    );
    assert!(lines[1].contains("released"), "{text}");
}

#[tokio::test]
async fn watch_shows_readers_and_permits_coming_and_going() {
    let server = RedisServer::start();
    let locker = server.locker().await;
    let child = start_watch(&server.url(), &["--count", "9"]);
    let pause = || tokio::time::sleep(Duration::from_millis(300));

    // Two readers in turn, then out in turn: the key stays held until the last one leaves.
    let first = locker.read("order:42").await.unwrap();
    pause().await;
    let second = locker.read("order:42").await.unwrap();
    let second_token = second.fencing_token();
    pause().await;
    second.release().await.unwrap();
    pause().await;
    first.release().await.unwrap();
    pause().await;
    // Permits of a semaphore of 3: a change of mode is a release and an acquisition.
    let permits = locker.semaphore("order:42", 3);
    let one = permits.acquire().await.unwrap();
    pause().await;
    let two = permits.acquire().await.unwrap();
    pause().await;
    two.release().await.unwrap();
    pause().await;
    one.release().await.unwrap();
    pause().await;
    let exclusive = locker.lock("order:42").await.unwrap();

    let out = finish(child).await;
    assert_code(&out, 0);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    let expected = [
        ("acquired", "read by 1"),
        ("changed", "read by 2"),
        ("changed", "read by 1"),
        ("released", "order:42"),
        ("acquired", "1 of 3 permits"),
        ("changed", "2 of 3 permits"),
        ("changed", "1 of 3 permits"),
        ("released", "order:42"),
        ("acquired", "exclusive by "),
    ];
    assert_eq!(lines.len(), expected.len(), "{text}");
    for (line, (event, shows)) in lines.iter().zip(expected) {
        assert!(line.contains(&format!("  {event} ")), "{event}: {text}");
        assert!(line.contains(shows), "{shows}: {text}");
    }
    assert!(
        lines[1].contains(&format!("fencing token {second_token}")),
        "the key's fencing token: {text}"
    );
    assert!(
        lines[8].contains(&format!("pid {}", std::process::id())),
        "{text}"
    );
    exclusive.release().await.unwrap();
}

#[tokio::test]
async fn watch_json_prints_one_object_per_event() {
    let server = RedisServer::start();
    let locker = server.locker().await;
    let child = start_watch(&server.url(), &["--count", "3", "--json"]);

    let first = locker.lock("order:42").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A force-release followed at once by a new holder: a change of holder between two reads.
    locker.force_release("order:42").await.unwrap();
    let second = locker.lock("order:42").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let out = finish(child).await;
    assert_code(&out, 0);
    let events = json_lines(&out);
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["acquired", "released", "acquired"],
        "{}",
        stdout(&out)
    );
    assert_eq!(events[0]["fencing_token"], first.fencing_token());
    assert_eq!(events[1]["fencing_token"], first.fencing_token());
    assert_eq!(events[2]["fencing_token"], second.fencing_token());
    assert!(is_rfc3339_utc(events[2]["acquired_at"].as_str().unwrap()));
    assert!(events
        .iter()
        .all(|e| is_rfc3339_utc(e["at"].as_str().unwrap())));
}

#[tokio::test]
async fn watch_reports_a_lock_held_when_it_starts_and_stops_after_for() {
    let server = RedisServer::start();
    let locker = server.locker().await;
    let _guard = locker.lock("order:42").await.unwrap();
    let started = Instant::now();

    let out = relock(
        &server.url(),
        &["watch", "order:42", "--for", "300ms", "--json"],
        "",
    )
    .await;
    assert_code(&out, 0);
    assert!(started.elapsed() < Duration::from_secs(3));
    let events = json_lines(&out);
    assert_eq!(events.len(), 1, "{}", stdout(&out));
    assert_eq!(events[0]["event"], "held");
}

#[tokio::test]
async fn prefix_selects_the_lock_space() {
    let server = RedisServer::start();
    let locker = relock::Locker::builder()
        .url(server.url())
        .prefix("billing")
        .build()
        .unwrap();
    let _guard = locker.lock("order:42").await.unwrap();

    let default = relock(&server.url(), &["inspect", "order:42"], "").await;
    assert_code(&default, 1);
    let billing = relock(
        &server.url(),
        &["--prefix", "billing", "inspect", "order:42"],
        "",
    )
    .await;
    assert_code(&billing, 0);
    let listed = relock(
        &server.url(),
        &["--prefix", "billing", "--json", "list"],
        "",
    )
    .await;
    assert_eq!(json_lines(&listed).len(), 1);
}

#[tokio::test]
async fn url_comes_from_redis_url_when_not_given() {
    let server = RedisServer::start();
    let locker = server.locker().await;
    let _guard = locker.lock("order:42").await.unwrap();

    let out = tokio::task::spawn_blocking({
        let url = server.url();
        move || {
            Command::new(RELOCK)
                .args(["inspect", "order:42"])
                .env("REDIS_URL", url)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert_code(&out, 0);
}

#[tokio::test]
async fn a_bad_key_exits_2() {
    let server = RedisServer::start();
    for args in [
        &["inspect", "order:{42}"][..],
        &["release", "--yes", "a\u{7}b"],
        &["watch", "", "--count", "1"],
    ] {
        let out = relock(&server.url(), args, "").await;
        assert_code(&out, 2);
        one_line(&stderr(&out));
        assert!(
            stderr(&out).contains("invalid lock key"),
            "{}",
            stderr(&out)
        );
    }
}

#[tokio::test]
async fn a_bad_pattern_exits_2_and_is_called_a_pattern() {
    let server = RedisServer::start();
    for (pattern, says) in [
        ("order:{*", "`{` or `}`"),
        ("order:[", "`[` is not closed"),
        ("order:[0-9", "`[` is not closed"),
        ("order:\\", "lone `\\`"),
        ("", "empty"),
    ] {
        for json in [false, true] {
            let args = if json {
                vec!["--json", "list", pattern]
            } else {
                vec!["list", pattern]
            };
            let out = relock(&server.url(), &args, "").await;
            assert_code(&out, 2);
            assert!(stdout(&out).is_empty(), "{}", stdout(&out));
            let message = stderr(&out);
            one_line(&message);
            assert!(
                message.contains(&format!("invalid pattern `{pattern}`")),
                "{message}"
            );
            assert!(message.contains(says), "{message}");
            assert!(!message.contains("invalid lock key"), "{message}");
        }
    }
}

#[tokio::test]
async fn a_url_with_an_unknown_scheme_lists_the_accepted_ones() {
    for (option, url) in [
        ("--url", "foo://x"),
        ("--url", "localhost:6379"),
        ("--cluster", "http://127.0.0.1:7000"),
        ("--sentinel", "foo://u:secret@127.0.0.1:26379"),
    ] {
        let out = match option {
            "--url" => relock(url, &["inspect", "k"], "").await,
            "--sentinel" => {
                let args = [option, url, "--master-name", "m", "inspect", "k"];
                relock("redis://127.0.0.1:1", &args, "").await
            }
            _ => relock("redis://127.0.0.1:1", &[option, url, "inspect", "k"], "").await,
        };
        assert_code(&out, 2);
        let message = stderr(&out);
        one_line(&message);
        assert!(message.contains(&format!("invalid {option}")), "{message}");
        assert!(message.contains("redis://, rediss:// (TLS)"), "{message}");
        assert!(!message.contains("InvalidClientConfig"), "{message}");
        assert!(!message.contains("secret"), "{message}");
    }
}

/// `rediss://` against a plain port waits for a handshake that never comes; `redis://` against
/// a TLS port is dropped: both say what is likely wrong.
#[tokio::test]
async fn a_tls_mismatch_asks_whether_the_server_is_tls() {
    let ca = relock_tests::TestCa::new("relock test CA");
    let server = RedisServer::start_tls(&ca);
    let ca_file =
        std::env::temp_dir().join(format!("relock-cli-ca-mismatch-{}.pem", std::process::id()));
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let ca_arg = ca_file.display().to_string();
    let plain_port_over_tls = format!("rediss://127.0.0.1:{}", server.port());
    let tls_port_in_plain = format!("redis://127.0.0.1:{}", server.tls_port());
    for (url, args) in [
        (
            plain_port_over_tls.as_str(),
            &[
                "--tls-ca-cert",
                &ca_arg,
                "--timeout",
                "300ms",
                "inspect",
                "k",
            ][..],
        ),
        (tls_port_in_plain.as_str(), &["inspect", "k"]),
    ] {
        let started = Instant::now();
        let out = relock(url, args, "").await;
        assert_code(&out, 3);
        let message = stderr(&out);
        one_line(&message);
        assert!(message.contains("is the server TLS?"), "{url}: {message}");
        assert!(started.elapsed() < Duration::from_secs(2), "{url}");
    }
    // The right scheme for each port still works.
    let out = relock(
        &server.tls_url(),
        &["--tls-ca-cert", &ca_arg, "inspect", "k"],
        "",
    )
    .await;
    assert_code(&out, 1);
    assert!(!stderr(&out).contains("TLS?"), "{}", stderr(&out));
    let _ = std::fs::remove_file(ca_file);
}

#[tokio::test]
async fn usage_errors_exit_2() {
    for args in [
        &["inspect"][..],
        &["frobnicate"],
        &["watch", "k", "--for", "soon"],
        &["watch", "k", "--count", "0"],
        &["--prefix", "a{b", "inspect", "k"],
        &["--url", "nonsense://", "inspect", "k"],
    ] {
        let out = relock("redis://127.0.0.1:1", args, "").await;
        assert_code(&out, 2);
        one_line(&stderr(&out));
    }
}

#[tokio::test]
async fn an_unreachable_server_exits_3_at_once() {
    for args in [
        &["inspect", "order:42"][..],
        &["list"],
        &["watch", "order:42"],
        &["release", "--yes", "order:42"],
    ] {
        let started = Instant::now();
        let out = relock("redis://127.0.0.1:1", args, "").await;
        let took = started.elapsed();
        assert_code(&out, 3);
        one_line(&stderr(&out));
        assert!(took < Duration::from_secs(1), "{args:?} took {took:?}");
    }
}

#[tokio::test]
async fn a_silent_server_exits_3_within_the_timeout() {
    // Accepts connections and never answers: only the timeouts end the wait.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}", listener.local_addr().unwrap());
    let started = Instant::now();
    let out = relock(&url, &["--timeout", "300ms", "inspect", "order:42"], "").await;
    let took = started.elapsed();
    assert_code(&out, 3);
    one_line(&stderr(&out));
    assert!(took < Duration::from_secs(2), "took {took:?}");
    drop(listener);
}

/// `--cluster`: the same commands against a Redis Cluster, `list` over every master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_inspect_and_list_cover_every_master() {
    let cluster = relock_tests::RedisCluster::start(3, 0);
    let seeds = cluster.seeds().join(",");
    let locker = relock::Locker::builder()
        .cluster(cluster.seeds())
        .build()
        .expect("a cluster locker");
    let keys: Vec<String> = (0..12).map(|i| format!("cli-cluster:{i}")).collect();
    let masters: std::collections::HashSet<u16> =
        keys.iter().map(|key| cluster.master_of(key)).collect();
    assert_eq!(masters.len(), 3, "the keys are spread over every master");
    let mut guards = Vec::new();
    for key in &keys {
        guards.push(locker.lock(key.as_str()).await.expect("lock"));
    }
    let unreachable = "redis://127.0.0.1:1";
    let output = relock(
        unreachable,
        &["--cluster", &seeds, "--json", "list", "cli-cluster:*"],
        "",
    )
    .await;
    assert_code(&output, 0);
    let mut listed: Vec<String> = json_lines(&output)
        .iter()
        .map(|lock| lock["key"].as_str().expect("key").to_owned())
        .collect();
    listed.sort();
    let mut expected = keys.clone();
    expected.sort();
    assert_eq!(listed, expected);
    let output = relock(
        unreachable,
        &["--cluster", &seeds, "inspect", "cli-cluster:3"],
        "",
    )
    .await;
    assert_code(&output, 0);
    assert!(stdout(&output).contains(&guards[3].fencing_token().to_string()));
    let output = relock(
        unreachable,
        &["--cluster", &seeds, "release", "--yes", "cli-cluster:3"],
        "",
    )
    .await;
    assert_code(&output, 0);
    assert!(!guards[3].is_held() || locker.inspect("cli-cluster:3").await.unwrap().is_none());
}

#[tokio::test]
async fn inspect_and_list_over_tls_with_a_private_ca_as_an_acl_user() {
    let ca = relock_tests::TestCa::new("relock test CA");
    let server = RedisServer::start_tls(&ca);
    let rules = format!("{} {}", relock::acl_rules("relock"), relock::ACL_LIST_RULES);
    server.acl_user("operator", "s3cret", &rules).await;
    let locker = server.locker().await;
    let guard = locker.lock("order:42").await.unwrap();
    let ca_file = std::env::temp_dir().join(format!("relock-cli-ca-{}.pem", std::process::id()));
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let url = format!("rediss://operator:s3cret@127.0.0.1:{}", server.tls_port());
    let ca_arg = ca_file.display().to_string();

    let out = relock(&url, &["--tls-ca-cert", &ca_arg, "inspect", "order:42"], "").await;
    assert_code(&out, 0);
    let text = stdout(&out);
    assert!(
        text.contains(&format!("fencing token  {}", guard.fencing_token())),
        "{text}"
    );
    let out = relock(&url, &["--tls-ca-cert", &ca_arg, "list", "order:*"], "").await;
    assert_code(&out, 0);
    assert!(stdout(&out).contains("order:42"), "{}", stdout(&out));

    // Without the CA: a certificate problem, exit 3, and the password stays out of the message.
    let out = relock(&url, &["inspect", "order:42"], "").await;
    assert_code(&out, 3);
    let message = stderr(&out);
    one_line(&message);
    assert!(message.contains("TLS certificate problem"), "{message}");
    assert!(message.contains("--tls-ca-cert"), "{message}");
    assert!(!message.contains("s3cret"), "{message}");
    let _ = std::fs::remove_file(ca_file);
}

/// `--sentinel` with `--master-name`: the commands on the master the sentinels name; sentinels
/// that cannot be reached fail with exit code 3, one line naming the master, within the timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_inspect_and_release_go_to_the_master() {
    let deployment = relock_tests::RedisSentinel::start();
    let sentinels = deployment.sentinel_urls().join(",");
    let master = relock_tests::MASTER_NAME;
    let locker = deployment.builder().build().expect("a sentinel locker");
    let guard = locker.lock("cli-sentinel:1").await.expect("lock");
    let unreachable = "redis://127.0.0.1:1";
    let sentinel_args = ["--sentinel", &sentinels, "--master-name", master];
    let mut args = sentinel_args.to_vec();
    args.extend(["inspect", "cli-sentinel:1"]);
    let output = relock(unreachable, &args, "").await;
    assert_code(&output, 0);
    assert!(stdout(&output).contains(&guard.fencing_token().to_string()));
    let mut args = sentinel_args.to_vec();
    args.extend(["release", "--yes", "cli-sentinel:1"]);
    assert_code(&relock(unreachable, &args, "").await, 0);
    assert!(locker.inspect("cli-sentinel:1").await.unwrap().is_none());

    let closed = format!("redis://127.0.0.1:{}", relock_tests::free_port());
    let started = Instant::now();
    let args = [
        "--sentinel",
        &closed,
        "--master-name",
        "mymaster",
        "--timeout",
        "300ms",
        "inspect",
        "k",
    ];
    let output = relock(unreachable, &args, "").await;
    assert_code(&output, 3);
    one_line(&stderr(&output));
    assert!(stderr(&output).contains("mymaster"), "{}", stderr(&output));
    assert!(started.elapsed() < Duration::from_secs(3));
    let output = relock(unreachable, &["--sentinel", &closed, "inspect", "k"], "").await;
    assert_code(&output, 2);
}
