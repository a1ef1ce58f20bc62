//! What the coordinator's watch hub reads: the heads of watched runs, the new events of several
//! runs in one statement, whether the watchers' tokens still stand, and a spec's node ids.

use leasehold_core::ids::{NodeId, RunId, TenantId};
use leasehold_core::run::RunStatus;
use leasehold_core::store::{NewToken, Role, TokenError};
use leasehold_testkit::fixtures::setup_diamond;

#[tokio::test]
async fn heads_and_events_of_many_runs_come_in_one_read_each() {
    let (b, automation) = setup_diamond("hello").await;
    let first = b.start(&automation).await;
    let second = b.start(&automation).await;
    b.pause(second, "to move it").await;
    b.cancel(second, "to move it again").await;

    let mut heads = b
        .store
        .run_heads(&[first, second, RunId(uuid::Uuid::now_v7())])
        .await
        .expect("heads");
    heads.sort_by_key(|h| h.event_seq);
    let seen: Vec<_> = heads
        .iter()
        .map(|h| (h.run_id, h.status, h.event_seq))
        .collect();
    assert_eq!(
        seen,
        vec![
            (first, RunStatus::Queued, 1),
            (second, RunStatus::Cancelled, 3)
        ],
        "an unknown run has no head"
    );
    assert_eq!(
        b.store.run_head(&b.tenant, second).await.expect("head"),
        Some(heads[1])
    );
    assert_eq!(
        b.store
            .run_head(&TenantId::from("other"), second)
            .await
            .expect("head"),
        None,
        "another tenant's run has no head"
    );

    // Each run after its own seq, at most two per run, by run then seq.
    let events = b
        .store
        .events_after_each(&[(second, 0), (first, 0)], 2)
        .await
        .expect("events");
    let mut expected = vec![(first, 1), (second, 1), (second, 2)];
    expected.sort();
    let got: Vec<_> = events.iter().map(|e| (e.run_id, e.seq)).collect();
    assert_eq!(got, expected);
    let rest = b
        .store
        .events_after_each(&[(second, 2), (first, 1)], 2)
        .await
        .expect("events");
    let got: Vec<_> = rest
        .iter()
        .map(|e| (e.run_id, e.seq, e.event.as_str()))
        .collect();
    assert_eq!(got, vec![(second, 3, "run_cancelled")]);
}

#[tokio::test]
async fn a_revoked_or_deleted_token_no_longer_stands() {
    let (b, _) = setup_diamond("hello").await;
    let token = |name: &str| NewToken {
        tenant: b.tenant.clone(),
        role: Role::Viewer,
        name: Some(name.to_owned()),
        expires_in: None,
    };
    let (kept, _) = b.store.create_token(&token("kept")).await.expect("token");
    let (revoked, _) = b
        .store
        .create_token(&token("revoked"))
        .await
        .expect("token");
    b.store.revoke_token(&revoked.id).await.expect("revoke");
    let never: leasehold_core::store::TokenId = "0123456789abcdef".parse().expect("an id");
    let refused = b
        .store
        .tokens_refused(&[kept.id.clone(), revoked.id.clone(), never.clone()])
        .await
        .expect("standing");
    assert!(!refused.contains_key(&kept.id), "{refused:?}");
    assert!(
        matches!(refused.get(&revoked.id), Some(TokenError::Revoked(id)) if *id == revoked.id),
        "{refused:?}"
    );
    assert!(
        matches!(refused.get(&never), Some(TokenError::Unknown)),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_specs_node_ids_come_in_order_and_none_for_an_unreadable_spec() {
    let (b, automation) = setup_diamond("hello").await;
    let ids = b
        .store
        .spec_node_ids(&b.tenant, &automation, 1)
        .await
        .expect("ids")
        .expect("a readable spec");
    let spec = b
        .store
        .automation_version(&b.tenant, &automation, Some(1))
        .await
        .expect("version")
        .spec;
    let expected: Vec<NodeId> = spec.nodes.iter().map(|n| n.id.clone()).collect();
    assert_eq!(ids, expected);
    assert_eq!(
        b.store
            .spec_node_ids(&b.tenant, &automation, 2)
            .await
            .expect("ids"),
        None,
        "no such version"
    );
    b.corrupt_spec(&automation).await;
    assert_eq!(
        b.store
            .spec_node_ids(&b.tenant, &automation, 1)
            .await
            .expect("ids"),
        None
    );
}
