//! Whether the schema has the runs' trace context (V12), and the statements that read or write
//! it, as they run on a schema without it.
//!
//! A process rehearsing as an older release (`LEASEHOLD_SCHEMA_CEILING` below 12), or one that
//! was handed a store before it migrated, must not name columns its schema lacks. Each fragment
//! of a statement that names them is wrapped in [`if_traced!`], and [`Query::for_schema`] gives
//! the statement without those fragments where the columns are missing. What a run then lacks is
//! its trace context: it is started without one and read as having none.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use deadpool_postgres::Client;

use super::migrate::known_version;
use super::query::Query;
use super::{Error, Store};

/// The migration that gave runs their trace context.
const TRACE_SCHEMA_VERSION: i32 = 12;

/// Marks a fragment of a statement that names the trace context's columns (or the arguments
/// that fill them): left out where the schema lacks them. The markers are SQL comments, so the
/// statement as written runs unchanged.
macro_rules! if_traced {
    ($sql:literal) => {
        concat!("/*traced*/", $sql, "/*end traced*/")
    };
}
pub(super) use if_traced;

const OPEN: &str = "/*traced*/";
const CLOSE: &str = "/*end traced*/";

// Whether runs have the trace columns: the database may be at a schema below this build's when
// the store was made before it migrated. One catalog lookup per store.
const TRACE_COLUMNS_EXIST: Query = Query {
    name: "trace_columns_exist",
    sql: "\
SELECT EXISTS (
    SELECT 1 FROM pg_attribute
    WHERE attrelid = to_regclass('runs') AND attname = 'trace_parent' AND NOT attisdropped
) AS traced",
};

pub(super) const QUERIES: &[Query] = &[TRACE_COLUMNS_EXIST];

impl Query {
    /// This statement as it runs on a schema with (`traced`) or without the trace context.
    pub(super) fn for_schema(self, traced: bool) -> Query {
        if traced || !self.sql.contains(OPEN) {
            return self;
        }
        // Made once per statement and kept for the process's life: a handful of statements.
        static UNTRACED: Mutex<Option<HashMap<&'static str, &'static str>>> = Mutex::new(None);
        let mut cache = UNTRACED.lock().unwrap_or_else(PoisonError::into_inner);
        let sql = *cache
            .get_or_insert_with(HashMap::new)
            .entry(self.name)
            .or_insert_with(|| Box::leak(untraced(self.sql).into_boxed_str()));
        Query {
            name: self.name,
            sql,
        }
    }
}

/// `sql` without its [`if_traced!`] fragments.
fn untraced(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(start) = rest.find(OPEN) {
        out.push_str(&rest[..start]);
        rest = rest[start..]
            .find(CLOSE)
            .map_or("", |end| &rest[start + end + CLOSE.len()..]);
    }
    out.push_str(rest);
    out
}

impl Store {
    /// Whether this store's statements may name the trace context: this build's schema (or its
    /// ceiling) has it, and so does the database. Asked of the database once per store.
    pub(super) async fn traced(&self, client: &Client) -> Result<bool, Error> {
        if let Some(&traced) = self.traced.get() {
            return Ok(traced);
        }
        let traced = known_version()? >= TRACE_SCHEMA_VERSION
            && TRACE_COLUMNS_EXIST
                .query_one(client, &[])
                .await?
                .get::<_, bool>("traced");
        Ok(*self.traced.get_or_init(|| traced))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untraced_statements_leave_out_every_marked_fragment() {
        const SQL: &str = concat!(
            "INSERT INTO runs (a",
            if_traced!(", trace_parent"),
            ") VALUES ($1",
            if_traced!(", $2"),
            ")"
        );
        assert_eq!(untraced(SQL), "INSERT INTO runs (a) VALUES ($1)");
        let query = Query {
            name: "test_insert",
            sql: SQL,
        };
        assert_eq!(query.for_schema(true).sql, SQL);
        assert_eq!(
            query.for_schema(false).sql,
            "INSERT INTO runs (a) VALUES ($1)"
        );
        assert_eq!(untraced("SELECT 1"), "SELECT 1");
    }
}
