//! The coordinators' gRPC API as an outside client sees it: every service's client, built for
//! one coordinator of a [`Cluster`], and its health as a load balancer would ask for it.
//!
//! The cluster knows each coordinator's listen address only as a command-line flag, so the
//! address is read back from the process's own command line.

use std::time::Duration;

use leasehold_proto::v1::automations_client::AutomationsClient;
use leasehold_proto::v1::gates_client::GatesClient;
use leasehold_proto::v1::runs_client::RunsClient;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::cluster::{Cluster, CoordinatorId};

/// The most a client of these helpers sends or accepts: above the coordinators' own request
/// limit, so that an oversize request reaches the server and the server is the one refusing it.
pub const CLIENT_MESSAGE_LIMIT_BYTES: usize = 128 * 1024 * 1024;

/// How long a health check may take.
const HEALTH_DEADLINE: Duration = Duration::from_secs(2);

/// One coordinator's services, each on the same connection.
#[derive(Clone)]
pub struct Clients {
    /// `leasehold.v1.Runs`.
    pub runs: RunsClient<Channel>,
    /// `leasehold.v1.Automations`.
    pub automations: AutomationsClient<Channel>,
    /// `leasehold.v1.Gates`.
    pub gates: GatesClient<Channel>,
}

/// The `http://host:port` a coordinator serves on, from its `--listen` flag.
///
/// # Panics
/// If the process has no `--listen` flag (it has exited, or was started otherwise).
pub fn endpoint(c: &Cluster, id: CoordinatorId) -> String {
    let pid = c.sup.pid(c.coordinator_proc(id));
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
/// and receive [`CLIENT_MESSAGE_LIMIT_BYTES`].
///
/// # Panics
/// If it cannot connect.
pub async fn clients(c: &Cluster, id: CoordinatorId) -> Clients {
    let channel = Endpoint::from_shared(endpoint(c, id))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to the coordinator");
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
    let check = async {
        let channel = Endpoint::from_shared(endpoint(c, id))
            .ok()?
            .connect()
            .await
            .ok()?;
        let reply = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: "leasehold.v1.Runs".into(),
            })
            .await
            .ok()?
            .into_inner();
        ServingStatus::try_from(reply.status).ok()
    };
    tokio::time::timeout(HEALTH_DEADLINE, check)
        .await
        .ok()
        .flatten()
}
