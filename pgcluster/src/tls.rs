//! TLS for a cluster: the server's certificate and key in the data folder, `ssl = on`, and TCP
//! connections allowed only over TLS, with a client certificate when the caller asks for one.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::{Error, Server};

/// The server's certificate, in the data folder.
const CERT_FILE: &str = "server.crt";
/// The server's private key, in the data folder.
const KEY_FILE: &str = "server.key";
/// The CA that client certificates must chain to, in the data folder.
const CLIENT_CA_FILE: &str = "client_ca.crt";

/// What a TLS cluster serves, as PEM text. The caller makes it (tests generate a CA); this crate
/// only installs it.
#[derive(Clone)]
pub struct Tls {
    /// The server's certificate chain, leaf first.
    pub cert_pem: String,
    /// The server's private key.
    pub key_pem: String,
    /// When set, every connection must present a certificate issued by this CA whose common
    /// name is the user's (`clientcert=verify-full` in `pg_hba.conf`).
    pub client_ca_pem: Option<String>,
}

// The key stays out of logs and panic messages.
impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<hidden>")
            .field("client_ca_pem", &self.client_ca_pem)
            .finish()
    }
}

impl Server {
    /// Turns TLS on in a cluster made by [`Server::initdb`] and not started yet: writes the
    /// certificate and key into the data folder (the key mode 0600 and owned by the server's
    /// user, or the server refuses it), adds `ssl = on` and the files to `postgresql.conf`, and
    /// makes every `host` line of `pg_hba.conf` a `hostssl` line, so that a plain TCP connection
    /// is refused. With [`Tls::client_ca_pem`], each of those lines also requires a client
    /// certificate (`clientcert=verify-full`). Restarts keep it all.
    ///
    /// # Errors
    /// If a file cannot be written or handed to the server's user.
    pub fn install_tls(&self, tls: &Tls) -> Result<(), Error> {
        let data = self.pgdata();
        self.write_file(&data.join(CERT_FILE), &tls.cert_pem, 0o644)?;
        self.write_file(&data.join(KEY_FILE), &tls.key_pem, 0o600)?;
        let mut conf = format!(
            "\n# leasehold-pgcluster: TLS.\nssl = on\nssl_cert_file = '{CERT_FILE}'\n\
             ssl_key_file = '{KEY_FILE}'\n"
        );
        if let Some(ca) = &tls.client_ca_pem {
            self.write_file(&data.join(CLIENT_CA_FILE), ca, 0o644)?;
            conf.push_str(&format!("ssl_ca_file = '{CLIENT_CA_FILE}'\n"));
        }
        let conf_path = data.join("postgresql.conf");
        OpenOptions::new()
            .append(true)
            .open(&conf_path)
            .and_then(|mut file| file.write_all(conf.as_bytes()))
            .map_err(Error::io(format!("adding TLS to {}", conf_path.display())))?;
        let hba_path = data.join("pg_hba.conf");
        let hba = fs::read_to_string(&hba_path)
            .map_err(Error::io(format!("reading {}", hba_path.display())))?;
        fs::write(&hba_path, hostssl_only(&hba, tls.client_ca_pem.is_some()))
            .map_err(Error::io(format!("writing {}", hba_path.display())))
    }

    /// Writes `text` to `path` with `mode` from the start (a key is never readable by others,
    /// even for a moment), and gives it to the server's user.
    fn write_file(&self, path: &Path, text: &str, mode: u32) -> Result<(), Error> {
        let what = || format!("writing {}", path.display());
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(path)
            .map_err(Error::io(what()))?;
        file.write_all(text.as_bytes()).map_err(Error::io(what()))?;
        // `mode` applies only to a file that did not exist; an old one keeps its own.
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(Error::io(what()))?;
        self.run_as().give(path)
    }
}

/// `pg_hba.conf` with every `host` line made a `hostssl` line, and with
/// `clientcert=verify-full` appended when `client_cert`.
fn hostssl_only(hba: &str, client_cert: bool) -> String {
    let mut out = String::with_capacity(hba.len() + 64);
    for line in hba.lines() {
        match line
            .strip_prefix("host")
            .filter(|rest| rest.starts_with([' ', '\t']))
        {
            Some(rest) => {
                out.push_str("hostssl");
                out.push_str(rest);
                if client_cert {
                    out.push_str(" clientcert=verify-full");
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_host_lines_become_hostssl_lines() {
        let hba = "# TYPE DATABASE USER ADDRESS METHOD\n\
                   local all all trust\n\
                   host all all 127.0.0.1/32 trust\n\
                   host\treplication all ::1/128 scram-sha-256\n\
                   hostssl all all 0.0.0.0/0 cert\n\
                   hostnossl all all 0.0.0.0/0 reject\n";
        assert_eq!(
            hostssl_only(hba, false),
            "# TYPE DATABASE USER ADDRESS METHOD\n\
             local all all trust\n\
             hostssl all all 127.0.0.1/32 trust\n\
             hostssl\treplication all ::1/128 scram-sha-256\n\
             hostssl all all 0.0.0.0/0 cert\n\
             hostnossl all all 0.0.0.0/0 reject\n"
        );
        assert_eq!(
            hostssl_only(
                "local all all trust\nhost all all 127.0.0.1/32 trust\n",
                true
            ),
            "local all all trust\n\
             hostssl all all 127.0.0.1/32 trust clientcert=verify-full\n"
        );
    }

    #[test]
    fn the_key_is_not_in_debug_output() {
        let tls = Tls {
            cert_pem: "CERT".into(),
            key_pem: "SECRET KEY".into(),
            client_ca_pem: None,
        };
        let shown = format!("{tls:?}");
        assert!(
            shown.contains("CERT") && !shown.contains("SECRET"),
            "{shown}"
        );
    }
}
