//! Restart scenarios: a PostgreSQL crash-restart, and backends terminated over and over, each
//! under load, with the real processes of `tests/faults.rs`.
//!
//! Each scenario runs alone, within a hard time bound, prints its line and the summary table,
//! and ends with the invariant checker. `cargo test -p leasehold-fault-tests --test restarts`.

use std::time::{Duration, Instant};

use leasehold_core::ids::RunId;
use leasehold_fault_tests::api;
use leasehold_fault_tests::cluster::{Cluster, WorkerOpts};
use leasehold_fault_tests::ledger;
use leasehold_fault_tests::pg_server::Server;
use leasehold_fault_tests::scenario::{self, FINISH_DEADLINE, Line, POLL, SCENARIO_LIMIT, bounded};
use leasehold_testkit::wait_for_every;
use tonic_health::pb::health_check_response::ServingStatus;

fn uuids(runs: &[RunId]) -> Vec<uuid::Uuid> {
    runs.iter().map(|r| r.0).collect()
}

// ---------------------------------------------------------------------------------------------
// 5. PostgreSQL crash-restart
// ---------------------------------------------------------------------------------------------

const CRASH_RUNS: usize = 40;

/// Long enough nodes that every run is mid-chain across the outage. The built-in `sleep` kind,
/// not `ledger`: the scenario watches the product's own reconnection, without the ledger's
/// extra connection in the way.
fn crash_spec() -> String {
    scenario::chain("crash", 4, "sleep", "{ms: 1500}")
}

/// Two coordinators and three workers hold 40 runs; the server is crashed (`pg_ctl stop -m
/// immediate`), stays down until a coordinator's overall health says NOT_SERVING, and is
/// started again by `pg_ctl restart -m immediate`. Every process reconnects, the coordinator
/// serves again, every run completes, and since the outage is shorter than a lease less a
/// heartbeat, no lease runs out: nothing is reaped or requeued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crash_restart_reaps_nothing() {
    let _alone = scenario::one_at_a_time().await;
    bounded("pg-restart", SCENARIO_LIMIT, async {
        let opts = vec![WorkerOpts::default(); 3];
        let mut c = Cluster::start("pg-restart", leasehold_fault_tests::bins!(), 2, &opts).await;
        let Some(server) = Server::own(&c.owner_sql).await else {
            eprintln!(
                "scenario pg-restart: skipped: {} names a server this test must not crash",
                leasehold_testkit::DATABASE_URL_ENV
            );
            return;
        };
        let line = pg_restart(&mut c, &server).await;
        c.conclude(line).await;
    })
    .await;
}

async fn pg_restart(c: &mut Cluster, server: &Server) -> Line {
    let t = c.timings;
    // The throwaway server runs with `synchronous_commit=off`, which acknowledges commits before
    // their WAL is written: a crash forgets the last of them, which no durable store survives.
    // This database commits durably; every session that started before is ended, so that the
    // processes' pools reconnect with the setting.
    c.owner_sql
        .batch_execute(&format!(
            "ALTER DATABASE \"{}\" SET synchronous_commit = on",
            server.database()
        ))
        .await
        .expect("commit durably");
    c.sql
        .query_one(TERMINATE, &[])
        .await
        .expect("end the sessions that commit asynchronously");
    // The harness's own pool held some of the sessions just ended, and hands one out until it
    // has seen it close: wait until the pool answers again before using it.
    leasehold_testkit::wait_for(
        FINISH_DEADLINE,
        "the harness's pool to reconnect",
        || async { c.store.ping().await.ok() },
    )
    .await;
    let automation = c.automation(&crash_spec()).await;
    let runs = c.start_runs(&automation, CRASH_RUNS).await;
    c.wait_all(&runs, "running", FINISH_DEADLINE).await;
    let coordinator = c.coordinators()[0];
    let endpoint = api::endpoint(c, coordinator);
    assert_eq!(
        overall_health(&endpoint).await,
        Some(ServingStatus::Serving),
        "the coordinator serves before the crash"
    );

    let down = Instant::now();
    server.crash();
    wait_for_every(
        Duration::from_secs(5),
        Duration::from_millis(100),
        "the coordinator to report NOT_SERVING while the database is down",
        || async {
            (overall_health(&endpoint).await == Some(ServingStatus::NotServing)).then_some(())
        },
    )
    .await;
    server.restart();
    let outage = down.elapsed();
    // The suite's own connection died with the server.
    c.sql = server.connect().await;

    let recovery = wait_for_every(
        Duration::from_secs(10),
        Duration::from_millis(100),
        "the coordinator to report SERVING again",
        || async {
            (overall_health(&endpoint).await == Some(ServingStatus::Serving))
                .then(|| down.elapsed())
        },
    )
    .await;
    let lost = c.settle(&runs, "completed", FINISH_DEADLINE).await;
    let reaped = c.event_count("run_stale_reaped", &runs).await;
    let requeued = c
        .event_count("run_execution_claim_expired_requeued", &runs)
        .await;
    eprintln!(
        "pg-restart: down for {:.1}s (lease {:.1}s); serving again after {:.1}s; {reaped} \
         reaped, {requeued} requeued",
        outage.as_secs_f64(),
        t.lease.as_secs_f64(),
        recovery.as_secs_f64()
    );
    // Every lease was renewed at most a heartbeat before the crash, and the workers renew it
    // again once they reconnect: while the outage and a heartbeat fit in the lease with a margin
    // to spare, no lease can run out, so nothing may be reaped or requeued.
    assert!(
        outage + t.heartbeat + t.margin <= t.lease,
        "the outage ({outage:?}) was too long for the no-reaping bound to hold"
    );
    assert_eq!(
        reaped + requeued,
        0,
        "runs reaped ({reaped}) or requeued ({requeued}) after an outage shorter than a lease"
    );
    Line {
        scenario: "pg-restart",
        runs: runs.len(),
        lost,
        double_completed: 0,
        recovery,
        // The outage itself, one health probe (1 s) to notice the server back, and the margin.
        bound: outage + Duration::from_secs(1) + t.margin,
        took: Duration::ZERO,
    }
}

// ---------------------------------------------------------------------------------------------
// 6. backends terminated
// ---------------------------------------------------------------------------------------------

const KILLED_RUNS: usize = 40;
/// How long, and how often, every backend of the scenario's database is terminated.
const KILLING: Duration = Duration::from_secs(20);
const KILL_EVERY: Duration = Duration::from_millis(500);

/// Chains long enough to keep every run busy through the killing.
fn killed_spec() -> String {
    scenario::chain("killed", 9, "ledger", "{sleep_ms: 2500}")
}

/// Started once the killing stops, into the free capacity: claimed within a poll even if the
/// workers' listeners have not come back yet.
const LATE_SPEC: &str = "\
id: late
nodes:
  - {id: a, kind: ledger, input: {sleep_ms: 100}}
";
const LATE_RUNS: usize = 8;

// name: terminate_backends
// Every other backend of this database as the runtime role: the processes' pools and listeners,
// the suite's store. The owner's session, a superuser's, is not the runtime role's to end.
const TERMINATE: &str = "\
SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND usename = current_user";

// name: terminate_product_backends
// As terminate_backends, but sparing the test worker's ledger connections (the suite's own
// instrumentation, which takes a terminated session's FATAL error for a refused row and fails
// the attempt for good). Every ledger connection has inserted a row before the killing starts,
// so each shows its insert as its query.
const TERMINATE_PRODUCT: &str = "\
SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND usename = current_user
  AND query NOT LIKE '%fault_ledger%'";

// name: unclaimed
// How many of these runs no worker has claimed yet.
const UNCLAIMED: &str = "\
SELECT count(*) FROM runs WHERE run_id = ANY($1::uuid[]) AND lease_epoch = 0";

// name: longest_due_wait
// The longest a run has been queued and due, counted from `$2` at the earliest, in ms.
const LONGEST_DUE_WAIT: &str = "\
SELECT (coalesce(max(extract(epoch FROM clock_timestamp()
                    - greatest(queued_at, coalesce(retry_after, queued_at), $2::timestamptz))), 0)
       * 1000)::float8
FROM runs WHERE run_id = ANY($1::uuid[]) AND status = 'queued'";

/// Three workers (room for every run at once) hold 40 runs of long chains while every backend
/// of the database is terminated every 500 ms for 20 s (all but the test worker's ledger
/// connections; see `TERMINATE_PRODUCT`). The pools recover and every run completes; once the
/// killing stops, runs started into the free capacity are claimed, and no due run waits in
/// `queued`, longer than a poll interval and the margin: a notification lost with its listener
/// delays work by a poll at most.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_backends_delay_work_by_a_poll() {
    let _alone = scenario::one_at_a_time().await;
    bounded("backends-killed", SCENARIO_LIMIT, async {
        let opts = vec![WorkerOpts::default(); 3];
        let mut c =
            Cluster::start("backends-killed", leasehold_fault_tests::bins!(), 2, &opts).await;
        let line = backends_killed(&mut c).await;
        c.conclude(line).await;
    })
    .await;
}

async fn backends_killed(c: &mut Cluster) -> Line {
    let t = c.timings;
    let automation = c.automation(&killed_spec()).await;
    let late_automation = c.automation(LATE_SPEC).await;
    let mut runs = c.start_runs(&automation, KILLED_RUNS).await;
    c.wait_all(&runs, "running", FINISH_DEADLINE).await;
    // Every worker's ledger connection has inserted a row: the first node of every run started.
    wait_for_every(
        FINISH_DEADLINE,
        POLL,
        "every run's first node to be in the ledger",
        || async { (ledger::all(&c.sql).await.len() >= runs.len()).then_some(()) },
    )
    .await;

    let start = Instant::now();
    let mut terminated = 0i64;
    let mut rounds = 0u32;
    while start.elapsed() < KILLING {
        let round = Instant::now();
        terminated += c
            .sql
            .query_one(TERMINATE_PRODUCT, &[])
            .await
            .expect("terminate backends")
            .get::<_, i64>(0);
        rounds += 1;
        tokio::time::sleep(KILL_EVERY.saturating_sub(round.elapsed())).await;
    }
    let stopped_at: std::time::SystemTime = c
        .sql
        .query_one("SELECT now()", &[])
        .await
        .expect("read the clock")
        .get(0);
    let ended = Instant::now();

    // Runs started now, into free capacity, are claimed within a poll interval, whether or not
    // a listener hears of them.
    let late = c.start_runs(&late_automation, LATE_RUNS).await;
    let late_ids = uuids(&late);
    let late_claimed = wait_for_every(
        t.poll + t.margin,
        Duration::from_millis(10),
        "the runs started after the killing to be claimed",
        || async {
            let left: i64 = c
                .sql
                .query_one(UNCLAIMED, &[&late_ids])
                .await
                .expect("count unclaimed runs")
                .get(0);
            (left == 0).then(|| ended.elapsed())
        },
    )
    .await;
    runs.extend(late);

    // From now on no due run may wait in `queued` longer than a poll and the margin.
    let ids = uuids(&runs);
    let mut longest = Duration::ZERO;
    let lost = loop {
        let ms: f64 = c
            .sql
            .query_one(LONGEST_DUE_WAIT, &[&ids, &stopped_at])
            .await
            .expect("read queue waits")
            .get::<_, f64>(0);
        longest = longest.max(Duration::from_secs_f64(ms.max(0.0) / 1000.0));
        let left = runs.len() - c.count_status(&runs, "completed").await;
        if left == 0 || ended.elapsed() >= FINISH_DEADLINE {
            break left;
        }
        tokio::time::sleep(POLL).await;
    };
    let reaped = c.event_count("run_stale_reaped", &runs).await
        + c.event_count("run_execution_claim_expired_requeued", &runs)
            .await;
    eprintln!(
        "backends-killed: {terminated} backends terminated in {rounds} rounds; runs started \
         after were claimed {:.2}s after; longest due wait in queued after: {:.2}s; all done \
         {:.1}s after; {reaped} reaped or requeued",
        late_claimed.as_secs_f64(),
        longest.as_secs_f64(),
        ended.elapsed().as_secs_f64()
    );
    assert!(terminated > 0, "the loop terminated backends");
    Line {
        scenario: "backends-killed",
        runs: runs.len(),
        lost,
        double_completed: 0,
        recovery: longest.max(late_claimed),
        bound: t.poll + t.margin,
        took: Duration::ZERO,
    }
}

/// The coordinator's status for the server as a whole, or `None` if it did not answer within a
/// second.
async fn overall_health(endpoint: &str) -> Option<ServingStatus> {
    api::health_at(endpoint, "", Duration::from_secs(1)).await
}
