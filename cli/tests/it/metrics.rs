//! Metrics and probes of the real binaries: a coordinator and two workers with
//! `--metrics-listen`, runs that complete, runs retried until they fail, and one run whose
//! worker is stopped (SIGSTOP) past its lease; then each process's `/metrics` scraped over HTTP,
//! read strictly, and its counters and histograms checked against what happened. And `/readyz`
//! turning 503 while a worker drains or cannot reach its database, `/livez` staying 200.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use leasehold_core::ids::{AutomationId, ClaimantId, RunId, TenantId};
use leasehold_core::run::RunStatus;
use leasehold_core::spec;
use leasehold_core::store::{StartRun, Store, Trigger};
use leasehold_proto::v1;
use leasehold_proto::v1::runs_client::RunsClient;
use leasehold_testkit::proxy::{Mode, Proxy, server_addr};
use leasehold_testkit::{TestDb, fixtures, wait_for};
use nix::sys::signal::Signal;

use crate::exposition::{self, Exposition};
use crate::support::{free_port, signal, wait_serving};

const DEADLINE: Duration = Duration::from_secs(60);

/// A `leasehold` process, killed when dropped; its log is kept in the test's temporary folder.
struct Process {
    child: Child,
    metrics: SocketAddr,
    log: PathBuf,
}

impl Process {
    fn start(name: &str, args: &[&str], database_url: &str) -> Self {
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("metrics-{name}-{}.log", std::process::id()));
        let child = Command::new(env!("CARGO_BIN_EXE_leasehold"))
            .args(args)
            .args(["--metrics-listen", &metrics.to_string()])
            .env("LEASEHOLD_DATABASE_URL", database_url)
            .env_remove("LEASEHOLD_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn leasehold");
        Self {
            child,
            metrics,
            log,
        }
    }

    fn worker(name: &str, database_url: &str) -> Self {
        Self::start(
            name,
            &[
                "worker",
                "--claimant-id",
                name,
                "--lease",
                "5s",
                "--poll-interval",
                "50ms",
            ],
            database_url,
        )
    }

    /// The exposition, read strictly; `None` while the listener does not answer.
    async fn scrape(&self) -> Option<Exposition> {
        let (status, body) = exposition::get(self.metrics, "/metrics").await.ok()?;
        assert_eq!(status, 200, "{body}");
        Some(exposition::parse(&body).unwrap_or_else(|e| panic!("{e}\n{body}")))
    }

    async fn probe(&self, path: &str) -> Option<(u16, String)> {
        exposition::get(self.metrics, path).await.ok()
    }

    /// Waits until `check` holds of a scrape, and returns that scrape.
    async fn wait_metrics(&self, what: &str, check: impl Fn(&Exposition) -> bool) -> Exposition {
        let log = self.log.display().to_string();
        wait_for(DEADLINE, &format!("{what} (log: {log})"), || async {
            self.scrape().await.filter(|e| check(e))
        })
        .await
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const QUICK: &str = "id: quick\nnodes:\n  - {id: a, kind: noop}\n";
/// Every attempt times out (a retryable failure) after 50 ms: three attempts, two retries, failed.
const FLAKY: &str = "id: flaky\nnodes:\n  - {id: a, kind: sleep, input: {ms: 60000}, timeout_ms: 50, \
                     max_attempts: 3, backoff: {base_ms: 10, factor: 1.0, cap_ms: 10, jitter: 0.0}}\n";
const SLOW: &str = "id: slow\nnodes:\n  - {id: a, kind: sleep, input: {ms: 3000}}\n";

async fn start(store: &Store, automation: &str) -> RunId {
    store
        .start_run(&StartRun {
            trigger: Trigger::Manual,
            actor: None,
            ..fixtures::start_request(&TenantId::default(), &AutomationId::from(automation))
        })
        .await
        .expect("start")
        .run_id
}

async fn wait_status(store: &Store, runs: &[RunId], status: RunStatus) {
    for run in runs {
        wait_for(DEADLINE, &format!("run {run} to be {status:?}"), || async {
            (store.run(&TenantId::default(), *run).await.ok()?.status == status).then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn counters_and_histograms_of_a_coordinator_and_two_workers_move_as_runs_go() {
    let db = TestDb::new().await;
    let store = Store::connect_unchecked(db.url(), 2).expect("pool");
    store.migrate().await.expect("migrate");
    for yaml in [QUICK, FLAKY, SLOW] {
        let spec = spec::parse_yaml(yaml).expect("spec");
        store
            .create_automation(&TenantId::default(), &spec)
            .await
            .expect("automation");
    }
    let listen = format!("127.0.0.1:{}", free_port());
    let coordinator = Process::start(
        "coordinator",
        &[
            "coordinator",
            "--listen",
            &listen,
            "--no-auth",
            "--reaper-interval",
            "100ms",
            "--auto-resume-interval",
            "100ms",
            "--queue-metrics-interval",
            "100ms",
        ],
        db.url(),
    );
    let endpoint = format!("http://{listen}");
    wait_serving(&endpoint, DEADLINE).await;

    // Five runs started over gRPC, and one refused (no such automation).
    let mut client = RunsClient::connect(endpoint).await.expect("connect");
    let mut quick = Vec::new();
    for _ in 0..5 {
        let run = client
            .start_run(v1::StartRunRequest {
                automation_id: "quick".into(),
                ..Default::default()
            })
            .await
            .expect("start run")
            .into_inner()
            .run
            .expect("run");
        quick.push(run.run_id.parse::<uuid::Uuid>().map(RunId).expect("run id"));
    }
    let refused = client
        .start_run(v1::StartRunRequest {
            automation_id: "missing".into(),
            ..Default::default()
        })
        .await
        .expect_err("no such automation");
    assert_eq!(refused.code(), tonic::Code::NotFound);
    // With no worker yet, the leader sees them all due.
    coordinator
        .wait_metrics("the queue gauge to show 5 due runs", |e| {
            e.sum("leasehold_queue_runs", &[("state", "due")]) == 5.0
                && e.sum("leasehold_queue_oldest_due_age_seconds", &[]) > 0.0
        })
        .await;

    let mut a = Process::worker("metrics-a", db.url());
    let mut b = Process::worker("metrics-b", db.url());
    wait_status(&store, &quick, RunStatus::Completed).await;
    let flaky = [start(&store, "flaky").await, start(&store, "flaky").await];
    wait_status(&store, &flaky, RunStatus::Failed).await;

    // The slow run: its holder is stopped past its lease; the other worker finishes it.
    let slow = start(&store, "slow").await;
    wait_status(&store, &[slow], RunStatus::Running).await;
    let holder = store
        .run(&TenantId::default(), slow)
        .await
        .expect("run")
        .claimant_id
        .expect("held");
    let (stopped, other) = if holder == ClaimantId::from("metrics-a") {
        (&mut a, &b)
    } else {
        (&mut b, &a)
    };
    signal(&stopped.child, Signal::SIGSTOP);
    wait_status(&store, &[slow], RunStatus::Completed).await;
    signal(&stopped.child, Signal::SIGCONT);
    let stopped_metrics = stopped
        .wait_metrics(
            "the stopped worker to find its lease gone and let the run go",
            |e| {
                // The run's task counts how it left as it ends; the worker then stops holding it.
                e.sum(
                    "leasehold_worker_runs_left_total",
                    &[("outcome", "lease_lost")],
                ) == 1.0
                    && e.sum("leasehold_worker_runs_held", &[]) == 0.0
            },
        )
        .await;
    assert_eq!(
        stopped_metrics.sum("leasehold_worker_self_fences_total", &[])
            + stopped_metrics.sum("leasehold_worker_lease_losses_total", &[]),
        1.0,
        "the stopped worker fenced itself, or heard its lease was lost, once"
    );

    // Both workers, summed: 5 quick runs, 2 flaky ones claimed 3 times each, the slow one twice.
    let workers = [
        stopped.scrape().await.expect("scrape"),
        other.scrape().await.expect("scrape"),
    ];
    let both = |name: &str, labels: &[(&str, &str)]| -> f64 {
        workers.iter().map(|e| e.sum(name, labels)).sum()
    };
    assert_eq!(both("leasehold_worker_claimed_runs_total", &[]), 13.0);
    assert_eq!(both("leasehold_worker_claim_batch_size_sum", &[]), 13.0);
    assert!(both("leasehold_worker_claim_duration_seconds_count", &[]) >= 2.0);
    let attempts = |kind: &str, outcome: &str| {
        both(
            "leasehold_worker_node_attempts_total",
            &[("kind", kind), ("outcome", outcome)],
        )
    };
    assert_eq!(attempts("noop", "completed"), 5.0);
    assert_eq!(attempts("sleep", "timed_out"), 6.0);
    assert_eq!(
        both(
            "leasehold_worker_node_duration_seconds_count",
            &[("kind", "sleep"), ("outcome", "timed_out")]
        ),
        6.0
    );
    // Each timed-out attempt lasted its 50 ms timeout, or a little more.
    let timed_out_seconds = both(
        "leasehold_worker_node_duration_seconds_sum",
        &[("kind", "sleep"), ("outcome", "timed_out")],
    );
    assert!(
        (0.3..6.0).contains(&timed_out_seconds),
        "{timed_out_seconds}"
    );
    // The slow node completed on the other worker (and perhaps on the stopped one too, if its
    // sleep ended before its fence when it woke: the completion was then refused).
    assert!((1.0..=2.0).contains(&attempts("sleep", "completed")));
    assert_eq!(
        both(
            "leasehold_worker_retries_scheduled_total",
            &[("kind", "sleep")]
        ),
        4.0
    );
    let left = |outcome: &str| both("leasehold_worker_runs_left_total", &[("outcome", outcome)]);
    assert_eq!(left("completed"), 6.0);
    assert_eq!(left("retry_scheduled"), 4.0);
    assert_eq!(left("failed"), 2.0);
    assert_eq!(left("lease_lost"), 1.0);
    assert_eq!(
        both(
            "leasehold_worker_runs_left_total",
            &[
                ("tenant", "default"),
                ("automation", "quick"),
                ("outcome", "completed")
            ]
        ),
        5.0
    );
    // Each claimed run's wait since it was due, and the first node of each claim starting. One
    // sample may be missing: the exporter drains a histogram's samples (at a scrape, and every
    // 5 s) by swapping its buffer, and a sample written into the old buffer just after it was
    // read is lost (metrics-util's AtomicBucket); CI once saw 12 claim waits beside 13 claims.
    let per_run = |name: &str| {
        let count = both(name, &[]);
        assert!((12.0..=13.0).contains(&count), "{name}: {count}");
    };
    per_run("leasehold_worker_claim_wait_seconds_count");
    per_run("leasehold_worker_claim_to_start_seconds_count");
    // A fresh run's claim starts its node (the 5 quick runs, the first claims of the 2 flaky
    // runs and of the slow one); every other start was one write of a batch: the flaky runs'
    // 4 retries and the slow run's resumed claim. Completions are batched writes too (the flaky
    // attempts' failures are not completions, and the stopped worker's may have been refused).
    assert_eq!(
        both(
            "leasehold_worker_flush_batch_size_sum",
            &[("write", "node_starts")],
        ),
        5.0
    );
    assert!(
        both(
            "leasehold_worker_flush_batch_size_sum",
            &[("write", "node_completions")]
        ) >= 6.0
    );
    assert!(
        both(
            "leasehold_worker_flush_duration_seconds_count",
            &[("write", "node_starts"), ("outcome", "ok")]
        ) >= 1.0
    );
    // The slow run was held across a heartbeat (every 5/3 s) by the worker that finished it.
    assert!(both("leasehold_worker_lease_renewals_total", &[]) >= 1.0);
    for worker in &workers {
        assert!(worker.sum("leasehold_db_pool_max_connections", &[("pool", "worker")]) >= 1.0);
        assert!(worker.has("leasehold_db_pool_waiters"));
        assert!(
            worker.sum(
                "leasehold_db_pool_wait_seconds_count",
                &[("pool", "worker")]
            ) >= 1.0
        );
    }

    // The coordinator: the gRPC calls by method and code, the reaper's one action and the
    // auto-resume that follows a stale reap, and the queue empty again.
    let coordinator_metrics = coordinator
        .wait_metrics("the queue gauges to show an empty queue", |e| {
            e.sum("leasehold_queue_runs", &[]) == 0.0
                && e.sum("leasehold_queue_oldest_due_age_seconds", &[]) == 0.0
        })
        .await;
    let c = |name: &str, labels: &[(&str, &str)]| coordinator_metrics.sum(name, labels);
    let start_run = ("method", "leasehold.v1.Runs/StartRun");
    assert_eq!(
        c(
            "leasehold_grpc_requests_total",
            &[start_run, ("code", "OK")]
        ),
        5.0
    );
    assert_eq!(
        c(
            "leasehold_grpc_requests_total",
            &[start_run, ("code", "NOT_FOUND")]
        ),
        1.0
    );
    assert_eq!(
        c(
            "leasehold_grpc_request_duration_seconds_count",
            &[start_run]
        ),
        6.0
    );
    assert!(
        c(
            "leasehold_grpc_requests_total",
            &[("method", "grpc.health.v1.Health/Check"), ("code", "OK")]
        ) >= 1.0
    );
    let reaper = |action: &str| {
        c(
            "leasehold_sweep_actions_total",
            &[("sweep", "reaper"), ("action", action)],
        )
    };
    // Its claim started its node, so the slow run was stale-reaped and resumed.
    assert_eq!(reaper("requeued"), 0.0);
    assert_eq!(reaper("stale_reaped"), 1.0);
    assert_eq!(
        c(
            "leasehold_sweep_actions_total",
            &[("sweep", "auto_resume"), ("action", "auto_resumed")]
        ),
        reaper("stale_reaped")
    );
    assert!(
        c(
            "leasehold_sweep_pass_duration_seconds_count",
            &[("sweep", "reaper")]
        ) >= 1.0
    );
    assert_eq!(c("leasehold_leader", &[]), 1.0);
    assert!(c("leasehold_leader_epoch", &[]) >= 1.0);
    assert_eq!(c("leasehold_queue_held_leases", &[]), 0.0);
    assert!(c("leasehold_db_pool_max_connections", &[("pool", "api")]) >= 1.0);
    for pool in ["api", "leader", "sweeps"] {
        assert!(
            c("leasehold_db_pool_wait_seconds_count", &[("pool", pool)]) >= 1.0,
            "{pool}"
        );
    }
}

#[tokio::test]
async fn readyz_fails_while_draining_or_without_the_database_and_livez_holds() {
    let db = TestDb::new().await;
    let store = Store::connect_unchecked(db.url(), 2).expect("pool");
    store.migrate().await.expect("migrate");
    let spec =
        spec::parse_yaml("id: long\nnodes:\n  - {id: a, kind: sleep, input: {ms: 600000}}\n")
            .expect("spec");
    store
        .create_automation(&TenantId::default(), &spec)
        .await
        .expect("automation");
    let proxy = Proxy::start(server_addr(db.url())).await;
    let worker = Process::start(
        "probes",
        &[
            "worker",
            "--claimant-id",
            "probes",
            "--lease",
            "5s",
            "--poll-interval",
            "50ms",
            // Time enough to see the drain before the held run is handed back.
            "--shutdown-grace",
            "1h",
        ],
        &proxy.url_for(db.url()),
    );
    let probe = |path: &'static str, want: u16, says: &'static str| {
        let worker = &worker;
        async move {
            let log = worker.log.display().to_string();
            wait_for(
                DEADLINE,
                &format!("{path} to answer {want} (log: {log})"),
                || async {
                    let (status, body) = worker.probe(path).await?;
                    (status == want && body.contains(says)).then_some(body)
                },
            )
            .await
        }
    };
    probe("/readyz", 200, "ready").await;
    probe("/livez", 200, "alive").await;

    // The database unreachable: not ready, still alive. The heartbeat notices within a third of
    // the lease.
    proxy.set(Mode::BlackHole);
    proxy.cut();
    probe("/readyz", 503, "database is unreachable").await;
    let (status, body) = worker.probe("/livez").await.expect("livez");
    assert_eq!(
        status, 200,
        "a database outage must not get the worker restarted: {body}"
    );
    proxy.set(Mode::Pass);
    probe("/readyz", 200, "ready").await;

    // Drained while it holds a run: not ready at once, though it runs on for its grace period.
    let run = start(&store, "long").await;
    wait_status(&store, &[run], RunStatus::Running).await;
    assert!(
        store
            .set_worker_draining(&ClaimantId::from("probes"))
            .await
            .expect("drain"),
        "the worker is registered"
    );
    let body = probe("/readyz", 503, "draining").await;
    assert!(body.starts_with("not ready"), "{body}");
    probe("/livez", 200, "alive").await;
}
