//! The API's limits in-process against a real Postgres: the deadline of a call, the limit of
//! calls in flight, the caps of watch streams, and an answer too large to send whole.

use std::time::Duration;

use leasehold_coordinator::api::{self, Auth};
use leasehold_core::ids::NodeId;
use leasehold_core::store::{NodeCompletion, NodeStart, Role, Store};
use leasehold_proto::v1;
use leasehold_proto::v1::runs_client::RunsClient;
use leasehold_testkit::fixtures::{claim_one, serve_in_process};
use leasehold_testkit::proxy::{Mode, Proxy, server_addr};
use leasehold_testkit::{TestDb, wait_for};
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use super::api::{DEADLINE, channel_as, plain_channel, setup, text};

/// A coordinator whose API reaches the database through a proxy the test can black-hole, serving
/// without tokens within `config`.
struct Proxied {
    proxy: Proxy,
    store: Store,
    runs: RunsClient<Channel>,
    channel: Channel,
    cancel: CancellationToken,
    _db: TestDb,
}

impl Drop for Proxied {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn proxied(config: api::Config) -> Proxied {
    let db = TestDb::new().await;
    let store = Store::connect_unchecked(db.url(), 4).expect("pool");
    store.migrate().await.expect("migrate");
    let proxy = Proxy::start(server_addr(db.url())).await;
    let through_proxy = Store::connect_unchecked(&proxy.url_for(db.url()), 4).expect("pool");
    let (addr, cancel) = serve_in_process(|listener, cancel| {
        api::serve_with(
            listener,
            None,
            through_proxy,
            Auth::Disabled,
            config,
            cancel,
        )
    })
    .await;
    let channel = plain_channel(addr).await;
    Proxied {
        proxy,
        store,
        runs: RunsClient::new(channel.clone()),
        channel,
        cancel,
        _db: db,
    }
}

fn get(run_id: &str) -> v1::GetRunRequest {
    v1::GetRunRequest {
        run_id: run_id.to_owned(),
    }
}

const UNKNOWN_RUN: &str = "00000000-0000-7000-8000-000000000000";

#[tokio::test]
async fn a_call_past_the_deadline_is_deadline_exceeded_and_a_watch_outlives_the_deadline() {
    let timeout = Duration::from_millis(500);
    let p = proxied(api::Config {
        rpc_timeout: timeout,
        ..api::Config::default()
    })
    .await;
    let mut runs = p.runs.clone();
    // The database answers: an unknown run is NOT_FOUND, well within the deadline.
    let status = runs.get_run(get(UNKNOWN_RUN)).await.expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    p.proxy.set(Mode::BlackHole);
    let status = runs.get_run(get(UNKNOWN_RUN)).await.expect_err("late");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("--rpc-timeout"), "{status:?}");
    p.proxy.set(Mode::Pass);

    // A watch is bounded only while it opens: its stream lasts past the deadline.
    let spec = leasehold_testkit::fixtures::spec("id: hello\nnodes:\n  - {id: a, kind: noop}\n");
    let tenant = Default::default();
    p.store
        .create_automation(&tenant, &spec)
        .await
        .expect("create");
    let run_id = p
        .store
        .start_run(&leasehold_testkit::fixtures::start_request(
            &tenant, &spec.id,
        ))
        .await
        .expect("start")
        .run_id;
    let mut stream = runs
        .watch_run(v1::WatchRunRequest {
            run_id: run_id.to_string(),
            after_seq: 0,
        })
        .await
        .expect("watch")
        .into_inner();
    let first = stream.message().await.expect("event").expect("some");
    assert_eq!(first.event, "run_started");
    // Time must pass beyond the deadline while the stream is open; nothing settles meanwhile.
    tokio::time::sleep(timeout * 3).await;
    p.store
        .cancel_run(&tenant, run_id, "done", "test", None)
        .await
        .expect("cancel");
    let last = tokio::time::timeout(DEADLINE, stream.message())
        .await
        .expect("in time")
        .expect("the stream outlived the deadline")
        .expect("some");
    assert_eq!(
        (last.event.as_str(), last.terminal),
        ("run_cancelled", true)
    );
}

#[tokio::test]
async fn calls_past_the_in_flight_limit_are_unavailable_and_health_still_answers() {
    let p = proxied(api::Config {
        max_concurrent_rpcs: 2,
        ..api::Config::default()
    })
    .await;
    p.proxy.set(Mode::BlackHole);
    // Five calls at once: two are admitted and wait on the black-holed database; three are
    // refused at the door, at once.
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..5 {
        let mut runs = p.runs.clone();
        calls.spawn(async move { runs.get_run(get(UNKNOWN_RUN)).await });
    }
    for _ in 0..3 {
        let refused = tokio::time::timeout(DEADLINE, calls.join_next())
            .await
            .expect("refused at once")
            .expect("a call")
            .expect("task")
            .expect_err("refused");
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        assert!(
            refused.message().contains("--max-concurrent-rpcs"),
            "{refused:?}"
        );
    }
    // Probes are not counted: the health check answers while every slot is taken.
    let health = HealthClient::new(p.channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await;
    assert!(health.is_ok(), "{health:?}");

    // Once the admitted calls finish, their slots are free again.
    p.proxy.set(Mode::Pass);
    while let Some(admitted) = calls.join_next().await {
        let status = admitted.expect("task").expect_err("unknown run");
        assert!(
            !status.message().contains("--max-concurrent-rpcs"),
            "only three were refused: {status:?}"
        );
    }
    let mut runs = p.runs.clone();
    let status = runs.get_run(get(UNKNOWN_RUN)).await.expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
}

#[tokio::test]
async fn watches_past_a_cap_are_resource_exhausted_naming_the_cap() {
    let db = TestDb::new().await;
    let store = Store::connect_unchecked(db.url(), 4).expect("pool");
    store.migrate().await.expect("migrate");
    let config = api::Config {
        max_watch_streams: 3,
        max_watch_streams_per_tenant: 2,
        ..api::Config::default()
    };
    let serving = store.clone();
    let (addr, cancel) = serve_in_process(|listener, cancel| {
        api::serve_with(
            listener,
            None,
            serving.clone(),
            Auth::Tokens(serving),
            config,
            cancel,
        )
    })
    .await;
    let _stop = cancel.drop_guard();
    let yaml = "id: hello\nnodes:\n  - {id: a, kind: noop}\n";
    let mut run_of = std::collections::HashMap::new();
    let mut clients = std::collections::HashMap::new();
    for tenant in ["red", "blue"] {
        let channel = channel_as(&store, addr, tenant, Role::Admin, tenant).await;
        leasehold_proto::v1::automations_client::AutomationsClient::new(channel.clone())
            .apply_automation(v1::ApplyAutomationRequest {
                spec: Some(text(yaml)),
            })
            .await
            .expect("apply");
        let mut runs = RunsClient::new(channel);
        let run = runs
            .start_run(v1::StartRunRequest {
                automation_id: "hello".into(),
                ..Default::default()
            })
            .await
            .expect("start")
            .into_inner()
            .run
            .expect("run");
        run_of.insert(tenant, run.run_id);
        clients.insert(tenant, runs);
    }
    let watch = |tenant: &'static str| {
        let mut runs = clients[tenant].clone();
        let run_id = run_of[tenant].clone();
        async move {
            runs.watch_run(v1::WatchRunRequest {
                run_id,
                after_seq: 0,
            })
            .await
            .map(tonic::Response::into_inner)
        }
    };
    let red_1 = watch("red").await.expect("first of red");
    let _red_2 = watch("red").await.expect("second of red");
    let refused = watch("red").await.expect_err("third of red");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("--max-watch-streams-per-tenant"),
        "{refused:?}"
    );
    let _blue_1 = watch("blue").await.expect("first of blue");
    let refused = watch("blue").await.expect_err("fourth in all");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("(--max-watch-streams)"),
        "{refused:?}"
    );
    // A closed stream gives its place back.
    drop(red_1);
    let again = wait_for(DEADLINE, "a closed watch's place to be free", || async {
        watch("red").await.ok()
    })
    .await;
    drop(again);
}

#[tokio::test]
async fn an_action_on_a_run_too_large_to_show_succeeds_leaving_out_the_largest_outputs() {
    let b = setup().await;
    // 70 outputs of about 1 MiB each: more than the 64 MiB an answer may hold.
    const NODES: usize = 70;
    let nodes: String = (0..NODES)
        .map(|i| format!("  - {{id: n{i:02}, kind: noop}}\n"))
        .collect();
    b.apply(&format!("id: big\nnodes:\n{nodes}")).await;
    let run = b.start("big", "").await.run.expect("run");
    let claim = claim_one(&b.store, "w").await.claim;
    let node_ids: Vec<NodeId> = (0..NODES)
        .map(|i| NodeId::from(format!("n{i:02}").as_str()))
        .collect();
    let starts: Vec<NodeStart> = node_ids
        .iter()
        .map(|node_id| NodeStart {
            claim,
            node_id: node_id.clone(),
        })
        .collect();
    for started in b.store.nodes_started(&starts).await.expect("start") {
        started.expect("started");
    }
    // The first node's output is small; the others differ in size, the last largest.
    let completions: Vec<NodeCompletion> = node_ids
        .iter()
        .enumerate()
        .map(|(i, node_id)| NodeCompletion {
            claim,
            node_id: node_id.clone(),
            output: if i == 0 {
                serde_json::json!("small")
            } else {
                serde_json::json!("x".repeat(1_000_000 + i * 100))
            },
            completes_run: false,
            then_start: Vec::new(),
        })
        .collect();
    for completed in b
        .store
        .nodes_completed(&completions)
        .await
        .expect("complete")
    {
        completed.expect("completed");
    }

    // A client that takes answers as large as the coordinator sends.
    let mut runs = b.runs().max_decoding_message_size(api::MAX_RESPONSE_BYTES);
    let cancelled = runs
        .cancel_run(v1::CancelRunRequest {
            run_id: run.run_id.clone(),
            reason: "too big to show".into(),
            ..Default::default()
        })
        .await
        .expect("a cancel that landed answers OK")
        .into_inner();
    assert_eq!(cancelled.status(), v1::RunStatus::Cancelled);
    let fetched = runs
        .get_run(v1::GetRunRequest {
            run_id: run.run_id.clone(),
        })
        .await
        .expect("the view answers")
        .into_inner();
    for view in [&cancelled, &fetched] {
        assert_eq!(view.nodes.len(), NODES);
        let omitted: Vec<&str> = view
            .nodes
            .iter()
            .filter(|n| n.output_omitted)
            .map(|n| n.node_id.as_str())
            .collect();
        // Only as many as needed, the largest first: the small one and most others stay.
        assert!(!omitted.is_empty(), "some output is left out");
        assert!(omitted.len() < NODES / 2, "{omitted:?}");
        assert!(
            omitted.contains(&"n69"),
            "the largest goes first: {omitted:?}"
        );
        assert!(!omitted.contains(&"n00"), "{omitted:?}");
        for node in &view.nodes {
            assert_eq!(node.status(), v1::NodeStatus::Completed);
            assert_eq!(
                node.output.is_none(),
                node.output_omitted,
                "{}: an output is either shown or marked left out",
                node.node_id
            );
        }
    }
}
