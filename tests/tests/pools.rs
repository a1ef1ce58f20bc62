//! Heterogeneous worker pools (issue 19): runs reach only workers that have what they need.
//!
//! `cargo test -p leasehold-fault-tests --test pools`.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use leasehold_core::ids::RunId;
use leasehold_core::routing::WaitReason;
use leasehold_fault_tests::cluster::{Cluster, SHELL, WorkerId, WorkerKinds, WorkerOpts};
use leasehold_fault_tests::scenario::{self, FINISH_DEADLINE, Line, SCENARIO_LIMIT, bounded};
use leasehold_fault_tests::{api, ledger};
use leasehold_proto::v1;

const RUNS_PER_AUTOMATION: usize = 50;

/// A pool without `exec` and without the suite's `ledger` kind.
const BUILT_IN: WorkerOpts = WorkerOpts {
    kinds: WorkerKinds::BuiltIn,
    capacity: 16,
    proxied: false,
    pool_size: 8,
    labels: &[],
};

fn specs() -> [String; 4] {
    let exec = format!(
        "{{id: shell, kind: exec, depends_on: [a], input: {{argv: [{SHELL}, -c, \"echo {{}}\"]}}}}"
    );
    [
        "id: plain\nnodes:\n  - {id: a, kind: noop}\n  - {id: b, kind: echo, depends_on: [a]}\n"
            .to_owned(),
        format!("id: shell\nnodes:\n  - {{id: a, kind: noop}}\n  - {exec}\n"),
        "id: custom\nnodes:\n  - {id: a, kind: noop}\n  - {id: ledger, kind: ledger, depends_on: [a]}\n"
            .to_owned(),
        format!(
            "id: both\nnodes:\n  - {{id: a, kind: noop}}\n  - {exec}\n  - {{id: ledger, kind: ledger, depends_on: [a]}}\n"
        ),
    ]
}

/// Two pools: two workers with the built-in kinds only start first, with 200 runs queued, 50
/// of which need nothing more. They complete those; the 150 that need `exec` or the custom
/// `ledger` kind wait in `queued`, saying which kind no worker has, and none fails. Then two
/// workers with both start and complete the rest. Every run that needs `exec` or `ledger` was
/// claimed by the second pool only, and the ledger's executions ran there only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pools_each_run_only_what_they_have() {
    let _alone = scenario::one_at_a_time().await;
    bounded("pools", SCENARIO_LIMIT, async {
        let mut c = Cluster::start(
            "pools",
            leasehold_fault_tests::bins!(),
            1,
            &[BUILT_IN, BUILT_IN],
        )
        .await;
        let line = pools(&mut c).await;
        c.conclude(line).await;
    })
    .await;
}

async fn pools(c: &mut Cluster) -> Line {
    let mut runs: HashMap<&'static str, Vec<RunId>> = HashMap::new();
    for (name, yaml) in ["plain", "shell", "custom", "both"]
        .into_iter()
        .zip(specs())
    {
        let automation = c.automation(&yaml).await;
        runs.insert(name, c.start_runs(&automation, RUNS_PER_AUTOMATION).await);
    }
    let all: Vec<RunId> = runs.values().flatten().copied().collect();
    let needy: Vec<RunId> = ["shell", "custom", "both"]
        .iter()
        .flat_map(|name| runs[name].iter().copied())
        .collect();

    // The built-in pool alone: the plain runs complete, the others wait, none fails.
    c.wait_all(&runs["plain"], "completed", FINISH_DEADLINE)
        .await;
    assert_eq!(c.count_status(&needy, "queued").await, needy.len());
    let mut needy_records = Vec::new();
    for run in &needy {
        needy_records.push(c.store.run(&c.tenant, *run).await.expect("run"));
    }
    let reasons = c.store.wait_reasons(&needy_records).await.expect("reasons");
    let said: BTreeSet<String> = reasons.values().map(ToString::to_string).collect();
    assert_eq!(
        said,
        BTreeSet::from([
            "waiting for a worker with: kind exec".to_owned(),
            "waiting for a worker with: kind ledger".to_owned(),
            "waiting for a worker with: kind exec, kind ledger".to_owned(),
        ]),
        "each waiting run names the kinds it lacks"
    );
    assert_eq!(reasons.len(), needy.len());
    assert!(
        reasons
            .values()
            .all(|r| matches!(r, WaitReason::Missing { .. }) && r.code() == "no_capable_worker")
    );
    // The API shows the same reason.
    let mut client = api::clients(c, c.coordinators()[0]).await;
    let shown = client
        .runs
        .get_run(v1::GetRunRequest {
            run_id: runs["both"][0].to_string(),
        })
        .await
        .expect("get run")
        .into_inner();
    let waiting = shown.waiting.expect("a waiting reason");
    assert_eq!(waiting.code, "no_capable_worker");
    assert_eq!(waiting.missing, ["kind exec", "kind ledger"]);

    // The full pool: everything completes.
    let started = Instant::now();
    let full: Vec<WorkerId> = vec![
        c.add_worker(WorkerOpts::default()).await,
        c.add_worker(WorkerOpts::default()).await,
    ];
    c.wait_all(&all, "completed", FINISH_DEADLINE).await;
    let recovery = started.elapsed();

    let full_claimants: BTreeSet<String> = full.iter().map(|w| c.claimant(*w).0.clone()).collect();
    let claimants = claimants_by_run(c, &all).await;
    for run in &needy {
        let by = &claimants[run];
        assert!(
            by.is_subset(&full_claimants),
            "run {run} needs exec or ledger, and was claimed by {by:?}"
        );
    }
    let executions = ledger::all(&c.sql).await;
    assert_eq!(executions.len(), 2 * RUNS_PER_AUTOMATION);
    assert!(
        executions
            .iter()
            .all(|e| full_claimants.contains(&e.claimant))
    );
    Line {
        scenario: "pools",
        runs: all.len(),
        lost: 0,
        double_completed: 0,
        recovery,
        bound: FINISH_DEADLINE,
        took: Duration::ZERO,
    }
}

/// Who claimed each run, from its `run_claimed` events.
async fn claimants_by_run(c: &Cluster, runs: &[RunId]) -> HashMap<RunId, BTreeSet<String>> {
    let ids: Vec<uuid::Uuid> = runs.iter().map(|r| r.0).collect();
    let rows = c
        .sql
        .query(
            "SELECT run_id, metadata->>'claimant_id' AS claimant FROM run_events
             WHERE event = 'run_claimed' AND run_id = ANY($1)",
            &[&ids],
        )
        .await
        .expect("claims");
    let mut by_run: HashMap<RunId, BTreeSet<String>> = HashMap::new();
    for row in rows {
        by_run
            .entry(RunId(row.get("run_id")))
            .or_default()
            .insert(row.get("claimant"));
    }
    by_run
}

/// A run that requires a label no worker has waits in `queued` with the reason shown, and is
/// claimed within a second of a worker with that label registering (the scenario's recovery,
/// whose bound `conclude` checks). A run requiring a label no worker ever gets fails with
/// `no_capable_worker` once its `schedule_to_start_timeout_ms` passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_waits_for_the_label_it_requires_and_goes_to_its_first_worker() {
    let _alone = scenario::one_at_a_time().await;
    bounded("label-wait", SCENARIO_LIMIT, async {
        let mut c = Cluster::start(
            "label-wait",
            leasehold_fault_tests::bins!(),
            1,
            &[WorkerOpts {
                labels: &["gpu=h100"],
                ..WorkerOpts::default()
            }],
        )
        .await;
        let line = label_wait(&mut c).await;
        c.conclude(line).await;
    })
    .await;
}

async fn label_wait(c: &mut Cluster) -> Line {
    let train = c
        .automation("id: train\nnodes:\n  - {id: a, kind: noop, requires: {gpu: a100}}\n")
        .await;
    let plain = c
        .automation("id: plain\nnodes:\n  - {id: a, kind: noop}\n")
        .await;
    // Nobody will ever have a v100: this run fails once its start deadline passes.
    let render = c
        .automation(
            "id: render\nschedule_to_start_timeout_ms: 3000\nnodes:\n  \
             - {id: a, kind: noop, requires: {gpu: v100}}\n",
        )
        .await;
    let doomed = c.start_runs(&render, 1).await[0];
    let mut client = api::clients(c, c.coordinators()[0]).await;
    let get = v1::GetRunRequest {
        run_id: doomed.to_string(),
    };
    // While it waits, it says when it fails.
    let waiting = client
        .runs
        .get_run(get.clone())
        .await
        .expect("get run")
        .into_inner();
    assert_eq!(waiting.status(), v1::RunStatus::Queued);
    let (created, deadline) = (
        waiting.created_at.expect("created"),
        waiting.start_deadline.expect("a start deadline"),
    );
    assert_eq!(
        (deadline.seconds - created.seconds) * 1000
            + i64::from(deadline.nanos - created.nanos) / 1_000_000,
        3000
    );
    let run = c.start_runs(&train, 1).await[0];
    let record = c.store.run(&c.tenant, run).await.expect("run");
    let reasons = c.store.wait_reasons([&record]).await.expect("reasons");
    assert_eq!(
        reasons[&run].to_string(),
        "waiting for a worker with: label gpu=a100"
    );
    // The h100 worker claims a run queued after it, which comes after it in claim order: so it
    // passed it over.
    let later = c.start_runs(&plain, 1).await;
    c.wait_all(&later, "completed", FINISH_DEADLINE).await;
    assert_eq!(c.count_status(&[run], "queued").await, 1);

    let a100 = c
        .add_worker(WorkerOpts {
            labels: &["gpu=a100"],
            ..WorkerOpts::default()
        })
        .await;
    c.wait_all(&[run], "completed", FINISH_DEADLINE).await;
    // By the database's clock: from the worker's registration to the run's claim.
    let row = c
        .sql
        .query_one(
            "SELECT e.metadata->>'claimant_id' AS claimant,
                    extract(epoch FROM e.occurred_at - w.started_at)::float8 AS after
             FROM run_events e JOIN workers w ON w.claimant_id = e.metadata->>'claimant_id'
             WHERE e.run_id = $1 AND e.event = 'run_claimed'",
            &[&run.0],
        )
        .await
        .expect("the run's one claim");
    assert_eq!(row.get::<_, String>("claimant"), c.claimant(a100).0);
    let after = Duration::from_secs_f64(row.get::<_, f64>("after").max(0.0));

    c.wait_all(&[doomed], "failed", FINISH_DEADLINE).await;
    let failed = client
        .runs
        .get_run(get)
        .await
        .expect("get run")
        .into_inner();
    assert_eq!(failed.stop_kind(), v1::StopKind::NoCapableWorker);
    assert_eq!(
        failed.start_deadline, None,
        "a failed run has no deadline left"
    );
    assert!(
        failed.stop_reason.contains("label gpu=v100"),
        "{}",
        failed.stop_reason
    );
    let late: f64 = c
        .sql
        .query_one(
            "SELECT extract(epoch FROM finished_at - start_deadline)::float8 FROM runs
             WHERE run_id = $1",
            &[&doomed.0],
        )
        .await
        .expect("the failed run")
        .get(0);
    assert!(
        Duration::from_secs_f64(late.max(0.0)) <= c.timings.sweep + c.timings.margin,
        "failed {late} s after its start deadline"
    );
    Line {
        scenario: "label-wait",
        runs: 3,
        lost: 0,
        double_completed: 0,
        recovery: after,
        bound: Duration::from_secs(1),
        took: Duration::ZERO,
    }
}
