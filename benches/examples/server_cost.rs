//! Scratch: server-side µs per call of each contender's commands.
use relock_tests::{command_stats, RedisServer};
#[tokio::main(flavor = "current_thread")]
async fn main() {
    for which in ["raw", "relock"] {
        let server = RedisServer::start();
        let mut conn = server.connection().await;
        let release = redis::Script::new("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0");
        let locker = relock::Locker::connect(&server.url()).await.unwrap();
        for i in 0..20000 {
            let key = format!("p:{i}");
            if which == "raw" {
                let token = format!("{:032x}", rand::random::<u128>());
                let _: Option<String> = redis::cmd("SET")
                    .arg(&key)
                    .arg(&token)
                    .arg("NX")
                    .arg("PX")
                    .arg(30000)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                let _: i64 = release
                    .key(&key)
                    .arg(&token)
                    .invoke_async(&mut conn)
                    .await
                    .unwrap();
            } else {
                locker.lock(&key).await.unwrap().release().await.unwrap();
            }
        }
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn)
            .await
            .unwrap();
        let total: f64 = info
            .lines()
            .filter_map(|l| l.split("usec=").nth(1))
            .filter_map(|r| r.split(',').next()?.parse::<f64>().ok())
            .sum();
        println!(
            "{which}: total server usec {total:.0} => {:.2} µs/pair",
            total / 20000.0
        );
        for l in info.lines().filter(|l| l.starts_with("cmdstat_")) {
            println!("  {l}");
        }
        let _ = command_stats;
    }
}
