//! Fixtures for the tests of every crate that talks to the store: a migrated database with a
//! [`Store`] and a direct connection ([`Bundle`]), the automation specs many tests share, runs
//! started and claimed, reads of the rows the tests assert on, and time travel.
//!
//! Time travel moves rows in time instead of waiting for time to pass: it expires a lease (or all
//! of them) or a leadership, backdates a retry, sets a run's columns, or corrupts a stored spec,
//! with SQL written here. That SQL moves rows for tests only and is never run by the product,
//! which is why it may live outside `core::store`.
//!
//! The fixtures use `leasehold-core`'s types. `leasehold-core` dev-depends on this crate, so its
//! integration tests share one copy of `leasehold-core` with the fixtures; its unit tests (built as
//! a crate of their own) must use only [`TestDb`] from here, never a fixture.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use leasehold_core::ids::{AutomationId, ClaimantId, NodeId, RunId, TenantId};
use leasehold_core::routing::DEFAULT_QUEUE;
use leasehold_core::run::{self, Checkpoint, RunStatus};
use leasehold_core::spec::{self, Spec};
use leasehold_core::store::{
    AdvertisedKind, AutomationRecord, ClaimedRun, Event, Leadership, NodeRecord, RunRecord,
    StartRun, Store, Trigger, WorkerInfo,
};
use tokio::net::TcpListener;
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

use crate::TestDb;

/// A run lease long enough never to expire by itself during a test.
pub const LEASE: Duration = Duration::from_secs(60);
/// A leader lease long enough never to expire by itself during a test.
pub const LEADER_LEASE: Duration = Duration::from_secs(60);
/// The operator the fixtures' pauses and cancels are recorded as.
pub const OPERATOR: &str = "fixture-operator";

/// What every test that talks to the store starts from: a fresh, migrated database, with the
/// store and the connection of the runtime role ([`crate::RUNTIME_ROLE`]).
pub struct Bundle {
    /// The store under test.
    pub store: Store,
    /// A direct connection for fixtures and for moving rows in time.
    pub sql: tokio_postgres::Client,
    /// The tenant every fixture works in.
    pub tenant: TenantId,
    /// The database; dropped last, after the store's connections.
    pub db: TestDb,
}

/// A fresh, migrated database with a coordinator's store (16 connections).
pub async fn setup() -> Bundle {
    setup_with(|url| Store::connect_unchecked(url, 16)).await
}

/// [`setup`], with the [`diamond`] named `automation` stored.
pub async fn setup_diamond(automation: &str) -> (Bundle, AutomationId) {
    let b = setup().await;
    let automation = b.diamond(automation).await;
    (b, automation)
}

/// [`setup_diamond`], with one run of it queued: where most store tests start.
pub async fn setup_run(automation: &str) -> (Bundle, AutomationId, RunId) {
    let (b, automation) = setup_diamond(automation).await;
    let run_id = b.start(&automation).await;
    (b, automation, run_id)
}

/// A fresh, migrated database with a worker's store (8 connections, generic plans), as
/// `leasehold worker` connects.
pub async fn worker_setup() -> Bundle {
    setup_with(|url| Store::connect_worker_unchecked(url, 8)).await
}

async fn setup_with(
    connect: impl FnOnce(&str) -> Result<Store, leasehold_core::store::Error>,
) -> Bundle {
    let db = TestDb::new().await;
    let store = connect(db.url()).expect("pool");
    let (sql, connection) = tokio_postgres::connect(db.url(), NoTls)
        .await
        .expect("fixture connection");
    tokio::spawn(connection);
    Bundle {
        store,
        sql,
        tenant: TenantId::default(),
        db,
    }
}

/// Runs a server in-process on a loopback port the system picks: binds the listener first, so the
/// server is reachable as soon as this returns, and spawns `serve` with it and a token that stops
/// it. Returns the address and the token.
pub async fn serve_in_process<F, Fut>(serve: F) -> (SocketAddr, CancellationToken)
where
    F: FnOnce(TcpListener, CancellationToken) -> Fut,
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let cancel = CancellationToken::new();
    tokio::spawn(serve(listener, cancel.clone()));
    (addr, cancel)
}

/// Claims exactly one run from `store` for [`LEASE`], asserting that one was due: for tests whose
/// bundle is not a [`Bundle`].
pub async fn claim_one(store: &Store, claimant: &str) -> ClaimedRun {
    let mut claimed = store
        .claim_runs(&ClaimantId::from(claimant), 1, LEASE)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1, "one run was due for {claimant}");
    claimed.remove(0)
}

// Specs.

/// Parses a test spec, which must be valid.
pub fn spec(yaml: &str) -> Spec {
    spec::parse_yaml(yaml).expect("test spec is valid")
}

/// a → {b, c} → d, all `noop`.
pub fn diamond(id: &str) -> Spec {
    diamond_with(id, "")
}

/// The diamond, with `b_fields` (starting with a comma) added to node `b`.
fn diamond_with(id: &str, b_fields: &str) -> Spec {
    spec(&format!(
        "id: {id}
nodes:
  - {{id: a, kind: noop}}
  - {{id: b, kind: noop, depends_on: [a]{b_fields}}}
  - {{id: c, kind: noop, depends_on: [a]}}
  - {{id: d, kind: noop, depends_on: [b, c]}}
"
    ))
}

/// a → b → gate ← c, and gate → e; `gate` needs a person's approval before it runs.
pub fn gated(id: &str) -> Spec {
    spec(&format!(
        "id: {id}
nodes:
  - {{id: a, kind: noop}}
  - {{id: b, kind: noop, depends_on: [a]}}
  - {{id: c, kind: noop}}
  - {{id: gate, kind: noop, depends_on: [b, c], approval: {{prompt: Ship it?}}}}
  - {{id: e, kind: noop, depends_on: [gate]}}
"
    ))
}

/// The diamond, with `b` allowed a single attempt.
pub fn fragile(id: &str) -> Spec {
    diamond_with(id, ", max_attempts: 1")
}

/// A request to start a run of `tenant`'s `automation` with no inputs, keys or priority, by the
/// API.
pub fn start_request(tenant: &TenantId, automation: &AutomationId) -> StartRun {
    StartRun {
        tenant: tenant.clone(),
        automation_id: automation.clone(),
        inputs: serde_json::json!({}),
        priority: 0,
        concurrency_key: None,
        idempotency_key: None,
        trigger: Trigger::Api,
        actor: None,
        trace: None,
        queue: None,
    }
}

/// A worker's registration: `claimant` on `host`, pid 42, running `version`, with capacity 4,
/// the default lease, the `noop` kind with its built-in schema, serving the default queue.
pub fn worker_info(claimant: &str, host: &str, version: &str) -> WorkerInfo {
    WorkerInfo {
        claimant_id: ClaimantId::from(claimant),
        host: host.into(),
        pid: 42,
        version: version.into(),
        capacity: 4,
        lease: leasehold_core::lease::LEASE_DEFAULT,
        kinds: vec![AdvertisedKind {
            kind: "noop".into(),
            input_schema: leasehold_core::kinds::builtin_input_schema("noop"),
        }],
        queues: BTreeSet::from([DEFAULT_QUEUE.to_owned()]),
        labels: BTreeMap::new(),
        context: BTreeSet::new(),
    }
}

/// A node id.
pub fn node(id: &str) -> NodeId {
    NodeId::from(id)
}

/// A run's columns the sweeps change, read straight from the row.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    pub status: String,
    pub stop_kind: Option<String>,
    pub queue_reason: Option<String>,
    pub auto_resumes: i32,
    pub detail: Option<String>,
    pub stale_reaped_at: Option<DateTime<Utc>>,
    pub claimant_id: Option<String>,
    pub event_seq: i64,
}

/// `ago` in whole milliseconds, for the backdating statements.
fn millis(ago: Duration) -> i64 {
    i64::try_from(ago.as_millis()).expect("a test duration fits")
}

impl Bundle {
    // Automations and runs.

    /// Stores `spec` as an automation of the bundle's tenant.
    pub async fn create(&self, spec: &Spec) -> AutomationId {
        self.store
            .create_automation(&self.tenant, spec)
            .await
            .expect("create automation");
        spec.id.clone()
    }

    /// Stores an automation from YAML.
    pub async fn automation(&self, yaml: &str) -> AutomationId {
        self.create(&spec(yaml)).await
    }

    /// Stores the [`diamond`] named `id`.
    pub async fn diamond(&self, id: &str) -> AutomationId {
        self.create(&diamond(id)).await
    }

    /// Pauses (or activates) `automation`; returns it as stored.
    pub async fn set_automation_paused(
        &self,
        automation: &AutomationId,
        paused: bool,
    ) -> AutomationRecord {
        self.store
            .set_automation_status(&self.tenant, automation, paused)
            .await
            .expect("set the automation's status")
    }

    /// A request to start a run of `automation` with no inputs, keys or priority.
    pub fn start_request(&self, automation: &AutomationId) -> StartRun {
        start_request(&self.tenant, automation)
    }

    /// Starts a run of `automation`.
    pub async fn start(&self, automation: &AutomationId) -> RunId {
        self.store
            .start_run(&self.start_request(automation))
            .await
            .expect("start run")
            .run_id
    }

    /// Starts `n` runs of `automation`, one after another; their ids in that order.
    pub async fn start_many(&self, automation: &AutomationId, n: usize) -> Vec<RunId> {
        let mut run_ids = Vec::with_capacity(n);
        for _ in 0..n {
            run_ids.push(self.start(automation).await);
        }
        run_ids
    }

    /// Queues `n` runs in one statement; starting them one by one would dominate the test.
    pub async fn queue_many(&self, automation: &AutomationId, n: i64) {
        self.sql
            .execute(
                "INSERT INTO runs (run_id, tenant_id, automation_id, automation_version, trigger, status)
                 SELECT gen_random_uuid(), $1, $2, 1, 'api', 'queued' FROM generate_series(1, $3::bigint)",
                &[&self.tenant.as_str(), &automation.as_str(), &n],
            )
            .await
            .expect("queue runs");
    }

    /// Claims up to `n` due runs for `claimant`, for [`LEASE`].
    pub async fn claim(&self, claimant: &str, n: usize) -> Vec<ClaimedRun> {
        self.store
            .claim_runs(&ClaimantId::from(claimant), n, LEASE)
            .await
            .expect("claim")
    }

    /// Claims exactly one run, asserting that one was due.
    pub async fn claim_one(&self, claimant: &str) -> ClaimedRun {
        claim_one(&self.store, claimant).await
    }

    /// Starts a run and claims it.
    pub async fn start_and_claim(&self, automation: &AutomationId) -> ClaimedRun {
        let run_id = self.start(automation).await;
        let claimed = self.claim_one("w").await;
        assert_eq!(claimed.claim.run_id(), run_id);
        claimed
    }

    /// Starts a run, claims it, and starts node `a` under the claim.
    pub async fn progressed(&self, automation: &AutomationId, claimant: &str) -> ClaimedRun {
        let run_id = self.start(automation).await;
        let claimed = self.claim_one(claimant).await;
        assert_eq!(claimed.claim.run_id(), run_id);
        self.store
            .node_started(&claimed.claim, &node("a"))
            .await
            .expect("start node a");
        claimed
    }

    /// Pauses a run of the bundle's tenant, as the operator [`OPERATOR`] does, for `reason`.
    pub async fn pause(&self, run_id: RunId, reason: &str) {
        self.store
            .pause_run(&self.tenant, run_id, reason, OPERATOR, None)
            .await
            .expect("pause");
    }

    /// Cancels a run of the bundle's tenant, as the operator [`OPERATOR`] does, for `reason`.
    pub async fn cancel(&self, run_id: RunId, reason: &str) {
        self.store
            .cancel_run(&self.tenant, run_id, reason, OPERATOR, None)
            .await
            .expect("cancel");
    }

    /// Takes the role `name` for `holder`, asserting that it was free.
    pub async fn leader_of(&self, name: &str, holder: &str) -> Leadership {
        self.store
            .try_acquire_leadership(name, holder, LEADER_LEASE)
            .await
            .expect("acquire leadership")
            .expect("role is free")
    }

    // Reads.

    /// The run as the store reads it.
    pub async fn run(&self, run_id: RunId) -> RunRecord {
        self.store.run(&self.tenant, run_id).await.expect("run")
    }

    /// The run's nodes as checkpointed, in the store's order.
    pub async fn checkpoint(&self, run_id: RunId) -> Vec<NodeRecord> {
        self.store.checkpoint(run_id).await.expect("checkpoint")
    }

    /// The run's status.
    pub async fn status(&self, run_id: RunId) -> RunStatus {
        self.run(run_id).await.status
    }

    /// The nodes a worker that claims the run now would start, by the ready rule.
    pub async fn ready_nodes(&self, run_id: RunId, spec: &Spec) -> Vec<NodeId> {
        let checkpoint: Checkpoint = self
            .checkpoint(run_id)
            .await
            .iter()
            .map(|n| (n.node_id.clone(), n.state()))
            .collect();
        run::ready_nodes(spec, &checkpoint)
            .into_iter()
            .cloned()
            .collect()
    }

    /// When a held run's lease runs out.
    pub async fn lease_expiry(&self, run_id: RunId) -> DateTime<Utc> {
        self.run(run_id).await.lease_expires_at.expect("held")
    }

    /// The columns of a run's row the sweeps change.
    pub async fn row(&self, run_id: RunId) -> RunRow {
        let row = self
            .sql
            .query_one(
                "SELECT status, stop_kind, queue_reason, auto_resumes, detail, stale_reaped_at,
                        claimant_id, event_seq
                 FROM runs WHERE run_id = $1",
                &[&run_id.0],
            )
            .await
            .expect("run row");
        RunRow {
            status: row.get("status"),
            stop_kind: row.get("stop_kind"),
            queue_reason: row.get("queue_reason"),
            auto_resumes: row.get("auto_resumes"),
            detail: row.get("detail"),
            stale_reaped_at: row.get("stale_reaped_at"),
            claimant_id: row.get("claimant_id"),
            event_seq: row.get("event_seq"),
        }
    }

    /// A run's events, in order.
    pub async fn events(&self, run_id: RunId) -> Vec<Event> {
        self.store
            .events_after(run_id, 0, 1_000)
            .await
            .expect("events")
    }

    /// The names of a run's events, in order.
    pub async fn event_names(&self, run_id: RunId) -> Vec<String> {
        self.events(run_id)
            .await
            .into_iter()
            .map(|e| e.event)
            .collect()
    }

    /// How many events named `event` the run recorded.
    pub async fn event_count(&self, run_id: RunId, event: &str) -> usize {
        self.events(run_id)
            .await
            .iter()
            .filter(|e| e.event == event)
            .count()
    }

    /// The run's last event.
    pub async fn last_event(&self, run_id: RunId) -> Event {
        self.events(run_id).await.pop().expect("an event")
    }

    /// The count a `SELECT count(*) …` statement without parameters returns.
    pub async fn count(&self, sql: &str) -> i64 {
        self.sql
            .query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("count: {sql}: {e}"))
            .get(0)
    }

    /// The holder and epoch of the role `name`, and when its lease runs out, if anyone took it.
    pub async fn leader_row(&self, name: &str) -> Option<(String, i64, DateTime<Utc>)> {
        self.sql
            .query_opt(
                "SELECT holder, epoch, expires_at FROM leader_leases WHERE name = $1",
                &[&name],
            )
            .await
            .expect("leader row")
            .map(|row| (row.get(0), row.get(1), row.get(2)))
    }

    /// Every run's status and event sequence, and every gate's staleness mark: what a sweep
    /// that changes nothing leaves exactly as it was.
    pub async fn snapshot(&self) -> Vec<String> {
        let runs = self
            .sql
            .query(
                "SELECT run_id::text || ' ' || status || ' ' || event_seq FROM runs ORDER BY run_id",
                &[],
            )
            .await
            .expect("runs");
        let gates = self
            .sql
            .query(
                "SELECT gate_id::text || ' ' || coalesce(stale_marked_at::text, '-') FROM gates
                 ORDER BY gate_id",
                &[],
            )
            .await
            .expect("gates");
        let events = self
            .sql
            .query_one("SELECT count(*)::text FROM run_events", &[])
            .await
            .expect("events");
        runs.iter()
            .chain(gates.iter())
            .chain(std::iter::once(&events))
            .map(|row| row.get(0))
            .collect()
    }

    /// How many monthly partitions `run_events` has.
    pub async fn partitions(&self) -> i64 {
        self.sql
            .query_one(
                "SELECT count(*) FROM pg_inherits
                 WHERE inhparent = 'run_events'::regclass
                   AND inhrelid <> 'run_events_default'::regclass",
                &[],
            )
            .await
            .expect("partitions")
            .get(0)
    }

    // Time travel: test-only SQL that moves rows in time.

    /// Moves a held run's lease expiry to `ago` before the database's now.
    pub async fn expire_lease(&self, run_id: RunId, ago: Duration) {
        assert_eq!(self.backdate_run(run_id, "lease_expires_at", ago).await, 1);
    }

    /// Moves a queued run's retry time to `ago` before the database's now.
    pub async fn backdate_retry(&self, run_id: RunId, ago: Duration) {
        self.backdate_run(run_id, "retry_after", ago).await;
    }

    /// Sets the run's time `column` to `ago` before the database's now; returns the rows changed.
    async fn backdate_run(&self, run_id: RunId, column: &str, ago: Duration) -> u64 {
        self.sql
            .execute(
                &format!(
                    "UPDATE runs SET {column} = now() - $2::bigint * interval '1 millisecond'
                     WHERE run_id = $1"
                ),
                &[&run_id.0, &millis(ago)],
            )
            .await
            .unwrap_or_else(|e| panic!("backdate {column}: {e}"))
    }

    /// Moves the role's lease expiry to `ago` before the database's now: its holder froze.
    pub async fn expire_leadership(&self, name: &str, ago: Duration) {
        let n = self
            .sql
            .execute(
                "UPDATE leader_leases SET expires_at = now() - $2::bigint * interval '1 millisecond'
                 WHERE name = $1",
                &[&name, &millis(ago)],
            )
            .await
            .expect("backdate leader lease");
        assert_eq!(n, 1);
    }

    /// Moves every run's lease expiry to `ago` before the database's now: all their holders
    /// froze at once.
    pub async fn expire_all_leases(&self, ago: Duration) {
        self.sql
            .execute(
                "UPDATE runs SET lease_expires_at = now() - $1::bigint * interval '1 millisecond'",
                &[&millis(ago)],
            )
            .await
            .expect("backdate leases");
    }

    /// Sets columns of one run's row, `set` being the `SET` list (`"expired_claims = 4"`), to put
    /// it where a test needs it without walking it there.
    pub async fn update_run(&self, run_id: RunId, set: &str) {
        self.sql
            .execute(
                &format!("UPDATE runs SET {set} WHERE run_id = $1"),
                &[&run_id.0],
            )
            .await
            .unwrap_or_else(|e| panic!("update run: SET {set}: {e}"));
    }

    /// Replaces every stored version of `automation` with a spec no build can read.
    pub async fn corrupt_spec(&self, automation: &AutomationId) {
        self.sql
            .execute(
                "UPDATE automation_versions SET spec = jsonb_build_object('id', $1::text, 'nodes', 7)
                 WHERE automation_id = $1",
                &[&automation.as_str()],
            )
            .await
            .expect("corrupt the spec");
    }
}
