//! A loopback TCP proxy between one process and PostgreSQL, to fault the network without
//! touching either end: pass traffic, delay it, black-hole it (connections stay open, bytes are
//! held until the proxy passes again), or cut every open connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Bytes read at once in each direction.
const CHUNK_BYTES: usize = 16 * 1024;

/// What the proxy does with the bytes it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forwards them at once.
    Pass,
    /// Forwards each chunk after this long, in order.
    Delay(Duration),
    /// Holds them, and reads no more, until the mode changes.
    BlackHole,
}

/// A proxy listening on a random loopback port, forwarding to `upstream`.
pub struct Proxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    /// Raised by [`Proxy::cut`]; every connection open at that moment ends.
    generation: watch::Sender<u64>,
    counts: Arc<Counts>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct Counts {
    /// Connections open now.
    open: AtomicUsize,
    /// Chunks read and not forwarded yet because of a black hole.
    held: AtomicUsize,
}

impl Proxy {
    /// Starts a proxy to `upstream` that passes traffic.
    ///
    /// # Panics
    /// If no loopback port can be bound.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (mode, _) = watch::channel(Mode::Pass);
        let (generation, _) = watch::channel(0u64);
        let counts = Arc::new(Counts::default());
        let task = {
            let mode = mode.clone();
            let generation = generation.clone();
            let counts = Arc::clone(&counts);
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    tokio::spawn(forward(
                        client,
                        upstream,
                        mode.subscribe(),
                        generation.subscribe(),
                        Arc::clone(&counts),
                    ));
                }
            })
        };
        Self {
            addr,
            mode,
            generation,
            counts,
            task,
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes what happens to bytes from now on; bytes held by a black hole move on under the
    /// new mode.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// Closes every connection open now, in both directions; new connections are served.
    pub fn cut(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.counts.open.load(Ordering::SeqCst)
    }

    /// Chunks a black hole holds now; zero once everything held was forwarded.
    pub fn held_chunks(&self) -> usize {
        self.counts.held.load(Ordering::SeqCst)
    }

    /// `url` (a `postgres://` URL of a loopback server) with its port replaced by the proxy's.
    ///
    /// # Panics
    /// If the URL names no port.
    pub fn url_for(&self, url: &str) -> String {
        let port = server_addr(url).port();
        url.replacen(&format!(":{port}/"), &format!(":{}/", self.addr.port()), 1)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

/// The loopback address of a `postgres://` URL's server.
///
/// # Panics
/// If the URL does not parse or names no port.
pub fn server_addr(url: &str) -> SocketAddr {
    let config: tokio_postgres::Config = url.parse().expect("database URL");
    let port = config
        .get_ports()
        .first()
        .copied()
        .expect("URL with a port");
    SocketAddr::from(([127, 0, 0, 1], port))
}

async fn forward(
    client: TcpStream,
    upstream: SocketAddr,
    mode: watch::Receiver<Mode>,
    mut generation: watch::Receiver<u64>,
    counts: Arc<Counts>,
) {
    generation.mark_unchanged();
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    counts.open.fetch_add(1, Ordering::SeqCst);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let both = async {
        tokio::join!(
            pump(client_read, server_write, mode.clone(), &counts),
            pump(server_read, client_write, mode, &counts),
        )
    };
    tokio::select! {
        _ = both => {}
        // Dropping the halves closes both sockets.
        _ = generation.changed() => {}
    }
    counts.open.fetch_sub(1, Ordering::SeqCst);
}

async fn pump(
    mut from: impl AsyncReadExt + Unpin,
    mut to: impl AsyncWriteExt + Unpin,
    mut mode: watch::Receiver<Mode>,
    counts: &Counts,
) {
    let mut buf = vec![0u8; CHUNK_BYTES];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        if *mode.borrow_and_update() == Mode::BlackHole {
            counts.held.fetch_add(1, Ordering::SeqCst);
            let released = mode.wait_for(|m| *m != Mode::BlackHole).await.is_ok();
            counts.held.fetch_sub(1, Ordering::SeqCst);
            if !released {
                return;
            }
        }
        let current = *mode.borrow_and_update();
        if let Mode::Delay(delay) = current {
            tokio::time::sleep(delay).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on a random loopback port.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
        let addr = listener.local_addr().expect("echo address");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(s: &mut TcpStream, text: &[u8]) -> Vec<u8> {
        s.write_all(text).await.expect("write");
        let mut got = vec![0u8; text.len()];
        s.read_exact(&mut got).await.expect("read");
        got
    }

    #[tokio::test]
    async fn passes_delays_holds_and_cuts() {
        let proxy = Proxy::start(echo().await).await;
        let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert_eq!(round_trip(&mut s, b"pass").await, b"pass");

        proxy.set(Mode::Delay(Duration::from_millis(100)));
        let sent = tokio::time::Instant::now();
        assert_eq!(round_trip(&mut s, b"slow").await, b"slow");
        // One delay each way.
        assert!(
            sent.elapsed() >= Duration::from_millis(200),
            "{:?}",
            sent.elapsed()
        );

        proxy.set(Mode::BlackHole);
        s.write_all(b"held").await.expect("write");
        let mut got = [0u8; 4];
        let read = tokio::time::timeout(Duration::from_millis(300), s.read_exact(&mut got)).await;
        assert!(read.is_err(), "a black hole forwards nothing");
        assert_eq!(proxy.held_chunks(), 1);
        proxy.set(Mode::Pass);
        s.read_exact(&mut got).await.expect("held bytes arrive");
        assert_eq!(&got, b"held");
        assert_eq!(proxy.held_chunks(), 0);

        assert_eq!(proxy.open_connections(), 1);
        proxy.cut();
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "a cut connection ends: {closed:?}"
        );
        let mut again = TcpStream::connect(proxy.addr()).await.expect("reconnect");
        assert_eq!(round_trip(&mut again, b"new").await, b"new");
    }

    #[tokio::test]
    async fn url_for_swaps_only_the_port() {
        let url = "postgres://postgres@127.0.0.1:5432/db?connect_timeout=5";
        assert_eq!(server_addr(url), SocketAddr::from(([127, 0, 0, 1], 5432)));
        let proxy = Proxy::start(server_addr(url)).await;
        assert_eq!(
            proxy.url_for(url),
            format!(
                "postgres://postgres@127.0.0.1:{}/db?connect_timeout=5",
                proxy.addr().port()
            )
        );
    }
}
