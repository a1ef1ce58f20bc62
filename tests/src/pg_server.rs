//! Crashing and restarting the test process's own PostgreSQL server, and the coordinators'
//! whole-server health, for the restart scenarios (`tests/restarts.rs`).
//!
//! The server is the testkit's throwaway cluster, which belongs to this test process alone and
//! serves one scenario at a time ([`crate::scenario::one_at_a_time`]); a server named by
//! `LEASEHOLD_TEST_DATABASE_URL` is someone else's, and is never crashed: [`Server::own`] returns
//! `None` for it. The server's data directory, tools and port are read from the server itself.
//! When the test runs as root the tools run as the `postgres` user, as the testkit starts them.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::unistd::Pid;
use tokio_postgres::Client;
use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

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
    data: PathBuf,
    bindir: PathBuf,
    port: String,
    database: String,
    as_postgres: bool,
}

impl Server {
    /// The server `sql` is connected to, if it is the testkit's throwaway cluster.
    ///
    /// # Panics
    /// If the server cannot be asked where it lives.
    pub async fn own(sql: &Client) -> Option<Self> {
        if std::env::var_os(leasehold_testkit::DATABASE_URL_ENV).is_some_and(|v| !v.is_empty()) {
            return None;
        }
        let row = sql.query_one(LAYOUT, &[]).await.expect("read the layout");
        let data = PathBuf::from(row.get::<_, String>(0));
        // The throwaway cluster is owned by `postgres` when this process is root (it cannot run
        // the server as root), and by this process's user otherwise.
        let me = std::fs::metadata("/proc/self").map_or(0, |m| m.uid());
        Some(Self {
            data,
            bindir: PathBuf::from(row.get::<_, String>(1)),
            port: row.get(2),
            database: row.get(3),
            as_postgres: me == 0,
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
        self.pg_ctl(&["stop", "-m", "immediate", "-w"]);
    }

    /// `pg_ctl restart -m immediate`: crashes the server if it runs, and starts it again with the
    /// options of its last start (`postmaster.opts`), on the same port; returns once it accepts
    /// connections.
    ///
    /// # Panics
    /// If `pg_ctl` fails.
    pub fn restart(&self) {
        self.pg_ctl(&["restart", "-m", "immediate", "-w", "-t", "60"]);
    }

    fn pg_ctl(&self, args: &[&str]) {
        let program = self.bindir.join("pg_ctl");
        let mut cmd = if self.as_postgres {
            let mut runuser = Command::new("runuser");
            runuser.args(["-u", "postgres", "--"]).arg(program);
            runuser
        } else {
            Command::new(program)
        };
        let log = self.data.parent().unwrap_or(Path::new("/")).join("log");
        cmd.args(args)
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&log)
            .current_dir(self.data.parent().unwrap_or(Path::new("/")))
            .stdin(Stdio::null());
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run pg_ctl {args:?}: {e}"));
        assert!(
            out.status.success(),
            "pg_ctl {args:?} failed: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The gRPC endpoint a coordinator process listens on, from its `--listen` argument.
///
/// # Panics
/// If the process has no such argument.
pub fn coordinator_endpoint(pid: Pid) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("read the cmdline");
    let args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let listen = args
        .iter()
        .position(|a| a == "--listen")
        .and_then(|i| args.get(i + 1))
        .expect("a coordinator started with --listen");
    format!("http://{listen}")
}

/// The coordinator's status for the server as a whole (`grpc.health.v1` Check, service `""`),
/// or `None` if it did not answer within a second.
pub async fn overall_health(endpoint: &str) -> Option<ServingStatus> {
    let check = async {
        let channel = Endpoint::from_shared(endpoint.to_owned())
            .ok()?
            .connect()
            .await
            .ok()?;
        let reply = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .ok()?
            .into_inner();
        ServingStatus::try_from(reply.status).ok()
    };
    tokio::time::timeout(Duration::from_secs(1), check)
        .await
        .ok()
        .flatten()
}
