//! A running container of the simulation (kubelet.rs starts it): its probes, tried as the
//! kubelet tries them, and its end, SIGTERM then SIGKILL after `terminationGracePeriodSeconds`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ExitStatus};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use leasehold_testkit::wait_for;
use nix::sys::signal::Signal;
use serde_json::Value;
use tonic_health::pb::health_check_response::ServingStatus;

use super::kubelet::port_number;
use crate::exposition;
use crate::support::{health, signal};

/// A running container; killed when dropped.
pub struct Pod {
    pub name: String,
    pub(super) child: Mutex<Child>,
    /// Each `containerPort` and the loopback port standing for it.
    pub(super) ports: HashMap<u16, u16>,
    pub(super) container: Value,
    pub(super) dir: PathBuf,
    /// `terminationGracePeriodSeconds`.
    pub grace: Duration,
}

/// How a pod ended.
#[derive(Debug)]
pub struct Terminated {
    pub status: ExitStatus,
    /// SIGKILLed at the end of the grace period.
    pub killed: bool,
    pub took: Duration,
}

impl Pod {
    /// What the process wrote on stdout and stderr.
    pub fn log(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        format!("{}{}", read("log"), read("stderr"))
    }

    fn exited(&self) -> Option<ExitStatus> {
        self.child.lock().expect("child").try_wait().expect("wait")
    }

    /// The loopback port standing for the container's `port` (a number or a port's name).
    pub fn port(&self, port: &Value) -> Result<u16, String> {
        let number = match port.as_str() {
            Some(name) => self.container["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["name"] == name)
                .map(|p| port_number(&p["containerPort"]))
                .ok_or_else(|| format!("no container port named {name}"))?,
            None => port_number(port),
        };
        self.ports
            .get(&number)
            .copied()
            .ok_or_else(|| format!("port {number} is not a containerPort"))
    }

    /// One try of the container's probe `which` (`readinessProbe`, `livenessProbe`,
    /// `startupProbe`), as the kubelet makes it: a gRPC health check that must say SERVING, an
    /// HTTP GET that must answer 200 to 399, a TCP connection that must open; within the
    /// probe's `timeoutSeconds`. No probe is a success.
    pub async fn probe(&self, which: &str) -> Result<(), String> {
        let probe = &self.container[which];
        if probe.is_null() {
            return Ok(());
        }
        let timeout = Duration::from_secs(probe["timeoutSeconds"].as_u64().unwrap_or(1));
        let tried = async {
            if let Some(grpc) = probe["grpc"].as_object() {
                let port = self.port(&grpc["port"])?;
                let service = grpc.get("service").and_then(Value::as_str).unwrap_or("");
                match health(&format!("http://127.0.0.1:{port}"), service).await {
                    Some(ServingStatus::Serving) => Ok(()),
                    other => Err(format!("gRPC health of {service:?}: {other:?}")),
                }
            } else if let Some(http) = probe["httpGet"].as_object() {
                let port = self.port(&http["port"])?;
                let path = http["path"].as_str().unwrap_or("/");
                let addr: SocketAddr = ([127, 0, 0, 1], port).into();
                match exposition::get(addr, path).await {
                    Ok((status, _)) if (200..400).contains(&status) => Ok(()),
                    Ok((status, body)) => Err(format!("GET {path}: {status} {body}")),
                    Err(e) => Err(format!("GET {path}: {e}")),
                }
            } else if let Some(tcp) = probe["tcpSocket"].as_object() {
                let port = self.port(&tcp["port"])?;
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .map(drop)
                    .map_err(|e| format!("connect to {port}: {e}"))
            } else {
                Err(format!("a probe the simulation does not make: {probe}"))
            }
        };
        tokio::time::timeout(timeout, tried)
            .await
            .unwrap_or_else(|_| Err(format!("{which} timed out")))
    }

    /// Waits until the startup probe, then the readiness probe, passes, as a pod becomes Ready;
    /// then checks liveness. Fails at once, with the log, if the process exits meanwhile (a
    /// flag the binary refuses ends it at start), and at `deadline` with the probe's last
    /// answer and the log. The probes are tried more often than their `periodSeconds` ask, to
    /// keep the test short; each try is judged as the kubelet judges it.
    pub async fn wait_ready(&self, deadline: Duration) {
        let until = Instant::now() + deadline;
        for which in ["startupProbe", "readinessProbe"] {
            loop {
                if let Some(status) = self.exited() {
                    panic!(
                        "{} exited ({status}) before it was ready:\n{}",
                        self.name,
                        self.log()
                    );
                }
                match self.probe(which).await {
                    Ok(()) => break,
                    Err(e) if Instant::now() >= until => panic!(
                        "{}: {which} still failing after {deadline:?}: {e}\n{}",
                        self.name,
                        self.log()
                    ),
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }
        if let Err(e) = self.probe("livenessProbe").await {
            panic!("{}: ready but not alive: {e}\n{}", self.name, self.log());
        }
    }

    /// Waits up to `deadline` for the process to exit.
    pub async fn wait_exit(&self, deadline: Duration) -> ExitStatus {
        wait_for(deadline, &format!("{} to exit", self.name), || async {
            self.exited()
        })
        .await
    }

    /// Stops the pod as the kubelet does: SIGTERM, and SIGKILL once the grace period is over.
    pub async fn terminate(self) -> Terminated {
        let started = Instant::now();
        signal(&self.child.lock().expect("child"), Signal::SIGTERM);
        let by_grace = started + self.grace;
        loop {
            if let Some(status) = self.exited() {
                return Terminated {
                    status,
                    killed: false,
                    took: started.elapsed(),
                };
            }
            if Instant::now() >= by_grace {
                let mut child = self.child.lock().expect("child");
                child.kill().expect("SIGKILL");
                let status = child.wait().expect("wait");
                return Terminated {
                    status,
                    killed: true,
                    took: started.elapsed(),
                };
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let mut child = self.child.lock().expect("child");
        let _ = child.kill();
        let _ = child.wait();
    }
}
