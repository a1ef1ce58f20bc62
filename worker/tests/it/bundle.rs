//! The worker tests' bundle: the testkit's migrated database with a worker's store, a worker
//! in-process, and the `record` kind, which notes every attempt it executes.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leasehold_core::ids::{ClaimantId, NodeId, RunId};
use leasehold_core::run::RunStatus;
use leasehold_core::store::Store;
use leasehold_testkit::{fixtures, wait_for};
use leasehold_worker::handlers::{self, ExecPolicy};
use leasehold_worker::{Config, Context, Handler, HandlerError, Registry, Report, Worker};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub const DEADLINE: Duration = Duration::from_secs(20);

/// The testkit's bundle with a worker's store, and the ledger of the `record` kind.
pub struct Bundle {
    pub base: fixtures::Bundle,
    pub ledger: Ledger,
}

impl Deref for Bundle {
    type Target = fixtures::Bundle;

    fn deref(&self) -> &fixtures::Bundle {
        &self.base
    }
}

pub async fn setup() -> Bundle {
    Bundle {
        base: fixtures::worker_setup().await,
        ledger: Ledger::default(),
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
    pub node_id: NodeId,
    pub attempt: u32,
    pub started: Instant,
    pub finished: Option<Instant>,
    pub upstream: Value,
    pub cancelled: bool,
    pub idempotency_key: String,
    /// The runtime context the attempt was given, name to value.
    pub runtime_context: BTreeMap<String, String>,
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
/// `input.fail_first` fails that many attempts (retryably, asking for `input.retry_after_ms`
/// when set); `input.terminal` fails for good;
/// `input.panic` panics; `input.nul_output` returns text with a NUL character.
#[derive(Clone)]
pub struct Record(pub Ledger);

/// The number `key` of the node's input; zero when it is absent.
fn input_u64(ctx: &Context, key: &str) -> u64 {
    ctx.input.get(key).and_then(Value::as_u64).unwrap_or(0)
}

impl Handler for Record {
    async fn run(&self, ctx: Context) -> Result<Value, HandlerError> {
        let index = {
            let mut ledger = self.0.0.lock().expect("ledger");
            ledger.push(Execution {
                node_id: ctx.node_id.clone(),
                attempt: ctx.attempt,
                started: Instant::now(),
                finished: None,
                upstream: serde_json::to_value(&ctx.upstream).expect("upstream"),
                cancelled: false,
                idempotency_key: ctx.idempotency_key.clone(),
                runtime_context: ctx
                    .runtime_context
                    .names()
                    .into_iter()
                    .filter_map(|name| {
                        let value = ctx.runtime_context.get(&name)?.to_owned();
                        Some((name, value))
                    })
                    .collect(),
            });
            ledger.len() - 1
        };
        let sleep_ms = input_u64(&ctx, "sleep_ms");
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
        if u64::from(ctx.attempt) <= input_u64(&ctx, "fail_first") {
            let message = format!("planned failure {}", ctx.attempt);
            return Err(
                match ctx.input.get("retry_after_ms").and_then(Value::as_u64) {
                    Some(ms) => HandlerError::RetryableAfter {
                        message,
                        after: std::time::Duration::from_millis(ms),
                    },
                    None => HandlerError::Retryable(message),
                },
            );
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

    pub fn spawn_worker(&self, config: Config) -> RunningWorker {
        self.spawn_worker_on(self.store.clone(), config)
    }

    pub fn spawn_worker_on(&self, store: Store, config: Config) -> RunningWorker {
        let shutdown = CancellationToken::new();
        let worker = Worker::new(store, self.registry(), config);
        let task = tokio::spawn(worker.run(shutdown.clone()));
        RunningWorker { shutdown, task }
    }

    pub async fn wait_status(&self, run_id: RunId, want: RunStatus) {
        wait_for(DEADLINE, &format!("run {run_id} {want}"), || async {
            (self.status(run_id).await == want).then_some(())
        })
        .await;
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
