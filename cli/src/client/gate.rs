//! `leasehold gate …`: list approval gates and decide them.

use std::process::ExitCode;
use std::time::SystemTime;

use leasehold_proto::v1;
use serde_json::Value;

use super::Global;
use super::automation::PAGE_SIZE_MAX;
use super::connect::{Coordinator, all_pages};
use super::render::{self, Table, emit, emit_json};
use super::{json, names};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List the gates waiting for a decision (with --all, decided ones too).
    List {
        /// Include decided gates.
        #[arg(long)]
        all: bool,
    },
    /// Approve a gate: its node runs, and the run goes back to the queue.
    Approve {
        /// The gate's id (see `leasehold gate list`).
        id: String,
        /// Why, recorded with the decision (the decider recorded is the token's name).
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Reject a gate: cancel the run, or with --rework run nodes again.
    ///
    /// Without --rework the run is cancelled (decision CANCEL). With --rework the named nodes,
    /// and every node that depends on them, run again (decision REWORK); then the gate asks
    /// again.
    Reject {
        /// The gate's id (see `leasehold gate list`).
        id: String,
        /// A node to run again instead of cancelling the run (repeat the flag, or separate
        /// nodes with commas).
        #[arg(long = "rework", value_name = "NODE", value_delimiter = ',')]
        rework: Vec<String>,
        /// Why, recorded with the decision (the decider recorded is the token's name).
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
}

pub async fn run(command: Command, global: &Global) -> anyhow::Result<ExitCode> {
    let coordinator = Coordinator::connect(global).await?;
    let c = &coordinator;
    let (gate_id, decision, rework_nodes, reason) = match command {
        Command::List { all } => {
            list(c, all, global).await?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Approve { id, reason } => (id, v1::Decision::Approve, Vec::new(), reason),
        Command::Reject { id, rework, reason } => {
            let decision = if rework.is_empty() {
                v1::Decision::Cancel
            } else {
                v1::Decision::Rework
            };
            (id, decision, rework, reason)
        }
    };
    let gate = c.check(
        c.gates()
            .decide_gate(v1::DecideGateRequest {
                gate_id,
                decision: decision.into(),
                rework_nodes,
                reason: reason.unwrap_or_default(),
                // The coordinator records the token's name as the decider.
                decided_by: String::new(),
                // A fresh key per invocation: the coordinator tells a repeat of this very
                // request (same answer) from another decision (refused).
                request_id: uuid::Uuid::new_v4().to_string(),
            })
            .await,
    )?;
    if global.json {
        emit_json(&json::gate(&gate))?;
    } else {
        let outcome = match decision {
            v1::Decision::Approve => "the node runs; the run is back in the queue".to_owned(),
            v1::Decision::Rework => format!(
                "{} run again, then the gate asks again",
                gate.rework_nodes.join(", ")
            ),
            v1::Decision::Cancel | v1::Decision::Unspecified => "the run is cancelled".to_owned(),
        };
        emit(&format!(
            "gate {} ({} of run {}): {}: {outcome}\n",
            gate.gate_id,
            gate.node_id,
            gate.run_id,
            names::gate_status(gate.status)
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(c: &Coordinator, include_decided: bool, global: &Global) -> anyhow::Result<()> {
    let gates = all_pages(|page_token| async move {
        let page = c.check(
            c.gates()
                .list_gates(v1::ListGatesRequest {
                    include_decided,
                    page_size: PAGE_SIZE_MAX,
                    page_token,
                })
                .await,
        )?;
        Ok((page.gates, page.next_page_token))
    })
    .await?;
    if global.json {
        return emit_json(&Value::Array(gates.iter().map(json::gate).collect()));
    }
    if gates.is_empty() {
        return emit(if include_decided {
            "No gates.\n"
        } else {
            "No gates are waiting for a decision.\n"
        });
    }
    let now = SystemTime::now();
    // Without --all the list still holds suspended gates (their runs are paused) beside
    // pending ones, so the status is always shown.
    let mut table = Table::new(&["GATE", "RUN", "NODE", "STATUS", "PROMPT", "AGE", "STALE"]);
    for g in &gates {
        let row = vec![
            g.gate_id.clone(),
            g.run_id.clone(),
            g.node_id.clone(),
            names::gate_status(g.status),
            g.prompt.clone(),
            render::time(g.requested_at.as_ref())
                .map(|t| render::age(t, now))
                .unwrap_or_default(),
            if g.stale { "stale" } else { "no" }.to_owned(),
        ];
        table.row(row);
    }
    emit(&table.render())
}
