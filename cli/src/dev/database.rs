//! The `leasehold` database: created in the private cluster when missing, then migrated.

use anyhow::Context;
use leasehold_core::store::Store;

/// The database dev mode keeps its automations and runs in, in the private cluster.
pub const NAME: &str = "leasehold";

/// Creates [`NAME`] through `admin_url` (the cluster's `postgres` database) unless it exists.
pub async fn create_if_missing(admin_url: &str) -> anyhow::Result<()> {
    let admin =
        Store::connect_unchecked(admin_url, 1).context("connecting to the private cluster")?;
    if admin
        .create_database_if_missing(NAME)
        .await
        .context("creating the leasehold database")?
    {
        eprintln!("dev: created the database {NAME}");
    }
    Ok(())
}

/// A pool of `pool_size` on `url`, after applying the migrations this build carries.
pub async fn migrated(url: &str, pool_size: usize) -> anyhow::Result<Store> {
    let store = Store::connect_unchecked(url, pool_size).context("connecting to the database")?;
    let applied = store.migrate().await.context("migrating the database")?;
    if !applied.is_empty() {
        eprintln!("dev: applied {} database migrations", applied.len());
    }
    // The coordinator's from here on: its API, its tokens and the pools it opens beside them.
    Ok(leasehold_coordinator::with_coordinator_session(&store)?)
}
