//! Run counts: Stats of finished runs from the counts the triggers keep, equal to a full count
//! before the first count, after it, between folds, and with runs moving while the first count
//! is taken.

use std::collections::BTreeMap;
use std::time::Duration;

use leasehold_coordinator::sweeps::{self, Counts, CountsOutcome};
use leasehold_core::ids::RunId;
use leasehold_testkit::fixtures::Bundle;

use super::{lead, pass, setup_leading};

/// Every status's runs of the bundle's tenant, by a full count (zeros left out).
async fn full_count(b: &Bundle, queue: Option<&str>) -> BTreeMap<String, i64> {
    b.sql
        .query(
            "SELECT status, count(*) FROM runs
             WHERE tenant_id = $1 AND ($2::text IS NULL OR queue = $2) GROUP BY status",
            &[&b.tenant.as_str(), &queue],
        )
        .await
        .expect("count")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

/// Stats's counts, zeros left out.
async fn stats_count(b: &Bundle, queue: Option<&str>) -> BTreeMap<String, i64> {
    b.store
        .stats(&b.tenant, queue)
        .await
        .expect("stats")
        .runs_by_status
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect()
}

async fn assert_counts_match(b: &Bundle, when: &str) {
    for queue in [None, Some("default"), Some("other")] {
        assert_eq!(
            stats_count(b, queue).await,
            full_count(b, queue).await,
            "{when}, queue {queue:?}"
        );
    }
}

async fn deltas(b: &Bundle) -> i64 {
    b.count("SELECT count(*) FROM run_status_deltas").await
}

/// Completes `run_id` as its worker would.
async fn complete(b: &Bundle, run_id: RunId) {
    b.sql
        .execute(
            "UPDATE runs SET status = 'completed', finished_at = now(), queue_reason = NULL
             WHERE run_id = $1",
            &[&run_id.0],
        )
        .await
        .expect("complete");
}

#[tokio::test]
async fn stats_of_finished_runs_come_from_the_counts_and_match_a_full_count() {
    let (b, leader, automation) = setup_leading("counted").await;
    let runs = b.start_many(&automation, 12).await;
    for &run_id in &runs[..4] {
        complete(&b, run_id).await;
    }
    b.cancel(runs[4], "not needed").await;
    b.sql
        .execute(
            "UPDATE runs SET queue = 'other' WHERE run_id = ANY($1)",
            &[&vec![runs[0].0, runs[11].0]],
        )
        .await
        .expect("another queue");
    // Before the first count, Stats counts every run.
    assert_counts_match(&b, "before the first count").await;

    let first = pass(&b, Counts, &leader, None).await;
    assert_eq!(
        first,
        CountsOutcome {
            baselined: 1,
            deltas_folded: 0
        }
    );
    assert_eq!(deltas(&b).await, 0, "the moves it counted are dropped");
    assert_counts_match(&b, "after the first count").await;

    // Moves in both directions, read unfolded.
    for &run_id in &runs[5..8] {
        complete(&b, run_id).await;
    }
    b.sql
        .execute(
            "UPDATE runs SET status = 'failed', stop_kind = 'node_failed', finished_at = now(),
                             queue_reason = NULL
             WHERE run_id = $1",
            &[&runs[8].0],
        )
        .await
        .expect("fail");
    b.store
        .recover_run(&b.tenant, runs[8], "again", "ops", None)
        .await
        .expect("recover");
    b.sql
        .execute("DELETE FROM runs WHERE run_id = $1", &[&runs[1].0])
        .await
        .expect("delete a finished run");
    assert_eq!(deltas(&b).await, 3 + 2 + 1);
    assert_counts_match(&b, "with moves not folded").await;

    let folded = pass(&b, Counts, &leader, None).await;
    assert_eq!(
        folded,
        CountsOutcome {
            baselined: 0,
            deltas_folded: 6
        }
    );
    assert_eq!(deltas(&b).await, 0);
    assert_counts_match(&b, "after a fold").await;
    assert_eq!(
        pass(&b, Counts, &leader, None).await,
        CountsOutcome::default()
    );
}

#[tokio::test]
async fn runs_finishing_while_they_are_first_counted_are_counted_once() {
    let (b, leader, automation) = setup_leading("racing").await;
    let runs = b.start_many(&automation, 300).await;
    let mover = {
        let sql_url = b.db.url().to_owned();
        let tenant = b.tenant.clone();
        tokio::spawn(async move {
            let store = leasehold_core::store::Store::connect_unchecked(&sql_url, 2).expect("pool");
            for run_id in runs {
                store
                    .cancel_run(&tenant, run_id, "racing", "test", None)
                    .await
                    .expect("cancel");
            }
        })
    };
    // The first count lands among the cancels: some are done, most are not.
    leasehold_testkit::wait_for(Duration::from_secs(20), "the first cancels", async || {
        (b.count("SELECT count(*) FROM runs WHERE status = 'cancelled'")
            .await
            >= 20)
            .then_some(())
    })
    .await;
    let mut baselined = false;
    while !baselined {
        baselined = pass(&b, Counts, &leader, None).await.baselined == 1;
    }
    mover.await.expect("mover");
    pass(&b, Counts, &leader, None).await;
    assert_counts_match(&b, "after the race").await;
    assert_eq!(stats_count(&b, None).await.get("cancelled"), Some(&300));
}

#[tokio::test]
async fn a_former_leader_neither_counts_nor_folds() {
    let (b, old, automation) = setup_leading("former").await;
    let run_id = b.start(&automation).await;
    b.expire_leadership(sweeps::LEADER_NAME_DEFAULT, Duration::from_millis(1))
        .await;
    let new = lead(&b, "c2").await;
    assert_eq!(pass(&b, Counts, &old, None).await, CountsOutcome::default());
    assert_eq!(b.count("SELECT count(*) FROM run_status_baseline").await, 0);
    assert_eq!(pass(&b, Counts, &new, None).await.baselined, 1);
    complete(&b, run_id).await;
    assert_eq!(pass(&b, Counts, &old, None).await, CountsOutcome::default());
    assert_eq!(deltas(&b).await, 1);
    assert_eq!(pass(&b, Counts, &new, None).await.deltas_folded, 1);
    assert_counts_match(&b, "after the new leader's fold").await;
}
