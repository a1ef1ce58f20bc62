//! TLS to the coordinator: the options, the rustls client settings they make, the connection,
//! and why a handshake failed, as a line with the flag that fixes it.
//!
//! The client does TLS in its own connector rather than with tonic's: under TLS 1.3 a client
//! finishes its handshake before the server has checked the client's certificate, so a
//! coordinator that refuses it answers with an alert on the first read, which hyper reports as
//! a closed connection and nothing more. The connector keeps that alert for the error line.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use anyhow::Context as _;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::codegen::http::Uri;

/// gRPC is HTTP/2, and HTTP/2 over TLS is negotiated by ALPN.
const ALPN_H2: &[u8] = b"h2";
/// The port of an `https://` endpoint that names none.
const HTTPS_PORT: u16 = 443;

/// How client commands reach a coordinator that serves TLS: an `https://` endpoint, checked
/// against the system's roots or `--tls-ca`, and a client certificate for mutual TLS.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "TLS to the coordinator")]
pub struct Tls {
    /// Trust only this CA (PEM) for the coordinator's certificate, instead of the system's roots.
    #[arg(long, global = true, env = "LEASEHOLD_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Present this client certificate (PEM) to a coordinator that requires one.
    #[arg(
        long,
        global = true,
        env = "LEASEHOLD_TLS_CLIENT_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long,
        global = true,
        env = "LEASEHOLD_TLS_CLIENT_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
}

impl Tls {
    /// Whether any TLS option was given.
    pub(super) fn given(&self) -> bool {
        self.tls_ca.is_some() || self.tls_cert.is_some()
    }

    /// The connector these options make, with the files read now so that a bad one is named.
    pub(super) fn connector(&self) -> anyhow::Result<Connector> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(self.roots()?);
        let mut config = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                let chain = certificates("--tls-cert", cert)?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .with_context(|| format!("reading --tls-key {}", key.display()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .context("--tls-cert and --tls-key")?
            }
            _ => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Connector {
            config: Arc::new(config),
            failure: Arc::default(),
        })
    }

    /// `--tls-ca` alone when given: a private CA should not share its trust with every public
    /// one. The system's roots otherwise (`SSL_CERT_FILE` and `SSL_CERT_DIR` are honoured).
    fn roots(&self) -> anyhow::Result<RootCertStore> {
        let mut roots = RootCertStore::empty();
        if let Some(ca) = &self.tls_ca {
            for certificate in certificates("--tls-ca", ca)? {
                roots
                    .add(certificate)
                    .with_context(|| format!("--tls-ca {}", ca.display()))?;
            }
            return Ok(roots);
        }
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        if roots.is_empty() {
            anyhow::bail!(
                "no CA certificates found on this system to check the coordinator's certificate \
                 with; name the coordinator's CA with --tls-ca"
            );
        }
        Ok(roots)
    }
}

fn certificates(flag: &str, path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .with_context(|| format!("reading {flag} {}", path.display()))?;
    if certificates.is_empty() {
        anyhow::bail!("{flag} {}: no PEM certificate in it", path.display());
    }
    Ok(certificates)
}

/// Opens TLS connections for a channel, and keeps the last reason one failed.
#[derive(Clone)]
pub(super) struct Connector {
    config: Arc<ClientConfig>,
    failure: Arc<Mutex<Option<rustls::Error>>>,
}

impl Connector {
    /// A TLS connection to `uri`'s host and port, whatever its scheme: tonic is handed the
    /// endpoint with `http://` so that it does not try TLS itself.
    pub(super) async fn connect(&self, uri: Uri) -> io::Result<TokioIo<Recorded>> {
        let host = uri
            .host()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host"))?;
        // An IPv6 address comes bracketed out of a URI.
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(HTTPS_PORT);
        let name = ServerName::try_from(host.clone())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let tcp = TcpStream::connect((host.as_str(), port)).await?;
        // Calls are small messages; waiting to fill packets only delays them.
        tcp.set_nodelay(true)?;
        let stream = TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await
            .inspect_err(|e| self.record(e))?;
        // A failure belongs to the connection it ended: a later one that works forgets it.
        *self.lock() = None;
        Ok(TokioIo::new(Recorded {
            stream,
            connector: self.clone(),
        }))
    }

    /// Why the last TLS connection failed, if it did.
    pub(super) fn failure(&self) -> Option<rustls::Error> {
        self.lock().clone()
    }

    fn record(&self, error: &io::Error) {
        if let Some(tls) = error
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        {
            *self.lock() = Some(tls.clone());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<rustls::Error>> {
        // The slot holds a whole value or none; a panic elsewhere cannot leave it half-written.
        self.failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A TLS connection that records a TLS error it meets on its connector.
pub(super) struct Recorded {
    stream: TlsStream<TcpStream>,
    connector: Connector,
}

impl Recorded {
    fn seen<T>(&self, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if let Poll::Ready(Err(e)) = &poll {
            self.connector.record(e);
        }
        poll
    }
}

impl AsyncRead for Recorded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_read(cx, buf);
        this.seen(poll)
    }
}

impl AsyncWrite for Recorded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.seen(poll)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_flush(cx);
        this.seen(poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_shutdown(cx);
        this.seen(poll)
    }
}

/// The rustls error among `error`'s causes. An `io::Error`'s `source` skips the error it wraps,
/// and rustls' errors come wrapped in one, so each is opened with `get_ref`.
pub(super) fn rustls_error<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(tls) = e
            .downcast_ref::<io::Error>()
            .and_then(io::Error::get_ref)
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls);
        }
        next = e.source();
    }
    None
}

/// Why a handshake failed, with the flag that fixes it where there is one.
pub(super) fn reason(error: &rustls::Error) -> String {
    match error {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "the coordinator's certificate is not signed by a CA this client trusts \
             (name the coordinator's CA with --tls-ca)"
                .to_owned()
        }
        rustls::Error::InvalidCertificate(
            e @ (CertificateError::NotValidForName
            | CertificateError::NotValidForNameContext { .. }),
        ) => format!(
            "the coordinator's certificate does not name the endpoint's host: {e} \
             (connect to a name the certificate holds)"
        ),
        rustls::Error::InvalidCertificate(e) => {
            format!("the coordinator's certificate was refused: {e}")
        }
        rustls::Error::AlertReceived(AlertDescription::CertificateRequired) => {
            "the coordinator requires a client certificate (pass --tls-cert and --tls-key)"
                .to_owned()
        }
        rustls::Error::AlertReceived(
            alert @ (AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::AccessDenied),
        ) => format!(
            "the coordinator refused the client certificate ({alert:?}): it must be signed by \
             a CA the coordinator trusts for clients (its --tls-client-ca)"
        ),
        rustls::Error::InvalidMessage(_) => format!(
            "the coordinator did not answer in TLS ({error}); if it serves plaintext, use an \
             http:// endpoint"
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use rustls::InvalidMessage;
    use rustls::pki_types::DnsName;

    use super::*;

    #[test]
    fn each_refusal_says_why_and_what_fixes_it() {
        let check = |error: rustls::Error, expected: &[&str]| {
            let line = reason(&error);
            for part in expected {
                assert!(line.contains(part), "no {part:?} in {line:?}");
            }
        };
        check(
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
            &["not signed by a CA this client trusts", "--tls-ca"],
        );
        check(
            rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
                expected: ServerName::DnsName(DnsName::try_from("coordinator.prod").unwrap()),
                presented: vec!["DnsName(\"localhost\")".to_owned()],
            }),
            &[
                "does not name the endpoint's host",
                "coordinator.prod",
                "localhost",
            ],
        );
        check(
            rustls::Error::InvalidCertificate(CertificateError::Expired),
            &["the coordinator's certificate was refused"],
        );
        check(
            rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
            &["requires a client certificate", "--tls-cert and --tls-key"],
        );
        check(
            rustls::Error::AlertReceived(AlertDescription::UnknownCA),
            &[
                "refused the client certificate (UnknownCA)",
                "--tls-client-ca",
            ],
        );
        check(
            rustls::Error::InvalidMessage(InvalidMessage::InvalidContentType),
            &["did not answer in TLS", "http://"],
        );
    }

    #[test]
    fn a_rustls_error_is_found_inside_the_io_errors_that_carry_it() {
        #[derive(Debug)]
        struct Outer(io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("transport error")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }

        let alert = rustls::Error::AlertReceived(AlertDescription::CertificateRequired);
        let outer = Outer(io::Error::new(io::ErrorKind::InvalidData, alert.clone()));
        assert_eq!(rustls_error(&outer), Some(&alert));
        let unrelated = Outer(io::Error::new(io::ErrorKind::ConnectionRefused, "refused"));
        assert_eq!(rustls_error(&unrelated), None);
    }
}
