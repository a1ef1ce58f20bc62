//! Shared setup for the sweep tests: a fresh, migrated database per test, fixtures, and time
//! travel by backdating rows (never by sleeping).
#![allow(dead_code)] // Not every test uses every helper.

use std::time::Duration;

use chrono::{DateTime, Utc};
use leasehold_coordinator::sweeps::{self, Config};
use leasehold_core::ids::{AutomationId, ClaimantId, NodeId, RunId, TenantId};
use leasehold_core::spec;
use leasehold_core::store::{ClaimedRun, Event, Leadership, StartRun, Store, Trigger};
use leasehold_testkit::TestDb;
use tokio_postgres::NoTls;

/// A run lease long enough never to expire by itself during a test.
pub const LEASE: Duration = Duration::from_secs(60);
/// A leader lease long enough never to expire by itself during a test.
pub const LEADER_LEASE: Duration = Duration::from_secs(60);

/// What every sweep test starts from.
pub struct Bundle {
    pub store: Store,
    /// A direct connection for fixtures and for moving rows in time.
    pub sql: tokio_postgres::Client,
    pub tenant: TenantId,
    pub db: TestDb,
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

pub async fn setup() -> Bundle {
    let db = TestDb::new().await;
    let store = Store::connect_unchecked(db.url(), 16).expect("pool");
    store.migrate().await.expect("migrate");
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

/// The default sweep settings, checked.
pub fn config() -> Config {
    Config::default().validated().expect("valid config")
}

pub fn ms(n: i64) -> chrono::TimeDelta {
    chrono::TimeDelta::milliseconds(n)
}

impl Bundle {
    /// Stores an automation from YAML.
    pub async fn automation(&self, yaml: &str) -> AutomationId {
        let spec = spec::parse_yaml(yaml).expect("test spec is valid");
        self.store
            .create_automation(&self.tenant, &spec)
            .await
            .expect("create automation");
        spec.id
    }

    /// a → {b, c} → d, all `noop`, three attempts each.
    pub async fn diamond(&self, id: &str) -> AutomationId {
        self.automation(&format!(
            "id: {id}
nodes:
  - {{id: a, kind: noop}}
  - {{id: b, kind: noop, depends_on: [a]}}
  - {{id: c, kind: noop, depends_on: [a]}}
  - {{id: d, kind: noop, depends_on: [b, c]}}
"
        ))
        .await
    }

    pub async fn start(&self, automation: &AutomationId) -> RunId {
        self.store
            .start_run(&StartRun {
                tenant: self.tenant.clone(),
                automation_id: automation.clone(),
                inputs: serde_json::json!({}),
                priority: 0,
                concurrency_key: None,
                idempotency_key: None,
                trigger: Trigger::Api,
            })
            .await
            .expect("start run")
            .run_id
    }

    /// Claims exactly one run, asserting that one was due.
    pub async fn claim_one(&self, claimant: &str) -> ClaimedRun {
        let mut claimed = self
            .store
            .claim_runs(&ClaimantId::from(claimant), 1, LEASE)
            .await
            .expect("claim");
        assert_eq!(claimed.len(), 1, "one run was due for {claimant}");
        claimed.remove(0)
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
            .node_started(&claimed.claim, &NodeId::from("a"))
            .await
            .expect("start node a");
        claimed
    }

    /// Moves a held run's lease expiry to `ago` before the database's now.
    pub async fn expire_lease(&self, run_id: RunId, ago: Duration) {
        let ms = i64::try_from(ago.as_millis()).expect("small");
        let n = self
            .sql
            .execute(
                "UPDATE runs SET lease_expires_at = now() - $2::bigint * interval '1 millisecond'
                 WHERE run_id = $1",
                &[&run_id.0, &ms],
            )
            .await
            .expect("backdate lease");
        assert_eq!(n, 1);
    }

    /// When a held run's lease runs out.
    pub async fn lease_expiry(&self, run_id: RunId) -> DateTime<Utc> {
        self.store
            .run(&self.tenant, run_id)
            .await
            .expect("run")
            .lease_expires_at
            .expect("held")
    }

    /// Takes the default role for `holder`, asserting that it was free.
    pub async fn leader(&self, holder: &str) -> Leadership {
        self.leader_of(sweeps::LEADER_NAME_DEFAULT, holder).await
    }

    /// Takes the role `name` for `holder`, asserting that it was free.
    pub async fn leader_of(&self, name: &str, holder: &str) -> Leadership {
        self.store
            .try_acquire_leadership(name, holder, LEADER_LEASE)
            .await
            .expect("acquire leadership")
            .expect("role is free")
    }

    /// Moves the role's lease expiry to `ago` before the database's now: its holder froze.
    pub async fn expire_leadership(&self, name: &str, ago: Duration) {
        let ms = i64::try_from(ago.as_millis()).expect("small");
        let n = self
            .sql
            .execute(
                "UPDATE leader_leases SET expires_at = now() - $2::bigint * interval '1 millisecond'
                 WHERE name = $1",
                &[&name, &ms],
            )
            .await
            .expect("backdate leader lease");
        assert_eq!(n, 1);
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

    pub async fn events(&self, run_id: RunId) -> Vec<Event> {
        self.store
            .events_after(run_id, 0, 1_000)
            .await
            .expect("events")
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
}
