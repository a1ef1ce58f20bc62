//! The harness against a real server: the throwaway cluster, or the one
//! `LEASEHOLD_TEST_DATABASE_URL` names.

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use leasehold_testkit::{TestDb, admin_url, wait_for};
use tokio_postgres::{Client, NoTls};

async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(connection);
    client
}

async fn database_exists(name: &str) -> bool {
    let admin = connect(admin_url()).await;
    let row = admin
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = $1",
            &[&name],
        )
        .await
        .expect("query pg_database");
    row.get::<_, i64>(0) == 1
}

#[tokio::test]
async fn two_test_dbs_get_distinct_names_and_both_accept_connections() {
    let (a, b) = (TestDb::new().await, TestDb::new().await);

    assert_ne!(a.name(), b.name());
    for db in [&a, &b] {
        assert!(db.name().starts_with("leasehold_test_"), "{}", db.name());
        let client = connect(db.url()).await;
        let row = client
            .query_one("SELECT current_database()", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), db.name());
    }
}

#[tokio::test]
async fn dropping_a_test_db_removes_it_and_ends_open_connections() {
    let db = TestDb::new().await;
    let name = db.name().to_owned();
    let left_open = connect(db.url()).await;
    assert!(database_exists(&name).await);

    drop(db);

    assert!(!database_exists(&name).await);
    assert!(left_open.simple_query("SELECT 1").await.is_err());
}

#[test]
fn a_test_db_is_kept_when_its_test_panics() {
    let (sender, receiver) = mpsc::channel();
    let failed_test = thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let db = TestDb::new().await;
            sender.send(db.name().to_owned()).unwrap();
            panic!("a simulated test failure");
        });
    });
    assert!(failed_test.join().is_err());
    let name = receiver.recv().unwrap();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        assert!(database_exists(&name).await);
        let admin = connect(admin_url()).await;
        admin
            .batch_execute(&format!("DROP DATABASE \"{name}\" WITH (FORCE)"))
            .await
            .unwrap();
    });
}

#[tokio::test]
async fn wait_for_returns_the_first_some() {
    let mut calls = 0;
    let value = wait_for(Duration::from_secs(5), "the third call", || {
        calls += 1;
        let ready = (calls == 3).then_some(calls * 10);
        async move { ready }
    })
    .await;

    assert_eq!(value, 30);
}

#[tokio::test]
async fn wait_for_panics_after_its_deadline_naming_what_it_awaited() {
    let waiting = tokio::spawn(wait_for(
        Duration::from_millis(50),
        "the moon to turn blue",
        || async { None::<()> },
    ));

    let panic = waiting.await.unwrap_err().into_panic();
    let message = panic
        .downcast_ref::<String>()
        .expect("a formatted panic message");
    assert!(message.contains("the moon to turn blue"), "{message}");
    assert!(message.contains("50ms"), "{message}");
}
