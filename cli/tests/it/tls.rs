//! TLS between the client commands and `leasehold coordinator`, as the real binaries with
//! certificates made in the test: mutual TLS, a client that trusts another CA or dials a name
//! the certificate lacks, a certificate rotated in place without a restart, and plaintext
//! refused off loopback unless `--allow-insecure`.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use leasehold_core::ids::TenantId;
use leasehold_core::store::{NewToken, Role, Store};
use leasehold_testkit::{TestDb, wait_for};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::TlsConnector;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const DEADLINE: Duration = Duration::from_secs(30);
/// The line the coordinator logs once it listens, with its address after `addr=`.
const SERVING_LINE: &str = "coordinator serving gRPC";

const HELLO: &str = "\
id: hello
nodes:
  - {id: a, kind: noop}
";

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_refuses_a_client_without_a_certificate_and_serves_one_with_it() {
    let t = Setup::new("mtls").await;
    let ca = Ca::new("server CA");
    let clients = Ca::new("client CA");
    let server = t.write("server", &ca.server(&["127.0.0.1", "localhost"]));
    let client = t.write("client", &clients.client("ops"));
    // Signed, but by the CA the coordinator trusts for its own certificate, not for clients.
    let stranger = t.write("stranger", &ca.client("stranger"));
    let ca_file = t.write_file("ca.crt", &ca.pem);
    let clients_file = t.write_file("clients-ca.crt", &clients.pem);

    let coordinator = t.coordinator(&[
        "--tls-cert",
        &server.cert,
        "--tls-key",
        &server.key,
        "--tls-client-ca",
        &clients_file,
    ]);
    let address = coordinator.serving_address().await;
    let endpoint = format!("https://{address}");
    let channel = tls_channel(&endpoint, &ca, Some(&client)).await;
    coordinator.wait_serving(&channel).await;
    // Reflection answers over TLS too.
    let services = reflected_services(channel).await;
    assert!(
        services.iter().any(|s| s == "leasehold.v1.Runs"),
        "{services:?}"
    );

    let refused = t.leasehold(&endpoint, &["stats", "--tls-ca", &ca_file]);
    refused.assert_one_error_line(&[
        &format!("TLS handshake with the coordinator at {endpoint} failed"),
        "the coordinator requires a client certificate (pass --tls-cert and --tls-key)",
    ]);

    let refused = t.leasehold(
        &endpoint,
        &[
            "stats",
            "--tls-ca",
            &ca_file,
            "--tls-cert",
            &stranger.cert,
            "--tls-key",
            &stranger.key,
        ],
    );
    refused.assert_one_error_line(&[
        &format!("TLS handshake with the coordinator at {endpoint} failed"),
        "the coordinator refused the client certificate",
    ]);

    // The same options from the environment, as a deployment sets them.
    let spec = t.write_file("hello.yaml", HELLO);
    let with_certificate = |args: &[&str]| {
        let mut command = t.command(&endpoint, args);
        command
            .env("LEASEHOLD_TLS_CA", &ca_file)
            .env("LEASEHOLD_TLS_CLIENT_CERT", &client.cert)
            .env("LEASEHOLD_TLS_CLIENT_KEY", &client.key);
        Ran::from(command.output().expect("run leasehold"))
    };
    with_certificate(&["automation", "apply", "-f", &spec]).ok();
    let listed = with_certificate(&["automation", "list", "--json"]).ok();
    assert!(listed.contains("\"hello\""), "{listed}");
    with_certificate(&["stats"]).ok();
    coordinator.assert_running();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_trusting_another_ca_or_dialing_a_name_the_certificate_lacks_is_refused() {
    let t = Setup::new("refused").await;
    let ca = Ca::new("server CA");
    let other = Ca::new("another CA");
    // For `localhost` only: dialing 127.0.0.1 is a name the certificate lacks.
    let server = t.write("server", &ca.server(&["localhost"]));
    let ca_file = t.write_file("ca.crt", &ca.pem);
    let other_file = t.write_file("other-ca.crt", &other.pem);
    let coordinator = t.coordinator(&["--tls-cert", &server.cert, "--tls-key", &server.key]);
    let address = coordinator.serving_address().await;
    let endpoint = format!("https://{address}");
    let channel = Endpoint::from_shared(endpoint.clone())
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&ca.pem))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect_lazy();
    coordinator.wait_serving(&channel).await;

    let refused = t.leasehold(&endpoint, &["stats", "--tls-ca", &other_file]);
    refused.assert_one_error_line(&[
        &format!("TLS handshake with the coordinator at {endpoint} failed"),
        "the coordinator's certificate is not signed by a CA this client trusts \
         (name the coordinator's CA with --tls-ca)",
    ]);

    let refused = t.leasehold(&endpoint, &["stats", "--tls-ca", &ca_file]);
    refused.assert_one_error_line(&[
        &format!("TLS handshake with the coordinator at {endpoint} failed"),
        "the coordinator's certificate does not name the endpoint's host",
        "127.0.0.1",
        "localhost",
    ]);

    // TLS options with a plaintext endpoint are a mistake, named before anything is sent.
    let refused = t.leasehold(
        &format!("http://{address}"),
        &["stats", "--tls-ca", &ca_file],
    );
    refused.assert_one_error_line(&["need an https:// endpoint"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_rotated_in_place_is_served_to_new_connections_without_a_restart() {
    let t = Setup::new("rotate").await;
    let ca = Ca::new("server CA");
    let ca_file = t.write_file("ca.crt", &ca.pem);
    // The layout of a Kubernetes secret volume: the files are symlinks into `..data`, itself a
    // symlink to the current generation, swapped atomically on rotation.
    let volume = t.dir.join("volume");
    let generation = |name: &str, leaf: &Leaf| {
        let dir = volume.join(name);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("tls.crt"), &leaf.cert_pem).unwrap();
        fs::write(dir.join("tls.key"), &leaf.key_pem).unwrap();
    };
    let first = ca.server(&["127.0.0.1"]);
    generation("gen1", &first);
    std::os::unix::fs::symlink("gen1", volume.join("..data")).unwrap();
    for file in ["tls.crt", "tls.key"] {
        std::os::unix::fs::symlink(Path::new("..data").join(file), volume.join(file)).unwrap();
    }
    let cert = volume.join("tls.crt");
    let key = volume.join("tls.key");
    let coordinator = t.coordinator(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let address = coordinator.serving_address().await;
    let endpoint = format!("https://{address}");
    coordinator
        .wait_serving(&tls_channel(&endpoint, &ca, None).await)
        .await;
    assert_eq!(served_certificate(&address, &ca).await, first.der);

    // Rewritten in place, key first: until the certificate follows, the pair does not fit and
    // the coordinator keeps serving the first one.
    let second = ca.server(&["127.0.0.1"]);
    fs::write(volume.join("gen1/tls.key"), &second.key_pem).unwrap();
    fs::write(volume.join("gen1/tls.crt"), &second.cert_pem).unwrap();
    wait_for(
        DEADLINE,
        "the rewritten certificate to be served",
        || async {
            coordinator.assert_running();
            (served_certificate(&address, &ca).await == second.der).then_some(())
        },
    )
    .await;

    // Swapped by symlink, as the kubelet does for cert-manager's secrets.
    let third = ca.server(&["127.0.0.1"]);
    generation("gen2", &third);
    std::os::unix::fs::symlink("gen2", volume.join("..data_tmp")).unwrap();
    fs::rename(volume.join("..data_tmp"), volume.join("..data")).unwrap();
    wait_for(DEADLINE, "the swapped certificate to be served", || async {
        coordinator.assert_running();
        (served_certificate(&address, &ca).await == third.der).then_some(())
    })
    .await;

    t.leasehold(&endpoint, &["stats", "--tls-ca", &ca_file])
        .ok();
    let log = coordinator.stderr();
    assert!(log.contains("TLS files changed: reloaded"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn plaintext_off_loopback_is_refused_unless_allow_insecure() {
    let t = Setup::new("insecure").await;
    let refused = t.coordinator_on("0.0.0.0:0", &[]);
    let status = refused.wait_exit().await;
    assert!(!status.success(), "{status}");
    let stderr = refused.stderr();
    assert!(
        stderr.contains("refusing to serve the API without TLS on 0.0.0.0:0")
            && stderr.contains("add --allow-insecure"),
        "{stderr}"
    );

    let allowed = t.coordinator_on("0.0.0.0:0", &["--allow-insecure"]);
    let address = allowed.serving_address().await;
    let port = address.rsplit_once(':').expect("host:port").1;
    let channel = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_lazy();
    allowed.wait_serving(&channel).await;
    let stderr = allowed.stderr();
    assert!(
        stderr.contains("WARN") && stderr.contains("without TLS on a non-loopback address"),
        "{stderr}"
    );
}

/// A test's database and folder.
struct Setup {
    db: TestDb,
    dir: PathBuf,
    /// An admin token of the default tenant, which every client command sends.
    token: String,
}

impl Setup {
    async fn new(name: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let db = TestDb::new().await;
        let store = Store::connect_unchecked(db.url(), 1).expect("pool");
        store.migrate().await.expect("migrate");
        let (_, token) = store
            .create_token(&NewToken {
                tenant: TenantId::default(),
                role: Role::Admin,
                name: Some("tls-test".into()),
                expires_in: None,
            })
            .await
            .expect("token");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "tls-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("test folder");
        Self {
            db,
            dir,
            token: token.expose(),
        }
    }

    /// Writes `contents` to `name` in the test folder, and answers its path.
    fn write_file(&self, name: &str, contents: &str) -> String {
        let path = self.dir.join(name);
        fs::write(&path, contents).expect("write");
        path.to_str().expect("a UTF-8 temp folder").to_owned()
    }

    fn write(&self, name: &str, leaf: &Leaf) -> Files {
        Files {
            cert: self.write_file(&format!("{name}.crt"), &leaf.cert_pem),
            key: self.write_file(&format!("{name}.key"), &leaf.key_pem),
        }
    }

    fn coordinator(&self, args: &[&str]) -> Coordinator {
        self.coordinator_on("127.0.0.1:0", args)
    }

    /// `leasehold coordinator` on `listen` (port 0: it binds a free port itself and logs it),
    /// its log in the test folder.
    fn coordinator_on(&self, listen: &str, args: &[&str]) -> Coordinator {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let log = self.dir.join(format!(
            "coordinator-{}.log",
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let child = clean(Command::new(env!("CARGO_BIN_EXE_leasehold")))
            .args(["coordinator", "--listen", listen])
            .args(args)
            .env("LEASEHOLD_DATABASE_URL", self.db.url())
            .env("LEASEHOLD_LOG", "info")
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn the coordinator");
        Coordinator {
            child: Mutex::new(child),
            log,
        }
    }

    fn command(&self, endpoint: &str, args: &[&str]) -> Command {
        let mut command = clean(Command::new(env!("CARGO_BIN_EXE_leasehold")));
        command
            .args(args)
            .arg("--endpoint")
            .arg(endpoint)
            .env("LEASEHOLD_TOKEN", &self.token)
            .stdin(Stdio::null());
        command
    }

    /// The client binary, run to the end.
    fn leasehold(&self, endpoint: &str, args: &[&str]) -> Ran {
        Ran::from(
            self.command(endpoint, args)
                .output()
                .expect("run leasehold"),
        )
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept {} for inspection", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// A command without the settings a developer's shell may carry.
fn clean(mut command: Command) -> Command {
    for variable in [
        "LEASEHOLD_ENDPOINT",
        "LEASEHOLD_TLS_CA",
        "LEASEHOLD_TLS_CLIENT_CERT",
        "LEASEHOLD_TLS_CLIENT_KEY",
        "LEASEHOLD_TLS_CERT",
        "LEASEHOLD_TLS_KEY",
        "LEASEHOLD_TLS_CLIENT_CA",
        "LEASEHOLD_ALLOW_INSECURE",
        "LEASEHOLD_LISTEN",
        "LEASEHOLD_TOKEN",
    ] {
        command.env_remove(variable);
    }
    // Nor the token a `leasehold dev` of the machine saved.
    command.env(
        "XDG_CONFIG_HOME",
        std::env::temp_dir().join("leasehold-tls-test-no-credentials"),
    );
    command
}

/// What one run of the client printed.
struct Ran {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl From<Output> for Ran {
    fn from(output: Output) -> Self {
        Ran {
            status: output.status,
            stdout: String::from_utf8(output.stdout).expect("utf-8 stdout"),
            stderr: String::from_utf8(output.stderr).expect("utf-8 stderr"),
        }
    }
}

impl Ran {
    fn ok(self) -> String {
        assert!(self.status.success(), "{}: {}", self.status, self.stderr);
        self.stdout
    }

    /// The command failed with a single line of error holding each of `parts`.
    fn assert_one_error_line(&self, parts: &[&str]) {
        assert!(!self.status.success(), "succeeded: {}", self.stdout);
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{}", self.stderr);
        assert!(lines[0].starts_with("error: "), "{}", self.stderr);
        for part in parts {
            assert!(lines[0].contains(part), "no {part:?} in {}", self.stderr);
        }
    }
}

/// A coordinator process, killed when dropped.
struct Coordinator {
    child: Mutex<Child>,
    log: PathBuf,
}

impl Coordinator {
    fn stderr(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn exited(&self) -> Option<ExitStatus> {
        self.child.lock().expect("child").try_wait().expect("wait")
    }

    fn assert_running(&self) {
        if let Some(status) = self.exited() {
            panic!("the coordinator exited ({status}):\n{}", self.stderr());
        }
    }

    async fn wait_exit(&self) -> ExitStatus {
        wait_for(DEADLINE, "the coordinator to exit", || async {
            self.exited()
        })
        .await
    }

    /// The address the coordinator logged once it listened.
    async fn serving_address(&self) -> String {
        wait_for(DEADLINE, "the coordinator to listen", || async {
            self.assert_running();
            let log = self.stderr();
            let line = log.lines().find(|l| l.contains(SERVING_LINE))?;
            let address = line.split_once("addr=")?.1.split_whitespace().next()?;
            Some(address.to_owned())
        })
        .await
    }

    /// Waits until health, asked on `channel`, reports `leasehold.v1.Runs` SERVING.
    async fn wait_serving(&self, channel: &Channel) {
        wait_for(DEADLINE, "the coordinator to report SERVING", || async {
            self.assert_running();
            let reply = HealthClient::new(channel.clone())
                .check(HealthCheckRequest {
                    service: "leasehold.v1.Runs".into(),
                })
                .await
                .ok()?
                .into_inner();
            (reply.status == ServingStatus::Serving as i32).then_some(())
        })
        .await;
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let child = self.child.get_mut().expect("child");
        if child.try_wait().ok().flatten().is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A channel to `endpoint` trusting `ca`, presenting `client` if given.
async fn tls_channel(endpoint: &str, ca: &Ca, client: Option<&Files>) -> Channel {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca.pem));
    if let Some(client) = client {
        tls = tls.identity(Identity::from_pem(
            fs::read(&client.cert).unwrap(),
            fs::read(&client.key).unwrap(),
        ));
    }
    Endpoint::from_shared(endpoint.to_owned())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_lazy()
}

/// The services reflection (v1) lists.
async fn reflected_services(channel: Channel) -> Vec<String> {
    use tonic_reflection::pb::v1 as r1;
    let request = r1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(r1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut replies = r1::server_reflection_client::ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let reply = replies.message().await.expect("reply").expect("a reply");
    let Some(r1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        reply.message_response
    else {
        panic!("not a service list: {reply:?}");
    };
    list.service.into_iter().map(|s| s.name).collect()
}

/// The leaf certificate a new connection to `address` is served, trusting `ca`.
async fn served_certificate(address: &str, ca: &Ca) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap())
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let host = address.rsplit_once(':').unwrap().0.to_owned();
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(host).unwrap(), tcp)
        .await
        .expect("handshake");
    let (_, session) = tls.get_ref();
    assert_eq!(session.alpn_protocol(), Some(&b"h2"[..]));
    session.peer_certificates().expect("a certificate")[0].to_vec()
}

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// A leaf certificate and its key.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

/// Where a leaf's certificate and key were written.
struct Files {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    fn server(&self, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|&n| n.to_owned()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(&params)
    }

    /// A client certificate for `name`.
    fn client(&self, name: &str) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(&params)
    }

    fn sign(&self, params: &CertificateParams) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}
