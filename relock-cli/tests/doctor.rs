//! `relock doctor` against private `redis-server`s: healthy, and misconfigured one way at a
//! time, each failure seen on the line that names it, with the exit code.

use std::process::{Command, Output, Stdio};

use relock::redis;
use relock_tests::{RedisServer, TestCa};
use serde_json::Value;

const RELOCK: &str = env!("CARGO_BIN_EXE_relock");

/// `relock <args>` (no environment configuration), run off the runtime's thread.
async fn relock(args: &[&str]) -> Output {
    let mut command = Command::new(RELOCK);
    command
        .args(args)
        .env_remove("REDIS_URL")
        .env_remove("REDIS_CLUSTER")
        .env_remove("REDIS_SENTINEL")
        .env_remove("REDIS_SENTINEL_MASTER")
        .stdin(Stdio::null());
    tokio::task::spawn_blocking(move || command.output().expect("run relock"))
        .await
        .expect("join the child")
}

fn text(output: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn assert_code(output: &Output, expected: i32) {
    assert_eq!(output.status.code(), Some(expected), "{}", text(output));
}

/// The checks of a `--json` run by name: (status, found, fix).
fn checks(output: &Output) -> Vec<(String, String, String, Option<String>)> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let check: Value =
                serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}"));
            (
                check["check"].as_str().expect("check").to_owned(),
                check["status"].as_str().expect("status").to_owned(),
                check["found"].as_str().expect("found").to_owned(),
                check["fix"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

/// The check named `name`: its status, found and fix.
fn check(output: &Output, name: &str) -> (String, String, Option<String>) {
    checks(output)
        .into_iter()
        .find(|(check, ..)| check == name)
        .map(|(_, status, found, fix)| (status, found, fix))
        .unwrap_or_else(|| panic!("no `{name}` check in\n{}", text(output)))
}

async fn config_set(port: u16, name: &str, value: &str) {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("CONFIG")
        .arg("SET")
        .arg(name)
        .arg(value)
        .query_async::<()>(&mut connection)
        .await
        .unwrap();
}

const SINGLE_CHECKS: [&str; 11] = [
    "connection",
    "version",
    "eviction",
    "persistence",
    "replicas",
    "acl",
    "clocks",
    "round trip",
    "pub/sub",
    "locks",
    "lock",
];

#[tokio::test]
async fn a_healthy_server_passes_every_check_and_exits_0() {
    let server = RedisServer::start();
    let out = relock(&["--url", &server.url(), "doctor"]).await;
    assert_code(&out, 0);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), SINGLE_CHECKS.len() + 1, "{stdout}");
    for (line, name) in lines.iter().zip(SINGLE_CHECKS) {
        assert!(line.starts_with(&format!("✓ {name} ")), "{line}");
    }
    assert_eq!(
        lines.last().copied(),
        Some("relock doctor: all 11 checks passed")
    );

    let out = relock(&["--url", &server.url(), "--json", "doctor"]).await;
    assert_code(&out, 0);
    let checks = checks(&out);
    let names: Vec<&str> = checks.iter().map(|(name, ..)| name.as_str()).collect();
    assert_eq!(names, SINGLE_CHECKS);
    for (name, status, found, fix) in &checks {
        assert_eq!(status, "ok", "{name}: {found}");
        assert!(!found.is_empty(), "{name}");
        assert_eq!(fix, &None, "{name}");
    }
    let (_, found, _) = check(&out, "persistence");
    assert!(
        found.starts_with("none: a restart frees every lock"),
        "{found}"
    );
    let (_, found, _) = check(&out, "pub/sub");
    assert!(found.contains("delivered"), "{found}");
}

#[tokio::test]
async fn an_evicting_server_fails_the_eviction_check() {
    let server = RedisServer::start();
    config_set(server.port(), "maxmemory", "100mb").await;
    for policy in ["allkeys-lru", "volatile-ttl"] {
        config_set(server.port(), "maxmemory-policy", policy).await;
        let out = relock(&["--url", &server.url(), "--json", "doctor"]).await;
        assert_code(&out, 5);
        let (status, found, fix) = check(&out, "eviction");
        assert_eq!(status, "failure", "{found}");
        assert!(
            found.contains(&format!("maxmemory-policy {policy}")),
            "{found}"
        );
        assert!(fix.unwrap().contains("maxmemory-policy noeviction"));
    }
    // Text: the line says what was found and what to change.
    let out = relock(&["--url", &server.url(), "doctor"]).await;
    assert_code(&out, 5);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = stdout
        .lines()
        .find(|line| line.starts_with("✗ eviction"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        line.contains("→ CONFIG SET maxmemory-policy noeviction"),
        "{line}"
    );
    let summary = stdout.lines().last().unwrap_or_default();
    // Also the `lock` line once connecting refuses an evicting server.
    assert!(
        summary.starts_with("relock doctor: ") && summary.contains("failure"),
        "{summary}"
    );

    config_set(server.port(), "maxmemory-policy", "noeviction").await;
    let out = relock(&["--url", &server.url(), "--json", "doctor"]).await;
    assert_eq!(check(&out, "eviction").0, "ok");
}

#[tokio::test]
async fn waiting_for_replicas_a_master_lacks_fails_replicas_and_lock() {
    let server = RedisServer::start();
    config_set(server.port(), "min-replicas-to-write", "1").await;
    let out = relock(&["--url", &server.url(), "--json", "doctor"]).await;
    assert_code(&out, 5);
    let (status, found, fix) = check(&out, "replicas");
    assert_eq!(status, "failure", "{found}");
    assert!(
        found.contains("min-replicas-to-write 1 with 0 replica(s)"),
        "{found}"
    );
    assert!(fix.unwrap().contains("lower min-replicas-to-write"));
    let (status, found, _) = check(&out, "lock");
    assert_eq!(status, "failure", "{found}");
    assert!(found.contains("NOREPLICAS"), "{found}");
}

#[tokio::test]
async fn a_user_without_the_documented_rules_fails_the_acl_and_pub_sub_checks() {
    let server = RedisServer::start();
    let documented = relock::acl_rules("relock");
    // Tried command by command (the user may not dry-run), and through ACL DRYRUN.
    for (user, extra) in [("plain", ""), ("dryrun", " +acl|dryrun")] {
        let rules = documented.replace(" +evalsha", "") + extra;
        let url = server.acl_user(user, "pw", &rules).await;
        let out = relock(&["--url", &url, "--json", "doctor"]).await;
        assert_code(&out, 5);
        let (status, found, fix) = check(&out, "acl");
        assert_eq!(status, "failure", "{found}");
        assert!(found.contains("+evalsha"), "{found}");
        let how = if extra.is_empty() {
            "each command tried"
        } else {
            "ACL DRYRUN"
        };
        assert!(found.contains(how), "{found}");
        assert!(!found.contains("pw"), "{found}");
        assert_eq!(
            fix.unwrap().split(" (").next(),
            Some(&*format!("ACL SETUSER {user} +evalsha"))
        );
        assert_eq!(check(&out, "lock").0, "failure");
    }
    // Keys and channels outside the user's patterns.
    let rules = documented.replace("~relock:* &relock:* ", "~other:* &other:* ");
    let url = server.acl_user("elsewhere", "pw", &rules).await;
    let out = relock(&["--url", &url, "--json", "doctor"]).await;
    assert_code(&out, 5);
    let (status, found, fix) = check(&out, "acl");
    assert_eq!(status, "failure", "{found}");
    let fix = fix.unwrap();
    assert!(
        fix.starts_with("ACL SETUSER elsewhere ~relock:* &relock:*"),
        "{fix}"
    );
    let (status, found, _) = check(&out, "pub/sub");
    assert_eq!(status, "failure", "{found}");
    assert!(found.contains("SUBSCRIBE failed"), "{found}");
}

/// The least privilege docs/production.md documents works: only what such a user may not read
/// (configuration, the key space) is left as warnings.
#[tokio::test]
async fn a_least_privileged_user_passes_the_acl_check_with_warnings_for_what_it_may_not_read() {
    let server = RedisServer::start();
    let url = server
        .acl_user("relock", "pw", &relock::acl_rules("relock"))
        .await;
    let out = relock(&["--url", &url, "--json", "doctor"]).await;
    assert_code(&out, 4);
    let (status, found, _) = check(&out, "acl");
    assert_eq!(status, "ok", "{found}");
    assert!(found.contains("without +scan"), "{found}");
    for name in ["lock", "pub/sub", "clocks", "round trip", "version"] {
        assert_eq!(check(&out, name).0, "ok", "{name}");
    }
    for name in ["eviction", "replicas", "locks"] {
        let (status, found, _) = check(&out, name);
        assert_eq!(status, "warning", "{name}: {found}");
        assert!(found.contains("refused"), "{found}");
    }
}

#[tokio::test]
async fn holds_tombstones_and_unknown_values_are_counted() {
    let server = RedisServer::start();
    let locker = server.locker().await;
    let _a = locker.lock("order:1").await.unwrap();
    let _b = locker.lock("order:2").await.unwrap();
    let mut connection = server.connection().await;
    let token = "0123456789abcdef0123456789abcdef";
    for (key, value) in [
        ("relock:{order:3}", format!("-1796163228861428 {token}")),
        ("relock:{order:4}", "an older layout".to_owned()),
        // Not a lock key: never counted.
        ("relock:{order:5}:fence", "12".to_owned()),
        ("other:{order:6}", "x".to_owned()),
    ] {
        redis::cmd("SET")
            .arg(key)
            .arg(value)
            .query_async::<()>(&mut connection)
            .await
            .unwrap();
    }
    let out = relock(&["--url", &server.url(), "--json", "doctor"]).await;
    assert_code(&out, 4);
    let (status, found, _) = check(&out, "locks");
    assert_eq!(status, "warning", "{found}");
    assert!(found.contains("2 held, 1 released"), "{found}");
    assert!(
        found.contains("1 value(s) relock did not write (e.g. relock:{order:4})"),
        "{found}"
    );
}

#[tokio::test]
async fn over_tls_as_an_acl_user_with_a_private_ca() {
    let ca = TestCa::new("relock doctor CA");
    let server = RedisServer::start_tls(&ca);
    let rules = format!(
        "{} {} +config|get +role",
        relock::acl_rules("relock"),
        relock::ACL_LIST_RULES
    );
    server.acl_user("operator", "s3cret", &rules).await;
    let ca_file = std::env::temp_dir().join(format!("relock-doctor-ca-{}.pem", std::process::id()));
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let ca_arg = ca_file.display().to_string();
    let url = format!("rediss://operator:s3cret@127.0.0.1:{}", server.tls_port());
    let out = relock(&["--url", &url, "--tls-ca-cert", &ca_arg, "--json", "doctor"]).await;
    assert_code(&out, 0);
    let (_, found, _) = check(&out, "connection");
    assert_eq!(found, "1 server, as user `operator`, over TLS");
    assert!(!text(&out).contains("s3cret"));

    // The plain port with a TLS URL: not reached at all, and the message says why.
    let url = format!("rediss://operator:s3cret@127.0.0.1:{}", server.port());
    let args = [
        "--url",
        &url,
        "--tls-ca-cert",
        &ca_arg,
        "--timeout",
        "300ms",
        "doctor",
    ];
    let out = relock(&args).await;
    assert_code(&out, 3);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(stderr.contains("is the server TLS?"), "{stderr}");
    assert!(!stderr.contains("s3cret"), "{stderr}");
    let _ = std::fs::remove_file(ca_file);
}

#[tokio::test]
async fn a_url_naming_a_replica_fails_the_connection_check() {
    let master = RedisServer::start();
    let replica = RedisServer::start_replica_of(&master);
    let out = relock(&["--url", &replica.url(), "--json", "doctor"]).await;
    assert_code(&out, 5);
    let (status, found, fix) = check(&out, "connection");
    assert_eq!(status, "failure", "{found}");
    assert!(found.contains("answers ROLE as a replica"), "{found}");
    assert_eq!(fix.as_deref(), Some("point --url at the master"));
    assert_eq!(check(&out, "lock").0, "failure");

    // The master reports its replica, which is checked too. The replica's link is up; the
    // master lists it (ROLE) once it has acknowledged the first sync.
    let mut connection = master.connection().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let role: redis::Value = redis::cmd("ROLE")
            .query_async(&mut connection)
            .await
            .unwrap();
        match role {
            redis::Value::Array(items) if matches!(items.get(2), Some(redis::Value::Array(replicas)) if !replicas.is_empty()) => {
                break
            }
            _ => assert!(
                std::time::Instant::now() < deadline,
                "the master never listed its replica"
            ),
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let out = relock(&["--url", &master.url(), "--json", "doctor"]).await;
    assert_code(&out, 0);
    let (_, found, _) = check(&out, "connection");
    assert_eq!(
        found,
        "1 server and 1 replica(s) it reports, as user `default`"
    );
    let (_, found, _) = check(&out, "clocks");
    assert!(found.starts_with("the 2 nodes agree"), "{found}");
}

#[tokio::test]
async fn an_unreachable_server_exits_3() {
    let url = format!("redis://127.0.0.1:{}", relock_tests::free_port());
    let out = relock(&["--url", &url, "doctor"]).await;
    assert_code(&out, 3);
    assert!(out.stdout.is_empty(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
}

/// A cluster of masters without replicas, `cluster-require-full-coverage yes` (the default):
/// one lost master stops every lock, a warning; with `no` everything passes. Pub/sub is sharded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_coverage_with_lone_masters_warns() {
    let cluster = relock_tests::RedisCluster::start(3, 0);
    let seeds = cluster.seeds().join(",");
    let out = relock(&["--cluster", &seeds, "--json", "doctor"]).await;
    assert_code(&out, 4);
    let (status, found, fix) = check(&out, "coverage");
    assert_eq!(status, "warning", "{found}");
    assert!(found.contains("without a replica"), "{found}");
    assert!(fix.unwrap().contains("cluster-require-full-coverage no"));
    let (_, found, _) = check(&out, "connection");
    assert!(
        found.starts_with("a cluster of 3 master(s) and 0 replica(s)"),
        "{found}"
    );
    let (status, found, _) = check(&out, "pub/sub");
    assert_eq!(status, "ok", "{found}");
    assert!(found.starts_with("SSUBSCRIBE/SPUBLISH"), "{found}");
    let (status, found, _) = check(&out, "acl");
    assert_eq!(status, "ok", "{found}");
    assert!(found.contains("the 16 commands"), "{found}");
    assert!(!found.contains("not checked"), "{found}");

    for port in cluster.master_ports() {
        config_set(port, "cluster-require-full-coverage", "no").await;
    }
    let out = relock(&["--cluster", &seeds, "--json", "doctor"]).await;
    assert_code(&out, 0);
    assert_eq!(check(&out, "coverage").0, "ok");

    // A master that answers nothing (stopped) is named as not reached.
    let mut cluster = cluster;
    let stopped = cluster.master_ports()[0];
    cluster.pause(stopped);
    let args = [
        "--cluster",
        &seeds,
        "--timeout",
        "300ms",
        "--json",
        "doctor",
    ];
    let out = relock(&args).await;
    assert_code(&out, 5);
    let (status, found, _) = check(&out, "connection");
    assert_eq!(status, "failure", "{found}");
    assert!(
        found.contains(&format!("not reached: 127.0.0.1:{stopped}")),
        "{found}"
    );
    cluster.resume(stopped);
}

/// Behind Sentinel (`down-after-milliseconds 1000`): a master that does not stop writing when
/// cut off from its replica warns, and so does one that stops only after 10 s; within the
/// failover time everything passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_replica_settings_against_the_failover_time() {
    let deployment = relock_tests::RedisSentinel::start();
    let sentinels = deployment.sentinel_urls().join(",");
    let master = relock_tests::MASTER_NAME;
    let args = [
        "--sentinel",
        &sentinels,
        "--master-name",
        master,
        "--json",
        "doctor",
    ];
    let out = relock(&args).await;
    assert_code(&out, 4);
    let (status, found, fix) = check(&out, "replicas");
    assert_eq!(status, "warning", "{found}");
    assert!(found.contains("min-replicas-to-write 0"), "{found}");
    assert!(found.contains("down-after-milliseconds 1000"), "{found}");
    assert!(fix.unwrap().contains("min-replicas-to-write 1"));
    let (_, found, _) = check(&out, "connection");
    assert!(
        found.contains("1 replica(s), named by 3 sentinel(s)"),
        "{found}"
    );

    let port = deployment.master().port();
    config_set(port, "min-replicas-to-write", "1").await;
    config_set(port, "min-replicas-max-lag", "10").await;
    let out = relock(&args).await;
    assert_code(&out, 4);
    let (status, found, _) = check(&out, "replicas");
    assert_eq!(status, "warning", "{found}");
    assert!(found.contains("only after 10 s"), "{found}");

    config_set(port, "min-replicas-max-lag", "1").await;
    let out = relock(&args).await;
    assert_code(&out, 0);
    assert_eq!(check(&out, "replicas").0, "ok");

    // A sentinel that does not answer is named; the others still lead to the master.
    let closed = format!("redis://127.0.0.1:{}", relock_tests::free_port());
    let with_closed = format!("{sentinels},{closed}");
    let args = [
        "--sentinel",
        &with_closed,
        "--master-name",
        master,
        "--json",
        "doctor",
    ];
    let out = relock(&args).await;
    assert_code(&out, 4);
    let (status, found, _) = check(&out, "connection");
    assert_eq!(status, "warning", "{found}");
    assert!(found.contains("named by 3 sentinel(s)"), "{found}");
    assert!(
        found.contains(&format!(
            "no answer from sentinel {}",
            &closed["redis://".len()..]
        )),
        "{found}"
    );
}
