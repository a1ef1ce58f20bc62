//! Picks the PostgreSQL server for this test process, once, and keeps it for every test runtime.

use std::env;
use std::sync::OnceLock;

use crate::cluster::Cluster;

/// The environment variable naming an existing server to test against, as a `postgres://` URL of
/// its admin database.
pub const DATABASE_URL_ENV: &str = "LEASEHOLD_TEST_DATABASE_URL";

/// The server every test of this process uses.
///
/// A failed start is kept as its message, so that every test fails with the same explanation
/// instead of trying again. It lives in a std `OnceLock`, not in any tokio runtime, because each
/// `#[tokio::test]` has its own runtime.
static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();

struct Server {
    admin_url: String,
    /// The throwaway cluster, or `None` when [`DATABASE_URL_ENV`] names the server.
    cluster: Option<Cluster>,
}

/// The URL of the admin database, from which test databases are created and dropped.
///
/// The first call picks the server: the one [`DATABASE_URL_ENV`] names, or else a throwaway
/// cluster, which this call starts (blocking, about a second).
///
/// # Panics
///
/// If [`DATABASE_URL_ENV`] is not a valid URL, or the throwaway cluster cannot start; the message
/// says why.
pub fn admin_url() -> &'static str {
    match SERVER.get_or_init(select) {
        Ok(server) => &server.admin_url,
        Err(message) => panic!("leasehold-testkit: {message}"),
    }
}

/// Whether tests run on the throwaway cluster, which disappears when the process exits.
pub(crate) fn is_throwaway() -> bool {
    matches!(
        SERVER.get(),
        Some(Ok(Server {
            cluster: Some(_),
            ..
        }))
    )
}

fn select() -> Result<Server, String> {
    if let Some(url) = env::var_os(DATABASE_URL_ENV).filter(|url| !url.is_empty()) {
        let url = url
            .into_string()
            .map_err(|_| format!("{DATABASE_URL_ENV} is not valid UTF-8"))?;
        check_url(&url)?;
        return Ok(Server {
            admin_url: url,
            cluster: None,
        });
    }
    let cluster = Cluster::start()?;
    if !register_exit_hook() {
        cluster.destroy();
        return Err(
            "could not register the atexit hook that stops the throwaway cluster".to_owned(),
        );
    }
    Ok(Server {
        admin_url: cluster.admin_url(),
        cluster: Some(cluster),
    })
}

fn check_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(format!(
            "{DATABASE_URL_ENV} must be a URL like \
             postgres://postgres@127.0.0.1:5432/postgres, not {url:?}"
        ));
    }
    url.parse::<tokio_postgres::Config>()
        .map(drop)
        .map_err(|e| format!("{DATABASE_URL_ENV} is not a valid PostgreSQL URL ({e}): {url:?}"))
}

/// Returns `url` with its database replaced by `database`, keeping user, host, port and query
/// parameters.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + "://".len());
    let authority_end = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{database}", &base[..authority_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// Returns `url` with its user and password replaced, keeping host, port, database and query
/// parameters.
pub fn with_user(url: &str, user: &str, password: &str) -> String {
    let authority_start = url.find("://").map_or(0, |i| i + "://".len());
    let rest = &url[authority_start..];
    let host_start = rest
        .find(['/', '?'])
        .map_or(rest, |end| &rest[..end])
        .rfind('@')
        .map_or(0, |at| at + 1);
    format!(
        "{}{user}:{password}@{}",
        &url[..authority_start],
        &rest[host_start..]
    )
}

/// Registers [`stop_at_exit`] with the C runtime.
///
/// libtest ends the test process with `exit` (or by returning from `main`), and both run `atexit`
/// handlers; std has no hook of its own that runs then, and statics are never dropped.
// `libc::atexit` is the only way to run code at process exit; see the SAFETY note.
#[allow(unsafe_code)]
fn register_exit_hook() -> bool {
    // SAFETY: `stop_at_exit` is a plain `extern "C" fn()` with no arguments; it only reads a
    // `OnceLock`, runs commands and removes files, and does not unwind.
    unsafe { libc::atexit(stop_at_exit) == 0 }
}

extern "C" fn stop_at_exit() {
    if let Some(Ok(Server {
        cluster: Some(cluster),
        ..
    })) = SERVER.get()
    {
        cluster.destroy();
    }
}

#[cfg(test)]
mod tests {
    use super::{with_database, with_user};

    #[test]
    fn with_user_replaces_only_the_credentials() {
        let check = |url: &str, expected: &str| assert_eq!(with_user(url, "r", "p"), expected);
        check(
            "postgres://postgres@127.0.0.1:5432/postgres",
            "postgres://r:p@127.0.0.1:5432/postgres",
        );
        check(
            "postgresql://u:s@h:1/db?sslmode=disable",
            "postgresql://r:p@h:1/db?sslmode=disable",
        );
        check("postgres://h:1/db", "postgres://r:p@h:1/db");
        check(
            "postgres://u@h/db?application_name=a@b",
            "postgres://r:p@h/db?application_name=a@b",
        );
    }

    fn check(url: &str, expected: &str) {
        assert_eq!(with_database(url, "db"), expected, "for {url}");
    }

    #[test]
    fn with_database_replaces_only_the_database() {
        check(
            "postgres://postgres@127.0.0.1:5432/postgres",
            "postgres://postgres@127.0.0.1:5432/db",
        );
        check(
            "postgresql://u:p@h:1/postgres?sslmode=disable",
            "postgresql://u:p@h:1/db?sslmode=disable",
        );
        check("postgres://u@h:1", "postgres://u@h:1/db");
        check("postgres://u@h:1/", "postgres://u@h:1/db");
        check(
            "postgres://u@h?connect_timeout=5",
            "postgres://u@h/db?connect_timeout=5",
        );
        check(
            "postgres://u@%2Fvar%2Frun%2Fpostgresql/x",
            "postgres://u@%2Fvar%2Frun%2Fpostgresql/db",
        );
    }
}
