//! `leasehold migrate` building an index on a big `runs` table while workers hold leases.

use std::fs;
use std::time::Instant;

use leasehold_core::ids::TenantId;
use leasehold_testkit::TestDb;
use tokio_postgres::NoTls;

use super::{Proc, all_complete, log_dir, migrate, sleeper, start_runs, worker_args};

/// Release N's schema for the workers: this build without V9 (the index) and V10.
const RELEASE_N: i32 = 8;
/// Finished runs the index is built over.
const BULK_RUNS: i64 = 1_000_000;

// Finished runs of another tenant, inserted in key order (ordered ids, created_at descending
// like runs_automation_idx) so that filling the table takes seconds, not minutes. One in ten has
// a concurrency key: the rows V9's partial index holds.
const FILL: &str = "\
SET synchronous_commit = off;
INSERT INTO automations (tenant_id, automation_id, current_version) VALUES ('bulk', 'bulk', 1);
INSERT INTO automation_versions (tenant_id, automation_id, version, spec, spec_hash)
VALUES ('bulk', 'bulk', 1, '{}', '\\x00');
INSERT INTO runs (run_id, tenant_id, automation_id, automation_version, trigger, status,
                  concurrency_key, created_at, finished_at)
SELECT lpad(to_hex(i), 32, '0')::uuid, 'bulk', 'bulk', 1, 'api', 'completed',
       CASE WHEN i % 10 = 0 THEN 'key-' || (i % 100) END,
       now() - i * interval '1 second', now() - i * interval '1 second'
FROM generate_series(1, 1000000) i;
ANALYZE runs";

/// V9 builds its index concurrently over a million runs, and V10 drops a constraint of the same
/// table, while two workers of release N run runs on 5-second leases: no worker fences itself
/// (their logs say nothing of it, and no run records an expired claim), and every run completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_built_over_a_million_runs_stalls_no_lease() {
    let test_started = Instant::now();
    let dir = log_dir("online-index");
    let db = TestDb::empty().await;
    migrate(&db, Some(RELEASE_N));
    let (sql, connection) = tokio_postgres::connect(db.owner_url(), NoTls)
        .await
        .expect("connect as the owner");
    tokio::spawn(connection);
    let filling = Instant::now();
    sql.batch_execute(FILL).await.expect("a million runs");
    let filled_in = filling.elapsed();
    let count: i64 = sql
        .query_one("SELECT count(*) FROM runs WHERE tenant_id = 'bulk'", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(count, BULK_RUNS);

    let (store, automation) = sleeper(&db, 100).await;
    let workers: Vec<Proc> = ["worker-a", "worker-b"]
        .into_iter()
        .map(|name| {
            let args = worker_args(name, "5s");
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Proc::start(&dir, name, &args, db.url(), Some(RELEASE_N))
        })
        .collect();
    let mut runs = start_runs(&store, &automation, 30).await;

    // The migration runs on a thread of its own while runs keep starting.
    let migrating = tokio::task::spawn_blocking({
        let owner_url = db.owner_url().to_owned();
        move || {
            let started = Instant::now();
            let output = std::process::Command::new(env!("CARGO_BIN_EXE_leasehold"))
                .args(["migrate"])
                .env("LEASEHOLD_DATABASE_URL", owner_url)
                .output()
                .expect("run leasehold migrate");
            (output, started.elapsed())
        }
    });
    // Load throughout: a few runs at a time, each batch once the last has completed.
    while !migrating.is_finished() {
        let batch = start_runs(&store, &automation, 4).await;
        all_complete(&store, &batch).await;
        runs.extend(batch);
    }
    let (output, migrated_in) = migrating.await.expect("migrate thread");
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(
        said.contains("applied V9__runs_concurrency_key_index")
            && said.contains("applied V10__drop_v1_idempotency_constraint"),
        "{said}"
    );
    runs.extend(start_runs(&store, &automation, 10).await);
    all_complete(&store, &runs).await;

    let tenant = TenantId::default();
    for id in &runs {
        let run = store.run(&tenant, *id).await.expect("run");
        assert_eq!(run.expired_claims, 0, "run {id} lost a lease");
    }
    let valid: bool = sql
        .query_one(
            "SELECT indisvalid FROM pg_index
             WHERE indexrelid = 'runs_concurrency_key_idx'::regclass",
            &[],
        )
        .await
        .expect("the index")
        .get(0);
    assert!(valid);
    for worker in workers {
        let log = worker.log();
        assert!(!log.contains("self-fence"), "{log}");
        worker.stop().await;
    }
    fs::remove_dir_all(&dir).expect("remove the logs");
    eprintln!(
        "online index: {} runs over the million while migrating; fill {filled_in:?}, migrate \
         {migrated_in:?} ({}), whole test {:?}",
        runs.len(),
        said.lines()
            .filter(|l| l.starts_with("applied"))
            .collect::<Vec<_>>()
            .join("; "),
        test_started.elapsed()
    );
}
