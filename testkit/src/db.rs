//! [`TestDb`]: one fresh database per test, dropped when the test passes, migrated by its owner
//! and served to the test as the runtime role.

use std::panic;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use leasehold_core::store::Store;
use tokio_postgres::NoTls;
use uuid::Uuid;

use crate::server::{self, DATABASE_URL_ENV};

/// The role every test's coordinators, workers and stores connect as: it may read and write rows
/// and call the partition function, and owns nothing, as in production (docs/security.md). One
/// per server, created by the first test that needs it; its password is its name (a test server
/// only).
pub const RUNTIME_ROLE: &str = "leasehold_test_runtime";

// Creates the runtime role unless it exists. Tests of several processes may run this at once on
// one server: the loser of a race to create it gets a unique violation (or duplicate_object),
// which means the role is there.
const CREATE_RUNTIME_ROLE: &str = "\
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'leasehold_test_runtime') THEN
        CREATE ROLE leasehold_test_runtime LOGIN PASSWORD 'leasehold_test_runtime';
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$";

/// Whether this process made sure of the runtime role already.
static RUNTIME_ROLE_READY: AtomicBool = AtomicBool::new(false);

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
/// [`TestDb::new`] migrates it as its owner and grants [`RUNTIME_ROLE`]; [`TestDb::url`]
/// connects as that role, which cannot change the schema. [`TestDb::owner_url`] connects as the
/// owner (the server's admin role), for the few tests that migrate or need DDL.
#[derive(Debug)]
pub struct TestDb {
    /// A URL for this database as [`RUNTIME_ROLE`], usable by `tokio_postgres::connect` and
    /// deadpool's `Config::url`. Read-only.
    pub url: String,
    /// The same database as its owner.
    owner_url: String,
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
    /// If there is no server, or the database cannot be created or migrated.
    pub async fn new() -> TestDb {
        let db = Self::empty().await;
        let owner = Store::connect_unchecked(&db.owner_url, 1).expect("an owner's store");
        if let Err(e) = owner.migrate().await {
            panic!("leasehold-testkit: could not migrate {}: {e}", db.name);
        }
        if let Err(e) = owner.grant_runtime_role(RUNTIME_ROLE).await {
            panic!("leasehold-testkit: {e}");
        }
        db
    }

    /// A database like [`TestDb::new`]'s, with nothing applied: for tests of migrating. Migrate
    /// it through [`TestDb::owner_url`] and grant [`RUNTIME_ROLE`] (`leasehold migrate
    /// --runtime-role`) before connecting as [`TestDb::url`].
    ///
    /// # Panics
    ///
    /// If there is no server, or the database cannot be created.
    pub async fn empty() -> TestDb {
        let admin_url = server::admin_url();
        if !RUNTIME_ROLE_READY.load(Ordering::Acquire) {
            if let Err(e) = run_admin(admin_url, CREATE_RUNTIME_ROLE).await {
                panic!("leasehold-testkit: could not create the role {RUNTIME_ROLE}: {e}");
            }
            RUNTIME_ROLE_READY.store(true, Ordering::Release);
        }
        let name = format!("leasehold_test_{}", Uuid::new_v4().simple());
        // `template0` accepts no connections, so nobody connected to `template1` can make this
        // fail.
        let sql = format!("CREATE DATABASE \"{name}\" TEMPLATE template0");
        if let Err(e) = run_admin(admin_url, &sql).await {
            panic!("leasehold-testkit: could not create test database {name} via {admin_url}: {e}");
        }
        let runtime = server::with_user(admin_url, RUNTIME_ROLE, RUNTIME_ROLE);
        TestDb {
            url: server::with_database(&runtime, &name),
            owner_url: server::with_database(admin_url, &name),
            name,
            admin_url,
        }
    }

    /// A URL for this database as [`RUNTIME_ROLE`], usable by `tokio_postgres::connect` and
    /// deadpool's `Config::url`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A URL for this database as its owner, the server's admin role: for migrating and DDL.
    pub fn owner_url(&self) -> &str {
        &self.owner_url
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
