//! A worker's links to the lock service: one TCP proxy per Redis endpoint (server, sentinels,
//! cluster nodes), all under one switch, so the nemesis can partition one worker from the whole
//! service while the others carry on.
//!
//! Sentinels and cluster nodes tell clients where to go (`SENTINEL GET-MASTER-ADDR-BY-NAME`,
//! `+switch-master`, `CLUSTER SLOTS`, `MOVED`, `ASK`): the proxies rewrite every port of the
//! service in the replies into the worker's own proxy for it, so that a worker never reaches a
//! node around its links. A port is rewritten where it stands as a whole number (bounded by
//! non-digits); proxy and server ports are both ephemeral, hence five digits, so a reply keeps
//! its length and RESP's lengths stay right. A lock reply that happened to hold a five-digit
//! number equal to a server port (a remaining TTL above 32 s, a pid) would be rewritten too: the
//! chaos run's leases are far shorter and its workers read no pids.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the links of one worker do to its traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Partition {
    /// Both ways forwarded.
    None = 0,
    /// Nothing gets through either way, and new connections hang: packets dropped.
    Stall = 1,
    /// Every connection is closed, and new ones at once: the host is unreachable.
    Drop = 2,
    /// Requests reach the service and run, replies never come back.
    OneWay = 3,
}

impl Partition {
    fn from_u8(value: u8) -> Partition {
        match value {
            1 => Partition::Stall,
            2 => Partition::Drop,
            3 => Partition::OneWay,
            _ => Partition::None,
        }
    }
}

struct Switch {
    state: AtomicU8,
    /// Bumped when a partition begins or heals: the connections open then are closed, since the
    /// bytes a partition swallowed leave their RESP streams out of step.
    generation: watch::Sender<u64>,
}

/// The proxies of one worker, running on the current Tokio runtime until dropped.
pub struct Links {
    switch: Arc<Switch>,
    /// `(service port, proxy port)`.
    ports: Vec<(u16, u16)>,
    /// The same pairs as the digits the downstream rewriter looks for.
    rewrites: Rewrites,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links")
            .field("ports", &self.ports)
            .field("partition", &self.partition())
            .finish()
    }
}

impl Links {
    /// Links with no proxy yet.
    pub fn new() -> Links {
        let (generation, _) = watch::channel(0);
        Links {
            switch: Arc::new(Switch {
                state: AtomicU8::new(Partition::None as u8),
                generation,
            }),
            ports: Vec::new(),
            rewrites: Arc::default(),
            tasks: Vec::new(),
        }
    }

    /// Starts a proxy to `127.0.0.1:<port>` and returns the proxy's port.
    pub async fn add(&mut self, port: u16) -> u16 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind a proxy");
        let local = listener.local_addr().expect("the proxy's address").port();
        assert_eq!(
            port.to_string().len(),
            local.to_string().len(),
            "a proxy port must be as long as the port it stands for (both ephemeral)"
        );
        self.ports.push((port, local));
        self.rewrites.write().expect("rewrites").push((
            port.to_string().into_bytes(),
            local.to_string().into_bytes(),
        ));
        let (switch, rewrites) = (self.switch.clone(), self.rewrites.clone());
        self.tasks.push(tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if Partition::from_u8(switch.state.load(Ordering::SeqCst)) == Partition::Drop {
                    continue;
                }
                tokio::spawn(forward(client, port, switch.clone(), rewrites.clone()));
            }
        }));
        local
    }

    /// The proxy port standing for the service's `port`.
    pub fn local_port(&self, port: u16) -> Option<u16> {
        self.ports
            .iter()
            .find(|(service, _)| *service == port)
            .map(|(_, local)| *local)
    }

    /// The partition in force.
    pub fn partition(&self) -> Partition {
        Partition::from_u8(self.switch.state.load(Ordering::SeqCst))
    }

    /// Begins `partition` (or heals, with [`Partition::None`]); the connections open until now
    /// are closed.
    pub fn set(&self, partition: Partition) {
        self.switch.state.store(partition as u8, Ordering::SeqCst);
        if partition != Partition::Stall && partition != Partition::OneWay {
            self.switch.generation.send_modify(|g| *g += 1);
        }
    }
}

impl Default for Links {
    fn default() -> Links {
        Links::new()
    }
}

impl Drop for Links {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        self.switch.generation.send_modify(|g| *g += 1);
    }
}

type Rewrites = Arc<std::sync::RwLock<Vec<(Vec<u8>, Vec<u8>)>>>;

async fn forward(client: TcpStream, port: u16, switch: Arc<Switch>, rewrites: Rewrites) {
    let mut closed = switch.generation.subscribe();
    if Partition::from_u8(switch.state.load(Ordering::SeqCst)) == Partition::Stall {
        // A connection attempt into a stalled link: it neither completes nor fails until the
        // partition heals (and then it is closed, as every connection the partition saw).
        let _ = closed.changed().await;
        return;
    }
    let Ok(server) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let upstream = {
        let switch = switch.clone();
        async move {
            let mut buffer = vec![0; 64 * 1024];
            loop {
                let read = match from_client.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(read) => read,
                };
                if Partition::from_u8(switch.state.load(Ordering::SeqCst)) == Partition::Stall {
                    continue;
                }
                if to_server.write_all(&buffer[..read]).await.is_err() {
                    return;
                }
            }
        }
    };
    let downstream = async move {
        let mut buffer = vec![0; 64 * 1024];
        let mut pending = Vec::new();
        loop {
            let read = match from_server.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(read) => read,
            };
            if Partition::from_u8(switch.state.load(Ordering::SeqCst)) != Partition::None {
                continue;
            }
            pending.extend_from_slice(&buffer[..read]);
            let out = {
                let rewrites = rewrites.read().expect("rewrites");
                rewrite(&mut pending, &rewrites)
            };
            if to_client.write_all(&out).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = upstream => {}
        () = downstream => {}
        _ = closed.changed() => {}
    }
}

/// Takes what can be sent from `pending` with every whole number equal to a service port replaced
/// by its proxy port; a trailing run of digits stays in `pending` (it may go on in the next read).
pub fn rewrite(pending: &mut Vec<u8>, rewrites: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let keep_from = pending
        .iter()
        .rposition(|b| !b.is_ascii_digit())
        .map_or(0, |at| at + 1);
    let mut out: Vec<u8> = pending.drain(..keep_from).collect();
    let mut at = 0;
    while at < out.len() {
        if !out[at].is_ascii_digit() {
            at += 1;
            continue;
        }
        let end = out[at..]
            .iter()
            .position(|b| !b.is_ascii_digit())
            .map_or(out.len(), |n| at + n);
        if let Some((_, local)) = rewrites.iter().find(|(port, _)| port[..] == out[at..end]) {
            out[at..end].copy_from_slice(local);
        }
        at = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrites() -> Vec<(Vec<u8>, Vec<u8>)> {
        vec![(b"40001".to_vec(), b"50001".to_vec())]
    }

    #[test]
    fn a_port_standing_alone_is_rewritten_and_a_longer_number_is_not() {
        let mut pending = b"-MOVED 12 127.0.0.1:40001\r\n:400011\r\n:40001\r\n".to_vec();
        assert_eq!(
            rewrite(&mut pending, &rewrites()),
            b"-MOVED 12 127.0.0.1:50001\r\n:400011\r\n:50001\r\n".to_vec()
        );
        assert!(pending.is_empty());
    }

    #[test]
    fn a_port_split_across_reads_is_rewritten_whole() {
        let mut pending = b"$5\r\n400".to_vec();
        assert_eq!(rewrite(&mut pending, &rewrites()), b"$5\r\n".to_vec());
        assert_eq!(pending, b"400");
        pending.extend_from_slice(b"01\r\n");
        assert_eq!(rewrite(&mut pending, &rewrites()), b"50001\r\n".to_vec());
    }
}
