//! A throwaway cluster its caller owns and configures: for the benchmark (the tests' cluster
//! trades durability for speed, and a benchmark must not), and for tests that need a server of
//! their own, such as one that serves TLS only.

use leasehold_pgcluster::Tls;

use crate::cluster::Cluster;

/// A private PostgreSQL cluster on a free loopback port, started from `initdb`/`pg_ctl` like the
/// tests' cluster, with the caller's server settings. Dropping it stops the server and removes its
/// directory; a process killed before that leaves it for the next start to sweep.
pub struct OwnedCluster(Cluster);

impl OwnedCluster {
    /// Starts a fresh cluster. `settings` are server settings (`name`, `value` pairs, passed as
    /// `-c name=value`) on top of the loopback-only listening every cluster has; PostgreSQL's own
    /// defaults apply to the rest, fsync and synchronous_commit on included.
    ///
    /// Blocks for about a second. The error says what is missing (binaries, a `postgres` user
    /// when running as root) or quotes the server log.
    pub fn start(settings: &[(&str, &str)]) -> Result<Self, String> {
        Cluster::start_with(settings).map(Self)
    }

    /// [`OwnedCluster::start`], serving TLS with `tls`: TCP connections without TLS are refused,
    /// and with [`Tls::client_ca_pem`] so are those without a client certificate issued by that
    /// CA for the user (`postgres`).
    pub fn start_tls(settings: &[(&str, &str)], tls: &Tls) -> Result<Self, String> {
        Cluster::start_with_tls(settings, Some(tls)).map(Self)
    }

    /// The port it listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.0.port()
    }

    /// The URL of the `postgres` database, as the `postgres` superuser (trust authentication).
    pub fn admin_url(&self) -> String {
        self.0.admin_url()
    }
}

impl Drop for OwnedCluster {
    fn drop(&mut self) {
        self.0.destroy();
    }
}
