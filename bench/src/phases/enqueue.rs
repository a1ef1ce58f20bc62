//! Starting runs: through the coordinator's API (StartRuns in batches, StartRun one by one) and
//! through the store directly, each into empty tables.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::bail;
use futures_util::future::try_join_all;
use leasehold_core::ids::TenantId;
use leasehold_core::store::{NewToken, Role};
use leasehold_proto::bearer::{AuthedChannel, Bearer};
use leasehold_proto::v1;
use leasehold_proto::v1::runs_client::RunsClient;
use tokio::time::Instant;
use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::{Bench, NOOP, Snapshot, batch_sizes, cpu_per, per};
use crate::procfs;
use crate::procs::Proc;
use crate::report::{Bar, Figure};

/// Single StartRun calls per repetition, as a share of the batch figures' runs: each call is
/// one run, and the figure is steady long before 20,000.
const SINGLE_SHARE: usize = 4;
/// Single calls in flight, one figure each: the coordinator gathers the calls in flight into
/// shared statements, so the figure depends on how many there are.
const SINGLE_IN_FLIGHT: [usize; 2] = [16, 64];
/// The bars for single calls, at each of [`SINGLE_IN_FLIGHT`].
const SINGLE_RUNS_PER_S_BAR: f64 = 10_000.0;
const SINGLE_XACTS_PER_RUN_BAR: f64 = 1.1;

/// One repetition of one way to enqueue.
#[derive(Debug, Clone, Copy)]
struct Enqueued {
    runs_per_s: f64,
    xacts_per_run: f64,
    db_cpu_us: Option<f64>,
    /// The coordinator's for the API, this process's for the store.
    client_cpu_us: Option<f64>,
    /// This process's, as the API's client; `None` for the store, whose client it is.
    harness_cpu_us: Option<f64>,
}

pub async fn run(bench: &mut Bench) -> anyhow::Result<()> {
    let n = bench.plan.runs;
    let single = (n / SINGLE_SHARE).max(1);
    let lanes = bench.args.enqueue_concurrency.max(1);
    let (mut store, mut batched) = (Vec::new(), Vec::new());
    let mut one_by_one = SINGLE_IN_FLIGHT.map(|_| Vec::new());
    for rep in 1..=bench.args.reps {
        bench.reset().await?;
        let before = bench.snapshot().await?;
        let started = Instant::now();
        bench.enqueue(NOOP, n, lanes).await?;
        let elapsed = started.elapsed();
        bench.quiesce().await?;
        let after = bench.snapshot().await?;
        store.push(measure(
            n,
            elapsed,
            &before,
            &after,
            before.own_cpu,
            after.own_cpu,
        ));

        bench.reset().await?;
        let (mut coordinator, channel) = start_coordinator(bench).await?;
        let runs = RunsClient::new(channel);
        let client_before = procfs::process_cpu(coordinator.pid());
        let before = bench.snapshot().await?;
        let started = Instant::now();
        start_batches(&runs, n, bench.args.batch, lanes).await?;
        let elapsed = started.elapsed();
        let client_after = procfs::process_cpu(coordinator.pid());
        coordinator.check_alive()?;
        bench.stop(vec![coordinator]).await?;
        bench.quiesce().await?;
        let after = bench.snapshot().await?;
        batched.push(measure(
            n,
            elapsed,
            &before,
            &after,
            client_before,
            client_after,
        ));

        for (in_flight, reps) in SINGLE_IN_FLIGHT.iter().zip(&mut one_by_one) {
            reps.push(enqueue_singles(bench, single, *in_flight).await?);
        }
        eprintln!(
            "  enqueue rep {rep}: store {:.0}, StartRuns {:.0}, StartRun {:.0} ({} in flight), {:.0} ({}) runs/s",
            store[rep - 1].runs_per_s,
            batched[rep - 1].runs_per_s,
            one_by_one[0][rep - 1].runs_per_s,
            SINGLE_IN_FLIGHT[0],
            one_by_one[1][rep - 1].runs_per_s,
            SINGLE_IN_FLIGHT[1],
        );
    }
    for (name, client, reps) in [
        ("enqueue.store_batch".to_owned(), "client_cpu", &store),
        ("enqueue.grpc_batch".to_owned(), "coordinator_cpu", &batched),
    ] {
        push_figures(bench, &name, client, reps, false);
    }
    for (in_flight, reps) in SINGLE_IN_FLIGHT.iter().zip(&one_by_one) {
        let name = format!("enqueue.grpc_single.{in_flight}");
        push_figures(bench, &name, "coordinator_cpu", reps, true);
    }
    Ok(())
}

/// `single` runs through StartRun, `in_flight` calls at once, on a coordinator of their own.
async fn enqueue_singles(
    bench: &mut Bench,
    single: usize,
    in_flight: usize,
) -> anyhow::Result<Enqueued> {
    bench.reset().await?;
    let (mut coordinator, channel) = start_coordinator(bench).await?;
    let runs = RunsClient::new(channel);
    let client_before = procfs::process_cpu(coordinator.pid());
    let before = bench.snapshot().await?;
    let harness_before = procfs::process_cpu(std::process::id());
    let started = Instant::now();
    start_singles(&runs, single, in_flight).await?;
    let elapsed = started.elapsed();
    let client_after = procfs::process_cpu(coordinator.pid());
    let harness_after = procfs::process_cpu(std::process::id());
    coordinator.check_alive()?;
    bench.stop(vec![coordinator]).await?;
    bench.quiesce().await?;
    let after = bench.snapshot().await?;
    Ok(Enqueued {
        harness_cpu_us: cpu_per(harness_before, harness_after, single),
        ..measure(
            single,
            elapsed,
            &before,
            &after,
            client_before,
            client_after,
        )
    })
}

/// A way to enqueue's figures; `single_bars` sets the bars for single calls.
fn push_figures(bench: &mut Bench, name: &str, client: &str, reps: &[Enqueued], single_bars: bool) {
    let f = &mut bench.figures;
    let mut throughput =
        Figure::throughput(name, "runs/s", reps.iter().map(|r| r.runs_per_s).collect());
    let mut xacts = Figure::new(
        format!("{name}.xacts"),
        "xacts/run",
        reps.iter().map(|r| r.xacts_per_run).collect(),
    );
    if single_bars {
        throughput = throughput.bar(Bar::Above(SINGLE_RUNS_PER_S_BAR));
        xacts = xacts.bar(Bar::AtMost(SINGLE_XACTS_PER_RUN_BAR));
    }
    f.push(throughput);
    f.push(xacts);
    f.push(Figure::new(
        format!("{name}.db_cpu"),
        "µs/run",
        reps.iter().filter_map(|r| r.db_cpu_us).collect(),
    ));
    f.push(Figure::new(
        format!("{name}.{client}"),
        "µs/run",
        reps.iter().filter_map(|r| r.client_cpu_us).collect(),
    ));
    let harness: Vec<f64> = reps.iter().filter_map(|r| r.harness_cpu_us).collect();
    if !harness.is_empty() {
        f.push(Figure::new(
            format!("{name}.harness_cpu"),
            "µs/run",
            harness,
        ));
    }
}

fn measure(
    n: usize,
    elapsed: Duration,
    before: &Snapshot,
    after: &Snapshot,
    client_before: Option<Duration>,
    client_after: Option<Duration>,
) -> Enqueued {
    #[allow(clippy::cast_precision_loss)]
    let runs_per_s = n as f64 / elapsed.as_secs_f64();
    Enqueued {
        runs_per_s,
        xacts_per_run: per(after.xacts - before.xacts, n),
        db_cpu_us: cpu_per(before.db_cpu, after.db_cpu, n),
        client_cpu_us: cpu_per(client_before, client_after, n),
        harness_cpu_us: None,
    }
}

/// `n` runs through StartRuns, `batch` per call, `lanes` calls in flight.
async fn start_batches(
    runs: &RunsClient<AuthedChannel>,
    n: usize,
    batch: usize,
    lanes: usize,
) -> anyhow::Result<()> {
    let batches = batch_sizes(n, batch);
    let next = AtomicUsize::new(0);
    let lane = async || -> anyhow::Result<()> {
        let mut client = runs.clone();
        while let Some(&size) = batches.get(next.fetch_add(1, Ordering::Relaxed)) {
            let request = v1::StartRunsRequest {
                requests: vec![single_request(); size],
            };
            let started = client.start_runs(request).await?.into_inner();
            anyhow::ensure!(started.runs.len() == size, "StartRuns answered short");
        }
        Ok(())
    };
    try_join_all((0..lanes).map(|_| lane())).await?;
    Ok(())
}

/// `n` runs through StartRun, `lanes` calls in flight.
async fn start_singles(
    runs: &RunsClient<AuthedChannel>,
    n: usize,
    lanes: usize,
) -> anyhow::Result<()> {
    let next = AtomicUsize::new(0);
    let lane = async || -> anyhow::Result<()> {
        let mut client = runs.clone();
        while next.fetch_add(1, Ordering::Relaxed) < n {
            client.start_run(single_request()).await?;
        }
        Ok(())
    };
    try_join_all((0..lanes).map(|_| lane())).await?;
    Ok(())
}

fn single_request() -> v1::StartRunRequest {
    v1::StartRunRequest {
        automation_id: NOOP.to_owned(),
        ..Default::default()
    }
}

/// A coordinator on a free loopback port, once its health service says the Runs API serves,
/// and a channel whose calls carry an operator's token, as a user's client's do.
async fn start_coordinator(bench: &Bench) -> anyhow::Result<(Proc, AuthedChannel)> {
    let (_, token) = bench
        .store(1)
        .await?
        .create_token(&NewToken {
            tenant: TenantId::default(),
            role: Role::Operator,
            name: Some("bench".to_owned()),
            expires_in: None,
        })
        .await?;
    let bearer = Bearer::new(&token.expose())?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let args = [
        "coordinator",
        "--database-url",
        &bench.db_url,
        "--listen",
        &format!("127.0.0.1:{port}"),
    ]
    .map(str::to_owned);
    let log = bench.workdir.join("coordinator.log");
    let mut coordinator = Proc::spawn("coordinator", &bench.bin, &args, log)?;
    let endpoint = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?;
    let deadline = bench.deadline();
    loop {
        coordinator.check_alive()?;
        if let Ok(channel) = endpoint.connect().await {
            let health = HealthClient::new(channel.clone())
                .check(HealthCheckRequest {
                    service: "leasehold.v1.Runs".into(),
                })
                .await;
            if health.is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32) {
                return Ok((coordinator, bearer.channel(channel)));
            }
        }
        if Instant::now() >= deadline {
            bail!("the coordinator did not serve by the deadline");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
