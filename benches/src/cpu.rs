//! CPU time of this process and of the Redis server, to attribute the cost of an operation.

use std::time::Duration;

/// User + system CPU time this process has used so far.
pub(crate) fn process() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

/// User + system CPU time the server has used so far (`INFO cpu`).
pub(crate) async fn server(connection: &mut redis::aio::MultiplexedConnection) -> Duration {
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(connection)
        .await
        .expect("INFO cpu");
    let seconds: f64 = info
        .lines()
        .filter_map(|line| {
            let (field, value) = line.split_once(':')?;
            matches!(field, "used_cpu_sys" | "used_cpu_user")
                .then(|| value.trim().parse::<f64>().ok())
                .flatten()
        })
        .sum();
    Duration::from_secs_f64(seconds)
}

/// The sum of `server` over several servers (a cluster's masters).
pub(crate) async fn servers(connections: &mut [redis::aio::MultiplexedConnection]) -> Duration {
    let mut total = Duration::ZERO;
    for connection in connections {
        total += server(connection).await;
    }
    total
}
