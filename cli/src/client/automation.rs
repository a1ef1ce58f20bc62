//! `leasehold automation …`: register, list, show, pause and activate automations.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context;
use leasehold_proto::v1;
use serde_json::Value;

use super::Global;
use super::connect::{Coordinator, all_pages};
use super::render::{self, Table, emit, emit_json, fields};
use super::{json, names};

/// Largest page asked for; the API coerces larger sizes to it anyway.
pub(super) const PAGE_SIZE_MAX: i32 = 1000;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create the automation in a YAML or JSON spec file, or add a version if its spec changed.
    Apply {
        /// The spec file, YAML or JSON; `-` reads standard input.
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
    },
    /// List every automation with its current version.
    List,
    /// Show an automation and its spec: each node with its kind and dependencies.
    Show {
        /// The automation's id.
        id: String,
        /// Show this version's spec instead of the current one.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..))]
        version: Option<i32>,
    },
    /// Pause an automation: it starts no runs until activated; runs already started go on.
    Pause {
        /// The automation's id.
        id: String,
    },
    /// Activate a paused automation, so that runs of it can start again.
    Activate {
        /// The automation's id.
        id: String,
    },
}

pub async fn run(command: Command, global: &Global) -> anyhow::Result<ExitCode> {
    let coordinator = Coordinator::connect(global).await?;
    let c = &coordinator;
    match command {
        Command::Apply { file } => apply(c, &file, global).await?,
        Command::List => list(c, global).await?,
        Command::Show { id, version } => {
            let automation = c.check(
                c.automations()
                    .get_automation(v1::GetAutomationRequest {
                        id,
                        version: version.unwrap_or(0),
                    })
                    .await,
            )?;
            let shown = version.unwrap_or(automation.current_version);
            if global.json {
                emit_json(&json::automation(&automation, shown))?;
            } else {
                emit(&show(&automation, shown))?;
            }
        }
        Command::Pause { id } => {
            let automation = c.check(
                c.automations()
                    .pause_automation(v1::PauseAutomationRequest { id })
                    .await,
            )?;
            report_status(&automation, global)?;
        }
        Command::Activate { id } => {
            let automation = c.check(
                c.automations()
                    .activate_automation(v1::ActivateAutomationRequest { id })
                    .await,
            )?;
            report_status(&automation, global)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn apply(c: &Coordinator, file: &Path, global: &Global) -> anyhow::Result<()> {
    let text = read_spec(file)?;
    let automation = c.check(
        c.automations()
            .apply_automation(v1::ApplyAutomationRequest {
                spec: Some(v1::SpecSource {
                    source: Some(v1::spec_source::Source::Text(text)),
                }),
            })
            .await,
    )?;
    if global.json {
        return emit_json(&json::automation(&automation, automation.current_version));
    }
    let outcome = if automation.version_created {
        "new version created"
    } else {
        "unchanged: the spec equals the current version's"
    };
    emit(&fields(&[
        ("automation", automation.id.clone()),
        ("version", automation.current_version.to_string()),
        ("applied", outcome.to_owned()),
        ("status", names::automation_status(automation.status)),
    ]))
}

async fn list(c: &Coordinator, global: &Global) -> anyhow::Result<()> {
    let automations = list_all(c).await?;
    if global.json {
        let all: Vec<Value> = automations
            .iter()
            .map(|a| json::automation(a, a.current_version))
            .collect();
        return emit_json(&Value::Array(all));
    }
    if automations.is_empty() {
        return emit("No automations. Register one with `leasehold automation apply -f FILE`.\n");
    }
    let now = SystemTime::now();
    let mut table = Table::new(&["AUTOMATION", "VERSION", "STATUS", "NODES", "UPDATED"]);
    for a in &automations {
        table.row(vec![
            a.id.clone(),
            a.current_version.to_string(),
            names::automation_status(a.status),
            a.spec.as_ref().map_or(0, |s| s.nodes.len()).to_string(),
            render::time(a.updated_at.as_ref())
                .map(|t| format!("{} ago", render::age(t, now)))
                .unwrap_or_default(),
        ]);
    }
    emit(&table.render())
}

fn read_spec(file: &Path) -> anyhow::Result<String> {
    if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("--file -: reading the spec from standard input")?;
        return Ok(text);
    }
    std::fs::read_to_string(file).with_context(|| format!("--file {}", file.display()))
}

async fn list_all(c: &Coordinator) -> anyhow::Result<Vec<v1::Automation>> {
    all_pages(|page_token| async move {
        let page = c.check(
            c.automations()
                .list_automations(v1::ListAutomationsRequest {
                    page_size: PAGE_SIZE_MAX,
                    page_token,
                })
                .await,
        )?;
        Ok((page.automations, page.next_page_token))
    })
    .await
}

fn report_status(automation: &v1::Automation, global: &Global) -> anyhow::Result<()> {
    if global.json {
        emit_json(&json::automation(automation, automation.current_version))
    } else {
        emit(&format!(
            "automation {}: {}\n",
            automation.id,
            names::automation_status(automation.status)
        ))
    }
}

fn show(a: &v1::Automation, shown: i32) -> String {
    let now = SystemTime::now();
    let spec = a.spec.clone().unwrap_or_default();
    let version = if shown == a.current_version {
        format!("{shown} (current)")
    } else {
        format!("{shown} (current is {})", a.current_version)
    };
    let mut out = fields(&[
        ("automation", a.id.clone()),
        ("version", version),
        ("status", names::automation_status(a.status)),
        ("description", spec.description.clone()),
        ("created", render::when(a.created_at.as_ref(), now)),
        ("updated", render::when(a.updated_at.as_ref(), now)),
    ]);
    out.push('\n');
    let mut table = Table::new(&[
        "NODE",
        "KIND",
        "DEPENDS ON",
        "MAX ATTEMPTS",
        "TIMEOUT",
        "APPROVAL",
    ]);
    for node in &spec.nodes {
        table.row(vec![
            node.id.clone(),
            node.kind.clone(),
            node.depends_on.join(", "),
            node.max_attempts.to_string(),
            render::millis(node.timeout_ms),
            node.approval
                .as_ref()
                .map(|g| format!("{:?}", g.prompt))
                .unwrap_or_default(),
        ]);
    }
    out.push_str(&table.render());
    out
}
