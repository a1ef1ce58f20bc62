//! Authentication and tenants, in-process over real gRPC with tokens required: who may call
//! what, what each tenant sees, and whose name a decision and an operator's move record.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use leasehold_coordinator::api::{self, Auth};
use leasehold_core::ids::{NodeId, RunId, TenantId};
use leasehold_core::store::{NewToken, Role, Store, TokenId};
use leasehold_proto::bearer::{AuthedChannel, Bearer};
use leasehold_proto::v1;
use leasehold_proto::v1::automations_client::AutomationsClient;
use leasehold_proto::v1::gates_client::GatesClient;
use leasehold_proto::v1::runs_client::RunsClient;
use leasehold_proto::v1::stats_client::StatsClient;
use leasehold_proto::v1::workers_client::WorkersClient;
use leasehold_testkit::fixtures::{claim_one, serve_in_process};
use leasehold_testkit::wait_for;
use tonic::Code;

use super::api::{ADMIN, Bundle, DEADLINE, channel_as, plain_channel, setup, text};

const GATED: &str = "id: gated\nnodes:\n  - {id: ship, kind: noop, approval: {prompt: Ship?}}\n";

async fn as_role(b: &Bundle, tenant: &str, role: Role, name: &str) -> AuthedChannel {
    channel_as(&b.store, b.addr, tenant, role, name).await
}

async fn apply(channel: &AuthedChannel, yaml: &str) {
    AutomationsClient::new(channel.clone())
        .apply_automation(v1::ApplyAutomationRequest {
            spec: Some(text(yaml)),
        })
        .await
        .expect("apply");
}

async fn start(channel: &AuthedChannel, automation: &str) -> String {
    RunsClient::new(channel.clone())
        .start_run(v1::StartRunRequest {
            automation_id: automation.into(),
            ..Default::default()
        })
        .await
        .expect("start")
        .into_inner()
        .run
        .expect("run")
        .run_id
}

fn get(run_id: &str) -> v1::GetRunRequest {
    v1::GetRunRequest {
        run_id: run_id.to_owned(),
    }
}

/// Claims the tenant's only queued run and stops it at its gate; returns the gate's id.
async fn at_gate(store: &Store) -> String {
    let claimed = claim_one(store, "w").await;
    store
        .await_approval(&claimed.claim, &NodeId::from("ship"), "Ship?")
        .await
        .expect("gate")
        .to_string()
}

#[tokio::test]
async fn a_call_without_a_good_token_is_unauthenticated_and_health_stays_open() {
    let b = setup().await;
    apply(&b.channel, GATED).await;
    let run_id = start(&b.channel, "gated").await;

    let mut anonymous = RunsClient::new(Bearer::none().channel(b.plain.clone()));
    let refused = anonymous.get_run(get(&run_id)).await.expect_err("no token");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(
        refused.message().contains("leasehold token create"),
        "{refused:?}"
    );
    let listed = anonymous
        .list_runs(v1::ListRunsRequest::default())
        .await
        .expect_err("no token");
    assert_eq!(listed.code(), Code::Unauthenticated);

    // A well-formed token nobody made, and text that is no token at all.
    let forged = format!("lh_0123456789abcdef_{}", "ab".repeat(32));
    for token in [forged.as_str(), "hunter2"] {
        let mut runs = RunsClient::new(Bearer::new(token).expect("ascii").channel(b.plain.clone()));
        let refused = runs.get_run(get(&run_id)).await.expect_err("bad token");
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
        assert!(!refused.message().contains(token), "{refused:?}");
    }

    let mut health =
        tonic_health::pb::health_client::HealthClient::new(plain_channel(b.addr).await);
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health needs no token");
}

#[tokio::test]
async fn each_role_may_do_what_it_names_and_no_more() {
    let b = setup().await;
    apply(&b.channel, GATED).await;
    let viewer = as_role(&b, "default", Role::Viewer, "vic").await;
    let operator = as_role(&b, "default", Role::Operator, "olga").await;

    let refused = RunsClient::new(viewer.clone())
        .start_run(v1::StartRunRequest {
            automation_id: "gated".into(),
            ..Default::default()
        })
        .await
        .expect_err("a viewer starts nothing");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("operator"), "{refused:?}");
    assert!(
        RunsClient::new(b.channel.clone())
            .list_runs(v1::ListRunsRequest::default())
            .await
            .expect("list")
            .into_inner()
            .runs
            .is_empty(),
        "the refused start stored nothing"
    );

    let run_id = start(&operator, "gated").await;
    RunsClient::new(viewer.clone())
        .get_run(get(&run_id))
        .await
        .expect("a viewer reads");
    StatsClient::new(viewer.clone())
        .get_stats(v1::GetStatsRequest::default())
        .await
        .expect("a viewer reads stats");
    WorkersClient::new(viewer.clone())
        .list_node_kinds(v1::ListNodeKindsRequest {})
        .await
        .expect("a viewer lists node kinds");
    for refused in [
        WorkersClient::new(viewer.clone())
            .list_workers(v1::ListWorkersRequest {})
            .await
            .map(drop),
        WorkersClient::new(operator.clone())
            .drain_worker(v1::DrainWorkerRequest {
                claimant_id: "w".into(),
            })
            .await
            .map(drop),
        AutomationsClient::new(operator.clone())
            .pause_automation(v1::PauseAutomationRequest { id: "gated".into() })
            .await
            .map(drop),
        RunsClient::new(viewer.clone())
            .cancel_run(v1::CancelRunRequest {
                run_id: run_id.clone(),
                reason: String::new(),
                ..Default::default()
            })
            .await
            .map(drop),
    ] {
        let status = refused.expect_err("too weak a role");
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    }
    WorkersClient::new(b.channel.clone())
        .list_workers(v1::ListWorkersRequest {})
        .await
        .expect("an admin lists workers");
}

#[tokio::test]
async fn another_tenants_runs_automations_and_gates_are_not_found_nor_counted() {
    let b = setup().await;
    let a = as_role(&b, "tenant-a", Role::Admin, "ann").await;
    let other = as_role(&b, "tenant-b", Role::Admin, "bob").await;
    apply(&other, GATED).await;
    let theirs = start(&other, "gated").await;
    let gate_id = at_gate(&b.store).await;
    start(&other, "gated").await;
    // A's automation of the same id is A's own.
    apply(&a, "id: gated\nnodes:\n  - {id: only-a, kind: noop}\n").await;
    let ours = start(&a, "gated").await;

    let mut runs = RunsClient::new(a.clone());
    let not_found = |status: tonic::Status| {
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
    };
    not_found(runs.get_run(get(&theirs)).await.expect_err("theirs"));
    not_found(
        runs.cancel_run(v1::CancelRunRequest {
            run_id: theirs.clone(),
            reason: String::new(),
            ..Default::default()
        })
        .await
        .expect_err("theirs"),
    );
    not_found(
        runs.watch_run(v1::WatchRunRequest {
            run_id: theirs.clone(),
            after_seq: 0,
        })
        .await
        .expect_err("theirs"),
    );
    not_found(
        GatesClient::new(a.clone())
            .decide_gate(v1::DecideGateRequest {
                gate_id: gate_id.clone(),
                decision: v1::Decision::Approve.into(),
                ..Default::default()
            })
            .await
            .expect_err("theirs"),
    );
    let listed: Vec<String> = runs
        .list_runs(v1::ListRunsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .runs
        .into_iter()
        .map(|r| r.run_id)
        .collect();
    assert_eq!(listed, [ours]);
    let gates = GatesClient::new(a.clone())
        .list_gates(v1::ListGatesRequest::default())
        .await
        .expect("gates")
        .into_inner();
    assert!(gates.gates.is_empty(), "{gates:?}");
    let automation = AutomationsClient::new(a.clone())
        .get_automation(v1::GetAutomationRequest {
            id: "gated".into(),
            version: 0,
        })
        .await
        .expect("A's own")
        .into_inner();
    assert_eq!(automation.spec.expect("spec").nodes[0].id, "only-a");
    let stats = StatsClient::new(a.clone())
        .get_stats(v1::GetStatsRequest::default())
        .await
        .expect("stats")
        .into_inner();
    let counted: i64 = stats.run_counts.iter().map(|c| c.runs).sum();
    assert_eq!(counted, 1, "only A's run: {stats:?}");

    // B still sees its own.
    let mut theirs_view = RunsClient::new(other.clone());
    let run = theirs_view.get_run(get(&theirs)).await.expect("B's own");
    assert_eq!(run.into_inner().status(), v1::RunStatus::AwaitingApproval);
    let stored = b
        .store
        .run(
            &TenantId::from("tenant-b"),
            RunId(theirs.parse().expect("id")),
        )
        .await
        .expect("stored");
    assert_eq!(
        stored.status.as_str(),
        "awaiting_approval",
        "A's calls changed nothing"
    );
}

/// A viewer's token in the default tenant, and a channel whose calls carry it.
async fn viewer(b: &Bundle, addr: SocketAddr) -> (TokenId, RunsClient<AuthedChannel>) {
    let (made, secret) = b
        .store
        .create_token(&NewToken {
            tenant: TenantId::default(),
            role: Role::Viewer,
            name: Some("soon-gone".into()),
            expires_in: None,
        })
        .await
        .expect("token");
    let channel = Bearer::new(&secret.expose())
        .expect("ascii")
        .channel(plain_channel(addr).await);
    (made.id, RunsClient::new(channel))
}

#[tokio::test]
async fn a_revoked_token_is_refused_within_the_cache_ttl_and_its_watch_ends() {
    let b = setup().await;
    apply(&b.channel, GATED).await;
    let (token, mut runs) = viewer(&b, b.addr).await;
    let run_id = start(&b.channel, "gated").await;
    // Let in, so that the coordinator keeps it.
    runs.get_run(get(&run_id)).await.expect("before");
    let mut watch = runs
        .watch_run(v1::WatchRunRequest {
            run_id: run_id.clone(),
            after_seq: 0,
        })
        .await
        .expect("watch")
        .into_inner();
    let first = watch.message().await.expect("event").expect("some");
    assert_eq!(first.event, "run_started");

    b.store.revoke_token(&token).await.expect("revoke");
    // The revocation has committed by now: a call begun `ttl` after this must be refused.
    let revoked = Instant::now();
    let ttl = api::config::TOKEN_CACHE_TTL_DEFAULT;
    let refused = loop {
        let asked = Instant::now();
        match runs.get_run(get(&run_id)).await {
            Ok(_) => assert!(
                asked < revoked + ttl,
                "let in {:?} after the revocation; the cache keeps a token {ttl:?}",
                asked - revoked
            ),
            Err(status) => break status,
        }
        assert!(asked < revoked + DEADLINE, "never refused");
        // Polls at a pace, not to let anything settle: each call is a check of the bound.
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("revoked"), "{refused:?}");
    // Once refused, never let in again.
    let again = runs.get_run(get(&run_id)).await.expect_err("still revoked");
    assert_eq!(again.code(), Code::Unauthenticated, "{again:?}");
    // The open watch checks its token again within a second, and ends.
    let ended = tokio::time::timeout(DEADLINE, watch.message())
        .await
        .expect("the watch ends");
    let status = ended.expect_err("ends with a status");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
}

#[tokio::test]
async fn without_a_token_cache_a_revoked_token_is_refused_from_the_next_call_on() {
    let b = setup().await;
    let store = b.store.clone();
    let (addr, cancel) = serve_in_process(|listener, cancel| {
        api::serve_with(
            listener,
            None,
            store.clone(),
            Auth::Tokens(store),
            api::Config {
                token_cache_ttl: Duration::ZERO,
                ..api::Config::default()
            },
            cancel,
        )
    })
    .await;
    let _stop = cancel.drop_guard();
    let (token, mut runs) = viewer(&b, addr).await;
    let listed = runs.list_runs(v1::ListRunsRequest::default()).await;
    listed.expect("before");
    b.store.revoke_token(&token).await.expect("revoke");
    let refused = runs
        .list_runs(v1::ListRunsRequest::default())
        .await
        .expect_err("revoked");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("revoked"), "{refused:?}");
}

#[tokio::test]
async fn an_expired_token_is_unauthenticated() {
    let b = setup().await;
    let (_, secret) = b
        .store
        .create_token(&NewToken {
            tenant: TenantId::default(),
            role: Role::Admin,
            name: None,
            expires_in: Some(Duration::ZERO),
        })
        .await
        .expect("token");
    let refused = StatsClient::new(
        Bearer::new(&secret.expose())
            .expect("ascii")
            .channel(b.plain.clone()),
    )
    .get_stats(v1::GetStatsRequest::default())
    .await
    .expect_err("expired");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("expired"), "{refused:?}");
}

#[tokio::test]
async fn the_decider_and_the_actor_are_the_tokens_name_never_the_requests() {
    let b = setup().await;
    apply(&b.channel, GATED).await;
    let ann = as_role(&b, "default", Role::Operator, "ann").await;
    let run_id = start(&ann, "gated").await;
    let gate_id = at_gate(&b.store).await;
    let decided = GatesClient::new(ann.clone())
        .decide_gate(v1::DecideGateRequest {
            gate_id,
            decision: v1::Decision::Approve.into(),
            decided_by: "mallory".into(),
            ..Default::default()
        })
        .await
        .expect("decide")
        .into_inner();
    assert_eq!(decided.decided_by, "ann");
    let mut runs = RunsClient::new(ann.clone());
    runs.pause_run(v1::PauseRunRequest {
        run_id: run_id.clone(),
        reason: "hold".into(),
        ..Default::default()
    })
    .await
    .expect("pause");
    RunsClient::new(b.channel.clone())
        .cancel_run(v1::CancelRunRequest {
            run_id: run_id.clone(),
            reason: "stop".into(),
            ..Default::default()
        })
        .await
        .expect("cancel");

    let events = wait_for(DEADLINE, "the run's last event", || {
        let mut runs = runs.clone();
        let run_id = run_id.clone();
        async move {
            let mut stream = runs
                .watch_run(v1::WatchRunRequest {
                    run_id,
                    after_seq: 0,
                })
                .await
                .ok()?
                .into_inner();
            let mut events = Vec::new();
            while let Some(event) = stream.message().await.ok()? {
                events.push(event);
            }
            events.last()?.terminal.then_some(events)
        }
    })
    .await;
    let actor = |name: &str| {
        let event = events
            .iter()
            .find(|e| e.event == name)
            .unwrap_or_else(|| panic!("no {name} in {events:?}"));
        let metadata = event.metadata.as_ref().expect("metadata");
        let field = |key: &str| {
            metadata.fields.get(key).and_then(|v| match &v.kind {
                Some(prost_types::value::Kind::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
        };
        field("actor").or_else(|| field("decided_by"))
    };
    assert_eq!(actor("run_started").as_deref(), Some("ann"));
    assert_eq!(actor("run_gate_approved").as_deref(), Some("ann"));
    assert_eq!(actor("run_paused").as_deref(), Some("ann"));
    assert_eq!(actor("run_cancelled").as_deref(), Some(ADMIN));
}

/// `token` with the character at `at` changed to another of the same alphabet.
fn altered(token: &str, at: usize) -> String {
    let mut chars: Vec<char> = token.chars().collect();
    chars[at] = if chars[at] == 'a' { 'b' } else { 'a' };
    chars.into_iter().collect()
}

#[tokio::test]
async fn concurrent_calls_with_good_and_bad_tokens_are_each_judged_by_their_own() {
    let b = setup().await;
    let token = |name: &str| {
        let store = b.store.clone();
        let name = name.to_owned();
        async move {
            store
                .create_token(&NewToken {
                    tenant: TenantId::default(),
                    role: Role::Viewer,
                    name: Some(name),
                    expires_in: None,
                })
                .await
                .expect("token")
        }
    };
    let (_, good) = token("good").await;
    let (revoked, gone) = token("gone").await;
    b.store.revoke_token(&revoked.id).await.expect("revoke");
    let good = good.expose().clone();
    let wrong_secret = altered(&good, good.len() - 1);
    let unknown_id = altered(&good, "lh_".len());
    let gone = gone.expose().clone();
    // (token, whether it is let in, what the refusal says)
    let mut calls: Vec<(&str, bool, &str)> = Vec::new();
    for _ in 0..10 {
        calls.push((&good, true, ""));
        calls.push((&wrong_secret, false, "unknown token"));
        calls.push((&unknown_id, false, "unknown token"));
        calls.push((&gone, false, "revoked"));
    }
    let answers = futures_util::future::join_all(calls.iter().map(|(token, ..)| {
        let channel = Bearer::new(token).expect("ascii").channel(b.plain.clone());
        async move {
            AutomationsClient::new(channel)
                .list_automations(v1::ListAutomationsRequest::default())
                .await
        }
    }))
    .await;
    for ((_, let_in, says), answer) in calls.iter().zip(answers) {
        match answer {
            Ok(_) => assert!(
                let_in,
                "let in with a token that should be refused ({says})"
            ),
            Err(status) => {
                assert!(!let_in, "a good token refused: {status:?}");
                assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
                assert!(status.message().contains(says), "{status:?}");
            }
        }
    }
}
