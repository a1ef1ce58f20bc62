//! What the store tells an operator: PostgreSQL's own words in errors, and sessions that say
//! whose they are and cannot hold a lock for ever.

use std::time::Duration;

use leasehold_core::store::{Error, Store};
use leasehold_testkit::fixtures::{OPERATOR, setup_run};

#[tokio::test]
async fn an_error_carries_what_postgresql_said() {
    let (b, _, _) = setup_run("diag").await;
    let missing = format!("{}_missing", b.db.name());
    let url = b.db.url().replace(b.db.name(), &missing);
    let store = Store::connect_unchecked(&url, 1).expect("pool");
    let refused = store.ping().await.expect_err("no such database");
    let said = refused.to_string();
    // SQLSTATE 3D000 is invalid_catalog_name: the database does not exist.
    assert!(said.contains("3D000"), "{said}");
    assert!(
        said.contains(&missing) && said.contains("does not exist"),
        "{said}"
    );
}

#[tokio::test]
async fn sessions_are_named_and_their_statements_bounded() {
    let (b, _, run_id) = setup_run("diag").await;
    let store = b
        .store
        .with_session("leasehold-diagnostics-test", Duration::from_millis(300))
        .expect("store");
    store.ping().await.expect("ping");
    let named = b
        .count(
            "SELECT count(*) FROM pg_stat_activity
             WHERE application_name = 'leasehold-diagnostics-test' AND datname = current_database()",
        )
        .await;
    assert!(named >= 1, "the store's session is named");

    // Another session holds the run's row; the cancel waits on it until its bound.
    b.sql
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM runs WHERE run_id = '{run_id}' FOR UPDATE"
        ))
        .await
        .expect("lock the run");
    let stuck = store
        .cancel_run(&b.tenant, run_id, "diagnostics", OPERATOR, None)
        .await
        .expect_err("the statement is bounded");
    b.sql.batch_execute("ROLLBACK").await.expect("unlock");
    let said = stuck.to_string();
    // SQLSTATE 57014 is query_canceled, here by the statement timeout.
    assert!(
        said.contains("57014") && said.contains("statement timeout"),
        "{said}"
    );
    let transient = match &stuck {
        leasehold_core::store::RequestError::Store(e) => e.is_transient(),
        other => panic!("a store failure, not {other:?}"),
    };
    assert!(transient, "a timed-out statement may be tried again");
    assert!(matches!(
        stuck,
        leasehold_core::store::RequestError::Store(Error::Db(_))
    ));
}
