//! The worker against a real Postgres, in-process: DAG order, retries, fencing, self-fencing,
//! shutdown hand-back, cancel, pause, gates, and resume. Cancels and pauses that land at once,
//! and attempts a clean stop interrupted, are in `stops`.

use std::path::Path;
use std::time::Duration;

use crate::bundle::{DEADLINE, Execution, config, setup};
use leasehold_core::ids::NodeId;
use leasehold_core::run::{NodeStatus, RunStatus};
use leasehold_core::store::Store;
use leasehold_testkit::proxy::{Mode, Proxy, server_addr};
use leasehold_testkit::wait_for;
use leasehold_worker::Outcome;
use serde_json::json;

pub(crate) fn pid_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| stat.split_whitespace().nth(2) == Some("Z"))
}

pub(crate) async fn read_pids(path: &Path) -> Vec<i32> {
    wait_for(DEADLINE, "the exec child to write its pids", || async {
        let text = std::fs::read_to_string(path).ok()?;
        let pids: Vec<i32> = text
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        (pids.len() == 2).then_some(pids)
    })
    .await
}

/// An exec node whose shell writes its own pid and a grandchild's, then waits.
fn exec_spec(id: &str, pid_file: &Path) -> String {
    format!(
        "id: {id}
nodes:
  - id: hang
    kind: exec
    timeout_ms: 600000
    input:
      argv: [/bin/sh, -c, 'sleep 300 & echo $$ $! > {}.tmp; mv {}.tmp {}; wait']
",
        pid_file.display(),
        pid_file.display(),
        pid_file.display()
    )
}

#[tokio::test]
async fn a_diamond_runs_in_dependency_order_with_outputs_passed_downstream() {
    let b = setup().await;
    let automation = b
        .automation(
            "id: diamond
nodes:
  - {id: a, kind: record}
  - {id: b, kind: record, depends_on: [a], input: {sleep_ms: 300}}
  - {id: c, kind: record, depends_on: [a], input: {sleep_ms: 300}}
  - {id: d, kind: record, depends_on: [b, c]}
",
        )
        .await;
    let worker = b.spawn_worker(config("w1"));
    let run_id = b.start(&automation).await;
    b.wait_status(run_id, RunStatus::Completed).await;
    worker.stop().await;

    let one = |node: &str| {
        let mut runs = b.ledger.of(node);
        assert_eq!(runs.len(), 1, "{node} ran once");
        runs.remove(0)
    };
    let (a, bb, c, d) = (one("a"), one("b"), one("c"), one("d"));
    let done = |e: &Execution| e.finished.expect("finished");
    assert!(
        done(&a) <= bb.started && done(&a) <= c.started,
        "b and c wait for a"
    );
    assert!(
        bb.started < done(&c) && c.started < done(&bb),
        "independent branches overlap"
    );
    assert!(
        done(&bb) <= d.started && done(&c) <= d.started,
        "d waits for b and c"
    );
    assert_eq!(bb.upstream, json!({"a": {"node": "a", "attempt": 1}}));
    assert_eq!(
        d.upstream,
        json!({"b": {"node": "b", "attempt": 1}, "c": {"node": "c", "attempt": 1}})
    );
    let checkpoint = b.checkpoint(run_id).await;
    assert!(checkpoint.iter().all(|n| n.status == NodeStatus::Completed));
    assert_eq!(
        b.event_names(run_id).await.last().map(String::as_str),
        Some("run_completed")
    );
}

#[tokio::test]
async fn a_node_failing_twice_is_retried_with_durable_backoff_and_then_succeeds() {
    let b = setup().await;
    let automation = b
        .automation(
            "id: flaky
nodes:
  - id: flaky
    kind: record
    input: {fail_first: 2}
    max_attempts: 3
    backoff: {base_ms: 3600000, cap_ms: 3600000, factor: 1.0, jitter: 0.0}
",
        )
        .await;
    let worker = b.spawn_worker(config("w1"));
    let run_id = b.start(&automation).await;

    for attempt in 1..=2 {
        // The run waits in the queue, held by nobody, until its retry time.
        wait_for(DEADLINE, "the retry to be scheduled", || async {
            let run = b.run(run_id).await;
            (run.status == RunStatus::Queued && run.retry_attempt == Some(attempt + 1))
                .then_some(run)
        })
        .await;
        let run = b.run(run_id).await;
        assert_eq!(run.claimant_id, None, "no worker waits for a backoff");
        assert!(
            run.retry_after.expect("retry_after")
                > chrono::Utc::now() + chrono::TimeDelta::minutes(50)
        );
        assert_eq!(
            b.ledger.of("flaky").len(),
            usize::try_from(attempt).expect("small")
        );
        // Time passes, by data.
        b.update_run(run_id, "retry_after = now()").await;
    }
    b.wait_status(run_id, RunStatus::Completed).await;
    worker.stop().await;

    let attempts: Vec<u32> = b.ledger.of("flaky").iter().map(|e| e.attempt).collect();
    assert_eq!(attempts, vec![1, 2, 3]);
    let node = &b.checkpoint(run_id).await[0];
    assert_eq!((node.status, node.attempts), (NodeStatus::Completed, 3));
    let names = b.event_names(run_id).await;
    assert_eq!(names.iter().filter(|n| *n == "node_failed").count(), 2);
    assert_eq!(
        names
            .iter()
            .filter(|n| *n == "node_retry_backoff_scheduled")
            .count(),
        2
    );
}

/// A failure that asks for a delay (an HTTP `Retry-After`) is retried after it, not after the
/// node's backoff; a delay beyond the backoff cap is cut to the cap.
#[tokio::test]
async fn a_failure_asking_for_a_delay_is_retried_after_it_up_to_the_cap() {
    let b = setup().await;
    let spec = |id: &str, asked_ms: u64| {
        format!(
            "id: {id}
nodes:
  - id: flaky
    kind: record
    input: {{fail_first: 1, retry_after_ms: {asked_ms}}}
    max_attempts: 2
    backoff: {{base_ms: 1, cap_ms: 600000, factor: 1.0, jitter: 0.0}}
"
        )
    };
    let asked = b.automation(&spec("asked", 120_000)).await;
    let capped = b.automation(&spec("capped", 3_600_000)).await;
    let worker = b.spawn_worker(config("w1"));
    for (automation, want) in [(asked, 120_000), (capped, 600_000)] {
        let run_id = b.start(&automation).await;
        let run = wait_for(DEADLINE, "the retry to be scheduled", || async {
            let run = b.run(run_id).await;
            (run.status == RunStatus::Queued && run.retry_attempt == Some(2)).then_some(run)
        })
        .await;
        let delay_ms: i64 = b
            .sql
            .query_one(
                "SELECT retry_backoff_ms FROM runs WHERE run_id = $1",
                &[&run_id.0],
            )
            .await
            .expect("run row")
            .get(0);
        assert_eq!(delay_ms, want, "{}", run.automation_id.as_str());
    }
    worker.stop().await;
}

#[tokio::test]
async fn a_node_failing_past_max_attempts_fails_the_run_and_skips_what_follows() {
    let b = setup().await;
    let automation = b
        .automation(
            "id: doomed
nodes:
  - id: flaky
    kind: record
    input: {fail_first: 10}
    max_attempts: 2
    backoff: {base_ms: 1, cap_ms: 1, factor: 1.0, jitter: 0.0}
  - {id: after, kind: record, depends_on: [flaky]}
",
        )
        .await;
    let worker = b.spawn_worker(config("w1"));
    let run_id = b.start(&automation).await;
    b.wait_status(run_id, RunStatus::Failed).await;
    worker.stop().await;

    let run = b.run(run_id).await;
    assert_eq!(run.failed_node_id, Some(NodeId::from("flaky")));
    assert_eq!(run.failed_attempt, Some(2));
    let reason = run.stop_reason.expect("reason");
    assert!(
        reason.contains("planned failure 2") && reason.contains("attempt 2 of 2"),
        "{reason}"
    );
    assert_eq!(b.ledger.of("flaky").len(), 2);
    assert!(b.ledger.of("after").is_empty());
    let after = b
        .checkpoint(run_id)
        .await
        .into_iter()
        .find(|n| n.node_id.as_str() == "after")
        .expect("after recorded");
    assert_eq!(after.status, NodeStatus::Skipped);
}

#[tokio::test]
async fn a_terminal_failure_fails_the_run_at_once() {
    let b = setup().await;
    let automation = b
        .automation("id: bad\nnodes:\n  - {id: bad, kind: record, input: {terminal: true}, max_attempts: 5}\n")
        .await;
    let worker = b.spawn_worker(config("w1"));
    let run_id = b.start(&automation).await;
    b.wait_status(run_id, RunStatus::Failed).await;
    worker.stop().await;
    assert_eq!(
        b.ledger.of("bad").len(),
        1,
        "a terminal failure is not retried"
    );
}

#[tokio::test]
async fn an_epoch_raised_under_the_worker_stops_the_node_and_kills_its_child() {
    let b = setup().await;
    let dir = tempdir();
    let pid_file = dir.join("pids");
    let automation = b.automation(&exec_spec("stolen", &pid_file)).await;
    let worker = b.spawn_worker(config("victim"));
    let run_id = b.start(&automation).await;
    let pids = read_pids(&pid_file).await;
    assert!(pids.iter().all(|p| pid_alive(*p)));

    // Another claimant takes the run: the epoch rises under the worker's feet.
    b.sql
        .execute(
            "UPDATE runs SET lease_epoch = lease_epoch + 1, claimant_id = 'thief',
             claim_id = gen_random_uuid() WHERE run_id = $1",
            &[&run_id.0],
        )
        .await
        .expect("steal the run");
    let before = b.run(run_id).await;
    let nodes_before = b.checkpoint(run_id).await;

    wait_for(
        DEADLINE,
        "the exec child and grandchild to be killed",
        || async { pids.iter().all(|p| !pid_alive(*p)).then_some(()) },
    )
    .await;
    let report = worker.stop().await;
    assert_eq!(report.outcomes, vec![Outcome::LeaseLost]);
    assert_eq!(b.run(run_id).await, before, "no late write landed");
    assert_eq!(b.checkpoint(run_id).await, nodes_before);
}

#[tokio::test]
async fn cancelling_a_running_exec_node_kills_its_process_group() {
    let b = setup().await;
    let dir = tempdir();
    let pid_file = dir.join("pids");
    let automation = b.automation(&exec_spec("cancel", &pid_file)).await;
    let worker = b.spawn_worker(config("w1"));
    let run_id = b.start(&automation).await;
    let pids = read_pids(&pid_file).await;

    b.cancel(run_id, "user asked").await;
    wait_for(DEADLINE, "the process group to be killed", || async {
        pids.iter().all(|p| !pid_alive(*p)).then_some(())
    })
    .await;
    worker.stop().await;
    assert_eq!(b.status(run_id).await, RunStatus::Cancelled);
    let names = b.event_names(run_id).await;
    assert_eq!(
        names.last().map(String::as_str),
        Some("run_cancelled"),
        "{names:?}"
    );
}

#[tokio::test]
async fn a_worker_cut_off_from_postgres_stops_the_node_before_its_lease_expires() {
    let b = setup().await;
    let proxy = Proxy::start(server_addr(b.db.url())).await;
    let cut_off = Store::connect(&proxy.url_for(b.db.url()), 4)
        .await
        .expect("store through the proxy");
    let automation = b
        .automation("id: long\nnodes:\n  - {id: long, kind: record, input: {sleep_ms: 600000}}\n")
        .await;
    let run_id = b.start(&automation).await;
    let mut settings = config("isolated");
    settings.listen = false;
    let worker = b.spawn_worker_on(cut_off, settings);
    wait_for(DEADLINE, "the node to start", || async {
        (!b.ledger.of("long").is_empty()).then_some(())
    })
    .await;

    proxy.set(Mode::BlackHole);
    let stopped = wait_for(DEADLINE, "the node to be stopped", || async {
        b.ledger.of("long")[0].finished
    })
    .await;
    // Read the database's view the moment the node stopped: the lease must still be valid.
    let still_valid: bool = b
        .sql
        .query_one(
            "SELECT lease_expires_at > now() FROM runs WHERE run_id = $1",
            &[&run_id.0],
        )
        .await
        .expect("lease")
        .get(0);
    assert!(still_valid, "the node stopped before its lease expired");
    assert!(b.ledger.of("long")[0].cancelled);
    let _ = stopped;

    proxy.set(Mode::Pass);
    let report = worker.stop().await;
    assert_eq!(report.outcomes, vec![Outcome::LeaseLost]);
    let node = &b.checkpoint(run_id).await[0];
    assert_eq!(
        node.status,
        NodeStatus::Running,
        "the fenced-off worker wrote nothing"
    );
}

#[tokio::test]
async fn shutdown_hands_runs_back_and_another_worker_finishes_them_without_waiting() {
    let b = setup().await;
    let automation = b
        .automation(
            "id: handback
nodes:
  - {id: first, kind: record}
  - {id: slow, kind: record, depends_on: [first], input: {sleep_ms: 600000}}
  - {id: last, kind: record, depends_on: [slow]}
",
        )
        .await;
    let mut leaving = config("leaving");
    leaving.shutdown_grace = Duration::from_millis(200);
    let first = b.spawn_worker(leaving);
    let runs = [b.start(&automation).await, b.start(&automation).await];
    wait_for(DEADLINE, "both slow nodes to start", || async {
        (b.ledger.of("slow").len() == 2).then_some(())
    })
    .await;

    let report = first.stop().await;
    assert_eq!(report.outcomes, vec![Outcome::Released, Outcome::Released]);
    for run_id in runs {
        let run = b.run(run_id).await;
        assert_eq!(run.status, RunStatus::Queued);
        assert_eq!(run.queue_reason.as_deref(), Some("released_shutdown"));
    }

    // The second worker's slow node is quick: same automation, so make it quick by data.
    b.sql
        .execute(
            "UPDATE automation_versions SET spec = jsonb_set(spec, '{nodes,1,input,sleep_ms}', '0')",
            &[],
        )
        .await
        .expect("make slow quick");
    let handed_back_at = tokio::time::Instant::now();
    let second = b.spawn_worker(config("arriving"));
    for run_id in runs {
        b.wait_status(run_id, RunStatus::Completed).await;
        let names = b.event_names(run_id).await;
        assert!(names.contains(&"run_released_shutdown".to_owned()));
        assert!(!names.iter().any(|n| n.contains("expired")), "{names:?}");
    }
    assert!(
        handed_back_at.elapsed() < Duration::from_secs(5),
        "no lease expiry was waited for"
    );
    second.stop().await;
    // `first` ran once per run: the second worker resumed after it.
    assert_eq!(b.ledger.of("first").len(), 2);
    assert_eq!(b.ledger.of("last").len(), 2);
}

#[tokio::test]
async fn a_resumed_run_does_not_run_completed_nodes_again() {
    let b = setup().await;
    let automation = b
        .automation(
            "id: resume
nodes:
  - {id: a, kind: record}
  - {id: b, kind: record, depends_on: [a], input: {sleep_ms: 600000}}
",
        )
        .await;
    let run_id = b.start(&automation).await;
    let mut dying = config("dying");
    dying.shutdown_grace = Duration::ZERO;
    let first = b.spawn_worker(dying);
    wait_for(DEADLINE, "b to start", || async {
        (!b.ledger.of("b").is_empty()).then_some(())
    })
    .await;
    first.stop().await;
    b.sql
        .execute(
            "UPDATE automation_versions SET spec = jsonb_set(spec, '{nodes,1,input,sleep_ms}', '0')",
            &[],
        )
        .await
        .expect("make b quick");

    let second = b.spawn_worker(config("resumer"));
    b.wait_status(run_id, RunStatus::Completed).await;
    second.stop().await;
    assert_eq!(
        b.ledger.of("a").len(),
        1,
        "a completed once and never ran again"
    );
    let attempts: Vec<u32> = b.ledger.of("b").iter().map(|e| e.attempt).collect();
    assert_eq!(attempts, vec![1, 2], "the interrupted attempt counted");
}

/// A worker that hears of a pause neither by a notice (it does not listen) nor by a heartbeat
/// (the next is 20 s away) before its running node finishes.
fn deaf_with_rare_heartbeats() -> leasehold_worker::Config {
    let mut rare = config("w1").with_lease(Duration::from_secs(60));
    rare.listen = false;
    rare.validated().expect("config")
}

/// Pauses a run while its first node runs, unknown to the worker: the node finishes, the
/// store's refusal to start the next node stops the worker by itself, and the run ends paused
/// with its lease released.
#[tokio::test]
async fn a_pause_requested_between_heartbeats_starts_no_new_node() {
    let settings = deaf_with_rare_heartbeats();
    let b = setup().await;
    let automation = b
        .automation(
            "id: pause
nodes:
  - {id: a, kind: record, input: {sleep_ms: 500}}
  - {id: b, kind: record, depends_on: [a]}
",
        )
        .await;
    let worker = b.spawn_worker(settings);
    let run_id = b.start(&automation).await;
    wait_for(DEADLINE, "a to start", || async {
        (!b.ledger.of("a").is_empty()).then_some(())
    })
    .await;
    b.pause(run_id, "hold on").await;
    b.wait_status(run_id, RunStatus::Paused).await;
    worker.stop().await;

    let a = &b.ledger.of("a")[0];
    assert!(!a.cancelled, "the running node finished");
    assert!(b.ledger.of("b").is_empty(), "no new node started");
    let run = b.run(run_id).await;
    assert_eq!(run.claimant_id, None, "the lease was released");
    let names = b.event_names(run_id).await;
    assert!(
        names.ends_with(&["node_completed".into(), "run_paused".into()]),
        "{names:?}"
    );
}

#[tokio::test]
async fn an_approval_gate_stops_the_run_and_releases_the_lease() {
    let b = setup().await;
    let automation = b
        .automation(
            "id: gated
nodes:
  - {id: build, kind: record}
  - {id: ship, kind: record, depends_on: [build], approval: {prompt: Ship it?}}
",
        )
        .await;
    let worker = b.spawn_worker(config("w1"));
    let run_id = b.start(&automation).await;
    b.wait_status(run_id, RunStatus::AwaitingApproval).await;
    worker.stop().await;
    let run = b.run(run_id).await;
    assert_eq!(run.claimant_id, None);
    assert!(
        b.ledger.of("ship").is_empty(),
        "the gated node waits for a decision"
    );
    let gate: (String, String) = {
        let row = b
            .sql
            .query_one(
                "SELECT node_id, prompt FROM gates WHERE run_id = $1 AND status = 'pending'",
                &[&run_id.0],
            )
            .await
            .expect("gate");
        (row.get(0), row.get(1))
    };
    assert_eq!(gate, ("ship".into(), "Ship it?".into()));
}

#[tokio::test]
async fn an_approved_gate_lets_the_run_continue_and_rework_runs_nodes_again() {
    use leasehold_core::store::{Decision, DecisionKind};

    let b = setup().await;
    let automation = b
        .automation(
            "id: reviewed
nodes:
  - {id: build, kind: record}
  - {id: ship, kind: record, depends_on: [build], approval: {prompt: Ship it?}}
",
        )
        .await;
    let worker = b.spawn_worker(config("w1"));
    let run_id = b.start(&automation).await;
    let decide = |kind: DecisionKind| async {
        b.wait_status(run_id, RunStatus::AwaitingApproval).await;
        let gate = b
            .store
            .gates_of_run(&b.tenant, run_id)
            .await
            .expect("gates")
            .into_iter()
            .find(|g| g.status == leasehold_core::store::GateStatus::Pending)
            .expect("a pending gate");
        b.store
            .decide_gate(
                &b.tenant,
                &Decision {
                    gate_id: gate.gate_id,
                    kind,
                    reason: None,
                    decided_by: "reviewer".into(),
                    request_id: None,
                },
            )
            .await
            .expect("decide");
    };

    // Rework: build runs again, then the gate asks again; then approval lets ship run.
    decide(DecisionKind::Rework {
        nodes: vec![NodeId::from("build")],
    })
    .await;
    decide(DecisionKind::Approve).await;
    b.wait_status(run_id, RunStatus::Completed).await;
    worker.stop().await;
    assert_eq!(b.ledger.of("build").len(), 2, "rework ran build again");
    assert_eq!(
        b.ledger.of("ship").len(),
        1,
        "ship ran once, after approval"
    );
    let names = b.event_names(run_id).await;
    assert!(
        names.contains(&"run_rework_requested".to_owned()),
        "{names:?}"
    );
    assert!(names.contains(&"run_gate_approved".to_owned()), "{names:?}");
}

#[tokio::test]
async fn an_unreadable_spec_blocks_its_run_and_others_go_on() {
    let b = setup().await;
    let good = b
        .automation("id: good\nnodes:\n  - {id: a, kind: record}\n")
        .await;
    let bad = b
        .automation("id: bad\nnodes:\n  - {id: a, kind: record}\n")
        .await;
    b.sql
        .execute(
            "UPDATE automation_versions SET spec = '{\"nodes\": \"garbage\"}' WHERE automation_id = 'bad'",
            &[],
        )
        .await
        .expect("corrupt");
    let worker = b.spawn_worker(config("w1"));
    let bad_run = b.start(&bad).await;
    let good_run = b.start(&good).await;
    b.wait_status(bad_run, RunStatus::Blocked).await;
    b.wait_status(good_run, RunStatus::Completed).await;
    worker.stop().await;
    let run = b.run(bad_run).await;
    assert_eq!(run.stop_kind.as_deref(), Some("unreadable"));
    assert!(run.stop_reason.expect("reason").contains("unreadable"));
}

#[tokio::test]
async fn an_output_postgres_cannot_store_fails_its_run_and_runs_flushed_with_it_complete() {
    let b = setup().await;
    let nul = b
        .automation("id: nul\nnodes:\n  - {id: a, kind: record, input: {nul_output: true}}\n")
        .await;
    let calm = b
        .automation("id: calm\nnodes:\n  - {id: a, kind: record}\n")
        .await;
    // Queued before the worker starts, so one claim takes them all and their completions share
    // flushes.
    let bad_run = b.start(&nul).await;
    let mut good_runs = Vec::new();
    for _ in 0..10 {
        good_runs.push(b.start(&calm).await);
    }
    let worker = b.spawn_worker(config("w1"));
    b.wait_status(bad_run, RunStatus::Failed).await;
    for run in good_runs {
        b.wait_status(run, RunStatus::Completed).await;
    }
    worker.stop().await;
    let run = b.run(bad_run).await;
    let reason = run.stop_reason.expect("reason");
    assert!(reason.contains("NUL"), "{reason}");
}

#[tokio::test]
async fn a_drained_worker_hands_back_and_stops() {
    let b = setup().await;
    let automation = b
        .automation("id: drain\nnodes:\n  - {id: a, kind: record, input: {sleep_ms: 600000}}\n")
        .await;
    let mut settings = config("drained");
    settings.shutdown_grace = Duration::from_millis(100);
    let worker = b.spawn_worker(settings.clone());
    let run_id = b.start(&automation).await;
    wait_for(DEADLINE, "a to start", || async {
        (!b.ledger.of("a").is_empty()).then_some(())
    })
    .await;
    assert!(
        b.store
            .set_worker_draining(&settings.claimant_id)
            .await
            .expect("drain")
    );
    let report = tokio::time::timeout(DEADLINE, worker.task)
        .await
        .expect("worker stops by itself")
        .expect("task")
        .expect("report");
    assert_eq!(report.outcomes, vec![Outcome::Released]);
    assert_eq!(b.status(run_id).await, RunStatus::Queued);
    assert_eq!(
        b.store
            .worker_heartbeat(&settings.claimant_id)
            .await
            .expect("hb"),
        None,
        "row removed"
    );
}

pub(crate) fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("leasehold-worker-test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[tokio::test]
async fn a_running_row_left_by_an_earlier_claim_is_an_interrupted_attempt() {
    let b = setup().await;
    let automation = b
        .automation("id: leftover\nnodes:\n  - {id: a, kind: record}\n")
        .await;
    let run_id = b.start(&automation).await;
    // An earlier claim started `a` and vanished; its run went back to the queue with the row
    // still `running` (a reap that raced the start).
    let claim = b
        .store
        .claim_runs(
            &leasehold_core::ids::ClaimantId::from("gone"),
            1,
            Duration::from_secs(60),
        )
        .await
        .expect("claim")
        .remove(0)
        .claim;
    b.store
        .node_started(&claim, &NodeId::from("a"))
        .await
        .expect("start");
    b.sql
        .execute(
            "UPDATE runs SET status = 'queued', claim_id = NULL, claimant_id = NULL,
             claimed_at = NULL, lease_expires_at = NULL WHERE run_id = $1",
            &[&run_id.0],
        )
        .await
        .expect("requeue");

    let worker = b.spawn_worker(config("w1"));
    b.wait_status(run_id, RunStatus::Completed).await;
    worker.stop().await;
    let attempts: Vec<u32> = b.ledger.of("a").iter().map(|e| e.attempt).collect();
    assert_eq!(
        attempts,
        vec![2],
        "the interrupted attempt counted; the node ran again"
    );
}

#[tokio::test]
async fn a_retryable_failure_while_pausing_pauses_the_run() {
    let b = setup().await;
    let automation = b
        .automation(
            "id: pause-retry
nodes:
  - {id: a, kind: record, input: {sleep_ms: 400, fail_first: 1}, max_attempts: 3}
",
        )
        .await;
    // Neither a notice nor a heartbeat carries the pause: scheduling the retry must find it.
    let worker = b.spawn_worker(deaf_with_rare_heartbeats());
    let run_id = b.start(&automation).await;
    wait_for(DEADLINE, "a to start", || async {
        (!b.ledger.of("a").is_empty()).then_some(())
    })
    .await;
    b.pause(run_id, "hold on").await;
    b.wait_status(run_id, RunStatus::Paused).await;
    worker.stop().await;
    let node = &b.checkpoint(run_id).await[0];
    assert_eq!((node.status, node.attempts), (NodeStatus::Failed, 1));
    assert!(
        b.event_names(run_id)
            .await
            .contains(&"node_failed".to_owned())
    );
}

#[tokio::test]
async fn a_panicking_handler_fails_its_node_and_the_worker_goes_on() {
    let b = setup().await;
    let automation = b
        .automation("id: panics\nnodes:\n  - {id: a, kind: record, input: {panic: true}}\n")
        .await;
    let calm = b
        .automation("id: calm\nnodes:\n  - {id: a, kind: record}\n")
        .await;
    let worker = b.spawn_worker(config("w1"));
    let panicking = b.start(&automation).await;
    let fine = b.start(&calm).await;
    b.wait_status(panicking, RunStatus::Failed).await;
    b.wait_status(fine, RunStatus::Completed).await;
    worker.stop().await;
    let run = b.run(panicking).await;
    let reason = run.stop_reason.expect("reason");
    assert!(reason.contains("panicked"), "{reason}");
}

#[tokio::test]
async fn a_node_reset_by_a_rework_asks_for_approval_again() {
    use leasehold_core::store::{Decision, DecisionKind, GateStatus};

    let b = setup().await;
    let automation = b
        .automation(
            "id: twice-gated
nodes:
  - {id: x, kind: record, approval: {prompt: Run x?}}
  - {id: y, kind: record, depends_on: [x], approval: {prompt: Run y?}}
",
        )
        .await;
    let worker = b.spawn_worker(config("w1"));
    let run_id = b.start(&automation).await;
    let pending = || async {
        b.wait_status(run_id, RunStatus::AwaitingApproval).await;
        b.store
            .gates_of_run(&b.tenant, run_id)
            .await
            .expect("gates")
            .into_iter()
            .find(|g| g.status == GateStatus::Pending)
            .expect("a pending gate")
    };
    let b = &b;
    let decide = |gate_id, kind| async move {
        let decision = Decision {
            gate_id,
            kind,
            reason: None,
            decided_by: "reviewer".into(),
            request_id: None,
        };
        b.store
            .decide_gate(&b.tenant, &decision)
            .await
            .expect("decide");
    };

    let x = pending().await;
    assert_eq!(x.node_id.as_str(), "x");
    decide(x.gate_id, DecisionKind::Approve).await;
    let y = pending().await;
    assert_eq!(y.node_id.as_str(), "y");
    decide(
        y.gate_id,
        DecisionKind::Rework {
            nodes: vec![NodeId::from("x")],
        },
    )
    .await;
    // x was reset by the rework: its earlier approval no longer counts.
    let again = pending().await;
    worker.stop().await;
    assert_eq!(again.node_id.as_str(), "x", "x asks again");
    assert_eq!(
        b.ledger.of("x").len(),
        1,
        "x did not run on its old approval"
    );
}

/// A fresh run's roots start with its claim and their handlers run from the claim's answer; a
/// version that does not record its start nodes has them started by the worker. Both histories
/// read the same: claimed, each root's start with attempt 1, then the rest.
#[tokio::test]
async fn a_fresh_runs_roots_run_from_its_claim_and_its_history_reads_as_before() {
    let b = setup().await;
    let fan = "
nodes:
  - {id: a, kind: record}
  - {id: b, kind: record}
  - {id: d, kind: record, depends_on: [a, b]}
";
    let folded = b.automation(&format!("id: folded{fan}")).await;
    let older = b.automation(&format!("id: older{fan}")).await;
    b.sql
        .execute(
            "UPDATE automation_versions SET start_nodes = NULL WHERE automation_id = $1",
            &[&older.as_str()],
        )
        .await
        .expect("as a version stored before start nodes");
    let worker = b.spawn_worker(config("w1"));
    let runs = [b.start(&folded).await, b.start(&older).await];
    for run_id in runs {
        b.wait_status(run_id, RunStatus::Completed).await;
    }
    worker.stop().await;

    let mut histories = Vec::new();
    for run_id in runs {
        let events = b.store.events_after(run_id, 0, 100).await.expect("events");
        let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=events.len() as i64).collect::<Vec<_>>());
        let starts: Vec<(String, Option<String>, Option<i32>)> = events[1..4]
            .iter()
            .map(|e| {
                (
                    e.event.clone(),
                    e.node_id.as_ref().map(|n| n.as_str().to_owned()),
                    e.attempt,
                )
            })
            .collect();
        assert_eq!(
            starts,
            [
                ("run_claimed".to_owned(), None, None),
                ("node_started".to_owned(), Some("a".to_owned()), Some(1)),
                ("node_started".to_owned(), Some("b".to_owned()), Some(1)),
            ],
            "{run_id}"
        );
        histories.push(events.into_iter().map(|e| e.event).collect::<Vec<_>>());
    }
    assert_eq!(histories[0], histories[1]);
    for node in ["a", "b", "d"] {
        let attempts: Vec<u32> = b.ledger.of(node).iter().map(|e| e.attempt).collect();
        assert_eq!(attempts, [1, 1], "{node} ran once per run");
    }
}
