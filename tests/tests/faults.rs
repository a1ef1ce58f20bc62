//! The fault suite: the real `leasehold` coordinator and `leasehold-test-worker` processes
//! against a throwaway PostgreSQL, faults injected from outside (signals, a TCP proxy), and the
//! design's invariants checked after every scenario (`leasehold_fault_tests::invariants`).
//!
//! Each scenario runs alone (they measure recovery times), within a hard time bound, and prints
//! a line (`scenario kill-9: runs=500 lost=0 double-completed=0 recovery=5.9s …`) and the
//! summary table of the lines so far. Recovery bounds are computed from the timings the
//! processes run with (`cluster::TIMINGS`): a 5 s lease (the shortest a worker takes), 1 s
//! heartbeats, sweeps every 0.5 s, a 3 s leader lease.
//!
//! `cargo test -p leasehold-fault-tests`; one scenario: `… --test faults zombie`.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use leasehold_core::ids::{ClaimantId, RunId};
use leasehold_fault_tests::cluster::{Cluster, SHELL, TIMINGS, WorkerId, WorkerOpts, group_alive};
use leasehold_fault_tests::ledger;
use leasehold_fault_tests::scenario::{
    self, FINISH_DEADLINE, Line, POLL, SCENARIO_LIMIT, bounded, secs, workers,
};
use leasehold_proto::v1::CancelRunRequest;
use leasehold_testkit::proxy::Mode;
use leasehold_testkit::wait_for_every;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

// ---------------------------------------------------------------------------------------------
// 1. kill -9 mid-node
// ---------------------------------------------------------------------------------------------

const KILL9_RUNS: usize = 500;

/// Two short nodes; the second fails its first attempt, so retries wait in durable backoff
/// while the fault happens. Four attempts: one planned failure and one interrupted by the kill
/// leave room to succeed.
const KILL9_SPEC: &str = "\
id: kill9
nodes:
  - {id: a, kind: ledger, input: {sleep_ms: 200}}
  - id: b
    kind: ledger
    input: {sleep_ms: 200, fail_first: 1}
    depends_on: [a]
    max_attempts: 4
    backoff: {base_ms: 100, factor: 1.0, cap_ms: 100, jitter: 0.0}
";

/// Many runs in flight on three workers (one of them on a slow link through a proxy); one
/// worker is SIGKILLed mid-node, and at the same moment every database connection of the slow
/// one is cut. Every run completes; the killed worker's runs are claimed again within the lease
/// plus two sweep intervals (reap, auto-resume) plus a margin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_node_loses_no_run() {
    let _alone = scenario::one_at_a_time().await;
    bounded("kill-9", SCENARIO_LIMIT, async {
        let mut opts = workers(3);
        opts[2].proxied = true;
        let mut c = Cluster::start("kill-9", leasehold_fault_tests::bins!(), 2, &opts).await;
        let line = kill_9(&mut c).await;
        c.conclude(line).await;
    })
    .await;
}

async fn kill_9(c: &mut Cluster) -> Line {
    let t = c.timings;
    let [victim, _, slow] = c.workers()[..] else {
        unreachable!("three workers")
    };
    c.proxy(slow).set(Mode::Delay(Duration::from_millis(5)));
    let automation = c.automation(KILL9_SPEC).await;
    let runs = c.start_runs(&automation, KILL9_RUNS).await;

    wait_for_every(
        FINISH_DEADLINE,
        POLL,
        "a fifth of the runs to complete while the victim has nodes running",
        || async {
            let completed = c.count_status(&runs, "completed").await;
            (completed >= runs.len() / 5 && c.busy_runs(victim).await >= 4).then_some(())
        },
    )
    .await;
    let fault = Instant::now();
    c.kill_worker(victim).await;
    c.proxy(slow).cut();
    let held = c.held_by(victim).await;
    assert!(!held.is_empty(), "the victim held runs when it died");

    let recovery = wait_for_every(
        t.recovery_bound() * 2,
        POLL,
        "the killed worker's runs to be claimed again",
        || async { (c.not_reclaimed(&held).await == 0).then(|| fault.elapsed()) },
    )
    .await;
    let lost = c.settle(&runs, "completed", FINISH_DEADLINE).await;
    eprintln!(
        "kill-9: the victim held {} runs; claimed again after {:.1}s",
        held.len(),
        secs(recovery)
    );
    Line {
        scenario: "kill-9",
        runs: runs.len(),
        lost,
        double_completed: 0,
        recovery,
        bound: t.recovery_bound(),
        took: Duration::ZERO,
    }
}

// ---------------------------------------------------------------------------------------------
// 2. zombie fenced
// ---------------------------------------------------------------------------------------------

const ZOMBIE_RUNS: usize = 8;

/// The `exec` program: writes its pid (its process group's id) where the suite finds it, then
/// on the first attempt sleeps, with a grandchild in its group, for far longer than the scenario;
/// later attempts finish at once.
const EXEC_SCRIPT: &str = r#"echo $$ > "$1/$LEASEHOLD_RUN_ID.$LEASEHOLD_ATTEMPT.pid"
if [ "$LEASEHOLD_ATTEMPT" = 1 ]; then /bin/sleep 300 & exec /bin/sleep 300; fi
echo '{}'"#;

fn zombie_spec(dir: &Path) -> String {
    format!(
        "\
id: zombie
nodes:
  - {{id: first, kind: ledger}}
  - {{id: work, kind: ledger, input: {{sleep_ms: 2500}}, depends_on: [first]}}
  - id: child
    kind: exec
    depends_on: [first]
    input: {{argv: [{SHELL}, -c, {script}, sh, {dir}]}}
",
        script = serde_json::to_string(EXEC_SCRIPT).expect("script"),
        dir = serde_json::to_string(&dir.display().to_string()).expect("dir"),
    )
}

/// The process group of an `exec` attempt, once its program has written its pid.
fn exec_group(dir: &Path, run: RunId, attempt: u32) -> Option<Pid> {
    let text = std::fs::read_to_string(dir.join(format!("{run}.{attempt}.pid"))).ok()?;
    text.trim().parse().ok().map(Pid::from_raw)
}

/// Two zombies: one worker is SIGSTOPped and another is cut off from the database (a black
/// hole in its proxy), each holding runs with a ledger node and an `exec` child running. A third
/// worker, started after the fault, finishes their runs. The cut-off worker stops its child
/// before its lease can expire (the self-fence); once the rescuer has finished, the stopped
/// worker is continued and the black hole lifted, so every write they had in flight arrives
/// late: none lands, the continued worker kills its child, and nothing is recorded twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zombie_writes_are_fenced() {
    let _alone = scenario::one_at_a_time().await;
    bounded("zombie", SCENARIO_LIMIT, async {
        let half = WorkerOpts {
            capacity: ZOMBIE_RUNS / 2,
            ..WorkerOpts::default()
        };
        let opts = [
            half,
            WorkerOpts {
                proxied: true,
                ..half
            },
        ];
        let mut c = Cluster::start("zombie", leasehold_fault_tests::bins!(), 2, &opts).await;
        let line = zombie(&mut c).await;
        c.conclude(line).await;
    })
    .await;
}

async fn zombie(c: &mut Cluster) -> Line {
    let t = c.timings;
    let [stopped, cut_off] = c.workers()[..] else {
        unreachable!("two workers")
    };
    let dir = c.sup.dir().to_path_buf();
    let automation = c.automation(&zombie_spec(&dir)).await;
    let runs = c.start_runs(&automation, ZOMBIE_RUNS).await;

    let groups: HashMap<RunId, Pid> = wait_for_every(
        FINISH_DEADLINE,
        POLL,
        "every run to have completed its first node and started its exec child",
        || async {
            let groups: HashMap<RunId, Pid> = runs
                .iter()
                .filter_map(|&r| Some((r, exec_group(&dir, r, 1)?)))
                .collect();
            let firsts = c.count_nodes(&runs, "first", "completed").await;
            (groups.len() == runs.len() && firsts == runs.len()).then_some(groups)
        },
    )
    .await;
    for &pgid in groups.values() {
        c.sup.adopt_group(pgid);
    }
    let held_stopped = c.held_by(stopped).await;
    let held_cut = c.held_by(cut_off).await;
    assert_eq!(
        held_stopped.len() + held_cut.len(),
        runs.len(),
        "the two zombies-to-be hold every run"
    );

    let fault = Instant::now();
    c.signal_worker(stopped, Signal::SIGSTOP);
    c.proxy(cut_off).set(Mode::BlackHole);
    // A ledger node still sleeping now completes while its worker is a zombie: its completion
    // is a late write.
    let in_flight = c.count_nodes(&runs, "work", "running").await;
    c.add_worker(WorkerOpts::default()).await;

    // The self-fence: the cut-off worker kills its children before its leases can expire, so
    // before anyone can claim its runs again.
    let cut_groups: Vec<Pid> = held_cut.iter().map(|(r, _)| groups[r]).collect();
    wait_for_every(
        t.lease,
        Duration::from_millis(20),
        "the cut-off worker to kill its exec children (self-fence)",
        || async { cut_groups.iter().all(|&g| !group_alive(g)).then_some(()) },
    )
    .await;
    assert_eq!(
        c.not_reclaimed(&held_cut).await,
        i64::try_from(held_cut.len()).expect("count"),
        "a run of the cut-off worker was claimed again before its child was dead"
    );

    let all_held: Vec<(RunId, i64)> = held_stopped.iter().chain(&held_cut).copied().collect();
    let recovery = wait_for_every(
        t.recovery_bound() * 2,
        POLL,
        "the rescuer to claim every zombie's run",
        || async { (c.not_reclaimed(&all_held).await == 0).then(|| fault.elapsed()) },
    )
    .await;
    let lost = c.settle(&runs, "completed", FINISH_DEADLINE).await;
    assert_eq!(lost, 0, "the rescuer finished every run");

    // The zombies wake up; everything they had in flight arrives now.
    let held_chunks = c.proxy(cut_off).held_chunks();
    c.signal_worker(stopped, Signal::SIGCONT);
    c.proxy(cut_off).set(Mode::Pass);
    eprintln!(
        "zombie: {in_flight} ledger nodes were in flight at the fault; the black hole held \
         {held_chunks} chunks of the cut-off worker's traffic"
    );
    let stopped_groups: Vec<Pid> = held_stopped.iter().map(|(r, _)| groups[r]).collect();
    wait_for_every(
        t.heartbeat + t.margin,
        Duration::from_millis(20),
        "the continued worker to kill its exec children",
        || async {
            stopped_groups
                .iter()
                .all(|&g| !group_alive(g))
                .then_some(())
        },
    )
    .await;
    wait_for_every(
        t.margin,
        Duration::from_millis(20),
        "the black hole's held bytes to reach the database",
        || async { (c.proxy(cut_off).held_chunks() == 0).then_some(()) },
    )
    .await;
    for (worker, held) in [(stopped, &held_stopped), (cut_off, &held_cut)] {
        wait_runs_left(c, worker, held, "LeaseLost").await;
    }

    // Nothing the zombies did after the takeover counts: each node completed once, and the
    // node that completed before the fault never ran again.
    let executions = ledger::all(&c.sql).await;
    for run in &runs {
        let firsts = executions
            .iter()
            .filter(|x| x.run_id == *run && x.node_id == "first")
            .count();
        assert_eq!(firsts, 1, "run {run}: node first ran {firsts} times");
    }
    assert_eq!(
        c.event_count("node_completed", &runs).await,
        i64::try_from(3 * runs.len()).expect("count"),
        "three nodes completed once per run"
    );
    Line {
        scenario: "zombie",
        runs: runs.len(),
        lost,
        double_completed: 0,
        recovery,
        bound: t.recovery_bound(),
        took: Duration::ZERO,
    }
}

/// Waits until `worker`'s log says each of `held` left it with `outcome`.
async fn wait_runs_left(c: &Cluster, worker: WorkerId, held: &[(RunId, i64)], outcome: &str) {
    let proc = c.worker_proc(worker);
    wait_for_every(
        c.timings.heartbeat + c.timings.margin,
        POLL,
        &format!("{} to let its runs go ({outcome})", c.sup.name(proc)),
        || async {
            let log = c.sup.log(proc);
            held.iter()
                .all(|(run, _)| {
                    log.lines().any(|l| {
                        l.contains("run left the worker")
                            && l.contains(&run.to_string())
                            && l.contains(outcome)
                    })
                })
                .then_some(())
        },
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// 4. lost commit acknowledgement
// ---------------------------------------------------------------------------------------------

const LOST_ACK_RUNS: usize = 8;

/// A first node long enough that every run's handler is running when results start to be held,
/// and short enough that the hold ends well within the worker's self-fence horizon.
const LOST_ACK_SPEC: &str = "\
id: lost-ack
nodes:
  - {id: a, kind: ledger, input: {sleep_ms: 1000}}
  - {id: b, kind: ledger, input: {sleep_ms: 100}, depends_on: [a]}
";

// name: started_under_claim
// Of runs held at the given epochs, how many have started node `$3` under that same epoch.
const STARTED_UNDER_CLAIM: &str = "\
SELECT count(*) FROM run_nodes n
JOIN unnest($1::uuid[], $2::bigint[]) AS v(run_id, epoch) ON n.run_id = v.run_id
WHERE n.node_id = $3::text AND n.epoch = v.epoch";

// name: claimed_again
// Of runs held at the given epochs, how many were claimed again since.
const CLAIMED_AGAIN: &str = "\
SELECT count(*) FROM runs r
JOIN unnest($1::uuid[], $2::bigint[]) AS v(run_id, epoch) ON r.run_id = v.run_id
WHERE r.lease_epoch <> v.epoch";

/// How long a worker goes on without an acknowledged heartbeat before it stops its runs: the
/// lease less the self-fence margin.
fn self_fence_after() -> Duration {
    let config =
        leasehold_worker::Config::new(ClaimantId("bound".into())).with_lease(TIMINGS.lease);
    config.lease - config.self_fence_margin()
}

/// From the cut to every run's next node started under the same claim. The worker's last
/// acknowledged heartbeat was sent at most a heartbeat before the replies were held, so it
/// stops its runs no sooner than `self_fence_after() - heartbeat` after that: a retried
/// completion that lands later lands for a run its worker has already given up. The machine's
/// load cannot stretch this bound, so it has no margin.
fn lost_ack_bound(held_for: Duration) -> Duration {
    (self_fence_after() - TIMINGS.heartbeat).saturating_sub(held_for)
}

/// One worker reaches the database through a proxy that, while every run's first node is
/// running, lets the worker's statements through and holds their results. Once every first
/// node's completion has committed, every connection is cut: each completion's acknowledgement
/// is lost. The worker retries each completion, the store finds it landed under the same epoch
/// and succeeds quietly, and every run starts its next node under the same claim before the
/// worker's self-fence could stop it. Nothing ran or completed twice, nothing was reaped, no run
/// was claimed twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_commit_acknowledgement_is_retried_quietly() {
    let _alone = scenario::one_at_a_time().await;
    bounded("lost-ack", SCENARIO_LIMIT, async {
        let opts = [WorkerOpts {
            capacity: LOST_ACK_RUNS,
            proxied: true,
            // Each completion keeps its connection while its result is held, and the keeper's
            // heartbeat keeps one more: with fewer, some completion would wait for a connection
            // and not commit before the cut. The spare connection also lets the retries through:
            // a fenced write that changed nothing keeps its connection while it takes a second
            // one to read the row (`node_fence`, `run_fence` in `core::store`), so as many
            // retried writes at once as the pool has connections would wait for each other until
            // the worker self-fences. tests/README.md says why that case is not run here.
            pool_size: LOST_ACK_RUNS + 1,
            ..WorkerOpts::default()
        }];
        let mut c = Cluster::start("lost-ack", leasehold_fault_tests::bins!(), 2, &opts).await;
        let line = lost_ack(&mut c).await;
        c.conclude(line).await;
    })
    .await;
}

/// Statements of other sessions still executing in the scenario's database.
const EXECUTING: &str = "\
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
  AND backend_type = 'client backend' AND state = 'active'";

async fn lost_ack(c: &mut Cluster) -> Line {
    let t = c.timings;
    let [worker] = c.workers()[..] else {
        unreachable!("one worker")
    };
    let automation = c.automation(LOST_ACK_SPEC).await;
    let runs = c.start_runs(&automation, LOST_ACK_RUNS).await;
    // A ledger row is written by a running handler, so the worker has the acknowledgement of
    // every first node's start.
    wait_for_every(
        FINISH_DEADLINE,
        Duration::from_millis(10),
        "every run's first node to be running",
        || async {
            let started = ledger::all(&c.sql)
                .await
                .iter()
                .filter(|x| x.node_id == "a")
                .count();
            (started == runs.len()).then_some(())
        },
    )
    .await;

    let held_at = Instant::now();
    c.proxy(worker).set(Mode::HoldResults);
    // Read after results are held: a completion that committed before would be seen here.
    assert_eq!(
        c.count_nodes(&runs, "a", "completed").await,
        0,
        "a first node completed before results were held; its acknowledgement went through"
    );
    // The worker batches completions: the flushes in flight commit while their results are held,
    // and the rest wait in the worker for a free flush slot. Cut once completions committed and
    // nothing the worker sent is still executing, so every statement in flight lost only its
    // acknowledgement. Past the deadline the worker would self-fence under the hold itself, a
    // fault of another kind.
    let committed = wait_for_every(
        self_fence_after() - t.heartbeat,
        Duration::from_millis(10),
        "completions to commit with nothing still executing",
        || async {
            let committed = c.count_nodes(&runs, "a", "completed").await;
            let executing: i64 = c
                .sql
                .query_one(EXECUTING, &[])
                .await
                .expect("count executing statements")
                .get(0);
            (committed > 0 && executing == 0).then_some(committed)
        },
    )
    .await;
    let held = c.held_by(worker).await;
    assert_eq!(held.len(), runs.len(), "the worker holds every run");
    let held_chunks = c.proxy(worker).held_chunks();
    assert!(held_chunks > 0, "the proxy holds the completions' results");
    let cut = Instant::now();
    c.proxy(worker).cut();
    c.proxy(worker).set(Mode::Pass);
    let held_for = cut - held_at;
    let bound = lost_ack_bound(held_for);

    let ids: Vec<uuid::Uuid> = held.iter().map(|(r, _)| r.0).collect();
    let epochs: Vec<i64> = held.iter().map(|(_, e)| *e).collect();
    let recovery = wait_for_every(
        bound * 2,
        Duration::from_millis(10),
        "every run to start its next node under the same claim",
        || async {
            let started: i64 = c
                .sql
                .query_one(STARTED_UNDER_CLAIM, &[&ids, &epochs, &"b"])
                .await
                .expect("count nodes started under the claim")
                .get(0);
            (started == i64::try_from(runs.len()).expect("count")).then(|| cut.elapsed())
        },
    )
    .await;
    let lost = c.settle(&runs, "completed", FINISH_DEADLINE).await;

    let log = c.sup.log(c.worker_proc(worker));
    let retries = failed_calls_during_outages(&log);
    eprintln!(
        "lost-ack: held results for {:.2}s ({held_chunks} chunks), dropped {} by the cut; \
         {committed} completions had committed; the worker retried {retries} writes; every run \
         moved on under its claim after {:.2}s",
        secs(held_for),
        c.proxy(worker).dropped_chunks(),
        secs(recovery)
    );
    // Every completion that committed was waiting for its reply when the connections went: each
    // failed and was retried, and the outage's end counts the failures (heartbeats and claims
    // that failed meanwhile too, so this is at least the writes retried).
    assert!(
        retries >= committed,
        "the worker retried {retries} writes, fewer than the {committed} lost acknowledgements"
    );
    assert!(
        !log.contains("self-fence"),
        "the worker stopped runs it could not renew in time:\n{}",
        c.sup.log_tail(c.worker_proc(worker))
    );
    let claimed_again: i64 = c
        .sql
        .query_one(CLAIMED_AGAIN, &[&ids, &epochs])
        .await
        .expect("count runs claimed again")
        .get(0);
    assert_eq!(claimed_again, 0, "a run was claimed again after the cut");
    let reaped = c.event_count("run_stale_reaped", &runs).await
        + c.event_count("run_execution_claim_expired_requeued", &runs)
            .await;
    assert_eq!(reaped, 0, "runs were reaped or requeued after the cut");
    // The retried completions landed quietly: one completion per node, one execution per node.
    assert_eq!(
        c.event_count("node_completed", &runs).await,
        i64::try_from(2 * runs.len()).expect("count"),
        "each node's completion was recorded once"
    );
    let executions = ledger::all(&c.sql).await;
    for run in &runs {
        for node in ["a", "b"] {
            let n = executions
                .iter()
                .filter(|x| x.run_id == *run && x.node_id == node)
                .count();
            assert_eq!(n, 1, "run {run}: node {node} ran {n} times");
        }
    }
    Line {
        scenario: "lost-ack",
        runs: runs.len(),
        lost,
        double_completed: 0,
        recovery,
        bound,
        took: Duration::ZERO,
    }
}

// ---------------------------------------------------------------------------------------------
// 7. leader failover
// ---------------------------------------------------------------------------------------------

const FAILOVER_BATCH: usize = 90;

const FAILOVER_SPEC: &str = "\
id: failover
nodes:
  - {id: a, kind: ledger, input: {sleep_ms: 300}}
  - {id: b, kind: ledger, input: {sleep_ms: 300}, depends_on: [a]}
";

/// The coordinator holding the sweeps' leadership is SIGKILLed, together with a worker in the
/// middle of its runs: the other coordinator takes the leadership and its reaper and auto-resume
/// sweeps recover the runs. Then, with a replacement coordinator and worker started, the new
/// leader is SIGSTOPped together with another worker: the replacement takes over and recovers
/// those runs; the stopped leader, continued, steps down without changing anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failover_keeps_sweeping() {
    let _alone = scenario::one_at_a_time().await;
    bounded("leader-failover", SCENARIO_LIMIT, async {
        let mut c = Cluster::start(
            "leader-failover",
            leasehold_fault_tests::bins!(),
            2,
            &workers(3),
        )
        .await;
        let line = leader_failover(&mut c).await;
        c.conclude(line).await;
    })
    .await;
}

/// From the fault to the victim's runs claimed again, with the leader dead too: the lease and
/// the leadership both have to run out, then the sweeps run on the new leader.
fn failover_bound() -> Duration {
    let t = TIMINGS;
    t.lease.max(t.leader_lease + t.leader_lease / 3) + t.sweep + t.sweep + t.poll + t.margin
}

async fn leader_failover(c: &mut Cluster) -> Line {
    let t = c.timings;
    let automation = c.automation(FAILOVER_SPEC).await;
    let workers = c.workers();
    let mut all_runs = Vec::new();
    let mut recovery = Duration::ZERO;

    for (phase, signal) in [("kill", Signal::SIGKILL), ("stop", Signal::SIGSTOP)] {
        if phase == "stop" {
            c.add_coordinator().await;
            c.add_worker(WorkerOpts::default()).await;
        }
        let victim = if phase == "kill" {
            workers[0]
        } else {
            workers[1]
        };
        let runs = c.start_runs(&automation, FAILOVER_BATCH).await;
        all_runs.extend_from_slice(&runs);
        let (leader, holder, epoch) = c.wait_leader(t.takeover_bound()).await;
        wait_for_every(
            FINISH_DEADLINE,
            POLL,
            "the victim worker to have nodes running",
            || async { (c.busy_runs(victim).await >= 4).then_some(()) },
        )
        .await;
        let leader_proc = c.coordinator_proc(leader);
        let stops_before = c.sup.log(leader_proc).matches("sweeps stopped").count();

        let fault = Instant::now();
        if signal == Signal::SIGKILL {
            c.kill_coordinator(leader).await;
        } else {
            c.signal_coordinator(leader, Signal::SIGSTOP);
        }
        c.kill_worker(victim).await;
        let held = c.held_by(victim).await;
        assert!(!held.is_empty(), "the victim held runs when it died");

        let (successor, successor_holder, successor_epoch) = wait_for_every(
            t.takeover_bound(),
            POLL,
            "another coordinator to take the leadership",
            || async {
                let (h, e) = c.leader().await?;
                (h != holder).then(|| (c.coordinator_of(&h), h, e))
            },
        )
        .await;
        let takeover = fault.elapsed();
        assert!(
            successor.is_some_and(|s| s != leader),
            "the new leader {successor_holder} is another of the cluster's coordinators"
        );
        assert_eq!(
            successor_epoch,
            epoch + 1,
            "a takeover raises the epoch by one"
        );
        let recovered = wait_for_every(
            failover_bound() * 2,
            POLL,
            "the victim's runs to be claimed again under the new leader",
            || async { (c.not_reclaimed(&held).await == 0).then(|| fault.elapsed()) },
        )
        .await;
        recovery = recovery.max(recovered);
        let lost = c.settle(&runs, "completed", FINISH_DEADLINE).await;
        assert_eq!(lost, 0, "phase {phase}: every run completed");
        eprintln!(
            "leader-failover ({phase}): takeover after {:.1}s, runs claimed again after {:.1}s",
            secs(takeover),
            secs(recovered)
        );

        if signal == Signal::SIGSTOP {
            // The former leader wakes up to a leadership that has moved on: it stops sweeping
            // and changes nothing, the leadership included.
            c.signal_coordinator(leader, Signal::SIGCONT);
            wait_for_every(
                t.leader_lease + t.margin,
                POLL,
                "the continued former leader to stop its sweeps",
                || async {
                    (c.sup.log(leader_proc).matches("sweeps stopped").count() > stops_before)
                        .then_some(())
                },
            )
            .await;
            assert_eq!(
                c.leader().await,
                Some((successor_holder, successor_epoch)),
                "the continued former leader left the leadership alone"
            );
        }
    }
    for event in [
        "run_stale_reaped",
        "run_execution_claim_expired_requeued",
        "run_auto_resumed",
    ] {
        eprintln!(
            "leader-failover: {event} × {}",
            c.event_count(event, &all_runs).await
        );
    }
    Line {
        scenario: "leader-failover",
        runs: all_runs.len(),
        lost: 0,
        double_completed: 0,
        recovery,
        bound: failover_bound(),
        took: Duration::ZERO,
    }
}

// ---------------------------------------------------------------------------------------------
// 8. rolling restart
// ---------------------------------------------------------------------------------------------

const ROLLING_RUNS: usize = 300;

const ROLLING_SPEC: &str = "\
id: rolling
nodes:
  - {id: a, kind: ledger, input: {sleep_ms: 300}}
  - {id: b, kind: ledger, input: {sleep_ms: 300}, depends_on: [a]}
";

// name: release_to_claim
// For each hand-back, how long until the run was claimed again; the longest such wait, and how
// many hand-backs there were and how many were never claimed again.
const RELEASE_TO_CLAIM: &str = "\
SELECT count(*) AS released,
       count(c.occurred_at) AS reclaimed,
       coalesce(max(extract(epoch FROM c.occurred_at - r.occurred_at)), 0)::float8 AS longest_s
FROM run_events r
LEFT JOIN LATERAL (
    SELECT occurred_at FROM run_events c
    WHERE c.run_id = r.run_id AND c.seq > r.seq AND c.event = 'run_claimed'
    ORDER BY c.seq LIMIT 1
) c ON true
WHERE r.event = 'run_released_shutdown'";

/// Half the lease: a run that waited for its lease to expire would take at least the lease.
fn release_bound() -> Duration {
    TIMINGS.lease / 2
}

/// Under load, every worker in turn gets SIGTERM after its replacement has started: each exits
/// 0 within its grace period, hands its runs back, and they are claimed again at once, not after
/// their leases expire. No run fails; nothing is reaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_fails_no_run() {
    let _alone = scenario::one_at_a_time().await;
    bounded("rolling-restart", SCENARIO_LIMIT, async {
        let mut c = Cluster::start(
            "rolling-restart",
            leasehold_fault_tests::bins!(),
            2,
            &workers(3),
        )
        .await;
        let line = rolling_restart(&mut c).await;
        c.conclude(line).await;
    })
    .await;
}

async fn rolling_restart(c: &mut Cluster) -> Line {
    let t = c.timings;
    let automation = c.automation(ROLLING_SPEC).await;
    let runs = c.start_runs(&automation, ROLLING_RUNS).await;
    for old in c.workers() {
        wait_for_every(
            FINISH_DEADLINE,
            POLL,
            "the worker to be replaced to have nodes running",
            || async { (c.busy_runs(old).await >= 1).then_some(()) },
        )
        .await;
        c.add_worker(WorkerOpts::default()).await;
        let (status, killed) = c.stop_worker(old, t.worker_stop_bound()).await;
        assert!(
            status.success() && !killed,
            "{} exited {status} (SIGKILL needed: {killed})\n{}",
            c.sup.name(c.worker_proc(old)),
            c.sup.log_tail(c.worker_proc(old))
        );
    }
    let lost = c.settle(&runs, "completed", FINISH_DEADLINE).await;
    let row = c
        .sql
        .query_one(RELEASE_TO_CLAIM, &[])
        .await
        .expect("hand-back latencies");
    let (released, reclaimed): (i64, i64) = (row.get("released"), row.get("reclaimed"));
    let longest = Duration::from_secs_f64(row.get::<_, f64>("longest_s"));
    eprintln!(
        "rolling-restart: {released} runs handed back, all claimed again within {:.2}s",
        secs(longest)
    );
    assert!(released > 0, "the restarts handed runs back");
    assert_eq!(
        released, reclaimed,
        "every run handed back was claimed again"
    );
    for event in [
        "run_execution_claim_expired_requeued",
        "run_stale_reaped",
        "run_failed",
    ] {
        assert_eq!(
            c.event_count(event, &runs).await,
            0,
            "a rolling restart records no {event}"
        );
    }
    // Every node is shorter than the grace period, so none was cut short: one attempt each.
    let executions = ledger::all(&c.sql).await;
    let again: Vec<String> = executions
        .iter()
        .filter(|x| x.attempt > 1)
        .map(|x| format!("run {} node {} attempt {}", x.run_id, x.node_id, x.attempt))
        .collect();
    assert!(
        again.is_empty(),
        "nodes shorter than the grace period ran again after a hand-back: {again:?}"
    );
    Line {
        scenario: "rolling-restart",
        runs: runs.len(),
        lost,
        double_completed: 0,
        recovery: longest,
        bound: release_bound(),
        took: Duration::ZERO,
    }
}

// ---------------------------------------------------------------------------------------------
// 10. cancel a running exec node
// ---------------------------------------------------------------------------------------------

fn cancel_spec(dir: &Path) -> String {
    format!(
        "\
id: cancel
nodes:
  - id: child
    kind: exec
    input: {{argv: [{SHELL}, -c, {script}, sh, {dir}]}}
    max_attempts: 3
    backoff: {{base_ms: 100, factor: 1.0, cap_ms: 100, jitter: 0.0}}
",
        script = serde_json::to_string(EXEC_SCRIPT).expect("script"),
        dir = serde_json::to_string(&dir.display().to_string()).expect("dir"),
    )
}

const SENTINEL_SPEC: &str = "\
id: sentinel
nodes:
  - {id: hold, kind: ledger, input: {sleep_ms: 600000}}
";

/// The worker learns of a cancel at its next heartbeat, then kills the node's process group.
fn cancel_bound() -> Duration {
    TIMINGS.heartbeat + TIMINGS.margin
}

/// Two runs with an `exec` node running are cancelled through the coordinator's API. The
/// first's program is left to the worker, which kills its whole process group; the second's
/// program dies at the moment of the cancel, so the worker tries to record a retryable failure
/// and queue a retry, which the fence refuses. A third run's worker is then SIGKILLed, and once
/// the reaper has reaped that one, the cancelled runs are checked: still cancelled, nothing
/// recorded after the cancel, no second attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_exec_node_stays_dead() {
    let _alone = scenario::one_at_a_time().await;
    bounded("cancel-exec", SCENARIO_LIMIT, async {
        let mut c = Cluster::start(
            "cancel-exec",
            leasehold_fault_tests::bins!(),
            2,
            &workers(3),
        )
        .await;
        let line = cancel_exec(&mut c).await;
        c.conclude(line).await;
    })
    .await;
}

async fn cancel_exec(c: &mut Cluster) -> Line {
    let t = c.timings;
    let dir = c.sup.dir().to_path_buf();
    let cancel = c.automation(&cancel_spec(&dir)).await;
    let sentinel = c.automation(SENTINEL_SPEC).await;
    let cancelled = c.start_runs(&cancel, 2).await;
    let [left_to_worker, dies_too] = cancelled[..] else {
        unreachable!("two runs")
    };
    let sentinel_run = c.start_runs(&sentinel, 1).await[0];

    let (group, group_dies) = wait_for_every(
        FINISH_DEADLINE,
        POLL,
        "both exec programs to start",
        || async {
            Some((
                exec_group(&dir, left_to_worker, 1)?,
                exec_group(&dir, dies_too, 1)?,
            ))
        },
    )
    .await;
    c.sup.adopt_group(group);
    c.sup.adopt_group(group_dies);
    c.wait_all(&[sentinel_run], "running", FINISH_DEADLINE)
        .await;
    wait_for_every(
        FINISH_DEADLINE,
        POLL,
        "the sentinel's node to run",
        || async { (c.count_nodes(&[sentinel_run], "hold", "running").await == 1).then_some(()) },
    )
    .await;

    let coordinator = c.coordinators()[0];
    let mut api = c.runs_client(coordinator).await;
    let fault = Instant::now();
    for run in [left_to_worker, dies_too] {
        let reply = api
            .cancel_run(CancelRunRequest {
                run_id: run.to_string(),
                reason: "fault suite: cancel a running exec node".into(),
                ..CancelRunRequest::default()
            })
            .await
            .expect("cancel")
            .into_inner();
        assert_eq!(reply.status(), leasehold_proto::v1::RunStatus::Cancelled);
    }
    killpg(group_dies, Signal::SIGKILL).expect("kill the second program");

    let recovery = wait_for_every(
        cancel_bound() * 2,
        Duration::from_millis(20),
        "the worker to kill the cancelled node's process group",
        || async { (!group_alive(group)).then(|| fault.elapsed()) },
    )
    .await;
    wait_for_every(
        t.margin,
        Duration::from_millis(20),
        "the second program's group to be gone",
        || async { (!group_alive(group_dies)).then_some(()) },
    )
    .await;
    for run in [left_to_worker, dies_too] {
        wait_for_every(
            t.heartbeat + t.margin,
            POLL,
            "the cancelled run to leave its worker",
            || async {
                let run = run.to_string();
                c.workers()
                    .into_iter()
                    .any(|w| {
                        c.sup.log(c.worker_proc(w)).lines().any(|l| {
                            l.contains("run left the worker")
                                && l.contains(&run)
                                && l.contains("LeaseLost")
                        })
                    })
                    .then_some(())
            },
        )
        .await;
    }

    // Give the reaper its chance: a worker holding a run dies after the cancels, and the reaper
    // reaps that run; any lease the cancelled runs could have had expired before that one did.
    let holder = c.holder(sentinel_run).await.expect("the sentinel is held");
    c.kill_worker(holder).await;
    wait_for_every(
        t.recovery_bound() * 2,
        POLL,
        "the reaper to reap the sentinel run",
        || async { (c.event_count("run_stale_reaped", &[sentinel_run]).await == 1).then_some(()) },
    )
    .await;
    wait_for_every(
        t.recovery_bound() * 2,
        POLL,
        "the sentinel run to be auto-resumed and claimed again",
        || async { (c.event_count("run_claimed", &[sentinel_run]).await == 2).then_some(()) },
    )
    .await;

    let mut lost = 2 - c.count_status(&cancelled, "cancelled").await;
    for run in [left_to_worker, dies_too] {
        assert!(
            exec_group(&dir, run, 2).is_none(),
            "run {run} was attempted again after its cancel"
        );
        assert_eq!(
            c.event_count("run_claimed", &[run]).await,
            1,
            "run {run} was claimed again after its cancel"
        );
    }
    // The sentinel has served; cancel it too, and its worker stops its node.
    api.cancel_run(CancelRunRequest {
        run_id: sentinel_run.to_string(),
        reason: "fault suite: done".into(),
        ..CancelRunRequest::default()
    })
    .await
    .expect("cancel the sentinel");
    lost += c
        .settle(&[sentinel_run], "cancelled", FINISH_DEADLINE)
        .await;
    Line {
        scenario: "cancel-exec",
        runs: 3,
        lost,
        double_completed: 0,
        recovery,
        bound: cancel_bound(),
        took: Duration::ZERO,
    }
}

/// The calls that failed during the database outages a worker's log reports, summed over the
/// `failures=N` of each "database available again" line.
fn failed_calls_during_outages(log: &str) -> usize {
    log.lines()
        .filter(|line| line.contains("database available again"))
        .filter_map(|line| {
            let (_, rest) = line.split_once("failures=")?;
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<usize>()
                .ok()
        })
        .sum()
}
