//! A TCP proxy in front of a test server that can cut the line: requests sent while it is cut
//! never reach the server and get no answer, as on a network that drops packets. It can also
//! swallow the server's replies on the connections open at that moment: their requests still run,
//! but nobody hears the answers. And it can delay the requests of the connections open at that
//! moment, as a congested path that delivers a packet late, after the client gave up on it.
//! It counts the `EVALSHA` commands clients send through it, as they arrive.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A proxy to `127.0.0.1:<port>`, running on the current Tokio runtime until dropped.
#[derive(Debug)]
pub struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
    /// Bumped by [`restore`](Self::restore): every connection open until then is closed.
    generation: watch::Sender<u64>,
    /// Per connection opened so far: set, the server's replies on it are dropped.
    mute: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
    /// Per connection opened so far: how long its requests are held back, in milliseconds.
    delay: Arc<Mutex<Vec<Arc<AtomicU64>>>>,
    /// `EVALSHA` commands read from clients so far, on every connection.
    evalsha: Arc<AtomicU64>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts forwarding to the server on `port`.
    pub async fn start(port: u16) -> Proxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind the proxy");
        let proxy_port = listener.local_addr().expect("the proxy's address").port();
        let cut = Arc::new(AtomicBool::new(false));
        let (generation, _) = watch::channel(0);
        let mute = Arc::new(Mutex::new(Vec::new()));
        let delay = Arc::new(Mutex::new(Vec::new()));
        let evalsha = Arc::new(AtomicU64::new(0));
        let accept = {
            let (cut, generation, mute, delays, evalsha) = (
                cut.clone(),
                generation.clone(),
                mute.clone(),
                delay.clone(),
                evalsha.clone(),
            );
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    if cut.load(Ordering::SeqCst) {
                        // The server cannot be reached: the connection closes at once.
                        continue;
                    }
                    let closed = generation.subscribe();
                    let muted = Arc::new(AtomicBool::new(false));
                    lock(&mute).push(muted.clone());
                    let delay = Arc::new(AtomicU64::new(0));
                    lock(&delays).push(delay.clone());
                    tokio::spawn(forward(
                        client,
                        port,
                        cut.clone(),
                        muted,
                        delay,
                        evalsha.clone(),
                        closed,
                    ));
                }
            })
        };
        Proxy {
            port: proxy_port,
            cut,
            generation,
            mute,
            delay,
            evalsha,
            accept,
        }
    }

    /// How many `EVALSHA` commands clients have sent through the proxy so far, counted as they
    /// reach it (before any delay, and whether or not the server ever gets them).
    pub fn evalsha_sent(&self) -> u64 {
        self.evalsha.load(Ordering::SeqCst)
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<proxy port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Cuts the line: requests on open connections are swallowed (no answer ever comes), and new
    /// connections are closed at once.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    /// From now on, the server's replies on every connection open now are dropped: requests sent
    /// on them still run, but their answers never come. Connections opened later (a client
    /// reconnecting) are forwarded both ways.
    pub fn swallow_replies_of_open_connections(&self) {
        self.swallow_replies_of_connections_from(0);
    }

    /// How many connections the proxy has accepted so far.
    pub fn connections(&self) -> usize {
        lock(&self.mute).len()
    }

    /// [`swallow_replies_of_open_connections`](Self::swallow_replies_of_open_connections) for
    /// the open connections accepted after the first `first` only (those of one client, when
    /// another connected earlier: a replica's replication link, say).
    pub fn swallow_replies_of_connections_from(&self, first: usize) {
        for muted in lock(&self.mute).iter().skip(first) {
            muted.store(true, Ordering::SeqCst);
        }
    }

    /// From now on, the requests sent on every connection open now reach the server `delay`
    /// after they were sent (in order); connections opened later are forwarded at once.
    pub fn delay_requests_of_open_connections(&self, delay: Duration) {
        let millis = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        for delayed in lock(&self.delay).iter() {
            delayed.store(millis, Ordering::SeqCst);
        }
    }

    /// Restores the line: the connections that were open while it was cut are closed (their
    /// clients must reconnect), and new connections are forwarded again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
        self.generation.send_modify(|generation| *generation += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.generation.send_modify(|generation| *generation += 1);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn forward(
    client: TcpStream,
    port: u16,
    cut: Arc<AtomicBool>,
    muted: Arc<AtomicBool>,
    delay: Arc<AtomicU64>,
    evalsha: Arc<AtomicU64>,
    mut closed: watch::Receiver<u64>,
) {
    let Ok(server) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await else {
        return;
    };
    let (from_client, to_client) = client.into_split();
    let (from_server, to_server) = server.into_split();
    let upstream = pump_delayed(from_client, to_server, &cut, &delay, &evalsha);
    let downstream = pump(from_server, to_client, &muted);
    tokio::select! {
        () = upstream => {}
        _ = downstream => {}
        _ = closed.changed() => {}
    }
}

/// Copies what `from` reads to `to` until either side closes, throwing it away instead while
/// `dropped` is set.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    dropped: &AtomicBool,
) {
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if dropped.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

/// [`pump`], holding each chunk back until `delay` (in milliseconds, read as the chunk arrives)
/// after it was read: the writer keeps the order, so a delayed connection's requests arrive late
/// but in sequence. Counts the `EVALSHA`s read into `evalsha`.
/// The command name [`Proxy::evalsha_sent`] counts.
const NEEDLE: &[u8] = b"EVALSHA";

async fn pump_delayed(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    dropped: &AtomicBool,
    delay: &AtomicU64,
    evalsha: &AtomicU64,
) {
    let (chunks, mut pending) =
        tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let reading = async move {
        let mut buffer = vec![0; 64 * 1024];
        // The end of the previous chunk, for a command name split across two reads.
        let mut tail: Vec<u8> = Vec::new();
        loop {
            let read = match from.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(read) => read,
            };
            tail.extend_from_slice(&buffer[..read]);
            let found = tail
                .windows(NEEDLE.len())
                .filter(|window| window.eq_ignore_ascii_case(NEEDLE))
                .count();
            evalsha.fetch_add(found as u64, Ordering::SeqCst);
            let keep = tail.len().min(NEEDLE.len() - 1);
            tail.drain(..tail.len() - keep);
            if dropped.load(Ordering::SeqCst) {
                continue;
            }
            let due =
                tokio::time::Instant::now() + Duration::from_millis(delay.load(Ordering::SeqCst));
            if chunks.send((due, buffer[..read].to_vec())).is_err() {
                return;
            }
        }
    };
    let writing = async move {
        while let Some((due, chunk)) = pending.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
    };
    // The reader ending (the client closed) lets the writer deliver what is still held back.
    tokio::join!(reading, writing);
}
