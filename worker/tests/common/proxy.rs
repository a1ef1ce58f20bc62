//! A loopback TCP proxy that passes traffic or black-holes it, to cut a worker off from Postgres
//! without touching the server.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct Proxy {
    pub addr: SocketAddr,
    blackhole: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (blackhole, watching) = watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let watching = watching.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::join!(
                        pump(client_read, server_write, watching.clone()),
                        pump(server_read, client_write, watching),
                    );
                });
            }
        });
        Self {
            addr,
            blackhole,
            task,
        }
    }

    /// Holds every byte in both directions until [`Proxy::restore`]; connections stay open.
    pub fn black_hole(&self) {
        self.blackhole.send_replace(true);
    }

    pub fn restore(&self) {
        self.blackhole.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(
    mut from: impl AsyncReadExt + Unpin,
    mut to: impl AsyncWriteExt + Unpin,
    mut blackhole: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let Ok(n) = from.read(&mut buf).await else {
            return;
        };
        if n == 0 {
            return;
        }
        if blackhole.wait_for(|held| !*held).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// The URL of `url`'s database, reached through `proxy`.
pub fn through(url: &str, proxy: &Proxy) -> String {
    let config: tokio_postgres::Config = url.parse().expect("url");
    let port = config.get_ports().first().copied().expect("port");
    url.replacen(&format!(":{port}/"), &format!(":{}/", proxy.addr.port()), 1)
}

/// The server address of a loopback database URL.
pub fn server_addr(url: &str) -> SocketAddr {
    let config: tokio_postgres::Config = url.parse().expect("url");
    let port = config.get_ports().first().copied().expect("port");
    SocketAddr::from(([127, 0, 0, 1], port))
}
