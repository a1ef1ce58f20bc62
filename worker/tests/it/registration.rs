//! What a worker advertises when it registers: its lease, and its kinds with their schemas.

use std::time::Duration;

use leasehold_core::kinds::{Schema, builtin_input_schema};
use leasehold_testkit::wait_for;
use leasehold_worker::handlers::{self, ExecPolicy};
use leasehold_worker::{Context, Handler, HandlerError, Worker};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::bundle::{DEADLINE, config, setup};

/// A custom kind with a schema of its own.
struct Greet;

impl Handler for Greet {
    async fn run(&self, _ctx: Context) -> Result<Value, HandlerError> {
        Ok(Value::Null)
    }

    fn input_schema(&self) -> Option<Value> {
        Some(json!({"type": "object", "required": ["name"]}))
    }
}

#[tokio::test]
async fn a_worker_registers_its_lease_and_its_kinds_with_their_schemas() {
    let b = setup().await;
    let mut registry = handlers::builtin(ExecPolicy::default());
    registry.register("greet", Greet);
    let settings = config("advertiser");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(
        Worker::new(b.store.clone(), registry, settings.clone()).run(shutdown.clone()),
    );

    let worker = wait_for(DEADLINE, "the worker to register", || async {
        let workers = b.store.list_workers(None).await.expect("workers");
        workers
            .into_iter()
            .find(|w| w.claimant_id == settings.claimant_id)
    })
    .await;
    assert_eq!(worker.lease, Some(Duration::from_secs(5)));
    assert!(worker.alive);

    let kinds = b.store.node_kinds(None).await.expect("kinds");
    let names: Vec<&str> = kinds.iter().map(|k| k.kind.as_str()).collect();
    // exec is left out: no program is allowed.
    assert_eq!(
        names,
        ["approval", "echo", "greet", "http", "noop", "sleep"]
    );
    for kind in &kinds {
        let expected = match kind.kind.as_str() {
            "greet" => Some(json!({"type": "object", "required": ["name"]})),
            builtin => builtin_input_schema(builtin).map(Schema::into_value),
        };
        assert_eq!(kind.input_schema, expected, "{}", kind.kind);
    }

    shutdown.cancel();
    task.await.expect("task").expect("worker");
}

/// A worker whose row was pruned (the leader removes the rows of workers silent for long)
/// registers again at its next beat, with what it advertised.
#[tokio::test]
async fn a_worker_whose_row_was_pruned_registers_again() {
    let b = setup().await;
    let settings = config("pruned");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(
        Worker::new(
            b.store.clone(),
            handlers::builtin(ExecPolicy::default()),
            settings.clone(),
        )
        .run(shutdown.clone()),
    );
    let registered = || async {
        let workers = b.store.list_workers(None).await.expect("workers");
        workers
            .into_iter()
            .find(|w| w.claimant_id == settings.claimant_id)
    };
    let first = wait_for(DEADLINE, "the worker to register", registered).await;
    b.sql
        .execute(
            "DELETE FROM workers WHERE claimant_id = $1",
            &[&settings.claimant_id.as_str()],
        )
        .await
        .expect("prune the row");
    let again = wait_for(DEADLINE, "the worker to register again", registered).await;
    assert!(again.alive);
    assert_eq!(again.lease, first.lease);
    assert_eq!(again.handlers, first.handlers);
    shutdown.cancel();
    task.await.expect("worker task").expect("worker");
}
