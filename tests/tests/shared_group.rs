//! The group commit's shared requests of one key against the same requests sent one at a time:
//! `batch.lua` may decide the readers, permits and releases of one key that share a call together
//! (the value read and parsed once, written once), but every answer, and what the key is left
//! holding, must be what the same requests sent one per call, in the same order, leave.
//!
//! Two private servers start each history from the same value of one key: server A runs all of
//! its requests in one `batch.lua` call, server B runs each in a call of its own. The histories
//! are drawn from fixed seeds (`RELOCK_SHARED_GROUP_SEED=<seed>` replays one); a difference fails
//! the test with the seed, the initial value, the requests, both servers' answers and both final
//! values.
//!
//! What can differ, and only by what the clock makes differ: A reads `TIME` once, B once per
//! request. So deadlines, a writer's claim, a refusal's ttl and the key's expiry may differ by up
//! to 2 s; a failed request's error text is not compared (it names the command that was running,
//! `TIME` when the request was the first of its call to read the clock); and where the key knows
//! no last fencing token (free, or a tombstone with token 0) the tokens are the clock's, so only
//! their order is compared.

use std::fmt::Write as _;
use std::time::Duration;

use futures_util::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::AsyncCommands;
use relock_tests::{run_bounded, unique_key, RedisServer};

const LIMIT: Duration = Duration::from_secs(60);
const BATCH: &str = include_str!("../../relock/src/scripts/batch.lua");
/// The key's last fencing token in most histories: above the server's clock in µs (about 1.8e15
/// in 2026), so a permit's token, max(last + 1, clock), is last + 1 on both servers.
const LAST: u64 = 8_000_000_000_000_000;
/// The call's lease and retention, most requests' own, the lease left of a live entry.
const LEASE: u64 = 600_000;
/// How far a deadline, a claim, a refusal's ttl or an expiry may differ between the servers: they
/// come from different `TIME` readings.
const SLACK: i64 = 2_000;
/// Histories per run.
const HISTORIES: u64 = 400;
const FIRST_SEED: u64 = 0x5eed_0000;

fn lock_name(key: &str) -> String {
    format!("relock:{{{key}}}")
}

/// The server's clock in milliseconds, as the scripts read it.
async fn server_ms(connection: &mut redis::aio::MultiplexedConnection) -> u64 {
    let (seconds, micros): (u64, u64) = redis::cmd("TIME")
        .query_async(connection)
        .await
        .expect("TIME");
    seconds * 1000 + micros / 1000
}

/// One request of a history, as `batch.lua` receives it.
#[derive(Clone, Debug)]
struct Request {
    text: String,
    release: bool,
    /// Its hold token (the last 32 bytes of a release).
    token: String,
    /// A shared acquisition's number of permits (0: a reader).
    permits: Option<u32>,
}

/// One history: the key's value before it, and its requests, releases first.
#[derive(Debug)]
struct History {
    seed: u64,
    initial: Option<String>,
    requests: Vec<Request>,
    /// The fencing tokens granted do not depend on the clock: the key knows a last token above it.
    fixed: bool,
    /// The initial value's expiry (ms): longer than a grant's at times, so that a grant that does
    /// not set the key's expiry shows.
    expiry: u64,
}

impl History {
    fn releases(&self) -> usize {
        self.requests
            .iter()
            .filter(|request| request.release)
            .count()
    }
}

fn new_token(rng: &mut StdRng) -> String {
    format!("{:032x}", rng.random::<u128>())
}

/// Draws history `seed` for a server whose clock reads `now` (ms).
fn draw(seed: u64, now: u64) -> History {
    let mut rng = StdRng::seed_from_u64(seed);
    let live = now + LEASE;
    let expired = now - 60_000;
    // The hold tokens the initial value names, with their fencing tokens.
    let mut known: Vec<(String, u64)> = Vec::new();
    // Those of them that hold the key (a live shared holder, the exclusive hold).
    let mut holding: Vec<(String, u64)> = Vec::new();
    let mut permits: u32 = [0, 0, 2, 3, 4][rng.random_range(0..5)];
    let roll = rng.random_range(0..100);
    let (initial, fixed) = match roll {
        0..8 => (None, false),
        8..14 => {
            let token = new_token(&mut rng);
            known.push((token.clone(), 0));
            (Some(format!("-0 {token}")), false)
        }
        14..26 => {
            let token = new_token(&mut rng);
            known.push((token.clone(), LAST));
            (Some(format!("-{LAST} {token}")), true)
        }
        26..31 => {
            let token = new_token(&mut rng);
            known.push((token.clone(), LAST));
            holding.push((token.clone(), LAST));
            let mark = if rng.random_bool(0.5) { ' ' } else { '+' };
            (Some(format!("{token}{mark}{LAST} {live} 1 1 host")), true)
        }
        31..34 => (Some("hello".to_owned()), true),
        _ => {
            let writer = match rng.random_range(0..10) {
                0..7 => 0,
                7..8 => live,
                _ => expired,
            };
            let waited = u8::from(rng.random_bool(0.4));
            let mut value = format!("*{LAST} {permits} {writer} {waited}");
            // A quarter of the values are long, mostly released holds: their releases pass the
            // bound of 8 released holds, which drops the oldest.
            let long = rng.random_bool(0.25);
            let entries = if long {
                rng.random_range(6..=40)
            } else {
                rng.random_range(0..=6)
            };
            for _ in 0..entries {
                let token = new_token(&mut rng);
                let fence = if permits == 0 {
                    LAST
                } else {
                    LAST - rng.random_range(0..20)
                };
                let kind = if long {
                    [0, 0, 0, 5, 5, 5, 5, 5, 7, 9][rng.random_range(0..10)]
                } else {
                    rng.random_range(0..10)
                };
                let deadline = match kind {
                    0..5 => {
                        holding.push((token.clone(), fence));
                        live.to_string()
                    }
                    5..7 => format!("-{live}"),
                    7..9 => expired.to_string(),
                    _ => format!("-{expired}"),
                };
                write!(value, " {token} {deadline} {fence}").unwrap();
                known.push((token, fence));
            }
            (Some(value), true)
        }
    };
    if !initial
        .as_deref()
        .is_some_and(|value| value.starts_with('*'))
        && rng.random_bool(0.3)
    {
        // A key without shared holders: its first shared grant fixes the number of permits.
        permits = [0, 2, 3, 4][rng.random_range(0..4)];
    }

    // Exclusive acquisitions in a third of the histories: a writer refused by live holders claims
    // the key, and every shared acquisition after it is refused.
    let exclusive_rate = if rng.random_bool(0.33) { 0.1 } else { 0.0 };
    let total = rng.random_range(2..=40);
    let releases = if rng.random_bool(0.2) {
        0
    } else {
        rng.random_range(0..=total / 2)
    };
    let mut requests: Vec<Request> = Vec::new();
    for _ in 0..releases {
        let request = match rng.random_range(0..10) {
            // A retried release: the same one again.
            0..2 if !requests.is_empty() => requests[rng.random_range(0..requests.len())].clone(),
            2..5 if !holding.is_empty() => {
                let (token, fence) = holding[rng.random_range(0..holding.len())].clone();
                let fence = if rng.random_bool(0.3) { 0 } else { fence };
                release(token, fence)
            }
            0..8 if !known.is_empty() => {
                let (token, fence) = known[rng.random_range(0..known.len())].clone();
                let fence = if rng.random_bool(0.3) { 0 } else { fence };
                release(token, fence)
            }
            _ => {
                // A hold the key does not name.
                let fence = if rng.random_bool(0.5) {
                    0
                } else {
                    LAST - rng.random_range(0..5)
                };
                release(new_token(&mut rng), fence)
            }
        };
        requests.push(request);
    }
    for _ in releases..total {
        let released: Vec<String> = requests
            .iter()
            .filter(|request| request.release)
            .map(|request| request.token.clone())
            .collect();
        let asked: Vec<String> = requests
            .iter()
            .filter(|request| !request.release)
            .map(|request| request.token.clone())
            .collect();
        let token = match rng.random_range(0..10) {
            // A live holder's, a released hold's or an expired one's: a retried or late request.
            4..6 if !known.is_empty() => known[rng.random_range(0..known.len())].0.clone(),
            // A hold released earlier in this call.
            6 if !released.is_empty() => released[rng.random_range(0..released.len())].clone(),
            // The same new token twice.
            7 if !asked.is_empty() => asked[rng.random_range(0..asked.len())].clone(),
            _ => new_token(&mut rng),
        };
        let wanted = if rng.random_bool(0.8) {
            permits
        } else {
            // A mismatch (or by chance the key's own number).
            [0, 2, 3, 4][rng.random_range(0..4)]
        };
        let request = if rng.random_bool(exclusive_rate) {
            match rng.random_range(0..10) {
                0..4 => exclusive(token.clone(), token),
                4..8 => exclusive(format!("{token} {LEASE} {LEASE} try"), token),
                _ => exclusive(format!("{token} {LEASE} {LEASE}"), token),
            }
        } else {
            match rng.random_range(0..100) {
                0..48 => {
                    // A lease or retention of its own, now and then another than the call's.
                    let (lease, retention) = [
                        (LEASE, LEASE),
                        (LEASE, LEASE),
                        (300_000, LEASE),
                        (LEASE, 900_000),
                    ][rng.random_range(0..4)];
                    shared(
                        format!("{token} {lease} {retention} shared {wanted}"),
                        token,
                        wanted,
                    )
                }
                48..96 => shared(format!("{token}*{wanted}"), token, wanted),
                _ => {
                    let malformed = if rng.random_bool(0.5) {
                        token[1..].to_owned()
                    } else {
                        token.to_uppercase()
                    };
                    if rng.random_bool(0.5) {
                        shared(
                            format!("{malformed} {LEASE} {LEASE} shared {wanted}"),
                            malformed,
                            wanted,
                        )
                    } else {
                        shared(format!("{malformed}*{wanted}"), malformed, wanted)
                    }
                }
            }
        };
        requests.push(request);
    }
    History {
        seed,
        initial,
        requests,
        fixed,
        expiry: if rng.random_bool(0.5) {
            LEASE
        } else {
            1_200_000
        },
    }
}

fn release(token: String, fence: u64) -> Request {
    Request {
        text: format!("-{fence} {token}"),
        release: true,
        token,
        permits: None,
    }
}

fn shared(text: String, token: String, permits: u32) -> Request {
    Request {
        text,
        release: false,
        token,
        permits: Some(permits),
    }
}

fn exclusive(text: String, token: String) -> Request {
    Request {
        text,
        release: false,
        token,
        permits: None,
    }
}

/// The value of a request's answer: a number, or a failed request's error text.
#[derive(Clone, Debug, PartialEq)]
enum Item {
    Int(i64),
    Text(String),
}

type Answer = (i64, Item);

/// One `batch.lua` call for `requests` of `lock`, the first `releases` of them releases.
async fn batch(
    connection: &mut redis::aio::MultiplexedConnection,
    script: &redis::Script,
    lock: &str,
    releases: usize,
    requests: &[&Request],
) -> Vec<Answer> {
    let mut invocation = script.prepare_invoke();
    for _ in requests {
        invocation.key(lock);
    }
    // Marked as the client marks a call with a key more than once ("+"): its shared requests
    // are decided together.
    let count = if requests.len() > 1 {
        format!("{releases}+")
    } else {
        releases.to_string()
    };
    invocation.arg("1 1 host").arg(LEASE).arg(LEASE).arg(count);
    for request in requests {
        invocation.arg(&request.text);
    }
    let reply: Vec<redis::Value> = invocation
        .invoke_async(connection)
        .await
        .expect("batch.lua answers an array");
    assert_eq!(reply.len(), 2 * requests.len(), "two items per request");
    reply
        .chunks(2)
        .map(|pair| {
            let status = match &pair[0] {
                redis::Value::Int(status) => *status,
                other => panic!("a status that is no integer: {other:?}"),
            };
            let value = match &pair[1] {
                redis::Value::Int(value) => Item::Int(*value),
                other => Item::Text(redis::from_redis_value(other.clone()).unwrap_or_else(
                    |error| panic!("a value neither integer nor text: {other:?} ({error})"),
                )),
            };
            (status, value)
        })
        .collect()
}

/// What a key is left holding: its value and its PTTL; how many releases were announced, and
/// the messages that announced them.
#[derive(Debug)]
struct Final {
    value: Option<String>,
    pttl: i64,
    announced: u64,
    messages: Vec<String>,
}

impl Final {
    /// The shared holds the messages say were returned, and the messages that count none (an
    /// exclusive hold's release).
    fn returned(&self) -> (u64, usize) {
        let counted: Vec<u64> = self
            .messages
            .iter()
            .filter_map(|m| m.parse().ok())
            .collect();
        (counted.iter().sum(), self.messages.len() - counted.len())
    }
}

/// Every message published on `lock`'s release channel since the last call (`pubsub` is
/// subscribed to every release channel): a marker published now comes after them all.
async fn messages(
    connection: &mut redis::aio::MultiplexedConnection,
    pubsub: &mut redis::aio::PubSub,
    lock: &str,
) -> Vec<String> {
    let channel = format!("{lock}:released");
    let _: () = connection
        .publish(&channel, "end")
        .await
        .expect("PUBLISH the marker");
    let mut stream = pubsub.on_message();
    let mut messages = Vec::new();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("the marker arrives")
            .expect("the subscription lasts");
        if message.get_channel_name() != channel {
            continue;
        }
        let payload: String = message.get_payload().expect("a text payload");
        if payload == "end" {
            return messages;
        }
        messages.push(payload);
    }
}

/// `lock`'s final state, on a server that had run `before` `PUBLISH` commands.
async fn final_state(
    connection: &mut redis::aio::MultiplexedConnection,
    lock: &str,
    before: u64,
) -> Final {
    let value: Option<String> = connection.get(lock).await.expect("GET the lock");
    let pttl: i64 = connection.pttl(lock).await.expect("PTTL the lock");
    let announced = publishes(connection).await - before;
    Final {
        value,
        pttl,
        announced,
        messages: Vec::new(),
    }
}

/// How many `PUBLISH` commands the server has run (scripts' included).
async fn publishes(connection: &mut redis::aio::MultiplexedConnection) -> u64 {
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(connection)
        .await
        .expect("INFO commandstats");
    stats
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_publish:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |calls| calls.parse().expect("a count"))
}

/// One entry of the shared form.
#[derive(Debug)]
struct Entry<'a> {
    token: &'a str,
    released: bool,
    deadline: i64,
    fence: &'a str,
}

/// A value of the lock key, in its fields.
#[derive(Debug)]
enum Form<'a> {
    Absent,
    Tombstone {
        fence: &'a str,
        token: &'a str,
    },
    Hold {
        token: &'a str,
        mark: &'a str,
        fence: &'a str,
        deadline: i64,
        metadata: &'a str,
    },
    Shared {
        last: &'a str,
        permits: &'a str,
        writer: i64,
        waited: &'a str,
        entries: Vec<Entry<'a>>,
    },
    Other(&'a str),
}

fn parse(value: Option<&str>) -> Form<'_> {
    let Some(value) = value else {
        return Form::Absent;
    };
    parse_relock(value).unwrap_or(Form::Other(value))
}

fn parse_relock(value: &str) -> Option<Form<'_>> {
    if let Some(rest) = value.strip_prefix('-') {
        let (fence, token) = rest.split_once(' ')?;
        return Some(Form::Tombstone { fence, token });
    }
    if let Some(rest) = value.strip_prefix('*') {
        let fields: Vec<&str> = rest.split(' ').collect();
        if fields.len() < 4 || !(fields.len() - 4).is_multiple_of(3) {
            return None;
        }
        let entries = fields[4..]
            .chunks(3)
            .map(|entry| {
                let deadline: i64 = entry[1].parse().ok()?;
                Some(Entry {
                    token: entry[0],
                    released: deadline < 0,
                    deadline: deadline.abs(),
                    fence: entry[2],
                })
            })
            .collect::<Option<Vec<_>>>()?;
        return Some(Form::Shared {
            last: fields[0],
            permits: fields[1],
            writer: fields[2].parse().ok()?,
            waited: fields[3],
            entries,
        });
    }
    if value.len() > 33 && value.is_char_boundary(32) && value.is_char_boundary(33) {
        let (token, rest) = value.split_at(32);
        let (mark, rest) = rest.split_at(1);
        let mut fields = rest.splitn(3, ' ');
        let (fence, deadline, metadata) = (fields.next()?, fields.next()?, fields.next()?);
        if (mark == " " || mark == "+") && token.bytes().all(|byte| byte.is_ascii_hexdigit()) {
            return Some(Form::Hold {
                token,
                mark,
                fence,
                deadline: deadline.parse().ok()?,
                metadata,
            });
        }
    }
    None
}

/// Two fencing tokens agree: equal, or where they come from the clock, both 0 or both not.
fn fences_agree(a: &str, b: &str, fixed: bool) -> bool {
    if fixed {
        a == b
    } else {
        (a == "0") == (b == "0")
    }
}

fn near(a: i64, b: i64) -> bool {
    (a - b).abs() <= SLACK
}

/// The two final values agree: everything equal but the times (within [`SLACK`]), and where the
/// tokens come from the clock, the fencing tokens.
fn compare_values(a: &Final, b: &Final, fixed: bool) -> Result<(), String> {
    let (form_a, form_b) = (parse(a.value.as_deref()), parse(b.value.as_deref()));
    let agree = match (&form_a, &form_b) {
        (Form::Absent, Form::Absent) => true,
        (
            Form::Tombstone { fence, token },
            Form::Tombstone {
                fence: other_fence,
                token: other_token,
            },
        ) => fences_agree(fence, other_fence, fixed) && token == other_token,
        (
            Form::Hold {
                token,
                mark,
                fence,
                deadline,
                metadata,
            },
            Form::Hold {
                token: other_token,
                mark: other_mark,
                fence: other_fence,
                deadline: other_deadline,
                metadata: other_metadata,
            },
        ) => {
            token == other_token
                && mark == other_mark
                && fences_agree(fence, other_fence, fixed)
                && near(*deadline, *other_deadline)
                && metadata == other_metadata
        }
        (
            Form::Shared {
                last,
                permits,
                writer,
                waited,
                entries,
            },
            Form::Shared {
                last: other_last,
                permits: other_permits,
                writer: other_writer,
                waited: other_waited,
                entries: other_entries,
            },
        ) => {
            fences_agree(last, other_last, fixed)
                && permits == other_permits
                && ((*writer == 0) == (*other_writer == 0))
                && near(*writer, *other_writer)
                && waited == other_waited
                && entries.len() == other_entries.len()
                && entries.iter().zip(other_entries).all(|(entry, other)| {
                    entry.token == other.token
                        && entry.released == other.released
                        && near(entry.deadline, other.deadline)
                        && fences_agree(entry.fence, other.fence, fixed)
                })
        }
        (Form::Other(value), Form::Other(other)) => value == other,
        _ => false,
    };
    if !agree {
        return Err("the final values differ".to_owned());
    }
    if !fixed && !ordered_alike(&fences(&form_a), &fences(&form_b)) {
        return Err("the final values' fencing tokens are not ordered alike".to_owned());
    }
    let pttl_agrees = if a.pttl < 0 || b.pttl < 0 {
        a.pttl == b.pttl
    } else {
        near(a.pttl, b.pttl)
    };
    if !pttl_agrees {
        return Err(format!("the final PTTLs differ: {} and {}", a.pttl, b.pttl));
    }
    // One call may announce several releases of a key once: a waiter needs one message, which
    // counts the shared holds returned (a client wakes that many permit waiters).
    if (a.announced > 0) != (b.announced > 0) {
        return Err(format!(
            "releases announced {} times in one call, {} times one at a time",
            a.announced, b.announced
        ));
    }
    if a.returned() != b.returned() {
        return Err(format!(
            "the messages count other returns: {:?} in one call, {:?} one at a time",
            a.messages, b.messages
        ));
    }
    Ok(())
}

/// The answers of A (one call) and B (one call per request) agree.
fn compare_answers(history: &History, a: &[Answer], b: &[Answer]) -> Result<(), String> {
    for (at, ((request, a), b)) in history.requests.iter().zip(a).zip(b).enumerate() {
        let agree = match (a, b) {
            ((status, _), (other, _)) if status != other => false,
            // Failed alone: the error text may name another command.
            ((-1, _), _) => true,
            // A refusal's ttl: a lease or a claim left at different moments.
            ((0, Item::Int(ttl)), (_, Item::Int(other))) if !request.release => near(*ttl, *other),
            // A grant whose token came from the clock.
            ((1, _), _) if !request.release && !history.fixed => true,
            (a, b) => a == b,
        };
        if !agree {
            return Err(format!("answer {at} differs: {a:?} and {b:?}"));
        }
    }
    if !history.fixed {
        for (server, answers) in [("A", a), ("B", b)] {
            increasing_permits(history, answers)
                .map_err(|problem| format!("server {server}: {problem}"))?;
        }
        let granted = |answers: &[Answer]| -> Vec<i64> {
            history
                .requests
                .iter()
                .zip(answers)
                .filter_map(|(request, answer)| match answer {
                    (1, Item::Int(fence)) if !request.release => Some(*fence),
                    _ => None,
                })
                .collect()
        };
        if !ordered_alike(&granted(a), &granted(b)) {
            return Err("the granted fencing tokens are not ordered alike".to_owned());
        }
    }
    Ok(())
}

/// The fencing tokens `a` and `b`, of the same grants or entries on the two servers, are ordered
/// alike: every pair equal, below or above on both. (A clock's tokens differ between the servers,
/// but a reader's is the last one, a permit's above it, a retried grant's the same again.)
fn ordered_alike<T: Ord>(a: &[T], b: &[T]) -> bool {
    a.len() == b.len() && (0..a.len()).all(|i| (0..i).all(|j| a[j].cmp(&a[i]) == b[j].cmp(&b[i])))
}

/// The fencing tokens a value names, in order (a shared value's last one first).
fn fences(form: &Form<'_>) -> Vec<u64> {
    let tokens: Vec<&str> = match form {
        Form::Tombstone { fence, .. } | Form::Hold { fence, .. } => vec![fence],
        Form::Shared { last, entries, .. } => std::iter::once(*last)
            .chain(entries.iter().map(|entry| entry.fence))
            .collect(),
        Form::Absent | Form::Other(_) => Vec::new(),
    };
    tokens
        .into_iter()
        .map(|token| token.parse().unwrap_or(u64::MAX))
        .collect()
}

/// The permits granted for the first time (not a retried request's grant again) have strictly
/// increasing fencing tokens.
fn increasing_permits(history: &History, answers: &[Answer]) -> Result<(), String> {
    let mut granted: Vec<&str> = Vec::new();
    let mut largest = 0;
    for (at, (request, answer)) in history.requests.iter().zip(answers).enumerate() {
        if request.release || answer.0 != 1 {
            continue;
        }
        if granted.contains(&request.token.as_str()) {
            continue;
        }
        granted.push(&request.token);
        if let (Some(permits), Item::Int(fence)) = (request.permits, &answer.1) {
            if permits > 0 {
                if *fence <= largest {
                    return Err(format!(
                        "permit {at}'s fencing token {fence} is not above an earlier one's {largest}"
                    ));
                }
                largest = *fence;
            }
        }
    }
    Ok(())
}

fn report(
    history: &History,
    problem: &str,
    a: &[Answer],
    b: &[Answer],
    final_a: &Final,
    final_b: &Final,
) -> String {
    let mut text = format!(
        "history {seed} (replay: RELOCK_SHARED_GROUP_SEED={seed}): {problem}\n\
         A: all requests in one batch.lua call; B: one call per request\n\
         initial value: {initial:?}, PX {expiry} (fencing tokens {tokens})\n\
         requests, {releases} releases first:\n",
        seed = history.seed,
        initial = history.initial,
        expiry = history.expiry,
        tokens = if history.fixed {
            "from the key's last one"
        } else {
            "from the clock: compared by status only"
        },
        releases = history.releases(),
    );
    for (at, request) in history.requests.iter().enumerate() {
        let kind = if request.release {
            "release"
        } else {
            "acquire"
        };
        writeln!(
            text,
            "  {at:>2} {kind} {:<75} A {:?}  B {:?}",
            request.text,
            a.get(at),
            b.get(at)
        )
        .unwrap();
    }
    write!(
        text,
        "final A: {:?} (pttl {}, {} announced {:?})\nfinal B: {:?} (pttl {}, {} announced {:?})",
        final_a.value,
        final_a.pttl,
        final_a.announced,
        final_a.messages,
        final_b.value,
        final_b.pttl,
        final_b.announced,
        final_b.messages
    )
    .unwrap();
    text
}

/// History: a key in any of its forms — free, a tombstone with or without a known fencing token,
/// an exclusive hold, a value not relock's, and above all shared holders: readers or permits,
/// live, released, past their deadline, with or without a waiting writer's claim (live or run
/// out) and the `waited` mark — receives a burst of requests in one group-commit call: releases
/// of its holders (known fencing token or 0), of released holds and of holds it never had, some
/// retried; readers' and permits' acquisitions in both request forms, with the key's number of
/// permits or another, new hold tokens, retried ones of live holders, late ones of released holds,
/// the same new token twice; now and then an exclusive acquisition or a malformed hold token.
/// Server A runs the burst as one `batch.lua` call, server B as one call per request in the same
/// order: each request's answer, the key's final value and expiry, and whether a release was
/// announced must agree (times within 2 s: they come from different `TIME` readings; fencing
/// tokens exactly, except where the key knows no last token and they come from the clock — there
/// the tokens of the grants and of the final value must be ordered alike on both servers, and the
/// permits granted strictly increasing on each).
#[test]
fn shared_requests_of_one_key_in_one_call_answer_as_one_call_each() {
    run_bounded(LIMIT, || async {
        let (server_a, server_b) = (RedisServer::start(), RedisServer::start());
        let (mut a, mut b) = (server_a.connection().await, server_b.connection().await);
        let mut pubsub = Vec::new();
        for server in [&server_a, &server_b] {
            let mut connection = server.client().get_async_pubsub().await.unwrap();
            connection.psubscribe("*:released").await.unwrap();
            pubsub.push(connection);
        }
        let script = redis::Script::new(BATCH);
        let seeds: Vec<u64> = match std::env::var("RELOCK_SHARED_GROUP_SEED") {
            Ok(seed) => vec![seed.parse().expect("RELOCK_SHARED_GROUP_SEED is a number")],
            Err(_) => (FIRST_SEED..FIRST_SEED + HISTORIES).collect(),
        };
        let (mut requests, mut shared_kept, mut announcing) = (0, 0, 0);
        // How often each kind of request got each status: the histories reach every answer.
        let mut tally: std::collections::BTreeMap<(&str, i64), usize> = Default::default();
        for seed in seeds {
            let now = server_ms(&mut a).await;
            let history = draw(seed, now);
            let lock = lock_name(&unique_key("shared-group"));
            if let Some(initial) = &history.initial {
                for connection in [&mut a, &mut b] {
                    let _: () = connection
                        .pset_ex(&lock, initial, history.expiry)
                        .await
                        .expect("SET the initial value");
                }
            }
            let announced = (publishes(&mut a).await, publishes(&mut b).await);
            let releases = history.releases();
            let all: Vec<&Request> = history.requests.iter().collect();
            let answers_a = batch(&mut a, &script, &lock, releases, &all).await;
            let mut answers_b = Vec::new();
            for request in &all {
                let releases = usize::from(request.release);
                answers_b.extend(batch(&mut b, &script, &lock, releases, &[*request]).await);
            }
            let (mut final_a, mut final_b) = (
                final_state(&mut a, &lock, announced.0).await,
                final_state(&mut b, &lock, announced.1).await,
            );
            final_a.messages = messages(&mut a, &mut pubsub[0], &lock).await;
            final_b.messages = messages(&mut b, &mut pubsub[1], &lock).await;
            if let Err(problem) = compare_answers(&history, &answers_a, &answers_b)
                .and_then(|()| compare_values(&final_a, &final_b, history.fixed))
            {
                panic!(
                    "{}",
                    report(&history, &problem, &answers_a, &answers_b, &final_a, &final_b)
                );
            }
            requests += history.requests.len();
            announcing += usize::from(final_a.announced > 0);
            for (request, (status, _)) in history.requests.iter().zip(&answers_a) {
                let kind = match request.permits {
                    _ if request.release => "release",
                    Some(0) => "reader",
                    Some(_) => "permit",
                    None => "exclusive",
                };
                *tally.entry((kind, *status)).or_default() += 1;
            }
            if final_a
                .value
                .as_deref()
                .is_some_and(|value| value.starts_with('*'))
            {
                shared_kept += 1;
            }
        }
        eprintln!(
            "{requests} requests; {shared_kept} histories ended in the shared form, \
             {announcing} announced a release; (request, status): count {tally:?}"
        );
    });
}

/// History: permits P1, P2, P3 share k, and someone was refused (`waited` 1): the three release in
/// one group-commit call. The release channel must be published to once, with the count 3 (a
/// waiter subscribed to it wakes, and a `Locker` wakes three permit waiters), and each entry
/// becomes a released hold's. With `waited` 0 nobody waits: nothing is
/// published (an uncontended key costs no `PUBLISH`).
#[test]
fn releases_of_shared_holds_in_one_call_are_announced_only_when_someone_waited() {
    run_bounded(LIMIT, || async {
        let server = RedisServer::start();
        let mut admin = server.connection().await;
        let script = redis::Script::new(BATCH);
        let tokens: Vec<String> = (1..=3).map(|i| format!("{i:032x}")).collect();
        for waited in [true, false] {
            let lock = lock_name(&unique_key(&format!("shared-group-announce-{waited}")));
            let deadline = server_ms(&mut admin).await + LEASE;
            let mark = u8::from(waited);
            let mut held = format!("*{LAST} 3 0 {mark}");
            let mut released = held.clone();
            let mut requests = Vec::new();
            for (at, token) in tokens.iter().enumerate() {
                let fence = LAST - 2 + at as u64;
                write!(held, " {token} {deadline} {fence}").unwrap();
                write!(released, " {token} -{deadline} {fence}").unwrap();
                requests.push(release(token.clone(), fence));
            }
            let _: () = admin.pset_ex(&lock, &held, LEASE).await.unwrap();

            let mut subscriber = server.client().get_async_pubsub().await.unwrap();
            subscriber
                .subscribe(format!("{lock}:released"))
                .await
                .unwrap();
            let requests: Vec<&Request> = requests.iter().collect();
            let answers = batch(&mut admin, &script, &lock, requests.len(), &requests).await;
            assert_eq!(
                answers,
                vec![(1, Item::Int(0)); 3],
                "three live permits released: {held}"
            );
            let left: Option<String> = admin.get(&lock).await.unwrap();
            assert_eq!(left.as_deref(), Some(released.as_str()), "from {held}");

            let mut messages = subscriber.on_message();
            if waited {
                let message = tokio::time::timeout(Duration::from_secs(5), messages.next()).await;
                let Ok(Some(message)) = message else {
                    panic!("no release announced on {lock}:released though someone waited: {message:?}");
                };
                // One message for the call, counting the three returned permits: a client
                // wakes three of its permit waiters.
                assert_eq!(message.get_payload::<String>().unwrap(), "3");
                let more = tokio::time::timeout(Duration::from_millis(300), messages.next()).await;
                assert!(more.is_err(), "a second message: {more:?}");
            } else {
                let message =
                    tokio::time::timeout(Duration::from_millis(300), messages.next()).await;
                assert!(
                    message.is_err(),
                    "a release announced though nobody waited: {message:?}"
                );
            }
        }
    });
}
