//! `leasehold schedule list|pause|resume|trigger`: automations' cron schedules.

use std::process::ExitCode;
use std::time::SystemTime;

use leasehold_proto::v1;
use serde_json::{Value, json};

use super::Global;
use super::connect::Coordinator;
use super::render::{self, Table, emit, emit_json};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List schedules: pattern, time zone, policies, next and last fire, pause.
    List {
        /// Only this automation's.
        #[arg(long)]
        automation: Option<String>,
    },
    /// Stop a schedule firing; its fires while paused are not caught up.
    Pause {
        /// The automation.
        automation: String,
        /// The schedule (`default` for an automation's only one without an id).
        schedule: String,
        /// Why, recorded with the pause.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Fire again from the next fire time.
    Resume {
        /// The automation.
        automation: String,
        /// The schedule.
        schedule: String,
    },
    /// Start a run now, as the schedule would, paused or not.
    Trigger {
        /// The automation.
        automation: String,
        /// The schedule.
        schedule: String,
        /// Makes a retried command return the run the first one started.
        #[arg(long)]
        request_id: Option<String>,
    },
}

pub async fn run(command: Command, global: &Global) -> anyhow::Result<ExitCode> {
    let coordinator = Coordinator::connect(global).await?;
    let c = &coordinator;
    let shown = match command {
        Command::List { automation } => {
            let schedules = c
                .check(
                    c.schedules()
                        .list_schedules(v1::ListSchedulesRequest {
                            automation_id: automation.unwrap_or_default(),
                        })
                        .await,
                )?
                .schedules;
            if global.json {
                emit_json(&Value::Array(schedules.iter().map(schedule_json).collect()))?;
            } else if schedules.is_empty() {
                emit("No schedule.\n")?;
            } else {
                emit(&table(&schedules).render())?;
            }
            return Ok(ExitCode::SUCCESS);
        }
        Command::Pause {
            automation,
            schedule,
            reason,
        } => c.check(
            c.schedules()
                .pause_schedule(v1::PauseScheduleRequest {
                    automation_id: automation,
                    schedule_id: schedule,
                    reason,
                })
                .await,
        )?,
        Command::Resume {
            automation,
            schedule,
        } => c.check(
            c.schedules()
                .resume_schedule(v1::ResumeScheduleRequest {
                    automation_id: automation,
                    schedule_id: schedule,
                })
                .await,
        )?,
        Command::Trigger {
            automation,
            schedule,
            request_id,
        } => {
            let answer = c.check(
                c.schedules()
                    .trigger_schedule(v1::TriggerScheduleRequest {
                        automation_id: automation,
                        schedule_id: schedule,
                        request_id: request_id.unwrap_or_default(),
                    })
                    .await,
            )?;
            let run = answer.run.unwrap_or_default();
            if global.json {
                emit_json(&json!({"run_id": run.run_id, "created": answer.created}))?;
            } else {
                emit(&format!("started run {}\n", run.run_id))?;
            }
            return Ok(ExitCode::SUCCESS);
        }
    };
    if global.json {
        emit_json(&schedule_json(&shown))?;
    } else {
        emit(&table(std::slice::from_ref(&shown)).render())?;
    }
    Ok(ExitCode::SUCCESS)
}

fn spec(s: &v1::Schedule) -> v1::ScheduleSpec {
    s.spec.clone().unwrap_or_default()
}

fn overlap(spec: &v1::ScheduleSpec) -> &'static str {
    match v1::Overlap::try_from(spec.overlap) {
        Ok(v1::Overlap::QueueOne) => "queue_one",
        Ok(v1::Overlap::Allow) => "allow",
        _ => "skip",
    }
}

fn catch_up(spec: &v1::ScheduleSpec) -> String {
    match spec.catch_up.unwrap_or(1) {
        0 => "skip_missed".to_owned(),
        n => format!("latest {n}"),
    }
}

fn table(schedules: &[v1::Schedule]) -> Table {
    let now = SystemTime::now();
    let mut table = Table::new(&[
        "AUTOMATION",
        "SCHEDULE",
        "CRON",
        "TIMEZONE",
        "OVERLAP",
        "CATCH UP",
        "NEXT FIRE",
        "LAST FIRE",
        "PAUSED",
    ]);
    for s in schedules {
        let spec = spec(s);
        table.row(vec![
            s.automation_id.clone(),
            spec.id.clone(),
            spec.cron.clone(),
            spec.timezone.clone(),
            overlap(&spec).to_owned(),
            catch_up(&spec),
            render::when(s.next_fire_at.as_ref(), now),
            render::when(s.last_fire_at.as_ref(), now),
            if s.paused {
                format!("by {}: {}", s.paused_by, s.pause_reason)
            } else {
                String::new()
            },
        ]);
    }
    table
}

fn schedule_json(s: &v1::Schedule) -> Value {
    let spec = spec(s);
    let time = |t: Option<&prost_types::Timestamp>| render::time(t).map(render::rfc3339);
    json!({
        "automation_id": s.automation_id,
        "schedule_id": spec.id,
        "cron": spec.cron,
        "timezone": spec.timezone,
        "overlap": overlap(&spec),
        "catch_up": spec.catch_up.unwrap_or(1),
        "paused": s.paused,
        "paused_by": s.paused.then(|| s.paused_by.clone()),
        "pause_reason": s.paused.then(|| s.pause_reason.clone()),
        "next_fire_at": time(s.next_fire_at.as_ref()),
        "last_fire_at": time(s.last_fire_at.as_ref()),
    })
}
