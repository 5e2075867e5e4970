//! The deployment under check: every Redis node relock's keys may live on (masters and the
//! replicas that may replace them), found the way the library finds them, each with a
//! connection of its own; and the failover time the deployment announces.

use std::collections::HashMap;
use std::time::Duration;

use relock::redis::aio::MultiplexedConnection;
use relock::redis::{self, AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, Value};
use relock::redis::{IntoConnectionInfo, RedisError};

use crate::args::Global;
use crate::failure::{tls_hint, Failure};
use crate::url::redacted;

/// Whether a node serves writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Master,
    Replica,
}

/// A Redis node with a connection of its own.
pub(crate) struct Node {
    /// `host:port`, as messages name it.
    pub(crate) addr: String,
    pub(crate) role: Role,
    pub(crate) client: redis::Client,
    pub(crate) connection: MultiplexedConnection,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("addr", &self.addr)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// How the deployment is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    Single,
    Cluster,
    Sentinel,
}

/// The time a failed master takes to be replaced, as the deployment configures it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failover {
    /// The setting it comes from (`down-after-milliseconds`, `cluster-node-timeout`).
    pub(crate) setting: &'static str,
    pub(crate) millis: u64,
}

/// What one sentinel said about the master.
#[derive(Debug, Clone)]
pub(crate) struct SentinelAnswer {
    /// The sentinel's `host:port`.
    pub(crate) addr: String,
    /// The master's `host:port` it names, or why it named none.
    pub(crate) master: Result<String, String>,
}

/// Everything the checks look at.
#[derive(Debug)]
pub(crate) struct Deployment {
    pub(crate) kind: Kind,
    pub(crate) nodes: Vec<Node>,
    /// Nodes named by the deployment that could not be reached: `host:port` and why.
    pub(crate) unreachable: Vec<(String, String)>,
    /// What each sentinel said, for the connection check.
    pub(crate) sentinels: Vec<SentinelAnswer>,
    pub(crate) failover: Option<Failover>,
    /// The ACL user the connections log in as.
    pub(crate) user: String,
    /// Masters of a cluster without a replica.
    pub(crate) lone_masters: Vec<String>,
    pub(crate) tls: bool,
    pub(crate) timeout: Duration,
    /// On a cluster: a RESP3 cluster client for sharded pub/sub, as the library's subscriber.
    pub(crate) sharded: Option<Sharded>,
}

/// A cluster client whose pushes (sharded messages) arrive in `pushes`.
pub(crate) struct Sharded {
    pub(crate) client: redis::cluster::ClusterClient,
    pub(crate) pushes: tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>,
}

impl std::fmt::Debug for Sharded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sharded").finish_non_exhaustive()
    }
}

impl Deployment {
    pub(crate) fn masters(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|node| node.role == Role::Master)
    }

    /// Finds and connects to every node; fails (exit code 3) only when none can be reached.
    pub(crate) async fn discover(global: &Global) -> Result<Deployment, Failure> {
        let certificates = certificates(global)?;
        let connector = Connector {
            certificates,
            timeout: global.timeout,
        };
        match (&global.cluster[..], &global.sentinel[..]) {
            ([], []) => single(&connector, &global.url).await,
            ([], sentinels) => {
                let name = global.master_name.as_deref().unwrap_or_default();
                sentinel(&connector, sentinels, name).await
            }
            (seeds, _) => cluster(&connector, seeds).await,
        }
    }
}

struct Connector {
    #[cfg(feature = "tls")]
    certificates: Option<redis::TlsCertificates>,
    #[cfg(not(feature = "tls"))]
    certificates: Option<()>,
    timeout: Duration,
}

impl Connector {
    /// A client for `info` and a connection through it, or why not (one line).
    async fn connect(
        &self,
        info: ConnectionInfo,
    ) -> Result<(redis::Client, MultiplexedConnection), String> {
        let tls = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
        let client = self.client(info).map_err(|err| err.to_string())?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        match client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(connection) => Ok((client, connection)),
            Err(err) => Err(explain(&err, tls)),
        }
    }

    /// The cluster client for sharded pub/sub; `None` when the seeds don't make one (the
    /// pub/sub check then says so).
    fn sharded(&self, seeds: &[String]) -> Option<Sharded> {
        let (pushed, pushes) = tokio::sync::mpsc::unbounded_channel();
        let builder = redis::cluster::ClusterClientBuilder::new(seeds.to_vec())
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(pushed)
            .connection_timeout(self.timeout)
            .response_timeout(self.timeout);
        #[cfg(feature = "tls")]
        let builder = match &self.certificates {
            Some(certificates) => builder.certs(certificates.clone()),
            None => builder,
        };
        let client = builder.build().ok()?;
        Some(Sharded { client, pushes })
    }

    fn client(&self, info: ConnectionInfo) -> Result<redis::Client, RedisError> {
        #[cfg(feature = "tls")]
        if let Some(certificates) = &self.certificates {
            return redis::Client::build_with_tls(info, certificates.clone());
        }
        redis::Client::open(info)
    }
}

/// A connection error in one line, with the TLS hint when the symptom fits.
pub(crate) fn explain(err: &RedisError, tls: bool) -> String {
    let message = err.to_string();
    format!("{message}{}", tls_hint(tls, &message))
}

#[cfg(feature = "tls")]
fn certificates(global: &Global) -> Result<Option<redis::TlsCertificates>, Failure> {
    let read = |path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|err| Failure::usage(format!("cannot read {}: {err}", path.display())))
    };
    let root_cert = global.tls_ca_cert.as_deref().map(read).transpose()?;
    let client_tls = match (&global.tls_cert, &global.tls_key) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read(cert)?,
            client_key: read(key)?,
        }),
        _ => None,
    };
    Ok(
        (root_cert.is_some() || client_tls.is_some()).then_some(redis::TlsCertificates {
            client_tls,
            root_cert,
        }),
    )
}

#[cfg(not(feature = "tls"))]
fn certificates(_: &Global) -> Result<Option<()>, Failure> {
    Ok(None)
}

fn parse(url: &str) -> Result<ConnectionInfo, Failure> {
    url.into_connection_info()
        .map_err(|err| Failure::usage(format!("invalid URL `{}`: {err}", redacted(url))))
}

/// `info` (its credentials, database and TLS) for the node at `host:port`.
fn at_address(info: &ConnectionInfo, host: String, port: u16) -> ConnectionInfo {
    let addr = match info.addr() {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host,
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => ConnectionAddr::Tcp(host, port),
    };
    info.clone().set_addr(addr)
}

fn user(info: &ConnectionInfo) -> String {
    info.redis_settings()
        .username()
        .unwrap_or("default")
        .to_owned()
}

fn base(kind: Kind, info: &ConnectionInfo, timeout: Duration) -> Deployment {
    Deployment {
        kind,
        nodes: Vec::new(),
        unreachable: Vec::new(),
        sentinels: Vec::new(),
        failover: None,
        user: user(info),
        lone_masters: Vec::new(),
        tls: matches!(info.addr(), ConnectionAddr::TcpTls { .. }),
        timeout,
        sharded: None,
    }
}

/// One server, and the replicas it reports (`ROLE`, when the user may run it).
async fn single(connector: &Connector, url: &str) -> Result<Deployment, Failure> {
    let info = parse(url)?;
    let mut deployment = base(Kind::Single, &info, connector.timeout);
    let (client, mut connection) = connector
        .connect(info.clone())
        .await
        .map_err(|why| Failure::server(format!("server at {} failed: {why}", redacted(url))))?;
    let role: Result<Value, RedisError> = redis::cmd("ROLE").query_async(&mut connection).await;
    let replicas = match role.ok().as_ref().map(parse_role) {
        Some((_, replicas)) => replicas,
        None => Vec::new(),
    };
    // The URL is where relock writes, whatever the node answers: the connection check says
    // when that is a replica.
    deployment.nodes.push(Node {
        addr: info.addr().to_string(),
        role: Role::Master,
        client,
        connection,
    });
    for (host, port) in replicas {
        connect_node(
            connector,
            &mut deployment,
            at_address(&info, host, port),
            Role::Replica,
        )
        .await;
    }
    Ok(deployment)
}

async fn connect_node(
    connector: &Connector,
    deployment: &mut Deployment,
    info: ConnectionInfo,
    role: Role,
) {
    let addr = info.addr().to_string();
    match connector.connect(info).await {
        Ok((client, connection)) => deployment.nodes.push(Node {
            addr,
            role,
            client,
            connection,
        }),
        Err(why) => deployment.unreachable.push((addr, why)),
    }
}

/// `ROLE`'s answer: this node's role and, for a master, its connected replicas.
pub(crate) fn parse_role(value: &Value) -> (Role, Vec<(String, u16)>) {
    let Value::Array(items) = value else {
        return (Role::Master, Vec::new());
    };
    match (items.first().map(text), items.get(2)) {
        (Some(role), Some(Value::Array(replicas))) if role == "master" => {
            let replicas = replicas
                .iter()
                .filter_map(|replica| match replica {
                    Value::Array(fields) => {
                        let host = text(fields.first()?);
                        let port = text(fields.get(1)?).parse().ok()?;
                        Some((host, port))
                    }
                    _ => None,
                })
                .collect();
            (Role::Master, replicas)
        }
        (Some(role), _) if role == "master" => (Role::Master, Vec::new()),
        _ => (Role::Replica, Vec::new()),
    }
}

/// A reply element as text (bulk or simple string, or a number).
pub(crate) fn text(value: &Value) -> String {
    match value {
        Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        Value::SimpleString(text) => text.clone(),
        Value::Int(n) => n.to_string(),
        Value::Okay => "OK".to_owned(),
        other => format!("{other:?}"),
    }
}

/// A reply of field-value pairs (a RESP2 flat array or a RESP3 map) as a map.
pub(crate) fn fields(value: &Value) -> HashMap<String, String> {
    match value {
        Value::Array(items) => items
            .chunks(2)
            .filter_map(|pair| Some((text(pair.first()?), text(pair.get(1)?))))
            .collect(),
        Value::Map(pairs) => pairs.iter().map(|(k, v)| (text(k), text(v))).collect(),
        _ => HashMap::new(),
    }
}

/// A Redis Cluster: every node `CLUSTER SLOTS` names, as the cluster client finds them.
async fn cluster(connector: &Connector, seeds: &[String]) -> Result<Deployment, Failure> {
    let mut tried = Vec::new();
    for seed in seeds {
        let info = parse(seed)?;
        let (_, mut connection) = match connector.connect(info.clone()).await {
            Ok(connected) => connected,
            Err(why) => {
                tried.push(format!("{}: {why}", redacted(seed)));
                continue;
            }
        };
        let slots: Value = match redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut connection)
            .await
        {
            Ok(slots) => slots,
            Err(err) => {
                tried.push(format!("{}: CLUSTER SLOTS failed: {err}", redacted(seed)));
                continue;
            }
        };
        let seed_host = match info.addr() {
            ConnectionAddr::Tcp(host, _) | ConnectionAddr::TcpTls { host, .. } => host.clone(),
            _ => "127.0.0.1".to_owned(),
        };
        let shards = parse_slots(&slots, &seed_host);
        if shards.is_empty() {
            tried.push(format!(
                "{}: CLUSTER SLOTS named no node (is it a cluster, with slots assigned?)",
                redacted(seed)
            ));
            continue;
        }
        let mut deployment = base(Kind::Cluster, &info, connector.timeout);
        for (master, replicas) in shards {
            if replicas.is_empty() {
                deployment
                    .lone_masters
                    .push(format!("{}:{}", master.0, master.1));
            }
            connect_node(
                connector,
                &mut deployment,
                at_address(&info, master.0, master.1),
                Role::Master,
            )
            .await;
            for (host, port) in replicas {
                connect_node(
                    connector,
                    &mut deployment,
                    at_address(&info, host, port),
                    Role::Replica,
                )
                .await;
            }
        }
        if deployment.nodes.is_empty() {
            tried.push(format!("{}: no node it names answers", redacted(seed)));
            continue;
        }
        deployment.sharded = connector.sharded(seeds);
        return Ok(deployment);
    }
    Err(Failure::server(format!(
        "no cluster seed answered: {}",
        tried.join("; ")
    )))
}

type Address = (String, u16);

/// `CLUSTER SLOTS`' answer as each master (once, however many slot ranges it serves) with its
/// replicas; an empty host means the node that answered.
pub(crate) fn parse_slots(value: &Value, seed_host: &str) -> Vec<(Address, Vec<Address>)> {
    let Value::Array(ranges) = value else {
        return Vec::new();
    };
    let node = |value: &Value| -> Option<Address> {
        let Value::Array(fields) = value else {
            return None;
        };
        let host = text(fields.first()?);
        let host = if host.is_empty() || host == "?" {
            seed_host.to_owned()
        } else {
            host
        };
        let port = text(fields.get(1)?).parse().ok()?;
        Some((host, port))
    };
    let mut shards: Vec<(Address, Vec<Address>)> = Vec::new();
    for range in ranges {
        let Value::Array(items) = range else { continue };
        let Some(master) = items.get(2).and_then(node) else {
            continue;
        };
        if shards.iter().any(|(known, _)| *known == master) {
            continue;
        }
        let replicas = items.iter().skip(3).filter_map(node).collect();
        shards.push((master, replicas));
    }
    shards
}

/// Behind Sentinel: the master the sentinels name under the highest configuration epoch (as
/// the library picks it) and the replicas they know, reached with the sentinel URL's
/// credentials, as the library reaches them.
async fn sentinel(
    connector: &Connector,
    sentinels: &[String],
    name: &str,
) -> Result<Deployment, Failure> {
    let mut answers: Vec<(ConnectionInfo, HashMap<String, String>, Vec<Address>)> = Vec::new();
    let mut said: Vec<SentinelAnswer> = Vec::new();
    for url in sentinels {
        let info = parse(url)?;
        let shown = info.addr().to_string();
        let (_, mut connection) = match connector.connect(info.clone()).await {
            Ok(connected) => connected,
            Err(why) => {
                said.push(SentinelAnswer {
                    addr: shown,
                    master: Err(why),
                });
                continue;
            }
        };
        let master: Result<Value, RedisError> = redis::cmd("SENTINEL")
            .arg("MASTER")
            .arg(name)
            .query_async(&mut connection)
            .await;
        let master = match master {
            Ok(master) => fields(&master),
            Err(err) => {
                said.push(SentinelAnswer {
                    addr: shown,
                    master: Err(err.to_string()),
                });
                continue;
            }
        };
        let replicas: Value = redis::cmd("SENTINEL")
            .arg("REPLICAS")
            .arg(name)
            .query_async(&mut connection)
            .await
            .unwrap_or(Value::Nil);
        let replicas = match replicas {
            Value::Array(replicas) => replicas
                .iter()
                .map(fields)
                .filter(|replica| {
                    let flags = replica.get("flags").map(String::as_str).unwrap_or("");
                    !flags.contains("s_down") && !flags.contains("disconnected")
                })
                .filter_map(|replica| {
                    Some((
                        replica.get("ip")?.clone(),
                        replica.get("port")?.parse().ok()?,
                    ))
                })
                .collect(),
            _ => Vec::new(),
        };
        said.push(SentinelAnswer {
            addr: shown,
            master: Ok(format!(
                "{}:{}",
                master.get("ip").map(String::as_str).unwrap_or("?"),
                master.get("port").map(String::as_str).unwrap_or("?"),
            )),
        });
        answers.push((info, master, replicas));
    }
    let epoch = |master: &HashMap<String, String>| {
        master
            .get("config-epoch")
            .and_then(|epoch| epoch.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let Some((info, master, replicas)) = answers
        .iter()
        .max_by_key(|(_, master, _)| epoch(master))
        .cloned()
    else {
        let why: Vec<String> = said
            .iter()
            .map(|answer| match &answer.master {
                Ok(master) => format!("sentinel {}: {master}", answer.addr),
                Err(why) => format!("sentinel {}: {why}", answer.addr),
            })
            .collect();
        return Err(Failure::server(format!(
            "no sentinel named the master `{name}`: {}",
            why.join("; ")
        )));
    };
    let mut deployment = base(Kind::Sentinel, &info, connector.timeout);
    deployment.sentinels = said;
    // The first sentinels to see the master down start the failover: the shortest setting.
    deployment.failover = answers
        .iter()
        .filter_map(|(_, master, _)| master.get("down-after-milliseconds")?.parse().ok())
        .min()
        .map(|millis| Failover {
            setting: "down-after-milliseconds",
            millis,
        });
    let (Some(host), Some(port)) = (
        master.get("ip").cloned(),
        master.get("port").and_then(|port| port.parse().ok()),
    ) else {
        return Err(Failure::server(format!(
            "the sentinels' answer for `{name}` has no address"
        )));
    };
    connect_node(
        connector,
        &mut deployment,
        at_address(&info, host.clone(), port),
        Role::Master,
    )
    .await;
    if deployment.nodes.is_empty() {
        let why = deployment
            .unreachable
            .first()
            .map(|(_, why)| why.clone())
            .unwrap_or_default();
        return Err(Failure::server(format!(
            "master `{name}` at {host}:{port}, named by the sentinels, failed: {why}"
        )));
    }
    for (host, port) in replicas {
        connect_node(
            connector,
            &mut deployment,
            at_address(&info, host, port),
            Role::Replica,
        )
        .await;
    }
    Ok(deployment)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn role_of_a_master_names_its_replicas() {
        let role = Value::Array(vec![
            bulk("master"),
            Value::Int(3129659),
            Value::Array(vec![Value::Array(vec![
                bulk("127.0.0.1"),
                bulk("9001"),
                bulk("3129242"),
            ])]),
        ]);
        assert_eq!(
            parse_role(&role),
            (Role::Master, vec![("127.0.0.1".to_owned(), 9001)])
        );
        let replica = Value::Array(vec![bulk("slave"), bulk("127.0.0.1"), Value::Int(9000)]);
        assert_eq!(parse_role(&replica), (Role::Replica, Vec::new()));
    }

    #[test]
    fn cluster_slots_give_each_master_once_with_its_replicas() {
        let node =
            |host: &str, port: i64| Value::Array(vec![bulk(host), Value::Int(port), bulk("id")]);
        let slots = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(100),
                node("10.0.0.1", 7000),
                node("10.0.0.2", 7001),
            ]),
            Value::Array(vec![
                Value::Int(200),
                Value::Int(300),
                node("10.0.0.1", 7000),
                node("10.0.0.2", 7001),
            ]),
            Value::Array(vec![Value::Int(101), Value::Int(199), node("", 7002)]),
        ]);
        assert_eq!(
            parse_slots(&slots, "seed"),
            vec![
                (
                    ("10.0.0.1".to_owned(), 7000),
                    vec![("10.0.0.2".to_owned(), 7001)]
                ),
                (("seed".to_owned(), 7002), vec![]),
            ]
        );
    }
}
