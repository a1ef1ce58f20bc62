//! The production overlay, run as a cluster would run it: PostgreSQL that accepts only TLS,
//! reached with `sslmode=verify-full` and the CA from the Secret leasehold-database-ca mounted
//! where the URLs say; the API's certificate and key as cert-manager writes them into
//! leasehold-api-tls. The migration Job, both coordinators serving TLS (a client trusting the CA
//! finds the health service SERVING, plaintext is refused) and passing their gRPC probes on the
//! plaintext health listener, which serves nothing but health; a worker that becomes ready and
//! completes a run, and clean stops.

use std::sync::Arc;
use std::time::Duration;

use leasehold_core::ids::TenantId;
use leasehold_core::run::RunStatus;
use leasehold_core::store::Store;
use leasehold_testkit::{OwnedCluster, Tls, fixtures, wait_for};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use serde_json::json;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::kubelet::Cluster;
use super::render::rendered;

const DEADLINE: Duration = Duration::from_secs(30);
const RUNTIME_ROLE: &str = "leasehold_runtime";
/// Where the production overlay mounts the database's CA (see its database-ca.yaml).
const DATABASE_CA: &str = "/etc/leasehold/database-ca/ca.crt";

/// A CA made for the test, and server certificates it signs: no key is committed.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "deploy test CA");
        let key = KeyPair::generate().expect("key");
        let pem = params.self_signed(&key).expect("CA").pem();
        Self {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A server certificate for 127.0.0.1 and its key, as PEM.
    fn server(&self) -> (String, String) {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("params");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("certificate");
        (cert.pem(), key.serialize_pem())
    }
}

/// Makes the runtime role, over TLS (the server takes nothing else), as the superuser.
async fn create_runtime_role(admin_url: &str, ca: &Ca) {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).expect("CA"))
        .expect("root");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(config);
    let (client, connection) = tokio_postgres::connect(admin_url, tls)
        .await
        .expect("the admin's TLS connection");
    tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE ROLE {RUNTIME_ROLE} LOGIN"))
        .await
        .expect("the runtime role");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_production_overlay_serves_tls_on_verify_full_postgres() {
    let ca = Ca::new();
    let (db_cert, db_key) = ca.server();
    let postgres = OwnedCluster::start_tls(
        &[("fsync", "off"), ("synchronous_commit", "off")],
        &Tls {
            cert_pem: db_cert,
            key_pem: db_key,
            client_ca_pem: None,
        },
    )
    .unwrap_or_else(|e| panic!("a TLS cluster: {e}"));
    let port = postgres.port();
    let ca_here = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "deploy-production-ca-{}.crt",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(&ca_here, &ca.pem).expect("the CA, for the test's own connections");
    let verify = |ca_path: &str| format!("sslmode=verify-full&sslrootcert={ca_path}");
    // tokio-postgres knows sslmode up to `require`; the rustls connector checks the chain and
    // the name itself.
    create_runtime_role(
        &format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=require"),
        &ca,
    )
    .await;

    // The Secrets, as the operator provides them: URLs that name the mounted CA.
    let owner_url = format!(
        "postgres://postgres@127.0.0.1:{port}/postgres?{}",
        verify(DATABASE_CA)
    );
    let runtime_url = format!(
        "postgres://{RUNTIME_ROLE}@127.0.0.1:{port}/postgres?{}",
        verify(DATABASE_CA)
    );
    let (api_cert, api_key) = ca.server();
    let production = rendered("overlays/production");
    let cluster = Cluster::new(
        &production.docs,
        &[
            ("leasehold-database-owner", "url", &owner_url),
            ("leasehold-database-owner", "runtime-role", RUNTIME_ROLE),
            ("leasehold-database", "url", &runtime_url),
            ("leasehold-database", "autoscaler-url", &runtime_url),
            ("leasehold-database-ca", "ca.crt", &ca.pem),
            ("leasehold-api-tls", "tls.crt", &api_cert),
            ("leasehold-api-tls", "tls.key", &api_key),
            ("leasehold-api-tls", "ca.crt", &ca.pem),
        ],
    );

    let (status, log) = cluster.run_job("leasehold-migrate").await;
    assert!(status.success(), "the migration failed:\n{log}");

    let coordinator = cluster.get("Deployment", "leasehold-coordinator");
    let template = &coordinator["spec"]["template"]["spec"];
    let replicas = coordinator["spec"]["replicas"].as_u64().expect("replicas");
    let mut coordinators = Vec::new();
    for _ in 0..replicas {
        let pod = cluster.start("leasehold-coordinator", template);
        pod.wait_ready(DEADLINE).await;
        coordinators.push(pod);
    }
    for pod in &coordinators {
        let api = pod.port(&json!("grpc")).expect("the gRPC port");
        // A client trusting the CA reaches the health service over TLS, SERVING once the
        // database answers; a plaintext client (such as the kubelet's gRPC probe) gets nothing.
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca.pem));
        let channel = Endpoint::from_shared(format!("https://127.0.0.1:{api}"))
            .expect("endpoint")
            .tls_config(tls)
            .expect("TLS")
            .connect_lazy();
        wait_for(DEADLINE, "SERVING over TLS", || {
            let channel = channel.clone();
            async move {
                let reply = HealthClient::new(channel)
                    .check(HealthCheckRequest::default())
                    .await
                    .ok()?;
                (reply.into_inner().status == ServingStatus::Serving as i32).then_some(())
            }
        })
        .await;
        let plain = crate::support::health(&format!("http://127.0.0.1:{api}"), "").await;
        assert_eq!(plain, None, "plaintext is refused on the API");

        // The probes' own listener (--health-listen): the same health, services included, in
        // plaintext, and nothing but health.
        let probes = format!(
            "http://127.0.0.1:{}",
            pod.port(&json!("health")).expect("the health port")
        );
        for service in ["", "leasehold.v1.Runs"] {
            assert_eq!(
                crate::support::health(&probes, service).await,
                Some(ServingStatus::Serving),
                "{service:?} on the health listener"
            );
        }
        let channel = Endpoint::from_shared(probes)
            .expect("endpoint")
            .connect()
            .await
            .expect("the health listener");
        let refused = leasehold_proto::v1::stats_client::StatsClient::new(channel)
            .get_stats(leasehold_proto::v1::GetStatsRequest::default())
            .await
            .expect_err("no API on the health listener");
        assert_eq!(refused.code(), tonic::Code::Unimplemented, "{refused:?}");
    }

    let worker = cluster.get("Deployment", "leasehold-worker");
    let worker = cluster.start("leasehold-worker", &worker["spec"]["template"]["spec"]);
    worker.wait_ready(DEADLINE).await;

    let store = Store::connect(
        &format!(
            "postgres://{RUNTIME_ROLE}@127.0.0.1:{port}/postgres?{}",
            verify(&ca_here.display().to_string())
        ),
        2,
    )
    .await
    .expect("a client's store");
    let tenant = TenantId::default();
    let automation = fixtures::diamond("production-overlay");
    store
        .create_automation(&tenant, &automation)
        .await
        .expect("automation");
    let run_id = store
        .start_run(&fixtures::start_request(&tenant, &automation.id))
        .await
        .expect("start")
        .run_id;
    wait_for(DEADLINE, "the run to complete", || async {
        let run = store.run(&tenant, run_id).await.expect("run");
        (run.status == RunStatus::Completed).then_some(())
    })
    .await;

    for pod in std::iter::once(worker).chain(coordinators) {
        let name = pod.name.clone();
        let ended = pod.terminate().await;
        assert!(ended.status.success() && !ended.killed, "{name}: {ended:?}");
    }
    let _ = std::fs::remove_file(ca_here);
}
