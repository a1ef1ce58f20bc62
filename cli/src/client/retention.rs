//! `leasehold retention show|set|clear`: how long your tenant's finished runs keep their inputs
//! and node outputs, and how long they are kept at all.

use std::process::ExitCode;
use std::time::Duration;

use leasehold_proto::v1;
use serde_json::{Value, json};

use super::Global;
use super::connect::Coordinator;
use super::render::{self, emit, emit_json};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Show the windows: your tenant's own, or the coordinator's.
    Show,
    /// Set your tenant's own windows (admin).
    Set {
        /// How long after it finished a run keeps its inputs and node outputs (`7d`); past it
        /// they are dropped. At least an hour.
        #[arg(long, value_name = "DURATION")]
        compact_after: humantime::Duration,
        /// How long after it finished a run is kept at all (`90d`); past it, it is deleted. At
        /// least --compact-after, at most ten years.
        #[arg(long, value_name = "DURATION")]
        delete_after: humantime::Duration,
    },
    /// Clear your tenant's own windows: the coordinators' apply again (admin).
    Clear,
}

pub async fn run(command: Command, global: &Global) -> anyhow::Result<ExitCode> {
    let coordinator = Coordinator::connect(global).await?;
    let c = &coordinator;
    let seconds =
        |d: humantime::Duration| i64::try_from(Duration::from(d).as_secs()).unwrap_or(i64::MAX);
    let retention = match command {
        Command::Show => c.check(c.history().get_retention(v1::GetRetentionRequest {}).await)?,
        Command::Set {
            compact_after,
            delete_after,
        } => c.check(
            c.history()
                .set_retention(v1::SetRetentionRequest {
                    compact_after_seconds: seconds(compact_after),
                    delete_after_seconds: seconds(delete_after),
                })
                .await,
        )?,
        Command::Clear => c.check(
            c.history()
                .set_retention(v1::SetRetentionRequest {
                    compact_after_seconds: 0,
                    delete_after_seconds: 0,
                })
                .await,
        )?,
    };
    if global.json {
        emit_json(&retention_json(&retention))?;
    } else {
        emit(&describe(&retention))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn window(secs: i64) -> String {
    render::coarse(Duration::from_secs(secs.unsigned_abs()))
}

fn describe(r: &v1::Retention) -> String {
    let whose = if r.inherited {
        "the coordinator's (your tenant has none of its own)".to_owned()
    } else {
        format!(
            "your tenant's own, set by {} {}",
            r.updated_by,
            render::when(r.updated_at.as_ref(), std::time::SystemTime::now())
        )
    };
    format!(
        "finished runs keep their inputs and node outputs for {}, and are deleted after {}\n\
         windows: {whose}\n",
        window(r.compact_after_seconds),
        window(r.delete_after_seconds),
    )
}

fn retention_json(r: &v1::Retention) -> Value {
    json!({
        "compact_after_seconds": r.compact_after_seconds,
        "delete_after_seconds": r.delete_after_seconds,
        "inherited": r.inherited,
        "updated_at": render::time(r.updated_at.as_ref()).map(render::rfc3339),
        "updated_by": (!r.inherited).then(|| r.updated_by.clone()),
    })
}
