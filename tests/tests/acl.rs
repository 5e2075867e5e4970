//! relock as a Redis ACL user: the least-privilege rules docs/production.md documents are the ones
//! `relock::acl_rules` gives (the conformance suite runs as that user: `conformance::redis_acl`),
//! and a user without one of them, or with a wrong password, gets an error that says what is
//! missing.

use std::time::Duration;

use relock::{Error, Locker};
use relock_tests::{unique_key, RedisServer, ACL_USER};

const TEST_LIMIT: Duration = Duration::from_secs(30);

/// The message of a backend error (its own `Display` is only "lock backend failed").
fn backend_message(err: Error) -> String {
    match err {
        Error::Backend(err) => err.to_string(),
        other => panic!("expected a backend error, got {other:?}"),
    }
}

/// A locker logging in as a user with `rules`.
async fn locker_with(server: &RedisServer, user: &str, rules: &str) -> Locker {
    let url = server.acl_user(user, "password", rules).await;
    Locker::builder().url(url).build().expect("build a locker")
}

/// `rules` without `rule`.
fn without(rules: &str, rule: &str) -> String {
    let kept: Vec<&str> = rules.split_whitespace().filter(|r| *r != rule).collect();
    assert_ne!(
        kept.len(),
        rules.split_whitespace().count(),
        "{rule} not in {rules}"
    );
    kept.join(" ")
}

#[test]
fn the_production_page_documents_the_rules_the_tests_use() {
    let page = include_str!("../../docs/production.md");
    let setuser = format!(
        "ACL SETUSER {ACL_USER} reset on >CHANGE-ME {}",
        relock::acl_rules("relock")
    );
    let lines: Vec<&str> = page.lines().map(str::trim).collect();
    assert!(
        lines.contains(&setuser.as_str()),
        "docs/production.md must show, on a line of its own:\n{setuser}"
    );
    for extra in [
        relock::ACL_LIST_RULES,
        relock::ACL_CLUSTER_RULES,
        relock::ACL_REPLICAS_RULES,
    ] {
        let line = format!("ACL SETUSER {ACL_USER} {extra}");
        assert!(
            lines.contains(&line.as_str()),
            "docs/production.md must show, on a line of its own:\n{line}"
        );
    }
}

/// Replica-acknowledged acquisitions as a user with the documented rules plus
/// `ACL_REPLICAS_RULES`; without `+wait`, the error names it.
#[test]
fn a_user_waiting_for_replicas_needs_wait_and_is_told_so() {
    relock_tests::run_bounded(TEST_LIMIT, || async {
        let server = RedisServer::start();
        let _replica = RedisServer::start_replica_of(&server);
        let rules = format!(
            "{} {}",
            relock::acl_rules("relock"),
            relock::ACL_REPLICAS_RULES
        );
        for (user, rules, allowed) in [
            ("with-wait", rules.clone(), true),
            ("without-wait", without(&rules, "+wait"), false),
        ] {
            let url = server.acl_user(user, "password", &rules).await;
            let locker = Locker::builder()
                .url(url)
                .replicas(1, Duration::from_secs(2))
                .build()
                .expect("build a locker");
            let result = locker.lock(unique_key("acl-replicas")).await;
            if allowed {
                let guard = result.expect("an acknowledged lock as the documented user");
                guard.release().await.expect("release");
            } else {
                let message = backend_message(result.expect_err("WAIT refused"));
                assert!(message.to_lowercase().contains("wait"), "{message}");
                assert!(message.contains("ACL"), "{message}");
            }
        }
    });
}

#[test]
fn a_user_without_evalsha_is_told_which_command_to_grant() {
    relock_tests::run_bounded(TEST_LIMIT, || async {
        let server = RedisServer::start();
        let rules = without(&relock::acl_rules("relock"), "+evalsha");
        let locker = locker_with(&server, "no-evalsha", &rules).await;
        let err = locker.lock(unique_key("acl")).await.expect_err("refused");
        let message = backend_message(err);
        assert!(message.contains("`+evalsha`"), "{message}");
        assert!(message.contains("ACL user"), "{message}");
        assert!(message.contains("docs/production.md"), "{message}");
    });
}

#[test]
fn a_user_without_a_command_the_scripts_call_is_told_which() {
    relock_tests::run_bounded(TEST_LIMIT, || async {
        let server = RedisServer::start();
        let rules = without(&relock::acl_rules("relock"), "+publish");
        let url = server.acl_user("no-publish", "password", &rules).await;
        let locker = Locker::builder()
            .url(url.clone())
            .build()
            .expect("build a locker");
        let key = unique_key("acl");
        let guard = locker.lock(&key).await.expect("lock");
        // Only the release of a hold that has refused someone is published.
        let other = Locker::builder()
            .url(url.clone())
            .build()
            .expect("build a locker");
        assert!(other.try_lock(&key).await.expect("try_lock").is_none());
        let err = guard
            .release()
            .await
            .expect_err("the release cannot publish");
        let message = backend_message(err);
        assert!(message.contains("`+publish`"), "{message}");
        assert!(message.contains("docs/production.md"), "{message}");
    });
}

#[test]
fn a_user_without_the_key_pattern_is_told_to_grant_it() {
    relock_tests::run_bounded(TEST_LIMIT, || async {
        let server = RedisServer::start();
        let rules = without(&relock::acl_rules("relock"), "~relock:*");
        let locker = locker_with(&server, "no-keys", &rules).await;
        let err = locker.lock(unique_key("acl")).await.expect_err("refused");
        let message = backend_message(err);
        assert!(message.contains("`~<prefix>:*`"), "{message}");
        assert!(message.contains("docs/production.md"), "{message}");
    });
}

#[test]
fn a_user_for_another_prefix_is_told_to_grant_the_key_pattern() {
    relock_tests::run_bounded(TEST_LIMIT, || async {
        let server = RedisServer::start();
        let url = server
            .acl_user("billing", "password", &relock::acl_rules("billing"))
            .await;
        let allowed = Locker::builder()
            .url(&url)
            .prefix("billing")
            .build()
            .expect("build");
        allowed
            .lock(unique_key("acl"))
            .await
            .expect("its own prefix")
            .release()
            .await
            .expect("release");
        let other_prefix = Locker::builder().url(url.clone()).build().expect("build");
        let err = other_prefix
            .lock(unique_key("acl"))
            .await
            .expect_err("refused");
        let message = backend_message(err);
        assert!(message.contains("`~<prefix>:*`"), "{message}");
    });
}

#[test]
fn a_wrong_password_is_reported_as_refused_credentials() {
    relock_tests::run_bounded(TEST_LIMIT, || async {
        let server = RedisServer::start();
        server
            .acl_user(ACL_USER, "right", &relock::acl_rules("relock"))
            .await;
        let url = format!("redis://{ACL_USER}:wrong@127.0.0.1:{}", server.port());
        let err = Locker::connect(&url).await.expect_err("refused");
        let message = backend_message(err);
        assert!(message.contains("refused the credentials"), "{message}");
        assert!(
            !message.contains("wrong@"),
            "the password leaked: {message}"
        );
    });
}

#[test]
fn a_cluster_user_with_the_documented_rules_locks_waits_and_lists() {
    use futures_util::TryStreamExt;

    relock_tests::run_bounded(Duration::from_secs(60), || async {
        let cluster = relock_tests::RedisCluster::start(3, 0);
        let rules = format!(
            "{} {} {}",
            relock::acl_rules("relock"),
            relock::ACL_LIST_RULES,
            relock::ACL_CLUSTER_RULES
        );
        let mut seeds = Vec::new();
        for seed in cluster.seeds() {
            let client = redis::Client::open(seed.as_str()).expect("a seed url");
            let mut admin = client
                .get_multiplexed_async_connection()
                .await
                .expect("connect to a node");
            let mut setuser = redis::cmd("ACL");
            setuser
                .arg("SETUSER")
                .arg(ACL_USER)
                .arg("reset")
                .arg("on")
                .arg(">password");
            for rule in rules.split_whitespace() {
                setuser.arg(rule);
            }
            setuser
                .query_async::<()>(&mut admin)
                .await
                .expect("ACL SETUSER");
            seeds.push(seed.replace("redis://", &format!("redis://{ACL_USER}:password@")));
        }
        let locker = |seeds: Vec<String>| {
            Locker::builder()
                .cluster(seeds)
                .build()
                .expect("build a cluster locker")
        };
        let (holder, waiter) = (locker(seeds.clone()), locker(seeds));
        let key = unique_key("acl-cluster");
        let guard = holder
            .lock(&key)
            .lease(Duration::from_millis(300))
            .await
            .expect("lock");
        let waiting = tokio::spawn({
            let key = key.clone();
            async move { waiter.lock(&key).wait(Duration::from_secs(10)).await }
        });
        while cluster.shard_subscribers(&relock_tests::release_channel(&key)) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(guard.is_held(), "renewed past its lease");
        let listed: Vec<relock::LockInfo> = holder
            .list("acl-cluster:*")
            .try_collect()
            .await
            .expect("list");
        assert!(listed.iter().any(|info| info.key == key));
        assert!(holder.inspect(&key).await.expect("inspect").is_some());
        let released = std::time::Instant::now();
        guard.release().await.expect("release");
        let second = waiting
            .await
            .expect("the waiter")
            .expect("woken by the release");
        assert!(released.elapsed() < Duration::from_secs(2));
        assert!(holder.force_release(&key).await.expect("force release"));
        drop(second);
    });
}
