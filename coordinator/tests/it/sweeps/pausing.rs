//! Pausing settlement: a pausing run whose holder died settles into paused.

use leasehold_coordinator::sweeps::{Pausing, Reaper};
use leasehold_coordinator::sweeps::{PausingOutcome, ReapOutcome};
use leasehold_core::run::NodeStatus;

use super::{idle_until, ms, pass, setup_leading};

#[tokio::test]
async fn a_pausing_run_whose_holder_died_is_settled_into_paused() {
    let (b, leader, automation) = setup_leading("pausing").await;
    let run_id = b.progressed(&automation, "dying").await.claim.run_id();
    b.pause(run_id, "maintenance").await;
    assert_eq!(b.row(run_id).await.status, "pausing");
    let expires = b.lease_expiry(run_id).await;

    idle_until(expires, "", async |now| {
        pass(&b, Pausing, &leader, Some(now)).await
    })
    .await;
    // The reaper leaves pausing runs to this sweep.
    let reaped = pass(&b, Reaper, &leader, Some(expires + ms(1))).await;
    assert_eq!(reaped, ReapOutcome::default());
    let outcome = pass(&b, Pausing, &leader, Some(expires + ms(1))).await;
    assert_eq!(outcome, PausingOutcome { paused: 1 });
    let again = pass(&b, Pausing, &leader, Some(expires + ms(1))).await;
    assert_eq!(again, PausingOutcome::default());

    let row = b.row(run_id).await;
    assert_eq!(
        (
            row.status.as_str(),
            row.stop_kind.as_deref(),
            row.claimant_id
        ),
        ("paused", Some("operator_paused"), None)
    );
    let event = b.last_event(run_id).await;
    assert_eq!(event.event, "run_paused");
    assert_eq!(event.reason.as_deref(), Some("maintenance"));
    assert_eq!(event.metadata["settled_by"], "lease_expired");
    assert_eq!(event.metadata["claimant_id"], "dying");
    assert_eq!(
        event.metadata["interrupted"],
        serde_json::json!([{"node_id": "a", "attempt": 1}])
    );
    let a = &b.checkpoint(run_id).await[0];
    assert_eq!((a.status, a.attempts), (NodeStatus::Failed, 1));
    assert_eq!(
        a.last_error.as_deref(),
        Some("attempt interrupted: the lease expired")
    );
}
