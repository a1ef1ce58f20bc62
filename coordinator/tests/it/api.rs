//! The gRPC API in-process on port 0 against a real Postgres: every RPC's success path and the
//! status each kind of bad input gets.

use std::time::Duration;

use std::net::SocketAddr;

use leasehold_coordinator::api::Auth;
use leasehold_core::ids::{ClaimantId, NodeId, RunId, TenantId};
use leasehold_core::store::{Failure, NewToken, Role, Store};
use leasehold_proto::bearer::{AuthedChannel, Bearer};
use leasehold_proto::v1;
use leasehold_proto::v1::automations_client::AutomationsClient;
use leasehold_proto::v1::gates_client::GatesClient;
use leasehold_proto::v1::runs_client::RunsClient;
use leasehold_proto::v1::stats_client::StatsClient;
use leasehold_proto::v1::workers_client::WorkersClient;
use leasehold_testkit::fixtures::{claim_one, serve_in_process, worker_info};
use leasehold_testkit::{TestDb, wait_for};
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

pub(super) const DEADLINE: Duration = Duration::from_secs(20);
const LEASE: Duration = Duration::from_secs(60);

pub(super) struct Bundle {
    pub(super) store: Store,
    /// Calls carry an admin token of the default tenant named [`ADMIN`].
    pub(super) channel: AuthedChannel,
    /// Calls carry no token.
    pub(super) plain: Channel,
    /// Where the API listens.
    pub(super) addr: SocketAddr,
    cancel: CancellationToken,
    _db: TestDb,
}

/// The name of the token [`setup`]'s channel carries.
pub(super) const ADMIN: &str = "test-admin";

/// Serves the API on `store` with tokens required, as `leasehold coordinator` does.
pub(super) async fn serve_with_tokens(store: &Store) -> (SocketAddr, CancellationToken) {
    let store = store.clone();
    serve_in_process(|listener, cancel| {
        leasehold_coordinator::api::serve(listener, store.clone(), Auth::Tokens(store), cancel)
    })
    .await
}

/// A connection to `addr` without a token.
pub(super) async fn plain_channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect")
}

/// A connection to `addr` whose calls carry a new token of `role` in `tenant`, named `name`.
pub(super) async fn channel_as(
    store: &Store,
    addr: SocketAddr,
    tenant: &str,
    role: Role,
    name: &str,
) -> AuthedChannel {
    let (_, secret) = store
        .create_token(&NewToken {
            tenant: TenantId::from(tenant),
            role,
            name: Some(name.to_owned()),
            expires_in: None,
        })
        .await
        .expect("token");
    Bearer::new(&secret.expose())
        .expect("a header value")
        .channel(plain_channel(addr).await)
}

impl Drop for Bundle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

pub(super) async fn setup() -> Bundle {
    let db = TestDb::new().await;
    let store = Store::connect_unchecked(db.url(), 8).expect("pool");
    store.migrate().await.expect("migrate");
    let (addr, cancel) = serve_with_tokens(&store).await;
    let channel = channel_as(&store, addr, "default", Role::Admin, ADMIN).await;
    Bundle {
        store,
        channel,
        plain: plain_channel(addr).await,
        addr,
        cancel,
        _db: db,
    }
}

impl Bundle {
    pub(super) fn automations(&self) -> AutomationsClient<AuthedChannel> {
        AutomationsClient::new(self.channel.clone())
    }
    pub(super) fn runs(&self) -> RunsClient<AuthedChannel> {
        RunsClient::new(self.channel.clone())
    }
    pub(super) fn gates(&self) -> GatesClient<AuthedChannel> {
        GatesClient::new(self.channel.clone())
    }

    pub(super) async fn apply(&self, yaml: &str) -> v1::Automation {
        self.automations()
            .apply_automation(v1::ApplyAutomationRequest {
                spec: Some(text(yaml)),
            })
            .await
            .expect("apply")
            .into_inner()
    }

    pub(super) async fn start(&self, automation: &str, request_id: &str) -> v1::StartRunResponse {
        self.runs()
            .start_run(v1::StartRunRequest {
                automation_id: automation.into(),
                request_id: request_id.into(),
                ..Default::default()
            })
            .await
            .expect("start")
            .into_inner()
    }
}

pub(super) fn text(yaml: &str) -> v1::SpecSource {
    v1::SpecSource {
        source: Some(v1::spec_source::Source::Text(yaml.into())),
    }
}

const HELLO: &str =
    "id: hello\nnodes:\n  - {id: a, kind: echo}\n  - {id: b, kind: noop, depends_on: [a]}\n";

pub(super) fn violations(status: &tonic::Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn automations_create_get_list_update_pause_activate_delete() {
    let b = setup().await;
    let structured = v1::SpecSource {
        source: Some(v1::spec_source::Source::Structured(v1::AutomationSpec {
            id: "structured".into(),
            description: "from a message".into(),
            nodes: vec![v1::NodeSpec {
                id: "only".into(),
                kind: "noop".into(),
                ..Default::default()
            }],
            ..Default::default()
        })),
    };
    let created = b
        .automations()
        .create_automation(v1::CreateAutomationRequest {
            spec: Some(structured.clone()),
        })
        .await
        .expect("create")
        .into_inner();
    assert_eq!(
        (created.current_version, created.status()),
        (1, v1::AutomationStatus::Active)
    );
    assert_eq!(
        created.spec.expect("spec").nodes[0].max_attempts,
        3,
        "defaults filled"
    );
    let duplicate = b
        .automations()
        .create_automation(v1::CreateAutomationRequest {
            spec: Some(structured),
        })
        .await
        .expect_err("duplicate");
    assert_eq!(duplicate.code(), Code::AlreadyExists);

    let hello = b.apply(HELLO).await;
    assert!(hello.version_created);
    assert!(
        !b.apply(HELLO).await.version_created,
        "an unchanged spec adds no version"
    );
    let updated = b
        .automations()
        .update_automation(v1::UpdateAutomationRequest {
            spec: Some(text("id: hello\nnodes:\n  - {id: a, kind: echo}\n")),
        })
        .await
        .expect("update")
        .into_inner();
    assert_eq!(updated.current_version, 2);
    let v1_again = b
        .automations()
        .get_automation(v1::GetAutomationRequest {
            id: "hello".into(),
            version: 1,
        })
        .await
        .expect("get v1")
        .into_inner();
    assert_eq!(v1_again.spec.expect("spec").nodes.len(), 2);

    let listed = b
        .automations()
        .list_automations(v1::ListAutomationsRequest {
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.automations.len(), 1);
    assert!(!listed.next_page_token.is_empty());
    let rest = b
        .automations()
        .list_automations(v1::ListAutomationsRequest {
            page_size: 1,
            page_token: listed.next_page_token,
        })
        .await
        .expect("page 2")
        .into_inner();
    assert_eq!(rest.automations.len(), 1);
    assert_ne!(rest.automations[0].id, listed.automations[0].id);

    let paused = b
        .automations()
        .pause_automation(v1::PauseAutomationRequest { id: "hello".into() })
        .await
        .expect("pause")
        .into_inner();
    assert_eq!(paused.status(), v1::AutomationStatus::Paused);
    let refused = b
        .runs()
        .start_run(v1::StartRunRequest {
            automation_id: "hello".into(),
            ..Default::default()
        })
        .await
        .expect_err("paused automations start no runs");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    b.automations()
        .activate_automation(v1::ActivateAutomationRequest { id: "hello".into() })
        .await
        .expect("activate");
    let run = b.start("hello", "").await.run.expect("run");
    let in_use = b
        .automations()
        .delete_automation(v1::DeleteAutomationRequest { id: "hello".into() })
        .await
        .expect_err("unfinished runs");
    assert_eq!(in_use.code(), Code::FailedPrecondition);
    b.runs()
        .cancel_run(v1::CancelRunRequest {
            run_id: run.run_id,
            reason: "done".into(),
            ..Default::default()
        })
        .await
        .expect("cancel");
    b.automations()
        .delete_automation(v1::DeleteAutomationRequest { id: "hello".into() })
        .await
        .expect("delete");
    let gone = b
        .automations()
        .get_automation(v1::GetAutomationRequest {
            id: "hello".into(),
            version: 0,
        })
        .await
        .expect_err("deleted");
    assert_eq!(gone.code(), Code::NotFound);
}

#[tokio::test]
async fn bad_input_gets_invalid_argument_naming_the_field_and_stores_nothing() {
    let b = setup().await;
    let cyclic = b
        .automations()
        .create_automation(v1::CreateAutomationRequest {
            spec: Some(text(
                "id: cyclic\nnodes:\n  - {id: a, kind: noop, depends_on: [b]}\n  - {id: b, kind: noop, depends_on: [a]}\n",
            )),
        })
        .await
        .expect_err("cycle");
    assert_eq!(cyclic.code(), Code::InvalidArgument);
    let cycle = cyclic.get_details_bad_request().expect("bad request");
    assert_eq!(cycle.field_violations[0].field, "spec.text");
    assert!(
        cycle.field_violations[0]
            .description
            .starts_with("nodes[0].depends_on"),
        "{cyclic:?}"
    );

    let dangling = b
        .automations()
        .create_automation(v1::CreateAutomationRequest {
            spec: Some(text(
                "id: d\nnodes:\n  - {id: a, kind: noop, depends_on: [zz]}\n",
            )),
        })
        .await
        .expect_err("dangling");
    assert_eq!(violations(&dangling), vec!["spec.text"]);
    let message = &dangling
        .get_details_bad_request()
        .expect("bad request")
        .field_violations[0]
        .description;
    assert!(
        message.starts_with("nodes[0].depends_on[0] (node \"a\"): "),
        "the place in the text: {message}"
    );
    let structured = b
        .automations()
        .create_automation(v1::CreateAutomationRequest {
            spec: Some(v1::SpecSource {
                source: Some(v1::spec_source::Source::Structured(v1::AutomationSpec {
                    id: "d".into(),
                    nodes: vec![v1::NodeSpec {
                        id: "a".into(),
                        kind: "noop".into(),
                        depends_on: vec!["zz".into()],
                        ..Default::default()
                    }],
                    ..Default::default()
                })),
            }),
        })
        .await
        .expect_err("dangling");
    assert_eq!(
        violations(&structured),
        vec!["spec.structured.nodes[0].depends_on[0]"]
    );

    let missing = b
        .automations()
        .create_automation(v1::CreateAutomationRequest { spec: None })
        .await
        .expect_err("no spec");
    assert_eq!(violations(&missing), vec!["spec"]);

    let bad_id = b
        .runs()
        .get_run(v1::GetRunRequest {
            run_id: "not-a-uuid".into(),
        })
        .await
        .expect_err("junk id");
    assert_eq!(violations(&bad_id), vec!["run_id"]);

    let unknown = b
        .runs()
        .get_run(v1::GetRunRequest {
            run_id: RunId::new().to_string(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(unknown.code(), Code::NotFound);

    b.apply(HELLO).await;
    let priority = b
        .runs()
        .start_run(v1::StartRunRequest {
            automation_id: "hello".into(),
            priority: 5_000,
            ..Default::default()
        })
        .await
        .expect_err("priority");
    assert_eq!(violations(&priority), vec!["priority"]);
    let junk = b
        .runs()
        .start_run(v1::StartRunRequest {
            automation_id: "hel lo;".into(),
            ..Default::default()
        })
        .await
        .expect_err("junk automation id");
    assert_eq!(violations(&junk), vec!["automation_id"]);

    let negative = b
        .runs()
        .list_runs(v1::ListRunsRequest {
            page_size: -1,
            ..Default::default()
        })
        .await
        .expect_err("negative page size");
    assert_eq!(violations(&negative), vec!["page_size"]);
    let token = b
        .runs()
        .list_runs(v1::ListRunsRequest {
            page_token: "garbage".into(),
            ..Default::default()
        })
        .await
        .expect_err("bad token");
    assert_eq!(violations(&token), vec!["page_token"]);
    let status = b
        .runs()
        .list_runs(v1::ListRunsRequest {
            statuses: vec![v1::RunStatus::Failed.into(), 77],
            ..Default::default()
        })
        .await
        .expect_err("bad status");
    assert_eq!(violations(&status), vec!["statuses[1]"]);
    let unspecified = b
        .runs()
        .list_runs(v1::ListRunsRequest {
            statuses: vec![v1::RunStatus::Unspecified.into()],
            ..Default::default()
        })
        .await
        .expect_err("UNSPECIFIED is no status");
    assert_eq!(violations(&unspecified), vec!["statuses[0]"]);
    // A page size of a million is coerced to the maximum, not refused.
    b.runs()
        .list_runs(v1::ListRunsRequest {
            page_size: 1_000_000,
            ..Default::default()
        })
        .await
        .expect("coerced");

    let huge = "x".repeat(20 * 1024 * 1024);
    let oversize = b
        .automations()
        .create_automation(v1::CreateAutomationRequest {
            spec: Some(text(&huge)),
        })
        .await
        .expect_err("oversize message");
    assert_eq!(oversize.code(), Code::ResourceExhausted);

    let runs = b
        .runs()
        .list_runs(v1::ListRunsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(runs.runs.is_empty(), "no refused request stored a run");
}

#[tokio::test]
async fn runs_start_idempotently_and_move_through_their_operator_actions() {
    let b = setup().await;
    b.apply(HELLO).await;
    let first = b.start("hello", "req-1").await;
    assert!(first.created);
    let run = first.run.expect("run");
    assert_eq!(run.status(), v1::RunStatus::Queued);
    assert_eq!(run.queue_reason(), v1::QueueReason::Started);
    let nodes: Vec<(String, v1::NodeStatus)> = run
        .nodes
        .iter()
        .map(|n| (n.node_id.clone(), n.status()))
        .collect();
    assert_eq!(
        nodes,
        vec![
            ("a".into(), v1::NodeStatus::Pending),
            ("b".into(), v1::NodeStatus::Pending)
        ]
    );
    let repeat = b.start("hello", "req-1").await;
    assert!(!repeat.created);
    assert_eq!(repeat.run.expect("run").run_id, run.run_id);
    let other = b
        .runs()
        .start_run(v1::StartRunRequest {
            automation_id: "hello".into(),
            request_id: "req-1".into(),
            priority: 7,
            ..Default::default()
        })
        .await
        .expect_err("same id, other body");
    assert_eq!(other.code(), Code::FailedPrecondition);

    let id = || run.run_id.clone();
    let paused = b
        .runs()
        .pause_run(v1::PauseRunRequest {
            run_id: id(),
            reason: "wait".into(),
            ..Default::default()
        })
        .await
        .expect("pause")
        .into_inner();
    assert_eq!(
        (paused.status(), paused.stop_kind()),
        (v1::RunStatus::Paused, v1::StopKind::OperatorPaused)
    );
    let resumed = b
        .runs()
        .resume_run(v1::ResumeRunRequest {
            run_id: id(),
            reason: "go".into(),
            ..Default::default()
        })
        .await
        .expect("resume")
        .into_inner();
    assert_eq!(resumed.status(), v1::RunStatus::Queued);
    let not_paused = b
        .runs()
        .resume_run(v1::ResumeRunRequest {
            run_id: id(),
            reason: String::new(),
            ..Default::default()
        })
        .await
        .expect_err("not paused");
    assert_eq!(not_paused.code(), Code::FailedPrecondition);

    // A worker fails the run; an operator recovers it.
    let claimed = claim_one(&b.store, "w").await;
    let a = NodeId::from("a");
    b.store
        .node_started(&claimed.claim, &a)
        .await
        .expect("start");
    b.store
        .node_failed(&claimed.claim, &a, "boom", false)
        .await
        .expect("fail node");
    let failure = Failure {
        node_id: a,
        attempt: 1,
        reason: "boom".into(),
    };
    b.store
        .fail_run(&claimed.claim, &failure, &[NodeId::from("b")])
        .await
        .expect("fail run");
    let failed = b
        .runs()
        .get_run(v1::GetRunRequest { run_id: id() })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(failed.status(), v1::RunStatus::Failed);
    assert_eq!(failed.last_failure.expect("failure").reason, "boom");
    let recovered = b
        .runs()
        .recover_run(v1::RecoverRunRequest {
            run_id: id(),
            reason: "fixed upstream".into(),
            ..Default::default()
        })
        .await
        .expect("recover")
        .into_inner();
    assert_eq!(recovered.status(), v1::RunStatus::Queued);

    let cancelled = b
        .runs()
        .cancel_run(v1::CancelRunRequest {
            run_id: id(),
            reason: "enough".into(),
            ..Default::default()
        })
        .await
        .expect("cancel")
        .into_inner();
    assert_eq!(cancelled.status(), v1::RunStatus::Cancelled);
    let again = b
        .runs()
        .cancel_run(v1::CancelRunRequest {
            run_id: id(),
            reason: String::new(),
            ..Default::default()
        })
        .await
        .expect_err("already cancelled");
    assert_eq!(again.code(), Code::FailedPrecondition);

    let listed = b
        .runs()
        .list_runs(v1::ListRunsRequest {
            automation_id: "hello".into(),
            statuses: vec![v1::RunStatus::Cancelled.into()],
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.runs.len(), 1);
    assert!(listed.next_page_token.is_empty());
}

#[tokio::test]
async fn runs_start_in_batches_all_or_nothing_naming_the_refused_request() {
    let b = setup().await;
    b.apply(HELLO).await;
    let request = |request_id: &str, priority: i32| v1::StartRunRequest {
        automation_id: "hello".into(),
        request_id: request_id.into(),
        priority,
        ..Default::default()
    };
    let batch = v1::StartRunsRequest {
        requests: vec![request("b-1", 0), request("", 3), request("b-1", 0)],
    };
    let started = b
        .runs()
        .start_runs(batch.clone())
        .await
        .expect("start batch")
        .into_inner()
        .runs;
    let created: Vec<bool> = started.iter().map(|s| s.created).collect();
    assert_eq!(created, vec![true, true, false]);
    let started: Vec<v1::Run> = started
        .into_iter()
        .map(|s| s.run.expect("each answer carries its run"))
        .collect();
    assert_eq!(started[2].run_id, started[0].run_id);
    // Each answer is the run as GetRun shows it, without its nodes and gates, and without why
    // it waits (no worker serves here), which only GetRun and ListRuns say.
    for run in &started {
        let mut shown = b
            .runs()
            .get_run(v1::GetRunRequest {
                run_id: run.run_id.clone(),
            })
            .await
            .expect("get")
            .into_inner();
        assert_eq!(shown.nodes.len(), 2);
        shown.nodes.clear();
        shown.gates.clear();
        assert!(shown.waiting.take().is_some());
        assert_eq!(&shown, run);
    }
    assert_eq!(
        (started[1].status(), started[1].priority),
        (v1::RunStatus::Queued, 3)
    );
    let repeat = b
        .runs()
        .start_runs(v1::StartRunsRequest {
            requests: vec![request("b-1", 0)],
        })
        .await
        .expect("repeat")
        .into_inner()
        .runs;
    assert_eq!(
        repeat[0].run.as_ref().expect("run").run_id,
        started[0].run_id
    );
    assert!(!repeat[0].created);

    let stored = || async {
        b.runs()
            .list_runs(v1::ListRunsRequest::default())
            .await
            .expect("list")
            .into_inner()
            .runs
            .len()
    };
    let before = stored().await;
    let bad_field = b
        .runs()
        .start_runs(v1::StartRunsRequest {
            requests: vec![request("", 0), request("", 5_000)],
        })
        .await
        .expect_err("priority out of range");
    assert_eq!(bad_field.code(), Code::InvalidArgument);
    assert_eq!(violations(&bad_field), vec!["requests[1].priority"]);

    let missing = b
        .runs()
        .start_runs(v1::StartRunsRequest {
            requests: vec![
                request("", 0),
                v1::StartRunRequest {
                    automation_id: "nope".into(),
                    ..Default::default()
                },
            ],
        })
        .await
        .expect_err("unknown automation");
    assert_eq!(missing.code(), Code::NotFound);
    assert!(
        missing.message().starts_with("requests[1]: "),
        "{missing:?}"
    );

    let conflict = b
        .runs()
        .start_runs(v1::StartRunsRequest {
            requests: vec![request("", 0), request("b-1", 9)],
        })
        .await
        .expect_err("same id, other body");
    assert_eq!(conflict.code(), Code::FailedPrecondition);
    assert!(
        conflict.message().starts_with("requests[1]: "),
        "{conflict:?}"
    );

    let too_many = b
        .runs()
        .start_runs(v1::StartRunsRequest {
            requests: vec![request("", 0); leasehold_coordinator::api::MAX_START_RUNS + 1],
        })
        .await
        .expect_err("too many");
    assert_eq!(violations(&too_many), vec!["requests"]);
    assert_eq!(stored().await, before, "refused batches stored nothing");
}

#[tokio::test]
async fn watch_resumed_from_a_middle_sequence_yields_exactly_the_rest_and_ends() {
    let b = setup().await;
    b.apply(HELLO).await;
    let run = b.start("hello", "").await.run.expect("run");
    let claim = claim_one(&b.store, "w").await.claim;
    for node in ["a", "b"] {
        let node = NodeId::from(node);
        b.store.node_started(&claim, &node).await.expect("start");
        b.store
            .node_completed(&claim, &node, &serde_json::json!(null))
            .await
            .expect("complete");
    }
    b.store.complete_run(&claim).await.expect("complete run");

    let mut stream = b
        .runs()
        .watch_run(v1::WatchRunRequest {
            run_id: run.run_id.clone(),
            after_seq: 3,
        })
        .await
        .expect("watch")
        .into_inner();
    let mut seen = Vec::new();
    while let Some(event) = tokio::time::timeout(DEADLINE, stream.message())
        .await
        .expect("the stream ends by itself")
        .expect("event")
    {
        seen.push((
            event.seq,
            event.event.clone(),
            event.terminal,
            event.run_status(),
            event.node_status(),
        ));
    }
    use v1::{NodeStatus as N, RunStatus as R};
    assert_eq!(
        seen,
        vec![
            (4, "node_completed".into(), false, R::Running, N::Completed),
            (5, "node_started".into(), false, R::Running, N::Running),
            (6, "node_completed".into(), false, R::Running, N::Completed),
            (
                7,
                "run_completed".into(),
                true,
                R::Completed,
                N::Unspecified
            ),
        ]
    );
}

#[tokio::test]
async fn a_live_watch_sees_events_as_they_happen() {
    let b = setup().await;
    b.apply(HELLO).await;
    let run = b.start("hello", "").await.run.expect("run");
    let mut stream = b
        .runs()
        .watch_run(v1::WatchRunRequest {
            run_id: run.run_id.clone(),
            after_seq: 0,
        })
        .await
        .expect("watch")
        .into_inner();
    let first = stream.message().await.expect("event").expect("some");
    assert_eq!((first.seq, first.event.as_str()), (1, "run_started"));
    b.runs()
        .cancel_run(v1::CancelRunRequest {
            run_id: run.run_id,
            reason: String::new(),
            ..Default::default()
        })
        .await
        .expect("cancel");
    let last = tokio::time::timeout(DEADLINE, stream.message())
        .await
        .expect("in time")
        .expect("event")
        .expect("some");
    assert_eq!(
        (last.seq, last.event.as_str(), last.terminal),
        (2, "run_cancelled", true)
    );
    assert!(stream.message().await.expect("end").is_none());
}

#[tokio::test]
async fn eight_concurrent_gate_decisions_produce_one() {
    let b = setup().await;
    b.apply("id: gated\nnodes:\n  - {id: ship, kind: noop, approval: {prompt: Ship?}}\n")
        .await;
    let run = b.start("gated", "").await.run.expect("run");
    let claim = claim_one(&b.store, "w").await.claim;
    let gate_id = b
        .store
        .await_approval(&claim, &NodeId::from("ship"), "Ship?")
        .await
        .expect("gate");
    let pending = b
        .gates()
        .list_gates(v1::ListGatesRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(pending.gates.len(), 1);
    assert_eq!(pending.gates[0].prompt, "Ship?");

    let mut deciders = Vec::new();
    for i in 0..8 {
        let mut client = b.gates();
        let gate_id = gate_id.to_string();
        deciders.push(tokio::spawn(async move {
            let decision = if i % 2 == 0 {
                v1::Decision::Approve
            } else {
                v1::Decision::Cancel
            };
            client
                .decide_gate(v1::DecideGateRequest {
                    gate_id,
                    decision: decision.into(),
                    request_id: format!("decider-{i}"),
                    ..Default::default()
                })
                .await
                .map(|r| (i, r.into_inner()))
        }));
    }
    let mut winners = Vec::new();
    for decider in deciders {
        match decider.await.expect("task") {
            Ok(won) => winners.push(won),
            Err(status) => assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one decision wins");
    let (winner, gate) = winners.remove(0);
    let repeat = b
        .gates()
        .decide_gate(v1::DecideGateRequest {
            gate_id: gate_id.to_string(),
            decision: if winner % 2 == 0 {
                v1::Decision::Approve
            } else {
                v1::Decision::Cancel
            }
            .into(),
            request_id: format!("decider-{winner}"),
            ..Default::default()
        })
        .await
        .expect("a repeat of the winning request gets the same answer")
        .into_inner();
    assert_eq!(repeat, gate);
    let status = b
        .runs()
        .get_run(v1::GetRunRequest { run_id: run.run_id })
        .await
        .expect("get")
        .into_inner()
        .status();
    assert_eq!(
        status,
        if winner % 2 == 0 {
            v1::RunStatus::Queued
        } else {
            v1::RunStatus::Cancelled
        }
    );
}

#[tokio::test]
async fn workers_list_and_drain_and_stats_count() {
    let b = setup().await;
    b.store
        .register_worker(&worker_info("w-1", "box", "test"))
        .await
        .expect("register");
    let mut workers = WorkersClient::new(b.channel.clone());
    let listed = workers
        .list_workers(v1::ListWorkersRequest {})
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.workers.len(), 1);
    assert!(listed.workers[0].alive);
    let drained = workers
        .drain_worker(v1::DrainWorkerRequest {
            claimant_id: "w-1".into(),
        })
        .await
        .expect("drain")
        .into_inner();
    assert!(drained.draining);
    let unknown = workers
        .drain_worker(v1::DrainWorkerRequest {
            claimant_id: "nobody".into(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(unknown.code(), Code::NotFound);

    b.apply(HELLO).await;
    b.start("hello", "").await;
    b.start("hello", "").await;
    b.store
        .claim_runs(&ClaimantId::from("w-1"), 1, LEASE)
        .await
        .expect("claim");
    let stats = StatsClient::new(b.channel.clone())
        .get_stats(v1::GetStatsRequest::default())
        .await
        .expect("stats")
        .into_inner();
    let counts: Vec<(v1::RunStatus, i64)> = stats
        .run_counts
        .iter()
        .map(|c| (c.status(), c.runs))
        .filter(|(_, runs)| *runs > 0)
        .collect();
    assert_eq!(
        counts,
        vec![(v1::RunStatus::Queued, 1), (v1::RunStatus::Running, 1)]
    );
    assert_eq!(stats.run_counts.len(), 9, "every status is counted");
    assert_eq!((stats.claimable_now, stats.held_leases), (1, 1));
}

#[tokio::test]
async fn health_serves_and_reflection_lists_the_services_in_both_versions() {
    let b = setup().await;
    // Both are open: probes and tools call them without a token.
    let mut health = tonic_health::pb::health_client::HealthClient::new(b.plain.clone());
    wait_for(DEADLINE, "the health service to report SERVING", || {
        let mut health = health.clone();
        async move {
            let reply = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .ok()?
                .into_inner();
            (reply.status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32)
                .then_some(())
        }
    })
    .await;
    let runs = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "leasehold.v1.Runs".into(),
        })
        .await
        .expect("check Runs")
        .into_inner();
    assert_eq!(
        runs.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    use tonic_reflection::pb::v1 as r1;
    use tonic_reflection::pb::v1alpha as r1a;
    let request = r1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(r1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut client = r1::server_reflection_client::ServerReflectionClient::new(b.plain.clone());
    let mut replies = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection v1")
        .into_inner();
    let reply = replies.message().await.expect("reply").expect("some");
    let Some(r1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        reply.message_response
    else {
        panic!("not a service list: {reply:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for service in [
        "leasehold.v1.Runs",
        "leasehold.v1.Automations",
        "leasehold.v1.Gates",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == service), "{service} in {names:?}");
    }

    let request = r1a::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            r1a::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut client = r1a::server_reflection_client::ServerReflectionClient::new(b.plain.clone());
    let reply = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection v1alpha")
        .into_inner()
        .message()
        .await
        .expect("reply")
        .expect("some");
    assert!(matches!(
        reply.message_response,
        Some(r1a::server_reflection_response::MessageResponse::ListServicesResponse(_))
    ));
}
