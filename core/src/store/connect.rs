//! Connecting to the database: the URL, libpq's TLS parameters, and the rustls connector made
//! from them, for the pool, the listening connection and the migrations alike.
//!
//! tokio-postgres knows `sslmode` only as `disable`, `prefer` and `require`, and refuses the
//! other TLS parameters of libpq's URLs. They are read here instead ([`split_url`]), taken out of
//! the URL before tokio-postgres parses the rest, and turned into a [`Policy`] by one pure rule
//! ([`decide`]): whether to ask for TLS, and what to check of the server's certificate.
//!
//! | `sslmode` | encrypts | checks the chain | checks the host name |
//! |---|---|---|---|
//! | `disable` | no | | |
//! | `prefer` (default) | when the server offers it | only with `sslrootcert=FILE` | no |
//! | `require` | yes, or fails | only with `sslrootcert=FILE` | no |
//! | `verify-ca` | yes, or fails | against `sslrootcert=FILE` (required) | no |
//! | `verify-full` | yes, or fails | against `sslrootcert`, else the system's roots | yes |
//!
//! `sslrootcert=system` names the system's trusted roots and, as in libpq, allows only
//! `verify-full` (and is its default): a public CA issues certificates to anyone, so only the host
//! name makes its chain mean something. libpq's files in `~/.postgresql/` are not read: a
//! service's files are named in its URL.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::config::{Host, SslMode as WireMode};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{Client, Config, Connection, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::Error;

/// The port a host without one is reached on, as in libpq.
const DEFAULT_PORT: u16 = 5432;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Never encrypt.
    Disable,
    /// Encrypt when the server offers it.
    Prefer,
    /// Encrypt, or fail.
    Require,
    /// Encrypt, and check the certificate's chain against `sslrootcert`.
    VerifyCa,
    /// Encrypt, and check the chain and that the certificate names the host.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => return None,
        })
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        })
    }
}

/// The TLS settings of a database URL cannot be used. Nothing was sent to the database.
#[derive(Debug, thiserror::Error)]
pub enum TlsSettingsError {
    /// `sslmode` names no mode this build knows.
    #[error("sslmode={0:?}: use disable, prefer, require, verify-ca or verify-full")]
    UnknownMode(String),
    /// A parameter's value is not valid percent-encoded UTF-8.
    #[error("the URL parameter {0} is not valid percent-encoded UTF-8")]
    BadEncoding(&'static str),
    /// `verify-ca` without a CA to verify against.
    #[error(
        "sslmode=verify-ca needs sslrootcert=FILE, the CA to check the server's certificate against"
    )]
    VerifyCaWithoutRootCert,
    /// `sslrootcert=system` with a mode that does not check the host name.
    #[error(
        "sslrootcert=system needs sslmode=verify-full, not {0}: a public CA issues certificates \
         to anyone, so only the host name check makes its chain mean something"
    )]
    SystemRootsWithoutHostCheck(SslMode),
    /// A client certificate without its key, or a key without its certificate.
    #[error("sslcert and sslkey go together: {missing} is missing")]
    HalfClientCert {
        /// The parameter that is missing.
        missing: &'static str,
    },
    /// A file named in the URL cannot be read or holds nothing usable.
    #[error("{param}={}: {reason}", path.display())]
    File {
        /// The URL parameter that names it.
        param: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The system has no trusted roots to verify against.
    #[error(
        "no trusted root certificates found on this system ({0}); name a CA with sslrootcert=FILE"
    )]
    NoSystemRoots(String),
    /// rustls refused the settings.
    #[error("TLS settings: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Where trusted CA certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Roots {
    /// The certificates in this PEM file.
    File(PathBuf),
    /// The system's trust store.
    System,
}

/// What is checked of the server's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verify {
    /// Nothing but that the server holds the certificate's key: encryption against eavesdropping,
    /// not against a server in the middle (channel binding covers password authentication).
    Nothing,
    /// That it chains to one of these roots.
    Chain(Roots),
    /// That it chains to one of these roots and names the host.
    Full(Roots),
}

/// The TLS parameters of a database URL, as written.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Params {
    mode: Option<SslMode>,
    rootcert: Option<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

/// What connections do about TLS, decided from [`Params`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct Policy {
    /// The mode in force, the default applied.
    mode: SslMode,
    verify: Verify,
    /// The client certificate chain and its key, sent when the server asks for one.
    client_cert: Option<(PathBuf, PathBuf)>,
}

impl Policy {
    /// What tokio-postgres is told: whether to ask for TLS and whether to insist.
    fn wire_mode(&self) -> WireMode {
        match self.mode {
            SslMode::Disable => WireMode::Disable,
            SslMode::Prefer => WireMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => WireMode::Require,
        }
    }
}

/// Takes libpq's TLS parameters out of a `postgres://` URL: returns the URL tokio-postgres is to
/// parse and the parameters. `None` for a `key=value` connection string, which is left to
/// tokio-postgres whole (it knows `sslmode=disable|prefer|require` only).
fn split_url(url: &str) -> Result<(String, Option<Params>), TlsSettingsError> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Ok((url.to_owned(), None));
    }
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), Some(Params::default())));
    };
    let mut params = Params::default();
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = match key {
            "sslmode" => "sslmode",
            "sslrootcert" => "sslrootcert",
            "sslcert" => "sslcert",
            "sslkey" => "sslkey",
            _ => {
                kept.push(pair);
                continue;
            }
        };
        let value = percent_decode(value).ok_or(TlsSettingsError::BadEncoding(name))?;
        // An empty value means the default, as in libpq.
        let value = (!value.is_empty()).then_some(value);
        match name {
            "sslmode" => {
                params.mode = value
                    .map(|v| SslMode::parse(&v).ok_or(TlsSettingsError::UnknownMode(v)))
                    .transpose()?;
            }
            "sslrootcert" => params.rootcert = value,
            "sslcert" => params.cert = value.map(PathBuf::from),
            _ => params.key = value.map(PathBuf::from),
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, Some(params)))
}

/// `%XX` escapes decoded; `None` for a broken escape or bytes that are not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The rule: what a connection with these parameters encrypts and checks, as in libpq.
fn decide(params: Params) -> Result<Policy, TlsSettingsError> {
    let client_cert = match (params.cert, params.key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (Some(_), None) => return Err(TlsSettingsError::HalfClientCert { missing: "sslkey" }),
        (None, Some(_)) => return Err(TlsSettingsError::HalfClientCert { missing: "sslcert" }),
    };
    let roots = params.rootcert.map(|r| match r.as_str() {
        "system" => Roots::System,
        _ => Roots::File(r.into()),
    });
    let mode = match (params.mode, &roots) {
        (Some(mode), _) => mode,
        // libpq: the system's roots make verify-full the default.
        (None, Some(Roots::System)) => SslMode::VerifyFull,
        (None, _) => SslMode::Prefer,
    };
    if roots == Some(Roots::System) && mode != SslMode::VerifyFull {
        return Err(TlsSettingsError::SystemRootsWithoutHostCheck(mode));
    }
    let verify = match (mode, roots) {
        (SslMode::Disable, _) => {
            return Ok(Policy {
                mode,
                verify: Verify::Nothing,
                client_cert: None,
            });
        }
        // libpq: a CA file makes `prefer` and `require` check the chain, as `verify-ca` does.
        (SslMode::Prefer | SslMode::Require, Some(roots)) => Verify::Chain(roots),
        (SslMode::Prefer | SslMode::Require, None) => Verify::Nothing,
        (SslMode::VerifyCa, Some(roots)) => Verify::Chain(roots),
        (SslMode::VerifyCa, None) => return Err(TlsSettingsError::VerifyCaWithoutRootCert),
        (SslMode::VerifyFull, roots) => Verify::Full(roots.unwrap_or(Roots::System)),
    };
    Ok(Policy {
        mode,
        verify,
        client_cert,
    })
}

/// The rustls client settings that carry out `policy`; reads the files it names.
fn client_config(policy: &Policy) -> Result<ClientConfig, TlsSettingsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?;
    let builder = match &policy.verify {
        Verify::Nothing => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(Arc::clone(&provider)))),
        Verify::Chain(roots) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOnly(webpki(roots, &provider)?))),
        Verify::Full(roots) => builder.with_webpki_verifier(webpki(roots, &provider)?),
    };
    Ok(match &policy.client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = read_certs("sslcert", cert)?;
            let key = read_key(key)?;
            builder.with_client_auth_cert(chain, key)?
        }
    })
}

fn webpki(
    roots: &Roots,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, TlsSettingsError> {
    let mut store = RootCertStore::empty();
    match roots {
        Roots::File(path) => {
            for cert in read_certs("sslrootcert", path)? {
                store
                    .add(cert)
                    .map_err(|e| file_error("sslrootcert", path, e))?;
            }
        }
        Roots::System => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
                return Err(TlsSettingsError::NoSystemRoots(errors.join("; ")));
            }
        }
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(store), Arc::clone(provider))
        .build()
        .map_err(|e| TlsSettingsError::Rustls(rustls::Error::General(e.to_string())))
}

fn file_error(param: &'static str, path: &Path, reason: impl fmt::Display) -> TlsSettingsError {
    TlsSettingsError::File {
        param,
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

fn read_certs(
    param: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsSettingsError> {
    let pem = std::fs::read(path).map_err(|e| file_error(param, path, e))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(param, path, e))?;
    if certs.is_empty() {
        return Err(file_error(param, path, "no PEM certificate in it"));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsSettingsError> {
    let pem = std::fs::read(path).map_err(|e| file_error("sslkey", path, e))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| file_error("sslkey", path, e))
}

/// Accepts any certificate, but still checks that the server signed the handshake with its key.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Checks the chain but not the host name (`verify-ca`). webpki checks the name only after the
/// chain, expiry included, has passed, so a name error means that everything else held.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// tokio-postgres over rustls, with handshake failures worded for the person reading the log.
#[derive(Clone)]
pub(super) struct MakeTls {
    inner: MakeRustlsConnect,
    /// What certificates are checked against, for the message when the issuer is unknown.
    trust: Arc<str>,
}

impl<S> MakeTlsConnect<S> for MakeTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = <MakeRustlsConnect as MakeTlsConnect<S>>::Stream;
    type TlsConnect = Handshake<<MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect>;
    type Error = Infallible;

    fn make_tls_connect(&mut self, host: &str) -> Result<Self::TlsConnect, Infallible> {
        Ok(Handshake {
            inner: MakeTlsConnect::<S>::make_tls_connect(&mut self.inner, host)?,
            host: host.to_owned(),
            trust: Arc::clone(&self.trust),
        })
    }
}

/// One handshake with `host`.
pub(super) struct Handshake<T> {
    inner: T,
    host: String,
    trust: Arc<str>,
}

impl<S, T> TlsConnect<S> for Handshake<T>
where
    T: TlsConnect<S>,
    T::Future: Send + 'static,
    T::Stream: 'static,
{
    type Stream = T::Stream;
    type Error = HandshakeError;
    type Future = Pin<Box<dyn Future<Output = Result<T::Stream, HandshakeError>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let Handshake { inner, host, trust } = self;
        let handshake = inner.connect(stream);
        Box::pin(async move {
            handshake.await.map_err(|e| {
                let reason = describe(&*e.into(), &host, &trust);
                HandshakeError { host, reason }
            })
        })
    }
}

/// A TLS handshake with the server failed.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub(super) struct HandshakeError {
    /// The host as written in the URL, the name the certificate must carry.
    host: String,
    reason: String,
}

/// Why a handshake failed, in a few words; rustls' own wording where it is clear already.
fn describe(error: &(dyn StdError + 'static), host: &str, trust: &str) -> String {
    let rustls_error = error
        .downcast_ref::<io::Error>()
        .and_then(io::Error::get_ref)
        .and_then(|e| e.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(rustls::Error::InvalidCertificate(CertificateError::NotValidForName)) => {
            format!("certificate not valid for name {host:?}")
        }
        Some(rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
            presented,
            ..
        })) => {
            let names: Vec<&str> = presented.iter().map(|n| plain_name(n)).collect();
            format!(
                "certificate not valid for name {host:?}; it is valid for {}",
                names.join(", ")
            )
        }
        Some(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)) => {
            format!("certificate not issued by a CA in {trust}")
        }
        Some(other) => other.to_string(),
        None => error.to_string(),
    }
}

/// A name from a certificate as webpki shows it (`DnsName("db")`, `IpAddress(10.0.0.1)`), plain.
fn plain_name(shown: &str) -> &str {
    shown
        .strip_prefix("DnsName(\"")
        .and_then(|rest| rest.strip_suffix("\")"))
        .or_else(|| {
            shown
                .strip_prefix("IpAddress(")
                .and_then(|rest| rest.strip_suffix(')'))
        })
        .unwrap_or(shown)
}

/// The stream of a connection made by [`Connector::connect`].
type TlsStream = <MakeTls as MakeTlsConnect<Socket>>::Stream;

/// Everything needed to open a connection: tokio-postgres' settings and the TLS connector.
#[derive(Clone)]
pub(super) struct Connector {
    config: Config,
    tls: MakeTls,
    mode: SslMode,
}

impl Connector {
    /// Reads `url` (a `postgres://` URL or a `key=value` string) and the files its TLS
    /// parameters name. Sends nothing.
    pub(super) fn from_url(url: &str) -> Result<Self, Error> {
        let (rest, params) = split_url(url)?;
        // tokio-postgres names the parameter it refused only in the cause (never a value, so
        // never the password).
        let mut config: Config = rest.parse().map_err(|e: tokio_postgres::Error| {
            Error::BadDatabaseUrl(match e.source() {
                Some(cause) => format!("{e}: {cause}"),
                None => e.to_string(),
            })
        })?;
        let params = params.unwrap_or_else(|| Params {
            mode: Some(match config.get_ssl_mode() {
                WireMode::Disable => SslMode::Disable,
                WireMode::Require => SslMode::Require,
                _ => SslMode::Prefer,
            }),
            ..Params::default()
        });
        let policy = decide(params)?;
        config.ssl_mode(policy.wire_mode());
        let trust: Arc<str> = match &policy.verify {
            Verify::Chain(Roots::File(path)) | Verify::Full(Roots::File(path)) => {
                format!("sslrootcert={}", path.display()).into()
            }
            Verify::Chain(Roots::System) | Verify::Full(Roots::System) => {
                "the system's trusted roots".into()
            }
            Verify::Nothing => "no roots (none are checked)".into(),
        };
        let inner = MakeRustlsConnect::new(client_config(&policy)?);
        Ok(Self {
            config,
            tls: MakeTls { inner, trust },
            mode: policy.mode,
        })
    }

    pub(super) fn config(&self) -> &Config {
        &self.config
    }

    pub(super) fn config_mut(&mut self) -> &mut Config {
        &mut self.config
    }

    pub(super) fn tls(&self) -> MakeTls {
        self.tls.clone()
    }

    /// A connection of its own, outside the pool; the caller drives it.
    pub(super) async fn connect(&self) -> Result<(Client, Connection<Socket, TlsStream>), Error> {
        self.config
            .connect(self.tls.clone())
            .await
            .map_err(|e| self.explain(e))
    }

    /// A failed TLS negotiation as one line naming the server and the reason; any other
    /// error as it is.
    pub(super) fn explain(&self, error: tokio_postgres::Error) -> Error {
        match self.tls_failure(&error) {
            Some((server, reason)) => Error::Tls { server, reason },
            None => error.into(),
        }
    }

    /// The server and the reason when `error` is a failed TLS negotiation.
    pub(super) fn tls_failure(&self, error: &tokio_postgres::Error) -> Option<(String, String)> {
        let cause = error.source()?;
        if let Some(handshake) = cause.downcast_ref::<HandshakeError>() {
            return Some((self.server(&handshake.host), handshake.reason.clone()));
        }
        // tokio-postgres' own words when the server answers the TLS request with "no"; it says
        // nothing of which host, so every host is named.
        if cause.to_string() == "server does not support TLS" {
            let servers: Vec<String> = self
                .config
                .get_hosts()
                .iter()
                .filter_map(|host| match host {
                    Host::Tcp(name) => Some(self.server(name)),
                    Host::Unix(_) => None,
                })
                .collect();
            let reason = format!("server does not support TLS, but sslmode={}", self.mode);
            return Some((servers.join(","), reason));
        }
        None
    }

    /// `host:port` for a host of the URL, with the port tokio-postgres connects it on.
    fn server(&self, host: &str) -> String {
        let index = self
            .config
            .get_hosts()
            .iter()
            .position(|h| matches!(h, Host::Tcp(name) if name == host));
        let ports = self.config.get_ports();
        let port = index
            .and_then(|i| ports.get(i))
            .or(ports.first())
            .copied()
            .unwrap_or(DEFAULT_PORT);
        if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(url: &str) -> Params {
        let (_, params) = split_url(url).expect("splits");
        params.expect("a URL")
    }

    fn policy(url: &str) -> Result<Policy, String> {
        decide(params(url)).map_err(|e| e.to_string())
    }

    fn file(path: &str) -> Roots {
        Roots::File(path.into())
    }

    #[test]
    fn the_tls_parameters_leave_the_url_and_the_rest_stays_as_written() {
        let check = |url: &str, rest: &str| {
            assert_eq!(split_url(url).expect("splits").0, rest, "{url}");
        };
        check("postgres://u:p@h/db", "postgres://u:p@h/db");
        check("postgres://u@h/db?sslmode=require", "postgres://u@h/db");
        check(
            "postgresql://u@h:1/db?application_name=a%20b&sslmode=verify-full&sslrootcert=%2Fca.pem&connect_timeout=3",
            "postgresql://u@h:1/db?application_name=a%20b&connect_timeout=3",
        );
        check(
            "postgres://h/db?sslcert=/c.pem&sslkey=/k.pem&options=-c%20x%3D1",
            "postgres://h/db?options=-c%20x%3D1",
        );
        assert_eq!(
            split_url("host=h sslmode=require").expect("left alone"),
            ("host=h sslmode=require".to_owned(), None)
        );
    }

    #[test]
    fn the_tls_parameters_are_read_percent_decoded() {
        assert_eq!(
            params(
                "postgres://h/db?sslmode=verify-ca&sslrootcert=%2Fetc%2Fca%20file.pem&sslcert=/c&sslkey=/k"
            ),
            Params {
                mode: Some(SslMode::VerifyCa),
                rootcert: Some("/etc/ca file.pem".into()),
                cert: Some("/c".into()),
                key: Some("/k".into()),
            }
        );
        assert_eq!(
            params("postgres://h/db?sslmode=&sslrootcert="),
            Params::default()
        );
        let refused = |url: &str| split_url(url).expect_err("refused").to_string();
        assert_eq!(
            refused("postgres://h/db?sslmode=allow"),
            "sslmode=\"allow\": use disable, prefer, require, verify-ca or verify-full"
        );
        assert_eq!(
            refused("postgres://h/db?sslrootcert=%2"),
            "the URL parameter sslrootcert is not valid percent-encoded UTF-8"
        );
        assert_eq!(
            refused("postgres://h/db?sslkey=%ff"),
            "the URL parameter sslkey is not valid percent-encoded UTF-8"
        );
    }

    #[test]
    fn each_mode_encrypts_and_verifies_as_libpq_does() {
        let check = |url: &str, mode: SslMode, wire: WireMode, verify: Verify| {
            let policy = policy(url).expect("decides");
            assert_eq!(
                (policy.mode, policy.wire_mode(), policy.verify),
                (mode, wire, verify),
                "{url}"
            );
        };
        use SslMode::*;
        use Verify::*;
        check("postgres://h/d", Prefer, WireMode::Prefer, Nothing);
        check(
            "postgres://h/d?sslmode=disable",
            Disable,
            WireMode::Disable,
            Nothing,
        );
        check(
            "postgres://h/d?sslmode=prefer",
            Prefer,
            WireMode::Prefer,
            Nothing,
        );
        check(
            "postgres://h/d?sslmode=require",
            Require,
            WireMode::Require,
            Nothing,
        );
        check(
            "postgres://h/d?sslmode=verify-full",
            VerifyFull,
            WireMode::Require,
            Full(Roots::System),
        );
        check(
            "postgres://h/d?sslmode=verify-full&sslrootcert=/ca",
            VerifyFull,
            WireMode::Require,
            Full(file("/ca")),
        );
        check(
            "postgres://h/d?sslmode=verify-ca&sslrootcert=/ca",
            VerifyCa,
            WireMode::Require,
            Chain(file("/ca")),
        );
        // A CA file makes `require` (and `prefer`) check the chain, as in libpq.
        check(
            "postgres://h/d?sslmode=require&sslrootcert=/ca",
            Require,
            WireMode::Require,
            Chain(file("/ca")),
        );
        check(
            "postgres://h/d?sslrootcert=/ca",
            Prefer,
            WireMode::Prefer,
            Chain(file("/ca")),
        );
        // The system's roots make verify-full the default.
        check(
            "postgres://h/d?sslrootcert=system",
            VerifyFull,
            WireMode::Require,
            Full(Roots::System),
        );
        check(
            "postgres://h/d?sslmode=disable&sslrootcert=/ca&sslcert=/c&sslkey=/k",
            Disable,
            WireMode::Disable,
            Nothing,
        );
    }

    #[test]
    fn settings_that_cannot_protect_the_connection_are_refused() {
        let check = |url: &str, message: &str| {
            assert_eq!(policy(url).expect_err("refused"), message, "{url}");
        };
        check(
            "postgres://h/d?sslmode=verify-ca",
            "sslmode=verify-ca needs sslrootcert=FILE, the CA to check the server's certificate against",
        );
        for mode in ["disable", "prefer", "require", "verify-ca"] {
            check(
                &format!("postgres://h/d?sslmode={mode}&sslrootcert=system"),
                &format!(
                    "sslrootcert=system needs sslmode=verify-full, not {mode}: a public CA issues \
                     certificates to anyone, so only the host name check makes its chain mean \
                     something"
                ),
            );
        }
        check(
            "postgres://h/d?sslcert=/c",
            "sslcert and sslkey go together: sslkey is missing",
        );
        check(
            "postgres://h/d?sslmode=require&sslkey=/k",
            "sslcert and sslkey go together: sslcert is missing",
        );
    }

    #[test]
    fn client_certificates_are_kept_for_every_encrypting_mode() {
        let policy = policy("postgres://h/d?sslmode=require&sslcert=/c&sslkey=/k").expect("ok");
        assert_eq!(policy.client_cert, Some(("/c".into(), "/k".into())));
    }

    #[test]
    fn a_key_value_string_keeps_its_own_sslmode() {
        let check = |conninfo: &str, mode: SslMode| {
            let connector = Connector::from_url(conninfo).expect("connector");
            assert_eq!(connector.mode, mode, "{conninfo}");
        };
        check("host=h user=u", SslMode::Prefer);
        check("host=h user=u sslmode=disable", SslMode::Disable);
        check("host=h user=u sslmode=require", SslMode::Require);
    }

    #[test]
    fn unusable_settings_are_named_with_their_parameter() {
        let refused = |url: &str| match Connector::from_url(url) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{url} was accepted"),
        };
        let message = refused("postgres://h/d?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem");
        assert!(
            message.starts_with("database URL: sslrootcert=/nonexistent/ca.pem: No such file"),
            "{message}"
        );
        assert_eq!(
            refused("postgres://u:secret@h/d?sslcrl=/crl.pem"),
            "bad database URL: invalid connection string: unknown option `sslcrl`"
        );
        let message = refused("postgres://h/d?sslmode=require&sslcert=/nonexistent/c&sslkey=/k");
        assert!(
            message.starts_with("database URL: sslcert=/nonexistent/c: No such file"),
            "{message}"
        );
    }

    #[test]
    fn certificate_names_are_shown_plain() {
        assert_eq!(plain_name("DnsName(\"db.example.com\")"), "db.example.com");
        assert_eq!(plain_name("DnsName(\"*.example.com\")"), "*.example.com");
        assert_eq!(plain_name("IpAddress(10.0.0.1)"), "10.0.0.1");
        assert_eq!(plain_name("IpAddress(::1)"), "::1");
        assert_eq!(plain_name("Unsupported(0x87)"), "Unsupported(0x87)");
    }

    #[test]
    fn the_server_named_in_a_failure_carries_its_port() {
        let check = |url: &str, host: &str, server: &str| {
            let connector = Connector::from_url(url).expect("connector");
            assert_eq!(connector.server(host), server, "{url}");
        };
        check(
            "postgres://db.example.com/d",
            "db.example.com",
            "db.example.com:5432",
        );
        check("postgres://a:6000/d", "a", "a:6000");
        check("postgres://a:6000,b:6001/d", "b", "b:6001");
        check("postgres://a,b:6001/d", "a", "a:5432");
        check("postgres://[::1]:6000/d", "::1", "[::1]:6000");
        check("host=a,b port=6000", "b", "b:6000");
    }
}
