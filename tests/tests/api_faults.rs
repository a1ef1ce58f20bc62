//! Fault scenarios at the edges: durable retry backoff across a full restart of every process,
//! racing gate decisions through both coordinators' API, and bad input and bad stored data.
//!
//! Same harness and rules as `tests/faults.rs`: real processes, one scenario at a time, each
//! within a hard time bound, each printing its line and ending with the invariant checker.
//!
//! `cargo test -p leasehold-fault-tests --test api_faults`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use leasehold_core::ids::RunId;
use leasehold_fault_tests::api::{self, Clients};
use leasehold_fault_tests::cluster::{Cluster, WorkerOpts};
use leasehold_fault_tests::ledger;
use leasehold_fault_tests::scenario::{
    self, FINISH_DEADLINE, Line, POLL, SCENARIO_LIMIT, STOP_DEADLINE, bounded, secs, workers,
};
use leasehold_proto::v1;
use leasehold_testkit::wait_for_every;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

fn count(n: usize) -> i64 {
    i64::try_from(n).expect("count")
}

// ---------------------------------------------------------------------------------------------
// 9. durable backoff across a full restart
// ---------------------------------------------------------------------------------------------

const BACKOFF_RUNS: usize = 12;
/// Long enough that every process is stopped and started again within one backoff, so that the
/// restarted cluster finds retries not yet due.
const BACKOFF: Duration = Duration::from_secs(4);
/// Attempts of both nodes below.
const BACKOFF_MAX_ATTEMPTS: u32 = 3;

/// Fails its first attempt, then succeeds.
fn recovers_spec() -> String {
    format!(
        "\
id: backoff-recovers
nodes:
  - id: flaky
    kind: ledger
    input: {{fail_first: 1}}
    max_attempts: {BACKOFF_MAX_ATTEMPTS}
    backoff: {{base_ms: {ms}, factor: 1.0, cap_ms: {ms}, jitter: 0.0}}
",
        ms = BACKOFF.as_millis()
    )
}

/// Fails every attempt, retryably.
fn keeps_failing_spec() -> String {
    format!(
        "\
id: backoff-fails
nodes:
  - id: broken
    kind: ledger
    input: {{fail_first: 1000}}
    max_attempts: {BACKOFF_MAX_ATTEMPTS}
    backoff: {{base_ms: {ms}, factor: 1.0, cap_ms: {ms}, jitter: 0.0}}
",
        ms = BACKOFF.as_millis()
    )
}

// name: retries_vs_schedule
// Each retried attempt's start, with the retry_after the backoff before it stored, and how late
// it started after the later of that time and `$1` (when the cluster was back).
const RETRIES_VS_SCHEDULE: &str = "\
SELECT s.run_id, s.node_id, s.attempt, s.occurred_at, b.retry_after, b.attempt AS scheduled,
       extract(epoch FROM s.occurred_at - greatest(b.retry_after, $1::timestamptz))::float8
           AS late_s
FROM run_events s
JOIN LATERAL (
    SELECT (e.metadata->>'retry_after')::timestamptz AS retry_after, e.attempt
    FROM run_events e
    WHERE e.run_id = s.run_id AND e.seq < s.seq AND e.event = 'node_retry_backoff_scheduled'
    ORDER BY e.seq DESC LIMIT 1
) b ON true
WHERE s.event = 'node_started' AND s.attempt > 1
ORDER BY s.run_id, s.seq";

// name: waiting_in_backoff
// Of these runs, those queued with a retry not yet due.
const WAITING_IN_BACKOFF: &str = "\
SELECT count(*) FROM runs
WHERE run_id = ANY($1::uuid[]) AND status = 'queued' AND retry_after > now()";

// name: node_attempts
// Each node row of these runs: its status and attempts.
const NODE_ATTEMPTS: &str = "\
SELECT run_id, node_id, status, attempts FROM run_nodes WHERE run_id = ANY($1::uuid[])";

/// From the cluster being back to every run ended: the failing runs still owe two backoffs at
/// most, and each due retry is claimed within a poll.
fn backoff_bound() -> Duration {
    let t = leasehold_fault_tests::cluster::TIMINGS;
    BACKOFF * (BACKOFF_MAX_ATTEMPTS - 1) + (t.poll + t.sweep) * BACKOFF_MAX_ATTEMPTS + t.margin
}

/// Runs wait in retry backoff when every process (both coordinators, both workers) is stopped
/// with SIGTERM and started again. The retries fire from the stored schedule: none before its
/// stored `retry_after`, each within a poll of it (or of the restart, if it fell due while
/// nothing ran); a node that keeps failing ends failed after exactly `max_attempts`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backoff_survives_a_full_restart() {
    let _alone = scenario::one_at_a_time().await;
    bounded("durable-backoff", SCENARIO_LIMIT, async {
        let mut c = Cluster::start(
            "durable-backoff",
            leasehold_fault_tests::bins!(),
            2,
            &workers(2),
        )
        .await;
        let line = durable_backoff(&mut c).await;
        c.conclude(line).await;
    })
    .await;
}

async fn durable_backoff(c: &mut Cluster) -> Line {
    let t = c.timings;
    let recovers = c.automation(&recovers_spec()).await;
    let fails = c.automation(&keeps_failing_spec()).await;
    let ok_runs = c.start_runs(&recovers, BACKOFF_RUNS / 2).await;
    let bad_runs = c.start_runs(&fails, BACKOFF_RUNS / 2).await;
    let runs: Vec<RunId> = ok_runs.iter().chain(&bad_runs).copied().collect();
    let ids: Vec<uuid::Uuid> = runs.iter().map(|r| r.0).collect();

    wait_for_every(
        FINISH_DEADLINE,
        POLL,
        "every run to wait in retry backoff",
        || async {
            let n: i64 = c
                .sql
                .query_one(WAITING_IN_BACKOFF, &[&ids])
                .await
                .expect("count runs in backoff")
                .get(0);
            (n == count(runs.len())).then_some(())
        },
    )
    .await;

    // Everything stops: nothing holds the schedule but the database.
    let down = Instant::now();
    let stopped = c.sup.stop_all(STOP_DEADLINE).await;
    for (name, status, killed) in &stopped {
        assert!(
            status.success() && !killed,
            "{name} did not stop cleanly on SIGTERM: {status} (SIGKILL needed: {killed})"
        );
    }
    assert_eq!(stopped.len(), 4, "two coordinators and two workers stopped");
    let before_restart: i64 = c
        .sql
        .query_one(WAITING_IN_BACKOFF, &[&ids])
        .await
        .expect("count runs in backoff")
        .get(0);
    assert_eq!(
        before_restart,
        count(runs.len()),
        "every retry was still to come when the cluster was down"
    );
    for _ in 0..2 {
        c.add_coordinator().await;
    }
    for _ in 0..2 {
        c.add_worker(WorkerOpts::default()).await;
    }
    let back = Instant::now();
    let back_at: db_time::Timestamp = db_time::now(&c.sql).await;
    eprintln!(
        "durable-backoff: every process stopped and started again in {:.1}s",
        secs(down.elapsed())
    );

    c.wait_all(&ok_runs, "completed", FINISH_DEADLINE).await;
    c.wait_all(&bad_runs, "failed", FINISH_DEADLINE).await;
    let recovery = back.elapsed();

    // Each retry started no earlier than its stored time, and not much later either.
    let rows = c
        .sql
        .query(RETRIES_VS_SCHEDULE, &[&back_at.0])
        .await
        .expect("retries against their schedule");
    let late_bound = t.poll + t.sweep + t.margin;
    let mut retries = 0;
    let mut latest = 0.0_f64;
    for row in &rows {
        let run: uuid::Uuid = row.get("run_id");
        if !ids.contains(&run) {
            continue;
        }
        retries += 1;
        let attempt: i32 = row.get("attempt");
        let scheduled: Option<i32> = row.get("scheduled");
        let started: db_time::Timestamp = db_time::Timestamp(row.get("occurred_at"));
        let due: db_time::Timestamp = db_time::Timestamp(row.get("retry_after"));
        let late: f64 = row.get("late_s");
        latest = latest.max(late);
        assert_eq!(
            scheduled,
            Some(attempt),
            "run {run}: attempt {attempt} started after a backoff scheduled for {scheduled:?}"
        );
        assert!(
            started.0 >= due.0,
            "run {run}: attempt {attempt} started at {:?}, before its stored retry_after {:?}",
            started.0,
            due.0
        );
        assert!(
            late <= secs(late_bound),
            "run {run}: attempt {attempt} started {late:.2}s after it was due (bound {:.1}s)",
            secs(late_bound)
        );
    }
    // The recovering runs retry once, the failing ones twice.
    let expected = ok_runs.len() + bad_runs.len() * (BACKOFF_MAX_ATTEMPTS as usize - 1);
    assert_eq!(retries, expected, "every scheduled retry ran, once");
    eprintln!(
        "durable-backoff: {retries} retries, none early, the latest {latest:.2}s after it was due"
    );

    // Attempts: the recovering node took two, the failing one exactly max_attempts.
    let nodes = c
        .sql
        .query(NODE_ATTEMPTS, &[&ids])
        .await
        .expect("node attempts");
    assert_eq!(nodes.len(), runs.len(), "one node row per run");
    for row in &nodes {
        let run = RunId(row.get("run_id"));
        let status: &str = row.get("status");
        let attempts: i32 = row.get("attempts");
        if bad_runs.contains(&run) {
            assert_eq!(
                (status, attempts),
                (
                    "failed",
                    i32::try_from(BACKOFF_MAX_ATTEMPTS).expect("attempts")
                ),
                "run {run}: the failing node ends failed at max_attempts"
            );
        } else {
            assert_eq!(
                (status, attempts),
                ("completed", 2),
                "run {run}: completed on its second attempt"
            );
        }
    }
    let executions = ledger::all(&c.sql).await;
    let mut per_run: HashMap<RunId, usize> = HashMap::new();
    for x in &executions {
        *per_run.entry(x.run_id).or_default() += 1;
    }
    for run in &bad_runs {
        assert_eq!(
            per_run.get(run).copied().unwrap_or(0),
            BACKOFF_MAX_ATTEMPTS as usize,
            "run {run}: the failing node ran exactly max_attempts times"
        );
    }
    let lost = runs.len()
        - c.count_status(&ok_runs, "completed").await
        - c.count_status(&bad_runs, "failed").await;
    Line {
        scenario: "durable-backoff",
        runs: runs.len(),
        lost,
        double_completed: 0,
        recovery,
        bound: backoff_bound(),
        took: Duration::ZERO,
    }
}

/// The database's clock, read as a `SystemTime` (the only timestamp type the suite's driver
/// features map), so that stored times compare with times the suite reads.
mod db_time {
    use std::time::SystemTime;

    use tokio_postgres::Client;

    /// A `timestamptz` from the database.
    #[derive(Debug, Clone, Copy)]
    pub struct Timestamp(pub SystemTime);

    /// The database's `now()`.
    pub async fn now(sql: &Client) -> Timestamp {
        Timestamp(
            sql.query_one("SELECT now()", &[])
                .await
                .expect("the database's clock")
                .get(0),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// 11. gate races
// ---------------------------------------------------------------------------------------------

const GATE_RUNS: usize = 12;

const GATE_SPEC: &str = "\
id: gated
nodes:
  - {id: prep, kind: ledger}
  - {id: ship, kind: ledger, depends_on: [prep], approval: {prompt: ship it?}}
";

/// What one contender asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ask {
    Approve,
    Rework,
    Cancel,
}

impl Ask {
    fn request(self, gate_id: &str, who: &str) -> v1::DecideGateRequest {
        let (decision, rework_nodes) = match self {
            Self::Approve => (v1::Decision::Approve, Vec::new()),
            // Rework of the gated node itself: ask again. Reworking `prep` would run a
            // completed node again, which the invariant checker does not yet tell apart from a
            // double execution.
            Self::Rework => (v1::Decision::Rework, vec!["ship".to_owned()]),
            Self::Cancel => (v1::Decision::Cancel, Vec::new()),
        };
        v1::DecideGateRequest {
            gate_id: gate_id.to_owned(),
            decision: decision as i32,
            rework_nodes,
            reason: format!("fault suite: {self:?} by {who}"),
            decided_by: who.to_owned(),
            request_id: format!("{gate_id}-{who}"),
        }
    }

    /// The gate's status after this decision.
    /// The gate's status as `gates.status` stores it.
    fn stored_gate_status(self) -> &'static str {
        match self {
            Self::Approve => "approved",
            Self::Rework => "rejected",
            Self::Cancel => "cancelled",
        }
    }

    fn gate_status(self) -> v1::GateStatus {
        match self {
            Self::Approve => v1::GateStatus::Approved,
            Self::Rework => v1::GateStatus::Rework,
            Self::Cancel => v1::GateStatus::Cancelled,
        }
    }
}

/// Contenders per gate, alternating between the two coordinators.
const CONTENDERS: [Ask; 6] = [
    Ask::Approve,
    Ask::Cancel,
    Ask::Rework,
    Ask::Cancel,
    Ask::Approve,
    Ask::Rework,
];

// name: gate_of
// A gate's status and who decided it.
const GATE_OF: &str = "SELECT status, decided_by FROM gates WHERE gate_id = $1::uuid";

/// From the race to every run ended or asking again: claimed within a poll, two short nodes.
fn gate_bound() -> Duration {
    let t = leasehold_fault_tests::cluster::TIMINGS;
    t.poll * 4 + t.margin
}

/// Runs wait at an approval gate; for each gate, six clients at once (three on each
/// coordinator) approve, rework and cancel it, each with its own request id. Exactly one
/// decision per gate wins, the others get FAILED_PRECONDITION, a repeat of the winner's request
/// gets the same answer, and the run follows the winner once: one `run_gate_approved` when
/// approve won, cancelled when cancel won, asked again when rework won (then approved).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_decisions_race_to_one() {
    let _alone = scenario::one_at_a_time().await;
    bounded("gate-races", SCENARIO_LIMIT, async {
        let mut c =
            Cluster::start("gate-races", leasehold_fault_tests::bins!(), 2, &workers(2)).await;
        let line = gate_races(&mut c).await;
        c.conclude(line).await;
    })
    .await;
}

async fn gate_races(c: &mut Cluster) -> Line {
    let automation = c.automation(GATE_SPEC).await;
    let runs = c.start_runs(&automation, GATE_RUNS).await;
    c.wait_all(&runs, "awaiting_approval", FINISH_DEADLINE)
        .await;
    let coordinators = c.coordinators();
    let clients = [
        api::clients(c, coordinators[0]).await,
        api::clients(c, coordinators[1]).await,
    ];
    let gates = pending_gates(&clients[0], &runs).await;
    assert_eq!(gates.len(), runs.len(), "one pending gate per run");

    // One gate at a time, its six contenders at once: three requests per coordinator stay
    // within its connection pool (4), so that every loser meets the decided gate rather than a
    // pool timeout.
    let race = Instant::now();
    let mut winners: HashMap<RunId, (String, Ask, String, usize, v1::Gate)> = HashMap::new();
    let mut losers = 0;
    // Each contender decides with a token of its own, whose name the coordinator records as
    // the decider; through both coordinators, so that the winner's repeat can go through the
    // other one.
    let mut contenders: Vec<[api::Clients; 2]> = Vec::new();
    for i in 0..CONTENDERS.len() {
        let who = format!("client-{i}");
        contenders.push([
            api::clients_as(c, coordinators[0], &who).await,
            api::clients_as(c, coordinators[1], &who).await,
        ]);
    }
    for (run, gate_id) in &gates {
        let barrier = Arc::new(tokio::sync::Barrier::new(CONTENDERS.len()));
        let mut tasks = tokio::task::JoinSet::new();
        for (i, ask) in CONTENDERS.iter().copied().enumerate() {
            let mut gates_api = contenders[i][i % 2].gates.clone();
            let barrier = Arc::clone(&barrier);
            let gate_id = gate_id.clone();
            tasks.spawn(async move {
                let who = format!("client-{i}");
                barrier.wait().await;
                let answer = gates_api.decide_gate(ask.request(&gate_id, &who)).await;
                (ask, who, i % 2, answer)
            });
        }
        while let Some(done) = tasks.join_next().await {
            let (ask, who, via, answer) = done.expect("contender task");
            match answer {
                Ok(gate) => {
                    let gate = gate.into_inner();
                    assert_eq!(gate.status(), ask.gate_status(), "the winner's answer");
                    let earlier = winners.insert(*run, (gate_id.clone(), ask, who, via, gate));
                    assert!(earlier.is_none(), "run {run}: two decisions won its gate");
                }
                Err(status) => {
                    assert_eq!(
                        status.code(),
                        Code::FailedPrecondition,
                        "run {run}: a losing {ask:?} got {status:?}"
                    );
                    losers += 1;
                }
            }
        }
    }
    assert_eq!(winners.len(), runs.len(), "every gate was decided once");
    assert_eq!(losers, runs.len() * (CONTENDERS.len() - 1));

    // The winner's repeat, through the other coordinator, gets the same answer; the stored gate
    // names the winner.
    for (run, (gate_id, ask, who, via, gate)) in &winners {
        let i: usize = who["client-".len()..].parse().expect("a contender's name");
        let mut other = contenders[i][1 - via].gates.clone();
        let again = other
            .decide_gate(ask.request(gate_id, who))
            .await
            .unwrap_or_else(|e| panic!("run {run}: the winner's repeat was refused: {e:?}"))
            .into_inner();
        assert_eq!(
            (&again.status, &again.decided_by),
            (&gate.status, &gate.decided_by)
        );
        let uuid = uuid::Uuid::parse_str(gate_id).expect("gate id");
        let row = c.sql.query_one(GATE_OF, &[&uuid]).await.expect("the gate");
        assert_eq!(
            (
                row.get::<_, &str>("status"),
                row.get::<_, Option<&str>>("decided_by")
            ),
            (ask.stored_gate_status(), Some(who.as_str())),
            "run {run}: the stored gate names the winner"
        );
    }

    let by = |wanted: Ask| -> Vec<RunId> {
        winners
            .iter()
            .filter(|(_, w)| w.1 == wanted)
            .map(|(r, _)| *r)
            .collect()
    };
    let (approved, cancelled, reworked) = (by(Ask::Approve), by(Ask::Cancel), by(Ask::Rework));
    eprintln!(
        "gate-races: approve won {}, cancel won {}, rework won {}",
        approved.len(),
        cancelled.len(),
        reworked.len()
    );
    c.wait_all(&approved, "completed", FINISH_DEADLINE).await;
    c.wait_all(&cancelled, "cancelled", FINISH_DEADLINE).await;
    c.wait_all(&reworked, "awaiting_approval", FINISH_DEADLINE)
        .await;
    let recovery = race.elapsed();

    for run in &approved {
        assert_eq!(c.event_count("run_gate_approved", &[*run]).await, 1);
    }
    for run in cancelled.iter().chain(&reworked) {
        assert_eq!(c.event_count("run_gate_approved", &[*run]).await, 0);
    }
    for run in &reworked {
        assert_eq!(c.event_count("run_rework_requested", &[*run]).await, 1);
    }

    // The reworked runs asked again: approve each once, and they finish.
    let again = pending_gates(&clients[1], &reworked).await;
    assert_eq!(again.len(), reworked.len(), "each reworked run asks again");
    for gate_id in again.values() {
        clients[1]
            .gates
            .clone()
            .decide_gate(Ask::Approve.request(gate_id, "closer"))
            .await
            .expect("approve the second gate");
    }
    c.wait_all(&reworked, "completed", FINISH_DEADLINE).await;
    for run in &reworked {
        assert_eq!(c.event_count("run_gate_approved", &[*run]).await, 1);
    }

    // The gated node ran once per run that went on past its gate, never for a cancelled one.
    let executions = ledger::all(&c.sql).await;
    let ships = |run: &RunId| {
        executions
            .iter()
            .filter(|x| x.run_id == *run && x.node_id == "ship")
            .count()
    };
    for run in approved.iter().chain(&reworked) {
        assert_eq!(ships(run), 1, "run {run}: ship ran once");
    }
    for run in &cancelled {
        assert_eq!(ships(run), 0, "run {run}: ship never ran");
    }
    let lost = runs.len()
        - c.count_status(&runs, "completed").await
        - c.count_status(&runs, "cancelled").await;
    Line {
        scenario: "gate-races",
        runs: runs.len(),
        lost,
        double_completed: 0,
        recovery,
        bound: gate_bound(),
        took: Duration::ZERO,
    }
}

/// The pending gates of `runs`, by run, as the API lists them.
async fn pending_gates(clients: &Clients, runs: &[RunId]) -> HashMap<RunId, String> {
    let listed = clients
        .gates
        .clone()
        .list_gates(v1::ListGatesRequest {
            include_decided: false,
            page_size: 1000,
            page_token: String::new(),
        })
        .await
        .expect("list gates")
        .into_inner();
    listed
        .gates
        .into_iter()
        .filter_map(|g| {
            let run = RunId(uuid::Uuid::parse_str(&g.run_id).ok()?);
            runs.contains(&run).then_some((run, g.gate_id))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 12. bad input and bad data
// ---------------------------------------------------------------------------------------------

const GOOD_SPEC: &str = "\
id: good
nodes:
  - {id: a, kind: ledger, input: {sleep_ms: 100}}
  - {id: b, kind: ledger, depends_on: [a]}
";

const CORRUPT_SPEC: &str = "\
id: corrupt
nodes:
  - {id: a, kind: ledger}
";

/// The gate holds the run still while its checkpoint is tampered with.
const TAMPERED_SPEC: &str = "\
id: tampered
nodes:
  - {id: prep, kind: ledger}
  - {id: ship, kind: ledger, depends_on: [prep], approval: {prompt: ship it?}}
  - {id: after, kind: ledger, depends_on: [ship]}
";

const GOOD_RUNS: usize = 20;

// name: row_counts
// Everything a refused request could have stored.
const ROW_COUNTS: &str = "\
SELECT (SELECT count(*) FROM automations), (SELECT count(*) FROM automation_versions),
       (SELECT count(*) FROM runs), (SELECT count(*) FROM run_events),
       (SELECT count(*) FROM gates)";

// name: corrupt_spec
// Replaces a stored spec with JSON no build can read as a spec.
const CORRUPT_STORED_SPEC: &str = "\
UPDATE automation_versions SET spec = '{\"nodes\": \"garbage\"}'::jsonb
WHERE automation_id = $1::text RETURNING spec::text AS garbage";

// name: spec_text
// A stored spec, to put it back afterwards.
const STORED_SPEC: &str =
    "SELECT spec::text FROM automation_versions WHERE automation_id = $1::text";

// name: restore_spec
// Puts a stored spec back.
const RESTORE_STORED_SPEC: &str =
    "UPDATE automation_versions SET spec = $2::text::jsonb WHERE automation_id = $1::text";

// name: skip_node
// Records a node as skipped (its dependency failed for good) while nothing failed: a checkpoint
// that contradicts the run's own history, within every CHECK of the schema.
const SKIP_NODE: &str = "\
INSERT INTO run_nodes (run_id, node_id, status, attempts, epoch)
SELECT run_id, $2::text, 'skipped', 0, lease_epoch FROM runs WHERE run_id = $1::uuid";

// name: stop_of
// A run's stop kind and reason.
const STOP_OF: &str = "SELECT stop_kind, stop_reason FROM runs WHERE run_id = $1::uuid";

async fn row_counts(c: &Cluster) -> Vec<i64> {
    let row = c.sql.query_one(ROW_COUNTS, &[]).await.expect("row counts");
    (0..5).map(|i| row.get(i)).collect()
}

fn spec_text(text: String) -> Option<v1::SpecSource> {
    Some(v1::SpecSource {
        source: Some(v1::spec_source::Source::Text(text)),
    })
}

/// Asserts `result` is refused with `code` and a message containing each of `names`.
fn refused<T: std::fmt::Debug>(
    what: &str,
    result: Result<tonic::Response<T>, tonic::Status>,
    code: Code,
    names: &[&str],
) {
    let status = match result {
        Ok(reply) => panic!("{what}: accepted: {:?}", reply.into_inner()),
        Err(status) => status,
    };
    let message = status.message();
    assert_eq!(
        status.code(),
        code,
        "{what}: refused with {:?}: {}",
        status.code(),
        &message[..message.len().min(500)]
    );
    for name in names {
        assert!(
            message.contains(name),
            "{what}: the message does not name {name:?}: {}",
            &message[..message.len().min(500)]
        );
    }
}

/// Through the real coordinator's API: specs with a cycle, a dangling dependency, duplicate
/// node ids and 100,000 nodes; inputs over 1 MiB; a 50 MB message; junk ids. Each is refused
/// with its status and a message naming the problem, and nothing is stored; a page size of a
/// million is coerced. Then stored data the code cannot read: a run whose pinned spec is
/// garbage, and a run whose checkpoint contradicts itself (a node skipped though nothing
/// failed; the schema's CHECKs allow no other kind of unreadable checkpoint). Both runs are
/// blocked with the reason, while the coordinators stay SERVING and the workers finish every
/// other run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_and_bad_data_are_refused_or_blocked() {
    let _alone = scenario::one_at_a_time().await;
    bounded("bad-input", SCENARIO_LIMIT, async {
        let mut c =
            Cluster::start("bad-input", leasehold_fault_tests::bins!(), 2, &workers(2)).await;
        let line = bad_input(&mut c).await;
        c.conclude(line).await;
    })
    .await;
}

async fn bad_input(c: &mut Cluster) -> Line {
    let t = c.timings;
    let coordinator = c.coordinators()[0];
    let mut api = api::clients(c, coordinator).await;
    let good = c.automation(GOOD_SPEC).await;
    let before = row_counts(c).await;

    let bad_specs: [(&str, String, &[&str]); 3] = [
        (
            "a cyclic DAG",
            "id: cyclic\nnodes:\n  - {id: a, kind: noop, depends_on: [c]}\n  - {id: b, kind: noop, \
             depends_on: [a]}\n  - {id: c, kind: noop, depends_on: [b]}\n"
                .to_owned(),
            &["dependency cycle", "a -> "],
        ),
        (
            "a dangling dependency",
            "id: dangling\nnodes:\n  - {id: a, kind: noop, depends_on: [ghost]}\n".to_owned(),
            &["unknown node", "ghost"],
        ),
        (
            "duplicate node ids",
            "id: twins\nnodes:\n  - {id: a, kind: noop}\n  - {id: a, kind: noop}\n".to_owned(),
            &["duplicate node id"],
        ),
    ];
    for (what, text, names) in bad_specs {
        let answer = api
            .automations
            .create_automation(v1::CreateAutomationRequest {
                spec: spec_text(text),
            })
            .await;
        refused(what, answer, Code::InvalidArgument, names);
    }

    // 100,000 nodes as JSON text: about 4 MB, under the 16 MiB request limit, so validation
    // refuses it for the node count.
    let nodes: Vec<String> = (0..100_000)
        .map(|i| format!("{{\"id\":\"n{i}\",\"kind\":\"noop\"}}"))
        .collect();
    let huge = format!("{{\"id\":\"huge\",\"nodes\":[{}]}}", nodes.join(","));
    eprintln!("bad-input: the 100,000-node spec is {} bytes", huge.len());
    let answer = api
        .automations
        .create_automation(v1::CreateAutomationRequest {
            spec: spec_text(huge),
        })
        .await;
    refused(
        "a 100,000-node spec",
        answer,
        Code::InvalidArgument,
        &["100000 nodes", "at most 1000"],
    );

    // Inputs over 1 MiB.
    let mut inputs = v1::StartRunRequest::default().inputs.unwrap_or_default();
    inputs
        .fields
        .insert("blob".to_owned(), "x".repeat(1024 * 1024 + 1).into());
    let answer = api
        .runs
        .start_run(v1::StartRunRequest {
            automation_id: good.as_str().to_owned(),
            inputs: Some(inputs),
            ..v1::StartRunRequest::default()
        })
        .await;
    refused(
        "oversize inputs",
        answer,
        Code::InvalidArgument,
        &["inputs"],
    );

    // A 50 MB message: over the coordinator's request limit before anything is parsed.
    let answer = api
        .automations
        .create_automation(v1::CreateAutomationRequest {
            spec: spec_text(" ".repeat(50_000_000)),
        })
        .await;
    refused(
        "a 50 MB message",
        answer,
        Code::ResourceExhausted,
        &["message length too large"],
    );

    // Junk in ids.
    let answer = api
        .runs
        .get_run(v1::GetRunRequest {
            run_id: "not-a-uuid".into(),
        })
        .await;
    refused(
        "GetRun not-a-uuid",
        answer,
        Code::InvalidArgument,
        &["run_id", "not a run id"],
    );
    let answer = api
        .runs
        .cancel_run(v1::CancelRunRequest {
            run_id: "'; DROP TABLE runs; --".into(),
            reason: String::new(),
            ..Default::default()
        })
        .await;
    refused(
        "CancelRun with SQL for an id",
        answer,
        Code::InvalidArgument,
        &["run_id"],
    );
    for junk in ["good; DROP TABLE runs", "good automation"] {
        let answer = api
            .runs
            .start_run(v1::StartRunRequest {
                automation_id: junk.into(),
                ..v1::StartRunRequest::default()
            })
            .await;
        refused(
            &format!("StartRun of {junk:?}"),
            answer,
            Code::InvalidArgument,
            &["automation_id", "contains"],
        );
    }
    let answer = api
        .automations
        .create_automation(v1::CreateAutomationRequest {
            spec: spec_text("id: 'bad id;'\nnodes:\n  - {id: a, kind: noop}\n".to_owned()),
        })
        .await;
    refused(
        "an automation id with a space and a semicolon",
        answer,
        Code::InvalidArgument,
        &["id"],
    );
    let answer = api
        .gates
        .decide_gate(v1::DecideGateRequest {
            gate_id: "gate; 1".into(),
            decision: v1::Decision::Approve as i32,
            ..v1::DecideGateRequest::default()
        })
        .await;
    refused(
        "DecideGate of a junk id",
        answer,
        Code::InvalidArgument,
        &["gate_id"],
    );
    assert_eq!(
        row_counts(c).await,
        before,
        "a refused request stored nothing"
    );

    // A page size of a million is coerced to the maximum, not refused.
    let good_runs = c.start_runs(&good, GOOD_RUNS).await;
    let page = api
        .runs
        .list_runs(v1::ListRunsRequest {
            page_size: 1_000_000,
            ..v1::ListRunsRequest::default()
        })
        .await
        .expect("a page size of a million is coerced")
        .into_inner();
    assert_eq!(
        page.runs.len(),
        GOOD_RUNS,
        "every run fits one coerced page"
    );

    // Stored data the code cannot read.
    let corrupt = c.automation(CORRUPT_SPEC).await;
    let original: String = c
        .sql
        .query_one(STORED_SPEC, &[&corrupt.as_str()])
        .await
        .expect("the stored spec")
        .get(0);
    c.sql
        .query_one(CORRUPT_STORED_SPEC, &[&corrupt.as_str()])
        .await
        .expect("corrupt the stored spec");
    let tampered = c.automation(TAMPERED_SPEC).await;
    let tampered_run = c.start_runs(&tampered, 1).await[0];
    c.wait_all(&[tampered_run], "awaiting_approval", FINISH_DEADLINE)
        .await;
    let fault = Instant::now();
    let corrupt_run = c.start_runs(&corrupt, 1).await[0];
    let inserted = c
        .sql
        .execute(SKIP_NODE, &[&tampered_run.0, &"after"])
        .await
        .expect("tamper with the checkpoint");
    assert_eq!(inserted, 1);
    let gate = pending_gates(&api, &[tampered_run]).await;
    api.gates
        .decide_gate(Ask::Approve.request(&gate[&tampered_run], "operator"))
        .await
        .expect("approve the tampered run's gate");
    let more_runs = c.start_runs(&good, GOOD_RUNS).await;

    let blocked = [corrupt_run, tampered_run];
    let recovery = wait_for_every(
        FINISH_DEADLINE,
        POLL,
        "both unreadable runs to be blocked",
        || async { (c.count_status(&blocked, "blocked").await == 2).then(|| fault.elapsed()) },
    )
    .await;
    for (run, names) in [
        (corrupt_run, &["spec", "corrupt", "unreadable"][..]),
        (tampered_run, &["no node can run"][..]),
    ] {
        let row = c.sql.query_one(STOP_OF, &[&run.0]).await.expect("stop");
        let (kind, reason): (Option<String>, Option<String>) = (row.get(0), row.get(1));
        assert_eq!(kind.as_deref(), Some("unreadable"), "run {run}");
        let reason = reason.unwrap_or_default();
        for name in names {
            assert!(
                reason.contains(name),
                "run {run}: the stop reason does not name {name:?}: {reason}"
            );
        }
        // The API still shows the run, with the reason.
        let shown = api
            .runs
            .get_run(v1::GetRunRequest {
                run_id: run.to_string(),
            })
            .await
            .expect("GetRun of a blocked run")
            .into_inner();
        assert_eq!(
            (shown.status(), shown.stop_reason.as_str()),
            (v1::RunStatus::Blocked, reason.as_str())
        );
        eprintln!(
            "bad-input: run {run} blocked: {}",
            shown.stop_kind().as_str_name()
        );
    }

    // Everything else goes on: every other run completes, every process serves.
    let all_good: Vec<RunId> = good_runs.iter().chain(&more_runs).copied().collect();
    let lost = c.settle(&all_good, "completed", FINISH_DEADLINE).await;
    for id in c.coordinators() {
        assert_eq!(
            api::health(c, id).await,
            Some(ServingStatus::Serving),
            "coordinator {id:?} serves"
        );
    }
    for w in c.workers() {
        let proc = c.worker_proc(w);
        assert!(
            c.sup.try_exit(proc).is_none(),
            "{} exited\n{}",
            c.sup.name(proc),
            c.sup.log_tail(proc)
        );
    }
    let last = c.start_runs(&good, 1).await;
    c.wait_all(&last, "completed", FINISH_DEADLINE).await;

    // An operator puts the spec back; the checker reads every stored spec.
    c.sql
        .execute(RESTORE_STORED_SPEC, &[&corrupt.as_str(), &original])
        .await
        .expect("restore the stored spec");
    Line {
        scenario: "bad-input",
        runs: all_good.len() + blocked.len() + last.len(),
        lost,
        double_completed: 0,
        recovery,
        bound: t.poll + t.margin,
        took: Duration::ZERO,
    }
}
