//! The Redis test harness: private `redis-server` processes that tests may flush, restart, kill
//! or count commands on, and helpers to run one test body against every backend.
//!
//! A test that needs Redis and cannot start it **fails** with an install hint; nothing skips.

#![warn(missing_docs)]

mod backend;
mod bounded;
pub mod chaos;
mod cluster;
#[cfg(doctest)]
mod docs;
mod proxy;
mod sentinel;
mod tls;

pub use backend::{acl_user_rules, BackendKind, TestBackend, ACL_PASSWORD, ACL_USER};
pub use bounded::{bounded, run_bounded};
pub use cluster::{RedisCluster, SlotMove};
pub use proxy::Proxy;
pub use sentinel::{RedisSentinel, MASTER_NAME};
pub use tls::{self_signed, TestCa, TestCert};

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const INSTALL_HINT: &str =
    "relock's tests start private `redis-server` processes: install Redis 7 \
(`apt-get install redis-server`, `brew install redis`) so that `redis-server` is on PATH";

/// A `redis-server` process of this test's own: free port, no persistence, a temporary
/// directory, killed (and the directory removed) on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    /// Extra `redis-server` arguments (a cluster node's).
    extra: Vec<String>,
    /// The TLS port and the CA certificate (PEM) clients trust, for a server started with
    /// [`start_tls`](Self::start_tls).
    tls: Option<(u16, String)>,
}

/// How a TLS test server is set up: [`RedisServer::start_tls`].
#[derive(Debug, Clone)]
pub struct TlsServerConfig {
    /// The server's certificate and key.
    pub server: TestCert,
    /// What clients should trust (PEM), and what the server checks client certificates against.
    pub ca_pem: String,
    /// Whether the server requires a client certificate (`--tls-auth-clients yes`).
    pub require_client_cert: bool,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers `PING`.
    ///
    /// # Panics
    ///
    /// When `redis-server` is missing or does not come up, with a message saying how to install it.
    pub fn start() -> RedisServer {
        RedisServer::start_with(Vec::new())
    }

    /// Starts a replica of `master` (`--replicaof`) and waits until its link to the master is up
    /// and the first sync is done.
    ///
    /// # Panics
    ///
    /// When `redis-server` is missing or the replica does not sync within 10 s.
    pub fn start_replica_of(master: &RedisServer) -> RedisServer {
        let replica = RedisServer::start_with(vec![
            "--replicaof".to_owned(),
            "127.0.0.1".to_owned(),
            master.port().to_string(),
        ]);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut connection = replica
            .client()
            .get_connection()
            .expect("connect to the replica");
        loop {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query(&mut connection)
                .expect("INFO replication on the replica");
            if info.contains("master_link_status:up") {
                return replica;
            }
            assert!(
                Instant::now() < deadline,
                "the replica on port {} did not sync with port {} within 10 s:\n{info}",
                replica.port(),
                master.port()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts a server with extra `redis-server` arguments; `{dir}` in one stands for the server's
    /// directory.
    pub(crate) fn start_with(extra: Vec<String>) -> RedisServer {
        RedisServer::start_with_files(extra, &[], None)
    }

    /// Starts a server that also listens for TLS on a port of its own ([`tls_url`](Self::tls_url))
    /// with a server certificate for `127.0.0.1` and `localhost` that `ca` issued. The plain port
    /// stays open on 127.0.0.1 for the harness's assertions ([`connection`](Self::connection)).
    pub fn start_tls(ca: &TestCa) -> RedisServer {
        RedisServer::start_tls_with(TlsServerConfig {
            server: ca.issue(&["127.0.0.1", "localhost"]),
            ca_pem: ca.pem(),
            require_client_cert: false,
        })
    }

    /// Starts a server that also listens for TLS, set up as `config` says.
    pub fn start_tls_with(config: TlsServerConfig) -> RedisServer {
        let tls_port = free_port();
        let auth_clients = if config.require_client_cert {
            "yes"
        } else {
            "no"
        };
        let extra = [
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            "{dir}/server.crt",
            "--tls-key-file",
            "{dir}/server.key",
            "--tls-ca-cert-file",
            "{dir}/ca.crt",
            "--tls-auth-clients",
            auth_clients,
        ]
        .map(str::to_owned)
        .to_vec();
        let files = [
            ("server.crt", config.server.cert_pem.as_str()),
            ("server.key", config.server.key_pem.as_str()),
            ("ca.crt", config.ca_pem.as_str()),
        ];
        RedisServer::start_with_files(extra, &files, Some((tls_port, config.ca_pem.clone())))
    }

    fn start_with_files(
        extra: Vec<String>,
        files: &[(&str, &str)],
        tls: Option<(u16, String)>,
    ) -> RedisServer {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "relock-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create the test server's directory");
        for (name, contents) in files {
            std::fs::write(dir.join(name), contents).expect("write a file for the test server");
        }
        let cluster = extra.iter().any(|arg| arg == "--cluster-enabled");
        let mut server = RedisServer {
            child: None,
            port: 0,
            extra: Vec::new(),
            dir,
            tls,
        };
        server.extra = extra
            .into_iter()
            .map(|arg| arg.replace("{dir}", &server.dir.display().to_string()))
            .collect();
        // A free port can be taken by another test's server before this one binds it (and a
        // cluster node also binds port + 10000): try again on another port.
        let mut attempt = 0;
        loop {
            server.port = if cluster {
                free_cluster_port()
            } else {
                free_port()
            };
            match server.try_spawn() {
                Ok(()) => return server,
                Err(failure) if failure.contains("Address already in use") && attempt < 8 => {
                    attempt += 1;
                    let _ = std::fs::remove_file(server.dir.join("nodes.conf"));
                    let _ = std::fs::remove_file(server.dir.join("redis.log"));
                }
                Err(failure) => panic!("{failure}"),
            }
        }
    }

    fn spawn(&mut self) {
        // A restart needs its own port back; another process may hold it for a moment.
        let mut attempt = 0;
        loop {
            match self.try_spawn() {
                Ok(()) => return,
                Err(failure) if failure.contains("Address already in use") && attempt < 20 => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(failure) => panic!("{failure}"),
            }
        }
    }

    /// Starts the process and waits for `PING`; the server's own words when it exits instead.
    fn try_spawn(&mut self) -> Result<(), String> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--logfile", "redis.log"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start redis-server ({err}). {INSTALL_HINT}"));
        self.child = Some(child);
        self.wait_until_up()
    }

    fn wait_until_up(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if ping(self.port) {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let mut stderr = String::new();
                if let Some(pipe) = self.child.as_mut().and_then(|c| c.stderr.take()) {
                    for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                        stderr.push_str(&line);
                        stderr.push('\n');
                    }
                }
                let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
                self.child = None;
                return Err(format!(
                    "redis-server exited with {status}: {stderr}{log}\n{INSTALL_HINT}"
                ));
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING within 10 s. {INSTALL_HINT}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `rediss://127.0.0.1:<TLS port>`, for a server started with [`start_tls`](Self::start_tls).
    ///
    /// # Panics
    ///
    /// When the server has no TLS port.
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.tls_port())
    }

    /// The TLS port of a server started with [`start_tls`](Self::start_tls).
    ///
    /// # Panics
    ///
    /// When the server has no TLS port.
    pub fn tls_port(&self) -> u16 {
        self.tls.as_ref().expect("a server started with TLS").0
    }

    /// The CA certificate (PEM) that a client of a [`start_tls`](Self::start_tls) server trusts.
    ///
    /// # Panics
    ///
    /// When the server has no TLS port.
    pub fn tls_ca_pem(&self) -> &str {
        &self.tls.as_ref().expect("a server started with TLS").1
    }

    /// Creates (or resets) the ACL user `name` with `password` and the ACL `rules` (e.g.
    /// [`relock::acl_rules`]), and returns the server's URL logging in as that user.
    pub async fn acl_user(&self, name: &str, password: &str, rules: &str) -> String {
        let mut command = redis::cmd("ACL");
        command
            .arg("SETUSER")
            .arg(name)
            .arg("reset")
            .arg("on")
            .arg(format!(">{password}"));
        for rule in rules.split_whitespace() {
            command.arg(rule);
        }
        command
            .query_async::<()>(&mut self.connection().await)
            .await
            .unwrap_or_else(|err| panic!("ACL SETUSER {name} {rules}: {err}"));
        format!("redis://{name}:{password}@127.0.0.1:{}", self.port)
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the server process is running (not killed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server (SIGKILL) and waits for it to exit; the port stays reserved for `restart`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server's process (SIGSTOP): it keeps its connections open and answers nothing,
    /// as a server stalled by the machine it runs on. [`RedisServer::resume`] continues it.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Continues a process stopped by [`RedisServer::pause`] (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: libc::c_int) {
        let child = self.child.as_ref().expect("the server is running");
        let pid = libc::pid_t::try_from(child.id()).expect("a pid fits pid_t");
        // SAFETY: `kill` only sends a signal to our own child process.
        let sent = unsafe { libc::kill(pid, signal) };
        assert_eq!(sent, 0, "kill({pid}, {signal}) failed");
    }

    /// Starts the server again on the same port (empty: nothing is persisted).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// A plain client for assertions and fault injection (`DEL`, `FLUSHALL`, `INFO`).
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("valid url")
    }

    /// A locker on this server with a connection of its own (`Locker::connect`).
    pub async fn locker(&self) -> relock::Locker {
        relock::Locker::connect(&self.url())
            .await
            .expect("connect to the test server")
    }

    /// A new multiplexed connection to the server.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        self.client()
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test server")
    }

    /// Commands the server has executed, by `INFO commandstats` (lowercase names, e.g. `evalsha`),
    /// summed over all commands except the `info` and `config` calls the harness makes itself and
    /// a client's connection and topology commands (`client`, `hello`, `cluster`).
    pub async fn commands_processed(&self) -> u64 {
        command_stats(&mut self.connection().await)
            .await
            .into_iter()
            // Redis 7 names subcommands `config|resetstat`, `client|setinfo`. `cluster|slots`:
            // a cluster client reading the topology (relock's routing reads it every 10 s).
            .filter(|(name, _)| {
                !matches!(
                    name.split('|').next(),
                    Some("info" | "config" | "client" | "hello" | "cluster")
                )
            })
            .map(|(_, calls)| calls)
            .sum()
    }

    /// Resets `INFO commandstats`.
    pub async fn reset_stats(&self) {
        let mut connection = self.connection().await;
        redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async::<()>(&mut connection)
            .await
            .expect("CONFIG RESETSTAT");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `INFO commandstats` as (command, calls) pairs.
pub async fn command_stats(
    connection: &mut redis::aio::MultiplexedConnection,
) -> Vec<(String, u64)> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(connection)
        .await
        .expect("INFO commandstats");
    info.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("cmdstat_")?;
            let (name, stats) = rest.split_once(':')?;
            let calls = stats.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .collect()
}

/// The script calls (`EVALSHA` and `EVAL`) the server has run since its counts were last reset.
pub async fn script_calls(connection: &mut redis::aio::MultiplexedConnection) -> u64 {
    command_stats(connection)
        .await
        .into_iter()
        .filter(|(name, _)| matches!(name.as_str(), "evalsha" | "eval"))
        .map(|(_, calls)| calls)
        .sum()
}

/// The channel relock publishes on when it releases `key` (default prefix).
pub fn release_channel(key: &str) -> String {
    format!("relock:{{{key}}}:released")
}

/// How many clients are subscribed to `channel` (`PUBSUB NUMSUB`).
pub async fn subscribers(connection: &mut redis::aio::MultiplexedConnection, channel: &str) -> u64 {
    let (_, count): (String, u64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query_async(connection)
        .await
        .expect("PUBSUB NUMSUB");
    count
}

/// Returns once a client is subscribed to the release channel of `key` (a waiter on it, confirmed
/// by `PUBSUB NUMSUB`), polling every 2 ms; fails the test after 10 s.
pub async fn until_subscribed(connection: &mut redis::aio::MultiplexedConnection, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while subscribers(connection, &release_channel(key)).await == 0 {
        assert!(
            Instant::now() < deadline,
            "the waiter never subscribed to the release channel"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A numeric field of `INFO <section>`, such as `total_reads_processed` in `stats`.
pub async fn info_number(
    connection: &mut redis::aio::MultiplexedConnection,
    section: &str,
    field: &str,
) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query_async(connection)
        .await
        .expect("INFO");
    info.lines()
        .find_map(|line| {
            line.strip_prefix(field)?
                .strip_prefix(':')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("INFO {section} has no numeric field {field}"))
}

fn ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}

/// A port whose cluster bus port (port + 10000) is a valid port too, both free right now.
fn free_cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port <= 55535 && TcpListener::bind((Ipv4Addr::LOCALHOST, port + 10000)).is_ok() {
            return port;
        }
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("bind an ephemeral port")
}

/// A key no other test uses, even across runs against one server.
pub fn unique_key(name: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{name}:{}:{}:{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    )
}
