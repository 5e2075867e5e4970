// Names bound by patterns in the parameter list can be placeholders, and the body still sees
// every one of them.
struct Path<T>(T);

struct Point {
    x: i32,
    y: i32,
}

// `ref s` is one of the patterns under test.
#[allow(clippy::toplevel_ref_arg)]
#[relock::locked("p:{user_id}:{x}:{y2}:{a}:{b}:{n}:{s.len()}:{whole.0}")]
async fn patterns(
    Path(user_id): Path<u64>,
    Point { x, y: y2 }: Point,
    (a, b): (u8, u8),
    mut n: u32,
    ref s: String,
    whole @ (_, _): (u8, u8),
    _: (),
) -> relock::Result<String> {
    n += 1;
    Ok(format!("{user_id}:{x}:{y2}:{a}:{b}:{n}:{s}:{}", whole.1))
}

#[tokio::main(flavor = "current_thread")]
pub(crate) async fn main() {
    relock::set_global(relock::Locker::in_memory());
    let out = patterns(
        Path(1),
        Point { x: 2, y: 3 },
        (4, 5),
        6,
        "s".to_owned(),
        (8, 9),
        (),
    )
    .await
    .unwrap();
    assert_eq!(out, "1:2:3:4:5:7:s:9");
}
