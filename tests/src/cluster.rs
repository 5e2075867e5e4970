//! A private Redis Cluster: masters and replicas on free ports, for the cluster backend's tests.

use std::time::{Duration, Instant};

use crate::{RedisServer, INSTALL_HINT};

/// A Redis Cluster of private `redis-server` processes (`--cluster-node-timeout 1000`, no
/// persistence), killed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters` masters with `replicas` replicas each, creates the cluster with
    /// `redis-cli --cluster create`, and waits until every node reports `cluster_state:ok` and
    /// every replica's link to its master is up.
    ///
    /// # Panics
    ///
    /// When `redis-server` or `redis-cli` is missing or the cluster does not come up.
    pub fn start(masters: usize, replicas: usize) -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..masters * (1 + replicas))
            .map(|_| {
                RedisServer::start_with(
                    [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-node-timeout",
                        "1000",
                        "--cluster-config-file",
                        "{dir}/nodes.conf",
                    ]
                    .map(String::from)
                    .to_vec(),
                )
            })
            .collect();
        let output = std::process::Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(
                nodes
                    .iter()
                    .map(|node| format!("127.0.0.1:{}", node.port())),
            )
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .unwrap_or_else(|err| panic!("cannot run redis-cli ({err}). {INSTALL_HINT}"));
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let cluster = RedisCluster { nodes };
        let deadline = Instant::now() + Duration::from_secs(30);
        for node in &cluster.nodes {
            wait_for(deadline, "cluster_state:ok on every node", || {
                query(node.port(), &["CLUSTER", "INFO"]).contains("cluster_state:ok")
            });
            wait_for(deadline, "every replica in sync", || {
                let replication = query(node.port(), &["INFO", "replication"]);
                replication.contains("role:master") || replication.contains("master_link_status:up")
            });
        }
        cluster
    }

    /// `redis://127.0.0.1:<port>` of every node that is still running.
    pub fn seeds(&self) -> Vec<String> {
        self.live().map(RedisServer::url).collect()
    }

    fn live(&self) -> impl Iterator<Item = &RedisServer> {
        self.nodes.iter().filter(|node| node.is_running())
    }

    /// The ports of the running masters.
    pub fn master_ports(&self) -> Vec<u16> {
        self.live()
            .filter(|node| query(node.port(), &["INFO", "replication"]).contains("role:master"))
            .map(RedisServer::port)
            .collect()
    }

    /// The port of the master serving relock's keys for `key` (default prefix).
    pub fn master_of(&self, key: &str) -> u16 {
        let slot: u16 = query(
            self.any_port(),
            &["CLUSTER", "KEYSLOT", &format!("{{{key}}}")],
        )
        .trim()
        .parse()
        .expect("CLUSTER KEYSLOT answers a number");
        self.owner(slot).expect("every slot has a master")
    }

    fn any_port(&self) -> u16 {
        self.live().next().expect("a running node").port()
    }

    /// The master port `CLUSTER NODES` of a running node names for `slot`, if it is up.
    fn owner(&self, slot: u16) -> Option<u16> {
        let nodes = query(self.any_port(), &["CLUSTER", "NODES"]);
        nodes.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                return None;
            }
            let serves = fields[8..].iter().any(|range| {
                let (first, last) = range.split_once('-').unwrap_or((range, range));
                matches!((first.parse::<u16>(), last.parse::<u16>()), (Ok(first), Ok(last)) if first <= slot && slot <= last)
            });
            let port = fields[1].split(['@', ':']).nth(1)?.parse().ok()?;
            serves.then_some(port)
        })
    }

    /// SIGKILLs the master serving `key` and waits until one of its replicas has taken its slots
    /// and the cluster is `ok` again; returns how long the failover took.
    pub fn kill_master_of(&mut self, key: &str) -> Duration {
        let slot: u16 = query(
            self.any_port(),
            &["CLUSTER", "KEYSLOT", &format!("{{{key}}}")],
        )
        .trim()
        .parse()
        .expect("CLUSTER KEYSLOT answers a number");
        let port = self.owner(slot).expect("every slot has a master");
        let killed = Instant::now();
        self.nodes
            .iter_mut()
            .find(|node| node.port() == port)
            .expect("the master is one of ours")
            .kill();
        let deadline = Instant::now() + Duration::from_secs(30);
        wait_for(
            deadline,
            "a replica taking over the killed master's slots",
            || {
                self.owner(slot).is_some_and(|owner| owner != port)
                    && self.live().all(|node| {
                        query(node.port(), &["CLUSTER", "INFO"]).contains("cluster_state:ok")
                    })
            },
        );
        killed.elapsed()
    }

    /// Commands the masters have executed (`INFO commandstats`), but the harness's own.
    pub async fn commands_processed(&self) -> u64 {
        let mut total = 0;
        for port in self.master_ports() {
            if let Some(node) = self.nodes.iter().find(|node| node.port() == port) {
                total += node.commands_processed().await;
            }
        }
        total
    }

    /// Resets every master's command counts.
    pub async fn reset_stats(&self) {
        for port in self.master_ports() {
            if let Some(node) = self.nodes.iter().find(|node| node.port() == port) {
                node.reset_stats().await;
            }
        }
    }

    /// How many clients are subscribed to the sharded `channel`, over every running node.
    pub fn shard_subscribers(&self, channel: &str) -> u64 {
        self.live()
            .map(|node| {
                let reply = query(node.port(), &["PUBSUB", "SHARDNUMSUB", channel]);
                reply
                    .lines()
                    .nth(1)
                    .and_then(|count| count.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            })
            .sum()
    }
}

/// `redis-cli -p <port> <args>`'s output (the harness's own commands never go through relock).
fn query(port: u16, args: &[&str]) -> String {
    let output = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("cannot run redis-cli ({err}). {INSTALL_HINT}"));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn wait_for(deadline: Instant, what: &str, mut done: impl FnMut() -> bool) {
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
