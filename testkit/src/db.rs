//! [`TestDb`]: one fresh database per test, dropped when the test passes.

use std::panic;
use std::thread;
use std::time::Duration;

use tokio_postgres::NoTls;
use uuid::Uuid;

use crate::server::{self, DATABASE_URL_ENV};

/// How long creating or dropping a database may take before the test fails, so a stuck server
/// cannot hang the suite.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A fresh, empty database on the test server, for one test.
///
/// Dropping it drops the database, ending any connections still open to it, unless the thread is
/// panicking (the test failed): then the database is kept and its URL printed, so a person can
/// inspect it. On the throwaway cluster a kept database lasts only until the test process exits;
/// set [`DATABASE_URL_ENV`] to keep it longer.
///
/// Migrations are not applied here; that is the store's job.
#[derive(Debug)]
pub struct TestDb {
    /// A URL for this database, usable by `tokio_postgres::connect` and deadpool's `Config::url`.
    /// Read-only.
    pub url: String,
    /// The database name, `leasehold_test_<uuid>`, unique even on a server shared with others.
    /// Treat it as read-only: the drop uses it.
    pub name: String,
    admin_url: &'static str,
}

impl TestDb {
    /// Creates a database with a unique name on the test server (see
    /// [`admin_url`](crate::admin_url)).
    ///
    /// The first call in a process picks the server and may start the throwaway cluster, blocking
    /// for about a second. The database is created from `template0`, so it holds nothing that was
    /// added to `template1`.
    ///
    /// # Panics
    ///
    /// If there is no server, or the database cannot be created.
    pub async fn new() -> TestDb {
        let admin_url = server::admin_url();
        let name = format!("leasehold_test_{}", Uuid::new_v4().simple());
        // `template0` accepts no connections, so nobody connected to `template1` can make this
        // fail.
        let sql = format!("CREATE DATABASE \"{name}\" TEMPLATE template0");
        if let Err(e) = run_admin(admin_url, &sql).await {
            panic!("leasehold-testkit: could not create test database {name} via {admin_url}: {e}");
        }
        TestDb {
            url: server::with_database(admin_url, &name),
            name,
            admin_url,
        }
    }

    /// A URL for this database, usable by `tokio_postgres::connect` and deadpool's `Config::url`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "leasehold-testkit: the test failed; kept its database for inspection: {}",
                self.url
            );
            if server::is_throwaway() {
                eprintln!(
                    "leasehold-testkit: (the throwaway cluster is removed when the test process \
                     exits; set {DATABASE_URL_ENV} to test against a server that outlives it)"
                );
            }
            return;
        }
        // Drop usually runs on a runtime thread, where `block_on` panics: the drop gets a thread
        // and a runtime of its own.
        let admin_url = self.admin_url;
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        let dropped = thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("could not build a runtime: {e}"))?;
            runtime.block_on(run_admin(admin_url, &sql))
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!(
                "leasehold-testkit: could not drop test database {}: {e}",
                self.name
            ),
            Err(payload) => panic::resume_unwind(payload),
        }
    }
}

/// Runs `sql` on a new connection to the admin database, within [`ADMIN_TIMEOUT`].
async fn run_admin(admin_url: &str, sql: &str) -> Result<(), String> {
    let work = async {
        let (client, connection) = tokio_postgres::connect(admin_url, NoTls).await?;
        let connection = tokio::spawn(connection);
        client.batch_execute(sql).await?;
        drop(client);
        // The connection ends once the client is gone; waiting for it closes the session cleanly.
        let _ = connection.await;
        Ok::<(), tokio_postgres::Error>(())
    };
    match tokio::time::timeout(ADMIN_TIMEOUT, work).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {ADMIN_TIMEOUT:?}")),
    }
}
