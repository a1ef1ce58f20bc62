//! The schema: migrating, the compatibility floor, online steps, and the runtime role.

use std::time::Duration;

use leasehold_core::store::{self, Error, Served, Step, Store};
use leasehold_testkit::fixtures::{diamond, setup};
use leasehold_testkit::{RUNTIME_ROLE, TestDb, wait_for};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(connection);
    client
}

fn owner(db: &TestDb) -> Store {
    Store::connect_unchecked(db.owner_url(), 2).expect("pool")
}

async fn floor(client: &Client) -> i32 {
    client
        .query_one("SELECT floor FROM leasehold_schema_floor", &[])
        .await
        .expect("floor")
        .get(0)
}

#[tokio::test]
async fn migrating_an_empty_database() {
    let db = TestDb::empty().await;
    let store = owner(&db);
    let newest = store::newest_version().expect("migrations");
    let before = store.schema_status().await.expect("status");
    assert_eq!((before.database_version, before.floor), (0, 0));
    assert_eq!(before.known_version, newest);
    assert_eq!(
        before.pending.len(),
        store::migrations().expect("parse").len()
    );
    assert!(matches!(
        Store::connect(db.owner_url(), 2).await,
        Err(Error::SchemaBehind { database: 0, .. })
    ));

    let applied = store.migrate().await.expect("migrate");
    let versions = |m: &[store::Migration]| m.iter().map(|m| m.version).collect::<Vec<_>>();
    assert_eq!(
        applied
            .iter()
            .map(|a| a.migration.version)
            .collect::<Vec<_>>(),
        versions(&before.pending)
    );
    assert!(
        store.migrate().await.expect("again").is_empty(),
        "nothing left to apply"
    );
    let after = store.schema_status().await.expect("status");
    assert_eq!(after.database_version, newest);
    assert_eq!(after.floor, 2, "V10 is a contract step to floor 2");
    assert!(after.pending.is_empty());
    Store::connect(db.owner_url(), 2)
        .await
        .expect("a migrated database is served");
}

/// A release keeps serving a database that a later release migrated further with expand steps,
/// and refuses only once a contract step raised the floor above the schema it knows, saying
/// both numbers and what to do.
#[tokio::test]
async fn a_build_below_the_floor_is_refused_and_newer_expand_steps_are_served() {
    let db = TestDb::new().await;
    let sql = connect(db.owner_url()).await;
    let known = store::known_version().expect("known");
    sql.execute(
        "INSERT INTO refinery_schema_history (version, name, applied_on, checksum)
         VALUES ($1, 'a_later_expand_step', '2030-01-01T00:00:00Z', '0')",
        &[&(known + 1)],
    )
    .await
    .expect("fake a later release's expand step");
    Store::connect(db.url(), 2)
        .await
        .expect("a later expand step leaves the floor alone");
    assert!(
        owner(&db)
            .migrate()
            .await
            .expect("nothing to do")
            .is_empty()
    );

    sql.execute(
        "UPDATE leasehold_schema_floor SET floor = $1",
        &[&(known + 1)],
    )
    .await
    .expect("a later release's contract step");
    let refused = Store::connect(db.url(), 2).await.err().expect("refused");
    assert!(
        matches!(refused, Error::SchemaTooNew { floor, known: k, .. } if floor == known + 1 && k == known),
        "{refused:?}"
    );
    let message = refused.to_string();
    for says in [
        format!("schema {} or later", known + 1),
        format!("knows schema {known}"),
        "upgrade this binary".to_owned(),
    ] {
        assert!(message.contains(&says), "{message}");
    }
    assert!(matches!(
        owner(&db).migrate().await,
        Err(Error::SchemaTooNew { .. })
    ));
}

/// Release N (schema 9) keeps running on its schema, V1's idempotency constraint included; the
/// contract step V10 raises the floor to 2 before dropping it, after which a V1 build's start
/// would fail: the floor is what keeps such a build from starting.
#[tokio::test]
async fn the_contract_step_raises_the_floor_before_dropping_what_v1_needs() {
    let db = TestDb::empty().await;
    let store = owner(&db);
    let applied = store.migrate_to(9, |_| {}).await.expect("release N");
    assert_eq!(applied.last().map(|a| a.migration.version), Some(9));
    store.grant_runtime_role(RUNTIME_ROLE).await.expect("grant");
    let sql = connect(db.url()).await;
    assert_eq!(floor(&sql).await, 1);
    let runtime = Store::connect_unchecked(db.url(), 2).expect("pool");
    let tenant = leasehold_core::ids::TenantId::default();
    runtime
        .create_automation(&tenant, &diamond("hello"))
        .await
        .expect("automation");
    let v1_start = "INSERT INTO runs (run_id, tenant_id, automation_id, automation_version,
                                      trigger, idempotency_key, status, event_seq)
                    VALUES (gen_random_uuid(), $1, 'hello', 1, 'api', $2, 'queued', 1)
                    ON CONFLICT (tenant_id, idempotency_key) DO NOTHING";
    let started = sql
        .execute(v1_start, &[&tenant.as_str(), &"same-key"])
        .await
        .expect("V1's start plans on schema 9");
    assert_eq!(started, 1);

    let contract = store.migrate_to(10, |_| {}).await.expect("release N+1");
    assert_eq!(contract.len(), 1);
    assert_eq!(contract[0].migration.step, Step::Contract { floor: 2 });
    assert_eq!(floor(&sql).await, 2);
    let broken = sql
        .execute(v1_start, &[&tenant.as_str(), &"same-key"])
        .await
        .expect_err("no constraint matches V1's conflict target any more");
    assert_eq!(broken.code(), Some(&SqlState::INVALID_COLUMN_REFERENCE));
    assert!(matches!(
        store.migrate_to(1, |_| {}).await,
        Err(Error::SchemaTooNew {
            floor: 2,
            known: 1,
            ..
        })
    ));
}

/// The role coordinators and workers run as reads and writes rows, and changes nothing else.
#[tokio::test]
async fn the_runtime_role_writes_rows_but_cannot_change_the_schema_or_its_bookkeeping() {
    let b = setup().await;
    for ddl in [
        "CREATE TABLE intruder (id int)",
        "ALTER TABLE runs ADD COLUMN intruder int",
        "DROP TABLE runs",
        "CREATE INDEX intruder ON runs (tenant_id)",
        "UPDATE leasehold_schema_floor SET floor = 1",
        "DELETE FROM refinery_schema_history",
        "TRUNCATE run_events",
    ] {
        let refused = b.sql.batch_execute(ddl).await.expect_err(ddl);
        assert_eq!(
            refused.code(),
            Some(&SqlState::INSUFFICIENT_PRIVILEGE),
            "{ddl}: {refused:?}"
        );
    }
    b.sql
        .batch_execute("UPDATE runs SET priority = priority WHERE false")
        .await
        .expect("rows are the runtime role's to write");
    b.store
        .check_queries()
        .await
        .expect("every named query prepares as the runtime role");

    let owner_sql = connect(b.db.owner_url()).await;
    let migrator: String = owner_sql
        .query_one("SELECT current_user::text", &[])
        .await
        .expect("who")
        .get(0);
    let owner = owner(&b.db);
    for (role, says) in [
        ("no_such_role_here", "does not exist"),
        (migrator.as_str(), "the role that migrates"),
    ] {
        let refused = owner.grant_runtime_role(role).await.expect_err("refused");
        assert!(refused.to_string().contains(says), "{refused}");
    }
}

/// A concurrent index build that failed leaves an invalid index of its name; the runner drops it
/// and builds it again instead of skipping it for IF NOT EXISTS.
#[tokio::test]
async fn an_invalid_index_left_by_a_failed_build_is_dropped_and_built() {
    let db = TestDb::empty().await;
    let store = owner(&db);
    store.migrate_to(8, |_| {}).await.expect("up to V8");
    let sql = connect(db.owner_url()).await;
    sql.batch_execute(
        "INSERT INTO automations (tenant_id, automation_id, current_version) VALUES ('t', 'a', 1);
         INSERT INTO automation_versions (tenant_id, automation_id, version, spec, spec_hash)
         VALUES ('t', 'a', 1, '{}', '\\x00');
         INSERT INTO runs (run_id, tenant_id, automation_id, automation_version, trigger, status)
         SELECT gen_random_uuid(), 't', 'a', 1, 'api', 'completed' FROM generate_series(1, 2);",
    )
    .await
    .expect("two runs of one tenant");
    let failed = sql
        .batch_execute(
            "CREATE UNIQUE INDEX CONCURRENTLY runs_concurrency_key_idx ON runs (tenant_id)",
        )
        .await;
    assert!(failed.is_err(), "the duplicate tenant fails the build");
    let index_state = "SELECT indisvalid, pg_get_indexdef(indexrelid) FROM pg_index
                       WHERE indexrelid = to_regclass('runs_concurrency_key_idx')";
    let before = sql.query_one(index_state, &[]).await.expect("left behind");
    assert!(
        !before.get::<_, bool>(0),
        "a failed build leaves an invalid index"
    );

    store.migrate_to(9, |_| {}).await.expect("V9");
    let after = sql.query_one(index_state, &[]).await.expect("built");
    assert!(after.get::<_, bool>(0), "valid");
    assert!(
        after.get::<_, String>(1).contains("concurrency_key"),
        "{}",
        after.get::<_, String>(1)
    );
}

/// A statement that cannot have its lock within the lock timeout gives up, so that the
/// statements queued behind it go on, and is tried again until the lock is free.
#[tokio::test]
async fn a_step_gives_up_a_lock_it_cannot_have_and_tries_again() {
    let db = TestDb::empty().await;
    let store = owner(&db);
    store.migrate_to(9, |_| {}).await.expect("up to V9");
    let holder = connect(db.owner_url()).await;
    holder
        .batch_execute("BEGIN; LOCK TABLE runs IN ROW EXCLUSIVE MODE")
        .await
        .expect("a long transaction writing runs");
    let migrating = tokio::spawn({
        let store = store.clone();
        async move { store.migrate_to(10, |_| {}).await }
    });
    let watcher = connect(db.owner_url()).await;
    let waiting = "SELECT count(*) FROM pg_locks
                   WHERE relation = 'runs'::regclass AND mode = 'AccessExclusiveLock'
                     AND NOT granted";
    let waiters = || async {
        watcher
            .query_one(waiting, &[])
            .await
            .expect("pg_locks")
            .get::<_, i64>(0)
    };
    // Waits for the lock, gives up at the lock timeout (the queue behind it moves), then asks
    // again.
    for (waiters_now, what) in [
        (1, "the contract step waiting for its lock"),
        (0, "the step giving up at the lock timeout"),
        (1, "the step asking again"),
    ] {
        wait_for(Duration::from_secs(10), what, || async {
            (waiters().await == waiters_now).then_some(())
        })
        .await;
    }
    holder.batch_execute("COMMIT").await.expect("release");
    let applied = migrating
        .await
        .expect("task")
        .expect("applied once the lock was free");
    assert_eq!(applied.len(), 1);
    assert!(applied[0].lock_retries >= 1, "{applied:?}");
    assert_eq!(floor(&watcher).await, 2);
}

/// V13 records the nodes a fresh run starts first for the versions stored before it, exactly as
/// a version stored after it records them; a store made while the database was below 13 keeps
/// the claim that starts nothing, and one made after starts them.
#[tokio::test]
async fn v13_backfills_each_versions_start_nodes_from_its_spec() {
    let db = TestDb::empty().await;
    let store = owner(&db);
    store.migrate_to(12, |_| {}).await.expect("up to V12");
    store.grant_runtime_role(RUNTIME_ROLE).await.expect("grant");
    let tenant = leasehold_core::ids::TenantId::default();
    let before = Store::connect_unchecked(db.url(), 2).expect("pool");
    let specs = [
        diamond("hello"),
        leasehold_testkit::fixtures::gated("gated"),
        leasehold_testkit::fixtures::spec(
            "id: gates
nodes:
  - {id: ask, kind: approval}
  - {id: z, kind: noop}
  - {id: ship, kind: noop, approval: {prompt: Ship it?}}
  - {id: a, kind: noop}
",
        ),
    ];
    for spec in &specs {
        before
            .create_automation(&tenant, spec)
            .await
            .expect("store");
    }
    let request = leasehold_testkit::fixtures::start_request(&tenant, &specs[0].id);
    let first = before.start_run(&request).await.expect("start").run_id;
    let second = before.start_run(&request).await.expect("start").run_id;

    store.migrate_to(13, |_| {}).await.expect("V13");
    let sql = connect(db.url()).await;
    for spec in &specs {
        let stored: Option<Vec<String>> = sql
            .query_one(
                "SELECT start_nodes FROM automation_versions WHERE automation_id = $1",
                &[&spec.id.as_str()],
            )
            .await
            .expect("version")
            .get(0);
        let expected: Vec<String> = spec.start_nodes().map(|n| n.as_str().to_owned()).collect();
        assert_eq!(stored, Some(expected), "{}", spec.id);
    }

    // The store made below 13 still claims as before; a new one starts the run's first node.
    let claimant = leasehold_core::ids::ClaimantId::from("w");
    let lease = Duration::from_secs(60);
    let claimed = before
        .claim_and_start_runs(&claimant, 1, lease, 4, &Served::default_queue())
        .await
        .expect("claim below 13");
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].claim.run_id(), first);
    assert!(claimed[0].started.is_empty());
    let after = Store::connect_unchecked(db.url(), 2).expect("pool");
    let claimed = after
        .claim_and_start_runs(&claimant, 1, lease, 4, &Served::default_queue())
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].claim.run_id(), second);
    let started: Vec<&str> = claimed[0]
        .started
        .iter()
        .map(|s| s.node_id.as_str())
        .collect();
    assert_eq!(started, ["a"]);
}
