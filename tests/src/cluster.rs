//! A cluster for one scenario: a fresh database migrated by the real `leasehold migrate`, the
//! effects ledger, `leasehold coordinator` and `leasehold-test-worker` processes under a
//! [`Supervisor`], and the reads the scenarios observe it with.
//!
//! Every timing the scenarios depend on is in [`Timings`], and every bound they assert is
//! computed from it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use leasehold_core::ids::{AutomationId, ClaimantId, RunId, TenantId};
use leasehold_core::spec;
use leasehold_core::store::{NewToken, Role, Store};
use leasehold_proto::bearer::{AuthedChannel, Bearer};
use leasehold_proto::v1::runs_client::RunsClient;
use leasehold_testkit::proxy::{self, Proxy};
use leasehold_testkit::{TestDb, fixtures, wait_for_every};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio_postgres::Client;
use tonic::transport::Endpoint;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::invariants::{self, Report};
use crate::scenario::{self, Line};
use crate::supervisor::{ProcId, Supervisor};
use crate::{api, ledger};

/// The timings every process of a cluster runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// Workers' lease: the shortest a worker accepts (it clamps shorter ones up).
    pub lease: Duration,
    /// Workers' heartbeat interval.
    pub heartbeat: Duration,
    /// Workers' polling fallback.
    pub poll: Duration,
    /// The coordinators' reaper, pausing, auto-resume and deadline intervals.
    pub sweep: Duration,
    /// The coordinators' leader lease; renewed every third of it.
    pub leader_lease: Duration,
    /// Workers' shutdown grace.
    pub grace: Duration,
    /// Slack for a loaded two-core machine, added to every computed bound.
    pub margin: Duration,
}

/// Short settings, so that a lease expires within seconds.
pub const TIMINGS: Timings = Timings {
    lease: leasehold_core::lease::LEASE_MIN,
    heartbeat: Duration::from_secs(1),
    poll: Duration::from_millis(200),
    sweep: Duration::from_millis(500),
    leader_lease: Duration::from_secs(3),
    grace: Duration::from_secs(2),
    margin: Duration::from_secs(2),
};

impl Timings {
    /// From a holder's death to its runs being claimed again: its lease runs out (it was renewed
    /// at most when it died), a reaper pass stale-reaps or requeues them, an auto-resume pass
    /// queues the stale-reaped ones, and a worker claims them, woken or by polling.
    pub fn recovery_bound(&self) -> Duration {
        self.lease + self.sweep + self.sweep + self.poll + self.margin
    }

    /// From a leader's death to another coordinator leading: the leader lease runs out (it was
    /// renewed at most when the leader died), and the others try for it every third of it.
    pub fn takeover_bound(&self) -> Duration {
        self.leader_lease + self.leader_lease / 3 + self.margin
    }

    /// From a worker's SIGTERM to its exit: the grace period, then at most the library's
    /// hand-back deadline (5 s), then the exit.
    pub fn worker_stop_bound(&self) -> Duration {
        self.grace + Duration::from_secs(5) + self.margin
    }
}

/// How late a schedule's fire may start and still be on time: shorter than the schedule
/// scenario's outage, so that it misses fires.
pub const SCHEDULE_GRACE: Duration = Duration::from_secs(2);

/// How long a process may take to become ready.
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// How long a teardown waits after SIGTERM before SIGKILL.
const STOP_DEADLINE: Duration = Duration::from_secs(15);
/// Connections per process: enough for these loads, and few enough for many processes.
pub const POOL_SIZE: usize = 4;
/// The program `exec` nodes may run.
pub const SHELL: &str = "/bin/sh";

/// The programs a cluster runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// The real `leasehold` binary: `migrate` and `coordinator`.
    pub leasehold: PathBuf,
    /// `leasehold-test-worker`.
    pub worker: PathBuf,
}

/// How to start a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerOpts {
    /// Runs held at once.
    pub capacity: usize,
    /// Reach the database through a [`Proxy`] of its own, which the scenario can fault.
    pub proxied: bool,
    /// Database connections in its pool.
    pub pool_size: usize,
    /// Which worker program, with which kinds.
    pub kinds: WorkerKinds,
    /// Its `--label`s (`gpu=a100`).
    pub labels: &'static [&'static str],
}

/// The kinds a worker of the cluster runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerKinds {
    /// `leasehold-test-worker`: the built-in kinds, `exec` allowed to run the shell, and the
    /// suite's `ledger`.
    Full,
    /// The real `leasehold worker`: the built-in kinds only, without `exec`.
    BuiltIn,
}

impl Default for WorkerOpts {
    fn default() -> Self {
        Self {
            capacity: 16,
            proxied: false,
            pool_size: POOL_SIZE,
            kinds: WorkerKinds::Full,
            labels: &[],
        }
    }
}

/// A coordinator of the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoordinatorId(usize);

/// A worker of the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerId(usize);

struct CoordinatorProc {
    proc: ProcId,
    endpoint: String,
}

struct WorkerProc {
    proc: ProcId,
    claimant: ClaimantId,
    proxy: Option<Proxy>,
}

/// One scenario's cluster.
///
/// Dropping it kills every process first. A cluster that did not [`conclude`](Self::conclude)
/// successfully (a failed assertion, a scenario past its time bound) keeps its logs and its
/// database, and prints where they are.
pub struct Cluster {
    /// The processes.
    pub sup: Supervisor,
    coordinators: Vec<CoordinatorProc>,
    workers: Vec<WorkerProc>,
    /// The store, for starting runs and reading them back.
    pub store: Store,
    /// A plain connection, for the suite's own reads and the ledger.
    pub sql: Client,
    /// A connection as the database's owner, a superuser: for what the runtime role may not do
    /// (server settings, ending other sessions).
    pub owner_sql: Client,
    /// The tenant every run is started in.
    pub tenant: TenantId,
    /// An admin token of [`Cluster::tenant`], which the suite's API clients send: the
    /// coordinators require tokens, as they do for users.
    pub token: String,
    /// The timings every process runs with.
    pub timings: Timings,
    bins: Binaries,
    started: Instant,
    url: String,
    passed: bool,
    /// Taken by the drop, which drops or keeps it.
    db: Option<TestDb>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The processes go before the database does: a dropped database ends their connections.
        self.sup.kill_all();
        if let Some(db) = self.db.take() {
            if self.passed || std::thread::panicking() {
                // A panicking test's TestDb keeps itself and says so.
                drop(db);
            } else {
                eprintln!(
                    "fault suite: the scenario did not finish; kept its database {} (a \
                     throwaway cluster goes when the test process exits; set \
                     {} to keep it longer)",
                    db.url(),
                    leasehold_testkit::DATABASE_URL_ENV
                );
                std::mem::forget(db);
            }
        }
    }
}

// name: held_by
// The runs a claimant holds now, with the epoch it holds them at.
const HELD_BY: &str = "\
SELECT run_id, lease_epoch FROM runs
WHERE claimant_id = $1::text AND status IN ('running', 'pausing')
ORDER BY run_id";

// name: busy_runs_of
// Runs a claimant holds with a node running under its claim: work in flight.
const BUSY_RUNS_OF: &str = "\
SELECT count(DISTINCT r.run_id) FROM runs r
JOIN run_nodes n ON n.run_id = r.run_id AND n.status = 'running' AND n.epoch = r.lease_epoch
WHERE r.claimant_id = $1::text AND r.status = 'running'";

// name: not_reclaimed
// Of runs held at the given epochs, those that no later claim has taken and that have not
// ended: the ones still waiting to recover.
const NOT_RECLAIMED: &str = "\
SELECT count(*) FROM runs r
JOIN unnest($1::uuid[], $2::bigint[]) AS v(run_id, epoch) ON r.run_id = v.run_id
WHERE r.lease_epoch <= v.epoch AND r.status NOT IN ('completed', 'failed', 'cancelled')";

// name: status_counts
// How many of these runs are in each status.
const STATUS_COUNTS: &str = "\
SELECT status, count(*) FROM runs WHERE run_id = ANY($1::uuid[]) GROUP BY status";

// name: nodes_in
// How many of these runs have the node in the status.
const NODES_IN: &str = "\
SELECT count(*) FROM run_nodes
WHERE run_id = ANY($1::uuid[]) AND node_id = $2::text AND status = $3::text";

// name: holder
// The claimant holding a run, if it is held.
const HOLDER: &str = "SELECT claimant_id FROM runs WHERE run_id = $1::uuid";

// name: leader
// Who holds the sweeps' leader lease, at which epoch.
const LEADER: &str = "SELECT holder, epoch FROM leader_leases WHERE name = 'sweeps'";

// name: event_count
// How many events of a name were recorded, for these runs.
const EVENT_COUNT: &str = "\
SELECT count(*) FROM run_events WHERE event = $1::text AND run_id = ANY($2::uuid[])";

impl Cluster {
    /// A migrated database with the ledger table, and `coordinators` coordinators and one worker
    /// per entry of `workers`, each ready (a coordinator serves health, a worker has its row).
    ///
    /// # Panics
    /// If anything fails to start; the message carries the process's log.
    pub async fn start(
        test: &str,
        bins: Binaries,
        coordinators: usize,
        workers: &[WorkerOpts],
    ) -> Self {
        let started = Instant::now();
        let mut sup = Supervisor::new(test);
        // Migrated by its owner, served as the runtime role: the processes own nothing, as in
        // production (docs/security.md).
        let db = TestDb::empty().await;
        let mut migrate = command(&bins.leasehold);
        migrate.args(["migrate", "--database-url", db.owner_url()]);
        migrate.args(["--runtime-role", leasehold_testkit::RUNTIME_ROLE]);
        let migrating = sup.spawn("migrate", migrate);
        let status = sup.wait_exit(migrating, READY_DEADLINE).await;
        assert!(
            status.success(),
            "leasehold migrate failed: {status}\n{}",
            sup.log_tail(migrating)
        );
        let store = Store::connect(db.url(), 4)
            .await
            .expect("connect the store");
        let (sql, connection) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls)
            .await
            .expect("connect for the suite's reads");
        tokio::spawn(connection);
        let (owner_sql, connection) =
            tokio_postgres::connect(db.owner_url(), tokio_postgres::NoTls)
                .await
                .expect("connect as the owner");
        tokio::spawn(connection);
        // The owner's default privileges give the runtime role the ledger's rows.
        ledger::create(&owner_sql).await;
        let tenant = TenantId::default();
        let token = new_token(&store, &tenant, "fault-suite").await;
        let mut cluster = Self {
            sup,
            coordinators: Vec::new(),
            workers: Vec::new(),
            store,
            sql,
            owner_sql,
            tenant,
            token,
            timings: TIMINGS,
            bins,
            started,
            url: db.url().to_owned(),
            passed: false,
            db: Some(db),
        };
        let coordinators: Vec<CoordinatorId> = (0..coordinators)
            .map(|_| cluster.spawn_coordinator())
            .collect();
        let mut started_workers = Vec::new();
        for opts in workers {
            started_workers.push(cluster.spawn_worker(*opts).await);
        }
        for id in coordinators {
            cluster.wait_coordinator_ready(id).await;
        }
        for id in started_workers {
            cluster.wait_worker_ready(id).await;
        }
        cluster
    }

    fn spawn_coordinator(&mut self) -> CoordinatorId {
        let name = format!("coordinator-{}", self.coordinators.len() + 1);
        let coordinator = self.start_coordinator_process(&name);
        self.coordinators.push(coordinator);
        CoordinatorId(self.coordinators.len() - 1)
    }

    /// Starts a coordinator named `name` on a loopback port free now.
    fn start_coordinator_process(&mut self, name: &str) -> CoordinatorProc {
        let listen = free_port();
        let t = self.timings;
        let mut cmd = command(&self.bins.leasehold);
        cmd.args(["coordinator", "--database-url", &self.url])
            .args(["--listen", &listen.to_string()])
            .args(["--pool-size", &POOL_SIZE.to_string()])
            .args(["--leader-lease", &duration_arg(t.leader_lease)])
            .args(["--reaper-interval", &duration_arg(t.sweep)])
            .args(["--pausing-interval", &duration_arg(t.sweep)])
            .args(["--auto-resume-interval", &duration_arg(t.sweep)])
            .args(["--deadline-interval", &duration_arg(t.sweep)])
            .args(["--schedule-interval", &duration_arg(t.sweep)])
            .args(["--schedule-grace", &duration_arg(SCHEDULE_GRACE)])
            .env("LEASEHOLD_LOG", "info");
        let proc = self.sup.spawn(name, cmd);
        CoordinatorProc {
            proc,
            endpoint: format!("http://{listen}"),
        }
    }

    async fn spawn_worker(&mut self, opts: WorkerOpts) -> WorkerId {
        let n = self.workers.len() + 1;
        let name = format!("worker-{n}");
        let claimant = ClaimantId(format!("{name}-{}", uuid::Uuid::new_v4().simple()));
        let proxy = if opts.proxied {
            Some(Proxy::start(proxy::server_addr(&self.url)).await)
        } else {
            None
        };
        let url = proxy
            .as_ref()
            .map_or_else(|| self.url.clone(), |p| p.url_for(&self.url));
        let t = self.timings;
        let mut cmd = match opts.kinds {
            WorkerKinds::Full => {
                let mut cmd = command(&self.bins.worker);
                cmd.args(["--exec-allow", SHELL]);
                cmd
            }
            WorkerKinds::BuiltIn => {
                let mut cmd = command(&self.bins.leasehold);
                cmd.arg("worker");
                cmd
            }
        };
        for label in opts.labels {
            cmd.args(["--label", label]);
        }
        cmd.args(["--database-url", &url])
            .args(["--claimant-id", claimant.as_str()])
            .args(["--capacity", &opts.capacity.to_string()])
            .args(["--lease", &duration_arg(t.lease)])
            .args(["--heartbeat-interval", &duration_arg(t.heartbeat)])
            .args(["--poll-interval", &duration_arg(t.poll)])
            .args(["--shutdown-grace", &duration_arg(t.grace)])
            .args(["--pool-size", &opts.pool_size.to_string()])
            .env("LEASEHOLD_LOG", "info,leasehold_worker=debug");
        let proc = self.sup.spawn(&name, cmd);
        self.workers.push(WorkerProc {
            proc,
            claimant,
            proxy,
        });
        WorkerId(self.workers.len() - 1)
    }

    /// Starts one more coordinator and waits until it serves.
    pub async fn add_coordinator(&mut self) -> CoordinatorId {
        let id = self.spawn_coordinator();
        self.wait_coordinator_ready(id).await;
        id
    }

    /// Starts one more worker and waits until it has registered.
    pub async fn add_worker(&mut self, opts: WorkerOpts) -> WorkerId {
        let id = self.spawn_worker(opts).await;
        self.wait_worker_ready(id).await;
        id
    }

    async fn wait_coordinator_ready(&mut self, id: CoordinatorId) {
        let mut proc = self.coordinators[id.0].proc;
        let mut endpoint = self.coordinators[id.0].endpoint.clone();
        let mut port_retries = PORT_RETRIES;
        let start = Instant::now();
        loop {
            if let Some(status) = self.sup.try_exit(proc) {
                // The port was free when picked, but anything on the machine (an outgoing
                // connection's ephemeral port, another test) may take it before the coordinator
                // binds it: start it again on another port.
                if port_retries > 0 && self.sup.log_tail(proc).contains("Address already in use") {
                    port_retries -= 1;
                    let again = PORT_RETRIES - port_retries;
                    let name = format!("coordinator-{}-again-{again}", id.0 + 1);
                    self.coordinators[id.0] = self.start_coordinator_process(&name);
                    proc = self.coordinators[id.0].proc;
                    endpoint = self.coordinators[id.0].endpoint.clone();
                    continue;
                }
                panic!(
                    "{} exited before serving: {status}\n{}",
                    self.sup.name(proc),
                    self.sup.log_tail(proc)
                );
            }
            if serving(&endpoint).await {
                return;
            }
            assert!(
                start.elapsed() < READY_DEADLINE,
                "{} did not report SERVING within {READY_DEADLINE:?}\n{}",
                self.sup.name(proc),
                self.sup.log_tail(proc)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_worker_ready(&mut self, id: WorkerId) {
        let proc = self.workers[id.0].proc;
        let claimant = self.workers[id.0].claimant.clone();
        let start = Instant::now();
        loop {
            if let Some(status) = self.sup.try_exit(proc) {
                panic!(
                    "{} exited before registering: {status}\n{}",
                    self.sup.name(proc),
                    self.sup.log_tail(proc)
                );
            }
            let workers = self.store.list_workers(None).await.expect("list workers");
            if workers.iter().any(|w| w.claimant_id == claimant) {
                return;
            }
            assert!(
                start.elapsed() < READY_DEADLINE,
                "{} did not register within {READY_DEADLINE:?}\n{}",
                self.sup.name(proc),
                self.sup.log_tail(proc)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The workers started so far, in order.
    pub fn workers(&self) -> Vec<WorkerId> {
        (0..self.workers.len()).map(WorkerId).collect()
    }

    /// The coordinators started so far, in order.
    pub fn coordinators(&self) -> Vec<CoordinatorId> {
        (0..self.coordinators.len()).map(CoordinatorId).collect()
    }

    /// The worker's process.
    pub fn worker_proc(&self, id: WorkerId) -> ProcId {
        self.workers[id.0].proc
    }

    /// The worker's claimant id.
    pub fn claimant(&self, id: WorkerId) -> &ClaimantId {
        &self.workers[id.0].claimant
    }

    /// The worker whose claimant id this is.
    pub fn worker_by_claimant(&self, claimant: &str) -> Option<WorkerId> {
        self.workers
            .iter()
            .position(|w| w.claimant.as_str() == claimant)
            .map(WorkerId)
    }

    /// The worker's proxy.
    ///
    /// # Panics
    /// If it was started without one.
    pub fn proxy(&self, id: WorkerId) -> &Proxy {
        self.workers[id.0]
            .proxy
            .as_ref()
            .expect("a worker started with proxied: true")
    }

    /// The coordinator's process.
    pub fn coordinator_proc(&self, id: CoordinatorId) -> ProcId {
        self.coordinators[id.0].proc
    }

    /// A gRPC client of the coordinator's `Runs` service, sending [`Cluster::token`].
    ///
    /// # Panics
    /// If it cannot connect.
    pub async fn runs_client(&self, id: CoordinatorId) -> RunsClient<AuthedChannel> {
        let channel = Endpoint::from_shared(self.coordinators[id.0].endpoint.clone())
            .expect("endpoint")
            .connect()
            .await
            .expect("connect to the coordinator");
        RunsClient::new(bearer(&self.token).channel(channel))
    }

    /// A new admin token of [`Cluster::tenant`] named `name`: the decider and actor its calls
    /// record.
    pub async fn token_named(&self, name: &str) -> String {
        new_token(&self.store, &self.tenant, name).await
    }

    /// Sends `signal` to a worker.
    pub fn signal_worker(&self, id: WorkerId, signal: Signal) {
        self.sup.signal(self.workers[id.0].proc, signal);
    }

    /// Sends `signal` to a coordinator.
    pub fn signal_coordinator(&self, id: CoordinatorId, signal: Signal) {
        self.sup.signal(self.coordinators[id.0].proc, signal);
    }

    /// Registers an automation from YAML.
    ///
    /// # Panics
    /// If the spec is invalid or cannot be stored.
    pub async fn automation(&self, yaml: &str) -> AutomationId {
        let spec = spec::parse_yaml(yaml).expect("valid spec");
        self.store
            .create_automation(&self.tenant, &spec)
            .await
            .expect("create automation");
        spec.id
    }

    /// Starts `n` runs of `automation`.
    ///
    /// # Panics
    /// If a run cannot be started.
    pub async fn start_runs(&self, automation: &AutomationId, n: usize) -> Vec<RunId> {
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            let started = self
                .store
                .start_run(&fixtures::start_request(&self.tenant, automation))
                .await
                .expect("start run");
            ids.push(started.run_id);
        }
        ids
    }

    /// The runs a worker holds now, with their epochs.
    pub async fn held_by(&self, id: WorkerId) -> Vec<(RunId, i64)> {
        self.sql
            .query(HELD_BY, &[&self.claimant(id).as_str()])
            .await
            .expect("read held runs")
            .iter()
            .map(|row| (RunId(row.get(0)), row.get(1)))
            .collect()
    }

    /// How many runs the worker holds with a node running.
    pub async fn busy_runs(&self, id: WorkerId) -> i64 {
        self.sql
            .query_one(BUSY_RUNS_OF, &[&self.claimant(id).as_str()])
            .await
            .expect("count busy runs")
            .get(0)
    }

    /// Of `held` (runs and the epochs they were held at), how many were neither claimed again
    /// nor ended.
    pub async fn not_reclaimed(&self, held: &[(RunId, i64)]) -> i64 {
        let ids: Vec<uuid::Uuid> = held.iter().map(|(r, _)| r.0).collect();
        let epochs: Vec<i64> = held.iter().map(|(_, e)| *e).collect();
        self.sql
            .query_one(NOT_RECLAIMED, &[&ids, &epochs])
            .await
            .expect("count runs not reclaimed")
            .get(0)
    }

    /// How many of `runs` are in `status`.
    pub async fn count_status(&self, runs: &[RunId], status: &str) -> usize {
        let ids: Vec<uuid::Uuid> = runs.iter().map(|r| r.0).collect();
        self.sql
            .query(STATUS_COUNTS, &[&ids])
            .await
            .expect("count statuses")
            .iter()
            .find(|row| row.get::<_, &str>(0) == status)
            .map_or(0, |row| usize::try_from(row.get::<_, i64>(1)).unwrap_or(0))
    }

    /// Waits until every one of `runs` is in `status`.
    ///
    /// # Panics
    /// If they are not by `deadline`.
    pub async fn wait_all(&self, runs: &[RunId], status: &str, deadline: Duration) {
        wait_for_every(
            deadline,
            Duration::from_millis(100),
            &format!("{} runs to be {status}", runs.len()),
            || async { (self.count_status(runs, status).await == runs.len()).then_some(()) },
        )
        .await;
    }

    /// How many of `runs` have node `node` in `status`.
    pub async fn count_nodes(&self, runs: &[RunId], node: &str, status: &str) -> usize {
        let ids: Vec<uuid::Uuid> = runs.iter().map(|r| r.0).collect();
        let n: i64 = self
            .sql
            .query_one(NODES_IN, &[&ids, &node, &status])
            .await
            .expect("count nodes")
            .get(0);
        usize::try_from(n).unwrap_or(0)
    }

    /// Waits until every one of `runs` is in `status`, up to `deadline`, and returns how many
    /// are not: the runs lost, for a scenario that expects them all there.
    pub async fn settle(&self, runs: &[RunId], status: &str, deadline: Duration) -> usize {
        let start = Instant::now();
        loop {
            let there = self.count_status(runs, status).await;
            if there == runs.len() || start.elapsed() >= deadline {
                return runs.len() - there;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Who holds a run now, if anyone.
    pub async fn holder(&self, run: RunId) -> Option<WorkerId> {
        let claimant: Option<String> = self
            .sql
            .query_one(HOLDER, &[&run.0])
            .await
            .expect("read the holder")
            .get(0);
        self.worker_by_claimant(&claimant?)
    }

    /// How many `event`s were recorded for `runs`.
    pub async fn event_count(&self, event: &str, runs: &[RunId]) -> i64 {
        let ids: Vec<uuid::Uuid> = runs.iter().map(|r| r.0).collect();
        self.sql
            .query_one(EVENT_COUNT, &[&event, &ids])
            .await
            .expect("count events")
            .get(0)
    }

    /// The sweeps' leader: its holder id and epoch, if any coordinator ever led.
    pub async fn leader(&self) -> Option<(String, i64)> {
        self.sql
            .query_opt(LEADER, &[])
            .await
            .expect("read the leader lease")
            .map(|row| (row.get(0), row.get(1)))
    }

    /// The coordinator a leader holder id names. Holder ids are
    /// `<host>-<pid>-<random>-coordinator`, and the pid is the process's.
    pub fn coordinator_of(&self, holder: &str) -> Option<CoordinatorId> {
        let pid: u32 = holder.rsplit('-').nth(2)?.parse().ok()?;
        let proc = self.sup.by_pid(pid)?;
        self.coordinators
            .iter()
            .position(|c| c.proc == proc)
            .map(CoordinatorId)
    }

    /// Waits until some coordinator leads, and returns it with its holder id and epoch.
    pub async fn wait_leader(&self, deadline: Duration) -> (CoordinatorId, String, i64) {
        wait_for_every(
            deadline,
            Duration::from_millis(50),
            "a coordinator to lead",
            || async {
                let (holder, epoch) = self.leader().await?;
                Some((self.coordinator_of(&holder)?, holder, epoch))
            },
        )
        .await
    }

    /// Ends the scenario: stops every process (SIGTERM, then SIGKILL after a deadline), checks
    /// the invariants, prints the scenario's line, and fails the test if a process did not stop
    /// cleanly, an invariant broke, a run was lost or completed a node twice, or recovery took
    /// longer than its bound. A passing scenario's logs are removed.
    ///
    /// # Panics
    /// On any of those failures.
    pub async fn conclude(mut self, mut line: Line) -> Report {
        let stopped = self.sup.stop_all(STOP_DEADLINE).await;
        let report = invariants::check(&self.sql).await;
        line.lost += report.lost.len();
        line.double_completed = report.double_completed.len();
        line.took = self.started.elapsed();
        scenario::report(&line);
        let unclean: Vec<String> = stopped
            .iter()
            .filter(|(_, status, killed)| *killed || !status.success())
            .map(|(name, status, killed)| {
                format!(
                    "{name}: {status}{}",
                    if *killed { " after SIGKILL" } else { "" }
                )
            })
            .collect();
        assert!(
            unclean.is_empty(),
            "processes did not stop cleanly on SIGTERM: {unclean:?}\n{report}"
        );
        report.assert_holds();
        assert_eq!(line.lost, 0, "runs lost: {line}\n{report}");
        assert!(
            line.recovery <= line.bound,
            "recovery took {:?}, more than the bound {:?}",
            line.recovery,
            line.bound
        );
        self.sup.passed();
        self.passed = true;
        report
    }

    /// Stops a worker with SIGTERM and waits for it to exit; SIGKILL after `deadline`.
    pub async fn stop_worker(&mut self, id: WorkerId, deadline: Duration) -> (ExitStatus, bool) {
        let proc = self.workers[id.0].proc;
        self.sup.stop(proc, deadline).await
    }

    /// SIGKILLs a worker and reaps it.
    pub async fn kill_worker(&mut self, id: WorkerId) -> ExitStatus {
        let proc = self.workers[id.0].proc;
        self.sup.kill9(proc).await
    }

    /// SIGKILLs a coordinator and reaps it.
    pub async fn kill_coordinator(&mut self, id: CoordinatorId) -> ExitStatus {
        let proc = self.coordinators[id.0].proc;
        self.sup.kill9(proc).await
    }
}

/// A command for one of the cluster's programs, without the developer's own `LEASEHOLD_*`
/// settings, which would otherwise change what the scenario runs.
fn command(program: &std::path::Path) -> Command {
    let mut cmd = Command::new(program);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("LEASEHOLD_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// A duration as the binaries' flags take it.
fn duration_arg(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// A new admin token of `tenant` named `name`, as its text.
async fn new_token(store: &Store, tenant: &TenantId, name: &str) -> String {
    let (_, secret) = store
        .create_token(&NewToken {
            tenant: tenant.clone(),
            role: Role::Admin,
            name: Some(name.to_owned()),
            expires_in: None,
        })
        .await
        .expect("create an API token");
    secret.expose()
}

/// Sends `token` on every call.
pub fn bearer(token: &str) -> Bearer {
    Bearer::new(token).expect("a token is ASCII")
}

/// Times a coordinator is started again because its port was taken before it could bind it.
const PORT_RETRIES: u32 = 3;

/// A loopback port free now.
fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

async fn serving(endpoint: &str) -> bool {
    api::health_at(endpoint, api::RUNS_SERVICE, api::HEALTH_DEADLINE).await
        == Some(ServingStatus::Serving)
}

/// Whether any process of group `pgid` is alive: present in `/proc` and not a zombie. A zombie
/// has exited; it only waits for its parent (or init) to reap it.
pub fn group_alive(pgid: Pid) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return nix::sys::signal::killpg(pgid, None).is_ok();
    };
    entries.flatten().any(|entry| {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            return false;
        };
        // pid (comm) state ppid pgrp …; comm may hold spaces and parentheses.
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            return false;
        };
        let mut fields = after.split_whitespace();
        let state = fields.next();
        let pgrp = fields.nth(1).and_then(|p| p.parse::<i32>().ok());
        pgrp == Some(pgid.as_raw()) && state != Some("Z")
    })
}
