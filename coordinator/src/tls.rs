//! TLS for the API: the certificate, its key and the client CA, read from files and read again
//! when they change, and the handshakes of incoming connections.
//!
//! tonic's own TLS cannot change its certificate while it serves, and cert-manager rotates
//! certificates in place (often by swapping a symlink), so the coordinator terminates TLS
//! itself: each connection is accepted with the rustls configuration built from the files'
//! current contents.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::Stream;

/// How often, at most, the files are read again to see whether they changed. They are read
/// when a connection arrives, so an idle coordinator reads nothing, and a rotated certificate
/// is served within this long.
pub const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How long a client may take over its handshake before its connection is closed, so that
/// connections that never speak do not pile up.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a refused client may take to close its side after the alert, and how many of its
/// bytes are read meanwhile (see `close_refused`).
const REFUSED_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
const REFUSED_DRAIN_BYTES: usize = 64 * 1024;
/// gRPC is HTTP/2, and HTTP/2 over TLS is negotiated by ALPN.
const ALPN_H2: &[u8] = b"h2";

/// Where the certificate, its key and the client CA are.
#[derive(Debug, Clone)]
pub struct Config {
    /// The server's certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// When set, every client must present a certificate signed by one of these CAs (PEM).
    pub client_ca: Option<PathBuf>,
}

/// Files that cannot serve TLS.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A file is not valid PEM.
    #[error("{}: not valid PEM: {source}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: pem::Error,
    },
    /// A certificate file holds no certificate.
    #[error("{}: no PEM certificate in it", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The key file holds no private key.
    #[error("{}: no PEM private key in it", path.display())]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// A client CA certificate that rustls cannot use as a trust anchor.
    #[error("{}: not a usable CA certificate: {source}", path.display())]
    ClientCa {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls::Error,
    },
    /// The client CAs cannot verify client certificates.
    #[error("verifying client certificates: {0}")]
    ClientVerifier(#[from] VerifierBuilderError),
    /// The key does not belong to the certificate, or is of a kind rustls cannot sign with.
    #[error(
        "the key in {} does not fit the certificate in {}: {source}",
        key.display(),
        cert.display()
    )]
    Pair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// Why.
        #[source]
        source: rustls::Error,
    },
    /// rustls refused the protocol versions (never with the ring provider's defaults).
    #[error("TLS configuration: {0}")]
    Rustls(#[source] rustls::Error),
}

/// What reading the files again found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    /// They hold what is being served.
    Unchanged,
    /// They changed, and new connections get the new certificate (or client CA).
    Reloaded,
    /// They changed but cannot be used (a warning was logged); the previous files still serve.
    Refused,
    /// They still hold the same unusable contents; no new warning.
    RefusedAgain,
}

/// Accepts TLS connections with the certificate the files hold; cheap to clone.
#[derive(Clone)]
pub struct Acceptor {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    check_every: Duration,
    state: Mutex<State>,
}

struct State {
    server: Arc<ServerConfig>,
    /// The contents `server` was built from.
    loaded: Contents,
    /// What the last refused reload read (or why it could not read), so that one failure logs
    /// one warning however many times it is seen again.
    refused: Option<Result<Contents, String>>,
    checked_at: Instant,
}

/// The files' bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Contents {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl Acceptor {
    /// Reads the files; they must serve TLS now, or the error names the file at fault.
    pub fn load(config: Config) -> Result<Self, Error> {
        Self::checking_every(config, RELOAD_CHECK_INTERVAL)
    }

    fn checking_every(config: Config, check_every: Duration) -> Result<Self, Error> {
        let loaded = read(&config)?;
        let server = Arc::new(build(&config, &loaded)?);
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                check_every,
                state: Mutex::new(State {
                    server,
                    loaded,
                    refused: None,
                    checked_at: Instant::now(),
                }),
            }),
        })
    }

    /// Whether clients must present a certificate.
    pub fn requires_client_certificates(&self) -> bool {
        self.inner.config.client_ca.is_some()
    }

    /// The TLS connections made on `listener`: each handshake runs on its own task, so that a
    /// slow client delays no other, and one that fails is logged and dropped without stopping
    /// the stream. Dropping the stream closes the listener.
    pub fn incoming(&self, listener: TcpListener) -> Incoming {
        Incoming {
            listener,
            acceptor: self.clone(),
            handshakes: JoinSet::new(),
        }
    }

    /// Reads the files now and serves their contents to new connections if they changed and
    /// can be used; otherwise keeps serving what it served.
    pub fn refresh(&self) -> Refresh {
        let mut state = self.lock();
        self.refresh_locked(&mut state)
    }

    /// The configuration for a new connection, after reading the files again if they were last
    /// read more than `check_every` ago.
    fn server_config(&self) -> Arc<ServerConfig> {
        let mut state = self.lock();
        if state.checked_at.elapsed() >= self.inner.check_every {
            self.refresh_locked(&mut state);
        }
        state.server.clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is replaced whole, never left half-written, so a panic elsewhere while it
        // was locked leaves it usable.
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    // The files are read under the lock: they are small, it happens at most once per
    // `check_every`, and two handshakes reading them at once would log a bad rotation twice.
    fn refresh_locked(&self, state: &mut State) -> Refresh {
        let config = &self.inner.config;
        state.checked_at = Instant::now();
        let seen = read(config).map_err(|e| e.to_string());
        if seen.as_ref() == Ok(&state.loaded) {
            state.refused = None;
            return Refresh::Unchanged;
        }
        if state.refused.as_ref() == Some(&seen) {
            return Refresh::RefusedAgain;
        }
        let built = seen.clone().and_then(|contents| {
            let server = build(config, &contents).map_err(|e| e.to_string())?;
            Ok((server, contents))
        });
        match built {
            Ok((server, contents)) => {
                state.server = Arc::new(server);
                state.loaded = contents;
                state.refused = None;
                tracing::info!(cert = %config.cert.display(), "TLS files changed: reloaded");
                Refresh::Reloaded
            }
            Err(error) => {
                tracing::warn!(
                    "TLS files changed but cannot be used, still serving the previous ones: {error}"
                );
                state.refused = Some(seen);
                Refresh::Refused
            }
        }
    }
}

/// TLS connections, as tonic's `serve_with_incoming` takes them.
pub struct Incoming {
    listener: TcpListener,
    acceptor: Acceptor,
    handshakes: JoinSet<Option<TlsStream<TcpStream>>>,
}

impl Stream for Incoming {
    type Item = io::Result<TlsStream<TcpStream>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            match this.listener.poll_accept(cx) {
                Poll::Ready(Ok((tcp, peer))) => {
                    let acceptor = this.acceptor.clone();
                    this.handshakes.spawn(handshake(acceptor, tcp, peer));
                }
                // As with plain TCP: tonic logs the error and asks for the next connection.
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                Poll::Pending => break,
            }
        }
        loop {
            match this.handshakes.poll_join_next(cx) {
                Poll::Ready(Some(Ok(Some(stream)))) => return Poll::Ready(Some(Ok(stream))),
                Poll::Ready(Some(Ok(None))) => {}
                Poll::Ready(Some(Err(e))) => {
                    tracing::warn!("TLS handshake task failed: {e}");
                }
                // No handshake is done: the listener and the handshakes have the waker.
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}

async fn handshake(
    acceptor: Acceptor,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Option<TlsStream<TcpStream>> {
    let accept = TlsAcceptor::from(acceptor.server_config())
        .accept(tcp)
        .into_fallible();
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err((e, tcp))) => {
            tracing::info!(%peer, "TLS handshake failed: {e}");
            close_refused(tcp).await;
            None
        }
        Err(_) => {
            tracing::info!(%peer, "TLS handshake not done within {HANDSHAKE_TIMEOUT:?}");
            None
        }
    }
}

/// Closes a connection whose handshake failed so that the client reads the alert saying why.
/// Under TLS 1.3 the client sends its first request right after its certificate, before the
/// refusal comes back, and a socket closed with unread input makes the kernel send a reset,
/// which can destroy the alert before the client reads it. So this side is shut first, and the
/// client's bytes are read and dropped until it closes, for a bounded time and size.
async fn close_refused(mut tcp: TcpStream) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let drain = async {
        tcp.shutdown().await?;
        let mut sink = [0; 4096];
        let mut left = REFUSED_DRAIN_BYTES;
        loop {
            let n = tcp.read(&mut sink).await?;
            if n == 0 || n >= left {
                return Ok::<_, io::Error>(());
            }
            left -= n;
        }
    };
    // Either way the connection is closed; a client that keeps sending only loses its alert.
    let _ = tokio::time::timeout(REFUSED_CLOSE_TIMEOUT, drain).await;
}

fn read(config: &Config) -> Result<Contents, Error> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })
    };
    Ok(Contents {
        cert: read(&config.cert)?,
        key: read(&config.key)?,
        client_ca: config.client_ca.as_deref().map(read).transpose()?,
    })
}

fn build(config: &Config, contents: &Contents) -> Result<ServerConfig, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates(&config.cert, &contents.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&contents.key).map_err(|source| match source {
        pem::Error::NoItemsFound => Error::NoKey {
            path: config.key.clone(),
        },
        source => Error::Pem {
            path: config.key.clone(),
            source,
        },
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(Error::Rustls)?;
    let builder = match config
        .client_ca
        .as_deref()
        .zip(contents.client_ca.as_deref())
    {
        Some((path, pem)) => {
            builder.with_client_cert_verifier(client_verifier(path, pem, provider)?)
        }
        None => builder.with_no_client_auth(),
    };
    let mut server = builder
        .with_single_cert(chain, key)
        .map_err(|source| Error::Pair {
            cert: config.cert.clone(),
            key: config.key.clone(),
            source,
        })?;
    server.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(server)
}

fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| Error::Pem {
            path: path.to_owned(),
            source,
        })?;
    if certificates.is_empty() {
        return Err(Error::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certificates)
}

fn client_verifier(
    path: &Path,
    pem: &[u8],
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, Error> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates(path, pem)? {
        roots.add(certificate).map_err(|source| Error::ClientCa {
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?)
}

#[cfg(test)]
mod tests {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use rustls::ClientConfig;
    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio_rustls::TlsConnector;

    use super::*;

    struct Ca {
        issuer: Issuer<'static, KeyPair>,
        pem: String,
    }

    impl Ca {
        fn new(name: &str) -> Self {
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            let key = KeyPair::generate().expect("key");
            let pem = params.self_signed(&key).expect("self-signed").pem();
            Self {
                issuer: Issuer::new(params, key),
                pem,
            }
        }

        /// A leaf for `name`, as (certificate PEM, key PEM, certificate DER).
        fn leaf(&self, name: &str) -> (String, String, Vec<u8>) {
            let params = CertificateParams::new(vec![name.to_owned()]).expect("params");
            let key = KeyPair::generate().expect("key");
            let cert = params.signed_by(&key, &self.issuer).expect("signed");
            (cert.pem(), key.serialize_pem(), cert.der().to_vec())
        }
    }

    struct Files {
        dir: PathBuf,
        config: Config,
    }

    impl Files {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("leasehold-tls-unit-{}-{name}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("dir");
            let config = Config {
                cert: dir.join("tls.crt"),
                key: dir.join("tls.key"),
                client_ca: None,
            };
            Self { dir, config }
        }

        fn write(&self, path: &Path, contents: &str) {
            std::fs::write(path, contents).expect("write");
        }

        fn serve(&self, leaf: &(String, String, Vec<u8>)) {
            self.write(&self.config.cert, &leaf.0);
            self.write(&self.config.key, &leaf.1);
        }
    }

    impl Drop for Files {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// The certificate the acceptor presents to a client trusting `ca`, once a byte went there
    /// and back; the client presents `client` if given.
    async fn handshake_with(
        acceptor: &Acceptor,
        ca: &Ca,
        client: Option<&(String, String, Vec<u8>)>,
    ) -> Result<Vec<u8>, io::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).expect("ca pem"))
            .expect("root");
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
        let config = match client {
            Some((cert, key, _)) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_slice(cert.as_bytes()).expect("cert")],
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key"),
                )
                .expect("client auth"),
            None => builder.with_no_client_auth(),
        };
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server = async {
            let mut stream = TlsAcceptor::from(acceptor.server_config())
                .accept(server_io)
                .await?;
            let mut byte = [0; 1];
            stream.read_exact(&mut byte).await?;
            stream.write_all(&byte).await?;
            stream.flush().await
        };
        let client = async {
            let mut stream = TlsConnector::from(Arc::new(config))
                .connect(ServerName::try_from("localhost").expect("name"), client_io)
                .await?;
            stream.write_all(b"x").await?;
            stream.flush().await?;
            let mut byte = [0; 1];
            stream.read_exact(&mut byte).await?;
            let (_, session) = stream.get_ref();
            Ok::<_, io::Error>(session.peer_certificates().expect("a certificate")[0].to_vec())
        };
        // The client's error first: that is what a refused client sees.
        let (served, presented) = tokio::join!(server, client);
        let presented = presented?;
        served?;
        Ok(presented)
    }

    #[tokio::test]
    async fn changed_files_are_served_to_new_connections_and_unchanged_ones_are_not_reloaded() {
        let ca = Ca::new("ca");
        let files = Files::new("rotate");
        let first = ca.leaf("localhost");
        files.serve(&first);
        let acceptor = Acceptor::checking_every(files.config.clone(), Duration::ZERO).unwrap();
        assert_eq!(handshake_with(&acceptor, &ca, None).await.unwrap(), first.2);
        assert_eq!(acceptor.refresh(), Refresh::Unchanged);

        let second = ca.leaf("localhost");
        files.serve(&second);
        assert_eq!(
            handshake_with(&acceptor, &ca, None).await.unwrap(),
            second.2
        );
        assert_eq!(acceptor.refresh(), Refresh::Unchanged);
    }

    #[tokio::test]
    async fn a_broken_rotation_keeps_the_previous_certificate_and_warns_once() {
        let ca = Ca::new("ca");
        let files = Files::new("broken");
        let first = ca.leaf("localhost");
        files.serve(&first);
        let acceptor = Acceptor::checking_every(files.config.clone(), Duration::ZERO).unwrap();

        // Half a rotation: the new certificate without its key.
        let second = ca.leaf("localhost");
        files.write(&files.config.cert, &second.0);
        assert_eq!(acceptor.refresh(), Refresh::Refused);
        assert_eq!(acceptor.refresh(), Refresh::RefusedAgain);
        assert_eq!(handshake_with(&acceptor, &ca, None).await.unwrap(), first.2);
        // A file that vanished is one more failure, warned about once.
        std::fs::remove_file(&files.config.key).unwrap();
        assert_eq!(acceptor.refresh(), Refresh::Refused);
        assert_eq!(acceptor.refresh(), Refresh::RefusedAgain);
        assert_eq!(handshake_with(&acceptor, &ca, None).await.unwrap(), first.2);

        // The rotation completes.
        files.write(&files.config.key, &second.1);
        assert_eq!(acceptor.refresh(), Refresh::Reloaded);
        assert_eq!(
            handshake_with(&acceptor, &ca, None).await.unwrap(),
            second.2
        );
    }

    #[tokio::test]
    async fn a_rotated_client_ca_decides_which_client_certificates_are_accepted() {
        let ca = Ca::new("ca");
        let old_clients = Ca::new("old clients");
        let new_clients = Ca::new("new clients");
        let mut files = Files::new("client-ca");
        files.serve(&ca.leaf("localhost"));
        let client_ca = files.dir.join("client-ca.crt");
        files.write(&client_ca, &old_clients.pem);
        files.config.client_ca = Some(client_ca.clone());
        let acceptor = Acceptor::checking_every(files.config.clone(), Duration::ZERO).unwrap();
        assert!(acceptor.requires_client_certificates());
        let old_client = old_clients.leaf("client");
        let new_client = new_clients.leaf("client");

        handshake_with(&acceptor, &ca, Some(&old_client))
            .await
            .unwrap();
        let refused = handshake_with(&acceptor, &ca, None).await.unwrap_err();
        assert!(
            refused.to_string().contains("CertificateRequired"),
            "{refused}"
        );
        handshake_with(&acceptor, &ca, Some(&new_client))
            .await
            .unwrap_err();

        files.write(&client_ca, &new_clients.pem);
        handshake_with(&acceptor, &ca, Some(&new_client))
            .await
            .unwrap();
        handshake_with(&acceptor, &ca, Some(&old_client))
            .await
            .unwrap_err();
    }

    #[test]
    fn unusable_files_are_refused_at_start_naming_the_file() {
        let ca = Ca::new("ca");
        let files = Files::new("start");
        let load = || Acceptor::load(files.config.clone()).err().expect("refused");

        let error = load();
        assert!(matches!(&error, Error::Read { path, .. } if *path == files.config.cert));

        let (cert, _, _) = ca.leaf("localhost");
        let (_, other_key, _) = ca.leaf("localhost");
        files.write(&files.config.cert, &cert);
        files.write(&files.config.key, "no key here");
        let error = load();
        assert!(matches!(&error, Error::NoKey { path } if *path == files.config.key));

        files.write(&files.config.key, &other_key);
        let error = load();
        assert!(matches!(error, Error::Pair { .. }), "{error}");

        files.write(&files.config.cert, "no certificate here");
        let error = load();
        assert!(matches!(&error, Error::NoCertificate { path } if *path == files.config.cert));
    }
}
