//! `leasehold migrate`: bring a database's schema up to this build.

use anyhow::Context;
use leasehold_core::store::Store;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// PostgreSQL connection URL.
    #[arg(long, env = "LEASEHOLD_DATABASE_URL")]
    database_url: String,
    /// List the migrations that would be applied, and apply nothing.
    #[arg(long)]
    dry_run: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let store = Store::connect_unchecked(&args.database_url, 1)?;
    let status = store.schema_status().await.with_context(|| {
        format!(
            "reading the schema version of {}",
            redact(&args.database_url)
        )
    })?;
    if status.database_version > status.known_version {
        anyhow::bail!(
            "the database schema is at version {}, newer than this build knows ({}); \
             upgrade leasehold instead",
            status.database_version,
            status.known_version
        );
    }
    if args.dry_run {
        if status.pending.is_empty() {
            println!(
                "schema is current (version {}); nothing to apply",
                status.database_version
            );
        }
        for (version, name) in &status.pending {
            println!("would apply V{version}__{name}");
        }
        return Ok(());
    }
    let applied = store.migrate().await?;
    for (version, name) in &applied {
        println!("applied V{version}__{name}");
    }
    println!("schema is at version {}", status.known_version);
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
