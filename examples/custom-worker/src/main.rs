//! A worker with its own node kind, `shout`, next to the built-in ones.
//!
//! ```sh
//! leasehold dev --workers 0     # a database and a coordinator; the runs are left to us
//! LEASEHOLD_DATABASE_URL=<the banner's database URL> cargo run -p leasehold-example-custom-worker
//! leasehold automation apply -f examples/custom-worker/shouting.yaml
//! leasehold run start shouting --watch
//! ```
//!
//! It is `leasehold worker` with one more kind: the same flags and variables (`--help` lists
//! them), and the same signals, the first asking for a clean stop, the second exiting at once.
//!
//! Every worker of a database must handle every kind its automations use: a worker without
//! `shout` that claims a `shouting` run fails its `loud` node.

use clap::Parser;
use leasehold_worker::{Context, Handler, HandlerError, ResultExt, cli};
use serde_json::{Value, json};

/// Upper-cases the `text` of the upstream node named by `input.from`.
struct Shout;

impl Handler for Shout {
    async fn run(&self, ctx: Context) -> Result<Value, HandlerError> {
        let from = ctx
            .input
            .get("from")
            .and_then(Value::as_str)
            .ok_or("input.from must name an upstream node")
            .terminal()?;
        let text = ctx
            .upstream
            .iter()
            .find(|(id, _)| id.as_str() == from)
            .and_then(|(_, output)| output.get("text"))
            .and_then(Value::as_str)
            .ok_or_else(|| format!("upstream node {from:?} has no text output"))
            .terminal()?;
        Ok(json!({ "text": text.to_uppercase() }))
    }
    /// Advertised when the worker registers: coordinators then refuse a `shout` node without
    /// `from` when its automation is stored, instead of the node failing when it runs.
    fn input_schema(&self) -> Option<Value> {
        Some(json!({
            "description": "Upper-cases the text output of an upstream node.",
            "type": "object",
            "properties": {
                "from": {"description": "The upstream node whose text to shout.", "type": "string"}
            },
            "required": ["from"]
        }))
    }
}

/// A worker with the built-in kinds and `shout`.
#[derive(Debug, Parser)]
#[command(name = "custom-worker")]
struct Command {
    #[command(flatten)]
    worker: cli::Args,
    #[command(flatten)]
    log: cli::LogArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let command = Command::parse();
    let traces = cli::init_logging(&command.log, "info", Some("leasehold-worker"))?;
    let args = command.worker;
    let mut registry = args.registry();
    registry.register("shout", Shout);
    let result = cli::run_with(args, registry).await;
    if let Some(traces) = traces {
        traces.shutdown().await;
    }
    result?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use leasehold_core::ids::{LeaseEpoch, NodeId, RunId};
    use leasehold_worker::handlers::{self, ExecPolicy};
    use tokio_util::sync::CancellationToken;

    use super::*;

    fn ctx(input: Value, upstream: &[(&str, Value)]) -> Context {
        Context {
            run_id: RunId::new(),
            node_id: NodeId::from("loud"),
            attempt: 1,
            epoch: LeaseEpoch(1),
            idempotency_key: "key".into(),
            input,
            run_inputs: json!({}),
            upstream: upstream
                .iter()
                .map(|(id, v)| (NodeId::from(*id), v.clone()))
                .collect::<BTreeMap<_, _>>(),
            cancel: CancellationToken::new(),
            runtime_context: leasehold_worker::RuntimeContext::default(),
        }
    }

    #[tokio::test]
    async fn shouts_the_upstream_text() {
        let mut registry = handlers::builtin(ExecPolicy::default());
        registry.register("shout", Shout);
        let out = registry
            .run(
                "shout",
                ctx(
                    json!({"from": "greet"}),
                    &[("greet", json!({"text": "hello"}))],
                ),
            )
            .await;
        assert_eq!(out, Ok(json!({"text": "HELLO"})));
    }

    #[tokio::test]
    async fn the_schema_accepts_exactly_the_inputs_shout_reads() {
        let mut registry = handlers::builtin(ExecPolicy::default());
        registry.register("shout", Shout);
        let schema = registry.input_schema("shout").expect("declared");
        let upstream = [("greet", json!({"text": "hello"}))];
        for input in [
            json!({"from": "greet"}),
            json!({"from": "greet", "note": "ignored"}),
            json!({}),
            json!({"from": 1}),
            json!("greet"),
            Value::Null,
        ] {
            let ran = Shout.run(ctx(input.clone(), &upstream)).await;
            assert_eq!(
                schema.validate(&input).is_empty(),
                ran.is_ok(),
                "{input}: {ran:?}"
            );
        }
    }

    #[test]
    fn the_example_automation_is_valid() {
        let spec =
            leasehold_core::spec::parse_yaml(include_str!("../shouting.yaml")).expect("valid");
        assert_eq!(spec.nodes[1].kind, "shout");
    }

    #[tokio::test]
    async fn a_missing_upstream_is_a_terminal_failure() {
        let out = Shout.run(ctx(json!({"from": "nobody"}), &[])).await;
        assert!(matches!(out, Err(HandlerError::Terminal(m)) if m.contains("nobody")));
    }
}
