//! A node longer than the worker's shutdown grace period survives rolling restarts: `leasehold
//! worker`, as the real binary, is stopped with SIGTERM five times while the node runs, and
//! each hand-back records the interrupted attempt without counting it toward `max_attempts`.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use leasehold_core::ids::{NodeId, RunId};
use leasehold_core::run::{NodeStatus, RunStatus};
use leasehold_core::spec;
use leasehold_core::store::NodeRecord;
use leasehold_testkit::fixtures::{self, Bundle};
use leasehold_testkit::wait_for;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(30);
const RESTARTS: u32 = 5;

/// `leasehold worker` with a grace period far shorter than the node, allowed to run `sh`;
/// killed when dropped.
struct Worker(Child);

impl Worker {
    fn start(b: &Bundle) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_leasehold"))
            .args([
                "worker",
                "--poll-interval",
                "50ms",
                "--shutdown-grace",
                "200ms",
            ])
            .args(["--exec-allow", "sh"])
            .env_remove("LEASEHOLD_TEST_DATABASE_URL")
            .env("LEASEHOLD_DATABASE_URL", b.db.url())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn leasehold worker");
        Self(child)
    }

    /// Sends SIGTERM and waits for a clean exit.
    async fn terminate(mut self) {
        let pid = Pid::from_raw(i32::try_from(self.0.id()).expect("pid"));
        kill(pid, Signal::SIGTERM).expect("SIGTERM");
        let child = std::sync::Mutex::new(&mut self.0);
        let status = wait_for(DEADLINE, "the worker to exit", || async {
            child.lock().expect("child").try_wait().expect("wait")
        })
        .await;
        assert!(status.success(), "the worker exited with {status}");
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn long_node(b: &Bundle, run_id: RunId) -> NodeRecord {
    b.checkpoint(run_id)
        .await
        .into_iter()
        .find(|n| n.node_id == NodeId::from("long"))
        .expect("the node's row")
}

#[tokio::test]
async fn a_node_longer_than_the_grace_period_survives_five_rolling_restarts() {
    let b = fixtures::setup().await;
    // Four seconds against a grace period of 200 ms, with two attempts: without the rule, the
    // second restart would fail the run.
    let spec = json!({
        "id": "longer-than-grace",
        "nodes": [{
            "id": "long", "kind": "exec", "max_attempts": 2, "timeout_ms": 60000,
            "input": { "argv": ["sh", "-c", "sleep 4"] }
        }]
    });
    let automation = b
        .create(&spec::parse_json(&spec.to_string()).expect("spec"))
        .await;
    let run_id = b.start(&automation).await;

    for restart in 1..=RESTARTS {
        let worker = Worker::start(&b);
        wait_for(DEADLINE, "the node to start", || async {
            let node = b.checkpoint(run_id).await.into_iter().next()?;
            (node.status == NodeStatus::Running && node.attempts == restart).then_some(())
        })
        .await;
        worker.terminate().await;

        let node = long_node(&b, run_id).await;
        assert_eq!(node.status, NodeStatus::Failed);
        assert_eq!(
            (node.attempts, node.clean_interruptions),
            (restart, restart),
            "each hand-back recorded its interrupted attempt, uncounted"
        );
        let run = b.run(run_id).await;
        assert_eq!(run.status, RunStatus::Queued, "the run was not failed");
        assert_eq!(run.queue_reason.as_deref(), Some("released_shutdown"));
    }

    let worker = Worker::start(&b);
    wait_for(DEADLINE, "the run to complete", || async {
        (b.status(run_id).await == RunStatus::Completed).then_some(())
    })
    .await;
    worker.terminate().await;

    let node = long_node(&b, run_id).await;
    assert_eq!(node.status, NodeStatus::Completed);
    assert_eq!(
        (node.attempts, node.clean_interruptions),
        (RESTARTS + 1, RESTARTS),
        "one counted attempt: the restarts used none"
    );
    let events = b.events(run_id).await;
    let handed_back: Vec<_> = events
        .iter()
        .filter(|e| e.event == "run_released_shutdown")
        .collect();
    assert_eq!(handed_back.len(), 5);
    for (i, event) in (1..).zip(&handed_back) {
        assert_eq!(
            event.metadata["interrupted"],
            json!([{ "node_id": "long", "attempt": i, "clean_interruptions": i }])
        );
    }
    assert!(
        !events
            .iter()
            .any(|e| e.event.contains("expired") || e.event == "run_stale_reaped"),
        "every stop was a clean hand-back"
    );
}
