//! What `leasehold dev` prints once everything is up: where things are and what to try next.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use leasehold_core::store::Secret;

use crate::ENDPOINT_DEFAULT;

/// The first line of the banner; tests wait for it.
pub const READY_LINE: &str = "Leasehold dev is running.";

/// The facts the banner shows.
#[derive(Debug)]
pub struct Banner<'a> {
    /// The endpoint clients connect to, as `http://host:port`.
    pub endpoint: &'a str,
    /// Where `/metrics` is served.
    pub metrics: Option<SocketAddr>,
    /// The database, with its password: it is a private, loopback-only cluster.
    pub database_url: &'a str,
    /// The data folder, when dev runs its own cluster.
    pub data_dir: Option<&'a Path>,
    /// How many workers run in the process.
    pub workers: u16,
    /// Programs `exec` nodes may run.
    pub exec_allow: &'a [String],
    /// The default tenant's admin token: shown, since whoever reads the banner started dev.
    pub token: &'a Secret,
    /// The credentials file that client commands find the token in.
    pub credentials: &'a Path,
}

impl fmt::Display for Banner<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host_port = self
            .endpoint
            .strip_prefix("http://")
            .unwrap_or(self.endpoint);
        // Client commands need --endpoint only when dev does not listen where they look.
        let endpoint_flag = if self.endpoint == ENDPOINT_DEFAULT {
            String::new()
        } else {
            format!(" --endpoint {}", self.endpoint)
        };
        let exec = if self.exec_allow.is_empty() {
            "exec nodes off".to_owned()
        } else {
            format!("exec nodes may run {}", self.exec_allow.join(", "))
        };
        writeln!(f, "{READY_LINE}")?;
        writeln!(f)?;
        writeln!(f, "  gRPC endpoint  {}", self.endpoint)?;
        writeln!(f, "  API token      {} (admin)", self.token.expose())?;
        writeln!(
            f,
            "                 saved for client commands in {}",
            self.credentials.display()
        )?;
        if let Some(metrics) = self.metrics {
            writeln!(f, "  metrics        http://{metrics}/metrics")?;
        }
        writeln!(f, "  database       {}", self.database_url)?;
        match self.data_dir {
            Some(dir) => writeln!(f, "  data folder    {}", dir.display())?,
            None => writeln!(f, "  data folder    none (--database-url)")?,
        }
        writeln!(
            f,
            "  workers        {} in this process; {exec}",
            self.workers
        )?;
        writeln!(f)?;
        writeln!(f, "Try, in another terminal:")?;
        writeln!(
            f,
            "  leasehold{endpoint_flag} automation apply -f examples/hello.yaml"
        )?;
        writeln!(f, "  leasehold{endpoint_flag} run start hello --watch")?;
        writeln!(f, "  grpcurl -plaintext {host_port} list")?;
        writeln!(f)?;
        if self.data_dir.is_some() {
            writeln!(
                f,
                "Ctrl-C stops everything; automations and runs are kept for the next start \
                 (--fresh deletes them)."
            )?;
        } else {
            writeln!(f, "Ctrl-C stops everything.")?;
        }
        writeln!(
            f,
            "WARNING: dev mode is not for production: the gRPC API is plaintext, its token never \
             expires, and its settings favour a quick start over safety."
        )
    }
}

/// The endpoint a client on this machine uses for a server bound to `bound`: an unspecified
/// address (`0.0.0.0`, `::`) is reached through loopback.
pub fn endpoint(bound: SocketAddr) -> String {
    let ip = match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, bound.port()))
}

/// `url` with its password, if any, replaced by `***`: for a database dev does not own.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_reach_unspecified_addresses_through_loopback() {
        let check = |bound: &str, want: &str| {
            assert_eq!(endpoint(bound.parse().expect("address")), want, "{bound}");
        };
        check("127.0.0.1:7233", "http://127.0.0.1:7233");
        check("0.0.0.0:7000", "http://127.0.0.1:7000");
        check("[::]:7233", "http://[::1]:7233");
        check("192.168.1.5:80", "http://192.168.1.5:80");
    }

    #[test]
    fn passwords_of_other_databases_are_hidden() {
        assert_eq!(
            redacted("postgres://app:s3cret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(redacted("postgres://app@db/x"), "postgres://app@db/x");
        assert_eq!(redacted("host=db user=app"), "host=db user=app");
    }

    fn token() -> Secret {
        Secret::parse(&format!("lh_0123456789abcdef_{}", "5e".repeat(32))).expect("token")
    }

    #[test]
    fn the_banner_says_where_things_are_and_what_to_try() {
        let allow = vec!["/bin/sh".to_owned()];
        let token = token();
        let banner = Banner {
            endpoint: ENDPOINT_DEFAULT,
            metrics: Some("127.0.0.1:9464".parse().unwrap()),
            database_url: "postgres://postgres:pw@127.0.0.1:5555/leasehold",
            data_dir: Some(Path::new("/tmp/dev")),
            workers: 2,
            exec_allow: &allow,
            token: &token,
            credentials: Path::new("/home/a/.config/leasehold/credentials"),
        }
        .to_string();
        for want in [
            READY_LINE,
            "gRPC endpoint  http://127.0.0.1:7233",
            "metrics        http://127.0.0.1:9464/metrics",
            "postgres://postgres:pw@127.0.0.1:5555/leasehold",
            "data folder    /tmp/dev",
            "2 in this process; exec nodes may run /bin/sh",
            "  leasehold automation apply -f examples/hello.yaml",
            "  leasehold run start hello --watch",
            "grpcurl -plaintext 127.0.0.1:7233 list",
            &format!("API token      {} (admin)", token.expose()),
            "saved for client commands in /home/a/.config/leasehold/credentials",
            "not for production",
        ] {
            assert!(banner.contains(want), "{want:?} missing from:\n{banner}");
        }
    }

    #[test]
    fn client_commands_name_an_endpoint_other_than_the_default() {
        let token = token();
        let banner = Banner {
            endpoint: "http://127.0.0.1:9000",
            metrics: None,
            database_url: "postgres://u@db/x",
            data_dir: None,
            workers: 1,
            exec_allow: &[],
            token: &token,
            credentials: Path::new("/c"),
        }
        .to_string();
        assert!(
            banner.contains("leasehold --endpoint http://127.0.0.1:9000 run start hello --watch"),
            "{banner}"
        );
        assert!(banner.contains("exec nodes off"), "{banner}");
        assert!(banner.contains("none (--database-url)"), "{banner}");
    }
}
