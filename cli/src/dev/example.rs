//! `--example NAME`: register a bundled example and start a run of it, straight through the store.

use anyhow::Context;
use leasehold_core::ids::{RunId, TenantId};
use leasehold_core::spec::{self, Spec};
use leasehold_core::store::{StartRun, Store, Trigger};

use crate::examples;

/// The bundled example `name`, parsed; an unknown name is an error listing the known ones.
pub fn spec(name: &str) -> anyhow::Result<Spec> {
    let Some(yaml) = examples::example(name) else {
        anyhow::bail!(
            "no example called {name:?}; the examples are: {}",
            examples::names().join(", ")
        );
    };
    spec::parse_yaml(yaml).with_context(|| format!("reading the bundled example {name}"))
}

/// Registers `spec` (a new version only if it changed) and starts a run of it.
pub async fn start(store: &Store, spec: &Spec) -> anyhow::Result<RunId> {
    let tenant = TenantId::default();
    let stored = store
        .apply_automation(&tenant, spec)
        .await
        .with_context(|| format!("registering the automation {}", spec.id))?;
    let started = store
        .start_run(&StartRun {
            tenant,
            automation_id: spec.id.clone(),
            inputs: serde_json::Value::Object(serde_json::Map::new()),
            priority: 0,
            concurrency_key: None,
            idempotency_key: None,
            trigger: Trigger::Manual,
            actor: None,
            trace: None,
            queue: None,
        })
        .await
        .with_context(|| format!("starting a run of {}", spec.id))?;
    eprintln!(
        "dev: automation {} v{}{}; started run {}",
        spec.id,
        stored.version,
        if stored.created { "" } else { " (unchanged)" },
        started.run_id
    );
    Ok(started.run_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_examples_are_refused_with_the_known_names() {
        assert_eq!(spec("hello").expect("hello").id.as_str(), "hello");
        let message = spec("nope").expect_err("unknown").to_string();
        assert!(message.contains("hello, retry, approval"), "{message}");
    }
}
