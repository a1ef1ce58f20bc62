//! What the driver and the pool say about a failure, in one line an operator can act on.
//!
//! `tokio_postgres::Error` displays only its kind ("db error", "error connecting to server") and
//! keeps what PostgreSQL or the socket said in its source; a log line of the bare error drops the
//! part that explains it. These functions put it back.

use std::error::Error as StdError;
use std::fmt::Write;

use deadpool_postgres::PoolError;
use tokio_postgres::error::DbError;

/// The driver's error with what the server said: its SQLSTATE, message, detail and hint, or the
/// chain of causes of a failure that never reached the server.
pub(super) fn driver_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => server_error(db),
        None => with_causes(e),
    }
}

/// The pool's error with the driver's underneath it.
pub(super) fn pool_error(e: &PoolError) -> String {
    match e {
        PoolError::Backend(driver) => format!("cannot connect: {}", driver_error(driver)),
        other => with_causes(other),
    }
}

/// `ERROR 23505: message (detail: …; hint: …)`.
fn server_error(db: &DbError) -> String {
    let mut line = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
    let mut extras = Vec::new();
    // A constraint violation's detail may quote the whole row ("Failing row contains (…)"),
    // which holds a run's inputs and outputs: they may carry secrets, and logs must not.
    if let Some(detail) = db
        .detail()
        .filter(|d| !d.starts_with("Failing row contains"))
    {
        extras.push(format!("detail: {detail}"));
    }
    if let Some(hint) = db.hint() {
        extras.push(format!("hint: {hint}"));
    }
    if let Some(constraint) = db.constraint() {
        extras.push(format!("constraint: {constraint}"));
    }
    if !extras.is_empty() {
        let _ = write!(line, " ({})", extras.join("; "));
    }
    line
}

/// The error's own message followed by each of its causes', `: `-separated.
fn with_causes(e: &dyn StdError) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(inner) = cause {
        let said = inner.to_string();
        // Some wrappers repeat their cause in their own message.
        if !line.ends_with(&said) {
            let _ = write!(line, ": {said}");
        }
        cause = inner.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::with_causes;

    #[derive(Debug, thiserror::Error)]
    #[error("error connecting to server")]
    struct Outer(#[source] io::Error);

    #[test]
    fn causes_follow_the_message() {
        let e = Outer(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        ));
        assert_eq!(
            with_causes(&e),
            "error connecting to server: Connection refused (os error 111)"
        );
    }
}
