//! The idempotency key handlers hand to outside services: the same for every attempt of one
//! execution of a node, new when an operator resets the node to run it again.

use leasehold_core::run::RunStatus;

use crate::bundle::{config, setup};

#[tokio::test]
async fn retries_keep_the_key_and_a_recover_gives_the_reset_node_a_new_one() {
    let b = setup().await;
    let automation = b
        .automation(
            "id: keyed
nodes:
  - {id: a, kind: record, input: {fail_first: 1}, max_attempts: 2,
     backoff: {base_ms: 1, cap_ms: 1, factor: 1.0, jitter: 0.0}}
  - {id: b, kind: record, input: {terminal: true}, depends_on: [a]}
",
        )
        .await;
    let worker = b.spawn_worker(config("keys"));
    let run_id = b.start(&automation).await;
    b.wait_status(run_id, RunStatus::Failed).await;

    let a = b.ledger.of("a");
    assert_eq!(a.len(), 2, "a failed once and was retried");
    assert_eq!(
        a[0].idempotency_key, a[1].idempotency_key,
        "a retry keeps the key"
    );
    let first_b = b.ledger.of("b")[0].idempotency_key.clone();

    b.store
        .recover_run(&b.tenant, run_id, "try b again", "ops", None)
        .await
        .expect("recover");
    b.wait_status(run_id, RunStatus::Failed).await;
    worker.stop().await;

    let runs_of_b = b.ledger.of("b");
    assert_eq!(runs_of_b.len(), 2, "b ran again after the recover");
    assert_ne!(
        runs_of_b[1].idempotency_key, first_b,
        "the recovered node's execution is new to outside services"
    );
    assert_eq!(
        b.ledger.of("a").len(),
        2,
        "the completed node did not run again"
    );
}
