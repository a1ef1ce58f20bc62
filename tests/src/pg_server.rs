//! Crashing and restarting the test process's own PostgreSQL server, for the restart scenarios
//! (`tests/restarts.rs`).
//!
//! The server is the testkit's throwaway cluster, which belongs to this test process alone and
//! serves one scenario at a time ([`crate::scenario::one_at_a_time`]); a server named by
//! `LEASEHOLD_TEST_DATABASE_URL` is someone else's, and is never crashed: [`Server::own`] returns
//! `None` for it. The server's data directory, tools and port are read from the server itself;
//! `leasehold_pgcluster` runs the tools, as the `postgres` user when the test runs as root, as the
//! testkit started them.

use std::path::{Path, PathBuf};

use leasehold_pgcluster::{Bindir, RunAs, StopMode};
use tokio_postgres::Client;

// name: server_layout
// Where the server keeps its data and tools, on which port, and which database the client is in.
const LAYOUT: &str = "\
SELECT current_setting('data_directory'),
       (SELECT setting FROM pg_config WHERE name = 'BINDIR'),
       current_setting('port'),
       current_database()";

/// The test process's own PostgreSQL server.
#[derive(Debug, Clone)]
pub struct Server {
    server: leasehold_pgcluster::Server,
    /// The log the testkit's cluster writes, beside its data directory.
    log: PathBuf,
    port: String,
    database: String,
}

impl Server {
    /// The server `sql` is connected to, if it is the testkit's throwaway cluster.
    ///
    /// # Panics
    /// If the server cannot be asked where it lives, or we are root without a `postgres` user.
    pub async fn own(sql: &Client) -> Option<Self> {
        if std::env::var_os(leasehold_testkit::DATABASE_URL_ENV).is_some_and(|v| !v.is_empty()) {
            return None;
        }
        let row = sql.query_one(LAYOUT, &[]).await.expect("read the layout");
        let data = PathBuf::from(row.get::<_, String>(0));
        let log = data.parent().unwrap_or(Path::new("/")).join("log");
        let bindir = Bindir::new(PathBuf::from(row.get::<_, String>(1)));
        let run_as = RunAs::detect().expect("the user the server's tools run as");
        Some(Self {
            server: leasehold_pgcluster::Server::new(bindir, run_as, data),
            log,
            port: row.get(2),
            database: row.get(3),
        })
    }

    /// A URL of the scenario's database, as the testkit's superuser.
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{}",
            self.port, self.database
        )
    }

    /// The scenario's database.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// A new plain connection to the scenario's database.
    ///
    /// # Panics
    /// If it cannot connect.
    pub async fn connect(&self) -> Client {
        let (sql, connection) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .expect("connect to the restarted server");
        tokio::spawn(connection);
        sql
    }

    /// Crashes the server: `pg_ctl stop -m immediate`, which ends every backend without a
    /// checkpoint, so the next start runs crash recovery.
    ///
    /// # Panics
    /// If `pg_ctl` fails.
    pub fn crash(&self) {
        if let Err(e) = self.server.stop(StopMode::Immediate) {
            panic!("crashing the server: {e}");
        }
    }

    /// `pg_ctl restart -m immediate`: crashes the server if it runs, and starts it again with the
    /// options of its last start (`postmaster.opts`), on the same port; returns once it accepts
    /// connections.
    ///
    /// # Panics
    /// If `pg_ctl` fails.
    pub fn restart(&self) {
        if let Err(e) = self.server.restart(StopMode::Immediate, &self.log) {
            panic!("restarting the server: {e}");
        }
    }
}
