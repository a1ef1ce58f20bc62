//! `leasehold migrate`: bring a database's schema up to this build.

use anyhow::Context;
use leasehold_core::store::{self, Store};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// PostgreSQL connection URL, as the role that owns the schema (the one that migrates).
    #[arg(long, env = "LEASEHOLD_DATABASE_URL")]
    database_url: String,
    /// List the migrations that would be applied, and apply nothing.
    #[arg(long)]
    dry_run: bool,
    /// After migrating, grant this role what coordinators and workers need: rows of every table,
    /// sequences, the partition function, and the same on what later migrations create. Never
    /// ownership or DDL. Run the processes as this role.
    #[arg(long, env = "LEASEHOLD_RUNTIME_ROLE", value_name = "NAME")]
    runtime_role: Option<String>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let store = Store::connect_unchecked(&args.database_url, 1)?;
    let status = store.schema_status().await.with_context(|| {
        format!(
            "reading the schema version of {}",
            redact(&args.database_url)
        )
    })?;
    if status.floor > status.known_version {
        // The same refusal a coordinator or worker of this build would give.
        return Err(store::Error::SchemaTooNew {
            database: status.database_version,
            floor: status.floor,
            known: status.known_version,
        }
        .into());
    }
    println!(
        "database schema: version {}, floor {}; this build knows schema {}",
        status.database_version, status.floor, status.known_version
    );
    if status.database_version > status.known_version {
        println!(
            "the database carries migrations newer than this build; it still serves this build, \
             its floor being at or below {}",
            status.known_version
        );
    }
    if status.pending.is_empty() {
        println!(
            "schema is current (version {}); nothing to apply",
            status.database_version
        );
    } else {
        println!("{} to apply, in this order:", status.pending.len());
        for migration in &status.pending {
            println!("  {}: {}", migration.label(), migration.describe());
        }
    }
    if args.dry_run {
        for migration in &status.pending {
            println!("would apply {}", migration.label());
        }
        if let Some(role) = &args.runtime_role {
            println!("would grant the runtime role {role}");
        }
        return Ok(());
    }
    let applied = store
        .migrate_to(status.known_version, |done| {
            println!(
                "applied {} in {} ms{}",
                done.migration.label(),
                done.took.as_millis(),
                match done.lock_retries {
                    0 => String::new(),
                    n => format!(" ({n} tries given up waiting for a lock)"),
                }
            );
        })
        .await?;
    let after = store.schema_status_for(status.known_version).await?;
    println!(
        "schema is at version {}, floor {} ({} applied)",
        after.database_version,
        after.floor,
        applied.len()
    );
    if let Some(role) = &args.runtime_role {
        store.grant_runtime_role(role).await?;
        println!("granted the runtime role {role} what coordinators and workers need");
    }
    Ok(())
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_not_printed() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/leasehold"),
            "postgres://app:***@db:5432/leasehold"
        );
        assert_eq!(
            redact("postgres://app@db/leasehold"),
            "postgres://app@db/leasehold"
        );
        assert_eq!(redact("host=db user=app"), "host=db user=app");
    }
}
