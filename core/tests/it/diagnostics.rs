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

/// The process's metrics, as Prometheus would scrape them: one recorder for this test binary.
fn scraped() -> String {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .expect("the only recorder of this binary")
        })
        .render()
}

/// The value of the sample `series` (name and labels, as exposed), zero when absent.
fn sample(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn failed_calls_are_counted_by_sqlstate_class_and_pool_waits_timed() {
    let before = scraped();
    let (b, _, _) = setup_run("diag").await;
    let url =
        b.db.url()
            .replace(b.db.name(), "leasehold_no_such_database");
    let store = Store::connect_unchecked(&url, 1)
        .expect("pool")
        .named("diagnosed");
    store.ping().await.expect_err("no such database");
    store.ping().await.expect_err("no such database, again");

    let after = scraped();
    // 3D is the class of invalid_catalog_name: each refused connection counted once. Other
    // tests of this binary may fail the same way meanwhile, never fewer.
    let refused = r#"leasehold_db_errors_total{class="3D"}"#;
    assert!(
        sample(&after, refused) - sample(&before, refused) >= 2.0,
        "{after}"
    );
    // Both callers waited on the named pool, and the wait was timed even though it failed.
    assert_eq!(
        sample(
            &after,
            r#"leasehold_db_pool_wait_seconds_count{pool="diagnosed"}"#
        ),
        2.0,
        "{after}"
    );
}
