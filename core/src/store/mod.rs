//! The PostgreSQL store: the one place where SQL lives.
//!
//! Every statement is a named `Query` value (`query.rs`) beside the method that runs it, with a
//! comment saying why it is shaped so; one helper prepares, caches, executes and traces it. Every
//! write a worker makes to a run it holds is *fenced*: it matches the run id **and** the lease
//! epoch of the claim, under the row lock of the `runs` row, so that a holder whose lease moved on
//! changes nothing. Zero rows is [`FenceError::LeaseLost`], unless the same write already landed under
//! the same epoch (a lost commit acknowledgement), which succeeds quietly (docs/lease_protocol.md,
//! rule 3). Times come from Postgres' `now()`, never from a process's clock (rule 7).

mod automations;
mod claims;
mod connect;
mod control;
mod error;
mod events;
mod gated;
mod gates;
mod leader;
mod limits;
mod listing;
mod migrate;
mod nodes;
pub mod outage;
mod outcomes;
mod query;
mod queue;
mod retention;
mod routing;
mod runs;
mod schedules;
mod startup;
mod sweeps;
mod tokens;
mod watch;
mod workers;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};

use connect::Connector;
use query::Query;

pub use automations::{AutomationRecord, AutomationStatus, AutomationVersion, Stored};
pub use claims::{Claim, ClaimedRun, Heartbeat, Released, Renewed, Served, StartedNode};
pub use connect::{SslMode, TlsSettingsError};
pub use error::{Error, FenceError, RequestError};
pub use events::Event;
pub use gates::{Decision, DecisionKind, GateRecord, GateStatus};
pub use leader::{LeaderEpoch, Leadership};
pub use limits::QueueRecord;
pub use listing::{
    Cursor, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Page, PageRequest, RunFilter, Stats, page_size,
};
pub use migrate::{
    Applied, Migration, SCHEMA_CEILING_ENV, SchemaStatus, Step, known_version, migrations,
    newest_version,
};
pub use nodes::{Completed, NodeCompletion, NodeRecord, NodeStart};
pub use outcomes::Failure;
pub use queue::{QueueStanding, WORKER_DEMAND_SQL, queue_demand_sql};
pub use retention::TenantRetention;
pub use runs::{
    RunDeadlines, RunRecord, ScheduledFire, StartOutcome, StartRun, Started, StartedRun, Trigger,
};
pub use schedules::{ScheduleKey, SchedulePause, ScheduleRecord};
pub use startup::{WhenUnavailable, startup_retry_delay};
pub use sweeps::{
    AutoResumeParams, CountsFolded, DeadlineFailure, FireDecision, PausingParams, PendingGateView,
    ReapParams, RetentionCutoffs, SilentWorker, StaleGateParams, UnstartedFire,
};
pub use tokens::{
    MalformedToken, NewToken, Role, Secret, TOKEN_PREFIX, TokenError, TokenId, TokenRecord,
    UnknownRole,
};
pub use watch::RunHead;
pub use workers::{
    ALIVE_WITHOUT_STATED_LEASE, AdvertisedKind, NodeKindRecord, QUEUED_CHANNEL, STOPPED_CHANNEL,
    StopNotice, StopNotices, Wakeups, WorkerInfo, WorkerRecord,
};

/// Time to establish a connection before giving up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time sent data may stay unacknowledged before the connection is dropped (Linux).
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle time before keepalive probes check a quiet connection.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);

/// The session settings of [`Store::connect_worker`]; the URL's own `options` come after them and
/// win. Generic plans, and no JIT: a generic plan estimates a parameter's LIMIT and an array's
/// length blindly (a tenth of a table, ten elements), and the claim's estimate then passes
/// `jit_above_cost`, so every claim compiled itself for 100 to 300 ms (measured: a claim of 384
/// runs took 101 ms with JIT, 3.5 ms without). Leasehold's statements are short; none gains
/// from JIT.
const GENERIC_PLANS: &str = "-c plan_cache_mode=force_generic_plan -c jit=off";

/// Sessions of `connector` with [`GENERIC_PLANS`]; the URL's own `options` come after it and win.
fn with_generic_plans(connector: &mut Connector) {
    let config = connector.config_mut();
    let options = match config.get_options() {
        Some(theirs) => format!("{GENERIC_PLANS} {theirs}"),
        None => GENERIC_PLANS.to_owned(),
    };
    config.options(options);
}

/// Connections in a pool unless the caller says otherwise.
pub const POOL_SIZE_DEFAULT: usize = 16;

/// The metrics label of a pool nobody named.
const DEFAULT_POOL_NAME: &str = "main";

/// A pool's connections and callers at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStatus {
    /// Connections it may open.
    pub max_size: usize,
    /// Connections open.
    pub size: usize,
    /// Open connections no caller holds.
    pub available: usize,
    /// Callers waiting for a connection.
    pub waiting: usize,
}

/// A handle on the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    /// Kept for connections outside the pool, such as the one that listens for wake-ups.
    connector: Connector,
    /// What the pool serves, as the metrics label it (`api`, `worker`, `sweeps`).
    pool_name: &'static str,
    /// The schema version the statements may use, once asked (`gated.rs`).
    schema: Arc<OnceLock<i32>>,
}

impl Store {
    /// Connects to `url` without checking the schema: for `migrate` and for tests that migrate.
    ///
    /// `url` is a `postgres://` URL with libpq's TLS parameters (`sslmode`, `sslrootcert`,
    /// `sslcert`, `sslkey`; see `connect.rs`), or a `key=value` string. The files it names are
    /// read here, once; nothing is sent until the first call.
    pub fn connect_unchecked(url: &str, pool_size: usize) -> Result<Self, Error> {
        Self::with_connector(Connector::from_url(url)?, pool_size)
    }

    /// Connects a worker's store to `url` and refuses a database whose schema this build cannot
    /// serve. Its sessions use generic plans: every statement of a worker finds rows by key or by
    /// arrays of keys, where a generic plan is as good as a custom one, and planning each batched
    /// write anew cost about a third of the database's time on the hot path (bench/README.md).
    /// A generic plan is made again when autovacuum's ANALYZE changes a table's statistics.
    pub async fn connect_worker(url: &str, pool_size: usize) -> Result<Self, Error> {
        let store = Self::connect_worker_unchecked(url, pool_size)?;
        store.check_schema().await?;
        Ok(store)
    }

    /// [`Store::connect_worker`] without checking the schema: for a caller that migrated it.
    pub fn connect_worker_unchecked(url: &str, pool_size: usize) -> Result<Self, Error> {
        let mut connector = Connector::from_url(url)?;
        with_generic_plans(&mut connector);
        Ok(Self::with_connector(connector, pool_size)?.named("worker"))
    }

    fn with_connector(mut connector: Connector, pool_size: usize) -> Result<Self, Error> {
        let config = connector.config_mut();
        // A black-holed database must fail calls in seconds, not after the kernel's 15-minute
        // retransmission timeout: the worker retries writes only while its lease lasts, and a
        // shutdown must not hang on a dead socket. The URL's own settings win.
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(TCP_USER_TIMEOUT);
        }
        config.keepalives_idle(KEEPALIVE_IDLE);
        let manager = Manager::from_config(
            connector.config().clone(),
            connector.tls(),
            ManagerConfig {
                // A pooled connection is checked with a round trip only when it is taken back
                // after an error; a dead one surfaces on first use and the pool replaces it.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(30)))
            .create_timeout(Some(Duration::from_secs(10)))
            .build()
            .map_err(|e| Error::BadDatabaseUrl(e.to_string()))?;
        Ok(Self {
            pool,
            connector,
            pool_name: DEFAULT_POOL_NAME,
            schema: Arc::default(),
        })
    }

    /// This store with its pool labelled `name` in the metrics (its wait times, its standing).
    #[must_use]
    pub fn named(mut self, name: &'static str) -> Self {
        self.pool_name = name;
        self
    }

    /// What the pool serves, as the metrics label it.
    pub fn pool_name(&self) -> &'static str {
        self.pool_name
    }

    /// Another pool of `pool_size` connections on the same database, with the same settings:
    /// for work that must never wait behind this pool's callers (the leader lease, the sweeps,
    /// the health check, the watch poller behind a busy API). Connects nothing until first used.
    /// `name` labels it in the metrics.
    pub fn sibling(&self, pool_size: usize, name: &'static str) -> Self {
        // The same settings built this store's pool, and only the size differs, which the pool
        // takes whatever it is: building it again cannot fail.
        Self::with_connector(self.connector.clone(), pool_size)
            .expect("a pool with the settings of an existing one")
            .named(name)
    }

    /// [`Store::sibling`] with generic plans, as a worker's sessions have them: for statements
    /// that find rows by arrays of keys, such as the coordinator's gathered single starts, where
    /// planning each execution anew costs more than the statement's work.
    pub fn sibling_with_generic_plans(&self, pool_size: usize, name: &'static str) -> Self {
        let mut connector = self.connector.clone();
        with_generic_plans(&mut connector);
        // As in `sibling`: only the options differ from a pool that was built.
        Self::with_connector(connector, pool_size)
            .expect("a pool with the settings of an existing one")
            .named(name)
    }

    /// The pool's standing now, for the metrics: cheap (a few atomic loads), taken when scraped.
    pub fn pool_status(&self) -> PoolStatus {
        let status = self.pool.status();
        PoolStatus {
            max_size: status.max_size,
            size: status.size,
            available: status.available,
            waiting: status.waiting,
        }
    }

    /// Connects to `url` and refuses a database whose schema this build cannot serve.
    pub async fn connect(url: &str, pool_size: usize) -> Result<Self, Error> {
        let store = Self::connect_unchecked(url, pool_size)?;
        store.check_schema().await?;
        Ok(store)
    }

    /// This store with its sessions named `application_name` (as `pg_stat_activity` and the
    /// server's log show them) and every statement bounded by `statement_timeout`, so that a
    /// statement stuck behind a lock fails and is retried instead of holding a connection for
    /// good. The URL's own `application_name` and `options` win. No connection is made here.
    pub fn with_session(
        &self,
        application_name: &str,
        statement_timeout: Duration,
    ) -> Result<Self, Error> {
        let mut connector = self.connector.clone();
        let config = connector.config_mut();
        if config.get_application_name().is_none() {
            config.application_name(application_name);
        }
        let timeout = format!("-c statement_timeout={}", millis(statement_timeout));
        let options = match config.get_options() {
            Some(theirs) => format!("{timeout} {theirs}"),
            None => timeout,
        };
        config.options(options);
        Ok(Self::with_connector(connector, self.pool.status().max_size)?.named(self.pool_name))
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, Error> {
        let asked = std::time::Instant::now();
        let client = self.pool.get().await;
        // Recorded for failures too: a pool that times out its callers waited the longest.
        metrics::histogram!("leasehold_db_pool_wait_seconds", "pool" => self.pool_name)
            .record(asked.elapsed().as_secs_f64());
        client.map_err(|e| match e {
            // A refused certificate or a server without TLS is said in one line naming the
            // server, not as the pool's nested "error occurred while creating a new object".
            PoolError::Backend(e) if self.connector.tls_failure(&e).is_some() => {
                self.connector.explain(e)
            }
            e => e.into(),
        })
    }

    /// Answers when the database does: for health checks.
    pub async fn ping(&self) -> Result<(), Error> {
        let client = self.client().await?;
        PING.query_one(&client, &[]).await?;
        Ok(())
    }

    /// The TLS version of a pooled connection as the server reports it (`TLSv1.3`), or `None`
    /// when the connection is not encrypted: for a startup log line, and for the tests that
    /// must tell an encrypted connection from a plain one.
    pub async fn tls_version(&self) -> Result<Option<String>, Error> {
        let client = self.client().await?;
        Ok(SESSION_TLS
            .query_opt(&client, &[])
            .await?
            .map(|row| row.get(0)))
    }

    /// Prepares every named query against the database, so that a typo or a schema mismatch
    /// fails here (in a test, at startup) rather than on the first run that needs the query.
    /// Returns how many were prepared.
    pub async fn check_queries(&self) -> Result<usize, Error> {
        let client = self.client().await?;
        let schema = self.schema(&client).await?;
        let mut prepared = 0;
        for query in all_queries() {
            // Each form a schema at or below this one runs, so an older form is checked too.
            for form in query.forms(schema) {
                client
                    .prepare(form.sql)
                    .await
                    .map_err(|source| Error::BadQuery {
                        name: query.name,
                        source,
                    })?;
            }
            prepared += 1;
        }
        Ok(prepared)
    }
}

// The cheapest round trip that proves a pooled connection works.
const PING: Query = Query {
    name: "ping",
    sql: "SELECT 1",
};

// The server's view of this session's encryption; `pg_stat_ssl` has a row for every backend.
const SESSION_TLS: Query = Query {
    name: "session_tls",
    sql: "SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid() AND ssl",
};

fn all_queries() -> impl Iterator<Item = Query> {
    [
        &[PING, SESSION_TLS][..],
        automations::QUERIES,
        claims::QUERIES,
        control::QUERIES,
        events::QUERIES,
        gates::QUERIES,
        leader::QUERIES,
        limits::QUERIES,
        listing::QUERIES,
        migrate::QUERIES,
        migrate::GRANT_QUERIES,
        nodes::QUERIES,
        outcomes::QUERIES,
        queue::QUERIES,
        retention::QUERIES,
        schedules::QUERIES,
        routing::QUERIES,
        runs::QUERIES,
        tokens::QUERIES,
        gated::QUERIES,
        watch::QUERIES,
        workers::QUERIES,
    ]
    .into_iter()
    .flatten()
    .chain(sweeps::queries())
    .copied()
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sibling_with_generic_plans_keeps_the_sessions_settings_and_adds_generic_plans() {
        let store = Store::connect_unchecked("postgres://u@h:1/db?options=-c%20work_mem%3D8MB", 4)
            .expect("a store")
            .with_session("leasehold-test", Duration::from_secs(30))
            .expect("a session");
        let options = |s: &Store| s.connector.config().get_options().map(str::to_owned);
        let plain = options(&store.sibling(2, "plain")).expect("options");
        assert!(!plain.contains(GENERIC_PLANS), "{plain}");
        let generic = options(&store.sibling_with_generic_plans(2, "generic")).expect("options");
        assert!(
            generic.starts_with(&format!("{GENERIC_PLANS} ")),
            "{generic}"
        );
        // The session's settings and the URL's own options stay, the URL's last so that they win.
        assert!(generic.ends_with(&plain), "{generic} / {plain}");
        assert!(plain.contains("statement_timeout=30000"), "{plain}");
        assert!(plain.ends_with("work_mem=8MB"), "{plain}");
        assert_eq!(store.pool_status().max_size, 4);
    }

    /// Every statement the store's files define is in [`all_queries`], so that
    /// [`Store::check_queries`] prepares it at start-up: a statement left out of its file's
    /// `QUERIES` would fail only when first run.
    #[test]
    fn every_statement_of_the_store_is_checked_at_start_up() {
        fn names_in(dir: &std::path::Path, names: &mut Vec<(String, String)>) {
            for entry in std::fs::read_dir(dir).expect("the store's folder") {
                let path = entry.expect("an entry").path();
                if path.is_dir() {
                    names_in(&path, names);
                    continue;
                }
                let text = std::fs::read_to_string(&path).expect("a source file");
                let mut lines = text.lines();
                while let Some(line) = lines.next() {
                    // `const NAME: Query = Query {`, then its `name: "…",` on the next line.
                    if !(line.contains("const ") && line.ends_with(": Query = Query {")) {
                        continue;
                    }
                    let name = lines
                        .next()
                        .and_then(|next| next.trim().strip_prefix("name: \""))
                        .and_then(|rest| rest.split_once('"'))
                        .map(|(name, _)| name.to_owned())
                        .unwrap_or_else(|| {
                            panic!("{}: a statement without its name", path.display())
                        });
                    names.push((path.display().to_string(), name));
                }
            }
        }
        let mut defined = Vec::new();
        names_in(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store"),
            &mut defined,
        );
        assert!(defined.len() > 50, "found only {defined:?}");
        let checked: std::collections::HashSet<&str> = all_queries().map(|q| q.name).collect();
        let missing: Vec<_> = defined
            .iter()
            .filter(|(_, name)| !checked.contains(name.as_str()))
            .collect();
        assert!(missing.is_empty(), "not in any QUERIES: {missing:?}");
    }
}
