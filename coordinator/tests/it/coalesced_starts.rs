//! Concurrent single `StartRun` calls share statements: each call is answered as it would be
//! alone (new runs, idempotent repeats, a conflicting repeat, an unknown or paused automation,
//! a caller's trace), and the runs are inserted by far fewer transactions than calls.

use std::collections::HashSet;

use futures_util::future::join_all;
use leasehold_coordinator::api::Auth;
use leasehold_core::store::Store;
use leasehold_proto::v1;
use leasehold_proto::v1::automations_client::AutomationsClient;
use leasehold_proto::v1::runs_client::RunsClient;
use leasehold_testkit::TestDb;
use leasehold_testkit::fixtures::serve_in_process;
use tonic::Code;
use tonic::transport::Channel;

use super::api::{plain_channel, text};

const TWO_NODES: &str =
    "id: pair\nnodes:\n  - {id: a, kind: echo}\n  - {id: b, kind: noop, depends_on: [a]}\n";
const FROZEN: &str = "id: frozen\nnodes:\n  - {id: only, kind: noop}\n";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// What one call of the burst asks, and so what its answer must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ask {
    /// A run of its own, inputs `{"i": i}`.
    New(usize),
    /// The key of the run started before the burst, with the same request.
    EarlierKey,
    /// That key with another priority.
    ConflictingKey,
    /// A key first used within the burst, by every call that asks it.
    SharedNewKey,
    /// An automation that does not exist.
    Unknown,
    /// A paused automation.
    Paused,
    /// A run of its own under the caller's trace.
    Traced,
}

fn request(ask: Ask) -> tonic::Request<v1::StartRunRequest> {
    let start = |automation: &str, key: &str, priority: i32| v1::StartRunRequest {
        automation_id: automation.into(),
        request_id: key.into(),
        priority,
        ..Default::default()
    };
    let message = match ask {
        Ask::New(i) => v1::StartRunRequest {
            inputs: Some(prost_types::Struct {
                fields: [(
                    "i".to_owned(),
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::NumberValue(i as f64)),
                    },
                )]
                .into(),
            }),
            ..start("pair", "", 0)
        },
        Ask::EarlierKey => start("pair", "earlier", 0),
        Ask::ConflictingKey => start("pair", "earlier", 7),
        Ask::SharedNewKey => start("pair", "shared", 0),
        Ask::Unknown => start("ghost", "", 0),
        Ask::Paused => start("frozen", "", 0),
        Ask::Traced => start("pair", "", 0),
    };
    let mut request = tonic::Request::new(message);
    if ask == Ask::Traced {
        request.metadata_mut().insert(
            "traceparent",
            format!("00-{TRACE_ID}-00f067aa0ba902b7-01")
                .parse()
                .expect("ascii"),
        );
    }
    request
}

/// 200 calls: 150 new runs, 4 traced, 20 repeats of an earlier key, one conflicting repeat, 15
/// calls sharing a new key, 5 of an unknown automation, 5 of a paused one.
fn burst() -> Vec<Ask> {
    let mut asks: Vec<Ask> = (0..150).map(Ask::New).collect();
    asks.extend([Ask::Traced; 4]);
    asks.extend([Ask::EarlierKey; 20]);
    asks.push(Ask::ConflictingKey);
    asks.extend([Ask::SharedNewKey; 15]);
    asks.extend([Ask::Unknown; 5]);
    asks.extend([Ask::Paused; 5]);
    // Mixed, so that every kind lands in batches with the others.
    let n = asks.len();
    (0..n).map(|i| asks[(i * 7) % n]).collect()
}

#[tokio::test]
async fn concurrent_starts_share_statements_and_each_gets_its_own_answer() {
    let db = TestDb::new().await;
    let store = Store::connect_unchecked(db.url(), 8).expect("pool");
    store.migrate().await.expect("migrate");
    // Without tokens, a call reads nothing to authenticate: the database sees the starts alone.
    let served = store.clone();
    let (addr, cancel) = serve_in_process(move |listener, cancel| {
        leasehold_coordinator::api::serve(listener, served.clone(), Auth::Disabled, cancel)
    })
    .await;
    let channel: Channel = plain_channel(addr).await;
    let mut automations = AutomationsClient::new(channel.clone());
    for yaml in [TWO_NODES, FROZEN] {
        automations
            .apply_automation(v1::ApplyAutomationRequest {
                spec: Some(text(yaml)),
            })
            .await
            .expect("apply");
    }
    automations
        .pause_automation(v1::PauseAutomationRequest {
            id: "frozen".into(),
        })
        .await
        .expect("pause");
    let runs = RunsClient::new(channel);
    let earlier = runs
        .clone()
        .start_run(request(Ask::EarlierKey))
        .await
        .expect("start before the burst")
        .into_inner()
        .run
        .expect("run");

    let asks = burst();
    let answers = join_all(asks.iter().map(|&ask| {
        let mut runs = runs.clone();
        async move {
            runs.start_run(request(ask))
                .await
                .map(tonic::Response::into_inner)
        }
    }))
    .await;

    let mut new_ids = HashSet::new();
    let mut shared: Vec<(String, bool)> = Vec::new();
    for (ask, answer) in asks.iter().zip(answers) {
        match ask {
            Ask::New(_) | Ask::Traced => {
                let answer = answer.expect("a new run");
                assert!(answer.created, "{ask:?}");
                let run = answer.run.expect("run");
                assert_eq!(run.status(), v1::RunStatus::Queued);
                let nodes: Vec<&str> = run.nodes.iter().map(|n| n.node_id.as_str()).collect();
                assert_eq!(nodes, ["a", "b"], "{ask:?}");
                if let Ask::New(i) = ask {
                    let got = run.inputs.as_ref().and_then(|s| s.fields.get("i"));
                    assert_eq!(
                        got.and_then(|v| v.kind.clone()),
                        Some(prost_types::value::Kind::NumberValue(*i as f64))
                    );
                } else {
                    assert_eq!(run.trace_id, TRACE_ID, "the caller's trace");
                }
                // The answer built from the start's statement is the run as read back, but for
                // why it waits, which only GetRun and ListRuns say (no worker serves here).
                let mut read = runs
                    .clone()
                    .get_run(v1::GetRunRequest {
                        run_id: run.run_id.clone(),
                    })
                    .await
                    .expect("get")
                    .into_inner();
                assert_eq!(
                    read.waiting.take().map(|w| w.code),
                    Some("no_worker_for_queue".to_owned())
                );
                assert_eq!(run, read, "{ask:?}");
                assert!(new_ids.insert(run.run_id), "one run per call");
            }
            Ask::EarlierKey => {
                let answer = answer.expect("the earlier run");
                assert!(!answer.created);
                assert_eq!(answer.run.expect("run"), earlier);
            }
            Ask::ConflictingKey => {
                let status = answer.expect_err("another request with the key");
                assert_eq!(status.code(), Code::FailedPrecondition);
                assert!(status.message().contains("earlier"), "{status:?}");
            }
            Ask::SharedNewKey => {
                let answer = answer.expect("a run of the shared key");
                shared.push((answer.run.expect("run").run_id, answer.created));
            }
            Ask::Unknown => {
                let status = answer.expect_err("no such automation");
                assert_eq!(status.code(), Code::NotFound);
                assert!(status.message().contains("ghost"), "{status:?}");
            }
            Ask::Paused => {
                let status = answer.expect_err("paused");
                assert_eq!(status.code(), Code::FailedPrecondition);
                assert!(status.message().contains("frozen"), "{status:?}");
            }
        }
    }
    assert_eq!(new_ids.len(), 154);
    let shared_ids: HashSet<&String> = shared.iter().map(|(id, _)| id).collect();
    assert_eq!(shared_ids.len(), 1, "one run for a key: {shared:?}");
    assert_eq!(shared.iter().filter(|(_, created)| *created).count(), 1);

    // Runs one transaction inserted share its id as their xmin.
    let client = tokio_postgres::connect(db.url(), tokio_postgres::NoTls).await;
    let (client, connection) = client.expect("connect");
    tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT count(*) AS runs, count(DISTINCT xmin::text) AS transactions FROM runs
             WHERE run_id <> $1::text::uuid",
            &[&earlier.run_id],
        )
        .await
        .expect("count");
    let (inserted, transactions): (i64, i64) = (row.get("runs"), row.get("transactions"));
    assert_eq!(inserted, 155, "150 new, 4 traced, the shared key's");
    assert!(
        transactions * 4 <= inserted,
        "{inserted} runs in {transactions} transactions: the calls were not batched"
    );
    cancel.cancel();
}
