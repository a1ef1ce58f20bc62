//! Worker pruning: the row of a worker silent for longer than the threshold goes, unless it
//! still holds runs.

use chrono::{DateTime, Utc};
use leasehold_coordinator::sweeps::{self, Workers, WorkersOutcome};
use leasehold_testkit::fixtures::{Bundle, worker_info};

use super::{idle_until, lead, ms, pass};

async fn last_heartbeat(b: &Bundle, claimant: &str) -> DateTime<Utc> {
    b.sql
        .query_one(
            "SELECT last_heartbeat FROM workers WHERE claimant_id = $1",
            &[&claimant],
        )
        .await
        .expect("worker row")
        .get(0)
}

async fn workers(b: &Bundle) -> Vec<String> {
    let mut names: Vec<String> = b
        .store
        .list_workers(None)
        .await
        .expect("workers")
        .into_iter()
        .map(|w| w.claimant_id.as_str().to_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_worker_silent_too_long_is_pruned_once_its_runs_are_settled() {
    let b = leasehold_testkit::fixtures::setup().await;
    let leader = lead(&b, "c1").await;
    for name in ["w-gone", "w-holding", "w-fresh"] {
        b.store
            .register_worker(&worker_info(name, "h", "v"))
            .await
            .expect("register");
    }
    let automation = b.diamond("held").await;
    b.start(&automation).await;
    b.claim_one("w-holding").await;
    b.sql
        .execute(
            "UPDATE workers SET last_heartbeat = last_heartbeat - interval '2 days'
             WHERE claimant_id IN ('w-gone', 'w-holding')",
            &[],
        )
        .await
        .expect("silence two workers");
    let after = chrono::TimeDelta::from_std(sweeps::DEAD_WORKER_AFTER_DEFAULT).expect("small");
    let horizon = last_heartbeat(&b, "w-gone").await + after;

    idle_until(horizon, "", async |now| {
        pass(&b, Workers, &leader, Some(now)).await
    })
    .await;
    let past = horizon + ms(1);
    assert_eq!(
        pass(&b, Workers, &leader, Some(past)).await,
        WorkersOutcome { pruned: 1 }
    );
    assert_eq!(workers(&b).await, ["w-fresh", "w-holding"]);
    assert_eq!(
        pass(&b, Workers, &leader, Some(past)).await,
        WorkersOutcome::default(),
        "a worker holding a run stays"
    );
}

#[tokio::test]
async fn a_former_leader_prunes_no_worker() {
    let b = leasehold_testkit::fixtures::setup().await;
    let old = lead(&b, "c1").await;
    b.store
        .register_worker(&worker_info("w-gone", "h", "v"))
        .await
        .expect("register");
    let later = Utc::now() + chrono::TimeDelta::days(30);
    b.expire_leadership(
        sweeps::LEADER_NAME_DEFAULT,
        std::time::Duration::from_millis(1),
    )
    .await;
    let new = lead(&b, "c2").await;
    assert_eq!(
        pass(&b, Workers, &old, Some(later)).await,
        WorkersOutcome::default()
    );
    assert_eq!(workers(&b).await, ["w-gone"]);
    assert_eq!(pass(&b, Workers, &new, Some(later)).await.pruned, 1);
    assert!(workers(&b).await.is_empty());
}
