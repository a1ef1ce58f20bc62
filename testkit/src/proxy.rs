//! A loopback TCP proxy between one process and PostgreSQL, to fault the network without
//! touching either end: pass traffic, delay it, black-hole it (connections stay open, bytes are
//! held until the proxy passes again), hold only the results of statements, or cut every open
//! connection. Bytes delayed or held when a cut comes are dropped, never forwarded.
//!
//! Holding results reads the server's side as PostgreSQL protocol messages (a type byte and a
//! length), from the first byte of each connection; it assumes no TLS or GSS negotiation, which
//! the suite's plain connections never start.

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
    /// Forwards the client's bytes, and the server's up to the first result of a statement on
    /// each connection; holds the rest of the server's, as [`Mode::BlackHole`] does, until the
    /// mode changes. Connections open and statements are prepared, then every statement runs
    /// and commits while its acknowledgement waits. A cut while it waits loses it.
    HoldResults,
}

impl Mode {
    /// Whether bytes going `direction` wait; under `HoldResults`, the server's wait from their
    /// first result on.
    fn holds(self, direction: Direction) -> bool {
        match self {
            Self::Pass | Self::Delay(_) => false,
            Self::BlackHole => true,
            Self::HoldResults => direction == Direction::ToClient,
        }
    }
}

/// Server messages that report a statement's execution: BindComplete, DataRow,
/// CommandComplete, EmptyQueryResponse. Startup, authentication and the replies to Parse and
/// Describe are none of these.
const RESULT_MESSAGES: &[u8] = b"2DCI";

/// Splits the server's side of a connection into protocol messages, across chunks.
#[derive(Default)]
struct Framer {
    /// The current message's type byte and length, as far as read.
    header: [u8; 5],
    header_len: usize,
    /// Bytes of the current message's body still to come.
    body_left: usize,
}

impl Framer {
    /// Takes the next bytes of the stream; returns where in them the first result message
    /// starts, if one does.
    fn first_result(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut first = None;
        let mut i = 0;
        while i < bytes.len() {
            if self.body_left > 0 {
                let skip = self.body_left.min(bytes.len() - i);
                self.body_left -= skip;
                i += skip;
                continue;
            }
            if self.header_len == 0 && first.is_none() && RESULT_MESSAGES.contains(&bytes[i]) {
                first = Some(i);
            }
            self.header[self.header_len] = bytes[i];
            self.header_len += 1;
            i += 1;
            if self.header_len == self.header.len() {
                let [_, a, b, c, d] = self.header;
                // The length counts itself but not the type byte.
                self.body_left = usize::try_from(u32::from_be_bytes([a, b, c, d]))
                    .unwrap_or(usize::MAX)
                    .saturating_sub(4);
                self.header_len = 0;
            }
        }
        first
    }
}

/// Which way a pump moves bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    ToServer,
    ToClient,
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
    /// Chunks read and not forwarded yet because the mode holds them.
    held: AtomicUsize,
    /// Chunks read and never forwarded: a cut (or the other side closing) came first.
    dropped: AtomicUsize,
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
                    tokio::spawn(connection(
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

    /// Closes every connection open now, in both directions; new connections are served. Bytes
    /// those connections were delaying or holding are dropped, even if the mode changes right
    /// after: a cut then [`Proxy::set`]`(Mode::Pass)` loses every held reply.
    pub fn cut(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.counts.open.load(Ordering::SeqCst)
    }

    /// Chunks held now (by a black hole, or results held); zero once everything held was
    /// forwarded or dropped.
    pub fn held_chunks(&self) -> usize {
        self.counts.held.load(Ordering::SeqCst)
    }

    /// Chunks read so far that never reached the other side, such as replies held when a cut
    /// came.
    pub fn dropped_chunks(&self) -> usize {
        self.counts.dropped.load(Ordering::SeqCst)
    }

    /// `url` (a `postgres://` URL of a loopback server) with its port replaced by the proxy's,
    /// and `sslmode=disable`: [`Mode::HoldResults`] reads the protocol's messages, which TLS
    /// would hide (the store's default, `prefer`, encrypts whenever the server offers TLS).
    ///
    /// # Panics
    /// If the URL names no port, or already names an `sslmode`.
    pub fn url_for(&self, url: &str) -> String {
        assert!(
            !url.contains("sslmode="),
            "the proxy needs plain connections: {url}"
        );
        let port = server_addr(url).port();
        let proxied = url.replacen(&format!(":{port}/"), &format!(":{}/", self.addr.port()), 1);
        let separator = if proxied.contains('?') { '&' } else { '?' };
        format!("{proxied}{separator}sslmode=disable")
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

async fn connection(
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
    let (cut_to_server, cut_to_client) = (generation.clone(), generation.clone());
    let both = async {
        tokio::join!(
            pump(
                client_read,
                server_write,
                Direction::ToServer,
                mode.clone(),
                cut_to_server,
                &counts
            ),
            pump(
                server_read,
                client_write,
                Direction::ToClient,
                mode,
                cut_to_client,
                &counts
            ),
        )
    };
    tokio::select! {
        // A cut and a release of held bytes can be seen in the same poll: the cut wins.
        biased;
        // Dropping the halves closes both sockets.
        _ = generation.changed() => {}
        _ = both => {}
    }
    counts.open.fetch_sub(1, Ordering::SeqCst);
}

async fn pump(
    mut from: impl AsyncReadExt + Unpin,
    mut to: impl AsyncWriteExt + Unpin,
    direction: Direction,
    mut mode: watch::Receiver<Mode>,
    generation: watch::Receiver<u64>,
    counts: &Counts,
) {
    let mut buf = vec![0u8; CHUNK_BYTES];
    // Every byte the server sends goes through it, whatever the mode, to stay in step.
    let mut framer = (direction == Direction::ToClient).then(Framer::default);
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        // A cut drops this future at any await: the chunk counts as dropped unless forwarded.
        let mut chunk = Chunk::read(counts);
        let first_result = framer.as_mut().and_then(|f| f.first_result(&buf[..n]));
        let current = *mode.borrow_and_update();
        let hold_from = match current {
            // Only the server's side is framed: the client's bytes have no result to hold.
            Mode::HoldResults => first_result,
            _ => current.holds(direction).then_some(0),
        };
        let mut from_byte = 0;
        if let Some(at) = hold_from {
            if !forward(&mut to, &buf[..at], &generation).await {
                return;
            }
            from_byte = at;
            chunk.hold();
            let released = mode.wait_for(|m| !m.holds(direction)).await.is_ok();
            chunk.release();
            if !released {
                return;
            }
        }
        let now = *mode.borrow_and_update();
        if let Mode::Delay(delay) = now {
            tokio::time::sleep(delay).await;
        }
        if !forward(&mut to, &buf[from_byte..n], &generation).await {
            return;
        }
        chunk.forwarded();
    }
}

/// Writes `bytes` on unless the connection was cut; false when the pump should stop.
async fn forward(
    to: &mut (impl AsyncWriteExt + Unpin),
    bytes: &[u8],
    generation: &watch::Receiver<u64>,
) -> bool {
    // The mode that released held bytes may have changed after a cut, on another thread, while
    // this connection was being polled: bytes of a cut connection are never forwarded.
    if generation.has_changed().unwrap_or(true) {
        return false;
    }
    bytes.is_empty() || to.write_all(bytes).await.is_ok()
}

/// One chunk on its way through a pump, kept in the proxy's counts whether its future runs to
/// the end or is dropped by a cut.
struct Chunk<'a> {
    counts: &'a Counts,
    held: bool,
    forwarded: bool,
}

impl<'a> Chunk<'a> {
    fn read(counts: &'a Counts) -> Self {
        Self {
            counts,
            held: false,
            forwarded: false,
        }
    }

    fn hold(&mut self) {
        self.held = true;
        self.counts.held.fetch_add(1, Ordering::SeqCst);
    }

    fn release(&mut self) {
        if std::mem::take(&mut self.held) {
            self.counts.held.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn forwarded(mut self) {
        self.forwarded = true;
    }
}

impl Drop for Chunk<'_> {
    fn drop(&mut self) {
        self.release();
        if !self.forwarded {
            self.counts.dropped.fetch_add(1, Ordering::SeqCst);
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

    /// A protocol message: its type byte, its length, its body.
    fn message(kind: u8, body: &[u8]) -> Vec<u8> {
        let len = u32::try_from(body.len() + 4).expect("short body");
        [&[kind][..], &len.to_be_bytes(), body].concat()
    }

    #[test]
    fn framer_finds_results_across_chunks() {
        let described = message(b't', b"C is in the body, not a type");
        let done = message(b'C', b"UPDATE 1\0");
        let mut framer = Framer::default();
        assert_eq!(framer.first_result(&described[..3]), None);
        assert_eq!(framer.first_result(&described[3..]), None);
        let both = [&message(b'1', b"")[..], &done].concat();
        assert_eq!(framer.first_result(&both), Some(5));
        assert_eq!(framer.first_result(&message(b'Z', b"I")), None);
        assert_eq!(framer.first_result(&message(b'2', b"")[..1]), Some(0));
    }

    /// Waits, polling every 10 ms for up to 5 s, until `count` is one.
    async fn wait_for_one(what: &str, count: impl Fn() -> usize) {
        crate::wait_for_every(
            Duration::from_secs(5),
            Duration::from_millis(10),
            what,
            || async { (count() == 1).then_some(()) },
        )
        .await;
    }

    #[tokio::test]
    async fn holds_results_and_a_cut_loses_them() {
        let proxy = Proxy::start(echo().await).await;
        let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
        proxy.set(Mode::HoldResults);
        let parsed = message(b'1', b"");
        assert_eq!(round_trip(&mut s, &parsed).await, parsed);

        // The echo is the server's reply: up to the result it passes, from there it is held,
        // so the request went through.
        let described = message(b'n', b"");
        let done = message(b'C', b"UPDATE 1\0");
        s.write_all(&[&described[..], &done].concat())
            .await
            .expect("write");
        let mut got = vec![0u8; described.len()];
        s.read_exact(&mut got).await.expect("read");
        assert_eq!(got, described);
        wait_for_one("the result to be held", || proxy.held_chunks()).await;
        assert_eq!(proxy.dropped_chunks(), 0);

        proxy.cut();
        proxy.set(Mode::Pass);
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "the held result never arrives: {closed:?} {rest:?}"
        );
        wait_for_one("the held result to be dropped", || proxy.dropped_chunks()).await;
        assert_eq!(proxy.held_chunks(), 0);
    }

    #[tokio::test]
    async fn url_for_swaps_the_port_and_turns_tls_off() {
        let url = "postgres://postgres@127.0.0.1:5432/db?connect_timeout=5";
        assert_eq!(server_addr(url), SocketAddr::from(([127, 0, 0, 1], 5432)));
        let proxy = Proxy::start(server_addr(url)).await;
        let port = proxy.addr().port();
        assert_eq!(
            proxy.url_for(url),
            format!("postgres://postgres@127.0.0.1:{port}/db?connect_timeout=5&sslmode=disable")
        );
        assert_eq!(
            proxy.url_for("postgres://postgres@127.0.0.1:5432/db"),
            format!("postgres://postgres@127.0.0.1:{port}/db?sslmode=disable")
        );
    }
}
