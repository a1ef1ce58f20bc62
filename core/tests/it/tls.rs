//! PostgreSQL over TLS: servers of their own that accept TCP connections only over TLS, with
//! certificates from CAs made in the test (no key is committed), and each `sslmode` as libpq's.

use std::error::Error as _;
use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use leasehold_core::store::{Error, QUEUED_CHANNEL, Store};
use leasehold_testkit::{OwnedCluster, Tls, wait_for};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio_postgres_rustls::MakeRustlsConnect;

/// The clusters are thrown away: durability only costs time.
const SETTINGS: &[(&str, &str)] = &[("fsync", "off"), ("synchronous_commit", "off")];

/// In every URL, so that a message that quotes the URL shows it. Trust authentication ignores it.
const PASSWORD: &str = "hunter2";

/// A CA made for one test.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("CA certificate");
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `common_name` and the alternative names `names` (host names or IP
    /// addresses), and its key, as PEM.
    fn issue(
        &self,
        common_name: &str,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(ToString::to_string).collect();
        let mut params = CertificateParams::new(names).expect("params");
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer).expect("certificate");
        (cert.pem(), key.serialize_pem())
    }

    /// A server certificate for `names`, ready for a cluster; `client_ca` makes the cluster
    /// require client certificates from that CA.
    fn server_tls(&self, names: &[&str], client_ca: Option<&Ca>) -> Tls {
        let (cert_pem, key_pem) = self.issue("server", names, ExtendedKeyUsagePurpose::ServerAuth);
        Tls {
            cert_pem,
            key_pem,
            client_ca_pem: client_ca.map(|ca| ca.pem.clone()),
        }
    }
}

/// A folder for one test's PEM files, removed when the test ends.
struct Files(PathBuf);

impl Files {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "leasehold-tls-test-{}",
            uuid::Uuid::new_v4().simple()
        ));
        fs::create_dir(&dir).expect("create the test's folder");
        Files(dir)
    }

    fn write(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        fs::write(&path, text).expect("write a PEM file");
        path.to_str().expect("a UTF-8 temp dir").to_owned()
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn start(settings_tls: Option<&Tls>) -> OwnedCluster {
    let started = match settings_tls {
        Some(tls) => OwnedCluster::start_tls(SETTINGS, tls),
        None => OwnedCluster::start(SETTINGS),
    };
    started.unwrap_or_else(|e| panic!("cluster: {e}"))
}

fn url(cluster: &OwnedCluster, params: &str) -> String {
    format!(
        "postgres://postgres:{PASSWORD}@127.0.0.1:{}/postgres?{params}",
        cluster.port()
    )
}

/// The TLS version of a pooled connection made from `url`.
async fn tls_version(url: &str) -> Result<Option<String>, Error> {
    let store = Store::connect_unchecked(url, 1)?;
    store.tls_version().await
}

/// The one line a connection to `url` refused over TLS fails with: the whole message, without
/// a cause chain behind it for the CLI's `{:#}` to print.
async fn refusal(url: &str) -> String {
    let error = tls_version(url).await.expect_err("refused");
    assert!(matches!(error, Error::Tls { .. }), "{error:?}");
    assert!(error.source().is_none(), "{error:?}");
    let message = error.to_string();
    assert!(!message.contains('\n'), "one line: {message}");
    assert!(!message.contains(PASSWORD), "no password: {message}");
    message
}

/// What the CLI prints for a connection to `url` the server refused: the error and its causes.
async fn server_refusal(url: &str) -> String {
    let error = tls_version(url).await.expect_err("refused");
    let mut message = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        message.push_str(&format!(": {e}"));
        cause = e.source();
    }
    assert!(!message.contains(PASSWORD), "no password: {message}");
    message
}

#[tokio::test]
async fn verify_full_encrypts_the_pool_the_migrations_and_the_listener() {
    let files = Files::new();
    let ca = Ca::new("leasehold test CA");
    let cluster = start(Some(&ca.server_tls(&["localhost", "127.0.0.1"], None)));
    let root = files.write("ca.crt", &ca.pem);
    let url = url(&cluster, &format!("sslmode=verify-full&sslrootcert={root}"));

    let store = Store::connect_unchecked(&url, 2).expect("store");
    assert_eq!(
        store.tls_version().await.expect("pool").as_deref(),
        Some("TLSv1.3")
    );
    store.migrate().await.expect("migrations over TLS");
    store.check_schema().await.expect("migrated");

    let wakeups = store.listen_queued();
    // An observer of its own, over TLS too, since the server refuses anything else.
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).expect("CA PEM"))
        .expect("root");
    let observer_tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let (observer, connection) = tokio_postgres::connect(
        &format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=require",
            cluster.port()
        ),
        MakeRustlsConnect::new(observer_tls),
    )
    .await
    .expect("observer");
    tokio::spawn(connection);
    let listen = format!("LISTEN {QUEUED_CHANNEL}");
    wait_for(
        Duration::from_secs(10),
        "the listener's session, encrypted",
        || async {
            let row = observer
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity JOIN pg_stat_ssl USING (pid) \
                     WHERE query = $1 AND ssl",
                    &[&listen],
                )
                .await
                .expect("observe");
            (row.get::<_, i64>(0) == 1).then_some(())
        },
    )
    .await;
    // A dropped listening connection also wakes the claimer; none may have dropped.
    assert!(
        wakeups.notified().now_or_never().is_none(),
        "the listener connected at its first attempt"
    );
    observer
        .batch_execute(&format!("NOTIFY {QUEUED_CHANNEL}"))
        .await
        .expect("notify");
    tokio::time::timeout(Duration::from_secs(10), wakeups.notified())
        .await
        .expect("the notification reaches the listener");
}

#[tokio::test]
async fn a_refused_certificate_is_one_line_naming_the_server_and_the_reason() {
    let files = Files::new();
    let ca = Ca::new("leasehold test CA");
    let other_ca = Ca::new("another CA");
    // The certificate names another host than the one the URL connects to.
    let cluster = start(Some(&ca.server_tls(&["db.example.test"], None)));
    let port = cluster.port();
    let root = files.write("ca.crt", &ca.pem);
    let other_root = files.write("other.crt", &other_ca.pem);

    let wrong_name = refusal(&url(
        &cluster,
        &format!("sslmode=verify-full&sslrootcert={root}"),
    ))
    .await;
    assert!(
        wrong_name.starts_with(&format!(
            "database 127.0.0.1:{port}: TLS: certificate not valid for name \"127.0.0.1\""
        )),
        "{wrong_name}"
    );
    assert!(
        wrong_name.ends_with("; it is valid for db.example.test"),
        "{wrong_name}"
    );

    // verify-ca checks the chain only.
    let chain_only = url(&cluster, &format!("sslmode=verify-ca&sslrootcert={root}"));
    assert!(tls_version(&chain_only).await.expect("verify-ca").is_some());

    let unknown_ca = format!(
        "database 127.0.0.1:{port}: TLS: certificate not issued by a CA in sslrootcert={other_root}"
    );
    for mode in ["verify-ca", "verify-full", "require"] {
        let refused = refusal(&url(
            &cluster,
            &format!("sslmode={mode}&sslrootcert={other_root}"),
        ))
        .await;
        assert_eq!(refused, unknown_ca, "sslmode={mode}");
    }
    let error = tls_version(&url(
        &cluster,
        &format!("sslmode=verify-ca&sslrootcert={other_root}"),
    ))
    .await
    .expect_err("refused");
    assert!(error.is_transient(), "a certificate may be renewed");

    // Without a CA, require and prefer encrypt without checking.
    for params in ["sslmode=require", "sslmode=prefer", ""] {
        assert!(
            tls_version(&url(&cluster, params))
                .await
                .expect(params)
                .is_some(),
            "{params:?} encrypts"
        );
    }
}

#[tokio::test]
async fn without_tls_on_the_server_require_fails_and_prefer_connects_plain() {
    let files = Files::new();
    let ca = Ca::new("leasehold test CA");
    let cluster = start(None);
    let port = cluster.port();
    let root = files.write("ca.crt", &ca.pem);

    for params in [
        "sslmode=require".to_owned(),
        format!("sslmode=verify-full&sslrootcert={root}"),
    ] {
        let mode = params
            .split('&')
            .next()
            .and_then(|p| p.strip_prefix("sslmode="))
            .expect("a mode");
        assert_eq!(
            refusal(&url(&cluster, &params)).await,
            format!(
                "database 127.0.0.1:{port}: TLS: server does not support TLS, but sslmode={mode}"
            )
        );
    }
    for params in ["sslmode=prefer", "", "sslmode=disable"] {
        assert_eq!(
            tls_version(&url(&cluster, params)).await.expect(params),
            None,
            "{params:?} connects plain"
        );
    }
}

#[tokio::test]
async fn client_certificates_are_sent_to_a_server_that_requires_them() {
    let files = Files::new();
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let cluster = start(Some(
        &server_ca.server_tls(&["127.0.0.1"], Some(&client_ca)),
    ));
    let root = files.write("ca.crt", &server_ca.pem);
    let (cert, key) = client_ca.issue("postgres", &[], ExtendedKeyUsagePurpose::ClientAuth);
    let cert = files.write("client.crt", &cert);
    let key = files.write("client.key", &key);
    let verify_full = format!("sslmode=verify-full&sslrootcert={root}");

    let with_cert = url(
        &cluster,
        &format!("{verify_full}&sslcert={cert}&sslkey={key}"),
    );
    assert!(
        tls_version(&with_cert)
            .await
            .expect("with a client certificate")
            .is_some()
    );

    let without = server_refusal(&url(&cluster, &verify_full)).await;
    assert!(
        without.contains("connection requires a valid client certificate"),
        "{without}"
    );

    // A certificate for another user is refused by `clientcert=verify-full`, which compares its
    // common name with the user's.
    let (cert, key) = client_ca.issue("someone_else", &[], ExtendedKeyUsagePurpose::ClientAuth);
    let cert = files.write("other.crt", &cert);
    let key = files.write("other.key", &key);
    let refused = server_refusal(&url(
        &cluster,
        &format!("{verify_full}&sslcert={cert}&sslkey={key}"),
    ))
    .await;
    assert!(
        refused.contains("authentication failed for user \"postgres\""),
        "{refused}"
    );
}
