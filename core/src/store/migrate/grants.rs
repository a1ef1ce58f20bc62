//! The runtime role: what coordinators and workers connect as. It reads and writes rows and
//! calls the partition function, and owns nothing: it cannot change the schema.

use super::Error;
use super::Store;
use crate::store::query::Query;

// Names the role for the grant below, for this transaction only: a DO block takes no parameters,
// and reading the name back from a setting lets it quote it with format('%I') instead of having
// it spliced into the SQL.
pub(super) const NAME_RUNTIME_ROLE: Query = Query {
    name: "name_runtime_role",
    sql: "SELECT set_config('leasehold.runtime_role', $1::text, true)",
};

// Grants the runtime role what the processes need and nothing more: rows of every table (the
// migration bookkeeping read-only), sequences, and the partition functions (upkeep's, and the
// retention sweep's drop), which run as their owner. The default privileges cover the tables
// later migrations and partition upkeep create, when the same role creates them. A role that
// migrates or is a superuser is refused: it would own the schema, or bypass every grant, and
// the split would be for show.
const GRANT_RUNTIME_ROLE: Query = Query {
    name: "grant_runtime_role",
    sql: r#"
DO $grant$
DECLARE
    runtime text := current_setting('leasehold.runtime_role');
    here text := current_schema();
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = runtime) THEN
        RAISE EXCEPTION 'role "%" does not exist; create it first (CREATE ROLE % LOGIN)',
            runtime, quote_ident(runtime) USING ERRCODE = 'undefined_object';
    END IF;
    IF runtime = current_user THEN
        RAISE EXCEPTION 'the runtime role "%" is the role that migrates; give the processes a role of their own',
            runtime USING ERRCODE = 'invalid_grant_operation';
    END IF;
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = runtime) THEN
        RAISE EXCEPTION 'the runtime role "%" is a superuser, which no grant restricts',
            runtime USING ERRCODE = 'invalid_grant_operation';
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', here, runtime);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA %I TO %I',
                   here, runtime);
    EXECUTE format('REVOKE INSERT, UPDATE, DELETE ON refinery_schema_history, '
                   'leasehold_schema_floor FROM %I', runtime);
    EXECUTE format('GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA %I TO %I', here, runtime);
    EXECUTE format('GRANT EXECUTE ON FUNCTION leasehold_ensure_event_partitions(date, integer) '
                   'TO %I', runtime);
    -- V20's; absent from a schema migrated only that far (a rehearsal below it).
    IF to_regprocedure('leasehold_drop_event_partition(date)') IS NOT NULL THEN
        EXECUTE format('GRANT EXECUTE ON FUNCTION leasehold_drop_event_partition(date) TO %I',
                       runtime);
    END IF;
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I '
                   'GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO %I', here, runtime);
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I '
                   'GRANT USAGE, SELECT ON SEQUENCES TO %I', here, runtime);
END
$grant$"#,
};

impl Store {
    /// Grants `role` what coordinators and workers need on the migrated schema: USAGE on the
    /// schema, SELECT, INSERT, UPDATE and DELETE on its tables (SELECT only on the migration
    /// bookkeeping), USAGE and SELECT on its sequences, EXECUTE on the partition functions, and
    /// the same by default on what this role creates later. Never ownership, never DDL.
    /// Idempotent; `leasehold migrate --runtime-role` calls it after migrating.
    ///
    /// # Locks
    /// GRANT takes a lock on each table's catalog row only, not on the table's data.
    pub async fn grant_runtime_role(&self, role: &str) -> Result<(), Error> {
        let client = self.client().await?;
        let result = async {
            client.batch_execute("BEGIN").await?;
            NAME_RUNTIME_ROLE.execute(&client, &[&role]).await?;
            GRANT_RUNTIME_ROLE.execute(&client, &[]).await?;
            client.batch_execute("COMMIT").await
        }
        .await;
        if let Err(e) = result {
            let _ = client.batch_execute("ROLLBACK").await;
            let said = e
                .as_db_error()
                .map_or_else(|| e.to_string(), |db| db.message().to_owned());
            return Err(Error::Migration(format!(
                "granting the runtime role {role:?}: {said}"
            )));
        }
        Ok(())
    }
}

pub(super) const QUERIES: &[Query] = &[NAME_RUNTIME_ROLE, GRANT_RUNTIME_ROLE];
