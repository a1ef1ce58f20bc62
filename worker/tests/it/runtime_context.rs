//! Required runtime context (issue 19, item 3): a run whose automation requires context is
//! claimed only by a worker that holds it, waits saying what is missing meanwhile, and its
//! handlers see what it requires and nothing else the worker holds.

use std::collections::BTreeMap;

use leasehold_core::run::RunStatus;
use leasehold_worker::RuntimeContext;

use crate::bundle::{config, setup};

fn held(pairs: &[(&str, &str)]) -> RuntimeContext {
    let values: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    RuntimeContext::read(values.keys().cloned(), |name| values.get(name).cloned())
        .expect("every name has a value")
}

#[tokio::test]
async fn a_run_requiring_context_waits_for_a_worker_that_holds_it_and_sees_only_that() {
    let b = setup().await;
    let needs_key = b
        .automation(
            "id: needs-key\nrequires_context: [API_KEY]\nnodes:\n  - {id: call, kind: record}\n",
        )
        .await;
    let plain = b
        .automation("id: plain\nnodes:\n  - {id: a, kind: record}\n")
        .await;
    let run = b.start(&needs_key).await;

    let without = b.spawn_worker(config("without"));
    // The worker without the key takes a run queued after this one, and so passed it over.
    let later = b.start(&plain).await;
    b.wait_status(later, RunStatus::Completed).await;
    assert_eq!(b.status(run).await, RunStatus::Queued);
    let record = b.run(run).await;
    let reasons = b.store.wait_reasons([&record]).await.expect("reasons");
    assert_eq!(reasons[&run].code(), "startup_runtime_context_missing");
    assert_eq!(
        reasons[&run].to_string(),
        "waiting for a worker with: context API_KEY"
    );

    let mut holder = config("holder");
    holder.runtime_context = held(&[("API_KEY", "k-123"), ("OTHER_SECRET", "s-456")]);
    let with = b.spawn_worker(holder);
    b.wait_status(run, RunStatus::Completed).await;
    let call = b.ledger.of("call");
    assert_eq!(call.len(), 1);
    assert_eq!(
        call[0].runtime_context,
        BTreeMap::from([("API_KEY".to_owned(), "k-123".to_owned())]),
        "the run sees what it requires, not the worker's other context"
    );
    // The plain run required nothing, and saw nothing.
    assert!(b.ledger.of("a")[0].runtime_context.is_empty());
    with.stop().await;
    without.stop().await;
}
