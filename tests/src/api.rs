//! The coordinators' gRPC API as an outside client sees it: every service's client, built for
//! one coordinator of a [`Cluster`], and its health as a load balancer would ask for it.
//!
//! The cluster knows each coordinator's listen address only as a command-line flag, so the
//! address is read back from the process's own command line.

use std::time::Duration;

use leasehold_proto::bearer::AuthedChannel;
use leasehold_proto::v1::automations_client::AutomationsClient;
use leasehold_proto::v1::gates_client::GatesClient;
use leasehold_proto::v1::runs_client::RunsClient;
use nix::unistd::Pid;
use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::cluster::{Cluster, CoordinatorId, bearer};

/// The most a client of these helpers sends or accepts: above the coordinators' own request
/// limit, so that an oversize request reaches the server and the server is the one refusing it.
pub const CLIENT_MESSAGE_LIMIT_BYTES: usize = 128 * 1024 * 1024;

/// How long a health check may take.
pub const HEALTH_DEADLINE: Duration = Duration::from_secs(2);
/// The service whose health says a coordinator serves the API.
pub const RUNS_SERVICE: &str = "leasehold.v1.Runs";

/// One coordinator's services, each on the same connection, each call carrying one token.
#[derive(Clone)]
pub struct Clients {
    /// `leasehold.v1.Runs`.
    pub runs: RunsClient<AuthedChannel>,
    /// `leasehold.v1.Automations`.
    pub automations: AutomationsClient<AuthedChannel>,
    /// `leasehold.v1.Gates`.
    pub gates: GatesClient<AuthedChannel>,
}

/// The `http://host:port` a coordinator serves on, from its `--listen` flag.
///
/// # Panics
/// If the process has no `--listen` flag (it has exited, or was started otherwise).
pub fn endpoint(c: &Cluster, id: CoordinatorId) -> String {
    listen_endpoint(c.sup.pid(c.coordinator_proc(id)))
}

/// The `http://host:port` the coordinator process `pid` serves on, from its `--listen` flag.
///
/// # Panics
/// If the process has no `--listen` flag (it has exited, or was started otherwise).
pub fn listen_endpoint(pid: Pid) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("the coordinator's cmdline");
    let args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let listen = args
        .iter()
        .position(|a| a == "--listen")
        .and_then(|i| args.get(i + 1))
        .expect("a coordinator started with --listen");
    format!("http://{listen}")
}

/// Connects to a coordinator and returns a client of each of its services, each allowed to send
/// and receive [`CLIENT_MESSAGE_LIMIT_BYTES`], and each sending the cluster's token.
///
/// # Panics
/// If it cannot connect.
pub async fn clients(c: &Cluster, id: CoordinatorId) -> Clients {
    clients_with(c, id, &c.token).await
}

/// [`clients`] sending a token of its own named `name`, which the coordinator records as the
/// decider of the gates it decides.
pub async fn clients_as(c: &Cluster, id: CoordinatorId, name: &str) -> Clients {
    clients_with(c, id, &c.token_named(name).await).await
}

async fn clients_with(c: &Cluster, id: CoordinatorId, token: &str) -> Clients {
    let channel = Endpoint::from_shared(endpoint(c, id))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to the coordinator");
    let channel = bearer(token).channel(channel);
    Clients {
        runs: RunsClient::new(channel.clone())
            .max_encoding_message_size(CLIENT_MESSAGE_LIMIT_BYTES)
            .max_decoding_message_size(CLIENT_MESSAGE_LIMIT_BYTES),
        automations: AutomationsClient::new(channel.clone())
            .max_encoding_message_size(CLIENT_MESSAGE_LIMIT_BYTES)
            .max_decoding_message_size(CLIENT_MESSAGE_LIMIT_BYTES),
        gates: GatesClient::new(channel)
            .max_encoding_message_size(CLIENT_MESSAGE_LIMIT_BYTES)
            .max_decoding_message_size(CLIENT_MESSAGE_LIMIT_BYTES),
    }
}

/// What the coordinator's health service says of `leasehold.v1.Runs` on a fresh connection;
/// `None` if it does not answer within two seconds.
pub async fn health(c: &Cluster, id: CoordinatorId) -> Option<ServingStatus> {
    health_at(&endpoint(c, id), RUNS_SERVICE, HEALTH_DEADLINE).await
}

/// What the health service at `endpoint` says of `service` (`""`: the server as a whole) on a
/// fresh connection; `None` if it does not answer within `deadline`.
pub async fn health_at(endpoint: &str, service: &str, deadline: Duration) -> Option<ServingStatus> {
    let check = async {
        let channel = Endpoint::from_shared(endpoint.to_owned())
            .ok()?
            .connect()
            .await
            .ok()?;
        let reply = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .ok()?
            .into_inner();
        ServingStatus::try_from(reply.status).ok()
    };
    tokio::time::timeout(deadline, check).await.ok().flatten()
}
