//! API tokens in the store: made with a secret shown once, found by id, refused when the secret
//! is wrong, expired or revoked, and listed without secrets.

use std::time::Duration;

use leasehold_core::ids::TenantId;
use leasehold_core::store::{NewToken, Role, Secret, TokenError};
use leasehold_testkit::fixtures::setup;

fn request(tenant: &str, role: Role, name: Option<&str>) -> NewToken {
    NewToken {
        tenant: TenantId::from(tenant),
        role,
        name: name.map(str::to_owned),
        expires_in: None,
    }
}

#[tokio::test]
async fn a_made_token_authenticates_as_its_tenant_role_and_name() {
    let b = setup().await;
    let (made, secret) = b
        .store
        .create_token(&request("team-a", Role::Operator, Some("ann")))
        .await
        .expect("create");
    assert_eq!(&made.id, secret.id());
    let found = b.store.authenticate(&secret).await.expect("authenticate");
    assert_eq!(found, made);
    assert_eq!(
        (found.tenant.as_str(), found.role, found.name.as_str()),
        ("team-a", Role::Operator, "ann")
    );
    assert_eq!(found.expires_at, None);

    let (unnamed, _) = b
        .store
        .create_token(&request("team-a", Role::Viewer, None))
        .await
        .expect("create");
    assert_eq!(unnamed.name, format!("token-{}", unnamed.id));
}

#[tokio::test]
async fn a_wrong_secret_is_an_unknown_token() {
    let b = setup().await;
    let (made, secret) = b
        .store
        .create_token(&request("t", Role::Admin, None))
        .await
        .expect("create");
    let text = secret.expose();
    // The same id with another secret.
    let last = if text.ends_with('0') { "1" } else { "0" };
    let forged = Secret::parse(&format!("{}{last}", &text[..text.len() - 1])).expect("format");
    assert_eq!(forged.id(), &made.id);
    assert!(matches!(
        b.store.authenticate(&forged).await,
        Err(TokenError::Unknown)
    ));
    let unknown = Secret::parse(&format!("lh_0000000000000000_{}", "0".repeat(64))).expect("x");
    assert!(matches!(
        b.store.authenticate(&unknown).await,
        Err(TokenError::Unknown)
    ));
}

#[tokio::test]
async fn a_token_is_refused_once_it_expires() {
    let b = setup().await;
    let expiring = |d| NewToken {
        expires_in: Some(d),
        ..request("t", Role::Viewer, None)
    };
    let (_, valid) = b
        .store
        .create_token(&expiring(Duration::from_secs(3600)))
        .await
        .expect("create");
    // Expires the instant it is made: every later statement's clock is past it.
    let (_, expired) = b
        .store
        .create_token(&expiring(Duration::ZERO))
        .await
        .expect("create");
    let found = b
        .store
        .authenticate(&valid)
        .await
        .expect("valid for an hour");
    assert!(found.expires_at.is_some());
    assert!(matches!(
        b.store.authenticate(&expired).await,
        Err(TokenError::Expired(id)) if &id == expired.id()
    ));
}

#[tokio::test]
async fn a_revoked_token_is_refused_at_its_next_use() {
    let b = setup().await;
    let (made, secret) = b
        .store
        .create_token(&request("t", Role::Admin, None))
        .await
        .expect("create");
    b.store.authenticate(&secret).await.expect("before");
    let revoked = b.store.revoke_token(&made.id).await.expect("revoke");
    let at = revoked.revoked_at.expect("revoked");
    assert!(matches!(
        b.store.authenticate(&secret).await,
        Err(TokenError::Revoked(id)) if id == made.id
    ));
    // Revoking again keeps the first time.
    let again = b.store.revoke_token(&made.id).await.expect("again");
    assert_eq!(again.revoked_at, Some(at));
    let missing = "00000000000000ff".parse().expect("id");
    assert!(matches!(
        b.store.revoke_token(&missing).await,
        Err(TokenError::NotFound(id)) if id == missing
    ));
}

#[tokio::test]
async fn tokens_are_listed_without_secrets_and_by_tenant() {
    let b = setup().await;
    let (a, _) = b
        .store
        .create_token(&request("a", Role::Admin, Some("first")))
        .await
        .expect("create");
    let (other, _) = b
        .store
        .create_token(&request("b", Role::Viewer, Some("second")))
        .await
        .expect("create");
    let all = b.store.list_tokens(None).await.expect("list");
    assert_eq!(all, [a.clone(), other]);
    let only_a = b
        .store
        .list_tokens(Some(&TenantId::from("a")))
        .await
        .expect("list");
    assert_eq!(only_a, [a]);
}

#[tokio::test]
async fn bad_tenants_and_names_are_refused_by_field() {
    let b = setup().await;
    for (tenant, name, field) in [
        ("a b", None, "tenant"),
        ("", None, "tenant"),
        ("a", Some("line\nbreak"), "name"),
        ("a", Some(""), "name"),
    ] {
        let refused = b
            .store
            .create_token(&request(tenant, Role::Viewer, name))
            .await;
        assert!(
            matches!(&refused, Err(TokenError::Invalid { field: f, .. }) if *f == field),
            "{tenant:?} {name:?}: {refused:?}"
        );
    }
    assert!(b.store.list_tokens(None).await.expect("list").is_empty());
}
