//! The effects ledger: the test table that the `ledger` node kind of `leasehold-test-worker`
//! writes one row to per attempt, before the attempt does anything. Comparing it with the
//! store's records tells executions that happened from completions that were recorded.
//!
//! The table belongs to the suite, not to the schema: [`create`] makes it after the migrations.

use std::time::SystemTime;

use leasehold_core::ids::RunId;
use tokio_postgres::Client;

// name: create_fault_ledger
// One row per call of the `ledger` kind's handler, identified by an id the call draws, so that
// the call's retried insert lands once. No foreign key: a row must land even if the run it
// names were deleted, and the suite reads it only after the processes stopped.
const CREATE: &str = "\
CREATE TABLE fault_ledger (
    id          bigserial   PRIMARY KEY,
    execution   uuid        NOT NULL UNIQUE,
    run_id      uuid        NOT NULL,
    node_id     text        NOT NULL,
    attempt     integer     NOT NULL,
    epoch       bigint      NOT NULL,
    pid         integer     NOT NULL,
    claimant    text        NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX fault_ledger_run_idx ON fault_ledger (run_id, node_id, attempt)";

// name: ledger_all
// Every execution, in the order they were recorded.
const ALL: &str = "\
SELECT run_id, node_id, attempt, epoch, pid, claimant, started_at
FROM fault_ledger ORDER BY id";

/// One execution of a `ledger` node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Execution {
    /// The run.
    pub run_id: RunId,
    /// The node.
    pub node_id: String,
    /// The attempt number the store gave it.
    pub attempt: i32,
    /// The epoch of the claim it ran under.
    pub epoch: i64,
    /// The worker process that ran it.
    pub pid: i32,
    /// That worker's claimant id.
    pub claimant: String,
    /// When it started, by the database's clock.
    pub started_at: SystemTime,
}

/// Creates the ledger table in a migrated database.
///
/// # Panics
/// If the table cannot be created.
pub async fn create(sql: &Client) {
    sql.batch_execute(CREATE)
        .await
        .expect("create the fault_ledger table");
}

/// Every execution recorded, oldest first.
///
/// # Panics
/// If the table cannot be read.
pub async fn all(sql: &Client) -> Vec<Execution> {
    sql.query(ALL, &[])
        .await
        .expect("read the ledger")
        .iter()
        .map(|row| Execution {
            run_id: RunId(row.get("run_id")),
            node_id: row.get("node_id"),
            attempt: row.get("attempt"),
            epoch: row.get("epoch"),
            pid: row.get("pid"),
            claimant: row.get("claimant"),
            started_at: row.get("started_at"),
        })
        .collect()
}
