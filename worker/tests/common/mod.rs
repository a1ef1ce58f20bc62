//! Shared setup for the worker tests: a migrated database, a worker in-process, a recording
//! handler, and a TCP proxy that can cut the worker off from Postgres.
#![allow(dead_code)] // Each test binary uses its own subset.

pub mod proxy;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use leasehold_core::ids::{AutomationId, ClaimantId, NodeId, RunId, TenantId};
use leasehold_core::run::RunStatus;
use leasehold_core::spec;
use leasehold_core::store::{StartRun, Store, Trigger};
use leasehold_testkit::{TestDb, wait_for};
use leasehold_worker::handlers::{self, ExecPolicy};
use leasehold_worker::{Config, Context, Handler, HandlerError, Registry, Report, Worker};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub const DEADLINE: Duration = Duration::from_secs(20);

pub struct Bundle {
    pub store: Store,
    pub sql: tokio_postgres::Client,
    pub tenant: TenantId,
    pub ledger: Ledger,
    pub db: TestDb,
}

pub async fn setup() -> Bundle {
    let db = TestDb::new().await;
    // A worker's store, with its generic plans, as `leasehold worker` connects.
    let store = Store::connect_worker_unchecked(db.url(), 8).expect("pool");
    store.migrate().await.expect("migrate");
    let (sql, connection) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls)
        .await
        .expect("fixture connection");
    tokio::spawn(connection);
    Bundle {
        store,
        sql,
        tenant: TenantId::default(),
        ledger: Ledger::default(),
        db,
    }
}

/// Short settings so that tests finish quickly; the lease is the shortest allowed.
pub fn config(name: &str) -> Config {
    let mut config = Config::new(ClaimantId::from(name)).with_lease(Duration::from_secs(5));
    config.heartbeat_interval = Duration::from_millis(200);
    config.poll_interval = Duration::from_millis(50);
    config.shutdown_grace = Duration::from_secs(5);
    config.validated().expect("test config")
}

/// Every attempt the `record` kind executed.
#[derive(Debug, Clone)]
pub struct Execution {
    pub run_id: RunId,
    pub node_id: NodeId,
    pub attempt: u32,
    pub epoch: i64,
    pub started: Instant,
    pub finished: Option<Instant>,
    pub upstream: Value,
    pub cancelled: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Ledger(Arc<Mutex<Vec<Execution>>>);

impl Ledger {
    pub fn all(&self) -> Vec<Execution> {
        self.0.lock().expect("ledger").clone()
    }

    pub fn of(&self, node: &str) -> Vec<Execution> {
        self.all()
            .into_iter()
            .filter(|e| e.node_id.as_str() == node)
            .collect()
    }
}

/// The `record` kind: notes each attempt; `input.sleep_ms` sleeps (until cancelled);
/// `input.fail_first` fails that many attempts (retryably); `input.terminal` fails for good;
/// `input.panic` panics; `input.nul_output` returns text with a NUL character.
#[derive(Clone)]
pub struct Record(pub Ledger);

impl Handler for Record {
    async fn run(&self, ctx: Context) -> Result<Value, HandlerError> {
        let index = {
            let mut ledger = self.0.0.lock().expect("ledger");
            ledger.push(Execution {
                run_id: ctx.run_id,
                node_id: ctx.node_id.clone(),
                attempt: ctx.attempt,
                epoch: ctx.epoch.0,
                started: Instant::now(),
                finished: None,
                upstream: serde_json::to_value(&ctx.upstream).expect("upstream"),
                cancelled: false,
            });
            ledger.len() - 1
        };
        let sleep_ms = ctx
            .input
            .get("sleep_ms")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let cancelled = tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(sleep_ms)) => false,
            () = ctx.cancel.cancelled() => true,
        };
        {
            let mut ledger = self.0.0.lock().expect("ledger");
            ledger[index].finished = Some(Instant::now());
            ledger[index].cancelled = cancelled;
        }
        if cancelled {
            return Err(HandlerError::Retryable("cancelled".into()));
        }
        assert!(ctx.input.get("panic").is_none(), "told to panic");
        if ctx.input.get("nul_output").is_some() {
            return Ok(json!({ "text": "before\u{0}after" }));
        }
        if ctx.input.get("terminal").is_some() {
            return Err(HandlerError::Terminal("told to fail for good".into()));
        }
        let fail_first = ctx
            .input
            .get("fail_first")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        if u64::from(ctx.attempt) <= fail_first {
            return Err(HandlerError::Retryable(format!(
                "planned failure {}",
                ctx.attempt
            )));
        }
        Ok(json!({ "node": ctx.node_id.as_str(), "attempt": ctx.attempt }))
    }
}

impl Bundle {
    pub fn registry(&self) -> Registry {
        let mut registry = handlers::builtin(ExecPolicy {
            allowed_programs: vec!["/bin/sh".into()],
            ..ExecPolicy::default()
        });
        registry.register("record", Record(self.ledger.clone()));
        registry
    }

    pub async fn automation(&self, yaml: &str) -> AutomationId {
        let spec = spec::parse_yaml(yaml).expect("valid spec");
        self.store
            .create_automation(&self.tenant, &spec)
            .await
            .expect("create automation");
        spec.id
    }

    pub async fn start(&self, automation: &AutomationId) -> RunId {
        self.store
            .start_run(&StartRun {
                tenant: self.tenant.clone(),
                automation_id: automation.clone(),
                inputs: json!({}),
                priority: 0,
                concurrency_key: None,
                idempotency_key: None,
                trigger: Trigger::Api,
            })
            .await
            .expect("start")
            .run_id
    }

    pub fn spawn_worker(&self, config: Config) -> RunningWorker {
        self.spawn_worker_on(self.store.clone(), config)
    }

    pub fn spawn_worker_on(&self, store: Store, config: Config) -> RunningWorker {
        let shutdown = CancellationToken::new();
        let worker = Worker::new(store, self.registry(), config);
        let task = tokio::spawn(worker.run(shutdown.clone()));
        RunningWorker { shutdown, task }
    }

    pub async fn status(&self, run_id: RunId) -> RunStatus {
        self.store
            .run(&self.tenant, run_id)
            .await
            .expect("run")
            .status
    }

    pub async fn wait_status(&self, run_id: RunId, want: RunStatus) {
        wait_for(DEADLINE, &format!("run {run_id} {want}"), || async {
            (self.status(run_id).await == want).then_some(())
        })
        .await;
    }

    pub async fn event_names(&self, run_id: RunId) -> Vec<String> {
        self.store
            .events_after(run_id, 0, 1_000)
            .await
            .expect("events")
            .into_iter()
            .map(|e| e.event)
            .collect()
    }
}

pub struct RunningWorker {
    pub shutdown: CancellationToken,
    pub task: JoinHandle<Result<Report, leasehold_core::store::Error>>,
}

impl RunningWorker {
    pub async fn stop(self) -> Report {
        self.shutdown.cancel();
        self.task
            .await
            .expect("worker task")
            .expect("worker result")
    }
}
