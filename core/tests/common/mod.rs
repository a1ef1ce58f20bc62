//! Shared setup for the store tests: a fresh, migrated database per test, fixtures, and time
//! travel by backdating rows (never by sleeping).
#![allow(dead_code)] // Each test binary uses its own subset of these helpers.

use std::time::Duration;

use leasehold_core::ids::{AutomationId, ClaimantId, RunId, TenantId};
use leasehold_core::spec::{self, Spec};
use leasehold_core::store::{ClaimedRun, StartRun, Store, Trigger};
use leasehold_testkit::TestDb;
use tokio_postgres::NoTls;

/// Long enough never to expire by itself during a test.
pub const LEASE: Duration = Duration::from_secs(60);

/// What every store test starts from.
pub struct Bundle {
    pub store: Store,
    /// A direct connection for fixtures and for moving rows in time.
    pub sql: tokio_postgres::Client,
    pub tenant: TenantId,
    pub db: TestDb,
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

pub fn spec(yaml: &str) -> Spec {
    spec::parse_yaml(yaml).expect("test spec is valid")
}

/// a → {b, c} → d, all `noop`.
pub fn diamond(id: &str) -> Spec {
    spec(&format!(
        "id: {id}
nodes:
  - {{id: a, kind: noop}}
  - {{id: b, kind: noop, depends_on: [a]}}
  - {{id: c, kind: noop, depends_on: [a]}}
  - {{id: d, kind: noop, depends_on: [b, c]}}
"
    ))
}

impl Bundle {
    pub async fn automation(&self, id: &str) -> AutomationId {
        self.store
            .create_automation(&self.tenant, &diamond(id))
            .await
            .expect("create automation");
        AutomationId::from(id)
    }

    pub fn start_request(&self, automation: &AutomationId) -> StartRun {
        StartRun {
            tenant: self.tenant.clone(),
            automation_id: automation.clone(),
            inputs: serde_json::json!({}),
            priority: 0,
            concurrency_key: None,
            idempotency_key: None,
            trigger: Trigger::Api,
        }
    }

    pub async fn start(&self, automation: &AutomationId) -> RunId {
        self.store
            .start_run(&self.start_request(automation))
            .await
            .expect("start run")
            .run_id
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

    /// Moves a queued run's retry time to `ago` before the database's now.
    pub async fn backdate_retry(&self, run_id: RunId, ago: Duration) {
        let ms = i64::try_from(ago.as_millis()).expect("small");
        self.sql
            .execute(
                "UPDATE runs SET retry_after = now() - $2::bigint * interval '1 millisecond'
                 WHERE run_id = $1",
                &[&run_id.0, &ms],
            )
            .await
            .expect("backdate retry");
    }

    /// The names of a run's events, in order.
    pub async fn event_names(&self, run_id: RunId) -> Vec<String> {
        self.store
            .events_after(run_id, 0, 1_000)
            .await
            .expect("events")
            .into_iter()
            .map(|e| e.event)
            .collect()
    }
}
