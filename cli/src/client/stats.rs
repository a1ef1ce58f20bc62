//! `leasehold stats`: runs by status, queue age, claimable runs and held leases.

use std::process::ExitCode;
use std::time::Duration;

use leasehold_proto::v1;

use super::Global;
use super::connect::Coordinator;
use super::render::{self, Table, emit, emit_json, fields};
use super::{json, names};

pub async fn run(queue: Option<String>, global: &Global) -> anyhow::Result<ExitCode> {
    let coordinator = Coordinator::connect(global).await?;
    let c = &coordinator;
    let stats = c.check(
        c.stats()
            .get_stats(v1::GetStatsRequest {
                queue: queue.unwrap_or_default(),
            })
            .await,
    )?;
    if global.json {
        emit_json(&json::stats(&stats))?;
        return Ok(ExitCode::SUCCESS);
    }
    let oldest = if stats.oldest_queued_age_seconds > 0.0 {
        render::duration(Duration::from_secs_f64(
            stats.oldest_queued_age_seconds.min(1e12),
        ))
    } else {
        "none due".to_owned()
    };
    let mut out = fields(&[
        ("claimable now", stats.claimable_now.to_string()),
        ("held leases", stats.held_leases.to_string()),
        ("oldest queued", oldest),
    ]);
    out.push('\n');
    let mut table = Table::new(&["STATUS", "RUNS"]);
    for count in &stats.run_counts {
        table.row(vec![
            names::run_status(count.status),
            count.runs.to_string(),
        ]);
    }
    out.push_str(&table.render());
    if !stats.waiting.is_empty() {
        out.push('\n');
        let mut waiting = Table::new(&["WAITING", "RUNS"]);
        for count in &stats.waiting {
            waiting.row(vec![
                count
                    .waiting
                    .as_ref()
                    .map(|w| w.message.clone())
                    .unwrap_or_default(),
                count.runs.to_string(),
            ]);
        }
        out.push_str(&waiting.render());
    }
    emit(&out)?;
    Ok(ExitCode::SUCCESS)
}
