//! A private Redis Sentinel deployment: a master, one replica and three sentinels on free ports,
//! for the Sentinel backend's tests.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::cluster::{query, wait_for};
use crate::{free_port, ping, RedisServer, INSTALL_HINT};

/// The name the sentinels monitor the master under.
pub const MASTER_NAME: &str = "relock-master";

/// A master, one replica and three sentinels (`redis-server <config> --sentinel`, quorum 2,
/// `down-after-milliseconds 1000`), every process on a free port, no persistence, killed on drop.
#[derive(Debug)]
pub struct RedisSentinel {
    /// The master first, then the replica; either may be the master after a failover.
    data: Vec<RedisServer>,
    sentinels: Vec<SentinelProcess>,
    /// Ports of stopped (SIGSTOP) data nodes: asked nothing, as they would never answer.
    paused: Vec<u16>,
}

impl RedisSentinel {
    /// Starts the master and the replica, waits for the replica's link to be up, then starts the
    /// sentinels and waits until each knows the replica and the two other sentinels.
    ///
    /// # Panics
    ///
    /// When `redis-server` or `redis-cli` is missing or the deployment does not come up.
    pub fn start() -> RedisSentinel {
        // A replica's first sync otherwise waits 5 s for more replicas to sync together.
        let fast_sync = || {
            [
                "--repl-diskless-sync",
                "yes",
                "--repl-diskless-sync-delay",
                "0",
            ]
            .map(String::from)
            .to_vec()
        };
        let master = RedisServer::start_with(fast_sync());
        let mut replica_args = fast_sync();
        replica_args.extend([
            "--replicaof".into(),
            "127.0.0.1".into(),
            master.port().to_string(),
        ]);
        let replica = RedisServer::start_with(replica_args);
        let deadline = Instant::now() + Duration::from_secs(20);
        wait_for(deadline, "the replica's link to the master", || {
            query(replica.port(), &["INFO", "replication"]).contains("master_link_status:up")
        });
        let sentinels = (0..3)
            .map(|_| SentinelProcess::start(master.port()))
            .collect();
        let deployment = RedisSentinel {
            data: vec![master, replica],
            sentinels,
            paused: Vec::new(),
        };
        for sentinel in &deployment.sentinels {
            wait_for(
                deadline,
                "every sentinel to know the replica and the others",
                || {
                    let info = query(sentinel.port, &["SENTINEL", "MASTER", MASTER_NAME]);
                    let field = |name: &str| {
                        let mut lines = info.lines();
                        lines.find(|line| line.trim() == name)?;
                        lines.next().map(|value| value.trim().to_owned())
                    };
                    field("num-slaves").as_deref() == Some("1")
                        && field("num-other-sentinels").as_deref() == Some("2")
                },
            );
        }
        deployment
    }

    /// `redis://127.0.0.1:<port>` of each sentinel.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|sentinel| format!("redis://127.0.0.1:{}", sentinel.port))
            .collect()
    }

    /// A locker builder on this deployment: `Locker::builder().sentinel(urls, MASTER_NAME)`.
    pub fn builder(&self) -> relock::LockerBuilder {
        relock::Locker::builder().sentinel(self.sentinel_urls(), MASTER_NAME)
    }

    /// The data node that answers `ROLE` as a master.
    pub fn master(&self) -> &RedisServer {
        self.data
            .iter()
            .filter(|node| node.is_running() && !self.paused.contains(&node.port()))
            .find(|node| query(node.port(), &["ROLE"]).starts_with("master"))
            .expect("a running master")
    }

    /// The port of the data node that is not on `port` (the replica, when `port` is the master).
    fn other_data_node(&self, port: u16) -> u16 {
        self.data
            .iter()
            .find(|node| node.port() != port)
            .expect("a replica")
            .port()
    }

    /// SIGKILLs the master, then waits until a majority of the sentinels name the replica as the
    /// master and it answers `ROLE` as one; returns how long that took.
    pub fn kill_master(&mut self) -> Duration {
        let old = self.master().port();
        let killed = Instant::now();
        self.data
            .iter_mut()
            .find(|node| node.port() == old)
            .expect("the master is one of ours")
            .kill();
        let new = self.other_data_node(old);
        let deadline = Instant::now() + Duration::from_secs(30);
        wait_for(deadline, "the sentinels to promote the replica", || {
            let naming = self
                .sentinels
                .iter()
                .filter(|sentinel| {
                    let named = query(
                        sentinel.port,
                        &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME],
                    );
                    named.lines().nth(1).map(str::trim) == Some(&new.to_string())
                })
                .count();
            naming * 2 > self.sentinels.len() && query(new, &["ROLE"]).starts_with("master")
        });
        killed.elapsed()
    }

    /// `SENTINEL FAILOVER` on the first sentinel: a graceful failover, the old master alive (and
    /// still answering `ROLE` as a master until the sentinels reconfigure it as a replica).
    /// Returns once the replica answers `ROLE` as the master.
    pub fn graceful_failover(&mut self) -> Duration {
        let old = self.master().port();
        let new = self.other_data_node(old);
        let started = Instant::now();
        let answer = query(
            self.sentinels[0].port,
            &["SENTINEL", "FAILOVER", MASTER_NAME],
        );
        assert!(answer.contains("OK"), "SENTINEL FAILOVER: {answer}");
        let deadline = Instant::now() + Duration::from_secs(30);
        wait_for(deadline, "the replica to be promoted", || {
            query(new, &["ROLE"]).starts_with("master")
        });
        started.elapsed()
    }

    /// The ports of the two data nodes, running or not, master first at the start.
    pub fn data_ports(&self) -> Vec<u16> {
        self.data.iter().map(RedisServer::port).collect()
    }

    /// The port of each sentinel.
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels
            .iter()
            .map(|sentinel| sentinel.port)
            .collect()
    }

    /// SIGSTOPs the master, then waits until a majority of the sentinels name the replica as the
    /// master and it answers `ROLE` as one: the stopped node's port and how long that took. Its
    /// connections stay open and unanswered until [`RedisSentinel::heal`].
    pub fn pause_master(&mut self) -> (u16, Duration) {
        let old = self.master().port();
        let stopped = Instant::now();
        self.data
            .iter()
            .find(|node| node.port() == old)
            .expect("the master is one of ours")
            .pause();
        self.paused.push(old);
        let new = self.other_data_node(old);
        let deadline = Instant::now() + Duration::from_secs(30);
        wait_for(deadline, "the sentinels to promote the replica", || {
            self.named_master_by_majority() == Some(new)
                && query(new, &["ROLE"]).starts_with("master")
        });
        (old, stopped.elapsed())
    }

    /// The master port a majority of the sentinels name, if they agree.
    fn named_master_by_majority(&self) -> Option<u16> {
        let named: Vec<Option<u16>> = self
            .sentinels
            .iter()
            .map(|sentinel| {
                let reply = query(
                    sentinel.port,
                    &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME],
                );
                reply
                    .lines()
                    .nth(1)
                    .and_then(|port| port.trim().parse().ok())
            })
            .collect();
        named.iter().copied().flatten().find(|port| {
            named.iter().filter(|n| **n == Some(*port)).count() * 2 > self.sentinels.len()
        })
    }

    /// Brings the data node that is not the master back after [`kill_master`](Self::kill_master)
    /// (restarted, empty) or [`pause_master`](Self::pause_master) (continued), then waits until it
    /// is the master's replica with its link up and every sentinel sees it as a replica that is
    /// up, so that the next failover can promote it.
    ///
    /// The node is made a replica at once (`REPLICAOF`), as the sentinels would do: they only
    /// notice a returning master's role with their next `INFO` to it, up to 10 s later, and a
    /// continued old master would meanwhile serve the clients still connected to it.
    pub fn heal(&mut self) {
        for port in std::mem::take(&mut self.paused) {
            self.data
                .iter()
                .find(|node| node.port() == port)
                .expect("the node is one of ours")
                .resume();
        }
        for node in &mut self.data {
            if !node.is_running() {
                node.restart();
            }
        }
        // The sentinels may still change their minds (a failover they had begun ends on the
        // other node): follow whichever master a majority names until everything agrees.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = String::new();
        loop {
            if let Some(master) = self.named_master_by_majority() {
                let replica = self.other_data_node(master);
                let info = query(replica, &["INFO", "replication"]);
                let linked =
                    info.contains("role:slave") && info.contains(&format!("master_port:{master}"));
                if !linked {
                    query(replica, &["REPLICAOF", "127.0.0.1", &master.to_string()]);
                }
                let replies: Vec<String> = self
                    .sentinels
                    .iter()
                    .map(|sentinel| query(sentinel.port, &["SENTINEL", "REPLICAS", MASTER_NAME]))
                    .collect();
                if linked
                    && info.contains("master_link_status:up")
                    && query(master, &["ROLE"]).starts_with("master")
                    && replies.iter().all(|reply| lists_replica(reply, replica))
                {
                    return;
                }
                last = format!(
                    "master {master}, replica {replica}:\n{info}\nSENTINEL REPLICAS:\n{}",
                    replies.join("\n---\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for the old master to be back as a replica the sentinels \
                 see; last seen: {last}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `redis://127.0.0.1:<port>` of each sentinel, in the reverse order.
    pub fn sentinel_urls_reversed(&self) -> Vec<String> {
        let mut urls = self.sentinel_urls();
        urls.reverse();
        urls
    }
}

/// One `redis-server --sentinel` process with a generated configuration file.
#[derive(Debug)]
struct SentinelProcess {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl SentinelProcess {
    fn start(master_port: u16) -> SentinelProcess {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "relock-sentinel-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create the sentinel's directory");
        let port = free_port();
        let config = dir.join("sentinel.conf");
        std::fs::write(
            &config,
            format!(
                "port {port}\n\
                 bind 127.0.0.1\n\
                 dir {dir}\n\
                 logfile sentinel.log\n\
                 sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n\
                 sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                 sentinel failover-timeout {MASTER_NAME} 2000\n\
                 sentinel parallel-syncs {MASTER_NAME} 1\n",
                dir = dir.display(),
            ),
        )
        .expect("write the sentinel's configuration");
        let child = Command::new("redis-server")
            .arg(&config)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start redis-server ({err}). {INSTALL_HINT}"));
        let mut sentinel = SentinelProcess { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ping(port) {
            if let Ok(Some(status)) = sentinel.child.try_wait() {
                let log =
                    std::fs::read_to_string(sentinel.dir.join("sentinel.log")).unwrap_or_default();
                panic!("redis-server --sentinel exited with {status}: {log}\n{INSTALL_HINT}");
            }
            assert!(
                Instant::now() < deadline,
                "the sentinel on port {port} did not answer PING within 10 s. {INSTALL_HINT}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        sentinel
    }
}

impl Drop for SentinelProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether a `SENTINEL REPLICAS` reply (as `redis-cli` prints it) lists the replica on `port` as
/// up (flags exactly `slave`).
fn lists_replica(reply: &str, port: u16) -> bool {
    let lines: Vec<&str> = reply.lines().map(str::trim).collect();
    lines.split(|line| *line == "name").any(|record| {
        let field = |name: &str| {
            record
                .iter()
                .position(|line| *line == name)
                .and_then(|at| record.get(at + 1))
                .copied()
        };
        field("port") == Some(&port.to_string()) && field("flags") == Some("slave")
    })
}
