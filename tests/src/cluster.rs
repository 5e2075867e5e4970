//! A private Redis Cluster: masters and replicas on free ports, for the cluster backend's tests.

use std::time::{Duration, Instant};

use crate::{RedisServer, INSTALL_HINT};

/// A Redis Cluster of private `redis-server` processes (`--cluster-node-timeout 1000`, no
/// persistence), killed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    /// Ports of stopped (SIGSTOP) nodes: asked nothing, as they would never answer.
    paused: Vec<u16>,
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
        let cluster = RedisCluster {
            nodes,
            paused: Vec::new(),
        };
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
        self.nodes
            .iter()
            .filter(|node| node.is_running() && !self.paused.contains(&node.port()))
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
        owner_in(&query(self.any_port(), &["CLUSTER", "NODES"]), slot)
    }

    /// SIGKILLs the master serving `key` and waits until one of its replicas has taken its slots
    /// and the cluster is `ok` again; returns how long the failover took.
    pub fn kill_master_of(&mut self, key: &str) -> Duration {
        let slot = self.slot_of(key);
        let port = self.owner(slot).expect("every slot has a master");
        self.kill_master_on(port, slot, port)
    }

    /// SIGKILLs the master on `port` (which serves `slot`, and tells clients it is at
    /// `announced`: see [`RedisCluster::announce_port`]) and waits until one of its replicas has
    /// taken `slot` and the cluster is `ok` again; returns how long the failover took.
    pub fn kill_master_on(&mut self, port: u16, slot: u16, announced: u16) -> Duration {
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
                self.owner(slot)
                    .is_some_and(|owner| owner != port && owner != announced)
                    && self.live().all(|node| {
                        query(node.port(), &["CLUSTER", "INFO"]).contains("cluster_state:ok")
                    })
            },
        );
        killed.elapsed()
    }

    /// Makes the node on `port` tell clients it is at `announced` (`cluster-announce-port`, as a
    /// node behind a proxy or a NAT does) and waits until every running node names it there in
    /// `CLUSTER NODES`. Clients then connect to `announced` (a [`crate::Proxy`] to `port`, say);
    /// the harness's own commands that look a slot's master up get `announced` too.
    pub fn announce_port(&self, port: u16, announced: u16) {
        expect_ok(
            port,
            &[
                "CONFIG",
                "SET",
                "cluster-announce-port",
                &announced.to_string(),
            ],
        );
        let id = node_id(port);
        let at = format!(":{announced}@");
        let deadline = Instant::now() + Duration::from_secs(15);
        wait_for(deadline, "every node to learn the announced port", || {
            self.live().all(|node| {
                query(node.port(), &["CLUSTER", "NODES"])
                    .lines()
                    .any(|line| line.starts_with(&id) && line.contains(&at))
            })
        });
    }

    /// Stops (SIGSTOP) the master serving `key` and waits until a replica took over its slots and
    /// the cluster is ok again: the stopped node's port and how long the failover took. Its
    /// connections stay open and unanswered; [`RedisCluster::resume`] continues it (as a replica).
    pub fn pause_master_of(&mut self, key: &str) -> (u16, Duration) {
        let slot = self.slot_of(key);
        let port = self.owner(slot).expect("every slot has a master");
        let paused = Instant::now();
        self.nodes
            .iter()
            .find(|node| node.port() == port)
            .expect("the master is one of ours")
            .pause();
        self.paused.push(port);
        let deadline = Instant::now() + Duration::from_secs(30);
        wait_for(
            deadline,
            "a replica taking over the stopped master's slots",
            || {
                self.owner(slot).is_some_and(|owner| owner != port)
                    && self.live().all(|node| {
                        query(node.port(), &["CLUSTER", "INFO"]).contains("cluster_state:ok")
                    })
            },
        );
        (port, paused.elapsed())
    }

    /// The port of a replica of the master on port `master` (its first, as `INFO replication`
    /// lists them).
    pub fn replica_of(&self, master: u16) -> u16 {
        let info = query(master, &["INFO", "replication"]);
        info.lines()
            .find(|line| line.starts_with("slave0:"))
            .and_then(|line| {
                line.split(',')
                    .find_map(|field| field.strip_prefix("port="))
            })
            .and_then(|port| port.trim().parse().ok())
            .unwrap_or_else(|| panic!("the master on port {master} has no replica:\n{info}"))
    }

    /// Stops (SIGSTOP) the node on `port` without waiting for anything: a stalled replica, say.
    /// [`RedisCluster::resume`] continues it.
    pub fn pause(&mut self, port: u16) {
        self.nodes
            .iter()
            .find(|node| node.port() == port)
            .expect("the node is one of ours")
            .pause();
        self.paused.push(port);
    }

    /// Continues a node stopped by [`RedisCluster::pause_master_of`] or [`RedisCluster::pause`].
    pub fn resume(&mut self, port: u16) {
        self.paused.retain(|&paused| paused != port);
        self.nodes
            .iter()
            .find(|node| node.port() == port)
            .expect("the node is one of ours")
            .resume();
    }

    /// The ports of every node, running or not.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisServer::port).collect()
    }

    /// Brings back every node [`kill_master_of`](Self::kill_master_of) killed (restarted with its
    /// cluster configuration, empty) and every node stopped (continued), then waits until each
    /// is a replica with its link up and every node reports `cluster_state:ok`, so that the next
    /// failover has a replica to promote.
    pub fn heal(&mut self) {
        let mut back = Vec::new();
        for node in &mut self.nodes {
            if !node.is_running() {
                node.restart();
                back.push(node.port());
            }
        }
        for port in std::mem::take(&mut self.paused) {
            self.nodes
                .iter()
                .find(|node| node.port() == port)
                .expect("the node is one of ours")
                .resume();
            back.push(port);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for port in back {
            wait_for(deadline, "a node brought back to sync as a replica", || {
                let info = query(port, &["INFO", "replication"]);
                info.contains("role:slave") && info.contains("master_link_status:up")
            });
        }
        for node in &self.nodes {
            wait_for(deadline, "cluster_state:ok on every node", || {
                query(node.port(), &["CLUSTER", "INFO"]).contains("cluster_state:ok")
            });
        }
    }

    /// The slot of relock's keys for `key` (default prefix), as `CLUSTER KEYSLOT` computes it.
    pub fn slot_of(&self, key: &str) -> u16 {
        query(
            self.any_port(),
            &["CLUSTER", "KEYSLOT", &format!("{{{key}}}")],
        )
        .trim()
        .parse()
        .expect("CLUSTER KEYSLOT answers a number")
    }

    /// The port of the master serving `slot`.
    pub fn master_of_slot(&self, slot: u16) -> u16 {
        self.owner(slot).expect("every slot has a master")
    }

    /// Starts moving `slot` to the master on port `to`, as `redis-cli --cluster reshard` does:
    /// `CLUSTER SETSLOT <slot> IMPORTING <source-id>` on the target, then
    /// `CLUSTER SETSLOT <slot> MIGRATING <target-id>` on the source. From here until
    /// [`RedisCluster::finish_slot_move`], the source answers for the keys it still has and
    /// redirects the others with `ASK`.
    pub fn begin_slot_move(&self, slot: u16, to: u16) -> SlotMove {
        let from = self.master_of_slot(slot);
        assert_ne!(from, to, "slot {slot} is already served by port {to}");
        let slot_move = SlotMove {
            slot,
            from,
            to,
            from_id: node_id(from),
            to_id: node_id(to),
        };
        let slot_arg = slot.to_string();
        expect_ok(
            to,
            &[
                "CLUSTER",
                "SETSLOT",
                &slot_arg,
                "IMPORTING",
                &slot_move.from_id,
            ],
        );
        expect_ok(
            from,
            &[
                "CLUSTER",
                "SETSLOT",
                &slot_arg,
                "MIGRATING",
                &slot_move.to_id,
            ],
        );
        slot_move
    }

    /// `MIGRATE`s every key the source still has in the moving slot to the target
    /// (`CLUSTER GETKEYSINSLOT`, then `MIGRATE host port "" 0 5000 KEYS ...`); returns the keys
    /// moved.
    pub fn migrate_keys(&self, slot_move: &SlotMove) -> Vec<String> {
        let mut moved = Vec::new();
        loop {
            let keys: Vec<String> = query(
                slot_move.from,
                &[
                    "CLUSTER",
                    "GETKEYSINSLOT",
                    &slot_move.slot.to_string(),
                    "100",
                ],
            )
            .lines()
            .filter(|line| !line.is_empty())
            .map(String::from)
            .collect();
            if keys.is_empty() {
                return moved;
            }
            let port = slot_move.to.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            args.extend(keys.iter().map(String::as_str));
            let reply = query(slot_move.from, &args);
            // NOKEY: the keys expired between GETKEYSINSLOT and MIGRATE.
            assert!(
                matches!(reply.trim(), "OK" | "NOKEY"),
                "MIGRATE of {keys:?} from port {} to port {} failed: {reply}",
                slot_move.from,
                slot_move.to
            );
            moved.extend(keys);
        }
    }

    /// Ends a slot move: `CLUSTER SETSLOT <slot> NODE <target-id>` on the target, the source and
    /// every other master, then waits until every running node names the target as the slot's
    /// master.
    pub fn finish_slot_move(&self, slot_move: SlotMove) {
        let slot_arg = slot_move.slot.to_string();
        let mut order = vec![slot_move.to, slot_move.from];
        order.extend(
            self.master_ports()
                .into_iter()
                .filter(|port| *port != slot_move.to && *port != slot_move.from),
        );
        for port in order {
            expect_ok(
                port,
                &["CLUSTER", "SETSLOT", &slot_arg, "NODE", &slot_move.to_id],
            );
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        wait_for(
            deadline,
            "every node to agree on the moved slot's master",
            || {
                self.live().all(|node| {
                    owner_in(&query(node.port(), &["CLUSTER", "NODES"]), slot_move.slot)
                        == Some(slot_move.to)
                })
            },
        );
    }

    /// Moves `slot` to the master on port `to` in one go: [`RedisCluster::begin_slot_move`],
    /// [`RedisCluster::migrate_keys`], [`RedisCluster::finish_slot_move`].
    pub fn move_slot(&self, slot: u16, to: u16) {
        let slot_move = self.begin_slot_move(slot, to);
        self.migrate_keys(&slot_move);
        self.finish_slot_move(slot_move);
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

/// A slot being moved from one master to another (see [`RedisCluster::begin_slot_move`]).
#[derive(Debug)]
pub struct SlotMove {
    /// The slot.
    pub slot: u16,
    /// The port of the master it moves from.
    pub from: u16,
    /// The port of the master it moves to.
    pub to: u16,
    from_id: String,
    to_id: String,
}

/// The master port a `CLUSTER NODES` reply names for `slot`, if that master is up.
fn owner_in(nodes: &str, slot: u16) -> Option<u16> {
    nodes.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
            return None;
        }
        // Ranges are `first-last` or `slot`; `[slot->-id]` / `[slot-<-id]` mark a slot moving.
        let serves = fields[8..].iter().any(|range| {
            let (first, last) = range.split_once('-').unwrap_or((range, range));
            matches!((first.parse::<u16>(), last.parse::<u16>()), (Ok(first), Ok(last)) if first <= slot && slot <= last)
        });
        let port = fields[1].split(['@', ':']).nth(1)?.parse().ok()?;
        serves.then_some(port)
    })
}

/// The cluster node id of the node on `port`.
fn node_id(port: u16) -> String {
    let id = query(port, &["CLUSTER", "MYID"]).trim().to_owned();
    assert_eq!(id.len(), 40, "CLUSTER MYID on port {port} answered {id:?}");
    id
}

/// Runs a command that must answer `OK`.
fn expect_ok(port: u16, args: &[&str]) {
    let reply = query(port, args);
    assert_eq!(
        reply.trim(),
        "OK",
        "{args:?} on port {port} answered {reply:?}"
    );
}

/// `redis-cli -p <port> <args>`'s output (the harness's own commands never go through relock).
pub(crate) fn query(port: u16, args: &[&str]) -> String {
    let output = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("cannot run redis-cli ({err}). {INSTALL_HINT}"));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub(crate) fn wait_for(deadline: Instant, what: &str, mut done: impl FnMut() -> bool) {
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
