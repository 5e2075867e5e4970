//! Review of `batch.lua`'s grouped shared requests (the "+" mark): histories the randomized
//! differential test in `shared_group.rs` does not draw. Each runs the same requests on two keys of
//! one server: all of them in one call marked "+" (grouped), and each in a call of its own (the
//! per-request path), then compares the answers and what each key is left holding.

use std::time::Duration;

use redis::AsyncCommands;
use relock_tests::{run_bounded, unique_key, RedisServer};

const LIMIT: Duration = Duration::from_secs(60);
const BATCH: &str = include_str!("../../relock/src/scripts/batch.lua");
const LEASE: u64 = 600_000;

fn lock_name(key: &str) -> String {
    format!("relock:{{{key}}}")
}

fn token(byte: char) -> String {
    std::iter::repeat_n(byte, 32).collect()
}

async fn server_ms(connection: &mut redis::aio::MultiplexedConnection) -> u64 {
    let (seconds, micros): (u64, u64) = redis::cmd("TIME")
        .query_async(connection)
        .await
        .expect("TIME");
    seconds * 1000 + micros / 1000
}

/// One `batch.lua` call of `requests` on `lock`, the first `releases` of them releases; `mark`:
/// "+" after the count, as the client sends it for a call with a key more than once.
async fn call(
    connection: &mut redis::aio::MultiplexedConnection,
    lock: &str,
    releases: usize,
    mark: bool,
    requests: &[&str],
) -> Vec<redis::Value> {
    let script = redis::Script::new(BATCH);
    let mut invocation = script.prepare_invoke();
    for _ in requests {
        invocation.key(lock);
    }
    let count = if mark {
        format!("{releases}+")
    } else {
        releases.to_string()
    };
    invocation.arg("1 1 host").arg(LEASE).arg(LEASE).arg(count);
    for request in requests {
        invocation.arg(*request);
    }
    invocation
        .invoke_async(connection)
        .await
        .expect("batch.lua answers an array")
}

/// Answers as "status value" strings (an error's text kept).
fn answers(reply: &[redis::Value]) -> Vec<String> {
    reply
        .chunks(2)
        .map(|pair| {
            let status = match &pair[0] {
                redis::Value::Int(status) => *status,
                other => panic!("a status that is no integer: {other:?}"),
            };
            let value = match &pair[1] {
                redis::Value::Int(value) => value.to_string(),
                other => redis::from_redis_value::<String>(other.clone()).expect("text"),
            };
            format!("{status} {value}")
        })
        .collect()
}

/// Runs `requests` (the first `releases` releases) from `initial` once grouped, once one call per
/// request; returns (grouped answers, grouped value, per-request answers, per-request value).
async fn both(
    connection: &mut redis::aio::MultiplexedConnection,
    initial: Option<&str>,
    releases: usize,
    requests: &[&str],
) -> (Vec<String>, Option<String>, Vec<String>, Option<String>) {
    let (grouped, alone) = (
        lock_name(&unique_key("review-grouped")),
        lock_name(&unique_key("review-alone")),
    );
    if let Some(initial) = initial {
        for lock in [&grouped, &alone] {
            let _: () = connection
                .pset_ex(lock, initial, LEASE)
                .await
                .expect("SET the initial value");
        }
    }
    let answers_grouped = answers(&call(connection, &grouped, releases, true, requests).await);
    let mut answers_alone = Vec::new();
    for (k, request) in requests.iter().enumerate() {
        let releases = usize::from(k < releases);
        answers_alone.extend(answers(
            &call(connection, &alone, releases, false, &[*request]).await,
        ));
    }
    let value_grouped: Option<String> = connection.get(&grouped).await.expect("GET");
    let value_alone: Option<String> = connection.get(&alone).await.expect("GET");
    (answers_grouped, value_grouped, answers_alone, value_alone)
}

/// A value that starts with `*` but is not relock's: one at a time, the requests leave it alone
/// (acquire_shared answers PTTL's ttl: "not relock's value, never overwritten"), and so do they
/// grouped, whatever in it breaks relock's shape (a hold token of another length, a deadline of
/// 14 bytes ending in a letter, an empty fence, a header whose mark is `2`). (The
/// grouped path checks the shape of each entry, not every byte of it: a value with relock's
/// header and entries of its shape but other bytes than hex digits in a token would be taken as
/// relock's. The scripts README says so; relock's scripts write no such value.)
#[test]
fn a_value_not_relocks_that_starts_with_a_star_is_not_granted_over() {
    run_bounded(LIMIT, || async {
        let server = RedisServer::start();
        let mut connection = server.connection().await;
        let now = server_ms(&mut connection).await;
        let live = now + LEASE;
        let short = &token('z')[..20];
        for initial in [
            format!("*5 2 0 0 {short} {live} 5"),
            format!("*5 2 0 0 {} {}x 5", token('e'), live),
            format!("*5 2 0 0 {} {live} ", token('e')),
            format!("*5 2 0 2 {} {live} 5", token('e')),
        ] {
            let (a, b) = (format!("{}*2", token('a')), format!("{}*2", token('b')));
            let (answers_grouped, value_grouped, answers_alone, value_alone) =
                both(&mut connection, Some(&initial), 0, &[&a, &b]).await;
            assert!(
                answers_alone.iter().all(|answer| answer.starts_with("0 ")),
                "{initial}: one at a time refuses: {answers_alone:?}"
            );
            assert_eq!(value_alone.as_deref(), Some(initial.as_str()));
            assert_eq!(
                (
                    answers_grouped.iter().map(|a| &a[..2]).collect::<Vec<_>>(),
                    value_grouped.as_deref()
                ),
                (vec!["0 ", "0 "], Some(initial.as_str())),
                "{initial}: grouped differs: answers {answers_grouped:?}, value {value_grouped:?} \
                 (one at a time: {answers_alone:?}, {value_alone:?})"
            );
        }
    });
}

/// A grant with a lease of 0 (its deadline is the call's clock, so past it at once): one at a
/// time, the next request sees it expired and takes the permit it leaves; grouped, the grant
/// counts as a live holder for the rest of the call and the next permit is refused (a ttl of 0).
#[test]
fn a_grant_with_no_lease_is_no_live_holder_for_the_next_request() {
    run_bounded(LIMIT, || async {
        let server = RedisServer::start();
        let mut connection = server.connection().await;
        let a = format!("{} {LEASE} {LEASE} shared 2", token('a'));
        let b = format!("{} 0 {LEASE} shared 2", token('b'));
        let c = format!("{} {LEASE} {LEASE} shared 2", token('c'));
        let (answers_grouped, value_grouped, answers_alone, value_alone) =
            both(&mut connection, None, 0, &[&a, &b, &c]).await;
        let statuses = |answers: &[String]| {
            answers
                .iter()
                .map(|answer| answer.split(' ').next().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            statuses(&answers_alone),
            ["1", "1", "1"],
            "{answers_alone:?}"
        );
        assert_eq!(
            statuses(&answers_grouped),
            statuses(&answers_alone),
            "grouped {answers_grouped:?} / {value_grouped:?}, one at a time {answers_alone:?} / \
             {value_alone:?}"
        );
    });
}

/// The only holder of a key released (the key becomes its tombstone under the key's last fencing
/// token, above the hold's own), then a permit asked for in the same call whose token would pass
/// 2^53 - 1 (an error, nothing granted). One at a time the tombstone carries the key's last token;
/// grouped, the conversion of the tombstone into a shared state drops the group's `dirty`, so the
/// flush writes nothing and the key keeps the release's own tombstone: a last token lower than
/// the one handed out (an exclusive grant would then repeat the last permit's token).
#[test]
fn a_failed_grant_after_the_only_holders_release_keeps_the_last_fencing_token() {
    run_bounded(LIMIT, || async {
        let server = RedisServer::start();
        let mut connection = server.connection().await;
        let now = server_ms(&mut connection).await;
        let (a, b) = (token('a'), token('b'));
        let initial = format!(
            "*9007199254740991 2 0 0 {a} {} 9007199254740990",
            now + LEASE
        );
        let release = format!("-9007199254740990 {a}");
        let acquire = format!("{b}*2");
        let (answers_grouped, value_grouped, answers_alone, value_alone) =
            both(&mut connection, Some(&initial), 1, &[&release, &acquire]).await;
        assert_eq!(value_alone, Some(format!("-9007199254740991 {a}")));
        assert_eq!(
            (&answers_grouped[0], value_grouped.as_deref()),
            (&answers_alone[0], value_alone.as_deref()),
            "grouped {answers_grouped:?}, one at a time {answers_alone:?}"
        );
    });
}

/// Deadlines (13 digits) blanked: they come from different clock readings.
fn undated(value: Option<String>) -> Option<String> {
    value.map(|value| {
        value
            .split(' ')
            .map(|field| {
                let digits = field.trim_start_matches('-');
                if digits.len() == 13 && digits.bytes().all(|b| b.is_ascii_digit()) {
                    "D"
                } else {
                    field
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    })
}

/// Two keys grouped in one call, their requests interleaved (the differential test draws one
/// key per call): each key's group is its own, and both are written at the end. Would catch a
/// flush that skips a group, or state shared between keys.
#[test]
fn two_keys_grouped_in_one_call_each_answer_and_end_as_one_call_each() {
    run_bounded(LIMIT, || async {
        let server = RedisServer::start();
        let mut connection = server.connection().await;
        let now = server_ms(&mut connection).await;
        let last = 8_000_000_000_000_000_u64;
        let (a, x) = (token('a'), token('e'));
        let initial = format!(
            "*{last} 2 0 1 {a} {live} {last} {x} {live} {last}",
            live = now + LEASE
        );
        let requests: Vec<(usize, String)> = vec![
            (0, format!("-{last} {a}")),
            (1, format!("-{last} {x}")),
            (0, format!("{}*2", token('b'))),
            (1, format!("{}*2", token('c'))),
            (0, format!("{}*2", token('d'))),
            (1, format!("{}*2", token('f'))),
            (1, format!("{}*2", token('c'))),
        ];
        let locks = |name: &str| [lock_name(&unique_key(name)), lock_name(&unique_key(name))];
        let (grouped, alone) = (locks("review-two-grouped"), locks("review-two-alone"));
        for lock in grouped.iter().chain(&alone) {
            let _: () = connection
                .pset_ex(lock, &initial, LEASE)
                .await
                .expect("SET the initial value");
        }
        let script = redis::Script::new(BATCH);
        let mut invocation = script.prepare_invoke();
        for (key, _) in &requests {
            invocation.key(&grouped[*key]);
        }
        invocation.arg("1 1 host").arg(LEASE).arg(LEASE).arg("2+");
        for (_, request) in &requests {
            invocation.arg(request);
        }
        let reply: Vec<redis::Value> = invocation
            .invoke_async(&mut connection)
            .await
            .expect("batch.lua answers an array");
        let answers_grouped = answers(&reply);
        let mut answers_alone = Vec::new();
        for (k, (key, request)) in requests.iter().enumerate() {
            answers_alone.extend(answers(
                &call(
                    &mut connection,
                    &alone[*key],
                    usize::from(k < 2),
                    false,
                    &[request],
                )
                .await,
            ));
        }
        // Refusals' ttls come from different clock readings: their status only.
        let exact = |answers: &[String]| {
            answers
                .iter()
                .map(|answer| {
                    if answer.starts_with("0 ") {
                        "0".to_owned()
                    } else {
                        answer.clone()
                    }
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(exact(&answers_grouped), exact(&answers_alone));
        assert_eq!(
            exact(&answers_alone),
            [
                "1 0",
                "1 0",
                "1 8000000000000001",
                "1 8000000000000001",
                "0",
                "0",
                "1 8000000000000001"
            ]
        );
        for key in 0..2 {
            let value_grouped: Option<String> = connection.get(&grouped[key]).await.expect("GET");
            let value_alone: Option<String> = connection.get(&alone[key]).await.expect("GET");
            assert_eq!(undated(value_grouped), undated(value_alone), "key {key}");
        }
    });
}

/// A user that may not publish to relock's channels (an ACL refusal, which the reply documents as
/// a request's own error: "the other requests ran as if it had not been there"). One call per
/// request: the release of a key someone waited for answers -1 "PUBLISH ..." and every key is
/// written. Grouped: the PUBLISH is the flush's, outside any pcall, so the whole call fails after
/// the first key's write, and a key whose group was not yet written keeps the tombstone its first
/// release wrote over the shared value (the tombstone is how a grouped release reads the value):
/// a live reader's entry is lost, and a writer is then granted beside it.
#[test]
fn a_refused_publish_leaves_no_live_reader_lost() {
    run_bounded(LIMIT, || async {
        let server = RedisServer::start();
        let mut admin = server.connection().await;
        let url = server
            .acl_user("review-no-channels", "password", "~* +@all")
            .await;
        let mut connection = redis::Client::open(url)
            .expect("a url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect as the user");
        let now = server_ms(&mut admin).await;
        let last = 8_000_000_000_000_000_u64;
        let live = now + LEASE;
        let (a, b, c, d) = (token('a'), token('b'), token('c'), token('d'));
        let waited = lock_name(&unique_key("review-waited"));
        let other = lock_name(&unique_key("review-other"));
        let _: () = admin
            .pset_ex(
                &waited,
                format!("*{last} 2 0 1 {a} {live} {last} {b} {live} {last}"),
                LEASE,
            )
            .await
            .expect("SET");
        let _: () = admin
            .pset_ex(
                &other,
                format!("*{last} 2 0 0 {c} {live} {last} {d} {live} {last}"),
                LEASE,
            )
            .await
            .expect("SET");
        // One call per request, as the same user, from the same values: the reader stays.
        let (waited_alone, other_alone) = (
            lock_name(&unique_key("review-waited-alone")),
            lock_name(&unique_key("review-other-alone")),
        );
        for (from, to) in [(&waited, &waited_alone), (&other, &other_alone)] {
            let value: String = admin.get(from).await.expect("GET");
            let _: () = admin.pset_ex(to, value, LEASE).await.expect("SET");
        }
        let mut alone = Vec::new();
        for (lock, request) in [
            (&waited_alone, format!("-{last} {a}")),
            (&waited_alone, format!("-{last} {a}")),
            (&other_alone, format!("-{last} {c}")),
            (&other_alone, format!("-{last} {c}")),
        ] {
            alone.extend(answers(
                &call(&mut connection, lock, 1, false, &[&request]).await,
            ));
        }
        let value: Option<String> = admin.get(&other_alone).await.expect("GET");
        assert!(
            value
                .as_deref()
                .is_some_and(|value| value.contains(&format!(" {d} {live} "))),
            "one call per request: {value:?}, {alone:?}"
        );
        assert!(alone[0].starts_with("-1 PUBLISH"), "{alone:?}");
        let script = redis::Script::new(BATCH);
        let mut invocation = script.prepare_invoke();
        invocation.key(&waited).key(&waited).key(&other).key(&other);
        invocation.arg("1 1 host").arg(LEASE).arg(LEASE).arg("4+");
        invocation
            .arg(format!("-{last} {a}"))
            .arg(format!("-{last} {a}"))
            .arg(format!("-{last} {c}"))
            .arg(format!("-{last} {c}"));
        let reply: redis::RedisResult<Vec<redis::Value>> =
            invocation.invoke_async(&mut connection).await;
        let value: Option<String> = admin.get(&other).await.expect("GET");
        let writer = call(&mut admin, &other, 0, false, &[&token('f')]).await;
        assert!(
            value
                .as_deref()
                .is_some_and(|value| value.contains(&format!(" {d} {live} "))),
            "the live reader {d} is gone from {other}: {value:?} (the call answered {reply:?}; a \
             writer then got {:?})",
            answers(&writer)
        );
    });
}
