//! The invariant checker itself: a clean history passes, and each kind of broken history is
//! reported, naming the run. No processes: runs are moved with the store, as a worker would,
//! and then histories are broken with SQL, as only a bug could.

use std::time::Duration;

use leasehold_core::ids::{ClaimantId, NodeId, RunId, TenantId};
use leasehold_core::spec;
use leasehold_core::store::{ClaimedRun, Store};
use leasehold_fault_tests::{invariants, ledger};
use leasehold_testkit::{TestDb, fixtures};
use serde_json::json;
use tokio_postgres::Client;

const SPEC: &str = "id: checked\nnodes:\n  - {id: a, kind: ledger}\n";
const LEASE: Duration = Duration::from_secs(30);

struct Bundle {
    store: Store,
    sql: Client,
    _db: TestDb,
}

async fn setup() -> Bundle {
    let db = TestDb::new().await;
    let store = Store::connect_unchecked(db.url(), 2).expect("pool");
    store.migrate().await.expect("migrate");
    let (sql, connection) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    // The ledger is a table: the owner's to create; its default privileges give the runtime
    // role its rows.
    let (owner, connection) = tokio_postgres::connect(db.owner_url(), tokio_postgres::NoTls)
        .await
        .expect("connect as the owner");
    tokio::spawn(connection);
    ledger::create(&owner).await;
    let spec = spec::parse_yaml(SPEC).expect("spec");
    store
        .create_automation(&TenantId::default(), &spec)
        .await
        .expect("automation");
    Bundle {
        store,
        sql,
        _db: db,
    }
}

impl Bundle {
    /// Starts a run and claims it for `claimant`; it is the only queued run, so the claim
    /// takes it.
    async fn claimed(&self, claimant: &str) -> ClaimedRun {
        self.store
            .start_run(&fixtures::start_request(
                &TenantId::default(),
                &"checked".into(),
            ))
            .await
            .expect("start");
        let mut claimed = self
            .store
            .claim_runs(&ClaimantId::from(claimant), 1, LEASE)
            .await
            .expect("claim");
        assert_eq!(claimed.len(), 1);
        claimed.remove(0)
    }

    /// Claims a run, runs its node (recording the execution as the ledger kind does) and
    /// completes it, all as the holder.
    async fn completed(&self, claimant: &str) -> RunId {
        let run = self.claimed(claimant).await;
        let node = NodeId::from("a");
        let attempt = self
            .store
            .node_started(&run.claim, &node)
            .await
            .expect("start node");
        self.ledger_row(run.claim.run_id(), attempt, run.claim.epoch().0, claimant)
            .await;
        self.store
            .node_completed(&run.claim, &node, &json!({}))
            .await
            .expect("complete node");
        self.store.complete_run(&run.claim).await.expect("complete");
        run.claim.run_id()
    }

    async fn ledger_row(&self, run: RunId, attempt: u32, epoch: i64, claimant: &str) {
        self.sql
            .execute(
                "INSERT INTO fault_ledger (execution, run_id, node_id, attempt, epoch, pid, claimant)
                 VALUES (gen_random_uuid(), $1, 'a', $2, $3, 1, $4)",
                &[
                    &run.0,
                    &i32::try_from(attempt).expect("attempt"),
                    &epoch,
                    &claimant,
                ],
            )
            .await
            .expect("ledger row");
    }

    /// Appends an event to a run's history the way no statement of the store would.
    async fn forge(&self, run: RunId, event: &str, epoch: i64, claimant: Option<&str>) {
        self.sql
            .execute(
                "WITH bumped AS (
                     UPDATE runs SET event_seq = event_seq + 1 WHERE run_id = $1
                     RETURNING run_id, tenant_id, event_seq)
                 INSERT INTO run_events (run_id, seq, tenant_id, event, epoch, node_id, attempt, metadata)
                 SELECT run_id, event_seq, tenant_id, $2, $3,
                        CASE WHEN $2 LIKE 'node_%' THEN 'a' END,
                        CASE WHEN $2 LIKE 'node_%' THEN 1 END,
                        CASE WHEN $4::text IS NULL THEN '{}'::jsonb
                             ELSE jsonb_build_object('claimant_id', $4::text) END
                 FROM bumped",
                &[&run.0, &event, &epoch, &claimant],
            )
            .await
            .expect("forge an event");
    }
}

fn mentions(list: &[String], run: RunId, phrase: &str) -> bool {
    let run = run.to_string();
    list.iter().any(|f| f.contains(&run) && f.contains(phrase))
}

#[tokio::test]
async fn a_clean_history_passes() {
    let b = setup().await;
    b.completed("worker-a").await;
    let held = b.claimed("worker-b").await;
    b.store
        .node_started(&held.claim, &NodeId::from("a"))
        .await
        .expect("start node");
    let report = invariants::check(&b.sql).await;
    report.assert_holds();
    assert_eq!(report.runs, 2);
    assert_eq!(report.count("completed"), 1);
    assert_eq!(report.count("running"), 1);
    assert_eq!(report.executions, 1);
    assert_eq!(report.completions, 1);
}

#[tokio::test]
async fn broken_histories_are_reported() {
    let b = setup().await;
    let clean = b.completed("worker-a").await;

    // A node completed twice, and a run that changed after it completed.
    let twice = b.completed("worker-a").await;
    b.forge(twice, "node_completed", 1, None).await;

    // A write under an epoch that is not the holder's.
    let stale = b.claimed("worker-a").await.claim.run_id();
    b.forge(stale, "node_started", 7, None).await;

    // A second claim while the first holder still holds the run.
    let doubly = b.claimed("worker-a").await.claim.run_id();
    b.forge(doubly, "run_claimed", 2, Some("worker-b")).await;

    // A run queued without a reason: nobody would know why it waits.
    let lost = b.completed("worker-a").await;
    b.sql
        .execute(
            "UPDATE runs SET status = 'queued', queue_reason = NULL WHERE run_id = $1",
            &[&lost.0],
        )
        .await
        .expect("lose a run");

    // Executions the store never counted, or by a process that did not hold the claim.
    b.ledger_row(clean, 2, 1, "worker-a").await;
    b.ledger_row(clean, 1, 1, "intruder").await;

    let report = invariants::check(&b.sql).await;
    assert!(!report.holds());
    assert!(
        mentions(&report.double_completed, twice, "2 completions"),
        "{report}"
    );
    let v = &report.violations;
    assert!(mentions(v, twice, "after the run ended"), "{report}");
    assert!(mentions(v, stale, "stale epoch"), "{report}");
    assert!(mentions(v, doubly, "while"), "{report}");
    assert!(
        mentions(&report.lost, lost, "queued without a reason"),
        "{report}"
    );
    assert!(
        mentions(v, clean, "no node_started event counted"),
        "{report}"
    );
    assert!(mentions(v, clean, "not the executing process"), "{report}");
    assert!(mentions(v, clean, "executed 3 times"), "{report}");
}
