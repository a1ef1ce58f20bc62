//! What several of these tests do with the real binaries: pick a port, ask a coordinator's
//! health, wait for a process to exit.

use std::process::{Child, ExitStatus};
use std::sync::Mutex;
use std::time::Duration;

use leasehold_testkit::wait_for;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// The health `service` (`""` for the server as a whole) of the coordinator at `endpoint`
/// (`http://host:port`), or `None` while it cannot be asked.
pub async fn health(endpoint: &str, service: &str) -> Option<ServingStatus> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
        .ok()?
        .connect()
        .await
        .ok()?;
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .ok()?;
    ServingStatus::try_from(reply.into_inner().status).ok()
}

/// Waits until the coordinator at `endpoint` says its Runs service is SERVING.
pub async fn wait_serving(endpoint: &str, deadline: Duration) {
    wait_for(deadline, "the coordinator to report SERVING", || async {
        (health(endpoint, "leasehold.v1.Runs").await == Some(ServingStatus::Serving)).then_some(())
    })
    .await;
}

/// Sends `signal` to the child.
pub fn signal(child: &Child, signal: Signal) {
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    kill(pid, signal).expect("signal");
}

/// Waits until the child exits, and says how.
pub async fn wait_exit(child: &mut Child, deadline: Duration) -> ExitStatus {
    let child = Mutex::new(child);
    wait_for(deadline, "the process to exit", || async {
        child.lock().expect("child").try_wait().expect("wait")
    })
    .await
}
