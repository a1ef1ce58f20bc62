//! 2,000 WatchRun streams on one `leasehold coordinator` (the real binary): its leader keeps its
//! lease, idle streams cost the database a few statements a second in all, and a new event
//! reaches every stream.
//!
//! The statement rate is the database's own count of transactions in the test's database
//! (`pg_stat_database.xact_commit + xact_rollback`) over a window while the streams are idle:
//! every statement of the store runs in its own transaction, and nothing but the coordinator
//! (and this test's one reading of the counter at each end) uses that database meanwhile. It
//! counts all of the coordinator's statements, the sweeps' and the leader's included, so it is
//! an upper bound on what the streams cost. Backends report their counts at most once a second,
//! so the window is several seconds long.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use leasehold_core::ids::RunId;
use leasehold_core::store::{NewToken, Role, StartRun};
use leasehold_proto::bearer::{AuthedChannel, Bearer};
use leasehold_proto::v1;
use leasehold_proto::v1::runs_client::RunsClient;
use leasehold_testkit::fixtures::{self, OPERATOR};
use leasehold_testkit::wait_for;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::exposition;
use crate::support::free_port;

const STREAMS: usize = 2_000;
/// Streams share runs, so that the hub fans each event out to several of them.
const RUNS: usize = 100;
/// HTTP/2 connections the streams are spread over, as a few clients would.
const CONNECTIONS: usize = 8;
/// Streams being opened at once.
const OPENING: usize = 100;
/// The window over which idle streams' statements are counted.
const IDLE_WINDOW: Duration = Duration::from_secs(5);
const STATEMENTS_PER_SECOND_MAX: f64 = 50.0;
const DEADLINE: Duration = Duration::from_secs(30);
/// The shortest leader lease, renewed every third of a second: the first to be lost if the
/// streams starved the leader's connection.
const LEADER_LEASE: &str = "1s";

const TRANSACTIONS: &str = "SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database \
                            WHERE datname = current_database()";

/// A coordinator, stopped when dropped; its log goes to a file.
struct Coordinator {
    child: Child,
    log: std::path::PathBuf,
}

impl Coordinator {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// An event one stream saw, and when it arrived.
#[derive(Debug)]
struct Seen {
    stream: usize,
    seq: i64,
    at: Instant,
}

/// How many streams have seen `seq`, once what they reported is taken in.
fn streams_with_seq(
    seen: &mut [Vec<Seen>],
    seq: i64,
    rx: &mut mpsc::UnboundedReceiver<Seen>,
) -> usize {
    while let Ok(s) = rx.try_recv() {
        seen[s.stream].push(s);
    }
    seen.iter()
        .filter(|s| s.iter().any(|e| e.seq == seq))
        .count()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_watchers_cost_the_database_little_and_the_leader_keeps_its_lease() {
    let b = fixtures::setup().await;
    let tenant = b.tenant.clone();
    let automation = b
        .automation("id: watched\nnodes:\n  - {id: a, kind: noop}\n")
        .await;
    let requests: Vec<StartRun> = (0..RUNS).map(|_| b.start_request(&automation)).collect();
    let runs: Vec<RunId> = b
        .store
        .start_runs(&requests)
        .await
        .expect("start")
        .iter()
        .map(|s| s.run.run_id)
        .collect();
    let (_, secret) = b
        .store
        .create_token(&NewToken {
            tenant: tenant.clone(),
            role: Role::Admin,
            name: Some("watcher".into()),
            expires_in: None,
        })
        .await
        .expect("token");

    let listen = format!("127.0.0.1:{}", free_port());
    let metrics_addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("address");
    let log = std::env::temp_dir().join(format!("leasehold-watch-load-{}.log", free_port()));
    let child = Command::new(env!("CARGO_BIN_EXE_leasehold"))
        .args([
            "coordinator",
            "--listen",
            &listen,
            "--leader-lease",
            LEADER_LEASE,
            "--metrics-listen",
            &metrics_addr.to_string(),
        ])
        .env("LEASEHOLD_DATABASE_URL", b.db.url())
        .env_remove("LEASEHOLD_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn coordinator");
    let coordinator = Coordinator { child, log };
    let endpoint = format!("http://{listen}");
    wait_for(DEADLINE, "the coordinator to lead and serve", || async {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())
            .ok()?
            .connect()
            .await
            .ok()?;
        let reply = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .ok()?
            .into_inner();
        (reply.status == ServingStatus::Serving as i32
            && coordinator.log().contains("took the leader lease"))
        .then_some(())
    })
    .await;

    // The streams, spread over a few connections, each reporting what it sees.
    let mut channels: Vec<AuthedChannel> = Vec::new();
    for _ in 0..CONNECTIONS {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        channels.push(
            Bearer::new(&secret.expose())
                .expect("header")
                .channel(channel),
        );
    }
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<Seen>();
    let opened = Arc::new(AtomicUsize::new(0));
    let opening = Arc::new(Semaphore::new(OPENING));
    let mut streams = JoinSet::new();
    for stream in 0..STREAMS {
        let mut client = RunsClient::new(channels[stream % CONNECTIONS].clone());
        let run_id = runs[stream % RUNS].to_string();
        let (seen_tx, opened, opening) = (seen_tx.clone(), opened.clone(), opening.clone());
        streams.spawn(async move {
            let permit = opening.acquire_owned().await.expect("semaphore");
            let mut events = client
                .watch_run(v1::WatchRunRequest {
                    run_id,
                    after_seq: 0,
                })
                .await
                .expect("watch opens")
                .into_inner();
            drop(permit);
            opened.fetch_add(1, Ordering::SeqCst);
            let mut last = None;
            while let Some(event) = events.message().await.expect("the stream ends with OK") {
                let _ = seen_tx.send(Seen {
                    stream,
                    seq: event.seq,
                    at: Instant::now(),
                });
                last = Some((event.seq, event.terminal));
            }
            last
        });
    }
    drop(seen_tx);
    let mut seen: Vec<Vec<Seen>> = (0..STREAMS).map(|_| Vec::new()).collect();
    let started = Instant::now();
    wait_for(
        DEADLINE,
        "every stream to get the run's first event",
        || {
            let n = streams_with_seq(&mut seen, 1, &mut seen_rx);
            async move { (n == STREAMS).then_some(()) }
        },
    )
    .await;
    println!(
        "{STREAMS} streams on {RUNS} runs over {CONNECTIONS} connections opened and caught up \
         in {:?}",
        started.elapsed()
    );
    assert_eq!(opened.load(Ordering::SeqCst), STREAMS);
    let (status, text) = exposition::get(metrics_addr, "/metrics")
        .await
        .expect("scrape");
    assert_eq!(status, 200, "{text}");
    let scraped = exposition::parse(&text).expect("the exposition parses");
    assert_eq!(
        scraped.sum("leasehold_coordinator_watch_streams_open", &[]),
        STREAMS as f64,
        "the gauge counts every open stream"
    );

    // Idle streams: count the database's statements over a window.
    let before = b.count(TRANSACTIONS).await;
    let window = Instant::now();
    // The window is the measurement: time must pass while the streams stay idle.
    tokio::time::sleep(IDLE_WINDOW).await;
    let after = b.count(TRANSACTIONS).await;
    let rate = (after - before) as f64 / window.elapsed().as_secs_f64();
    println!(
        "idle: {} transactions in {:?}: {rate:.1} statements/s for the whole coordinator \
         (the hub polls every 100 ms; the leader renews every 333 ms; the sweeps run)",
        after - before,
        window.elapsed()
    );
    assert!(
        rate < STATEMENTS_PER_SECOND_MAX,
        "{rate:.1} statements/s while {STREAMS} streams were idle; the coordinator's log:\n{}",
        coordinator.log()
    );

    // A new event on every run: each stream must get it.
    let mut recorded = Vec::with_capacity(RUNS);
    for run_id in &runs {
        b.store
            .pause_run(&tenant, *run_id, "load test", OPERATOR, None)
            .await
            .expect("pause");
        recorded.push(Instant::now());
    }
    wait_for(DEADLINE, "every stream to get the new event", || {
        let n = streams_with_seq(&mut seen, 2, &mut seen_rx);
        async move { (n == STREAMS).then_some(()) }
    })
    .await;
    let mut latencies: Vec<Duration> = seen
        .iter()
        .map(|events| {
            let event = events.iter().find(|e| e.seq == 2).expect("seq 2");
            event
                .at
                .saturating_duration_since(recorded[event.stream % RUNS])
        })
        .collect();
    latencies.sort();
    println!(
        "a new event reached all {STREAMS} streams: p50 {:?}, p99 {:?}, max {:?} after its \
         write returned",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1]
    );

    // A terminal event ends every stream with OK, right after it.
    for run_id in &runs {
        b.store
            .cancel_run(&tenant, *run_id, "load test", OPERATOR, None)
            .await
            .expect("cancel");
    }
    let ended = tokio::time::timeout(DEADLINE, streams.join_all())
        .await
        .expect("every stream ends");
    assert!(
        ended.iter().all(|last| *last == Some((3, true))),
        "every stream ends after its run's terminal event, seq 3"
    );
    wait_for(DEADLINE, "the gauge to count no open stream", || async {
        let (_, text) = exposition::get(metrics_addr, "/metrics").await.ok()?;
        let scraped = exposition::parse(&text).ok()?;
        (scraped.sum("leasehold_coordinator_watch_streams_open", &[]) == 0.0).then_some(())
    })
    .await;

    let log = coordinator.log();
    assert!(
        !log.contains("lost the leader lease"),
        "the leader kept its lease:\n{log}"
    );
    assert_eq!(
        log.matches("took the leader lease").count(),
        1,
        "one term throughout:\n{log}"
    );
    kill(
        Pid::from_raw(i32::try_from(coordinator.child.id()).expect("pid")),
        Signal::SIGTERM,
    )
    .expect("signal");
}
