//! A TCP proxy between the services and a server (PostgreSQL, RabbitMQ) that injects the faults
//! which do not announce themselves:
//!
//! - **silent**: the connections open at that moment, and those opened while it lasts, stop
//!   forwarding in both directions for good: what either side sends is dropped, and neither
//!   side hears a FIN or a RST (the proxy keeps their sockets open, as a peer whose host
//!   vanished or a firewall that lost their state would). Only the service can end such a
//!   connection, by noticing (heartbeats, deadlines) and closing it; connections opened after
//!   the fault pass again.
//! - **slow**: every chunk, in both directions, is delayed by a fixed latency.
//!
//! Each connection records when it went silent and when the service closed it, from which
//! [`Episode::detection`] tells how long the services took to notice.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A running proxy; dropping it closes every connection.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    upstream: SocketAddr,
    state: Mutex<State>,
    /// Cancelled when the proxy is dropped: every task ends.
    closing: CancellationToken,
}

#[derive(Default)]
struct State {
    silent: bool,
    latency: Duration,
    /// Every connection so far (a run opens a few hundred).
    links: Vec<Arc<Link>>,
}

/// One proxied connection, as the fault measurements see it.
struct Link {
    opened: Instant,
    /// When it went silent; it never forwards again.
    silenced: OnceLock<Instant>,
    /// When the service (the client side) closed it.
    client_closed: OnceLock<Instant>,
    /// Whether the service sent anything after it went silent (so waits for an answer).
    spoke_while_silent: AtomicBool,
    /// Cancelled when the client closed: a silent connection's client side is held open until then.
    client_gone: CancellationToken,
}

impl Link {
    fn new(silent: bool) -> Arc<Self> {
        let link = Link {
            opened: Instant::now(),
            silenced: OnceLock::new(),
            client_closed: OnceLock::new(),
            spoke_while_silent: AtomicBool::new(false),
            client_gone: CancellationToken::new(),
        };
        if silent {
            let _ = link.silenced.set(link.opened);
        }
        Arc::new(link)
    }

    fn is_silent(&self) -> bool {
        self.silenced.get().is_some()
    }

    fn close_by_client(&self) {
        let _ = self.client_closed.set(Instant::now());
        self.client_gone.cancel();
    }
}

/// Which way a pump forwards.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    ToServer,
    ToClient,
}

impl Proxy {
    /// Listens on an ephemeral port of 127.0.0.1 and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared { upstream, state: Mutex::default(), closing: CancellationToken::new() });
        let accepting = shared.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = accepting.closing.cancelled() => break,
                    accepted = listener.accept() => match accepted {
                        Ok((client, _)) => accepting.open(client),
                        Err(_) => break,
                    },
                }
            }
        });
        Ok(Self { addr, shared })
    }

    /// Where the services connect instead of the server.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Silences every open connection for good, and every one opened until [`heal`](Self::heal).
    pub fn silence(&self) -> Episode {
        let at = Instant::now();
        let mut state = self.shared.lock();
        state.silent = true;
        let open = state.open_links();
        for link in &open {
            let _ = link.silenced.set(at);
        }
        Episode { at, healed: None, open, opened_meanwhile: Vec::new() }
    }

    /// Delays every chunk by `latency` from now on, until [`heal`](Self::heal).
    pub fn slow_down(&self, latency: Duration) -> Episode {
        let at = Instant::now();
        let mut state = self.shared.lock();
        state.latency = latency;
        let open = state.open_links();
        Episode { at, healed: None, open, opened_meanwhile: Vec::new() }
    }

    /// New connections pass again, undelayed (those silenced stay silent); ends `episode`.
    pub fn heal(&self, episode: &mut Episode) {
        let mut state = self.shared.lock();
        state.silent = false;
        state.latency = Duration::ZERO;
        let now = Instant::now();
        episode.healed = Some(now);
        episode.opened_meanwhile =
            state.links.iter().filter(|link| (episode.at..now).contains(&link.opened)).cloned().collect();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.closing.cancel();
    }
}

impl State {
    /// Connections still forwarding.
    fn open_links(&self) -> Vec<Arc<Link>> {
        self.links.iter().filter(|link| !link.is_silent() && link.client_closed.get().is_none()).cloned().collect()
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn latency(&self) -> Duration {
        self.lock().latency
    }

    fn open(self: &Arc<Self>, client: TcpStream) {
        let _ = client.set_nodelay(true);
        let link = {
            let mut state = self.lock();
            let link = Link::new(state.silent);
            state.links.push(link.clone());
            link
        };
        let shared = self.clone();
        tokio::spawn(async move {
            let closing = shared.closing.clone();
            let pumping = async {
                let (client_read, client_write) = client.into_split();
                // Born silent: the server is never reached; the client hears nothing until it gives up.
                let server = if link.is_silent() { None } else { TcpStream::connect(shared.upstream).await.ok() };
                let Some(server) = server else {
                    drain(client_read, None, &link, &shared, Direction::ToServer).await;
                    drop(client_write);
                    return;
                };
                let _ = server.set_nodelay(true);
                let (server_read, server_write) = server.into_split();
                let to_client = drain(server_read, Some(client_write), &link, &shared, Direction::ToClient);
                tokio::join!(
                    drain(client_read, Some(server_write), &link, &shared, Direction::ToServer),
                    hold_open_if_silent(to_client, &link),
                );
            };
            tokio::select! {
                _ = closing.cancelled() => {}
                () = pumping => {}
            }
        });
    }
}

/// The pump towards the client hands back the client's write half when its source ended; on a
/// silent connection it is kept (no FIN) until the client closed.
async fn hold_open_if_silent(
    pump: impl Future<Output = Option<OwnedWriteHalf>>,
    link: &Link,
) -> Option<OwnedWriteHalf> {
    let write_half = pump.await;
    if link.is_silent() {
        link.client_gone.cancelled().await;
    }
    write_half
}

/// Forwards what `source` sends to `sink` (after the latency of the moment), or drops it once
/// the connection is silent, until `source` ends. Returns the sink when it was not closed.
async fn drain(
    mut source: OwnedReadHalf,
    sink: Option<OwnedWriteHalf>,
    link: &Link,
    shared: &Shared,
    direction: Direction,
) -> Option<OwnedWriteHalf> {
    let (chunks, mut due) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writing = async move {
        let mut sink = sink?;
        while let Some((at, chunk)) = due.recv().await {
            tokio::time::sleep_until(at.into()).await;
            if link.is_silent() {
                continue;
            }
            if sink.write_all(&chunk).await.is_err() {
                return None;
            }
        }
        // The source ended: pass the FIN on, unless the connection is silent. Towards the
        // server it goes anyway: the client gave the connection up, so the server may too.
        if !link.is_silent() || direction == Direction::ToServer {
            let _ = sink.shutdown().await;
            return None;
        }
        Some(sink)
    };
    let reading = async move {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            match source.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(_) if link.is_silent() => {
                    if direction == Direction::ToServer {
                        link.spoke_while_silent.store(true, Ordering::Relaxed);
                    }
                }
                // A chunk the writer can no longer take is lost, as it would be on the wire;
                // reading goes on until the source closes.
                Ok(read) => drop(chunks.send((Instant::now() + shared.latency(), buffer[..read].to_vec()))),
            }
        }
        if direction == Direction::ToServer {
            link.close_by_client();
        }
        drop(chunks);
    };
    let ((), sink) = tokio::join!(reading, writing);
    sink
}

/// One fault: when it began and ended, the connections it caught open, those opened during it.
#[derive(Clone)]
pub struct Episode {
    at: Instant,
    healed: Option<Instant>,
    open: Vec<Arc<Link>>,
    opened_meanwhile: Vec<Arc<Link>>,
}

/// How the services dealt with one fault, measured at the proxy.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Detection {
    /// Connections open when the fault began.
    pub open: usize,
    /// Of those, how many the services closed, and after how long (seconds from the start of
    /// the fault), in order.
    pub abandoned_after_s: Vec<f64>,
    /// Of those still open, how many the services sent something on after the fault began
    /// (a request still waiting for its answer), and how many they left idle.
    pub waiting: usize,
    pub idle: usize,
    /// Connections opened while the fault lasted.
    pub opened_meanwhile: usize,
    /// How long after the fault ended the first new connection was opened (seconds), if any.
    pub reconnected_after_s: Option<f64>,
}

impl Episode {
    /// What the services did about it, as far as the proxy saw until now: for a silent fault,
    /// how long they took to give up the connections it caught; for a slow one, how many they
    /// gave up although it only slowed them (none, ideally).
    pub fn detection(&self, proxy: &Proxy) -> Detection {
        let mut abandoned_after_s: Vec<f64> = self
            .open
            .iter()
            .filter_map(|link| link.client_closed.get())
            .map(|closed| closed.saturating_duration_since(self.at).as_secs_f64())
            .collect();
        abandoned_after_s.sort_by(f64::total_cmp);
        let reconnected_after_s = self.healed.and_then(|healed| {
            let state = proxy.shared.lock();
            state
                .links
                .iter()
                .filter(|link| link.opened >= healed)
                .map(|link| link.opened.duration_since(healed).as_secs_f64())
                .min_by(f64::total_cmp)
        });
        let still_open = self.open.iter().filter(|link| link.client_closed.get().is_none());
        let waiting = still_open.clone().filter(|link| link.spoke_while_silent.load(Ordering::Relaxed)).count();
        Detection {
            open: self.open.len(),
            abandoned_after_s,
            waiting,
            idle: still_open.count() - waiting,
            opened_meanwhile: self.opened_meanwhile.len(),
            reconnected_after_s,
        }
    }

    /// How long the fault lasted.
    pub fn duration(&self) -> Duration {
        self.healed.map(|healed| healed - self.at).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An echo server; returns its address.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buffer = [0u8; 1024];
                    while let Ok(read @ 1..) = socket.read(&mut buffer).await {
                        if socket.write_all(&buffer[..read]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(socket: &mut TcpStream, within: Duration) -> Option<Duration> {
        let started = Instant::now();
        socket.write_all(b"ping").await.ok()?;
        let mut answer = [0u8; 4];
        match tokio::time::timeout(within, socket.read_exact(&mut answer)).await {
            Ok(Ok(_)) => Some(started.elapsed()),
            Ok(Err(_)) | Err(_) => None,
        }
    }

    #[tokio::test]
    async fn passes_delays_and_silences_without_closing() {
        let proxy = Proxy::start(echo().await).await.unwrap();
        let mut before = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(round_trip(&mut before, Duration::from_secs(5)).await.is_some());

        let mut slow = proxy.slow_down(Duration::from_millis(100));
        let took = round_trip(&mut before, Duration::from_secs(5)).await.unwrap();
        assert!(took >= Duration::from_millis(200), "one way each: {took:?}");
        proxy.heal(&mut slow);
        assert_eq!(slow.detection(&proxy).abandoned_after_s, Vec::<f64>::new());

        let mut silent = proxy.silence();
        assert_eq!(round_trip(&mut before, Duration::from_millis(300)).await, None, "an answer got through");
        let mut during = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut during, Duration::from_millis(300)).await, None);
        proxy.heal(&mut silent);
        // Silenced for good, and never closed by the proxy: a read waits.
        assert_eq!(round_trip(&mut before, Duration::from_millis(300)).await, None);
        let mut after = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(round_trip(&mut after, Duration::from_secs(5)).await.is_some(), "a new connection passes");

        drop(before);
        let mut detection = silent.detection(&proxy);
        for _ in 0..100 {
            if !detection.abandoned_after_s.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            detection = silent.detection(&proxy);
        }
        assert_eq!((detection.open, detection.abandoned_after_s.len(), detection.opened_meanwhile), (1, 1, 1));
        assert!(detection.abandoned_after_s[0] >= 0.6, "{detection:?}");
        assert!(detection.reconnected_after_s.is_some());
    }
}
